"""The DRA driver's permissions enforced by a real authorizer: a kube-apiserver 1.34 of
its own with ``--authorization-mode=Node,RBAC`` (etcd and the API server only, beside
the session's cluster), ``deploy/dra/rbac.yaml`` and ``deploy/dra/node-restriction.yaml``
applied, the ``sriovlib-agent`` ServiceAccount's token bound to a pod on the node (as
the DaemonSet's projected token is), and the agent in process on the "mixed" example
node with that token. It publishes its slices, reads the claims the kubelet stand-in
names, posts its Events; a request outside the role (reading Secrets, writing another
node's slice, a claim's status) is refused with 403, the client's one-line error naming
it; the agent never logs a refusal of its own work."""

from __future__ import annotations

import json
import logging
import os
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from sriovlib.agent.dra import DraOptions
from sriovlib.agent.draclaims import ClaimRef
from sriovlib.agent.draslices import SLICES
from sriovlib.agent.kubeapi import Forbidden, KubeClient, load_kubeconfig
from sriovlib.agent.reclaim import ReclaimMode
from sriovlib.agent.runner import Agent, AgentOptions
from sriovlib.host import Host
from sriovlib.pools import parse_config
from sriovlib.testing.clienttools import ToolUnavailable
from sriovlib.testing.drakubelet import DraKubeletStandIn, device_name_of
from sriovlib.testing.fakenetlink import FakeNetlink
from sriovlib.testing.kube import KubeCluster
from sriovlib.testing.kubebuild import kube_tools
from sriovlib.testing.presets import build_example

from .conftest import wait_for

pytestmark = pytest.mark.kube

ROOT = Path(__file__).resolve().parents[2]
DRIVER = "sriov.sriovlib.io"
NODE = "rbac-node"
OTHER = "other-node"
NAMESPACE = "sriovlib"
ACCOUNT = "sriovlib-agent"
NET_VF = "0000:5e:00.2"
CONFIG = {
    "resourceList": [
        {"resourceName": "intel_net", "selectors": {"vendors": ["8086"], "drivers": ["iavf"]}}
    ]
}
NET_VFS = 12


@pytest.fixture(scope="module")
def rbac_cluster() -> Iterator[KubeCluster]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("kube tier: needs root on Linux (a tmpfs for the API server's files)")
    try:
        tools = kube_tools()
    except ToolUnavailable as e:
        pytest.skip(f"kube tier: {e}")
    with KubeCluster(
        tools, node_name=NODE, api_only=True, authorization_mode="Node,RBAC"
    ) as cluster:
        for name in (NODE, OTHER):
            cluster.create({"apiVersion": "v1", "kind": "Node", "metadata": {"name": name}})
        cluster.kubectl("create", "namespace", NAMESPACE)
        account = json.loads(json.dumps(_yaml(ROOT / "deploy" / "serviceaccount.yaml")[0]))
        account["metadata"]["namespace"] = NAMESPACE
        cluster.create(account)
        for name in ("rbac.yaml", "node-restriction.yaml"):
            cluster.kubectl("apply", "-f", str(ROOT / "deploy" / "dra" / name))
        yield cluster


def _yaml(path: Path) -> list[dict[str, Any]]:
    import yaml

    return [d for d in yaml.safe_load_all(path.read_text()) if d]


def agent_client(cluster: KubeCluster, tmp: Path, node: str) -> KubeClient:
    """A client with the agent's ServiceAccount token, bound to a pod on *node* (what
    the kubelet mounts into the DaemonSet's pod)."""
    pod = f"agent-{node}"
    cluster.kubectl(
        "apply", "-f", "-",
        input=json.dumps({
            "apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": pod, "namespace": NAMESPACE},
            "spec": {"nodeName": node, "serviceAccountName": ACCOUNT,
                     "automountServiceAccountToken": False,
                     "containers": [{"name": "agent", "image": "sriovlib-agent"}]},
        }),
    )  # fmt: skip
    token = cluster.kubectl(
        "create", "token", ACCOUNT, "-n", NAMESPACE, "--duration=1h",
        "--bound-object-kind=Pod", f"--bound-object-name={pod}",
    ).strip()  # fmt: skip
    admin = json.loads(cluster.kubeconfig.read_text())
    admin["users"] = [{"name": ACCOUNT, "user": {"token": token}}]
    admin["contexts"][0]["context"]["user"] = ACCOUNT
    path = tmp / f"{node}.kubeconfig"
    path.write_text(json.dumps(admin))
    return KubeClient(load_kubeconfig(path))


@pytest.fixture(scope="module")
def admin(rbac_cluster: KubeCluster) -> KubeClient:
    return KubeClient(load_kubeconfig(rbac_cluster.kubeconfig))


@pytest.fixture
def agent_api(rbac_cluster: KubeCluster, tmp_path: Path) -> KubeClient:
    return agent_client(rbac_cluster, tmp_path, NODE)


def _agent_starter(api: KubeClient, tmp_path: Path, agents: list[Agent]) -> Callable[[], Agent]:
    """Starts the agent with ``--dra`` on the fake node, with *api*'s credentials."""

    def start() -> Agent:
        root = tmp_path / "root"
        fs = build_example("mixed", root)
        kernel = FakeNetlink(fs)
        options = AgentOptions(
            device_plugin_dir=tmp_path / "device-plugins",
            state_dir=tmp_path / "state",
            device_info_dir=tmp_path / "devinfo",
            rescan_interval=0.5,
            reclaim=ReclaimMode.OFF,
            dra=DraOptions(
                registry_dir=tmp_path / "plugins_registry",
                plugins_dir=tmp_path / "plugins",
                cdi_dir=tmp_path / "cdi",
                state_dir=tmp_path / "state",
            ),
        )
        agent = Agent(
            Host(root, netlink=kernel, sysfs_writer=kernel),
            parse_config(json.dumps(CONFIG)),
            options,
            api=api,
            node_name=NODE,
        )
        agent.start()
        agents.append(agent)
        return agent

    return start


@pytest.fixture
def agent(
    rbac_cluster: KubeCluster, agent_api: KubeClient, admin: KubeClient, tmp_path: Path
) -> Iterator[Agent]:
    """The agent with ``--dra`` on the fake node, with the ServiceAccount's token."""
    agents: list[Agent] = []
    yield _agent_starter(agent_api, tmp_path, agents)()
    for started in agents:
        started.stop()
    for item in admin.get(SLICES)["items"]:
        admin.delete(f"{SLICES}/{item['metadata']['name']}")


def node_devices(api: KubeClient, node: str) -> set[str]:
    found = api.get(SLICES, query={"fieldSelector": f"spec.nodeName={node}"})
    return {d["name"] for s in found["items"] for d in s["spec"]["devices"]}


def claim(name: str, parameters: dict[str, Any]) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {"devices": {"requests": [{"name": "vf", "exactly": {"deviceClassName": DRIVER}}]}},
        "status": {
            "allocation": {
                "devices": {
                    "results": [{"request": "vf", "driver": DRIVER, "pool": NODE,
                                 "device": device_name_of(NET_VF)}],
                    "config": [{"source": "FromClaim", "requests": ["vf"],
                                "opaque": {"driver": DRIVER, "parameters": parameters}}],
                }
            }
        },
    }  # fmt: skip


def made(cluster: KubeCluster, manifest: dict[str, Any]) -> ClaimRef:
    """The claim made and allocated (as the scheduler would: the status subresource)."""
    status = manifest.pop("status")
    cluster.create(manifest)
    name = manifest["metadata"]["name"]
    cluster.kubectl("patch", "resourceclaim", name, "-n", "default", "--subresource=status",
                    "--type=merge", "-p", json.dumps({"status": status}))  # fmt: skip
    uid = cluster.get("resourceclaim", name)["metadata"]["uid"]
    return ClaimRef("default", name, uid)


@pytest.fixture(scope="module")
def device_class(rbac_cluster: KubeCluster) -> None:
    rbac_cluster.kubectl("apply", "-f", "-", input=json.dumps({
        "apiVersion": "resource.k8s.io/v1", "kind": "DeviceClass",
        "metadata": {"name": DRIVER},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }))  # fmt: skip


def test_the_agent_does_its_work_with_the_role_and_nothing_is_refused(
    rbac_cluster: KubeCluster,
    admin: KubeClient,
    agent: Agent,
    device_class: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """Slices published (the Node read for their owner, the old ones listed), a claim
    read and prepared, a bad claim's Event posted; the agent logs no refusal."""
    caplog.set_level(logging.INFO, "sriovlib.agent")
    devices = wait_for("the slices", lambda: len(node_devices(admin, NODE)) == NET_VFS or None)
    assert devices
    good = made(rbac_cluster, claim("good", {"vlan": 100}))
    bad = made(rbac_cluster, claim("bad", {"vlam": 100}))
    with DraKubeletStandIn(tmp_path / "plugins_registry") as kubelet:
        client = kubelet.register(DRIVER)
        assert client.prepare(good).claims[good.uid].error == ""
        error = client.prepare(bad).claims[bad.uid].error
        assert "unknown key 'vlam' (did you mean 'vlan'?)" in error
        assert client.unprepare(good).claims[good.uid].error == ""
    assert agent.events is not None
    agent.events.wait_idle()
    events = admin.get(
        "/api/v1/namespaces/default/events",
        query={"fieldSelector": f"involvedObject.uid={bad.uid}"},
    )["items"]
    assert [(e["reason"], e["message"]) for e in events] == [("PrepareFailed", error)]
    refusals = [
        r.getMessage() + " " + str(getattr(r, "error", ""))
        for r in caplog.records
        if "403" in str(getattr(r, "error", "")) or "not p" in r.getMessage()
    ]
    assert refusals == []
    assert "Event posted" in [r.getMessage() for r in caplog.records]
    for name in ("good", "bad"):
        rbac_cluster.kubectl("delete", "resourceclaim", name, "-n", "default")


def test_requests_outside_the_role_are_refused_with_403(
    rbac_cluster: KubeCluster, admin: KubeClient, agent_api: KubeClient
) -> None:
    """Secrets, another node's slice (the node restriction), a claim's status, a claim
    deleted, a DeviceClass made: 403, one line naming the request and the rule."""
    slice_of_other = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{OTHER}-{DRIVER}-0"},
        "spec": {"driver": DRIVER, "nodeName": OTHER,
                 "pool": {"name": OTHER, "generation": 1, "resourceSliceCount": 1},
                 "devices": []},
    }  # fmt: skip
    admin.create(SLICES, slice_of_other)
    account = f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"
    try:
        with pytest.raises(Forbidden) as secrets:
            agent_api.get("/api/v1/namespaces/kube-system/secrets")
        assert str(secrets.value) == (
            "GET /api/v1/namespaces/kube-system/secrets: 403 Forbidden: secrets is forbidden: "
            f'User "{account}" cannot list resource "secrets" in API group "" in the '
            'namespace "kube-system"'
        )
        with pytest.raises(Forbidden) as other:
            agent_api.delete(f"{SLICES}/{OTHER}-{DRIVER}-0")
        message = str(other.value)
        assert message.startswith(f"DELETE {SLICES}/{OTHER}-{DRIVER}-0: 403 Forbidden: ")
        assert f"may change only its own node's ResourceSlices, not one of node '{OTHER}'" in (
            message
        )
        assert "\n" not in message
        print(f"another node's slice: {message}")
        mine = {**slice_of_other, "metadata": {"name": f"{NODE}-x"},
                "spec": {**slice_of_other["spec"], "nodeName": OTHER}}  # fmt: skip
        with pytest.raises(Forbidden, match=f"may write only its own node's ResourceSlices, "
                                            f"not one of node '{OTHER}'"):  # fmt: skip
            agent_api.create(SLICES, mine)
        admin.get(f"{SLICES}/{OTHER}-{DRIVER}-0")  # still there
        for method, path, what in (
            ("PUT", "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/x/status",
             'cannot update resource "resourceclaims/status"'),
            ("DELETE", "/apis/resource.k8s.io/v1/namespaces/default/resourceclaims/x",
             'cannot delete resource "resourceclaims"'),
            ("POST", "/apis/resource.k8s.io/v1/deviceclasses",
             'cannot create resource "deviceclasses"'),
            ("GET", "/api/v1/namespaces/default/pods/x", 'cannot get resource "pods"'),
            ("GET", "/api/v1/namespaces/default/events", 'cannot list resource "events"'),
        ):  # fmt: skip
            body = {"metadata": {"name": "x"}} if method in ("PUT", "POST") else None
            with pytest.raises(Forbidden, match=what):
                agent_api.request(method, path, body)
    finally:
        admin.delete(f"{SLICES}/{OTHER}-{DRIVER}-0")


def test_a_token_bound_to_no_pod_may_write_no_slice(
    rbac_cluster: KubeCluster, tmp_path: Path
) -> None:
    """A token of the ServiceAccount made without a pod carries no node: RBAC would let
    it, the node restriction refuses."""
    token = rbac_cluster.kubectl("create", "token", ACCOUNT, "-n", NAMESPACE).strip()
    config = load_kubeconfig(rbac_cluster.kubeconfig)
    api = KubeClient(attrs.evolve(config, token=token))
    api.get(f"/api/v1/nodes/{NODE}")  # the role's reads work
    with pytest.raises(Forbidden, match="bound to no scheduled pod: it may write no ResourceSlice"):
        api.create(SLICES, {
            "apiVersion": "resource.k8s.io/v1", "kind": "ResourceSlice",
            "metadata": {"name": "unbound"},
            "spec": {"driver": DRIVER, "nodeName": NODE,
                     "pool": {"name": NODE, "generation": 1, "resourceSliceCount": 1},
                     "devices": []},
        })  # fmt: skip


def test_a_role_short_of_a_verb_is_named_in_the_agents_log(
    rbac_cluster: KubeCluster,
    admin: KubeClient,
    agent_api: KubeClient,
    device_class: None,
    tmp_path: Path,
    caplog: pytest.LogCaptureFixture,
) -> None:
    """The role without ``events`` and without ``create`` on slices (what the first
    runs of this module found missing, or could): the agent's warnings carry the
    server's 403 in one line naming the resource and the verb; its prepare is answered
    all the same. The role is put back after."""
    (role,) = [
        d for d in _yaml(ROOT / "deploy" / "dra" / "rbac.yaml") if d["kind"] == "ClusterRole"
    ]
    short = json.loads(json.dumps(role))
    short["rules"] = [r for r in short["rules"] if r["resources"] != ["events"]]
    for rule in short["rules"]:
        if rule["resources"] == ["resourceslices"]:
            rule["verbs"] = [v for v in rule["verbs"] if v != "create"]
    account = f"system:serviceaccount:{NAMESPACE}:{ACCOUNT}"
    rbac_cluster.kubectl("apply", "-f", "-", input=json.dumps(short))
    try:
        wait_for("the authorizer to see the role", lambda: "no" in rbac_cluster.kubectl(
            "auth", "can-i", "create", "events", f"--as={account}", check=False))  # fmt: skip
        caplog.set_level(logging.INFO, "sriovlib.agent")
        agents: list[Agent] = []
        start = _agent_starter(agent_api, tmp_path, agents)
        try:
            agent = start()
            bad = made(rbac_cluster, claim("short", {"vlam": 1}))
            with DraKubeletStandIn(tmp_path / "plugins_registry") as kubelet:
                error = kubelet.register(DRIVER).prepare(bad).claims[bad.uid].error
            assert "unknown key 'vlam'" in error
            assert agent.events is not None
            agent.events.wait_idle()

            def warned(event: str) -> str | None:
                found = [str(getattr(r, "error", "")) for r in caplog.records
                         if r.getMessage() == event]  # fmt: skip
                return found[0] if found else None

            slices = wait_for("the slices' refusal", lambda: warned("ResourceSlices not published"))
            events = wait_for("the Event's refusal", lambda: warned("Event not posted"))
        finally:
            for started in agents:
                started.stop()
        print(f"slices: {slices}\nevents: {events}")
        assert slices.startswith(f"POST {SLICES}: 403 Forbidden: resourceslices.resource.k8s.io")
        assert f'User "{account}" cannot create resource "resourceslices"' in slices
        assert events.startswith("POST /api/v1/namespaces/default/events: 403 Forbidden: ")
        assert f'User "{account}" cannot create resource "events"' in events
        assert "\n" not in slices + events
    finally:
        rbac_cluster.kubectl("apply", "-f", str(ROOT / "deploy" / "dra" / "rbac.yaml"))
        rbac_cluster.kubectl("delete", "resourceclaim", "short", "-n", "default",
                             "--ignore-not-found")  # fmt: skip
        for item in admin.get(SLICES)["items"]:
            admin.delete(f"{SLICES}/{item['metadata']['name']}")
