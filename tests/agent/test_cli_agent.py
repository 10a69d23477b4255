"""``sriovlib agent`` as a process: logs, SIGTERM, bad input; the committed stubs."""

from __future__ import annotations

import filecmp
import json
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


def _run(args: list[str]) -> subprocess.CompletedProcess[str]:
    return subprocess.run(args, check=False, capture_output=True, text=True, timeout=60)


def test_serves_logs_json_and_stops_cleanly_on_sigterm(tmp_path: Path) -> None:
    config = _config(
        tmp_path, {"resourceList": [{"resourceName": "net", "selectors": {"drivers": ["iavf"]}}]}
    )
    with KubeletStandIn(tmp_path / "dp") as kubelet:
        agent = subprocess.Popen(
            _args(tmp_path, config, "--log-format", "json"),
            stderr=subprocess.PIPE,
            text=True,
        )
        try:
            plugin = kubelet.wait_plugin("intel.com/net", timeout=30)
            assert len(plugin.wait_devices(lambda ds: len(ds) == 12)) == 12
            (container,) = plugin.allocate(["0000:5e:00.2"]).container_responses
            assert container.envs["PCIDEVICE_INTEL_COM_NET"] == "0000:5e:00.2"
            agent.send_signal(signal.SIGTERM)
            _, stderr = agent.communicate(timeout=20)
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
        "podresources_pb2.py",
        "podresources_pb2.pyi",
        "podresources_pb2_grpc.py",
    ]
    committed = ROOT / "src/sriovlib/agent/api"
    for path in generated:
        assert filecmp.cmp(path, committed / path.name, shallow=False), path.name
