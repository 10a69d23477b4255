"""VFs on demand in an agent (sriovlib.agent.ondemand), in process, on the fake kernel of
an 82599 node whose PFs have no VFs (the fake enforces the kernel's numvfs rules: a
non-zero count changes only through 0, none above totalvfs), with a policy giving one PF
a ``vfBudget`` and an in-memory API server holding the slices, the claims, the pods and
the DeviceClass: a pending claim raises the count and the slices gain the VF; a second
claim while it is allocated is refused (blocked, said why); idle VFs go back to the
floor after withdrawing them from the slices; an allocation arriving in that window
calls the lowering off; dry-run changes nothing."""

from __future__ import annotations

import json
import logging
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import pytest

from sriovlib.agent.dra import DraOptions
from sriovlib.agent.metrics import read_status
from sriovlib.agent.ondemand import (
    CLAIMS,
    CLASSES,
    PODS,
    OnDemandMode,
    OnDemandOptions,
    PolicyResizer,
)
from sriovlib.agent.runner import Agent, AgentOptions
from sriovlib.cli import main
from sriovlib.host import Host
from sriovlib.plugins import PfMatch, hookimpl
from sriovlib.plugins.manager import Plugins
from sriovlib.plugins.types import NumVfsPlan, Step, StepKind
from sriovlib.policy import apply, merge, parse_policies, plan
from sriovlib.testing.drakubelet import FakeClaims, device_name_of, resource_claim
from sriovlib.testing.fakenetlink import FakeNetlink
from sriovlib.testing.presets import build_example

from .test_dra_ownership import MemoryApi

DRIVER = "sriov.sriovlib.io"
PF = "enp4s0f0"
POLICY = {
    "policies": [
        {
            "name": "on-demand",
            "resourceName": "od_net",
            "vfBudget": {"min": 0, "max": 2},
            "nicSelector": {"pfNames": [PF]},
        }
    ]
}
CLASS = {
    "metadata": {"name": "sriovlib-vf"},
    "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
}


class ClusterApi(MemoryApi):
    """The slices of MemoryApi, and the claims, pods and classes the VFs on demand list."""

    def __init__(self) -> None:
        super().__init__()
        self.claims: dict[str, dict[str, Any]] = {}
        self.pods: dict[str, dict[str, Any]] = {}
        self.classes = [CLASS]
        self.lists = 0
        self.pod_lists = 0
        #: Called with each slice written (what the scheduler would see).
        self.on_slice: Callable[[Mapping[str, Any]], None] | None = None

    def get(self, path: str, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        if path == CLAIMS:
            self.lists += 1
            return {"items": json.loads(json.dumps(list(self.claims.values())))}
        if path == PODS:
            assert query == {"fieldSelector": "spec.nodeName=", "resourceVersion": "0"}
            self.pod_lists += 1
            pods = [p for p in self.pods.values() if not p["spec"].get("nodeName")]
            return {"items": json.loads(json.dumps(pods))}
        if path == CLASSES:
            return {"items": self.classes}
        return super().get(path, query)

    def _stored(self, body: Mapping[str, Any]) -> dict[str, Any]:
        stored = super()._stored(body)
        if self.on_slice is not None:
            self.on_slice(stored)
        return stored

    def pending(self, name: str, node_selector: Mapping[str, str] | None = None) -> None:
        """A claim from a template of a pod no node has yet."""
        claim = resource_claim(name, allocated=False)
        claim["metadata"]["creationTimestamp"] = f"2026-01-01T00:00:{len(self.claims):02d}Z"
        claim["spec"]["devices"]["requests"] = [
            {"name": "vf", "exactly": {"deviceClassName": "sriovlib-vf"}}
        ]
        self.claims[name] = claim
        self.pods[name] = {
            "metadata": {"name": f"pod-{name}", "namespace": "default"},
            "spec": {
                "resourceClaims": [{"name": "net", "resourceClaimTemplateName": "t"}],
                **({"nodeSelector": dict(node_selector)} if node_selector else {}),
            },
            "status": {"resourceClaimStatuses": [{"name": "net", "resourceClaimName": name}]},
        }

    def allocate(self, name: str, device: str) -> None:
        """What the scheduler does: the claim allocated, the pod bound to the node."""
        claim = self.claims[name]
        claim["status"] = resource_claim(name, devices=[("vf", "node1", device)])["status"]
        self.pods[name]["spec"]["nodeName"] = "node1"

    def gone(self, name: str) -> None:
        self.claims.pop(name, None)
        self.pods.pop(name, None)


def wait_for(what: str, check: Callable[[], Any], timeout: float = 10) -> Any:
    deadline = time.monotonic() + timeout
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.02)
    return value


class Node:
    def __init__(self, tmp: Path) -> None:
        self.tmp = tmp
        self.fs = build_example("ixgbe", tmp / "root")
        self.kernel = FakeNetlink(self.fs)
        self.host = Host(tmp / "root", netlink=self.kernel, sysfs_writer=self.kernel)
        self.policies = parse_policies(json.dumps(POLICY))

    def num_vfs(self) -> int:
        return self.host.pf(PF).num_vfs


@pytest.fixture
def node(tmp_path: Path) -> Node:
    return Node(tmp_path)


StartAgent = Callable[..., Agent]


@pytest.fixture
def start(node: Node, claims: FakeClaims) -> Iterator[StartAgent]:
    agents: list[Agent] = []

    def run(api: ClusterApi, **changes: Any) -> Agent:
        the_plan = plan(node.host, node.policies)
        apply(node.host, the_plan)  # the budget's floor: 0, nothing to do
        budgets = {t.pf.address: t.budget for t in merge(node.policies.policies,
                   node.host.inventory()).pfs if t.budget is not None}  # fmt: skip
        options = AgentOptions(
            device_plugin_dir=node.tmp / "device-plugins",
            state_dir=node.tmp / "state",
            device_info_dir=None,
            metrics_address="127.0.0.1:0",
            cni_socket=None,
            dra=DraOptions(
                registry_dir=node.tmp / "plugins_registry",
                plugins_dir=node.tmp / "plugins",
                cdi_dir=node.tmp / "cdi",
                state_dir=node.tmp / "state",
            ),
            on_demand=OnDemandOptions(
                idle_seconds=changes.pop("idle_seconds", 1.0), interval=0.05, settle=0.1,
                mode=changes.pop("mode", OnDemandMode.ON),
            ),
        )  # fmt: skip
        agent = Agent(
            node.host,
            the_plan.pools,
            options,
            claims=claims,
            api=api,  # type: ignore[arg-type]
            node_name="node1",
            budgets=budgets,
            resize=changes.pop("resize", None) or PolicyResizer(node.host, node.policies),
        )
        agent.start()
        assert agent.health is not None
        agent.health.tick = 0.05
        agents.append(agent)
        return agent

    yield run
    for agent in agents:
        agent.stop()


def status(agent: Agent) -> dict[str, Any]:
    assert agent.metrics_address is not None
    host, port = agent.metrics_address
    return read_status(f"{host}:{port}")


def generation(api: ClusterApi) -> int:
    (one,) = api.slices.values()
    return int(one["spec"]["pool"]["generation"])


def test_a_pending_claim_raises_the_count_and_idle_vfs_go_back(
    node: Node,
    start: StartAgent,
    caplog: pytest.LogCaptureFixture,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """0 VFs (budget 0-2): the node publishes none. A pending claim → numvfs 1, the VF
    in the slices (generation + 1). Allocated to it: a second claim cannot raise (VF 0
    in use: the count goes through 0), said once, the gauge says blocked, the second
    claim gets a Warning Event saying why. The first claim gone: the second takes the
    free VF, no raise. Both gone: after the idle second, the VF leaves the slices first,
    then numvfs 0."""
    caplog.set_level(logging.INFO, "sriovlib.agent")
    api = ClusterApi()
    agent = start(api)
    assert agent.on_demand is not None
    wait_for("the first slice", lambda: api.slices)
    assert set() == api.published()
    first = generation(api)

    api.pending("a")
    vf0 = wait_for("a VF", lambda: node.host.vfs(PF))[0]
    name = device_name_of(str(vf0.address))
    assert {name} == api.wait_published(lambda found: found == {name})
    assert 1 == node.num_vfs()
    assert generation(api) > first
    (raised,) = [r for r in caplog.records if r.message == "VFs on demand: numvfs changed"]
    assert (PF, 0, 1, "raise") == (raised.pf, raised.before, raised.after, raised.direction)  # type: ignore[attr-defined]
    assert ["default/a request 'vf'"] == raised.claims  # type: ignore[attr-defined]

    api.allocate("a", name)
    api.pending("b")
    wait_for("blocked", lambda: status(agent)["budgets"][PF]["blocked"] == 1)
    figures = status(agent)["budgets"][PF]
    assert {"numvfs": 1, "min": 0, "max": 2, "in_use": 1, "wanted": 1, "blocked": 1} == figures
    time.sleep(0.3)
    assert 1 == node.num_vfs()
    said = [r for r in caplog.records if r.message == "VFs on demand: numvfs cannot change now"]
    assert 1 == len(said)
    assert said[0].why == (  # type: ignore[attr-defined]
        f"VF 0 in use: numvfs 1 -> 2 goes through 0 and would reset every VF of {PF}"
    )
    # and on the claim it was for, a Warning Event: one, however many looks said it
    (event,) = wait_for(
        "b's Event", lambda: [e for e in api.events if e["reason"] == "VFsNotRaised"]
    )
    assert ("Warning", api.claims["b"]["metadata"]["uid"], "b") == (
        event["type"], event["involvedObject"]["uid"], event["involvedObject"]["name"]
    )  # fmt: skip
    assert event["message"] == (
        f"node node1: no free VF of {PF} for request 'vf', and its VF count cannot be raised "
        f"to 2 now: VF 0 in use: numvfs 1 -> 2 goes through 0 and would reset every VF of {PF}"
    )

    api.gone("a")  # the pod deleted: its claim too; b is to get VF 0, no raise
    wait_for("unblocked", lambda: status(agent)["budgets"][PF]["blocked"] == 0)
    time.sleep(1.3)  # more than the idle second: b's match keeps VF 0
    assert 1 == node.num_vfs()
    api.allocate("b", name)
    api.gone("b")
    seen: list[tuple[set[str], int]] = []
    api.on_slice = lambda body: seen.append(
        ({d["name"] for d in body["spec"]["devices"]}, node.num_vfs())
    )
    wait_for("numvfs 0", lambda: node.num_vfs() == 0)
    assert set() == api.wait_published(lambda found: found == set())
    assert (set(), 1) == seen[0]  # withdrawn while the VF still existed
    assert [("raise", 0, 1), ("lower", 1, 0)] == [
        (r.direction, r.before, r.after) for r in agent.on_demand.done
    ]
    assert {"raise": 1, "lower": 1} == status(agent)["resizes"]
    wait_for("numvfs 0 in agent status", lambda: status(agent)["budgets"][PF]["numvfs"] == 0)
    host, port = agent.metrics_address or ("", 0)
    assert 0 == main(["agent", "status", "--metrics-address", f"{host}:{port}"])
    table = capsys.readouterr().out
    assert "VFs on demand" in table
    assert "resizes: raise 1, lower 1" in table
    assert [PF, "0", "0", "2", "0", "0", "0"] == next(
        [w for w in line.split() if w.isalnum()] for line in table.splitlines() if PF in line
    )


def test_an_allocation_while_the_devices_are_withdrawn_calls_the_lowering_off(
    node: Node, start: StartAgent, caplog: pytest.LogCaptureFixture
) -> None:
    """The scheduler allocated the VF from the slice it read before the withdrawal: the
    re-check finds it, numvfs stays, the VF is published again."""
    caplog.set_level(logging.INFO, "sriovlib.agent")
    api = ClusterApi()
    agent = start(api)
    api.pending("a")
    vf0 = wait_for("a VF", lambda: node.host.vfs(PF))[0]
    name = device_name_of(str(vf0.address))
    api.wait_published(lambda found: found == {name})
    api.gone("a")

    def allocate_in_the_window(body: Mapping[str, Any]) -> None:
        if not body["spec"]["devices"] and "late" not in api.claims:
            api.pending("late")
            api.allocate("late", name)

    api.on_slice = allocate_in_the_window
    called_off = wait_for("called off", lambda: [
        r for r in caplog.records if r.message == "VFs on demand: numvfs not changed"])  # fmt: skip
    assert f"VF {vf0.address} allocated meanwhile" == called_off[0].why  # type: ignore[attr-defined]
    assert 1 == node.num_vfs()
    api.wait_published(lambda found: found == {name})
    assert agent.on_demand is not None
    assert [("raise", 0, 1)] == [(r.direction, r.before, r.after) for r in agent.on_demand.done]


def test_dry_run_only_says_what_it_would_do(
    node: Node, start: StartAgent, caplog: pytest.LogCaptureFixture
) -> None:
    caplog.set_level(logging.INFO, "sriovlib.agent")
    api = ClusterApi()
    agent = start(api, mode=OnDemandMode.DRY_RUN)
    api.pending("a")
    would = wait_for("the dry run", lambda: [
        r for r in caplog.records if r.message == "VFs on demand: would change numvfs (dry run)"
    ])  # fmt: skip
    assert (0, 1) == (would[0].before, would[0].after)  # type: ignore[attr-defined]
    lists = api.lists
    wait_for("more looks", lambda: api.lists > lists + 5)
    assert 0 == node.num_vfs()
    assert 1 == len([r for r in caplog.records if "dry run" in r.message])  # said once
    assert agent.on_demand is not None
    assert [] == agent.on_demand.done
    assert {"wanted": 1, "numvfs": 0} == {
        k: v for k, v in status(agent)["budgets"][PF].items() if k in ("wanted", "numvfs")
    }


class LivePlugin:
    """A third-party vendor plugin whose driver changes the VF count without going
    through 0 (none of the built-ins can)."""

    @hookimpl
    def sriovlib_match_pf(self) -> PfMatch:
        return PfMatch.by_driver("ixgbe")

    @hookimpl
    def sriovlib_numvfs_plan(self, current: int, target: int) -> NumVfsPlan:
        steps = (Step(StepKind.WRITE_NUMVFS, target),) if current != target else ()
        return NumVfsPlan(steps=steps, note="this driver adds and removes VFs live")


def test_a_plugin_that_resizes_live_is_asked_and_resized_with_a_vf_in_use(
    node: Node, start: StartAgent
) -> None:
    """With VF 0 allocated, a second claim raises 1 -> 2 when the vendor plugin's plan
    does not go through 0, and nothing is withdrawn from the slices first (the fake
    kernel itself refuses a non-zero change, so the resize is recorded here)."""
    node.host = node.kernel.host(
        plugins=Plugins(entry_points=False, extra=[("live", LivePlugin())])
    )
    resizes: list[tuple[str, int]] = []

    def resize(pf: Any, count: int) -> None:
        resizes.append((str(pf), count))
        if count == 1:  # 0 -> 1 the kernel can do; 1 -> 2 only the plugin's driver
            node.host.set_num_vfs(pf, count)

    api = ClusterApi()
    start(api, resize=resize)
    api.pending("a")
    vf0 = wait_for("a VF", lambda: node.host.vfs(PF))[0]
    name = device_name_of(str(vf0.address))
    api.wait_published(lambda found: found == {name})
    api.allocate("a", name)
    seen: list[set[str]] = []
    api.on_slice = lambda body: seen.append({d["name"] for d in body["spec"]["devices"]})
    api.pending("b")
    wait_for("the live raise", lambda: len(resizes) >= 2)
    address = str(node.host.pf(PF).address)
    assert [(address, 1), (address, 2)] == resizes[:2]
    assert all(name in found for found in seen)  # never withdrawn


def test_the_steady_state_is_one_list_a_look(node: Node, start: StartAgent) -> None:
    """No pod waiting and the PF at its floor: each look lists the waiting pods only,
    never every claim; a waiting pod brings the claims in."""
    api = ClusterApi()
    start(api)
    wait_for("looks", lambda: api.pod_lists > 5)
    assert 0 == api.lists
    api.pending("a")
    wait_for("the claims listed", lambda: api.lists > 0)
    wait_for("a VF", lambda: node.host.vfs(PF))


@pytest.mark.parametrize(
    ("argv", "kept"),
    [
        (["--dra"], True),
        (["--dra", "--dra-pools", "od_net"], True),
        (["--dra", "--dra-pools", "intel.com/od_net,other"], True),
        (["--dra", "--dra-pools", "other"], False),
        ([], False),
    ],
)
def test_only_budgets_of_dra_pools_are_served(
    node: Node, argv: list[str], kept: bool, caplog: pytest.LogCaptureFixture
) -> None:
    """``sriovlib agent``'s budgets: a PF whose VFs the device plugin serves (no --dra,
    or its pool not in --dra-pools) has nobody to raise its count: left, and said."""
    import argparse

    from sriovlib.cli import agent as cli_agent

    parser = argparse.ArgumentParser()
    cli_agent.register(parser.add_subparsers())
    args = parser.parse_args(["agent", *argv])
    found = cli_agent._budgets(node.host, node.policies, logging.getLogger("t"), args)
    assert ({node.host.pf(PF).address} if kept else set()) == set(found)
    said = [r for r in caplog.records if r.message.startswith("vfBudget of PFs whose VFs")]
    assert ([] if kept else [[PF]]) == [r.pfs for r in said]  # type: ignore[attr-defined]


def test_a_pod_bound_for_another_node_raises_nothing(node: Node, start: StartAgent) -> None:
    """Its nodeSelector names another node: its claim is not this node's demand."""
    api = ClusterApi()
    start(api)
    api.pending("a", node_selector={"kubernetes.io/hostname": "node2"})
    lists = api.pod_lists
    wait_for("looks", lambda: api.pod_lists > lists + 10)
    assert 0 == node.num_vfs()
    del api.pods["a"]["spec"]["nodeSelector"]
    wait_for("a VF", lambda: node.host.vfs(PF))
