"""``sriovlib list``: the SR-IOV physical functions of a node, and with ``-v`` their VFs.

The JSON shape (``--json``) is stable: fields are only ever added. It is documented in
``docs/cli.md``; :func:`inventory_json` builds it.
"""

from __future__ import annotations

import argparse
from collections.abc import Sequence
from typing import Any

from sriovlib.cli._common import add_host_options, open_host, print_json, print_table
from sriovlib.host import Inventory
from sriovlib.models import PciId, PhysicalFunction, VirtualFunction
from sriovlib.pciids import PciIds, open_pci_ids

__all__ = ["add_pci_ids_option", "inventory_json", "register", "run"]

#: Version of the ``--json`` shape; raised only if a field changes meaning or goes away.
JSON_SCHEMA = 1


def register(subparsers: Any) -> None:
    """Add the ``list`` subcommand."""
    parser = subparsers.add_parser(
        "list",
        help="list SR-IOV physical functions (and their VFs with -v)",
        description="List the SR-IOV physical functions (PFs) of this node: PCI address, "
        "vendor and device, driver, NUMA node, link type and how many VFs are enabled. "
        "With -v, also every VF of each PF.",
    )
    add_host_options(parser)
    add_pci_ids_option(parser)
    parser.add_argument("-v", "--verbose", action="store_true", help="also list the VFs of each PF")
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
    """Print the PF table (and VF tables with ``-v``), or JSON; always exit 0."""
    names = open_pci_ids(args.pci_ids)
    with open_host(args) as host:
        inventory = host.inventory()
    if args.json:
        print_json(inventory_json(inventory, names))
        return 0
    _print_tables(inventory, names, verbose=args.verbose)
    return 0


# -- JSON -------------------------------------------------------------------------


def inventory_json(inventory: Inventory, names: PciIds | None) -> dict[str, Any]:
    """The ``--json`` document: every PF with its VFs nested, and scan-level problems."""
    by_pf = _vfs_by_pf(inventory)
    known = {pf.address for pf in inventory.pfs}
    orphans = [vf for vf in inventory.vfs if vf.pf_address not in known]
    return {
        "schema": JSON_SCHEMA,
        "pfs": [_pf_json(pf, by_pf.get(str(pf.address), []), names) for pf in inventory.pfs],
        "problems": [*inventory.problems, *(_orphan_problem(vf) for vf in orphans)],
    }


def _pf_json(
    pf: PhysicalFunction, vfs: Sequence[VirtualFunction], names: PciIds | None
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
        "vfs": [_vf_json(vf, names) for vf in vfs],
    }


def _vf_json(vf: VirtualFunction, names: PciIds | None) -> dict[str, Any]:
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
    }


def _ids_json(ids: PciId, names: PciIds | None) -> dict[str, Any]:
    vendor, device = names.names(ids) if names is not None else (None, None)
    return {
        "vendor_id": ids.vendor_hex,
        "device_id": ids.device_hex,
        "vendor_name": vendor,
        "device_name": device,
    }


# -- tables -------------------------------------------------------------------------


def _print_tables(inventory: Inventory, names: PciIds | None, *, verbose: bool) -> None:
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
    if verbose:
        for pf in inventory.pfs:
            _print_vfs(pf, by_pf.get(str(pf.address), []))
    _print_problems(inventory)


def _print_vfs(pf: PhysicalFunction, vfs: Sequence[VirtualFunction]) -> None:
    print()
    if not vfs:
        print(f"{pf.name} ({pf.address}): no VFs enabled.")
        return
    rows = [
        [
            str(vf.index),
            str(vf.address),
            vf.netdev or "-",
            vf.driver or "(none)",
            _opt(vf.numa_node),
            _opt(vf.iommu_group),
            ", ".join(vf.rdma_devices) or "-",
        ]
        for vf in vfs
    ]
    print_table(
        f"VFs of {pf.name} ({pf.address})",
        ["VF", "PCI address", "Netdev", "Driver", "NUMA", "IOMMU group", "RDMA"],
        rows,
    )


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
