"""Addresses and routes inside the pod's namespace, as an IPAM result asks for them.

:class:`KernelIp` speaks rtnetlink (``RTM_NEWADDR``, ``RTM_NEWROUTE`` and their dumps)
over a socket opened inside the pod's namespace by a short-lived thread, the way
:mod:`sriovlib.netlink` reaches other namespaces; the messages are a few fixed structs,
encoded here by hand so that configuring an address costs no pyroute2 import.
(:mod:`sriovlib.netlink` is the place for this once it grows address support.)

What :meth:`KernelIp.configure` does, in this order (as CNI's ``ConfigureIface``): every
address on the interface; the interface's ``arp_notify`` and ``ndisc_notify`` sysctls
(best effort, so neighbours learn the new addresses); every route through the interface,
a route without ``gw`` going through the gateway of the first address of its family, or
on-link when there is none. An address or route that already exists counts as done, so
a repeated call is harmless.
"""

from __future__ import annotations

import collections
import contextlib
import ctypes
import errno
import ipaddress
import os
import socket
import struct
import threading
from collections.abc import Callable, Sequence
from typing import Any, Protocol, TypeVar

from sriovlib.cni.protocol import KERNEL_REFUSED, CniError

__all__ = ["IpSetup", "KernelIp", "Route", "plan_routes"]

T = TypeVar("T")

#: One route as the commands see it: (destination CIDR, gateway or None).
Route = tuple[str, str | None]

_HEADER = struct.Struct("=IHHII")
_IFADDRMSG = struct.Struct("=BBBBI")
_RTMSG = struct.Struct("=BBBBBBBBI")
_NLMSG_ERROR, _NLMSG_DONE = 2, 3
_RTM_NEWADDR, _RTM_GETADDR, _RTM_NEWROUTE, _RTM_GETROUTE = 20, 22, 24, 26
_F_REQUEST, _F_ACK, _F_DUMP = 0x1, 0x4, 0x300
_F_REPLACE, _F_CREATE, _F_APPEND = 0x100, 0x400, 0x800
_IFA_ADDRESS, _IFA_LOCAL, _IFA_BROADCAST = 1, 2, 4
_RTA_DST, _RTA_OIF, _RTA_GATEWAY, _RTA_PRIORITY, _RTA_METRICS, _RTA_TABLE = 1, 4, 5, 6, 8, 15
_RTAX_MTU, _RTAX_ADVMSS = 2, 8
_RT_TABLE_MAIN, _RTPROT_BOOT, _RTN_UNICAST = 254, 3, 1
_SCOPE_UNIVERSE, _SCOPE_LINK = 0, 253
_CLONE_NEWNET = 0x40000000


class IpSetup(Protocol):
    """What the commands need to put an IPAM result on an interface and check it."""

    def configure(
        self,
        netns: str,
        ifname: str,
        ips: Sequence[dict[str, Any]],
        routes: Sequence[dict[str, Any]],
    ) -> None:
        """Add *ips* (result ``ips`` entries) and *routes* (result ``routes``) to
        interface *ifname* in *netns*."""

    def addresses(self, netns: str, ifname: str) -> tuple[str, ...]:
        """The addresses on *ifname*, as ``address/prefix`` strings."""

    def routes(self, netns: str, ifname: str) -> tuple[Route, ...]:
        """The routes through *ifname* in the main table, as (dst CIDR, gateway)."""


def plan_routes(
    ips: Sequence[dict[str, Any]], routes: Sequence[dict[str, Any]]
) -> list[dict[str, Any]]:
    """*routes* with the implicit gateway filled in: a route without ``gw`` goes through
    the gateway of the first address of its family that has one."""
    gateways: dict[int, str] = {}
    for ip in ips:
        if ip.get("gateway"):
            version = ipaddress.ip_interface(ip["address"]).version
            gateways.setdefault(version, ip["gateway"])
    planned = []
    for route in routes:
        entry = dict(route)
        version = ipaddress.ip_network(route["dst"], strict=False).version
        if not entry.get("gw") and version in gateways:
            entry["gw"] = gateways[version]
        planned.append(entry)
    return planned


def _setns(fd: int) -> None:
    setns = getattr(os, "setns", None)  # Python >= 3.12
    if setns is not None:
        setns(fd, _CLONE_NEWNET)
        return
    libc = ctypes.CDLL(None, use_errno=True)
    if libc.setns(fd, _CLONE_NEWNET) != 0:
        code = ctypes.get_errno()
        raise OSError(code, os.strerror(code))


def _inside(netns: str, work: Callable[[], T]) -> T:
    """Run *work* in a throw-away thread that entered *netns* (the caller never moves)."""
    try:
        fd = os.open(netns, os.O_RDONLY | os.O_CLOEXEC)
    except OSError as e:
        raise CniError(KERNEL_REFUSED, f"cannot open network namespace {netns}", str(e)) from None
    outcome: dict[str, Any] = {}

    def run() -> None:
        try:
            _setns(fd)
            outcome["value"] = work()
        except BaseException as e:
            outcome["error"] = e

    try:
        thread = threading.Thread(target=run, name="sriovlib-cni-netns", daemon=True)
        thread.start()
        thread.join()
    finally:
        os.close(fd)
    if "error" in outcome:
        error = outcome["error"]
        if isinstance(error, CniError):
            raise error
        if isinstance(error, OSError):
            raise CniError(KERNEL_REFUSED, f"network setup in {netns} failed", str(error)) from None
        raise error
    value: T = outcome["value"]
    return value


def _nla(kind: int, payload: bytes) -> bytes:
    return struct.pack("=HH", 4 + len(payload), kind) + payload + b"\0" * (-len(payload) % 4)


def _attributes(data: bytes, offset: int) -> dict[int, bytes]:
    found = {}
    while offset + 4 <= len(data):
        length, kind = struct.unpack_from("=HH", data, offset)
        if length < 4:
            break
        found[kind & 0x3FFF] = data[offset + 4 : offset + length]
        offset += (length + 3) & ~3
    return found


class _Rtnl:
    """A NETLINK_ROUTE socket in the current thread's namespace."""

    def __init__(self, counter: collections.Counter[str]) -> None:
        self.sock = socket.socket(socket.AF_NETLINK, socket.SOCK_RAW | socket.SOCK_CLOEXEC, 0)
        self.sock.bind((0, 0))
        self.sock.settimeout(10.0)
        self.seq = 0
        self.counter = counter

    def close(self) -> None:
        self.sock.close()

    def request(
        self, kind: str, msg_type: int, flags: int, body: bytes, *, dump: bool = False
    ) -> list[bytes]:
        """Send one message; return the payloads of the replies (for a dump) or []."""
        self.seq += 1
        self.counter[kind] += 1
        # NLM_F_REPLACE and NLM_F_ROOT share a bit: a dump is said explicitly
        flags |= _F_REQUEST | (_F_DUMP if dump else _F_ACK)
        self.sock.send(_HEADER.pack(_HEADER.size + len(body), msg_type, flags, self.seq, 0) + body)
        replies: list[bytes] = []
        while True:
            data = self.sock.recv(1 << 16)
            offset = 0
            while offset + _HEADER.size <= len(data):
                length, reply_type, _, seq, _ = _HEADER.unpack_from(data, offset)
                if length < _HEADER.size:
                    break
                payload = data[offset + _HEADER.size : offset + length]
                offset += (length + 3) & ~3
                if seq != self.seq:
                    continue
                if reply_type == _NLMSG_ERROR:
                    (code,) = struct.unpack_from("=i", payload)
                    if code:
                        raise OSError(-code, os.strerror(-code))
                    return replies
                if reply_type == _NLMSG_DONE:
                    return replies
                replies.append(payload)


class KernelIp:
    """:class:`IpSetup` on the real kernel; ``requests`` counts netlink requests by kind."""

    def __init__(self) -> None:
        self.requests: collections.Counter[str] = collections.Counter()

    def configure(
        self,
        netns: str,
        ifname: str,
        ips: Sequence[dict[str, Any]],
        routes: Sequence[dict[str, Any]],
    ) -> None:
        """Add the addresses, set the notify sysctls, add the routes."""
        planned = plan_routes(ips, routes)

        def work() -> None:
            index = _index(ifname, netns)
            rtnl = _Rtnl(self.requests)
            try:
                for ip in ips:
                    _add_address(rtnl, index, ip["address"])
                _notify_sysctls(ifname)
                for route in planned:
                    _add_route(rtnl, index, route)
            finally:
                rtnl.close()

        _inside(netns, work)

    def addresses(self, netns: str, ifname: str) -> tuple[str, ...]:
        """One ``RTM_GETADDR`` dump, filtered to *ifname*."""

        def work() -> tuple[str, ...]:
            index = _index(ifname, netns)
            rtnl = _Rtnl(self.requests)
            try:
                replies = rtnl.request(
                    "dump_addr", _RTM_GETADDR, 0, _IFADDRMSG.pack(0, 0, 0, 0, 0), dump=True
                )
            finally:
                rtnl.close()
            found = []
            for payload in replies:
                family, prefix, _, _, owner = _IFADDRMSG.unpack_from(payload)
                if owner != index:
                    continue
                attrs = _attributes(payload, _IFADDRMSG.size)
                raw = attrs.get(_IFA_LOCAL) or attrs.get(_IFA_ADDRESS)
                if raw is not None:
                    found.append(f"{socket.inet_ntop(family, raw)}/{prefix}")
            return tuple(found)

        return _inside(netns, work)

    def routes(self, netns: str, ifname: str) -> tuple[Route, ...]:
        """One ``RTM_GETROUTE`` dump, filtered to *ifname* and the main table."""

        def work() -> tuple[Route, ...]:
            index = _index(ifname, netns)
            rtnl = _Rtnl(self.requests)
            try:
                replies = rtnl.request(
                    "dump_route",
                    _RTM_GETROUTE,
                    0,
                    _RTMSG.pack(0, 0, 0, 0, 0, 0, 0, 0, 0),
                    dump=True,
                )
            finally:
                rtnl.close()
            found: list[Route] = []
            for payload in replies:
                family, dst_len, _, _, table, _, _, kind, _ = _RTMSG.unpack_from(payload)
                attrs = _attributes(payload, _RTMSG.size)
                if _RTA_TABLE in attrs:
                    (table,) = struct.unpack("=I", attrs[_RTA_TABLE])
                oif = struct.unpack("=I", attrs[_RTA_OIF])[0] if _RTA_OIF in attrs else None
                if kind != _RTN_UNICAST or table != _RT_TABLE_MAIN or oif != index:
                    continue
                zero = "0.0.0.0" if family == socket.AF_INET else "::"  # noqa: S104
                dst = socket.inet_ntop(family, attrs[_RTA_DST]) if _RTA_DST in attrs else zero
                gateway = attrs.get(_RTA_GATEWAY)
                found.append(
                    (
                        str(ipaddress.ip_network(f"{dst}/{dst_len}", strict=False)),
                        None if gateway is None else socket.inet_ntop(family, gateway),
                    )
                )
            return tuple(found)

        return _inside(netns, work)


def _index(ifname: str, netns: str) -> int:
    try:
        return socket.if_nametoindex(ifname)
    except OSError:
        raise CniError(
            KERNEL_REFUSED, f"no interface {ifname!r} in network namespace {netns}"
        ) from None


def _add_address(rtnl: _Rtnl, index: int, cidr: str) -> None:
    interface = ipaddress.ip_interface(cidr)
    family = socket.AF_INET if interface.version == 4 else socket.AF_INET6
    packed = interface.ip.packed
    body = _IFADDRMSG.pack(family, interface.network.prefixlen, 0, _SCOPE_UNIVERSE, index)
    body += _nla(_IFA_LOCAL, packed) + _nla(_IFA_ADDRESS, packed)
    if interface.version == 4 and interface.network.prefixlen < 31:
        body += _nla(_IFA_BROADCAST, interface.network.broadcast_address.packed)
    try:
        rtnl.request("add_addr", _RTM_NEWADDR, _F_CREATE | _F_REPLACE, body)
    except OSError as e:
        raise CniError(KERNEL_REFUSED, f"adding address {cidr} failed", str(e)) from None


def _add_route(rtnl: _Rtnl, index: int, route: dict[str, Any]) -> None:
    network = ipaddress.ip_network(route["dst"], strict=False)
    family = socket.AF_INET if network.version == 4 else socket.AF_INET6
    gateway = route.get("gw")
    table = route.get("table", _RT_TABLE_MAIN)
    scope = route.get("scope", _SCOPE_UNIVERSE if gateway else _SCOPE_LINK)
    body = _RTMSG.pack(
        family,
        network.prefixlen,
        0,
        0,
        table if table < 256 else 0,
        _RTPROT_BOOT,
        scope,
        _RTN_UNICAST,
        0,
    )
    body += _nla(_RTA_DST, network.network_address.packed)
    body += _nla(_RTA_OIF, struct.pack("=I", index))
    if gateway:
        body += _nla(_RTA_GATEWAY, ipaddress.ip_address(gateway).packed)
    if "priority" in route:
        body += _nla(_RTA_PRIORITY, struct.pack("=I", route["priority"]))
    if table >= 256:
        body += _nla(_RTA_TABLE, struct.pack("=I", table))
    metrics = b""
    if "mtu" in route:
        metrics += _nla(_RTAX_MTU, struct.pack("=I", route["mtu"]))
    if "advmss" in route:
        metrics += _nla(_RTAX_ADVMSS, struct.pack("=I", route["advmss"]))
    if metrics:
        body += _nla(_RTA_METRICS, metrics)
    try:
        rtnl.request("add_route", _RTM_NEWROUTE, _F_CREATE | _F_APPEND, body)
    except OSError as e:
        if e.errno == errno.EEXIST:
            return
        raise CniError(
            KERNEL_REFUSED, f"adding route {route['dst']} via {gateway or 'link'} failed", str(e)
        ) from None


def _notify_sysctls(ifname: str) -> None:
    for path in (
        f"/proc/sys/net/ipv4/conf/{ifname}/arp_notify",
        f"/proc/sys/net/ipv6/conf/{ifname}/ndisc_notify",
    ):
        with contextlib.suppress(OSError), open(path, "w") as f:
            f.write("1")
