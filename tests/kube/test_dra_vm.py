"""The agent's DRA driver on the REAL igb PF of the VM, with the real kubelet and
kube-scheduler (v1.34) of a cluster running in the same VM.

The flow of ``test_dra_kubelet.py``, on real VFs (QEMU's emulated Intel 82576, the
guest's own igb/igbvf drivers) instead of the fake kernel:

1. ``sriovlib numvfs <PF> 2``, the pool config from ``sriovlib config generate``;
2. a cluster on the node's real paths (``node_paths``: the kubelet's plugin directories
   are ``/var/lib/kubelet/plugins_registry`` and ``/var/lib/kubelet/plugins``) with
   kube-controller-manager (its resource-claim controller) and kube-scheduler, the API
   server enforcing ``Node,RBAC`` and pods given their ServiceAccount's token
   (``service_accounts``), the agent image (``sriovlib.testing.image``) imported;
3. the agent as the shipped DaemonSet: ``kubectl apply -k`` of a kustomization with
   ``resources: [deploy]``, ``components: [deploy/dra]``, the node's pool as the
   ConfigMap and ``KUBERNETES_SERVICE_HOST``/``PORT`` set to the API server on the node's
   loopback (no kube-proxy here routes the ``kubernetes`` Service): the scheduler places
   the pod, its init container installs ``sriov``, the agent runs with ``--dra`` and the
   in-cluster config (the token the kubelet mounted, which a SelfSubjectReview says is
   ``system:serviceaccount:sriovlib:sriovlib-agent`` bound to the pod and node, so
   ``deploy/dra/rbac.yaml`` and ``node-restriction.yaml`` decide what it may do); the
   kubelet's plugin watcher registers it, and the ResourceSlice it publishes, read back
   from the API server, holds one device per real VF (its PCI address, the igb PF's
   name, igbvf, 8086:10ca) — printed (``pytest -s``);
4. a DeviceClass (spoofchk off) and a ResourceClaimTemplate selecting VFs of the PF by
   CEL, its claim asking for VLAN 42 and trust on; Multus (v4.3.0, the thin plugin) as
   containerd's primary CNI and a NetworkAttachmentDefinition of type ``sriov`` with no
   ``deviceID`` (VLAN 100, a MAC, host-local); a pod without ``nodeName`` annotated
   with that network: the scheduler allocates a VF and binds the pod, the kubelet
   prepares the claim through the driver, Multus runs ``sriov``, which hands the
   invocation to the agent (the fast path) and takes the VF the claim prepared for the
   pod: the container has ``net1``, that VF's netdev with the NAD's MAC and address, and
   the PF (``ip -j -d link show``) shows the NAD's VLAN and the claim's spoofchk and
   trust on that VF; pod created → Running and → ``net1`` seen are printed;
5. the pod deleted: the CNI's DEL brings the netdev home (to the claim's VLAN 42), the
   claim unprepared, the VF as before on the PF, the claim gone; then the DaemonSet
   deleted: the agent stops on the kubelet's SIGTERM (``stopped``, no traceback) and
   its registration socket is gone.

Each step runs in the guest's persistent interpreter and is checked here, so a failure
names its step; the per-step seconds are printed.
"""

from __future__ import annotations

import json
import sys
import time
from pathlib import Path
from typing import Any

import pytest

from sriovlib.testing.clienttools import ToolUnavailable
from sriovlib.testing.drakubelet import device_name_of
from sriovlib.testing.image import agent_image
from sriovlib.testing.kubebuild import kube_tools
from sriovlib.testing.multus import multus_path
from sriovlib.testing.vm import SriovVM

pytestmark = [pytest.mark.kube, pytest.mark.vm]

NUMVFS = 2
DRIVER = "sriov.sriovlib.io"
CLASS = "sriovlib-vf"
#: igb takes spoofchk and trust on/off and a port VLAN (docs/shared VM recipe); the class
#: turns spoof checking off, the claim asks for the VLAN and trust.
CLASS_PARAMETERS = {"spoofchk": "off"}
CLAIM_PARAMETERS = {"vlan": 42, "trust": "on"}
DEPLOY = Path(__file__).parents[2] / "deploy"
ACCOUNT = "system:serviceaccount:sriovlib:sriovlib-agent"
#: The 82576 VF (igbvf).
VF_IDS = ("8086", "10ca")
#: The NAD's VF settings (over the claim's VLAN while the pod holds the VF).
NAD_VLAN = 100
NAD_MAC = "ca:fe:00:d7:a0:01"
#: What the container prints of its second network.
POD_COMMAND = (
    "set -e; ip addr show net1; echo MAC=$(cat /sys/class/net/net1/address);"
    " echo PCI=$(basename $(readlink /sys/class/net/net1/device)); echo READY; sleep 3600"
)

SETUP = r"""
import json, os, signal, subprocess, sys, tempfile, time
from pathlib import Path
from sriovlib.testing.kube import KubeCluster
from sriovlib.testing.kubebuild import kube_tools
from sriovlib.testing.multus import (
    MULTUS_CONFLIST, NAD_CRD, NETWORK_STATUS_ANNOTATION, NETWORKS_ANNOTATION, multus_conflist,
    network_attachment,
)

P = json.loads(PARAMS)
PF, DRIVER = P["pf"], P["driver"]
work = Path(tempfile.mkdtemp(prefix="dra-vm-"))
STATE, CDI = Path("/var/lib/sriovlib"), Path("/var/run/cdi")  # the DaemonSet's hostPaths
sriovlib = [sys.executable, "-m", "sriovlib"]
SLICES = "/apis/resource.k8s.io/v1/resourceslices"
PODS = "/api/v1/namespaces/default/pods"
CLAIMS = "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims"


def sh(*argv, check=True):
    proc = subprocess.run(argv, capture_output=True, text=True)
    if check and proc.returncode != 0:
        raise RuntimeError(f"{argv} failed ({proc.returncode}): {proc.stderr.strip()}")
    return proc.stdout


def vfinfo():
    # the PF's VFs as `ip -j -d link show` reports them, by PCI address
    (link,) = json.loads(sh("ip", "-j", "-d", "link", "show", PF))
    out = {}
    for info in link.get("vfinfo_list", []):
        pci = os.path.basename(os.readlink(f"/sys/class/net/{PF}/device/virtfn{info['vf']}"))
        vlans = [v.get("vlan", 0) for v in info.get("vlan_list", [])] or [info.get("vlan", 0)]
        net = Path(f"/sys/bus/pci/devices/{pci}/net")
        netdevs = sorted(os.listdir(net)) if net.is_dir() else []
        own = [(net / n / "address").read_text().strip() for n in netdevs]
        out[pci] = {**info, "_vlan": vlans[0], "_netdevs": netdevs,
                    "_own_mac": own[0] if own else None}
    return out


def wait_for(what, check, timeout, every=0.2):
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise RuntimeError(f"timed out after {timeout} s waiting for {what}")
        time.sleep(every)


def agent_log():
    # the agent run as a process (agent_file), or the agent container's CRI log files
    # (<time> <stream> <P|F> <text>)
    if agent_file is not None:
        return agent_file.read_text(errors="replace") if agent_file.exists() else ""
    if agent_logs is None:
        return ""
    lines = []
    for path in sorted(agent_logs.glob("*.log")):
        for line in path.read_text(errors="replace").splitlines():
            parts = line.split(" ", 3)
            lines.append(parts[3] if len(parts) == 4 else "")
    return "\n".join(lines)


def events(name=None):
    records = []
    for line in agent_log().splitlines():
        try:
            records.append(json.loads(line))
        except ValueError:
            records.append({"event": "(not JSON)", "line": line})
    return [r for r in records if name is None or r.get("event") == name]


def timed(name, started):
    figures[name] = round(time.monotonic() - started, 2)


figures = {}
cluster = api = agent_pod = agent_logs = agent = agent_file = None
"""

NUMVFS_STEP = r"""# STEP: VFs with sriovlib numvfs, the pool config
started = time.monotonic()
sh(*sriovlib, "numvfs", PF, str(P["numvfs"]))
timed("numvfs", started)
config = json.loads(sh(*sriovlib, "config", "generate"))
(pool,) = config["resourceList"]
(work / "config.json").write_text(json.dumps(config))
pf_pci = os.path.basename(os.readlink(f"/sys/class/net/{PF}/device"))
vf_pcis = {}
for link in Path(f"/sys/class/net/{PF}/device").glob("virtfn*"):
    pci = os.path.basename(os.readlink(link))
    vf_pcis[pci] = {
        "index": int(link.name[len("virtfn"):]),
        "driver": os.path.basename(os.readlink(f"/sys/bus/pci/devices/{pci}/driver")),
        "ids": [Path(f"/sys/bus/pci/devices/{pci}/{f}").read_text().strip()[2:]
                for f in ("vendor", "device")],
        "root": Path(f"/sys/bus/pci/devices/{pci}").resolve().parts[3],
    }
result = {"pool": pool, "pf_pci": pf_pci, "vfs": vf_pcis}
"""

CLUSTER_STEP = r"""# STEP: the cluster (node paths, controllers), Multus, the NAD, the DeviceClass
from sriovlib.agent.kubeapi import KubeClient, NotFound, load_kubeconfig
started = time.monotonic()
# roles enforced (the kubelet, controllers, scheduler and Multus keep admin or node
# credentials), pods given their service account's token
cluster = KubeCluster(kube_tools(progress=False), node_ip="192.0.2.10", timeout_scale=4,
                      progress=False, node_paths=True, controllers=True,
                      images=[Path(P["image"])], authorization_mode="Node,RBAC",
                      service_accounts=True)
cluster.start()
timed("cluster_start", started)
figures.update({f"cluster:{k}": round(v, 1) for k, v in cluster.timings.items()})
# Multus first; the sriov plugin is the DaemonSet's init container's to install
cluster.set_cni_config(
    MULTUS_CONFLIST,
    multus_conflist(kubeconfig=cluster.kubeconfig, default_network=cluster.default_network(),
                    bin_dir=cluster.cni_bin_dir, state_dir=cluster.run_dir / "multus",
                    log_file=cluster.log_path("multus")),
    plugins={"multus": Path(P["multus"])},
)
cluster.install_crd(NAD_CRD)
cluster.kubectl("apply", "-f", "-", input=json.dumps(network_attachment("sriov-dra", P["netconf"])))
api = KubeClient(load_kubeconfig(cluster.kubeconfig), timeout=30)
api.create("/apis/resource.k8s.io/v1/deviceclasses", {
    "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass", "metadata": {"name": P["class"]},
    "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}],
             "config": [{"opaque": {"driver": DRIVER, "parameters": P["class_parameters"]}}]},
})
node = cluster.node()
result = {"kubelet": node["status"]["nodeInfo"]["kubeletVersion"],
          "node": cluster.node_name, "node_uid": node["metadata"]["uid"],
          "kubelet_root": str(cluster.kubelet_root)}
"""

AGENT_STEP = r"""# STEP: kubectl apply -k deploy/ + deploy/dra: the DaemonSet registered, its slice
# a kustomization of the admin's own, beside the checkout: the default install, the DRA
# Component, the node's pool; the in-cluster config pointed at the API server on the
# node's loopback (no kube-proxy routes the kubernetes Service's ClusterIP here)
overlay = work / "overlay"
overlay.mkdir()
(overlay / "config.json").write_text(json.dumps(config))
(overlay / "kustomization.yaml").write_text(json.dumps({
    "apiVersion": "kustomize.config.k8s.io/v1beta1",
    "kind": "Kustomization",
    "resources": [os.path.relpath(P["deploy"], overlay)],
    "components": [os.path.relpath(Path(P["deploy"], "dra"), overlay)],
    "configMapGenerator": [{"name": "sriovlib-config", "namespace": "sriovlib",
                            "behavior": "replace", "files": ["config.json"],
                            "options": {"disableNameSuffixHash": True}}],
    "patches": [{"target": {"kind": "DaemonSet", "name": "sriovlib-agent"},
                 "patch": json.dumps([
                     {"op": "add", "path": "/spec/template/spec/containers/0/env/-",
                      "value": {"name": name, "value": value}}
                     for name, value in (("KUBERNETES_SERVICE_HOST", "127.0.0.1"),
                                         ("KUBERNETES_SERVICE_PORT", str(cluster.api_port)))])}],
}))
registry = cluster.kubelet_root / "plugins_registry"
started = time.monotonic()
applied = cluster.kubectl("apply", "-k", str(overlay))


def the_agent_pod():
    pods = json.loads(cluster.kubectl("get", "pods", "-n", "sriovlib", "-o", "json"))["items"]
    return pods[0] if pods and pods[0]["status"].get("phase") == "Running" else None


agent_pod = wait_for("the agent's pod Running", the_agent_pod, 240, every=1)
timed("apply_to_agent_running", started)
agent_logs = (cluster.run_dir / "pod-logs" / f"sriovlib_{agent_pod['metadata']['name']}_"
              f"{agent_pod['metadata']['uid']}" / "agent")
wait_for("DRA driver registered", lambda: events("DRA driver registered"), 180)
timed("apply_to_registered", started)
query = {"fieldSelector": f"spec.nodeName={cluster.node_name},spec.driver={DRIVER}"}
slices = wait_for(
    "the slice with every VF",
    lambda: [s for s in api.get(SLICES, query=query)["items"]
             if len(s["spec"].get("devices", [])) == P["numvfs"]],
    120, every=0.5)
timed("apply_to_slice", started)
# the token the kubelet mounted in the agent's pod, asked who it is
uid = agent_pod["metadata"]["uid"]
(token_file,) = Path(f"/var/lib/kubelet/pods/{uid}/volumes/kubernetes.io~projected").glob(
    "*/token")
from sriovlib.agent.kubeapi import KubeConfig
# (its CA the pod's too: kube-root-ca.crt, the API server's serving certificate)
whoami = KubeClient(KubeConfig(server=api.config.server, token=token_file.read_text().strip(),
                               ca_file=token_file.parent / "ca.crt"), timeout=30).create(
    "/apis/authentication.k8s.io/v1/selfsubjectreviews",
    {"apiVersion": "authentication.k8s.io/v1", "kind": "SelfSubjectReview"})
kubelet_log = cluster.log_path("kubelet").read_text(errors="replace").splitlines()
reg_sock = str(registry / f"{DRIVER}-reg.sock")
pod_events = json.loads(cluster.kubectl("get", "events", "-n", "sriovlib", "-o", "json"))["items"]
result = {
    "applied": applied.splitlines(),
    "agent_pod": {k: agent_pod[k] for k in ("metadata", "spec")},
    "pod_events": sorted(
        f"{e['reason']} ({e.get('source', {}).get('component') or e.get('reportingComponent')}):"
        f" {e['message'][:100]}" for e in pod_events if e["involvedObject"]["kind"] == "Pod"),
    "whoami": whoami.get("status", {}).get("userInfo", {}),
    "api_server": events("API server"),
    "slices": api.get(SLICES, query=query)["items"],
    "registered": events("DRA driver registered"),
    "failed": events("DRA driver registration failed"),
    "kubelet_lines": [l for l in kubelet_log
                      if reg_sock in l or "RegisterPlugin" in l][-6:],
    "sockets": sorted(p.name for p in registry.iterdir()),
    "endpoint": (cluster.kubelet_root / "plugins" / DRIVER / "dra.sock").is_socket(),
    "cni_installed": os.access("/opt/cni/bin/sriov", os.X_OK),
}
"""

POD_STEP = r"""# STEP: claim template, a pod left to the scheduler: prepared, Running, net1
api.create("/apis/resource.k8s.io/v1/namespaces/default/resourceclaimtemplates", {
    "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaimTemplate",
    "metadata": {"name": "vf-on-pf", "namespace": "default"},
    "spec": {"spec": {"devices": {
        "requests": [{"name": "vf", "exactly": {
            "deviceClassName": P["class"],
            "selectors": [{"cel": {
                "expression": f'device.attributes["{DRIVER}"].pfName == "{PF}"'}}]}}],
        "config": [{"requests": ["vf"],
                    "opaque": {"driver": DRIVER, "parameters": P["claim_parameters"]}}],
    }}},
})
before = vfinfo()
manifest = cluster.pod("dra-app", P["pod_command"], scheduled=True,
                       annotations={NETWORKS_ANNOTATION: "sriov-dra"})
manifest["spec"]["resourceClaims"] = [{"name": "net", "resourceClaimTemplateName": "vf-on-pf"}]
manifest["spec"]["containers"][0]["resources"] = {"claims": [{"name": "net"}]}
created_wall = time.time()
started = time.monotonic()
api.create(PODS, manifest)
phases = []


def running():
    pod = api.get(f"{PODS}/dra-app")
    phase = pod.get("status", {}).get("phase")
    if not phases or phases[-1][0] != phase:
        phases.append((phase, round(time.monotonic() - started, 2)))
    if phase in ("Failed", "Succeeded"):
        raise RuntimeError(f"dra-app {phase}: {pod['status']}")
    return pod if phase == "Running" else None


try:
    pod = wait_for("dra-app Running", running, 240, every=0.1)
except RuntimeError as e:
    pod = api.get(f"{PODS}/dra-app")
    raise RuntimeError(f"{e}; status {json.dumps(pod.get('status'))}; events "
                       f"{cluster.events('dra-app')}; agent {events()[-8:]}; kubelet "
                       f"{cluster.tail('kubelet', 20)}") from None
figures["claim_to_running"] = round(time.monotonic() - started, 2)


def ready():
    log = cluster.pod_log("dra-app")
    return log if "READY" in log else None


try:
    log = wait_for("net1 in the container", ready, 120, every=0.2)
except RuntimeError as e:
    raise RuntimeError(f"{e}; log {cluster.pod_log('dra-app')!r}; multus "
                       f"{cluster.tail('multus', 20)}; agent {events()[-8:]}") from None
figures["pod_created_to_net1"] = round(time.monotonic() - started, 2)
pod = api.get(f"{PODS}/dra-app")
after = vfinfo()
(status,) = pod["status"]["resourceClaimStatuses"]
claim = api.get(f"{CLAIMS}/{status['resourceClaimName']}")
uid = claim["metadata"]["uid"]
prepared = [e for e in events("NodePrepareResources") if e["uid"] == uid]
applied = events("VF settings applied")
record_path = STATE / "dra" / DRIVER / "claims" / f"{uid}.json"
record = json.loads(record_path.read_text()) if record_path.exists() else None
spec_path = CDI / f"sriovlib-{DRIVER}-{uid}.json"
from datetime import datetime
prepare_at = None
if prepared:
    stamp = datetime.fromisoformat(prepared[0]["time"].replace("Z", "+00:00")).timestamp()
    prepare_at = round(stamp - created_wall, 2)
claim_created = datetime.fromisoformat(
    claim["metadata"]["creationTimestamp"].replace("Z", "+00:00")).timestamp()
result = {
    "log": log, "claim_created_at": round(claim_created - created_wall, 2),
    "net1_at": figures["pod_created_to_net1"],
    "network_status": json.loads(pod["metadata"].get("annotations", {}).get(
        NETWORK_STATUS_ANNOTATION, "[]")),
    "cni": [e for e in events() if e.get("event", "").startswith("CNI")][-6:],
    "node": pod["spec"].get("nodeName"), "phases": phases, "claim": claim, "uid": uid,
    "prepared": prepared, "applied": applied, "record": record,
    "spec": json.loads(spec_path.read_text()) if spec_path.exists() else None,
    "before": before, "after": after, "prepare_at": prepare_at,
}
"""

DELETE_STEP = r"""# STEP: pod deleted: unprepared, the VF restored, the claim gone
started = time.monotonic()
api.delete(f"{PODS}/dra-app")


def gone(path):
    try:
        api.get(path)
    except NotFound:
        return True
    return False


unprepared = wait_for("NodeUnprepareResources",
                      lambda: [e for e in events("NodeUnprepareResources") if e["uid"] == uid],
                      120)
timed("delete_to_unprepared", started)
wait_for("the pod gone", lambda: gone(f"{PODS}/dra-app"), 120)
timed("delete_to_pod_gone", started)
claim_name = claim["metadata"]["name"]
wait_for("the claim gone", lambda: gone(f"{CLAIMS}/{claim_name}"), 120)
timed("delete_to_claim_gone", started)
result = {
    "unprepared": unprepared, "restored": events("VF settings restored"),
    "warnings": [e for e in events() if e.get("level") not in ("info", "debug")],
    "vfs": vfinfo(), "record": record_path.exists(), "spec": spec_path.exists(),
    "slice_devices": sorted(d["name"] for s in api.get(SLICES, query=query)["items"]
                            for d in s["spec"]["devices"]),
}
"""

TEARDOWN = r"""
result = {}
if agent is not None:
    # the agent run as a process (test_dra_ondemand_vm): SIGTERM, as the kubelet would
    agent.send_signal(signal.SIGTERM)
    try:
        result["exit_code"] = agent.wait(60)
    except subprocess.TimeoutExpired:
        agent.kill()
        result["exit_code"] = "killed after 60 s"
    text = agent_log()
    result["stopped"] = [json.loads(l) for l in text.splitlines() if '"stopped"' in l]
    result["traceback"] = "Traceback" in text
    result["agent"] = text[-4000:]
if agent_pod is not None:
    # the DaemonSet deleted: the kubelet stops the agent (SIGTERM, 30 s grace)
    name = agent_pod["metadata"]["name"]
    started = time.monotonic()
    cluster.kubectl("delete", "daemonset", "-n", "sriovlib", "sriovlib-agent", "--wait=false")
    text, exit_code = agent_log(), None
    deadline = time.monotonic() + 90
    while time.monotonic() < deadline:
        text = agent_log() or text  # the log files go with the pod
        pods = json.loads(cluster.kubectl("get", "pods", "-n", "sriovlib", "-o", "json"))["items"]
        if not pods:
            break
        for status in pods[0]["status"].get("containerStatuses", []):
            exit_code = status.get("state", {}).get("terminated", {}).get("exitCode", exit_code)
        time.sleep(0.5)
    else:
        result["still_there"] = True
    timed("agent_delete_to_gone", started)
    result["exit_code"] = exit_code
    result["stopped"] = [json.loads(l) for l in text.splitlines() if '"stopped"' in l]
    result["traceback"] = "Traceback" in text
    result["agent"] = text[-4000:]
    result["reg_sock_left"] = (cluster.kubelet_root / "plugins_registry" /
                               f"{DRIVER}-reg.sock").exists()
if cluster is not None:
    result["kubelet"] = cluster.tail("kubelet", 25)
    result["scheduler"] = cluster.tail("kube-scheduler", 10)
    started = time.monotonic()
    cluster.stop()
    timed("cluster_stop", started)
sh(*sriovlib, "numvfs", PF, "0", "--force", check=False)
result["figures"] = figures
"""


def _settings(info: dict[str, Any]) -> tuple[Any, ...]:
    """What a claim's settings change on a VF, as ``ip -j -d link show`` has it."""

    def on(value: Any) -> bool | None:
        return None if value is None else value in (True, "on")

    return info["_vlan"], on(info.get("spoofchk")), on(info.get("trust"))


def _as_restored(vfs: dict[str, Any]) -> dict[str, Any]:
    """The VFs by what the CNI's DEL and the unprepare must bring back: the netdev (its
    name and own MAC), the settings, and no admin MAC (igb reports a VF's own MAC once
    its driver registered it, zeros before: either means none)."""
    seen = {}
    for pci, info in vfs.items():
        mac = info.get("address")
        admin = None if mac in ("00:00:00:00:00:00", info["_own_mac"]) else mac
        rest = {k: v for k, v in info.items() if k != "address"}
        seen[pci] = (admin, rest)
    return seen


def test_a_claim_on_a_real_igb_vf_is_scheduled_prepared_running_and_restored(
    vm_node: SriovVM,
) -> None:
    try:
        kube_tools()  # built on the host (Go, the module proxy); the guest sees the cache
        multus = multus_path()
        image = agent_image()  # the DaemonSet's, imported into the guest's containerd
    except ToolUnavailable as e:
        pytest.skip(f"kube tier: {e}")
    vm = vm_node
    pf = vm.pf_netdevs[0]
    params = {
        "pf": pf,
        "numvfs": NUMVFS,
        "driver": DRIVER,
        "class": CLASS,
        "class_parameters": CLASS_PARAMETERS,
        "claim_parameters": CLAIM_PARAMETERS,
        "multus": str(multus),
        "image": str(image),
        "deploy": str(DEPLOY),
        "pod_command": POD_COMMAND,
        # no deviceID: the VF is the one the pod's claim prepared
        "netconf": {
            "cniVersion": "1.0.0",
            "name": "sriov-dra",
            "type": "sriov",
            "vlan": NAD_VLAN,
            "mac": NAD_MAC,
            "ipam": {"type": "host-local", "subnet": "10.56.218.0/24"},
        },
    }
    started = time.monotonic()
    steps: dict[str, float] = {}

    def step(code: str, timeout: float = 600) -> Any:
        name = code.split("STEP: ", 1)[1].split("\n", 1)[0]
        began = time.monotonic()
        print(f"dra-vm: {name}...", file=sys.stderr, flush=True)
        out = vm.python(code, timeout=timeout)
        steps[name] = round(time.monotonic() - began, 1)
        print(f"dra-vm: {name}: {steps[name]:.0f} s", file=sys.stderr, flush=True)
        return out

    vm.python(f"PARAMS = {json.dumps(params)!r}\n" + SETUP)
    torn_down: dict[str, Any] = {}
    try:
        made = step(NUMVFS_STEP, timeout=120)
        vfs = made["vfs"]
        assert len(vfs) == NUMVFS, made
        assert {vf["driver"] for vf in vfs.values()} == {"igbvf"}, made

        cluster = step(CLUSTER_STEP)
        assert cluster["kubelet"].startswith("v1.34."), cluster
        assert cluster["kubelet_root"] == "/var/lib/kubelet"
        node_name = cluster["node"]

        served = step(AGENT_STEP, timeout=500)
        print("\n".join(served["pod_events"]), file=sys.stderr)
        # the DaemonSet's pod, placed by the scheduler, with the DRA Component's patches
        agent_pod = served["agent_pod"]
        assert agent_pod["metadata"]["ownerReferences"][0]["kind"] == "DaemonSet"
        assert agent_pod["spec"]["nodeName"] == node_name
        assert any(e.startswith("Scheduled (default-scheduler)") for e in served["pod_events"])
        (container,) = agent_pod["spec"]["containers"]
        assert "--dra" in container["args"], container
        assert "--node-name=$(NODE_NAME)" in container["args"], container
        assert not any("kubeconfig" in a for a in container["args"]), container
        assert agent_pod["spec"]["serviceAccountName"] == "sriovlib-agent"
        assert served["cni_installed"]  # the init container's sriov plugin
        # its own ServiceAccount's token (in-cluster config), bound to the pod and node
        (api_server,) = served["api_server"]
        assert api_server["credentials"] == "in-cluster", api_server
        whoami = served["whoami"]
        assert whoami["username"] == ACCOUNT, whoami
        assert whoami["extra"]["authentication.kubernetes.io/node-name"] == [node_name]
        assert whoami["extra"]["authentication.kubernetes.io/pod-name"] == [
            agent_pod["metadata"]["name"]
        ]
        # the kubelet's plugin watcher found the socket and registered the driver
        assert served["registered"][0]["driver"] == DRIVER, served
        assert not served["failed"], served
        assert f"{DRIVER}-reg.sock" in served["sockets"]
        assert served["endpoint"]
        assert any("RegisterPlugin" in line for line in served["kubelet_lines"]), served
        (published,) = served["slices"]
        published["metadata"].pop("managedFields", None)
        print("\nResourceSlice (read back from the API server; managedFields left out):")
        print(json.dumps(published, indent=1))
        spec = published["spec"]
        assert (spec["driver"], spec["nodeName"]) == (DRIVER, node_name)
        assert spec["pool"]["name"] == node_name
        assert spec["pool"]["resourceSliceCount"] == 1
        (owner,) = published["metadata"]["ownerReferences"]
        assert (owner["kind"], owner["name"], owner["uid"]) == (
            "Node",
            node_name,
            cluster["node_uid"],
        )
        devices = {d["name"]: d["attributes"] for d in spec["devices"]}
        assert set(devices) == {device_name_of(pci) for pci in vfs}  # one per real VF
        pool = made["pool"]
        resource = f"{pool.get('resourcePrefix', 'intel.com')}/{pool['resourceName']}"
        for pci, vf in vfs.items():
            attributes = devices[device_name_of(pci)]
            assert vf["ids"] == list(VF_IDS), vf
            expected = {
                "pfName": {"string": pf},
                "pfPciAddress": {"string": made["pf_pci"]},
                "vfIndex": {"int": vf["index"]},
                "vendor": {"string": VF_IDS[0]},
                "deviceID": {"string": VF_IDS[1]},
                "driver": {"string": "igbvf"},
                "linkType": {"string": "ether"},
                "rdma": {"bool": False},
                "resource.kubernetes.io/pciBusID": {"string": pci},
                "resource.kubernetes.io/pcieRoot": {"string": vf["root"]},
                "k8s.cni.cncf.io/resourceName": {"string": resource},
                "k8s.cni.cncf.io/deviceID": {"string": pci},
            }
            # numaNode only where the kernel says; igb has no devlink eswitch mode
            assert {k: v for k, v in attributes.items() if k != "numaNode"} == expected

        ran = step(POD_STEP, timeout=400)
        assert ran["node"] == node_name, ran  # placed by the scheduler
        claim = ran["claim"]
        (result,) = claim["status"]["allocation"]["devices"]["results"]
        assert (result["request"], result["driver"], result["pool"]) == ("vf", DRIVER, node_name)
        (address,) = [pci for pci in vfs if device_name_of(pci) == result["device"]]
        config = claim["status"]["allocation"]["devices"]["config"]
        assert [(c["source"], c["opaque"]["parameters"]) for c in config] == [
            ("FromClass", CLASS_PARAMETERS),
            ("FromClaim", CLAIM_PARAMETERS),
        ]
        assert [r["name"] for r in claim["status"]["reservedFor"]] == ["dra-app"]
        (prepared,) = ran["prepared"]
        assert prepared["devices"] == [address], prepared
        (applied,) = [e for e in ran["applied"] if e["vf"] == address]
        assert applied["settings"]["vlan"] == 42, applied
        assert (applied["settings"]["spoofchk"], applied["settings"]["trust"]) == (False, True)
        assert ran["record"]["complete"] is True
        # the pod the claim is reserved for, kept for the CNI
        assert [p["name"] for p in ran["record"]["reservedFor"]] == ["dra-app"]
        assert ran["record"]["podClaimName"] == "net"
        previous = ran["record"]["devices"][0]["previous"]["vf_state"]
        assert ran["spec"]["devices"][0]["name"] == f"{ran['uid']}-{result['device']}"
        # on the PF, as the kernel reports it: the allocated VF has the claim's settings,
        # the other VF is untouched
        before, after = ran["before"], ran["after"]
        assert _settings(before[address]) == (0, True, False), before
        assert (previous["vlan"], previous["spoofchk"], previous["trust"]) == (0, True, False)
        # the NAD's VLAN over the claim's while the pod holds the VF, the claim's spoofchk
        # and trust; the netdev in the pod as net1, with the NAD's MAC and an address
        assert _settings(after[address]) == (NAD_VLAN, False, True), after
        assert after[address]["_netdevs"] == [], after
        assert after[address]["address"] == NAD_MAC
        for other in set(vfs) - {address}:
            assert after[other] == before[other]
        log = ran["log"]
        assert f"PCI={address}" in log, log
        assert f"MAC={NAD_MAC}" in log, log
        assert "inet 10.56.218." in log, log
        net1 = [n for n in ran["network_status"] if n.get("interface") == "net1"]
        assert net1, ran["network_status"]
        assert net1[0]["name"] == "default/sriov-dra", ran["network_status"]
        assert net1[0]["mac"] == NAD_MAC
        net1_at = ran["net1_at"]
        print(
            f"\nclaim-to-running pod on the igb VF {address}: "
            f"{ran['phases'][-1][1]:.2f} s (pod created -> Running, phases {ran['phases']}; "
            f"the claim created {ran['claim_created_at']} s after the pod, "
            f"NodePrepareResources answered {ran['prepare_at']} s after the create, "
            f"in {prepared['ms']} ms); net1 seen in the container {net1_at:.2f} s after "
            f"the create ({net1_at - ran['claim_created_at']:.2f} s after the claim's creation)"
        )
        print(f"VF {address} on {pf}: before {before[address]}\n  prepared {after[address]}")

        done = step(DELETE_STEP, timeout=400)
        assert done["unprepared"][0]["claim"] == prepared["claim"]
        assert not done["record"]  # the record of the claim and its CDI spec gone
        assert not done["spec"]
        (restored,) = [e for e in done["restored"] if e["vf"] == address]
        assert {"vf_vlan", "vf_spoofchk", "vf_trust"} <= set(restored["restored"]), restored
        assert "namespace" not in restored["restored"], restored  # it never left the host
        # every VF as before the pod: its netdev home (the CNI's DEL), its settings (the
        # unprepare)
        assert _as_restored(done["vfs"]) == _as_restored(before), (done["vfs"], before)
        assert done["slice_devices"] == sorted(devices)
        assert not [e for e in done["warnings"] if e.get("event") == "VF restore"], done
        print(f"  restored {done['vfs'][address]}")
    finally:
        torn_down = vm.python(TEARDOWN, timeout=300)
        figures = {
            **torn_down.get("figures", {}),
            "steps": steps,
            "total": round(time.monotonic() - started, 1),
        }
        print(json.dumps({"figures": figures}, indent=1))
        for name in ("agent", "kubelet", "scheduler"):
            print(f"--- {name} ---\n{torn_down.get(name, '')}")
    # the kubelet's SIGTERM: the agent stopped cleanly and took its socket away
    assert not torn_down.get("still_there"), torn_down["agent"]
    assert [e["level"] for e in torn_down["stopped"]] == ["info"], torn_down["agent"]
    assert torn_down["exit_code"] in (None, 0), torn_down["agent"]
    assert not torn_down["traceback"], torn_down["agent"]
    assert not torn_down["reg_sock_left"]
