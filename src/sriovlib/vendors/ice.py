"""Intel 800 series: E810, E82x, E83x (ice PF, iavf VF).

At most 256 VFs per device. switchdev can only be entered with no VFs: numvfs 0, then
eswitch mode, then numvfs (the reverse of mlx5). SR-IOV fails in Safe Mode (no DDP
package loaded). The admin MAC reaches iavf asynchronously.
"""

from __future__ import annotations

from sriovlib.models import PciId, PhysicalFunction
from sriovlib.plugins import (
    EswitchMode,
    MacFixup,
    NumVfsPlan,
    PfMatch,
    Step,
    StepKind,
    VfLimit,
    hookimpl,
)
from sriovlib.vendors import claim, per_device_limit

DRIVERS = ("ice",)
PF_IDS = tuple(
    PciId(0x8086, d)
    for d in (
        0x1591,
        0x1592,
        0x1593,
        0x1599,
        0x159A,
        0x159B,
        0x188A,
        0x124C,
        0x124D,
        0x579C,
        0x579D,
        0x579E,
        0x12D2,
        0x12D3,
        0x1249,
        0x124A,
    )
)
MAX_VFS_PER_DEVICE = 256


@hookimpl
def sriovlib_match_pf(pf: PhysicalFunction) -> PfMatch | None:
    return claim(pf, DRIVERS, PF_IDS)


@hookimpl
def sriovlib_vf_limit(pf: PhysicalFunction) -> VfLimit:
    return per_device_limit(pf, "ice", MAX_VFS_PER_DEVICE)


@hookimpl
def sriovlib_numvfs_plan(
    current: int, target: int, eswitch_mode: EswitchMode | None
) -> NumVfsPlan | None:
    if eswitch_mode is None:
        return None
    steps = []
    if current:
        steps.append(Step(StepKind.WRITE_NUMVFS, 0))
    steps.append(Step(StepKind.SET_ESWITCH_MODE, eswitch_mode.value))
    if target:
        steps.append(Step(StepKind.WRITE_NUMVFS, target))
    return NumVfsPlan(tuple(steps), note="ice changes eswitch mode only without VFs")


@hookimpl
def sriovlib_mac_fixup() -> MacFixup:
    return MacFixup.WAIT_NETDEV
