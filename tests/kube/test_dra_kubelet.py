"""The agent's DRA driver against the REAL kubelet and kube-scheduler (v1.34, the kube
tier's cluster, its kube-controller-manager with the resource-claim controller started
for this module): ``sriovlib agent --dra`` as a process on the "mixed" example node's
fake kernel registers through the kubelet's plugin watcher and publishes its VFs; a pod
without ``nodeName`` whose ResourceClaimTemplate selects VFs of one PF by a CEL
expression is scheduled by the scheduler's DRA plugin, its claim made by the
resource-claim controller, prepared by the kubelet through the driver, and runs; its
deletion unprepares the claim and restores the VF. A claim that matches nothing leaves
its pod unschedulable with the scheduler's reason.

The fake kernel lives in the agent's process: what it holds is seen through the agent's
log (``VF settings applied``/``restored`` are written after the host read the settings
back) and its record of prepared claims.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from datetime import UTC, datetime
from typing import Any

import grpc
import pytest

from sriovlib.agent.api import podresources_pb2 as pr
from sriovlib.agent.api import podresources_pb2_grpc as pr_grpc
from sriovlib.agent.draslices import SLICES
from sriovlib.agent.kubeapi import KubeClient, load_kubeconfig
from sriovlib.agent.kubelet import unix_target
from sriovlib.testing.kube import KubeCluster

from .conftest import AgentProcess, wait_for

pytestmark = pytest.mark.kube

DRIVER = "sriov.sriovlib.io"
CLASS = "sriovlib-vf"
PF = "enp59s0f1"  # the second i40e PF of the example node: 6 iavf VFs
#: One pool, the iavf VFs of both i40e PFs (12): every pool is DRA's with --dra alone.
CONFIG = {
    "resourceList": [
        {"resourceName": "kd_net", "selectors": {"vendors": ["8086"], "drivers": ["iavf"]}},
    ]
}
NET_VFS = 12
#: The class turns spoof checking off, the claim asks for a VLAN: both reach the VF.
CLASS_PARAMETERS = {"spoofchk": "off"}
CLAIM_PARAMETERS = {"vlan": 42}


@pytest.fixture(scope="module")
def dra_cluster(kube_cluster: KubeCluster) -> Iterator[KubeCluster]:
    """The session's cluster with kube-controller-manager (the resource-claim
    controller) and kube-scheduler running, stopped again after the module if they were
    not running before; the module's objects deleted."""
    started = not kube_cluster.controllers
    kube_cluster.start_controllers()
    device_class = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": CLASS},
        "spec": {
            "selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}],
            "config": [{"opaque": {"driver": DRIVER, "parameters": CLASS_PARAMETERS}}],
        },
    }
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(device_class))
    yield kube_cluster
    kube_cluster.kubectl("delete", "pods", "--all", "--grace-period=1", "--wait=true")
    kube_cluster.kubectl("delete", "resourceclaimtemplates,resourceclaims", "--all", "--wait=true")
    kube_cluster.kubectl("delete", "deviceclass", CLASS, "--ignore-not-found")
    if started:
        kube_cluster.stop_controllers()


@pytest.fixture(scope="module")
def api(dra_cluster: KubeCluster) -> KubeClient:
    return KubeClient(load_kubeconfig(dra_cluster.kubeconfig))


def node_devices(api: KubeClient, node: str) -> dict[str, dict[str, Any]]:
    """The devices of the node's slices of the driver, by name."""
    found = api.get(SLICES, query={"fieldSelector": f"spec.nodeName={node},spec.driver={DRIVER}"})
    return {d["name"]: d for s in found["items"] for d in s["spec"]["devices"]}


@pytest.fixture(scope="module")
def agent(
    dra_cluster: KubeCluster, api: KubeClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    """``sriovlib agent --dra`` serving the kubelet's real plugin directories; its
    slices published. Stopped after the module: exit 0, its sockets gone."""
    cluster = dra_cluster
    tmp = tmp_path_factory.mktemp("dra-kubelet") / "agent"
    process = AgentProcess(
        cluster, tmp, CONFIG,
        "--dra",
        "--dra-registry-dir", str(cluster.kubelet_root / "plugins_registry"),
        "--dra-plugins-dir", str(cluster.kubelet_root / "plugins"),
        "--cdi-dir", str(tmp / "cdi"),
        "--kubeconfig", str(cluster.kubeconfig),
        "--node-name", cluster.node_name,
        "--pod-resources-socket", "off",
    )  # fmt: skip
    process.start(wait=False)
    try:
        process.wait_event("DRA driver registered")
        wait_for("the slices", lambda: len(node_devices(api, cluster.node_name)) == NET_VFS)
        yield process
    finally:
        status = process.stop()
    assert status == 0, process.log.read_text()[-3000:]
    assert not (cluster.kubelet_root / "plugins_registry" / f"{DRIVER}-reg.sock").exists()
    assert "Traceback" not in process.log.read_text()


def claim_template(name: str, pf: str) -> dict[str, Any]:
    """A ResourceClaimTemplate asking for one VF of the class on PF *pf* (by CEL), with
    the claim's VF settings."""
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "spec": {
                "devices": {
                    "requests": [
                        {
                            "name": "vf",
                            "exactly": {
                                "deviceClassName": CLASS,
                                "selectors": [
                                    {
                                        "cel": {
                                            "expression": f'device.attributes["{DRIVER}"]'
                                            f'.pfName == "{pf}"'
                                        }
                                    }
                                ],
                            },
                        }
                    ],
                    "config": [
                        {
                            "requests": ["vf"],
                            "opaque": {"driver": DRIVER, "parameters": CLAIM_PARAMETERS},
                        }
                    ],
                }
            }
        },
    }


def claim_pod(cluster: KubeCluster, name: str, template: str, command: str) -> dict[str, Any]:
    """A pod left to the scheduler (no nodeName) whose container uses the claim made
    from *template*."""
    pod = cluster.pod(name, command, scheduled=True)
    pod["spec"]["resourceClaims"] = [{"name": "net", "resourceClaimTemplateName": template}]
    pod["spec"]["containers"][0]["resources"] = {"claims": [{"name": "net"}]}
    return pod


def claim_name_of(cluster: KubeCluster, pod: str) -> str:
    """The ResourceClaim the resource-claim controller made for the pod."""

    def named() -> str | None:
        statuses = cluster.get("pod", pod).get("status", {}).get("resourceClaimStatuses", [])
        return next((s.get("resourceClaimName") for s in statuses if s["name"] == "net"), None)

    return wait_for(f"pod {pod}'s claim", named)


def claim_gone(cluster: KubeCluster, name: str) -> bool:
    out = cluster.kubectl("get", "resourceclaim", name, "-n", "default", "--ignore-not-found")
    return not out.strip()


def pod_dynamic_resources(cluster: KubeCluster, pod: str) -> list[pr.DynamicResource]:
    """What the kubelet's pod-resources API lists for the pod's container's claims."""
    socket = cluster.kubelet_root / "pod-resources" / "kubelet.sock"
    with grpc.insecure_channel(unix_target(socket)) as channel:
        stub = pr_grpc.PodResourcesListerStub(channel)  # type: ignore[no-untyped-call]
        answer = stub.List(pr.ListPodResourcesRequest(), timeout=10)
    for found in answer.pod_resources:
        if (found.namespace, found.name) == ("default", pod):
            (container,) = found.containers
            return list(container.dynamic_resources)
    raise AssertionError(f"pod {pod} is not in the kubelet's pod-resources API")


def containerd_applies_cdi() -> bool:
    """CDI devices in the CRI (ContainerConfig.CDIDevices) came with containerd 1.7."""
    argv = ["containerd", "--version"]
    out = subprocess.run(argv, capture_output=True, text=True, check=True).stdout
    match = re.search(r" v?(\d+)\.(\d+)\.", out)
    assert match, out
    return (int(match[1]), int(match[2])) >= (1, 7)


def diagnosis(cluster: KubeCluster, agent: AgentProcess, pod: str) -> str:
    """What a failed pod needs looked at: its status, its events, the driver's refusals,
    the kubelet's lines about it."""
    lines = [json.dumps(cluster.get("pod", pod).get("status"), indent=1)]
    lines += cluster.events(pod)
    lines += [json.dumps(e) for e in agent.events() if e["level"] != "info"][-10:]
    kubelet = cluster.log_path("kubelet").read_text(errors="replace").splitlines()
    lines += [line for line in kubelet if pod in line or "dra" in line.lower()][-30:]
    return "\n".join(lines)


def _seconds(stamp: str) -> float:
    return datetime.strptime(stamp, "%Y-%m-%dT%H:%M:%S.%fZ").replace(tzinfo=UTC).timestamp()


def test_the_kubelets_plugin_watcher_registers_the_driver(
    dra_cluster: KubeCluster, agent: AgentProcess, api: KubeClient
) -> None:
    """The kubelet found the registration socket in its plugins_registry, called GetInfo
    and NotifyRegistrationStatus(registered=true); the slices hold the 12 iavf VFs with
    the attribute the claims select on."""
    registration = dra_cluster.kubelet_root / "plugins_registry" / f"{DRIVER}-reg.sock"
    kubelet_log = dra_cluster.log_path("kubelet").read_text(errors="replace")
    assert any(
        "Adding socket path or updating timestamp to desired state cache" in line
        and str(registration) in line
        for line in kubelet_log.splitlines()
    ), dra_cluster.tail("kubelet", 40)
    assert "OperationExecutor.RegisterPlugin started" in kubelet_log
    (registered,) = agent.events("DRA driver registered")
    assert registered["driver"] == DRIVER
    assert not agent.events("DRA driver registration failed")
    devices = node_devices(api, dra_cluster.node_name)
    on_pf = [d for d in devices.values() if d["attributes"]["pfName"] == {"string": PF}]
    assert len(on_pf) == 6


def test_a_pod_with_a_claim_template_is_scheduled_prepared_running_then_unprepared(
    dra_cluster: KubeCluster, agent: AgentProcess, api: KubeClient
) -> None:
    """Pod created (no nodeName) → the resource-claim controller makes its claim from
    the template → the scheduler's DRA plugin allocates a VF of PF enp59s0f1 (the CEL
    selector) and binds the pod → the kubelet calls NodePrepareResources → the pod runs.
    Then deleted: NodeUnprepareResources, the CDI spec and the record gone, the VF's
    settings restored, the claim deleted."""
    cluster = dra_cluster
    cluster.create(claim_template("vf-on-pf1", PF))
    on_pf = {
        name
        for name, d in node_devices(api, cluster.node_name).items()
        if d["attributes"]["pfName"] == {"string": PF}
    }
    manifest = claim_pod(cluster, "dra-app", "vf-on-pf1", "env; sleep 3600")
    created_wall = time.time()
    created = time.monotonic()
    cluster.create(manifest)
    pod = cluster.wait_pod("dra-app", ("Running", "Failed", "Succeeded"), timeout=120)
    to_running = time.monotonic() - created
    assert pod["status"]["phase"] == "Running", diagnosis(cluster, agent, "dra-app")
    assert pod["spec"]["nodeName"] == cluster.node_name  # the scheduler placed it

    name = claim_name_of(cluster, "dra-app")
    claim = cluster.get("resourceclaim", name)
    uid = claim["metadata"]["uid"]
    assert [o["name"] for o in claim["metadata"]["ownerReferences"]] == ["dra-app"]
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert (result["request"], result["driver"], result["pool"]) == (
        "vf",
        DRIVER,
        cluster.node_name,
    )
    assert result["device"] in on_pf  # the CEL selector: a VF of that PF
    config = claim["status"]["allocation"]["devices"]["config"]
    assert [(c["source"], c["opaque"]["parameters"]) for c in config] == [
        ("FromClass", CLASS_PARAMETERS),
        ("FromClaim", CLAIM_PARAMETERS),
    ]
    assert [r["name"] for r in claim["status"]["reservedFor"]] == ["dra-app"]

    # the kubelet asked our driver
    (prepared,) = [e for e in agent.events("NodePrepareResources") if e["uid"] == uid]
    assert prepared["claim"] == f"default/{name}"
    (address,) = prepared["devices"]
    assert result["device"] == "vf-" + address.replace(":", "-").replace(".", "-")
    (applied,) = [e for e in agent.events("VF settings applied") if e["vf"] == address]
    assert applied["settings"] == {"vlan": 42, "qos": 0, "vlan_proto": "802.1q",
                                   "spoofchk": False}  # fmt: skip
    records = agent.tmp / "state" / "dra" / DRIVER / "claims"
    record = json.loads((records / f"{uid}.json").read_text())
    assert record["complete"] is True
    before = record["devices"][0]["previous"]["vf_state"]
    assert (before["vlan"], before["spoofchk"]) == (0, True)

    # our CDI spec, and the kubelet's claim info for the container (what it hands the
    # CRI as ContainerConfig.CDIDevices) naming its device
    cdi_id = f"{DRIVER}/vf={uid}-{result['device']}"
    spec_file = agent.tmp / "cdi" / f"sriovlib-{DRIVER}-{uid}.json"
    spec = json.loads(spec_file.read_text())
    assert spec["kind"] == f"{DRIVER}/vf"
    assert [d["name"] for d in spec["devices"]] == [f"{uid}-{result['device']}"]
    env = spec["devices"][0]["containerEdits"]["env"]
    assert f"PCIDEVICE_SRIOV_SRIOVLIB_IO_VF={address}" in env
    (dynamic,) = pod_dynamic_resources(cluster, "dra-app")
    assert (dynamic.claim_name, dynamic.claim_namespace) == (name, "default")
    (resource,) = dynamic.claim_resources
    assert (resource.driver_name, resource.pool_name, resource.device_name) == (
        DRIVER,
        cluster.node_name,
        result["device"],
    )
    assert [d.name for d in resource.cdi_devices] == [cdi_id]
    log = wait_for("the container's env", lambda: cluster.pod_log("dra-app"), timeout=20)
    assert "HOSTNAME=dra-app" in log
    if containerd_applies_cdi():
        assert f"PCIDEVICE_SRIOV_SRIOVLIB_IO_VF={address}" in log
    else:  # containerd 1.6 drops the CRI's CDIDevices: the spec's env never arrives
        assert "PCIDEVICE_" not in log

    prepare_at = _seconds(prepared["time"]) - created_wall
    print(
        f"\nclaim-to-running pod: {to_running:.2f} s (pod created -> Running; "
        f"NodePrepareResources answered {prepare_at:.2f} s after the create, "
        f"in {prepared['ms']} ms)"
    )

    cluster.delete_pod("dra-app")
    unprepared = wait_for(
        "NodeUnprepareResources",
        lambda: [e for e in agent.events("NodeUnprepareResources") if e["uid"] == uid],
    )
    assert unprepared[0]["claim"] == f"default/{name}"
    assert not spec_file.exists()
    assert not (records / f"{uid}.json").exists()
    (restored,) = [e for e in agent.events("VF settings restored") if e["vf"] == address]
    # only what differs from the snapshot is written back: the kernel held both
    assert {"vf_vlan", "vf_spoofchk"} <= set(restored["restored"]), restored
    wait_for(f"claim {name} deleted", lambda: claim_gone(cluster, name))
    cluster.kubectl("delete", "resourceclaimtemplate", "vf-on-pf1")


def test_a_kubelet_restart_registers_the_driver_again_and_the_slices_come_back(
    dra_cluster: KubeCluster, agent: AgentProcess, api: KubeClient
) -> None:
    """The kubelet deletes every slice of its node when it starts, and its plugin
    watcher registers the driver again from the socket left in plugins_registry: the
    slices are back within seconds (the agent checks them at every wake-up after a
    registration), not at its 30-second re-check."""
    cluster = dra_cluster
    changed = "ResourceSlices changed by someone else: publishing them again"
    before, seen = len(agent.events("DRA driver registered")), len(agent.events(changed))
    started = time.monotonic()
    cluster.restart_kubelet()
    agent.wait_event("DRA driver registered", count=before + 1, timeout=60)
    registered = time.monotonic() - started

    def wiped_and_back() -> bool:
        published = len(node_devices(api, cluster.node_name)) == NET_VFS
        return published and len(agent.events(changed)) > seen

    wait_for("the slices wiped and back", wiped_and_back, timeout=25)
    back = time.monotonic() - started
    print(
        f"\nkubelet restart: driver registered again {registered:.1f} s, "
        f"slices back {back:.1f} s after the restart began"
    )
    assert back - registered < 10  # the re-check every 30 s would take 15 on average


def test_a_claim_matching_no_device_leaves_its_pod_unschedulable(
    dra_cluster: KubeCluster, agent: AgentProcess
) -> None:
    """A template selecting a PF the node does not have: the claim is made but never
    allocated, the pod stays Pending with the scheduler's reason, the driver is never
    asked."""
    cluster = dra_cluster
    cluster.create(claim_template("vf-on-nothing", "no-such-pf"))
    cluster.create(claim_pod(cluster, "dra-nowhere", "vf-on-nothing", "true"))

    def unschedulable() -> dict[str, Any] | None:
        conditions = cluster.get("pod", "dra-nowhere").get("status", {}).get("conditions", [])
        return next(
            (c for c in conditions if c["type"] == "PodScheduled" and c["status"] == "False"),
            None,
        )

    condition = wait_for("the scheduler's verdict", unschedulable)
    assert condition["reason"] == "Unschedulable"
    assert "cannot allocate all claims" in condition["message"], condition
    name = claim_name_of(cluster, "dra-nowhere")
    time.sleep(2)  # a retry of the scheduler would not change it
    pod = cluster.get("pod", "dra-nowhere")
    assert pod["status"]["phase"] == "Pending"
    assert "nodeName" not in pod["spec"]
    claim = cluster.get("resourceclaim", name)
    assert "allocation" not in claim.get("status", {})
    assert not [e for e in agent.events("NodePrepareResources") if e["claim"].endswith(name)]
    assert any("cannot allocate all claims" in m for m in cluster.events("dra-nowhere"))
    cluster.delete_pod("dra-nowhere")
    wait_for(f"claim {name} deleted", lambda: claim_gone(cluster, name))
    cluster.kubectl("delete", "resourceclaimtemplate", "vf-on-nothing")


def test_a_bad_claim_configuration_is_in_the_pods_and_the_claims_events(
    dra_cluster: KubeCluster, agent: AgentProcess
) -> None:
    """A template whose parameters have an unknown key: the scheduler allocates the
    claim, the kubelet's NodePrepareResources gets the driver's one-line error and shows
    it in the pod's events, the agent posts it as one Warning Event on the
    ResourceClaim (``kubectl describe resourceclaim`` lists it) however often the kubelet
    retries, and no VF is changed; the pod deleted, the claim goes."""
    cluster = dra_cluster
    template = claim_template("vf-bad", PF)
    template["spec"]["spec"]["devices"]["config"][0]["opaque"]["parameters"] = {"vlanQos": 3}
    cluster.create(template)
    applied = len(agent.events("VF settings applied"))
    cluster.create(claim_pod(cluster, "dra-bad", "vf-bad", "true"))
    name = claim_name_of(cluster, "dra-bad")
    expected = (
        f"claim default/{name}: status.allocation.devices.config[1].opaque.parameters: "
        "unknown key 'vlanQos' (did you mean 'vlanQoS'?)"
    )
    refusals = agent.wait_event("NodePrepareResources refused", count=2, timeout=90)
    assert refusals[-1]["error"] == expected, refusals[-1]
    pod_events = wait_for(
        "the kubelet's event", lambda: [m for m in cluster.events("dra-bad") if expected in m]
    )
    print(f"pod event: {pod_events[0]}")
    uid = cluster.get("resourceclaim", name)["metadata"]["uid"]

    def claim_events() -> list[dict[str, Any]] | None:
        out = cluster.kubectl("get", "events", "-n", "default", "-o", "json",
                              f"--field-selector=involvedObject.uid={uid}")  # fmt: skip
        items: list[dict[str, Any]] = json.loads(out)["items"]
        return items or None

    (event,) = wait_for("the claim's event", claim_events)
    assert (event["type"], event["reason"], event["message"]) == (
        "Warning",
        "PrepareFailed",
        expected,
    )
    assert event["involvedObject"]["kind"] == "ResourceClaim"
    assert event["source"] == {"component": DRIVER, "host": cluster.node_name}
    described = cluster.kubectl("describe", "resourceclaim", name, "-n", "default")
    print(described.split("Events:")[-1])
    assert "PrepareFailed" in described.split("Events:")[-1]
    assert "unknown key 'vlanQos' (did you mean 'vlanQoS'?)" in described.split("Events:")[-1]
    agent.wait_event("NodePrepareResources refused", count=len(refusals) + 1, timeout=90)
    assert len(claim_events() or []) == 1  # the kubelet's retries: still one Event
    assert len(agent.events("VF settings applied")) == applied
    assert cluster.get("pod", "dra-bad")["status"]["phase"] == "Pending"
    cluster.delete_pod("dra-bad")
    wait_for(f"claim {name} deleted", lambda: claim_gone(cluster, name))
    cluster.kubectl("delete", "resourceclaimtemplate", "vf-bad")
