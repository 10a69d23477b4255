"""VFs on demand against the REAL kubelet, kube-scheduler and resource-claim controller
(v1.34, the kube tier): ``sriovlib agent --dra --policy`` as a process on the fake kernel
of an 82599 node whose PFs have no VFs, the policy giving one PF ``vfBudget: {min: 0,
max: 2}``. The node publishes no device; a pod whose ResourceClaimTemplate selects that
PF is unschedulable at first; the agent sees the pending claim, raises numvfs 0 -> 1,
the ResourceSlice gains the VF, the scheduler's retry allocates it, the kubelet prepares
it, the pod runs. After the pod is deleted and the idle period (5 s here) passes, the VF
leaves the slice and numvfs is 0 again.

The fake kernel lives in the agent's process: its VF count is read through the agent's
status endpoint (``sriovlib_vf_budget_numvfs``) and its log.
"""

from __future__ import annotations

import json
import time
from collections.abc import Iterator
from typing import Any

import pytest

from sriovlib.agent.draslices import SLICES
from sriovlib.agent.kubeapi import KubeClient
from sriovlib.agent.metrics import read_status
from sriovlib.testing.kube import KubeCluster

from .conftest import AgentProcess
from .test_dra_kubelet import (
    DRIVER,
    _seconds,
    api,
    claim_gone,
    claim_name_of,
    claim_pod,
    claim_template,
    diagnosis,
    dra_cluster,
    wait_for,
)

pytestmark = pytest.mark.kube
__all__ = ["api", "dra_cluster"]  # the fixtures, shared with the kubelet module

PF = "enp4s0f0"  # the first port of the ixgbe example node: 0 VFs, totalvfs 63
IDLE = 5
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


def pool_slices(api: KubeClient, node: str) -> list[dict[str, Any]]:
    found = api.get(SLICES, query={"fieldSelector": f"spec.nodeName={node},spec.driver={DRIVER}"})
    return list(found["items"])


def node_devices(api: KubeClient, node: str) -> dict[str, dict[str, Any]]:
    """The devices of the node's slices, by name (a slice without any has none)."""
    return {d["name"]: d for s in pool_slices(api, node) for d in s["spec"].get("devices") or ()}


@pytest.fixture(scope="module")
def agent(
    dra_cluster: KubeCluster, api: KubeClient, tmp_path_factory: pytest.TempPathFactory
) -> Iterator[AgentProcess]:
    """``sriovlib agent --dra --policy`` on the ixgbe example node; its (empty) slice
    published. Stopped after the module: exit 0, no traceback."""
    cluster = dra_cluster
    tmp = tmp_path_factory.mktemp("dra-ondemand") / "agent"
    process = AgentProcess(
        cluster, tmp, {"resourceList": []},
        "--example", "ixgbe",
        "--policy", str(tmp.parent / "policy.json"),
        "--dra",
        "--dra-registry-dir", str(cluster.kubelet_root / "plugins_registry"),
        "--dra-plugins-dir", str(cluster.kubelet_root / "plugins"),
        "--dra-idle-seconds", str(IDLE),
        "--cdi-dir", str(tmp / "cdi"),
        "--kubeconfig", str(cluster.kubeconfig),
        "--node-name", cluster.node_name,
        "--pod-resources-socket", "off",
    )  # fmt: skip
    (tmp.parent / "policy.json").write_text(json.dumps(POLICY))
    process.start(wait=False)
    try:
        process.wait_event("DRA driver registered")
        process.wait_event("VFs on demand")
        wait_for("the empty slice", lambda: pool_slices(api, cluster.node_name))
        yield process
    finally:
        # a pod left by a failed test needs the driver to unprepare it
        cluster.kubectl("delete", "pods", "--all", "--grace-period=1", "--wait=true")
        status = process.stop()
    assert status == 0, process.log.read_text()[-3000:]
    assert "Traceback" not in process.log.read_text()


def budget(agent: AgentProcess) -> dict[str, int]:
    """The agent's figures of the budget PF (``agent status``)."""
    (metrics,) = agent.events("metrics")
    figures: dict[str, int] = wait_for(
        "the budget's figures", lambda: read_status(metrics["address"])["budgets"].get(PF)
    )
    return figures


def test_a_claim_raises_numvfs_the_scheduler_allocates_the_new_vf_and_idle_it_goes_back(
    dra_cluster: KubeCluster, agent: AgentProcess, api: KubeClient
) -> None:
    cluster = dra_cluster
    assert {} == node_devices(api, cluster.node_name)  # no VF yet
    assert {"numvfs": 0, "min": 0, "max": 2} == {
        k: v for k, v in budget(agent).items() if k in ("numvfs", "min", "max")
    }
    (before,) = pool_slices(api, cluster.node_name)
    cluster.create(claim_template("vf-on-demand", PF))
    created_wall = time.time()
    created = time.monotonic()
    cluster.create(claim_pod(cluster, "dra-ondemand", "vf-on-demand", "sleep 3600"))
    pod = cluster.wait_pod("dra-ondemand", ("Running", "Failed", "Succeeded"), timeout=120)
    to_running = time.monotonic() - created
    assert pod["status"]["phase"] == "Running", diagnosis(cluster, agent, "dra-ondemand")

    (raised,) = agent.events("VFs on demand: numvfs changed")
    assert (raised["pf"], raised["before"], raised["after"], raised["direction"]) == (
        PF, 0, 1, "raise",
    )  # fmt: skip
    name = claim_name_of(cluster, "dra-ondemand")
    assert raised["claims"] == [f"default/{name} request 'vf'"]
    claim = cluster.get("resourceclaim", name)
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    devices = node_devices(api, cluster.node_name)
    assert [result["device"]] == list(devices)  # the new VF, in the slice, allocated
    attributes = devices[result["device"]]["attributes"]
    assert (attributes["pfName"], attributes["vfIndex"], attributes["driver"]) == (
        {"string": PF}, {"int": 0}, {"string": "ixgbevf"},
    )  # fmt: skip
    (after,) = pool_slices(api, cluster.node_name)
    assert after["spec"]["pool"]["generation"] > before["spec"]["pool"]["generation"]
    wait_for("numvfs 1 in agent status", lambda: budget(agent)["numvfs"] == 1)
    (prepared,) = [e for e in agent.events("NodePrepareResources") if e["claim"].endswith(name)]
    # the scheduler's first try, before the VF existed, usually failed (not always:
    # the agent may raise before the scheduler tried)
    failed_first = any("cannot allocate all claims" in m for m in cluster.events("dra-ondemand"))
    raise_at = _seconds(raised["time"]) - created_wall
    prepare_at = _seconds(prepared["time"]) - created_wall

    cluster.delete_pod("dra-ondemand")
    wait_for(f"claim {name} deleted", lambda: claim_gone(cluster, name))
    deleted = time.monotonic()
    lowered = agent.wait_event("VFs on demand: numvfs changed", count=2, timeout=IDLE + 30)[1]
    assert (lowered["before"], lowered["after"], lowered["direction"]) == (1, 0, "lower")
    wait_for("the slice emptied", lambda: not node_devices(api, cluster.node_name))
    given_back = time.monotonic() - deleted
    wait_for("numvfs 0 in agent status", lambda: budget(agent)["numvfs"] == 0)
    assert given_back >= IDLE - 1  # not before the idle period
    print(
        f"\nVFs on demand: claim created -> pod Running {to_running:.2f} s (numvfs raised "
        f"{raise_at:.2f} s after the create in {raised['seconds']:.3f} s, "
        f"NodePrepareResources answered at {prepare_at:.2f} s); claim deleted -> VF given "
        f"back {given_back:.1f} s (idle period {IDLE} s); the scheduler's first try "
        f"{'failed' if failed_first else 'came after the raise'}"
    )
    cluster.kubectl("delete", "resourceclaimtemplate", "vf-on-demand")


def test_a_second_claim_waits_while_the_vf_is_in_use_then_takes_it_without_a_raise(
    dra_cluster: KubeCluster, agent: AgentProcess, api: KubeClient
) -> None:
    """Pod A's claim raised numvfs 0 -> 1 and holds VF 0; pod B's claim cannot raise it
    (1 -> 2 goes through 0 and would reset VF 0): B stays Pending, the agent says why
    once, and in a Warning Event on B's claim, ``agent status`` shows the PF blocked. A
    deleted: B gets VF 0 from the scheduler with no second raise, and the free VF is not
    given back meanwhile (B's claim matches it)."""
    cluster = dra_cluster
    changed = "VFs on demand: numvfs changed"
    before = len(agent.events(changed))
    cluster.create(claim_template("vf-on-demand-2", PF))
    cluster.create(claim_pod(cluster, "od-a", "vf-on-demand-2", "sleep 3600"))
    pod = cluster.wait_pod("od-a", ("Running", "Failed", "Succeeded"), timeout=120)
    assert pod["status"]["phase"] == "Running", diagnosis(cluster, agent, "od-a")
    assert [(e["before"], e["after"]) for e in agent.events(changed)[before:]] == [(0, 1)]

    cluster.create(claim_pod(cluster, "od-b", "vf-on-demand-2", "sleep 3600"))
    (said,) = agent.wait_event("VFs on demand: numvfs cannot change now", timeout=30)[-1:]
    assert (
        said["why"] == f"VF 0 in use: numvfs 1 -> 2 goes through 0 and would reset every VF of {PF}"
    )
    figures = wait_for("blocked in agent status", lambda: (f := budget(agent))["blocked"] and f)
    assert (figures["numvfs"], figures["in_use"], figures["wanted"]) == (1, 1, 1)
    # B's claim says so too: a Warning Event on it, in the real API server
    b_claim = claim_name_of(cluster, "od-b")
    (message,) = wait_for("B's claim's Event", lambda: cluster.events(b_claim))
    assert message == (
        f"node {cluster.node_name}: no free VF of {PF} for request 'vf', and its VF count "
        f"cannot be raised to 2 now: {said['why']}"
    )
    described = cluster.kubectl("describe", "resourceclaim", b_claim, "-n", "default")
    assert "VFsNotRaised" in described.split("Events:")[-1]
    time.sleep(3)
    assert cluster.get("pod", "od-b")["status"]["phase"] == "Pending"
    assert len(agent.events(changed)) == before + 1  # no raise while VF 0 is in use
    assert len(cluster.events(b_claim)) == 1  # every look says it: still one Event

    cluster.delete_pod("od-a")
    pod = cluster.wait_pod("od-b", ("Running", "Failed", "Succeeded"), timeout=120)
    assert pod["status"]["phase"] == "Running", diagnosis(cluster, agent, "od-b")
    claim = cluster.get("resourceclaim", claim_name_of(cluster, "od-b"))
    (result,) = claim["status"]["allocation"]["devices"]["results"]
    assert [result["device"]] == list(node_devices(api, cluster.node_name))  # VF 0 again
    assert len(agent.events(changed)) == before + 1  # no second raise, no lowering

    cluster.delete_pod("od-b")
    lowered = agent.wait_event(changed, count=before + 2, timeout=IDLE + 30)[-1]
    assert (lowered["before"], lowered["after"]) == (1, 0)
    wait_for("the slice emptied", lambda: not node_devices(api, cluster.node_name))
    cluster.kubectl("delete", "resourceclaimtemplate", "vf-on-demand-2")
