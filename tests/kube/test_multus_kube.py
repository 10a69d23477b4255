"""Multus (the thin plugin, built from the Go module proxy) as containerd's primary CNI.

The session cluster's containerd is switched to ``00-multus.conflist`` for this module:
Multus delegates every pod to the cluster's bridge network (``eth0``) and adds the
networks a pod's ``k8s.v1.cni.cncf.io/networks`` annotation names, read from
NetworkAttachmentDefinitions through the API server. What is checked is what a pod and
the cluster see: the interfaces and addresses inside the container, the pod IP and the
``network-status`` annotation in the API, the host bridge's ports and the host-local
reservations (released again when the pod goes, so DEL went through Multus too).
"""

from __future__ import annotations

import json
import os
import re
import subprocess
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sriovlib.testing.clienttools import ToolUnavailable
from sriovlib.testing.kube import KubeCluster
from sriovlib.testing.multus import (
    MULTUS_CONFLIST,
    NAD_CRD,
    NETWORK_STATUS_ANNOTATION,
    NETWORKS_ANNOTATION,
    multus_conflist,
    multus_path,
    network_attachment,
)

pytestmark = pytest.mark.kube

DEFAULT_SUBNET = "10.250.0."
SECOND_SUBNET = "10.251.0."
_INET = re.compile(r"^\s*inet (\d+\.\d+\.\d+\.\d+)/\d+ .* (\S+)$", re.MULTILINE)


def _annotated(pod: dict[str, Any], name: str = NETWORK_STATUS_ANNOTATION) -> Any:
    text = pod["metadata"].get("annotations", {}).get(name)
    return None if text is None else json.loads(text)


def _multus_log(cluster: KubeCluster) -> str:
    return cluster.tail("multus", 30)


def _probe(cluster: KubeCluster, multus: bool, timeout: float = 60) -> float:
    """Until a new pod's network is Multus' (*multus*) or the bridge's straight: containerd
    reloads its CNI config directory on its own time and says nothing. The seconds taken."""
    started = time.monotonic()
    while True:
        cluster.create(cluster.pod("multus-probe", "true"))
        pod = cluster.wait_pod("multus-probe", ("Succeeded", "Failed"))
        cluster.delete_pod("multus-probe")
        if (_annotated(pod) is not None) == multus:
            return time.monotonic() - started
        assert time.monotonic() - started < timeout, (
            f"containerd did not switch (multus={multus}):\n{_multus_log(cluster)}"
        )
        time.sleep(0.5)


@pytest.fixture(scope="module")
def multus(kube_cluster: KubeCluster) -> Iterator[KubeCluster]:
    """The session cluster with Multus as the primary CNI, restored afterwards."""
    try:
        binary = multus_path()
    except ToolUnavailable as e:
        pytest.skip(f"kube tier: Multus: {e}")
    cluster = kube_cluster
    cluster.kubectl("delete", "pods", "--all", "--grace-period=1", "--wait=true")
    config = multus_conflist(
        kubeconfig=cluster.kubeconfig,
        default_network=cluster.default_network(),
        bin_dir=cluster.cni_bin_dir,
        state_dir=cluster.run_dir / "multus",
        log_file=cluster.log_path("multus"),
    )
    cluster.set_cni_config(MULTUS_CONFLIST, config, plugins={"multus": binary})
    try:
        _probe(cluster, multus=True)
        yield cluster
    finally:
        # DEL follows the config of the moment: the pods go while Multus is still it
        cluster.kubectl("delete", "pods", "--all", "--grace-period=1", "--wait=true")
        cluster.set_cni_config(MULTUS_CONFLIST, None)
        _probe(cluster, multus=False)


@pytest.fixture(scope="module")
def second_network(multus: KubeCluster) -> Iterator[dict[str, Any]]:
    """The NAD CRD installed and a NAD ``second``: Debian's bridge on a bridge of its own,
    host-local addresses in 10.251.0.0/24. Its CNI config, as JSON."""
    cluster = multus
    bridge = f"smul{os.getpid() % 100000}"
    config = {
        "cniVersion": "1.0.0",
        "name": "second",
        "type": "bridge",
        "bridge": bridge,
        "isGateway": False,
        "ipMasq": False,
        "ipam": {
            "type": "host-local",
            "ranges": [[{"subnet": SECOND_SUBNET + "0/24"}]],
            "dataDir": str(cluster.run_dir / "cni" / "ipam-second"),
        },
    }
    crd = cluster.install_crd(NAD_CRD)
    try:
        cluster.create(network_attachment("second", config))
        yield config
    finally:
        cluster.kubectl("delete", "pods", "--all", "--grace-period=1", "--wait=true")
        cluster.kubectl("delete", crd, "--wait=true", check=False)
        subprocess.run(["ip", "link", "del", bridge], capture_output=True, check=False)


def _interfaces(log: str) -> dict[str, str]:
    """``ip -4 addr`` output as interface → IPv4 address."""
    return {name: address for address, name in _INET.findall(log)}


def _wait_log(cluster: KubeCluster, name: str, marker: str, timeout: float = 30) -> str:
    deadline = time.monotonic() + timeout
    while marker not in (log := cluster.pod_log(name)):
        assert time.monotonic() < deadline, f"no {marker!r} in {log!r}:\n{_multus_log(cluster)}"
        time.sleep(0.2)
    return log


def _bridge_ports(bridge: str) -> list[str]:
    out = subprocess.run(["ip", "-o", "link", "show", "master", bridge],
                         capture_output=True, text=True, check=False).stdout  # fmt: skip
    return [line.split(":")[1].strip() for line in out.splitlines() if line.strip()]


def _reserved(ipam: dict[str, Any], network: str) -> set[str]:
    directory = Path(ipam["dataDir"]) / network
    if not directory.is_dir():
        return set()
    return {p.name for p in directory.iterdir() if re.fullmatch(r"[\d.]+", p.name)}


def test_primary_multus_gives_eth0_from_the_default_network(cluster: KubeCluster, multus: Any):
    cluster.create(cluster.pod("plain", "ip -4 addr"))
    pod = cluster.wait_pod("plain", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded", cluster.events("plain")
    interfaces = _interfaces(cluster.pod_log("plain"))
    assert set(interfaces) == {"lo", "eth0"}
    assert interfaces["eth0"].startswith(DEFAULT_SUBNET)
    # the master delegate's result is what containerd got: it is the pod IP
    assert pod["status"]["podIP"] == interfaces["eth0"]
    # and Multus, not the bridge alone, set it up: it reported the network to the API
    status = _annotated(pod)
    assert status is not None, _multus_log(cluster)
    assert [(s["name"], s.get("interface"), s["ips"], s.get("default")) for s in status] == [
        ("sriovlib-kube", "eth0", [interfaces["eth0"]], True)
    ]


def test_nad_annotation_adds_net1_and_del_releases_it(
    cluster: KubeCluster, second_network: dict[str, Any]
):
    bridge, ipam = second_network["bridge"], second_network["ipam"]
    manifest = cluster.pod("attached", "ip -4 addr; echo done; sleep 600")
    manifest["metadata"]["annotations"] = {NETWORKS_ANNOTATION: "second"}
    cluster.create(manifest)
    pod = cluster.wait_pod("attached", ("Running", "Failed"))
    assert pod["status"]["phase"] == "Running", cluster.events("attached")
    interfaces = _interfaces(_wait_log(cluster, "attached", "done"))
    assert set(interfaces) == {"lo", "eth0", "net1"}, _multus_log(cluster)
    assert interfaces["eth0"].startswith(DEFAULT_SUBNET)
    assert interfaces["net1"].startswith(SECOND_SUBNET)
    assert pod["status"]["podIP"] == interfaces["eth0"]

    pod = cluster.get("pod", "attached")
    status = {s["name"]: s for s in _annotated(pod)}
    assert set(status) == {"sriovlib-kube", "default/second"}
    assert status["default/second"]["interface"] == "net1"
    assert status["default/second"]["ips"] == [interfaces["net1"]]
    assert status["sriovlib-kube"].get("default") is True
    assert not status["default/second"].get("default", False)

    # on the host: the NAD's bridge got the pod's veth, host-local holds the address
    assert len(_bridge_ports(bridge)) == 1
    assert _reserved(ipam, "second") == {interfaces["net1"]}

    cluster.delete_pod("attached")
    # DEL went through Multus to the NAD's delegate (from the config Multus saved at ADD)
    deadline = time.monotonic() + 30
    while _reserved(ipam, "second") or _bridge_ports(bridge):
        assert time.monotonic() < deadline, _multus_log(cluster)
        time.sleep(0.2)


def test_selection_object_names_the_interface(cluster: KubeCluster, second_network: dict[str, Any]):
    """The JSON form of the annotation: the NAD by namespace and name, an interface name."""
    selection = [{"name": "second", "namespace": "default", "interface": "data0"}]
    manifest = cluster.pod("named", "ip -4 addr")
    manifest["metadata"]["annotations"] = {NETWORKS_ANNOTATION: json.dumps(selection)}
    cluster.create(manifest)
    pod = cluster.wait_pod("named", ("Succeeded", "Failed"))
    assert pod["status"]["phase"] == "Succeeded", cluster.events("named")
    interfaces = _interfaces(cluster.pod_log("named"))
    assert set(interfaces) == {"lo", "eth0", "data0"}, _multus_log(cluster)
    assert interfaces["data0"].startswith(SECOND_SUBNET)
    interfaces_in_api = {s["name"]: s.get("interface") for s in _annotated(pod)}
    assert interfaces_in_api == {"sriovlib-kube": "eth0", "default/second": "data0"}


def test_unknown_network_fails_the_sandbox_and_names_it(cluster: KubeCluster, second_network: Any):
    """A pod asking for a NAD that does not exist never starts, and its events say why."""
    manifest = cluster.pod("missing", "true")
    manifest["metadata"]["annotations"] = {NETWORKS_ANNOTATION: "no-such-net"}
    cluster.create(manifest)
    deadline = time.monotonic() + 30
    while not any("no-such-net" in message for message in cluster.events("missing")):
        assert time.monotonic() < deadline, cluster.events("missing")
        time.sleep(0.5)
    assert cluster.get("pod", "missing")["status"]["phase"] == "Pending"
