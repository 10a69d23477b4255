"""The CNI binary: the console script ``sriov`` and ``python -m sriovlib.cni``.

A runtime runs it once per operation with ``CNI_*`` in the environment and the network
configuration on stdin. Whatever happens, it prints one JSON document (a result, an
error) or nothing (a successful DEL, CHECK, GC, STATUS) on stdout and exits 0 on
success, 1 on failure; logs go to stderr or ``logFile``.

When the node agent answers on its socket, the invocation is handed to it
(:mod:`sriovlib.cni.fastpath`, which is all this module imports first); otherwise it
runs here (:func:`sriovlib.cni.invoke.run`). Either way it is the same code with the
same results.
"""

import os
import sys

from sriovlib.cni import fastpath

# no typing, no ``from __future__`` (see sriovlib.cni.fastpath): string annotations
TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping
    from typing import TextIO

    from sriovlib.cni.commands import Context

__all__ = ["main"]


def main(context: "Callable[[Mapping[str, str]], Context] | None" = None) -> int:
    """The console script: run with this process's environment and stdin.

    The shipped ``sriov`` passes no *context* (the real node); the tests' entry point
    :mod:`sriovlib.testing.cni_binary` passes one with its fakes, used when the
    invocation runs in-process.
    """
    environ = os.environ
    try:
        data = fastpath.read_stdin(patient=environ.get("CNI_COMMAND") != "VERSION")
    except OSError as e:  # reported by the in-process invocation, as code 5
        status, output = _in_process(environ, e, context)
    else:
        try:
            reply = fastpath.forward(environ, data)
        except fastpath.AgentLost as e:
            status, output = _agent_lost(e, data)
        else:
            if reply is None:
                status, output = _in_process(environ, data, context)
            else:
                status, output, errors = reply
                _write(sys.stderr, errors)
    if output and not _write(sys.stdout, output + "\n"):
        return 1
    return status


def _in_process(
    environ: "Mapping[str, str]",
    data: bytes | OSError,
    context: "Callable[[Mapping[str, str]], Context] | None",
) -> tuple[int, str]:
    from sriovlib.cni.invoke import run

    def read_stdin() -> bytes:
        if isinstance(data, OSError):
            raise data
        return data

    return run(environ, read_stdin, context)


def _agent_lost(error: fastpath.AgentLost, data: bytes) -> tuple[int, str]:
    """Code 11 for an operation the agent took and did not finish (its records are
    crash-safe: the runtime's DEL or a retry settles it)."""
    import json

    from sriovlib.cni.protocol import TRY_AGAIN_LATER, CniError, error_json

    try:
        version = json.loads(data).get("cniVersion")
    except (ValueError, AttributeError, RecursionError):
        version = None
    failure = CniError(TRY_AGAIN_LATER, "the node agent stopped during the operation", str(error))
    command = os.environ.get("CNI_COMMAND") or "CNI"
    _write(sys.stderr, f"sriov: {command} failed (code {failure.code}): {failure}\n")
    return 1, json.dumps(
        error_json(failure, version if isinstance(version, str) else None), indent=4
    )


def _write(stream: "TextIO", text: str) -> bool:
    if not text:
        return True
    try:
        stream.write(text)
        stream.flush()
    except (OSError, ValueError):
        return False
    return True


if __name__ == "__main__":
    sys.exit(main())
