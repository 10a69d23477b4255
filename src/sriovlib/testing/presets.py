"""Vendor presets and whole example hosts for :class:`~sriovlib.testing.FakeSysfs`.

Each preset adds one real NIC model with its real PCI ids and driver names (see the
PF/VF id table in the project's vendor notes). :data:`EXAMPLES` builds whole nodes — an
SR-IOV NIC, an onboard NIC without SR-IOV, a bridge and a veth — which is what
``sriovlib list --example NAME`` shows to a newcomer without SR-IOV hardware.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable
from pathlib import Path

import attrs

from sriovlib.models import LinkType, PciAddress, PciId
from sriovlib.testing.builder import FakePf, FakeSysfs

__all__ = ["EXAMPLES", "PRESETS", "NicModel", "add_nic_model", "build_example"]


@attrs.frozen
class NicModel:
    """One SR-IOV NIC model: ids, drivers and per-port VF limit."""

    name: str
    pf_ids: PciId
    vf_ids: PciId
    pf_driver: str
    vf_driver: str
    total_vfs: int
    ports: int
    netdev_prefix: str
    rdma: bool = False


PRESETS: dict[str, NicModel] = {
    "mlx5": NicModel(
        "Mellanox ConnectX-5",
        PciId(0x15B3, 0x1017),
        PciId(0x15B3, 0x1018),
        "mlx5_core",
        "mlx5_core",
        16,
        2,
        "ens1f",
        rdma=True,
    ),
    "i40e": NicModel(
        "Intel X710 SFP+",
        PciId(0x8086, 0x1572),
        PciId(0x8086, 0x154C),
        "i40e",
        "iavf",
        64,
        2,
        "enp59s0f",
    ),
    "ixgbe": NicModel(
        "Intel 82599 SFP+",
        PciId(0x8086, 0x10FB),
        PciId(0x8086, 0x10ED),
        "ixgbe",
        "ixgbevf",
        63,
        2,
        "enp4s0f",
    ),
    "ice": NicModel(
        "Intel E810-C SFP",
        PciId(0x8086, 0x1593),
        PciId(0x8086, 0x1889),
        "ice",
        "iavf",
        128,
        2,
        "ens2f",
    ),
    "igb": NicModel(
        "Intel 82576", PciId(0x8086, 0x10C9), PciId(0x8086, 0x10CA), "igb", "igbvf", 7, 2, "enp1s0f"
    ),
}


def add_nic_model(
    fs: FakeSysfs,
    preset: str | NicModel,
    *,
    bus: int,
    num_vfs: int = 0,
    ports: int | None = None,
    numa_node: int = -1,
    link_type: LinkType = LinkType.ETHERNET,
    switchdev: bool = False,
    vfio_vfs: Iterable[int] = (),
    away_vfs: Iterable[int] = (),
    netdev_prefix: str | None = None,
) -> list[FakePf]:
    """Add every port of a NIC model at ``0000:<bus>:00.<port>``.

    VFs of port *p* are laid out after the PF functions the way the kernel numbers them
    (offset and stride per port), so dual-port cards share one bus as on real hardware.
    *num_vfs*, *vfio_vfs* and *away_vfs* apply to every port.
    """
    model = PRESETS[preset] if isinstance(preset, str) else preset
    prefix = netdev_prefix or model.netdev_prefix
    count = model.ports if ports is None else ports
    pfs = []
    for port in range(count):
        pfs.append(
            fs.add_pf(
                ids=model.pf_ids,
                driver=model.pf_driver,
                vf_ids=model.vf_ids,
                vf_driver=model.vf_driver,
                total_vfs=model.total_vfs,
                num_vfs=num_vfs,
                address=PciAddress(0, bus, 0, port),
                netdev=f"{prefix}{port}" if link_type is LinkType.ETHERNET else f"ib{port}",
                numa_node=numa_node,
                link_type=link_type,
                switchdev=switchdev,
                rdma=model.rdma,
                # ports first, then each port's block of total_vfs VFs
                vf_offset=count - port + port * model.total_vfs,
                vf_stride=1,
                vfio_vfs=vfio_vfs,
                away_vfs=away_vfs,
            )
        )
    return pfs


def _node(fs: FakeSysfs) -> None:
    """The parts every example node has besides its SR-IOV NIC."""
    fs.add_nic(ids=PciId(0x8086, 0x1533), driver="igb", netdev="eno1", address="0000:01:00.0")
    for name in ("docker0", "cni0", "veth1a2b3c4d"):
        fs.add_virtual_netdev(name)


def _example(preset: str, **options: object) -> Callable[[FakeSysfs], None]:
    def build(fs: FakeSysfs) -> None:
        _node(fs)
        fs.enable_iommu()
        fs.load_driver("vfio-pci")
        add_nic_model(fs, preset, bus=0x3B, **options)  # type: ignore[arg-type]

    return build


def _mixed(fs: FakeSysfs) -> None:
    _node(fs)
    fs.enable_iommu()
    fs.load_driver("vfio-pci")
    add_nic_model(fs, "mlx5", bus=0x3B, num_vfs=4, numa_node=0, away_vfs=[1])
    add_nic_model(fs, "i40e", bus=0x5E, num_vfs=8, numa_node=1, vfio_vfs=[6, 7])


def _mlx5_ib(fs: FakeSysfs) -> None:
    _node(fs)
    fs.enable_iommu()
    add_nic_model(
        fs, "mlx5", bus=0x3B, num_vfs=4, numa_node=0, ports=1, link_type=LinkType.INFINIBAND
    )


def _no_sriov(fs: FakeSysfs) -> None:
    _node(fs)


EXAMPLES: dict[str, tuple[str, Callable[[FakeSysfs], None]]] = {
    "mlx5": (
        "ConnectX-5 dual-port, 4 VFs per port, one VF in a pod",
        _example("mlx5", num_vfs=4, numa_node=0, away_vfs=[1]),
    ),
    "i40e": (
        "X710 dual-port, 8 VFs per port, two bound to vfio-pci",
        _example("i40e", num_vfs=8, numa_node=0, vfio_vfs=[6, 7]),
    ),
    "ixgbe": ("82599 dual-port, SR-IOV not enabled yet", _example("ixgbe")),
    "ice": ("E810 dual-port, 16 VFs per port", _example("ice", num_vfs=16, numa_node=1)),
    "igb": ("82576 dual-port, 7 VFs per port (the igb maximum)", _example("igb", num_vfs=7)),
    "mixed": ("ConnectX-5 on NUMA 0 and X710 on NUMA 1", _mixed),
    "mlx5-ib": ("ConnectX-5 in InfiniBand mode, 4 VFs", _mlx5_ib),
    "no-sriov": ("a node with only an onboard NIC and virtual interfaces", _no_sriov),
}


def build_example(name: str, root: str | Path) -> FakeSysfs:
    """Build example host *name* (a key of :data:`EXAMPLES`) under *root*."""
    try:
        _, build = EXAMPLES[name]
    except KeyError:
        raise ValueError(
            f"unknown example {name!r}; choose one of: {', '.join(EXAMPLES)}"
        ) from None
    fs = FakeSysfs(root)
    build(fs)
    return fs
