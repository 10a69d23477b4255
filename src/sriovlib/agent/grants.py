"""What a container gets with its devices: the device plugin's Allocate answer.

:class:`Granter` turns a list of device IDs of one :class:`~sriovlib.agent.resources.Resource`
into a :class:`Grant`, protocol-neutral, which the gRPC service translates:

- environment: ``PCIDEVICE_<PREFIX>_<NAME>`` with the IDs in request order, and
  ``PCIDEVICE_<PREFIX>_<NAME>_INFO``, a JSON object per ID with sriov-network-device-plugin's
  keys (``generic``, ``vfio``, ``vhost``, ``rdma``, ``extra`` from ``additionalInfo``);
- device nodes found on the node by :meth:`sriovlib.Host.container_devices` (VFIO group,
  no-IOMMU groups, RDMA character devices, vhost-net/tun), de-duplicated;
- with CDI, CDI device names (``<prefix>/net-pci=<ID>``) instead of device nodes, and the
  CDI spec file of the resource (:meth:`Granter.write_cdi_spec`);
- the Multus device-info file of each net device
  (``<prefix>-<name>-<ID>-device.json`` in the device-info directory).

Before granting, every device is checked on the node (it still exists, with the driver
discovery saw, with the nodes it needs): a device that fails is marked unhealthy, so the
kubelet hears of it on ListAndWatch, and the whole grant fails naming it (the
device-plugin API's contract for a partial failure).
"""

from __future__ import annotations

import enum
import json
import os
import re
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from sriovlib._files import TEMP_PREFIX, write_atomic
from sriovlib.agent.resources import AgentDevice, Health, Resource
from sriovlib.exceptions import SriovError
from sriovlib.host import Host
from sriovlib.models import (
    ContainerDevices,
    DeviceNode,
    NetworkDevice,
    PhysicalFunction,
    VirtualFunction,
)
from sriovlib.pools import DeviceType

__all__ = ["CDI_VERSION", "Grant", "GrantError", "Granter", "Refusal"]

#: The CDI spec version the spec files declare.
CDI_VERSION = "0.6.0"
#: The device-info spec version of the Multus files.
DEVICE_INFO_VERSION = "1.1.0"
_CDI_CLASS = {
    DeviceType.NET_DEVICE: "net-pci",
    DeviceType.ACCELERATOR: "net-accel",
    DeviceType.AUX_NET_DEVICE: "net-sf",
}
_ENV_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


class Refusal(enum.Enum):
    """Why a grant was refused (the service maps it to a gRPC status)."""

    UNKNOWN = "unknown"  # no such device in the resource
    UNHEALTHY = "unhealthy"  # the device cannot be used now


class GrantError(SriovError):
    """A device of the request cannot be granted."""

    def __init__(self, device_id: str, refusal: Refusal, reason: str) -> None:
        super().__init__(f"device {device_id}: {reason}")
        self.device_id = device_id
        self.refusal = refusal


@attrs.frozen
class Grant:
    """What one container gets.

    Attributes:
        envs: Environment variables.
        devices: Device nodes (empty with CDI).
        mounts: (host path, container path) pairs.
        cdi_devices: Fully qualified CDI device names (CDI only).
    """

    envs: Mapping[str, str]
    devices: tuple[DeviceNode, ...] = ()
    mounts: tuple[tuple[str, str], ...] = ()
    cdi_devices: tuple[str, ...] = ()


class Granter:
    """Grants devices of a resource on one node.

    Args:
        host: The node.
        device_info_dir: Where the Multus device-info files go, or None for none.
        cdi_dir: Where the CDI spec files go when CDI is used, else None.
    """

    def __init__(self, host: Host, *, device_info_dir: Path | None, cdi_dir: Path | None) -> None:
        self.host = host
        self.device_info_dir = device_info_dir
        self.cdi_dir = cdi_dir
        #: The VFs a prepared DRA claim bound to another driver, by address: their
        #: driver is the claim's, not a sign of someone else's rebind.
        self.rebound: Callable[[], Mapping[str, object]] = dict

    def grant(self, resource: Resource, ids: Sequence[str]) -> Grant:
        """Grant *ids* of *resource* to one container.

        Raises:
            GrantError: a device is unknown or cannot be used (it is then unhealthy).
        """
        ids = list(dict.fromkeys(ids))
        found: list[tuple[AgentDevice, ContainerDevices]] = []
        for device_id in ids:
            device = resource.get(device_id)
            if device is None:
                raise GrantError(device_id, Refusal.UNKNOWN, f"not a device of {resource.name}")
            if not device.healthy:
                raise GrantError(device_id, Refusal.UNHEALTHY, f"unhealthy: {device.reason}")
            found.append((device, self._check(resource, device)))
        info: dict[str, Any] = {}
        envs: dict[str, str] = {resource.env_name: ",".join(ids)}
        nodes: dict[str, DeviceNode] = {}
        mounts: list[tuple[str, str]] = []
        for device, needs in found:
            info[device.id] = _info(resource, device, needs)
            envs.update(needs.env)
            for node in needs.nodes:
                nodes.setdefault(node.host_path, node)
            mounts.extend(m for m in needs.mounts if m not in mounts)
        envs[f"{resource.env_name}_INFO"] = json.dumps(info, sort_keys=True)
        for device, needs in found:
            self._write_device_info(resource, device, needs)
        if self.cdi_dir is not None:
            kind = cdi_kind(resource)
            return Grant(envs, mounts=tuple(mounts), cdi_devices=tuple(f"{kind}={i}" for i in ids))
        return Grant(envs, devices=tuple(nodes.values()), mounts=tuple(mounts))

    def _check(self, resource: Resource, device: AgentDevice) -> ContainerDevices:
        """What *device* needs, after checking it is still there as discovered."""
        problem, needs = self._examine(device, device_nodes=True)
        if problem is None:
            return needs
        resource.set_health(device.id, Health.UNHEALTHY, problem)
        raise GrantError(device.id, Refusal.UNHEALTHY, problem)

    def problem(self, device: AgentDevice, *, device_nodes: bool = True) -> str | None:
        """Why *device* cannot be granted now (gone, rebound, with *device_nodes* also a
        device node missing), or None."""
        return self._examine(device, device_nodes=device_nodes)[0]

    def _examine(
        self, device: AgentDevice, *, device_nodes: bool
    ) -> tuple[str | None, ContainerDevices]:
        try:
            if device_nodes:
                function = self.host.pci_function(device.device.address)
                driver = function.driver
            else:
                driver = self.host.bound_driver(device.device.address)
        except SriovError as e:
            return f"gone from the node ({e})", ContainerDevices()
        if driver != device.device.driver and str(device.device.address) not in self.rebound():
            return (
                f"bound to {driver or 'no driver'}, not "
                f"{device.device.driver or 'none'} as when the pool was built",
                ContainerDevices(),
            )
        if not device_nodes or driver != device.device.driver:
            return None, ContainerDevices()  # a claim's VF on its driver: the claim's needs
        needs = self._needs(device, function)
        if needs.missing:
            return f"device node missing on the node: {', '.join(needs.missing)}", needs
        return None, needs

    def _needs(
        self, device: AgentDevice, function: PhysicalFunction | VirtualFunction | NetworkDevice
    ) -> ContainerDevices:
        if isinstance(function, VirtualFunction):
            return self.host.container_devices(
                function, rdma=device.rdma, vhost_net=device.vhost_net
            )
        return ContainerDevices()  # a whole PF or NIC: its netdev, nothing else

    # -- files -------------------------------------------------------------------------

    def device_info_path(self, resource: Resource, device_id: str) -> Path | None:
        """The Multus device-info file of *device_id*, or None without a directory."""
        if self.device_info_dir is None:
            return None
        name = resource.name.replace("/", "-")
        return self.device_info_dir / f"{name}-{device_id}-device.json"

    def _write_device_info(
        self, resource: Resource, device: AgentDevice, needs: ContainerDevices
    ) -> None:
        path = self.device_info_path(resource, device.id)
        if path is None or resource.pool.device_type is not DeviceType.NET_DEVICE:
            return
        pci: dict[str, str] = {"pci-address": device.id}
        if device.device.pf_address is not None:
            pci["pf-pci-address"] = str(device.device.pf_address)
        if needs.rdma_device is not None:
            pci["rdma-device"] = needs.rdma_device
        data = json.dumps(
            {"type": "pci", "version": DEVICE_INFO_VERSION, "pci": pci}, sort_keys=True
        ).encode()
        data += b"\n"
        try:
            if path.read_bytes() == data:
                return  # written by an earlier grant of the same device
        except OSError:
            path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, data, 0o644)

    def prune_device_info(self, resource: Resource) -> int:
        """Remove this resource's device-info files of devices it no longer has (the
        files of devices it has may belong to running pods); return how many."""
        if self.device_info_dir is None:
            return 0
        prefix = resource.name.replace("/", "-") + "-"
        keep = {d.id for d in resource.devices()}
        removed = 0
        try:
            names = os.listdir(self.device_info_dir)
        except OSError:
            return 0
        for name in names:
            if not (name.startswith(prefix) and name.endswith("-device.json")):
                continue
            device_id = name[len(prefix) : -len("-device.json")]
            if device_id not in keep and "-" not in device_id:
                (self.device_info_dir / name).unlink(missing_ok=True)
                removed += 1
        return removed

    def write_cdi_spec(self, resource: Resource) -> Path | None:
        """Write (or rewrite) the CDI spec file of *resource*; None without CDI."""
        if self.cdi_dir is None:
            return None
        devices = []
        for device in resource.devices():
            edits: dict[str, Any] = {
                # never empty: a CDI device without edits is invalid
                "env": [f"SRIOVLIB_CDI_{_ENV_UNSAFE.sub('_', device.id).upper()}={device.id}"]
            }
            if device.healthy:
                try:
                    function = self.host.pci_function(device.device.address)
                    needs = self._needs(device, function)
                except SriovError:
                    needs = ContainerDevices()
                nodes = [
                    {"path": n.container_path, "hostPath": n.host_path, "permissions": "rw"}
                    for n in needs.nodes
                ]
                if nodes:
                    edits["deviceNodes"] = nodes
            devices.append({"name": device.id, "containerEdits": edits})
        spec = {"cdiVersion": CDI_VERSION, "kind": cdi_kind(resource), "devices": devices}
        path = self.cdi_dir / f"sriovlib-{resource.prefix}_{resource.pool.resource_name}.json"
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(spec, indent=1).encode() + b"\n", 0o644)
        return path

    def cdi_path(self, resource: Resource) -> Path | None:
        """The CDI spec file of *resource*, or None without CDI."""
        if self.cdi_dir is None:
            return None
        return self.cdi_dir / f"sriovlib-{resource.prefix}_{resource.pool.resource_name}.json"

    def remove_cdi_spec(self, resource: Resource) -> None:
        """Remove the CDI spec file of *resource* (the pool is gone)."""
        path = self.cdi_path(resource)
        if path is not None and self.cdi_dir is not None:
            path.unlink(missing_ok=True)
            for stale in self.cdi_dir.glob(f"{TEMP_PREFIX}*"):
                stale.unlink(missing_ok=True)


def cdi_kind(resource: Resource) -> str:
    """The CDI kind of *resource*'s devices: ``<prefix>/net-pci`` for net pools."""
    return f"{resource.prefix}/{_CDI_CLASS[resource.pool.device_type]}"


def _info(resource: Resource, device: AgentDevice, needs: ContainerDevices) -> dict[str, Any]:
    """The ``_INFO`` entry of one device."""
    entry: dict[str, Any] = {"generic": {"deviceID": device.id}}
    if needs.vfio_group is not None:
        entry["vfio"] = {"mount": "/dev/vfio/vfio", "dev-mount": needs.vfio_group}
    if needs.vhost_net:
        entry["vhost"] = {"net-mount": "/dev/vhost-net", "tun-mount": "/dev/net/tun"}
    if needs.rdma_device is not None:
        rdma = {"rdma_dev": needs.rdma_device}
        rdma.update(needs.rdma_nodes)
        entry["rdma"] = rdma
    extra = {**resource.pool.additional_info.get("*", {})}
    extra.update(resource.pool.additional_info.get(device.id, {}))
    if extra:
        entry["extra"] = extra
    return entry
