"""Orphan reclaim: a VF held for a pod that is gone (its namespace gone, or its device in
no container of the kubelet's pod-resources API) comes back, after the grace period,
without a DEL (fake kernel; a real gRPC pod-resources server on a unix socket)."""

from __future__ import annotations

import logging
import socket
import time
from collections.abc import Iterator
from concurrent import futures
from pathlib import Path
from typing import Any

import attrs
import grpc
import pytest

from sriovlib.agent.api import podresources_pb2 as pb
from sriovlib.agent.api import podresources_pb2_grpc as pb_grpc
from sriovlib.agent.kubelet import unix_target
from sriovlib.agent.metrics import Metrics
from sriovlib.agent.podresources import PodResourcesClient
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


# -- the pod-resources sign: a served device that no container of the kubelet holds ------------

NET = "intel.com/intel_net"


class PodResources(pb_grpc.PodResourcesListerServicer):
    """The kubelet's pod-resources List: *pods* maps a pod name to its one container's
    devices per resource name; *answers*, when set, is used up one answer per call."""

    def __init__(self) -> None:
        self.pods: dict[str, dict[str, list[str]]] = {}
        self.answers: list[dict[str, dict[str, list[str]]]] = []
        self.calls = 0

    def List(
        self, request: pb.ListPodResourcesRequest, context: grpc.ServicerContext
    ) -> pb.ListPodResourcesResponse:
        self.calls += 1
        pods = self.answers.pop(0) if self.answers else self.pods
        return pb.ListPodResourcesResponse(
            pod_resources=[
                pb.PodResources(
                    name=name,
                    namespace="default",
                    containers=[
                        pb.ContainerResources(
                            name="app",
                            devices=[
                                pb.ContainerDevices(resource_name=r, device_ids=ids)
                                for r, ids in devices.items()
                            ],
                        )
                    ],
                )
                for name, devices in pods.items()
            ]
        )


@attrs.define
class Kubelet:
    socket: Path
    lister: PodResources
    server: grpc.Server | None = None

    def start(self) -> None:
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=2))
        pb_grpc.add_PodResourcesListerServicer_to_server(self.lister, self.server)  # type: ignore[no-untyped-call]
        self.server.add_insecure_port(unix_target(self.socket))
        self.server.start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.stop(0).wait()
            self.server = None


@pytest.fixture
def pod_resources(tmp_path: Path) -> Iterator[Kubelet]:
    """A pod-resources server on a unix socket (started), as the kubelet serves it."""
    kubelet = Kubelet(tmp_path / "pod-resources.sock", PodResources())
    kubelet.start()
    yield kubelet
    kubelet.stop()


def attach_live(node: Node, service: AttachmentService, cid: str = "c1") -> str:
    """Attach VF with a VLAN to a pod whose namespace stays."""
    pod = node.kernel.add_netns(f"pod-{cid}")
    service.attach(AttachRequest(Owner(cid, "net1", pod), VF, "net-a", config=VfConfig(vlan=7)))
    assert node.kernel.vf_state(VF_PF, VF_INDEX).vlan == 7
    return pod


def judged_by(
    service: AttachmentService, kubelet: Kubelet, served: set[str] | None = None, **kw: Any
) -> Reclaimer:
    return Reclaimer(
        service,
        pod_resources=PodResourcesClient(kubelet.socket, timeout=1.0),
        served=lambda: {str(VF)} if served is None else served,
        **kw,
    )


def test_the_client_merges_every_container_per_resource(pod_resources: Kubelet) -> None:
    pod_resources.lister.pods = {
        "a": {NET: ["0000:5e:00.3"], "intel.com/intel_dpdk": ["0000:5e:01.6"]},
        "b": {NET: ["0000:5e:00.4", "0000:5e:00.5"]},
        "c": {},
    }
    held = PodResourcesClient(pod_resources.socket).held_devices()
    assert held == {
        NET: {"0000:5e:00.3", "0000:5e:00.4", "0000:5e:00.5"},
        "intel.com/intel_dpdk": {"0000:5e:01.6"},
    }


def test_a_device_no_container_holds_is_reclaimed_after_the_grace_period(
    node: Node, pod_resources: Kubelet, caplog: pytest.LogCaptureFixture
) -> None:
    service = AttachmentService(node.host, node.tmp / "state")
    attach_live(node, service)
    pod_resources.lister.pods = {"other": {NET: ["0000:5e:00.4"]}}
    clock = Clock()
    reclaimer = judged_by(service, pod_resources, grace=60, clock=clock)
    assert [] == reclaimer.step()
    clock.now += 59.9
    assert [] == reclaimer.step()
    assert len(service.store.records()) == 1
    clock.now += 0.1
    with caplog.at_level(logging.WARNING, "sriovlib.agent"):
        assert [str(VF)] == reclaimer.step()
    assert () == service.store.records()
    assert node.kernel.vf_state(VF_PF, VF_INDEX).vlan == 0  # restored from the snapshot
    assert node.host.vf(VF).netdev is not None  # home again
    (reclaimed,) = [r for r in caplog.records if r.getMessage() == "orphan reclaimed"]
    assert reclaimed.__dict__["reason"] == "not-in-pod-resources"


def test_a_device_a_container_holds_is_kept(node: Node, pod_resources: Kubelet) -> None:
    service = AttachmentService(node.host, node.tmp / "state")
    attach_live(node, service)
    pod_resources.lister.pods = {"holder": {NET: [str(VF)]}}
    clock = Clock()
    reclaimer = judged_by(service, pod_resources, grace=0, clock=clock)
    clock.now += 3600
    assert [] == reclaimer.step()
    # under another resource name (the pool renamed by a config change): still held
    pod_resources.lister.pods = {"holder": {"intel.com/renamed": [str(VF)]}}
    clock.now += 3600
    assert [] == reclaimer.step()
    assert len(service.store.records()) == 1
    assert node.kernel.vf_state(VF_PF, VF_INDEX).vlan == 7
    assert pod_resources.lister.calls == 2  # the criterion was used each time


def test_the_device_is_asked_about_again_under_the_lock(node: Node, pod_resources: Kubelet) -> None:
    """The kubelet lists the device by the time the reclaim holds the VF's lock: kept."""
    service = AttachmentService(node.host, node.tmp / "state")
    attach_live(node, service)
    pod_resources.lister.answers = [{}, {"new-pod": {NET: [str(VF)]}}]
    reclaimer = judged_by(service, pod_resources, grace=0, clock=Clock())
    assert [] == reclaimer.step()
    assert pod_resources.lister.calls == 2
    assert len(service.store.records()) == 1
    assert node.kernel.vf_state(VF_PF, VF_INDEX).vlan == 7


def test_a_dry_run_by_pod_resources_reports_once_and_changes_nothing(
    node: Node, pod_resources: Kubelet, caplog: pytest.LogCaptureFixture
) -> None:
    service = AttachmentService(node.host, node.tmp / "state")
    attach_live(node, service)
    metrics = Metrics(list, frozenset)
    clock = Clock()
    reclaimer = judged_by(
        service, pod_resources, mode=ReclaimMode.DRY_RUN, grace=5, clock=clock, metrics=metrics
    )
    reclaimer.step()
    clock.now += 5
    assert [str(VF)] == reclaimer.step()
    assert [] == reclaimer.step()  # reported once
    assert len(service.store.records()) == 1
    assert node.kernel.vf_state(VF_PF, VF_INDEX).vlan == 7
    (reported,) = [r for r in caplog.records if "dry run" in r.getMessage()]
    assert reported.__dict__["reason"] == "not-in-pod-resources"
    labels = {"outcome": "dry-run", "reason": "not-in-pod-resources"}
    assert metrics.registry.get_sample_value("sriovlib_reclaims_total", labels) == 1


def test_an_unreachable_kubelet_leaves_the_criterion_unused(
    node: Node, tmp_path: Path, caplog: pytest.LogCaptureFixture
) -> None:
    """No socket, then a socket nobody listens on: nothing is reclaimed and one info line
    says so; once the kubelet answers, the grace period starts from then."""
    service = AttachmentService(node.host, node.tmp / "state")
    attach_live(node, service)
    kubelet = Kubelet(tmp_path / "kubelet.sock", PodResources())
    clock = Clock()
    reclaimer = judged_by(service, kubelet, grace=10, clock=clock)
    with caplog.at_level(logging.INFO, "sriovlib.agent"):
        for _ in range(3):
            assert [] == reclaimer.step()
            clock.now += 60
        stale = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        stale.bind(str(kubelet.socket))  # bound, never listening: connection refused
        stale.close()
        for _ in range(3):
            assert [] == reclaimer.step()
            clock.now += 60
    assert len(service.store.records()) == 1
    messages = [r.getMessage() for r in caplog.records]
    assert (
        messages.count(
            "pod-resources API not reachable: orphans judged by their network namespace only"
        )
        == 1
    )
    kubelet.socket.unlink()
    kubelet.start()
    try:
        with caplog.at_level(logging.INFO, "sriovlib.agent"):
            assert [] == reclaimer.step()  # first seen as an orphan now
            clock.now += 9
            assert [] == reclaimer.step()
            clock.now += 1
            assert [str(VF)] == reclaimer.step()
    finally:
        kubelet.stop()
    assert "pod-resources API answers" in [r.getMessage() for r in caplog.records]


def test_a_vf_of_no_served_pool_is_never_judged_by_pod_resources(
    node: Node, pod_resources: Kubelet
) -> None:
    service = AttachmentService(node.host, node.tmp / "state")
    attach_live(node, service)
    clock = Clock()
    reclaimer = judged_by(service, pod_resources, served={"0000:5e:00.4"}, grace=0, clock=clock)
    clock.now += 3600
    assert [] == reclaimer.step()
    assert len(service.store.records()) == 1
    assert pod_resources.lister.calls == 0  # not even asked: no record of a served device


def test_a_gone_namespace_is_reclaimed_as_netns_gone_without_asking(
    node: Node, pod_resources: Kubelet, caplog: pytest.LogCaptureFixture
) -> None:
    """Both signs: the namespace one is named (and the device is held, so it alone)."""
    service = AttachmentService(node.host, node.tmp / "state")
    attach_and_orphan(node, service)
    pod_resources.lister.pods = {"holder": {NET: [str(VF)]}}
    reclaimer = judged_by(service, pod_resources, grace=0, clock=Clock())
    with caplog.at_level(logging.WARNING, "sriovlib.agent"):
        assert [str(VF)] == reclaimer.step()
    (reclaimed,) = [r for r in caplog.records if r.getMessage() == "orphan reclaimed"]
    assert reclaimed.__dict__["reason"] == "netns-gone"
    assert pod_resources.lister.calls == 0


def test_the_agent_reclaims_by_pod_resources_and_counts_it(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent, pod_resources: Kubelet
) -> None:
    pod_resources.lister.pods = {"other": {NET: ["0000:5e:00.4"]}}
    agent = start_agent(reclaim_grace=0.2, pod_resources_socket=pod_resources.socket)
    assert agent.health is not None
    agent.health.tick = 0.05
    attach_live(node, agent.attachments)
    deadline = time.monotonic() + 10
    while agent.attachments.store.records():
        assert time.monotonic() < deadline, "never reclaimed"
        time.sleep(0.05)
    assert node.kernel.vf_state(VF_PF, VF_INDEX).vlan == 0
    labels = {"outcome": "reclaimed", "reason": "not-in-pod-resources"}
    assert agent.metrics.registry.get_sample_value("sriovlib_reclaims_total", labels) == 1
