"""VFs on demand under a real authorizer: the RBAC module's kube-apiserver 1.34
(``--authorization-mode=Node,RBAC``, ``deploy/dra/rbac.yaml`` and
``node-restriction.yaml`` applied), the agent in process on the 82599 example node with
the ``sriovlib-agent`` ServiceAccount's token and a policy giving a PF ``vfBudget: {min:
0, max: 2}``. Its LISTs (the waiting pods cluster-wide, every claim, the DeviceClasses)
and the Node's read are allowed by the role: a pod waiting for a claim of the driver's
class raises numvfs 0 -> 1 and the slice gains the VF; nothing is refused."""

from __future__ import annotations

import json
import logging
from collections.abc import Iterator
from pathlib import Path

import pytest

from sriovlib.agent.dra import DraOptions
from sriovlib.agent.kubeapi import KubeClient
from sriovlib.agent.ondemand import OnDemandOptions, PolicyResizer
from sriovlib.agent.reclaim import ReclaimMode
from sriovlib.agent.runner import Agent, AgentOptions
from sriovlib.host import Host
from sriovlib.policy import apply, merge, parse_policies, plan
from sriovlib.testing.fakenetlink import FakeNetlink
from sriovlib.testing.kube import KubeCluster
from sriovlib.testing.presets import build_example

from .test_dra_kubelet import wait_for
from .test_dra_rbac_kube import (
    DRIVER,
    NODE,
    admin,
    agent_api,
    device_class,
    node_devices,
    rbac_cluster,
)

pytestmark = pytest.mark.kube
__all__ = ["admin", "agent_api", "device_class", "rbac_cluster"]  # the fixtures

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


@pytest.fixture
def node_host(tmp_path: Path) -> Host:
    root = tmp_path / "root"
    kernel = FakeNetlink(build_example("ixgbe", root))
    return Host(root, netlink=kernel, sysfs_writer=kernel)


@pytest.fixture
def agent(
    agent_api: KubeClient, admin: KubeClient, node_host: Host, tmp_path: Path
) -> Iterator[Agent]:
    host = node_host
    policies = parse_policies(json.dumps(POLICY))
    the_plan = plan(host, policies)
    apply(host, the_plan)
    budgets = {t.pf.address: t.budget for t in merge(policies.policies, host.inventory()).pfs
               if t.budget is not None}  # fmt: skip
    options = AgentOptions(
        device_plugin_dir=tmp_path / "device-plugins",
        state_dir=tmp_path / "state",
        device_info_dir=None,
        reclaim=ReclaimMode.OFF,
        cni_socket=None,
        dra=DraOptions(
            registry_dir=tmp_path / "plugins_registry",
            plugins_dir=tmp_path / "plugins",
            cdi_dir=tmp_path / "cdi",
            state_dir=tmp_path / "state",
        ),
        on_demand=OnDemandOptions(interval=0.2, settle=0.1),
    )
    agent = Agent(
        host,
        the_plan.pools,
        options,
        api=agent_api,
        node_name=NODE,
        budgets=budgets,
        resize=PolicyResizer(host, policies),
    )
    agent.start()
    yield agent
    agent.stop()
    for item in admin.get("/apis/resource.k8s.io/v1/resourceslices")["items"]:
        admin.delete(f"/apis/resource.k8s.io/v1/resourceslices/{item['metadata']['name']}")


def test_the_lists_of_the_vfs_on_demand_are_in_the_role(
    rbac_cluster: KubeCluster,
    admin: KubeClient,
    agent: Agent,
    node_host: Host,
    device_class: None,
    caplog: pytest.LogCaptureFixture,
) -> None:
    caplog.set_level(logging.INFO, "sriovlib.agent")
    cluster = rbac_cluster
    cluster.create({
        "apiVersion": "resource.k8s.io/v1", "kind": "ResourceClaim",
        "metadata": {"name": "od", "namespace": "default"},
        "spec": {"devices": {"requests": [
            {"name": "vf", "exactly": {"deviceClassName": DRIVER}}]}},
    })  # fmt: skip
    cluster.create({
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": "od", "namespace": "default"},
        "spec": {"automountServiceAccountToken": False,
                 "resourceClaims": [{"name": "net", "resourceClaimName": "od"}],
                 "containers": [{"name": "c", "image": "pause",
                                 "resources": {"claims": [{"name": "net"}]}}]},
    })  # fmt: skip
    try:
        wait_for("numvfs 1", lambda: node_host.pf(PF).num_vfs == 1 or None, timeout=30)
        (vf,) = node_host.vfs(PF)
        wait_for("the VF in the slice", lambda: len(node_devices(admin, NODE)) == 1 or None)
        refusals = [
            f"{r.getMessage()} {getattr(r, 'error', '')}"
            for r in caplog.records
            if "403" in str(getattr(r, "error", "")) or "cannot look" in r.getMessage()
        ]
        assert refusals == []
        assert agent.on_demand is not None
        assert [(0, 1)] == [(r.before, r.after) for r in agent.on_demand.done]
        assert vf.address is not None
    finally:
        cluster.kubectl("delete", "pod", "od", "-n", "default", "--wait=false")
        cluster.kubectl("delete", "resourceclaim", "od", "-n", "default", "--wait=false")
