"""Pools follow the node and the config file without a restart (fake kernel, stand-in)."""

from __future__ import annotations

import json
import os
from collections.abc import Callable, Iterator
from pathlib import Path

import pytest

from sriovlib.agent.runner import Agent, ConfigFile
from sriovlib.pools import load_config
from sriovlib.testing.kubelet import KubeletStandIn

from .conftest import CONFIG, Node

NET = "intel.com/intel_net"
MLX = "intel.com/mlx"
DPDK = "intel.com/intel_dpdk"

StartWithFile = Callable[[Path], Agent]


@pytest.fixture
def start_with_file(node: Node) -> Iterator[StartWithFile]:
    """An agent whose config is a file it reloads (checked every 0.05 s here)."""
    agents: list[Agent] = []

    def start(path: Path) -> Agent:
        source = ConfigFile(str(path), lambda: load_config(str(path), compat=False))
        agent = Agent(node.host, source.load(), node.options(), config_file=source)
        agent.start()
        assert agent.health is not None
        agent.health.tick = 0.05
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


def write_config(path: Path, config: dict[str, object]) -> None:
    temp = path.with_name(path.name + ".new")
    temp.write_text(json.dumps(config))
    temp.replace(path)


def test_numvfs_shrinks_and_grows_a_pool_on_the_same_socket(
    node: Node, kubelet: KubeletStandIn, start_with_file: StartWithFile
) -> None:
    write_config(node.tmp / "config.json", CONFIG)
    start_with_file(node.tmp / "config.json")
    plugin = kubelet.wait_plugin(NET)
    plugin.wait_devices(lambda ds: len(ds) == 12)
    node.host.set_num_vfs("enp59s0f1", 0, force=True)
    devices = plugin.wait_devices(lambda ds: len(ds) == 6)
    assert {d.ID for d in devices} == {f"0000:5e:00.{n}" for n in range(2, 8)}
    node.host.set_num_vfs("enp59s0f1", 8)  # all 8 on iavf now (2 were on vfio-pci)
    plugin.wait_devices(lambda ds: len(ds) == 14)
    kubelet.wait_plugin(DPDK).wait_devices(lambda ds: len(ds) == 2)
    assert kubelet.registered(NET) == 1  # the same socket, never registered again
    assert plugin.stream_error is None


def test_a_changed_config_adds_removes_and_keeps_pools(
    node: Node, kubelet: KubeletStandIn, start_with_file: StartWithFile
) -> None:
    path = node.tmp / "config.json"
    write_config(path, CONFIG)
    agent = start_with_file(path)
    net = kubelet.wait_plugin(NET)
    kubelet.wait_plugin(MLX)
    pools = [p for p in CONFIG["resourceList"] if p["resourceName"] != "mlx"]  # type: ignore[attr-defined]
    pools[0] = {**pools[0], "selectors": {"pfNames": ["enp59s0f0"], "drivers": ["iavf"]}}
    pools.append({"resourceName": "mlx_p1", "selectors": {"pfNames": ["ens1f1"]}})
    write_config(path, {"resourceList": pools})
    kubelet.wait_plugin("intel.com/mlx_p1")
    net.wait_devices(lambda ds: len(ds) == 6)
    assert not (node.device_plugin_dir / "intel.com_mlx.sock").exists()
    assert kubelet.registered(NET) == 1
    assert {r.name for r in agent.resources} == {NET, DPDK, "intel.com/mlx_p1"}


def test_a_configmap_update_is_seen(
    node: Node, kubelet: KubeletStandIn, start_with_file: StartWithFile
) -> None:
    """The kubelet updates a ConfigMap volume by pointing ``..data`` at a new directory."""
    volume = node.tmp / "volume"
    (volume / "v1").mkdir(parents=True)
    (volume / "v1" / "config.json").write_text(json.dumps(CONFIG))
    (volume / "..data").symlink_to("v1")
    (volume / "config.json").symlink_to("..data/config.json")
    start_with_file(volume / "config.json")
    kubelet.wait_plugin(MLX)
    (volume / "v2").mkdir()
    smaller = {"resourceList": [p for p in CONFIG["resourceList"] if p["resourceName"] == "mlx"]}  # type: ignore[attr-defined]
    (volume / "v2" / "config.json").write_text(json.dumps(smaller))
    (volume / "..data_new").symlink_to("v2")
    os.replace(volume / "..data_new", volume / "..data")
    kubelet.wait_plugin(MLX)
    for gone in ("intel.com_intel_net.sock", "intel.com_intel_dpdk.sock"):
        _wait_gone(node.device_plugin_dir / gone)


def test_a_config_that_breaks_keeps_the_running_pools(
    node: Node,
    kubelet: KubeletStandIn,
    start_with_file: StartWithFile,
    caplog: pytest.LogCaptureFixture,
) -> None:
    path = node.tmp / "config.json"
    write_config(path, CONFIG)
    agent = start_with_file(path)
    kubelet.wait_plugin(NET).wait_devices(lambda ds: len(ds) == 12)
    path.write_text('{"resourceList": [{"resourceName": "x", "selectors": {"bogus": 1}}]}')
    _wait_for(lambda: "cannot be read: keeping the running one" in caplog.text)
    assert {r.name for r in agent.resources} == {NET, MLX, DPDK}
    assert (node.device_plugin_dir / "intel.com_intel_net.sock").is_socket()


def _wait_for(condition: Callable[[], bool], timeout: float = 10.0) -> None:
    import time

    deadline = time.monotonic() + timeout
    while not condition():
        assert time.monotonic() < deadline, "timed out"
        time.sleep(0.02)


def _wait_gone(path: Path) -> None:
    _wait_for(lambda: not path.exists())
