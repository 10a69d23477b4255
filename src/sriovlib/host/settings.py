"""VF settings through the PF: read, plan, apply, verify, undo; and what a driver accepts.

:class:`VfSettings` writes only the settings that differ, one per request, in an order
that puts what drivers often lack first; reads the state back (again for a while, for
drivers that apply asynchronously); undoes what it applied, newest first, when a step
fails or does not take. :meth:`VfSettings.capabilities` probes one VF to learn which
settings a driver accepts (cached per driver name). The vendor plugin checks a config
before any request and says how an admin MAC reaches a bound VF netdev.
"""

from __future__ import annotations

import errno
import time
from collections.abc import Callable

import attrs

from sriovlib.exceptions import (
    DeviceNotFound,
    InvalidValue,
    KernelError,
    KernelNotFound,
    NotApplied,
    SriovError,
    Unsupported,
    kernel_error,
)
from sriovlib.host.drivers import Drivers
from sriovlib.host.node import (
    USERSPACE_DRIVERS,
    NodeContext,
    bind,
    pf_label,
    pf_netdev,
    retry_busy,
    set_mac,
)
from sriovlib.models import (
    ZERO_MAC,
    InvalidVfConfig,
    PciAddress,
    PhysicalFunction,
    VfCapabilities,
    VfConfig,
    VfKnob,
    VfState,
    VirtualFunction,
    VlanProto,
)
from sriovlib.netlink import NetlinkBackend
from sriovlib.plugins.types import MacFixup, Severity

__all__ = ["VfSettings"]

#: How often a VF driver is re-probed for an admin MAC to reach its netdev, and the
#: pause after the first miss (doubled after each).
REBIND_ATTEMPTS = 5
REBIND_PAUSE = 0.25


@attrs.frozen
class _Step:
    """One VF setting to change: how to apply it and how to put back the old value."""

    knob: str
    apply: Callable[[], None]
    undo: Callable[[], None]


class VfSettings:
    """Reads (:meth:`vf_state`, :meth:`vf_states`), changes (:meth:`configure_vf`) and probes
    (:meth:`capabilities`) VF settings; :meth:`apply` is the step the attach part uses."""

    def __init__(self, node: NodeContext, drivers: Drivers) -> None:
        self.node = node
        self.drivers = drivers
        self._capabilities: dict[str, VfCapabilities] = {}

    def vf_state(self, vf: VirtualFunction | PciAddress | str) -> VfState:
        """The VF's settings as its PF's driver reports them (one netlink request)."""
        current = self.node.fresh_vf(vf)
        pf = self.node.fresh_pf(current.pf_address)
        return self.node.read_vf(pf_netdev(pf), current.index)

    def vf_states(self, pf: PhysicalFunction | str | PciAddress) -> tuple[VfState, ...]:
        """Every VF's settings as *pf*'s driver reports them, in VF order: one netlink
        request (the PF's VF list), however many VFs the PF has.

        Raises:
            DeviceNotFound: *pf* is not a PF, or has no netdev to ask through.
            KernelError: the kernel refused the request (KernelNotFound: no such link).
        """
        return self.node.netlink.vf_states(pf_netdev(self.node.fresh_pf(pf)))

    def configure_vf(self, vf: VirtualFunction | PciAddress | str, config: VfConfig) -> VfState:
        """Apply the fields *config* sets, verify them, and return the VF's new state.

        Only the fields that are set and differ from the VF's current value are written,
        one setting per request, in this order: link_state, query_rss, rates, VLAN (with
        qos and protocol; qos defaults to 0 when only a VLAN is given), spoofchk, trust,
        MAC. Settings drivers often lack come first, so a refusal usually comes before
        anything changed. The state is then read back (re-read for up to
        ``verify_timeout`` seconds, for drivers that apply asynchronously).

        If a step fails or does not take, the steps already applied are undone, newest
        first, and the error names the setting, the driver and the errno. A config
        needing a setting that :meth:`capabilities` found unsupported for this driver is
        refused before any request.

        Raises:
            Unsupported / InvalidValue / Busy / KernelError: a step was refused.
            NotApplied: the driver accepted a value but reports another.
        """
        current = self.node.fresh_vf(vf)
        pf = self.node.fresh_pf(current.pf_address)
        pf_name = pf_netdev(pf)
        self.check_with_plugin(pf, current, config)
        self.refuse_known_unsupported(pf, pf_name, current, config)
        before = self.node.read_vf(pf_name, current.index)
        return self.apply(pf, pf_name, current, config, before)

    def check_with_plugin(
        self, pf: PhysicalFunction, vf: VirtualFunction, config: VfConfig, mtu: int | None = None
    ) -> None:
        """Refuse, before any kernel call, what the vendor plugin knows will fail."""
        pf_mtu = self.node.sysfs.netdev_mtu(pf.netdevs[0]) if pf.netdevs else None
        hooks = self.node.hooks(pf)
        errors = [
            f"{issue.message} ({issue.hint})" if issue.hint else issue.message
            for issue in hooks.check_vf_config(config, vf_mtu=mtu, pf_mtu=pf_mtu)
            if issue.severity is Severity.ERROR
        ]
        if errors:
            where = f"VF {vf.index} ({vf.address}) of {pf_label(pf)}, {hooks.vendor} plugin"
            raise InvalidVfConfig(tuple(f"{where}: {e}" for e in errors))

    def refuse_known_unsupported(
        self, pf: PhysicalFunction, pf_name: str, vf: VirtualFunction, config: VfConfig
    ) -> None:
        known = self._capabilities.get(pf.driver or "")
        if known is None:
            return
        for knob in sorted(config.knobs() & known.refused()):
            code = getattr(errno, known.reason(knob) or "EOPNOTSUPP", errno.EOPNOTSUPP)
            raise kernel_error(
                code,
                f"set VF {knob}",
                f"{pf_name} vf {vf.index}",
                driver=pf.driver,
                knob=str(knob),
                detail="the driver refused it when probed; nothing was changed",
            )

    def apply(
        self,
        pf: PhysicalFunction,
        pf_name: str,
        vf: VirtualFunction,
        config: VfConfig,
        before: VfState,
    ) -> VfState:
        steps, expected = self._plan(pf_name, vf.index, config, before)
        if not steps:
            return before
        applied: list[_Step] = []
        device = f"{pf_name} vf {vf.index}"
        try:
            for step in steps:
                retry_busy(step.apply)
                applied.append(step)
            state = self._verify(pf_name, vf.index, expected, pf.driver)
            if config.mac is not None and before.mac != config.mac:
                self._deliver_mac(pf, vf, config.mac)
            return state
        except KernelError as e:
            outcome = self._undo(applied)
            knob = next((s.knob for s in steps if s not in applied), e.knob)
            raise kernel_error(
                e.errno,
                e.operation,
                device,
                driver=pf.driver,
                knob=knob,
                detail=_join(e.detail, outcome),
            ) from e
        except NotApplied as e:
            outcome = self._undo(applied)
            raise NotApplied(device, pf.driver, e.fields, outcome) from None

    def _deliver_mac(self, pf: PhysicalFunction, vf: VirtualFunction, mac: str) -> None:
        """Make a newly set admin MAC reach the VF's bound netdev, as its plugin says.

        Nothing to do for a VF without a netdev in the host namespace (vfio-pci, or
        moved into a pod: ``attach`` sets that netdev's MAC itself).
        """
        vf = self.node.fresh_vf(vf.address)
        if vf.netdev is None or vf.driver is None or vf.driver in USERSPACE_DRIVERS:
            return
        fixup = self.node.hooks(pf).mac_fixup(vf)
        if fixup is MacFixup.NONE:
            return
        if fixup is MacFixup.WAIT_NETDEV:
            deadline = time.monotonic() + self.node.verify_timeout
            while time.monotonic() < deadline:
                if self.node.sysfs.netdev_mac(vf.netdev) == mac:
                    return
                time.sleep(self.node.poll_interval)
            fixup = MacFixup.SET_NETDEV_MAC  # not propagated in time: set it ourselves
        if fixup is MacFixup.SET_NETDEV_MAC:
            retry_busy(
                bind(set_mac, self.node.netlink, self.node.netlink.get_link(vf.netdev).index, mac)
            )
            return
        self._rebind_for_mac(pf, vf, mac)

    def _rebind_for_mac(self, pf: PhysicalFunction, vf: VirtualFunction, mac: str) -> None:
        """Re-probe the VF driver until its netdev carries *mac*.

        A VF driver that probes while its PF resets (igb does for up to a second after a
        ``sriov_numvfs`` change) cannot reach the PF and makes up a MAC: probe again,
        waiting longer each time.
        """
        pause = REBIND_PAUSE
        for attempt in range(1, REBIND_ATTEMPTS + 1):
            fresh = self.drivers.rebind_vf(vf)
            seen = self.node.sysfs.netdev_mac(fresh.netdev) if fresh.netdev else mac
            if seen == mac:
                return
            if attempt < REBIND_ATTEMPTS:
                time.sleep(pause)
                pause *= 2
        raise NotApplied(
            f"{pf_netdev(pf)} vf {vf.index}",
            pf.driver,
            (("mac of the VF netdev", mac, seen),),
            f"after {REBIND_ATTEMPTS} driver re-probes",
        )

    def _plan(  # noqa: PLR0912 - one branch per setting, in the documented order
        self, pf_name: str, index: int, config: VfConfig, before: VfState
    ) -> tuple[list[_Step], dict[str, object]]:
        """The steps that change what differs, and the state expected afterwards."""
        nl = self.node.netlink
        steps: list[_Step] = []
        expected: dict[str, object] = {}

        def step(knob: str, apply: Callable[[], None], undo: Callable[[], None]) -> None:
            steps.append(_Step(knob, apply, undo))

        if config.link_state is not None:
            expected["link_state"] = config.link_state
            if config.link_state != before.link_state:
                old_state = before.link_state
                step(
                    "link_state",
                    lambda: nl.set_vf_link_state(pf_name, index, config.link_state),  # type: ignore[arg-type]
                    (lambda: nl.set_vf_link_state(pf_name, index, old_state))
                    if old_state is not None
                    else _cannot_undo("link_state"),
                )
        if config.query_rss is not None:
            expected["query_rss"] = config.query_rss
            if config.query_rss != before.query_rss:
                old_rss = before.query_rss
                step(
                    "query_rss",
                    lambda: nl.set_vf_query_rss(pf_name, index, bool(config.query_rss)),
                    (lambda: nl.set_vf_query_rss(pf_name, index, old_rss))
                    if old_rss is not None
                    else _cannot_undo("query_rss"),
                )
        if config.min_tx_rate is not None or config.max_tx_rate is not None:
            low = before.min_tx_rate if config.min_tx_rate is None else config.min_tx_rate
            high = before.max_tx_rate if config.max_tx_rate is None else config.max_tx_rate
            expected.update(min_tx_rate=low, max_tx_rate=high)
            if (low, high) != (before.min_tx_rate, before.max_tx_rate):
                knob = "min_tx_rate" if low != before.min_tx_rate else "max_tx_rate"
                step(
                    knob,
                    lambda: nl.set_vf_rate(pf_name, index, low, high),
                    lambda: nl.set_vf_rate(pf_name, index, before.min_tx_rate, before.max_tx_rate),
                )
        if config.vlan is not None:
            vlan, qos = config.vlan, config.qos or 0
            proto = config.vlan_proto or VlanProto.DOT1Q
            expected.update(vlan=vlan, qos=qos, vlan_proto=proto)
            if (vlan, qos, proto) != (before.vlan, before.qos, before.vlan_proto):
                knob = "vlan_proto" if proto is VlanProto.DOT1AD else "qos" if qos else "vlan"
                step(
                    knob,
                    lambda: nl.set_vf_vlan(pf_name, index, vlan, qos, proto),
                    lambda: nl.set_vf_vlan(
                        pf_name, index, before.vlan, before.qos, before.vlan_proto
                    ),
                )
        for name, setter in (("spoofchk", nl.set_vf_spoofchk), ("trust", nl.set_vf_trust)):
            wanted = getattr(config, name)
            if wanted is None:
                continue
            expected[name] = wanted
            old = getattr(before, name)
            if wanted != old:
                step(
                    name,
                    bind(setter, pf_name, index, wanted),
                    bind(setter, pf_name, index, old) if old is not None else _cannot_undo(name),
                )
        if config.mac is not None:
            expected["mac"] = config.mac
            if config.mac != before.mac:
                step(
                    "mac",
                    bind(nl.set_vf_mac, pf_name, index, config.mac),
                    bind(nl.set_vf_mac, pf_name, index, before.mac),
                )
        return steps, expected

    def _verify(
        self, pf_name: str, index: int, expected: dict[str, object], driver: str | None
    ) -> VfState:
        deadline = time.monotonic() + self.node.verify_timeout
        while True:
            state = self.node.read_vf(pf_name, index)
            wrong = tuple(
                (name, value, getattr(state, name))
                for name, value in expected.items()
                if getattr(state, name) is not None and getattr(state, name) != value
            )
            if not wrong:
                return state
            if time.monotonic() >= deadline:
                raise NotApplied(f"{pf_name} vf {index}", driver, wrong, "")
            time.sleep(self.node.poll_interval)

    def _undo(self, applied: list[_Step]) -> str:
        """Undo *applied* newest first; say what happened, for the error message."""
        if not applied:
            return "nothing had been changed"
        failed = []
        for step in reversed(applied):
            try:
                retry_busy(step.undo)
            except (KernelError, _CannotUndo) as e:
                failed.append(f"{step.knob} ({e})")
        undone = ", ".join(s.knob for s in applied)
        if failed:
            return f"ROLLBACK INCOMPLETE: could not put back {'; '.join(failed)}"
        return f"rolled back {undone}"

    def capabilities(
        self,
        pf: PhysicalFunction | str | PciAddress,
        *,
        vf: VirtualFunction | PciAddress | str | None = None,
        refresh: bool = False,
    ) -> VfCapabilities:
        """Which VF settings *pf*'s driver accepts, found by probing one VF.

        The answer is cached per driver name (``refresh`` probes again). The probe uses
        *vf* or, by default, the highest-numbered VF that is not in use, and leaves it
        as it was: each setting is written with its current value where that proves
        support; where it cannot (qos, 802.1ad, rates) a test value is written and the
        old one put back. The VF's state is read before and after and must match.
        ``max_tx_rate`` cannot be told apart from "no carrier" on drivers that need
        carrier (igb); without carrier it is reported as unknown.
        """
        parent = self.node.fresh_pf(pf)
        driver = parent.driver or ""
        if not refresh and driver in self._capabilities:
            return self._capabilities[driver]
        pf_name = pf_netdev(parent)
        states = {state.index: state for state in self.node.netlink.vf_states(pf_name)}
        target = self.node.fresh_vf(vf) if vf is not None else self._probe_target(parent, states)
        if target.index not in states:
            raise KernelNotFound(
                "read VF list",
                f"{pf_name} vf {target.index}",
                errno.ENODEV,
                detail="the PF reports no such VF",
            )
        carrier = self.node.sysfs.carrier(pf_name)
        found = _Probe(self.node.netlink, pf_name, target.index, carrier).run(states[target.index])
        after = self.node.read_vf(pf_name, target.index)
        if after != found.before:
            raise SriovError(
                f"probing {pf_name} vf {target.index} (driver {parent.driver}) changed it: "
                f"before {found.before}, after {after}"
            )
        result = VfCapabilities(
            driver=parent.driver,
            supported=frozenset(found.supported),
            unsupported=tuple(sorted(found.unsupported.items())),
            unknown=tuple(sorted(found.unknown.items())),
            probed_vf=target.address,
        )
        self._capabilities[driver] = result
        return result

    def _probe_target(self, pf: PhysicalFunction, states: dict[int, VfState]) -> VirtualFunction:
        """The last VF not in use, preferring one without a MAC: rewriting a MAC the VF
        reports as its own would mark it administratively set on some drivers (igb)."""
        vfs = self.node.sysfs.vfs_of(pf.address)
        if not vfs:
            raise DeviceNotFound("VF to probe on", pf_label(pf), "enable VFs first")
        free = [vf for vf in vfs if not self.node.in_use(vf)] or list(vfs)
        unset = [vf for vf in free if vf.index in states and states[vf.index].mac == ZERO_MAC]
        return (unset or free)[-1]


class _CannotUndo(Exception):
    """The old value of a setting is unknown (the driver does not report it)."""


def _cannot_undo(knob: str) -> Callable[[], None]:
    def fail() -> None:
        raise _CannotUndo(f"the driver does not report the old {knob}")

    return fail


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


class _Probe:
    """The capability probe of one VF (see :meth:`Host.capabilities`)."""

    def __init__(self, nl: NetlinkBackend, pf: str, index: int, carrier: bool | None) -> None:
        self.nl, self.pf, self.index, self.carrier = nl, pf, index, carrier
        self.supported: set[VfKnob] = set()
        self.unsupported: dict[VfKnob, str] = {}
        self.unknown: dict[VfKnob, str] = {}
        self.before = VfState(index=index)

    def run(self, before: VfState) -> _Probe:
        self.before = before
        nl, pf, i, b = self.nl, self.pf, self.index, before
        self._try(VfKnob.MAC, bind(nl.set_vf_mac, pf, i, b.mac))
        self._try(VfKnob.VLAN, bind(nl.set_vf_vlan, pf, i, b.vlan, b.qos, b.vlan_proto))
        test_vlan = b.vlan or 4094
        self._try(
            VfKnob.QOS,
            bind(nl.set_vf_vlan, pf, i, test_vlan, b.qos % 7 + 1, b.vlan_proto),
            self._restore_vlan,
        )
        self._try(
            VfKnob.VLAN_8021AD,
            bind(nl.set_vf_vlan, pf, i, test_vlan, b.qos, VlanProto.DOT1AD),
            self._restore_vlan,
        )
        for knob, setter, value in (
            (VfKnob.SPOOFCHK, nl.set_vf_spoofchk, b.spoofchk),
            (VfKnob.TRUST, nl.set_vf_trust, b.trust),
            (VfKnob.LINK_STATE, nl.set_vf_link_state, b.link_state),
        ):
            if value is None:
                self.unknown[knob] = "the driver does not report its current value"
            else:
                self._try(knob, bind(setter, pf, i, value))
        rss = False if b.query_rss is None else b.query_rss
        self._try(VfKnob.QUERY_RSS, bind(nl.set_vf_query_rss, pf, i, rss))
        self._try(
            VfKnob.MIN_TX_RATE,
            bind(nl.set_vf_rate, pf, i, max(b.min_tx_rate, 1), max(b.max_tx_rate, 0)),
            self._restore_rate,
        )
        self._try(
            VfKnob.MAX_TX_RATE,
            bind(nl.set_vf_rate, pf, i, b.min_tx_rate, b.max_tx_rate or max(100, b.min_tx_rate)),
            self._restore_rate,
        )
        return self

    def _restore_vlan(self) -> None:
        b = self.before
        self.nl.set_vf_vlan(self.pf, self.index, b.vlan, b.qos, b.vlan_proto)

    def _restore_rate(self) -> None:
        b = self.before
        self.nl.set_vf_rate(self.pf, self.index, b.min_tx_rate, b.max_tx_rate)

    def _try(
        self, knob: VfKnob, probe: Callable[[], None], restore: Callable[[], None] | None = None
    ) -> None:
        try:
            retry_busy(probe)
        except (Unsupported, InvalidValue) as e:
            if knob is VfKnob.MAX_TX_RATE and self.carrier is not True and e.errno == errno.EINVAL:
                self.unknown[knob] = "refused without PF carrier; plug the PF in and probe again"
            else:
                self.unsupported[knob] = e.errno_name
            return
        except KernelError as e:
            self.unknown[knob] = f"probe failed: {e.errno_name}"
            return
        self.supported.add(knob)
        if restore is not None:
            retry_busy(restore)
