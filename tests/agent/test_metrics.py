"""The Prometheus endpoint and ``sriovlib agent status`` against a live in-process agent."""

from __future__ import annotations

import json
import socket
import urllib.request

import grpc
import pytest

from sriovlib.agent.metrics import Metrics
from sriovlib.agent.runner import Agent
from sriovlib.cli import main
from sriovlib.testing.kubelet import KubeletStandIn

from .conftest import Node, StartAgent

NET = "intel.com/intel_net"


def scrape(agent: Agent) -> dict[str, float]:
    assert agent.metrics_address is not None
    host, port = agent.metrics_address
    with urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=5) as answer:
        text = answer.read().decode()
    samples = {}
    for line in text.splitlines():
        if line and not line.startswith("#"):
            name, _, value = line.rpartition(" ")
            samples[name] = float(value)
    return samples


def address(agent: Agent) -> str:
    assert agent.metrics_address is not None
    return "{}:{}".format(*agent.metrics_address)


def test_pools_rpcs_and_health_are_counted(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    agent = start_agent(metrics_address="127.0.0.1:0")
    plugin = kubelet.wait_plugin(NET)
    plugin.wait_devices(lambda ds: len(ds) == 12)
    plugin.allocate(["0000:5e:00.2"])
    with pytest.raises(grpc.RpcError):
        plugin.allocate(["0000:99:00.0"])
    node.kernel.set_carrier("enp59s0f0", False)
    plugin.wait_devices(lambda ds: sum(d.health == "Unhealthy" for d in ds) == 6)
    got = scrape(agent)
    label = f'{{resource="{NET}"}}'
    assert got[f"sriovlib_pool_devices{label}"] == 12
    assert got[f"sriovlib_pool_healthy{label}"] == 6
    assert got[f"sriovlib_pool_allocated{label}"] == 0
    assert got[f"sriovlib_allocate_seconds_count{label}"] == 1
    assert got[f'sriovlib_errors_total{{code="NOT_FOUND",resource="{NET}"}}'] == 1
    assert got[f"sriovlib_health_changes_total{label}"] == 6
    assert got[f"sriovlib_listandwatch_updates_total{label}"] >= 2


def test_status_prints_the_live_view_as_json_and_a_table(
    kubelet: KubeletStandIn, start_agent: StartAgent, capsys: pytest.CaptureFixture[str]
) -> None:
    agent = start_agent(metrics_address="127.0.0.1:0")
    kubelet.wait_plugin(NET).wait_devices(lambda ds: len(ds) == 12)
    assert main(["agent", "status", "--metrics-address", address(agent), "--json"]) == 0
    status = json.loads(capsys.readouterr().out)
    assert status["schema"] == "sriovlib.agent-status/1"
    assert status["pools"][NET]["devices"] == 12
    assert status["pools"][NET]["healthy"] == 12
    assert set(status["pools"]) == {NET, "intel.com/mlx", "intel.com/intel_dpdk"}
    # a counter nothing incremented yet is 0, not left out
    assert status["pools"][NET]["errors"] == 0
    assert status["pools"][NET]["allocates"] == 0
    assert {len(pool) for pool in status["pools"].values()} == {7}
    assert main(["agent", "status", "--metrics-address", address(agent)]) == 0
    table = capsys.readouterr().out
    assert NET in table
    assert "reconciles: 0" in table


def test_status_without_an_agent_is_one_line(capsys: pytest.CaptureFixture[str]) -> None:
    with socket.socket() as free:
        free.bind(("127.0.0.1", 0))
        port = free.getsockname()[1]
    assert main(["agent", "status", "--metrics-address", f"127.0.0.1:{port}"]) != 0
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1
    assert f"no agent answers at 127.0.0.1:{port}" in err[0]


def test_a_taken_metrics_address_is_one_line_naming_it() -> None:
    """A second agent on the node (the port taken) is told which option to change."""
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        with pytest.raises(OSError, match="--metrics-address") as raised:
            Metrics(list, dict).serve(f"127.0.0.1:{port}")
    assert str(raised.value) == f"--metrics-address 127.0.0.1:{port}: Address already in use"
