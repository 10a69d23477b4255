"""An in-process kubelet stand-in for DRA driver tests, built from the same protos, and
the API server's part: the ResourceClaims it would serve.

:class:`DraKubeletStandIn` does what the kubelet's plugin manager does with a DRA
driver: it finds the registration socket in its ``plugins_registry`` directory, calls
``GetInfo`` and checks the answer as the kubelet's DRA handler does (type
``DRAPlugin``, the name it expects, an endpoint that is a socket, ``v1.DRAPlugin`` among
the versions), tells the driver its verdict with ``NotifyRegistrationStatus``, and then
calls ``NodePrepareResources`` and ``NodeUnprepareResources`` on the endpoint over the
real unix socket (:class:`DraPluginClient`).

:class:`FakeClaims` is a :class:`~sriovlib.agent.draclaims.ClaimSource` holding
ResourceClaim objects as the API server would serve them, built by
:func:`resource_claim`::

    claims = FakeClaims()
    claims.add(resource_claim("net-1", devices=[("vf", "node-a", "vf-0000-5e-00-2")]))
    ...start the agent's DRA plugin with claims...
    plugin = DraKubeletStandIn(registry_dir).register("sriov.sriovlib.io")
    response = plugin.prepare(claims.ref("net-1"))
"""

from __future__ import annotations

import threading
import time
import uuid
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

import grpc

from sriovlib.agent.api import dra_pb2 as pb
from sriovlib.agent.api import dra_pb2_grpc as pb_grpc
from sriovlib.agent.api import pluginregistration_pb2 as reg
from sriovlib.agent.api import pluginregistration_pb2_grpc as reg_grpc
from sriovlib.agent.draclaims import DEFAULT_DRIVER_NAME, ClaimRef, ClaimUnavailable
from sriovlib.agent.draprepare import device_name
from sriovlib.agent.kubelet import unix_target
from sriovlib.models import PciAddress

__all__ = [
    "DraKubeletStandIn",
    "DraPluginClient",
    "FakeClaims",
    "Refused",
    "device_name_of",
    "resource_claim",
]

#: The DRA service versions this stand-in speaks (the kubelet v1.34 takes v1 and v1beta1).
KUBELET_VERSIONS = ("v1.DRAPlugin", "v1beta1.DRAPlugin")


def device_name_of(address: str) -> str:
    """The DRA device name the driver publishes for the VF at PCI *address*
    (``0000:5e:00.2`` -> ``vf-0000-5e-00-2``)."""
    return device_name(PciAddress.parse(address))


class Refused(Exception):
    """The stand-in refused the driver's registration (the message says why)."""


def resource_claim(
    name: str,
    *,
    devices: Sequence[tuple[str, str, str]] = (),
    driver: str = DEFAULT_DRIVER_NAME,
    namespace: str = "default",
    uid: str | None = None,
    config: Sequence[Mapping[str, Any]] = (),
    allocated: bool = True,
) -> dict[str, Any]:
    """A ``resource.k8s.io/v1`` ResourceClaim as the API server serves it once allocated.

    Args:
        devices: (request, pool, device) of each allocated device, all of *driver*.
        config: Entries of ``status.allocation.devices.config`` as they are, or for
            short ``{"requests": [...], "parameters": {...}}`` (made an opaque entry of
            *driver*, ``source: FromClaim``).
        allocated: False for a claim the scheduler has not allocated yet.
    """
    entries = []
    for item in config:
        if "parameters" in item:
            entry: dict[str, Any] = {
                "source": item.get("source", "FromClaim"),
                "opaque": {"driver": item.get("driver", driver), "parameters": item["parameters"]},
            }
            if item.get("requests"):
                entry["requests"] = list(item["requests"])
            entries.append(entry)
        else:
            entries.append(dict(item))
    claim: dict[str, Any] = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": namespace, "uid": uid or str(uuid.uuid4())},
        "spec": {
            "devices": {"requests": [{"name": r} for r in dict.fromkeys(d[0] for d in devices)]}
        },
        "status": {},
    }
    if allocated:
        claim["status"]["allocation"] = {
            "devices": {
                "results": [
                    {"request": r, "driver": driver, "pool": p, "device": d} for r, p, d in devices
                ],
                "config": entries,
            }
        }
    return claim


class FakeClaims:
    """ResourceClaims by namespace and name, as a ``ClaimSource``; counts the reads."""

    def __init__(self) -> None:
        self.claims: dict[tuple[str, str], Mapping[str, Any]] = {}
        self.reads = 0
        self._lock = threading.Lock()

    def add(self, claim: Mapping[str, Any]) -> ClaimRef:
        """Serve *claim* (replacing one of the same name); its reference."""
        meta = claim["metadata"]
        with self._lock:
            self.claims[(meta["namespace"], meta["name"])] = claim
        return ClaimRef(meta["namespace"], meta["name"], meta["uid"])

    def remove(self, namespace: str, name: str) -> None:
        with self._lock:
            self.claims.pop((namespace, name), None)

    def resource_claim(self, namespace: str, name: str) -> Mapping[str, Any]:
        with self._lock:
            self.reads += 1
            claim = self.claims.get((namespace, name))
        if claim is None:
            raise ClaimUnavailable(f"resourceclaims.resource.k8s.io {namespace}/{name} not found")
        return claim


class DraPluginClient:
    """The kubelet's side of one registered DRA driver."""

    def __init__(self, info: reg.PluginInfo) -> None:
        self.info = info
        self.endpoint = Path(info.endpoint)
        self._channel = grpc.insecure_channel(unix_target(self.endpoint))
        self.stub = pb_grpc.DRAPluginStub(self._channel)  # type: ignore[no-untyped-call]

    def prepare(self, *claims: ClaimRef) -> pb.NodePrepareResourcesResponse:
        """NodePrepareResources of *claims* in one call."""
        request = pb.NodePrepareResourcesRequest()
        for ref in claims:
            request.claims.add(namespace=ref.namespace, name=ref.name, uid=ref.uid)
        response: pb.NodePrepareResourcesResponse = self.stub.NodePrepareResources(
            request, timeout=10
        )
        return response

    def unprepare(self, *claims: ClaimRef) -> pb.NodeUnprepareResourcesResponse:
        """NodeUnprepareResources of *claims* in one call."""
        request = pb.NodeUnprepareResourcesRequest()
        for ref in claims:
            request.claims.add(namespace=ref.namespace, name=ref.name, uid=ref.uid)
        response: pb.NodeUnprepareResourcesResponse = self.stub.NodeUnprepareResources(
            request, timeout=10
        )
        return response

    def close(self) -> None:
        self._channel.close()


class DraKubeletStandIn:
    """The kubelet's plugin manager for DRA drivers in *registry_dir*."""

    def __init__(self, registry_dir: Path) -> None:
        self.registry_dir = Path(registry_dir)
        self.infos: list[reg.PluginInfo] = []
        self.clients: list[DraPluginClient] = []

    def __enter__(self) -> DraKubeletStandIn:
        return self

    def __exit__(self, *exc: object) -> None:
        for client in self.clients:
            client.close()

    def socket(self, driver: str, timeout: float = 10.0) -> Path:
        """The registration socket of *driver* once it exists (the plugin watcher's
        inotify, by polling)."""
        path = self.registry_dir / f"{driver}-reg.sock"
        deadline = time.monotonic() + timeout
        while not path.is_socket():
            if time.monotonic() > deadline:
                raise TimeoutError(f"no registration socket {path}")
            time.sleep(0.02)
        return path

    def register(self, driver: str = DEFAULT_DRIVER_NAME, timeout: float = 10.0) -> DraPluginClient:
        """Register *driver* as the kubelet does: GetInfo, the checks, the verdict.

        Raises:
            Refused: the driver's answer would make the kubelet refuse it (the driver
                was told so through NotifyRegistrationStatus).
        """
        path = self.socket(driver, timeout)
        with grpc.insecure_channel(unix_target(path)) as channel:
            stub = reg_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
            info: reg.PluginInfo = stub.GetInfo(reg.InfoRequest(), timeout=5)
            self.infos.append(info)
            problem = self._problem(info, driver)
            stub.NotifyRegistrationStatus(
                reg.RegistrationStatus(plugin_registered=problem is None, error=problem or ""),
                timeout=5,
            )
        if problem is not None:
            raise Refused(problem)
        client = DraPluginClient(info)
        self.clients.append(client)
        return client

    @staticmethod
    def _problem(info: reg.PluginInfo, driver: str) -> str | None:
        if info.type != "DRAPlugin":
            return f"plugin type {info.type!r} is not DRAPlugin"
        if info.name != driver:
            return f"plugin name {info.name!r} is not {driver!r}"
        endpoint = Path(info.endpoint)
        if not endpoint.is_absolute() or not endpoint.is_socket():
            return f"endpoint {info.endpoint!r} is not a socket"
        if not set(info.supported_versions) & set(KUBELET_VERSIONS):
            return f"none of the versions {list(info.supported_versions)} is {KUBELET_VERSIONS}"
        return None
