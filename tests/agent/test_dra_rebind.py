"""A claim asking for another driver than its VF has: the VF bound to it at
NodePrepareResources (the host's ``bind_driver``, what ``sriovlib apply`` uses) and
bound back at NodeUnprepareResources, on the "mixed" example node's fake kernel (which
enforces the bind rules: vfio-pci only for a function in an IOMMU group, a driver that
is not registered is ENODEV, an unbind destroys the netdev), over the DRA kubelet
stand-in; refusals that change nothing; a kill in the middle; the health watch and the
pools not counting the claim's driver against the VF."""

from __future__ import annotations

import errno
import json
import shutil
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sriovlib.agent.dra import DraOptions, DraPlugin
from sriovlib.agent.resources import Health
from sriovlib.agent.runner import Agent
from sriovlib.models import PciAddress
from sriovlib.plugins.types import DeviceType
from sriovlib.pools import parse_config
from sriovlib.testing.drakubelet import (
    DraKubeletStandIn,
    FakeClaims,
    device_name_of,
    resource_claim,
)

from .conftest import CONFIG, Node, StartPlugin
from .test_dra_ownership import MemoryApi

DRIVER = "sriov.sriovlib.io"
NET_VF = "0000:5e:00.2"  # iavf, netdev enp59s0f0v0, IOMMU group 13, pool intel_net
VFIO_VF = "0000:5e:01.0"  # vfio-pci, IOMMU group 19, pool intel_dpdk


@pytest.fixture
def kubelet(node: Node) -> Iterator[DraKubeletStandIn]:
    with DraKubeletStandIn(node.tmp / "plugins_registry") as standin:
        yield standin


def record_path(node: Node, uid: str) -> Path:
    return node.tmp / "state" / "dra" / DRIVER / "claims" / f"{uid}.json"


def spec_path(node: Node, uid: str) -> Path:
    return node.tmp / "cdi" / f"sriovlib-{DRIVER}-{uid}.json"


def view(node: Node, address: str) -> tuple[str | None, str | None, int]:
    """The VF as the node has it: driver, host netdev, VLAN."""
    vf = node.host.vf(address)
    return vf.driver, vf.netdev, node.host.vf_state(address).vlan


def override(node: Node, address: str) -> str:
    return (node.root / "sys/bus/pci/devices" / address / "driver_override").read_text().strip()


def claim_for(claims: FakeClaims, name: str, address: str, **parameters: Any) -> Any:
    return claims.add(
        resource_claim(
            name,
            devices=[("vf", "node", device_name_of(address))],
            config=[{"parameters": parameters}],
        )
    )


def test_a_netdevice_vf_is_bound_to_vfio_pci_and_back(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    """iavf to vfio-pci at prepare (the spec carries the group's nodes), and iavf again
    with its netdev under its old name at unprepare."""
    start_plugin()
    assert view(node, NET_VF) == ("iavf", "enp59s0f0v0", 0)
    ref = claim_for(claims, "dpdk", NET_VF, driver="vfio-pci", vlan=7)
    client = kubelet.register()
    answer = client.prepare(ref).claims[ref.uid]
    assert answer.error == ""
    assert view(node, NET_VF) == ("vfio-pci", None, 7)
    group = node.host.vf(NET_VF).iommu_group
    assert group is not None
    (device,) = json.loads(spec_path(node, ref.uid).read_text())["devices"]
    nodes = {n["path"] for n in device["containerEdits"]["deviceNodes"]}
    assert nodes == {"/dev/vfio/vfio", f"/dev/vfio/{group}"}
    env = dict(e.split("=", 1) for e in device["containerEdits"]["env"])
    info = json.loads(env["PCIDEVICE_SRIOV_SRIOVLIB_IO_VF_INFO"])
    assert info[NET_VF]["vfio"]["dev-mount"] == f"/dev/vfio/{group}"
    record = json.loads(record_path(node, ref.uid).read_text())
    assert record["devices"][0]["rebind"] == {
        "driver": "iavf",
        "netdev": "enp59s0f0v0",
        "to": "vfio-pci",
    }
    assert client.unprepare(ref).claims[ref.uid].error == ""
    assert view(node, NET_VF) == ("iavf", "enp59s0f0v0", 0)
    assert override(node, NET_VF) == ""  # bound by its PCI id again, not pinned
    assert not record_path(node, ref.uid).exists()
    assert not spec_path(node, ref.uid).exists()


def test_a_vfio_vf_is_bound_to_its_kernel_driver_and_back(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    """vfio-pci to the driver of its PCI id (iavf) for ``driver: netdevice``: a netdev
    appears, the spec has no vfio node; unprepare pins vfio-pci again."""
    start_plugin()
    assert view(node, VFIO_VF)[:2] == ("vfio-pci", None)
    ref = claim_for(claims, "net", VFIO_VF, driver="netdevice")
    client = kubelet.register()
    assert client.prepare(ref).claims[ref.uid].error == ""
    driver, netdev, _ = view(node, VFIO_VF)
    assert driver == "iavf"
    assert netdev is not None
    (device,) = json.loads(spec_path(node, ref.uid).read_text())["devices"]
    assert "deviceNodes" not in device["containerEdits"]
    assert client.unprepare(ref).claims[ref.uid].error == ""
    assert view(node, VFIO_VF)[:2] == ("vfio-pci", None)
    assert override(node, VFIO_VF) == "vfio-pci"


def test_a_vf_on_the_asked_driver_is_not_rebound(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    ref = claim_for(claims, "dpdk", VFIO_VF, driver="vfio-pci")
    writes = len(node.kernel.sysfs_writes)
    client = kubelet.register()
    assert client.prepare(ref).claims[ref.uid].error == ""
    assert client.unprepare(ref).claims[ref.uid].error == ""
    assert len(node.kernel.sysfs_writes) == writes
    assert "rebind" not in json.dumps(node.kernel.sysfs_writes)


def unchanged(node: Node, uid: str, before: tuple[Any, ...], writes: int) -> None:
    assert view(node, NET_VF) == before
    assert len(node.kernel.sysfs_writes) == writes, node.kernel.sysfs_writes[writes:]
    assert not record_path(node, uid).exists()
    assert not spec_path(node, uid).exists()


def test_a_vf_without_an_iommu_group_is_refused_unchanged(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    (node.root / "sys/bus/pci/devices" / NET_VF / "iommu_group").unlink()
    start_plugin()
    before = view(node, NET_VF)
    writes = len(node.kernel.sysfs_writes)
    ref = claim_for(claims, "dpdk", NET_VF, driver="vfio-pci")
    error = kubelet.register().prepare(ref).claims[ref.uid].error
    assert error == (
        f"claim default/dpdk: device {device_name_of(NET_VF)} ({NET_VF}) of request 'vf' is "
        "bound to iavf, and the claim asks for vfio-pci: it cannot be rebound: it is in no "
        "IOMMU group, which vfio-pci needs (no IOMMU: boot with intel_iommu=on or "
        "amd_iommu=on)"
    )
    unchanged(node, ref.uid, before, writes)


def test_vfio_pci_not_loaded_is_refused_unchanged(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    drivers = node.root / "sys/bus/pci/drivers"
    shutil.move(drivers / "vfio-pci", node.tmp / "vfio-pci-unloaded")
    start_plugin()
    before = view(node, NET_VF)
    writes = len(node.kernel.sysfs_writes)
    ref = claim_for(claims, "dpdk", NET_VF, driver="vfio-pci", vlan=5)
    error = kubelet.register().prepare(ref).claims[ref.uid].error
    assert error.endswith(
        "it cannot be rebound: the vfio-pci driver is not loaded (modprobe vfio-pci)"
    )
    unchanged(node, ref.uid, before, writes)


def test_a_vf_whose_netdev_is_in_a_pod_is_refused_unchanged(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    """Unbinding it would destroy the netdev in the pod (the fake kernel does, as the
    kernel does)."""
    pod = node.kernel.add_netns("pod1")
    link = node.host.link("enp59s0f0v0")
    node.kernel.move_link(link.index, "net1", target=pod)
    start_plugin()
    before = view(node, NET_VF)
    assert before[1] is None
    writes = len(node.kernel.sysfs_writes)
    ref = claim_for(claims, "dpdk", NET_VF, driver="vfio-pci")
    error = kubelet.register().prepare(ref).claims[ref.uid].error
    assert error.endswith(
        "it cannot be rebound: its netdev is not in the host's namespace (in a pod?)"
    )
    unchanged(node, ref.uid, before, writes)
    assert [x.name for x in node.kernel.links(pod) if x.name == "net1"] == ["net1"]


def test_a_vf_a_cni_attachment_holds_is_refused_and_not_bound_back(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn
) -> None:
    """The agent's holder (its allocation store) is asked before a rebind and before
    binding back: a VF the CNI holds keeps its driver, and the unprepare is retried."""
    holders: dict[str, str] = {}
    plugin = DraPlugin(
        node.host,
        claims,
        DraOptions(
            registry_dir=node.tmp / "plugins_registry",
            plugins_dir=node.tmp / "plugins",
            cdi_dir=node.tmp / "cdi",
            state_dir=node.tmp / "state",
        ),
        holder=lambda a: holders.get(str(a)),
    )
    plugin.start()
    try:
        client = kubelet.register()
        holders[NET_VF] = "the CNI attachment of container c1 interface net1"
        before = view(node, NET_VF)
        writes = len(node.kernel.sysfs_writes)
        ref = claim_for(claims, "dpdk", NET_VF, driver="vfio-pci")
        error = client.prepare(ref).claims[ref.uid].error
        assert error.endswith(
            "it cannot be rebound: it is held by the CNI attachment of container c1 interface net1"
        )
        unchanged(node, ref.uid, before, writes)
        del holders[NET_VF]
        assert client.prepare(ref).claims[ref.uid].error == ""
        holders[NET_VF] = "the CNI attachment of container c2 interface net1"
        error = client.unprepare(ref).claims[ref.uid].error
        assert error == (
            f"claim default/dpdk: VF {NET_VF} is held by the CNI attachment of "
            "container c2 interface net1: not bound back to iavf while it is"
        )
        assert view(node, NET_VF)[0] == "vfio-pci"
        assert record_path(node, ref.uid).exists()  # kept for the kubelet's retry
        del holders[NET_VF]
        assert client.unprepare(ref).claims[ref.uid].error == ""
        assert view(node, NET_VF) == before
    finally:
        plugin.stop()


def test_a_failure_after_the_rebind_binds_the_vf_back(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    """The driver refuses the claim's VLAN after the VF went to vfio-pci: the VF is on
    iavf again with its netdev name and no VLAN, nothing recorded; the retry works."""
    start_plugin()
    before = view(node, NET_VF)
    ref = claim_for(claims, "dpdk", NET_VF, driver="vfio-pci", vlan=9)
    node.kernel.fail("set_vf", errno.EINVAL, match="vlan")
    client = kubelet.register()
    error = client.prepare(ref).claims[ref.uid].error
    assert error.startswith("claim default/dpdk: ")
    assert "vlan" in error
    assert view(node, NET_VF) == before
    assert not record_path(node, ref.uid).exists()
    assert not spec_path(node, ref.uid).exists()
    assert client.prepare(ref).claims[ref.uid].error == ""
    assert view(node, NET_VF) == ("vfio-pci", None, 9)


def test_a_bind_the_kernel_leaves_undone_is_an_error_and_binds_back(
    node: Node,
    claims: FakeClaims,
    kubelet: DraKubeletStandIn,
    start_plugin: StartPlugin,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """vfio-pci's probe failing (``drivers_probe`` reports no error, the VF stays
    unbound: the IOMMU group gone between the check and the probe)."""
    plugin = start_plugin()
    before = view(node, NET_VF)
    group_link = node.root / "sys/bus/pci/devices" / NET_VF / "iommu_group"
    real_problem = node.host.bind_problem

    def check_then_lose_the_group(vf: Any, device_type: DeviceType) -> str | None:
        answer = real_problem(vf, device_type)
        group_link.unlink()
        return answer

    monkeypatch.setattr(node.host, "bind_problem", check_then_lose_the_group)
    ref = claim_for(claims, "dpdk", NET_VF, driver="vfio-pci")
    error = kubelet.register().prepare(ref).claims[ref.uid].error
    assert error == (
        f"claim default/dpdk: device {device_name_of(NET_VF)} ({NET_VF}) of request 'vf' "
        "did not bind to vfio-pci (it has no driver)"
    )
    assert view(node, NET_VF) == before
    assert not record_path(node, ref.uid).exists()
    assert plugin.preparer.rebound() == {}


class Killed(BaseException):
    """The agent killed in the middle of a prepare (nothing after it runs)."""


@pytest.mark.parametrize("then", ["prepare", "unprepare"])
def test_an_agent_killed_between_unbind_and_bind_binds_back(
    node: Node,
    claims: FakeClaims,
    kubelet: DraKubeletStandIn,
    start_plugin: StartPlugin,
    monkeypatch: pytest.MonkeyPatch,
    then: str,
) -> None:
    """The record (``rebind``, ``complete`` false) is on disk before the unbind; a VF
    left with no driver is bound back to iavf on the kubelet's retry or its unprepare."""
    plugin = start_plugin()
    before = view(node, NET_VF)
    ref = claim_for(claims, "dpdk", NET_VF, driver="vfio-pci")

    def unbind_then_die(vf: Any, device_type: DeviceType) -> Any:
        node.host.sysfs.unbind(PciAddress.parse(NET_VF), "iavf")
        raise Killed

    real = node.host.bind_driver
    monkeypatch.setattr(node.host, "bind_driver", unbind_then_die)
    with pytest.raises(Killed):
        plugin.preparer.prepare(ref)
    assert view(node, NET_VF)[:2] == (None, None)
    record = json.loads(record_path(node, ref.uid).read_text())
    assert record["complete"] is False
    assert record["devices"][0]["rebind"]["driver"] == "iavf"
    monkeypatch.setattr(node.host, "bind_driver", real)
    plugin.stop()
    start_plugin()
    client = kubelet.register()
    if then == "prepare":
        assert client.prepare(ref).claims[ref.uid].error == ""
        assert view(node, NET_VF)[0] == "vfio-pci"
        assert client.unprepare(ref).claims[ref.uid].error == ""
    else:
        assert client.unprepare(ref).claims[ref.uid].error == ""
    assert view(node, NET_VF) == before
    assert not record_path(node, ref.uid).exists()


# -- health and pools ------------------------------------------------------------------------


@pytest.fixture
def agent(node: Node, claims: FakeClaims) -> Iterator[Agent]:
    options = node.options(
        dra=DraOptions(
            registry_dir=node.tmp / "plugins_registry",
            plugins_dir=node.tmp / "plugins",
            cdi_dir=node.tmp / "cdi",
            state_dir=node.tmp / "state",
        )
    )
    api = MemoryApi()
    agent = Agent(
        node.host,
        parse_config(json.dumps(CONFIG).encode()),
        options,
        claims=claims,
        api=api,  # type: ignore[arg-type]
        node_name="node1",
    )
    agent.start()
    assert agent.health is not None
    agent.health.tick = 0.05
    yield agent
    agent.stop()


def health_of(agent: Agent, address: str) -> tuple[str, Health]:
    for resource in agent.resources:
        device = resource.get(address)
        if device is not None:
            return resource.name, device.health
    raise AssertionError(f"{address} is in no pool")


def test_a_vf_rebound_by_its_claim_stays_healthy_in_its_pool(
    node: Node,
    claims: FakeClaims,
    kubelet: DraKubeletStandIn,
    agent: Agent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """No flap: the iavf VF of ``intel_net`` (whose selector names iavf) on vfio-pci for
    its claim stays healthy in that pool through an assessment the bind's uevent causes
    (made here right after the bind, before the prepare returns), another one and a
    reconcile, and after unprepare; the same VF rebound by someone else is unhealthy."""
    health = agent.health
    assert health is not None
    assert agent.slices is not None
    api: MemoryApi = agent.slices.api  # type: ignore[assignment]
    name = device_name_of(NET_VF)
    generation = wait_generation(api)
    assert name in api.published()
    assert health_of(agent, NET_VF) == ("intel.com/intel_net", Health.HEALTHY)
    real_bind = node.host.bind_driver
    during: list[int] = []

    def bind_then_assess(vf: Any, device_type: DeviceType) -> Any:
        bound = real_bind(vf, device_type)
        during.append(health.assess())  # the health watch woken by the bind's uevent
        return bound

    monkeypatch.setattr(node.host, "bind_driver", bind_then_assess)
    ref = claim_for(claims, "dpdk", NET_VF, driver="vfio-pci")
    client = kubelet.register()
    assert client.prepare(ref).claims[ref.uid].error == ""
    assert during == [0]
    assert node.host.vf(NET_VF).driver == "vfio-pci"
    assert health.assess() == 0
    agent.reconcile("test")
    assert health_of(agent, NET_VF) == ("intel.com/intel_net", Health.HEALTHY)
    time.sleep(0.3)  # wake-ups of the health watch on the bind's events
    assert health_of(agent, NET_VF) == ("intel.com/intel_net", Health.HEALTHY)
    assert client.unprepare(ref).claims[ref.uid].error == ""
    assert health.assess() == 0
    assert health_of(agent, NET_VF) == ("intel.com/intel_net", Health.HEALTHY)
    time.sleep(0.3)
    # the slices never changed: the VF in them, with the pool's driver, same generation
    assert wait_generation(api) == generation
    (device,) = [d for s in api.slices.values() for d in s["spec"]["devices"] if d["name"] == name]
    assert device["attributes"]["driver"] == {"string": "iavf"}
    real_bind(NET_VF, DeviceType.VFIO)  # not a claim's doing
    assert health.assess() == 1
    assert health_of(agent, NET_VF) == ("intel.com/intel_net", Health.UNHEALTHY)
    api.wait_published(lambda found: name not in found)  # it leaves the slices
    assert wait_generation(api) > generation


def wait_generation(api: MemoryApi) -> int:
    """The pool's generation once the slices are published."""
    deadline = time.monotonic() + 10
    while not api.slices:
        assert time.monotonic() < deadline, "never published"
        time.sleep(0.05)
    return max(int(s["spec"]["pool"]["generation"]) for s in api.slices.values())
