"""A VF budget in the node policy (``vfBudget: {min, max}`` instead of ``numVfs``): its
format and checks, the merge on a PF, the plan and apply on the fake kernel (the floor
set, never lowered while in range, never taken from pods), and the counts the DRA
driver's VFs on demand ask the plan for."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sriovlib.cli import main
from sriovlib.exceptions import Busy
from sriovlib.policy import (
    OPERATOR_API,
    NodePolicy,
    PolicyError,
    VfBudget,
    apply,
    merge,
    parse_policies,
    plan,
)
from sriovlib.pools import assign, discover_devices, dump_config, parse_config

from .test_policy import PF, PF_ADDRESS, node


def entry(**fields: object) -> dict[str, object]:
    base: dict[str, object] = {
        "name": "p",
        "resourceName": "r",
        "vfBudget": {"min": 1, "max": 6},
        "nicSelector": {"pfNames": [PF]},
    }
    base.update(fields)
    return {k: v for k, v in base.items() if v is not None}


def parse(*entries: dict[str, object]) -> tuple[NodePolicy, ...]:
    return parse_policies(json.dumps({"policies": list(entries)})).policies


def problem(**fields: object) -> str:
    with pytest.raises(PolicyError) as info:
        parse(entry(**fields))
    message = str(info.value)
    assert "\n" not in message
    return message


class TestFormat:
    def test_a_budget_instead_of_numvfs(self) -> None:
        """The budget is read; the policy's numVfs is its floor, its ceiling the max."""
        (policy,) = parse(entry())
        assert VfBudget(1, 6) == policy.vf_budget
        assert (1, 6) == (policy.num_vfs, policy.ceiling)

    def test_min_defaults_to_zero(self) -> None:
        (policy,) = parse(entry(vfBudget={"max": 3}))
        assert VfBudget(0, 3) == policy.vf_budget

    def test_in_an_operator_document(self) -> None:
        """The operator's documents may carry it too (spec.vfBudget)."""
        doc = {
            "apiVersion": OPERATOR_API,
            "kind": "SriovNetworkNodePolicy",
            "metadata": {"name": "od"},
            "spec": {
                "resourceName": "r",
                "vfBudget": {"min": 0, "max": 4},
                "nicSelector": {"pfNames": [PF]},
            },
        }
        (policy,) = parse_policies(json.dumps(doc)).policies
        assert VfBudget(0, 4) == policy.vf_budget

    @pytest.mark.parametrize(
        ("fields", "message"),
        [
            (
                {"numVfs": 4},
                "policy 'p': numVfs and vfBudget: give one (a fixed count, or a floor and a "
                "ceiling), not both",
            ),
            ({"vfBudget": None}, "policy 'p': numVfs (or vfBudget) is required"),
            ({"vfBudget": {"min": 4, "max": 2}}, "policy 'p': vfBudget: min 4 is above max 2"),
            ({"vfBudget": {"min": 0}}, "policy 'p': vfBudget.max is required"),
            ({"vfBudget": {"max": 0}}, "vfBudget.max: 0 gives no VF to raise (use numVfs: 0)"),
            ({"vfBudget": {"min": -1, "max": 2}}, "vfBudget.min: -1 is negative"),
            ({"vfBudget": {"max": "4"}}, "vfBudget.max: expected an integer, not '4'"),
            ({"vfBudget": {"max": True}}, "vfBudget.max: expected an integer, not True"),
            ({"vfBudget": 4}, "vfBudget: expected a mapping {min: M, max: N}, not 4"),
            (
                {"vfBudget": {"maximum": 4, "max": 4}},
                "vfBudget: unknown field 'maximum' (did you mean 'max'?)",
            ),
            (
                {"externallyManaged": True},
                "vfBudget with externallyManaged: whoever manages the PF makes its VFs",
            ),
            (
                {"nicSelector": {"pfNames": [f"{PF}#2-6"]}},
                f"nicSelector.pfNames: {PF}#2-6 reaches VF 6 but vfBudget.max is 6",
            ),
        ],
    )
    def test_bad_budgets(self, fields: dict[str, object], message: str) -> None:
        assert message in problem(**fields)


class TestMerge:
    def test_max_above_totalvfs(self, tmp_path: Path) -> None:
        """igb has 7 VFs a port: a budget reaching 8 is an error naming the PF."""
        host = node(tmp_path).host()
        with pytest.raises(PolicyError, match=f"vfBudget.max 8 exceeds totalvfs 7 of {PF}"):
            merge(parse(entry(vfBudget={"max": 8})), host.inventory())

    def test_a_fixed_policy_beside_a_budget_raises_the_floor(self, tmp_path: Path) -> None:
        """Two partitions of one PF, one fixed (VFs 0-1), one with a budget (VFs 2-5):
        the floor is the larger of numVfs and min, the ceiling the max; the pools cover
        the budget's whole range, so VFs made later join theirs."""
        host = node(tmp_path).host()
        policies = parse(
            entry(name="fixed", resourceName="a", vfBudget=None, numVfs=2,
                  nicSelector={"pfNames": [f"{PF}#0-1"]}),
            entry(name="budget", resourceName="b", vfBudget={"min": 0, "max": 6},
                  nicSelector={"pfNames": [f"{PF}#2-5"]}),
        )  # fmt: skip
        (target,) = merge(policies, host.inventory()).pfs
        assert VfBudget(2, 6) == target.budget
        assert 2 == target.num_vfs  # the PF has 0: raised to the floor

    def test_a_fixed_count_above_the_ceiling_is_a_conflict(self, tmp_path: Path) -> None:
        host = node(tmp_path).host()
        policies = parse(
            entry(name="fixed", resourceName="a", vfBudget=None, numVfs=5,
                  nicSelector={"pfNames": [f"{PF}#0-1"]}),
            entry(name="budget", resourceName="b", vfBudget={"max": 4},
                  nicSelector={"pfNames": [f"{PF}#2-3"]}),
        )  # fmt: skip
        wanted = r"'fixed' wants 5 VFs of .* above the vfBudget\.max 4"
        with pytest.raises(PolicyError, match=wanted):
            merge(policies, host.inventory())


class TestPlanAndApply:
    def test_apply_sets_the_floor_and_the_pool_spans_the_budget(self, tmp_path: Path) -> None:
        """0 VFs, budget 2-6: apply makes 2; the pool selects VFs 0-5 of the PF, so the
        VFs the agent adds later are in it; a second plan is empty."""
        kernel = node(tmp_path)
        host = kernel.host()
        policies = parse(entry(vfBudget={"min": 2, "max": 6}))
        the_plan = plan(host, policies)
        assert ["PF sriov_numvfs 0 -> 2"] == [
            str(c) for c in the_plan.changes if c.what == "sriov_numvfs"
        ]
        assert {"min": 2, "max": 6} == the_plan.pfs[0].to_dict()["target"]["vfBudget"]
        apply(host, the_plan)
        assert 2 == len(host.vfs(PF))
        assert plan(host, policies).empty
        (pool,) = parse_config(dump_config(the_plan.pools)).pools
        assert [f"{PF}#0-5"] == [str(f) for s in pool.selectors for f in s.pf_names]
        host.set_num_vfs(PF, 5)  # what the agent does on demand
        members = assign(parse_config(dump_config(the_plan.pools)),
                         discover_devices(host.inventory()))  # fmt: skip
        assert [0, 1, 2, 3, 4] == [d.vf_index for d in members.pools[0].devices]

    def test_a_count_inside_the_budget_is_left(self, tmp_path: Path) -> None:
        """A PF the agent raised to 5 (budget 1-6) is not lowered by apply: in range."""
        kernel = node(tmp_path)
        host = kernel.host()
        host.set_num_vfs(PF, 5)
        assert plan(host, parse(entry())).empty

    def test_above_the_ceiling_is_lowered_but_never_from_pods(self, tmp_path: Path) -> None:
        """7 VFs, a budget up to 4: lowered to 4 when no VF is in use; with one in a pod
        apply refuses, nothing written."""
        kernel = node(tmp_path)
        host = kernel.host()
        host.set_num_vfs(PF, 7)
        vf = host.vfs(PF)[0]
        assert vf.netdev is not None
        pod = kernel.add_netns("pod")
        host.netlink.move_link(host.link(vf.netdev).index, "net1", target=pod)
        policies = parse(entry(vfBudget={"max": 4}))
        the_plan = plan(host, policies)
        assert ["PF sriov_numvfs 7 -> 4"] == [str(c) for c in the_plan.pfs[0].refused]
        writes = len(kernel.sysfs_writes)
        with pytest.raises(Busy, match=r"VF 0 \(0000:01:00\.1\) in use"):
            apply(host, the_plan)
        assert writes == len(kernel.sysfs_writes)
        assert 7 == len(host.vfs(PF))

    def test_counts_of_the_agent(self, tmp_path: Path) -> None:
        """plan(counts=...) sets a budget PF's count (the agent's raise), checked against
        the budget; a PF without a budget, or not selected, refuses one."""
        kernel = node(tmp_path, ports=2)
        host = kernel.host()
        policies = parse(
            entry(),
            entry(name="fixed", resourceName="f", vfBudget=None, numVfs=2,
                  nicSelector={"pfNames": ["enp1s0f1"]}),
        )  # fmt: skip
        apply(host, plan(host, policies))
        assert 1 == len(host.vfs(PF))
        raised = plan(host, policies, counts={PF_ADDRESS: 4})
        assert ["PF sriov_numvfs 1 -> 4"] == [
            str(c) for c in raised.changes if c.what == "sriov_numvfs"
        ]
        apply(host, raised)
        assert 4 == len(host.vfs(PF))
        other = host.pf("enp1s0f1").address
        for counts, message in [
            ({PF_ADDRESS: 7}, f"{PF}: 7 VFs is outside its vfBudget 1-6"),
            ({PF_ADDRESS: 0}, f"{PF}: 0 VFs is outside its vfBudget 1-6"),
            ({other: 3}, "enp1s0f1: has no vfBudget, its numVfs is fixed"),
        ]:
            with pytest.raises(PolicyError, match=message):
                plan(host, policies, counts=counts)


def test_sriovlib_apply_shows_the_budget(
    tmp_path: Path, capsys: pytest.CaptureFixture[str]
) -> None:
    """``sriovlib apply`` on the 82599 example (0 VFs): the budget on the PF's line, the
    floor made, the pool over the budget's range."""
    path = tmp_path / "p.json"
    path.write_text(json.dumps({"policies": [entry(nicSelector={"pfNames": ["enp4s0f0"]},
                                                   vfBudget={"min": 2, "max": 6})]}))  # fmt: skip
    assert 0 == main(["apply", "-f", str(path), "--example", "ixgbe"])
    out = capsys.readouterr().out
    assert "enp4s0f0 (0000:3b:00.0), ixgbe plugin, policy p, vfBudget 2-6" in out
    assert "PF    sriov_numvfs 0 -> 2" in out
    assert "pool r: enp4s0f0#0-5" in out
