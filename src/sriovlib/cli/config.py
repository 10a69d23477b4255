"""``sriovlib config generate``: a device-plugin config.json for the hardware found.

One pool per PF model and link type, selecting its VFs by vendor and device id, so that
nobody types ids by hand; ``sriovlib pools --config`` shows what it selects. The result
passes sriovlib's strict checks and means the same to the device plugin.
"""

from __future__ import annotations

import argparse
import errno
import os
import stat
import sys
import tempfile
from pathlib import Path
from typing import Any

from sriovlib.cli._common import add_host_options, open_host
from sriovlib.pools import dump_config, generate_config

__all__ = ["register", "run_generate"]


def register(subparsers: Any) -> None:
    """Add the ``config`` subcommand and its ``generate`` action."""
    parser = subparsers.add_parser(
        "config",
        help="write a device-plugin config.json from the discovered hardware",
        description="Tools for sriov-network-device-plugin config files.",
    )
    actions = parser.add_subparsers(dest="action", metavar="ACTION")
    generate = actions.add_parser(
        "generate",
        help="write a config that pools every VF of this node",
        description="Write a config.json with one pool per PF model and link type that "
        "selects every VF of this node (or of --sysfs-root/--example). PFs without VFs "
        "get no pool; enable VFs first.",
    )
    add_host_options(generate, json=False)
    generate.add_argument(
        "-o", "--output", metavar="FILE", help="write to FILE instead of standard output"
    )
    generate.add_argument(
        "--split-by-driver",
        action="store_true",
        help="separate pools for VFs bound to different drivers "
        "(e.g. iavf and vfio-pci), selected by 'drivers' too",
    )
    generate.add_argument(
        "--resource-prefix",
        metavar="PREFIX",
        help="set resourcePrefix on every pool (default: leave it to the "
        "device plugin's -resource-prefix)",
    )
    generate.set_defaults(func=run_generate)
    parser.set_defaults(func=lambda _args: _usage(parser))


def _usage(parser: argparse.ArgumentParser) -> int:
    parser.print_help(sys.stderr)
    return 2


def run_generate(args: argparse.Namespace) -> int:
    """Write the generated config; notes about unpooled PFs go to standard error."""
    with open_host(args) as host:
        inventory = host.inventory()
        facts = host.selector_facts()
    config = generate_config(
        inventory,
        facts=facts,
        split_by_driver=args.split_by_driver,
        resource_prefix=args.resource_prefix,
    )
    for pf in inventory.pfs:
        if pf.num_vfs == 0:
            print(
                f"sriovlib config: note: PF {pf.name} ({pf.address}, {pf.ids}) has no VFs "
                "enabled, so no pool selects it",
                file=sys.stderr,
            )
    if not config.pools:
        print(
            "sriovlib config: note: no VFs on this node: the config has no pools", file=sys.stderr
        )
    text = dump_config(config)
    if args.output is None:
        sys.stdout.write(text)
    else:
        _write(Path(args.output), text)
    return 0


def _write(path: Path, text: str) -> None:
    """Write *text* to *path*: a regular file (or none yet) is replaced atomically, so a
    reader never sees half a config; a device, a FIFO or ``-`` is written through; a
    symlink (a ConfigMap's ``..data`` link) is followed, its target judged the same way."""
    if str(path) == "-":
        sys.stdout.write(text)
        return
    target = Path(os.path.realpath(path))
    try:
        mode = target.stat().st_mode
    except FileNotFoundError:
        mode = None
    if mode is not None and not stat.S_ISREG(mode):
        if stat.S_ISDIR(mode):
            raise IsADirectoryError(errno.EISDIR, "is a directory", str(path))
        with open(target, "w") as f:  # a device or a FIFO: write through, keep the node
            f.write(text)
        return
    fd, temp = tempfile.mkstemp(dir=target.parent, prefix=f".{target.name}.")
    try:
        with os.fdopen(fd, "w") as f:
            f.write(text)
            f.flush()
            os.fsync(f.fileno())
        Path(temp).chmod(stat.S_IMODE(mode) if mode is not None else 0o644)
        Path(temp).replace(target)
    except BaseException:
        Path(temp).unlink(missing_ok=True)
        raise
