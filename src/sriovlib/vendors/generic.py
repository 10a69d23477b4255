"""The generic plugin: what every SR-IOV driver shares (the kernel's own rules).

Every hook here is ``trylast``, so a vendor plugin's answer comes first.
"""

from __future__ import annotations

from sriovlib.models import PhysicalFunction, VfConfig, VirtualFunction
from sriovlib.plugins import (
    DeviceSpecs,
    DeviceType,
    EswitchMode,
    Issue,
    MacFixup,
    NumVfsPlan,
    Severity,
    Step,
    StepKind,
    VfLimit,
    hookimpl,
)


@hookimpl(trylast=True)
def sriovlib_vf_limit(pf: PhysicalFunction) -> VfLimit:
    return VfLimit(pf.total_vfs, f"sriov_totalvfs of {pf.name} is {pf.total_vfs}")


@hookimpl(trylast=True)
def sriovlib_check_vf_config(config: VfConfig) -> list[Issue]:
    issues = []
    if config.trust is False and config.mac is not None:
        issues.append(
            Issue(
                Severity.INFO,
                "the VF cannot change this MAC itself while trust is off",
                "set trust on to let the workload change it",
            )
        )
    return issues


@hookimpl(trylast=True)
def sriovlib_numvfs_plan(current: int, target: int, eswitch_mode: EswitchMode | None) -> NumVfsPlan:
    steps: list[Step] = []
    if eswitch_mode is not None:
        steps.append(Step(StepKind.SET_ESWITCH_MODE, eswitch_mode.value))
    if current != target:
        if current and target:
            steps.append(Step(StepKind.WRITE_NUMVFS, 0))
        steps.append(Step(StepKind.WRITE_NUMVFS, target))
    return NumVfsPlan(
        steps=tuple(steps),
        note="the kernel changes a non-zero VF count only through 0",
    )


@hookimpl(trylast=True)
def sriovlib_mac_fixup() -> MacFixup:
    return MacFixup.SET_NETDEV_MAC


@hookimpl(trylast=True)
def sriovlib_vf_driver(vf: VirtualFunction, device_type: DeviceType) -> str | None:
    if device_type is DeviceType.VFIO:
        return "vfio-pci"
    if vf.driver not in (None, "vfio-pci", "uio_pci_generic", "igb_uio"):
        return vf.driver
    return None  # unknown: the Host lets the kernel pick by PCI id (drivers_probe)


@hookimpl(trylast=True)
def sriovlib_device_specs(vf: VirtualFunction, device_type: DeviceType) -> DeviceSpecs | None:
    if device_type is DeviceType.VFIO and vf.iommu_group is not None:
        return DeviceSpecs(devices=("/dev/vfio/vfio", f"/dev/vfio/{vf.iommu_group}"))
    return None
