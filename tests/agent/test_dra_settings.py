"""A claim's VF settings applied at NodePrepareResources and restored at
NodeUnprepareResources, through the host's VF-settings and release code, on the "mixed"
example node's fake kernel (which enforces the drivers' rules), over the DRA kubelet
stand-in: visible after prepare, restored after unprepare, idempotent both ways, a
failure in the middle rolled back, a restart or a kill in between still restored."""

from __future__ import annotations

import errno
import json
from collections.abc import Iterator
from typing import Any

import pytest

from sriovlib.models import VfLinkState, VfState, VlanProto
from sriovlib.testing.drakubelet import (
    DraKubeletStandIn,
    FakeClaims,
    device_name_of,
    resource_claim,
)

from .conftest import Node, StartPlugin

DRIVER = "sriov.sriovlib.io"
NET_VF = "0000:5e:00.2"  # iavf on an i40e PF
NET_VF2 = "0000:5e:00.3"
SETTINGS = {
    "vlan": 100,
    "vlanQoS": 3,
    "spoofchk": "off",
    "trust": "on",
    "link_state": "enable",
    "max_tx_rate": 1000,
    "mac": "02:00:00:00:00:aa",
}


@pytest.fixture
def kubelet(node: Node) -> Iterator[DraKubeletStandIn]:
    with DraKubeletStandIn(node.tmp / "plugins_registry") as standin:
        yield standin


def state(node: Node, address: str) -> VfState:
    return node.host.vf_state(address)


def record_of(node: Node, uid: str) -> dict[str, Any]:
    path = node.tmp / "state" / "dra" / DRIVER / "claims" / f"{uid}.json"
    data: dict[str, Any] = json.loads(path.read_text())
    return data


def has_record(node: Node, uid: str) -> bool:
    return (node.tmp / "state" / "dra" / DRIVER / "claims" / f"{uid}.json").exists()


def assert_applied(got: VfState) -> None:
    assert (got.vlan, got.qos, got.vlan_proto) == (100, 3, VlanProto.DOT1Q)
    assert (got.spoofchk, got.trust) == (False, True)
    assert got.link_state is VfLinkState.ENABLE
    assert got.max_tx_rate == 1000
    assert got.mac == "02:00:00:00:00:aa"


def test_settings_are_applied_at_prepare_and_restored_at_unprepare(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    before = state(node, NET_VF)
    assert before.vlan == 0
    assert before.trust is not True
    ref = claims.add(
        resource_claim("vlan", devices=[("vf", "node", device_name_of(NET_VF))],
                       config=[{"parameters": SETTINGS}])
    )  # fmt: skip
    client = kubelet.register()
    assert client.prepare(ref).claims[ref.uid].error == ""
    assert_applied(state(node, NET_VF))
    record = record_of(node, ref.uid)
    assert record["complete"] is True
    (device,) = record["devices"]
    assert device["previous"]["vf_state"] == before.to_dict()  # what unprepare restores
    assert device["previous"]["netns"] is None  # the VF stayed on the host: no namespace
    # prepare again: answered from the record, nothing written to the kernel
    requests = dict(node.kernel.requests)
    assert client.prepare(ref).claims[ref.uid].error == ""
    assert node.kernel.requests.get("set_vf", 0) == requests.get("set_vf", 0)
    assert client.unprepare(ref).claims[ref.uid].error == ""
    assert state(node, NET_VF) == before
    assert not has_record(node, ref.uid)
    assert client.unprepare(ref).claims[ref.uid].error == ""  # a retry: nothing to do
    assert state(node, NET_VF) == before


def test_a_claim_without_settings_touches_no_vf(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    ref = claims.add(resource_claim("plain", devices=[("vf", "node", device_name_of(NET_VF))]))
    requests = dict(node.kernel.requests)
    client = kubelet.register()
    assert client.prepare(ref).claims[ref.uid].error == ""
    assert client.unprepare(ref).claims[ref.uid].error == ""
    assert node.kernel.requests.get("set_vf", 0) == requests.get("set_vf", 0)


def test_a_failure_in_the_middle_rolls_every_vf_back(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    start_plugin()
    before = {a: state(node, a) for a in (NET_VF, NET_VF2)}
    ref = claims.add(
        resource_claim(
            "two",
            devices=[("a", "node", device_name_of(NET_VF)), ("b", "node", device_name_of(NET_VF2))],
            config=[
                {"requests": ["a"], "parameters": {"vlan": 100, "spoofchk": "off"}},
                {"requests": ["b"], "parameters": {"vlan": 200, "trust": "on"}},
            ],
        )
    )
    node.kernel.fail("set_vf", errno.EIO, match="trust")  # the second VF's last step
    error = kubelet.register().prepare(ref).claims[ref.uid].error
    assert error.startswith("claim default/two: ")
    assert "trust" in error
    assert {a: state(node, a) for a in before} == before  # both VFs as they were
    assert not has_record(node, ref.uid)
    assert not (node.tmp / "cdi" / f"sriovlib-{DRIVER}-{ref.uid}.json").exists()
    # the kubelet's retry, the kernel willing now, prepares both
    assert kubelet.register().prepare(ref).claims[ref.uid].error == ""
    assert (state(node, NET_VF).vlan, state(node, NET_VF2).vlan) == (100, 200)


def test_a_restart_between_prepare_and_unprepare_still_restores(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    plugin = start_plugin()
    before = state(node, NET_VF)
    ref = claims.add(
        resource_claim("vlan", devices=[("vf", "node", device_name_of(NET_VF))],
                       config=[{"parameters": SETTINGS}])
    )  # fmt: skip
    assert kubelet.register().prepare(ref).claims[ref.uid].error == ""
    plugin.stop()
    claims.remove("default", "vlan")  # the new agent cannot read it: the record must do
    start_plugin()
    assert_applied(state(node, NET_VF))
    assert kubelet.register().unprepare(ref).claims[ref.uid].error == ""
    assert state(node, NET_VF) == before


class Killed(BaseException):
    """The agent killed in the middle of a prepare (nothing after it runs)."""


@pytest.mark.parametrize("then", ["prepare", "unprepare"])
def test_an_agent_killed_mid_prepare_restores_on_the_retry_or_the_unprepare(
    node: Node,
    claims: FakeClaims,
    kubelet: DraKubeletStandIn,
    start_plugin: StartPlugin,
    monkeypatch: pytest.MonkeyPatch,
    then: str,
) -> None:
    plugin = start_plugin()
    before = {a: state(node, a) for a in (NET_VF, NET_VF2)}
    ref = claims.add(
        resource_claim(
            "two",
            devices=[("a", "node", device_name_of(NET_VF)), ("b", "node", device_name_of(NET_VF2))],
            config=[{"parameters": {"vlan": 300, "trust": "on"}}],
        )
    )
    configure = node.host.configure_vf
    calls: list[str] = []

    def configure_then_die(vf: Any, config: Any) -> VfState:
        calls.append(str(vf))
        if len(calls) == 2:
            raise Killed
        return configure(vf, config)

    monkeypatch.setattr(node.host, "configure_vf", configure_then_die)
    with pytest.raises(Killed):
        plugin.preparer.prepare(ref)  # in process: the "kill" must not reach gRPC
    assert state(node, NET_VF).vlan == 300  # the first VF changed, the second not yet
    assert record_of(node, ref.uid)["complete"] is False
    monkeypatch.setattr(node.host, "configure_vf", configure)
    plugin.stop()
    start_plugin()  # the agent again, on the same state
    client = kubelet.register()
    if then == "prepare":  # the kubelet retries: restored, then prepared in full
        assert client.prepare(ref).claims[ref.uid].error == ""
        assert (state(node, NET_VF).vlan, state(node, NET_VF2).vlan) == (300, 300)
        assert record_of(node, ref.uid)["complete"] is True
        assert client.unprepare(ref).claims[ref.uid].error == ""
    else:  # the pod was deleted meanwhile: unprepare restores what was changed
        assert client.unprepare(ref).claims[ref.uid].error == ""
    assert {a: state(node, a) for a in before} == before
    assert not has_record(node, ref.uid)


def test_a_vfio_vf_gets_its_pf_side_settings_too(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    """A DPDK VF has no netdev: its VLAN and spoof checking are the PF's, set and put
    back all the same."""
    vfio_vf = "0000:5e:01.0"
    start_plugin()
    before = state(node, vfio_vf)
    ref = claims.add(
        resource_claim(
            "dpdk",
            devices=[("vf", "node", device_name_of(vfio_vf))],
            config=[{"parameters": {"vlan": 10, "spoofchk": "off", "driver": "vfio-pci"}}],
        )
    )
    client = kubelet.register()
    assert client.prepare(ref).claims[ref.uid].error == ""
    got = state(node, vfio_vf)
    assert (got.vlan, got.spoofchk) == (10, False)
    assert record_of(node, ref.uid)["devices"][0]["previous"]["host_name"] is None
    assert client.unprepare(ref).claims[ref.uid].error == ""
    assert state(node, vfio_vf) == before


def test_a_damaged_snapshot_brings_the_vf_to_safe_defaults_at_unprepare(
    node: Node, claims: FakeClaims, kubelet: DraKubeletStandIn, start_plugin: StartPlugin
) -> None:
    """As the attachment service does when a snapshot cannot be used: the unprepare is
    not stuck on it, and the VF keeps none of the claim's settings."""
    start_plugin()
    ref = claims.add(
        resource_claim("vlan", devices=[("vf", "node", device_name_of(NET_VF))],
                       config=[{"parameters": SETTINGS}])
    )  # fmt: skip
    client = kubelet.register()
    assert client.prepare(ref).claims[ref.uid].error == ""
    path = node.tmp / "state" / "dra" / DRIVER / "claims" / f"{ref.uid}.json"
    record = json.loads(path.read_text())
    record["devices"][0]["previous"]["vf_index"] = "not a number"
    path.write_text(json.dumps(record))
    assert client.unprepare(ref).claims[ref.uid].error == ""
    got = state(node, NET_VF)
    assert (got.vlan, got.qos, got.spoofchk, got.trust, got.max_tx_rate) == (0, 0, True, False, 0)
    assert got.mac == "00:00:00:00:00:00"
    assert not has_record(node, ref.uid)
