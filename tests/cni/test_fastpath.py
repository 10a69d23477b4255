"""The CNI fast path: the binary's client, the agent's server, and what lies between.

The command behaviour itself is tested in both modes by every test on the ``node``
fixture (``[in-process]`` and ``[fast-path]``); these tests cover what only the fast
path has: the framing, who may connect, the socket file, falling back, an agent that
dies, per-PF serialisation, per-invocation logs, the metrics.
"""

from __future__ import annotations

import json
import os
import socket
import stat
import subprocess
import sys
import threading
import time
from pathlib import Path

import pytest

from sriovlib.agent.cniserver import CniServer
from sriovlib.agent.metrics import Metrics
from sriovlib.cni import fastpath
from sriovlib.cni.commands import Context
from sriovlib.testing import FakeSysfs, add_nic_model
from sriovlib.testing.cni import FakeIpam, fake_context
from sriovlib.testing.fakenetlink import FakeNetlink

from .conftest import Node


def env(node: Node, command: str = "ADD", **extra: str) -> dict[str, str]:
    assert node.agent is not None
    return {**node.env(command), fastpath.SOCKET_ENV: str(node.agent.path), **extra}


#: Runs a test on the ``node`` fixture in its fast-path mode only.
FAST_PATH = pytest.mark.parametrize("node", ["fast-path"], indirect=True)


# -- framing -------------------------------------------------------------------------------


def test_request_and_reply_round_trip_any_bytes() -> None:
    environ = {"CNI_COMMAND": "ADD", "EMPTY": "", "WITH=EQUALS": "a=b", "UTF": "é"}
    environ.pop("WITH=EQUALS")  # no environment key holds '='
    stdin = bytes(range(256)) + b"\xef\xbb\xbf{}"
    assert (environ, stdin) == fastpath.decode_request(fastpath.encode_request(environ, stdin))
    reply = fastpath.encode_reply(1, '{"code": 7}', "sriov: line\n\udcff")
    assert (1, '{"code": 7}', "sriov: line\n\udcff") == fastpath.decode_reply(reply)


@pytest.mark.parametrize(
    "data",
    [
        b"",
        b"SRIOVLIB-CNI/0\n" + bytes(8),  # another version
        fastpath.MAGIC + b"\x00\x00",  # cut in a length
        fastpath.MAGIC + (10).to_bytes(4, "big") + b"A=1",  # cut in a block
        fastpath.MAGIC + (3).to_bytes(4, "big") + b"A=1" + bytes(4) + b"x",  # trailing bytes
        fastpath.MAGIC + (2).to_bytes(4, "big") + b"=1" + bytes(4),  # no key
        fastpath.MAGIC + (fastpath.MAX_ENV + 1).to_bytes(4, "big"),  # too large
    ],
)
def test_malformed_requests_are_refused(data: bytes) -> None:
    with pytest.raises(fastpath.FramingError):
        fastpath.decode_request(data)


# -- the socket ----------------------------------------------------------------------------


def test_the_socket_is_0600_and_a_new_agent_takes_the_path_over(tmp_path: Path) -> None:
    path = tmp_path / "run" / "agent.sock"
    first = CniServer(path)
    first.start()
    try:
        assert stat.S_IMODE(os.lstat(path).st_mode) == 0o600
        assert stat.S_IMODE(os.lstat(path.parent).st_mode) == 0o700  # made by the server
        second = CniServer(path)
        second.start()  # a rolling upgrade: the new agent's socket replaces the old one
        try:
            first.stop()  # the old agent leaves the new one's socket alone
            assert path.exists()
            assert fastpath.forward({"CNI_COMMAND": "VERSION", **_at(path)}, b"") is not None
        finally:
            second.stop()
        assert not path.exists()
        assert [] == [p.name for p in path.parent.iterdir()]  # no staging left behind
    finally:
        first.stop()


def test_a_path_that_is_no_socket_is_refused_and_kept(tmp_path: Path) -> None:
    path = tmp_path / "agent.sock"
    path.write_text("a file of someone's")
    with pytest.raises(FileExistsError, match="not a socket"):
        CniServer(path).start()
    assert path.read_text() == "a file of someone's"


def _at(path: Path) -> dict[str, str]:
    return {fastpath.SOCKET_ENV: str(path)}


def test_without_an_agent_the_binary_runs_in_process(tmp_path: Path) -> None:
    """No socket, a stale socket nobody listens on: forward declines, and the binary's
    answer is the in-process one."""
    stale = tmp_path / "stale.sock"
    with socket.socket(socket.AF_UNIX) as gone:
        gone.bind(str(stale))  # bound, never listening: connections are refused
    for path in (tmp_path / "missing.sock", stale):
        assert fastpath.forward({"CNI_COMMAND": "VERSION", **_at(path)}, b"") is None
        done = _binary({"CNI_COMMAND": "VERSION", **_at(path)}, b"")
        assert 0 == done.returncode, done.stderr
        assert "1.1.0" in json.loads(done.stdout)["supportedVersions"]


def _binary(environ: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "sriovlib.cni"],
        input=stdin,
        env={"PATH": os.environ.get("PATH", ""), **environ},
        capture_output=True,
        timeout=60,
        check=False,
    )


@FAST_PATH
def test_a_caller_of_another_uid_is_not_served(node: Node) -> None:
    """A caller whose peer credentials are not allowed is closed on before anything runs
    (its binary then runs in-process, as itself). The server here allows one other uid
    only, so this root caller stands for someone else."""
    assert node.agent is not None
    node.agent.allowed_uids = frozenset({os.geteuid() + 4242})
    conf = json.dumps(node.conf(0)).encode()
    assert fastpath.forward(env(node), conf) is None
    assert [] == list(node.ctx.service.store.records())  # nothing was attached


@FAST_PATH
def test_a_request_that_is_not_ours_is_declined_and_the_server_goes_on(
    node: Node,
) -> None:
    assert node.agent is not None
    with socket.socket(socket.AF_UNIX) as raw:
        raw.connect(str(node.agent.path))
        raw.sendall(b"GET / HTTP/1.0\r\n\r\n")
        raw.shutdown(socket.SHUT_WR)
        assert b"" == raw.recv(16)  # closed, nothing accepted
    status, out = node.invoke("ADD", node.conf(0))
    assert 0 == status, out


# -- an agent that goes away -----------------------------------------------------------------


def _fake_agent(path: Path, answer: bytes) -> threading.Thread:
    """A listener that reads a request, sends *answer* and hangs up."""
    listener = socket.socket(socket.AF_UNIX)
    listener.bind(str(path))
    listener.listen(1)

    def serve() -> None:
        with listener:
            conn, _ = listener.accept()
            with conn:
                while conn.recv(1 << 16):
                    pass
                conn.sendall(answer)

    thread = threading.Thread(target=serve, daemon=True)
    thread.start()
    return thread


def test_an_agent_that_dies_after_taking_the_request_is_code_11(tmp_path: Path) -> None:
    """The outcome is unknown: the binary must neither claim success nor run the
    operation a second time in-process."""
    path = tmp_path / "agent.sock"
    _fake_agent(path, fastpath.ACCEPTED + b"\x00\x00")  # a reply cut short
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "sriov", "deviceID": "0000:03:00.2"}
    done = _binary(
        {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "c",
            "CNI_NETNS": "/proc/self/ns/net",
            "CNI_IFNAME": "net1",
            "CNI_PATH": str(tmp_path),
            "SRIOVLIB_STATE_DIR": str(tmp_path / "state"),
            **_at(path),
        },
        json.dumps(conf).encode(),
    )
    assert 1 == done.returncode
    error = json.loads(done.stdout)
    assert (11, "1.0.0") == (error["code"], error["cniVersion"]), error
    assert "stopped during the operation" in error["msg"]
    assert b"code 11" in done.stderr
    assert not (tmp_path / "state").exists()  # nothing ran in-process


def test_an_agent_that_hangs_up_before_taking_it_leaves_it_to_the_binary(
    tmp_path: Path,
) -> None:
    path = tmp_path / "agent.sock"
    _fake_agent(path, b"")
    done = _binary({"CNI_COMMAND": "VERSION", **_at(path)}, b'{"cniVersion": "0.4.0"}')
    assert 0 == done.returncode, done.stderr
    assert "0.4.0" == json.loads(done.stdout)["cniVersion"]


# -- what the binary imports ----------------------------------------------------------------


@FAST_PATH
def test_the_fast_path_binary_imports_only_the_client(node: Node) -> None:
    """``sriov`` handing an ADD to the agent loads nothing of sriovlib but the client and
    nothing of the standard library beyond ``_socket`` and ``select``."""
    code = (
        "import sys\n"
        "before = set(sys.modules)\n"
        "from sriovlib.cni.__main__ import main\n"
        "status = main()\n"
        "print(sorted(set(sys.modules) - before), file=sys.stderr)\n"
        "sys.exit(status)\n"
    )
    done = subprocess.run(
        [sys.executable, "-c", code],
        input=json.dumps(node.conf(0)).encode(),
        env={**os.environ, **env(node)},
        capture_output=True,
        timeout=60,
        check=False,
    )
    assert 0 == done.returncode, done.stderr
    assert "net1" in json.loads(done.stdout)["interfaces"][0]["name"]
    loaded = done.stderr.decode().strip().splitlines()[-1]
    assert loaded == str(
        sorted(["_socket", "sriovlib", "sriovlib.cni", "sriovlib.cni.__main__",
                "sriovlib.cni.fastpath"])
    )  # fmt: skip


# -- serialisation, logs, metrics -------------------------------------------------------------


def _two_pf_context(
    tmp_path: Path, hold: float
) -> tuple[Context, FakeNetlink, list[str], dict[str, int]]:
    fs = FakeSysfs(tmp_path / "root")
    (first,) = add_nic_model(fs, "mlx5", bus=3, num_vfs=2, ports=1)
    (second,) = add_nic_model(fs, "mlx5", bus=4, num_vfs=2, ports=1, netdev_prefix="ens2f")
    devices = [str(pf.vf_address(i)) for pf in (first, second) for i in (0, 1)]
    kernel = FakeNetlink(fs)
    ctx = fake_context(kernel, tmp_path / "state", ipam=FakeIpam(), lock_timeout=5)
    inside: list[str] = []
    peak: dict[str, int] = {"same": 0, "any": 0}
    lock = threading.Lock()

    def checkpoint(step: str) -> None:
        if step != "locked":
            return
        device = threading.current_thread().name
        with lock:
            inside.append(device)
            same = sum(1 for d in inside if d[:10] == device[:10])  # one bus, one PF
            peak["same"] = max(peak["same"], same)
            peak["any"] = max(peak["any"], len(inside))
        time.sleep(hold)
        with lock:
            inside.remove(device)

    ctx.checkpoint = checkpoint
    return ctx, kernel, devices, peak


def test_invocations_on_one_pf_run_one_at_a_time_and_pfs_side_by_side(tmp_path: Path) -> None:
    ctx, kernel, devices, peak = _two_pf_context(tmp_path, hold=0.3)
    server = CniServer(tmp_path / "agent.sock", lambda _environ: ctx)
    server.start()
    pods = [kernel.add_netns(f"pod{i}") for i in range(4)]
    results: dict[str, int] = {}

    def add(i: int) -> None:
        threading.current_thread().name = devices[i]
        conf = {"cniVersion": "1.0.0", "name": "n", "type": "sriov", "deviceID": devices[i]}
        environ = {
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": f"c{i}",
            "CNI_NETNS": pods[i],
            "CNI_IFNAME": "net1",
            "CNI_PATH": "/opt/cni/bin",
        }
        status, out, err = server.invoke(environ, json.dumps(conf).encode())
        results[devices[i]] = status
        assert 0 == status, (out, err)

    try:
        threads = [threading.Thread(target=add, args=(i,)) for i in range(4)]
        for thread in threads:
            thread.start()
        for thread in threads:
            thread.join()
    finally:
        server.stop()
    assert dict.fromkeys(devices, 0) == results
    assert 1 == peak["same"]  # never two VFs of one PF at once
    assert 2 == peak["any"]  # but the two PFs at the same time


@FAST_PATH
def test_each_invocation_logs_to_its_own_file_and_the_logger_is_restored(
    node: Node,
) -> None:
    import logging

    root = logging.getLogger("sriovlib")
    before = root.level, root.propagate, list(root.handlers)
    logs = [node.tmp / f"log{i}" for i in range(3)]
    pods = [node.pod] + [node.kernel.add_netns(f"p{i}") for i in (1, 2)]
    outcomes: list[int] = []

    def add(i: int) -> None:
        conf = node.conf(i, logFile=str(logs[i]), logLevel="debug")
        data = json.dumps(conf).encode()
        environ = {**env(node, CNI_NETNS=pods[i]), "CNI_CONTAINERID": f"c{i}"}
        reply = fastpath.forward(environ, data)
        assert reply is not None
        outcomes.append(reply[0])

    threads = [threading.Thread(target=add, args=(i,)) for i in range(3)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    assert [0, 0, 0] == outcomes
    for i, log in enumerate(logs):
        lines = log.read_text().splitlines()
        assert any("ADD done" in line for line in lines), lines
        assert all(f" ADD c{i}/net1: " in line for line in lines), lines
    assert before == (root.level, root.propagate, list(root.handlers))


def test_errors_come_back_on_stderr_and_every_invocation_is_counted(tmp_path: Path) -> None:
    fs = FakeSysfs(tmp_path / "root")
    add_nic_model(fs, "mlx5", bus=3, num_vfs=2, ports=1)
    ctx = fake_context(FakeNetlink(fs), tmp_path / "state")
    metrics = Metrics(lambda: [], frozenset)
    server = CniServer(tmp_path / "agent.sock", lambda _environ: ctx, metrics=metrics)
    server.start()
    try:
        environ = {"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x",
                   "CNI_IFNAME": "net1", "CNI_PATH": "/opt", **_at(server.path)}  # fmt: skip
        bad = {"cniVersion": "1.0.0", "name": "n", "type": "sriov", "deviceID": "../../x"}
        reply = fastpath.forward(environ, json.dumps(bad).encode())
        version = fastpath.forward({"CNI_COMMAND": "VERSION", **_at(server.path)}, b"")
    finally:
        server.stop()
    assert reply is not None
    assert version is not None
    status, out, err = reply
    assert (1, 7) == (status, json.loads(out)["code"])
    assert "sriov: ADD failed (code 7)" in err
    text = metrics.registry.get_sample_value
    assert 1 == text("sriovlib_cni_seconds_count", {"command": "ADD"})
    assert 1 == text("sriovlib_cni_seconds_count", {"command": "VERSION"})
    assert 1 == text("sriovlib_cni_errors_total", {"command": "ADD", "code": "7"})
