"""Intel 700 series: X710, XL710, XXV710, X722 (i40e PF, iavf VF).

At most 128 VFs per device, and the NVM may allow fewer than ``sriov_totalvfs``
(the driver then refuses with EPERM). An admin MAC reaches iavf asynchronously: wait
for the netdev to show it. A VF changes its own MAC only when trusted.
"""

from __future__ import annotations

from sriovlib.models import PciId, PhysicalFunction, VfConfig
from sriovlib.plugins import Issue, MacFixup, PfMatch, Severity, VfLimit, hookimpl
from sriovlib.vendors import claim, per_device_limit

DRIVERS = ("i40e",)
PF_IDS = tuple(
    PciId(0x8086, d)
    for d in (
        0x1572,
        0x1581,
        0x15FF,
        0x1589,
        0x1583,
        0x1584,
        0x1585,
        0x158B,
        0x158A,
        0x0D58,
        0x37D0,
        0x37D1,
        0x37D2,
        0x37D3,
    )
)
MAX_VFS_PER_DEVICE = 128


@hookimpl
def sriovlib_match_pf(pf: PhysicalFunction) -> PfMatch | None:
    return claim(pf, DRIVERS, PF_IDS)


@hookimpl
def sriovlib_vf_limit(pf: PhysicalFunction) -> VfLimit:
    return per_device_limit(
        pf,
        "i40e",
        MAX_VFS_PER_DEVICE,
        "the NVM's resource split may allow fewer; the driver then answers EPERM",
    )


@hookimpl
def sriovlib_check_vf_config(config: VfConfig) -> list[Issue]:
    if config.mac is not None and config.trust is not True:
        return [
            Issue(
                Severity.INFO,
                "iavf: the VF may not override this admin MAC while untrusted",
                "set trust on if the workload must change it",
            )
        ]
    return []


@hookimpl
def sriovlib_mac_fixup() -> MacFixup:
    return MacFixup.WAIT_NETDEV
