"""``sriovlib agent`` against a real kubelet and API server, on the "mixed" example node.

The node's i40e PFs have 12 iavf VFs (pool ``kt_net``) and 4 on vfio-pci (``kt_dpdk``),
6 + 2 per PF. Every behaviour the kubelet sees is checked in the API (node Allocatable,
pod status) and in the container (what it prints), never in the agent alone.
"""

from __future__ import annotations

import json
import re
import subprocess
import sys
import time
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc
import pytest

from sriovlib.agent.api import deviceplugin_pb2 as pb
from sriovlib.agent.api import deviceplugin_pb2_grpc as pb_grpc
from sriovlib.agent.kubelet import unix_target
from sriovlib.agent.podresources import PodResourcesClient
from sriovlib.allocation import AllocationStore, Owner
from sriovlib.models import PciAddress
from sriovlib.testing.kube import KubeCluster

pytestmark = pytest.mark.kube

CONFIG = {
    "resourceList": [
        {"resourceName": "kt_net", "selectors": {"vendors": ["8086"], "drivers": ["iavf"]}},
        {"resourceName": "kt_dpdk", "selectors": {"drivers": ["vfio-pci"]}},
    ]
}
NET, DPDK = "intel.com/kt_net", "intel.com/kt_dpdk"


@pytest.fixture(scope="module")
def layout() -> dict[str, Any]:
    """The example node as ``sriovlib list --json`` sees it: VF address → (PF, IOMMU group)."""
    out = subprocess.run(
        [sys.executable, "-m", "sriovlib", "list", "--example", "mixed", "--json"],
        check=True, capture_output=True, text=True,
    ).stdout  # fmt: skip
    return {
        vf["address"]: (pf["name"], vf["iommu_group"], vf["driver"])
        for pf in json.loads(out)["pfs"]
        for vf in pf["vfs"]
    }


def _env(log: str) -> dict[str, str]:
    return dict(line.split("=", 1) for line in log.splitlines() if line.startswith("PCIDEVICE_"))


def test_pools_register_and_node_allocatable_shows_them(cluster: KubeCluster, agent_factory: Any):
    agent = agent_factory(CONFIG)
    registered = agent.wait_event("registered", count=2)
    assert {r["resource"] for r in registered} == {NET, DPDK}
    cluster.wait_allocatable(NET, "12")
    cluster.wait_allocatable(DPDK, "4")
    capacity = cluster.node()["status"]["capacity"]
    assert (capacity[NET], capacity[DPDK]) == ("12", "4")
    described = cluster.kubectl("describe", "node", cluster.node_name)
    allocatable = described.split("Allocatable:", 1)[1].split("System Info:", 1)[0]
    assert re.search(rf"{NET}:\s+12\n", allocatable)


def test_a_pod_gets_env_and_device_files(
    cluster: KubeCluster, agent_factory: Any, layout: dict[str, Any]
):
    agent = agent_factory(CONFIG)
    cluster.wait_allocatable(DPDK, "4")
    script = (
        "env | grep ^PCIDEVICE_; for f in /dev/vfio/*; do echo dev: ${f##*/}; done;"
        "test -c /dev/vfio/vfio && echo vfio-is-chardev; true"
    )
    cluster.create(cluster.pod("vf-user", script, limits={NET: 1, DPDK: 1}))
    pod = cluster.wait_pod("vf-user", ("Succeeded", "Failed"))
    log = cluster.pod_log("vf-user")
    assert pod["status"]["phase"] == "Succeeded", (pod["status"], log)
    env = _env(log)
    net, dpdk = env["PCIDEVICE_INTEL_COM_KT_NET"], env["PCIDEVICE_INTEL_COM_KT_DPDK"]
    assert layout[net][2] == "iavf"
    assert layout[dpdk][2] == "vfio-pci"
    info = json.loads(env["PCIDEVICE_INTEL_COM_KT_DPDK_INFO"])
    group = str(layout[dpdk][1])
    assert info[dpdk]["vfio"] == {"mount": "/dev/vfio/vfio", "dev-mount": f"/dev/vfio/{group}"}
    assert set(json.loads(env["PCIDEVICE_INTEL_COM_KT_NET_INFO"])) == {net}
    devices = {line[5:] for line in log.splitlines() if line.startswith("dev: ")}
    assert devices == {"vfio", group}  # the container sees its group and nothing else
    assert "vfio-is-chardev" in log
    (allocate,) = [e for e in agent.events("Allocate") if e["resource"] == DPDK]
    assert allocate["devices"] == [[dpdk]]
    devinfo = json.loads(
        (agent.tmp / "devinfo" / f"intel.com-kt_dpdk-{dpdk}-device.json").read_text()
    )
    assert devinfo["pci"]["pci-address"] == dpdk  # what Multus hands the CNI plugin


def test_asking_for_more_than_is_free_is_rejected_at_admission(
    cluster: KubeCluster, agent_factory: Any
):
    agent = agent_factory(CONFIG)
    cluster.wait_allocatable(DPDK, "4")
    cluster.create(cluster.pod("greedy", "true", limits={DPDK: 5}))
    status = cluster.wait_pod("greedy", ("Failed", "Succeeded"))["status"]
    assert status["phase"] == "Failed"
    assert status["reason"] == "UnexpectedAdmissionError"
    assert "Requested: 5, Available: 4" in status["message"]
    assert not agent.events("Allocate")  # refused by the kubelet, before the plugin


def test_kubelet_restart_reregisters_and_capacity_comes_back(
    cluster: KubeCluster, agent_factory: Any
):
    agent = agent_factory(CONFIG)
    cluster.wait_allocatable(NET, "12")
    agent.wait_event("registered", count=2)
    cluster.restart_kubelet()  # it deletes every plugin socket and makes a new kubelet.sock
    again = agent.wait_event("registered", count=4, timeout=60)
    assert {r["resource"] for r in again[2:]} == {NET, DPDK}
    cluster.wait_allocatable(NET, "12")
    cluster.wait_allocatable(DPDK, "4")
    cluster.create(cluster.pod("after-restart", "env | grep ^PCIDEVICE_", limits={NET: 1}))
    assert cluster.wait_pod("after-restart", ("Succeeded", "Failed"))["status"]["phase"] == (
        "Succeeded"
    )
    assert "PCIDEVICE_INTEL_COM_KT_NET=" in cluster.pod_log("after-restart")


def test_agent_restart_brings_capacity_back(cluster: KubeCluster, agent_factory: Any):
    agent = agent_factory(CONFIG)
    cluster.wait_allocatable(NET, "12")
    assert agent.stop() == 0
    cluster.wait_allocatable(NET, "0")  # the kubelet saw the plugin go
    assert not list(cluster.device_plugin_dir.glob("intel.com_*.sock"))
    agent.start()
    cluster.wait_allocatable(NET, "12")
    cluster.wait_allocatable(DPDK, "4")


@pytest.mark.parametrize("policy", ["pack", "spread"])
def test_preferred_allocation_is_asked_for_and_honoured(
    cluster: KubeCluster, agent_factory: Any, layout: dict[str, Any], policy: str
):
    agent = agent_factory(CONFIG, "--allocation-policy", policy)
    cluster.wait_allocatable(NET, "12")
    cluster.create(cluster.pod("pair", "env | grep ^PCIDEVICE_", limits={NET: 2}))
    assert cluster.wait_pod("pair", ("Succeeded", "Failed"))["status"]["phase"] == "Succeeded"
    (preferred,) = [e for e in agent.events("GetPreferredAllocation") if e["resource"] == NET]
    (allocate,) = [e for e in agent.events("Allocate") if e["resource"] == NET]
    assert sorted(allocate["devices"][0]) == sorted(preferred["devices"])
    given = _env(cluster.pod_log("pair"))["PCIDEVICE_INTEL_COM_KT_NET"].split(",")
    assert sorted(given) == sorted(preferred["devices"])
    pfs = {layout[address][0] for address in given}
    assert len(pfs) == (1 if policy == "pack" else 2)


def test_a_config_change_reaches_node_allocatable_without_a_restart(
    cluster: KubeCluster, agent_factory: Any
):
    """The running agent reloads its config: kt_net narrowed to one PF drops to 6 on the
    same registration, kt_dpdk removed from the config drops to 0."""
    agent = agent_factory(CONFIG)
    cluster.wait_allocatable(NET, "12")
    cluster.wait_allocatable(DPDK, "4")
    narrower = {"resourceList": [{**CONFIG["resourceList"][0]}]}
    narrower["resourceList"][0]["selectors"] = {
        "vendors": ["8086"], "drivers": ["iavf"], "pfNames": ["enp59s0f0"],
    }  # fmt: skip
    (agent.tmp / "config.new").write_text(json.dumps(narrower))
    (agent.tmp / "config.new").replace(agent.tmp / "config.json")
    cluster.wait_allocatable(NET, "6")
    cluster.wait_allocatable(DPDK, "0")
    assert agent.proc.poll() is None
    # the reload registered no pool again (the kubelet may drop one, and the agent then
    # registers it again, when the previous test's agent's stream ends late)
    registered = [e["resource"] for e in agent.events("registered")]
    dropped = [
        e["resource"] for e in agent.events("the kubelet left the resource: registering again")
    ]
    assert sorted(registered) == sorted([NET, DPDK, *dropped])


def test_orphan_reclaim_asks_the_kubelets_pod_resources_api(
    cluster: KubeCluster, agent_factory: Any, layout: dict[str, Any], tmp_path: Path
):
    """The real kubelet's pod-resources API names the device a running pod got; of two
    allocation records whose namespaces exist, the one of a device no pod holds is
    reclaimed, the one of the pod's device is kept."""
    socket = cluster.kubelet_root / "pod-resources" / "kubelet.sock"
    agent = agent_factory(CONFIG, "--pod-resources-socket", str(socket), "--reclaim-grace", "0.1")
    cluster.wait_allocatable(NET, "12")
    cluster.create(cluster.pod("holder", "sleep 600", limits={NET: 1}))
    cluster.wait_pod("holder", ("Running",))
    held = PodResourcesClient(socket).held_devices()
    assert held is not None, "the kubelet's pod-resources API does not answer"
    (device,) = held[NET]
    (allocate,) = [e for e in agent.events("Allocate") if e["resource"] == NET]
    assert allocate["devices"] == [[device]]
    free = next(
        a for a, (_, _, driver) in sorted(layout.items()) if driver == "iavf" and a != device
    )
    alive = tmp_path / "netns-of-a-live-pod"
    alive.touch()  # the namespace sign alone would keep both records
    store = AllocationStore(agent.tmp / "state" / "allocations")
    store.allocate_vf(Owner("sandbox-holder", "net1", str(alive)), PciAddress.parse(device))
    store.allocate_vf(Owner("sandbox-gone", "net1", str(alive)), PciAddress.parse(free))
    (reclaimed,) = agent.wait_event("orphan reclaimed")
    assert (reclaimed["vf"], reclaimed["reason"]) == (free, "not-in-pod-resources")
    time.sleep(5)  # two more wake-ups, every 2 s: the pod's device is judged held again
    assert [str(r.vf) for r in store.records()] == [device]
    assert len(agent.events("orphan reclaimed")) == 1
    assert len(agent.events("pod-resources API answers")) == 1
    assert not agent.events(
        "pod-resources API not reachable: orphans judged by their network namespace only"
    )


class _EarlierPlugin(pb_grpc.DevicePluginServicer):
    """Another device plugin of the same resource, on a socket of its own (as
    sriov-network-device-plugin serves it before an upgrade): one healthy device."""

    def __init__(self, directory: Path, resource: str) -> None:
        self.path = directory / "earlier-plugin.sock"
        self.server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_DevicePluginServicer_to_server(self, self.server)  # type: ignore[no-untyped-call]
        self.server.add_insecure_port(unix_target(self.path))
        self.server.start()
        request = pb.RegisterRequest(version="v1beta1", endpoint=self.path.name,
                                     resource_name=resource)  # fmt: skip
        with grpc.insecure_channel(unix_target(directory / "kubelet.sock")) as channel:
            pb_grpc.RegistrationStub(channel).Register(request, timeout=5)  # type: ignore[no-untyped-call]

    def GetDevicePluginOptions(self, request: Any, context: Any) -> Any:
        return pb.DevicePluginOptions()

    def ListAndWatch(self, request: Any, context: Any) -> Any:
        yield pb.ListAndWatchResponse(devices=[pb.Device(ID="earlier-0", health="Healthy")])
        while context.is_active():
            time.sleep(0.2)

    def stop(self) -> None:
        self.server.stop(0).wait(5)
        self.path.unlink(missing_ok=True)


def test_taking_a_resource_over_from_an_earlier_plugin_survives_its_removal(
    cluster: KubeCluster, agent_factory: Any
):
    """The upgrade order of docs/kubernetes.md: the agent registers a resource another
    plugin serves, then that plugin is removed. The kubelet then drops the *current*
    plugin of the resource (its device manager keys clients by name); the agent sees
    its stream left and registers again, so the node keeps the agent's devices."""
    earlier = _EarlierPlugin(cluster.device_plugin_dir, NET)
    try:
        cluster.wait_allocatable(NET, "1")
        agent = agent_factory(CONFIG)
        cluster.wait_allocatable(NET, "12")
    finally:
        earlier.stop()
    (event,) = agent.wait_event("the kubelet left the resource: registering again")
    assert event["resource"] == NET
    cluster.wait_allocatable(NET, "12", timeout=15)
    time.sleep(5)  # and it stays: no second drop, no registration loop
    assert cluster.allocatable(NET) == "12"
    assert len(agent.events("registered")) == 3  # both pools, then NET once more
