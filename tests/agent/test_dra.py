"""The agent's DRA kubelet plugin against the DRA kubelet stand-in, over the real unix
sockets, on the "mixed" example node's fake kernel: registration, prepare and unprepare,
the CDI specs, the record across a restart, claim configuration, bad claims."""

from __future__ import annotations

import json
import os
import stat
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sriovlib.agent.dra import DraOptions, DraPlugin
from sriovlib.agent.draclaims import ClaimRef
from sriovlib.testing.drakubelet import (
    DraKubeletStandIn,
    DraPluginClient,
    FakeClaims,
    Refused,
    device_name_of,
    resource_claim,
)

from .conftest import Node, StartPlugin

DRIVER = "sriov.sriovlib.io"
KIND = "sriov.sriovlib.io/vf"
NET_VF = "0000:5e:00.2"  # iavf, netdev enp59s0f0v0
NET_VF2 = "0000:5e:00.3"
VFIO_VF = "0000:5e:01.0"  # vfio-pci, IOMMU group 19
RDMA_VF = "0000:3b:00.2"  # mlx5_core with mlx5_1


@pytest.fixture
def kubelet(node: Node) -> Iterator[DraKubeletStandIn]:
    with DraKubeletStandIn(node.tmp / "plugins_registry") as standin:
        yield standin


def spec_of(node: Node, uid: str) -> dict[str, Any]:
    path = node.tmp / "cdi" / f"sriovlib-{DRIVER}-{uid}.json"
    spec: dict[str, Any] = json.loads(path.read_text())
    return spec


def record_path(node: Node, uid: str) -> Path:
    return node.tmp / "state" / "dra" / DRIVER / "claims" / f"{uid}.json"


def env_of(edits: dict[str, Any]) -> dict[str, str]:
    return dict(e.split("=", 1) for e in edits["env"])


# -- registration -------------------------------------------------------------------------


def test_registration_answers_get_info_and_hears_the_verdict(
    node: Node, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    plugin = start_plugin()
    client = kubelet.register(DRIVER)
    (info,) = kubelet.infos
    assert info.type == "DRAPlugin"
    assert info.name == DRIVER
    assert info.endpoint == str(node.tmp / "plugins" / DRIVER / "dra.sock")
    assert list(info.supported_versions) == ["v1.DRAPlugin"]
    assert plugin.registration.wait_status() == (True, "")
    assert client.endpoint.is_socket()
    assert (node.tmp / "plugins_registry" / f"{DRIVER}-reg.sock").is_socket()


def test_the_driver_name_is_configurable_and_checked(
    node: Node, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin(driver_name="vf.example.com")
    kubelet.register("vf.example.com")
    assert kubelet.infos[0].endpoint.endswith("/plugins/vf.example.com/dra.sock")
    with pytest.raises(ValueError, match="not a DNS subdomain"):
        DraOptions(driver_name="Not_A_Name")


def test_a_refused_registration_reaches_the_driver(
    kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    plugin = start_plugin(driver_name="other.example.com")
    # a kubelet that expects another name at that socket refuses it and says so
    (plugin.options.registry_dir / f"{DRIVER}-reg.sock").symlink_to(
        plugin.options.registration_socket
    )
    with pytest.raises(Refused, match=r"is not 'sriov\.sriovlib\.io'"):
        kubelet.register(DRIVER)
    registered, error = plugin.registration.wait_status()
    assert not registered
    assert "other.example.com" in error


def test_stop_removes_both_sockets_and_keeps_the_record(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    plugin = start_plugin()
    ref = claims.add(resource_claim("net", devices=[("vf", "node", device_name_of(NET_VF))]))
    assert not kubelet.register().prepare(ref).claims[ref.uid].error
    plugin.stop()
    assert not plugin.options.registration_socket.exists()
    assert not plugin.options.endpoint.exists()
    assert record_path(node, ref.uid).is_file()


# -- prepare and unprepare ------------------------------------------------------------------


def test_prepare_a_netdevice_vf_writes_a_cdi_spec_and_answers_its_id(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    ref = claims.add(
        resource_claim(
            "net",
            devices=[
                ("vf", "node-a", device_name_of(NET_VF)),
                ("vf", "node-a", device_name_of(NET_VF2)),
            ],
        )
    )
    response = kubelet.register().prepare(ref)
    entry = response.claims[ref.uid]
    assert entry.error == ""
    assert [(list(d.request_names), d.pool_name, d.device_name) for d in entry.devices] == [
        (["vf"], "node-a", device_name_of(NET_VF)),
        (["vf"], "node-a", device_name_of(NET_VF2)),
    ]
    ids = [list(d.cdi_device_ids) for d in entry.devices]
    assert ids == [
        [f"{KIND}={ref.uid}-{device_name_of(NET_VF)}"],
        [f"{KIND}={ref.uid}-{device_name_of(NET_VF2)}"],
    ]
    spec = spec_of(node, ref.uid)
    assert spec["cdiVersion"] == "0.6.0"
    assert spec["kind"] == KIND
    assert [d["name"] for d in spec["devices"]] == [i[0].split("=", 1)[1] for i in ids]
    for device in spec["devices"]:
        env = env_of(device["containerEdits"])
        assert env["PCIDEVICE_SRIOV_SRIOVLIB_IO_VF"] == f"{NET_VF},{NET_VF2}"
        info = json.loads(env["PCIDEVICE_SRIOV_SRIOVLIB_IO_VF_INFO"])
        assert info == {a: {"generic": {"deviceID": a}} for a in (NET_VF, NET_VF2)}
        assert "deviceNodes" not in device["containerEdits"]
    path = node.tmp / "cdi" / f"sriovlib-{DRIVER}-{ref.uid}.json"
    assert stat.S_IMODE(path.stat().st_mode) == 0o644
    assert [p.name for p in path.parent.iterdir()] == [path.name]  # no temporary file left
    record = json.loads(record_path(node, ref.uid).read_text())
    assert record["claim"] == {"namespace": "default", "name": "net", "uid": ref.uid}
    assert [d["address"] for d in record["devices"]] == [NET_VF, NET_VF2]
    assert record["cdiSpec"] == spec


def test_prepare_a_vfio_vf_gives_its_group_nodes(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    ref = claims.add(resource_claim("dpdk", devices=[("dpdk", "node", device_name_of(VFIO_VF))]))
    assert kubelet.register().prepare(ref).claims[ref.uid].error == ""
    (device,) = spec_of(node, ref.uid)["devices"]
    nodes = {
        n["path"]: (n["hostPath"], n["permissions"])
        for n in device["containerEdits"]["deviceNodes"]
    }
    assert nodes == {
        "/dev/vfio/vfio": (str(node.root / "dev/vfio/vfio"), "rw"),
        "/dev/vfio/19": (str(node.root / "dev/vfio/19"), "rw"),
    }
    info = json.loads(env_of(device["containerEdits"])["PCIDEVICE_SRIOV_SRIOVLIB_IO_DPDK_INFO"])
    assert info[VFIO_VF]["vfio"] == {"mount": "/dev/vfio/vfio", "dev-mount": "/dev/vfio/19"}


def test_prepare_an_rdma_vf_gives_its_character_devices(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    client = kubelet.register()
    ref = claims.add(resource_claim("rdma", devices=[("r", "node", device_name_of(RDMA_VF))]))
    # an RDMA VF whose character devices are not on the node cannot be prepared
    assert client.prepare(ref).claims[ref.uid].error == (
        f"claim default/rdma: device {device_name_of(RDMA_VF)} ({RDMA_VF}) of request 'r': "
        "device node missing on the node: /dev/infiniband/rdma_cm"
    )
    for cls, name in (("infiniband_verbs", "uverbs1"), ("infiniband_mad", "umad1")):
        entry = node.root / "sys/class" / cls / name
        entry.mkdir(parents=True)
        (entry / "ibdev").write_text("mlx5_1\n")
    (node.root / "dev/infiniband").mkdir(parents=True)
    for name in ("uverbs1", "umad1", "rdma_cm"):
        (node.root / "dev/infiniband" / name).touch()
    assert client.prepare(ref).claims[ref.uid].error == ""
    (device,) = spec_of(node, ref.uid)["devices"]
    paths = sorted(n["path"] for n in device["containerEdits"]["deviceNodes"])
    assert paths == ["/dev/infiniband/rdma_cm", "/dev/infiniband/umad1", "/dev/infiniband/uverbs1"]
    info = json.loads(env_of(device["containerEdits"])["PCIDEVICE_SRIOV_SRIOVLIB_IO_R_INFO"])
    assert info[RDMA_VF]["rdma"] == {
        "rdma_dev": "mlx5_1",
        "uverbs": "/dev/infiniband/uverbs1",
        "umad": "/dev/infiniband/umad1",
        "rdma_cm": "/dev/infiniband/rdma_cm",
    }


def test_requests_get_their_own_variables_and_other_drivers_devices_are_left_out(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    claim = resource_claim(
        "two",
        devices=[
            ("net-a", "node", device_name_of(NET_VF)),
            ("net-b", "node", device_name_of(VFIO_VF)),
        ],
    )
    claim["status"]["allocation"]["devices"]["results"].append(
        {"request": "gpu", "driver": "gpu.example.com", "pool": "node", "device": "gpu-0"}
    )
    ref = claims.add(claim)
    entry = kubelet.register().prepare(ref).claims[ref.uid]
    assert [d.device_name for d in entry.devices] == [
        device_name_of(NET_VF),
        device_name_of(VFIO_VF),
    ]
    first, second = (env_of(d["containerEdits"]) for d in spec_of(node, ref.uid)["devices"])
    assert first["PCIDEVICE_SRIOV_SRIOVLIB_IO_NET_A"] == NET_VF
    assert "PCIDEVICE_SRIOV_SRIOVLIB_IO_NET_B" not in first
    assert second["PCIDEVICE_SRIOV_SRIOVLIB_IO_NET_B"] == VFIO_VF


def test_prepare_again_is_the_same_answer_without_reading_the_claim(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    ref = claims.add(resource_claim("net", devices=[("vf", "node", device_name_of(NET_VF))]))
    client = kubelet.register()
    first = client.prepare(ref)
    reads = claims.reads
    assert client.prepare(ref) == first
    assert claims.reads == reads


def test_after_a_restart_a_retry_gets_the_same_answer_from_the_record(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    plugin = start_plugin()
    ref = claims.add(resource_claim("dpdk", devices=[("dpdk", "node", device_name_of(VFIO_VF))]))
    first = kubelet.register().prepare(ref)
    spec = spec_of(node, ref.uid)
    plugin.stop()
    claims.remove("default", "dpdk")  # the API server cannot be asked again
    (node.tmp / "cdi" / f"sriovlib-{DRIVER}-{ref.uid}.json").unlink()  # lost with /var/run
    start_plugin()
    again = kubelet.register().prepare(ref)
    assert again == first
    assert spec_of(node, ref.uid) == spec
    # and a new claim still cannot have the VF the record holds
    other = claims.add(resource_claim("thief", devices=[("dpdk", "node", device_name_of(VFIO_VF))]))
    error = kubelet.clients[-1].prepare(other).claims[other.uid].error
    assert error == (
        f"claim default/thief: device {device_name_of(VFIO_VF)} ({VFIO_VF}) of request 'dpdk' is "
        f"prepared for claim default/dpdk (uid {ref.uid}) already"
    )


def test_unprepare_removes_the_spec_and_the_record_and_is_idempotent(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    ref = claims.add(resource_claim("net", devices=[("vf", "node", device_name_of(NET_VF))]))
    client = kubelet.register()
    client.prepare(ref)
    assert record_path(node, ref.uid).exists()
    for _ in range(2):
        response = client.unprepare(ref)
        assert list(response.claims) == [ref.uid]
        assert response.claims[ref.uid].error == ""
        assert not record_path(node, ref.uid).exists()
        assert list((node.tmp / "cdi").iterdir()) == []
    never = ClaimRef("default", "never", "0d4f3c2e-0000-4000-8000-000000000001")
    assert client.unprepare(never).claims[never.uid].error == ""
    # the VF is free again
    other = claims.add(resource_claim("next", devices=[("vf", "node", device_name_of(NET_VF))]))
    assert client.prepare(other).claims[other.uid].error == ""


# -- claim configuration ------------------------------------------------------------------------


def test_claim_configuration_is_validated_and_recorded_per_request(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    claim = resource_claim(
        "cfg",
        devices=[("a", "node", device_name_of(NET_VF)), ("b", "node", device_name_of(NET_VF2))],
        config=[
            {"source": "FromClass", "parameters": {"spoofchk": "off", "trust": "on"}},
            {
                "requests": ["a"],
                "parameters": {
                    "apiVersion": "sriovlib.io/v1alpha1",
                    "kind": "VfConfig",
                    "vlan": 100,
                    "vlanQoS": 3,
                    "mac": "02-00-00-00-00-AA",
                    "min_tx_rate": 10,
                    "max_tx_rate": 1000,
                    "link_state": "enable",
                    "driver": "netdevice",
                },
            },
            {"requests": ["b"], "parameters": {"trust": "off"}},
            {"opaque": {"driver": "gpu.example.com", "parameters": {"anything": 1}}},
        ],
    )
    # the claim's entries come after the class's whatever their order in the list
    entries = claim["status"]["allocation"]["devices"]["config"]
    entries.insert(0, entries.pop(1))
    ref = claims.add(claim)
    assert kubelet.register().prepare(ref).claims[ref.uid].error == ""
    record = json.loads(record_path(node, ref.uid).read_text())
    a, b = (d["settings"] for d in record["devices"])
    assert a == {
        "mac": "02:00:00:00:00:aa",
        "vlan": 100,
        "qos": 3,
        "vlan_proto": "802.1q",
        "spoofchk": False,
        "trust": True,
        "link_state": "enable",
        "min_tx_rate": 10,
        "max_tx_rate": 1000,
        "driver": "netdevice",
    }
    assert b == {"spoofchk": False, "trust": False}


@pytest.mark.parametrize(
    ("parameters", "message"),
    [
        ({"vlanQos": 3, "vlan": 1}, "unknown key 'vlanQos' (did you mean 'vlanQoS'?)"),
        ({"spoofChk": "on"}, "unknown key 'spoofChk' (did you mean 'spoofchk'?)"),
        ({"vlan": "100"}, "vlan must be an integer, not '100'"),
        ({"vlan": 4095}, "vlan 4095 is outside 0-4094"),
        ({"trust": True}, "trust True is not one of on, off"),
        ({"vlanQoS": 9, "vlan": 1}, "vlanQoS 9 is outside 0-7"),
        (
            {"vlan": -1, "max_tx_rate": 1.5},
            "vlan -1 is outside 0-4094; max_tx_rate must be an integer, not 1.5",
        ),
        ({"mac": "01:00:00:00:00:01"}, "mac: "),
        ({"driver": "dpdk"}, "driver 'dpdk' is not one of netdevice, vfio-pci"),
        ({"kind": "NetConf"}, "kind 'NetConf' is not 'VfConfig'"),
    ],
)
def test_bad_claim_configuration_is_a_precise_per_claim_error(
    node: Node,
    claims: FakeClaims,
    kubelet: DraKubeletStandIn,
    start_plugin: StartPlugin,
    parameters: dict[str, Any],
    message: str,
) -> None:
    start_plugin()
    ref = claims.add(
        resource_claim(
            "bad",
            devices=[("vf", "node", device_name_of(NET_VF))],
            config=[{"parameters": parameters}],
        )
    )
    error = kubelet.register().prepare(ref).claims[ref.uid].error
    assert error.startswith(
        "claim default/bad: status.allocation.devices.config[0].opaque.parameters: "
    )
    assert message in error
    assert "Traceback" not in error
    assert not record_path(node, ref.uid).exists()
    assert not (node.tmp / "cdi").exists() or list((node.tmp / "cdi").iterdir()) == []


def test_settings_that_break_a_rule_only_together_name_the_request(
    claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    ref = claims.add(
        resource_claim(
            "merged",
            devices=[("vf", "node", device_name_of(NET_VF))],
            config=[
                {"source": "FromClass", "parameters": {"vlan": 0}},
                {"parameters": {"vlanQoS": 5}},
            ],
        )
    )
    error = kubelet.register().prepare(ref).claims[ref.uid].error
    assert error == (
        "claim default/merged: the configuration of request 'vf': vlanQoS 5 needs a non-zero vlan"
    )


def test_rules_between_keys_apply_to_the_merged_settings(
    claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    """The class gives the VLAN, the claim its priority: together they are valid."""
    start_plugin()
    ref = claims.add(
        resource_claim(
            "merged",
            devices=[("vf", "node", device_name_of(NET_VF))],
            config=[
                {"source": "FromClass", "parameters": {"vlan": 7}},
                {"parameters": {"vlanQoS": 5}},
            ],
        )
    )
    assert kubelet.register().prepare(ref).claims[ref.uid].error == ""
    ref = claims.add(
        resource_claim(
            "alone",
            devices=[("vf", "node", device_name_of(NET_VF2))],
            config=[{"parameters": {"vlanQoS": 5}}],
        )
    )
    error = kubelet.clients[-1].prepare(ref).claims[ref.uid].error
    assert error == "claim default/alone: the configuration of request 'vf': vlanQoS needs vlan"
    ref = claims.add(
        resource_claim(
            "rates",
            devices=[("vf", "node", device_name_of(NET_VF2))],
            config=[{"parameters": {"max_tx_rate": 100}}, {"parameters": {"min_tx_rate": 500}}],
        )
    )
    error = kubelet.clients[-1].prepare(ref).claims[ref.uid].error
    assert error == (
        "claim default/rates: the configuration of request 'vf': "
        "min_tx_rate 500 is above max_tx_rate 100"
    )


# -- bad claims ------------------------------------------------------------------------------


def test_bad_claims_fail_alone_with_precise_errors(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    good = claims.add(resource_claim("good", devices=[("vf", "node", device_name_of(NET_VF))]))
    unallocated = claims.add(resource_claim("pending", allocated=False))
    foreign = claims.add(
        resource_claim("gpu", devices=[("g", "node", "gpu-0")], driver="gpu.example.com")
    )
    badname = claims.add(resource_claim("badname", devices=[("vf", "node", "eth0")]))
    gone = claims.add(resource_claim("gone", devices=[("vf", "node", "vf-0000-99-00-2")]))
    pf = claims.add(resource_claim("pf", devices=[("vf", "node", "vf-0000-5e-00-0")]))
    recreated = claims.add(
        resource_claim("recreated", devices=[("vf", "node", device_name_of(NET_VF2))])
    )
    stale = ClaimRef("default", "recreated", "11111111-2222-4333-8444-555555555555")
    missing = ClaimRef("default", "missing", "6c1d0a5e-0000-4000-8000-000000000002")
    no_uid = ClaimRef("default", "nouid", "")
    broken = claims.add(resource_claim("broken", devices=[("vf", "node", device_name_of(NET_VF2))]))
    claims.claims[("default", "broken")]["status"]["allocation"]["devices"]["results"] = {"a": 1}
    refs = [good, unallocated, foreign, badname, gone, pf, stale, missing, no_uid, broken]
    response = kubelet.register().prepare(*refs)
    errors = {uid: entry.error for uid, entry in response.claims.items()}
    assert set(errors) == {r.uid for r in refs}
    assert errors == {
        good.uid: "",
        unallocated.uid: "claim default/pending: the claim is not allocated "
        "(status.allocation is empty)",
        foreign.uid: "claim default/gpu: no device of the claim's allocation is of driver "
        "sriov.sriovlib.io",
        badname.uid: "claim default/badname: device 'eth0' is not a VF of this driver (expected "
        "vf-<domain>-<bus>-<device>-<function>, e.g. vf-0000-5e-01-0)",
        gone.uid: errors[gone.uid],
        pf.uid: "claim default/pf: device vf-0000-5e-00-0 (0000:5e:00.0) of request 'vf' is "
        "not a VF",
        stale.uid: f"claim default/recreated: the API server's default/recreated has uid "
        f"{recreated.uid}, not {stale.uid}: the claim was deleted and made again",
        missing.uid: "claim default/missing: resourceclaims.resource.k8s.io default/missing "
        "not found",
        "": "claim default/nouid: the claim has no uid",
        broken.uid: "claim default/broken: status.allocation.devices.results must be a list, "
        "not an object",
    }
    assert errors[gone.uid].startswith(
        "claim default/gone: device vf-0000-99-00-2 (0000:99:00.2) of request 'vf' is not on "
        "this node ("
    )
    assert [p.name for p in (node.tmp / "cdi").iterdir()] == [f"sriovlib-{DRIVER}-{good.uid}.json"]


def test_a_uid_that_is_not_one_cannot_reach_the_files(
    node: Node, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    client = kubelet.register()
    for uid in ("../../etc/passwd", ".hidden", "a/b"):
        ref = ClaimRef("default", "x", uid)
        assert "is not a Kubernetes UID" in client.prepare(ref).claims[uid].error
        assert "is not a Kubernetes UID" in client.unprepare(ref).claims[uid].error


def test_a_damaged_record_is_a_per_claim_error(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    ref = claims.add(resource_claim("net", devices=[("vf", "node", device_name_of(NET_VF))]))
    client = kubelet.register()
    client.prepare(ref)
    record_path(node, ref.uid).write_text('{"format": 1, "claim": ')
    error = client.prepare(ref).claims[ref.uid].error
    assert error.startswith(f"claim default/net: {record_path(node, ref.uid)}: a damaged")


def test_without_api_access_every_claim_fails_saying_so(node: Node) -> None:
    """The agent's claim source when it has no API server access."""
    from sriovlib.agent.draclaims import NoApiServer

    options = DraOptions(
        registry_dir=node.tmp / "reg",
        plugins_dir=node.tmp / "plugins",
        cdi_dir=node.tmp / "cdi",
        state_dir=node.tmp / "state",
    )
    plugin = DraPlugin(node.host, NoApiServer(), options)
    plugin.start()
    try:
        with DraKubeletStandIn(node.tmp / "reg") as kubelet:
            ref = ClaimRef("default", "net", "0d4f3c2e-0000-4000-8000-000000000003")
            error = kubelet.register().prepare(ref).claims[ref.uid].error
    finally:
        plugin.stop()
    assert "has no API server access" in error


# -- the agent as a process ------------------------------------------------------------------


def test_sriovlib_agent_dra_serves_the_driver(tmp_path: Path) -> None:
    """``sriovlib agent --dra`` on an example node: registered and answering."""
    config = subprocess.run(
        [sys.executable, "-m", "sriovlib", "config", "generate", "--example", "mixed"],
        capture_output=True,
        check=True,
        timeout=60,
    ).stdout
    (tmp_path / "config.json").write_bytes(config)
    registry = tmp_path / "reg"
    args = [
        sys.executable, "-m", "sriovlib", "agent", "--example", "mixed",
        "--config", str(tmp_path / "config.json"),
        "--device-plugin-dir", str(tmp_path / "dp"), "--state-dir", str(tmp_path / "state"),
        "--device-info-dir", str(tmp_path / "devinfo"), "--metrics-address", "off",
        "--cni-socket", "off", "--pod-resources-socket", "off", "--cdi-dir", str(tmp_path / "cdi"),
        "--dra", "--dra-driver-name", "vf.example.com",
        "--dra-registry-dir", str(registry), "--dra-plugins-dir", str(tmp_path / "plugins"),
    ]  # fmt: skip
    agent = subprocess.Popen(args, stderr=subprocess.PIPE, text=True)
    try:
        with DraKubeletStandIn(registry) as kubelet:
            client: DraPluginClient = kubelet.register("vf.example.com", timeout=30)
            ref = ClaimRef("default", "net", "0d4f3c2e-0000-4000-8000-000000000004")
            error = client.prepare(ref).claims[ref.uid].error
        assert "has no API server access" in error
    finally:
        agent.terminate()
        _, stderr = agent.communicate(timeout=30)
    assert agent.returncode == 0, stderr
    assert "DRA driver registered" in stderr
    assert not (registry / "vf.example.com-reg.sock").exists()
    deadline = time.monotonic() + 1
    while os.path.exists(tmp_path / "plugins/vf.example.com/dra.sock"):
        assert time.monotonic() < deadline
        time.sleep(0.05)
