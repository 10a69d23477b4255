"""Addresses, routes and per-interface sysctls: the real kernel and the fake kernel side by
side.

The same scenario runs on :class:`~sriovlib.netlink.KernelNetlink` (a veth in a
throw-away namespace, reached from this process's namespace) and on
:class:`~sriovlib.testing.fakenetlink.FakeNetlink` (a virtual link in a fake namespace);
every step's outcome — done, or the errno — and every listing must be the same. That is
how the fake's rules (EEXIST, ENETDOWN, on-link gateways, what taking a link down or
moving it drops) are kept honest.
"""

from __future__ import annotations

import errno
import ipaddress
import itertools
import os
import subprocess
import sys
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import pytest

from sriovlib.netlink import (
    KernelError,
    KernelNetlink,
    NetlinkBackend,
    Route,
)
from sriovlib.testing import FakeSysfs
from sriovlib.testing.fakenetlink import FakeNetlink

from .test_attach_release import _REASON, ip

pytestmark = pytest.mark.kernel

_counter = itertools.count()


class Side:
    """One backend with a link ``va`` (down) in namespace ``ns`` and an empty ``other``."""

    def __init__(
        self,
        nl: NetlinkBackend,
        ns: str,
        other: str,
        index: int,
        sysctl: Callable[[str, str, str], int],
    ) -> None:
        self.nl, self.ns, self.other, self.index = nl, ns, other, index
        self._sysctl = sysctl

    def step(self, action: Callable[[], object]) -> str:
        """``ok`` or the errno's name."""
        try:
            action()
        except KernelError as e:
            return e.errno_name
        return "ok"

    def addresses(self, ns: str | None = None) -> list[str]:
        found = self.nl.addresses(self.index, ns or self.ns)
        return sorted(str(a) for a in found if not a.is_link_local)

    def routes(self) -> list[str]:
        found = self.nl.routes(self.index, self.ns)
        return sorted(str(r) for r in found if not r.dst.is_link_local)

    def sysctl(self, ns: str, name: str, key: str) -> int:
        return self._sysctl(ns, name, key)


@pytest.fixture
def real(tmp_path: Path) -> Iterator[Side]:
    """The real kernel: veth ``va`` (its peer ``vb`` down, so no carrier) in a throw-away
    namespace, reached from this process's namespace."""
    if _REASON is not None:
        pytest.skip(_REASON)
    n = next(_counter)
    ns, other = f"sriovlib-a{os.getpid()}-{n}", f"sriovlib-b{os.getpid()}-{n}"
    ip("netns", "add", ns)
    ip("netns", "add", other)
    nl = KernelNetlink()
    try:
        ip("-n", ns, "link", "add", "va", "type", "veth", "peer", "name", "vb")
        index = nl.get_link("va", f"/run/netns/{ns}").index

        def sysctl(netns: str, name: str, key: str) -> int:
            family, setting = key.split(".")
            out = ip(
                "netns",
                "exec",
                os.path.basename(netns),
                "cat",
                f"/proc/sys/net/{family}/conf/{name}/{setting}",
            )
            return int(out)

        yield Side(nl, f"/run/netns/{ns}", f"/run/netns/{other}", index, sysctl)
    finally:
        nl.close()
        for name in (ns, other):
            subprocess.run(["ip", "netns", "del", name], check=False, capture_output=True)


@pytest.fixture
def fake(tmp_path: Path) -> Side:
    """The fake kernel: a virtual link ``va``, down, in a fake namespace."""
    kernel = FakeNetlink(FakeSysfs(tmp_path / "root"))
    ns, other = kernel.add_netns("a"), kernel.add_netns("b")
    index = kernel.add_link("va", ns)

    def sysctl(netns: str, name: str, key: str) -> int:
        return kernel.sysctls(name, netns).get(key, 0)

    return Side(kernel, ns, other, index, sysctl)


def _scenario(side: Side) -> list[tuple[str, object]]:
    """Every step with its outcome, in order."""
    nl, ns, index = side.nl, side.ns, side.index
    out: list[tuple[str, object]] = []

    def step(label: str, action: Callable[[], object]) -> None:
        out.append((label, side.step(action)))

    def address(text: str, *, replace: bool = False) -> Callable[[], None]:
        return lambda: nl.add_address(index, ipaddress.ip_interface(text), ns, replace=replace)

    def route(dst: str, gateway: str | None = None, **options: Any) -> Callable[[], None]:
        return lambda: nl.add_route(index, Route(dst, gateway, **options), ns)

    step("link route, link down", route("10.9.0.0/16"))
    step("IPv4 address, link down", address("10.1.0.2/24"))
    step("gateway route, link down", route("0.0.0.0/0", "10.1.0.1"))
    step("IPv6 address, link down", address("fd00:1::2/64"))
    step("IPv6 link-local gateway, link down", route("fd00:7::/64", "fe80::1"))
    nl.set_link(index, ns, up=True)
    out.append(("addresses after up", side.addresses()))
    step("same IPv4 address", address("10.1.0.2/24"))
    step("same IPv4 address, replace", address("10.1.0.2/24", replace=True))
    step("IPv4 address, other prefix", address("10.1.0.2/16"))
    step("IPv6 address, other prefix", address("fd00:1::2/48"))
    step("IPv6 address, other prefix, replace", address("fd00:1::2/64", replace=True))
    step("gateway off-link", route("0.0.0.0/0", "10.2.0.1"))
    step("gateway on-link", route("0.0.0.0/0", "10.1.0.1"))
    step("same route", route("0.0.0.0/0", "10.1.0.1"))
    step("same destination, other gateway", route("0.0.0.0/0", "10.1.0.7"))
    step("route onto the link", route("10.50.0.0/16"))
    step("gateway reached by that route", route("10.60.0.0/16", "10.50.3.4"))
    step("gateway with link scope", route("10.4.0.0/16", "10.1.0.1", scope=253))
    step("route with metrics", route("10.70.0.0/16", "10.1.0.1", priority=5, mtu=1400))
    step("route in table 100", route("10.80.0.0/16", "10.1.0.1", table=100))
    step("IPv6 gateway off-link", route("fd00:9::/64", "fd00:2::1"))
    step("IPv6 gateway on-link", route("::/0", "fd00:1::1"))
    step("IPv6 second gateway", route("::/0", "fd00:1::7"))
    step("IPv6 link-local gateway", route("fd00:8::/64", "fe80::1"))
    step("route, no such interface", lambda: nl.add_route(99999, Route("10.9.0.0/16"), ns))
    step(
        "address, no such interface",
        lambda: nl.add_address(99999, ipaddress.ip_interface("10.3.0.1/24"), ns),
    )
    out.append(("addresses", side.addresses()))
    out.append(("routes", side.routes()))
    out.append(("table 100", sorted(str(r) for r in nl.routes(index, ns, table=100))))
    out.append(("no such interface", nl.addresses(99999, ns)))
    step("arp_notify", lambda: nl.set_link_sysctl("va", "ipv4.arp_notify", 1, ns))
    step("ndisc_notify", lambda: nl.set_link_sysctl("va", "ipv6.ndisc_notify", 1, ns))
    step("sysctl, no such interface", lambda: nl.set_link_sysctl("nope", "ipv4.arp_notify", 1, ns))
    out.append(
        ("sysctls", [side.sysctl(ns, "va", k) for k in ("ipv4.arp_notify", "ipv6.ndisc_notify")])
    )
    nl.set_link(index, ns, up=False)
    out.append(("addresses after down", side.addresses()))
    out.append(("routes after down", side.routes()))
    nl.set_link(index, ns, up=True)
    out.append(("routes after up", side.routes()))
    nl.move_link(index, "va", netns=ns, target=side.other)
    moved = nl.get_link("va", side.other).index
    out.append(
        (
            "addresses after a move",
            [str(a) for a in nl.addresses(moved, side.other) if not a.is_link_local],
        )
    )
    out.append(
        (
            "sysctls after a move",
            [side.sysctl(side.other, "va", k) for k in ("ipv4.arp_notify", "ipv6.ndisc_notify")],
        )
    )
    nl.forget_namespaces()
    return out


def test_the_fake_kernel_agrees_with_the_real_one(real: Side, fake: Side) -> None:
    """Step by step, the same outcomes and the same listings."""
    expected = _scenario(real)
    assert expected == _scenario(fake)
    outcomes = dict(expected)
    # what the scenario is about, pinned down (kernel 6.x)
    assert outcomes["link route, link down"] == "ENETDOWN"
    assert outcomes["gateway off-link"] == "ENETUNREACH"
    assert outcomes["IPv6 gateway off-link"] == "EHOSTUNREACH"
    assert outcomes["same IPv4 address"] == outcomes["same route"] == "EEXIST"
    assert outcomes["route, no such interface"] == "ENODEV"
    assert outcomes["sysctl, no such interface"] == "ENOENT"
    assert "0.0.0.0/0 via 10.1.0.7" in outcomes["routes"]  # type: ignore[operator]
    assert "::/0 via fd00:1::7" in outcomes["routes"]  # type: ignore[operator]


def test_addresses_and_routes_do_not_import_pyroute2(real: Side) -> None:
    """The CNI's address path (add, list, sysctls) never loads pyroute2."""
    code = f"""
import ipaddress, sys
from sriovlib.netlink import KernelNetlink, Route
nl = KernelNetlink()
ns = {real.ns!r}
nl.add_address({real.index}, ipaddress.ip_interface("10.5.0.2/24"), ns, replace=True)
nl.add_address({real.index}, ipaddress.ip_interface("10.5.0.2/24"), ns, replace=True)
nl.set_link_sysctl("va", "ipv4.arp_notify", 1, ns)
print([str(a) for a in nl.addresses({real.index}, ns)], nl.routes({real.index}, ns))
nl.close()
print("pyroute2" in sys.modules)
"""
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout.splitlines()
    assert ["['10.5.0.2/24'] ()", "False"] == out


def test_a_namespace_that_is_not_one(real: Side, tmp_path: Path) -> None:
    """A file that is no namespace: EINVAL, for a request and for a sysctl alike."""
    stray = tmp_path / "stray"
    stray.touch()
    for call in (
        lambda: real.nl.addresses(real.index, str(stray)),
        lambda: real.nl.set_link_sysctl("va", "ipv4.arp_notify", 1, str(stray)),
    ):
        with pytest.raises(KernelError) as caught:
            call()
        assert (caught.value.errno, caught.value.operation) == (
            errno.EINVAL,
            "enter network namespace",
        )
