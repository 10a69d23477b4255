"""Build fake sysfs trees that mirror the real kernel layout.

The tree lives under a directory you choose; point :class:`sriovlib.Host` (or
:class:`sriovlib.sysfs.Sysfs`) at that directory as its root. The layout follows the
kernel's::

    sys/devices/pci0000:00/0000:00:NN.0/<pf>/{vendor,device,class,numa_node,...}
    sys/devices/pci0000:00/0000:00:NN.0/<pf>/virtfnN -> ../<vf>
    sys/devices/pci0000:00/0000:00:NN.0/<vf>/physfn -> ../<pf>
    sys/devices/.../<fn>/driver -> ../../../../bus/pci/drivers/<driver>
    sys/devices/.../<fn>/iommu_group -> ../../../../kernel/iommu_groups/<n>
    sys/devices/.../<fn>/net/<ifname>/{address,type,mtu,...}
    sys/bus/pci/devices/<fn> -> ../../../devices/pci0000:00/0000:00:NN.0/<fn>
    sys/class/net/<ifname> -> ../../devices/.../<fn>/net/<ifname>
    sys/devices/virtual/net/<ifname>   (bridges, veth, docker0: no ``device`` link)

Only what sriovlib reads is generated, but every path and link is where the kernel puts
it, so code that works here works on a real node.
"""

from __future__ import annotations

import os
import stat
from collections.abc import Iterable
from pathlib import Path

import attrs

from sriovlib.models import LinkType, PciAddress, PciId

__all__ = ["FakePf", "FakeSysfs"]

_ETHERNET_CLASS = "0x020000"
_INFINIBAND_CLASS = "0x020700"


@attrs.frozen
class FakePf:
    """What :meth:`FakeSysfs.add_pf` created, for tests to refer to."""

    address: PciAddress
    netdev: str | None
    vf_ids: PciId
    vf_driver: str
    vf_offset: int
    vf_stride: int
    link_type: LinkType

    def vf_address(self, index: int) -> PciAddress:
        """The PCI address the kernel gives VF number *index* of this PF."""
        routing_id = (self.address.bus << 8) | (self.address.device << 3) | self.address.function
        routing_id += self.vf_offset + self.vf_stride * index
        return PciAddress(
            domain=self.address.domain,
            bus=(routing_id >> 8) & 0xFF,
            device=(routing_id >> 3) & 0x1F,
            function=routing_id & 0x7,
        )

    def vf_netdev(self, index: int) -> str | None:
        """The name the builder gives VF *index*'s netdev (None for a PF without netdev)."""
        return None if self.netdev is None else f"{self.netdev}v{index}"


class FakeSysfs:
    """A writable fake ``/sys`` rooted at *root* (created if missing)."""

    def __init__(self, root: str | os.PathLike[str]) -> None:
        self.root = Path(root)
        self.sys = self.root / "sys"
        for sub in (
            "bus/pci/devices",
            "bus/pci/drivers",
            "class/net",
            "devices/virtual/net",
            "kernel/iommu_groups",
            "module",
        ):
            (self.sys / sub).mkdir(parents=True, exist_ok=True)
        self._next_port = 1
        self._next_group = 1
        self._pfs: dict[PciAddress, FakePf] = {}

    # -- public builders ---------------------------------------------------------

    def add_pf(
        self,
        *,
        ids: PciId,
        driver: str,
        vf_ids: PciId,
        vf_driver: str,
        total_vfs: int,
        num_vfs: int = 0,
        address: PciAddress | str | None = None,
        netdev: str | None = None,
        numa_node: int = -1,
        link_type: LinkType = LinkType.ETHERNET,
        switchdev: bool = False,
        rdma: bool = False,
        vf_offset: int = 2,
        vf_stride: int = 1,
        vfio_vfs: Iterable[int] = (),
        away_vfs: Iterable[int] = (),
        mac_prefix: str = "52:54:00",
    ) -> FakePf:
        """Add an SR-IOV PF and *num_vfs* of its VFs.

        Args:
            ids: The PF's vendor:device.
            driver: The PF driver (``mlx5_core``, ``i40e``...).
            vf_ids / vf_driver: What the VFs report and bind to.
            total_vfs: ``sriov_totalvfs``.
            num_vfs: VFs to create now.
            address: PCI address; by default the next free bus, function 0.
            netdev: PF interface name; None leaves the PF without a netdev (unbound).
            numa_node: -1 for none.
            link_type: Ethernet or InfiniBand (changes ``class`` and netdev ``type``).
            switchdev: Give the PF netdev ``phys_switch_id``/``phys_port_name``.
            rdma: Give the PF and its VFs an ``infiniband/<dev>`` entry (mlx5).
            vf_offset / vf_stride: SR-IOV routing-id offset and stride.
            vfio_vfs: VF indices bound to vfio-pci (no netdev, an IOMMU group).
            away_vfs: VF indices whose netdev is in another namespace (no ``net/`` entry).
        """
        pf_address = self._address(address)
        pf = FakePf(
            address=pf_address,
            netdev=netdev,
            vf_ids=vf_ids,
            vf_driver=vf_driver,
            vf_offset=vf_offset,
            vf_stride=vf_stride,
            link_type=link_type,
        )
        path = self._add_function(pf_address, ids, driver, numa_node, link_type)
        _write(path / "sriov_totalvfs", str(total_vfs))
        _write(path / "sriov_numvfs", "0")
        _write(path / "sriov_offset", str(vf_offset))
        _write(path / "sriov_stride", str(vf_stride))
        _write(path / "sriov_vf_device", vf_ids.device_hex)
        _write(path / "sriov_drivers_autoprobe", "1")
        if netdev is not None:
            net = self._add_netdev(path, netdev, link_type, mac=_mac(mac_prefix, pf_address, 0xFF))
            if switchdev:
                _write(net / "phys_switch_id", f"{pf_address.bus:02x}{pf_address.device:02x}e2ff")
                _write(net / "phys_port_name", f"p{pf_address.function}")
        if rdma:
            (path / "infiniband" / self._rdma_name(pf_address)).mkdir(parents=True)
        self._pfs[pf_address] = pf
        self.set_num_vfs(
            pf_address,
            num_vfs,
            vfio_vfs=vfio_vfs,
            away_vfs=away_vfs,
            numa_node=numa_node,
            rdma=rdma,
            mac_prefix=mac_prefix,
        )
        return pf

    def set_num_vfs(
        self,
        pf_address: PciAddress,
        num_vfs: int,
        *,
        vfio_vfs: Iterable[int] = (),
        away_vfs: Iterable[int] = (),
        numa_node: int | None = None,
        rdma: bool | None = None,
        mac_prefix: str = "52:54:00",
    ) -> None:
        """Remove every VF of the PF, then create *num_vfs* fresh ones (as the kernel does)."""
        pf = self._pfs[pf_address]
        pf_path = self._device_path(pf_address)
        if numa_node is None:
            numa_node = int((pf_path / "numa_node").read_text())
        if rdma is None:
            rdma = (pf_path / "infiniband").is_dir()
        for link in sorted(pf_path.glob("virtfn*")):
            self._remove_function(PciAddress.parse(os.path.basename(os.readlink(link))))
            link.unlink()
        vfio, away = set(vfio_vfs), set(away_vfs)
        for index in range(num_vfs):
            vf_address = pf.vf_address(index)
            driver = "vfio-pci" if index in vfio else pf.vf_driver
            path = self._add_function(
                vf_address, pf.vf_ids, driver, numa_node, pf.link_type, parent=pf_path.parent
            )
            _link(pf_path / f"virtfn{index}", path)
            _link(path / "physfn", pf_path)
            netdev = pf.vf_netdev(index)
            if netdev is not None and index not in vfio and index not in away:
                self._add_netdev(
                    path, netdev, pf.link_type, mac=_mac(mac_prefix, pf_address, index)
                )
            else:
                (path / "net").mkdir(exist_ok=True)
            if rdma and index not in vfio:
                (path / "infiniband" / self._rdma_name(vf_address)).mkdir(parents=True)
        _write(pf_path / "sriov_numvfs", str(num_vfs))

    def add_nic(
        self,
        *,
        ids: PciId,
        driver: str,
        netdev: str,
        address: PciAddress | str | None = None,
        numa_node: int = -1,
    ) -> PciAddress:
        """Add a network function without SR-IOV (no ``sriov_totalvfs``)."""
        pci = self._address(address)
        path = self._add_function(pci, ids, driver, numa_node, LinkType.ETHERNET)
        self._add_netdev(path, netdev, LinkType.ETHERNET, mac=_mac("52:54:01", pci, 0))
        return pci

    def add_virtual_netdev(self, name: str) -> None:
        """Add an interface with no PCI device behind it (bridge, veth, docker0)."""
        net = self.sys / "devices/virtual/net" / name
        net.mkdir(parents=True)
        _write(net / "type", "1")
        _write(net / "address", "02:42:ac:11:00:01")
        _link(self.sys / "class/net" / name, net)

    def enable_iommu(self) -> None:
        """Make the node look booted with an IOMMU (``intel_iommu=on``)."""
        (self.sys / "class/iommu/dmar0").mkdir(parents=True, exist_ok=True)
        proc = self.root / "proc"
        proc.mkdir(exist_ok=True)
        _write(proc / "cmdline", "BOOT_IMAGE=/vmlinuz root=/dev/sda1 intel_iommu=on iommu=pt")
        for fn in self.sys.glob("bus/pci/devices/*"):
            if not (fn / "iommu_group").exists():
                self._join_iommu_group(fn.resolve())

    def load_driver(self, driver: str) -> None:
        """Register a PCI driver (e.g. ``vfio-pci``) and its module."""
        (self.sys / "bus/pci/drivers" / driver).mkdir(parents=True, exist_ok=True)
        (self.sys / "module" / driver.replace("-", "_")).mkdir(parents=True, exist_ok=True)

    # -- internals ------------------------------------------------------------------

    def _address(self, address: PciAddress | str | None) -> PciAddress:
        if isinstance(address, PciAddress):
            return address
        if address is not None:
            return PciAddress.parse(address)
        used = {PciAddress.parse(p.name).bus for p in (self.sys / "bus/pci/devices").iterdir()}
        # leave room after each PF for its VFs' buses, as firmware does
        bus = max(used, default=0x02) + 1 if used else 0x03
        return PciAddress(0, bus, 0, 0)

    def _device_path(self, address: PciAddress) -> Path:
        return (self.sys / "bus/pci/devices" / str(address)).resolve()

    def _parent_port(self, address: PciAddress) -> Path:
        """The root port directory a function hangs under (one per bus)."""
        port = (
            self.sys
            / "devices"
            / f"pci{address.domain:04x}:00"
            / f"{address.domain:04x}:00:{address.bus % 0x20:02x}.0"
        )
        port.mkdir(parents=True, exist_ok=True)
        return port

    def _add_function(
        self,
        address: PciAddress,
        ids: PciId,
        driver: str | None,
        numa_node: int,
        link_type: LinkType,
        parent: Path | None = None,
    ) -> Path:
        name = str(address)
        path = (parent or self._parent_port(address)) / name
        if path.exists():
            raise ValueError(f"fake PCI function {name} already exists")
        path.mkdir(parents=True)
        _write(path / "vendor", f"0x{ids.vendor:04x}")
        _write(path / "device", f"0x{ids.device:04x}")
        _write(
            path / "class",
            _INFINIBAND_CLASS if link_type is LinkType.INFINIBAND else _ETHERNET_CLASS,
        )
        _write(path / "numa_node", str(numa_node))
        _write(path / "driver_override", "(null)")
        _link(self.sys / "bus/pci/devices" / name, path)
        if driver is not None:
            drv = self.sys / "bus/pci/drivers" / driver
            drv.mkdir(parents=True, exist_ok=True)
            _link(path / "driver", drv)
            _link(drv / name, path)
        if driver == "vfio-pci" or (self.sys / "class/iommu/dmar0").is_dir():
            self._join_iommu_group(path)
        return path

    def _join_iommu_group(self, path: Path) -> None:
        group = self.sys / "kernel/iommu_groups" / str(self._next_group)
        self._next_group += 1
        (group / "devices").mkdir(parents=True)
        _link(group / "devices" / path.name, path)
        _link(path / "iommu_group", group)
        dev = self.root / "dev/vfio"
        dev.mkdir(parents=True, exist_ok=True)
        for node in (dev / "vfio", dev / group.name):
            if not node.exists():
                _device_node(node)

    def _remove_function(self, address: PciAddress) -> None:
        name = str(address)
        path = self._device_path(address)
        for net in (path / "net").glob("*") if (path / "net").is_dir() else ():
            (self.sys / "class/net" / net.name).unlink(missing_ok=True)
        driver = path / "driver"
        if driver.is_symlink():
            (driver.resolve() / name).unlink(missing_ok=True)
        for rdma in (path / "infiniband").glob("*") if (path / "infiniband").is_dir() else ():
            (self.sys / "class/infiniband" / rdma.name).rmdir()
        group = path / "iommu_group"
        if group.is_symlink():
            target = group.resolve()
            _rmtree(target)
            (self.root / "dev/vfio" / target.name).unlink(missing_ok=True)
        (self.sys / "bus/pci/devices" / name).unlink()
        _rmtree(path)

    def _add_netdev(self, device: Path, name: str, link_type: LinkType, mac: str) -> Path:
        net = device / "net" / name
        net.mkdir(parents=True)
        _write(net / "type", "32" if link_type is LinkType.INFINIBAND else "1")
        _write(net / "address", mac)
        _write(net / "mtu", "2044" if link_type is LinkType.INFINIBAND else "1500")
        _write(net / "operstate", "up")
        _link(net / "device", device)
        _link(self.sys / "class/net" / name, net)
        return net

    def _rdma_name(self, address: PciAddress) -> str:
        rdma = self.sys / "class/infiniband"
        rdma.mkdir(parents=True, exist_ok=True)
        name = f"mlx5_{len(list(rdma.iterdir()))}"
        (rdma / name).mkdir()
        return name


def _write(path: Path, text: str) -> None:
    path.write_text(text + "\n")


def _link(link: Path, target: Path) -> None:
    """Create *link* pointing at *target* with a relative path ending in the target's
    own name, as sysfs does (``device -> ../../../0000:03:00.0``, never ``../..``)."""
    link.symlink_to(os.path.join(os.path.relpath(target.parent, link.parent), target.name))


def _mac(prefix: str, pf: PciAddress, index: int) -> str:
    return f"{prefix}:{pf.bus:02x}:{pf.function:02x}:{index & 0xFF:02x}"


def _rmtree(path: Path) -> None:
    for child in path.iterdir():
        if child.is_symlink() or child.is_file():
            child.unlink()
        else:
            _rmtree(child)
    path.rmdir()


def _device_node(path: Path) -> None:
    """A character device node at *path* in the tree, so that a container runtime
    accepts it as one; a plain file where that needs privileges we lack. Its numbers
    are /dev/null's (1:3): harmless whatever opens it."""
    try:
        os.mknod(path, 0o600 | stat.S_IFCHR, os.makedev(1, 3))
    except PermissionError:
        path.touch()
