"""The one module that speaks netlink, and the only one that imports pyroute2.

It offers a small typed interface, :class:`NetlinkBackend`, with two implementations:
:class:`KernelNetlink` (the real kernel) and
:class:`sriovlib.testing.fakenetlink.FakeNetlink` (a fake kernel for tests). Host code
and the CNI plugin only see the interface, plain values
(:class:`~sriovlib.models.VfState`, :class:`LinkInfo`, :class:`Route`, ``ipaddress``
interfaces) and the domain exceptions below — never a netlink message.

What the interface does:

- read a PF's VF list (``RTM_GETLINK`` with ``RTEXT_FILTER_VF``) in one request;
- set exactly one VF setting per request, through the PF (``IFLA_VFINFO_LIST``);
- read a link, set its MAC/MTU/up-down, rename it, drop an altname;
- move a link into a namespace (a path or an open file descriptor) **and** give it its new
  name in the same request: the kernel moves the device first and renames it in the
  target, so the new name never exists on the host side and a host interface of the same
  name does not matter;
- add an address to an interface and list its addresses (``RTM_NEWADDR``,
  ``RTM_GETADDR``); add a route through it and list its routes (``RTM_NEWROUTE``,
  ``RTM_GETROUTE``) — in any namespace;
- set an interface's per-namespace network sysctls (``arp_notify``, ``ndisc_notify``);
- read and set a device's devlink eswitch mode.

The sysctls are the one thing here that is not a netlink message: they are files under
``/proc/sys/net``, but which files a path reaches depends on the network namespace of the
thread that opens it, so writing them for a pod is entering the pod's namespace — the
machinery this module already has for its sockets — and they are properties of an
interface in that namespace, as its addresses are (the kernel resets them when the
interface changes namespace). They live here rather than in :mod:`sriovlib.sysfs`, which
reads a fixed tree (``/sys``, or a fake one in tests) and has no notion of namespaces.

Errors: every refusal becomes a :class:`KernelError` carrying the operation, the device
and the errno; the usual errnos have their own classes (:class:`KernelNotFound`,
:class:`Unsupported`, :class:`InvalidValue`, :class:`Busy`).

Why :class:`KernelNetlink` sends its own messages over its own socket instead of calling
pyroute2's ``IPRoute``: (1) a VF list is one message that grows with the VF count; it is
read with a buffer sized by ``MSG_PEEK | MSG_TRUNC``, so it is never cut short, and its
entries are walked past the 64 KiB point where the list attribute's 16-bit length wraps
(see :func:`_vfinfo_chunks`); (2) pyroute2 0.9 encodes ``IFLA_VF_VLAN_INFO`` two bytes
short of the kernel's struct, so the kernel answers EINVAL to any VLAN-protocol request
(802.1ad could never be reported as unsupported); (3) ``IPRoute(netns=...)`` forks a
helper per socket and by default *creates* a namespace that does not exist — a release
after the pod's namespace was deleted must not resurrect it. Namespaces are entered by a
short-lived thread (``setns``) that only opens the socket (or writes one sysctl file).

Every message of the interface — links, VF settings, addresses, routes — is a fixed
struct and a few attributes, encoded and decoded here by hand (``struct``), so the CNI
plugin's ADD and DEL import no pyroute2 at all: in pyroute2 0.9 importing any submodule
runs the package's ``__init__``, which loads nearly all of it (IPDB, NDB with sqlite3,
asyncio, ssl, conntrack: ~60 ms natively), and even the link codec alone, without that
``__init__``, would bring ``multiprocessing``, ``platform`` and its plugin modules along
(docs/lifecycle.md, "pyroute2"). pyroute2 remains
for the generic-netlink requests, devlink's eswitch mode
(:meth:`KernelNetlink.eswitch_mode`, :meth:`KernelNetlink.set_eswitch_mode`), imported
on first use; ``tests/test_netlink.py``
checks the hand-made messages byte for byte against pyroute2's encoder and the decoders
against its decoder.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import functools
import ipaddress
import os
import select
import socket
import struct
import threading
from typing import TYPE_CHECKING, Any, Literal, Protocol, TypeAlias, TypeVar

from sriovlib.exceptions import (
    Busy,
    InvalidValue,
    KernelError,
    KernelNotFound,
    Unsupported,
    errno_name,
    kernel_error,
)
from sriovlib.models import (
    RT_TABLE_MAIN,
    ZERO_MAC,
    IpAddress,
    IpInterface,
    IpNetwork,
    LinkInfo,
    NetnsRef,
    Route,
    VfLinkState,
    VfState,
    VlanProto,
)

if TYPE_CHECKING:
    from collections.abc import Callable, Iterator

__all__ = [
    "LINK_SYSCTLS",
    "RT_TABLE_MAIN",
    "Busy",
    "EventSource",
    "InvalidValue",
    "IpAddress",
    "IpInterface",
    "IpNetwork",
    "KernelError",
    "KernelEvents",
    "KernelNetlink",
    "KernelNotFound",
    "LinkInfo",
    "LinkSysctl",
    "NetlinkBackend",
    "NetnsRef",
    "Route",
    "Unsupported",
    "errno_name",
    "kernel_error",
]

_T = TypeVar("_T")

#: A per-interface network sysctl the backend can set (``family.name``).
LinkSysctl: TypeAlias = Literal["ipv4.arp_notify", "ipv6.ndisc_notify"]
#: Every :data:`LinkSysctl`, with the directory under ``/proc/sys/net`` it lives in.
LINK_SYSCTLS: dict[LinkSysctl, tuple[str, str]] = {
    "ipv4.arp_notify": ("ipv4", "arp_notify"),
    "ipv6.ndisc_notify": ("ipv6", "ndisc_notify"),
}


class EventSource(Protocol):
    """Kernel change notifications (:meth:`NetlinkBackend.watch`).

    Attributes:
        missing: What is not watched here, and why (empty when everything is).
    """

    missing: list[str]

    def wait(self, timeout: float | None) -> bool:
        """Block until something changed (True), or *timeout* passed or the source was
        closed (False)."""

    def close(self) -> None:
        """Stop watching; a :meth:`wait` in another thread returns."""


class NetlinkBackend(Protocol):
    """What :class:`sriovlib.Host` and the CNI plugin need from netlink.

    Every method is one netlink request (``links``, ``addresses`` and ``routes`` are one
    dump each; ``set_link_sysctl`` is one file write). *netns* None means the backend's
    own ("host") namespace; VF settings always go through the PF in that namespace.
    Failures raise :class:`KernelError` subclasses.
    """

    def vf_states(self, pf: str) -> tuple[VfState, ...]:
        """Every VF's settings as PF *pf* reports them, in VF order."""

    def set_vf_mac(self, pf: str, vf: int, mac: str) -> None:
        """Set VF *vf*'s administrative MAC (``00:00:00:00:00:00`` clears it)."""

    def set_vf_vlan(self, pf: str, vf: int, vlan: int, qos: int, proto: VlanProto) -> None:
        """Set VF *vf*'s port VLAN, priority and VLAN protocol."""

    def set_vf_rate(self, pf: str, vf: int, min_tx_rate: int, max_tx_rate: int) -> None:
        """Set VF *vf*'s minimum and maximum transmit rate (Mbit/s, 0 = none)."""

    def set_vf_spoofchk(self, pf: str, vf: int, on: bool) -> None:
        """Turn VF *vf*'s spoof checking on or off."""

    def set_vf_trust(self, pf: str, vf: int, on: bool) -> None:
        """Turn VF *vf*'s trusted mode on or off."""

    def set_vf_link_state(self, pf: str, vf: int, state: VfLinkState) -> None:
        """Set VF *vf*'s administrative link state."""

    def set_vf_query_rss(self, pf: str, vf: int, on: bool) -> None:
        """Allow or forbid VF *vf* to query the PF's RSS configuration."""

    def get_link(self, name: str, netns: NetnsRef | None = None) -> LinkInfo:
        """The interface called *name* in *netns*."""

    def links(self, netns: NetnsRef | None = None) -> tuple[LinkInfo, ...]:
        """Every interface in *netns* (one dump)."""

    def set_link(
        self,
        index: int,
        netns: NetnsRef | None = None,
        *,
        mac: str | None = None,
        mtu: int | None = None,
        up: bool | None = None,
    ) -> None:
        """Change the given properties of interface *index* in one request."""

    def rename_link(self, index: int, name: str, netns: NetnsRef | None = None) -> None:
        """Rename interface *index* (the kernel refuses while it is up: EBUSY)."""

    def move_link(
        self,
        index: int,
        name: str,
        *,
        netns: NetnsRef | None = None,
        target: NetnsRef | None = None,
    ) -> None:
        """Move interface *index* from *netns* into *target* and name it *name* there."""

    def delete_altname(self, index: int, altname: str, netns: NetnsRef | None = None) -> None:
        """Remove alternative name *altname* from interface *index*."""

    def add_address(
        self,
        index: int,
        address: IpInterface,
        netns: NetnsRef | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Add *address* to interface *index*.

        An address that is already there is EEXIST, unless *replace*, which updates it
        instead. (An IPv6 address is the same address whatever its prefix length; an
        IPv4 address with another prefix length is another address.) A missing
        interface is ENODEV.
        """

    def addresses(self, index: int, netns: NetnsRef | None = None) -> tuple[IpInterface, ...]:
        """The addresses on interface *index*, IPv4 first (one dump)."""

    def add_route(self, index: int, route: Route, netns: NetnsRef | None = None) -> None:
        """Add *route* through interface *index*.

        The same route again is EEXIST; a route to the same destination through another
        gateway is added beside it. The kernel's rules: a missing interface is ENODEV; an
        interface that is down is ENETDOWN; a gateway must be on-link — inside the
        prefix of one of the interface's addresses or of a route onto the link, or an
        IPv6 link-local address — else ENETUNREACH (IPv4) or EHOSTUNREACH (IPv6); an IPv4
        gateway on a route of link scope is ENETUNREACH.
        """

    def routes(
        self, index: int, netns: NetnsRef | None = None, *, table: int = RT_TABLE_MAIN
    ) -> tuple[Route, ...]:
        """The unicast routes through interface *index* in *table*, the kernel's own
        prefix routes for the interface's addresses included (one dump)."""

    def set_link_sysctl(
        self, name: str, key: LinkSysctl, value: int, netns: NetnsRef | None = None
    ) -> None:
        """Set network sysctl *key* of interface *name* as *netns* sees it
        (``/proc/sys/net/ipv4/conf/<name>/arp_notify``...). ENOENT when there is no
        such interface there, or no such protocol (IPv6 disabled). The kernel resets
        them when the interface changes namespace."""

    def eswitch_mode(self, pci_address: str) -> str | None:
        """``legacy`` or ``switchdev`` from devlink; None where devlink has no answer."""

    def set_eswitch_mode(self, pci_address: str, mode: str) -> None:
        """Set the devlink eswitch mode (``legacy``/``switchdev``) of ``pci/<address>``;
        EOPNOTSUPP where the driver has no eswitch, EBUSY where it refuses the change
        in the present state (ice with VFs, mlx5 with VFs bound)."""

    def watch(self) -> EventSource:
        """A subscription to the kernel's link and device events in the host namespace."""

    def forget_namespaces(self) -> None:
        """Close every handle into other namespaces (an open handle keeps a namespace
        alive, so the kernel would not return a VF when its pod namespace is deleted)."""

    def close(self) -> None:
        """Release every resource."""


# -- the real kernel ---------------------------------------------------------------------

_NETLINK_ROUTE = 0
_NETLINK_CAP_ACK = 10
_NETLINK_EXT_ACK = 11
_SOL_NETLINK = 270
_CLONE_NEWNET = 0x40000000
_NLMSG_ERROR = 2
_NLMSG_DONE = 3
_NLM_F_REQUEST = 0x1
_NLM_F_ACK = 0x4
_NLM_F_DUMP = 0x300
_NLM_F_ACK_TLVS = 0x200
_NLM_F_REPLACE = 0x100
_NLM_F_EXCL = 0x200
_NLM_F_CREATE = 0x400
_NLM_F_APPEND = 0x800
_NLMSGERR_ATTR_MSG = 1
_RTM_GETLINK = 18
_RTM_SETLINK = 19
_RTM_NEWADDR = 20
_RTM_GETADDR = 22
_RTM_NEWROUTE = 24
_RTM_GETROUTE = 26
_RTM_DELLINKPROP = 109
_RTEXT_FILTER_VF = 1 << 0
_RTEXT_FILTER_SKIP_STATS = 1 << 3
_IFF_UP = 0x1
_UNREPORTED = 0xFFFFFFFF  # the kernel presets spoofchk/trust/rss_query_en to -1
_HEADER = struct.Struct("=IHHII")
_IFINFOMSG_SIZE = 16
_NLA_TYPE_MASK = 0x3FFF
_NLA_F_NESTED = 0x8000
# links: struct ifinfomsg and the IFLA_* attributes (linux/if_link.h)
_IFLA_ADDRESS = 1
_IFLA_IFNAME = 3
_IFLA_MTU = 4
_IFLA_VFINFO_LIST = 22
_IFLA_NET_NS_FD = 28
_IFLA_EXT_MASK = 29
_IFLA_CARRIER = 33
_IFLA_PROP_LIST = 52
_IFLA_ALT_IFNAME = 53
_IFLA_PARENT_DEV_NAME = 56
# one VF: IFLA_VF_INFO and its IFLA_VF_* attributes (struct ifla_vf_*, all starting
# with the VF's index as a __u32)
_IFLA_VF_INFO = 1
_IFLA_VF_MAC = 1
_IFLA_VF_VLAN = 2
_IFLA_VF_TX_RATE = 3
_IFLA_VF_SPOOFCHK = 4
_IFLA_VF_LINK_STATE = 5
_IFLA_VF_RATE = 6
_IFLA_VF_RSS_QUERY_EN = 7
_IFLA_VF_TRUST = 9
_IFLA_VF_VLAN_LIST = 12
_IFLA_VF_VLAN_INFO = 1
_VF_MAC_SIZE = 32  # struct ifla_vf_mac: __u8 mac[32]
_VF_STRUCTS = {  # attribute -> how many __u32 fields its struct has, vf index first
    _IFLA_VF_MAC: 1,
    _IFLA_VF_VLAN: 3,
    _IFLA_VF_TX_RATE: 2,
    _IFLA_VF_SPOOFCHK: 2,
    _IFLA_VF_LINK_STATE: 2,
    _IFLA_VF_RATE: 3,
    _IFLA_VF_RSS_QUERY_EN: 2,
    _IFLA_VF_TRUST: 2,
}
_RCVBUF = 1 << 20
# addresses and routes: struct ifaddrmsg, struct rtmsg, struct rtnexthop
_IFINFOMSG = struct.Struct("=BxHiII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_RTNEXTHOP = struct.Struct("=HBBi")
_IFA_ADDRESS = 1
_IFA_LOCAL = 2
_IFA_BROADCAST = 4
_RTA_DST = 1
_RTA_OIF = 4
_RTA_GATEWAY = 5
_RTA_PRIORITY = 6
_RTA_METRICS = 8
_RTA_MULTIPATH = 9
_RTA_TABLE = 15
_RTAX_MTU = 2
_RTAX_ADVMSS = 8
_RTPROT_BOOT = 3
_RTN_UNICAST = 1


def _nla(kind: int, payload: bytes) -> bytes:
    """One netlink attribute, padded to 4 bytes."""
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def _nla_string(kind: int, text: str) -> bytes:
    """A NUL-terminated string attribute (``IFLA_IFNAME`` and the like)."""
    return _nla(kind, text.encode() + b"\0")


def _nla_u32(kind: int, value: int) -> bytes:
    return _nla(kind, struct.pack("=I", value))


def _attribute_list(data: bytes, offset: int = 0) -> list[tuple[int, bytes]]:
    """The netlink attributes from *offset* on, in order: (type, payload) pairs."""
    found = []
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found.append((kind & _NLA_TYPE_MASK, data[offset + 4 : offset + length]))
        offset += (length + 3) & ~3
    return found


def _attributes(data: bytes, offset: int = 0) -> dict[int, bytes]:
    """The payloads of the netlink attributes from *offset* on, by type (the first of
    a repeated type)."""
    found: dict[int, bytes] = {}
    for kind, payload in _attribute_list(data, offset):
        found.setdefault(kind, payload)
    return found


def _string(payload: bytes) -> str:
    return payload.split(b"\0", 1)[0].decode(errors="replace")


def _format_mac(raw: bytes) -> str:
    return ":".join(f"{byte:02x}" for byte in raw)


def _mac_bytes(mac: str) -> bytes:
    return bytes(int(part, 16) for part in mac.split(":"))


class _RawMessage:
    """A request: its body (the fixed struct and the attributes) encoded by hand; the
    netlink header is filled in by :meth:`_Channel.request`."""

    def __init__(self, body: bytes) -> None:
        self.body = body
        self.header: dict[str, int] = {}
        self.data = b""

    def __getitem__(self, key: str) -> dict[str, int]:
        return self.header

    def encode(self) -> None:
        self.data = (
            _HEADER.pack(
                _HEADER.size + len(self.body),
                self.header["type"],
                self.header["flags"],
                self.header["sequence_number"],
                self.header["pid"],
            )
            + self.body
        )


def _link_request(
    attributes: bytes = b"", *, index: int = 0, flags: int = 0, change: int = 0
) -> _RawMessage:
    """A link message (``RTM_GETLINK``, ``RTM_SETLINK``...): ``struct ifinfomsg`` and
    *attributes*."""
    return _RawMessage(_IFINFOMSG.pack(0, 0, index, flags, change) + attributes)


def _vf_request(pf: str, setting: bytes) -> _RawMessage:
    """``RTM_SETLINK`` of *pf* with one VF setting: ``IFLA_VFINFO_LIST`` holding one
    ``IFLA_VF_INFO`` holding *setting* (an encoded ``IFLA_VF_*`` attribute)."""
    vfinfo_list = _nla(_IFLA_VFINFO_LIST, _nla(_IFLA_VF_INFO, setting))
    return _link_request(_nla_string(_IFLA_IFNAME, pf) + vfinfo_list)


def _vf_mac_setting(vf: int, mac: str) -> bytes:
    raw = _mac_bytes(mac)
    return _nla(_IFLA_VF_MAC, struct.pack("=I", vf) + raw + bytes(_VF_MAC_SIZE - len(raw)))


def _vf_setting(kind: int, vf: int, *values: int) -> bytes:
    """An ``IFLA_VF_*`` attribute whose struct is the VF index and *values* (__u32)."""
    return _nla(kind, struct.pack(f"={1 + len(values)}I", vf, *values))


def _vf_vlan_list_setting(vf: int, vlan: int, qos: int, ethertype: int) -> bytes:
    """``IFLA_VF_VLAN_LIST`` with one ``struct ifla_vf_vlan_info``: 16 bytes, the
    protocol in network order, then two bytes of padding (pyroute2 0.9 sent 14, which the
    kernel refuses with EINVAL)."""
    info = struct.pack("=III", vf, vlan, qos) + struct.pack(">H", ethertype) + b"\0\0"
    return _nla(_IFLA_VF_VLAN_LIST, _nla(_IFLA_VF_VLAN_INFO, info))


def _family(version: int) -> int:
    return socket.AF_INET if version == 4 else socket.AF_INET6


def _address_request(index: int, address: IpInterface) -> _RawMessage:
    """``RTM_NEWADDR``: local and peer address, and the broadcast of an IPv4 subnet."""
    network = address.network
    packed = address.ip.packed
    body = _IFADDRMSG.pack(_family(address.version), network.prefixlen, 0, 0, index)
    body += _nla(_IFA_LOCAL, packed) + _nla(_IFA_ADDRESS, packed)
    if address.version == 4 and network.prefixlen < 31:
        body += _nla(_IFA_BROADCAST, network.broadcast_address.packed)
    return _RawMessage(body)


def _route_request(index: int, route: Route) -> _RawMessage:
    """``RTM_NEWROUTE`` for *route* through *index* (a table above 255 goes in
    ``RTA_TABLE``, the metrics in ``RTA_METRICS``)."""
    dst, table = route.dst, route.table
    body = _RTMSG.pack(
        _family(dst.version),
        dst.prefixlen,
        0,
        0,
        table if table < 256 else 0,
        _RTPROT_BOOT,
        route.effective_scope,
        _RTN_UNICAST,
        0,
    )
    body += _nla(_RTA_DST, dst.network_address.packed)
    body += _nla(_RTA_OIF, struct.pack("=I", index))
    if route.gateway is not None:
        body += _nla(_RTA_GATEWAY, route.gateway.packed)
    if route.priority is not None:
        body += _nla(_RTA_PRIORITY, struct.pack("=I", route.priority))
    if table >= 256:
        body += _nla(_RTA_TABLE, struct.pack("=I", table))
    metrics = b""
    if route.mtu is not None:
        metrics += _nla(_RTAX_MTU, struct.pack("=I", route.mtu))
    if route.advmss is not None:
        metrics += _nla(_RTAX_ADVMSS, struct.pack("=I", route.advmss))
    if metrics:
        body += _nla(_RTA_METRICS, metrics)
    return _RawMessage(body)


def _decode_address(message: bytes, index: int) -> IpInterface | None:
    """The address of one ``RTM_NEWADDR`` dump entry, if it is on *index*."""
    family, prefix, _, _, owner = _IFADDRMSG.unpack_from(message, _HEADER.size)
    if owner != index or family not in (socket.AF_INET, socket.AF_INET6):
        return None
    found = _attributes(message, _HEADER.size + _IFADDRMSG.size)
    raw = found.get(_IFA_LOCAL) or found.get(_IFA_ADDRESS)
    if raw is None:
        return None
    return ipaddress.ip_interface((ipaddress.ip_address(raw), prefix))


def _decode_routes(message: bytes, index: int, table: int) -> list[Route]:
    """The routes of one ``RTM_NEWROUTE`` dump entry through *index* in *table*: one,
    or one per next hop through *index* of a multipath route (IPv6 makes one of two
    routes to the same destination)."""
    family, dst_len, _, _, rt_table, _, _, kind, _ = _RTMSG.unpack_from(message, _HEADER.size)
    if family not in (socket.AF_INET, socket.AF_INET6) or kind != _RTN_UNICAST:
        return []
    found = _attributes(message, _HEADER.size + _RTMSG.size)
    if _RTA_TABLE in found:
        (rt_table,) = struct.unpack("=I", found[_RTA_TABLE])
    if rt_table != table:
        return []
    zero = bytes(4 if family == socket.AF_INET else 16)
    dst = ipaddress.ip_network((ipaddress.ip_address(found.get(_RTA_DST, zero)), dst_len))
    hops: list[tuple[int | None, bytes | None]] = []
    if _RTA_MULTIPATH in found:
        payload = found[_RTA_MULTIPATH]
        offset = 0
        while offset + _RTNEXTHOP.size <= len(payload):
            length, _, _, oif = _RTNEXTHOP.unpack_from(payload, offset)
            if length < _RTNEXTHOP.size:
                break
            nested = _attributes(payload[offset + _RTNEXTHOP.size : offset + length])
            hops.append((oif, nested.get(_RTA_GATEWAY)))
            offset += (length + 3) & ~3
    else:
        oif = struct.unpack("=I", found[_RTA_OIF])[0] if _RTA_OIF in found else None
        hops.append((oif, found.get(_RTA_GATEWAY)))
    return [
        Route(dst, None if gateway is None else ipaddress.ip_address(gateway), table=rt_table)
        for oif, gateway in hops
        if oif == index
    ]


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _new_socket() -> socket.socket:
    sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, _NETLINK_ROUTE)
    try:
        sock.bind((0, 0))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        for option in (_NETLINK_CAP_ACK, _NETLINK_EXT_ACK):
            # older kernels lack these: their errors come without the kernel's message
            with contextlib.suppress(OSError):
                sock.setsockopt(_SOL_NETLINK, option, 1)
    except BaseException:
        sock.close()
        raise
    return sock


def _in_netns(netns_fd: int, work: Callable[[], _T], where: str = "") -> _T:
    """Run *work* in a throw-away thread that entered the namespace *netns_fd* refers
    to (*where* describes it); return what *work* returns, raise what it raises.

    The calling thread never changes namespace. What *work* opens there stays there: a
    socket (every request on it is handled in that namespace), a file under
    ``/proc/sys/net`` (resolved against the opener's namespace).

    Raises:
        KernelError: ``setns`` failed (e.g. EINVAL: not a network namespace).
    """
    outcome: dict[str, Any] = {}

    def enter() -> None:
        try:
            _setns(netns_fd)
        except OSError as e:
            outcome["enter"] = e
            return
        try:
            outcome["value"] = work()
        except BaseException as e:
            outcome["error"] = e

    thread = threading.Thread(target=enter, name="sriovlib-netns", daemon=True)
    thread.start()
    thread.join()
    if "enter" in outcome:
        code = outcome["enter"].errno or errno.EINVAL
        where = where or f"namespace fd {netns_fd}"
        raise kernel_error(code, "enter network namespace", where)
    if "error" in outcome:
        raise outcome["error"]
    value: _T = outcome["value"]
    return value


def _socket_in(netns_fd: int, where: str = "") -> socket.socket:
    """A netlink socket bound to the namespace *netns_fd* refers to (a socket stays in
    the namespace it was created in)."""
    return _in_netns(netns_fd, _new_socket, where)


def _write_file(path: str, text: str) -> None:
    with open(path, "w") as f:
        f.write(text)


class _Channel:
    """Request/response over one netlink socket (one namespace)."""

    def __init__(self, sock: socket.socket, timeout: float) -> None:
        self.sock = sock
        self.sock.settimeout(timeout)
        self.seq = 0
        self._peek = bytearray(1)

    def close(self) -> None:
        self.sock.close()

    def request(
        self,
        msg: _RawMessage,
        msg_type: int,
        operation: str,
        device: str,
        *,
        dump: bool = False,
        flags: int = 0,
    ) -> list[bytes]:
        """Send *msg* (with *flags* besides request and ack/dump); return the raw reply
        messages; raise KernelError on refusal."""
        self.seq += 1
        # NLM_F_REPLACE and NLM_F_ROOT share a bit: a dump is only ever said explicitly
        flags |= _NLM_F_REQUEST | (_NLM_F_DUMP if dump else _NLM_F_ACK)
        msg["header"]["type"] = msg_type
        msg["header"]["flags"] = flags
        msg["header"]["sequence_number"] = self.seq
        msg["header"]["pid"] = 0
        msg.encode()
        try:
            self.sock.send(msg.data)
            return list(self._replies(operation, device))
        except TimeoutError:
            raise kernel_error(errno.ETIMEDOUT, operation, device) from None
        except KernelError:
            raise
        except OSError as e:
            raise kernel_error(e.errno or errno.EIO, operation, device) from None

    def _replies(self, operation: str, device: str) -> Iterator[bytes]:
        while True:
            # the datagram's real size, so a VF list of any length is read whole
            size = self.sock.recv_into(self._peek, 1, socket.MSG_PEEK | socket.MSG_TRUNC)
            data = self.sock.recv(max(size, 1))
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, msg_type, flags, seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    break
                if seq == self.seq:
                    if msg_type == _NLMSG_ERROR:
                        (code,) = struct.unpack_from("=i", data, offset + _HEADER.size)
                        if code:
                            detail = _ext_ack_message(data[offset : offset + length], flags)
                            raise kernel_error(-code, operation, device, detail=detail)
                        return
                    if msg_type == _NLMSG_DONE:
                        return
                    yield bytes(data[offset : offset + length])
                offset += (length + 3) & ~3


def _ext_ack_message(message: bytes, flags: int) -> str:
    """The kernel's error text from an extended ACK (NETLINK_CAP_ACK set), if any."""
    if not flags & _NLM_F_ACK_TLVS:
        return ""
    offset = _HEADER.size + 4 + _HEADER.size  # header, error code, echoed request header
    while offset + 4 <= len(message):
        length, attr_type = struct.unpack_from("=HH", message, offset)
        if length < 4:
            break
        if attr_type & 0x3FFF == _NLMSGERR_ATTR_MSG:
            return message[offset + 4 : offset + length].split(b"\0", 1)[0].decode(errors="replace")
        offset += (length + 3) & ~3
    return ""


def _vfinfo_chunks(message: bytes) -> list[bytes]:
    """The raw ``IFLA_VF_INFO`` attributes of a link message, however many there are.

    ``IFLA_VFINFO_LIST`` is one nested attribute, and an attribute's length field has 16
    bits: past 64 KiB of VF entries (about 220 VFs with statistics) the kernel's length
    wraps around and a generic decoder stops early or reads garbage. So
    the entries are walked one by one from the list's start, for as long as they are
    ``IFLA_VF_INFO`` attributes, ignoring the list's own length.
    """
    offset = _HEADER.size + _IFINFOMSG_SIZE
    while offset + 4 <= len(message):
        length, kind = struct.unpack_from("=HH", message, offset)
        if length < 4:
            break
        if kind & _NLA_TYPE_MASK == _IFLA_VFINFO_LIST:
            chunks = []
            position = offset + 4
            while position + 4 <= len(message):
                size, child = struct.unpack_from("=HH", message, position)
                if child & _NLA_TYPE_MASK != _IFLA_VF_INFO or size < 4:
                    break
                chunks.append(message[position : position + size])
                position += (size + 3) & ~3
            return chunks
        offset += (length + 3) & ~3
    return []


def _flag(value: int) -> bool | None:
    return None if value == _UNREPORTED else bool(value)


def _vf_state(vfinfo: bytes) -> VfState | None:
    """A VfState from one raw ``IFLA_VF_INFO`` attribute (header included); None if it
    holds no setting that names its VF. A setting shorter than its struct counts as not
    reported."""
    fields: dict[int, tuple[int, ...]] = {}
    proto = VlanProto.DOT1Q
    index: int | None = None
    mac = ZERO_MAC
    for kind, payload in _attribute_list(vfinfo, 4):
        count = _VF_STRUCTS.get(kind)
        needed = 4 * count + (6 if kind == _IFLA_VF_MAC else 0) if count is not None else 0
        if count is not None and kind not in fields and len(payload) >= needed:
            fields[kind] = struct.unpack_from(f"={count}I", payload)
            if index is None:
                index = fields[kind][0]
            if kind == _IFLA_VF_MAC:
                mac = _format_mac(payload[4:10])
        elif kind == _IFLA_VF_VLAN_LIST:
            infos = [p for k, p in _attribute_list(payload) if k == _IFLA_VF_VLAN_INFO]
            if infos and len(infos[0]) >= 14:
                (ethertype,) = struct.unpack_from(">H", infos[0], 12)
                proto = VlanProto.from_ethertype(ethertype)
    if index is None:
        return None
    vlan = fields.get(_IFLA_VF_VLAN)
    rate = fields.get(_IFLA_VF_RATE)
    tx_rate = fields.get(_IFLA_VF_TX_RATE)
    spoofchk = fields.get(_IFLA_VF_SPOOFCHK)
    trust = fields.get(_IFLA_VF_TRUST)
    link_state = fields.get(_IFLA_VF_LINK_STATE)
    rss = fields.get(_IFLA_VF_RSS_QUERY_EN)
    return VfState(
        index=index,
        mac=mac,
        vlan=vlan[1] if vlan is not None else 0,
        qos=vlan[2] if vlan is not None else 0,
        vlan_proto=proto,
        spoofchk=None if spoofchk is None else _flag(spoofchk[1]),
        trust=None if trust is None else _flag(trust[1]),
        link_state=None if link_state is None else VfLinkState.from_kernel(link_state[1]),
        min_tx_rate=rate[1] if rate is not None else 0,
        max_tx_rate=rate[2] if rate is not None else tx_rate[1] if tx_rate is not None else 0,
        query_rss=None if rss is None else _flag(rss[1]),
    )


def _link_info(message: bytes) -> LinkInfo:
    """A LinkInfo from one ``RTM_NEWLINK`` message (header included). The MAC is the
    first six bytes of ``IFLA_ADDRESS`` (an InfiniBand link's is 20 bytes long)."""
    _, _, index, flags, _ = _IFINFOMSG.unpack_from(message, _HEADER.size)
    found = _attributes(message, _HEADER.size + _IFINFOMSG.size)
    props = found.get(_IFLA_PROP_LIST)
    altnames = tuple(
        _string(payload)
        for kind, payload in (_attribute_list(props) if props is not None else ())
        if kind == _IFLA_ALT_IFNAME
    )
    address = found.get(_IFLA_ADDRESS, b"")[:6]
    mtu = found.get(_IFLA_MTU, b"")
    carrier = found.get(_IFLA_CARRIER, b"")
    parent = found.get(_IFLA_PARENT_DEV_NAME)
    return LinkInfo(
        index=index,
        name=_string(found.get(_IFLA_IFNAME, b"")),
        mac=_format_mac(address) if address else ZERO_MAC,
        mtu=struct.unpack_from("=I", mtu)[0] if len(mtu) >= 4 else 0,
        up=bool(flags & _IFF_UP),
        altnames=altnames,
        parent=None if parent is None else _string(parent),
        carrier=bool(carrier[0]) if carrier else None,
    )


def _open_netns(ref: NetnsRef) -> tuple[int, bool]:
    """An fd for *ref* and whether the caller must close it."""
    if isinstance(ref, int):
        return ref, False
    try:
        return os.open(ref, os.O_RDONLY | os.O_CLOEXEC), True
    except OSError as e:
        raise kernel_error(
            e.errno or errno.ENOENT, "open network namespace", os.fspath(ref)
        ) from None


class KernelNetlink:
    """:class:`NetlinkBackend` on the real kernel.

    Args:
        netns: The namespace this backend treats as the host's (default: the calling
            thread's). The kernel tests use a throw-away namespace here.
        timeout: Seconds to wait for any one kernel answer.

    ``requests`` counts requests by kind (``vf_list``, ``set_vf``, ``get_link``...),
    which is what the attach/release benchmark reports.
    """

    def __init__(self, netns: NetnsRef | None = None, *, timeout: float = 10.0) -> None:
        self.timeout = timeout
        self.requests: collections.Counter[str] = collections.Counter()
        home = "/proc/thread-self/ns/net" if netns is None else netns
        fd, owned = _open_netns(home)
        self._home_fd = os.dup(fd) if not owned else fd
        self._home_key = _ns_key(self._home_fd)
        sock = _new_socket() if netns is None else _socket_in(self._home_fd, _describe_netns(netns))
        self._home = _Channel(sock, timeout)
        self._foreign: dict[tuple[int, int], _Channel] = {}

    def __repr__(self) -> str:
        return f"KernelNetlink(requests={sum(self.requests.values())})"

    def __enter__(self) -> KernelNetlink:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def close(self) -> None:
        """Close every socket and the home namespace handle."""
        self.forget_namespaces()
        self._home.close()
        if self._home_fd >= 0:
            os.close(self._home_fd)
            self._home_fd = -1

    def watch(self) -> KernelEvents:
        """Link and device events of this backend's host namespace (:class:`KernelEvents`)."""
        return KernelEvents(self._home_fd)

    def forget_namespaces(self) -> None:
        """Close the sockets opened in other namespaces."""
        for channel in self._foreign.values():
            channel.close()
        self._foreign.clear()

    def _channel(self, netns: NetnsRef | None) -> _Channel:
        if netns is None:
            return self._home
        fd, owned = _open_netns(netns)
        try:
            key = _ns_key(fd)
            if key == self._home_key:
                return self._home
            channel = self._foreign.get(key)
            if channel is None:
                where = _describe_netns(netns)
                try:
                    sock = _socket_in(fd, where)
                except OSError as e:
                    raise kernel_error(e.errno or errno.EIO, "open netlink socket", where) from None
                channel = _Channel(sock, self.timeout)
                self._foreign[key] = channel
            return channel
        finally:
            if owned:
                os.close(fd)

    def _request(
        self,
        kind: str,
        msg: _RawMessage,
        msg_type: int,
        operation: str,
        device: str,
        netns: NetnsRef | None = None,
        *,
        dump: bool = False,
        flags: int = 0,
    ) -> list[bytes]:
        channel = self._channel(netns)
        self.requests[kind] += 1
        return channel.request(msg, msg_type, operation, device, dump=dump, flags=flags)

    # -- VF settings (through the PF, in the home namespace) -----------------------

    def vf_states(self, pf: str) -> tuple[VfState, ...]:
        """Every VF's settings from one ``RTM_GETLINK`` of the PF."""
        msg = _link_request(
            _nla_string(_IFLA_IFNAME, pf)
            + _nla_u32(_IFLA_EXT_MASK, _RTEXT_FILTER_VF | _RTEXT_FILTER_SKIP_STATS)
        )
        replies = self._request("vf_list", msg, _RTM_GETLINK, "read VF list", pf)
        if not replies:
            return ()
        found = (_vf_state(chunk) for chunk in _vfinfo_chunks(replies[0]))
        return tuple(state for state in found if state is not None)

    def _set_vf(self, pf: str, vf: int, knob: str, setting: bytes) -> None:
        try:
            self._request(
                "set_vf",
                _vf_request(pf, setting),
                _RTM_SETLINK,
                f"set VF {knob}",
                f"{pf} vf {vf}",
            )
        except KernelError as e:
            e.knob = knob
            raise

    def set_vf_mac(self, pf: str, vf: int, mac: str) -> None:
        """Set the administrative MAC of VF *vf*."""
        self._set_vf(pf, vf, "mac", _vf_mac_setting(vf, mac))

    def set_vf_vlan(self, pf: str, vf: int, vlan: int, qos: int, proto: VlanProto) -> None:
        """Set the port VLAN (802.1Q through ``IFLA_VF_VLAN``, which every driver takes;
        802.1ad through ``IFLA_VF_VLAN_LIST``)."""
        if proto is VlanProto.DOT1Q:
            self._set_vf(pf, vf, "vlan", _vf_setting(_IFLA_VF_VLAN, vf, vlan, qos))
            return
        setting = _vf_vlan_list_setting(vf, vlan, qos, proto.ethertype)
        self._set_vf(pf, vf, "vlan_proto", setting)

    def set_vf_rate(self, pf: str, vf: int, min_tx_rate: int, max_tx_rate: int) -> None:
        """Set both transmit rates in one ``IFLA_VF_RATE``."""
        knob = "min_tx_rate" if min_tx_rate else "max_tx_rate"
        setting = _vf_setting(_IFLA_VF_RATE, vf, min_tx_rate, max_tx_rate)
        self._set_vf(pf, vf, knob, setting)

    def set_vf_spoofchk(self, pf: str, vf: int, on: bool) -> None:
        """Turn spoof checking on or off."""
        self._set_vf(pf, vf, "spoofchk", _vf_setting(_IFLA_VF_SPOOFCHK, vf, int(on)))

    def set_vf_trust(self, pf: str, vf: int, on: bool) -> None:
        """Turn trusted mode on or off."""
        self._set_vf(pf, vf, "trust", _vf_setting(_IFLA_VF_TRUST, vf, int(on)))

    def set_vf_link_state(self, pf: str, vf: int, state: VfLinkState) -> None:
        """Set the administrative link state."""
        setting = _vf_setting(_IFLA_VF_LINK_STATE, vf, state.kernel_value)
        self._set_vf(pf, vf, "link_state", setting)

    def set_vf_query_rss(self, pf: str, vf: int, on: bool) -> None:
        """Allow or forbid RSS queries."""
        self._set_vf(pf, vf, "query_rss", _vf_setting(_IFLA_VF_RSS_QUERY_EN, vf, int(on)))

    # -- links ----------------------------------------------------------------------

    def get_link(self, name: str, netns: NetnsRef | None = None) -> LinkInfo:
        """One ``RTM_GETLINK`` by name."""
        msg = _link_request(
            _nla_string(_IFLA_IFNAME, name) + _nla_u32(_IFLA_EXT_MASK, _RTEXT_FILTER_SKIP_STATS)
        )
        replies = self._request("get_link", msg, _RTM_GETLINK, "look up", name, netns)
        return _link_info(replies[0])

    def links(self, netns: NetnsRef | None = None) -> tuple[LinkInfo, ...]:
        """Every interface in *netns* (one dump)."""
        msg = _link_request(_nla_u32(_IFLA_EXT_MASK, _RTEXT_FILTER_SKIP_STATS))
        where = "host namespace" if netns is None else _describe_netns(netns)
        replies = self._request(
            "dump_links", msg, _RTM_GETLINK, "list links", where, netns, dump=True
        )
        return tuple(_link_info(reply) for reply in replies)

    def set_link(
        self,
        index: int,
        netns: NetnsRef | None = None,
        *,
        mac: str | None = None,
        mtu: int | None = None,
        up: bool | None = None,
    ) -> None:
        """Change MAC, MTU and/or the up flag of *index* in one request."""
        attributes = b""
        what = []
        if mac is not None:
            attributes += _nla(_IFLA_ADDRESS, _mac_bytes(mac))
            what.append(f"mac {mac}")
        if mtu is not None:
            attributes += _nla_u32(_IFLA_MTU, mtu)
            what.append(f"mtu {mtu}")
        if up is not None:
            what.append("up" if up else "down")
        msg = _link_request(
            attributes,
            index=index,
            flags=_IFF_UP if up else 0,
            change=_IFF_UP if up is not None else 0,
        )
        self._request(
            "set_link", msg, _RTM_SETLINK, "set " + ", ".join(what), f"ifindex {index}", netns
        )

    def rename_link(self, index: int, name: str, netns: NetnsRef | None = None) -> None:
        """Rename *index* to *name*."""
        msg = _link_request(_nla_string(_IFLA_IFNAME, name), index=index)
        self._request(
            "rename_link", msg, _RTM_SETLINK, f"rename to {name!r}", f"ifindex {index}", netns
        )

    def move_link(
        self,
        index: int,
        name: str,
        *,
        netns: NetnsRef | None = None,
        target: NetnsRef | None = None,
    ) -> None:
        """Move and rename in one ``RTM_SETLINK`` (``IFLA_NET_NS_FD`` + ``IFLA_IFNAME``)."""
        if target is None:
            fd, owned = self._home_fd, False
        else:
            fd, owned = _open_netns(target)
        try:
            msg = _link_request(
                _nla_u32(_IFLA_NET_NS_FD, fd) + _nla_string(_IFLA_IFNAME, name), index=index
            )
            where = "the host namespace" if target is None else _describe_netns(target)
            self._request(
                "move_link",
                msg,
                _RTM_SETLINK,
                f"move into {where} as {name!r}",
                f"ifindex {index}",
                netns,
            )
        finally:
            if owned:
                os.close(fd)

    def delete_altname(self, index: int, altname: str, netns: NetnsRef | None = None) -> None:
        """``RTM_DELLINKPROP`` with one ``IFLA_ALT_IFNAME``."""
        props = _nla(_IFLA_PROP_LIST | _NLA_F_NESTED, _nla_string(_IFLA_ALT_IFNAME, altname))
        msg = _link_request(props, index=index)
        self._request(
            "del_altname",
            msg,
            _RTM_DELLINKPROP,
            f"delete altname {altname!r}",
            f"ifindex {index}",
            netns,
        )

    # -- addresses, routes and sysctls (no pyroute2) ----------------------------------

    def add_address(
        self,
        index: int,
        address: IpInterface,
        netns: NetnsRef | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """One ``RTM_NEWADDR`` (``NLM_F_CREATE`` and ``NLM_F_REPLACE`` or ``NLM_F_EXCL``)."""
        self._request(
            "add_addr",
            _address_request(index, address),
            _RTM_NEWADDR,
            f"add address {address}",
            f"ifindex {index}",
            netns,
            flags=_NLM_F_CREATE | (_NLM_F_REPLACE if replace else _NLM_F_EXCL),
        )

    def addresses(self, index: int, netns: NetnsRef | None = None) -> tuple[IpInterface, ...]:
        """One ``RTM_GETADDR`` dump, filtered to *index*."""
        replies = self._request(
            "dump_addr",
            _RawMessage(_IFADDRMSG.pack(0, 0, 0, 0, 0)),
            _RTM_GETADDR,
            "list addresses",
            f"ifindex {index}",
            netns,
            dump=True,
        )
        found = (_decode_address(reply, index) for reply in replies)
        return tuple(address for address in found if address is not None)

    def add_route(self, index: int, route: Route, netns: NetnsRef | None = None) -> None:
        """One ``RTM_NEWROUTE`` (``NLM_F_CREATE | NLM_F_APPEND``)."""
        self._request(
            "add_route",
            _route_request(index, route),
            _RTM_NEWROUTE,
            f"add route {route}",
            f"ifindex {index}",
            netns,
            flags=_NLM_F_CREATE | _NLM_F_APPEND,
        )

    def routes(
        self, index: int, netns: NetnsRef | None = None, *, table: int = RT_TABLE_MAIN
    ) -> tuple[Route, ...]:
        """One ``RTM_GETROUTE`` dump, filtered to unicast routes through *index* in
        *table*."""
        replies = self._request(
            "dump_route",
            _RawMessage(_RTMSG.pack(0, 0, 0, 0, 0, 0, 0, 0, 0)),
            _RTM_GETROUTE,
            "list routes",
            f"ifindex {index}",
            netns,
            dump=True,
        )
        return tuple(route for reply in replies for route in _decode_routes(reply, index, table))

    def set_link_sysctl(
        self, name: str, key: LinkSysctl, value: int, netns: NetnsRef | None = None
    ) -> None:
        """Write ``/proc/sys/net/<family>/conf/<name>/<setting>`` from a thread that
        entered *netns* (not a netlink request: not counted in :attr:`requests`)."""
        operation = f"set {key} to {value}"
        if not name or "/" in name or name in (".", "..") or key not in LINK_SYSCTLS:
            raise kernel_error(errno.EINVAL, operation, repr(name))
        family, setting = LINK_SYSCTLS[key]
        path = f"/proc/sys/net/{family}/conf/{name}/{setting}"
        if netns is None:
            fd, owned = self._home_fd, False
        else:
            fd, owned = _open_netns(netns)
        where = "the host namespace" if netns is None else _describe_netns(netns)
        try:
            _in_netns(fd, functools.partial(_write_file, path, f"{int(value)}\n"), where)
        except OSError as e:
            raise kernel_error(e.errno or errno.EIO, operation, name) from None
        finally:
            if owned:
                os.close(fd)

    # -- devlink ---------------------------------------------------------------------

    def eswitch_mode(self, pci_address: str) -> str | None:
        """``DEVLINK_CMD_ESWITCH_GET`` for ``pci/<address>``; None when the device has no
        devlink instance, its driver has no eswitch, or the kernel has no devlink."""
        try:
            from pyroute2 import DL
            from pyroute2.netlink import NLM_F_REQUEST
            from pyroute2.netlink.devlink import DEVLINK_NAMES, devlinkcmd
            from pyroute2.netlink.exceptions import NetlinkError
        except ImportError:
            return None
        self.requests["devlink"] += 1
        try:
            dl = DL()
        except Exception:
            return None
        try:
            msg = devlinkcmd()
            msg["cmd"] = DEVLINK_NAMES["DEVLINK_CMD_ESWITCH_GET"]
            msg["version"] = 1
            msg["attrs"] = [
                ("DEVLINK_ATTR_BUS_NAME", "pci"),
                ("DEVLINK_ATTR_DEV_NAME", pci_address),
            ]
            replies = tuple(dl.nlm_request(msg, msg_type=dl.prid, msg_flags=NLM_F_REQUEST))
        except NetlinkError as e:
            if e.code in (errno.ENODEV, errno.EOPNOTSUPP, errno.ENOENT, errno.EINVAL):
                return None
            raise kernel_error(e.code, "read eswitch mode", pci_address) from None
        finally:
            dl.close()
        for reply in replies:
            mode = reply.get_attr("DEVLINK_ATTR_ESWITCH_MODE")
            if mode is not None:
                return {0: "legacy", 1: "switchdev"}.get(mode, str(mode))
        return None

    def set_eswitch_mode(self, pci_address: str, mode: str) -> None:
        """``DEVLINK_CMD_ESWITCH_SET`` of ``DEVLINK_ATTR_ESWITCH_MODE`` (0 legacy, 1
        switchdev) for ``pci/<address>``, through pyroute2's devlink socket."""
        value = {"legacy": 0, "switchdev": 1}.get(mode)
        operation = f"set eswitch mode {mode}"
        if value is None:
            raise kernel_error(errno.EINVAL, operation, pci_address, detail="unknown mode")
        try:
            from pyroute2 import DL
            from pyroute2.netlink import NLM_F_ACK, NLM_F_REQUEST
            from pyroute2.netlink.devlink import DEVLINK_NAMES, devlinkcmd
            from pyroute2.netlink.exceptions import NetlinkError
        except ImportError:
            raise kernel_error(
                errno.EOPNOTSUPP, operation, pci_address, detail="no devlink support"
            ) from None
        self.requests["devlink_set"] += 1
        try:
            dl = DL()
        except Exception:
            raise kernel_error(
                errno.EOPNOTSUPP, operation, pci_address, detail="the kernel has no devlink"
            ) from None
        try:
            msg = devlinkcmd()
            msg["cmd"] = DEVLINK_NAMES["DEVLINK_CMD_ESWITCH_SET"]
            msg["version"] = 1
            msg["attrs"] = [
                ("DEVLINK_ATTR_BUS_NAME", "pci"),
                ("DEVLINK_ATTR_DEV_NAME", pci_address),
                ("DEVLINK_ATTR_ESWITCH_MODE", value),
            ]
            tuple(dl.nlm_request(msg, msg_type=dl.prid, msg_flags=NLM_F_REQUEST | NLM_F_ACK))
        except NetlinkError as e:
            raise kernel_error(e.code, operation, pci_address) from None
        finally:
            dl.close()


def _ns_key(fd: int) -> tuple[int, int]:
    st = os.fstat(fd)
    return st.st_dev, st.st_ino


def _describe_netns(ref: NetnsRef) -> str:
    return f"namespace fd {ref}" if isinstance(ref, int) else f"namespace {os.fspath(ref)}"


# -- events ------------------------------------------------------------------------------

_NETLINK_KOBJECT_UEVENT = 15
_RTMGRP_LINK = 1
_UEVENT_KERNEL_GROUP = 1


class KernelEvents:
    """Wakes a watcher when the kernel reports a change: a link's (rtnetlink
    ``RTM_NEWLINK``/``RTM_DELLINK``: up, down, carrier, rename, gone) or a device's (a
    kobject uevent: PCI function added or removed, driver bound or unbound, netdev added
    or removed).

    The messages are not decoded: what changed is read again from sysfs and netlink by
    the watcher, so a lost or coalesced message (a full socket buffer) costs nothing but
    that read. Both sockets belong to the namespace *netns_fd* refers to (uevents of PCI
    devices reach the initial namespace only). Where the kernel refuses the uevent
    socket, link events still arrive and :attr:`missing` says what is not watched.

    Args:
        netns_fd: A handle of the namespace to watch (None: the calling thread's).
    """

    def __init__(self, netns_fd: int | None = None) -> None:
        self.missing: list[str] = []
        self._sockets: list[socket.socket] = []
        self._wake_r, self._wake_w = os.pipe2(os.O_CLOEXEC | os.O_NONBLOCK)
        try:
            for family, group, what in (
                (_NETLINK_ROUTE, _RTMGRP_LINK, "link events"),
                (_NETLINK_KOBJECT_UEVENT, _UEVENT_KERNEL_GROUP, "device events (uevents)"),
            ):
                opener = functools.partial(_event_socket, family, group)
                try:
                    sock = opener() if netns_fd is None else _in_netns(netns_fd, opener)
                except OSError as e:
                    if family == _NETLINK_ROUTE:
                        raise kernel_error(e.errno or errno.EIO, "watch", what) from None
                    self.missing.append(f"{what}: {e.strerror or e}")
                    continue
                self._sockets.append(sock)
        except BaseException:
            self.close()
            raise

    def wait(self, timeout: float | None) -> bool:
        """Block until an event arrives (True), *timeout* seconds pass or :meth:`close`
        is called from another thread (False). Every queued message is consumed."""
        sockets, wake = list(self._sockets), self._wake_r
        if not sockets:
            return False
        fds = [sock.fileno() for sock in sockets]
        try:
            readable, _, _ = select.select([*fds, wake], [], [], timeout)
        except (OSError, ValueError):  # closed meanwhile
            return False
        if wake in readable or self._wake_r < 0:
            return False
        got = False
        for sock, fd in zip(sockets, fds, strict=True):
            if fd in readable:
                got = _drain(sock) or got
        return got

    def close(self) -> None:
        """Close the sockets and wake a :meth:`wait` in another thread."""
        if self._wake_w < 0:
            return
        with contextlib.suppress(OSError):
            os.write(self._wake_w, b"x")
        for sock in self._sockets:
            sock.close()
        self._sockets = []
        os.close(self._wake_r)
        os.close(self._wake_w)
        self._wake_r = self._wake_w = -1


def _event_socket(family: int, groups: int) -> socket.socket:
    kind = socket.SOCK_DGRAM if family == _NETLINK_KOBJECT_UEVENT else socket.SOCK_RAW
    sock = socket.socket(socket.AF_NETLINK, kind | socket.SOCK_CLOEXEC, family)
    try:
        sock.bind((0, groups))
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_RCVBUF, _RCVBUF)
        sock.setblocking(False)
    except BaseException:
        sock.close()
        raise
    return sock


def _drain(sock: socket.socket) -> bool:
    """Read every queued message; True if there was one (or the queue overflowed)."""
    got = False
    while True:
        try:
            sock.recv(1 << 16)
        except BlockingIOError:
            return got
        except OSError as e:
            if e.errno != errno.ENOBUFS:  # ENOBUFS: messages were dropped, still news
                return got
        got = True
