"""``sriovlib numvfs PF COUNT``: show the plan for a VF count, then carry it out."""

from __future__ import annotations

import argparse
import sys
import time
from typing import Any

from sriovlib.cli._common import add_host_options, open_host, print_json
from sriovlib.plugins.types import EswitchMode


def register(subparsers: Any) -> None:
    parser = subparsers.add_parser(
        "numvfs",
        help="set the number of VFs of a PF (with --dry-run: only show the plan)",
        description="Set a PF's VF count the way its vendor plugin says (checked against "
        "sriov_totalvfs and the vendor's limit, through 0 where the kernel requires it), "
        "and wait until the VFs and their netdevs exist. Changing a non-zero count "
        "destroys every VF, so it is refused while a VF is in use unless --force.",
    )
    parser.add_argument("pf", metavar="PF", help="the PF's interface name or PCI address")
    parser.add_argument("count", metavar="COUNT", type=int, help="the VF count wanted")
    parser.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    parser.add_argument("--force", action="store_true", help="destroy VFs even if in use")
    parser.add_argument(
        "--eswitch-mode", choices=[m.value for m in EswitchMode], help="wanted eswitch mode"
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=30.0,
        metavar="S",
        help="how long to wait for the VFs and netdevs (default 30)",
    )
    add_host_options(parser)
    parser.set_defaults(func=run)


#: The longest --timeout accepted, in seconds.
MAX_TIMEOUT = 3600.0


def _seconds(text: str) -> float:
    """A finite number of seconds from 0 to :data:`MAX_TIMEOUT` (``nan`` waited forever)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"{text!r} is not a number of seconds") from None
    if not 0 <= value <= MAX_TIMEOUT:  # false for nan too
        raise argparse.ArgumentTypeError(f"{text!r} is not from 0 to {MAX_TIMEOUT:g} seconds")
    return value


def run(args: argparse.Namespace) -> int:
    mode = None if args.eswitch_mode is None else EswitchMode(args.eswitch_mode)
    with open_host(args) as host:
        pf = host.pf(args.pf)
        vendor = host.hooks(pf).vendor
        plan = host.plan_num_vfs(pf, args.count, eswitch_mode=mode)
        report: dict[str, Any] = {
            "pf": str(pf.address),
            "name": pf.name,
            "plugin": vendor,
            "before": pf.num_vfs,
            "after": args.count,
            "plan": [str(step) for step in plan.steps],
            "note": plan.note,
            "applied": False,
        }
        if not args.json:
            steps = ", ".join(report["plan"]) or "nothing to do"
            print(f"{pf.name} ({pf.address}), {vendor} plugin: {pf.num_vfs} -> {args.count} VFs")
            print(f"  plan: {steps}" + (f" ({plan.note})" if plan.steps and plan.note else ""))
        if args.dry_run or not plan.steps:
            if args.json:
                print_json(report)
            return 0
        if not args.json:
            print(
                "  applying (VFs appear asynchronously; this can take seconds)...",
                file=sys.stderr,
                flush=True,
            )
        started = time.monotonic()
        change = host.set_num_vfs(
            pf, args.count, force=args.force, timeout=args.timeout, eswitch_mode=mode
        )
        report.update(
            applied=True,
            writes=list(change.writes),
            seconds=round(time.monotonic() - started, 3),
            vfs=[
                {
                    "index": vf.index,
                    "address": str(vf.address),
                    "netdev": vf.netdev,
                    "driver": vf.driver,
                }
                for vf in change.vfs
            ],
        )
        if args.json:
            print_json(report)
        else:
            netdevs = ", ".join(vf.netdev or str(vf.address) for vf in change.vfs) or "none"
            print(f"  done in {report['seconds']:.2f} s: {len(change.vfs)} VFs ({netdevs})")
    return 0
