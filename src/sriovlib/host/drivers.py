"""VF driver binding: re-probing a VF's driver, binding it to the driver of a device type,
saying beforehand why a bind would fail, and binding a VF back to the driver it had.

Sysfs does the writes (``unbind``, ``bind``, ``driver_override``, ``drivers_probe``);
the vendor plugin names the driver of a device type (``vfio-pci`` for userspace, the
kernel VF driver for a netdev).
"""

from __future__ import annotations

import errno
import time

from sriovlib.exceptions import DeviceNotFound, VfsNotReady, kernel_error
from sriovlib.host.node import USERSPACE_DRIVERS, NodeContext, get_or_none
from sriovlib.models import PciAddress, PhysicalFunction, VirtualFunction
from sriovlib.plugins.types import DeviceType

__all__ = ["Drivers"]


class Drivers:
    """Rebinds VFs (:meth:`rebind_vf`), binds them to a device type's driver
    (:meth:`bind_driver`, after :meth:`bind_problem` said it can) and back to the driver
    they had (:meth:`bind_back`)."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node

    def rebind_vf(self, vf: VirtualFunction | PciAddress | str) -> VirtualFunction:
        """Re-probe a VF's driver (unbind, bind) and keep its netdev name.

        Some drivers apply an admin MAC only when the VF driver probes again (igb,
        ixgbe). The new netdev gets whatever name the kernel picks; it is renamed back
        to the old one while it is still down.
        """
        current = self.node.fresh_vf(vf)
        pf = self.node.fresh_pf(current.pf_address)
        if current.driver is None:
            raise DeviceNotFound("driver of VF", str(current.address), "it is unbound")
        old_name = current.netdev
        self.node.sysfs_write(pf, "unbind VF", current.address, current.driver)
        try:
            self.node.sysfs.bind(current.address, current.driver)
        except OSError as e:
            raise kernel_error(
                e.errno or errno.EIO, "bind VF", str(current.address), driver=current.driver
            ) from None
        deadline = time.monotonic() + self.node.wait_timeout
        fresh = self.node.fresh_vf(current.address)
        while old_name is not None and fresh.netdev is None:
            if time.monotonic() >= deadline:
                raise VfsNotReady(
                    f"VF {current.address} has no netdev after rebinding {current.driver}"
                )
            time.sleep(self.node.poll_interval)
            fresh = self.node.fresh_vf(current.address)
        if old_name is not None and fresh.netdev is not None and fresh.netdev != old_name:
            link = self.node.netlink.get_link(fresh.netdev)
            if not link.up and get_or_none(self.node.netlink, old_name, None) is None:
                self.node.netlink.rename_link(link.index, old_name)
                fresh = self.node.fresh_vf(current.address)
        return fresh

    def bind_driver(
        self, vf: VirtualFunction | PciAddress | str, device_type: DeviceType
    ) -> VirtualFunction:
        """Bind a VF to the driver its plugin names for *device_type* (``vfio-pci`` for
        userspace, the kernel VF driver for a netdev), through ``driver_override`` and
        ``drivers_probe``; a VF already on that driver is left alone."""
        current = self.node.fresh_vf(vf)
        pf = self.node.fresh_pf(current.pf_address)
        driver = self.node.hooks(pf).vf_driver(current, device_type)
        if driver is not None and current.driver == driver:
            return current
        if current.driver is not None:
            self.node.sysfs_write(pf, "unbind VF", current.address, current.driver)
        self._probe(pf, current.address, driver)
        return self.node.fresh_vf(current.address)

    def _probe(self, pf: PhysicalFunction, vf: PciAddress, driver: str | None) -> None:
        """Pin *vf* to *driver* with ``driver_override`` (None: no pin, the kernel picks
        by PCI id) and probe it."""
        try:
            self.node.sysfs.set_driver_override(vf, driver)
            self.node.sysfs.probe(vf)
        except OSError as e:
            raise kernel_error(
                e.errno or errno.EIO, f"bind VF to {driver}", str(vf), driver=pf.driver
            ) from None

    def bind_problem(
        self, vf: VirtualFunction | PciAddress | str, device_type: DeviceType
    ) -> str | None:
        """Why :meth:`bind_driver` of *vf* to *device_type* would fail now, read without
        changing anything, or None (also when the VF is on that driver already).

        vfio-pci needs its driver registered (``modprobe vfio-pci``) and the VF in an
        IOMMU group (or vfio's no-IOMMU mode); a named netdev driver must be registered.
        """
        current = self.node.fresh_vf(vf)
        pf = self.node.fresh_pf(current.pf_address)
        driver: str | None = self.node.hooks(pf).vf_driver(current, device_type)
        if driver is None:
            return None  # the kernel picks by PCI id; bind_driver's caller checks the result
        if current.driver == driver:
            return None
        if not self.node.sysfs.pci_driver_loaded(driver):
            return f"the {driver} driver is not loaded (modprobe {driver})"
        if (
            driver == "vfio-pci"
            and current.iommu_group is None
            and not self.node.sysfs.vfio_noiommu_enabled()
        ):
            return (
                "it is in no IOMMU group, which vfio-pci needs (no IOMMU: boot with "
                "intel_iommu=on or amd_iommu=on)"
            )
        return None

    def bind_back(
        self, vf: VirtualFunction | PciAddress | str, driver: str | None, netdev: str | None
    ) -> VirtualFunction:
        """Bind *vf* to *driver* again (None: leave it unbound), the driver it had before
        a :meth:`bind_driver`; a netdev driver's new interface is renamed *netdev* (its
        name then) while it is still down. A VF on *driver* already is left alone.

        A userspace driver is pinned with ``driver_override``, as :meth:`bind_driver`
        pins it; for a netdev driver the pin is cleared after the probe, so the VF is
        bound by its PCI id again at the next probe, as before.

        Raises:
            VfsNotReady: the VF did not bind to *driver*, or its netdev did not appear.
        """
        current = self.node.fresh_vf(vf)
        pf = self.node.fresh_pf(current.pf_address)
        if current.driver != driver:
            if current.driver is not None:
                self.node.sysfs_write(pf, "unbind VF", current.address, current.driver)
            if driver is not None:
                self._probe(pf, current.address, driver)
                if driver not in USERSPACE_DRIVERS:
                    try:
                        self.node.sysfs.set_driver_override(current.address, None)
                    except OSError as e:
                        raise kernel_error(
                            e.errno or errno.EIO,
                            "clear driver_override",
                            str(current.address),
                            driver=pf.driver,
                        ) from None
        fresh = self.node.fresh_vf(current.address)
        if fresh.driver != driver:
            raise VfsNotReady(
                f"VF {current.address} did not bind to {driver or 'no driver'} again "
                f"(it has {fresh.driver or 'no driver'})"
            )
        if driver is None or driver in USERSPACE_DRIVERS or netdev is None:
            return fresh
        deadline = time.monotonic() + self.node.wait_timeout
        while fresh.netdev is None:
            if time.monotonic() >= deadline:
                raise VfsNotReady(f"VF {current.address} has no netdev after binding {driver}")
            time.sleep(self.node.poll_interval)
            fresh = self.node.fresh_vf(current.address)
        if fresh.netdev != netdev:
            link = self.node.netlink.get_link(fresh.netdev)
            if not link.up and get_or_none(self.node.netlink, netdev, None) is None:
                self.node.netlink.rename_link(link.index, netdev)
                fresh = self.node.fresh_vf(current.address)
        return fresh
