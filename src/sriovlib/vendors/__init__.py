"""Built-in vendor plugins: one module per driver family, each a pluggy plugin.

``generic`` answers every hook last (``trylast``) and is the fallback; the others
implement only what their hardware does differently. They are registered explicitly by
:class:`sriovlib.plugins.manager.Plugins`, not through entry points.
"""

from __future__ import annotations

from collections.abc import Collection

from sriovlib.models import PciId, PhysicalFunction
from sriovlib.plugins.types import PfMatch, VfLimit

__all__ = ["claim", "per_device_limit"]


def claim(
    pf: PhysicalFunction, drivers: Collection[str], pf_ids: Collection[PciId]
) -> PfMatch | None:
    """The usual ``sriovlib_match_pf`` answer: by driver name first, then by PCI id."""
    if pf.driver is not None and pf.driver in drivers:
        return PfMatch.by_driver(pf.driver)
    if pf.ids in pf_ids:
        return PfMatch.by_pci_id(str(pf.ids))
    return None


def per_device_limit(pf: PhysicalFunction, driver: str, maximum: int, hint: str = "") -> VfLimit:
    """The usual ``sriovlib_vf_limit`` of a driver with a per-device cap: the lower of
    ``sriov_totalvfs`` and *maximum*."""
    return VfLimit(
        min(maximum, pf.total_vfs),
        f"sriov_totalvfs of {pf.name} is {pf.total_vfs} ({driver}: at most {maximum} per device)",
        hint,
    )
