"""Fuzzing: whatever the environment and stdin, the plugin answers in CNI terms.

Every invocation must return exit status 0 with nothing or one JSON object on stdout, or
status 1 with a CNI error object — never raise, never print a traceback, and never fall
back to the "internal error" code 100, which would mean an input reached code that did
not expect it.
"""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sriovlib.allocation import AllocationStore
from sriovlib.cni.invoke import run
from sriovlib.cni.protocol import COMMANDS
from sriovlib.testing import FakeSysfs, add_nic_model
from sriovlib.testing.cni import FakeIpam, fake_context
from sriovlib.testing.fakenetlink import FakeNetlink

from .conftest import Node

KNOWN_CODES = {1, 2, 3, 4, 5, 6, 7, 11, 50, 51, 101, 102, 103, 104, 105, 106, 107}


@pytest.fixture(scope="module")
def fuzz_node(tmp_path_factory: pytest.TempPathFactory) -> Node:
    tmp = tmp_path_factory.mktemp("fuzz")
    fs = FakeSysfs(tmp / "root")
    (pf,) = add_nic_model(fs, "mlx5", bus=3, num_vfs=4, ports=1, vfio_vfs=(3,))
    kernel = FakeNetlink(fs)
    ipam = FakeIpam()
    ctx = fake_context(kernel, tmp / "state", ipam=ipam, lock_timeout=0.05)
    return Node(kernel, pf, ctx, ipam, kernel.add_netns("pod1"), tmp)


def texts() -> st.SearchStrategy[str]:
    interesting = st.sampled_from(
        [
            "",
            " ",
            ".",
            "..",
            "a/b",
            "a:b",
            "x" * 16,
            "eth0",
            "net1",
            "c1",
            "-x",
            "\t",
            "é",
            "/run/netns/none",
            "../../etc",
            "0000:03:00.2",
            "0000:03:00.5",
            "1.1.0",
            "0.3.1",
        ]
    )
    return st.one_of(interesting, st.text(max_size=20))


def json_values() -> st.SearchStrategy[Any]:
    scalars = st.one_of(
        st.none(),
        st.booleans(),
        st.integers(min_value=-(2**40), max_value=2**40),
        st.floats(allow_nan=False, allow_infinity=False),
        texts(),
    )
    return st.recursive(
        scalars,
        lambda inner: st.one_of(
            st.lists(inner, max_size=4), st.dictionaries(texts(), inner, max_size=4)
        ),
        max_leaves=12,
    )


FIELDS = {
    "cniVersion": st.sampled_from(["1.1.0", "1.0.0", "0.4.0", "0.3.1", "0.3.0", "0.2.0", ""]),
    "name": st.one_of(st.just("fuzz-net"), texts()),
    "type": st.one_of(st.just("sriov"), texts()),
    "deviceID": st.one_of(
        st.sampled_from(
            ["0000:03:00.2", "0000:03:00.3", "0000:03:00.5", "03:00.4", "0000:03:00.0"]
        ),
        texts(),
    ),
    "vlan": st.one_of(st.integers(-2, 5000), json_values()),
    "vlanQoS": st.one_of(st.integers(-1, 9), json_values()),
    "vlanProto": st.one_of(st.sampled_from(["802.1q", "802.1AD", "x"]), json_values()),
    "mac": st.one_of(st.sampled_from(["02:00:00:00:00:01", "01:00:00:00:00:01"]), json_values()),
    "spoofchk": st.one_of(st.sampled_from(["on", "off", "ON"]), json_values()),
    "trust": st.one_of(st.sampled_from(["on", "off"]), json_values()),
    "link_state": st.one_of(st.sampled_from(["auto", "enable", "disable"]), json_values()),
    "min_tx_rate": st.one_of(st.integers(-1, 2000), json_values()),
    "max_tx_rate": st.one_of(st.integers(-1, 2000), json_values()),
    "ipam": st.one_of(st.just({"type": "host-local"}), json_values()),
    "logLevel": st.one_of(st.sampled_from(["debug", "info", "panic"]), json_values()),
    "runtimeConfig": st.one_of(st.just({"mac": "02:00:00:00:00:02"}), json_values()),
    "prevResult": json_values(),
    "cni.dev/valid-attachments": json_values(),
}


VALID_BASE = {
    "cniVersion": st.sampled_from(["1.1.0", "1.0.0", "0.4.0", "0.3.1"]),
    "name": st.just("fuzz-net"),
    "type": st.just("sriov"),
    "deviceID": st.sampled_from(["0000:03:00.2", "0000:03:00.3", "0000:03:00.4", "0000:03:00.5"]),
}
MOSTLY_VALID = {
    "vlan": st.integers(0, 4094),
    "vlanQoS": st.integers(0, 7),
    "vlanProto": st.sampled_from(["802.1q", "802.1ad"]),
    "mac": st.sampled_from(["02:00:00:00:00:01", "CA:FE:C0:FF:EE:00"]),
    "spoofchk": st.sampled_from(["on", "off"]),
    "trust": st.sampled_from(["on", "off"]),
    "link_state": st.sampled_from(["auto", "enable", "disable"]),
    "min_tx_rate": st.integers(0, 100),
    "max_tx_rate": st.integers(0, 2000),
    "ipam": st.just({"type": "host-local", "subnet": "10.0.0.0/24"}),
    "logLevel": st.sampled_from(["debug", "info", "panic", "error", "warning"]),
    "runtimeConfig": st.just({"mac": "02:00:00:00:00:02"}),
    "cni.dev/valid-attachments": st.just([{"containerID": "c1", "ifname": "net1"}]),
}


@st.composite
def netconfs(draw: st.DrawFn) -> bytes:
    """A configuration that is usually close to valid: a valid base most of the time,
    some fields mostly valid, a few anything at all."""
    conf: dict[str, Any] = {}
    if draw(st.integers(0, 9)) < 8:
        conf.update({key: draw(value) for key, value in VALID_BASE.items()})
    for key in sorted(draw(st.sets(st.sampled_from(sorted(FIELDS)), max_size=6))):
        wild = draw(st.integers(0, 9)) < 3 or key not in MOSTLY_VALID
        conf[key] = draw(FIELDS[key] if wild else MOSTLY_VALID[key])
    if draw(st.booleans()):
        conf.pop(draw(st.sampled_from(sorted(FIELDS))), None)
    return json.dumps(conf).encode()


def stdins() -> st.SearchStrategy[bytes]:
    return st.one_of(
        netconfs(),
        json_values().map(lambda v: json.dumps(v).encode()),
        st.binary(max_size=64),
    )


@st.composite
def environments(draw: st.DrawFn, pod: str) -> dict[str, str]:
    env = {"CNI_COMMAND": draw(st.one_of(st.sampled_from(COMMANDS), texts()))}
    for key, values in (
        ("CNI_CONTAINERID", texts()),
        ("CNI_NETNS", st.one_of(st.just(pod), texts())),
        ("CNI_IFNAME", texts()),
        ("CNI_PATH", st.one_of(st.just("/opt/cni/bin"), texts())),
        (
            "CNI_ARGS",
            st.one_of(
                st.sampled_from(["", "IgnoreUnknown=1", "MAC=02:00:00:00:00:09", "A=1;B"]), texts()
            ),
        ),
    ):
        if draw(st.booleans()):
            env[key] = draw(values)
    return env


def check_answer(status: int, out: str) -> None:
    assert status in (0, 1)
    if status == 0:
        if out:
            assert isinstance(json.loads(out), dict)
        return
    error = json.loads(out)
    assert isinstance(error, dict)
    assert isinstance(error["msg"], str)
    assert error["msg"]
    assert error["code"] in KNOWN_CODES, error
    assert "Traceback" not in out


def host_view(node: Node) -> Any:
    """What a failed command must leave as it was: every VF's settings, the links of
    the host and the pod, the allocation records."""
    return (
        tuple(node.kernel.vf_state(node.pf.address, i) for i in range(4)),
        {n: node.kernel.link(n) for n in node.kernel.link_names()},
        node.kernel.link_names(node.pod),
        AllocationStore(node.ctx.state_dir / "allocations").records(),
    )


class TestFuzz:
    @settings(max_examples=300)
    @given(data=st.data())
    def test_any_input_gives_cni_answer(self, fuzz_node: Node, data: st.DataObject) -> None:
        """Random environments and stdin produce only CNI answers; a failure leaves the
        node (VFs, links, records) as it was."""
        env = data.draw(environments(fuzz_node.pod))
        stdin = data.draw(stdins())
        before = host_view(fuzz_node)
        status, out = run(env, lambda: stdin, fuzz_node.ctx)
        check_answer(status, out)
        if status == 1:
            assert before == host_view(fuzz_node), out
        elif env.get("CNI_COMMAND") == "ADD":
            # clean up, so later examples find free VFs and an unchanged node
            run({**env, "CNI_COMMAND": "DEL"}, lambda: stdin, fuzz_node.ctx)

    @settings(max_examples=300)
    @given(stdin=netconfs(), command=st.sampled_from(["ADD", "DEL", "CHECK", "GC", "STATUS"]))
    def test_netconfs_with_valid_env(self, fuzz_node: Node, stdin: bytes, command: str) -> None:
        """Random configurations under a valid environment produce only CNI answers."""
        env = fuzz_node.env(command)
        before = host_view(fuzz_node)
        status, out = run(env, lambda: stdin, fuzz_node.ctx)
        check_answer(status, out)
        if status == 1:
            assert before == host_view(fuzz_node), out
        if command == "ADD" and status == 0:
            # clean up, so later examples find free VFs
            status, out = run(fuzz_node.env("DEL"), lambda: stdin, fuzz_node.ctx)
            check_answer(status, out)
            assert 0 == status, out


def test_fuzz_leaves_no_allocation(fuzz_node: Node, tmp_path: Path) -> None:
    """(Sanity) the fuzz node is usable: a plain ADD and DEL work on it."""
    conf = fuzz_node.conf(1)
    conf["name"] = "fuzz-sanity"
    assert 0 == fuzz_node.invoke("ADD", conf, CNI_CONTAINERID="sanity")[0]
    assert 0 == fuzz_node.invoke("DEL", conf, CNI_CONTAINERID="sanity")[0]
