"""Built-in vendor plugins: one module per driver family, each a pluggy plugin.

``generic`` answers every hook last (``trylast``) and is the fallback; the others
implement only what their hardware does differently. They are registered explicitly by
:class:`sriovlib.plugins.manager.Plugins`, not through entry points.
"""

from __future__ import annotations

from collections.abc import Collection

from sriovlib.models import PciId, PhysicalFunction
from sriovlib.plugins.types import PfMatch

__all__ = ["claim"]


def claim(
    pf: PhysicalFunction, drivers: Collection[str], pf_ids: Collection[PciId]
) -> PfMatch | None:
    """The usual ``sriovlib_match_pf`` answer: by driver name first, then by PCI id."""
    if pf.driver is not None and pf.driver in drivers:
        return PfMatch.by_driver(pf.driver)
    if pf.ids in pf_ids:
        return PfMatch.by_pci_id(str(pf.ids))
    return None
