"""The agent on a real igb PF in the VM, serving a real kubelet running in the same VM.

The seed's success check, on a real SR-IOV driver: VFs made with ``sriovlib numvfs``, a
pool config made with ``sriovlib config generate`` (its one pool renamed to the seed's
``sriov-netdevice``, which needs ``--compat``: a '-' ends up in the ``PCIDEVICE_*`` name,
upstream accepts it and the strict mode refuses it: a shell drops such variables, so the
container runs ``/bin/env`` directly), the agent started, and the node in
the API shows ``intel.com/sriov-netdevice: <numvfs>``; a pod asking for one is admitted
and its container sees the address of a real igbvf VF. Then the agent's live health and
reconcile on the real driver, through the real kubelet: ``ip link set <PF> down`` takes
Allocatable to 0 (the kubelet counts healthy devices only), ``up`` brings it back, and
``sriovlib numvfs <PF> 5`` under the running agent makes it 5.
"""

from __future__ import annotations

import pytest

from sriovlib.testing.clienttools import ToolUnavailable
from sriovlib.testing.kubebuild import kube_tools
from sriovlib.testing.vm import SriovVM

pytestmark = [pytest.mark.kube, pytest.mark.vm]

NUMVFS = 3

#: The kubelet needs a default route to pick a node IP, and the chroot guest has no
#: module autoload: a dummy link carries the node address.
NODE_NETWORK = """
set -e
modprobe -a bridge veth dummy overlay
ip link add sk-node0 type dummy
ip addr add 192.0.2.10/32 dev sk-node0
ip link set sk-node0 up
ip route show default | grep -q . || ip route add default dev sk-node0
"""

GUEST = r"""
import json, os, subprocess, sys, tempfile, time
from pathlib import Path
from sriovlib.testing.kube import KubeCluster
from sriovlib.testing.kubebuild import kube_tools

PF, NUMVFS = {pf!r}, {numvfs}
RESOURCE = "intel.com/sriov-netdevice"
work = Path(tempfile.mkdtemp(prefix="kube-vm-"))
sriovlib = [sys.executable, "-m", "sriovlib"]
result = {{}}
subprocess.run([*sriovlib, "numvfs", PF, str(NUMVFS)], check=True, capture_output=True)
vfs = sorted(
    os.path.basename(os.readlink(p))
    for p in Path(f"/sys/class/net/{{PF}}/device").glob("virtfn*")
)
config = json.loads(subprocess.run(
    [*sriovlib, "config", "generate"], check=True, capture_output=True, text=True
).stdout)
(pool,) = config["resourceList"]
result["generated_name"] = pool["resourceName"]
pool["resourceName"] = "sriov-netdevice"
(work / "config.json").write_text(json.dumps(config))
cluster = KubeCluster(kube_tools(progress=False), node_ip="192.0.2.10",
                      timeout_scale=4, progress=False)
agent = None
try:
    started = time.monotonic()
    cluster.start()
    result["cluster_start_s"] = time.monotonic() - started
    result["kubelet_version"] = cluster.node()["status"]["nodeInfo"]["kubeletVersion"]
    log = open(work / "agent.log", "wb")
    started = time.monotonic()
    agent = subprocess.Popen(
        [*sriovlib, "agent", "--config", str(work / "config.json"),
         "--device-plugin-dir", str(cluster.device_plugin_dir),
         "--state-dir", str(work / "state"), "--device-info-dir", str(work / "devinfo"),
         "--cni-socket", str(work / "agent.sock"),
         "--log-format", "json", "--compat"],
        stderr=log, stdin=subprocess.DEVNULL,
    )
    cluster.wait_allocatable(RESOURCE, str(NUMVFS), timeout=120)
    result["agent_start_to_allocatable_s"] = time.monotonic() - started
    result["allocatable"] = cluster.node()["status"]["allocatable"][RESOURCE]
    described = cluster.kubectl("describe", "node", cluster.node_name)
    result["describe"] = described.split("Allocatable:", 1)[1].split("System Info:", 1)[0]
    # /bin/env itself, not through sh: a shell drops variables whose name has a '-'
    cluster.create(cluster.pod("vf-pod", ["/bin/env"], limits={{RESOURCE: 1}}))
    started = time.monotonic()
    pod = cluster.wait_pod("vf-pod", ("Succeeded", "Failed"), timeout=120)
    result["pod_s"] = time.monotonic() - started
    result["phase"] = pod["status"]["phase"]
    result["pod_status"] = pod["status"].get("message") or pod["status"].get("containerStatuses")
    result["pod_log"] = cluster.pod_log("vf-pod")
    result["vfs"] = vfs
    cluster.delete_pod("vf-pod")
    # live health: the PF down takes every VF out of Allocatable, up brings them back
    started = time.monotonic()
    subprocess.run(["ip", "link", "set", PF, "down"], check=True)
    cluster.wait_allocatable(RESOURCE, "0", timeout=120)
    result["pf_down_to_allocatable_0_s"] = time.monotonic() - started
    started = time.monotonic()
    subprocess.run(["ip", "link", "set", PF, "up"], check=True)
    cluster.wait_allocatable(RESOURCE, str(NUMVFS), timeout=120)
    result["pf_up_to_allocatable_back_s"] = time.monotonic() - started
    # numvfs changed under the running agent: the pool follows, on the same socket
    started = time.monotonic()
    subprocess.run([*sriovlib, "numvfs", PF, str(NUMVFS + 2), "--force"], check=True,
                   capture_output=True)
    cluster.wait_allocatable(RESOURCE, str(NUMVFS + 2), timeout=180)
    result["numvfs_to_allocatable_s"] = time.monotonic() - started
except Exception as e:  # the assertions on the host show it with the agent's log
    result["error"] = f"{{type(e).__name__}}: {{e}}"
finally:
    if agent is not None:
        agent.terminate()
        result["agent_rc"] = agent.wait(30)
    cluster.stop()
    subprocess.run([*sriovlib, "numvfs", PF, "0", "--force"], capture_output=True)
    agent_log = work / "agent.log"
    result["agent_log_tail"] = agent_log.read_text()[-3000:] if agent_log.exists() else ""
"""


def test_real_vfs_reach_a_pod_through_a_real_kubelet(sriov_vm_clean: SriovVM) -> None:
    try:
        kube_tools()  # built on the host, where Go and the module proxy are; the guest sees it
    except ToolUnavailable as e:
        pytest.skip(f"kube tier: {e}")
    vm = sriov_vm_clean
    setup = vm.run(NODE_NETWORK, timeout=60)
    assert setup.returncode == 0, setup.stderr
    try:
        result = vm.python(GUEST.format(pf=vm.pf_netdevs[0], numvfs=NUMVFS), timeout=900)
    finally:
        vm.run("ip link del sk-node0", timeout=30)
    print(result)  # the figures, for the record (pytest -s)
    assert "error" not in result, (result["error"], result["agent_log_tail"])
    assert result["generated_name"].startswith("igb_")
    assert result["kubelet_version"].startswith("v1.34.")
    assert result["allocatable"] == str(NUMVFS)
    assert f"intel.com/sriov-netdevice:  {NUMVFS}" in result["describe"]
    assert result["phase"] == "Succeeded", result
    env = dict(line.split("=", 1) for line in result["pod_log"].splitlines() if "=" in line)
    assert env["PCIDEVICE_INTEL_COM_SRIOV-NETDEVICE"] in result["vfs"]
    assert result["agent_rc"] == 0, result["agent_log_tail"]
    # the kubelet counts only healthy devices: the PF down took all 3 away, up gave them
    # back, and numvfs 5 under the running agent made the pool 5 (each waited for above)
    for figure in ("pf_down_to_allocatable_0_s", "pf_up_to_allocatable_back_s",
                   "numvfs_to_allocatable_s"):  # fmt: skip
        assert figure in result, result
