"""VFs on demand on the REAL igb PF of the VM, with the real kubelet, kube-scheduler and
resource-claim controller (v1.34) of a cluster running in the same VM.

The flow of ``test_dra_ondemand.py`` on the guest's own igb driver instead of the fake
kernel: the PF at 0 VFs, ``sriovlib agent --policy … --dra`` with the policy giving it
``vfBudget: {min: 0, max: 2}``; the slice empty; a pod whose claim template selects the
PF makes the agent write ``sriov_numvfs`` 1 (igb creates the VF, igbvf binds it), the
slice gains that real VF, the scheduler allocates it, the kubelet prepares it, the pod
runs. Deleted, the VF is withdrawn from the slice and ``sriov_numvfs`` is 0 again after
the idle period. The steps run in the guest's persistent interpreter; the figures are
printed (``pytest -s``).
"""

from __future__ import annotations

import json
import sys
import time
from typing import Any

import pytest

from sriovlib.testing.clienttools import ToolUnavailable
from sriovlib.testing.drakubelet import device_name_of
from sriovlib.testing.kubebuild import kube_tools
from sriovlib.testing.vm import SriovVM

from .test_dra_vm import SETUP, TEARDOWN

pytestmark = [pytest.mark.kube, pytest.mark.vm]

DRIVER = "sriov.sriovlib.io"
CLASS = "sriovlib-vf"
IDLE = 10

START_STEP = r"""# STEP: 0 VFs, the budget policy, the cluster, the DeviceClass
from sriovlib.agent.kubeapi import KubeClient, NotFound, load_kubeconfig
sh(*sriovlib, "numvfs", PF, "0", "--force")
(work / "policy.json").write_text(json.dumps({"policies": [{
    "name": "on-demand", "resourceName": "od_igb",
    "vfBudget": {"min": 0, "max": 2}, "nicSelector": {"pfNames": [PF]}}]}))
started = time.monotonic()
cluster = KubeCluster(kube_tools(progress=False), node_ip="192.0.2.10", timeout_scale=4,
                      progress=False, node_paths=True, controllers=True)
cluster.start()
timed("cluster_start", started)
api = KubeClient(load_kubeconfig(cluster.kubeconfig), timeout=30)
api.create("/apis/resource.k8s.io/v1/deviceclasses", {
    "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": P["class"]},
    "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]}})
query = {"fieldSelector": f"spec.nodeName={cluster.node_name},spec.driver={DRIVER}"}


def numvfs():
    return int(Path(f"/sys/class/net/{PF}/device/sriov_numvfs").read_text())


def devices():
    return sorted(d["name"] for s in api.get(SLICES, query=query)["items"]
                  for d in s["spec"].get("devices") or ())


result = {"numvfs": numvfs(), "kubelet": cluster.node()["status"]["nodeInfo"]["kubeletVersion"],
          "node": cluster.node_name}
"""

AGENT_STEP = r"""# STEP: the agent with --policy and --dra: registered, its empty slice
argv = [sys.executable, "-m", "sriovlib.agent",
        "--policy", str(work / "policy.json"), "--dra", "--dra-idle-seconds", str(P["idle"]),
        "--kubeconfig", str(cluster.kubeconfig), "--node-name", cluster.node_name,
        "--dra-registry-dir", str(cluster.kubelet_root / "plugins_registry"),
        "--dra-plugins-dir", str(cluster.kubelet_root / "plugins"),
        "--state-dir", str(work / "state"), "--cdi-dir", str(work / "cdi"),
        "--cni-socket", "off", "--metrics-address", "127.0.0.1:0", "--log-format", "json"]
started = time.monotonic()
agent_file = work / "agent.log"  # what events() reads
with open(agent_file, "ab") as log:
    agent = subprocess.Popen(argv, stdin=subprocess.DEVNULL, stderr=log)


def registered():
    if agent.poll() is not None:
        raise RuntimeError(f"the agent exited {agent.returncode}: {events()[-10:]}")
    return events("DRA driver registered")


wait_for("DRA driver registered", registered, 180)
wait_for("the empty slice", lambda: api.get(SLICES, query=query)["items"], 120, every=0.5)
timed("agent_start_to_slice", started)
result = {"devices": devices(), "numvfs": numvfs(), "on_demand": events("VFs on demand")}
"""

POD_STEP = r"""# STEP: a claim template on the PF, a pod: numvfs raised, allocated, Running
api.create("/apis/resource.k8s.io/v1/namespaces/default/resourceclaimtemplates", {
    "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
    "metadata": {"name": "vf-on-demand", "namespace": "default"},
    "spec": {"spec": {"devices": {"requests": [{"name": "vf", "exactly": {
        "deviceClassName": P["class"],
        "selectors": [{"cel": {
            "expression": f'device.attributes["{DRIVER}"].pfName == "{PF}"'}}]}}]}}},
})
manifest = cluster.pod("dra-ondemand", "sleep 3600", scheduled=True)
manifest["spec"]["resourceClaims"] = [{"name": "net",
                                       "resourceClaimTemplateName": "vf-on-demand"}]
manifest["spec"]["containers"][0]["resources"] = {"claims": [{"name": "net"}]}
created_wall = time.time()
started = time.monotonic()
api.create(PODS, manifest)


def running():
    pod = api.get(f"{PODS}/dra-ondemand")
    phase = pod.get("status", {}).get("phase")
    if phase in ("Failed", "Succeeded"):
        raise RuntimeError(f"dra-ondemand {phase}: {pod['status']}")
    return pod if phase == "Running" else None


try:
    pod = wait_for("dra-ondemand Running", running, 300, every=0.1)
except RuntimeError as e:
    pod = api.get(f"{PODS}/dra-ondemand")
    raise RuntimeError(f"{e}; status {json.dumps(pod.get('status'))}; events "
                       f"{cluster.events('dra-ondemand')}; agent {events()[-8:]}") from None
figures["claim_to_running"] = round(time.monotonic() - started, 2)
(status,) = pod["status"]["resourceClaimStatuses"]
claim = api.get(f"{CLAIMS}/{status['resourceClaimName']}")
from datetime import datetime


def at(event):
    stamp = datetime.fromisoformat(event["time"].replace("Z", "+00:00")).timestamp()
    return round(stamp - created_wall, 2)


raised = events("VFs on demand: numvfs changed")
prepared = [e for e in events("NodePrepareResources")
            if e["uid"] == claim["metadata"]["uid"]]
vfs = {}
for link in Path(f"/sys/class/net/{PF}/device").glob("virtfn*"):
    pci = os.path.basename(os.readlink(link))
    vfs[pci] = os.path.basename(os.readlink(f"/sys/bus/pci/devices/{pci}/driver"))
result = {
    "claim": claim, "raised": raised, "raised_at": [at(e) for e in raised],
    "prepared_at": [at(e) for e in prepared], "numvfs": numvfs(), "vfs": vfs,
    "slice": api.get(SLICES, query=query)["items"], "node": pod["spec"].get("nodeName"),
    "failed_first": any("cannot allocate all claims" in m
                        for m in cluster.events("dra-ondemand")),
}
"""

DELETE_STEP = r"""# STEP: the pod deleted: the claim gone, the VF given back after the idle period
api.delete(f"{PODS}/dra-ondemand")


def gone(path):
    try:
        api.get(path)
    except NotFound:
        return True
    return False


claim_name = claim["metadata"]["name"]
wait_for("the claim gone", lambda: gone(f"{CLAIMS}/{claim_name}"), 180)
started = time.monotonic()
lowered = wait_for("the lowering",
                   lambda: events("VFs on demand: numvfs changed")[1:], P["idle"] + 120)
figures["claim_gone_to_lowered"] = round(time.monotonic() - started, 2)
wait_for("no device in the slice", lambda: not devices(), 60)
figures["claim_gone_to_empty_slice"] = round(time.monotonic() - started, 2)
result = {"lowered": lowered, "numvfs": numvfs(), "devices": devices(),
          # the pool has no device while the PF has no VF: said, and expected
          "warnings": [e for e in events() if e.get("level") not in ("info", "debug")
                       and e.get("event") != "pool has no devices on this node: not advertised"]}
api.delete("/apis/resource.k8s.io/v1/namespaces/default/resourceclaimtemplates/vf-on-demand")
"""


def test_a_claim_raises_numvfs_of_the_real_igb_pf_and_idle_it_goes_back(
    vm_node: SriovVM,
) -> None:
    try:
        kube_tools()  # built on the host; the guest sees the cache
    except ToolUnavailable as e:
        pytest.skip(f"kube tier: {e}")
    vm = vm_node
    pf = vm.pf_netdevs[0]
    params = {"pf": pf, "driver": DRIVER, "class": CLASS, "idle": IDLE}
    started = time.monotonic()
    steps: dict[str, float] = {}

    def step(code: str, timeout: float = 600) -> Any:
        name = code.split("STEP: ", 1)[1].split("\n", 1)[0]
        began = time.monotonic()
        print(f"dra-ondemand-vm: {name}...", file=sys.stderr, flush=True)
        out = vm.python(code, timeout=timeout)
        steps[name] = round(time.monotonic() - began, 1)
        return out

    vm.python(f"PARAMS = {json.dumps(params)!r}\n" + SETUP)
    torn_down: dict[str, Any] = {}
    try:
        begun = step(START_STEP)
        assert begun["numvfs"] == 0
        assert begun["kubelet"].startswith("v1.34."), begun
        node = begun["node"]

        served = step(AGENT_STEP, timeout=400)
        assert served["devices"] == [], served  # no VF yet: an empty slice
        assert served["numvfs"] == 0
        (started_event,) = served["on_demand"]
        assert started_event["mode"] == "on"
        assert list(started_event["pfs"].values()) == ["0-2"]

        ran = step(POD_STEP, timeout=500)
        assert ran["node"] == node, ran  # placed by the scheduler
        (raised,) = ran["raised"]
        assert (raised["pf"], raised["before"], raised["after"]) == (pf, 0, 1), raised
        assert ran["numvfs"] == 1  # the real sriov_numvfs
        ((address, vf_driver),) = ran["vfs"].items()
        assert vf_driver == "igbvf"
        (result,) = ran["claim"]["status"]["allocation"]["devices"]["results"]
        assert (result["driver"], result["pool"], result["device"]) == (
            DRIVER, node, device_name_of(address),
        )  # fmt: skip
        (published,) = ran["slice"]
        (device,) = published["spec"]["devices"]
        assert device["name"] == device_name_of(address)
        assert device["attributes"]["pfName"] == {"string": pf}
        assert device["attributes"]["driver"] == {"string": "igbvf"}
        assert device["attributes"]["resource.kubernetes.io/pciBusID"] == {"string": address}
        print("\nResourceSlice after the raise (managedFields left out):")
        published["metadata"].pop("managedFields", None)
        print(json.dumps(published, indent=1))

        done = step(DELETE_STEP, timeout=400)
        (lowered,) = done["lowered"]
        assert (lowered["before"], lowered["after"], lowered["direction"]) == (1, 0, "lower")
        assert done["numvfs"] == 0  # the real sriov_numvfs
        assert done["devices"] == []
        assert not done["warnings"], done["warnings"]
    finally:
        torn_down = vm.python(TEARDOWN, timeout=300)
        figures = {
            **torn_down.get("figures", {}),
            "steps": steps,
            "total": round(time.monotonic() - started, 1),
        }
        if "ran" in locals():
            figures["raised_at"] = ran["raised_at"]
            figures["prepared_at"] = ran["prepared_at"]
            figures["raise_seconds"] = [e.get("seconds") for e in ran["raised"]]
            figures["scheduler_failed_first"] = ran["failed_first"]
        print(json.dumps({"figures": figures}, indent=1))
        print(f"--- agent ---\n{torn_down.get('agent', '')}")
    assert torn_down["exit_code"] == 0, torn_down["agent"]
    assert [e["level"] for e in torn_down["stopped"]] == ["info"], torn_down["agent"]
    assert not torn_down["traceback"], torn_down["agent"]
