"""A pod's container gets the VF of its DRA claim through Multus and the ``sriov`` CNI
(issue 15, part 5), with the REAL kubelet, kube-scheduler, resource-claim controller,
containerd and Multus v4.3.0 of the kube tier, on a veth-backed node.

The node's VFs are fake PCI functions whose netdevs are real veths
(:class:`~sriovlib.testing.cni.VethNode`): the agent's DRA driver runs in this process
on that node (its Host on :class:`~sriovlib.testing.cni.VethVfNetlink`), registers with
the kubelet's plugin watcher and publishes the VFs; containerd runs Multus, which runs
the tests' ``sriov`` (the shipped code path, on the same node) for a NAD with no
``deviceID``. A pod with a ResourceClaimTemplate (CEL on ``pfName``) and the NAD's
annotation, left to the scheduler: its claim is prepared by the kubelet through the
driver, Multus' ``sriov`` ADD finds the VF the claim prepared for the pod, and the
container has ``net1``: that VF's veth, with the NAD's MAC and address, the NAD's VLAN on
the VF. Deleting the pod brings the veth home, the claim is unprepared, and the VF is as
before.
"""

from __future__ import annotations

import json
import re
import subprocess
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sriovlib.agent.dra import DraOptions
from sriovlib.agent.draslices import SLICES
from sriovlib.agent.kubeapi import KubeClient, load_kubeconfig
from sriovlib.agent.runner import Agent, AgentOptions
from sriovlib.host import Host
from sriovlib.pools import parse_config
from sriovlib.preparedvfs import claims_dir
from sriovlib.testing.cni import VethNode, VethVfNetlink, cni_binary_dir
from sriovlib.testing.drakubelet import device_name_of
from sriovlib.testing.kube import KubeCluster
from sriovlib.testing.multus import (
    NAD_CRD,
    NETWORK_STATUS_ANNOTATION,
    NETWORKS_ANNOTATION,
    network_attachment,
)

from . import test_multus_kube as multus_tier
from .conftest import wait_for

pytestmark = pytest.mark.kube

DRIVER = "sriov.sriovlib.io"
CLASS = "sriovlib-veth-vf"
NAD_VLAN, NAD_MAC = 100, "ca:fe:00:d7:a0:02"
CLAIM_PARAMETERS = {"vlan": 42, "trust": "on"}
POD_COMMAND = (
    "set -e; ip addr show net1; echo MAC=$(cat /sys/class/net/net1/address);"
    " echo IFLINK=$(cat /sys/class/net/net1/iflink); echo READY; sleep 3600"
)
_INET = re.compile(r"inet (10\.56\.219\.\d+)/24")

#: Multus as containerd's primary CNI (the module-scoped fixture of the Multus tests).
multus = multus_tier.multus


@pytest.fixture(scope="module")
def veth_node(tmp_path_factory: pytest.TempPathFactory) -> Iterator[VethNode]:
    with VethNode(tmp_path_factory.mktemp("dra-veth") / "root", num_vfs=3) as node:
        yield node


@pytest.fixture(scope="module")
def dra_multus(
    multus: KubeCluster, veth_node: VethNode, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[dict[str, Any]]:
    """The controllers started, the DRA driver on the veth node registered and
    published, the tests' ``sriov`` in containerd's CNI bin directory, the DeviceClass
    and the NAD; everything undone after."""
    cluster = multus
    tmp = tmp_path_factory.mktemp("dra-multus")
    started = not cluster.controllers
    cluster.start_controllers()
    state = tmp / "state"
    # the tests' sriov (the shipped code path) on the veth node, in-process
    binary = cni_binary_dir(tmp / "bin") / "sriov"
    environ = {**veth_node.environ(), "SRIOVLIB_STATE_DIR": str(state),
               "SRIOVLIB_AGENT_SOCKET": str(tmp / "no-agent.sock")}  # fmt: skip
    wrapper = tmp / "sriov"
    exports = " ".join(f"{k}={v}" for k, v in environ.items())
    wrapper.write_text(f'#!/bin/sh\nexport {exports}\nexec {binary} "$@"\n')
    wrapper.chmod(0o755)
    link = cluster.cni_bin_dir / "sriov"
    previous = link.readlink() if link.is_symlink() else None
    link.unlink(missing_ok=True)
    link.symlink_to(wrapper)

    host = Host(str(veth_node.root), netlink=VethVfNetlink(veth_node.root, veth_node.host_netns))
    config = parse_config(json.dumps({"resourceList": [
        {"resourceName": "veth_vfs", "selectors": {"vendors": ["15b3"]}}]}).encode())  # fmt: skip
    options = AgentOptions(
        device_plugin_dir=tmp / "device-plugins",
        state_dir=state,
        device_info_dir=None,
        dra=DraOptions(
            registry_dir=cluster.kubelet_root / "plugins_registry",
            plugins_dir=cluster.kubelet_root / "plugins",
            cdi_dir=tmp / "cdi",
            state_dir=state,
        ),
    )
    api = KubeClient(load_kubeconfig(cluster.kubeconfig))
    agent = Agent(host, config, options, api=api, node_name=cluster.node_name)
    device_class = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": CLASS},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }
    crd = cluster.install_crd(NAD_CRD)
    ipam_dir = tmp / "ipam"
    netconf = {
        "cniVersion": "1.0.0",
        "name": "sriov-dra",
        "type": "sriov",  # no deviceID: the VF of the pod's claim
        "vlan": NAD_VLAN,
        "mac": NAD_MAC,
        "ipam": {"type": "host-local", "subnet": "10.56.219.0/24", "dataDir": str(ipam_dir)},
    }
    agent.start()
    try:
        query = {"fieldSelector": f"spec.nodeName={cluster.node_name},spec.driver={DRIVER}"}

        def published() -> list[Any] | None:
            found = api.get(SLICES, query=query)["items"]
            return found if sum(len(s["spec"]["devices"]) for s in found) == 3 else None

        slices = wait_for("the veth node's slice", published, timeout=60)
        cluster.kubectl("apply", "-f", "-", input=json.dumps(device_class))
        cluster.create(network_attachment("sriov-dra", netconf))
        yield {"cluster": cluster, "agent": agent, "state": state, "slices": slices,
               "ipam": ipam_dir}  # fmt: skip
    finally:
        cluster.kubectl("delete", "pods", "--all", "--grace-period=1", "--wait=true")
        cluster.kubectl("delete", "resourceclaimtemplates,resourceclaims", "--all", "--wait=true")
        cluster.kubectl("delete", "deviceclass", CLASS, "--ignore-not-found")
        cluster.kubectl("delete", crd, "--wait=true", check=False)
        agent.stop()
        link.unlink(missing_ok=True)
        if previous is not None:
            link.symlink_to(previous)
        if started:
            cluster.stop_controllers()


def claim_template(pf: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaimTemplate",
        "metadata": {"name": "veth-vf", "namespace": "default"},
        "spec": {"spec": {"devices": {
            "requests": [{"name": "vf", "exactly": {
                "deviceClassName": CLASS,
                "selectors": [{"cel": {
                    "expression": f'device.attributes["{DRIVER}"].pfName == "{pf}"'}}]}}],
            "config": [{"requests": ["vf"],
                        "opaque": {"driver": DRIVER, "parameters": CLAIM_PARAMETERS}}],
        }}},
    }  # fmt: skip


def test_the_container_gets_the_vf_its_claim_prepared_and_gives_it_back(
    dra_multus: dict[str, Any], veth_node: VethNode
) -> None:
    cluster: KubeCluster = dra_multus["cluster"]
    records = claims_dir(dra_multus["state"], DRIVER)
    host_before, vfs_before = veth_node.host_links(), veth_node.vf_states()
    cluster.create(claim_template(veth_node.pf_netdev))
    manifest = cluster.pod("dra-net", POD_COMMAND, scheduled=True,
                           annotations={NETWORKS_ANNOTATION: "sriov-dra"})  # fmt: skip
    manifest["spec"]["resourceClaims"] = [{"name": "net", "resourceClaimTemplateName": "veth-vf"}]
    manifest["spec"]["containers"][0]["resources"] = {"claims": [{"name": "net"}]}
    started = time.monotonic()
    cluster.create(manifest)
    pod = cluster.wait_pod("dra-net", ("Running", "Failed", "Succeeded"), timeout=120)
    to_running = time.monotonic() - started
    assert pod["status"]["phase"] == "Running", (cluster.events("dra-net"),
                                                 cluster.tail("multus", 20))  # fmt: skip
    assert pod["spec"]["nodeName"] == cluster.node_name  # the scheduler placed it

    def ready() -> str | None:
        log = cluster.pod_log("dra-net")
        return log if "READY" in log else None

    log = wait_for("net1 in the container", ready, timeout=30)
    to_net1 = time.monotonic() - started
    (status,) = pod["status"]["resourceClaimStatuses"]
    claim = cluster.get("resourceclaim", status["resourceClaimName"])
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    (index,) = [
        i for i, a in enumerate(veth_node.vfs) if device_name_of(str(a)) == result["device"]
    ]
    address, veth = str(veth_node.vfs[index]), veth_node.vf_netdevs[index]
    record = json.loads((records / f"{claim['metadata']['uid']}.json").read_text())
    assert [p["uid"] for p in record["reservedFor"]] == [pod["metadata"]["uid"]]
    assert record["podClaimName"] == "net"

    # the container's net1 is the claim's VF's veth (its peer is that VF's wire end; its
    # own ifindex may change in the pod's namespace, whose eth0 can hold it), with the
    # NAD's MAC and an address
    (wire,) = json.loads(subprocess.run(
        ["ip", "-n", veth_node.wire_netns, "-j", "link", "show", f"w{index}"],
        capture_output=True, text=True, check=True).stdout)  # fmt: skip
    assert f"IFLINK={wire['ifindex']}" in log, log
    assert f"MAC={NAD_MAC}" in log, log
    (address_in_pod,) = _INET.findall(log)
    assert veth not in veth_node.host_links()
    state = veth_node.vf_states()[address]
    assert (state.vlan, state.trust, state.mac) == (NAD_VLAN, True, NAD_MAC)  # NAD over claim
    others = {a: s for a, s in veth_node.vf_states().items() if a != address}
    assert others == {a: s for a, s in vfs_before.items() if a != address}
    annotations = cluster.get("pod", "dra-net")["metadata"]["annotations"]
    networks = {n["name"]: n for n in json.loads(annotations[NETWORK_STATUS_ANNOTATION])}
    assert networks["default/sriov-dra"]["interface"] == "net1"
    assert networks["default/sriov-dra"]["ips"] == [address_in_pod]
    print(f"\nDRA + Multus on the veth node: pod created -> Running {to_running:.2f} s, "
          f"-> net1 in the container {to_net1:.2f} s (VF {address})")  # fmt: skip

    cluster.delete_pod("dra-net")
    wait_for("the claim unprepared", lambda: not any(records.glob("*.json")), timeout=60)
    assert veth_node.host_links().keys() == host_before.keys()  # the veth home
    assert veth_node.host_links()[veth]["address"] == host_before[veth]["address"]
    assert veth_node.vf_states() == vfs_before  # the claim's settings undone too
    assert not list((dra_multus["ipam"] / "sriov-dra").glob("10.*"))
    claim_name = claim["metadata"]["name"]

    def claim_gone() -> bool:
        out = cluster.kubectl("get", "resourceclaim", claim_name, "--ignore-not-found")
        return not out.strip()

    wait_for("the claim deleted", claim_gone)
    cluster.kubectl("delete", "resourceclaimtemplate", "veth-vf")
