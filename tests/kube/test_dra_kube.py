"""The DRA driver's API-server half against a real kube-apiserver (v1.34, the kube
tier's cluster): the client's errors as the server gives them, ResourceSlices published
for the "mixed" example node and following its live view, ResourceClaims read for
prepare. The agent runs in process on the fake node (and once as ``sriovlib agent``);
its DRA plugin is driven by the DRA kubelet stand-in, not the cluster's kubelet."""

from __future__ import annotations

import json
import signal
import ssl
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from sriovlib.agent import draslices
from sriovlib.agent.dra import DraOptions
from sriovlib.agent.draclaims import ApiServerClaims, ClaimRef, ClaimUnavailable
from sriovlib.agent.draslices import SLICES
from sriovlib.agent.kubeapi import (
    AlreadyExists,
    Conflict,
    Forbidden,
    Invalid,
    KubeClient,
    KubeConfig,
    NotFound,
    Unauthorized,
    Unreachable,
    in_cluster,
    load_kubeconfig,
)
from sriovlib.agent.reclaim import ReclaimMode
from sriovlib.agent.runner import Agent, AgentOptions
from sriovlib.host import Host
from sriovlib.pools import parse_config
from sriovlib.testing.builder import FakeSysfs
from sriovlib.testing.drakubelet import DraKubeletStandIn, device_name_of
from sriovlib.testing.fakenetlink import FakeNetlink
from sriovlib.testing.kube import KubeCluster
from sriovlib.testing.presets import build_example

from .conftest import wait_for

pytestmark = pytest.mark.kube

DRIVER = "sriov.sriovlib.io"
CLAIMS = "/apis/resource.k8s.io/v1/namespaces/{ns}/resourceclaims"
#: The three pools of tests/agent: mlx5 (8 VFs, NUMA 0, RDMA), i40e iavf (12) and vfio-pci (4).
CONFIG = {
    "resourceList": [
        {"resourceName": "mlx", "selectors": {"vendors": ["15b3"], "devices": ["1018"]}},
        {
            "resourceName": "intel_net",
            "selectors": {"vendors": ["8086"], "devices": ["154c"], "drivers": ["iavf"]},
        },
        {"resourceName": "intel_dpdk", "selectors": {"drivers": ["vfio-pci"]}},
    ]
}
ALL_VFS = 24
BAD_TOKEN = "not-a-token"  # noqa: S105 - one the server does not know
NET_VF = "0000:5e:00.2"  # iavf, VF 0 of enp59s0f0 (0000:5e:00.0), NUMA 1
RDMA_VF = "0000:3b:00.2"  # mlx5_core, VF 0 of ens1f0, mlx5_1


@attrs.define
class FakeNode:
    root: Path
    fs: FakeSysfs
    kernel: FakeNetlink
    host: Host
    tmp: Path


@pytest.fixture
def node(tmp_path: Path) -> FakeNode:
    root = tmp_path / "root"
    fs = build_example("mixed", root)
    kernel = FakeNetlink(fs)
    return FakeNode(root, fs, kernel, Host(root, netlink=kernel, sysfs_writer=kernel), tmp_path)


@pytest.fixture
def api(kube_cluster: KubeCluster) -> Iterator[KubeClient]:
    """The admin's client; every slice of this node and driver deleted after the test."""
    client = KubeClient(load_kubeconfig(kube_cluster.kubeconfig))
    yield client
    for item in slices_of(client, kube_cluster.node_name):
        client.delete(f"{SLICES}/{item['metadata']['name']}")


def slices_of(api: KubeClient, node: str) -> list[dict[str, Any]]:
    found = api.get(SLICES, query={"fieldSelector": f"spec.nodeName={node},spec.driver={DRIVER}"})
    return sorted(found["items"], key=lambda s: s["metadata"]["name"])


def devices_of(api: KubeClient, node: str) -> dict[str, dict[str, Any]]:
    return {d["name"]: d for s in slices_of(api, node) for d in s["spec"]["devices"]}


StartAgent = Callable[..., Agent]


@pytest.fixture
def agents() -> Iterator[list[Agent]]:
    """The agents a test started: stopped after it (a test may stop one first and
    remove it)."""
    started: list[Agent] = []
    yield started
    for agent in started:
        agent.stop()


@pytest.fixture
def start_agent(
    node: FakeNode, api: KubeClient, kube_cluster: KubeCluster, agents: list[Agent]
) -> StartAgent:
    """An agent with ``--dra`` on the fake node, reading and publishing through *api*."""

    def start(**changes: Any) -> Agent:
        options = AgentOptions(
            device_plugin_dir=node.tmp / "device-plugins",  # no kubelet: pools not registered
            state_dir=node.tmp / "state",
            device_info_dir=node.tmp / "devinfo",
            rescan_interval=0.5,
            reclaim=ReclaimMode.OFF,
            dra=DraOptions(
                registry_dir=node.tmp / "plugins_registry",
                plugins_dir=node.tmp / "plugins",
                cdi_dir=node.tmp / "cdi",
                state_dir=node.tmp / "state",
            ),
        )
        agent = Agent(
            node.host,
            parse_config(json.dumps(CONFIG)),
            attrs.evolve(options, **changes),
            api=api,
            node_name=kube_cluster.node_name,
        )
        agent.start()
        agents.append(agent)
        return agent

    return start


# -- the client against the real server ------------------------------------------------------


def test_the_client_maps_the_servers_errors_to_typed_one_line_errors(
    kube_cluster: KubeCluster, api: KubeClient
) -> None:
    """404, 409 (exists; stale resourceVersion), 422, 403 (admission: a namespace being
    deleted), 401 (a token the server does not know), no answer (a closed port)."""
    claims = CLAIMS.format(ns="default")
    with pytest.raises(NotFound, match=r"^GET .*/resourceclaims/nope: 404 NotFound: .*not found"):
        api.get(f"{claims}/nope")
    config_map = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "kubeapi-test"}}
    stored = api.create("/api/v1/namespaces/default/configmaps", config_map)
    try:
        with pytest.raises(AlreadyExists, match=r"409 AlreadyExists: .*already exists") as exists:
            api.create("/api/v1/namespaces/default/configmaps", config_map)
        assert exists.value.status == 409
        path = "/api/v1/namespaces/default/configmaps/kubeapi-test"
        api.replace(path, {**stored, "data": {"a": "1"}})
        with pytest.raises(Conflict, match=r"409 Conflict: .*has been modified") as stale:
            api.replace(path, {**stored, "data": {"a": "2"}})  # the old resourceVersion
        assert not isinstance(stale.value, AlreadyExists)
    finally:
        api.delete("/api/v1/namespaces/default/configmaps/kubeapi-test")
    bad = {"apiVersion": "v1", "kind": "ConfigMap", "metadata": {"name": "Not_A_Name"}}
    with pytest.raises(Invalid, match='422 Invalid: ConfigMap "Not_A_Name" is invalid'):
        api.create("/api/v1/namespaces/default/configmaps", bad)
    # no namespace controller runs: a deleted namespace stays Terminating, and the
    # NamespaceLifecycle admission forbids new objects in it
    api.create("/api/v1/namespaces", {"metadata": {"name": "kubeapi-gone"}})
    api.delete("/api/v1/namespaces/kubeapi-gone")

    def refused() -> Forbidden | None:
        try:
            api.create("/api/v1/namespaces/kubeapi-gone/configmaps", config_map)
        except Forbidden as e:
            return e
        return None  # the admission's cache had not seen the deletion yet

    forbidden = wait_for("a 403", refused, timeout=10)
    assert "403 Forbidden: " in str(forbidden)
    assert "being terminated" in str(forbidden)
    wrong = KubeClient(attrs.evolve(api.config, token=BAD_TOKEN))
    with pytest.raises(Unauthorized, match=r"^GET /api/v1/nodes: 401 Unauthorized"):
        wrong.get("/api/v1/nodes")
    closed = KubeClient(KubeConfig(server="https://127.0.0.1:9", insecure=True), timeout=2)
    reach = r"cannot reach the API server at https://127\.0\.0\.1:9: "
    with pytest.raises(Unreachable, match=reach):
        closed.get("/api/v1/nodes")
    for error in (exists.value, stale.value):
        assert "\n" not in str(error)


def test_in_cluster_config_verifies_the_server_with_the_service_account_ca(
    kube_cluster: KubeCluster, api: KubeClient, tmp_path: Path
) -> None:
    """The service-account layout (token, ca.crt) and the service environment: the
    server's certificate is verified with the CA (the API server's self-signed one);
    another CA is refused as a TLS failure, not a traceback."""
    account = tmp_path / "serviceaccount"
    account.mkdir()
    (account / "token").write_text(str(api.config.token) + "\n")
    cert = kube_cluster.run_dir / "pki" / "apiserver" / "apiserver.crt"
    (account / "ca.crt").write_bytes(cert.read_bytes())
    port = api.config.server.rsplit(":", 1)[1]
    env = {"KUBERNETES_SERVICE_HOST": "127.0.0.1", "KUBERNETES_SERVICE_PORT": port}
    config = in_cluster(env, account)
    assert config.server == f"https://127.0.0.1:{port}"
    assert not config.insecure
    node = KubeClient(config).get(f"/api/v1/nodes/{kube_cluster.node_name}")
    assert node["metadata"]["name"] == kube_cluster.node_name
    other_ca = ssl.get_default_verify_paths().cafile or "/etc/ssl/certs/ca-certificates.crt"
    (account / "ca.crt").write_bytes(Path(other_ca).read_bytes())
    with pytest.raises(Unreachable, match="TLS: certificate verify failed"):
        KubeClient(in_cluster(env, account)).get("/api/v1/nodes")


# -- ResourceSlices -----------------------------------------------------------------------


def test_slices_publish_every_vf_with_its_attributes_owned_by_the_node(
    kube_cluster: KubeCluster, api: KubeClient, start_agent: StartAgent
) -> None:
    agent = start_agent()
    assert agent.slices is not None
    (published,) = wait_for("a slice", lambda: slices_of(api, kube_cluster.node_name))
    node_uid = kube_cluster.node()["metadata"]["uid"]
    meta, spec = published["metadata"], published["spec"]
    assert meta["name"] == f"{kube_cluster.node_name}-{DRIVER}-0"
    assert meta["ownerReferences"] == [
        {"apiVersion": "v1", "kind": "Node", "name": kube_cluster.node_name, "uid": node_uid,
         "controller": True}
    ]  # fmt: skip
    assert spec["driver"] == DRIVER
    assert spec["nodeName"] == kube_cluster.node_name
    assert spec["pool"] == {
        "name": kube_cluster.node_name,
        "generation": agent.slices.generation,
        "resourceSliceCount": 1,
    }
    devices = {d["name"]: d["attributes"] for d in spec["devices"]}
    served = {str(d.device.address) for r in agent.resources for d in r.devices()}
    assert len(served) == ALL_VFS
    assert set(devices) == {device_name_of(a) for a in served}
    assert devices[device_name_of(NET_VF)] == {
        "pfName": {"string": "enp59s0f0"},
        "pfPciAddress": {"string": "0000:5e:00.0"},
        "vfIndex": {"int": 0},
        "vendor": {"string": "8086"},
        "deviceID": {"string": "154c"},
        "driver": {"string": "iavf"},
        "numaNode": {"int": 1},
        "linkType": {"string": "ether"},
        "rdma": {"bool": False},
        "eswitchMode": {"string": "legacy"},
        "resource.kubernetes.io/pciBusID": {"string": NET_VF},
        "resource.kubernetes.io/pcieRoot": {"string": "pci0000:00"},
        "k8s.cni.cncf.io/resourceName": {"string": "intel.com/intel_net"},
        "k8s.cni.cncf.io/deviceID": {"string": NET_VF},
    }
    rdma = devices[device_name_of(RDMA_VF)]
    assert rdma["rdma"] == {"bool": True}
    assert rdma["driver"] == {"string": "mlx5_core"}
    assert rdma["k8s.cni.cncf.io/resourceName"] == {"string": "intel.com/mlx"}
    assert devices[device_name_of("0000:5e:01.0")]["driver"] == {"string": "vfio-pci"}
    # the Node is the owner: the garbage collector would take the slices with it
    assert kube_cluster.kubectl(
        "get", "resourceslices", "-o", "jsonpath={.items[*].metadata.ownerReferences[0].kind}"
    ).split() == ["Node"]


def test_slices_follow_health_and_vfs_that_go_with_the_generation_bumped(
    kube_cluster: KubeCluster, api: KubeClient, node: FakeNode, start_agent: StartAgent
) -> None:
    """The PF's carrier lost: its VFs leave the slice (unhealthy), and come back with
    it; its VFs removed (numvfs 0): they leave; each change one generation more."""
    start_agent()
    name = kube_cluster.node_name

    def generation() -> int:
        (only,) = slices_of(api, name)
        value: int = only["spec"]["pool"]["generation"]
        return value

    wait_for("every VF", lambda: len(devices_of(api, name)) == ALL_VFS)
    first = generation()
    on_pf0 = {device_name_of(f"0000:5e:00.{n}") for n in range(2, 8)} | {
        device_name_of("0000:5e:01.0"),
        device_name_of("0000:5e:01.1"),
    }
    node.kernel.set_carrier("enp59s0f0", False)
    started = time.monotonic()
    left = wait_for(
        "the PF's VFs to leave", lambda: set(devices_of(api, name)).isdisjoint(on_pf0) or None
    )
    assert left
    took = time.monotonic() - started
    print(f"carrier lost -> VFs out of the slice: {took:.2f} s")
    assert took < 10  # a bound, not a benchmark: 0.11 s measured here (docs/dra.md)
    assert len(devices_of(api, name)) == ALL_VFS - len(on_pf0)
    assert generation() == first + 1
    node.kernel.set_carrier("enp59s0f0", True)
    wait_for("them back", lambda: len(devices_of(api, name)) == ALL_VFS)
    assert generation() == first + 2
    on_pf1 = {
        n
        for n, d in devices_of(api, name).items()
        if d["attributes"]["pfName"]["string"] == "enp59s0f1"
    }
    assert len(on_pf1) == 8
    node.host.set_num_vfs("enp59s0f1", 0, force=True)
    wait_for("enp59s0f1's VFs gone", lambda: len(devices_of(api, name)) == ALL_VFS - 8)
    assert set(devices_of(api, name)).isdisjoint(on_pf1)
    assert generation() == first + 3


def test_a_pool_larger_than_a_slice_is_split_and_shrinks_back(
    kube_cluster: KubeCluster,
    api: KubeClient,
    node: FakeNode,
    start_agent: StartAgent,
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    """With 10 devices a slice (128 in the API), the 24 VFs are 3 slices of one pool
    generation and resourceSliceCount 3, accepted by the API server; 8 VFs leaving make
    it 2 slices of the next generation, the third deleted."""
    monkeypatch.setattr(draslices, "MAX_DEVICES_PER_SLICE", 10)
    name = kube_cluster.node_name
    start_agent()
    found = wait_for("3 slices", lambda: len(slices_of(api, name)) == 3 and slices_of(api, name))
    assert [len(s["spec"]["devices"]) for s in found] == [10, 10, 4]
    assert len(devices_of(api, name)) == ALL_VFS
    (pool,) = {json.dumps(s["spec"]["pool"], sort_keys=True) for s in found}
    first = json.loads(pool)
    assert first["resourceSliceCount"] == 3
    node.kernel.set_carrier("enp59s0f0", False)
    shrunk = wait_for("2 slices", lambda: len(slices_of(api, name)) == 2 and slices_of(api, name))
    assert [s["metadata"]["name"] for s in shrunk] == [f"{name}-{DRIVER}-{i}" for i in (0, 1)]
    assert [len(s["spec"]["devices"]) for s in shrunk] == [10, 6]
    assert {s["spec"]["pool"]["generation"] for s in shrunk} == {first["generation"] + 1}
    assert {s["spec"]["pool"]["resourceSliceCount"] for s in shrunk} == {2}


def test_a_restarted_agent_goes_on_from_the_published_generation_and_drops_stale_slices(
    kube_cluster: KubeCluster, api: KubeClient, start_agent: StartAgent, agents: list[Agent]
) -> None:
    name = kube_cluster.node_name
    stale = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceSlice",
        "metadata": {"name": f"{name}-{DRIVER}-old"},
        "spec": {
            "driver": DRIVER,
            "nodeName": name,
            "pool": {"name": name, "generation": 41, "resourceSliceCount": 2},
            "devices": [{"name": "vf-0000-99-00-1"}],
        },
    }
    api.create(SLICES, stale)
    agent = start_agent()
    assert agent.slices is not None
    assert agent.slices.generation == 42
    (published,) = slices_of(api, name)  # the stale one deleted
    assert published["metadata"]["name"] == f"{name}-{DRIVER}-0"
    assert published["spec"]["pool"]["generation"] == 42
    agents.remove(agent)
    agent.stop()
    again = start_agent()
    assert again.slices is not None
    assert again.slices.generation == 43
    assert [s["spec"]["pool"]["generation"] for s in slices_of(api, name)] == [43]


# -- ResourceClaims --------------------------------------------------------------------------


def _claim(name: str) -> dict[str, Any]:
    return {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "ResourceClaim",
        "metadata": {"name": name, "namespace": "default"},
        "spec": {
            "devices": {
                "requests": [{"name": "vf", "exactly": {"deviceClassName": DRIVER}}],
                "config": [
                    {"requests": ["vf"], "opaque": {"driver": DRIVER, "parameters": {"vlan": 100}}}
                ],
            }
        },
    }


def _allocate(cluster: KubeCluster, name: str, device: str) -> dict[str, Any]:
    """Write the claim's status.allocation as the scheduler would (admin, status
    subresource); the claim as stored."""
    status = {
        "status": {
            "allocation": {
                "devices": {
                    "results": [
                        {"request": "vf", "driver": DRIVER, "pool": cluster.node_name,
                         "device": device}
                    ],
                    "config": [
                        {"source": "FromClaim", "requests": ["vf"],
                         "opaque": {"driver": DRIVER, "parameters": {"vlan": 100}}}
                    ],
                },
            }
        }
    }  # fmt: skip
    cluster.kubectl(
        "patch", "resourceclaim", name, "-n", "default", "--subresource=status",
        "--type=merge", "-p", json.dumps(status),
    )  # fmt: skip
    return cluster.get("resourceclaim", name)


@pytest.fixture
def device_class(kube_cluster: KubeCluster) -> Iterator[None]:
    cls = {
        "apiVersion": "resource.k8s.io/v1",
        "kind": "DeviceClass",
        "metadata": {"name": DRIVER},
        "spec": {"selectors": [{"cel": {"expression": f'device.driver == "{DRIVER}"'}}]},
    }
    kube_cluster.kubectl("apply", "-f", "-", input=json.dumps(cls))
    yield
    kube_cluster.kubectl("delete", "resourceclaims", "--all", "-n", "default", "--wait=false")
    kube_cluster.kubectl("delete", "deviceclass", DRIVER, "--ignore-not-found")


def test_prepare_reads_the_claim_from_the_api_server(
    kube_cluster: KubeCluster,
    api: KubeClient,
    node: FakeNode,
    start_agent: StartAgent,
    device_class: None,
) -> None:
    """A claim made with kubectl and allocated through the status subresource is
    prepared: the agent's reader GETs it, the preparer keeps its device and its vlan.
    The same name made again (another UID) is refused; a claim not there says so."""
    start_agent()
    kube_cluster.create(_claim("net"))
    claim = _allocate(kube_cluster, "net", device_name_of(NET_VF))
    uid = claim["metadata"]["uid"]
    with DraKubeletStandIn(node.tmp / "plugins_registry") as kubelet:
        client = kubelet.register(DRIVER)
        answer = client.prepare(ClaimRef("default", "net", uid)).claims[uid]
        assert answer.error == ""
        (device,) = answer.devices
        assert (device.pool_name, device.device_name) == (
            kube_cluster.node_name,
            device_name_of(NET_VF),
        )
        assert list(device.cdi_device_ids) == [f"{DRIVER}/vf={uid}-{device_name_of(NET_VF)}"]
        record = json.loads(
            (node.tmp / "state" / "dra" / DRIVER / "claims" / f"{uid}.json").read_text()
        )
        assert record["devices"][0]["settings"] == {"vlan": 100, "qos": 0, "vlan_proto": "802.1q"}
        assert client.unprepare(ClaimRef("default", "net", uid)).claims[uid].error == ""

        kube_cluster.kubectl("delete", "resourceclaim", "net", "-n", "default")
        kube_cluster.create(_claim("net"))
        _allocate(kube_cluster, "net", device_name_of(NET_VF))
        error = client.prepare(ClaimRef("default", "net", uid)).claims[uid].error
        assert "the claim was deleted and made again" in error

        gone = "0d4f3c2e-0000-4000-8000-00000000dead"
        error = client.prepare(ClaimRef("default", "nope", gone)).claims[gone].error
        assert error == (
            "claim default/nope: ResourceClaim default/nope is not in the API server (deleted?)"
        )


def test_the_reader_says_why_a_claim_cannot_be_read(kube_cluster: KubeCluster) -> None:
    config = load_kubeconfig(kube_cluster.kubeconfig)
    wrong = ApiServerClaims(KubeClient(attrs.evolve(config, token=BAD_TOKEN)))
    with pytest.raises(ClaimUnavailable, match=r"^cannot read ResourceClaim default/x: GET .* 401"):
        wrong.resource_claim("default", "x")


# -- the agent as a process ------------------------------------------------------------------


def test_sriovlib_agent_dra_kubeconfig_publishes_the_nodes_slices(
    kube_cluster: KubeCluster, api: KubeClient, tmp_path: Path
) -> None:
    """``sriovlib agent --dra --kubeconfig FILE --node-name NAME``: the slices appear,
    and SIGTERM stops it with exit 0 (the slices stay: the kubelet removes a driver's
    slices when it unregisters)."""
    (tmp_path / "config.json").write_text(json.dumps(CONFIG))
    args = [
        sys.executable, "-m", "sriovlib", "agent", "--example", "mixed",
        "--config", str(tmp_path / "config.json"),
        "--device-plugin-dir", str(tmp_path / "dp"), "--state-dir", str(tmp_path / "state"),
        "--device-info-dir", str(tmp_path / "devinfo"), "--metrics-address", "off",
        "--cni-socket", "off", "--pod-resources-socket", "off",
        "--cdi-dir", str(tmp_path / "cdi"),
        "--dra", "--dra-registry-dir", str(tmp_path / "reg"),
        "--dra-plugins-dir", str(tmp_path / "plugins"),
        "--kubeconfig", str(kube_cluster.kubeconfig), "--node-name", kube_cluster.node_name,
        "--log-format", "json",
    ]  # fmt: skip
    agent = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        wait_for(
            "the agent's slices",
            lambda: len(devices_of(api, kube_cluster.node_name)) == ALL_VFS,
            timeout=60,
        )
    finally:
        agent.send_signal(signal.SIGTERM)
        _, stderr = agent.communicate(timeout=30)
    assert agent.returncode == 0, stderr
    events = [json.loads(line) for line in stderr.splitlines() if line.startswith("{")]
    assert any(e.get("event") == "ResourceSlices published" for e in events), stderr
    assert "Traceback" not in stderr
