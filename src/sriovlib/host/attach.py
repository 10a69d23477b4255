"""Attach and release: a VF's netdev into a pod's namespace and back, exactly as it was.

:meth:`Attach.snapshot` reads what a release needs (the VF's settings through its PF,
its netdev's host name, MAC, MTU, up state); :meth:`Attach.attach` applies VF settings
(through :class:`~sriovlib.host.settings.VfSettings`), moves and renames the netdev in
one request, sets its MAC and MTU and brings it up, and undoes everything on failure;
:meth:`Attach.release` puts it all back, also when the namespace is gone or the netdev
is under another name.

This is the kernel work only. Who holds which VF, and the record that survives a crash,
is :mod:`sriovlib.attachments`'.
"""

from __future__ import annotations

import errno
import os
from collections.abc import Callable

import attrs

from sriovlib.exceptions import DeviceNotFound, KernelError, KernelNotFound, Unsupported
from sriovlib.host.node import (
    USERSPACE_DRIVERS,
    NodeContext,
    bind,
    get_or_none,
    pf_netdev,
    retry_busy,
    set_mac,
)
from sriovlib.host.settings import VfSettings
from sriovlib.models import (
    ZERO_MAC,
    AttachSnapshot,
    InvalidVfConfig,
    LinkInfo,
    NetnsRef,
    PciAddress,
    PhysicalFunction,
    ReleaseReport,
    VfConfig,
    VfKnob,
    VfState,
    VirtualFunction,
    VlanProto,
    mac_problem,
)
from sriovlib.netlink import NetlinkBackend
from sriovlib.sysfs import check_netdev_name

__all__ = ["SAFE_DEFAULTS", "Attach"]

#: What :meth:`Attach.reset` puts a VF in when its state before an attach is lost:
#: no admin MAC, no port VLAN, spoof checking on, not trusted, no rate limits.
SAFE_DEFAULTS = VfState(
    index=0,
    mac=ZERO_MAC,
    vlan=0,
    qos=0,
    vlan_proto=VlanProto.DOT1Q,
    spoofchk=True,
    trust=False,
    min_tx_rate=0,
    max_tx_rate=0,
)

_MIN_MTU, _MAX_MTU = 68, 65535
_FALLBACK_NAME = "sriovvf%d"  # the kernel picks the first free number
# the settings each restore step of ``release`` writes
_RELEASE_KNOBS = {
    "mac": frozenset({VfKnob.MAC}),
    "trust": frozenset({VfKnob.TRUST}),
    "spoofchk": frozenset({VfKnob.SPOOFCHK}),
    "vlan": frozenset({VfKnob.VLAN, VfKnob.QOS, VfKnob.VLAN_8021AD}),
    "tx_rate": frozenset({VfKnob.MIN_TX_RATE, VfKnob.MAX_TX_RATE}),
    "query_rss": frozenset({VfKnob.QUERY_RSS}),
    "link_state": frozenset({VfKnob.LINK_STATE}),
}


class Attach:
    """Snapshots (:meth:`snapshot`), attaches (:meth:`attach`) and releases
    (:meth:`release`) VFs."""

    def __init__(self, node: NodeContext, settings: VfSettings) -> None:
        self.node = node
        self.settings = settings

    def snapshot(
        self,
        vf: VirtualFunction | PciAddress | str,
        netns: NetnsRef,
        ifname: str,
        mac: str | None = None,
    ) -> AttachSnapshot:
        """What :meth:`attach` with these arguments would record, read now and changing
        nothing: the VF's settings through its PF (one VF-list read) and its netdev's
        host name, MAC, MTU, up state and ifindex (one lookup; none for a VF without a
        netdev, whose *mac* is then not recorded either).

        For a caller that must keep the snapshot somewhere safe (on disk) before the
        first change: take it here, store it, then pass it to ``attach(...,
        snapshot=...)``, which then reads nothing again and, on failure, restores exactly
        this. Arguments are checked by ``attach``, not here.

        Raises:
            DeviceNotFound: no such VF, or its PF has no netdev.
            KernelError: a read failed.
        """
        current = self.node.fresh_vf(vf)
        pf = self.node.fresh_pf(current.pf_address)
        normal = None if mac is None else mac.strip().lower()
        return self._snapshot(pf, pf_netdev(pf), current, netns, ifname, normal)

    def _snapshot(
        self,
        pf: PhysicalFunction,
        pf_name: str,
        vf: VirtualFunction,
        netns: NetnsRef,
        ifname: str,
        mac: str | None,
    ) -> AttachSnapshot:
        state = self.node.read_vf(pf_name, vf.index)
        link = None if vf.netdev is None else self.node.netlink.get_link(vf.netdev)
        return AttachSnapshot(
            vf=vf.address,
            pf=pf.address,
            vf_index=vf.index,
            pf_netdev=pf_name,
            netns=_netns_path(netns),
            ifname=ifname,
            host_name=None if link is None else link.name,
            host_mac=None if link is None else link.mac,
            host_mtu=None if link is None else link.mtu,
            host_up=None if link is None else link.up,
            driver=vf.driver,
            vf_state=state,
            host_index=None if link is None else link.index,
            mac=None if link is None else mac,
        )

    def attach(
        self,
        vf: VirtualFunction | PciAddress | str,
        netns: NetnsRef,
        ifname: str,
        mac: str | None = None,
        mtu: int | None = None,
        *,
        config: VfConfig | None = None,
        snapshot: AttachSnapshot | None = None,
    ) -> AttachSnapshot:
        """Move the VF's netdev into *netns* as *ifname*, set MAC/MTU, bring it up.

        The move and the rename are one request: the kernel renames the netdev inside
        *netns*, so *ifname* may be the name of a host interface (``eth0``, ``net1``) and
        no host tool ever sees the interface renamed. *mac* and *mtu* are set on the
        netdev in the namespace. *config*, if given, is applied to the VF through the PF
        (as :meth:`configure_vf`, after the snapshot, so release undoes it): before the
        move, except its MAC, which is set last — after the netdev's own MAC — because
        a PF that enforces admin MACs (igb) refuses the VF's own change once one is set.

        A VF bound to vfio-pci (no netdev) gets only the snapshot and *config*.

        *snapshot*, if given, is one :meth:`snapshot` took for the same VF, *netns*,
        *ifname* and *mac*, with nothing changed since (the caller holds the VF): it is
        used instead of reading the VF and its netdev again. One that does not match —
        other arguments, or a netdev that is no longer the VF's — is refused with
        ValueError before anything changes.

        Returns the snapshot :meth:`release` needs (*snapshot* itself when given). If any
        step fails, everything done so far is undone to that snapshot (the error carries
        a note saying how that went).
        """
        mac = _check_attach_arguments(ifname, mac, mtu)
        current = self.node.fresh_vf(vf)
        pf = self.node.fresh_pf(current.pf_address)
        pf_name = pf_netdev(pf)
        self.settings.check_with_plugin(pf, current, config or VfConfig(), mtu)
        if config is not None:
            self.settings.refuse_known_unsupported(pf, pf_name, current, config)
        netns_path = _netns_path(netns)
        if netns_path is not None and not os.path.exists(netns_path):
            raise KernelNotFound("open network namespace", netns_path, errno.ENOENT)
        if current.netdev is None and current.driver not in USERSPACE_DRIVERS:
            raise DeviceNotFound(
                "netdev of VF",
                str(current.address),
                f"driver {current.driver}: it has no netdev in the host namespace "
                "(attached already?)",
            )
        if current.netdev is None and (mac is not None or mtu is not None):
            raise InvalidVfConfig(
                (
                    f"VF {current.address} is bound to {current.driver} and "
                    "has no netdev: mac and mtu need one (use config=VfConfig"
                    "(mac=...) for the VF's MAC)",
                )
            )
        if snapshot is None:
            snapshot = self._snapshot(pf, pf_name, current, netns, ifname, mac)
        else:
            _check_snapshot(snapshot, current, pf_name, netns_path, ifname, mac)
        state = snapshot.vf_state
        link = _host_link(snapshot)
        # the VF's own MAC goes first, the admin MAC last: a PF that enforces admin MACs
        # (igb) refuses the VF's own change once one is set
        admin_mac = config is not None and config.mac is not None and link is not None
        try:
            if config is not None:
                first = attrs.evolve(config, mac=None) if admin_mac else config
                state = self.settings.apply(pf, pf_name, current, first, state)
            if link is not None:
                self._plug(link, netns, ifname, mac, mtu)
            if admin_mac and config is not None:
                self.settings.apply(
                    pf,
                    pf_name,
                    current,
                    VfConfig(mac=config.mac),
                    self.node.read_vf(pf_name, current.index),
                )
        except BaseException as failure:
            try:
                report = self._release(snapshot, netns)
                note = f"the VF was restored ({_summary(report)})"
            except Exception as e:
                note = f"RESTORING THE VF FAILED: {e}"
            failure.add_note(note)
            raise
        finally:
            self.node.netlink.forget_namespaces()
        return snapshot

    def _plug(
        self, link: LinkInfo, netns: NetnsRef, ifname: str, mac: str | None, mtu: int | None
    ) -> None:
        nl = self.node.netlink
        nl.move_link(link.index, ifname, target=netns)
        inside = nl.get_link(ifname, netns)
        if link.name in inside.altnames:
            nl.delete_altname(inside.index, link.name, netns)  # the host name is stale here
        if mac is not None and mac != inside.mac:
            nl.set_link(inside.index, netns, mac=mac)
        if mtu is not None and mtu != inside.mtu:
            nl.set_link(inside.index, netns, mtu=mtu)
        nl.set_link(inside.index, netns, up=True)

    def release(self, snapshot: AttachSnapshot, netns: NetnsRef | None = None) -> ReleaseReport:
        """Undo :meth:`attach`: VF settings first, then the netdev's place, name, MAC,
        MTU and up state.

        Works when the namespace is gone (the kernel has returned the VF to the host
        under some name: it is found by PCI address), when the VF has no netdev (bound to
        vfio-pci: settings only), and when called again (nothing left to do). Problems
        that do not stop the rest are listed in the report's ``warnings``.

        Args:
            snapshot: What :meth:`attach` returned.
            netns: The namespace, if the snapshot has no path for it (given as an fd).
        """
        try:
            return self._release(snapshot, snapshot.netns if netns is None else netns)
        finally:
            self.node.netlink.forget_namespaces()

    def reset(
        self,
        vf: VirtualFunction | PciAddress | str,
        netns: NetnsRef | None = None,
        ifname: str | None = None,
    ) -> ReleaseReport:
        """Bring a VF home and into :data:`SAFE_DEFAULTS` when what it was before an
        attach is unknown (its snapshot is lost).

        The VF's netdev, if it is not on the host, is looked for in *netns* — as *ifname*
        or by its PCI parent — and moved back under the kernel's next ``sriovvfN`` name
        (its host name is not known any more). Then every setting the PF reports that
        differs from the defaults is written: admin MAC cleared, VLAN 0, QoS 0, 802.1Q,
        spoofchk on, trust off, no rate limits. A setting the driver does not support is
        left (no pod can have set it) and listed in the warnings.

        Raises:
            DeviceNotFound: no such VF, or its netdev is neither on the host nor in
                *netns*.
            KernelError: a setting or the move was refused (the others were tried; their
                failures are notes).
        """
        try:
            return self._reset(self.node.fresh_vf(vf), netns, ifname)
        finally:
            self.node.netlink.forget_namespaces()

    def _reset(
        self, vf: VirtualFunction, netns: NetnsRef | None, ifname: str | None
    ) -> ReleaseReport:
        nl = self.node.netlink
        pf = self.node.fresh_pf(vf.pf_address)
        pf_name = pf_netdev(pf)
        restored: list[str] = []
        warnings: list[str] = []
        where, name = "none", vf.netdev
        if vf.netdev is not None:
            where = "host"
        elif vf.driver not in USERSPACE_DRIVERS:
            link = self._in_namespace(vf.address, netns, ifname)
            if link is None:
                raise DeviceNotFound(
                    "netdev of VF",
                    str(vf.address),
                    f"it is not on the host and not in namespace {netns} "
                    f"(as {ifname or 'any name'})",
                )
            nl.move_link(link.index, _FALLBACK_NAME, netns=netns)
            restored.append("namespace")
            where, name = "namespace", self.node.fresh_vf(vf.address).netdev
        state = self.node.read_vf(pf_name, vf.index)
        failures: list[KernelError] = []
        for knob, change in _default_changes(nl, pf_name, vf.index, state):
            try:
                retry_busy(change)
                restored.append(f"vf_{knob}")
            except Unsupported as e:
                warnings.append(f"VF {knob} left as it is: {e}")
            except KernelError as e:
                failures.append(e)
        if failures:
            first = failures[0]
            for other in failures[1:]:
                first.add_note(str(other))
            raise first
        return ReleaseReport(vf.address, where, name, tuple(restored), tuple(warnings))

    def _in_namespace(
        self, vf: PciAddress, netns: NetnsRef | None, ifname: str | None
    ) -> LinkInfo | None:
        if netns is None or (not isinstance(netns, int) and not os.path.exists(netns)):
            return None
        nl = self.node.netlink
        named = None if ifname is None else get_or_none(nl, ifname, netns)
        if named is not None and named.parent == str(vf):
            return named
        return next((link for link in nl.links(netns) if link.parent == str(vf)), None)

    def _release(self, snapshot: AttachSnapshot, netns: NetnsRef | None) -> ReleaseReport:
        restored: list[str] = []
        warnings: list[str] = []
        try:
            current = self.node.read_vf(snapshot.pf_netdev, snapshot.vf_index)
        except KernelError as e:
            warnings.append(f"VF settings not restored: {e}")
        else:
            restored += self._restore_settings(snapshot, current, warnings)
        host_name = snapshot.host_name
        if host_name is None:
            return ReleaseReport(snapshot.vf, "none", None, tuple(restored), tuple(warnings))
        link, where = self._locate(snapshot, netns, warnings)
        if link is None:
            return ReleaseReport(snapshot.vf, "none", None, tuple(restored), tuple(warnings))
        if where == "namespace":
            link = self._bring_home(snapshot, host_name, link, netns, warnings)
            restored.append("namespace")
        if link.name != host_name:
            link = self._rename_home(host_name, link, warnings, restored)
        restored += self._restore_link(snapshot, link, warnings)
        return ReleaseReport(snapshot.vf, where, link.name, tuple(restored), tuple(warnings))

    def _restore_settings(
        self, snapshot: AttachSnapshot, current: VfState, warnings: list[str]
    ) -> list[str]:
        """Put back every VF setting that differs from the snapshot (MAC first).

        The MAC a PF reports for a VF is either set through the PF ("admin", which some
        drivers then enforce) or, where none is, the one the VF gave itself (igb). Only
        the first is put back through the PF. The snapshot's MAC counts as the VF's own
        when it was unset or equal to the netdev's MAC: then any admin MAC is cleared
        (written as zero) and the netdev's MAC, restored afterwards, is what the VF
        reports again. Writing it through the PF instead would mark it administrative,
        and igb would then refuse the VF's own MAC change (EADDRNOTAVAIL).
        """
        nl, pf, index, old = (
            self.node.netlink,
            snapshot.pf_netdev,
            snapshot.vf_index,
            snapshot.vf_state,
        )
        changes: list[tuple[str, Callable[[], None]]] = []
        if current.mac != old.mac:
            if old.mac in (ZERO_MAC, snapshot.host_mac):
                if current.mac not in (ZERO_MAC, snapshot.host_mac):
                    changes.append(("mac", bind(nl.set_vf_mac, pf, index, ZERO_MAC)))
            else:
                changes.append(("mac", bind(nl.set_vf_mac, pf, index, old.mac)))
        for name, setter in (("trust", nl.set_vf_trust), ("spoofchk", nl.set_vf_spoofchk)):
            was, now = getattr(old, name), getattr(current, name)
            if was is not None and now is not None and was != now:
                changes.append((name, bind(setter, pf, index, was)))
        if (current.vlan, current.qos, current.vlan_proto) != (old.vlan, old.qos, old.vlan_proto):
            changes.append(
                ("vlan", bind(nl.set_vf_vlan, pf, index, old.vlan, old.qos, old.vlan_proto))
            )
        if (current.min_tx_rate, current.max_tx_rate) != (old.min_tx_rate, old.max_tx_rate):
            changes.append(
                ("tx_rate", bind(nl.set_vf_rate, pf, index, old.min_tx_rate, old.max_tx_rate))
            )
        if old.query_rss is not None and current.query_rss not in (None, old.query_rss):
            changes.append(("query_rss", bind(nl.set_vf_query_rss, pf, index, old.query_rss)))
        if old.link_state is not None and current.link_state not in (None, old.link_state):
            changes.append(("link_state", bind(nl.set_vf_link_state, pf, index, old.link_state)))
        changes = self._releasable(snapshot, changes)
        done = []
        for name, change in changes:
            try:
                retry_busy(change)
                done.append(f"vf_{name}")
            except KernelError as e:
                warnings.append(f"VF {name} not restored: {e}")
        return done

    def _releasable(
        self, snapshot: AttachSnapshot, changes: list[tuple[str, Callable[[], None]]]
    ) -> list[tuple[str, Callable[[], None]]]:
        """Only the changes the vendor plugin says its driver can put back."""
        if not changes:
            return changes
        knobs = {name: _RELEASE_KNOBS[name] for name, _ in changes}
        changed = frozenset(k for group in knobs.values() for k in group)
        keep = self.node.hooks(snapshot.pf).release_knobs(changed)
        return [(name, change) for name, change in changes if knobs[name] & keep]

    def _locate(
        self, snapshot: AttachSnapshot, netns: NetnsRef | None, warnings: list[str]
    ) -> tuple[LinkInfo | None, str]:
        """Find the VF netdev: in the namespace, else on the host by PCI address."""
        nl = self.node.netlink
        if netns is not None and (isinstance(netns, int) or os.path.exists(netns)):
            try:
                for name in dict.fromkeys((snapshot.ifname, snapshot.host_name)):
                    found = None if name is None else get_or_none(nl, name, netns)
                    if found is not None and _same_device(found, snapshot):
                        return found, "namespace"
                for found in nl.links(netns):
                    if _same_device(found, snapshot):
                        return found, "namespace"
            except KernelError as e:
                warnings.append(f"namespace {netns} could not be searched: {e}")
        found = self._on_host(snapshot)
        if found is not None:
            return found, "host"
        try:
            device = self.node.sysfs.device(snapshot.vf)
        except DeviceNotFound:
            warnings.append(f"VF {snapshot.vf} no longer exists")
            return None, "none"
        driver = getattr(device, "driver", None)
        if driver in USERSPACE_DRIVERS:
            warnings.append(f"VF {snapshot.vf} is bound to {driver}: no netdev to restore")
        else:
            warnings.append(f"no netdev of VF {snapshot.vf} found in the namespace or on the host")
        return None, "none"

    def _on_host(self, snapshot: AttachSnapshot, *guesses: str) -> LinkInfo | None:
        """The VF's netdev in the host namespace: the name sysfs gives for its PCI
        address, else one of *guesses* (for trees that do not follow netlink)."""
        try:
            device = self.node.sysfs.device(snapshot.vf)
        except DeviceNotFound:
            return None
        netdev = device.netdev if isinstance(device, VirtualFunction) else None
        for name in dict.fromkeys((netdev, *guesses)):
            found = None if name is None else get_or_none(self.node.netlink, name, None)
            if found is not None and _same_device(found, snapshot):
                return found
        if guesses:
            # after a move under a kernel-chosen name that sysfs does not show (a tree
            # that does not follow netlink, as in the kernel tests): one dump
            for found in self.node.netlink.links():
                if _same_device(found, snapshot):
                    return found
        return None

    def _bring_home(
        self,
        snapshot: AttachSnapshot,
        host_name: str,
        link: LinkInfo,
        netns: NetnsRef | None,
        warnings: list[str],
    ) -> LinkInfo:
        """Move the netdev back and rename it in one request; if its name is taken on
        the host, leave it under the kernel's fallback name and say so."""
        nl = self.node.netlink
        try:
            nl.move_link(link.index, host_name, netns=netns)
            return nl.get_link(host_name)
        except KernelError as e:
            if e.errno != errno.EEXIST:
                raise
        warnings.append(f"host name {host_name!r} is taken on the host")
        if netns is not None and get_or_none(nl, link.name, netns) is not None:
            nl.move_link(link.index, _FALLBACK_NAME, netns=netns)
        found = self._on_host(snapshot, link.name)
        if found is None:
            raise DeviceNotFound("netdev of VF", str(snapshot.vf), "moved back but not found")
        return found

    def _rename_home(
        self,
        host_name: str,
        link: LinkInfo,
        warnings: list[str],
        restored: list[str],
    ) -> LinkInfo:
        nl = self.node.netlink
        try:
            if link.up:
                nl.set_link(link.index, up=False)  # the kernel may refuse renaming it up
            nl.rename_link(link.index, host_name)
        except KernelError as e:
            warnings.append(f"not renamed from {link.name!r} to {host_name!r}: {e}")
            return nl.get_link(link.name)
        restored.append("name")
        return nl.get_link(host_name)

    def _restore_link(
        self, snapshot: AttachSnapshot, link: LinkInfo, warnings: list[str]
    ) -> list[str]:
        nl = self.node.netlink
        done = []
        stale = snapshot.ifname  # left as an altname where renames keep the old name
        if stale in link.altnames and stale != link.name:
            try:
                nl.delete_altname(link.index, stale)
                done.append("altname")
            except KernelError as e:
                warnings.append(f"altname {stale!r} not removed: {e}")
        changes: list[tuple[str, Callable[[], None], tuple[int, ...]]] = []
        if snapshot.host_mac is not None and snapshot.host_mac != link.mac:
            action = bind(set_mac, nl, link.index, snapshot.host_mac)
            changes.append(("mac", action, (errno.EADDRNOTAVAIL,)))
        if snapshot.host_mtu is not None and snapshot.host_mtu != link.mtu:
            changes.append(("mtu", bind(_set_mtu, nl, link.index, snapshot.host_mtu), ()))
        for name, change, also in changes:
            try:
                retry_busy(change, also)
                done.append(name)
            except KernelError as e:
                warnings.append(f"{name} not restored: {e}")
        if snapshot.host_up is not None and snapshot.host_up != link.up:
            try:
                nl.set_link(link.index, up=snapshot.host_up)
                done.append("up" if snapshot.host_up else "down")
            except KernelError as e:
                warnings.append(f"up/down state not restored: {e}")
        return done


def _check_attach_arguments(ifname: str, mac: str | None, mtu: int | None) -> str | None:
    """Refuse a bad interface name, MAC or MTU; return the MAC in lower case."""
    check_netdev_name(ifname)
    if mac is not None:
        mac = mac.strip().lower()
        problem = mac_problem(mac)
        if problem:
            raise InvalidVfConfig((problem,))
    if mtu is not None and (isinstance(mtu, bool) or not _MIN_MTU <= mtu <= _MAX_MTU):
        raise InvalidVfConfig((f"mtu {mtu} is outside {_MIN_MTU}-{_MAX_MTU}",))
    return mac


def _netns_path(netns: NetnsRef) -> str | None:
    """A namespace as a snapshot records it: its path, None for a file descriptor."""
    return None if isinstance(netns, int) else os.fspath(netns)


def _host_link(snapshot: AttachSnapshot) -> LinkInfo | None:
    """The VF netdev on the host, as the snapshot saw it (None without a netdev)."""
    if snapshot.host_name is None or snapshot.host_index is None:
        return None
    return LinkInfo(
        index=snapshot.host_index,
        name=snapshot.host_name,
        mac=snapshot.host_mac or ZERO_MAC,
        mtu=snapshot.host_mtu or 0,
        up=bool(snapshot.host_up),
    )


def _check_snapshot(
    snapshot: AttachSnapshot,
    vf: VirtualFunction,
    pf_name: str,
    netns: str | None,
    ifname: str,
    mac: str | None,
) -> None:
    """Refuse a snapshot that was not taken for this attach of this VF as it is now."""
    recorded = {
        "VF": (snapshot.vf, vf.address),
        "VF index": (snapshot.vf_index, vf.index),
        "PF netdev": (snapshot.pf_netdev, pf_name),
        "namespace": (snapshot.netns, netns),
        "interface name": (snapshot.ifname, ifname),
        "host netdev": (snapshot.host_name, vf.netdev),
        "MAC": (snapshot.mac, None if vf.netdev is None else mac),
    }
    wrong = [f"{what} {had!r}, now {now!r}" for what, (had, now) in recorded.items() if had != now]
    if snapshot.host_name is not None and snapshot.host_index is None:
        wrong.append("no host ifindex recorded")
    if wrong:
        raise ValueError(
            f"the snapshot of VF {snapshot.vf} does not fit this attach: {'; '.join(wrong)}"
        )


def _set_mtu(nl: NetlinkBackend, index: int, mtu: int) -> None:
    nl.set_link(index, mtu=mtu)


def _same_device(link: LinkInfo, snapshot: AttachSnapshot) -> bool:
    """Whether *link* is the snapshot's VF netdev: by its parent PCI device, or where
    the kernel reports none (old kernels; veths in the kernel tests) by one of the MACs
    it was given. (Not by ifindex: a move into a namespace where the index is taken
    gives the netdev a new one, and indexes of different namespaces collide.)"""
    if link.parent is not None:
        return link.parent == str(snapshot.vf)
    return link.mac in (snapshot.host_mac, snapshot.mac)


def _summary(report: ReleaseReport) -> str:
    text = f"restored: {', '.join(report.restored) or 'nothing needed'}"
    if report.warnings:
        text += f"; warnings: {'; '.join(report.warnings)}"
    return text


def _default_changes(
    nl: NetlinkBackend, pf: str, index: int, state: VfState
) -> list[tuple[str, Callable[[], None]]]:
    """The writes that take *state* to :data:`SAFE_DEFAULTS` (settings the driver does
    not report are left alone)."""
    d = SAFE_DEFAULTS
    changes: list[tuple[str, Callable[[], None]]] = []
    if state.mac != d.mac:
        changes.append(("mac", bind(nl.set_vf_mac, pf, index, d.mac)))
    if (state.vlan, state.qos, state.vlan_proto) != (d.vlan, d.qos, d.vlan_proto):
        changes.append(("vlan", bind(nl.set_vf_vlan, pf, index, d.vlan, d.qos, d.vlan_proto)))
    for knob, setter in (("spoofchk", nl.set_vf_spoofchk), ("trust", nl.set_vf_trust)):
        now, wanted = getattr(state, knob), getattr(d, knob)
        if now is not None and now != wanted:
            changes.append((knob, bind(setter, pf, index, wanted)))
    if (state.min_tx_rate, state.max_tx_rate) != (d.min_tx_rate, d.max_tx_rate):
        changes.append(("tx_rate", bind(nl.set_vf_rate, pf, index, d.min_tx_rate, d.max_tx_rate)))
    return changes
