"""The seed's whole flow, end to end, on the real igb PF of the VM.

What a cluster admin does by hand today, as one test: the node (containerd, the kubelet)
runs in the VM, with the control plane beside it (kube-apiserver, etcd,
kube-controller-manager, kube-scheduler, all from the same Kubernetes build), on the
node's real paths (the VM's root vanishes with it):

1. VFs on the real igb PF with ``sriovlib numvfs``;
2. Multus (the thin plugin, built from the Go module proxy) as containerd's primary CNI,
   delegating to a bridge network; its CRD and the NetworkAttachmentDefinition of
   ``deploy/examples/sriov-net.yaml`` (given the seed's resource name and a MAC);
3. ``kubectl apply -k`` of an overlay of ``deploy/`` (the pool the node's VFs make, named
   as the seed names it, so the agent runs with ``--compat``), the agent image imported
   into containerd: the controller-manager makes the DaemonSet's pod, the scheduler
   places it, its init container installs the ``sriov`` CNI plugin into /opt/cni/bin;
4. the node's Allocatable shows ``intel.com/sriov-netdevice: <numvfs>``;
5. a pod annotated ``k8s.v1.cni.cncf.io/networks: sriov-net`` asking for one device is
   scheduled and gets ``net1``: the VF the kubelet allocated to it (Multus found it
   through the pod-resources API), with the NAD's MAC, VLAN (on the PF) and an address;
6. deleting the pod restores the VF (back in the node's namespace, its name, MAC and
   VLAN as before) and frees the device: a second pod gets a VF again while a third
   holds the other device.

Each step runs in the guest's persistent interpreter and is checked here, so a failure
names its step; the figures are printed (``pytest -s``).
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sriovlib.testing.clienttools import ToolUnavailable
from sriovlib.testing.image import agent_image
from sriovlib.testing.kubebuild import kube_tools
from sriovlib.testing.multus import MULTUS_VERSION, multus_path
from sriovlib.testing.vm import SriovVM

pytestmark = [pytest.mark.kube, pytest.mark.vm]

NUMVFS = 2
RESOURCE = "intel.com/sriov-netdevice"
NAD_MAC = "ca:fe:00:5e:00:01"
NAD_VLAN = 100
DEPLOY = Path(__file__).parents[2] / "deploy"

SETUP = r"""
import json, os, subprocess, sys, tempfile, time
from pathlib import Path
import yaml
from sriovlib.testing.kube import KubeCluster
from sriovlib.testing.kubebuild import kube_tools
from sriovlib.testing.multus import (
    MULTUS_CONFLIST, NAD_CRD, NETWORK_STATUS_ANNOTATION, NETWORKS_ANNOTATION, multus_conflist,
)

P = json.loads(PARAMS)
PF, RESOURCE = P["pf"], P["resource"]
work = Path(tempfile.mkdtemp(prefix="e2e-"))
sriovlib = [sys.executable, "-m", "sriovlib"]


def sh(*argv, check=True):
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def vfs():
    # the PF's VFs as the kernel shows them: index -> (pci, netdevs, the MAC the PF
    # reports, the netdev's own MAC, vlan)
    (link,) = json.loads(sh("ip", "-j", "-d", "link", "show", PF))
    out = {}
    for info in link.get("vfinfo_list", []):
        pci = os.path.basename(os.readlink(f"/sys/class/net/{PF}/device/virtfn{info['vf']}"))
        netdevs = os.listdir(f"/sys/bus/pci/devices/{pci}/net") if os.path.isdir(
            f"/sys/bus/pci/devices/{pci}/net") else []
        vlans = [v.get("vlan", 0) for v in info.get("vlan_list", [])] or [info.get("vlan", 0)]
        own = [Path(f"/sys/class/net/{n}/address").read_text().strip() for n in netdevs]
        out[str(info["vf"])] = {"pci": pci, "netdevs": netdevs, "mac": info["address"],
                                "own_mac": own[0] if own else None, "vlan": vlans[0]}
    return out


def timed(name, started):
    figures[name] = round(time.monotonic() - started, 1)


figures = {}
cluster = None
"""

NUMVFS_STEP = r"""# STEP: VFs with sriovlib numvfs
started = time.monotonic()
sh(*sriovlib, "numvfs", PF, str(P["numvfs"]))
timed("numvfs", started)
config = json.loads(sh(*sriovlib, "config", "generate"))
(pool,) = config["resourceList"]
generated_name = pool["resourceName"]
pool["resourceName"] = RESOURCE.split("/", 1)[1]
before = vfs()
result = {"generated_name": generated_name, "before": before}
"""

CLUSTER_STEP = r"""# STEP: the cluster, Multus, the NAD
started = time.monotonic()
cluster = KubeCluster(kube_tools(progress=False), node_ip="192.0.2.10", timeout_scale=4,
                      progress=False, node_paths=True, controllers=True,
                      images=[Path(P["image"])])
cluster.start()
timed("cluster_start", started)
figures.update({f"cluster:{k}": round(v, 1) for k, v in cluster.timings.items()})
# Multus first by name in /etc/cni/net.d, delegating to the cluster's bridge network
cluster.set_cni_config(
    MULTUS_CONFLIST,
    multus_conflist(kubeconfig=cluster.kubeconfig, default_network=cluster.default_network(),
                    bin_dir=cluster.cni_bin_dir, state_dir=cluster.run_dir / "multus",
                    log_file=cluster.log_path("multus")),
    plugins={"multus": Path(P["multus"])},
)
cluster.install_crd(NAD_CRD)
nad = yaml.safe_load(Path(P["deploy"], "examples", "sriov-net.yaml").read_text())
nad["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"] = RESOURCE
netconf = json.loads(nad["spec"]["config"])
netconf["mac"] = P["mac"]
nad["spec"]["config"] = json.dumps(netconf)
cluster.kubectl("apply", "-f", "-", input=json.dumps(nad))
node = cluster.node()["status"]["nodeInfo"]
result = {"kubelet": node["kubeletVersion"], "containerd": node["containerRuntimeVersion"],
          "netconf": netconf}
"""

DEPLOY_STEP = r"""# STEP: kubectl apply -k deploy/ overlay until Allocatable
# an overlay of deploy/, as an admin writes one: the node's pool, the seed's name
overlay = work / "overlay"
overlay.mkdir()
(overlay / "config.json").write_text(json.dumps(config))
(overlay / "kustomization.yaml").write_text(json.dumps({
    "apiVersion": "kustomize.config.k8s.io/v1beta1",
    "kind": "Kustomization",
    "resources": [os.path.relpath(P["deploy"], overlay)],
    "configMapGenerator": [{"name": "sriovlib-config", "namespace": "sriovlib",
                            "behavior": "replace", "files": ["config.json"],
                            "options": {"disableNameSuffixHash": True}}],
    "patches": [{"target": {"kind": "DaemonSet", "name": "sriovlib-agent"},
                 "patch": json.dumps([{"op": "add", "value": "--compat",
                                       "path": "/spec/template/spec/containers/0/args/-"}])}],
}))
started = time.monotonic()
applied = cluster.kubectl("apply", "-k", str(overlay))
cluster.wait_allocatable(RESOURCE, str(P["numvfs"]), timeout=150)
timed("apply_to_allocatable", started)
pods = json.loads(cluster.kubectl("get", "pods", "-n", "sriovlib", "-o", "json"))["items"]
agent_pod = pods[0]
described = cluster.kubectl("describe", "node", cluster.node_name)
events = json.loads(cluster.kubectl("get", "events", "-n", "sriovlib", "-o", "json"))["items"]
result = {
    "events": sorted(f"{e.get('lastTimestamp') or e.get('eventTime')} {e['reason']}: "
                     f"{e['message'][:100]}" for e in events),
    "applied": applied.splitlines(),
    "agent_pods": [p["metadata"]["name"] for p in pods],
    "agent_node": agent_pod["spec"].get("nodeName"),
    "agent_owner": agent_pod["metadata"]["ownerReferences"][0]["kind"],
    "cni_installed": os.access("/opt/cni/bin/sriov", os.X_OK),
    "allocatable": cluster.allocatable(RESOURCE),
    "describe": described.split("Allocatable:", 1)[1].split("System Info:", 1)[0],
}
"""

#: Runs in a busybox container: what a pod sees of its second network.
POD_COMMAND = (
    "set -e; ip addr show net1; echo MAC=$(cat /sys/class/net/net1/address);"
    " echo PCI=$(basename $(readlink /sys/class/net/net1/device));"
    " tr '\\0' '\\n' </proc/1/environ | grep ^PCIDEVICE_ || true; echo READY; sleep 3600"
)

#: A pod holding a device and no second network: its environment is all it gets (read
#: from /proc: a shell drops variables whose name has a '-').
DEVICE_COMMAND = "tr '\\0' '\\n' </proc/1/environ | grep ^PCIDEVICE_; echo READY"

POD_STEP = r"""# STEP: a pod with net1
def run_pod(name, networks=True):
    annotations = {NETWORKS_ANNOTATION: "sriov-net"} if networks else None
    command = P["pod_command"] if networks else P["device_command"]
    cluster.create(cluster.pod(name, command, limits={RESOURCE: 1}, restart="Never",
                               annotations=annotations, scheduled=True))


def wait_ready(name, timeout=240):
    deadline = time.monotonic() + timeout
    while "READY" not in (log := cluster.pod_log(name)):
        pod = cluster.get("pod", name)
        if pod["status"].get("phase") == "Failed" or time.monotonic() > deadline:
            raise RuntimeError(f"{name} not ready: {pod['status']} events {cluster.events(name)}"
                               f" multus: {cluster.tail('multus', 20)}")
        time.sleep(1)
    pod = cluster.get("pod", name)
    status = json.loads(pod["metadata"].get("annotations", {}).get(NETWORK_STATUS_ANNOTATION,
                                                                  "[]"))
    return {"log": log, "node": pod["spec"].get("nodeName"), "network_status": status}


started = time.monotonic()
run_pod("vf-pod-1")
first = wait_ready("vf-pod-1")
timed("pod1_created_to_net1", started)
result = {"pod": first, "vfs": vfs()}
"""

DELETE_STEP = r"""# STEP: pod deleted, two more pods
started = time.monotonic()
cluster.delete_pod("vf-pod-1")
timed("pod1_delete", started)
after_delete = vfs()
# not locked by an admin MAC: each VF can change its own MAC (igb refuses otherwise)
own_change = {}
for index, vf in after_delete.items():
    for netdev in vf["netdevs"]:
        tried = subprocess.run(["ip", "link", "set", netdev, "address", "02:00:00:e2:e0:0" + index],
                               capture_output=True, text=True)
        own_change[index] = tried.returncode, tried.stderr.strip()
        sh("ip", "link", "set", netdev, "address", vf["own_mac"])
started = time.monotonic()
run_pod("vf-pod-2")
run_pod("device-only", networks=False)
second = wait_ready("vf-pod-2")
other = wait_ready("device-only")
timed("pod2_created_to_net1", started)
result = {"after_delete": after_delete, "own_change": own_change, "second": second,
          "other": other, "vfs": vfs()}
"""

TEARDOWN = r"""
result = {}
if cluster is not None:
    for name in ("multus", "kubelet", "containerd"):
        result[name] = cluster.tail(name, 25)
    logs = cluster.kubectl("logs", "-n", "sriovlib", "daemonset/sriovlib-agent", "--all-containers",
                           "--tail=40", check=False)
    result["agent"] = logs
    result["pods"] = cluster.kubectl("get", "pods", "-A", "-o", "wide", check=False)
    result["taints"] = json.dumps(cluster.node().get("spec", {}).get("taints"))
    result["agent_pod"] = cluster.kubectl("describe", "pods", "-n", "sriovlib", check=False)[-3000:]
    started = time.monotonic()
    cluster.stop()
    timed("cluster_stop", started)
sh(*sriovlib, "numvfs", PF, "0", "--force", check=False)
result["figures"] = figures
"""


def _host_side() -> dict[str, Any]:
    """What the guest needs that is built on the host (Go, buildah, the module proxy)."""
    try:
        kube_tools()  # the guest finds them in the same cache
        multus = multus_path()
        image = agent_image()
    except ToolUnavailable as e:
        pytest.skip(f"kube tier: {e}")
    return {"multus": str(multus), "image": str(image)}


def _device_env(log: str) -> dict[str, str]:
    """The device plugin's variables a pod printed, one ``NAME=value`` a line (in the
    order of its environment, which is not fixed)."""
    return dict(line.split("=", 1) for line in log.splitlines() if line.startswith("PCIDEVICE_"))


def _as_the_node_sees(vfs: dict[str, Any]) -> dict[str, Any]:
    """The VFs by what a restore must bring back: the netdev (its name and own MAC), the
    VLAN, and no admin MAC. igb reports a VF's own MAC once its driver has registered it
    with the PF (zeros before that, right after creation): either means no admin MAC."""
    seen = {}
    for index, vf in vfs.items():
        admin = None if vf["mac"] in ("00:00:00:00:00:00", vf["own_mac"]) else vf["mac"]
        seen[index] = (vf["pci"], vf["netdevs"], vf["own_mac"], vf["vlan"], admin)
    return seen


def test_the_seed_flow_on_a_real_vf(vm_node: SriovVM) -> None:
    vm = vm_node
    pf = vm.pf_netdevs[0]
    params = {
        **_host_side(),
        "pf": pf,
        "numvfs": NUMVFS,
        "resource": RESOURCE,
        "mac": NAD_MAC,
        "deploy": str(DEPLOY),
        "pod_command": POD_COMMAND,
        "device_command": DEVICE_COMMAND,
    }
    started = time.monotonic()

    def step(code: str, timeout: float = 600) -> Any:
        name = code.split("STEP: ", 1)[1].split("\n", 1)[0]
        began = time.monotonic()
        print(f"e2e: {name}...", file=sys.stderr, flush=True)
        out = vm.python(code, timeout=timeout)
        print(f"e2e: {name}: {time.monotonic() - began:.0f} s", file=sys.stderr, flush=True)
        return out

    vm.python(f"PARAMS = {json.dumps(params)!r}\n" + SETUP)
    torn_down: dict[str, Any] = {}
    try:
        made = step(NUMVFS_STEP)
        assert made["generated_name"].startswith("igb_")
        before = made["before"]
        assert len(before) == NUMVFS
        assert all(vf["netdevs"] and vf["vlan"] == 0 for vf in before.values()), before

        cluster = step(CLUSTER_STEP)
        assert cluster["kubelet"].startswith("v1.34."), cluster
        assert cluster["netconf"]["vlan"] == NAD_VLAN

        deployed = step(DEPLOY_STEP)
        print("\n".join(deployed["events"]), file=sys.stderr)
        assert deployed["cni_installed"], deployed
        assert deployed["agent_owner"] == "DaemonSet"
        assert deployed["agent_node"] == "sriovlib-node"  # placed by the scheduler
        assert deployed["allocatable"] == str(NUMVFS)
        assert f"{RESOURCE}:  {NUMVFS}" in deployed["describe"]

        ran = step(POD_STEP)
        pod, vfs = ran["pod"], ran["vfs"]
        log = pod["log"]
        assert pod["node"] == "sriovlib-node"
        pci = log.split("PCI=", 1)[1].split()[0]
        env = _device_env(log)
        # the device plugin's variables, as upstream's: Multus took the allocated VF
        name = "PCIDEVICE_INTEL_COM_SRIOV-NETDEVICE"
        assert set(env) == {name, f"{name}_INFO"}, env
        assert env[name] == pci
        assert json.loads(env[f"{name}_INFO"]) == {pci: {"generic": {"deviceID": pci}}}
        assert f"MAC={NAD_MAC}" in log
        assert "inet 10.56.217." in log  # host-local's address on net1
        (index,) = [i for i, vf in vfs.items() if vf["pci"] == pci]
        assert vfs[index]["netdevs"] == []  # in the pod's namespace now
        assert (vfs[index]["mac"], vfs[index]["vlan"]) == (NAD_MAC, NAD_VLAN)  # on the PF
        net1 = [n for n in pod["network_status"] if n.get("interface") == "net1"]
        assert net1, pod["network_status"]
        assert net1[0]["mac"] == NAD_MAC
        assert net1[0]["device-info"]["pci"]["pci-address"] == pci

        again = step(DELETE_STEP)
        assert _as_the_node_sees(again["after_delete"]) == _as_the_node_sees(before)
        assert again["own_change"] == {i: [0, ""] for i in before}, again["own_change"]
        second, other = again["second"], again["other"]
        second_pci = second["log"].split("PCI=", 1)[1].split()[0]
        other_pci = _device_env(other["log"])["PCIDEVICE_INTEL_COM_SRIOV-NETDEVICE"]
        assert {second_pci, other_pci} == {vf["pci"] for vf in before.values()}
        assert f"MAC={NAD_MAC}" in second["log"]
        assert "inet 10.56.217." in second["log"]
    finally:
        torn_down = vm.python(TEARDOWN, timeout=300)
        figures = {**torn_down.get("figures", {}), "total": round(time.monotonic() - started, 1)}
        print(json.dumps({"figures": figures, "multus": MULTUS_VERSION}, indent=1))
        for name in ("multus", "kubelet", "containerd", "agent", "pods", "agent_pod", "taints"):
            print(f"--- {name} ---\n{torn_down.get(name, '')}")
