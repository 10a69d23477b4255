"""``sriovlib plugins``: the vendor plugins loaded, their versions and hooks."""

from __future__ import annotations

import argparse
import sys
from typing import Any

from sriovlib.cli._common import print_json, print_table


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "plugins",
        help="list vendor plugins and the hooks they implement",
        description="List the built-in and third-party vendor plugins, their versions and "
        "hooks, and any third-party plugin that failed to load. Exit status 1 when one "
        "failed.",
    )
    parser.add_argument("--json", action="store_true", help="print JSON instead of a table")
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sriovlib.plugins.manager import DISABLE_ENV, Plugins

    plugins = Plugins()
    infos = plugins.info()
    if args.json:
        print_json(
            {
                "plugins": [
                    {
                        "name": i.name,
                        "version": i.version,
                        "builtin": i.builtin,
                        "distribution": i.distribution,
                        "hooks": list(i.hooks),
                    }
                    for i in infos
                ],
                "errors": [
                    {"name": e.name, "distribution": e.distribution, "error": e.error}
                    for e in plugins.errors
                ],
                "disabled": sorted(plugins.disabled),
            }
        )
    else:
        rows = [
            (
                i.name,
                i.version or "-",
                "built-in" if i.builtin else (i.distribution or "-"),
                ", ".join(h.removeprefix("sriovlib_") for h in i.hooks),
            )
            for i in infos
        ]
        print_table("Vendor plugins", ("Plugin", "Version", "From", "Hooks"), rows)
        if plugins.disabled:
            print(f"Disabled by {DISABLE_ENV}: {', '.join(sorted(plugins.disabled))}")
        for e in plugins.errors:
            print(
                f"FAILED {e.name} ({e.distribution or 'unknown distribution'}): {e.error}",
                file=sys.stderr,
            )
    return 1 if plugins.errors else 0
