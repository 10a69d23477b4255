"""The agent's side of the CNI fast path (the framing: :mod:`sriovlib.cni.fastpath`).

:class:`CniServer` listens on a unix socket and runs each invocation the ``sriov``
binary hands it through :func:`sriovlib.cni.invoke.run`, the function the binary runs
in-process, so results and error codes are the same either way; the attachment
service's records and locks are the same files. What differs is where it runs:

- a thread per invocation; invocations on VFs of one PF (the ``deviceID``'s) run one
  at a time; one without a known PF runs beside the others, its VF's own lock still
  held by the attachment service;
- the invocation's log comes back as the binary's stderr (or goes to its ``logFile``);
- the caller must be root (``SO_PEERCRED``; an agent that is not root also serves its
  own user); anyone else is closed on before anything runs and runs in-process;
- the socket is created ``0600`` under a private name and renamed into place, so it is
  never reachable with a wider mode, and a new agent takes the path over from an old
  one (a rolling upgrade) without a moment without a socket; a stopping agent removes
  the path only while it is still its own socket.

Each invocation's latency and error code go to the agent's metrics.
"""

from __future__ import annotations

import contextlib
import functools
import io
import json
import logging
import os
import socket
import stat
import struct
import tempfile
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING

from sriovlib.cni import fastpath
from sriovlib.cni.commands import Context
from sriovlib.cni.invoke import run

if TYPE_CHECKING:
    from sriovlib.agent.metrics import Metrics
    from sriovlib.plugins.manager import Plugins

__all__ = ["CniServer"]

log = logging.getLogger("sriovlib.agent")

_UCRED = struct.Struct("3i")  # pid, uid, gid
#: Seconds a caller has to send its whole request.
REQUEST_TIMEOUT = 10.0


class CniServer:
    """Serves the CNI fast path on *path* (see the module documentation).

    Args:
        path: The socket.
        context: Makes an invocation's context from the environment it was sent with;
            default :meth:`Context.from_environ` with *plugins*.
        plugins: The vendor plugins the agent loaded (default: each Host loads them).
        metrics: Where invocations are counted, if anywhere.
    """

    def __init__(
        self,
        path: str | os.PathLike[str],
        context: Callable[[Mapping[str, str]], Context] | None = None,
        *,
        plugins: Plugins | None = None,
        metrics: Metrics | None = None,
    ) -> None:
        self.path = Path(path)
        self.context = context or functools.partial(Context.from_environ, plugins=plugins)
        self.metrics = metrics
        self.allowed_uids = frozenset({0, os.geteuid()})
        self._listener: socket.socket | None = None
        self._inode: tuple[int, int] | None = None
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._pf_locks: dict[str, threading.Lock] = {}
        self._running: set[threading.Thread] = set()

    # -- the socket ------------------------------------------------------------------------

    def start(self) -> None:
        """Listen (replacing the socket of an agent that served *path* before).

        Raises:
            OSError: *path* is something else than a socket, or cannot be made.
        """
        parent = self.path.parent
        if not parent.exists():
            parent.mkdir(mode=0o700, parents=True)
        with contextlib.suppress(FileNotFoundError):
            if not stat.S_ISSOCK(os.lstat(self.path).st_mode):
                raise FileExistsError(f"{self.path} exists and is not a socket")
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM | socket.SOCK_CLOEXEC)
        try:
            with tempfile.TemporaryDirectory(dir=parent, prefix=".sriovlib-") as private:
                staged = os.path.join(private, "s")
                listener.bind(staged)
                os.chmod(staged, 0o600)
                listener.listen(128)
                os.rename(staged, self.path)
            info = os.lstat(self.path)
        except BaseException:
            listener.close()
            raise
        self._inode = (info.st_dev, info.st_ino)
        self._listener = listener
        self._thread = threading.Thread(target=self._accept, name="sriovlib-cni", daemon=True)
        self._thread.start()
        log.info("CNI fast path", extra={"socket": str(self.path)})

    def stop(self, wait: float = 30.0) -> None:
        """Stop taking invocations; wait up to *wait* seconds for those running."""
        listener, self._listener = self._listener, None
        if listener is None:
            return
        if self._owns_path():
            with contextlib.suppress(FileNotFoundError):
                self.path.unlink()
        with contextlib.suppress(OSError):
            listener.shutdown(socket.SHUT_RDWR)  # wakes the accept
        listener.close()
        if self._thread is not None:
            self._thread.join(5)
        deadline = time.monotonic() + wait
        with self._lock:
            running = list(self._running)
        for thread in running:
            thread.join(max(0.0, deadline - time.monotonic()))

    def _owns_path(self) -> bool:
        try:
            info = os.lstat(self.path)
        except OSError:
            return False
        return (info.st_dev, info.st_ino) == self._inode

    def _accept(self) -> None:
        while (listener := self._listener) is not None:
            try:
                conn, _ = listener.accept()
            except OSError:
                if self._listener is None:
                    return
                time.sleep(0.05)  # EMFILE and the like: try again shortly
                continue
            thread = threading.Thread(target=self._serve, args=(conn,), daemon=True)
            with self._lock:
                self._running.add(thread)
            thread.start()

    # -- one invocation --------------------------------------------------------------------

    def _serve(self, conn: socket.socket) -> None:
        try:
            with conn:
                request = self._take(conn)
                if request is None:
                    return
                environ, stdin = request
                status, stdout, stderr = self.invoke(environ, stdin)
                try:
                    conn.sendall(fastpath.encode_reply(status, stdout, stderr))
                except OSError as e:
                    log.warning("CNI caller left before the reply", extra={"error": str(e)})
        finally:
            with self._lock:
                self._running.discard(threading.current_thread())

    def _take(self, conn: socket.socket) -> tuple[dict[str, str], bytes] | None:
        """The request, once accepted; None when it is not ours to run (nothing ran)."""
        pid, uid, _gid = _UCRED.unpack(
            conn.getsockopt(socket.SOL_SOCKET, socket.SO_PEERCRED, _UCRED.size)
        )
        if uid not in self.allowed_uids:
            log.warning("CNI caller refused: not root", extra={"pid": pid, "uid": uid})
            return None
        conn.settimeout(REQUEST_TIMEOUT)
        limit = len(fastpath.MAGIC) + 8 + fastpath.MAX_ENV + fastpath.MAX_STDIN + 1
        chunks: list[bytes] = []
        size = 0
        try:
            while chunk := conn.recv(1 << 16):
                chunks.append(chunk)
                size += len(chunk)
                if size > limit:
                    raise fastpath.FramingError(f"a request larger than {limit} bytes")
            request = fastpath.decode_request(b"".join(chunks))
            conn.sendall(fastpath.ACCEPTED)
        except (OSError, fastpath.FramingError) as e:
            log.warning("CNI request not taken", extra={"pid": pid, "error": str(e)})
            return None
        conn.settimeout(None)
        return request

    def invoke(self, environ: Mapping[str, str], stdin: bytes) -> tuple[int, str, str]:
        """Run one invocation here: its exit status, stdout and stderr."""
        command = environ.get("CNI_COMMAND", "")
        errors = io.StringIO()
        made: list[Context] = []

        def context(env: Mapping[str, str]) -> Context:
            made.append(self.context(env))
            return made[-1]

        started = time.monotonic()
        try:
            pf = self._pf_of(environ, stdin, context)
            with self._pf_lock(pf):
                status, stdout = run(
                    environ, lambda: stdin, made[0] if made else context, errors, shared=True
                )
        finally:
            for ctx in made:
                ctx.close()
        if self.metrics is not None:
            self.metrics.cni.labels(command).observe(time.monotonic() - started)
            if status != 0:
                self.metrics.cni_errors.labels(command, _code(stdout)).inc()
        return status, stdout, errors.getvalue()

    def _pf_of(
        self,
        environ: Mapping[str, str],
        stdin: bytes,
        context: Callable[[Mapping[str, str]], Context],
    ) -> str | None:
        """The PF of the VF *stdin*'s ``deviceID`` names, read through the invocation's
        own context; None when there is none (the invocation reports what is wrong)."""
        if environ.get("CNI_COMMAND") not in ("ADD", "DEL", "CHECK"):
            return None
        try:
            device = json.loads(stdin).get("deviceID")
        except (ValueError, AttributeError, RecursionError):
            return None
        if not isinstance(device, str):
            return None
        try:
            return str(context(environ).host.vf(device).pf_address)
        except Exception as e:  # no such VF, a bad environment: reported by the invocation
            log.debug("no PF for deviceID", extra={"device": device, "error": str(e)})
            return None

    @contextlib.contextmanager
    def _pf_lock(self, pf: str | None) -> Iterator[None]:
        if pf is None:
            yield
            return
        with self._lock:
            lock = self._pf_locks.setdefault(pf, threading.Lock())
        with lock:
            yield


def _code(stdout: str) -> str:
    try:
        return str(json.loads(stdout)["code"])
    except (ValueError, KeyError, TypeError):
        return "unknown"
