"""The CNI binary: the console script ``sriov`` and ``python -m sriovlib.cni``.

A runtime runs it once per operation with ``CNI_*`` in the environment and the network
configuration on stdin. Whatever happens, it prints one JSON document (a result, an
error) or nothing (a successful DEL, CHECK, GC, STATUS) on stdout and exits 0 on
success, 1 on failure; logs go to stderr or ``logFile``. ``VERSION`` is answered without
importing anything beyond the protocol module.
"""

from __future__ import annotations

import json
import os
import sys

from sriovlib.cni.protocol import (
    INTERNAL_ERROR,
    IO_FAILURE,
    MAX_STDIN,
    CniError,
    canonical,
    config_version,
    decode_config,
    error_json,
    read_environment,
    version_json,
)

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: VERSION must not import typing
if TYPE_CHECKING:
    from collections.abc import Callable, Mapping

    from sriovlib.cni.commands import Context

__all__ = ["main", "run"]

_VERSION_STDIN_WAIT = 0.05


def run(
    environ: Mapping[str, str],
    read_stdin: Callable[[], bytes],
    context: Context | Callable[[Mapping[str, str]], Context] | None = None,
) -> tuple[int, str]:
    """One invocation: the exit status and what to print on stdout.

    *context* is what the command runs against, or a function that makes it from
    *environ* (called only for commands that need one); default
    :meth:`Context.from_environ <sriovlib.cni.commands.Context.from_environ>`. Never
    raises (short of the interpreter dying): every failure becomes CNI error JSON.
    """
    version: str | None = None
    command = environ.get("CNI_COMMAND", "")
    try:
        env = read_environment(environ)
        if env.command == "VERSION":
            return 0, json.dumps(version_json(_requested_version(read_stdin)))
        try:
            data = read_stdin()
        except OSError as e:
            raise CniError(IO_FAILURE, "cannot read the network configuration", str(e)) from None
        config = decode_config(data)
        claimed = config.get("cniVersion")
        version = claimed if isinstance(claimed, str) else None
        version = config_version(config, env.command)
        from sriovlib.cni.commands import execute

        output = execute(env, config, canonical(config), version, context, environ)
        return 0, output or ""
    except CniError as e:
        if not e.logged:
            _stderr(f"sriov: {command or 'CNI'} failed (code {e.code}): {e}")
        return 1, json.dumps(error_json(e, version), indent=4)
    except BaseException as e:  # the protocol wants JSON, never a traceback
        if isinstance(e, SystemExit | KeyboardInterrupt) and not isinstance(e, Exception):
            error = CniError(INTERNAL_ERROR, f"interrupted ({type(e).__name__})")
        else:
            error = CniError(INTERNAL_ERROR, f"internal error: {type(e).__name__}", str(e))
        _stderr(f"sriov: {command or 'CNI'} failed (code {error.code}): {error}")
        return 1, json.dumps(error_json(error, version), indent=4)


def _stderr(text: str) -> None:
    try:
        print(text, file=sys.stderr, flush=True)
    except (OSError, ValueError):
        return


def _requested_version(read_stdin: Callable[[], bytes]) -> str | None:
    """The ``cniVersion`` a VERSION caller sent, if any (never fails, never waits long)."""
    try:
        data = read_stdin()
        requested = json.loads(data).get("cniVersion") if data.strip() else None
    except (OSError, ValueError, AttributeError, RecursionError):
        return None
    return requested if isinstance(requested, str) else None


def _read_real_stdin(*, patient: bool) -> bytes:
    """All of stdin. For VERSION (*patient* false) only what is there at once: a caller
    may leave stdin open without writing to it."""
    stream = sys.stdin.buffer if sys.stdin is not None else None
    if stream is None:
        return b""
    if not patient:
        if stream.isatty():
            return b""
        import select

        ready, _, _ = select.select([stream], [], [], _VERSION_STDIN_WAIT)
        if not ready:
            return b""
    return stream.read(MAX_STDIN + 1)  # bounded: decode_config refuses anything longer


def main(context: Callable[[Mapping[str, str]], Context] | None = None) -> int:
    """The console script: run with this process's environment and stdin.

    The shipped ``sriov`` passes no *context* (the real node); the tests' entry point
    :mod:`sriovlib.testing.cni_binary` passes one with its fakes.
    """
    environ = os.environ
    patient = environ.get("CNI_COMMAND") != "VERSION"
    status, output = run(environ, lambda: _read_real_stdin(patient=patient), context)
    if output:
        try:
            sys.stdout.write(output + "\n")
            sys.stdout.flush()
        except (OSError, ValueError):
            return 1
    return status


if __name__ == "__main__":
    sys.exit(main())
