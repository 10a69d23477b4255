"""The CNI fast path as the tests run it: the agent's server, with test backends.

``python -m sriovlib.testing.cni_agent SOCKET`` serves the fast path on *SOCKET* with
the shipped server (:class:`sriovlib.agent.cniserver.CniServer`), each invocation's
context made by :func:`sriovlib.testing.cni_binary.context` from the environment the
binary forwarded: so ``SRIOVLIB_TEST_NETLINK`` picks the backend, and
``SRIOVLIB_TEST_KILL_AT`` SIGKILLs this process — the agent — at that step, which is how
the tests kill an agent in the middle of an ADD. It serves until SIGTERM or SIGINT and
prints ``ready`` on stdout once it listens.

:class:`FastPathAgent` runs it for a test; :func:`start_in_guest` runs the shipped
``sriovlib agent`` in the igb VM's guest instead, on the real kernel.
"""

from __future__ import annotations

import json
import os
import shlex
import signal
import subprocess
import sys
import threading
from collections.abc import Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any

from sriovlib.agent.cniserver import CniServer
from sriovlib.cni.fastpath import SOCKET_ENV
from sriovlib.testing import cni_binary

if TYPE_CHECKING:
    from sriovlib.testing.vm import SriovVM

__all__ = ["FastPathAgent", "main", "start_in_guest"]


class FastPathAgent:
    """This module's server as a process listening on *path* (start it with
    :meth:`start`, or use it as a context manager)."""

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self.process: subprocess.Popen[bytes] | None = None
        #: The process IDs it has had (one per :meth:`start`).
        self.pids: list[int] = []

    def environ(self) -> dict[str, str]:
        """What points a binary at this agent."""
        return {SOCKET_ENV: str(self.path)}

    def start(self) -> None:
        """Start it; return once it listens."""
        process = subprocess.Popen(
            [sys.executable, "-m", "sriovlib.testing.cni_agent", str(self.path)],
            stdout=subprocess.PIPE,
        )
        self.process = process
        self.pids.append(process.pid)
        line = process.stdout.readline() if process.stdout is not None else b""
        if line.strip() != b"ready":
            process.kill()
            raise RuntimeError(f"the test agent did not start (it said {line!r})")

    def alive(self) -> bool:
        return self.process is not None and self.process.poll() is None

    def wait_dead(self, timeout: float = 10.0) -> int:
        """The exit status once it has died (of a kill point, say)."""
        if self.process is None:
            raise RuntimeError("the test agent was not started")
        return self.process.wait(timeout)

    def stop(self) -> None:
        process = self.process
        if process is not None and process.poll() is None:
            process.terminate()
            try:
                process.wait(10)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()

    def __enter__(self) -> FastPathAgent:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()


def main(argv: list[str] | None = None) -> int:
    """Serve until SIGTERM/SIGINT."""
    (path,) = argv if argv is not None else sys.argv[1:]
    server = CniServer(path, cni_binary.context)
    done = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: done.set())
    server.start()
    print("ready", flush=True)
    done.wait()
    server.stop()
    return 0


if __name__ == "__main__":
    sys.exit(main())


def start_in_guest(vm: SriovVM, work: str, config: Mapping[str, Any]) -> int:
    """Start the shipped ``sriovlib agent`` in *vm*'s guest (the real kernel there),
    serving the fast path on ``<work>/agent.sock`` with its state in ``<work>/state``
    and its JSON log in ``<work>/agent.log``; return its process ID once the socket is
    there. No kubelet is needed: the agent serves its pools once one comes."""
    args = [
        vm.python_executable, "-m", "sriovlib.agent",
        "--config", f"{work}/agent-config.json",
        "--device-plugin-dir", f"{work}/dp",
        "--state-dir", f"{work}/state",
        "--device-info-dir", f"{work}/devinfo",
        "--cni-socket", f"{work}/agent.sock",
        "--metrics-address", "off",
        "--log-format", "json",
    ]  # fmt: skip
    command = " ".join(shlex.quote(a) for a in args)
    script = (
        f"mkdir -p {work} && echo {shlex.quote(json.dumps(config))} > {work}/agent-config.json"
        f" && rm -f {work}/agent.sock"
        f" && (setsid {command} > {work}/agent.log 2>&1 < /dev/null & echo $! > {work}/agent.pid)"
        f" && for i in $(seq 1200); do [ -S {work}/agent.sock ] && break;"
        f" [ -d /proc/$(cat {work}/agent.pid) ] || break; sleep 0.1; done"
        f" && [ -S {work}/agent.sock ] && cat {work}/agent.pid"
    )
    done = vm.run(script, timeout=180)
    if done.returncode != 0:
        log = vm.run(f"tail -5 {work}/agent.log", timeout=30).stdout
        raise RuntimeError(f"the agent did not start in the guest: {done.stderr} {log}")
    return int(done.stdout.split()[-1])
