"""Device health on the real kernel: a veth peer going down stands in for the PF losing
carrier; the real kernel's link event reaches ListAndWatch."""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from sriovlib.agent.runner import Agent, AgentOptions
from sriovlib.host import Host
from sriovlib.pools import parse_config
from sriovlib.testing.cni import VethNode, VethVfNetlink
from sriovlib.testing.kubelet import KubeletStandIn, PluginClient

from .test_attach_release import _REASON

pytestmark = pytest.mark.kernel

POOL = "intel.com/veth_vfs"
CONFIG = {"resourceList": [{"resourceName": "veth_vfs", "selectors": {"devices": ["1018"]}}]}
#: What the issue asks; the figure itself is measured by benchmarks/agent_health.py.
WITHIN = 1.0
QUIET = 1.1


@pytest.fixture
def served(tmp_path: Path) -> Iterator[tuple[VethNode, PluginClient]]:
    if _REASON is not None:
        pytest.skip(_REASON)
    with VethNode(tmp_path / "root", num_vfs=2, pf_link=True) as node:
        netlink = VethVfNetlink(node.root, node.host_netns)
        host = Host(node.root, netlink=netlink)
        options = AgentOptions(
            device_plugin_dir=tmp_path / "dp",
            state_dir=tmp_path / "state",
            device_info_dir=tmp_path / "devinfo",
        )
        agent = Agent(host, parse_config(json.dumps(CONFIG).encode()), options)
        with KubeletStandIn(options.device_plugin_dir) as kubelet:
            agent.start()
            try:
                plugin = kubelet.wait_plugin(POOL)
                plugin.wait_devices(lambda ds: len(ds) == 2)
                yield node, plugin
            finally:
                agent.stop()
                netlink.close()


def _time_until(plugin: PluginClient, health: str) -> float:
    started = time.monotonic()
    plugin.wait_devices(lambda ds: {d.health for d in ds} == {health}, timeout=10)
    return time.monotonic() - started


def test_pf_carrier_loss_and_return_within_a_second(
    served: tuple[VethNode, PluginClient],
) -> None:
    node, plugin = served
    assert {"Healthy"} == {d.health for d in plugin.devices}
    # the kernel's link watch sends a carrier loss at most once a second after its last
    # run (setting the node up ran it): wait that out so the agent is what is timed
    time.sleep(QUIET)
    node.set_pf_carrier(False)
    lost = _time_until(plugin, "Unhealthy")
    time.sleep(QUIET)
    node.set_pf_carrier(True)
    back = _time_until(plugin, "Healthy")
    assert lost < WITHIN, f"carrier loss reached ListAndWatch after {lost:.3f} s"
    assert back < WITHIN, f"carrier return reached ListAndWatch after {back:.3f} s"
