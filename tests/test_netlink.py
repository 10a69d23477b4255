"""sriovlib.netlink without a kernel: error mapping, the hand-made link, VF, address and
route messages (checked against pyroute2's codec), large replies.

pyroute2 is imported here as the reference codec only; sriovlib itself never loads it
for these messages."""

from __future__ import annotations

import errno
import ipaddress
import pickle
import socket
import struct
import subprocess
import sys
from typing import Any

import pytest

from sriovlib.models import LinkInfo, VfLinkState, VfState, VlanProto
from sriovlib.netlink import (
    Busy,
    InvalidValue,
    KernelError,
    KernelNetlink,
    KernelNotFound,
    Route,
    Unsupported,
    _address_request,
    _attributes,
    _Channel,
    _decode_address,
    _decode_routes,
    _link_info,
    _link_request,
    _nla,
    _route_request,
    _vf_request,
    _vf_state,
    _vf_vlan_list_setting,
    _vfinfo_chunks,
    errno_name,
    kernel_error,
)


def _codec() -> Any:
    """pyroute2's link message class: the reference encoder and decoder."""
    from pyroute2.netlink.rtnl.ifinfmsg import ifinfmsg

    return ifinfmsg


def _vf_attrs(
    vf: int, *, proto: int = 0x8100, unreported: bool = False
) -> list[tuple[str, object]]:
    flag = 0xFFFFFFFF if unreported else 1
    return [
        ("IFLA_VF_MAC", {"vf": vf, "mac": f"02:00:00:00:{vf >> 8:02x}:{vf & 0xFF:02x}"}),
        ("IFLA_VF_VLAN", {"vf": vf, "vlan": 100 + vf % 3000, "qos": vf % 8}),
        ("IFLA_VF_RATE", {"vf": vf, "min_tx_rate": 0, "max_tx_rate": 500}),
        ("IFLA_VF_SPOOFCHK", {"vf": vf, "spoofchk": flag}),
        ("IFLA_VF_LINK_STATE", {"vf": vf, "link_state": 2}),
        ("IFLA_VF_RSS_QUERY_EN", {"vf": vf, "rss_query_en": 0xFFFFFFFF}),
        ("IFLA_VF_TRUST", {"vf": vf, "trust": 0}),
        (
            "IFLA_VF_VLAN_LIST",
            {
                "attrs": [
                    (
                        "IFLA_VF_VLAN_INFO",
                        {"vf": vf, "vlan": 100 + vf % 3000, "qos": vf % 8, "proto": proto},
                    )
                ]
            },
        ),
    ]


def _vf_entry(vf: int, proto: int = 0x8100) -> bytes:
    """One IFLA_VF_INFO attribute, encoded by pyroute2."""
    message_class = _codec()
    msg = message_class()
    msg["attrs"] = [
        ("IFLA_VFINFO_LIST", {"attrs": [("IFLA_VF_INFO", {"attrs": _vf_attrs(vf, proto=proto)})]})
    ]
    msg.encode()
    return bytes(msg.data)[32 + 4 :]  # past nlmsghdr, ifinfomsg and the list header


def _pf_reply(count: int, *, seq: int = 1, proto: int = 0x8100) -> bytes:
    """An RTM_NEWLINK reply for a PF with *count* VFs, laid out as the kernel does: past
    64 KiB the list attribute's 16-bit length wraps around, as the kernel's does."""
    message_class = _codec()
    head = message_class()
    head["index"] = 7
    head["attrs"] = [("IFLA_IFNAME", "ens1f0"), ("IFLA_NUM_VF", count)]
    head.encode()
    entries = b"".join(_vf_entry(i, proto) for i in range(count))
    vflist = struct.pack("=HH", (4 + len(entries)) & 0xFFFF, 22) + entries
    trailer = struct.pack("=HH", 8, 26) + b"\0" * 4  # an IFLA_AF_SPEC after the list
    body = bytes(head.data)[16:] + vflist + trailer
    header = struct.pack("=IHHII", 16 + len(body), 16, 0, seq, 0)
    return header + body


def _states(message: bytes) -> list[VfState]:
    states = [_vf_state(chunk) for chunk in _vfinfo_chunks(message)]
    assert None not in states
    return [state for state in states if state is not None]


def _ack(seq: int, code: int = 0) -> bytes:
    return struct.pack("=IHHIIi", 20, 2, 0, seq, 0, code)


class TestErrors:
    """Netlink errnos become domain exceptions that name the operation, device and errno."""

    @pytest.mark.parametrize(
        ("code", "cls"),
        [
            (errno.ENODEV, KernelNotFound),
            (errno.ENOENT, KernelNotFound),
            (errno.EOPNOTSUPP, Unsupported),
            (errno.EPROTONOSUPPORT, Unsupported),
            (errno.EINVAL, InvalidValue),
            (errno.ERANGE, InvalidValue),
            (errno.EBUSY, Busy),
            (errno.EAGAIN, Busy),
            (errno.EEXIST, KernelError),
        ],
    )
    def test_errno_picks_the_class(self, code: int, cls: type[KernelError]) -> None:
        """Each errno maps to its class; others to the KernelError base."""
        error = kernel_error(code, "set VF trust", "eth0 vf 1")
        assert type(error) is cls
        assert (error.operation, error.device, error.errno) == ("set VF trust", "eth0 vf 1", code)

    def test_message_names_operation_device_driver_and_errno(self) -> None:
        """The message alone tells what was refused, where, by which driver and why."""
        error = kernel_error(
            errno.EOPNOTSUPP, "set VF link_state", "eth0 vf 0", driver="igb", knob="link_state"
        )
        assert str(error) == (
            "set VF link_state on eth0 vf 0 (driver igb) failed: "
            "Operation not supported [EOPNOTSUPP]"
        )
        assert error.knob == "link_state"

    def test_domain_classes_are_also_builtin_kinds(self) -> None:
        """Callers can catch LookupError / ValueError as well as the domain classes."""
        assert isinstance(kernel_error(errno.ENODEV, "look up", "x"), LookupError)
        assert isinstance(kernel_error(errno.EINVAL, "set", "x"), ValueError)

    def test_pickles(self) -> None:
        """Errors survive pickling (multiprocessing, the VM harness)."""
        error = kernel_error(errno.EBUSY, "set sriov_numvfs to 2", "0000:01:00.0", driver="igb")
        copy = pickle.loads(pickle.dumps(error))  # noqa: S301 - our own bytes
        assert type(copy) is Busy
        assert str(copy) == str(error)

    def test_errno_name_prefers_eopnotsupp(self) -> None:
        """Errno 95 is shown as EOPNOTSUPP, as the kernel and iproute2 call it."""
        assert errno_name(errno.EOPNOTSUPP) == "EOPNOTSUPP"
        assert errno_name(errno.EINVAL) == "EINVAL"


class TestDecoding:
    """VF lists and links decode from pyroute2-encoded messages into plain values."""

    def test_vf_state_from_vfinfo(self) -> None:
        """Every field of IFLA_VF_INFO lands in VfState; -1 reads as 'not reported'."""
        state = _states(_pf_reply(3, proto=0x88A8))[2]
        assert state.index == 2
        assert state.mac == "02:00:00:00:00:02"
        assert (state.vlan, state.qos, state.vlan_proto) == (102, 2, VlanProto.DOT1AD)
        assert (state.min_tx_rate, state.max_tx_rate) == (0, 500)
        assert state.spoofchk is True
        assert state.trust is False
        assert state.link_state is VfLinkState.DISABLE
        assert state.query_rss is None

    def test_link_info_from_message(self) -> None:
        """A link message gives name, MAC, MTU, up flag, altnames and parent device."""
        message_class = _codec()
        msg = message_class()
        msg["index"] = 12
        msg["flags"] = 1
        msg["attrs"] = [
            ("IFLA_IFNAME", "net1"),
            ("IFLA_ADDRESS", "02:00:00:00:00:07"),
            ("IFLA_MTU", 9000),
            ("IFLA_PROP_LIST", {"attrs": [("IFLA_ALT_IFNAME", "enp1s16")]}),
            ("IFLA_PARENT_DEV_NAME", "0000:01:10.0"),
        ]
        msg.encode()
        info = _link_info(bytes(msg.data))
        assert (info.index, info.name, info.mac, info.mtu, info.up) == (
            12,
            "net1",
            "02:00:00:00:00:07",
            9000,
            True,
        )
        assert info.altnames == ("enp1s16",)
        assert info.parent == "0000:01:10.0"

    def test_vlan_list_entry_has_the_kernel_struct_size(self) -> None:
        """IFLA_VF_VLAN_INFO is sent as 16 bytes (struct ifla_vf_vlan_info), not 14."""
        msg = _vf_request("eth0", _vf_vlan_list_setting(3, 5, 2, 0x88A8))
        msg["header"].update(type=19, flags=5, sequence_number=1, pid=0)
        msg.encode()
        data = bytes(msg.data)
        info = struct.pack("=HH", 20, 1) + struct.pack("=III", 3, 5, 2) + b"\x88\xa8\0\0"
        assert info in data
        assert struct.unpack_from("=I", data)[0] == len(data)
        # pyroute2 decodes it back to the same values
        decoded = _codec()(data)
        decoded.decode()
        vlan_list = decoded.get_attr("IFLA_VFINFO_LIST").get_attrs("IFLA_VF_INFO")[0]
        entry = vlan_list.get_attr("IFLA_VF_VLAN_LIST").get_attrs("IFLA_VF_VLAN_INFO")[0]
        assert (entry["vf"], entry["vlan"], entry["qos"], entry["proto"]) == (3, 5, 2, 0x88A8)
        assert decoded.get_attr("IFLA_IFNAME") == "eth0"


def _pyroute2_request(
    msg_type: int,
    msg_flags: int,
    seq: int,
    attrs: list[tuple[str, Any]],
    *,
    index: int = 0,
    flags: int = 0,
    change: int = 0,
) -> bytes:
    """What pyroute2 encodes for a link request (the reference the hand encoder must
    match byte for byte)."""
    msg = _codec()()
    msg["index"], msg["flags"], msg["change"] = index, flags, change
    msg["attrs"] = attrs
    msg["header"].update(type=msg_type, flags=msg_flags, sequence_number=seq, pid=0)
    msg.encode()
    return bytes(msg.data)


def _vf_attr(pf: str, nla: str, value: dict[str, Any]) -> list[tuple[str, Any]]:
    return [
        ("IFLA_IFNAME", pf),
        ("IFLA_VFINFO_LIST", {"attrs": [("IFLA_VF_INFO", {"attrs": [(nla, value)]})]}),
    ]


_ACKED = 0x5  # NLM_F_REQUEST | NLM_F_ACK
_DUMP = 0x301  # NLM_F_REQUEST | NLM_F_DUMP
_CREATE_EXCL = 0x600

#: KernelNetlink calls and what pyroute2 encodes for each: (type, flags, attrs, header).
REQUESTS: list[tuple[str, Any, tuple[int, int, list[tuple[str, Any]], dict[str, int]]]] = [
    (
        "vf_states",
        lambda nl: nl.vf_states("ens1f0"),
        (18, _ACKED, [("IFLA_IFNAME", "ens1f0"), ("IFLA_EXT_MASK", 9)], {}),
    ),
    (
        "set_vf_mac",
        lambda nl: nl.set_vf_mac("ens1f0", 3, "02:aa:bb:cc:dd:ee"),
        (19, _ACKED, _vf_attr("ens1f0", "IFLA_VF_MAC", {"vf": 3, "mac": "02:aa:bb:cc:dd:ee"}), {}),
    ),
    (
        "set_vf_vlan",
        lambda nl: nl.set_vf_vlan("ens1f0", 3, 100, 5, VlanProto.DOT1Q),
        (
            19,
            _ACKED,
            _vf_attr("ens1f0", "IFLA_VF_VLAN", {"vf": 3, "vlan": 100, "qos": 5}),
            {},
        ),
    ),
    (
        "set_vf_rate",
        lambda nl: nl.set_vf_rate("ens1f0", 3, 100, 900),
        (
            19,
            _ACKED,
            _vf_attr("ens1f0", "IFLA_VF_RATE", {"vf": 3, "min_tx_rate": 100, "max_tx_rate": 900}),
            {},
        ),
    ),
    (
        "set_vf_spoofchk",
        lambda nl: nl.set_vf_spoofchk("ens1f0", 3, False),
        (19, _ACKED, _vf_attr("ens1f0", "IFLA_VF_SPOOFCHK", {"vf": 3, "spoofchk": 0}), {}),
    ),
    (
        "set_vf_trust",
        lambda nl: nl.set_vf_trust("ens1f0", 3, True),
        (19, _ACKED, _vf_attr("ens1f0", "IFLA_VF_TRUST", {"vf": 3, "trust": 1}), {}),
    ),
    (
        "set_vf_link_state",
        lambda nl: nl.set_vf_link_state("ens1f0", 3, VfLinkState.DISABLE),
        (19, _ACKED, _vf_attr("ens1f0", "IFLA_VF_LINK_STATE", {"vf": 3, "link_state": 2}), {}),
    ),
    (
        "set_vf_query_rss",
        lambda nl: nl.set_vf_query_rss("ens1f0", 3, True),
        (
            19,
            _ACKED,
            _vf_attr("ens1f0", "IFLA_VF_RSS_QUERY_EN", {"vf": 3, "rss_query_en": 1}),
            {},
        ),
    ),
    (
        "get_link",
        lambda nl: nl.get_link("net1"),
        (18, _ACKED, [("IFLA_IFNAME", "net1"), ("IFLA_EXT_MASK", 8)], {}),
    ),
    ("links", lambda nl: nl.links(), (18, _DUMP, [("IFLA_EXT_MASK", 8)], {})),
    (
        "set_link all",
        lambda nl: nl.set_link(7, mac="02:00:00:00:00:09", mtu=9000, up=True),
        (
            19,
            _ACKED,
            [("IFLA_ADDRESS", "02:00:00:00:00:09"), ("IFLA_MTU", 9000)],
            {"index": 7, "flags": 1, "change": 1},
        ),
    ),
    (
        "set_link down",
        lambda nl: nl.set_link(7, up=False),
        (19, _ACKED, [], {"index": 7, "flags": 0, "change": 1}),
    ),
    (
        "set_link mtu",
        lambda nl: nl.set_link(7, mtu=1500),
        (19, _ACKED, [("IFLA_MTU", 1500)], {"index": 7}),
    ),
    (
        "rename_link",
        lambda nl: nl.rename_link(7, "net1"),
        (19, _ACKED, [("IFLA_IFNAME", "net1")], {"index": 7}),
    ),
    (
        "delete_altname",
        lambda nl: nl.delete_altname(7, "enp1s16f1"),
        (
            109,
            _ACKED,
            [("IFLA_PROP_LIST", {"attrs": [("IFLA_ALT_IFNAME", "enp1s16f1")]})],
            {"index": 7},
        ),
    ),
]


def _link_reply(seq: int) -> bytes:
    msg = _codec()()
    msg["index"] = 7
    msg["attrs"] = [("IFLA_IFNAME", "net1")]
    msg["header"].update(type=16, flags=0, sequence_number=seq, pid=0)
    msg.encode()
    return bytes(msg.data)


class TestLinkRequests:
    """Every link and VF request KernelNetlink sends is, byte for byte, what pyroute2's
    encoder makes of the same request (the encoding the VM tier proved on igb)."""

    @pytest.fixture
    def wire(self) -> Any:
        """A KernelNetlink whose socket is one end of a socket pair: the test plays the
        kernel on the other."""
        backend = KernelNetlink()
        backend._home.close()
        ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        backend._home = _Channel(ours, timeout=5)
        yield backend, kernel
        backend.close()
        kernel.close()

    @pytest.mark.parametrize(("name", "call", "expected"), REQUESTS, ids=[r[0] for r in REQUESTS])
    def test_same_bytes_as_pyroute2(self, wire: Any, name: str, call: Any, expected: Any) -> None:
        """The request on the wire equals pyroute2's encoding of it."""
        backend, kernel = wire
        msg_type, msg_flags, attrs, header = expected
        if name in ("get_link", "links"):
            kernel.send(_link_reply(1))
        kernel.send(_ack(1) if msg_flags != _DUMP else struct.pack("=IHHIIi", 20, 3, 2, 1, 0, 0))
        call(backend)
        assert _pyroute2_request(msg_type, msg_flags, 1, attrs, **header) == kernel.recv(65536)

    def test_move_link_sends_the_namespace_fd(self, wire: Any, tmp_path: Any) -> None:
        """IFLA_NET_NS_FD carries the target's descriptor, then the new name."""
        backend, kernel = wire
        kernel.send(_ack(1))
        backend.move_link(7, "eth0")  # back into the home namespace: its own descriptor
        sent = kernel.recv(65536)
        attrs = [("IFLA_NET_NS_FD", backend._home_fd), ("IFLA_IFNAME", "eth0")]
        assert _pyroute2_request(19, _ACKED, 1, attrs, index=7) == sent

    def test_dot1ad_vlan_carries_the_kernel_struct(self, wire: Any) -> None:
        """802.1ad goes in IFLA_VF_VLAN_LIST with the kernel's 16-byte struct (where
        pyroute2 0.9 sends 14 bytes): the only request that differs from pyroute2's."""
        backend, kernel = wire
        kernel.send(_ack(1))
        backend.set_vf_vlan("ens1f0", 3, 5, 2, VlanProto.DOT1AD)
        sent = kernel.recv(65536)
        info = struct.pack("=HH", 20, 1) + struct.pack("=III", 3, 5, 2) + b"\x88\xa8\0\0"
        vlan_list = struct.pack("=HH", 24, 12) + info
        vfinfo = struct.pack("=HH", 28, 1) + vlan_list
        body = struct.pack("=BxHiII", 0, 0, 0, 0, 0) + _nla(3, b"ens1f0\0") + _nla(22, vfinfo)
        assert struct.pack("=IHHII", 16 + len(body), 19, _ACKED, 1, 0) + body == sent


class TestLinkDecoding:
    """The hand decoders read what pyroute2's decoder reads."""

    @pytest.mark.parametrize(
        "attrs",
        [
            [("IFLA_IFNAME", "eth0"), ("IFLA_ADDRESS", "52:54:00:12:34:56"), ("IFLA_MTU", 1500)],
            [("IFLA_IFNAME", "lo"), ("IFLA_MTU", 65536), ("IFLA_CARRIER", 1)],
            [("IFLA_IFNAME", "veth-b"), ("IFLA_CARRIER", 0), ("IFLA_ADDRESS", "0a:0b:0c:0d:0e:0f")],
            [
                ("IFLA_IFNAME", "enp1s16f1"),
                (
                    "IFLA_PROP_LIST",
                    {"attrs": [("IFLA_ALT_IFNAME", "a1"), ("IFLA_ALT_IFNAME", "a2")]},
                ),
                ("IFLA_PARENT_DEV_NAME", "0000:01:10.1"),
            ],
        ],
    )
    @pytest.mark.parametrize("flags", [0, 1, 0x1043])
    def test_link_info_matches_pyroute2(self, attrs: list[tuple[str, Any]], flags: int) -> None:
        """Name, MAC, MTU, up flag, altnames, parent device and carrier agree."""
        msg = _codec()()
        msg["index"], msg["flags"] = 42, flags
        msg["attrs"] = attrs
        msg.encode()
        reference = _codec()(bytes(msg.data))
        reference.decode()
        props = reference.get_attr("IFLA_PROP_LIST")
        carrier = reference.get_attr("IFLA_CARRIER")
        expected = LinkInfo(
            index=reference["index"],
            name=reference.get_attr("IFLA_IFNAME"),
            mac=reference.get_attr("IFLA_ADDRESS") or "00:00:00:00:00:00",
            mtu=reference.get_attr("IFLA_MTU") or 0,
            up=bool(reference["flags"] & 1),
            altnames=tuple(props.get_attrs("IFLA_ALT_IFNAME")) if props is not None else (),
            parent=reference.get_attr("IFLA_PARENT_DEV_NAME"),
            carrier=None if carrier is None else bool(carrier),
        )
        assert expected == _link_info(bytes(msg.data))

    def test_infiniband_address_gives_its_first_six_bytes(self) -> None:
        """A 20-byte IFLA_ADDRESS reads as its first six bytes, as pyroute2 read it."""
        body = (
            struct.pack("=BxHiII", 0, 32, 9, 0, 0) + _nla(3, b"ib0\0") + _nla(1, bytes(range(20)))
        )
        message = struct.pack("=IHHII", 16 + len(body), 16, 0, 1, 0) + body
        assert "00:01:02:03:04:05" == _link_info(message).mac

    @pytest.mark.parametrize(
        "without", [(), ("IFLA_VF_RATE",), ("IFLA_VF_VLAN_LIST",), ("IFLA_VF_MAC", "IFLA_VF_VLAN")]
    )
    def test_vf_state_matches_pyroute2(self, without: tuple[str, ...]) -> None:
        """Every IFLA_VF_* field agrees with pyroute2's decoding, with settings missing
        too (old kernels have no IFLA_VF_RATE, only IFLA_VF_TX_RATE)."""
        attrs = [a for a in _vf_attrs(9, proto=0x88A8) if a[0] not in without]
        if "IFLA_VF_RATE" in without:
            attrs.append(("IFLA_VF_TX_RATE", {"vf": 9, "tx_rate": 700}))
        msg = _codec()()
        msg["attrs"] = [("IFLA_VFINFO_LIST", {"attrs": [("IFLA_VF_INFO", {"attrs": attrs})]})]
        msg.encode()
        chunk = bytes(msg.data)[32 + 4 :]
        reference = _codec().vflist.vfinfo(chunk)
        reference.decode()
        found = dict(reference["attrs"])
        state = _vf_state(chunk)
        assert state is not None
        assert 9 == state.index
        mac = found.get("IFLA_VF_MAC")
        assert (mac["mac"] if mac else "00:00:00:00:00:00") == state.mac
        vlan = found.get("IFLA_VF_VLAN")
        assert ((vlan["vlan"], vlan["qos"]) if vlan else (0, 0)) == (state.vlan, state.qos)
        vlan_list = found.get("IFLA_VF_VLAN_LIST")
        proto = VlanProto.DOT1AD if vlan_list else VlanProto.DOT1Q
        assert proto is state.vlan_proto
        rate, tx_rate = found.get("IFLA_VF_RATE"), found.get("IFLA_VF_TX_RATE")
        expected_max = rate["max_tx_rate"] if rate else tx_rate["tx_rate"]
        assert (rate["min_tx_rate"] if rate else 0, expected_max) == (
            state.min_tx_rate,
            state.max_tx_rate,
        )
        assert (True, False, None) == (state.spoofchk, state.trust, state.query_rss)
        assert VfLinkState.DISABLE is state.link_state

    def test_vf_entry_without_settings_is_skipped(self) -> None:
        """An IFLA_VF_INFO that names no VF (nothing but statistics) gives no state."""
        assert _vf_state(struct.pack("=HH", 12, 1) + _nla(8, b"")) is None


class TestLargeReplies:
    """A VF list of any length is read whole (the buffer is sized from the datagram)."""

    @pytest.mark.parametrize("count", [1, 256, 1024])
    def test_hundreds_of_vfs_are_not_truncated(self, count: int) -> None:
        """A PF with hundreds of VFs yields every VF (sriov-cni section 8 limits)."""
        reply = _pf_reply(count)
        ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with ours, kernel:
            for end in (ours, kernel):
                end.setsockopt(socket.SOL_SOCKET, socket.SO_SNDBUF, 4 << 20)
                end.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, 4 << 20)
            kernel.send(reply)
            kernel.send(_ack(1))
            channel = _Channel(ours, timeout=5)
            raw = channel.request(_link_request(), 18, "read VF list", "ens1f0")
        assert count < 1024 or len(reply) > 2 * 65536  # the list length wrapped around
        states = _states(raw[0])
        assert [s.index for s in states] == list(range(count))
        assert states[-1].mac == f"02:00:00:00:{(count - 1) >> 8:02x}:{(count - 1) & 0xFF:02x}"

    def test_error_ack_raises_with_errno(self) -> None:
        """A negative NLMSG_ERROR becomes the matching domain exception."""
        ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with ours, kernel:
            kernel.send(_ack(1, -errno.EOPNOTSUPP))
            channel = _Channel(ours, timeout=5)
            with pytest.raises(Unsupported, match=r"set VF trust on eth0 vf 0 failed"):
                channel.request(_link_request(), 19, "set VF trust", "eth0 vf 0")

    def test_replies_to_other_requests_are_skipped(self) -> None:
        """A stale answer (another sequence number) is not taken for this request's."""
        ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with ours, kernel:
            kernel.send(_ack(7, -errno.EBUSY))
            kernel.send(_ack(1))
            channel = _Channel(ours, timeout=5)
            assert channel.request(_link_request(), 19, "set link", "eth0") == []


class TestAddressesAndRoutes:
    """Address and route messages, encoded and decoded by hand (no pyroute2)."""

    def test_route_values(self) -> None:
        """Strings are parsed, host bits dropped; a gateway of the other family is refused."""
        route = Route("10.1.2.3/16", "10.1.0.1")
        assert (route.dst, route.gateway) == (
            ipaddress.ip_network("10.1.0.0/16"),
            ipaddress.ip_address("10.1.0.1"),
        )
        assert (route.effective_scope, Route("10.0.0.0/8").effective_scope) == (0, 253)
        assert str(Route("::/0", "fe80::1", table=7)) == "::/0 via fe80::1 table 7"
        with pytest.raises(ValueError, match="not an IPv4 address"):
            Route("10.0.0.0/8", "fd00::1")
        with pytest.raises(ValueError, match="32-bit"):
            Route("10.0.0.0/8", table=-1)
        with pytest.raises(ValueError, match="does not appear to be"):
            Route("not a network")

    def test_address_request(self) -> None:
        """ifaddrmsg, IFA_LOCAL and IFA_ADDRESS; the broadcast of an IPv4 subnet."""
        body = _address_request(5, ipaddress.ip_interface("10.1.0.2/24")).body
        assert body[:8] == struct.pack("=BBBBI", socket.AF_INET, 24, 0, 0, 5)
        found = _attributes(body, 8)
        assert (found[2], found[1], found[4]) == (
            bytes([10, 1, 0, 2]),
            bytes([10, 1, 0, 2]),
            bytes([10, 1, 0, 255]),
        )
        v6 = _attributes(_address_request(5, ipaddress.ip_interface("fd00::2/64")).body, 8)
        assert 4 not in v6

    def test_route_request(self) -> None:
        """A table above 255 goes in RTA_TABLE; priority and metrics are attributes."""
        route = Route("10.1.2.0/24", "10.0.0.1", table=1000, priority=7, mtu=1400, advmss=1360)
        body = _route_request(3, route).body
        family, dst_len, _, _, table, protocol, scope, kind, _ = struct.unpack_from("=8BI", body)
        assert (family, dst_len, table, protocol, scope, kind) == (2, 24, 0, 3, 0, 1)
        found = _attributes(body, 12)
        assert found[1] == bytes([10, 1, 2, 0])
        assert struct.unpack("=I", found[4]) == (3,)
        assert found[5] == bytes([10, 0, 0, 1])
        assert struct.unpack("=I", found[6]) == (7,)
        assert struct.unpack("=I", found[15]) == (1000,)
        metrics = _attributes(found[8])
        assert (struct.unpack("=I", metrics[2]), struct.unpack("=I", metrics[8])) == (
            (1400,),
            (1360,),
        )
        link = _route_request(3, Route("fd00::/64")).body
        assert struct.unpack_from("=8BI", link)[6] == 253  # no gateway: link scope
        assert 5 not in _attributes(link, 12)

    def test_decoding_a_dump(self) -> None:
        """Entries of other interfaces and tables are skipped; a multipath route gives
        one route per next hop through the interface."""
        header = struct.pack("=IHHII", 0, 24, 2, 1, 0)
        address = struct.pack("=BBBBI", socket.AF_INET6, 64, 0, 0, 4) + _nla(
            2, ipaddress.ip_address("fd00::2").packed
        )
        assert _decode_address(header + address, 4) == ipaddress.ip_interface("fd00::2/64")
        assert _decode_address(header + address, 5) is None
        hops = b"".join(
            struct.pack("=HBBi", 8 + 20, 0, 0, oif) + _nla(5, ipaddress.ip_address(gw).packed)
            for oif, gw in ((4, "fd00::1"), (9, "fd00::8"), (4, "fd00::7"))
        )
        multipath = struct.pack("=8BI", socket.AF_INET6, 0, 0, 0, 254, 3, 0, 1, 0) + _nla(9, hops)
        assert _decode_routes(header + multipath, 4, 254) == [
            Route("::/0", "fd00::1"),
            Route("::/0", "fd00::7"),
        ]
        assert _decode_routes(header + multipath, 4, 100) == []
        other_table = struct.pack("=8BI", socket.AF_INET, 8, 0, 0, 0, 3, 0, 1, 0)
        other_table += _nla(1, bytes([10, 0, 0, 0])) + _nla(4, struct.pack("=I", 4))
        other_table += _nla(15, struct.pack("=I", 1000))
        assert _decode_routes(header + other_table, 4, 1000) == [Route("10.0.0.0/8", table=1000)]
        assert _decode_routes(header + other_table, 4, 254) == []


class TestLazyImport:
    """pyroute2 is not imported by ``import sriovlib`` or by reading Host state."""

    def test_import_sriovlib_does_not_load_pyroute2(self) -> None:
        """Importing sriovlib, sriovlib.netlink and the Host leaves pyroute2 unloaded."""
        code = (
            "import sys, sriovlib, sriovlib.netlink, sriovlib.host\n"
            "sriovlib.Host('/nonexistent').pfs()\n"
            "print('pyroute2' in sys.modules)"
        )
        out = subprocess.run(
            [sys.executable, "-c", code], capture_output=True, text=True, check=True
        ).stdout
        assert out.strip() == "False"
