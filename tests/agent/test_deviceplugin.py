"""The device-plugin agent against the in-process kubelet stand-in: every RPC."""

from __future__ import annotations

import json
import os
import time
from pathlib import Path

import grpc
import pytest

from sriovlib.agent.kubelet import ABANDONED_GRACE
from sriovlib.allocation import Owner, Policy
from sriovlib.plugins.types import DeviceType
from sriovlib.testing.kubelet import KubeletStandIn

from .conftest import Node, StartAgent

MLX = "intel.com/mlx"
NET = "intel.com/intel_net"
DPDK = "intel.com/intel_dpdk"


def test_every_pool_registers_on_its_own_socket(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    start_agent()
    for name in (MLX, NET, DPDK):
        plugin = kubelet.wait_plugin(name)
        assert plugin.endpoint == name.replace("/", "_") + ".sock"
        assert plugin.options.get_preferred_allocation_available
        assert not plugin.options.pre_start_required
        options = plugin.get_options()
        assert options.get_preferred_allocation_available
    assert {r.version for r in kubelet.registrations} == {"v1beta1"}


def test_list_and_watch_has_health_and_numa_unless_excluded(
    kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    start_agent()
    net = kubelet.wait_plugin(NET).wait_devices(lambda ds: len(ds) == 12)
    assert {d.health for d in net} == {"Healthy"}
    assert {tuple(n.ID for n in d.topology.nodes) for d in net} == {(1,)}
    dpdk = kubelet.wait_plugin(DPDK).wait_devices(lambda ds: len(ds) == 4)
    assert [d.ID for d in dpdk] == ["0000:5e:01.0", "0000:5e:01.1", "0000:5e:09.0", "0000:5e:09.1"]
    assert all(not d.HasField("topology") for d in dpdk)


def test_allocate_netdevice_env_info_and_device_info_file(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    start_agent()
    plugin = kubelet.wait_plugin(NET)
    ids = ["0000:5e:08.3", "0000:5e:00.2"]
    response = plugin.allocate(ids)
    (container,) = response.container_responses
    assert container.envs["PCIDEVICE_INTEL_COM_INTEL_NET"] == "0000:5e:08.3,0000:5e:00.2"
    info = json.loads(container.envs["PCIDEVICE_INTEL_COM_INTEL_NET_INFO"])
    assert info == {i: {"generic": {"deviceID": i}} for i in ids}
    assert list(container.devices) == []
    assert list(container.cdi_devices) == []
    file = node.tmp / "devinfo" / "intel.com-intel_net-0000:5e:08.3-device.json"
    assert json.loads(file.read_text()) == {
        "type": "pci",
        "version": "1.1.0",
        "pci": {"pci-address": "0000:5e:08.3", "pf-pci-address": "0000:5e:00.1"},
    }


def test_allocate_vfio_gives_group_nodes_and_vhost(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    start_agent()
    vf = node.host.vf("0000:5e:01.0")
    response = kubelet.wait_plugin(DPDK).allocate(["0000:5e:01.0"])
    (container,) = response.container_responses
    devices = {d.container_path: (d.host_path, d.permissions) for d in container.devices}
    group = f"/dev/vfio/{vf.iommu_group}"
    assert devices == {
        "/dev/vfio/vfio": (str(node.root / "dev/vfio/vfio"), "rw"),
        group: (str(node.root / "dev/vfio" / str(vf.iommu_group)), "rw"),
        "/dev/vhost-net": (str(node.root / "dev/vhost-net"), "rw"),
        "/dev/net/tun": (str(node.root / "dev/net/tun"), "rw"),
    }
    info = json.loads(container.envs["PCIDEVICE_INTEL_COM_INTEL_DPDK_INFO"])["0000:5e:01.0"]
    assert info["vfio"] == {"mount": "/dev/vfio/vfio", "dev-mount": group}
    assert info["vhost"] == {"net-mount": "/dev/vhost-net", "tun-mount": "/dev/net/tun"}


def test_noiommu_group_maps_to_the_group_path(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    vf = node.host.vf("0000:5e:09.1")
    group = node.root / "sys/kernel/iommu_groups" / str(vf.iommu_group)
    (group / "name").write_text("vfio-noiommu\n")
    (node.root / f"dev/vfio/noiommu-{vf.iommu_group}").touch()
    start_agent()
    (container,) = kubelet.wait_plugin(DPDK).allocate(["0000:5e:09.1"]).container_responses
    devices = {d.container_path: d.host_path for d in container.devices}
    assert devices[f"/dev/vfio/{vf.iommu_group}"] == str(
        node.root / f"dev/vfio/noiommu-{vf.iommu_group}"
    )


def test_rdma_pool_gets_the_character_devices(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    vf = node.host.vf("0000:3b:00.2")
    (rdma,) = vf.rdma_devices
    for cls, name in (
        ("infiniband_verbs", "uverbs1"),
        ("infiniband_mad", "umad1"),
        ("infiniband_mad", "issm1"),
        ("infiniband_verbs", "uverbs9"),
    ):
        entry = node.root / "sys/class" / cls / name
        entry.mkdir(parents=True)
        (entry / "ibdev").write_text((rdma if name != "uverbs9" else "mlx5_9") + "\n")
    (node.root / "dev/infiniband").mkdir(parents=True)
    for name in ("uverbs1", "umad1", "issm1", "rdma_cm"):
        (node.root / "dev/infiniband" / name).touch()
    start_agent()
    (container,) = kubelet.wait_plugin(MLX).allocate(["0000:3b:00.2"]).container_responses
    assert sorted(d.container_path for d in container.devices) == [
        "/dev/infiniband/issm1",
        "/dev/infiniband/rdma_cm",
        "/dev/infiniband/umad1",
        "/dev/infiniband/uverbs1",
    ]
    info = json.loads(container.envs["PCIDEVICE_INTEL_COM_MLX_INFO"])["0000:3b:00.2"]
    assert info["rdma"] == {
        "rdma_dev": rdma,
        "uverbs": "/dev/infiniband/uverbs1",
        "umad": "/dev/infiniband/umad1",
        "issm": "/dev/infiniband/issm1",
        "rdma_cm": "/dev/infiniband/rdma_cm",
    }
    assert info["extra"] == {"team": "a"}
    file = node.tmp / "devinfo" / "intel.com-mlx-0000:3b:00.2-device.json"
    assert json.loads(file.read_text())["pci"]["rdma-device"] == rdma


def test_allocate_unknown_id_is_not_found_and_names_it(
    kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    start_agent()
    plugin = kubelet.wait_plugin(NET)
    with pytest.raises(grpc.RpcError) as caught:
        plugin.allocate(["0000:5e:00.2", "0000:3b:00.2"])  # the second is another pool's
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert "0000:3b:00.2" in caught.value.details()
    with pytest.raises(grpc.RpcError) as caught:
        plugin.allocate(["../../x"])
    assert caught.value.code() is grpc.StatusCode.NOT_FOUND
    assert "../../x" in caught.value.details()


def test_a_device_that_changed_is_refused_and_turns_unhealthy(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    start_agent()
    plugin = kubelet.wait_plugin(NET)
    plugin.wait_devices(lambda ds: len(ds) == 12)
    node.host.bind_driver("0000:5e:00.3", DeviceType.VFIO)  # someone else took it
    with pytest.raises(grpc.RpcError) as caught:
        plugin.allocate(["0000:5e:00.3"])
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "0000:5e:00.3" in caught.value.details()
    assert "vfio-pci" in caught.value.details()
    devices = plugin.wait_devices(lambda ds: any(d.health == "Unhealthy" for d in ds))
    assert [d.ID for d in devices if d.health == "Unhealthy"] == ["0000:5e:00.3"]
    with pytest.raises(grpc.RpcError) as caught:  # and stays refused
        plugin.allocate(["0000:5e:00.3"])
    assert "unhealthy" in caught.value.details()


def test_a_vanished_vf_is_refused(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    start_agent()
    plugin = kubelet.wait_plugin(MLX)
    node.host.set_num_vfs("0000:3b:00.1", 0, force=True)
    with pytest.raises(grpc.RpcError) as caught:
        plugin.allocate(["0000:3b:02.2"])
    assert caught.value.code() is grpc.StatusCode.FAILED_PRECONDITION
    assert "0000:3b:02.2" in caught.value.details()
    assert "gone" in caught.value.details()


def _pf(device_id: str) -> str:
    return {"00": "port0", "01": "port0", "08": "port1", "09": "port1"}[device_id[8:10]]


def test_preferred_allocation_packs_or_spreads_over_pfs(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    agent = start_agent()
    plugin = kubelet.wait_plugin(NET)
    available = [d.ID for d in plugin.wait_devices(lambda ds: len(ds) == 12)]
    packed = plugin.preferred(available, 3)
    assert len({_pf(i) for i in packed}) == 1
    # must-include is kept, and the rest packs onto its PF
    chosen = plugin.preferred(available, 3, must_include=["0000:5e:08.5"])
    assert chosen[0] == "0000:5e:08.5"
    assert {_pf(i) for i in chosen} == {"port1"}
    agent.stop()
    spread_agent = start_agent(policy=Policy.SPREAD)
    spread = kubelet.wait_plugin(NET, after=1).preferred(available, 4)
    assert sorted(_pf(i) for i in spread) == ["port0", "port0", "port1", "port1"]
    assert spread_agent.options.policy is Policy.SPREAD


def test_preferred_allocation_stays_on_one_numa_node(
    kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    config = {
        "resourceList": [{"resourceName": "all", "selectors": {"drivers": ["iavf", "mlx5_core"]}}]
    }
    start_agent(config)
    plugin = kubelet.wait_plugin("intel.com/all")
    devices = plugin.wait_devices(lambda ds: len(ds) == 20)
    numa = {d.ID: d.topology.nodes[0].ID for d in devices}
    chosen = plugin.preferred(list(numa), 6)
    assert len({numa[i] for i in chosen}) == 1
    chosen = plugin.preferred(list(numa), 3, must_include=["0000:3b:00.2"])
    assert {numa[i] for i in chosen} == {0}
    # a request that cannot be met gets no preference (an error would fail admission)
    assert plugin.preferred(list(numa)[:2], 3) == []


def test_preferred_allocation_puts_devices_held_by_attachments_last(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    agent = start_agent()
    plugin = kubelet.wait_plugin(NET)
    available = [d.ID for d in plugin.wait_devices(lambda ds: len(ds) == 12)]
    first = plugin.preferred(available, 1)
    agent.attachments.store.allocate(Owner("c" * 64, "net1"), [first[0]], pool="leaked")
    second = plugin.preferred(available, 1)
    assert second != first
    assert plugin.preferred(first, 1) == first  # still given when nothing else is offered


def test_cdi_mode_returns_cdi_devices_and_writes_a_spec(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    cdi = node.tmp / "cdi"
    start_agent(cdi_dir=cdi)
    (container,) = kubelet.wait_plugin(DPDK).allocate(["0000:5e:09.0"]).container_responses
    assert [d.name for d in container.cdi_devices] == ["intel.com/net-pci=0000:5e:09.0"]
    assert list(container.devices) == []
    assert container.envs["PCIDEVICE_INTEL_COM_INTEL_DPDK"] == "0000:5e:09.0"
    spec = json.loads((cdi / "sriovlib-intel.com_intel_dpdk.json").read_text())
    assert spec["kind"] == "intel.com/net-pci"
    by_name = {d["name"]: d["containerEdits"] for d in spec["devices"]}
    assert sorted(by_name) == ["0000:5e:01.0", "0000:5e:01.1", "0000:5e:09.0", "0000:5e:09.1"]
    paths = [n["path"] for n in by_name["0000:5e:09.0"]["deviceNodes"]]
    assert "/dev/vfio/vfio" in paths
    assert all(edits["env"] for edits in by_name.values())  # no device without edits


def test_kubelet_restart_re_registers_every_pool(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    start_agent()
    for name in (MLX, NET, DPDK):
        kubelet.wait_plugin(name)
    kubelet.restart()  # deletes the plugin sockets, new kubelet.sock
    for name in (MLX, NET, DPDK):
        plugin = kubelet.wait_plugin(name, after=1)
        assert plugin.wait_devices(lambda ds: len(ds) > 0)
    sockets = sorted(p.name for p in node.device_plugin_dir.iterdir() if p.is_socket())
    assert sockets == [
        "intel.com_intel_dpdk.sock",
        "intel.com_intel_net.sock",
        "intel.com_mlx.sock",
        "kubelet.sock",
    ]


def test_a_resource_the_kubelet_drops_is_registered_again(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    """The kubelet drops a plugin's stream without a restart when an earlier plugin of
    the same resource goes (an upstream device plugin deleted after the agent took the
    resource over): the agent registers that resource again, the others stay."""
    start_agent()
    for name in (MLX, NET):
        kubelet.wait_plugin(name)
    started = time.monotonic()
    kubelet.drop(NET)
    plugin = kubelet.wait_plugin(NET, after=1)
    assert plugin.wait_devices(lambda ds: len(ds) > 0)
    assert time.monotonic() - started < 5
    time.sleep(2 * ABANDONED_GRACE)  # and once only: the new stream is open
    assert (kubelet.registered(NET), kubelet.registered(MLX)) == (2, 1)


def test_a_deleted_plugin_socket_is_served_again(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    agent = start_agent()
    kubelet.wait_plugin(NET)
    (node.device_plugin_dir / "intel.com_intel_net.sock").unlink()
    plugin = kubelet.wait_plugin(NET, after=1)
    assert plugin.allocate(["0000:5e:00.2"]).container_responses
    assert kubelet.registered(MLX) == 1  # the others were left alone
    (status,) = [s for s in agent.supervisor.status() if s["resource"] == NET]
    assert status["serverStarts"] == 2


def test_refused_registration_is_retried_with_backoff(node: Node, start_agent: StartAgent) -> None:
    refusing = {"on": True}

    def refuse(request: object) -> str | None:
        return "resource name already taken" if refusing["on"] else None

    with KubeletStandIn(node.device_plugin_dir, refuse=refuse) as kubelet:
        agent = start_agent()
        time.sleep(2)
        status = {s["resource"]: s for s in agent.supervisor.status()}
        assert not status[NET]["registered"]
        assert 2 <= status[NET]["failures"] <= 4  # 0.5, 1, 2 s apart: backing off
        assert "already taken" in status[NET]["lastError"]
        refusing["on"] = False
        kubelet.wait_plugin(NET, timeout=10)
        deadline = time.monotonic() + 5
        while not all(s["registered"] for s in agent.supervisor.status()):
            assert time.monotonic() < deadline
            time.sleep(0.1)
        assert {s["lastError"] for s in agent.supervisor.status()} == {None}


def test_the_agent_waits_for_a_kubelet_that_comes_later(
    node: Node, start_agent: StartAgent
) -> None:
    start_agent()
    time.sleep(0.6)
    with KubeletStandIn(node.device_plugin_dir) as kubelet:
        assert kubelet.wait_plugin(NET).wait_devices(lambda ds: len(ds) == 12)


def test_stop_removes_the_sockets_and_ends_the_streams(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    agent = start_agent()
    plugin = kubelet.wait_plugin(NET)
    plugin.wait_devices(lambda ds: len(ds) == 12)
    agent.stop()
    assert sorted(p.name for p in node.device_plugin_dir.iterdir()) == ["kubelet.sock"]
    deadline = time.monotonic() + 5
    while plugin.stream_error is None and time.monotonic() < deadline:
        time.sleep(0.05)
    assert plugin.stream_error is not None


def test_device_info_files_of_devices_in_the_pool_survive_a_restart(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    agent = start_agent()
    kubelet.wait_plugin(NET).allocate(["0000:5e:00.2"])
    devinfo = node.tmp / "devinfo"
    stale = devinfo / "intel.com-intel_net-0000:5e:0f.7-device.json"
    stale.write_text("{}")
    other = devinfo / "example.com-other-0000:5e:0f.7-device.json"
    other.write_text("{}")
    agent.stop()
    start_agent()
    assert (devinfo / "intel.com-intel_net-0000:5e:00.2-device.json").exists()
    assert not stale.exists()  # no such device in the pool any more
    assert other.exists()  # not ours
    assert (
        os.stat(devinfo / "intel.com-intel_net-0000:5e:00.2-device.json").st_mode & 0o777 == 0o644
    )


def test_pools_without_devices_are_not_served(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    config = {
        "resourceList": [
            {"resourceName": "none", "selectors": {"vendors": ["1af4"]}},
            {
                "resourceName": "net",
                "resourcePrefix": "example.com",
                "selectors": {"drivers": ["iavf"]},
            },
        ]
    }
    agent = start_agent(config)
    assert [r.name for r in agent.resources] == ["example.com/net"]
    plugin = kubelet.wait_plugin("example.com/net")
    (container,) = plugin.allocate(["0000:5e:00.4"]).container_responses
    assert container.envs["PCIDEVICE_EXAMPLE_COM_NET"] == "0000:5e:00.4"
    assert (node.device_plugin_dir / "example.com_net.sock").is_socket()
    assert Path(node.tmp / "devinfo" / "example.com-net-0000:5e:00.4-device.json").exists()


def test_a_server_that_stops_answering_is_restarted(
    node: Node, kubelet: KubeletStandIn, start_agent: StartAgent
) -> None:
    agent = start_agent()
    kubelet.wait_plugin(NET)
    (server,) = [s for s in agent.servers if s.resource.name == NET]
    grpc_server = server._server
    assert grpc_server is not None
    grpc_server.stop(0).wait()  # the server dies, whatever becomes of its socket
    assert agent.supervisor is not None
    # past the next health probe (the agent's own loop may get there first)
    agent.supervisor.step(now=time.monotonic() + 3600)
    plugin = kubelet.wait_plugin(NET, after=1)
    assert server._server is not None
    assert server._server is not grpc_server  # a new server took over
    assert server.probe() is None
    assert plugin.allocate(["0000:5e:00.2"]).container_responses
