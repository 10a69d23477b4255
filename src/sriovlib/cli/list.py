"""``sriovlib list``: the SR-IOV physical functions of a node, and with ``-v`` their VFs.

``-v`` shows, per VF, its administrative settings as its PF's driver reports them (the
``vfinfo`` of ``ip link show PF``: one VF-list request per PF, :meth:`Host.vf_states
<sriovlib.host.Host.vf_states>`) and who holds it according to the allocation store
(read only, never created). What cannot be read is left out, with one line saying why;
a setting the driver does not report is unknown, never a default. ``list PF`` limits
the output to one PF.

The JSON shape (``--json``) is stable: fields are only ever added. It does not depend on
``-v``: every VF always carries its settings and holder. It is documented in
``docs/cli.md``; :func:`inventory_json` builds it.
"""

from __future__ import annotations

import argparse
import enum
import os
from collections.abc import Iterable, Mapping, Sequence
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from sriovlib.allocation import Allocation, AllocationStore
from sriovlib.attachments import DEFAULT_STATE_DIR, AttachmentService
from sriovlib.cli._common import add_host_options, open_host, print_json, print_table
from sriovlib.exceptions import DeviceNotFound, KernelNotFound, SriovError
from sriovlib.host import Host, Inventory
from sriovlib.models import (
    PciAddress,
    PciId,
    PhysicalFunction,
    VfState,
    VirtualFunction,
    VlanProto,
)
from sriovlib.pciids import PciIds, open_pci_ids

__all__ = [
    "Holder",
    "HolderState",
    "VfDetails",
    "add_pci_ids_option",
    "inventory_json",
    "read_details",
    "register",
    "run",
]

#: Version of the ``--json`` shape; raised only if a field changes meaning or goes away.
JSON_SCHEMA = 1

#: The variable that names the state directory (as for the CNI plugin).
STATE_DIR_VARIABLE = "SRIOVLIB_STATE_DIR"

#: The settings columns of a VF table, in the order of :func:`_settings_cells`.
SETTINGS_COLUMNS = (
    "MAC",
    "VLAN",
    "Spoofchk",
    "Trust",
    "Link state",
    "Min rate",
    "Max rate",
    "Query RSS",
)


def register(subparsers: Any) -> None:
    """Add the ``list`` subcommand."""
    parser = subparsers.add_parser(
        "list",
        help="list SR-IOV physical functions (and their VFs with -v)",
        description="List the SR-IOV physical functions (PFs) of this node: PCI address, "
        "vendor and device, driver, NUMA node, link type and how many VFs are enabled. "
        "With -v, also every VF of each PF: its settings as the PF's driver reports them "
        "and who holds it.",
    )
    add_host_options(parser)
    add_pci_ids_option(parser)
    parser.add_argument(
        "-v",
        "--verbose",
        action="store_true",
        help="also list the VFs of each PF, with their settings and holders",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        help=f"read VF holders from the allocation store under DIR (default: "
        f"${STATE_DIR_VARIABLE}, else {DEFAULT_STATE_DIR}; an example host or a "
        "--sysfs-root tree has none unless given)",
    )
    parser.add_argument(
        "pf", nargs="?", metavar="PF", help="only this PF (interface name or PCI address)"
    )
    parser.set_defaults(func=run)


def add_pci_ids_option(parser: argparse.ArgumentParser) -> None:
    """Add ``--pci-ids FILE`` (shared with ``doctor``)."""
    parser.add_argument(
        "--pci-ids",
        metavar="FILE",
        help="read vendor and device names from FILE instead of the system's pci.ids "
        "(ids are shown when no name is found)",
    )


def run(args: argparse.Namespace) -> int:
    """Print the PF table (and VF tables with ``-v``), or JSON; exit 0 once printed.

    An unknown PF is a :class:`~sriovlib.exceptions.DeviceNotFound` (exit 1).
    """
    names = open_pci_ids(args.pci_ids)
    with open_host(args) as host:
        inventory = host.inventory()
        if args.pf is not None:
            inventory = _only(inventory, host.pf(args.pf))
        details = (
            read_details(
                host,
                inventory,
                kernel_problem=_kernel_problem(args),
                state_dir=_state_dir(args),
                no_store=_no_store_reason(args),
            )
            if args.json or args.verbose
            else None
        )
    if args.json:
        print_json(inventory_json(inventory, names, details or VfDetails()))
        return 0
    _print_tables(inventory, names, details)
    return 0


# -- what -v adds: settings and holders ------------------------------------------------


class HolderState(enum.StrEnum):
    """Whether a VF is held, according to the allocation store."""

    FREE = "free"
    HELD = "held"
    #: A record names the VF, but cannot be read (damaged, or not written by sriovlib).
    UNREADABLE = "unreadable"


@attrs.frozen
class Holder:
    """Who holds a VF, from its allocation record.

    Attributes:
        state: Free, held, or held by a record that cannot be read.
        container_id: The owner's container (sandbox) id; None unless held.
        ifname: The VF's interface name inside the container.
        netns: The container's network namespace path.
        since: When the VF was allocated (UTC).
    """

    state: HolderState
    container_id: str | None = None
    ifname: str | None = None
    netns: str | None = None
    since: datetime | None = None

    @classmethod
    def of(cls, record: Allocation) -> Holder:
        """The holder an allocation record names."""
        owner = record.owner
        since = record.allocated_at.astimezone(UTC)
        return cls(HolderState.HELD, owner.container_id, owner.ifname, owner.netns, since)

    def to_json(self) -> dict[str, Any]:
        """The ``holder`` object of ``--json``."""
        return {
            "state": str(self.state),
            "container_id": self.container_id,
            "ifname": self.ifname,
            "netns": self.netns,
            "since": None if self.since is None else self.since.isoformat(),
        }

    def cell(self) -> str:
        """The Holder cell of a VF table: the same fields in one line."""
        if self.state is not HolderState.HELD:
            return "free" if self.state is HolderState.FREE else "held (unreadable record)"
        since = "" if self.since is None else f", since {self.since:%Y-%m-%d %H:%M:%S} UTC"
        return f"{self.container_id}, {self.ifname} in {self.netns or '(no netns)'}{since}"


_FREE = Holder(HolderState.FREE)


@attrs.frozen
class VfDetails:
    """What ``-v`` (and ``--json``) add to the inventory, and why any of it is missing.

    Attributes:
        settings: Each VF's settings, by PCI address, for the PFs whose VF list was read.
        read_pfs: The PFs whose VF list was read (a VF of another PF has no settings).
        holders: The held VFs, by PCI address; None when the store was not read (every
            other VF is free when it was).
        store: The allocation store's directory, when there was one to read.
        notes: One line per reason something is missing.
    """

    settings: Mapping[PciAddress, VfState] = attrs.field(factory=dict)
    read_pfs: frozenset[PciAddress] = frozenset()
    holders: Mapping[PciAddress, Holder] | None = None
    store: Path | None = None
    notes: tuple[str, ...] = ()

    def has_settings(self, pf: PhysicalFunction) -> bool:
        """Whether *pf*'s VF list was read."""
        return pf.address in self.read_pfs

    def settings_of(self, vf: VirtualFunction) -> VfState | None:
        """*vf*'s settings; None when its PF's VF list was not read or lacks it."""
        return self.settings.get(vf.address)

    def holder_of(self, vf: VirtualFunction) -> Holder | None:
        """*vf*'s holder; None when the store was not read."""
        return None if self.holders is None else self.holders.get(vf.address, _FREE)


def read_details(
    host: Host,
    inventory: Inventory,
    *,
    kernel_problem: str | None = None,
    state_dir: Path | None = None,
    no_store: str = "no state directory was given",
) -> VfDetails:
    """Every VF's settings (one VF-list request per PF that has VFs) and holder.

    *kernel_problem*, when set, says why netlink is not asked at all; *state_dir* is
    where the allocation store lives (None: not read, because *no_store*). Nothing here
    raises for what cannot be read: it becomes a note. Nothing is read, and nothing
    noted, when no PF has VFs.
    """
    by_pf = _vfs_by_pf(inventory)
    pfs = [pf for pf in inventory.pfs if by_pf.get(str(pf.address))]
    if not pfs:
        return VfDetails()
    notes: list[str] = []
    if kernel_problem is not None:
        settings: dict[PciAddress, VfState] = {}
        read: set[PciAddress] = set()
        notes.append(f"VF settings not shown: {kernel_problem}.")
    else:
        settings, read = _read_settings(host, pfs, by_pf, notes)
    if state_dir is None:
        holders, store = None, None
        notes.append(f"VF holders not shown: {no_store}.")
    else:
        holders, store = _read_holders(AttachmentService(host, state_dir).store, notes)
    return VfDetails(settings, frozenset(read), holders, store, tuple(notes))


def _read_settings(
    host: Host,
    pfs: Iterable[PhysicalFunction],
    by_pf: Mapping[str, Sequence[VirtualFunction]],
    notes: list[str],
) -> tuple[dict[PciAddress, VfState], set[PciAddress]]:
    """One VF-list request per PF. A PF that cannot be asked (no netdev, gone) is noted;
    any other failure is netlink's own, noted once, and the PFs after it are not asked."""
    settings: dict[PciAddress, VfState] = {}
    read: set[PciAddress] = set()
    for pf in pfs:
        try:
            states = {state.index: state for state in host.vf_states(pf)}
        except (DeviceNotFound, KernelNotFound) as e:
            notes.append(f"VF settings of {pf.name} not shown: {e}.")
            continue
        except (SriovError, OSError, ImportError) as e:
            rest = f" from {pf.name} on" if read else ""
            notes.append(f"VF settings not shown{rest}: netlink is unavailable: {e}.")
            break
        read.add(pf.address)
        for vf in by_pf[str(pf.address)]:
            if vf.index in states:
                settings[vf.address] = states[vf.index]
    return settings, read


def _read_holders(
    store: AllocationStore, notes: list[str]
) -> tuple[dict[PciAddress, Holder] | None, Path | None]:
    """The held VFs (None when the store cannot be read) and the store's directory (None
    when there is none). A missing store holds no VF and is not created; an existing one
    is read under its shared lock, as every reader reads it. Either failure is noted."""
    where = store.directory
    try:
        os.stat(where)
    except FileNotFoundError:
        notes.append(f"No allocation store at {where}: no VF is held through it.")
        return {}, None
    except OSError as e:
        notes.append(f"VF holders not shown: cannot read {where}: {e.strerror or e}.")
        return None, None
    try:
        named = store.allocated()
        records = store.records()
    except (SriovError, OSError) as e:
        notes.append(f"VF holders not shown: cannot read the allocation store {where}: {e}.")
        return None, None
    holders = {vf: Holder(HolderState.UNREADABLE) for vf in named}
    holders.update({record.vf: Holder.of(record) for record in records})
    return holders, where


def _kernel_problem(args: argparse.Namespace) -> str | None:
    """Why netlink must not be asked: it reaches this node's kernel, which a
    ``--sysfs-root`` tree does not describe (an example host has its fake kernel)."""
    if args.example is not None or _is_this_node(args):
        return None
    return (
        f"sysfs is read from --sysfs-root {args.sysfs_root}, and netlink can only ask "
        "this node's kernel (--example NAME runs on a fake kernel)"
    )


def _state_dir(args: argparse.Namespace) -> Path | None:
    """``--state-dir``, else ``$SRIOVLIB_STATE_DIR``, else the default on this node."""
    given = args.state_dir or os.environ.get(STATE_DIR_VARIABLE)
    if given:
        return Path(given)
    return DEFAULT_STATE_DIR if args.example is None and _is_this_node(args) else None


def _no_store_reason(args: argparse.Namespace) -> str:
    """Why no store is read when :func:`_state_dir` gives none."""
    what = (
        "an example host has no allocation store"
        if args.example is not None
        else f"--sysfs-root {args.sysfs_root} is not this node, whose store is not read"
    )
    return f"{what} (--state-dir DIR reads one)"


def _is_this_node(args: argparse.Namespace) -> bool:
    return Path(args.sysfs_root).resolve() == Path("/")


def _only(inventory: Inventory, pf: PhysicalFunction) -> Inventory:
    """The inventory of *pf* alone (node-level problems left out)."""
    return attrs.evolve(
        inventory,
        pfs=tuple(p for p in inventory.pfs if p.address == pf.address),
        vfs=tuple(v for v in inventory.vfs if v.pf_address == pf.address),
        other_nics=(),
        problems=(),
    )


# -- JSON -------------------------------------------------------------------------


def inventory_json(
    inventory: Inventory, names: PciIds | None, details: VfDetails
) -> dict[str, Any]:
    """The ``--json`` document: every PF with its VFs nested, scan-level problems, and
    the notes saying what could not be read."""
    by_pf = _vfs_by_pf(inventory)
    known = {pf.address for pf in inventory.pfs}
    orphans = [vf for vf in inventory.vfs if vf.pf_address not in known]
    return {
        "schema": JSON_SCHEMA,
        "pfs": [
            _pf_json(pf, by_pf.get(str(pf.address), []), names, details) for pf in inventory.pfs
        ],
        "problems": [*inventory.problems, *(_orphan_problem(vf) for vf in orphans)],
        "notes": list(details.notes),
    }


def _pf_json(
    pf: PhysicalFunction,
    vfs: Sequence[VirtualFunction],
    names: PciIds | None,
    details: VfDetails,
) -> dict[str, Any]:
    return {
        "name": pf.name,
        "address": str(pf.address),
        "netdevs": list(pf.netdevs),
        **_ids_json(pf.ids, names),
        "driver": pf.driver,
        "numa_node": pf.numa_node,
        "iommu_group": pf.iommu_group,
        "link_type": str(pf.link_type),
        "total_vfs": pf.total_vfs,
        "num_vfs": pf.num_vfs,
        "vfs_without_netdev": sum(1 for vf in vfs if vf.netdev is None),
        "switchdev": None
        if pf.switchdev is None
        else {"switch_id": pf.switchdev.switch_id, "port_name": pf.switchdev.port_name},
        "problems": list(pf.problems),
        "vfs": [_vf_json(vf, names, details) for vf in vfs],
    }


def _vf_json(vf: VirtualFunction, names: PciIds | None, details: VfDetails) -> dict[str, Any]:
    settings = details.settings_of(vf)
    holder = details.holder_of(vf)
    return {
        "index": vf.index,
        "address": str(vf.address),
        "pf_address": str(vf.pf_address),
        **_ids_json(vf.ids, names),
        "driver": vf.driver,
        "netdev": vf.netdev,
        "numa_node": vf.numa_node,
        "iommu_group": vf.iommu_group,
        "rdma_devices": list(vf.rdma_devices),
        "problems": list(vf.problems),
        "settings": None if settings is None else _settings_json(settings),
        "holder": None if holder is None else holder.to_json(),
    }


def _settings_json(state: VfState) -> dict[str, Any]:
    """The ``settings`` object: :meth:`VfState.to_dict` without the index (the VF's)."""
    return {name: value for name, value in state.to_dict().items() if name != "index"}


def _ids_json(ids: PciId, names: PciIds | None) -> dict[str, Any]:
    vendor, device = names.names(ids) if names is not None else (None, None)
    return {
        "vendor_id": ids.vendor_hex,
        "device_id": ids.device_hex,
        "vendor_name": vendor,
        "device_name": device,
    }


# -- tables -------------------------------------------------------------------------


def _print_tables(inventory: Inventory, names: PciIds | None, details: VfDetails | None) -> None:
    """The PF table, then with *details* (``-v``) one VF table per PF and the notes."""
    if not inventory.pfs:
        others = len(inventory.other_nics)
        print(
            "No SR-IOV physical functions on this node "
            f"({others} network PCI function{'s' if others != 1 else ''} without SR-IOV). "
            "Run `sriovlib doctor` to see why."
        )
        _print_problems(inventory)
        return
    by_pf = _vfs_by_pf(inventory)
    rows = []
    for pf in inventory.pfs:
        vfs = by_pf.get(str(pf.address), [])
        vendor, device = _names(pf.ids, names)
        rows.append(
            [
                pf.name,
                str(pf.address),
                vendor,
                device,
                pf.driver or "(none)",
                _opt(pf.numa_node),
                str(pf.link_type),
                f"{pf.num_vfs}/{pf.total_vfs}",
                str(sum(1 for vf in vfs if vf.netdev is None)),
            ]
        )
    print_table(
        "SR-IOV physical functions",
        ["PF", "PCI address", "Vendor", "Device", "Driver", "NUMA", "Link", "VFs", "No netdev"],
        rows,
    )
    print("VFs: enabled/maximum (sriov_numvfs/sriov_totalvfs).")
    print("No netdev: VFs without a host interface (moved into a pod, on vfio-pci, unbound).")
    if details is not None:
        for pf in inventory.pfs:
            _print_vfs(pf, by_pf.get(str(pf.address), []), details)
        _print_legend(details)
    _print_problems(inventory)


def _print_vfs(pf: PhysicalFunction, vfs: Sequence[VirtualFunction], details: VfDetails) -> None:
    print()
    if not vfs:
        print(f"{pf.name} ({pf.address}): no VFs enabled.")
        return
    columns = ["VF", "PCI address", "Netdev", "Driver", "NUMA", "IOMMU group", "RDMA"]
    with_settings = details.has_settings(pf)
    with_holders = details.holders is not None
    if with_settings:
        columns += SETTINGS_COLUMNS
    if with_holders:
        columns.append("Holder")
    rows = []
    for vf in vfs:
        row = [
            str(vf.index),
            str(vf.address),
            vf.netdev or "-",
            vf.driver or "(none)",
            _opt(vf.numa_node),
            _opt(vf.iommu_group),
            ", ".join(vf.rdma_devices) or "-",
        ]
        if with_settings:
            row += _settings_cells(details.settings_of(vf))
        holder = details.holder_of(vf)
        if holder is not None:
            row.append(holder.cell())
        rows.append(row)
    print_table(f"VFs of {pf.name} ({pf.address})", columns, rows)


def _settings_cells(state: VfState | None) -> list[str]:
    """The :data:`SETTINGS_COLUMNS` of one VF; all unknown when its PF did not list it."""
    if state is None:
        return [_UNKNOWN] * len(SETTINGS_COLUMNS)
    return [
        state.mac,
        _vlan(state),
        _flag(state.spoofchk),
        _flag(state.trust),
        _UNKNOWN if state.link_state is None else str(state.link_state),
        str(state.min_tx_rate),
        str(state.max_tx_rate),
        _flag(state.query_rss),
    ]


_UNKNOWN = "unknown"


def _vlan(state: VfState) -> str:
    """``100``, ``100 qos 3``, ``100 802.1ad``; ``-`` for no VLAN and no priority."""
    if not state.vlan and not state.qos:
        return "-"
    qos = f" qos {state.qos}" if state.qos else ""
    proto = "" if state.vlan_proto is VlanProto.DOT1Q else f" {state.vlan_proto}"
    return f"{state.vlan}{qos}{proto}"


def _flag(value: bool | None) -> str:
    return _UNKNOWN if value is None else "on" if value else "off"


def _print_legend(details: VfDetails) -> None:
    """What the settings and holder columns mean, then the notes."""
    lines = []
    if details.read_pfs:
        lines.append(
            "Settings: as the PF's driver reports them (ip link show PF); unknown: the "
            "driver does not report it. Rates in Mbit/s, 0: no limit."
        )
    if details.store is not None:
        lines.append(f"Holder: from the allocation store in {details.store}.")
    lines += details.notes
    if lines:
        print()
        for line in lines:
            print(line)


def _print_problems(inventory: Inventory) -> None:
    lines = [f"{problem}" for problem in inventory.problems]
    known = {pf.address for pf in inventory.pfs}
    for pf in inventory.pfs:
        lines += [f"PF {pf.name} ({pf.address}): {problem}" for problem in pf.problems]
    for vf in inventory.vfs:
        lines += [f"VF {vf.index} ({vf.address}): {problem}" for problem in vf.problems]
        if vf.pf_address not in known:
            lines.append(_orphan_problem(vf))
    if lines:
        print()
        print("Problems:")
        for line in lines:
            print(f"  - {line}")


# -- helpers --------------------------------------------------------------------------


def _vfs_by_pf(inventory: Inventory) -> dict[str, list[VirtualFunction]]:
    by_pf: dict[str, list[VirtualFunction]] = {}
    for vf in inventory.vfs:
        by_pf.setdefault(str(vf.pf_address), []).append(vf)
    for vfs in by_pf.values():
        vfs.sort(key=lambda vf: vf.index)
    return by_pf


def _names(ids: PciId, names: PciIds | None) -> tuple[str, str]:
    """Vendor and device names, each falling back to its hex id."""
    vendor, device = names.names(ids) if names is not None else (None, None)
    return vendor or ids.vendor_hex, device or ids.device_hex


def _opt(value: int | None) -> str:
    return "-" if value is None else str(value)


def _orphan_problem(vf: VirtualFunction) -> str:
    return f"VF {vf.address}: its PF {vf.pf_address} was not found"
