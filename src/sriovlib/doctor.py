"""Node checks for SR-IOV: what an administrator otherwise does by hand.

:func:`diagnose` reads a :class:`~sriovlib.Host` and returns :class:`Finding` values in
a fixed order:

1. ``interfaces`` — the candidate NICs (interfaces backed by a device) and the virtual
   interfaces skipped (bridges, veth, docker0, lo...).
2. Per network PCI function, in address order: ``sriov`` (capable or not, and why),
   ``driver`` (a PF without a driver), ``netdev`` (a PF without an interface), ``numvfs``
   (VFs enabled, or the exact command to enable them) and ``problem`` (attributes the
   scan could not read).
3. ``iommu`` — whether VFs can be handed to vfio-pci, and the kernel option if not.
4. ``vfio-pci`` — loaded, loadable, or missing.
5. ``usable`` — the verdict: at least one usable SR-IOV PF, or an error explaining why
   there is none.

Only the verdict is ever an :attr:`Severity.ERROR`: an error means SR-IOV cannot be used
on this node at all, which is what ``sriovlib doctor`` turns into exit status 1. A
problem with one device while another is usable is a warning. This module does no
output; ``sriovlib.cli.doctor`` renders the findings.
"""

from __future__ import annotations

import enum
from collections.abc import Iterable, Sequence

import attrs

from sriovlib.host import Host
from sriovlib.models import NetworkDevice, PciAddress, PciId, PhysicalFunction, VirtualFunction
from sriovlib.pciids import PciIds
from sriovlib.sysfs import Inventory

__all__ = ["Finding", "Severity", "diagnose", "is_usable", "node_usable", "usable_pfs"]

#: Kernel command-line options that turn the IOMMU on, per CPU vendor.
IOMMU_OPTIONS = {"AuthenticAMD": "amd_iommu=on iommu=pt", "GenuineIntel": "intel_iommu=on iommu=pt"}


class Severity(enum.StrEnum):
    """How much a finding matters, from fine to fatal."""

    OK = "ok"
    INFO = "info"
    WARNING = "warning"
    #: SR-IOV cannot be used on this node at all (only the ``usable`` check emits it).
    ERROR = "error"


@attrs.frozen
class Finding:
    """One result of a node check.

    Attributes:
        check: A stable identifier of the check (``iommu``, ``numvfs``...).
        severity: ok, info, warning or error.
        title: One line saying what was found.
        detail: Why it matters and what the facts were (may be empty).
        command: The next command to run, ready to paste, or None when nothing is to do.
        subject: The PCI address of the device the finding is about, None for the node.
    """

    check: str
    severity: Severity
    title: str
    detail: str = ""
    command: str | None = None
    subject: str | None = None


def is_usable(pf: PhysicalFunction) -> bool:
    """Whether *pf* can have VFs: a driver is bound and it offers at least one VF."""
    return pf.driver is not None and pf.total_vfs > 0


def usable_pfs(inventory: Inventory) -> tuple[PhysicalFunction, ...]:
    """The PFs of *inventory* that can have VFs (see :func:`is_usable`)."""
    return tuple(pf for pf in inventory.pfs if is_usable(pf))


def node_usable(findings: Iterable[Finding]) -> bool:
    """False when the findings contain an error, i.e. no SR-IOV PF can be used."""
    return all(f.severity is not Severity.ERROR for f in findings)


def diagnose(host: Host, names: PciIds | None = None) -> list[Finding]:
    """Run every check on *host*; *names* adds vendor and device names to the text."""
    inventory = host.inventory()
    sysfs = host.sysfs
    netdev_map = sysfs.netdev_pci_functions()
    findings = [_interfaces(inventory, netdev_map, sysfs.virtual_netdevs())]
    netdevs_of: dict[PciAddress, list[str]] = {}
    for netdev, address in netdev_map.items():
        if address is not None:
            netdevs_of.setdefault(address, []).append(netdev)
    vfs_of: dict[PciAddress, list[VirtualFunction]] = {}
    for vf in inventory.vfs:
        vfs_of.setdefault(vf.pf_address, []).append(vf)
    nics: list[PhysicalFunction | NetworkDevice] = [*inventory.pfs, *inventory.other_nics]
    for nic in sorted(nics, key=lambda n: n.address):
        netdevs = tuple(nic.netdevs) or tuple(netdevs_of.get(nic.address, ()))
        if isinstance(nic, PhysicalFunction):
            vfs = vfs_of.get(nic.address, [])
            findings += _pf_findings(nic, netdevs, vfs, names)
            findings += _plugin_findings(host, nic, netdevs, vfs)
        else:
            findings.append(_nic_finding(nic, netdevs, names))
    known = {pf.address for pf in inventory.pfs}
    for vf in inventory.vfs:
        if vf.pf_address not in known:
            findings.append(
                _problem(str(vf.address), f"its PF {vf.pf_address} was not found", vf.address)
            )
    findings += [_problem(None, p) for p in inventory.problems]
    findings.append(_iommu(sysfs.iommu_groups(), sysfs.kernel_cmdline(), sysfs.cpu_vendor()))
    findings.append(
        _vfio(
            loaded=sysfs.pci_driver_loaded("vfio-pci"),
            available=sysfs.kernel_module_available("vfio_pci")
            or sysfs.kernel_module_available("vfio-pci"),
        )
    )
    findings.append(_verdict(inventory, names))
    return findings


# -- candidate NICs -------------------------------------------------------------------


def _interfaces(
    inventory: Inventory, netdev_map: dict[str, PciAddress | None], virtual: Sequence[str]
) -> Finding:
    vf_addresses = {vf.address for vf in inventory.vfs}
    candidates = [n for n, a in netdev_map.items() if a not in vf_addresses]
    vf_netdevs = len(netdev_map) - len(candidates)
    title = (
        f"Candidate NICs: {', '.join(candidates)}"
        if candidates
        else "No network interface is backed by a device"
    )
    parts = []
    if vf_netdevs:
        parts.append(f"{vf_netdevs} VF interface{_s(vf_netdevs)} not counted.")
    if virtual:
        parts.append(
            f"Skipped {len(virtual)} virtual interface{_s(len(virtual))} "
            f"(no device behind them): {', '.join(virtual)}."
        )
    return Finding(
        check="interfaces",
        severity=Severity.INFO,
        title=title,
        detail=" ".join(parts),
        command=None,
    )


def _nic_finding(nic: NetworkDevice, netdevs: Sequence[str], names: PciIds | None) -> Finding:
    label = _label(nic.address, netdevs)
    return Finding(
        check="sriov",
        severity=Severity.INFO,
        subject=str(nic.address),
        title=f"{label}: not SR-IOV capable",
        detail=f"{_facts(nic.address, nic.ids, nic.driver, names)}. It has no sriov_totalvfs "
        "attribute: the device, or its driver, offers no SR-IOV.",
        command=f"lspci -vvv -s {nic.address} | grep -i 'SR-IOV'",
    )


def _pf_findings(
    pf: PhysicalFunction,
    netdevs: Sequence[str],
    vfs: Sequence[VirtualFunction],
    names: PciIds | None,
) -> list[Finding]:
    label = _label(pf.address, netdevs)
    facts = _facts(pf.address, pf.ids, pf.driver, names)
    numa = "none" if pf.numa_node is None else str(pf.numa_node)
    out: list[Finding] = []
    if pf.total_vfs > 0:
        out.append(
            Finding(
                check="sriov",
                severity=Severity.OK,
                subject=str(pf.address),
                title=f"{label}: SR-IOV capable, up to {pf.total_vfs} VFs",
                detail=f"{facts}, NUMA node {numa}, link {pf.link_type}.",
            )
        )
    else:
        out.append(
            Finding(
                check="sriov",
                severity=Severity.WARNING,
                subject=str(pf.address),
                title=f"{label}: SR-IOV is disabled (sriov_totalvfs is 0)",
                detail=f"{facts}. The device has the SR-IOV capability but offers no VFs: "
                "enable SR-IOV in the system firmware (BIOS/UEFI) and in the NIC's firmware.",
                command=f"mlxconfig -d {pf.address} set SRIOV_EN=1 NUM_OF_VFS=8"
                if pf.driver == "mlx5_core"
                else f"lspci -vvv -s {pf.address} | grep -A8 'SR-IOV'",
            )
        )
    if pf.driver is None:
        out.append(
            Finding(
                check="driver",
                severity=Severity.WARNING,
                subject=str(pf.address),
                title=f"{label}: no driver bound to the PF",
                detail="Without its driver the PF cannot create VFs. Ask the kernel to bind "
                "the matching driver (load the driver module first if it is not loaded).",
                command=f"echo {pf.address} > /sys/bus/pci/drivers_probe",
            )
        )
    elif not netdevs:
        out.append(
            Finding(
                check="netdev",
                severity=Severity.WARNING,
                subject=str(pf.address),
                title=f"{label}: the PF has no network interface",
                detail=f"Driver {pf.driver} is bound but no interface of this PF is in this "
                "network namespace: it was moved to another namespace, or the driver "
                "(e.g. vfio-pci) creates none. VFs can still be enabled through the PCI path.",
                command="ip -all netns exec ip -br link",
            )
        )
    if is_usable(pf):
        out.append(_numvfs(pf, label, netdevs, vfs))
    out += [_problem(label, p, pf.address) for p in pf.problems]
    out += [
        _problem(f"VF {vf.index} of {label} ({vf.address})", p, vf.address)
        for vf in vfs
        for p in vf.problems
    ]
    return out


def _plugin_findings(
    host: Host, pf: PhysicalFunction, netdevs: Sequence[str], vfs: Sequence[VirtualFunction]
) -> list[Finding]:
    """What the PF's vendor plugin finds (``sriovlib_health``) beyond the checks here."""
    hooks = host.hooks(pf)
    label = _label(pf.address, netdevs)
    return [
        Finding(
            check=f"plugin:{hooks.vendor}",
            # only the node verdict is an error in doctor; a device's trouble is a warning
            severity=Severity.INFO if issue.severity.value == "info" else Severity.WARNING,
            subject=str(pf.address),
            title=f"{label}: {issue.message}",
            detail=f"Reported by the {hooks.vendor} plugin. {issue.hint}".strip(),
            command=issue.command,
        )
        for issue in hooks.health(list(vfs))
    ]


def _numvfs(
    pf: PhysicalFunction, label: str, netdevs: Sequence[str], vfs: Sequence[VirtualFunction]
) -> Finding:
    path = (
        f"/sys/class/net/{netdevs[0]}/device/sriov_numvfs"
        if netdevs
        else f"/sys/bus/pci/devices/{pf.address}/sriov_numvfs"
    )
    if pf.num_vfs == 0:
        return Finding(
            check="numvfs",
            severity=Severity.WARNING,
            subject=str(pf.address),
            title=f"{label}: no VFs enabled (sriov_numvfs is 0)",
            detail=f"This PF allows up to {pf.total_vfs} VFs; write the number you need "
            "(to change it later, write 0 first: the kernel only changes it through 0).",
            command=f"echo {pf.total_vfs} > {path}",
        )
    if len(vfs) != pf.num_vfs:
        return Finding(
            check="numvfs",
            severity=Severity.WARNING,
            subject=str(pf.address),
            title=f"{label}: sriov_numvfs is {pf.num_vfs} but {len(vfs)} VFs were found",
            detail="The kernel may still be creating or removing VFs; if this persists, "
            "reset the count through 0.",
            command=f"echo 0 > {path} && echo {pf.num_vfs} > {path}",
        )
    away = sum(1 for vf in vfs if vf.netdev is None)
    vfio = sum(1 for vf in vfs if vf.driver == "vfio-pci")
    return Finding(
        check="numvfs",
        severity=Severity.OK,
        subject=str(pf.address),
        title=f"{label}: {pf.num_vfs} of {pf.total_vfs} VFs enabled",
        detail=f"{away} without an interface in the host namespace ({vfio} bound to vfio-pci, "
        f"{away - vfio} moved into a pod or unbound).",
    )


def _problem(label: str | None, problem: str, address: PciAddress | None = None) -> Finding:
    where = "/sys/bus/pci/devices" + ("" if address is None else f"/{address}")
    return Finding(
        check="problem",
        severity=Severity.WARNING,
        subject=None if address is None else str(address),
        title=f"{label}: {problem}" if label else problem,
        detail="sysfs could not be read or parsed here; the rest of the scan went on.",
        command=f"ls -l {where}/",
    )


# -- node facts --------------------------------------------------------------------------


def _iommu(groups: int, cmdline: str, cpu_vendor: str | None) -> Finding:
    if groups > 0:
        return Finding(
            check="iommu",
            severity=Severity.OK,
            title=f"IOMMU enabled ({groups} IOMMU group{_s(groups)})",
            detail="VFs can be bound to vfio-pci for DPDK and virtual machines.",
        )
    option = IOMMU_OPTIONS.get(cpu_vendor or "", IOMMU_OPTIONS["GenuineIntel"])
    shown = cmdline or "(unreadable)"
    requested = [w for w in cmdline.split() if w in ("intel_iommu=on", "amd_iommu=on")]
    if requested:
        return Finding(
            check="iommu",
            severity=Severity.WARNING,
            title="IOMMU requested on the kernel command line but not active",
            detail=f"The kernel was booted with {' '.join(requested)} yet created no IOMMU "
            "group: enable VT-d (Intel) or AMD-Vi/IOMMU (AMD) in the firmware setup. "
            f"Current kernel command line: {shown}",
            command="dmesg | grep -i -e DMAR -e IOMMU -e AMD-Vi",
        )
    other = (
        ""
        if cpu_vendor in IOMMU_OPTIONS
        else (f" (on an AMD CPU use {IOMMU_OPTIONS['AuthenticAMD']} instead)")
    )
    return Finding(
        check="iommu",
        severity=Severity.WARNING,
        title="IOMMU not enabled: VFs cannot be used with vfio-pci",
        detail="No IOMMU groups exist, so VFs cannot be bound to vfio-pci (DPDK, VMs); "
        f"VFs with kernel drivers still work. Add {option} to the kernel command line "
        f"and reboot{other}. Current kernel command line: {shown}",
        command="sudo sed -i 's/^GRUB_CMDLINE_LINUX=\"/&"
        + option
        + " /' /etc/default/grub && sudo update-grub && sudo reboot",
    )


def _vfio(*, loaded: bool, available: bool) -> Finding:
    if loaded:
        return Finding(
            check="vfio-pci",
            severity=Severity.OK,
            title="vfio-pci driver loaded",
            detail="VFs can be bound to vfio-pci for userspace drivers.",
        )
    if available:
        return Finding(
            check="vfio-pci",
            severity=Severity.INFO,
            title="vfio-pci is available but not loaded",
            detail="Load it before binding VFs to vfio-pci for DPDK or VMs.",
            command="sudo modprobe vfio-pci",
        )
    return Finding(
        check="vfio-pci",
        severity=Severity.WARNING,
        title="vfio-pci is not available in this kernel",
        detail="Neither a loaded vfio-pci driver nor a vfio-pci module for the running kernel "
        "was found: VFs cannot be used by userspace drivers. Install the kernel's full "
        "module package, or a kernel built with CONFIG_VFIO_PCI.",
        command="modinfo vfio-pci",
    )


def _verdict(inventory: Inventory, names: PciIds | None) -> Finding:
    usable = usable_pfs(inventory)
    if usable:
        return Finding(
            check="usable",
            severity=Severity.OK,
            title=f"{len(usable)} usable SR-IOV PF{_s(len(usable))}: "
            + ", ".join(pf.name for pf in usable),
        )
    if inventory.pfs:
        reasons = [
            f"{pf.name} ({'no driver' if pf.driver is None else 'sriov_totalvfs is 0'})"
            for pf in inventory.pfs
        ]
        return Finding(
            check="usable",
            severity=Severity.ERROR,
            title="No usable SR-IOV PF on this node",
            detail=f"SR-IOV PFs were found but none can have VFs: {', '.join(reasons)}. "
            "See the warnings above for the fix of each.",
            command="lspci -nnk | grep -A3 -i -e ethernet -e infiniband -e network",
        )
    nics = inventory.other_nics
    if nics:
        listed = "; ".join(
            f"{nic.address} {_describe(nic.ids, names)}, driver {nic.driver or 'none'}"
            for nic in nics
        )
        detail = (
            f"No network PCI function has SR-IOV (no sriov_totalvfs). "
            f"Found {len(nics)} without it: {listed}. SR-IOV needs a capable NIC "
            "(e.g. Mellanox ConnectX-4 or later, Intel X710/E810/82599/82576) with SR-IOV "
            "enabled in the firmware."
        )
    elif inventory.problems:
        detail = (
            "No network PCI function was found, and the PCI bus could not be fully read "
            "(see the warnings above)."
        )
    else:
        detail = "No network PCI function was found at all."
    return Finding(
        check="usable",
        severity=Severity.ERROR,
        title="No SR-IOV NIC on this node",
        detail=detail,
        command="lspci -nnk | grep -A3 -i -e ethernet -e infiniband -e network",
    )


# -- helpers ------------------------------------------------------------------------------


def _label(address: PciAddress, netdevs: Sequence[str]) -> str:
    return f"{netdevs[0]} ({address})" if netdevs else str(address)


def _facts(address: PciAddress, ids: PciId, driver: str | None, names: PciIds | None) -> str:
    return f"{address} {_describe(ids, names)}, driver {driver or 'none'}"


def _describe(ids: PciId, names: PciIds | None) -> str:
    return names.describe(ids) if names is not None else f"[{ids}]"


def _s(count: int) -> str:
    return "" if count == 1 else "s"
