"""One invocation of the plugin: environment and stdin in, exit status and stdout out.

The binary (:mod:`sriovlib.cni.__main__`) calls :func:`run` when it runs in-process, and
the node agent calls it for what the binary forwards (:mod:`sriovlib.cni.fastpath`), so
both give the same results and the same errors. ``VERSION`` is answered without
importing anything beyond the protocol module.
"""

from __future__ import annotations

import json
import sys

from sriovlib.cni.protocol import (
    INTERNAL_ERROR,
    IO_FAILURE,
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
    from typing import TextIO

    from sriovlib.cni.commands import Context

__all__ = ["run"]


def run(
    environ: Mapping[str, str],
    read_stdin: Callable[[], bytes],
    context: Context | Callable[[Mapping[str, str]], Context] | None = None,
    stderr: TextIO | None = None,
    *,
    shared: bool = False,
) -> tuple[int, str]:
    """One invocation: the exit status and what to print on stdout.

    *context* is what the command runs against, or a function that makes it from
    *environ* (called only for commands that need one); default
    :meth:`Context.from_environ <sriovlib.cni.commands.Context.from_environ>`. The line
    naming a failure goes to *stderr* (default ``sys.stderr``), and so does the
    command's log unless the netconf names a ``logFile`` (*shared*: see
    :func:`~sriovlib.cni.commands.execute`). Never raises (short of the interpreter
    dying): every failure becomes CNI error JSON.
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

        output = execute(
            env, config, canonical(config), version, context, environ, stderr=stderr, shared=shared
        )
        return 0, output or ""
    except CniError as e:
        if not e.logged:
            _line(stderr, f"sriov: {command or 'CNI'} failed (code {e.code}): {e}")
        return 1, json.dumps(error_json(e, version), indent=4)
    except BaseException as e:  # the protocol wants JSON, never a traceback
        if isinstance(e, SystemExit | KeyboardInterrupt) and not isinstance(e, Exception):
            error = CniError(INTERNAL_ERROR, f"interrupted ({type(e).__name__})")
        else:
            error = CniError(INTERNAL_ERROR, f"internal error: {type(e).__name__}", str(e))
        _line(stderr, f"sriov: {command or 'CNI'} failed (code {error.code}): {error}")
        return 1, json.dumps(error_json(error, version), indent=4)


def _line(stream: TextIO | None, text: str) -> None:
    try:
        print(text, file=stream or sys.stderr, flush=True)
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
