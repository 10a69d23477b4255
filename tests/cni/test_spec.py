"""The binary driven by hand, as a runtime would: environment, stdin, stdout, status.

The shipped binary itself (the console script and ``python -m sriovlib.cni``), with no
test backend: VERSION, STATUS, GC and spec version 1.1.0 on a fake node, where cnitool
drives the tests' entry point on veth-backed VFs.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sriovlib.agent.cniserver import CniServer
from sriovlib.cni.fastpath import SOCKET_ENV
from sriovlib.testing import FakeSysfs, add_nic_model

SCRIPT = Path(sys.executable).parent / "sriov"


def binaries() -> list[list[str]]:
    found = [[sys.executable, "-m", "sriovlib.cni"]]
    if SCRIPT.exists():
        found.append([str(SCRIPT)])
    return found


@pytest.fixture(params=binaries(), ids=lambda argv: Path(argv[-1]).name)
def binary(request: pytest.FixtureRequest) -> list[str]:
    argv: list[str] = request.param
    return argv


@pytest.fixture(params=["in-process", "fast-path"])
def node_env(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[dict[str, str]]:
    """A fake node's environment; the binary runs in-process, or hands the invocation to
    the shipped fast-path server (its default context, the shipped one) in this process."""
    fs = FakeSysfs(tmp_path / "root")
    add_nic_model(fs, "mlx5", bus=3, num_vfs=2, ports=1)
    env = {
        "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
        "SRIOVLIB_SYSFS_ROOT": str(tmp_path / "root"),
        "SRIOVLIB_STATE_DIR": str(tmp_path / "state"),
        SOCKET_ENV: os.environ[SOCKET_ENV],  # nobody's: see tests/conftest.py
    }
    if request.param == "in-process":
        yield env
        return
    server = CniServer(tmp_path / "agent" / "agent.sock")
    server.start()
    try:
        yield {**env, SOCKET_ENV: str(server.path)}
    finally:
        server.stop()


def call(
    binary: list[str], env: dict[str, str], stdin: bytes | dict[str, Any] | None
) -> tuple[int, str, str]:
    data = json.dumps(stdin).encode() if isinstance(stdin, dict) else stdin
    proc = subprocess.run(
        binary,
        input=data if data is not None else b"",
        capture_output=True,
        env=env,
        timeout=60,
        check=False,
    )
    return proc.returncode, proc.stdout.decode(), proc.stderr.decode()


def conf(version: str = "1.1.0", **fields: Any) -> dict[str, Any]:
    return {"cniVersion": version, "name": "spec-net", "type": "sriov", **fields}


class TestByHand:
    def test_version(self, binary: list[str], node_env: dict[str, str]) -> None:
        """VERSION answers the supported list, echoing the caller's version."""
        env = {**node_env, "CNI_COMMAND": "VERSION"}
        status, out, err = call(binary, env, {"cniVersion": "1.0.0"})
        assert (0, "") == (status, err)
        assert {
            "cniVersion": "1.0.0",
            "supportedVersions": ["0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0"],
        } == json.loads(out)

    def test_version_with_open_stdin(self, binary: list[str], node_env: dict[str, str]) -> None:
        """VERSION does not wait for a stdin nobody writes to."""
        env = {**node_env, "CNI_COMMAND": "VERSION"}
        proc = subprocess.Popen(binary, stdin=subprocess.PIPE, stdout=subprocess.PIPE, env=env)
        assert proc.stdin is not None
        assert proc.stdout is not None
        try:
            out = proc.stdout.read()  # ends when the plugin exits, stdin still open
        finally:
            proc.stdin.close()
            proc.wait(timeout=20)
        assert "1.1.0" == json.loads(out)["cniVersion"]

    def test_status_ready(self, binary: list[str], node_env: dict[str, str]) -> None:
        """STATUS (1.1.0) on a usable node: status 0, nothing on stdout."""
        env = {**node_env, "CNI_COMMAND": "STATUS"}
        status, out, err = call(binary, env, conf())
        assert (0, "") == (status, out), err

    def test_status_not_ready(
        self, binary: list[str], node_env: dict[str, str], tmp_path: Path
    ) -> None:
        """STATUS without a sysfs tree: code 50 on stdout, status 1."""
        env = {**node_env, "CNI_COMMAND": "STATUS", "SRIOVLIB_SYSFS_ROOT": str(tmp_path / "no")}
        status, out, _ = call(binary, env, conf())
        assert (1, 50) == (status, json.loads(out)["code"])

    def test_status_before_110(self, binary: list[str], node_env: dict[str, str]) -> None:
        """STATUS with a 1.0.0 configuration: code 1."""
        env = {**node_env, "CNI_COMMAND": "STATUS"}
        status, out, _ = call(binary, env, conf("1.0.0"))
        assert (1, 1) == (status, json.loads(out)["code"])

    def test_gc_nothing_to_do(self, binary: list[str], node_env: dict[str, str]) -> None:
        """GC with only CNI_COMMAND and CNI_PATH and an empty store succeeds silently."""
        env = {**node_env, "CNI_COMMAND": "GC", "CNI_PATH": "/opt/cni/bin"}
        body = conf(**{"cni.dev/valid-attachments": [{"containerID": "a", "ifname": "net1"}]})
        status, out, err = call(binary, env, body)
        assert (0, "") == (status, out), err

    def test_gc_needs_path(self, binary: list[str], node_env: dict[str, str]) -> None:
        """GC without CNI_PATH: code 4 naming it."""
        env = {**node_env, "CNI_COMMAND": "GC"}
        status, out, _ = call(binary, env, conf())
        assert (1, 4) == (status, json.loads(out)["code"])
        assert "CNI_PATH" in json.loads(out)["msg"]

    def test_errors_are_json_without_traceback(
        self, binary: list[str], node_env: dict[str, str]
    ) -> None:
        """A decode failure: one JSON error on stdout, a one-line log on stderr."""
        env = {
            **node_env,
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "c",
            "CNI_NETNS": "/x",
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt",
        }
        status, out, err = call(binary, env, b"{not json")
        assert (1, 6) == (status, json.loads(out)["code"])
        assert "Traceback" not in err
        assert 1 == len(err.strip().splitlines())

    def test_add_110_missing_vf(
        self, binary: list[str], node_env: dict[str, str], tmp_path: Path
    ) -> None:
        """ADD with a 1.1.0 configuration naming a VF that does not exist: code 101."""
        netns = tmp_path / "netns"
        netns.write_text("")
        env = {
            **node_env,
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "c",
            "CNI_NETNS": str(netns),
            "CNI_IFNAME": "eth0",
            "CNI_PATH": "/opt",
        }
        status, out, err = call(binary, env, conf(deviceID="0000:77:00.1"))
        assert (1, 101, "1.1.0") == (
            status,
            json.loads(out)["code"],
            json.loads(out)["cniVersion"],
        ), err


def test_version_imports_stay_lean() -> None:
    """VERSION loads neither attrs, pyroute2 nor rich (the reason it is fast)."""
    code = (
        "import sys\n"
        "from sriovlib.cni.__main__ import main\n"
        "main()\n"
        "heavy = sorted(m for m in sys.modules if m.split('.')[0] in "
        "('attr', 'attrs', 'pyroute2', 'rich', 'typing', 'sriovlib.host'))\n"
        "print(heavy, file=sys.stderr)\n"
    )
    env = {**os.environ, "CNI_COMMAND": "VERSION"}
    proc = subprocess.run(
        [sys.executable, "-c", code],
        capture_output=True,
        text=True,
        env=env,
        check=True,
        stdin=subprocess.DEVNULL,
    )
    assert "[]" == proc.stderr.strip()
