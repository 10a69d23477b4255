"""The ``sriovlib`` command line: protocol translation over :class:`sriovlib.Host`.

One module per subcommand (``list.py``, ``doctor.py``...). Each exposes
``register(subparsers)`` adding its parser, whose ``func`` default takes the parsed
arguments and returns the exit status. ``main`` turns every :class:`SriovError` and
bad argument into a one-line message and a non-zero exit — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import sys
from collections.abc import Sequence

from sriovlib.exceptions import SriovError

__all__ = ["main"]

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ("list", "doctor", "numvfs", "pools", "config", "plugins")

EXIT_OK = 0
EXIT_FINDINGS = 1
EXIT_USAGE = 2


def build_parser() -> argparse.ArgumentParser:
    """The full argument parser (also used to generate the CLI reference)."""
    parser = argparse.ArgumentParser(
        prog="sriovlib",
        description="Discover, check and configure SR-IOV NICs on this node.",
    )
    parser.add_argument("--version", action="store_true", help="print the version and exit")
    subparsers = parser.add_subparsers(dest="command", metavar="COMMAND")
    for name in COMMANDS:
        module = importlib.import_module(f"sriovlib.cli.{name.replace('-', '_')}")
        module.register(subparsers)
    return parser


def main(argv: Sequence[str] | None = None) -> int:
    """Entry point of the ``sriovlib`` console script."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if args.version:
        from importlib.metadata import version

        print(version("sriovlib"))
        return EXIT_OK
    if args.command is None:
        parser.print_help()
        return EXIT_USAGE
    return _run(args)


def _run(args: argparse.Namespace) -> int:
    """Run a subcommand, turning expected failures into a message and an exit status."""
    status = EXIT_OK
    try:
        status = args.func(args)
    except BrokenPipeError:
        # the reader (e.g. `| head`) went away: stop quietly, as coreutils do
        sys.stderr.close()
    except SriovError as e:
        _error(args.command, e)
        status = EXIT_FINDINGS
    except (ValueError, OSError) as e:
        _error(args.command, e)
        status = EXIT_USAGE
    except KeyboardInterrupt:
        status = 130
    return status


def _error(command: str, error: Exception) -> None:
    """Print *error* prefixed once; continuation lines are indented under it."""
    first, *rest = str(error).splitlines() or [""]
    print(f"sriovlib {command}: error: {first}", file=sys.stderr)
    for line in rest:
        print(f"  {line}", file=sys.stderr)
