"""One VF, one owner: with ``--dra`` a pool is served either to the kubelet's
device-plugin API or as DRA devices, never both. An in-process agent on the "mixed"
example node, the device-plugin kubelet stand-in, the DRA kubelet stand-in, and an
in-memory API server for the ResourceSlices."""

from __future__ import annotations

import json
import subprocess
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from sriovlib.agent.dra import DraOptions
from sriovlib.agent.kubeapi import NotFound
from sriovlib.agent.runner import Agent, ConfigFile
from sriovlib.pools import load_config, parse_config
from sriovlib.testing.drakubelet import (
    DraKubeletStandIn,
    FakeClaims,
    device_name_of,
    resource_claim,
)
from sriovlib.testing.kubelet import KubeletStandIn

from .conftest import CONFIG, Node

DRIVER = "sriov.sriovlib.io"
NET = "intel.com/intel_net"
MLX = "intel.com/mlx"
DPDK = "intel.com/intel_dpdk"
NET_VF = "0000:5e:00.2"  # iavf, pool intel_net
VFIO_VF = "0000:5e:01.0"  # vfio-pci, pool intel_dpdk
SLICES = "/apis/resource.k8s.io/v1/resourceslices"


class MemoryApi:
    """The few calls the slice publisher makes, kept in memory."""

    def __init__(self) -> None:
        self.slices: dict[str, dict[str, Any]] = {}
        self.events: list[dict[str, Any]] = []
        self._version = 0

    def _stored(self, body: Mapping[str, Any]) -> dict[str, Any]:
        self._version += 1
        stored = json.loads(json.dumps(body))
        stored["metadata"]["resourceVersion"] = str(self._version)
        self.slices[stored["metadata"]["name"]] = stored
        return stored

    def get(self, path: str, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        if path.startswith("/api/v1/nodes/"):
            return {"metadata": {"name": path.rsplit("/", 1)[1], "uid": "node-uid"}}
        if path == SLICES:
            return {"items": list(self.slices.values())}
        name = path.rsplit("/", 1)[1]
        if name not in self.slices:
            raise NotFound(f"GET {path}: 404")
        return self.slices[name]

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if path.endswith("/events"):  # a refused claim's Event: not a slice
            self.events.append(dict(body))
            return dict(body)
        return self._stored(body)

    def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        if "/events/" in path:  # an Event written again with its count
            self.events.append(dict(body))
            return dict(body)
        return self._stored(body)

    def delete(self, path: str) -> dict[str, Any]:
        self.slices.pop(path.rsplit("/", 1)[1], None)
        return {}

    def published(self) -> set[str]:
        return {d["name"] for s in self.slices.values() for d in s["spec"]["devices"]}

    def wait_published(self, check: Callable[[set[str]], bool], timeout: float = 10) -> set[str]:
        deadline = time.monotonic() + timeout
        while not check(found := self.published()):
            assert time.monotonic() < deadline, f"slices never matched: {sorted(found)}"
            time.sleep(0.05)
        return found


def names_of(resource: str, agent: Agent, timeout: float = 10) -> set[str]:
    """The device names of the agent's pool *resource* (once it has it)."""
    deadline = time.monotonic() + timeout
    while not (found := [r for r in agent.resources if r.name == resource]):
        assert time.monotonic() < deadline, f"the agent never had {resource}"
        time.sleep(0.05)
    return {device_name_of(d.id) for d in found[0].devices()}


@pytest.fixture
def api() -> MemoryApi:
    return MemoryApi()


StartDra = Callable[..., Agent]


@pytest.fixture
def start_dra(node: Node, api: MemoryApi, claims: FakeClaims) -> Iterator[StartDra]:
    """An agent with ``--dra`` (``pools``: ``--dra-pools``) publishing to *api*."""
    agents: list[Agent] = []

    def start(pools: frozenset[str] | None = None, config_file: ConfigFile | None = None) -> Agent:
        options = node.options(
            dra=DraOptions(
                registry_dir=node.tmp / "plugins_registry",
                plugins_dir=node.tmp / "plugins",
                cdi_dir=node.tmp / "cdi",
                state_dir=node.tmp / "state",
                pools=pools,
            )
        )
        config = (
            config_file.load()
            if config_file is not None
            else parse_config(json.dumps(CONFIG).encode())
        )
        agent = Agent(
            node.host,
            config,
            options,
            config_file=config_file,
            claims=claims,
            api=api,  # type: ignore[arg-type]
            node_name="node1",
        )
        agent.start()
        assert agent.health is not None
        agent.health.tick = 0.05
        agents.append(agent)
        return agent

    yield start
    for agent in agents:
        agent.stop()


def test_dra_pools_are_not_registered_with_the_device_plugin_api_and_only_they_are_published(
    node: Node, kubelet: KubeletStandIn, api: MemoryApi, start_dra: StartDra
) -> None:
    agent = start_dra(frozenset({"intel_dpdk", "intel.com/mlx"}))
    net = kubelet.wait_plugin(NET)  # the one pool left to the device plugin
    assert net.wait_devices(lambda ds: len(ds) > 0)
    assert kubelet.registered(MLX) == 0
    assert kubelet.registered(DPDK) == 0
    assert not (node.device_plugin_dir / "intel.com_mlx.sock").exists()
    assert not (node.device_plugin_dir / "intel.com_intel_dpdk.sock").exists()
    wanted = names_of(MLX, agent) | names_of(DPDK, agent)
    assert api.wait_published(lambda found: found == wanted) == wanted
    assert not names_of(NET, agent) & api.published()  # no VF of the pool in a slice
    # the orphan reclaim asks the pod-resources API only about device-plugin VFs: it
    # does not list a VF a claim holds, which must not look like an orphan
    served = agent.reclaimer.served()
    assert {device_name_of(i) for i in served} == names_of(NET, agent)


def test_dra_alone_means_every_pool(
    node: Node, kubelet: KubeletStandIn, api: MemoryApi, start_dra: StartDra
) -> None:
    agent = start_dra()
    everything = names_of(NET, agent) | names_of(MLX, agent) | names_of(DPDK, agent)
    api.wait_published(lambda found: found == everything)
    assert [p.name for p in node.device_plugin_dir.glob("*.sock")] == ["kubelet.sock"]
    assert all(kubelet.registered(r) == 0 for r in (NET, MLX, DPDK))


def test_prepare_refuses_a_vf_of_a_device_plugin_pool(
    node: Node, kubelet: KubeletStandIn, claims: FakeClaims, start_dra: StartDra
) -> None:
    start_dra(frozenset({"intel_dpdk"}))
    with DraKubeletStandIn(node.tmp / "plugins_registry") as dra:
        client = dra.register(DRIVER)
        refs = [
            claims.add(resource_claim("net", devices=[("vf", "node1", device_name_of(NET_VF))])),
            claims.add(resource_claim("dpdk", devices=[("vf", "node1", device_name_of(VFIO_VF))])),
        ]
        answer = client.prepare(*refs).claims
    assert answer[refs[0].uid].error == (
        f"claim default/net: device {device_name_of(NET_VF)} ({NET_VF}) of request 'vf' is not "
        f"this driver's to prepare: it is in pool {NET}, which the device plugin serves "
        "(not one of --dra-pools)"
    )
    assert answer[refs[1].uid].error == ""
    assert [d.device_name for d in answer[refs[1].uid].devices] == [device_name_of(VFIO_VF)]


def write_config(path: Path, config: dict[str, object]) -> None:
    temp = path.with_name(path.name + ".new")
    temp.write_text(json.dumps(config))
    temp.replace(path)


def test_a_live_reconcile_moves_pools_and_vfs_between_the_two(
    node: Node, kubelet: KubeletStandIn, api: MemoryApi, start_dra: StartDra
) -> None:
    path = node.tmp / "config.json"
    write_config(path, CONFIG)
    source = ConfigFile(str(path), lambda: load_config(str(path), compat=False))
    agent = start_dra(frozenset({"intel_dpdk", "dra_net", "dra_net2"}), config_file=source)
    net = kubelet.wait_plugin(NET)
    net.wait_devices(lambda ds: len(ds) == 12)
    dpdk_names = names_of(DPDK, agent)
    api.wait_published(lambda found: found == dpdk_names)
    # the VFs of enp59s0f1 leave the device-plugin pool for a new pool given to DRA
    pools: list[dict[str, Any]] = [dict(p) for p in CONFIG["resourceList"]]  # type: ignore[attr-defined]
    pools[1]["selectors"] = {**pools[1]["selectors"], "pfNames": ["enp59s0f0"]}
    pools.append(
        {"resourceName": "dra_net", "selectors": {"pfNames": ["enp59s0f1"], "drivers": ["iavf"]}}
    )
    write_config(path, {"resourceList": pools})
    devices = net.wait_devices(lambda ds: len(ds) == 6)  # the kubelet stops advertising them
    assert all(d.ID.startswith("0000:5e:00.") for d in devices)
    moved = names_of("intel.com/dra_net", agent)
    assert len(moved) == 6
    api.wait_published(lambda found: found == dpdk_names | moved)
    assert kubelet.registered("intel.com/dra_net") == 0
    # the device-plugin pool renamed into --dra-pools: its socket goes, its VFs publish
    pools[1]["resourceName"] = "dra_net2"
    write_config(path, {"resourceList": pools})
    deadline = time.monotonic() + 10
    while (node.device_plugin_dir / "intel.com_intel_net.sock").exists():
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not [r for r in agent.servers if r.resource.name != MLX]
    api.wait_published(lambda found: len(found) == len(dpdk_names) + 12)


def test_ownership_changed_under_a_running_agent_unserves_and_serves_again(
    node: Node, kubelet: KubeletStandIn, api: MemoryApi, start_dra: StartDra
) -> None:
    agent = start_dra(frozenset({"intel_dpdk"}))
    net = kubelet.wait_plugin(NET)
    net.wait_devices(lambda ds: len(ds) == 12)
    assert agent.options.dra is not None
    agent.options = attrs.evolve(
        agent.options,
        dra=attrs.evolve(agent.options.dra, pools=frozenset({"intel_dpdk", "intel_net"})),
    )
    agent.reconcile("test")
    deadline = time.monotonic() + 10
    while net.stream_error is None:  # the kubelet's stream of the pool ended
        assert time.monotonic() < deadline
        time.sleep(0.05)
    assert not (node.device_plugin_dir / "intel.com_intel_net.sock").exists()
    api.wait_published(lambda found: names_of(NET, agent) <= found)
    agent.options = attrs.evolve(
        agent.options, dra=attrs.evolve(agent.options.dra, pools=frozenset({"intel_dpdk"}))
    )
    agent.reconcile("test")
    again = kubelet.wait_plugin(NET, after=1)
    again.wait_devices(lambda ds: len(ds) == 12)
    api.wait_published(lambda found: not names_of(NET, agent) & found)


def test_sriovlib_agent_dra_pools_option(tmp_path: Path) -> None:
    """``--dra-pools`` as a process: the named pool is not a device-plugin socket."""
    config = subprocess.run(
        [sys.executable, "-m", "sriovlib", "config", "generate", "--example", "mixed"],
        capture_output=True, check=True, timeout=60,
    ).stdout  # fmt: skip
    (tmp_path / "config.json").write_bytes(config)
    names = [p["resourceName"] for p in json.loads(config)["resourceList"]]  # mlx5, i40e
    dp = tmp_path / "dp"
    args = [
        sys.executable, "-m", "sriovlib", "agent", "--example", "mixed",
        "--config", str(tmp_path / "config.json"),
        "--device-plugin-dir", str(dp), "--state-dir", str(tmp_path / "state"),
        "--device-info-dir", str(tmp_path / "devinfo"), "--metrics-address", "off",
        "--cni-socket", "off", "--pod-resources-socket", "off", "--cdi-dir", str(tmp_path / "cdi"),
        "--dra", "--dra-pools", f"{names[0]},no_such_pool",
        "--dra-registry-dir", str(tmp_path / "reg"), "--dra-plugins-dir", str(tmp_path / "plugins"),
    ]  # fmt: skip
    with KubeletStandIn(dp) as kubelet:
        agent = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
        try:
            for name in names[1:]:
                kubelet.wait_plugin(f"intel.com/{name}", timeout=30)
            assert kubelet.registered(f"intel.com/{names[0]}") == 0
        finally:
            agent.terminate()
            _, stderr = agent.communicate(timeout=30)
    assert agent.returncode == 0, stderr
    assert "pool served as DRA devices" in stderr
    assert "no_such_pool" in stderr


def test_slices_wiped_by_a_kubelet_registering_the_driver_again_are_back_at_once(
    node: Node, api: MemoryApi, start_dra: StartDra
) -> None:
    """A kubelet that starts registers the driver again and deletes every slice of its
    node, in the background: before the registration or after it. Either way the slices
    are back within seconds, not at the publisher's 30-second re-check."""
    start_dra()
    wanted = api.wait_published(bool)
    with DraKubeletStandIn(node.tmp / "plugins_registry") as kubelet:
        api.slices.clear()  # the wipe before the registration
        kubelet.register(DRIVER)
        assert api.wait_published(lambda found: found == wanted, timeout=5) == wanted
        time.sleep(0.5)
        api.slices.clear()  # the wipe after it
        assert api.wait_published(lambda found: found == wanted, timeout=5) == wanted
