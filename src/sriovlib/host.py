"""The :class:`Host` facade: the one object every entrypoint goes through."""

from __future__ import annotations

import os

from sriovlib.exceptions import DeviceNotFound, InvalidPciAddress
from sriovlib.models import NetworkDevice, PciAddress, PhysicalFunction, VirtualFunction
from sriovlib.sysfs import Inventory, Sysfs

__all__ = ["Host"]


class Host:
    """SR-IOV view of one Linux node.

    Args:
        sysfs_root: The directory that holds ``sys/`` — ``/`` on a real node, a tree made
            by :class:`sriovlib.testing.FakeSysfs` in tests and examples.

    Every query reads the kernel afresh: VFs come and go, and a cached answer would go
    stale behind a long-running daemon's back. Lookups of one device read only that
    device, not the whole bus.
    """

    def __init__(self, sysfs_root: str | os.PathLike[str] = "/") -> None:
        self.sysfs = Sysfs(sysfs_root)

    def __repr__(self) -> str:
        return f"Host(sysfs_root={str(self.sysfs.root)!r})"

    def inventory(self) -> Inventory:
        """One scan of the PCI bus: PFs, VFs, other NICs and unreadable devices."""
        return self.sysfs.scan()

    def pfs(self) -> tuple[PhysicalFunction, ...]:
        """Every SR-IOV capable PF, in PCI address order."""
        return self.sysfs.scan().pfs

    def vfs(self, pf: PhysicalFunction | str | None = None) -> tuple[VirtualFunction, ...]:
        """Every VF on the node, or only those of *pf* (a PF, its name or its address),
        ordered by VF index within a PF."""
        if pf is None:
            return self.sysfs.scan().vfs
        parent = pf if isinstance(pf, PhysicalFunction) else self.pf(pf)
        vfs = [v for v in self.sysfs.scan().vfs if v.pf_address == parent.address]
        return tuple(sorted(vfs, key=lambda v: v.index))

    def pf(self, name_or_address: str | PciAddress) -> PhysicalFunction:
        """The PF with this netdev name or PCI address; :class:`DeviceNotFound` if none."""
        address = self._resolve(name_or_address, "PF")
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

    def _resolve(self, name_or_address: str | PciAddress, kind: str) -> PciAddress:
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
        if address is None:
            raise DeviceNotFound(kind, name_or_address, "it is a virtual interface")
        return address


def _describe(device: PhysicalFunction | VirtualFunction | NetworkDevice) -> str:
    if isinstance(device, VirtualFunction):
        return f"VF {device.index} of {device.pf_address}"
    if isinstance(device, PhysicalFunction):
        return "an SR-IOV PF"
    return "a NIC without SR-IOV"
