"""Delegation to the IPAM plugin named in ``ipam.type``.

The plugin is looked up in ``CNI_PATH`` and run the way the CNI spec describes: the
caller's environment with ``CNI_COMMAND`` replaced, the whole network configuration on
stdin, its stdout parsed as a result or an error, its stderr passed on to the log.
:class:`ExecIpam` does that with a child process; tests substitute a fake with the same
methods (:class:`Ipam`).
"""

from __future__ import annotations

import json
import logging
import os
import subprocess
from collections.abc import Mapping
from typing import Protocol

import attrs

from sriovlib.cni.protocol import (
    IPAM_FAILED,
    CniError,
    Result,
    parse_result,
)

__all__ = ["ExecIpam", "Ipam", "IpamRequest", "find_plugin"]

log = logging.getLogger("sriovlib.cni")

#: Seconds an IPAM plugin may take before it is killed (libcni itself never gives up).
DEFAULT_TIMEOUT = 120.0


@attrs.frozen
class IpamRequest:
    """One call of the IPAM plugin.

    Attributes:
        plugin: ``ipam.type``: the executable's name in ``CNI_PATH``.
        config: The network configuration to pass on stdin (JSON bytes).
        version: The configuration's ``cniVersion`` (for results that omit theirs).
        container_id / netns / ifname: The attachment (None where not applicable).
        path: ``CNI_PATH`` directories.
        args: ``CNI_ARGS`` as received.
    """

    plugin: str
    config: bytes = attrs.field(repr=False)
    version: str
    container_id: str | None
    netns: str | None
    ifname: str | None
    path: tuple[str, ...]
    args: str = ""


class Ipam(Protocol):
    """What the commands need from IPAM; every method raises :class:`CniError`."""

    def locate(self, plugin: str, path: tuple[str, ...]) -> None:
        """Raise unless the plugin can be run (checked before ADD changes anything)."""

    def add(self, request: IpamRequest) -> Result:
        """Allocate addresses; return the result in canonical form."""

    def delete(self, request: IpamRequest) -> None:
        """Release what ADD allocated (idempotent)."""

    def check(self, request: IpamRequest) -> None:
        """Verify the allocation."""

    def gc(self, request: IpamRequest) -> None:
        """Release allocations not in the configuration's valid-attachments list."""

    def status(self, request: IpamRequest) -> None:
        """Raise unless the plugin is ready."""


def find_plugin(name: str, path: tuple[str, ...]) -> str:
    """The executable *name* in the first ``CNI_PATH`` directory that has it."""
    for directory in path:
        candidate = os.path.join(directory, name)
        if os.path.isfile(candidate) and os.access(candidate, os.X_OK):
            return candidate
    raise CniError(
        IPAM_FAILED,
        f"failed to find IPAM plugin {name!r}",
        f"searched CNI_PATH [{', '.join(path)}]",
    )


class ExecIpam:
    """:class:`Ipam` that runs the plugin executable.

    Args:
        environ: The environment to pass on (normally this process's).
        timeout: Seconds before a hung plugin is killed.
    """

    def __init__(self, environ: Mapping[str, str], timeout: float = DEFAULT_TIMEOUT) -> None:
        self.environ = dict(environ)
        self.timeout = timeout
        self.calls = 0

    def locate(self, plugin: str, path: tuple[str, ...]) -> None:
        """Raise CniError 104 unless *plugin* is an executable in *path*."""
        find_plugin(plugin, path)

    def add(self, request: IpamRequest) -> Result:
        """``ADD``: the plugin's result, which must hold at least one IP."""
        out = self._run("ADD", request)
        try:
            data = json.loads(out)
        except ValueError as e:
            raise CniError(
                IPAM_FAILED, f"IPAM plugin {request.plugin!r} printed an unreadable result", str(e)
            ) from None
        try:
            result = parse_result(data, request.version, f"the result of {request.plugin}")
        except CniError as e:
            raise CniError(IPAM_FAILED, e.msg, e.details) from None
        if not result.get("ips"):
            raise CniError(IPAM_FAILED, f"IPAM plugin {request.plugin!r} returned no IP addresses")
        return result

    def delete(self, request: IpamRequest) -> None:
        """``DEL``."""
        self._run("DEL", request)

    def check(self, request: IpamRequest) -> None:
        """``CHECK``."""
        self._run("CHECK", request)

    def gc(self, request: IpamRequest) -> None:
        """``GC``."""
        self._run("GC", request)

    def status(self, request: IpamRequest) -> None:
        """``STATUS``."""
        self._run("STATUS", request)

    def _run(self, command: str, request: IpamRequest) -> bytes:
        executable = find_plugin(request.plugin, request.path)
        env = dict(self.environ)
        env["CNI_COMMAND"] = command
        env["CNI_PATH"] = os.pathsep.join(request.path)
        env["CNI_ARGS"] = request.args
        for name, value in (
            ("CNI_CONTAINERID", request.container_id),
            ("CNI_NETNS", request.netns),
            ("CNI_IFNAME", request.ifname),
        ):
            if value is None:
                env.pop(name, None)
            else:
                env[name] = value
        self.calls += 1
        try:
            proc = subprocess.run(
                [executable],
                input=request.config,
                capture_output=True,
                env=env,
                timeout=self.timeout,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise CniError(
                IPAM_FAILED,
                f"IPAM plugin {request.plugin!r} {command} timed out",
                f"no answer after {self.timeout:g} s",
            ) from None
        except OSError as e:
            raise CniError(
                IPAM_FAILED, f"IPAM plugin {request.plugin!r} could not be run", str(e)
            ) from None
        for line in proc.stderr.decode(errors="replace").splitlines():
            if line.strip():
                log.info("%s: %s", request.plugin, line)
        if proc.returncode != 0:
            raise _plugin_error(request.plugin, command, proc.returncode, proc.stdout, proc.stderr)
        return proc.stdout


def _plugin_error(plugin: str, command: str, status: int, out: bytes, err: bytes) -> CniError:
    """The plugin's own error (code, msg, details) when it printed one, else code 104."""
    try:
        data = json.loads(out)
    except ValueError:
        data = None
    if isinstance(data, dict) and isinstance(data.get("code"), int) and data.get("msg"):
        details = data.get("details")
        return CniError(
            data["code"],
            f"IPAM plugin {plugin!r} {command} failed: {data['msg']}",
            details if isinstance(details, str) else "",
        )
    text = (out or err).decode(errors="replace").strip()
    return CniError(
        IPAM_FAILED,
        f"IPAM plugin {plugin!r} {command} failed with status {status}",
        text[-2000:] if text else "it printed nothing",
    )
