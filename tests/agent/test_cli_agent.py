"""``sriovlib agent`` as a process: logs, SIGTERM, bad input; the committed stubs."""

from __future__ import annotations

import filecmp
import json
import os
import signal
import subprocess
import sys
from pathlib import Path

import pytest

from sriovlib.testing.kubelet import KubeletStandIn

ROOT = Path(__file__).resolve().parents[2]
AGENT = [sys.executable, "-m", "sriovlib.agent"]


def _config(tmp_path: Path, data: object) -> Path:
    path = tmp_path / "config.json"
    path.write_text(json.dumps(data))
    return path


def _args(tmp_path: Path, config: Path, *extra: str) -> list[str]:
    return [
        *AGENT,
        "--example", "mixed",
        "--config", str(config),
        "--device-plugin-dir", str(tmp_path / "dp"),
        "--state-dir", str(tmp_path / "state"),
        "--device-info-dir", str(tmp_path / "devinfo"),
        "--cni-socket", "off",
        *extra,
    ]  # fmt: skip


def _start(args: list[str]) -> subprocess.Popen[str]:
    """The agent as a process, its threads' stacks dumped on SIGABRT (see :func:`_stop`)."""
    env = {**os.environ, "PYTHONFAULTHANDLER": "1"}
    return subprocess.Popen(args, stderr=subprocess.PIPE, text=True, env=env)


def _stop(agent: subprocess.Popen[str], timeout: float = 30) -> str:
    """SIGTERM, then the agent's standard error once it has exited. One that has not
    within *timeout* fails the test with every thread's stack (its stop is bounded)."""
    agent.send_signal(signal.SIGTERM)
    try:
        return agent.communicate(timeout=timeout)[1]
    except subprocess.TimeoutExpired:
        agent.send_signal(signal.SIGABRT)
        stderr = agent.communicate(timeout=10)[1]
        pytest.fail(
            f"no exit {timeout} s after SIGTERM; the agent's log and threads:\n{stderr[-8000:]}"
        )


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)


def test_serves_logs_json_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = _config(
        tmp_path, {"resourceList": [{"resourceName": "net", "selectors": {"drivers": ["iavf"]}}]}
    )
    with KubeletStandIn(tmp_path / "dp") as kubelet:
        agent = _start(
            _args(tmp_path, config, "--log-format", "json", "--metrics-address", "127.0.0.1:0")
        )
        try:
            plugin = kubelet.wait_plugin("intel.com/net", timeout=30)
            assert len(plugin.wait_devices(lambda ds: len(ds) == 12)) == 12
            (container,) = plugin.allocate(["0000:5e:00.2"]).container_responses
            assert container.envs["PCIDEVICE_INTEL_COM_NET"] == "0000:5e:00.2"
            stderr = _stop(agent)
        finally:
            agent.kill()
    assert agent.returncode == 0
    events = [json.loads(line) for line in stderr.splitlines()]  # every line is JSON
    assert {"time", "level", "event"} <= set(events[0])
    names = [e["event"] for e in events]
    for expected in ("serving", "registered", "Allocate", "signal: stopping", "stopped"):
        assert expected in names
    (allocate,) = [e for e in events if e["event"] == "Allocate"]
    assert allocate["resource"] == "intel.com/net"
    assert allocate["devices"] == [["0000:5e:00.2"]]
    assert sorted(p.name for p in (tmp_path / "dp").iterdir()) == []  # kubelet.sock went too
    assert not list((tmp_path / "devinfo").glob(".tmp-*"))


@pytest.mark.parametrize(
    ("data", "status", "message"),
    [
        ({"resourceList": [{"resourceName": "x", "selektors": {}}]}, 1, "did you mean 'selectors'"),
        ("{not json", 1, "config.json:1:2"),
    ],
)
def test_a_bad_config_is_one_error_and_serves_nothing(
    tmp_path: Path, data: object, status: int, message: str
) -> None:
    config = tmp_path / "config.json"
    config.write_text(data if isinstance(data, str) else json.dumps(data))
    result = _run(_args(tmp_path, config))
    assert result.returncode == status
    assert result.stderr.startswith("sriovlib agent: error: ")
    assert message in result.stderr
    assert "Traceback" not in result.stderr
    assert not (tmp_path / "dp").exists()


@pytest.mark.parametrize(
    ("extra", "message"),
    [
        (["--resource-prefix", "Intel_COM"], "not a DNS subdomain"),
        (["--allocation-policy", "random"], "invalid choice"),
        (["--log-format", "xml"], "invalid choice"),
        (["--metrics-address", "9808"], "expected HOST:PORT"),
        (["--pf-carrier-health", "sometimes"], "expected on, off, POOL=on or POOL=off"),
        (["--pf-carrier-health", "no_such_pool=off"], "no pool 'no_such_pool'"),
        (["--rescan-interval", "0"], "expected seconds from 0.1"),
        (["--reclaim", "maybe"], "invalid choice"),
    ],
)
def test_bad_options_are_usage_errors(tmp_path: Path, extra: list[str], message: str) -> None:
    config = _config(tmp_path, {"resourceList": []})
    result = _run(_args(tmp_path, config, *extra))
    assert result.returncode == 2
    assert message in result.stderr
    assert "Traceback" not in result.stderr


def test_a_missing_config_is_one_line(tmp_path: Path) -> None:
    result = _run(_args(tmp_path, tmp_path / "nope.json"))
    assert result.returncode == 2
    assert result.stderr.count("\n") == 1
    assert "nope.json" in result.stderr


def test_the_committed_grpc_modules_are_current(tmp_path: Path) -> None:
    """Regenerate the stubs with the pinned grpcio-tools and compare byte for byte:
    fails when a proto changed without `nox -s protos`."""
    pytest.importorskip("grpc_tools", reason="grpcio-tools is not installed")
    subprocess.run(
        [sys.executable, str(ROOT / "scripts/gen-protos"), str(tmp_path)], check=True, timeout=120
    )
    generated = sorted(tmp_path.glob("sriovlib/agent/api/*_pb2*"))
    assert [p.name for p in generated] == [
        "deviceplugin_pb2.py",
        "deviceplugin_pb2.pyi",
        "deviceplugin_pb2_grpc.py",
        "dra_pb2.py",
        "dra_pb2.pyi",
        "dra_pb2_grpc.py",
        "pluginregistration_pb2.py",
        "pluginregistration_pb2.pyi",
        "pluginregistration_pb2_grpc.py",
        "podresources_pb2.py",
        "podresources_pb2.pyi",
        "podresources_pb2_grpc.py",
    ]
    committed = ROOT / "src/sriovlib/agent/api"
    for path in generated:
        assert filecmp.cmp(path, committed / path.name, shallow=False), path.name


def test_the_agent_serves_the_cni_fast_path(tmp_path: Path) -> None:
    """``sriovlib agent --cni-socket``: the shipped ``sriov`` hands it a VERSION and an
    ADD (of a VF this machine does not have: the same error as in-process, code 101),
    the agent counts both, and SIGTERM removes the socket."""
    config = _config(
        tmp_path, {"resourceList": [{"resourceName": "net", "selectors": {"drivers": ["iavf"]}}]}
    )
    socket_path = tmp_path / "run" / "agent.sock"
    netns = tmp_path / "netns"
    netns.write_text("")
    args = _args(tmp_path, config, "--log-format", "json", "--metrics-address", "127.0.0.1:0")
    args[args.index("--cni-socket") + 1] = str(socket_path)
    with KubeletStandIn(tmp_path / "dp") as kubelet:
        agent = _start(args)
        try:
            kubelet.wait_plugin("intel.com/net", timeout=30)
            events: dict[str, dict[str, str]] = {}
            while "CNI fast path" not in events:
                line = agent.stderr.readline() if agent.stderr is not None else ""
                assert line, "the agent ended before serving the fast path"
                event = json.loads(line)
                events[event["event"]] = event
            address = events["metrics"]["address"]
            assert str(socket_path) == events["CNI fast path"]["socket"]
            assert socket_path.exists()
            environ = {"PATH": "/usr/bin:/bin", "SRIOVLIB_AGENT_SOCKET": str(socket_path)}
            version = _cni({**environ, "CNI_COMMAND": "VERSION"}, b"")
            assert 0 == version.returncode, version.stderr
            assert "1.1.0" in json.loads(version.stdout)["supportedVersions"]
            conf = {"cniVersion": "1.0.0", "name": "n", "type": "sriov", "deviceID": "0000:ee:1f.7"}
            add = _cni(
                {**environ, "CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_IFNAME": "net1",
                 "CNI_NETNS": str(netns), "CNI_PATH": str(tmp_path),
                 "SRIOVLIB_STATE_DIR": str(tmp_path / "state")},
                json.dumps(conf).encode(),
            )  # fmt: skip
            assert 1 == add.returncode
            assert 101 == json.loads(add.stdout)["code"], add.stdout
            assert b"0000:ee:1f.7" in add.stderr  # the agent's answer, its log line
            metrics = _metrics(address)
            assert 'sriovlib_cni_seconds_count{command="VERSION"} 1.0' in metrics
            assert 'sriovlib_cni_errors_total{code="101",command="ADD"} 1.0' in metrics
            _stop(agent)
        finally:
            agent.kill()
    assert agent.returncode == 0
    assert not socket_path.exists()


def _cni(environ: dict[str, str], stdin: bytes) -> subprocess.CompletedProcess[bytes]:
    return subprocess.run(
        [sys.executable, "-m", "sriovlib.cni"],
        input=stdin,
        env=environ,
        capture_output=True,
        timeout=60,
        check=False,
    )


def _metrics(address: str) -> str:
    import urllib.request

    with urllib.request.urlopen(f"http://{address}/metrics", timeout=10) as answer:
        text: str = answer.read().decode()
    return text


def test_a_cni_socket_path_that_is_a_file_is_one_error_and_kept(tmp_path: Path) -> None:
    config = _config(
        tmp_path, {"resourceList": [{"resourceName": "net", "selectors": {"drivers": ["iavf"]}}]}
    )
    taken = tmp_path / "taken"
    taken.write_text("someone's file")
    args = _args(tmp_path, config, "--metrics-address", "off")
    args[args.index("--cni-socket") + 1] = str(taken)
    done = _run(args)
    assert done.returncode == 2
    assert (
        done.stderr.splitlines()[-1] == f"sriovlib agent: error: {taken} exists and is not a socket"
    )
    assert "Traceback" not in done.stderr
    assert taken.read_text() == "someone's file"
    assert [] == list((tmp_path / "dp").iterdir())  # what it served is gone again


POLICY = """
policies:
  - name: kernel
    resourceName: poolA
    numVfs: 8
    nicSelector: {pfNames: ["enp59s0f0#0-3"]}
  - name: dpdk
    resourceName: poolB
    numVfs: 8
    deviceType: vfio-pci
    nicSelector: {pfNames: ["enp59s0f0#4-7"]}
"""


def test_policy_is_applied_before_registering(tmp_path: Path) -> None:
    """--policy: the agent applies the file first (VFs 4-5 move to vfio-pci), then
    serves the pools of its resourceNames; --config is not read."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY)
    args = [
        *AGENT,
        "--example", "i40e",
        "--policy", str(policy),
        "--config", str(tmp_path / "no-such-config.json"),
        "--device-plugin-dir", str(tmp_path / "dp"),
        "--state-dir", str(tmp_path / "state"),
        "--device-info-dir", str(tmp_path / "devinfo"),
        "--cni-socket", "off",
        "--metrics-address", "off",
        "--log-format", "json",
    ]  # fmt: skip
    with KubeletStandIn(tmp_path / "dp") as kubelet:
        agent = _start(args)
        try:
            a = kubelet.wait_plugin("intel.com/poolA", timeout=30)
            b = kubelet.wait_plugin("intel.com/poolB", timeout=30)
            assert len(a.wait_devices(lambda ds: len(ds) == 4)) == 4
            assert len(b.wait_devices(lambda ds: len(ds) == 4)) == 4
            stderr = _stop(agent)
        finally:
            agent.kill()
    assert agent.returncode == 0
    events = [json.loads(line) for line in stderr.splitlines()]
    names = [e["event"] for e in events]
    assert names.index("policy applied") < names.index("registered")
    (applied,) = [e for e in events if e["event"] == "policy applied"]
    assert [
        "VF 4 driver iavf -> vfio-pci",
        "VF 5 driver iavf -> vfio-pci",
    ] == applied["changes"]


def test_bad_policy_is_one_line(tmp_path: Path) -> None:
    """A policy file with an unknown field: exit 1, one line, nothing served."""
    policy = tmp_path / "policy.yaml"
    policy.write_text(POLICY.replace("numVfs: 8\n    deviceType", "numVF: 8\n    deviceType"))
    done = _run([*_args(tmp_path, tmp_path / "none.json", "--policy", str(policy))])
    assert done.returncode == 1
    assert len(done.stderr.strip().splitlines()) == 1
    assert "did you mean 'numVfs'" in done.stderr
