"""Orphan reclaim: a VF held for a pod whose namespace is gone comes back, after the grace
period, without a DEL (fake kernel)."""

from __future__ import annotations

import time

import pytest

from sriovlib.agent.reclaim import Reclaimer, ReclaimMode
from sriovlib.allocation import Owner
from sriovlib.attachments import AttachmentService, AttachRequest
from sriovlib.models import PciAddress, VfConfig
from sriovlib.testing.kubelet import KubeletStandIn

from .conftest import Node, StartAgent

VF = PciAddress.parse("0000:5e:00.3")  # intel_net, on iavf with a netdev
VF_PF, VF_INDEX = PciAddress.parse("0000:5e:00.0"), 1


def attach_and_orphan(node: Node, service: AttachmentService, cid: str = "c1") -> str:
    """Attach VF to a pod with a VLAN, then delete the pod's namespace without a DEL."""
    pod = node.kernel.add_netns(f"pod-{cid}")
    service.attach(AttachRequest(Owner(cid, "net1", pod), VF, "net-a", config=VfConfig(vlan=7)))
    assert node.kernel.vf_state(VF_PF, VF_INDEX).vlan == 7
    node.kernel.delete_netns(pod)
    return pod


class Clock:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


def test_an_orphan_is_reclaimed_only_after_the_grace_period(node: Node) -> None:
    service = AttachmentService(node.host, node.tmp / "state")
    attach_and_orphan(node, service)
    clock = Clock()
    reclaimer = Reclaimer(service, grace=60, clock=clock)
    assert [] == reclaimer.step()  # first seen now
    clock.now += 59.9
    assert [] == reclaimer.step()
    assert len(service.store.records()) == 1
    clock.now += 0.1
    assert [str(VF)] == reclaimer.step()
    assert () == service.store.records()
    assert node.kernel.vf_state(VF_PF, VF_INDEX).vlan == 0  # restored from the snapshot
    assert node.host.vf(VF).netdev is not None  # home again


def test_a_dry_run_reports_once_and_changes_nothing(
    node: Node, caplog: pytest.LogCaptureFixture
) -> None:
    service = AttachmentService(node.host, node.tmp / "state")
    attach_and_orphan(node, service)
    clock = Clock()
    reclaimer = Reclaimer(service, mode=ReclaimMode.DRY_RUN, grace=5, clock=clock)
    reclaimer.step()
    clock.now += 5
    assert [str(VF)] == reclaimer.step()
    assert [] == reclaimer.step()  # reported once
    assert len(service.store.records()) == 1
    assert node.kernel.vf_state(VF_PF, VF_INDEX).vlan == 7
    assert caplog.text.count("orphan (dry run: not reclaimed)") == 1


def test_a_live_pod_is_never_an_orphan(node: Node) -> None:
    service = AttachmentService(node.host, node.tmp / "state")
    pod = node.kernel.add_netns("pod-live")
    service.attach(AttachRequest(Owner("c2", "net1", pod), VF, "net-a"))
    clock = Clock()
    reclaimer = Reclaimer(service, grace=0, clock=clock)
    clock.now += 3600
    assert [] == reclaimer.step()
    assert len(service.store.records()) == 1


def test_the_agent_reclaims_and_counts_it(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    agent = start_agent(reclaim_grace=0.2, metrics_address="127.0.0.1:0")
    assert agent.health is not None
    agent.health.tick = 0.05
    attach_and_orphan(node, agent.attachments)
    deadline = time.monotonic() + 10
    while agent.attachments.store.records():
        assert time.monotonic() < deadline, "never reclaimed"
        time.sleep(0.05)
    assert node.kernel.vf_state(VF_PF, VF_INDEX).vlan == 0
    reclaimed = agent.metrics.registry.get_sample_value(
        "sriovlib_reclaims_total", {"outcome": "reclaimed", "reason": "netns-gone"}
    )
    assert reclaimed == 1
