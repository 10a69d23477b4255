"""The node context every part of the Host shares: sysfs, netlink, plugins, lookups.

:class:`NodeContext` holds what the parts (:mod:`~sriovlib.host.numvfs`,
:mod:`~sriovlib.host.settings`, :mod:`~sriovlib.host.drivers`,
:mod:`~sriovlib.host.attach`, :mod:`~sriovlib.host.addresses`) need of the node: the
sysfs reader and writer, the netlink backend (created on first use, so that discovery
never loads pyroute2), the vendor plugins (loaded on first use), the timeouts, and the
lookups of one PF or VF by name or address. It imports no part and no part imports the
:class:`~sriovlib.host.Host` facade; a part that needs another is handed it.

The small helpers below it are shared by the parts: retrying a busy driver, naming a PF
in a message, the PF's netdev.
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sriovlib.exceptions import (
    Busy,
    DeviceNotFound,
    InvalidPciAddress,
    KernelError,
    KernelNotFound,
    kernel_error,
)
from sriovlib.models import (
    LinkInfo,
    NetnsRef,
    NetworkDevice,
    PciAddress,
    PhysicalFunction,
    VfState,
    VirtualFunction,
)
from sriovlib.sysfs import Sysfs, SysfsWriter

if TYPE_CHECKING:
    from sriovlib.netlink import NetlinkBackend
    from sriovlib.plugins.manager import PfHooks, Plugins

__all__ = ["USERSPACE_DRIVERS", "NodeContext"]

#: Drivers that give a VF to user space (DPDK, a VM): such a VF has no netdev.
USERSPACE_DRIVERS = frozenset({"vfio-pci", "uio_pci_generic", "igb_uio"})

_BUSY_RETRIES = 4


class NodeContext:
    """What every part of the Host works against (see :class:`~sriovlib.host.Host` for
    the arguments)."""

    def __init__(
        self,
        sysfs_root: str | os.PathLike[str],
        *,
        netlink: NetlinkBackend | None,
        sysfs_writer: SysfsWriter | None,
        in_use: Callable[[VirtualFunction], bool] | None,
        wait_timeout: float,
        verify_timeout: float,
        poll_interval: float,
        plugins: Plugins | None,
    ) -> None:
        self.sysfs = Sysfs(sysfs_root, writer=sysfs_writer)
        self._plugins = plugins
        self._netlink = netlink
        self._owns_netlink = netlink is None
        self.in_use = in_use if in_use is not None else _moved_away
        self.wait_timeout = wait_timeout
        self.verify_timeout = verify_timeout
        self.poll_interval = poll_interval

    @property
    def netlink(self) -> NetlinkBackend:
        """The netlink backend (the real kernel's is created here on first use)."""
        if self._netlink is None:
            from sriovlib.netlink import KernelNetlink

            self._netlink = KernelNetlink()
        return self._netlink

    def close(self) -> None:
        """Close the netlink backend if this node created it (a given one is the
        giver's)."""
        if self._owns_netlink and self._netlink is not None:
            self._netlink.close()
            self._netlink = None

    @property
    def netlink_if_created(self) -> NetlinkBackend | None:
        """The netlink backend if one was given or has been created, else None."""
        return self._netlink

    @property
    def plugins(self) -> Plugins:
        """The vendor plugins (loaded here on first use)."""
        if self._plugins is None:
            from sriovlib.plugins.manager import Plugins

            self._plugins = Plugins()
        return self._plugins

    def hooks(self, pf: PhysicalFunction | str | PciAddress) -> PfHooks:
        """The vendor hooks of *pf*: its plugin's answers, falling back to generic."""
        parent = pf if isinstance(pf, PhysicalFunction) else self.pf(pf)
        return self.plugins.for_pf(parent)

    # -- lookups -------------------------------------------------------------------------

    def pf(self, name_or_address: str | PciAddress) -> PhysicalFunction:
        """The PF with this netdev name or PCI address; :class:`DeviceNotFound` if none."""
        address = self.resolve(name_or_address, "PF")
        device = self.sysfs.device(address)
        if not isinstance(device, PhysicalFunction):
            raise DeviceNotFound(
                "PF", str(name_or_address), f"{address} is {_describe(device)}, not an SR-IOV PF"
            )
        return device

    def vf(self, address: str | PciAddress) -> VirtualFunction:
        """The VF at this PCI address; :class:`DeviceNotFound` if there is none."""
        pci = address if isinstance(address, PciAddress) else PciAddress.parse(address)
        device = self.sysfs.device(pci)
        if not isinstance(device, VirtualFunction):
            raise DeviceNotFound("VF", str(pci), f"{pci} is {_describe(device)}")
        return device

    def fresh_pf(self, pf: PhysicalFunction | str | PciAddress) -> PhysicalFunction:
        """*pf* read again from sysfs (a value may be stale)."""
        return self.pf(pf.address if isinstance(pf, PhysicalFunction) else pf)

    def fresh_vf(self, vf: VirtualFunction | PciAddress | str) -> VirtualFunction:
        """*vf* read again from sysfs."""
        return self.vf(vf.address if isinstance(vf, VirtualFunction) else vf)

    def read_vf(self, pf_name: str, index: int) -> VfState:
        """VF *index*'s settings as PF *pf_name* reports them (one VF-list read)."""
        for state in self.netlink.vf_states(pf_name):
            if state.index == index:
                return state
        raise KernelNotFound(
            "read VF list",
            f"{pf_name} vf {index}",
            errno.ENODEV,
            detail="the PF reports no such VF",
        )

    def resolve(self, name_or_address: str | PciAddress, kind: str) -> PciAddress:
        """The PCI address of a netdev name or an address string."""
        if isinstance(name_or_address, PciAddress):
            return name_or_address
        try:
            return PciAddress.parse(name_or_address)
        except InvalidPciAddress:
            pass
        try:
            address = self.sysfs.netdev_address(name_or_address)
        except ValueError as e:
            raise DeviceNotFound(kind, name_or_address, str(e)) from None
        except DeviceNotFound:
            raise DeviceNotFound(
                kind, name_or_address, "neither a PCI address nor a network interface"
            ) from None
        if address is None:
            raise DeviceNotFound(kind, name_or_address, "it is a virtual interface")
        return address

    def sysfs_write(
        self, pf: PhysicalFunction, operation: str, vf: PciAddress, driver: str | None
    ) -> None:
        """Unbind *vf* from *driver*, or (driver None) ask the kernel to probe it."""
        try:
            if driver is None:
                self.sysfs.probe(vf)
            else:
                self.sysfs.unbind(vf, driver)
        except OSError as e:
            raise kernel_error(e.errno or errno.EIO, operation, str(vf), driver=pf.driver) from None


def _describe(device: PhysicalFunction | VirtualFunction | NetworkDevice) -> str:
    if isinstance(device, VirtualFunction):
        return f"VF {device.index} of {device.pf_address}"
    if isinstance(device, PhysicalFunction):
        return "an SR-IOV PF"
    return "a NIC without SR-IOV"


def _moved_away(vf: VirtualFunction) -> bool:
    """Default ``in_use``: the VF has a netdev driver but no netdev on the host."""
    return vf.driver is not None and vf.driver not in USERSPACE_DRIVERS and vf.netdev is None


# -- helpers the parts share -----------------------------------------------------------


def bind(function: Callable[..., None], *args: object) -> Callable[[], None]:
    """*function* with *args* bound, as a step to run later."""
    return lambda: function(*args)


def retry_busy(action: Callable[[], None], also: tuple[int, ...] = ()) -> None:
    """Run *action*; on EBUSY/EAGAIN (or an errno in *also*) try again a few times, for
    about 0.75 s in all. Drivers such as i40e answer busy while a VF resets after the
    previous change; igbvf answers EADDRNOTAVAIL to a MAC change while its mailbox is
    still busy with the PF's last change (seen after a namespace was deleted)."""
    for attempt in range(_BUSY_RETRIES):
        try:
            action()
            return
        except KernelError as e:
            if not (isinstance(e, Busy) or e.errno in also) or attempt == _BUSY_RETRIES - 1:
                raise
            time.sleep(0.05 * 2**attempt)


def set_mac(nl: NetlinkBackend, index: int, mac: str) -> None:
    """Set interface *index*'s own MAC."""
    nl.set_link(index, mac=mac)


def get_or_none(nl: NetlinkBackend, name: str, netns: NetnsRef | None) -> LinkInfo | None:
    """The interface *name* in *netns*, or None when there is none."""
    try:
        return nl.get_link(name, netns)
    except KernelNotFound:
        return None


def pf_label(pf: PhysicalFunction) -> str:
    """The PF as messages name it: ``0000:3b:00.0 (ens1f0)``."""
    return f"{pf.address} ({pf.netdevs[0]})" if pf.netdevs else str(pf.address)


def pf_netdev(pf: PhysicalFunction) -> str:
    """The PF's interface, through which its VFs are configured."""
    if not pf.netdevs:
        raise DeviceNotFound(
            "netdev of PF",
            str(pf.address),
            "VF settings go through the PF's interface; is its driver bound?",
        )
    return pf.netdevs[0]
