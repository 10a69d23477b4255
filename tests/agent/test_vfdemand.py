"""The VFs-on-demand decision (sriovlib.agent.vfdemand), pure: the CEL selectors it
reads, the pending requests it finds in the API server's objects, and what it decides
for PFs with a budget."""

from __future__ import annotations

from typing import Any

import pytest

from sriovlib.agent.vfdemand import (
    Device,
    PfState,
    Request,
    allocated_devices,
    decide,
    matches,
    may_go_to,
    pending_requests,
)
from sriovlib.models import PciAddress
from sriovlib.policy import VfBudget
from sriovlib.testing.drakubelet import resource_claim

DRIVER = "sriov.sriovlib.io"
PF1 = PciAddress.parse("0000:5e:00.0")
PF2 = PciAddress.parse("0000:5e:00.1")
ON_PF1 = f'device.attributes["{DRIVER}"].pfName == "enp94s0f0"'
CLASS = f'device.driver == "{DRIVER}"'


def attributes(pf: str = "enp94s0f0", index: int | None = 0, **more: Any) -> dict[str, Any]:
    found: dict[str, Any] = {"pfName": {"string": pf}, "driver": {"string": "iavf"},
                             "rdma": {"bool": False}, "numaNode": {"int": 1}}  # fmt: skip
    if index is not None:
        found["vfIndex"] = {"int": index}
        found["resource.kubernetes.io/pciBusID"] = {"string": f"0000:5e:02.{index}"}
    found.update(more)
    return found


class TestMatches:
    @pytest.mark.parametrize(
        ("expression", "expected"),
        [
            (CLASS, True),
            ('device.driver == "other.example.com"', False),
            ('device.driver != "other.example.com"', True),
            (ON_PF1, True),
            (f'device.attributes["{DRIVER}"].pfName == "enp94s0f1"', False),
            (f'device.attributes["{DRIVER}"]["pfName"] != "enp94s0f1"', True),
            (f'device.attributes["{DRIVER}"].numaNode == 1', True),
            (f'device.attributes["{DRIVER}"].rdma == true', False),
            (f"{CLASS} && {ON_PF1}", True),
            (f'{CLASS} && device.attributes["{DRIVER}"].numaNode == 0', False),
            ('device.attributes["resource.kubernetes.io"].pciBusID == "0000:5e:02.0"', True),
            (f'device.attributes["{DRIVER}"].noSuchAttribute == "x"', False),  # a CEL error
            (f"{ON_PF1} || {CLASS}", None),  # not a conjunction: cannot tell
            (f'device.attributes["{DRIVER}"].pfName.startsWith("enp")', None),
            # && in a string is not a clause: one comparison, false
            (f'device.attributes["{DRIVER}"].pfName == "enp94&&s0f0"', False),
        ],
    )
    def test_a_published_device(self, expression: str, expected: bool | None) -> None:
        assert expected is matches([expression], attributes(), DRIVER)

    def test_every_expression_must_hold(self) -> None:
        assert matches([CLASS, ON_PF1], attributes(), DRIVER) is True
        assert matches([CLASS, ON_PF1], attributes(pf="enp94s0f1"), DRIVER) is False
        assert matches([f"{ON_PF1} || x", "false == true"], attributes(), DRIVER) is None

    def test_a_vf_not_made_yet(self) -> None:
        """Of a VF to come, its own values (index, address) and what only its driver
        tells are unknown: may match; its PF's name is known; a name the driver never
        publishes is still no match."""
        known = attributes(index=None)
        del known["driver"]
        assert matches([f'device.attributes["{DRIVER}"].vfIndex == 3'], known, DRIVER,
                       prospective=True) is None  # fmt: skip
        assert matches([f'device.attributes["{DRIVER}"].driver == "iavf"'], known, DRIVER,
                       prospective=True) is None  # fmt: skip
        assert matches([ON_PF1], known, DRIVER, prospective=True) is True
        assert matches([f'device.attributes["{DRIVER}"].pfName == "x"'], known, DRIVER,
                       prospective=True) is False  # fmt: skip
        assert matches([f'device.attributes["{DRIVER}"].noSuch == 1'], known, DRIVER,
                       prospective=True) is False  # fmt: skip


def device_class(name: str, expression: str) -> dict[str, Any]:
    return {
        "metadata": {"name": name},
        "spec": {"selectors": [{"cel": {"expression": expression}}]},
    }


def claim(name: str, *requests: dict[str, Any], created: str = "2026-01-01T00:00:00Z",
          **more: Any) -> dict[str, Any]:  # fmt: skip
    body = resource_claim(name, allocated=False)
    body["metadata"]["creationTimestamp"] = created
    body["metadata"].update(more)
    body["spec"]["devices"]["requests"] = list(requests)
    return body


def exactly(name: str = "vf", cls: str = "vf", *selectors: str, **more: Any) -> dict[str, Any]:
    return {"name": name, "exactly": {"deviceClassName": cls, **more,
            "selectors": [{"cel": {"expression": e}} for e in selectors]}}  # fmt: skip


def pod(claims: list[str], node: str | None = None, templated: bool = True) -> dict[str, Any]:
    spec: dict[str, Any] = {"resourceClaims": []}
    status: dict[str, Any] = {}
    if templated:
        spec["resourceClaims"] = [{"name": f"c{i}", "resourceClaimTemplateName": "t"}
                                  for i, _ in enumerate(claims)]  # fmt: skip
        status["resourceClaimStatuses"] = [{"name": f"c{i}", "resourceClaimName": c}
                                           for i, c in enumerate(claims)]  # fmt: skip
    else:
        spec["resourceClaims"] = [{"name": c, "resourceClaimName": c} for c in claims]
    if node:
        spec["nodeName"] = node
    return {"metadata": {"name": "p", "namespace": "default"}, "spec": spec, "status": status}


CLASSES = [device_class("vf", CLASS), device_class("gpu", 'device.driver == "gpu.example.com"')]


class TestPendingRequests:
    def test_a_templated_claim_of_a_pod_waiting_for_a_node(self) -> None:
        """The claim the controller made for a pod no node has: its request, with the
        class's selectors before its own, and the claim's UID (for its Event)."""
        pending = claim("a", exactly("vf", "vf", ON_PF1))
        found = pending_requests([pending], [pod(["a"])], CLASSES, DRIVER)
        uid = pending["metadata"]["uid"]
        assert (
            Request("default/a", "vf", 1, (CLASS, ON_PF1), "2026-01-01T00:00:00Z", uid),
        ) == found

    def test_what_is_not_demand(self) -> None:
        """Not pending: allocated, not referenced by a waiting pod (none, or one on a
        node), being deleted, of another driver's class, allocation mode All."""
        allocated = resource_claim("allocated", devices=[("vf", "n", "vf-0000-5e-02-0")])
        allocated["spec"]["devices"]["requests"] = [exactly()]
        claims = [
            allocated,
            claim("unreferenced", exactly()),
            claim("scheduled", exactly()),
            claim("deleted", exactly(), deletionTimestamp="2026-01-01T00:00:01Z"),
            claim("gpu", exactly("g", "gpu")),
            claim("all", exactly(allocationMode="All")),
        ]
        pods = [pod(["allocated", "deleted", "gpu", "all"]), pod(["scheduled"], node="n")]
        assert () == pending_requests(claims, pods, CLASSES, DRIVER)

    def test_counts_prioritized_lists_direct_claims_and_order(self) -> None:
        claims = [
            claim("late", exactly(count=3), created="2026-01-02T00:00:00Z"),
            claim(
                "early",
                {
                    "name": "net",
                    "firstAvailable": [
                        {"name": "gpu", "deviceClassName": "gpu"},
                        {"name": "vf", "deviceClassName": "vf"},
                    ],
                },
            ),
        ]
        found = pending_requests(claims, [pod(["late"]), pod(["early"], templated=False)],
                                 CLASSES, DRIVER)  # fmt: skip
        assert [("default/early", "net", 1), ("default/late", "vf", 3)] == [
            (r.claim, r.request, r.count) for r in found
        ]

    def test_allocated_devices_of_this_pool(self) -> None:
        claims = [
            resource_claim("a", devices=[("vf", "node1", "vf-1"), ("vf", "node2", "vf-2")]),
            resource_claim("b", devices=[("g", "node1", "gpu-0")], driver="gpu.example.com"),
            claim("pending", exactly()),
        ]
        assert frozenset({"vf-1"}) == allocated_devices(claims, DRIVER, "node1")


def pf_state(address: PciAddress = PF1, num_vfs: int = 0, budget: tuple[int, int] = (0, 4),
             **more: Any) -> PfState:  # fmt: skip
    name = "enp94s0f0" if address == PF1 else "enp94s0f1"
    more.setdefault("attributes", attributes(pf=name, index=None))
    return PfState(address=address, name=name, budget=VfBudget(*budget), num_vfs=num_vfs, **more)


def free(address: PciAddress, index: int) -> Device:
    name = "enp94s0f0" if address == PF1 else "enp94s0f1"
    return Device(f"vf-{address.function}-{index}", address, index, attributes(name, index))


def want(count: int = 1, *selectors: str, claim: str = "default/a") -> Request:
    return Request(claim, "vf", count, (CLASS, *selectors))


def outcome(verdict: Any) -> list[tuple[str, int, int]]:
    return [(r.name, r.before, r.after) for r in verdict.resizes]


class TestDecide:
    def test_a_free_matching_device_is_used_first(self) -> None:
        verdict = decide([pf_state(num_vfs=1)], [want(1, ON_PF1)], [free(PF1, 0)],
                         driver=DRIVER, idle_seconds=60)  # fmt: skip
        assert [] == outcome(verdict)
        assert ((), {}) == (verdict.blocked, verdict.unmet)

    def test_no_free_device_raises_the_pf_the_selector_names(self) -> None:
        """VF 0 of PF2 is free but the claim wants PF1: PF1 goes 0 -> 1."""
        verdict = decide(
            [pf_state(), pf_state(PF2, num_vfs=1)],
            [want(1, ON_PF1)],
            [free(PF2, 0)],
            driver=DRIVER,
            idle_seconds=60,
        )
        assert [("enp94s0f0", 0, 1)] == outcome(verdict)
        assert "1 VF(s) wanted by pending claims" == verdict.resizes[0].reason
        assert {PF1: 1} == verdict.unmet

    def test_the_budget_caps_and_spills(self) -> None:
        """5 VFs wanted, budgets 0-2 and 0-2: both PFs raised to 2, one request left
        unserved; a claim for a PF of no budget is unserved, nothing raised for it."""
        other = want(1, 'device.attributes["sriov.sriovlib.io"].pfName == "eno1"', claim="x")
        verdict = decide(
            [pf_state(budget=(0, 2)), pf_state(PF2, budget=(0, 2))],
            [want(2), want(3, claim="default/b"), other],
            [],
            driver=DRIVER,
            idle_seconds=60,
        )
        assert [("enp94s0f0", 0, 2), ("enp94s0f1", 0, 2)] == outcome(verdict)
        assert ["default/b", "x"] == [r.claim for r in verdict.unserved]

    def test_a_vf_in_use_blocks_a_raise_unless_the_plugin_adds_live(self) -> None:
        """The count goes through 0: with VF 0 allocated, no raise (the reason says why);
        a plugin whose plan is live raises anyway."""
        blocked = decide([pf_state(num_vfs=1, in_use=frozenset({0}))], [want()], [],
                         driver=DRIVER, idle_seconds=60)  # fmt: skip
        assert [] == outcome(blocked)
        (why,) = blocked.blocked
        assert (2, "VF 0 in use: numvfs 1 -> 2 goes through 0 and would reset every VF of "
                "enp94s0f0") == (why.wanted, why.reason)  # fmt: skip
        assert (want(),) == why.requests  # the claims told why they wait
        live = decide([pf_state(num_vfs=1, in_use=frozenset({0}), live=True)], [want()], [],
                      driver=DRIVER, idle_seconds=60)  # fmt: skip
        assert [("enp94s0f0", 1, 2)] == outcome(live)

    def test_unhealthy_vfs_block_a_raise(self) -> None:
        verdict = decide([pf_state(num_vfs=1, unpublished=1)], [want()], [],
                         driver=DRIVER, idle_seconds=60)  # fmt: skip
        assert [] == outcome(verdict)
        assert "1 of its VFs are unhealthy" in verdict.blocked[0].reason

    def test_idle_vfs_go_back_to_the_floor_after_the_idle_period(self) -> None:
        idle = {0: 30.0, 1: 30.0, 2: 30.0}
        young = decide([pf_state(num_vfs=3, budget=(1, 4), idle=idle)], [], [],
                       driver=DRIVER, idle_seconds=60)  # fmt: skip
        assert [] == outcome(young)
        old = dict.fromkeys(idle, 61.0)
        verdict = decide([pf_state(num_vfs=3, budget=(1, 4), idle=old)], [], [],
                         driver=DRIVER, idle_seconds=60)  # fmt: skip
        assert [("enp94s0f0", 3, 1)] == outcome(verdict)
        assert "VFs 1-2 free for 60 s or more" == verdict.resizes[0].reason

    def test_the_floor_of_what_is_in_use(self) -> None:
        """VF 1 in use, 2-3 idle: the count could go to 2 — but through 0, so only on a
        live plugin; one VF of 2-3 still young keeps all."""
        idle = {0: 100.0, 1: 0.0, 2: 100.0, 3: 100.0}
        state = pf_state(num_vfs=4, in_use=frozenset({1}), idle=idle)
        verdict = decide([state], [], [], driver=DRIVER, idle_seconds=60)
        assert [] == outcome(verdict)
        assert [(2, "VF 1 in use: numvfs 4 -> 2 goes through 0 and would reset every VF of "
                 "enp94s0f0", ())] == [(b.wanted, b.reason, b.requests)
                                       for b in verdict.blocked]  # fmt: skip
        live = pf_state(num_vfs=4, in_use=frozenset({1}), idle=idle, live=True)
        assert [("enp94s0f0", 4, 2)] == outcome(decide([live], [], [], driver=DRIVER,
                                                       idle_seconds=60))  # fmt: skip
        young = pf_state(num_vfs=4, in_use=frozenset({1}), idle={**idle, 3: 5.0}, live=True)
        assert [] == outcome(decide([young], [], [], driver=DRIVER, idle_seconds=60))

    def test_a_free_vf_a_pending_claim_will_get_is_not_given_back(self) -> None:
        """VF 0 idle for long, but a pending claim matches it (the scheduler is about to
        allocate it): kept."""
        state = pf_state(num_vfs=1, idle={0: 500.0})
        verdict = decide([state], [want(1, ON_PF1)], [free(PF1, 0)], driver=DRIVER,
                         idle_seconds=60)  # fmt: skip
        assert ([], ()) == (outcome(verdict), verdict.blocked)
        alone = decide([state], [], [free(PF1, 0)], driver=DRIVER, idle_seconds=60)
        assert [("enp94s0f0", 1, 0)] == outcome(alone)


NODE = {"metadata": {"name": "node1", "labels": {"kubernetes.io/hostname": "node1",
                                                "sriov": "yes", "zone": "a"}}}  # fmt: skip


def term(*expressions: dict[str, Any], fields: tuple[dict[str, Any], ...] = ()) -> dict[str, Any]:
    return {"matchExpressions": list(expressions), "matchFields": list(fields)}


def affinity(*terms: dict[str, Any]) -> dict[str, Any]:
    required = {"nodeSelectorTerms": list(terms)}
    return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": required}}


class TestMayGoTo:
    @pytest.mark.parametrize(
        ("spec", "expected"),
        [
            ({}, True),
            ({"nodeSelector": {"sriov": "yes"}}, True),
            ({"nodeSelector": {"sriov": "yes", "zone": "b"}}, False),
            ({"nodeSelector": {"kubernetes.io/hostname": "node2"}}, False),
            ({"affinity": affinity(term({"key": "zone", "operator": "In", "values": ["a", "b"]}))},
             True),
            ({"affinity": affinity(term({"key": "zone", "operator": "NotIn", "values": ["a"]}))},
             False),
            ({"affinity": affinity(term({"key": "gpu", "operator": "Exists"}),
                                   term({"key": "gpu", "operator": "DoesNotExist"}))}, True),
            ({"affinity": affinity(term({"key": "gpu", "operator": "Exists"}))}, False),
            ({"affinity": affinity(term(fields=({"key": "metadata.name", "operator": "In",
                                                 "values": ["node2"]},)))}, False),
            ({"affinity": affinity(term({"key": "cores", "operator": "Gt", "values": ["8"]}))},
             True),  # cannot tell: may
        ],
    )  # fmt: skip
    def test_selector_and_required_affinity(self, spec: dict[str, Any], expected: bool) -> None:
        assert expected is may_go_to(spec, NODE)

    def test_a_pod_for_another_node_is_no_demand_here(self) -> None:
        elsewhere = pod(["a"])
        elsewhere["spec"]["nodeSelector"] = {"kubernetes.io/hostname": "node2"}
        claims = [claim("a", exactly())]
        assert () == pending_requests(claims, [elsewhere], CLASSES, DRIVER, NODE)
        assert 1 == len(pending_requests(claims, [elsewhere], CLASSES, DRIVER))  # no node: may
