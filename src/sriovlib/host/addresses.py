"""Addresses and routes on an interface in a pod's namespace.

What :meth:`Addresses.configure` does, in this order (as CNI's ``ConfigureIface``):
every address on the interface (an address already there is updated); the interface's
``arp_notify`` and ``ndisc_notify`` sysctls (best effort, so neighbours learn the new
addresses); every route through the interface (one already there counts as done), so
a repeated call is harmless. Which addresses and routes to ask for is the caller's
business (the CNI plugin takes them from the IPAM result).
"""

from __future__ import annotations

import contextlib
import errno
from collections.abc import Sequence

from sriovlib.exceptions import AddressingRefused, KernelError
from sriovlib.host.node import NodeContext
from sriovlib.models import IpInterface, LinkInfo, NetnsRef, Route
from sriovlib.netlink import LinkSysctl

__all__ = ["NOTIFY_SYSCTLS", "Addresses"]

#: The sysctls that make an interface announce new addresses (gratuitous ARP, NA).
NOTIFY_SYSCTLS: tuple[LinkSysctl, ...] = ("ipv4.arp_notify", "ipv6.ndisc_notify")


class Addresses:
    """Reads (:meth:`link`, :meth:`addresses`, :meth:`routes`) and sets
    (:meth:`configure`, :meth:`set_link`) an interface's addresses, routes, MTU and up
    flag in a namespace."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node

    def link(self, ifname: str, netns: NetnsRef | None = None) -> LinkInfo:
        """The interface *ifname* in *netns* (None: the host's namespace)."""
        return self.node.netlink.get_link(ifname, netns)

    def set_link(
        self,
        ifname: str,
        *,
        mtu: int | None = None,
        up: bool | None = None,
        netns: NetnsRef | None = None,
    ) -> LinkInfo:
        """Set *ifname*'s MTU and/or up flag (one request; nothing when both are None)
        and return the interface as it is then."""
        link = self.node.netlink.get_link(ifname, netns)
        if mtu is None and up is None:
            return link
        self.node.netlink.set_link(link.index, netns, mtu=mtu, up=up)
        return self.node.netlink.get_link(ifname, netns)

    def configure(
        self,
        netns: NetnsRef,
        link: LinkInfo,
        addresses: Sequence[IpInterface],
        routes: Sequence[Route],
    ) -> None:
        """Put *addresses* and *routes* on *link*, the interface in *netns*.

        Raises:
            AddressingRefused: the kernel refused an address or a route (its errno in
                ``cause``); what came before it stays (the caller removes the interface).
        """
        nl = self.node.netlink
        try:
            for address in addresses:
                try:
                    nl.add_address(link.index, address, netns, replace=True)
                except KernelError as e:
                    raise AddressingRefused(f"address {address}", e) from None
            for key in NOTIFY_SYSCTLS:
                with contextlib.suppress(KernelError):
                    nl.set_link_sysctl(link.name, key, 1, netns)
            for route in routes:
                try:
                    nl.add_route(link.index, route, netns)
                except KernelError as e:
                    if e.errno == errno.EEXIST:
                        continue
                    raise AddressingRefused(f"route {route.dst} via {_via(route)}", e) from None
        finally:
            nl.forget_namespaces()

    def addresses(self, netns: NetnsRef, link: LinkInfo) -> tuple[IpInterface, ...]:
        """The addresses on *link* (one dump)."""
        return self.node.netlink.addresses(link.index, netns)

    def routes(self, netns: NetnsRef, link: LinkInfo) -> tuple[Route, ...]:
        """The routes through *link* in the main table (one dump)."""
        return self.node.netlink.routes(link.index, netns)


def _via(route: Route) -> str:
    return "link" if route.gateway is None else str(route.gateway)
