"""The node's VFs as DRA devices: ResourceSlices (``resource.k8s.io/v1``) the agent
publishes and keeps true to its live view.

One device per healthy VF of the pools the agent serves, named as the DRA plugin
prepares them (``vf-<domain>-<bus>-<device>-<function>``), in one pool named after the
node. The pool is published as ``ceil(devices / 128)`` slices (at least one: an empty
pool says "none here"), ``<node>-<driver>-<n>``, each owned by the Node object (so they
go with it), with ``spec.driver``, ``spec.nodeName`` and ``spec.pool`` {name,
generation, resourceSliceCount}.

Attributes (unqualified names are in the driver's domain, so a CEL selector reads
``device.attributes["sriov.sriovlib.io"].pfName``):

=====================================  ========  ======================================
attribute                              type      value
=====================================  ========  ======================================
``pfName``                             string    the PF's interface name
``pfPciAddress``                       string    the PF's PCI address
``vfIndex``                            int       the VF's number on its PF
``vendor``, ``deviceID``               string    PCI ids, 4 hex digits (``8086``, ``154c``)
``driver``                             string    the bound driver (``iavf``, ``vfio-pci``)
``numaNode``                           int       the NUMA node (left out when unknown)
``linkType``                           string    ``ether`` or ``infiniband``
``rdma``                               bool      the VF has RDMA devices
``eswitchMode``                        string    the PF's ``legacy``/``switchdev`` (left
                                                 out where the driver has no devlink
                                                 eswitch, as igb)
``resource.kubernetes.io/pciBusID``    string    the VF's PCI address (standard attribute)
``resource.kubernetes.io/pcieRoot``    string    its root complex, ``pci<domain>:<bus>``
                                                 (standard attribute)
``k8s.cni.cncf.io/resourceName``       string    the pool's resource name (Multus)
``k8s.cni.cncf.io/deviceID``           string    the VF's PCI address (Multus)
=====================================  ========  ======================================

An unhealthy VF is left out of the slices (the scheduler cannot allocate what is not
published; device taints are not GA in 1.34), and comes back when it is healthy again.

:class:`SlicePublisher` is driven by the agent: :meth:`~SlicePublisher.start` once, and
:meth:`~SlicePublisher.sync` after every wake-up of its health watch and every
reconcile. A sync that finds the pools' generations unchanged costs nothing; one that
finds the published devices changed publishes them with the pool's generation bumped.
At start, the highest generation of this node's slices of this driver is read and
exceeded, and the slices of this node and driver that are not this publisher's are
deleted. Every ``VERIFY_INTERVAL`` seconds a sync lists them again: slices deleted or
changed by someone else (a kubelet deletes all of its node's when it starts) make it
start over. A failed publication (the API server unreachable) is logged and retried at
the next sync.
"""

from __future__ import annotations

import contextlib
import logging
import math
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from typing import Any

from sriovlib.agent.draprepare import device_name
from sriovlib.agent.kubeapi import AlreadyExists, Conflict, KubeApiError, KubeClient, NotFound
from sriovlib.agent.resources import AgentDevice, Resource
from sriovlib.exceptions import SriovError
from sriovlib.host import Host
from sriovlib.models import PciAddress
from sriovlib.pools import DeviceKind

__all__ = [
    "MAX_DEVICES_PER_SLICE",
    "REGISTERED_WINDOW",
    "SLICES",
    "VERIFY_INTERVAL",
    "SlicePublisher",
    "device_attributes",
]

log = logging.getLogger("sriovlib.agent")

#: The collection of ResourceSlices.
SLICES = "/apis/resource.k8s.io/v1/resourceslices"
#: The most devices one ResourceSlice may hold (the API's limit).
MAX_DEVICES_PER_SLICE = 128
#: Seconds between two checks that the published slices are still as written (a
#: kubelet that starts deletes every slice of its node).
VERIFY_INTERVAL = 30.0
#: Seconds after the kubelet registered the driver during which every sync checks the
#: slices: a kubelet that starts registers the driver again and, in the background
#: and perhaps after that, deletes every slice of its node.
REGISTERED_WINDOW = 60.0

Attributes = dict[str, dict[str, Any]]


def device_attributes(
    device: AgentDevice, resource: Resource, *, pcie_root: str | None, eswitch_mode: str | None
) -> Attributes:
    """The DRA attributes of one VF of *resource* (see the module documentation)."""
    d = device.device
    attributes: Attributes = {}

    def put(name: str, kind: str, value: object) -> None:
        if value is not None:
            attributes[name] = {kind: value}

    put("pfName", "string", d.pf_name)
    put("pfPciAddress", "string", str(d.pf_address) if d.pf_address is not None else None)
    put("vfIndex", "int", d.vf_index)
    put("vendor", "string", f"{d.ids.vendor:04x}")
    put("deviceID", "string", f"{d.ids.device:04x}")
    put("driver", "string", d.driver)
    put("numaNode", "int", d.numa_node)
    put("linkType", "string", d.link_type)
    put("rdma", "bool", bool(d.rdma_devices))
    put("eswitchMode", "string", eswitch_mode)
    put("resource.kubernetes.io/pciBusID", "string", str(d.address))
    put("resource.kubernetes.io/pcieRoot", "string", pcie_root)
    put("k8s.cni.cncf.io/resourceName", "string", resource.name)
    put("k8s.cni.cncf.io/deviceID", "string", str(d.address))
    return attributes


class SlicePublisher:
    """Publishes the VFs of *resources* as this node's ResourceSlices of *driver*.

    Args:
        api: The API server.
        host: The node (PCIe roots, eswitch modes).
        driver: The DRA driver name.
        node_name: The Node object's name (the slices' ``nodeName``, owner and pool).
        resources: The agent's live pools (read on every sync).
    """

    def __init__(
        self,
        api: KubeClient,
        host: Host,
        *,
        driver: str,
        node_name: str,
        resources: Callable[[], Sequence[Resource]],
    ) -> None:
        self.api = api
        self.host = host
        self.driver = driver
        self.node_name = node_name
        self.resources = resources
        #: The pool generation last published (0: nothing yet).
        self.generation = 0
        #: How many times slices were written.
        self.publications = 0
        self._lock = threading.Lock()
        self._node_uid: str | None = None
        self._seen: tuple[tuple[str, int], ...] | None = None
        self._devices: list[dict[str, Any]] | None = None
        self._slices: dict[str, str] = {}  # name -> resourceVersion
        self._started = False
        self._verified = 0.0
        self._verify_until = 0.0  # every sync verifies until then (monotonic)
        self._withheld: frozenset[PciAddress] = frozenset()  # PFs whose VFs are left out

    @property
    def pool(self) -> str:
        """The pool's name: the node's."""
        return self.node_name

    def slice_name(self, index: int) -> str:
        """The name of the pool's slice *index*."""
        return f"{self.node_name}-{self.driver}-{index}"

    def start(self) -> bool:
        """Read the node and this node's slices, then publish; False (logged) if the
        API server did not let it (the next :meth:`sync` tries again)."""
        with self._lock:
            if self._started:  # a sync of the health watch came first
                return True
            return self._attempt(self._start)

    def registered(self, window: float = REGISTERED_WINDOW) -> None:
        """The kubelet (re)registered the driver: check the slices at every sync for
        the next *window* seconds, not every ``VERIFY_INTERVAL``. A kubelet that
        restarts deletes all of its node's slices, perhaps seconds after it registered
        the driver again; the node would have no devices for up to ``VERIFY_INTERVAL``."""
        self._verify_until = time.monotonic() + window

    def withhold(self, pfs: frozenset[PciAddress], *, publish: bool = True) -> bool:
        """Leave the VFs of *pfs* out of the slices (an empty set: put them back), for
        the VFs on demand about to change their count; with *publish*, write the slices
        now. True if the published slices say so (False: not published, logged)."""
        with self._lock:
            self._withheld = pfs
            if not publish:
                return True
            if not self._started:
                return False
            self._seen = None
            self._attempt(self._publish)
            return self._seen is not None

    def devices(self) -> tuple[Mapping[str, Any], ...]:
        """The devices of the slices written last (empty before the first)."""
        with self._lock:
            return tuple(self._devices or ())

    def sync(self) -> bool:
        """Publish if the devices changed since the last publication (or it failed);
        True if slices were written."""
        with self._lock:
            seen = self._fingerprint()
            if self._started and seen == self._seen:
                now = time.monotonic()
                if now >= self._verify_until and now - self._verified < VERIFY_INTERVAL:
                    return False
                return self._attempt(self._verify)
            return self._attempt(self._start if not self._started else self._publish)

    def _attempt(self, step: Callable[[], bool]) -> bool:
        try:
            return step()
        except (KubeApiError, SriovError, OSError) as e:
            self._seen = None  # try again at the next sync
            log.warning(
                "ResourceSlices not published",
                extra={"driver": self.driver, "node": self.node_name, "error": str(e)},
            )
            return False

    def _fingerprint(self) -> tuple[tuple[str, int], ...]:
        withheld = tuple((str(pf), -1) for pf in sorted(self._withheld))
        return tuple((r.name, r.generation) for r in self.resources()) + withheld

    def _start(self) -> bool:
        node = self.api.get(f"/api/v1/nodes/{self.node_name}")
        self._node_uid = str(node["metadata"]["uid"])
        self._slices = {}
        for item in self._list():
            spec, meta = item.get("spec", {}), item.get("metadata", {})
            pool = spec.get("pool", {})
            if pool.get("name") == self.pool:
                self.generation = max(self.generation, int(pool.get("generation", 0)))
            self._slices[str(meta["name"])] = str(meta.get("resourceVersion", ""))
        self._started = True
        self._devices = None
        return self._publish()

    def _list(self) -> list[dict[str, Any]]:
        """This node's slices of this driver."""
        found = self.api.get(
            SLICES,
            query={"fieldSelector": f"spec.nodeName={self.node_name},spec.driver={self.driver}"},
        )
        return [
            item
            for item in found.get("items") or ()
            # a server that ignored the field selector
            if item.get("spec", {}).get("nodeName") == self.node_name
            and item.get("spec", {}).get("driver") == self.driver
        ]

    def _verify(self) -> bool:
        """Start over if the slices are not as this publisher last wrote them."""
        self._verified = time.monotonic()
        found = {
            str(item["metadata"]["name"]): str(item["metadata"].get("resourceVersion", ""))
            for item in self._list()
        }
        if found == self._slices:
            return False
        log.warning(
            "ResourceSlices changed by someone else: publishing them again",
            extra={"driver": self.driver, "node": self.node_name},
        )
        return self._start()

    def _publish(self) -> bool:
        seen = self._fingerprint()
        devices = self._wanted()
        if devices == self._devices:
            self._seen = seen
            return False
        generation = self.generation + 1
        count = max(1, math.ceil(len(devices) / MAX_DEVICES_PER_SLICE))
        names = []
        for index in range(count):
            chunk = devices[index * MAX_DEVICES_PER_SLICE : (index + 1) * MAX_DEVICES_PER_SLICE]
            name = self.slice_name(index)
            self._put(name, self._slice(name, generation, count, chunk))
            names.append(name)
        for stale in sorted(set(self._slices) - set(names)):
            with contextlib.suppress(NotFound):  # gone already
                self.api.delete(f"{SLICES}/{stale}")
            del self._slices[stale]
        self.generation = generation
        self._devices = devices
        self._seen = seen
        self._verified = time.monotonic()
        self.publications += 1
        log.info(
            "ResourceSlices published",
            extra={
                "driver": self.driver,
                "pool": self.pool,
                "generation": generation,
                "slices": count,
                "devices": len(devices),
            },
        )
        return True

    def _put(self, name: str, body: dict[str, Any]) -> None:
        """Create the slice *name* or replace it (once more on a conflict, with the
        resourceVersion read again)."""
        for _ in range(3):
            version = self._slices.get(name)
            try:
                if version is None:
                    stored = self.api.create(SLICES, body)
                else:
                    body["metadata"]["resourceVersion"] = version
                    stored = self.api.replace(f"{SLICES}/{name}", body)
            except AlreadyExists:
                self._slices[name] = self._version(name) or ""
                continue
            except NotFound:
                self._slices.pop(name, None)
                body["metadata"].pop("resourceVersion", None)
                continue
            except Conflict:
                self._slices[name] = self._version(name) or ""
                continue
            self._slices[name] = str(stored["metadata"]["resourceVersion"])
            return
        raise Conflict(f"ResourceSlice {name}: changed under the agent three times in a row")

    def _version(self, name: str) -> str | None:
        try:
            return str(self.api.get(f"{SLICES}/{name}")["metadata"]["resourceVersion"])
        except NotFound:
            return None

    def _slice(
        self, name: str, generation: int, count: int, devices: list[dict[str, Any]]
    ) -> dict[str, Any]:
        return {
            "apiVersion": "resource.k8s.io/v1",
            "kind": "ResourceSlice",
            "metadata": {
                "name": name,
                "labels": {"app.kubernetes.io/managed-by": "sriovlib-agent"},
                "ownerReferences": [
                    {
                        "apiVersion": "v1",
                        "kind": "Node",
                        "name": self.node_name,
                        "uid": self._node_uid,
                        "controller": True,
                    }
                ],
            },
            "spec": {
                "driver": self.driver,
                "nodeName": self.node_name,
                "pool": {
                    "name": self.pool,
                    "generation": generation,
                    "resourceSliceCount": count,
                },
                "devices": devices,
            },
        }

    def _wanted(self) -> list[dict[str, Any]]:
        """The devices to publish now, by name."""
        eswitch: dict[PciAddress, str | None] = {}
        devices: dict[str, dict[str, Any]] = {}
        for resource in self.resources():
            for device in resource.devices():
                d = device.device
                if d.kind is not DeviceKind.VF or not device.healthy or d.pf_address is None:
                    continue
                if d.pf_address in self._withheld:
                    continue
                if d.pf_address not in eswitch:
                    eswitch[d.pf_address] = self._eswitch_mode(d.pf_address)
                name = device_name(d.address)
                devices[name] = {
                    "name": name,
                    "attributes": device_attributes(
                        device,
                        resource,
                        pcie_root=self.host.pcie_root(d.address),
                        eswitch_mode=eswitch[d.pf_address],
                    ),
                }
        return [devices[n] for n in sorted(devices)]

    def _eswitch_mode(self, pf: PciAddress) -> str | None:
        try:
            mode = self.host.eswitch_mode(pf)
        except SriovError:
            return None
        return None if mode is None else str(mode.value)

    def published(self) -> Mapping[str, str]:
        """The slices written last, by name (their resourceVersions)."""
        with self._lock:
            return dict(self._slices)
