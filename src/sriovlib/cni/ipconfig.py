"""An IPAM result, translated into the addresses and routes the attachment service sets.

The kernel work — addresses, the ``arp_notify``/``ndisc_notify`` sysctls, routes, in the
pod's namespace — is the Host's (:meth:`sriovlib.host.Host.configure_addresses`, called
by the attachment service). This module only decides what to ask for, from the result's
``ips`` and ``routes`` (:func:`address_plan`), and reads back what CHECK compares: a
route without ``gw`` goes through the gateway of the first address of its family, or
on-link when there is none.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from typing import Any

from sriovlib.attachments import AddressPlan
from sriovlib.cni.protocol import KERNEL_REFUSED, CniError
from sriovlib.host import Host
from sriovlib.models import RT_TABLE_MAIN, LinkInfo, Route

__all__ = ["RouteKey", "address_plan", "addresses", "plan_routes", "route_keys"]

#: One route as CHECK compares them: (destination CIDR, gateway or None).
RouteKey = tuple[str, str | None]


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
    ``priority``, ``table``, ``scope``) as a :class:`~sriovlib.models.Route`."""
    return Route(
        entry["dst"],
        entry.get("gw") or None,
        table=entry.get("table", RT_TABLE_MAIN),
        scope=entry.get("scope"),
        priority=entry.get("priority"),
        mtu=entry.get("mtu"),
        advmss=entry.get("advmss"),
    )


def address_plan(ips: Sequence[dict[str, Any]], routes: Sequence[dict[str, Any]]) -> AddressPlan:
    """What to put on the interface for a result's *ips* and *routes*.

    Raises:
        CniError: code 103, naming an address or a route no kernel could take.
    """
    addresses = []
    for ip in ips:
        try:
            addresses.append(ipaddress.ip_interface(ip["address"]))
        except ValueError as e:
            raise CniError(
                KERNEL_REFUSED, f"adding address {ip['address']} failed", str(e)
            ) from None
    planned = []
    for entry in plan_routes(ips, routes):
        try:
            planned.append(_route(entry))
        except (TypeError, ValueError) as e:
            via = entry.get("gw") or "link"
            raise CniError(
                KERNEL_REFUSED, f"adding route {entry['dst']} via {via} failed", str(e)
            ) from None
    return AddressPlan(tuple(addresses), tuple(planned))


def addresses(host: Host, netns: str, link: LinkInfo) -> set[str]:
    """The addresses on *link*, as ``address/prefix`` strings (one dump)."""
    return {str(address) for address in host.addresses(netns, link)}


def route_keys(host: Host, netns: str, link: LinkInfo) -> set[RouteKey]:
    """The routes through *link* in the main table, as (dst CIDR, gateway) (one dump)."""
    return {
        (str(route.dst), None if route.gateway is None else str(route.gateway))
        for route in host.routes(netns, link)
    }
