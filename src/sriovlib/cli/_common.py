"""Options and output helpers shared by the subcommands."""

from __future__ import annotations

import argparse
import json
import sys
import tempfile
from collections.abc import Iterator, Sequence
from contextlib import contextmanager
from typing import Any

from sriovlib.host import Host

__all__ = ["add_host_options", "open_host", "print_json", "print_table"]

_PIPE_WIDTH = 400


def add_host_options(parser: argparse.ArgumentParser, *, json: bool = True) -> None:
    """Add ``--sysfs-root`` and ``--example`` (and ``--json`` unless *json* is False)."""
    from sriovlib.testing.presets import EXAMPLES

    source = parser.add_mutually_exclusive_group()
    source.add_argument(
        "--sysfs-root",
        metavar="DIR",
        default="/",
        help="read sysfs from DIR/sys instead of /sys (default: /)",
    )
    source.add_argument(
        "--example",
        metavar="NAME",
        choices=list(EXAMPLES),
        help=f"use a built-in example host instead of this node ({', '.join(EXAMPLES)})",
    )
    if json:
        parser.add_argument("--json", action="store_true", help="print JSON instead of a table")


@contextmanager
def open_host(args: argparse.Namespace) -> Iterator[Host]:
    """The Host the options ask for.

    An example host lives in a temporary directory and runs on the fake kernel of
    :mod:`sriovlib.testing`, so commands that change things (``numvfs``) work on it too,
    under the kernel's rules, and leave nothing behind.
    """
    if args.example is None:
        yield Host(args.sysfs_root)
        return
    from sriovlib.testing.fakenetlink import FakeNetlink
    from sriovlib.testing.presets import build_example

    with tempfile.TemporaryDirectory(prefix="sriovlib-example-") as root:
        kernel = FakeNetlink(build_example(args.example, root))
        yield Host(root, netlink=kernel, sysfs_writer=kernel)


def print_json(data: Any) -> None:
    """Print *data* as indented JSON on stdout."""
    json.dump(data, sys.stdout, indent=2, sort_keys=False)
    sys.stdout.write("\n")


def print_table(title: str | None, columns: Sequence[str], rows: Sequence[Sequence[str]]) -> None:
    """Print a table with rich (imported here: it is slow to import).

    Cells are plain text, never rich markup: "[ConnectX-5]" or "[8086]" print as is.
    """
    from rich.console import Console
    from rich.table import Table
    from rich.text import Text

    table = Table(
        title=None if title is None else Text(title),
        title_justify="left",
        show_edge=False,
        pad_edge=False,
    )
    for column in columns:
        table.add_column(Text(column), overflow="fold")
    for row in rows:
        table.add_row(*(Text(cell) for cell in row))
    # A pipe or a file gets each row on one line, whatever the width; a terminal wraps.
    console = Console() if sys.stdout.isatty() else Console(width=_PIPE_WIDTH)
    console.print(table)
