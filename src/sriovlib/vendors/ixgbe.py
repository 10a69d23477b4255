"""Intel 82599 / X540 / X550 (ixgbe PF, ixgbevf VF).

At most 63 VFs. On the 82599 the PF and its VFs share one maximum frame size: a VF can
use jumbo frames only when the PF's MTU is above 1500 too (X540 and later allow jumbo
per VF). An admin MAC needs a VF driver reload to take effect.
"""

from __future__ import annotations

from sriovlib.models import PciId, PhysicalFunction, VfConfig
from sriovlib.plugins import Issue, MacFixup, PfMatch, Severity, VfLimit, hookimpl
from sriovlib.vendors import claim

DRIVERS = ("ixgbe",)
PF_82599 = (PciId(0x8086, 0x10FB), PciId(0x8086, 0x10F8), PciId(0x8086, 0x154D))
PF_IDS = (
    *PF_82599,
    PciId(0x8086, 0x1528),
    PciId(0x8086, 0x1560),
    PciId(0x8086, 0x1563),
    PciId(0x8086, 0x15D1),
)
MAX_VFS = 63


@hookimpl
def sriovlib_match_pf(pf: PhysicalFunction) -> PfMatch | None:
    return claim(pf, DRIVERS, PF_IDS)


@hookimpl
def sriovlib_vf_limit(pf: PhysicalFunction) -> VfLimit:
    return VfLimit(
        min(MAX_VFS, pf.total_vfs or MAX_VFS),
        f"the ixgbe driver allows at most {MAX_VFS} VFs (32 with 4 traffic classes, 16 with 8)",
    )


@hookimpl
def sriovlib_check_vf_config(
    pf: PhysicalFunction, config: VfConfig, vf_mtu: int | None, pf_mtu: int | None
) -> list[Issue]:
    del config
    if pf.ids in PF_82599 and vf_mtu is not None and vf_mtu > 1500 and (pf_mtu or 1500) <= 1500:
        return [
            Issue(
                Severity.ERROR,
                f"82599: a VF MTU of {vf_mtu} needs the PF MTU above 1500 "
                f"(it is {pf_mtu or 1500}); PF and VFs share one frame size",
                f"ip link set {pf.name} mtu {vf_mtu}",
            )
        ]
    return []


@hookimpl
def sriovlib_mac_fixup() -> MacFixup:
    return MacFixup.REBIND
