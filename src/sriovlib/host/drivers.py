"""VF driver binding: re-probing a VF's driver, binding it to the driver of a device type.

Sysfs does the writes (``unbind``, ``bind``, ``driver_override``, ``drivers_probe``);
the vendor plugin names the driver of a device type (``vfio-pci`` for userspace, the
kernel VF driver for a netdev).
"""

from __future__ import annotations

import errno
import time

from sriovlib.exceptions import DeviceNotFound, VfsNotReady, kernel_error
from sriovlib.host.node import NodeContext, get_or_none
from sriovlib.models import PciAddress, VirtualFunction
from sriovlib.plugins.types import DeviceType

__all__ = ["Drivers"]


class Drivers:
    """Rebinds VFs (:meth:`rebind_vf`) and binds them to a device type's driver
    (:meth:`bind_driver`)."""

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
        try:
            self.node.sysfs.set_driver_override(current.address, driver)
            self.node.sysfs.probe(current.address)
        except OSError as e:
            raise kernel_error(
                e.errno or errno.EIO,
                f"bind VF to {driver}",
                str(current.address),
                driver=pf.driver,
            ) from None
        return self.node.fresh_vf(current.address)
