"""ADD without ``deviceID``: the VF of the pod's DRA claim (issue 15, part 5).

The claims are prepared by the agent's real :class:`~sriovlib.agent.draprepare.Preparer`
on the same fake node (its record is what the CNI reads), and every test runs in both
modes (in-process, and through the agent's fast path).
"""

from __future__ import annotations

import json
import uuid
from typing import Any

import pytest

from sriovlib.agent.draclaims import POD_CLAIM_ANNOTATION
from sriovlib.agent.draprepare import Preparer, device_name
from sriovlib.agent.drastore import PreparedClaims
from sriovlib.cni.protocol import DEVICE_BUSY, DEVICE_NOT_FOUND, INVALID_CONFIG, STATE_ERROR
from sriovlib.preparedvfs import DEFAULT_DRIVER, claims_dir
from sriovlib.testing.drakubelet import FakeClaims, resource_claim

from .conftest import Node

POD_UID = "6f1c2b1e-0000-4000-8000-000000000001"
OTHER_UID = "6f1c2b1e-0000-4000-8000-000000000002"


class Dra:
    """The DRA driver's half on the test node: claims prepared, their records."""

    def __init__(self, node: Node, driver: str = DEFAULT_DRIVER) -> None:
        self.node = node
        self.claims = FakeClaims()
        self.driver = driver
        self.store = PreparedClaims(claims_dir(node.ctx.state_dir, driver))
        self.preparer = Preparer(node.ctx.host, self.claims, self.store,
                                 cdi_dir=node.tmp / "cdi", driver=driver)  # fmt: skip

    def prepare(
        self,
        vfs: dict[str, list[int]],
        *,
        pod: str = "app",
        uid: str = POD_UID,
        pod_claim: str | None = "net",
        name: str | None = None,
        parameters: dict[str, Any] | None = None,
    ) -> Any:
        """A claim with the VFs of each request, reserved for the pod, prepared."""
        claim = resource_claim(
            name or f"{pod}-{pod_claim or 'claim'}-{uuid.uuid4().hex[:5]}",
            devices=[
                (request, "node1", device_name(self.node.vf(i)))
                for request, indexes in vfs.items()
                for i in indexes
            ],
            driver=self.driver,
            config=[{"parameters": parameters}] if parameters else (),
        )
        claim["status"]["reservedFor"] = [{"resource": "pods", "name": pod, "uid": uid}]
        if pod_claim is not None:
            claim["metadata"]["annotations"] = {POD_CLAIM_ANNOTATION: pod_claim}
        ref = self.claims.add(claim)
        self.preparer.prepare(ref)
        return ref


def give_rdma_nodes(node: Node) -> None:
    """The character devices of the fake node's RDMA VFs (a claim of one needs them)."""
    root = node.tmp / "root"
    (root / "dev/infiniband").mkdir(parents=True, exist_ok=True)
    (root / "dev/infiniband/rdma_cm").touch()
    for i in range(3):
        for ibdev in node.ctx.host.vf(node.vf(i)).rdma_devices:
            for cls, name in (("infiniband_verbs", f"uverbs{i}"), ("infiniband_mad", f"umad{i}")):
                entry = root / "sys/class" / cls / name
                entry.mkdir(parents=True, exist_ok=True)
                (entry / "ibdev").write_text(f"{ibdev}\n")
                (root / "dev/infiniband" / name).touch()


@pytest.fixture
def dra(node: Node) -> Dra:
    give_rdma_nodes(node)
    return Dra(node)


def pod_args(pod: str = "app", uid: str | None = POD_UID, namespace: str = "default") -> str:
    args = f"IgnoreUnknown=1;K8S_POD_NAMESPACE={namespace};K8S_POD_NAME={pod}"
    args += ";K8S_POD_INFRA_CONTAINER_ID=c1"
    return args + (f";K8S_POD_UID={uid}" if uid else "")


def no_device(node: Node, **fields: Any) -> dict[str, Any]:
    conf = node.conf(**fields)
    del conf["deviceID"]
    return conf


def at_home(node: Node, index: int) -> bool:
    """Whether VF *index*'s netdev is in the host namespace."""
    return any(link.parent == str(node.vf(index)) for link in node.kernel.links())


def in_pod(node: Node, ifname: str = "net1") -> str | None:
    """The PCI address of the VF that is *ifname* in the pod."""
    return node.kernel.link(ifname, node.pod).parent


def error(out: Any) -> tuple[int, str, str]:
    return out["code"], out["msg"], out.get("details", "")


def test_add_takes_the_pods_claimed_vf_and_del_gives_back_the_prepared_state(
    node: Node, dra: Dra
) -> None:
    """The claim's VLAN 42 is applied at prepare; the NAD's VLAN 100 and MAC at ADD; DEL
    returns the VF to the claim's settings (the state the CNI found), unprepare to the
    VF's own."""
    ref = dra.prepare({"vf": [1]}, parameters={"vlan": 42})
    assert node.state(1).vlan == 42
    conf = no_device(node, vlan=100, mac="ca:fe:00:00:00:01")
    status, result = node.invoke("ADD", conf, CNI_ARGS=pod_args())
    assert status == 0, result
    assert in_pod(node) == str(node.vf(1))
    link = node.kernel.link("net1", node.pod)
    assert (link.parent, link.mac) == (str(node.vf(1)), "ca:fe:00:00:00:01")
    assert (node.state(1).vlan, node.state(1).mac) == (100, "ca:fe:00:00:00:01")

    # CHECK finds the attachment by its owner (no deviceID needed either)
    status, out = node.invoke("CHECK", {**conf, "prevResult": result}, CNI_ARGS=pod_args())
    assert (status, out) == (0, None)

    # a retry of the same ADD gets the same VF
    status, again = node.invoke("ADD", conf, CNI_ARGS=pod_args())
    assert status == 0, again
    assert in_pod(node) == str(node.vf(1))

    status, out = node.invoke("DEL", conf, CNI_ARGS=pod_args())
    assert (status, out) == (0, None)
    assert at_home(node, 1)
    assert node.state(1).vlan == 42  # back to what the claim's prepare set
    dra.preparer.unprepare(ref)
    assert node.state(1).vlan == 0


def test_no_claim_prepared_for_the_pod_is_device_not_found(node: Node, dra: Dra) -> None:
    dra.prepare({"vf": [0]}, pod="other", uid=OTHER_UID)
    status, out = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args())
    assert status == 1
    code, msg, details = error(out)
    assert code == DEVICE_NOT_FOUND
    assert msg == f"no VF of a DRA claim is prepared for pod default/app (uid {POD_UID})"
    assert f"driver {DEFAULT_DRIVER}" in details
    assert at_home(node, 0)  # untouched


def test_the_pod_is_known_by_its_uid(node: Node, dra: Dra) -> None:
    """A pod made again under the same name (another UID) is not the claim's."""
    dra.prepare({"vf": [0]}, uid=OTHER_UID)
    status, out = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args())
    assert (status, out["code"]) == (1, DEVICE_NOT_FOUND)
    # without a UID (a runtime that passes none), by namespace and name
    status, result = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args(uid=None))
    assert status == 0, result
    assert in_pod(node) == str(node.vf(0))


def test_several_claims_need_a_key_and_the_key_chooses(node: Node, dra: Dra) -> None:
    dra.prepare({"vf": [0]}, pod_claim="fast")
    dra.prepare({"vf": [2]}, pod_claim="slow")
    status, out = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args())
    assert status == 1
    code, msg, _ = error(out)
    assert code == INVALID_CONFIG
    assert "2 VFs of different claims or requests are prepared for pod default/app" in msg
    assert '"dra"' in msg
    status, result = node.invoke("ADD", no_device(node, dra={"claim": "slow"}), CNI_ARGS=pod_args())
    assert status == 0, result
    assert in_pod(node) == str(node.vf(2))
    # the other claim is now the only free one: no key needed for net2
    status, result = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args(), CNI_IFNAME="net2")
    assert status == 0, result
    assert in_pod(node, "net2") == str(node.vf(0))


def test_requests_of_one_claim_and_vfs_of_one_request(node: Node, dra: Dra) -> None:
    """Two VFs of one request are interchangeable (taken in address order); a request
    named takes its own."""
    dra.prepare({"a": [0, 1], "b": [2]}, pod_claim="net")
    status, result = node.invoke("ADD", no_device(node, dra={"request": "b"}),
                                 CNI_ARGS=pod_args())  # fmt: skip
    assert status == 0, result
    assert in_pod(node) == str(node.vf(2))
    taken = []
    for ifname in ("net2", "net3"):
        status, result = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args(), CNI_IFNAME=ifname)
        assert status == 0, result
        taken.append(in_pod(node, ifname))
    assert taken == [str(node.vf(0)), str(node.vf(1))]
    status, out = node.invoke("ADD", no_device(node, dra={"claim": "net", "request": "c"}),
                              CNI_ARGS=pod_args(), CNI_IFNAME="net4")  # fmt: skip
    assert (status, out["code"]) == (1, DEVICE_NOT_FOUND)
    assert "claim 'net', request 'c'; its claims have: VF" in out["msg"]


def test_the_claimed_vf_is_not_given_twice(node: Node, dra: Dra) -> None:
    """Attached once, a second interface of the pod is refused (102); another pod
    cannot take it without deviceID (not reserved for it) nor by naming it (102)."""
    dra.prepare({"vf": [1]})
    status, result = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args())
    assert status == 0, result
    status, out = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args(), CNI_IFNAME="net2")
    assert status == 1
    code, msg, _ = error(out)
    assert code == DEVICE_BUSY
    assert msg.startswith("every VF prepared for pod default/app")
    assert f"VF {node.vf(1)} of claim default/" in msg
    other = {"CNI_ARGS": pod_args("other", OTHER_UID), "CNI_CONTAINERID": "c2"}
    status, out = node.invoke("ADD", no_device(node), **other)
    assert (status, out["code"]) == (1, DEVICE_NOT_FOUND)
    status, out = node.invoke("DEL", node.conf(), CNI_ARGS=pod_args())
    assert status == 0, out
    # free again, but still the claim's: a deviceID naming it for another pod is refused
    status, out = node.invoke("ADD", node.conf(1), **other)
    assert status == 1
    code, msg, _ = error(out)
    assert code == DEVICE_BUSY
    assert msg.startswith(f"VF {node.vf(1)} is prepared for DRA claim default/")
    assert "(reserved for default/app), not for this pod" in msg
    # a VF no claim holds is given by deviceID as before
    status, result = node.invoke("ADD", node.conf(2), **other)
    assert status == 0, result


def test_damaged_and_foreign_records(node: Node, dra: Dra) -> None:
    """A record that cannot be read, or that is of another driver, is left out; when the
    pod's VF is not found, they are why (106); a good record of the pod still works."""
    directory = claims_dir(node.ctx.state_dir, DEFAULT_DRIVER)
    directory.mkdir(parents=True, exist_ok=True)
    (directory / "0000-bad.json").write_text("{not json")
    (directory / "0000-bad.json").chmod(0o600)
    status, out = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args())
    assert status == 1
    code, msg, details = error(out)
    assert code == STATE_ERROR
    assert msg.startswith("no VF of a DRA claim is prepared for pod default/app")
    assert f"damaged records: {directory}/0000-bad.json:" in details

    other = Dra(node, "vf.example.com")
    ref = other.prepare({"vf": [0]})
    moved = directory / f"{ref.uid}.json"
    (claims_dir(node.ctx.state_dir, "vf.example.com") / f"{ref.uid}.json").rename(moved)
    status, out = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args())
    assert (status, out["code"]) == (1, STATE_ERROR)
    assert (
        "a record of driver 'vf.example.com' among those of 'sriov.sriovlib.io'" in out["details"]
    )
    moved.unlink()
    dra.prepare({"vf": [2]})
    status, result = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args())
    assert status == 0, result
    assert in_pod(node) == str(node.vf(2))


def test_another_driver_is_named_by_dra_driver(node: Node) -> None:
    give_rdma_nodes(node)
    other = Dra(node, "vf.example.com")
    other.prepare({"vf": [0]})
    status, out = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args())
    assert (status, out["code"]) == (1, DEVICE_NOT_FOUND)
    conf = no_device(node, dra={"driver": "vf.example.com"})
    status, result = node.invoke("ADD", conf, CNI_ARGS=pod_args())
    assert status == 0, result
    assert in_pod(node) == str(node.vf(0))


def test_a_record_naming_a_vf_this_node_lacks(node: Node, dra: Dra) -> None:
    ref = dra.prepare({"vf": [0]})
    path = claims_dir(node.ctx.state_dir, DEFAULT_DRIVER) / f"{ref.uid}.json"
    record = json.loads(path.read_text())
    record["devices"][0]["address"] = "0000:77:00.1"
    path.write_text(json.dumps(record))
    status, out = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args())
    assert (status, out["code"]) == (1, DEVICE_NOT_FOUND)
    assert "VF 0000:77:00.1 of claim default/" in out["msg"]
    assert "is not a VF of this node: the record is from another node" in out["msg"]


@pytest.mark.parametrize(
    ("dra", "problem"),
    [
        ("net", "dra must be an object"),
        ({"claim": 3}, "dra.claim must be a string"),
        ({"clam": "net"}, "dra has unknown keys: clam"),
        ({"driver": "Not/A/Driver"}, "dra.driver 'Not/A/Driver' is not a DRA driver name"),
    ],
)
def test_bad_dra_keys(node: Node, dra: Any, problem: str) -> None:
    status, out = node.invoke("ADD", no_device(node, dra=dra), CNI_ARGS=pod_args())
    assert (status, out["code"]) == (1, INVALID_CONFIG)
    assert problem in out["details"]


def test_without_the_pod_in_cni_args_deviceid_is_missing(node: Node, dra: Dra) -> None:
    dra.prepare({"vf": [0]})
    status, out = node.invoke("ADD", no_device(node))
    assert (status, out["code"]) == (1, INVALID_CONFIG)
    assert "deviceID is missing" in out["details"]
    assert "K8S_POD_NAMESPACE and K8S_POD_NAME" in out["details"]


def test_records_written_before_reserved_for_match_no_pod(node: Node, dra: Dra) -> None:
    """A record of the format before ``reservedFor`` (an agent upgraded under its
    claims) is read, reserved for no pod: no VF for it, and nothing damaged."""
    ref = dra.prepare({"vf": [0]})
    path = claims_dir(node.ctx.state_dir, DEFAULT_DRIVER) / f"{ref.uid}.json"
    record = json.loads(path.read_text())
    del record["reservedFor"], record["podClaimName"]
    path.write_text(json.dumps(record))
    assert dra.store.get(ref.uid) is not None  # the agent reads it too
    status, out = node.invoke("ADD", no_device(node), CNI_ARGS=pod_args())
    assert (status, out["code"]) == (1, DEVICE_NOT_FOUND)
