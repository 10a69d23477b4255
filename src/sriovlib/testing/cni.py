"""Testing kit for the CNI plugin: fakes, veth-backed VFs, cnitool and the reference plugins.

**Unit tier.** :class:`FakeIpam` (an in-memory host-local) and
:class:`~sriovlib.testing.fakenetlink.FakeNetlink` (which also keeps the addresses and
routes of its links) let :func:`sriovlib.cni.__main__.run` run every command in-process
on a fake node; see :func:`fake_context`.

**Kernel tier: veth-backed VFs.** :class:`VethVfNetlink` is a
:class:`~sriovlib.netlink.NetlinkBackend` for a node whose VFs are *fake PCI functions
with real netdevs*:

- what is real: every VF netdev is one end of a real veth pair in a throw-away "host"
  namespace (the peer ends wait in a second namespace); moving it into the pod's
  namespace, renaming it, its MAC, MTU, up state, addresses, routes and sysctls are all
  done by the real kernel (through :class:`~sriovlib.netlink.KernelNetlink`), and the
  pod namespaces are real;
- what is fake: the PCI side. A :class:`~sriovlib.testing.FakeSysfs` tree describes the
  PF and its VFs, and the VF settings a PF driver keeps (admin MAC, VLAN, QoS, protocol,
  spoofchk, trust, link state, rates) live in a JSON file next to it, updated under
  ``flock`` so concurrent plugin processes share them. The PF netdev exists only in that
  tree. After every move or rename the tree's ``net/`` entries are brought in line with
  where the kernel says each veth is, so sysfs lookups see what they would on a node.
- how a VF is told apart: veths have no parent device, so each VF is identified by its
  veth's ifindex, recorded when the veth is created (an ifindex survives moves between
  namespaces unless it collides, which it cannot here: every pod namespace holds only
  ``lo`` and veths that came from the one host namespace).

:func:`veth_backend` is the factory the tests' CNI binary
(:mod:`sriovlib.testing.cni_binary`) loads through
``SRIOVLIB_TEST_NETLINK=sriovlib.testing.cni:veth_backend``; :class:`VethNode` builds
such a node (namespaces, veths, tree) and tears it down, and :func:`cni_binary_dir`
makes a ``CNI_PATH`` directory whose ``sriov`` is that binary.

**Client tier.** :func:`cnitool_path` (``cnitool`` built from the Go module proxy) and
:func:`cni_plugins_dir` (Debian's reference plugins) live in
:mod:`sriovlib.testing.clienttools` and are re-exported here; both raise
:class:`ToolUnavailable` with a one-line reason where that is impossible, so tests can
skip.
"""

from __future__ import annotations

import collections
import contextlib
import errno
import fcntl
import ipaddress
import json
import os
import shutil
import subprocess
import sys
import uuid
from collections.abc import Iterator, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from sriovlib.cni.commands import Context
from sriovlib.cni.ipam import IpamRequest
from sriovlib.cni.protocol import CniError, Result
from sriovlib.models import ZERO_MAC, PciAddress, VfLinkState, VfState, VlanProto
from sriovlib.netlink import (
    RT_TABLE_MAIN,
    EventSource,
    IpInterface,
    KernelNetlink,
    LinkInfo,
    LinkSysctl,
    NetnsRef,
    Route,
    kernel_error,
)
from sriovlib.testing.builder import FakeSysfs
from sriovlib.testing.fakenetlink import FakeNetlink

__all__ = [
    "FakeIpam",
    "VethNode",
    "VethVfNetlink",
    "cni_binary_dir",
    "fake_context",
    "veth_backend",
]


# -- unit tier ---------------------------------------------------------------------------------


class FakeIpam:
    """An in-memory stand-in for host-local: one subnet, one address per attachment.

    Attributes:
        allocations: ``(container id, ifname) -> address/prefix``.
        calls: ``(command, container id, ifname)`` in order.
        failures: ``command -> CniError`` raised by the next call of that command.
    """

    def __init__(self, subnet: str = "10.56.217.0/24", *, routes: Sequence[str] = ("0.0.0.0/0",)):
        self.network = ipaddress.ip_network(subnet)
        self.gateway = str(next(self.network.hosts()))
        self.routes = tuple(routes)
        self.allocations: dict[tuple[str, str], str] = {}
        self.calls: list[tuple[str, str | None, str | None]] = []
        self.failures: dict[str, CniError] = {}
        self.missing = False

    def locate(self, plugin: str, path: tuple[str, ...]) -> None:
        """Found, unless ``missing`` is set."""
        if self.missing:
            raise CniError(104, f"failed to find IPAM plugin {plugin!r}")

    def _enter(self, command: str, request: IpamRequest) -> None:
        self.calls.append((command, request.container_id, request.ifname))
        failure = self.failures.pop(command, None)
        if failure is not None:
            raise failure

    def add(self, request: IpamRequest) -> Result:
        """Allocate the next free address (the same one again for a known attachment)."""
        self._enter("ADD", request)
        key = (request.container_id or "", request.ifname or "")
        if key not in self.allocations:
            taken = set(self.allocations.values())
            for host in list(self.network.hosts())[1:]:
                candidate = f"{host}/{self.network.prefixlen}"
                if candidate not in taken:
                    self.allocations[key] = candidate
                    break
            else:
                raise CniError(104, "no free address")
        return {
            "cniVersion": request.version,
            "ips": [{"address": self.allocations[key], "gateway": self.gateway}],
            "routes": [{"dst": dst} for dst in self.routes],
            "dns": {},
        }

    def delete(self, request: IpamRequest) -> None:
        """Free the attachment's address (nothing to do when it has none)."""
        self._enter("DEL", request)
        self.allocations.pop((request.container_id or "", request.ifname or ""), None)

    def check(self, request: IpamRequest) -> None:
        """Fail unless the attachment has an address."""
        self._enter("CHECK", request)
        if (request.container_id or "", request.ifname or "") not in self.allocations:
            raise CniError(7, "no address for this attachment")

    def gc(self, request: IpamRequest) -> None:
        """Free addresses of attachments missing from ``cni.dev/valid-attachments``."""
        self._enter("GC", request)
        config = json.loads(request.config)
        listed = config.get("cni.dev/valid-attachments") or []
        valid = {(a.get("containerID"), a.get("ifname")) for a in listed if isinstance(a, dict)}
        for key in list(self.allocations):
            if key not in valid:
                del self.allocations[key]

    def status(self, request: IpamRequest) -> None:
        """Always ready (unless a failure is queued)."""
        self._enter("STATUS", request)


def fake_context(
    kernel: FakeNetlink,
    state_dir: str | os.PathLike[str],
    *,
    ipam: FakeIpam | None = None,
    lock_timeout: float = 2.0,
) -> Context:
    """A :class:`~sriovlib.cni.commands.Context` on a fake node (one Host for all calls)."""
    host = kernel.host(verify_timeout=0.0)
    return Context(
        host_factory=lambda: host,
        state_dir=Path(state_dir),
        ipam=ipam if ipam is not None else FakeIpam(),
        lock_timeout=lock_timeout,
    )


# -- kernel tier: veth-backed VFs --------------------------------------------------------------

_STATE_FILE = ".veth-vfs.json"
_LOCK_FILE = ".veth-vfs.lock"


@contextlib.contextmanager
def _locked(root: Path) -> Iterator[None]:
    fd = os.open(root / _LOCK_FILE, os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX)
        yield
    finally:
        os.close(fd)


def _load_state(root: Path) -> dict[str, Any]:
    try:
        data: dict[str, Any] = json.loads((root / _STATE_FILE).read_text())
    except FileNotFoundError:
        return {"vfs": {}}
    return data


def _save_state(root: Path, state: Mapping[str, Any]) -> None:
    temp = root / f".{_STATE_FILE}.{os.getpid()}"
    temp.write_text(json.dumps(state, indent=1, sort_keys=True))
    os.replace(temp, root / _STATE_FILE)


class VethVfNetlink:
    """:class:`~sriovlib.netlink.NetlinkBackend` for veth-backed VFs (module docs).

    Args:
        root: The fake tree's root (the directory that holds ``sys/``).
        host_netns: The namespace that plays the host's (a path).
    """

    def __init__(self, root: str | os.PathLike[str], host_netns: str) -> None:
        self.root = Path(root)
        self.host_netns = host_netns
        self.kernel = KernelNetlink(netns=host_netns)
        self.requests: collections.Counter[str] = self.kernel.requests
        self.sync_dumps = 0
        self._sync()

    def __repr__(self) -> str:
        return f"VethVfNetlink(root={str(self.root)!r}, host_netns={self.host_netns!r})"

    # VF settings: the JSON register

    def _vf_entry(self, state: dict[str, Any], pf: str, vf: int, knob: str) -> dict[str, Any]:
        for entry in state["vfs"].values():
            if entry["pf"] == pf and entry["index"] == vf:
                settings: dict[str, Any] = entry["settings"]
                return settings
        raise kernel_error(errno.EINVAL, f"set VF {knob}", f"{pf} vf {vf}", knob=knob)

    def vf_states(self, pf: str) -> tuple[VfState, ...]:
        """The register's entries for *pf*, in VF order."""
        self.requests["vf_list"] += 1
        with _locked(self.root):
            state = _load_state(self.root)
        entries = sorted(
            (e for e in state["vfs"].values() if e["pf"] == pf), key=lambda e: e["index"]
        )
        if not entries and not (self.root / "sys/class/net" / pf).exists():
            raise kernel_error(errno.ENODEV, "read VF list", pf)
        return tuple(_vf_state(e["index"], e["settings"]) for e in entries)

    def _set(self, pf: str, vf: int, knob: str, **values: Any) -> None:
        self.requests["set_vf"] += 1
        with _locked(self.root):
            state = _load_state(self.root)
            self._vf_entry(state, pf, vf, knob).update(values)
            _save_state(self.root, state)

    def set_vf_mac(self, pf: str, vf: int, mac: str) -> None:
        """Set the admin MAC (multicast refused with EINVAL, as drivers do)."""
        if int(mac[:2], 16) & 1:
            raise kernel_error(errno.EINVAL, "set VF mac", f"{pf} vf {vf}", knob="mac")
        self._set(pf, vf, "mac", mac=mac)

    def set_vf_vlan(self, pf: str, vf: int, vlan: int, qos: int, proto: VlanProto) -> None:
        """Set VLAN, QoS and protocol (vlan > 4095 or qos > 7: EINVAL)."""
        if vlan > 4095 or qos > 7:
            raise kernel_error(errno.EINVAL, "set VF vlan", f"{pf} vf {vf}", knob="vlan")
        self._set(pf, vf, "vlan", vlan=vlan, qos=qos, vlan_proto=str(proto))

    def set_vf_rate(self, pf: str, vf: int, min_tx_rate: int, max_tx_rate: int) -> None:
        """Set both rates (min above a non-zero max: EINVAL)."""
        if max_tx_rate and min_tx_rate > max_tx_rate:
            raise kernel_error(errno.EINVAL, "set VF rate", f"{pf} vf {vf}", knob="max_tx_rate")
        self._set(pf, vf, "rate", min_tx_rate=min_tx_rate, max_tx_rate=max_tx_rate)

    def set_vf_spoofchk(self, pf: str, vf: int, on: bool) -> None:
        """Set spoof checking."""
        self._set(pf, vf, "spoofchk", spoofchk=on)

    def set_vf_trust(self, pf: str, vf: int, on: bool) -> None:
        """Set trusted mode."""
        self._set(pf, vf, "trust", trust=on)

    def set_vf_link_state(self, pf: str, vf: int, state: VfLinkState) -> None:
        """Set the link state."""
        self._set(pf, vf, "link_state", link_state=str(state))

    def set_vf_query_rss(self, pf: str, vf: int, on: bool) -> None:
        """Set RSS query permission."""
        self._set(pf, vf, "query_rss", query_rss=on)

    # links: the real kernel, with the VF's PCI address filled in as the parent

    def _with_parent(self, link: LinkInfo) -> LinkInfo:
        with _locked(self.root):
            state = _load_state(self.root)
        for address, entry in state["vfs"].items():
            if entry["ifindex"] == link.index:
                return attrs.evolve(link, parent=address)
        return link

    def get_link(self, name: str, netns: NetnsRef | None = None) -> LinkInfo:
        """Look a link up (real kernel)."""
        return self._with_parent(self.kernel.get_link(name, netns))

    def links(self, netns: NetnsRef | None = None) -> tuple[LinkInfo, ...]:
        """Every link in a namespace (real kernel)."""
        return tuple(self._with_parent(link) for link in self.kernel.links(netns))

    def set_link(
        self,
        index: int,
        netns: NetnsRef | None = None,
        *,
        mac: str | None = None,
        mtu: int | None = None,
        up: bool | None = None,
    ) -> None:
        """Change MAC/MTU/up (real kernel), then refresh the tree."""
        self.kernel.set_link(index, netns, mac=mac, mtu=mtu, up=up)
        if netns is None:
            self._sync()

    def rename_link(self, index: int, name: str, netns: NetnsRef | None = None) -> None:
        """Rename (real kernel), then refresh the tree."""
        try:
            self.kernel.rename_link(index, name, netns)
        finally:
            self._sync()

    def move_link(
        self,
        index: int,
        name: str,
        *,
        netns: NetnsRef | None = None,
        target: NetnsRef | None = None,
    ) -> None:
        """Move and rename (real kernel), then refresh the tree."""
        try:
            self.kernel.move_link(index, name, netns=netns, target=target)
        finally:
            self._sync()

    def delete_altname(self, index: int, altname: str, netns: NetnsRef | None = None) -> None:
        """Drop an altname (real kernel)."""
        self.kernel.delete_altname(index, altname, netns)

    def add_address(
        self,
        index: int,
        address: IpInterface,
        netns: NetnsRef | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Add an address (real kernel)."""
        self.kernel.add_address(index, address, netns, replace=replace)

    def addresses(self, index: int, netns: NetnsRef | None = None) -> tuple[IpInterface, ...]:
        """A link's addresses (real kernel)."""
        return self.kernel.addresses(index, netns)

    def add_route(self, index: int, route: Route, netns: NetnsRef | None = None) -> None:
        """Add a route (real kernel)."""
        self.kernel.add_route(index, route, netns)

    def routes(
        self, index: int, netns: NetnsRef | None = None, *, table: int = RT_TABLE_MAIN
    ) -> tuple[Route, ...]:
        """A link's routes (real kernel)."""
        return self.kernel.routes(index, netns, table=table)

    def set_link_sysctl(
        self, name: str, key: LinkSysctl, value: int, netns: NetnsRef | None = None
    ) -> None:
        """Set a per-interface sysctl (real kernel)."""
        self.kernel.set_link_sysctl(name, key, value, netns)

    def eswitch_mode(self, pci_address: str) -> str | None:
        """Fake PFs have no devlink."""
        return None

    def set_eswitch_mode(self, pci_address: str, mode: str) -> None:
        """Fake PFs have no devlink."""
        raise kernel_error(errno.EOPNOTSUPP, f"set eswitch mode {mode}", pci_address)

    def forget_namespaces(self) -> None:
        """Close sockets in pod namespaces."""
        self.kernel.forget_namespaces()

    def watch(self) -> EventSource:
        """The real kernel's link and device events in the host namespace."""
        return self.kernel.watch()

    def close(self) -> None:
        """Close every socket."""
        self.kernel.close()

    def _sync(self) -> None:
        """Make the tree's VF ``net/`` entries say where the kernel has each veth."""
        sys_dir = self.root / "sys"
        with _locked(self.root):
            # the dump happens under the lock: a view taken before another process's move
            # must not be written after that process's own (newer) sync
            home = {link.index: link for link in self.kernel.links()}
            self.requests["dump_links"] -= 1  # the fake's bookkeeping, not the plugin's
            self.sync_dumps += 1
            state = _load_state(self.root)
            for address, entry in state["vfs"].items():
                net = sys_dir / "bus/pci/devices" / address / "net"
                link = home.get(entry["ifindex"])
                wanted = link.name if link is not None else None
                for present in os.listdir(net):
                    if present != wanted:
                        shutil.rmtree(net / present, ignore_errors=True)
                        with contextlib.suppress(FileNotFoundError):
                            (sys_dir / "class/net" / present).unlink()
                if link is None:
                    continue
                directory = net / link.name
                directory.mkdir(exist_ok=True)
                for attribute, value in (
                    ("address", link.mac),
                    ("mtu", str(link.mtu)),
                    ("operstate", "up" if link.up else "down"),
                    ("type", "1"),
                    ("ifindex", str(link.index)),
                ):
                    (directory / attribute).write_text(value + "\n")
                class_link = sys_dir / "class/net" / link.name
                if not class_link.is_symlink():
                    class_link.symlink_to(os.path.relpath(directory.resolve(), class_link.parent))


def _vf_state(index: int, settings: Mapping[str, Any]) -> VfState:
    link_state = settings.get("link_state", "auto")
    return VfState(
        index=index,
        mac=settings.get("mac", ZERO_MAC),
        vlan=settings.get("vlan", 0),
        qos=settings.get("qos", 0),
        vlan_proto=VlanProto(settings.get("vlan_proto", "802.1q")),
        spoofchk=settings.get("spoofchk", True),
        trust=settings.get("trust", False),
        link_state=VfLinkState(link_state),
        min_tx_rate=settings.get("min_tx_rate", 0),
        max_tx_rate=settings.get("max_tx_rate", 0),
        query_rss=settings.get("query_rss", False),
    )


def veth_backend(root: str, environ: Mapping[str, str]) -> VethVfNetlink:
    """The factory ``SRIOVLIB_TEST_NETLINK`` names: the host namespace comes from
    ``SRIOVLIB_VETH_HOST_NETNS``."""
    return VethVfNetlink(root, environ["SRIOVLIB_VETH_HOST_NETNS"])


def _ip(*args: str, check: bool = True) -> subprocess.CompletedProcess[str]:
    return subprocess.run(["ip", *args], capture_output=True, text=True, check=check)


@attrs.define
class VethNode:
    """A node with one fake PF whose *num_vfs* VFs are real veths (see the module docs).

    Use as a context manager; everything (namespaces, veths, tree) goes away on exit.

    Attributes:
        root: The fake tree's root.
        host_netns: Path of the namespace playing the host.
        wire_netns: Name of the namespace that holds the veths' peer ends.
        pf_netdev: The PF's interface name (in the tree only).
        vfs: The VFs' PCI addresses, by index.
        vf_netdevs: Their veth names in the host namespace, by index.
        pf_link: Give the PF a real netdev too: a veth in the host namespace whose peer
            waits in the wire namespace, so that :meth:`set_pf_carrier` (the peer going
            down or up) stands in for the PF losing and regaining carrier.
    """

    root: Path
    num_vfs: int = 4
    tag: str = attrs.field(factory=lambda: uuid.uuid4().hex[:6])
    host_netns: str = ""
    wire_netns: str = ""
    pf_netdev: str = ""
    vfs: list[PciAddress] = attrs.field(factory=list)
    vf_netdevs: list[str] = attrs.field(factory=list)
    pods: list[str] = attrs.field(factory=list)
    made: int = 0
    pf_link: bool = False

    def __enter__(self) -> VethNode:
        try:
            self._build()
        except BaseException:
            self.close()
            raise
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def _build(self) -> None:
        from sriovlib.models import PciId

        fs = FakeSysfs(self.root)
        self.pf_netdev = f"vpf{self.tag}"
        pf = fs.add_pf(
            ids=PciId(0x15B3, 0x1017),
            driver="mlx5_core",
            vf_ids=PciId(0x15B3, 0x1018),
            vf_driver="mlx5_core",
            total_vfs=max(self.num_vfs, 1),
            num_vfs=self.num_vfs,
            netdev=self.pf_netdev,
        )
        carrier = self.root / "sys/class/net" / self.pf_netdev / "carrier"
        carrier.write_text("1\n")
        host, wire = f"sriovhost-{self.tag}", f"sriovwire-{self.tag}"
        _ip("netns", "add", host)
        self.host_netns = f"/run/netns/{host}"
        _ip("netns", "add", wire)
        self.wire_netns = wire
        _ip("-n", host, "link", "set", "lo", "up")
        if self.pf_link:
            _ip("-n", host, "link", "add", self.pf_netdev, "type", "veth",
                "peer", "name", "wpf", "netns", wire)  # fmt: skip
            _ip("-n", wire, "link", "set", "wpf", "up")
            _ip("-n", host, "link", "set", self.pf_netdev, "up")
        state: dict[str, Any] = {"vfs": {}}
        for index in range(self.num_vfs):
            address = pf.vf_address(index)
            name = f"v{self.tag}{index}"
            _ip(
                "-n",
                host,
                "link",
                "add",
                name,
                "type",
                "veth",
                "peer",
                "name",
                f"w{index}",
                "netns",
                wire,
            )
            _ip("-n", wire, "link", "set", f"w{index}", "up")
            shown = json.loads(_ip("-n", host, "-j", "link", "show", name).stdout)[0]
            state["vfs"][str(address)] = {
                "pf": self.pf_netdev,
                "index": index,
                "ifindex": shown["ifindex"],
                "settings": {},
            }
            # the builder named the VF netdevs after the PF; the veth names replace them
            net = self.root / "sys/bus/pci/devices" / str(address) / "net"
            for old in os.listdir(net):
                shutil.rmtree(net / old)
                (self.root / "sys/class/net" / old).unlink(missing_ok=True)
            self.vfs.append(address)
            self.vf_netdevs.append(name)
        _save_state(self.root, state)
        VethVfNetlink(self.root, self.host_netns).close()  # first sync of the tree

    def set_pf_carrier(self, carrier: bool) -> None:
        """Plug or unplug the PF's cable (with *pf_link*): its veth peer up or down."""
        if not self.pf_link:
            raise ValueError("this node's PF has no real netdev (pf_link=False)")
        _ip("-n", self.wire_netns, "link", "set", "wpf", "up" if carrier else "down")

    def add_pod(self) -> str:
        """A fresh pod namespace; returns its path."""
        self.made += 1  # not len(self.pods): a deleted pod's number must not come back
        name = f"sriovpod-{self.tag}-{self.made}"
        _ip("netns", "add", name)
        self.pods.append(name)
        return f"/run/netns/{name}"

    def delete_pod(self, path: str) -> None:
        """Delete a pod namespace (its veths are destroyed with it, unlike real VFs)."""
        name = os.path.basename(path)
        _ip("netns", "delete", name, check=False)
        if name in self.pods:
            self.pods.remove(name)

    def environ(self) -> dict[str, str]:
        """The variables that make the tests' CNI binary use this node."""
        return {
            "SRIOVLIB_SYSFS_ROOT": str(self.root),
            "SRIOVLIB_TEST_NETLINK": "sriovlib.testing.cni:veth_backend",
            "SRIOVLIB_VETH_HOST_NETNS": self.host_netns,
        }

    def vf_settings(self) -> dict[str, dict[str, Any]]:
        """Every VF's register entry (admin MAC, VLAN...), by PCI address."""
        with _locked(self.root):
            vfs: dict[str, dict[str, Any]] = _load_state(self.root)["vfs"]
        return {address: dict(entry["settings"]) for address, entry in vfs.items()}

    def vf_states(self) -> dict[str, VfState]:
        """Every VF's settings as its PF would report them, by PCI address."""
        with _locked(self.root):
            vfs: dict[str, Any] = _load_state(self.root)["vfs"]
        return {address: _vf_state(e["index"], e["settings"]) for address, e in vfs.items()}

    def host_links(self) -> dict[str, dict[str, Any]]:
        """``ip -j -d link show`` of the host namespace, by interface name."""
        shown = json.loads(
            _ip("-n", os.path.basename(self.host_netns), "-j", "-d", "link", "show").stdout
        )
        return {link["ifname"]: link for link in shown}

    def close(self) -> None:
        """Delete every namespace this node made (veths go with them)."""
        for name in list(self.pods):
            self.delete_pod(name)
        for path in (self.host_netns, self.wire_netns):
            if path:
                _ip("netns", "delete", os.path.basename(path), check=False)


# -- client tier: the tools (re-exported lazily), a CNI_PATH directory ---------------------

_CLIENT_TOOLS = ("ToolUnavailable", "cni_plugins_dir", "cnitool_path")


def __getattr__(name: str) -> Any:
    # the client tools are imported on first use: the tests' CNI binary imports this
    # module for its veth backend on every invocation and needs none of them
    if name in _CLIENT_TOOLS:
        from sriovlib.testing import clienttools

        return getattr(clienttools, name)
    raise AttributeError(f"module {__name__!r} has no attribute {name!r}")


def cni_binary_dir(directory: str | os.PathLike[str], plugins: Path | None = None) -> Path:
    """A ``CNI_PATH`` directory holding ``sriov`` — the tests' entry point
    (:mod:`sriovlib.testing.cni_binary`: the shipped code path, which also obeys
    ``SRIOVLIB_TEST_NETLINK`` and ``SRIOVLIB_TEST_KILL_AT``), run by this interpreter —
    and links to the reference plugins."""
    path = Path(directory)
    path.mkdir(parents=True, exist_ok=True)
    target = path / "sriov"
    target.write_text(
        f"#!{sys.executable}\nimport sys\nfrom sriovlib.testing.cni_binary import main\n"
        "sys.exit(main())\n"
    )
    target.chmod(0o755)
    if plugins is not None:
        for plugin in ("host-local", "static", "loopback"):
            if (plugins / plugin).exists():
                (path / plugin).symlink_to(plugins / plugin)
    return path
