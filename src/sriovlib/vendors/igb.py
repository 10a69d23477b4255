"""Intel 82576 / I350 (igb PF, igbvf VF).

Verified on the real driver (QEMU's 82576, kernel 6.1): at most 7 VFs per port; no
per-VF link state (EOPNOTSUPP) and no minimum rate (EINVAL); an admin MAC reaches a bound
igbvf netdev only after the VF driver is re-probed, and afterwards the VF may not change
its MAC itself.
"""

from __future__ import annotations

from sriovlib.models import PciId, PhysicalFunction, VfConfig, VfKnob
from sriovlib.plugins import Issue, MacFixup, PfMatch, Severity, VfLimit, hookimpl
from sriovlib.vendors import claim

DRIVERS = ("igb",)
PF_IDS = (PciId(0x8086, 0x10C9), PciId(0x8086, 0x1521))
MAX_VFS = 7


@hookimpl
def sriovlib_match_pf(pf: PhysicalFunction) -> PfMatch | None:
    return claim(pf, DRIVERS, PF_IDS)


@hookimpl
def sriovlib_vf_limit(pf: PhysicalFunction) -> VfLimit:
    limit = min(MAX_VFS, pf.total_vfs) if pf.total_vfs else MAX_VFS
    return VfLimit(limit, f"the igb driver allows at most {MAX_VFS} VFs per port")


@hookimpl
def sriovlib_check_vf_config(config: VfConfig) -> list[Issue]:
    issues = []
    if config.link_state is not None:
        issues.append(
            Issue(
                Severity.ERROR, "igb has no per-VF link state", "leave link_state unset on igb VFs"
            )
        )
    if config.min_tx_rate:
        issues.append(
            Issue(
                Severity.ERROR,
                "igb has no minimum TX rate",
                "set only max_tx_rate (1-1000 Mbit/s) on igb VFs",
            )
        )
    if config.max_tx_rate is not None and config.max_tx_rate > 1000:
        issues.append(
            Issue(
                Severity.ERROR, f"igb limits max_tx_rate to 1000 Mbit/s, not {config.max_tx_rate}"
            )
        )
    return issues


@hookimpl
def sriovlib_mac_fixup() -> MacFixup:
    return MacFixup.REBIND


@hookimpl
def sriovlib_release_knobs(changed: frozenset[VfKnob]) -> frozenset[VfKnob]:
    # igb always reports link state "auto" and has neither knob: never write them back
    return changed - {VfKnob.LINK_STATE, VfKnob.MIN_TX_RATE, VfKnob.QUERY_RSS}
