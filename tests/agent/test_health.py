"""Device health follows the node: kernel events on the fake kernel reach ListAndWatch."""

from __future__ import annotations

import re
import threading

import grpc
import pytest

from sriovlib.agent.grants import Granter
from sriovlib.agent.health import HealthWatch
from sriovlib.plugins.types import DeviceType
from sriovlib.testing.kubelet import KubeletStandIn, PluginClient

from .conftest import Node, StartAgent

NET = "intel.com/intel_net"
DPDK = "intel.com/intel_dpdk"
PF0 = "enp59s0f0"  # VFs 0000:5e:00.2-7 of intel_net, 0000:5e:01.0-1 of intel_dpdk
ON_PF0 = {f"0000:5e:00.{n}" for n in range(2, 8)}
ALL_NET = 12


def unhealthy(plugin: PluginClient) -> set[str]:
    return {d.ID for d in plugin.devices if d.health == "Unhealthy"}


def wait_unhealthy(plugin: PluginClient, expected: set[str]) -> None:
    plugin.wait_devices(
        lambda ds: {d.ID for d in ds if d.health == "Unhealthy"} == expected and len(ds) > 0
    )


def test_pf_carrier_loss_and_return_reach_list_and_watch(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    start_agent()
    plugin = kubelet.wait_plugin(NET)
    plugin.wait_devices(lambda ds: len(ds) == ALL_NET)
    assert set() == unhealthy(plugin)
    node.kernel.set_carrier(PF0, False)
    wait_unhealthy(plugin, ON_PF0)
    node.kernel.set_carrier(PF0, True)
    wait_unhealthy(plugin, set())


def test_pf_down_makes_its_vfs_unhealthy_with_the_reason(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    agent = start_agent()
    plugin = kubelet.wait_plugin(NET)
    plugin.wait_devices(lambda ds: len(ds) == ALL_NET)
    pf = node.kernel.get_link(PF0)
    node.kernel.set_link(pf.index, up=False)
    wait_unhealthy(plugin, ON_PF0)
    (net,) = [r for r in agent.resources if r.name == NET]
    assert {f"its PF {PF0} is down"} == {d.reason for d in net.devices() if not d.healthy}
    node.kernel.set_link(pf.index, up=True)
    wait_unhealthy(plugin, set())


def test_pf_carrier_health_off_for_one_pool(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    """With it off for intel_net, intel_dpdk's VFs on the same PF still follow it."""
    start_agent(pf_carrier_pools={"intel_net": False})
    net, dpdk = kubelet.wait_plugin(NET), kubelet.wait_plugin(DPDK)
    node.kernel.set_carrier(PF0, False)
    wait_unhealthy(dpdk, {"0000:5e:01.0", "0000:5e:01.1"})
    assert set() == unhealthy(net)


def test_a_vf_rebound_by_someone_else_is_unhealthy_until_bound_back(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    start_agent()
    plugin = kubelet.wait_plugin(NET)
    plugin.wait_devices(lambda ds: len(ds) == ALL_NET)
    vf = node.host.vf("0000:5e:08.3")
    node.host.bind_driver(vf, DeviceType.VFIO)
    wait_unhealthy(plugin, {"0000:5e:08.3"})
    node.host.bind_driver(vf, DeviceType.NETDEVICE)
    wait_unhealthy(plugin, set())


def test_a_missing_device_node_is_not_forgotten_by_an_event(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    """Allocate finds a VFIO group node missing; later events do not clear that, putting
    the node back does."""
    agent = start_agent()
    plugin = kubelet.wait_plugin(DPDK)
    plugin.wait_devices(lambda ds: len(ds) == 4)
    group = node.host.vf("0000:5e:01.0").iommu_group
    moved = node.root / "dev/vfio" / f"{group}.away"
    (node.root / "dev/vfio" / str(group)).rename(moved)
    with pytest.raises(grpc.RpcError, match=re.escape("0000:5e:01.0")):
        plugin.allocate(["0000:5e:01.0"])
    wait_unhealthy(plugin, {"0000:5e:01.0"})
    assert agent.health is not None
    (dpdk,) = [r for r in agent.resources if r.name == DPDK]
    node.kernel.set_carrier("enp59s0f1", True)  # an unrelated event
    agent.health.assess()
    device = dpdk.get("0000:5e:01.0")
    assert device is not None
    assert not device.healthy
    assert device.reason is not None
    assert "device node missing" in device.reason
    moved.rename(node.root / "dev/vfio" / str(group))
    agent.health.assess()
    wait_unhealthy(plugin, set())


def test_a_wake_up_publishes_after_its_assessment(node: Node) -> None:
    """The order of one wake-up: ``on_wake`` (the agent's reconcile), the assessment,
    then ``after_wake`` (the agent's ResourceSlices), so what a kernel event changed is
    published by the wake-up the event caused, not by the next one."""
    calls: list[object] = []
    done = threading.Event()

    class Recording(HealthWatch):
        def assess(self) -> int:
            calls.append("assess")
            return super().assess()

    def after() -> None:
        calls.append("after")
        if ("wake", True) in calls:
            done.set()

    watch = Recording(
        node.host,
        Granter(node.host, device_info_dir=None, cdi_dir=None),
        list,
        pf_carrier=lambda _resource: True,
        on_wake=lambda event: calls.append(("wake", event)),
        after_wake=after,
        tick=60,
    )
    watch.start()
    try:
        node.kernel.set_carrier("enp59s0f0", False)
        assert done.wait(10)
    finally:
        watch.stop()
    first = calls.index(("wake", True))
    assert calls[first : first + 3] == [("wake", True), "assess", "after"]
