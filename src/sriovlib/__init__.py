"""sriovlib: SR-IOV networking on Linux as a library.

>>> from sriovlib import Host
>>> host = Host()                    # the real /sys
>>> [pf.name for pf in host.pfs()]   # doctest: +SKIP
['ens1f0', 'ens1f1']
"""

from __future__ import annotations

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


def __getattr__(name: str) -> str:
    if name == "__version__":
        from importlib.metadata import version

        return version("sriovlib")
    raise AttributeError(f"module 'sriovlib' has no attribute {name!r}")
