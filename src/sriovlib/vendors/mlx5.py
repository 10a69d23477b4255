"""NVIDIA/Mellanox ConnectX-4 and later, BlueField (mlx5_core for PF and VFs).

The VF count is capped by the firmware setting ``NUM_OF_VFS`` (``sriov_totalvfs``
reflects it; raising it needs ``mstconfig`` and a reboot). Entering switchdev goes
legacy → numvfs → unbind VFs → switchdev → rebind. An admin MAC set through the PF does
not reach a bound VF netdev: set the netdev MAC too. VFs stay on mlx5_core even for
DPDK (bifurcated driver) and carry RDMA devices whose character devices a container
needs.
"""

from __future__ import annotations

from sriovlib.models import PciId, PhysicalFunction, VirtualFunction
from sriovlib.plugins import (
    DeviceSpecs,
    EswitchMode,
    Issue,
    MacFixup,
    NumVfsPlan,
    PfMatch,
    Severity,
    Step,
    StepKind,
    VfLimit,
    hookimpl,
)
from sriovlib.vendors import claim

DRIVERS = ("mlx5_core",)
PF_IDS = tuple(
    PciId(0x15B3, d)
    for d in (
        0x1013,
        0x1015,
        0x1017,
        0x1019,
        0x101B,
        0x101D,
        0x101F,
        0x1021,
        0x1023,
        0x1025,
        0xA2D6,
        0xA2DC,
    )
)


@hookimpl
def sriovlib_match_pf(pf: PhysicalFunction) -> PfMatch | None:
    return claim(pf, DRIVERS, PF_IDS)


@hookimpl
def sriovlib_vf_limit(pf: PhysicalFunction) -> VfLimit:
    return VfLimit(
        pf.total_vfs,
        f"the firmware of {pf.name} allows {pf.total_vfs} VFs (NUM_OF_VFS)",
        f"mstconfig -d {pf.address} -y set SRIOV_EN=1 NUM_OF_VFS=<n>, then reboot",
    )


@hookimpl
def sriovlib_numvfs_plan(
    current: int, target: int, eswitch_mode: EswitchMode | None
) -> NumVfsPlan | None:
    if eswitch_mode is not EswitchMode.SWITCHDEV:
        return None
    steps = [Step(StepKind.SET_ESWITCH_MODE, EswitchMode.LEGACY.value)]
    if current != target:
        if current:
            steps.append(Step(StepKind.WRITE_NUMVFS, 0))
        steps.append(Step(StepKind.WRITE_NUMVFS, target))
    steps += [
        Step(StepKind.UNBIND_VFS),
        Step(StepKind.SET_ESWITCH_MODE, "switchdev"),
        Step(StepKind.BIND_VFS),
    ]
    return NumVfsPlan(
        tuple(steps), note="mlx5 creates VFs in legacy mode and switches with the VFs unbound"
    )


@hookimpl
def sriovlib_mac_fixup() -> MacFixup:
    return MacFixup.SET_NETDEV_MAC


@hookimpl
def sriovlib_vf_driver() -> str:
    return "mlx5_core"  # bifurcated: DPDK runs on the kernel driver


@hookimpl
def sriovlib_device_specs(vf: VirtualFunction) -> DeviceSpecs | None:
    if not vf.rdma_devices:
        return None
    # The Host resolves the RDMA devices' uverbsN/umadN/issmN nodes from sysfs.
    return DeviceSpecs(devices=("/dev/infiniband/rdma_cm",), rdma_devices=vf.rdma_devices)


@hookimpl
def sriovlib_health(vfs: list[VirtualFunction]) -> list[Issue]:
    issues = []
    for vf in vfs:
        if vf.driver == "vfio-pci":
            issues.append(
                Issue(
                    Severity.WARNING,
                    f"VF {vf.index} ({vf.address}) is on vfio-pci; mlx5 runs DPDK on "
                    "mlx5_core (bifurcated driver), so vfio-pci is not needed",
                    "bind the VF back to mlx5_core",
                    f"echo {vf.address} > /sys/bus/pci/drivers/vfio-pci/unbind && "
                    f"echo {vf.address} > /sys/bus/pci/drivers/mlx5_core/bind",
                )
            )
    return issues
