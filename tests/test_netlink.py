"""sriovlib.netlink without a kernel: error mapping, message decoding, large replies."""

from __future__ import annotations

import errno
import ipaddress
import pickle
import socket
import struct
import subprocess
import sys

import pytest

from sriovlib.models import VfLinkState, VfState, VlanProto
from sriovlib.netlink import (
    Busy,
    InvalidValue,
    KernelError,
    KernelNotFound,
    Route,
    Unsupported,
    _address_request,
    _attributes,
    _Channel,
    _codec,
    _decode_address,
    _decode_routes,
    _link_info,
    _nla,
    _route_request,
    _vf_state,
    _vfinfo_chunks,
    _vlan_list_request,
    errno_name,
    kernel_error,
)


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
    message_class = _codec()
    states = []
    for chunk in _vfinfo_chunks(message):
        info = message_class.vflist.vfinfo(chunk)
        info.decode()
        states.append(_vf_state(info))
    return states


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
        decoded = message_class(bytes(msg.data))
        decoded.decode()
        info = _link_info(decoded)
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
        msg = _vlan_list_request("eth0", 3, 5, 2, 0x88A8)
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
            message_class = _codec()
            raw = channel.request(message_class(), 18, "read VF list", "ens1f0")
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
            message_class = _codec()
            with pytest.raises(Unsupported, match=r"set VF trust on eth0 vf 0 failed"):
                channel.request(message_class(), 19, "set VF trust", "eth0 vf 0")

    def test_replies_to_other_requests_are_skipped(self) -> None:
        """A stale answer (another sequence number) is not taken for this request's."""
        ours, kernel = socket.socketpair(socket.AF_UNIX, socket.SOCK_DGRAM)
        with ours, kernel:
            kernel.send(_ack(7, -errno.EBUSY))
            kernel.send(_ack(1))
            channel = _Channel(ours, timeout=5)
            message_class = _codec()
            assert channel.request(message_class(), 19, "set link", "eth0") == []


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
