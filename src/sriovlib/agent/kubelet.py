"""Serving the kubelet: one gRPC server per resource, registration, and keeping both up.

:class:`PluginServer` serves one resource's ``DevicePlugin`` service on
``<device-plugin dir>/<prefix>_<name>.sock``. :func:`register` announces it on the
kubelet's ``kubelet.sock`` (``Registration.Register``, version ``v1beta1``).
:class:`Supervisor` keeps every resource served and registered, looking twice a second:

- ``kubelet.sock`` replaced (a new inode: the kubelet restarted, and it deleted every
  plugin socket on its way up) → re-register every resource;
- a resource's own socket gone or replaced → restart its server, then register;
- a server that stops answering its own health probe (GetDevicePluginOptions, every
  :data:`PROBE_INTERVAL` seconds) → restart it;
- the kubelet left a resource's ListAndWatch stream and opened none for
  :data:`ABANDONED_GRACE` seconds, while ``kubelet.sock`` stayed → register it again
  (the kubelet dropped it: see :meth:`.DevicePluginService.abandoned`);
- a failed registration → retried with exponential back-off (:data:`BACKOFF` doubling to
  :data:`MAX_BACKOFF`), each failure logged with the kubelet's answer; the agent keeps
  serving the other resources and never exits over it.
"""

from __future__ import annotations

import atexit
import logging
import os
import shutil
import stat
import tempfile
import threading
import time
from collections.abc import Sequence
from concurrent import futures
from pathlib import Path

import attrs
import grpc

from sriovlib.agent.api import deviceplugin_pb2 as pb
from sriovlib.agent.api import deviceplugin_pb2_grpc as pb_grpc
from sriovlib.agent.deviceplugin import DevicePluginService

__all__ = [
    "API_VERSION",
    "KUBELET_SOCKET",
    "PluginServer",
    "RegistrationError",
    "Supervisor",
    "register",
    "unix_target",
]

log = logging.getLogger("sriovlib.agent")

API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
#: Seconds between two looks at the sockets.
TICK = 0.5
#: Seconds between two health probes of a server.
PROBE_INTERVAL = 10.0
#: First and longest wait before retrying a failed registration.
BACKOFF = 0.5
MAX_BACKOFF = 30.0
#: Seconds without a ListAndWatch stream, after the kubelet left one, before registering again.
ABANDONED_GRACE = 1.0
#: Seconds a Register call or a probe may take.
CALL_TIMEOUT = 5.0
#: Worker threads per server: each ListAndWatch stream holds one.
WORKERS = 8


#: The longest unix socket path gRPC binds or dials: its own check, stricter than the
#: kernel's 107 bytes (a 63-character driver name under the kubelet's plugin directory is
#: longer).
GRPC_UNIX_PATH_MAX = 105

_aliases: dict[str, str] = {}
_aliases_lock = threading.Lock()


def unix_target(path: Path) -> str:
    """The gRPC target of the unix socket *path*, to bind or to dial.

    A path longer than gRPC takes is reached through a short symbolic link to its
    directory, in a private temporary directory of this process (one per directory, kept
    while the process lives, as gRPC binds at once but dials again on every reconnect):
    the kernel follows the link at ``bind`` and ``connect``, so the socket is at *path*
    and others reach it there.
    """
    if len(os.fsencode(path)) <= GRPC_UNIX_PATH_MAX:
        return f"unix://{path}"
    directory = os.fspath(path.parent)
    with _aliases_lock:
        alias = _aliases.get(directory)
        if alias is None:
            if not _aliases:
                atexit.register(_remove_aliases)
            alias = os.path.join(tempfile.mkdtemp(prefix="sriovlib-sock-"), "d")
            os.symlink(directory, alias)
            _aliases[directory] = alias
    return f"unix://{alias}/{path.name}"


def _remove_aliases() -> None:
    for alias in _aliases.values():
        shutil.rmtree(os.path.dirname(alias), ignore_errors=True)  # the links, not their targets


class RegistrationError(Exception):
    """The kubelet refused or did not answer a registration."""


def _inode(path: Path) -> tuple[int, int] | None:
    """(device, inode) of the socket at *path*, or None when there is none."""
    try:
        st = os.lstat(path)
    except OSError:
        return None
    return (st.st_dev, st.st_ino) if stat.S_ISSOCK(st.st_mode) else None


class PluginServer:
    """The gRPC server of one resource on its socket in *directory*."""

    def __init__(self, service: DevicePluginService, directory: Path) -> None:
        self.service = service
        self.resource = service.resource
        self.path = directory / self.resource.socket_name
        self._server: grpc.Server | None = None
        self._inode: tuple[int, int] | None = None
        self.starts = 0

    def start(self) -> None:
        """Bind the socket (replacing a stale one) and serve."""
        if _inode(self.path) is not None or self.path.is_symlink():
            self.path.unlink()
        server = grpc.server(
            futures.ThreadPoolExecutor(
                max_workers=WORKERS, thread_name_prefix=f"dp-{self.resource.pool.resource_name}"
            )
        )
        pb_grpc.add_DevicePluginServicer_to_server(self.service, server)  # type: ignore[no-untyped-call]
        if server.add_insecure_port(unix_target(self.path)) == 0:
            raise OSError(f"cannot listen on {self.path}")
        server.start()
        self._server = server
        self._inode = _inode(self.path)
        self.starts += 1

    def alive(self) -> bool:
        """Whether the socket this server bound is still in place."""
        return self._server is not None and _inode(self.path) == self._inode

    def probe(self) -> str | None:
        """Call the server through its socket: None if it answers, else the error."""
        try:
            with grpc.insecure_channel(unix_target(self.path)) as channel:
                stub = pb_grpc.DevicePluginStub(channel)  # type: ignore[no-untyped-call]
                stub.GetDevicePluginOptions(pb.Empty(), timeout=CALL_TIMEOUT)
        except grpc.RpcError as e:
            return f"{e.code().name}: {e.details()}"
        return None

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving and remove the socket if it is still ours."""
        server, self._server = self._server, None
        if server is not None:
            server.stop(grace).wait(grace + 1)
        if self._inode is not None and _inode(self.path) == self._inode:
            self.path.unlink(missing_ok=True)
        self._inode = None


def register(directory: Path, server: PluginServer, timeout: float = CALL_TIMEOUT) -> None:
    """Register *server*'s resource with the kubelet listening in *directory*.

    Raises:
        RegistrationError: with the kubelet's answer.
    """
    request = pb.RegisterRequest(
        version=API_VERSION,
        endpoint=server.path.name,
        resource_name=server.resource.name,
        options=pb.DevicePluginOptions(get_preferred_allocation_available=True),
    )
    try:
        with grpc.insecure_channel(unix_target(directory / KUBELET_SOCKET)) as channel:
            stub = pb_grpc.RegistrationStub(channel)  # type: ignore[no-untyped-call]
            stub.Register(request, timeout=timeout)
    except grpc.RpcError as e:
        raise RegistrationError(f"{e.code().name}: {e.details()}") from None


@attrs.define
class _State:
    """What the supervisor knows of one server."""

    server: PluginServer
    registered_with: tuple[int, int] | None = None  # the kubelet.sock it registered on
    backoff: float = BACKOFF
    retry_at: float = 0.0
    probed_at: float = 0.0
    failures: int = 0
    last_error: str | None = None
    registrations: int = 0


class Supervisor:
    """Keeps *servers* served and registered with the kubelet in *directory*."""

    def __init__(
        self, directory: Path, servers: Sequence[PluginServer], *, tick: float = TICK
    ) -> None:
        self.directory = directory
        self.tick = tick
        self._states = [_State(s) for s in servers]
        self._lock = threading.Lock()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._kubelet: tuple[int, int] | None = None
        self._waiting_logged = False

    def status(self) -> list[dict[str, object]]:
        """Per resource: socket, registered or not, failures and the last error."""
        with self._lock:
            return [
                {
                    "resource": s.server.resource.name,
                    "socket": str(s.server.path),
                    "registered": s.registered_with is not None,
                    "registrations": s.registrations,
                    "serverStarts": s.server.starts,
                    "failures": s.failures,
                    "lastError": s.last_error,
                }
                for s in self._states
            ]

    def add(self, server: PluginServer) -> None:
        """Keep *server* served and registered too (a pool that appeared)."""
        with self._lock:
            self._states.append(_State(server))

    def remove(self, server: PluginServer) -> None:
        """Stop keeping *server* (its pool is gone; its owner stops it)."""
        with self._lock:
            self._states = [s for s in self._states if s.server is not server]

    def start(self) -> None:
        """Run :meth:`step` every tick in a thread until :meth:`stop`."""
        self._thread = threading.Thread(target=self._run, name="supervisor", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        """Stop the loop (the servers are left to their owner)."""
        self._stop.set()
        if self._thread is not None:
            self._thread.join()

    def _run(self) -> None:
        while True:
            try:
                self.step()
            except Exception:  # a bug here must not end supervision silently
                log.exception("supervisor step failed")
            if self._stop.wait(self.tick):
                return

    def step(self, now: float | None = None) -> None:
        """One look at the kubelet socket and every server."""
        now = time.monotonic() if now is None else now
        kubelet = _inode(self.directory / KUBELET_SOCKET)
        if kubelet != self._kubelet:
            if kubelet is None:
                log.warning("kubelet socket gone", extra={"socket": str(self.directory)})
            elif self._kubelet is not None:
                log.info("kubelet socket replaced: registering again")
            self._kubelet = kubelet
            self._waiting_logged = False
        with self._lock:
            for state in self._states:
                self._keep(state, kubelet, now)

    def _keep(self, state: _State, kubelet: tuple[int, int] | None, now: float) -> None:
        server = state.server
        if server.resource.closed:
            return
        restart = None
        if not server.alive():
            restart = "its socket is gone"
        elif now - state.probed_at >= PROBE_INTERVAL:
            state.probed_at = now
            problem = server.probe()
            if problem is not None:
                restart = f"it does not answer ({problem})"
        if restart is not None:
            log.warning(
                "restarting the device-plugin server",
                extra={"resource": server.resource.name, "reason": restart},
            )
            server.stop(grace=0)
            try:
                server.start()
            except (OSError, RuntimeError) as e:
                state.last_error = f"cannot serve: {e}"
                log.error("cannot serve", extra={"resource": server.resource.name, "error": str(e)})
                return
            state.registered_with = None
            state.probed_at = now
        if kubelet is None:
            state.registered_with = None
            if not self._waiting_logged:
                log.info("waiting for the kubelet", extra={"directory": str(self.directory)})
                self._waiting_logged = True
            return
        if state.registered_with == kubelet and server.service.abandoned(now) >= ABANDONED_GRACE:
            log.warning(
                "the kubelet left the resource: registering again",
                extra={"resource": server.resource.name},
            )
            state.registered_with = None
        if state.registered_with == kubelet or now < state.retry_at:
            return
        try:
            register(self.directory, server)
        except RegistrationError as e:
            state.failures += 1
            state.last_error = str(e)
            state.retry_at = now + state.backoff
            log.warning(
                "registration failed",
                extra={
                    "resource": server.resource.name,
                    "error": str(e),
                    "retry_in": state.backoff,
                },
            )
            state.backoff = min(state.backoff * 2, MAX_BACKOFF)
            return
        server.service.registered()
        state.registered_with = kubelet
        state.backoff = BACKOFF
        state.registrations += 1
        state.last_error = None
        log.info(
            "registered",
            extra={
                "resource": server.resource.name,
                "socket": server.path.name,
                "devices": len(server.resource.devices()),
            },
        )
