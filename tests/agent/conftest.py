"""An agent on the "mixed" example node, in process, against the kubelet stand-in."""

from __future__ import annotations

import json
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from sriovlib.agent.dra import DraOptions, DraPlugin
from sriovlib.agent.runner import Agent, AgentOptions
from sriovlib.host import Host
from sriovlib.pools import parse_config
from sriovlib.testing.builder import FakeSysfs
from sriovlib.testing.drakubelet import FakeClaims
from sriovlib.testing.fakenetlink import FakeNetlink
from sriovlib.testing.kubelet import KubeletStandIn
from sriovlib.testing.presets import build_example

#: mlx5 (NUMA 0, RDMA, VF 1 of each port moved away) and i40e (NUMA 1, VFs 6-7 vfio-pci)
CONFIG = {
    "resourceList": [
        {
            "resourceName": "mlx",
            "selectors": {"vendors": ["15b3"], "devices": ["1018"], "isRdma": True},
            "additionalInfo": {"*": {"team": "a"}},
        },
        {
            "resourceName": "intel_net",
            "selectors": {"vendors": ["8086"], "devices": ["154c"], "drivers": ["iavf"]},
        },
        {
            "resourceName": "intel_dpdk",
            "excludeTopology": True,
            "selectors": {"drivers": ["vfio-pci"], "needVhostNet": True},
        },
    ]
}


@attrs.define
class Node:
    """The example node, its fake kernel and where the agent keeps its files."""

    root: Path
    fs: FakeSysfs
    kernel: FakeNetlink
    host: Host
    tmp: Path

    @property
    def device_plugin_dir(self) -> Path:
        return self.tmp / "device-plugins"

    def options(self, **changes: object) -> AgentOptions:
        base = AgentOptions(
            device_plugin_dir=self.device_plugin_dir,
            state_dir=self.tmp / "state",
            device_info_dir=self.tmp / "devinfo",
        )
        return attrs.evolve(base, **changes)  # type: ignore[arg-type]


@pytest.fixture
def node(tmp_path: Path) -> Node:
    root = tmp_path / "root"
    fs = build_example("mixed", root)
    for name in ("vhost-net", "net/tun"):
        (root / "dev" / name).parent.mkdir(parents=True, exist_ok=True)
        (root / "dev" / name).touch()
    kernel = FakeNetlink(fs)
    host = Host(root, netlink=kernel, sysfs_writer=kernel)
    return Node(root, fs, kernel, host, tmp_path)


@pytest.fixture
def kubelet(node: Node) -> Iterator[KubeletStandIn]:
    with KubeletStandIn(node.device_plugin_dir) as standin:
        yield standin


StartAgent = Callable[..., Agent]


@pytest.fixture
def start_agent(node: Node) -> Iterator[StartAgent]:
    """Start an agent (config and option changes as arguments); stopped at the end."""
    agents: list[Agent] = []

    def start(config: dict[str, object] | None = None, **changes: object) -> Agent:
        parsed = parse_config(json.dumps(config or CONFIG).encode())
        agent = Agent(node.host, parsed, node.options(**changes))
        agent.start()
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


StartPlugin = Callable[..., DraPlugin]


@pytest.fixture
def claims() -> FakeClaims:
    """The ResourceClaims a DRA plugin reads (what the API server would answer)."""
    return FakeClaims()


@pytest.fixture
def start_plugin(node: Node, claims: FakeClaims) -> Iterator[StartPlugin]:
    """Start a DRA plugin on the node (DraOptions changes as arguments); stopped at the end."""
    plugins: list[DraPlugin] = []

    def start(**changes: Any) -> DraPlugin:
        options = DraOptions(
            registry_dir=node.tmp / "plugins_registry",
            plugins_dir=node.tmp / "plugins",
            cdi_dir=node.tmp / "cdi",
            state_dir=node.tmp / "state",
            **changes,
        )
        plugin = DraPlugin(node.host, claims, options)
        plugin.start()
        plugins.append(plugin)
        return plugin

    yield start
    for plugin in plugins:
        plugin.stop()
