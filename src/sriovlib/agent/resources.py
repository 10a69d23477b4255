"""The pools as the kubelet sees them: one :class:`Resource` per pool, live.

A :class:`Resource` holds the devices of one pool of the config (``intel.com/sriov``),
each with its health, and a generation that grows with every change, so that any number
of ``ListAndWatch`` streams wait for the next change without polling
(:meth:`Resource.watch`). :func:`build_resources` makes them from the node: discovery,
the pools' first-match-wins assignment (:mod:`sriovlib.pools`), and per device what its
selector object asks for (``isRdma``, ``needVhostNet``).

Names follow sriov-network-device-plugin: the socket is ``<prefix>_<name>.sock`` and the
environment variable ``PCIDEVICE_<PREFIX>_<NAME>`` (upper case, ``.`` → ``_``).
"""

from __future__ import annotations

import enum
import threading
import time
from collections.abc import Iterable, Mapping, Sequence

import attrs

from sriovlib.allocation import Candidate
from sriovlib.pools import Pool, PoolConfig, PoolDevice, assign, selector_mismatch

__all__ = ["AgentDevice", "Health", "Resource", "build_resources"]

#: The longest device ID the kubelet accepts.
MAX_DEVICE_ID = 63


class Health(enum.StrEnum):
    """A device's health, in the kubelet's words."""

    HEALTHY = "Healthy"
    UNHEALTHY = "Unhealthy"


@attrs.frozen
class AgentDevice:
    """One device of a resource.

    Attributes:
        device: The device as discovery saw it (its PCI address is the ID).
        rdma: Its selector object asks for the RDMA character devices (``isRdma``).
        vhost_net: Its selector object asks for ``/dev/vhost-net`` (``needVhostNet``).
        health: Healthy or not.
        reason: Why it is unhealthy, or None.
        id: The device ID the kubelet knows (the PCI address).
        group: The PF it belongs to (its own address for a PF or NIC), for the allocator.
    """

    device: PoolDevice
    rdma: bool = False
    vhost_net: bool = False
    health: Health = Health.HEALTHY
    reason: str | None = None
    # both formatted once: a preference over 2048 devices reads them thousands of times
    id: str = attrs.field(
        init=False, default=attrs.Factory(lambda self: str(self.device.address), takes_self=True)
    )
    group: str = attrs.field(
        init=False,
        default=attrs.Factory(
            lambda self: str(self.device.pf_address or self.device.address), takes_self=True
        ),
    )

    @property
    def healthy(self) -> bool:
        """Whether the device may be allocated."""
        return self.health is Health.HEALTHY


class Resource:
    """One pool, as an extended resource with live devices (thread-safe).

    Args:
        pool: The pool of the config.
        default_prefix: The agent's ``--resource-prefix`` (the pool may override it).
        devices: Its devices.
    """

    def __init__(self, pool: Pool, default_prefix: str, devices: Iterable[AgentDevice]) -> None:
        self.pool = pool
        self.prefix = pool.resource_prefix or default_prefix
        self.name = f"{self.prefix}/{pool.resource_name}"
        self._cond = threading.Condition()
        self._devices = {d.id: d for d in devices}
        self._generation = 1
        self._closed = False

    def __repr__(self) -> str:
        return f"Resource({self.name!r}, {len(self._devices)} devices)"

    @property
    def socket_name(self) -> str:
        """The socket file name in the device-plugin directory."""
        return f"{self.prefix}_{self.pool.resource_name}.sock"

    @property
    def env_name(self) -> str:
        """The environment variable listing a container's device IDs."""
        return "PCIDEVICE_" + f"{self.prefix}_{self.pool.resource_name}".upper().replace(".", "_")

    @property
    def generation(self) -> int:
        """Grows by one with every change of the device list or of a device's health."""
        with self._cond:
            return self._generation

    def devices(self) -> tuple[AgentDevice, ...]:
        """The devices, in PCI address order."""
        with self._cond:
            return tuple(self._devices[k] for k in sorted(self._devices))

    def get(self, device_id: str) -> AgentDevice | None:
        """The device with this ID, or None."""
        with self._cond:
            return self._devices.get(device_id)

    def candidates(self, ids: Iterable[str]) -> list[Candidate]:
        """The allocator's view of the devices *ids* (unknown ones left out)."""
        with self._cond:
            found = [self._devices[i] for i in ids if i in self._devices]
        return [Candidate(d.id, d.group, d.device.numa_node) for d in found]

    def set_health(self, device_id: str, health: Health, reason: str | None = None) -> bool:
        """Mark one device; True (and the watchers woken) if that changed anything."""
        with self._cond:
            device = self._devices.get(device_id)
            if device is None or (device.health, device.reason) == (health, reason):
                return False
            self._devices[device_id] = attrs.evolve(device, health=health, reason=reason)
            self._changed()
            return True

    def update_health(self, states: Mapping[str, tuple[Health, str | None]]) -> list[str]:
        """Mark many devices at once (one generation, one ListAndWatch update); the IDs
        whose health or reason changed."""
        changed = []
        with self._cond:
            for device_id, (health, reason) in states.items():
                device = self._devices.get(device_id)
                if device is not None and (device.health, device.reason) != (health, reason):
                    self._devices[device_id] = attrs.evolve(device, health=health, reason=reason)
                    changed.append(device_id)
            if changed:
                self._changed()
        return changed

    def reconfigure(self, pool: Pool, devices: Iterable[AgentDevice]) -> bool:
        """Take the pool's new definition (same resource name) and device list, keeping
        the health of devices it still has; True (and the watchers woken) if that changed
        anything."""
        with self._cond:
            kept = {
                d.id: (
                    attrs.evolve(d, health=old.health, reason=old.reason)
                    if (old := self._devices.get(d.id)) is not None
                    else d
                )
                for d in devices
            }
            if pool == self.pool and kept == self._devices:
                return False
            self.pool = pool
            self._devices = kept
            self._changed()
            return True

    def watch(self, seen: int, timeout: float) -> tuple[int, tuple[AgentDevice, ...]] | None:
        """Wait up to *timeout* seconds for a generation newer than *seen*.

        Returns (generation, devices) when there is one, ``(seen, ())`` on timeout, and
        None once the resource is closed.
        """
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self._closed and self._generation <= seen:
                left = deadline - time.monotonic()
                if left <= 0:
                    return seen, ()
                self._cond.wait(left)
            if self._closed:
                return None
            return self._generation, tuple(self._devices[k] for k in sorted(self._devices))

    def close(self) -> None:
        """End every watch (the agent is stopping or the pool is gone)."""
        with self._cond:
            self._closed = True
            self._cond.notify_all()

    @property
    def closed(self) -> bool:
        """Whether :meth:`close` was called."""
        with self._cond:
            return self._closed

    def _changed(self) -> None:
        self._generation += 1
        self._cond.notify_all()


def _wants(pool: Pool, device: PoolDevice) -> tuple[bool, bool]:
    """(isRdma, needVhostNet) of the first selector object of *pool* taking *device*."""
    for selector in pool.selectors:
        if selector_mismatch(selector, device) is None:
            return selector.is_rdma, selector.need_vhost_net
    return False, False


def agent_devices(pool: Pool, devices: Sequence[PoolDevice]) -> list[AgentDevice]:
    """The pool's members as resource devices (IDs longer than the kubelet takes are
    left out: they cannot be advertised)."""
    out = []
    for device in devices:
        if len(str(device.address)) > MAX_DEVICE_ID:
            continue
        rdma, vhost = _wants(pool, device)
        out.append(AgentDevice(device, rdma=rdma, vhost_net=vhost))
    return out


def build_resources(
    config: PoolConfig, devices: Sequence[PoolDevice], default_prefix: str
) -> list[Resource]:
    """One resource per pool of *config* that has devices on this node (first match
    wins across pools, as in the device plugin). Pools without devices are left out:
    the kubelet would only show a resource of capacity 0."""
    resources = []
    for members in assign(config, devices).pools:
        if members.devices:
            resources.append(
                Resource(members.pool, default_prefix, agent_devices(members.pool, members.devices))
            )
    return resources
