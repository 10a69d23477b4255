"""The :class:`Host` facade: the one object every entrypoint goes through.

Besides discovery it owns the VF lifecycle (see ``docs/lifecycle.md``):
:meth:`Host.set_num_vfs`, :meth:`Host.configure_vf`, :meth:`Host.capabilities`,
:meth:`Host.snapshot`, :meth:`Host.attach` and :meth:`Host.release`. Sysfs goes
through :class:`Sysfs`, netlink through a :class:`~sriovlib.netlink.NetlinkBackend` (the
real kernel unless one is passed in, created on first use so that discovery never loads
pyroute2).
"""

from __future__ import annotations

import errno
import os
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from sriovlib.exceptions import DeviceNotFound, InvalidPciAddress, SriovError
from sriovlib.models import (
    ZERO_MAC,
    AttachSnapshot,
    InvalidVfConfig,
    NetworkDevice,
    NumVfsChange,
    PciAddress,
    PhysicalFunction,
    ReleaseReport,
    VfCapabilities,
    VfConfig,
    VfKnob,
    VfState,
    VirtualFunction,
    VlanProto,
    mac_problem,
)
from sriovlib.netlink import (
    Busy,
    InvalidValue,
    KernelError,
    KernelNotFound,
    LinkInfo,
    NetlinkBackend,
    NetnsRef,
    Unsupported,
    kernel_error,
)
from sriovlib.plugins.types import (
    DeviceType,
    EswitchMode,
    MacFixup,
    NumVfsPlan,
    Severity,
    StepKind,
)
from sriovlib.sysfs import Inventory, Sysfs, SysfsWriter, check_netdev_name

if TYPE_CHECKING:
    from sriovlib.plugins.manager import PfHooks, Plugins

__all__ = ["USERSPACE_DRIVERS", "Host", "NotApplied", "VfsNotReady"]

#: Drivers that give a VF to user space (DPDK, a VM): such a VF has no netdev.
USERSPACE_DRIVERS = frozenset({"vfio-pci", "uio_pci_generic", "igb_uio"})

_MIN_MTU, _MAX_MTU = 68, 65535
_FALLBACK_NAME = "sriovvf%d"  # the kernel picks the first free number
_BUSY_RETRIES = 4
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


class VfsNotReady(SriovError, TimeoutError):
    """After a ``sriov_numvfs`` change, the VFs or their netdevs did not all appear in time."""


class NotApplied(SriovError):
    """The driver accepted a VF setting but reports another value; it was rolled back.

    Attributes:
        fields: The settings that did not take, as ``(name, asked, reported)``.
    """

    def __init__(
        self,
        device: str,
        driver: str | None,
        fields: tuple[tuple[str, object, object], ...],
        rollback: str,
    ) -> None:
        self.fields = fields
        detail = ", ".join(
            f"{name}: asked {asked}, driver reports {seen}" for name, asked, seen in fields
        )
        super().__init__(
            f"VF settings on {device} (driver {driver}) did not take ({detail}); {rollback}"
        )


@attrs.frozen
class _Step:
    """One VF setting to change: how to apply it and how to put back the old value."""

    knob: str
    apply: Callable[[], None]
    undo: Callable[[], None]


class Host:
    """SR-IOV view of one Linux node.

    Args:
        sysfs_root: The directory that holds ``sys/`` — ``/`` on a real node, a tree made
            by :class:`sriovlib.testing.FakeSysfs` in tests and examples.

        netlink: The netlink backend; default the real kernel
            (:class:`~sriovlib.netlink.KernelNetlink`), created on first use. Tests pass
            :class:`sriovlib.testing.fakenetlink.FakeNetlink`.
        sysfs_writer: Where sysfs writes go (default the kernel; the fake kernel in tests).
        in_use: Tells whether a VF is taken (``set_num_vfs`` refuses to destroy such VFs
            unless forced). Default: a VF whose driver has a netdev but whose netdev is
            not in the host namespace, i.e. one moved into a pod.
        wait_timeout: Default bound, in seconds, on waiting for VFs and netdevs.
        verify_timeout: How long ``configure_vf`` keeps re-reading a VF whose driver
            applies settings asynchronously before calling them not applied.
        poll_interval: Seconds between two looks while waiting.
        plugins: The vendor plugins (:class:`~sriovlib.plugins.manager.Plugins`);
            default: built-ins plus installed third-party plugins, loaded on first use.

    Vendor differences come from the plugins (:meth:`hooks`): the VF limit and the
    sequence of ``set_num_vfs``, checks before ``configure_vf`` and ``attach``, what
    makes an admin MAC reach a bound VF netdev, the driver of a device type, and which
    settings ``release`` puts back. The Host itself carries out what they plan.

    Every query reads the kernel afresh: VFs come and go, and a cached answer would go
    stale behind a long-running daemon's back. Lookups of one device read only that
    device, not the whole bus. The only cache is :meth:`capabilities`' answer per driver.
    """

    def __init__(
        self,
        sysfs_root: str | os.PathLike[str] = "/",
        *,
        netlink: NetlinkBackend | None = None,
        sysfs_writer: SysfsWriter | None = None,
        in_use: Callable[[VirtualFunction], bool] | None = None,
        wait_timeout: float = 30.0,
        verify_timeout: float = 1.0,
        poll_interval: float = 0.05,
        plugins: Plugins | None = None,
    ) -> None:
        self.sysfs = Sysfs(sysfs_root, writer=sysfs_writer)
        self._plugins = plugins
        self._netlink = netlink
        self._in_use = in_use if in_use is not None else _moved_away
        self.wait_timeout = wait_timeout
        self.verify_timeout = verify_timeout
        self.poll_interval = poll_interval
        self._capabilities: dict[str, VfCapabilities] = {}

    @property
    def netlink(self) -> NetlinkBackend:
        """The netlink backend (the real kernel's is created here on first use)."""
        if self._netlink is None:
            from sriovlib.netlink import KernelNetlink

            self._netlink = KernelNetlink()
        return self._netlink

    @property
    def plugins(self) -> Plugins:
        """The vendor plugins (loaded here on first use)."""
        if self._plugins is None:
            from sriovlib.plugins.manager import Plugins

            self._plugins = Plugins()
        return self._plugins

    def hooks(self, pf: PhysicalFunction | str | PciAddress) -> PfHooks:
        """The vendor hooks of *pf*: its plugin's answers, falling back to generic."""
        parent = pf if isinstance(pf, PhysicalFunction) else self.pf(pf)
        return self.plugins.for_pf(parent)

    def __repr__(self) -> str:
        return f"Host(sysfs_root={str(self.sysfs.root)!r})"

    def inventory(self) -> Inventory:
        """One scan of the PCI bus: PFs, VFs, other NICs and unreadable devices."""
        return self.sysfs.scan()

    def pfs(self) -> tuple[PhysicalFunction, ...]:
        """Every SR-IOV capable PF, in PCI address order."""
        return self.sysfs.scan().pfs

    def vfs(self, pf: PhysicalFunction | str | None = None) -> tuple[VirtualFunction, ...]:
        """Every VF on the node, or only those of *pf* (a PF, its name or its address),
        ordered by VF index within a PF."""
        if pf is None:
            return self.sysfs.scan().vfs
        parent = pf if isinstance(pf, PhysicalFunction) else self.pf(pf)
        vfs = [v for v in self.sysfs.scan().vfs if v.pf_address == parent.address]
        return tuple(sorted(vfs, key=lambda v: v.index))

    def pf(self, name_or_address: str | PciAddress) -> PhysicalFunction:
        """The PF with this netdev name or PCI address; :class:`DeviceNotFound` if none."""
        address = self._resolve(name_or_address, "PF")
        device = self.sysfs.device(address)
        if not isinstance(device, PhysicalFunction):
            raise DeviceNotFound(
                "PF", str(name_or_address), f"{address} is {_describe(device)}, not an SR-IOV PF"
            )
        return device

    def vf(self, address: str | PciAddress) -> VirtualFunction:
        """The VF at this PCI address; :class:`DeviceNotFound` if there is none."""
        pci = address if isinstance(address, PciAddress) else PciAddress.parse(address)
        device = self.sysfs.device(pci)
        if not isinstance(device, VirtualFunction):
            raise DeviceNotFound("VF", str(pci), f"{pci} is {_describe(device)}")
        return device

    # -- VF lifecycle: sriov_numvfs ----------------------------------------------------

    def set_num_vfs(
        self,
        pf: PhysicalFunction | str | PciAddress,
        count: int,
        *,
        force: bool = False,
        timeout: float | None = None,
        eswitch_mode: EswitchMode | None = None,
    ) -> NumVfsChange:
        """Make *pf* have *count* VFs and wait until they and their netdevs exist.

        *count* is checked against ``sriov_totalvfs`` and the vendor plugin's VF limit
        before anything is written. The steps come from the plugin's plan (generic:
        a non-zero count changes through 0, as the kernel requires). Going through 0
        destroys every VF, so it is refused while any VF is in use (see ``in_use``)
        unless *force*. Waits at most *timeout* seconds (default ``wait_timeout``) for
        the VFs, the netdevs of VFs whose driver has one, and the PF's carrier if it had
        carrier before (the PF link flaps after each change).

        Raises:
            InvalidValue: *count* is negative or above a limit (errno ERANGE; nothing
                was written); the message names the limit and where it comes from.
            Unsupported: the plan needs an eswitch mode change (not implemented yet:
                the message gives the devlink command) or a reboot.
            Busy: VFs are in use and *force* is false, or the kernel said EBUSY.
            KernelError: the kernel refused the write.
            VfsNotReady: the VFs or netdevs did not appear in time.
        """
        parent = self._fresh_pf(pf)
        operation = f"set sriov_numvfs to {count}"
        device = _pf_label(parent)
        before = self.sysfs.num_vfs(parent.address)
        plan = self.plan_num_vfs(parent, count, eswitch_mode=eswitch_mode)
        if not plan.steps:
            return NumVfsChange(
                parent.address, before, count, (), 0.0, self.sysfs.vfs_of(parent.address)
            )
        if before and plan.disruptive:
            busy = [vf for vf in self.sysfs.vfs_of(parent.address) if self._in_use(vf)]
            if busy and not force:
                names = ", ".join(f"{vf.index} ({vf.address})" for vf in busy)
                raise Busy(
                    operation,
                    device,
                    errno.EBUSY,
                    driver=parent.driver,
                    detail=f"VF {names} in use; changing a non-zero count destroys "
                    "every VF (pass force=True to do it anyway)",
                )
        carrier = self.sysfs.carrier(parent.netdevs[0]) if parent.netdevs else None
        started = time.monotonic()
        writes = []
        for step in plan.steps:
            if step.kind is StepKind.WRITE_NUMVFS:
                value = int(step.value or 0)
                self._write_num_vfs(parent, value)
                writes.append(value)
            elif step.kind is StepKind.UNBIND_VFS:
                for vf in self.sysfs.vfs_of(parent.address):
                    if vf.driver is not None:
                        self._sysfs_write(parent, "unbind VF", vf.address, vf.driver)
            elif step.kind is StepKind.BIND_VFS:
                for vf in self.sysfs.vfs_of(parent.address):
                    self._sysfs_write(parent, "probe VF", vf.address, None)
            # SET_ESWITCH_MODE steps are no-ops here: _check_plan_possible has made sure
            # the PF is already in that mode
        deadline = started + (self.wait_timeout if timeout is None else timeout)
        vfs = self._wait_for_vfs(parent, count, deadline)
        if carrier and parent.netdevs:
            while self.sysfs.carrier(parent.netdevs[0]) is not True and time.monotonic() < deadline:
                time.sleep(self.poll_interval)
        return NumVfsChange(
            parent.address, before, count, tuple(writes), round(time.monotonic() - started, 3), vfs
        )

    def plan_num_vfs(
        self,
        pf: PhysicalFunction | str | PciAddress,
        count: int,
        *,
        eswitch_mode: EswitchMode | None = None,
    ) -> NumVfsPlan:
        """What :meth:`set_num_vfs` would do, without doing it.

        Checks *count* against ``sriov_totalvfs`` and the vendor plugin's limit and asks
        the plugin for the steps; raises exactly what ``set_num_vfs`` would raise before
        its first write (a count above a limit, a plan needing a reboot or an eswitch
        mode sriovlib cannot set). An empty plan means nothing would change.
        """
        parent = self._fresh_pf(pf)
        hooks = self.hooks(parent)
        operation = f"set sriov_numvfs to {count}"
        self._check_count(parent, hooks, count, operation)
        plan = hooks.numvfs_plan(self.sysfs.num_vfs(parent.address), count, eswitch_mode)
        if plan.steps:
            self._check_plan_possible(parent, plan.needs_reboot, plan.steps, operation, plan.note)
        return plan

    def _check_count(
        self, pf: PhysicalFunction, hooks: PfHooks, count: int, operation: str
    ) -> None:
        limit = hooks.vf_limit()
        if 0 <= count <= min(pf.total_vfs, limit.max_vfs):
            return
        if count < 0:
            detail = f"{count} is negative"
        elif count > pf.total_vfs:
            detail = f"{count} exceeds totalvfs {pf.total_vfs}"
        else:
            detail = f"{count} exceeds the {hooks.vendor} plugin's limit of {limit.max_vfs}"
        if count >= 0 and hooks.vendor != "generic":
            detail += f"; {limit.reason}"
        if count >= 0 and limit.raise_hint:
            detail += f"; to raise it: {limit.raise_hint}"
        raise InvalidValue(operation, _pf_label(pf), errno.ERANGE, driver=pf.driver, detail=detail)

    def _check_plan_possible(
        self,
        pf: PhysicalFunction,
        needs_reboot: bool,
        steps: tuple[object, ...],
        operation: str,
        note: str,
    ) -> None:
        """Refuse, before any write, a plan this Host cannot carry out."""
        if needs_reboot:
            raise Unsupported(
                operation,
                _pf_label(pf),
                errno.EOPNOTSUPP,
                driver=pf.driver,
                detail=f"the change needs a reboot: {note}",
            )
        modes = {
            str(getattr(s, "value", ""))
            for s in steps
            if getattr(s, "kind", None) is StepKind.SET_ESWITCH_MODE
        }
        if not modes:
            return
        current = self.netlink.eswitch_mode(str(pf.address))
        if modes != {current}:
            wanted = sorted(modes - {str(current)})
            raise Unsupported(
                operation,
                _pf_label(pf),
                errno.EOPNOTSUPP,
                driver=pf.driver,
                detail=f"the plan needs eswitch mode {', '.join(wanted)} (now {current}), "
                "which sriovlib does not set yet; run: devlink dev eswitch set "
                f"pci/{pf.address} mode <mode> (plan: {note})",
            )

    def _write_num_vfs(self, pf: PhysicalFunction, value: int) -> None:
        try:
            self.sysfs.write_num_vfs(pf.address, value)
        except OSError as e:
            raise kernel_error(
                e.errno or errno.EIO,
                f"set sriov_numvfs to {value}",
                _pf_label(pf),
                driver=pf.driver,
            ) from None

    def _sysfs_write(
        self, pf: PhysicalFunction, operation: str, vf: PciAddress, driver: str | None
    ) -> None:
        """Unbind *vf* from *driver*, or (driver None) ask the kernel to probe it."""
        try:
            if driver is None:
                self.sysfs.probe(vf)
            else:
                self.sysfs.unbind(vf, driver)
        except OSError as e:
            raise kernel_error(e.errno or errno.EIO, operation, str(vf), driver=pf.driver) from None

    def _wait_for_vfs(
        self, pf: PhysicalFunction, count: int, deadline: float
    ) -> tuple[VirtualFunction, ...]:
        while True:
            vfs = self.sysfs.vfs_of(pf.address)
            missing = [
                f"VF {vf.index} ({vf.address}) has no netdev yet"
                for vf in vfs
                if vf.driver is not None
                and vf.driver not in USERSPACE_DRIVERS
                and vf.netdev is None
            ]
            if len(vfs) != count:
                missing.insert(0, f"{len(vfs)} of {count} VFs exist")
            if not missing:
                return vfs
            if time.monotonic() >= deadline:
                raise VfsNotReady(
                    f"after setting sriov_numvfs of {_pf_label(pf)} to {count}: "
                    + "; ".join(missing)
                )
            time.sleep(self.poll_interval)

    # -- VF lifecycle: settings ----------------------------------------------------------

    def vf_state(self, vf: VirtualFunction | PciAddress | str) -> VfState:
        """The VF's settings as its PF's driver reports them (one netlink request)."""
        current = self._fresh_vf(vf)
        pf = self._fresh_pf(current.pf_address)
        return self._read_vf(_pf_netdev(pf), current.index)

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
        current = self._fresh_vf(vf)
        pf = self._fresh_pf(current.pf_address)
        pf_name = _pf_netdev(pf)
        self._check_with_plugin(pf, current, config)
        self._refuse_known_unsupported(pf, pf_name, current, config)
        before = self._read_vf(pf_name, current.index)
        return self._apply(pf, pf_name, current, config, before)

    def _check_with_plugin(
        self, pf: PhysicalFunction, vf: VirtualFunction, config: VfConfig, mtu: int | None = None
    ) -> None:
        """Refuse, before any kernel call, what the vendor plugin knows will fail."""
        pf_mtu = self.sysfs.netdev_mtu(pf.netdevs[0]) if pf.netdevs else None
        hooks = self.hooks(pf)
        errors = [
            f"{issue.message} ({issue.hint})" if issue.hint else issue.message
            for issue in hooks.check_vf_config(config, vf_mtu=mtu, pf_mtu=pf_mtu)
            if issue.severity is Severity.ERROR
        ]
        if errors:
            where = f"VF {vf.index} ({vf.address}) of {_pf_label(pf)}, {hooks.vendor} plugin"
            raise InvalidVfConfig(tuple(f"{where}: {e}" for e in errors))

    def _deliver_mac(self, pf: PhysicalFunction, vf: VirtualFunction, mac: str) -> None:
        """Make a newly set admin MAC reach the VF's bound netdev, as its plugin says.

        Nothing to do for a VF without a netdev in the host namespace (vfio-pci, or
        moved into a pod: ``attach`` sets that netdev's MAC itself).
        """
        vf = self._fresh_vf(vf.address)
        if vf.netdev is None or vf.driver is None or vf.driver in USERSPACE_DRIVERS:
            return
        fixup = self.hooks(pf).mac_fixup(vf)
        if fixup is MacFixup.NONE:
            return
        if fixup is MacFixup.WAIT_NETDEV:
            deadline = time.monotonic() + self.verify_timeout
            while time.monotonic() < deadline:
                if self.sysfs.netdev_mac(vf.netdev) == mac:
                    return
                time.sleep(self.poll_interval)
            fixup = MacFixup.SET_NETDEV_MAC  # not propagated in time: set it ourselves
        if fixup is MacFixup.SET_NETDEV_MAC:
            _retry_busy(_bind(_set_mac, self.netlink, self.netlink.get_link(vf.netdev).index, mac))
            return
        self.rebind_vf(vf)

    def rebind_vf(self, vf: VirtualFunction | PciAddress | str) -> VirtualFunction:
        """Re-probe a VF's driver (unbind, bind) and keep its netdev name.

        Some drivers apply an admin MAC only when the VF driver probes again (igb,
        ixgbe). The new netdev gets whatever name the kernel picks; it is renamed back
        to the old one while it is still down.
        """
        current = self._fresh_vf(vf)
        pf = self._fresh_pf(current.pf_address)
        if current.driver is None:
            raise DeviceNotFound("driver of VF", str(current.address), "it is unbound")
        old_name = current.netdev
        self._sysfs_write(pf, "unbind VF", current.address, current.driver)
        try:
            self.sysfs.bind(current.address, current.driver)
        except OSError as e:
            raise kernel_error(
                e.errno or errno.EIO, "bind VF", str(current.address), driver=current.driver
            ) from None
        deadline = time.monotonic() + self.wait_timeout
        fresh = self._fresh_vf(current.address)
        while old_name is not None and fresh.netdev is None:
            if time.monotonic() >= deadline:
                raise VfsNotReady(
                    f"VF {current.address} has no netdev after rebinding {current.driver}"
                )
            time.sleep(self.poll_interval)
            fresh = self._fresh_vf(current.address)
        if old_name is not None and fresh.netdev is not None and fresh.netdev != old_name:
            link = self.netlink.get_link(fresh.netdev)
            if not link.up and _get_or_none(self.netlink, old_name, None) is None:
                self.netlink.rename_link(link.index, old_name)
                fresh = self._fresh_vf(current.address)
        return fresh

    def bind_driver(
        self, vf: VirtualFunction | PciAddress | str, device_type: DeviceType
    ) -> VirtualFunction:
        """Bind a VF to the driver its plugin names for *device_type* (``vfio-pci`` for
        userspace, the kernel VF driver for a netdev), through ``driver_override`` and
        ``drivers_probe``; a VF already on that driver is left alone."""
        current = self._fresh_vf(vf)
        pf = self._fresh_pf(current.pf_address)
        driver = self.hooks(pf).vf_driver(current, device_type)
        if driver is not None and current.driver == driver:
            return current
        if current.driver is not None:
            self._sysfs_write(pf, "unbind VF", current.address, current.driver)
        try:
            self.sysfs.set_driver_override(current.address, driver)
            self.sysfs.probe(current.address)
        except OSError as e:
            raise kernel_error(
                e.errno or errno.EIO,
                f"bind VF to {driver}",
                str(current.address),
                driver=pf.driver,
            ) from None
        return self._fresh_vf(current.address)

    def _refuse_known_unsupported(
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

    def _apply(
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
                _retry_busy(step.apply)
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

    def _plan(  # noqa: PLR0912 - one branch per setting, in the documented order
        self, pf_name: str, index: int, config: VfConfig, before: VfState
    ) -> tuple[list[_Step], dict[str, object]]:
        """The steps that change what differs, and the state expected afterwards."""
        nl = self.netlink
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
                    _bind(setter, pf_name, index, wanted),
                    _bind(setter, pf_name, index, old) if old is not None else _cannot_undo(name),
                )
        if config.mac is not None:
            expected["mac"] = config.mac
            if config.mac != before.mac:
                step(
                    "mac",
                    _bind(nl.set_vf_mac, pf_name, index, config.mac),
                    _bind(nl.set_vf_mac, pf_name, index, before.mac),
                )
        return steps, expected

    def _verify(
        self, pf_name: str, index: int, expected: dict[str, object], driver: str | None
    ) -> VfState:
        deadline = time.monotonic() + self.verify_timeout
        while True:
            state = self._read_vf(pf_name, index)
            wrong = tuple(
                (name, value, getattr(state, name))
                for name, value in expected.items()
                if getattr(state, name) is not None and getattr(state, name) != value
            )
            if not wrong:
                return state
            if time.monotonic() >= deadline:
                raise NotApplied(f"{pf_name} vf {index}", driver, wrong, "")
            time.sleep(self.poll_interval)

    def _undo(self, applied: list[_Step]) -> str:
        """Undo *applied* newest first; say what happened, for the error message."""
        if not applied:
            return "nothing had been changed"
        failed = []
        for step in reversed(applied):
            try:
                _retry_busy(step.undo)
            except (KernelError, _CannotUndo) as e:
                failed.append(f"{step.knob} ({e})")
        undone = ", ".join(s.knob for s in applied)
        if failed:
            return f"ROLLBACK INCOMPLETE: could not put back {'; '.join(failed)}"
        return f"rolled back {undone}"

    # -- VF lifecycle: capabilities --------------------------------------------------

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
        parent = self._fresh_pf(pf)
        driver = parent.driver or ""
        if not refresh and driver in self._capabilities:
            return self._capabilities[driver]
        pf_name = _pf_netdev(parent)
        states = {state.index: state for state in self.netlink.vf_states(pf_name)}
        target = self._fresh_vf(vf) if vf is not None else self._probe_target(parent, states)
        if target.index not in states:
            raise KernelNotFound(
                "read VF list",
                f"{pf_name} vf {target.index}",
                errno.ENODEV,
                detail="the PF reports no such VF",
            )
        carrier = self.sysfs.carrier(pf_name)
        found = _Probe(self.netlink, pf_name, target.index, carrier).run(states[target.index])
        after = self._read_vf(pf_name, target.index)
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
        vfs = self.sysfs.vfs_of(pf.address)
        if not vfs:
            raise DeviceNotFound("VF to probe on", _pf_label(pf), "enable VFs first")
        free = [vf for vf in vfs if not self._in_use(vf)] or list(vfs)
        unset = [vf for vf in free if vf.index in states and states[vf.index].mac == ZERO_MAC]
        return (unset or free)[-1]

    # -- VF lifecycle: attach and release --------------------------------------------

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
        current = self._fresh_vf(vf)
        pf = self._fresh_pf(current.pf_address)
        normal = None if mac is None else mac.strip().lower()
        return self._snapshot(pf, _pf_netdev(pf), current, netns, ifname, normal)

    def _snapshot(
        self,
        pf: PhysicalFunction,
        pf_name: str,
        vf: VirtualFunction,
        netns: NetnsRef,
        ifname: str,
        mac: str | None,
    ) -> AttachSnapshot:
        state = self._read_vf(pf_name, vf.index)
        link = None if vf.netdev is None else self.netlink.get_link(vf.netdev)
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
        current = self._fresh_vf(vf)
        pf = self._fresh_pf(current.pf_address)
        pf_name = _pf_netdev(pf)
        self._check_with_plugin(pf, current, config or VfConfig(), mtu)
        if config is not None:
            self._refuse_known_unsupported(pf, pf_name, current, config)
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
                state = self._apply(pf, pf_name, current, first, state)
            if link is not None:
                self._plug(link, netns, ifname, mac, mtu)
            if admin_mac and config is not None:
                self._apply(
                    pf,
                    pf_name,
                    current,
                    VfConfig(mac=config.mac),
                    self._read_vf(pf_name, current.index),
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
            self.netlink.forget_namespaces()
        return snapshot

    def _plug(
        self, link: LinkInfo, netns: NetnsRef, ifname: str, mac: str | None, mtu: int | None
    ) -> None:
        nl = self.netlink
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
            self.netlink.forget_namespaces()

    def _release(self, snapshot: AttachSnapshot, netns: NetnsRef | None) -> ReleaseReport:
        restored: list[str] = []
        warnings: list[str] = []
        try:
            current = self._read_vf(snapshot.pf_netdev, snapshot.vf_index)
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
        nl, pf, index, old = self.netlink, snapshot.pf_netdev, snapshot.vf_index, snapshot.vf_state
        changes: list[tuple[str, Callable[[], None]]] = []
        if current.mac != old.mac:
            if old.mac in (ZERO_MAC, snapshot.host_mac):
                if current.mac not in (ZERO_MAC, snapshot.host_mac):
                    changes.append(("mac", _bind(nl.set_vf_mac, pf, index, ZERO_MAC)))
            else:
                changes.append(("mac", _bind(nl.set_vf_mac, pf, index, old.mac)))
        for name, setter in (("trust", nl.set_vf_trust), ("spoofchk", nl.set_vf_spoofchk)):
            was, now = getattr(old, name), getattr(current, name)
            if was is not None and now is not None and was != now:
                changes.append((name, _bind(setter, pf, index, was)))
        if (current.vlan, current.qos, current.vlan_proto) != (old.vlan, old.qos, old.vlan_proto):
            changes.append(
                ("vlan", _bind(nl.set_vf_vlan, pf, index, old.vlan, old.qos, old.vlan_proto))
            )
        if (current.min_tx_rate, current.max_tx_rate) != (old.min_tx_rate, old.max_tx_rate):
            changes.append(
                ("tx_rate", _bind(nl.set_vf_rate, pf, index, old.min_tx_rate, old.max_tx_rate))
            )
        if old.query_rss is not None and current.query_rss not in (None, old.query_rss):
            changes.append(("query_rss", _bind(nl.set_vf_query_rss, pf, index, old.query_rss)))
        if old.link_state is not None and current.link_state not in (None, old.link_state):
            changes.append(("link_state", _bind(nl.set_vf_link_state, pf, index, old.link_state)))
        changes = self._releasable(snapshot, changes)
        done = []
        for name, change in changes:
            try:
                _retry_busy(change)
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
        keep = self.hooks(snapshot.pf).release_knobs(changed)
        return [(name, change) for name, change in changes if knobs[name] & keep]

    def _locate(
        self, snapshot: AttachSnapshot, netns: NetnsRef | None, warnings: list[str]
    ) -> tuple[LinkInfo | None, str]:
        """Find the VF netdev: in the namespace, else on the host by PCI address."""
        nl = self.netlink
        if netns is not None and (isinstance(netns, int) or os.path.exists(netns)):
            try:
                for name in dict.fromkeys((snapshot.ifname, snapshot.host_name)):
                    found = None if name is None else _get_or_none(nl, name, netns)
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
            device = self.sysfs.device(snapshot.vf)
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
            device = self.sysfs.device(snapshot.vf)
        except DeviceNotFound:
            return None
        netdev = device.netdev if isinstance(device, VirtualFunction) else None
        for name in dict.fromkeys((netdev, *guesses)):
            found = None if name is None else _get_or_none(self.netlink, name, None)
            if found is not None and _same_device(found, snapshot):
                return found
        if guesses:
            # after a move under a kernel-chosen name that sysfs does not show (a tree
            # that does not follow netlink, as in the kernel tests): one dump
            for found in self.netlink.links():
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
        nl = self.netlink
        try:
            nl.move_link(link.index, host_name, netns=netns)
            return nl.get_link(host_name)
        except KernelError as e:
            if e.errno != errno.EEXIST:
                raise
        warnings.append(f"host name {host_name!r} is taken on the host")
        if netns is not None and _get_or_none(nl, link.name, netns) is not None:
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
        nl = self.netlink
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
        nl = self.netlink
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
            action = _bind(_set_mac, nl, link.index, snapshot.host_mac)
            changes.append(("mac", action, (errno.EADDRNOTAVAIL,)))
        if snapshot.host_mtu is not None and snapshot.host_mtu != link.mtu:
            changes.append(("mtu", _bind(_set_mtu, nl, link.index, snapshot.host_mtu), ()))
        for name, change, also in changes:
            try:
                _retry_busy(change, also)
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

    # -- helpers -----------------------------------------------------------------------

    def _fresh_pf(self, pf: PhysicalFunction | str | PciAddress) -> PhysicalFunction:
        return self.pf(pf.address if isinstance(pf, PhysicalFunction) else pf)

    def _fresh_vf(self, vf: VirtualFunction | PciAddress | str) -> VirtualFunction:
        return self.vf(vf.address if isinstance(vf, VirtualFunction) else vf)

    def _read_vf(self, pf_name: str, index: int) -> VfState:
        for state in self.netlink.vf_states(pf_name):
            if state.index == index:
                return state
        raise KernelNotFound(
            "read VF list",
            f"{pf_name} vf {index}",
            errno.ENODEV,
            detail="the PF reports no such VF",
        )

    def _resolve(self, name_or_address: str | PciAddress, kind: str) -> PciAddress:
        if isinstance(name_or_address, PciAddress):
            return name_or_address
        try:
            return PciAddress.parse(name_or_address)
        except InvalidPciAddress:
            pass
        try:
            address = self.sysfs.netdev_address(name_or_address)
        except ValueError as e:
            raise DeviceNotFound(kind, name_or_address, str(e)) from None
        except DeviceNotFound:
            raise DeviceNotFound(
                kind, name_or_address, "neither a PCI address nor a network interface"
            ) from None
        if address is None:
            raise DeviceNotFound(kind, name_or_address, "it is a virtual interface")
        return address


def _describe(device: PhysicalFunction | VirtualFunction | NetworkDevice) -> str:
    if isinstance(device, VirtualFunction):
        return f"VF {device.index} of {device.pf_address}"
    if isinstance(device, PhysicalFunction):
        return "an SR-IOV PF"
    return "a NIC without SR-IOV"


# -- lifecycle helpers ---------------------------------------------------------------------


class _CannotUndo(Exception):
    """The old value of a setting is unknown (the driver does not report it)."""


def _cannot_undo(knob: str) -> Callable[[], None]:
    def fail() -> None:
        raise _CannotUndo(f"the driver does not report the old {knob}")

    return fail


def _bind(function: Callable[..., None], *args: object) -> Callable[[], None]:
    return lambda: function(*args)


def _retry_busy(action: Callable[[], None], also: tuple[int, ...] = ()) -> None:
    """Run *action*; on EBUSY/EAGAIN (or an errno in *also*) try again a few times, for
    about 0.75 s in all. Drivers such as i40e answer busy while a VF resets after the
    previous change; igbvf answers EADDRNOTAVAIL to a MAC change while its mailbox is
    still busy with the PF's last change (seen after a namespace was deleted)."""
    for attempt in range(_BUSY_RETRIES):
        try:
            action()
            return
        except KernelError as e:
            if not (isinstance(e, Busy) or e.errno in also) or attempt == _BUSY_RETRIES - 1:
                raise
            time.sleep(0.05 * 2**attempt)


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


def _set_mac(nl: NetlinkBackend, index: int, mac: str) -> None:
    nl.set_link(index, mac=mac)


def _set_mtu(nl: NetlinkBackend, index: int, mtu: int) -> None:
    nl.set_link(index, mtu=mtu)


def _get_or_none(nl: NetlinkBackend, name: str, netns: NetnsRef | None) -> LinkInfo | None:
    try:
        return nl.get_link(name, netns)
    except KernelNotFound:
        return None


def _same_device(link: LinkInfo, snapshot: AttachSnapshot) -> bool:
    """Whether *link* is the snapshot's VF netdev: by its parent PCI device, or where
    the kernel reports none (old kernels; veths in the kernel tests) by one of the MACs
    it was given. (Not by ifindex: a move into a namespace where the index is taken
    gives the netdev a new one, and indexes of different namespaces collide.)"""
    if link.parent is not None:
        return link.parent == str(snapshot.vf)
    return link.mac in (snapshot.host_mac, snapshot.mac)


def _moved_away(vf: VirtualFunction) -> bool:
    """Default ``in_use``: the VF has a netdev driver but no netdev on the host."""
    return vf.driver is not None and vf.driver not in USERSPACE_DRIVERS and vf.netdev is None


def _pf_label(pf: PhysicalFunction) -> str:
    return f"{pf.address} ({pf.netdevs[0]})" if pf.netdevs else str(pf.address)


def _pf_netdev(pf: PhysicalFunction) -> str:
    if not pf.netdevs:
        raise DeviceNotFound(
            "netdev of PF",
            str(pf.address),
            "VF settings go through the PF's interface; is its driver bound?",
        )
    return pf.netdevs[0]


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


def _summary(report: ReleaseReport) -> str:
    text = f"restored: {', '.join(report.restored) or 'nothing needed'}"
    if report.warnings:
        text += f"; warnings: {'; '.join(report.warnings)}"
    return text


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
        self._try(VfKnob.MAC, _bind(nl.set_vf_mac, pf, i, b.mac))
        self._try(VfKnob.VLAN, _bind(nl.set_vf_vlan, pf, i, b.vlan, b.qos, b.vlan_proto))
        test_vlan = b.vlan or 4094
        self._try(
            VfKnob.QOS,
            _bind(nl.set_vf_vlan, pf, i, test_vlan, b.qos % 7 + 1, b.vlan_proto),
            self._restore_vlan,
        )
        self._try(
            VfKnob.VLAN_8021AD,
            _bind(nl.set_vf_vlan, pf, i, test_vlan, b.qos, VlanProto.DOT1AD),
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
                self._try(knob, _bind(setter, pf, i, value))
        rss = False if b.query_rss is None else b.query_rss
        self._try(VfKnob.QUERY_RSS, _bind(nl.set_vf_query_rss, pf, i, rss))
        self._try(
            VfKnob.MIN_TX_RATE,
            _bind(nl.set_vf_rate, pf, i, max(b.min_tx_rate, 1), max(b.max_tx_rate, 0)),
            self._restore_rate,
        )
        self._try(
            VfKnob.MAX_TX_RATE,
            _bind(nl.set_vf_rate, pf, i, b.min_tx_rate, b.max_tx_rate or max(100, b.min_tx_rate)),
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
            _retry_busy(probe)
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
            _retry_busy(restore)
