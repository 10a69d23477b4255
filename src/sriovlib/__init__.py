"""sriovlib: SR-IOV networking on Linux as a library.

>>> from sriovlib import Host
>>> host = Host()                    # the real /sys
>>> [pf.name for pf in host.pfs()]   # doctest: +SKIP
['ens1f0', 'ens1f1']
"""

# --- lazy exports (issue 6, CNI) -------------------------------------------------------
# The names below are imported on first access, not at ``import sriovlib``: the CNI
# binary (``sriovlib.cni``) must answer VERSION without paying for attrs and the Host
# (about 60 ms), and importing a subpackage always runs this file first.
TYPE_CHECKING = False  # not typing.TYPE_CHECKING: importing typing costs ~5 ms
if TYPE_CHECKING:
    from typing import Any

    from sriovlib.exceptions import DeviceNotFound, InvalidPciAddress, SriovError
    from sriovlib.host import Host
    from sriovlib.models import (
        LinkType,
        NetworkDevice,
        PciAddress,
        PciId,
        PhysicalFunction,
        Switchdev,
        VirtualFunction,
    )
    from sriovlib.sysfs import Inventory

_EXPORTS = {
    "DeviceNotFound": "sriovlib.exceptions",
    "InvalidPciAddress": "sriovlib.exceptions",
    "SriovError": "sriovlib.exceptions",
    "Host": "sriovlib.host",
    "LinkType": "sriovlib.models",
    "NetworkDevice": "sriovlib.models",
    "PciAddress": "sriovlib.models",
    "PciId": "sriovlib.models",
    "PhysicalFunction": "sriovlib.models",
    "Switchdev": "sriovlib.models",
    "VirtualFunction": "sriovlib.models",
    "Inventory": "sriovlib.sysfs",
}
# --- end of lazy exports ------------------------------------------------------------------

__all__ = [
    "DeviceNotFound",
    "Host",
    "InvalidPciAddress",
    "Inventory",
    "LinkType",
    "NetworkDevice",
    "PciAddress",
    "PciId",
    "PhysicalFunction",
    "SriovError",
    "Switchdev",
    "VirtualFunction",
]


def __getattr__(name: str) -> "Any":
    module = _EXPORTS.get(name)
    if module is not None:
        import importlib

        value = getattr(importlib.import_module(module), name)
        globals()[name] = value
        return value
    if name == "__version__":
        from importlib.metadata import version

        return version("sriovlib")
    raise AttributeError(f"module 'sriovlib' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted([*globals(), *_EXPORTS])
