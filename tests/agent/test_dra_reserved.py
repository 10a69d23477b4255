"""The pods a claim is reserved for, from the ResourceClaim to the prepared-claim record
(what the CNI plugin reads to give a pod the VF of its claim: tests/cni/test_dra_claims.py)."""

from __future__ import annotations

import json
from datetime import UTC, datetime
from typing import Any

import pytest

from sriovlib.agent.draclaims import (
    POD_CLAIM_ANNOTATION,
    ClaimError,
    ClaimRef,
    PodRef,
    parse_resource_claim,
)
from sriovlib.agent.drastore import PreparedClaim, PreparedClaims, PreparedDevice
from sriovlib.models import PciAddress
from sriovlib.preparedvfs import read_prepared
from sriovlib.testing.drakubelet import resource_claim

DRIVER = "sriov.sriovlib.io"


def claim_with(reserved: Any, annotations: Any = None) -> dict[str, Any]:
    claim = resource_claim("c", devices=[("vf", "node1", "vf-0000-5e-00-2")], uid="u-1")
    claim["status"]["reservedFor"] = reserved
    if annotations is not None:
        claim["metadata"]["annotations"] = annotations
    return claim


def test_pods_of_reserved_for_and_the_pod_claim_name() -> None:
    parsed = parse_resource_claim(
        claim_with(
            [
                {"resource": "pods", "name": "app", "uid": "p-1"},
                {"resource": "pods", "name": "app2", "uid": "p-2", "apiGroup": ""},
                {"resource": "jobs", "apiGroup": "batch", "name": "j", "uid": "j-1"},
            ],
            {POD_CLAIM_ANNOTATION: "net", "other": "x"},
        ),
        DRIVER,
    )
    assert parsed.reserved_for == (PodRef("app", "p-1"), PodRef("app2", "p-2"))
    assert parsed.pod_claim == "net"
    bare = parse_resource_claim(claim_with(None), DRIVER)
    assert (bare.reserved_for, bare.pod_claim) == ((), None)


@pytest.mark.parametrize(
    ("reserved", "message"),
    [
        ({"resource": "pods"}, "status.reservedFor must be a list, not an object"),
        (["app"], "status.reservedFor[0] must be an object, not 'app'"),
        ([{"resource": "pods", "uid": "p"}], "status.reservedFor[0].name must be a non-empty"),
        ([{"resource": "pods", "name": "a"}], "status.reservedFor[0].uid must be a non-empty"),
    ],
)
def test_a_malformed_reserved_for_is_the_claims_error(reserved: Any, message: str) -> None:
    with pytest.raises(ClaimError, match=message.replace("[", r"\[").replace("]", r"\]")):
        parse_resource_claim(claim_with(reserved), DRIVER)


def test_the_record_keeps_them_and_the_cni_reader_reads_them(tmp_path: Any) -> None:
    store = PreparedClaims(tmp_path / "dra" / DRIVER / "claims")
    record = PreparedClaim(
        claim=ClaimRef("default", "app-net-x", "u-1"),
        driver=DRIVER,
        devices=(
            PreparedDevice(
                "vf",
                "node1",
                "vf-0000-5e-00-2",
                PciAddress.parse("0000:5e:00.2"),
                ("sriov.sriovlib.io/vf=u-1-vf-0000-5e-00-2",),
            ),
        ),
        cdi_spec="/var/run/cdi/x.json",
        spec={},
        prepared_at=datetime.now(UTC),
        reserved_for=(PodRef("app", "p-1"),),
        pod_claim="net",
    )
    store.put(record)
    again = store.get("u-1")
    assert again is not None
    assert (again.reserved_for, again.pod_claim) == ((PodRef("app", "p-1"),), "net")
    (vf,) = read_prepared(tmp_path, DRIVER).vfs
    assert (vf.address, vf.claim, vf.pod_claim, vf.pods) == (
        PciAddress.parse("0000:5e:00.2"), "app-net-x", "net", (("app", "p-1"),))  # fmt: skip
    # a record of the format before the keys (an agent upgraded under its claims)
    path = store.directory / "u-1.json"
    data = json.loads(path.read_text())
    del data["reservedFor"], data["podClaimName"]
    path.write_text(json.dumps(data))
    old = store.get("u-1")
    assert old is not None
    assert (old.reserved_for, old.pod_claim) == ((), None)
    assert read_prepared(tmp_path, DRIVER).vfs[0].pods == ()
