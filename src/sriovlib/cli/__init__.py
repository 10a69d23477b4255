"""The ``sriovlib`` command line: protocol translation over :class:`sriovlib.Host`.

One module per subcommand (``list.py``, ``doctor.py``...). Each exposes
``register(subparsers)`` adding its parser, whose ``func`` default takes the parsed
arguments and returns the exit status. ``main`` turns every :class:`SriovError` and
bad argument into a one-line message and a non-zero exit — never a traceback.
"""

from __future__ import annotations

import argparse
import importlib
import os
import sys
from collections.abc import Sequence

from sriovlib.exceptions import SriovError

__all__ = ["main"]

#: Subcommand modules, in the order ``--help`` lists them.
COMMANDS = ("list", "doctor", "numvfs", "apply", "pools", "config", "plugins", "agent")

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
    if sys.stdout is None:  # started with descriptor 1 closed
        if sys.stderr is not None:
            print("sriovlib: error: standard output is closed", file=sys.stderr)
        return EXIT_USAGE
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
        sys.stdout.flush()  # a write error (a full disk, a closed reader) surfaces here
    except BrokenPipeError:
        # the reader (e.g. `| head`) went away: stop quietly, as coreutils do
        sys.stderr.close()
    except SriovError as e:
        _error(args.command, e)
        status = EXIT_FINDINGS
    except (ValueError, OSError) as e:
        _error(args.command, e)
        status = EXIT_USAGE
        _drop_stdout()
    except KeyboardInterrupt:
        status = 130
    return status


def _drop_stdout() -> None:
    """After a failed write to standard output, send what is left to /dev/null, so that
    the interpreter's last flush does not fail again with a traceback."""
    try:
        sys.stdout.flush()
    except (OSError, ValueError):
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)


def _error(command: str, error: Exception) -> None:
    """Print *error* prefixed once; continuation lines are indented under it."""
    first, *rest = str(error).splitlines() or [""]
    print(f"sriovlib {command}: error: {first}", file=sys.stderr)
    for line in rest:
        print(f"  {line}", file=sys.stderr)
