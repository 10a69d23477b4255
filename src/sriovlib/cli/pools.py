"""``sriovlib pools``: which device joins which device-plugin pool, and why others do not.

Reads a sriov-network-device-plugin ``config.json`` (``--config FILE``, ``-`` for standard
input), discovers the node (or ``--sysfs-root``/``--example``) and prints the members of
every pool, then the devices no pool takes with the reason per pool. Warnings of
``--compat`` parsing go to standard error. The JSON shape (``--json``) only ever gains
fields.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence
from typing import Any

from sriovlib._files import read_stream
from sriovlib.cli._common import add_host_options, open_host, print_json, print_table
from sriovlib.pools import (
    DEFAULT_PREFIX,
    MAX_CONFIG,
    Assignment,
    DeviceKind,
    PoolConfig,
    PoolDevice,
    assign,
    discover_devices,
    load_config,
    parse_config,
)

__all__ = ["assignment_json", "read_config", "register", "run"]

#: Version of the ``--json`` shape.
JSON_SCHEMA = 1


def register(subparsers: Any) -> None:
    """Add the ``pools`` subcommand."""
    parser = subparsers.add_parser(
        "pools",
        help="show the device-plugin pools a config.json makes on this node",
        description="Read a sriov-network-device-plugin config.json and show the devices "
        "of every pool on this node (first match wins, as in the device plugin), then "
        "the devices no pool takes and why. The config is checked strictly: keys the "
        "device plugin would silently ignore or misread are errors unless --compat.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        required=True,
        help="the config.json to read ('-' for standard input)",
    )
    parser.add_argument(
        "--compat",
        action="store_true",
        help="accept what the device plugin accepts (keys in any case, "
        "unknown keys, malformed VF ranges...) and select what it would; "
        "each leniency is printed as a warning",
    )
    parser.add_argument(
        "--resource-prefix",
        metavar="PREFIX",
        default=DEFAULT_PREFIX,
        help="the device plugin's -resource-prefix (default: %(default)s)",
    )
    add_host_options(parser)
    parser.set_defaults(func=run)


def read_config(path: str, *, compat: bool, default_prefix: str = DEFAULT_PREFIX) -> PoolConfig:
    """Parse the config at *path*, or standard input for ``-``."""
    if path == "-":
        data = read_stream(sys.stdin, MAX_CONFIG, "standard input")
        return parse_config(data, compat=compat, source="<stdin>", default_prefix=default_prefix)
    return load_config(path, compat=compat, default_prefix=default_prefix)


def run(args: argparse.Namespace) -> int:
    """Print pool membership; exit 0 (a config error raises and exits non-zero)."""
    config = read_config(args.config, compat=args.compat, default_prefix=args.resource_prefix)
    for warning in config.warnings:
        print(f"sriovlib pools: warning: {warning}", file=sys.stderr)
    with open_host(args) as host:
        devices = discover_devices(host.inventory(), host.selector_facts())
    assignment = assign(config, devices)
    if args.json:
        print_json(assignment_json(config, assignment))
    else:
        _print_tables(config, assignment)
    return 0


def assignment_json(config: PoolConfig, assignment: Assignment) -> dict[str, Any]:
    """The ``--json`` document."""
    return {
        "schema": JSON_SCHEMA,
        "compat": config.compat,
        "pools": [
            {
                "resource": m.pool.full_name(config.default_prefix),
                "resourceName": m.pool.resource_name,
                "deviceType": str(m.pool.device_type),
                "devices": [d.to_dict() for d in m.devices],
                "notes": list(m.notes),
            }
            for m in assignment.pools
        ],
        "unmatched": [
            {**u.device.to_dict(), "reasons": list(u.reasons)} for u in assignment.unmatched
        ],
        "shadowed": [
            {
                "address": str(s.device.address),
                "pool": s.pool.resource_name,
                "alsoSelectedBy": [p.resource_name for p in s.also],
            }
            for s in assignment.shadowed
        ],
        "warnings": [str(w) for w in config.warnings],
    }


def _vf(device: PoolDevice) -> str:
    return "" if device.vf_index is None else str(device.vf_index)


def _print_tables(config: PoolConfig, assignment: Assignment) -> None:
    def table(title: str, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
        print_table(title, columns, rows)

    columns = ("PCI address", "Kind", "ID", "Driver", "PF", "VF", "NUMA", "Netdev")
    for members in assignment.pools:
        pool = members.pool
        count = len(members.devices)
        title = (
            f"{pool.full_name(config.default_prefix)} ({pool.device_type}): "
            f"{count} device{'s' if count != 1 else ''}"
        )
        rows = [
            (
                str(d.address),
                str(d.kind),
                str(d.ids),
                d.driver or "-",
                d.pf_name or (str(d.pf_address) if d.pf_address else "-"),
                _vf(d),
                "-" if d.numa_node is None else str(d.numa_node),
                ",".join(d.netdevs) or "-",
            )
            for d in members.devices
        ]
        if rows:
            table(title, columns, rows)
        else:
            print(title)
        for note in members.notes:
            print(f"  note: {note}")
        print()
    for shadow in assignment.shadowed:
        others = ", ".join(p.resource_name for p in shadow.also)
        print(
            f"note: {shadow.device.address} is also selected by {others}; the first "
            f"pool, {shadow.pool.resource_name}, keeps it"
        )
    vfs = [d for m in assignment.pools for d in m.devices if d.kind is DeviceKind.VF]
    left = [u for u in assignment.unmatched if u.device.kind is DeviceKind.VF]
    print(f"VFs in a pool: {len(vfs)} of {len(vfs) + len(left)}")
    if assignment.unmatched:
        why = [
            (
                str(u.device.address),
                str(u.device.kind),
                str(u.device.ids),
                u.device.driver or "-",
                "\n".join(u.reasons),
            )
            for u in assignment.unmatched
        ]
        table(
            f"In no pool: {len(why)} device{'s' if len(why) != 1 else ''}",
            ("PCI address", "Kind", "ID", "Driver", "Why"),
            why,
        )
    else:
        print("Every device is in a pool.")
