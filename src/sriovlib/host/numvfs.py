"""The numvfs lifecycle: how many VFs a PF has (``sriov_numvfs``).

:class:`NumVfs` checks a count against ``sriov_totalvfs`` and the vendor plugin's limit,
asks the plugin for the steps (generic: a non-zero count changes through 0, as the
kernel requires; the eswitch mode through devlink, in the plugin's order), refuses what
needs a reboot or an eswitch the driver does not have, carries the steps out and waits
for the VFs and their netdevs.
"""

from __future__ import annotations

import errno
import time

from sriovlib.exceptions import Busy, InvalidValue, Unsupported, VfsNotReady, kernel_error
from sriovlib.host.node import USERSPACE_DRIVERS, NodeContext, pf_label
from sriovlib.models import NumVfsChange, PciAddress, PhysicalFunction, VirtualFunction
from sriovlib.plugins.types import EswitchMode, NumVfsPlan, StepKind

TYPE_CHECKING = False
if TYPE_CHECKING:
    from sriovlib.plugins.manager import PfHooks

__all__ = ["NumVfs"]


class NumVfs:
    """Changes the VF count of a PF (:meth:`set_num_vfs`) and plans it (:meth:`plan_num_vfs`)."""

    def __init__(self, node: NodeContext) -> None:
        self.node = node

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
            Unsupported: the plan needs a reboot, or an eswitch mode the driver has
                no devlink eswitch for.
            Busy: VFs are in use and *force* is false, or the kernel said EBUSY.
            KernelError: the kernel refused the write.
            VfsNotReady: the VFs or netdevs did not appear in time.
        """
        parent = self.node.fresh_pf(pf)
        operation = f"set sriov_numvfs to {count}"
        device = pf_label(parent)
        before = self.node.sysfs.num_vfs(parent.address)
        plan = self.plan_num_vfs(parent, count, eswitch_mode=eswitch_mode)
        if not plan.steps:
            return NumVfsChange(
                parent.address, before, count, (), 0.0, self.node.sysfs.vfs_of(parent.address)
            )
        if before and plan.disruptive:
            busy = [vf for vf in self.node.sysfs.vfs_of(parent.address) if self.node.in_use(vf)]
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
        carrier = self.node.sysfs.carrier(parent.netdevs[0]) if parent.netdevs else None
        started = time.monotonic()
        writes = self._run_steps(parent, plan)
        deadline = started + (self.node.wait_timeout if timeout is None else timeout)
        vfs = self._wait_for_vfs(parent, count, deadline)
        if carrier and parent.netdevs:
            while (
                self.node.sysfs.carrier(parent.netdevs[0]) is not True
                and time.monotonic() < deadline
            ):
                time.sleep(self.node.poll_interval)
        return NumVfsChange(
            parent.address, before, count, tuple(writes), round(time.monotonic() - started, 3), vfs
        )

    def _run_steps(self, parent: PhysicalFunction, plan: NumVfsPlan) -> list[int]:
        """Carry the plan's steps out in order; return the values written to numvfs."""
        writes = []
        for step in plan.steps:
            if step.kind is StepKind.WRITE_NUMVFS:
                value = int(step.value or 0)
                self._write_num_vfs(parent, value)
                writes.append(value)
            elif step.kind is StepKind.UNBIND_VFS:
                for vf in self.node.sysfs.vfs_of(parent.address):
                    if vf.driver is not None:
                        self.node.sysfs_write(parent, "unbind VF", vf.address, vf.driver)
            elif step.kind is StepKind.BIND_VFS:
                for vf in self.node.sysfs.vfs_of(parent.address):
                    self.node.sysfs_write(parent, "probe VF", vf.address, None)
            elif step.kind is StepKind.SET_ESWITCH_MODE:
                address = str(parent.address)
                if self.node.netlink.eswitch_mode(address) != str(step.value):
                    self.node.netlink.set_eswitch_mode(address, str(step.value))
        return writes

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
        mode the driver has no devlink eswitch for). An empty plan means nothing would change.
        """
        parent = self.node.fresh_pf(pf)
        hooks = self.node.hooks(parent)
        operation = f"set sriov_numvfs to {count}"
        self._check_count(parent, hooks, count, operation)
        plan = hooks.numvfs_plan(self.node.sysfs.num_vfs(parent.address), count, eswitch_mode)
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
        raise InvalidValue(operation, pf_label(pf), errno.ERANGE, driver=pf.driver, detail=detail)

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
                pf_label(pf),
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
        current = self.node.netlink.eswitch_mode(str(pf.address))
        if current is None and modes - {"legacy"}:
            raise Unsupported(
                operation,
                pf_label(pf),
                errno.EOPNOTSUPP,
                driver=pf.driver,
                detail=f"the plan needs eswitch mode {', '.join(sorted(modes))}, but the "
                f"{pf.driver} driver has no devlink eswitch (plan: {note})",
            )

    def _write_num_vfs(self, pf: PhysicalFunction, value: int) -> None:
        try:
            self.node.sysfs.write_num_vfs(pf.address, value)
        except OSError as e:
            raise kernel_error(
                e.errno or errno.EIO,
                f"set sriov_numvfs to {value}",
                pf_label(pf),
                driver=pf.driver,
            ) from None

    def _wait_for_vfs(
        self, pf: PhysicalFunction, count: int, deadline: float
    ) -> tuple[VirtualFunction, ...]:
        while True:
            vfs = self.node.sysfs.vfs_of(pf.address)
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
                    f"after setting sriov_numvfs of {pf_label(pf)} to {count}: "
                    + "; ".join(missing)
                )
            time.sleep(self.node.poll_interval)
