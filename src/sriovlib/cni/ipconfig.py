"""An IPAM result, translated into address and route calls on the netlink backend.

The kernel work — ``RTM_NEWADDR``/``RTM_NEWROUTE`` and their dumps in the pod's
namespace, the per-interface sysctls — is :mod:`sriovlib.netlink`'s
(:meth:`~sriovlib.netlink.NetlinkBackend.add_address`,
:meth:`~sriovlib.netlink.NetlinkBackend.add_route`...; no pyroute2 import on that path).
This module only decides what to ask, from the result's ``ips`` and ``routes``, and
turns a refusal into the CNI error a runtime should see.

What :func:`configure` does, in this order (as CNI's ``ConfigureIface``): every address
on the interface; the interface's ``arp_notify`` and ``ndisc_notify`` sysctls (best
effort, so neighbours learn the new addresses); every route through the interface, a
route without ``gw`` going through the gateway of the first address of its family, or
on-link when there is none. An address or route that already exists counts as done, so
a repeated call is harmless.
"""

from __future__ import annotations

import contextlib
import errno
import ipaddress
from collections.abc import Sequence
from typing import Any

from sriovlib.cni.protocol import KERNEL_REFUSED, CniError
from sriovlib.netlink import (
    RT_TABLE_MAIN,
    KernelError,
    LinkInfo,
    LinkSysctl,
    NetlinkBackend,
    Route,
)

__all__ = ["NOTIFY_SYSCTLS", "RouteKey", "addresses", "configure", "plan_routes", "route_keys"]

#: One route as CHECK compares them: (destination CIDR, gateway or None).
RouteKey = tuple[str, str | None]

#: The sysctls that make the interface announce new addresses (gratuitous ARP, NA).
NOTIFY_SYSCTLS: tuple[LinkSysctl, ...] = ("ipv4.arp_notify", "ipv6.ndisc_notify")


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


def _route(entry: dict[str, Any]) -> Route:
    """A result ``routes`` entry (``dst``, ``gw``; 1.1.0 adds ``mtu``, ``advmss``,
    ``priority``, ``table``, ``scope``) as a :class:`Route`."""
    return Route(
        entry["dst"],
        entry.get("gw") or None,
        table=entry.get("table", RT_TABLE_MAIN),
        scope=entry.get("scope"),
        priority=entry.get("priority"),
        mtu=entry.get("mtu"),
        advmss=entry.get("advmss"),
    )


def configure(
    nl: NetlinkBackend,
    netns: str,
    link: LinkInfo,
    ips: Sequence[dict[str, Any]],
    routes: Sequence[dict[str, Any]],
) -> None:
    """Put *ips* (result ``ips`` entries) and *routes* (result ``routes``) on *link*,
    the interface in *netns*.

    Raises:
        CniError: code 103 (the kernel refused an address or a route).
    """
    planned = plan_routes(ips, routes)
    try:
        for ip in ips:
            try:
                address = ipaddress.ip_interface(ip["address"])
                nl.add_address(link.index, address, netns, replace=True)
            except (KernelError, ValueError) as e:
                raise CniError(
                    KERNEL_REFUSED, f"adding address {ip['address']} failed", str(e)
                ) from None
        for key in NOTIFY_SYSCTLS:
            with contextlib.suppress(KernelError):
                nl.set_link_sysctl(link.name, key, 1, netns)
        for entry in planned:
            try:
                nl.add_route(link.index, _route(entry), netns)
            except KernelError as e:
                if e.errno == errno.EEXIST:
                    continue
                raise _route_error(entry, str(e)) from None
            except (TypeError, ValueError) as e:
                raise _route_error(entry, str(e)) from None
    finally:
        nl.forget_namespaces()


def _route_error(entry: dict[str, Any], detail: str) -> CniError:
    via = entry.get("gw") or "link"
    return CniError(KERNEL_REFUSED, f"adding route {entry['dst']} via {via} failed", detail)


def addresses(nl: NetlinkBackend, netns: str, link: LinkInfo) -> set[str]:
    """The addresses on *link*, as ``address/prefix`` strings (one dump)."""
    return {str(address) for address in nl.addresses(link.index, netns)}


def route_keys(nl: NetlinkBackend, netns: str, link: LinkInfo) -> set[RouteKey]:
    """The routes through *link* in the main table, as (dst CIDR, gateway) (one dump)."""
    return {
        (str(route.dst), None if route.gateway is None else str(route.gateway))
        for route in nl.routes(link.index, netns)
    }
