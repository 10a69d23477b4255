"""sriovlib plugin for the ACME 25G NIC (made-up PCI id 1d0f:e5a1, driver acme_en).

Its firmware exposes 64 VFs in sriov_totalvfs, but only 3 work: the plugin tells
sriovlib so, and leaves every other hook to the generic plugin.
"""

from sriovlib.models import PciId
from sriovlib.plugins import VfLimit, hookimpl
from sriovlib.vendors import claim

ACME_25G = PciId(0x1D0F, 0xE5A1)


@hookimpl
def sriovlib_match_pf(pf):
    return claim(pf, drivers=("acme_en",), pf_ids=(ACME_25G,))


@hookimpl
def sriovlib_vf_limit(pf):
    return VfLimit(3, "ACME 25G firmware 1.x supports 3 working VFs")
