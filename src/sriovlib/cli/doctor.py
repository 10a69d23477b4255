"""``sriovlib doctor``: render :func:`sriovlib.doctor.diagnose` for a person or as JSON.

Exit status: 0 when at least one SR-IOV PF is usable, 1 when none is (the findings then
contain an error saying why).
"""

from __future__ import annotations

import argparse
import os
import sys
import textwrap
from collections.abc import Sequence
from typing import Any

from sriovlib.cli import EXIT_FINDINGS, EXIT_OK
from sriovlib.cli._common import add_host_options, open_host, print_json
from sriovlib.cli.list import add_pci_ids_option
from sriovlib.doctor import Finding, Severity, diagnose, node_usable
from sriovlib.pciids import open_pci_ids

__all__ = ["findings_json", "register", "run"]

#: Version of the ``--json`` shape; raised only if a field changes meaning or goes away.
JSON_SCHEMA = 1

_LABELS = {
    Severity.OK: ("OK", "32"),
    Severity.INFO: ("INFO", "36"),
    Severity.WARNING: ("WARN", "33"),
    Severity.ERROR: ("ERROR", "1;31"),
}
_WIDTH = 88
_INDENT = " " * 8


def register(subparsers: Any) -> None:
    """Add the ``doctor`` subcommand."""
    parser = subparsers.add_parser(
        "doctor",
        help="check this node for SR-IOV and say what to do next",
        description="Check this node for SR-IOV: NICs and their drivers, SR-IOV "
        "capability, VFs enabled, IOMMU and vfio-pci. Each finding comes with the next "
        "command to run. Exits 1 when the node has no usable SR-IOV PF.",
    )
    add_host_options(parser)
    add_pci_ids_option(parser)
    parser.set_defaults(func=run)


def run(args: argparse.Namespace) -> int:
    """Print the findings; exit 1 when no SR-IOV PF is usable."""
    names = open_pci_ids(args.pci_ids)
    with open_host(args) as host:
        findings = diagnose(host, names)
    usable = node_usable(findings)
    if args.json:
        print_json(findings_json(findings))
    else:
        _print_findings(findings, color=_use_color())
    return EXIT_OK if usable else EXIT_FINDINGS


def findings_json(findings: Sequence[Finding]) -> dict[str, Any]:
    """The ``--json`` document: the verdict and every finding in check order."""
    return {
        "schema": JSON_SCHEMA,
        "usable": node_usable(findings),
        "findings": [
            {
                "check": f.check,
                "severity": str(f.severity),
                "subject": f.subject,
                "title": f.title,
                "detail": f.detail,
                "command": f.command,
            }
            for f in findings
        ],
    }


def _print_findings(findings: Sequence[Finding], *, color: bool) -> None:
    for finding in findings:
        label, code = _LABELS[finding.severity]
        tag = f"{label:<6}"
        if color:
            tag = f"\033[{code}m{label}\033[0m" + " " * (6 - len(label))
        print(f"  {tag}{finding.title}")
        if finding.detail:
            print(
                textwrap.fill(
                    finding.detail,
                    width=_WIDTH,
                    initial_indent=_INDENT,
                    subsequent_indent=_INDENT,
                    break_long_words=False,
                    break_on_hyphens=False,
                )
            )
        if finding.command:
            # never wrapped: it must paste as one line
            print(f"{_INDENT}run: {finding.command}")
    counts = {s: sum(1 for f in findings if f.severity is s) for s in Severity}
    print()
    summary = f"{counts[Severity.WARNING]} warning{'' if counts[Severity.WARNING] == 1 else 's'}"
    if node_usable(findings):
        print(f"Result: SR-IOV is usable on this node ({summary}).")
    else:
        print(f"Result: SR-IOV is NOT usable on this node ({summary}); see ERROR above.")


def _use_color() -> bool:
    return sys.stdout.isatty() and "NO_COLOR" not in os.environ and os.environ.get("TERM") != "dumb"
