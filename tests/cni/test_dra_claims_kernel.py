"""The VF of a pod's DRA claim through the real CNI client on real netlink (issue 15,
part 5): the agent's Preparer prepares the claim on a veth-backed node, cnitool + host-local
run the plugin with no ``deviceID`` and the pod in ``CNI_ARGS``, in-process and through the
fast path. The netdev that lands in the pod is the claim's VF's veth, DEL brings it home to
the claim's settings, unprepare to the VF's own."""

from __future__ import annotations

import json
from typing import Any

import pytest

from sriovlib.agent.draprepare import Preparer, device_name
from sriovlib.agent.drastore import PreparedClaims
from sriovlib.host import Host
from sriovlib.preparedvfs import DEFAULT_DRIVER, claims_dir
from sriovlib.testing.cni import VethVfNetlink
from sriovlib.testing.drakubelet import FakeClaims, resource_claim

from . import test_cnitool_kernel as kernel_tier
from .test_cnitool_kernel import Cnitool, host_view, ns

#: The cnitool tier's fixtures: each test in-process and through the fast path.
agent, cnitool = kernel_tier.agent, kernel_tier.cnitool

pytestmark = [pytest.mark.kernel, pytest.mark.client]

POD_UID = "0c4e5a57-0000-4000-8000-00000000d7a1"
ARGS = f"IgnoreUnknown=1;K8S_POD_NAMESPACE=default;K8S_POD_NAME=app;K8S_POD_UID={POD_UID}"


def test_the_claims_vf_is_the_pods_interface_and_comes_back(cnitool: Cnitool) -> None:
    node = cnitool.node
    host = Host(str(node.root), netlink=VethVfNetlink(node.root, node.host_netns))
    claims = FakeClaims()
    store = PreparedClaims(claims_dir(cnitool.state_dir, DEFAULT_DRIVER))
    preparer = Preparer(host, claims, store, cdi_dir=cnitool.tmp / "cdi", driver=DEFAULT_DRIVER)
    address = node.vfs[2]
    claim = resource_claim("app-net-x1", devices=[("vf", "node1", device_name(address))],
                           config=[{"parameters": {"vlan": 42}}])  # fmt: skip
    claim["status"]["reservedFor"] = [{"resource": "pods", "name": "app", "uid": POD_UID}]
    host_before, vfs_before = host_view(node), node.vf_states()
    ref = claims.add(claim)
    preparer.prepare(ref)
    assert node.vf_states()[str(address)].vlan == 42
    prepared = node.vf_states()

    cnitool.configure(vlan=100, mac="02:00:00:00:d7:01")
    pod = node.add_pod()
    added = cnitool("add", pod, CNI_ARGS=ARGS)
    assert added.returncode == 0, added.stderr
    result: Any = json.loads(added.stdout)
    assert result["interfaces"][0]["mac"] == "02:00:00:00:d7:01"
    (link,) = json.loads(ns(pod, "-j", "link", "show", "eth0"))
    veth = node.vf_netdevs[2]
    assert link["ifindex"] == host_before[veth][0]  # the claim's VF's own veth
    assert veth not in node.host_links()
    assert node.vf_states()[str(address)].vlan == 100
    assert cnitool.records() == [str(address)]
    # a second pod is not given it: its claim is not this pod's
    other = node.add_pod()
    refused = cnitool("add", other, CNI_ARGS=ARGS.replace("K8S_POD_NAME=app", "K8S_POD_NAME=b")
                      .replace(POD_UID, "0c4e5a57-0000-4000-8000-00000000d7a2"))  # fmt: skip
    assert refused.returncode != 0
    assert "no VF of a DRA claim is prepared for pod default/b" in refused.stderr

    deleted = cnitool("del", pod, CNI_ARGS=ARGS)
    assert deleted.returncode == 0, deleted.stderr
    assert host_view(node) == host_before  # the veth home, name, MAC, MTU as before
    assert node.vf_states() == prepared  # the claim's VLAN 42 again
    assert cnitool.records() == []
    assert preparer.unprepare(ref)
    assert node.vf_states() == vfs_before
