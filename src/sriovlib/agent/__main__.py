"""The ``sriovlib-agent`` console script: ``sriovlib agent`` under its own name."""

from __future__ import annotations

import sys
from collections.abc import Sequence

from sriovlib.cli import main as cli_main

__all__ = ["main"]


def main(argv: Sequence[str] | None = None) -> int:
    """Run ``sriovlib agent`` with *argv* (default: the command line)."""
    return cli_main(["agent", *(sys.argv[1:] if argv is None else argv)])


if __name__ == "__main__":
    sys.exit(main())
