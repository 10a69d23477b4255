"""``sriovlib apply -f FILE``: make the node what its SR-IOV policies say.

Reads the policies (sriovlib's format or the operator's ``SriovNetworkNodePolicy``
documents), prints the plan per PF and VF with what each change disrupts, then applies
it (not with ``--dry-run``) and writes the device-plugin pools with ``--pool-config``.
The work is :mod:`sriovlib.policy`'s; this module only translates.
"""

from __future__ import annotations

import argparse
import sys
from pathlib import Path
from typing import Any

from sriovlib.cli._common import add_host_options, open_host, print_json
from sriovlib.cli.config import _write
from sriovlib.cli.numvfs import _seconds

__all__ = ["register", "run"]


def register(subparsers: Any) -> None:
    """Add the ``apply`` subcommand."""
    parser = subparsers.add_parser(
        "apply",
        help="configure this node's PFs and VFs from a policy file (SriovNetworkNodePolicy)",
        description="Read SR-IOV node policies (sriovlib's format or the operator's "
        "SriovNetworkNodePolicy documents, YAML or JSON), merge them as the operator does, "
        "show every change with what it disrupts, and make them: PF MTU, eswitch mode, "
        "VF count, VF drivers, VF MTU. Disruptive changes are refused while VFs are in "
        "use unless --force; changes needing a reboot are only reported, with the "
        "command to run. A second apply of the same file changes nothing.",
    )
    parser.add_argument(
        "-f", "--file", metavar="FILE", required=True, help="the policy file (- for stdin)"
    )
    parser.add_argument("--dry-run", action="store_true", help="show the plan, change nothing")
    parser.add_argument(
        "--force", action="store_true", help="make disruptive changes even while VFs are in use"
    )
    parser.add_argument(
        "--pool-config",
        metavar="FILE",
        help="write the device-plugin config.json of the policies' resourceNames to FILE "
        "(- for standard output); left alone when it already says the same",
    )
    parser.add_argument(
        "--timeout",
        type=_seconds,
        default=60.0,
        metavar="S",
        help="how long to wait for VFs and netdevs per PF (default 60)",
    )
    add_host_options(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    from sriovlib.policy import apply, load_policies, plan
    from sriovlib.pools import dump_config

    policies = load_policies(args.file)
    quiet = args.json or args.pool_config == "-"
    for warning in policies.warnings:
        print(f"sriovlib apply: warning: {warning}", file=sys.stderr)
    with open_host(args) as host:
        the_plan = plan(host, policies)
        for warning in the_plan.warnings[len(policies.warnings) :]:
            print(f"sriovlib apply: warning: {warning}", file=sys.stderr)
        if not quiet:
            _print_plan(args.file, len(policies.policies), the_plan)
        report: dict[str, Any] = {
            "file": args.file,
            "policies": [p.name for p in policies.policies],
            "plan": the_plan.to_dict(),
            "dry_run": args.dry_run,
            "applied": [],
        }
        if not args.dry_run and not the_plan.empty:

            def progress(line: str) -> None:
                print(f"  {line}", file=sys.stderr, flush=True)

            done = apply(host, the_plan, force=args.force, timeout=args.timeout, progress=progress)
            report["applied"] = [
                {"pf": str(address), **change.to_dict()} for address, change in done.done
            ]
            report["seconds"] = done.seconds
            if not quiet:
                print(f"applied {len(done.done)} changes in {done.seconds:.2f} s")
        elif not quiet:
            print(
                "dry run: nothing changed"
                if args.dry_run and not the_plan.empty
                else "nothing to do: the node is as the policies say"
            )
    text = dump_config(the_plan.pools)
    if args.pool_config is not None:
        report["pool_config_file"] = args.pool_config
        report["pool_config_written"] = False
        if args.pool_config == "-":
            sys.stdout.write(text)
        elif not args.dry_run and _differs(Path(args.pool_config), text):
            _write(Path(args.pool_config), text)
            report["pool_config_written"] = True
            if not quiet:
                print(f"wrote the pool config to {args.pool_config}")
    if args.json:
        print_json(report)
    return 0


def _differs(path: Path, text: str) -> bool:
    try:
        return path.read_text() != text
    except (OSError, UnicodeDecodeError):
        return True


def _print_plan(source: str, count: int, the_plan: Any) -> None:
    pfs = len(the_plan.pfs)
    print(f"{source}: {count} polic{'y' if count == 1 else 'ies'}, {pfs} PF{'s' * (pfs != 1)}")
    for change in the_plan.node:
        _print_change(change)
    for pf_plan in the_plan.pfs:
        pf = pf_plan.pf
        print(
            f"{pf.name} ({pf.address}), {pf_plan.vendor} plugin, "
            f"polic{'y' if len(pf_plan.target.policies) == 1 else 'ies'} "
            f"{', '.join(pf_plan.target.policies) or '(none)'}"
            + (f", vfBudget {pf_plan.target.budget}" if pf_plan.target.budget else "")
        )
        for note in pf_plan.target.notes:
            print(f"  note: {note}")
        if not pf_plan.changes:
            print("  no changes")
        for change in pf_plan.changes:
            _print_change(change)
        if pf_plan.refused:
            names = ", ".join(str(vf.index) for vf in pf_plan.busy)
            print(f"  VFs in use: {names} (a disruptive change needs --force)")
    for blocker in the_plan.blockers:
        print(f"blocked: {blocker}")
    for pool in the_plan.pools.pools:
        parts = [
            ", ".join(str(f) for f in (*s.pf_names, *s.root_devices))
            + (f" ({', '.join(s.drivers)})" if s.drivers else "")
            for s in pool.selectors
        ]
        print(f"pool {pool.resource_name}: {'; '.join(parts)}")


def _print_change(change: Any) -> None:
    line = f"  {change.subject:<5} {change.what} {change.before} -> {change.after}"
    label = str(change.disruption)
    if not change.applied:
        label += ", not done by sriovlib" if change.command else ", waits"
    print(f"{line:<52} [{label}]" + (f" ({change.note})" if change.note else ""))
    if change.command:
        print(f"        run: {change.command}")
