"""Guest-side agent of :mod:`sriovlib.testing.vm` (runs INSIDE the QEMU guest).

This file is executed by path with the host's interpreter (``python -S -P -u
_vm_agent.py CONFIG``: no site, so it starts fast) after the guest has chrooted into the
host root file system. It must only use the standard library: it does not import
sriovlib, so a half-written package cannot break the VM. Its Python worker runs with the
full site (the host's virtualenv).

What it does:

1. applies the environment and working directory the host sent in ``CONFIG`` (JSON);
2. opens the virtio-serial port named ``CONFIG["port_name"]`` (the host end is a Unix
   socket of QEMU's ``-chardev socket``);
3. waits for stage2's marker that ``virtio_console igb igbvf`` are loaded, finds the igb
   PF netdevs (``/sys/bus/pci/drivers/igb/*/net/*``, in PCI order), brings them up and
   waits for carrier; exports ``SRIOV_PFS`` (the PF names, space-separated);
4. starts the persistent Python worker (this same file with ``--worker``), so the first
   :meth:`SriovVM.python` call does not pay the whole interpreter start-up;
5. sends ``{"op": "hello", ...}`` and then serves requests one at a time.

Wire format in both directions: a 4-byte big-endian length, then that many bytes of
UTF-8 JSON (an object). Requests carry ``id`` and ``op`` (``ping``, ``run``,
``python``); each reply echoes ``id``.  The same framing is used between the agent and
its Python worker over a pair of pipes.

When the host end goes away (EOF on the port: the host process died or closed the VM),
the agent powers the VM off, so an orphaned QEMU does not linger.
"""

from __future__ import annotations

import contextlib
import json
import linecache
import os
import select
import signal
import struct
import subprocess
import sys
import time
import traceback
from pathlib import Path
from typing import Any

HEADER = struct.Struct(">I")
MAX_MESSAGE = 256 * 1024 * 1024
ISA_DEBUG_EXIT_PORT = 0xF4


class ProtocolEOF(Exception):
    """The peer closed the channel."""


# ---------------------------------------------------------------------------------------
# framing


def read_exact(fd: int, size: int) -> bytes:
    """Read exactly ``size`` bytes from ``fd`` (blocking); raise ProtocolEOF on EOF."""
    chunks: list[bytes] = []
    while size:
        chunk = os.read(fd, min(size, 1 << 20))
        if not chunk:
            raise ProtocolEOF
        chunks.append(chunk)
        size -= len(chunk)
    return b"".join(chunks)


def read_message(fd: int) -> dict[str, Any]:
    """Read one length-prefixed JSON object from ``fd``."""
    (size,) = HEADER.unpack(read_exact(fd, HEADER.size))
    if size > MAX_MESSAGE:
        raise ValueError(f"message of {size} bytes is too large")
    message = json.loads(read_exact(fd, size).decode("utf-8"))
    if not isinstance(message, dict):
        raise ValueError("message is not a JSON object")
    return message


def encode_message(message: dict[str, Any]) -> bytes:
    """Frame ``message`` as length + UTF-8 JSON."""
    body = json.dumps(message).encode("utf-8")
    return HEADER.pack(len(body)) + body


def write_all(fd: int, data: bytes, deadline: float | None = None) -> bool:
    """Write ``data`` to ``fd``; with a deadline the fd must be non-blocking.

    Returns False when the deadline passed before everything was written.
    """
    view = memoryview(data)
    while view:
        if deadline is not None:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return False
            _, writable, _ = select.select([], [fd], [], remaining)
            if not writable:
                continue
        try:
            written = os.write(fd, view)
        except BlockingIOError:
            continue
        view = view[written:]
    return True


# ---------------------------------------------------------------------------------------
# the persistent Python worker


def worker_main(rfd: int, wfd: int) -> None:
    """Serve ``{"code": ...}`` requests on ``rfd``; keep globals between requests."""
    namespace: dict[str, Any] = {"__name__": "__sriov_vm__", "__builtins__": __builtins__}
    counter = 0
    while True:
        try:
            request = read_message(rfd)
        except ProtocolEOF:
            return
        counter += 1
        namespace.pop("result", None)
        reply: dict[str, Any]
        try:
            source = request["code"]
            filename = f"<vm.python #{counter}>"
            # let tracebacks show the snippet's source lines
            linecache.cache[filename] = (len(source), None, source.splitlines(True), filename)
            exec(compile(source, filename, "exec"), namespace)  # noqa: S102 - the point
        except BaseException as exc:
            tb = exc.__traceback__
            # drop this function's own frame so the traceback starts at the snippet's code
            # (a SyntaxError from compile() has no deeper frame: it then shows no frame)
            tb = tb.tb_next if tb is not None else None
            text = "".join(traceback.format_exception(type(exc), exc, tb))
            reply = {
                "ok": False,
                "exc_type": type(exc).__qualname__,
                "message": str(exc),
                "traceback": text,
            }
        else:
            reply = {"ok": True, "result": namespace.get("result")}
        try:
            body = encode_message(reply)
        except (TypeError, ValueError) as exc:
            reply = {
                "ok": False,
                "exc_type": type(exc).__qualname__,
                "message": f"`result` cannot be sent back as JSON: {exc}",
                "traceback": "",
            }
            body = encode_message(reply)
        sys.stdout.flush()
        sys.stderr.flush()
        write_all(wfd, body)


class Worker:
    """The agent's handle on the persistent Python worker process."""

    def __init__(self) -> None:
        self.proc: subprocess.Popen[bytes] | None = None
        self.to_worker = -1
        self.from_worker = -1

    def start(self) -> None:
        """Start a fresh worker (its globals are empty)."""
        req_r, req_w = os.pipe()
        rep_r, rep_w = os.pipe()
        self.proc = subprocess.Popen(
            [
                sys.executable,
                "-P",
                "-u",
                str(Path(__file__).resolve()),
                "--worker",
                str(req_r),
                str(rep_w),
            ],
            pass_fds=(req_r, rep_w),
            stdin=subprocess.DEVNULL,
        )
        os.close(req_r)
        os.close(rep_w)
        os.set_blocking(req_w, False)
        self.to_worker, self.from_worker = req_w, rep_r

    def stop(self) -> int | None:
        """Kill the worker; return its exit status."""
        if self.proc is None:
            return None
        for fd in (self.to_worker, self.from_worker):
            with contextlib.suppress(OSError):
                os.close(fd)
        self.to_worker = self.from_worker = -1
        if self.proc.poll() is None:
            self.proc.kill()
        status = self.proc.wait()
        self.proc = None
        return status

    def execute(self, code: str, timeout: float) -> dict[str, Any]:
        """Run ``code`` in the worker; return the reply for the host."""
        if self.proc is None or self.proc.poll() is not None:
            if self.proc is not None:
                self.stop()
            self.start()
        deadline = time.monotonic() + timeout
        if not write_all(self.to_worker, encode_message({"code": code}), deadline):
            return self._timed_out(timeout)
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                return self._timed_out(timeout)
            readable, _, _ = select.select([self.from_worker], [], [], remaining)
            if readable:
                break
        try:
            return read_message(self.from_worker)
        except ProtocolEOF:
            status = self.stop()
            return {
                "ok": False,
                "exc_type": "WorkerDied",
                "message": f"the guest Python worker died (exit status {status}); "
                "its globals are lost",
                "traceback": "",
            }

    def _timed_out(self, timeout: float) -> dict[str, Any]:
        self.stop()
        return {
            "ok": False,
            "timeout": True,
            "message": f"guest Python code did not finish within {timeout:g} s; the worker "
            "was killed and its globals are lost",
        }


# ---------------------------------------------------------------------------------------
# guest set-up


def find_port(name: str, timeout: float) -> str:
    """Return the /dev node of the virtio-serial port called ``name``."""
    deadline = time.monotonic() + timeout
    while True:
        for name_file in Path("/sys/class/virtio-ports").glob("*/name"):
            try:
                if name_file.read_text().strip() == name:
                    return f"/dev/{name_file.parent.name}"
            except OSError:
                continue
        if time.monotonic() > deadline:
            raise RuntimeError(f"virtio-serial port {name!r} not found (virtio_console loaded?)")
        time.sleep(0.02)


def wait_for_file(path: str, timeout: float) -> None:
    """Wait until ``path`` exists (stage2's marker that the drivers are loaded)."""
    deadline = time.monotonic() + timeout
    while not Path(path).exists():
        if time.monotonic() > deadline:
            raise RuntimeError(f"{path} did not appear within {timeout:g} s (modprobe hung?)")
        time.sleep(0.02)


def pci_sort_key(netdev: Path) -> str:
    """Sort PF netdevs by their PCI address (``.../drivers/igb/<bdf>/net/<name>``)."""
    return netdev.parent.parent.name


def discover_pfs(count: int, timeout: float) -> list[str]:
    """Wait for ``count`` igb netdevs; return their names in PCI order."""
    deadline = time.monotonic() + timeout
    while True:
        found = sorted(Path("/sys/bus/pci/drivers/igb").glob("*/net/*"), key=pci_sort_key)
        if len(found) >= count or time.monotonic() > deadline:
            return [p.name for p in found]
        time.sleep(0.02)


def read_carrier(netdev: str) -> bool:
    """True when the netdev reports carrier."""
    try:
        return Path(f"/sys/class/net/{netdev}/carrier").read_text().strip() == "1"
    except OSError:
        return False


def bring_up(pfs: list[str], timeout: float) -> list[str]:
    """``ip link set <pf> up`` and wait for carrier; return the PFs without carrier."""
    for pf in pfs:
        subprocess.run(["ip", "link", "set", pf, "up"], check=True)
    deadline = time.monotonic() + timeout
    waiting = list(pfs)
    while waiting and time.monotonic() < deadline:
        waiting = [pf for pf in waiting if not read_carrier(pf)]
        if waiting:
            time.sleep(0.02)
    return waiting


def power_off() -> None:
    """Make QEMU exit now (isa-debug-exit), falling back to a sysrq power-off."""
    try:
        with open("/dev/port", "r+b", buffering=0) as port:
            port.seek(ISA_DEBUG_EXIT_PORT)
            port.write(b"\x01")
    except OSError:
        pass
    try:
        with open("/proc/sysrq-trigger", "w") as sysrq:
            sysrq.write("o")
    except OSError:
        pass
    os._exit(0)


# ---------------------------------------------------------------------------------------
# request handlers


def handle_run(request: dict[str, Any]) -> dict[str, Any]:
    """Run ``sh -c cmd`` and collect its status and output."""
    timeout = float(request.get("timeout", 120.0))
    proc = subprocess.Popen(
        ["sh", "-c", request["cmd"]],
        stdin=subprocess.DEVNULL,
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        start_new_session=True,
    )
    timed_out = False
    try:
        out, err = proc.communicate(timeout=timeout)
    except subprocess.TimeoutExpired:
        timed_out = True
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        try:
            out, err = proc.communicate(timeout=5)
        except subprocess.TimeoutExpired:
            # something outside the process group still holds the pipes open
            proc.kill()
            out, err = b"", b""
    return {
        "returncode": proc.wait(),
        "stdout": out.decode("utf-8", "replace"),
        "stderr": err.decode("utf-8", "replace"),
        "timeout": timed_out,
    }


def serve(port: int, worker: Worker) -> None:
    """Answer requests on the port until the host goes away."""
    while True:
        try:
            request = read_message(port)
        except ProtocolEOF:
            return
        op = request.get("op")
        reply: dict[str, Any]
        try:
            if op == "ping":
                reply = {"ok": True, "uptime": uptime()}
            elif op == "run":
                reply = handle_run(request)
            elif op == "python":
                reply = worker.execute(request["code"], float(request.get("timeout", 300.0)))
            else:
                reply = {"ok": False, "agent_error": f"unknown op {op!r}"}
        except Exception:
            reply = {"ok": False, "agent_error": traceback.format_exc()}
        reply["id"] = request.get("id")
        write_all(port, encode_message(reply))


def uptime() -> float:
    """Guest uptime in seconds."""
    return float(Path("/proc/uptime").read_text().split()[0])


def log(message: str) -> None:
    """A timestamped line on the guest console."""
    print(f"[{uptime():8.3f}] sriov-vm agent: {message}", flush=True)


def agent_main(config_path: str) -> None:
    """Set up the guest, say hello to the host and serve requests."""
    config = json.loads(Path(config_path).read_text())
    os.environ.clear()
    os.environ.update(config["env"])
    try:
        os.chdir(config["cwd"])
    except OSError:
        os.chdir("/")
    log(f"agent started (python {sys.version.split()[0]})")
    port = os.open(find_port(config["port_name"], 30.0), os.O_RDWR)
    hello: dict[str, Any] = {"op": "hello", "kernel": os.uname().release}
    try:
        wait_for_file(config["modules_marker"], float(config["pf_timeout"]))
        pfs = discover_pfs(int(config["pfs"]), float(config["pf_timeout"]))
        if len(pfs) < int(config["pfs"]):
            raise RuntimeError(f"expected {config['pfs']} igb PF netdevs, found {pfs}")
        log(f"PFs {pfs} found; bringing them up")
        no_carrier = bring_up(pfs, float(config["carrier_timeout"]))
        if no_carrier:
            raise RuntimeError(f"no carrier on {no_carrier} after {config['carrier_timeout']} s")
        os.environ["SRIOV_PFS"] = " ".join(pfs)
        hello["pfs"] = pfs
    except Exception as exc:
        traceback.print_exc()
        hello["error"] = f"{type(exc).__name__}: {exc}"
    # started once the environment is final (SRIOV_PFS); it loads while the host reads
    # the hello, so the first python() request finds it (nearly) ready
    worker = Worker()
    worker.start()
    hello["uptime"] = uptime()
    log(f"ready, PFs {hello.get('pfs')}")
    write_all(port, encode_message(hello))
    serve(port, worker)
    log("host closed the channel; powering off")
    worker.stop()


def main(argv: list[str]) -> None:
    """Entry point: ``_vm_agent.py CONFIG`` or ``_vm_agent.py --worker RFD WFD``."""
    if len(argv) == 4 and argv[1] == "--worker":
        worker_main(int(argv[2]), int(argv[3]))
        return
    try:
        agent_main(argv[1])
    except BaseException:
        traceback.print_exc()
        sys.stdout.flush()
    power_off()


if __name__ == "__main__":
    main(sys.argv)
