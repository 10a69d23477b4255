"""Carrying a plan out, in the vendor plugins' order."""

from __future__ import annotations

import errno
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

import attrs

from sriovlib.exceptions import Busy, VfsNotReady
from sriovlib.models import PciAddress, VirtualFunction
from sriovlib.plugins.types import DeviceType
from sriovlib.policy.model import USERSPACE_DRIVERS, PolicyError
from sriovlib.policy.planning import Change, PfPlan, Plan

if TYPE_CHECKING:
    from sriovlib.host import Host


@attrs.frozen
class ApplyReport:
    """What :func:`apply` did: the changes made, per PF, and how long it took."""

    done: tuple[tuple[PciAddress, Change], ...]
    seconds: float


#: Called with one line before anything that waits (and after it, with the time taken).
Progress = Callable[[str], None]


def apply(
    host: Host,
    the_plan: Plan,
    *,
    force: bool = False,
    timeout: float | None = None,
    progress: Progress | None = None,
) -> ApplyReport:
    """Make the changes of *the_plan* that sriovlib makes, PF by PF, in the vendor
    plugins' order: PF link up, PF MTU, eswitch mode and VF count (the plugin's numvfs
    plan), VF drivers (``driver_override``), VF MTU. Changes needing a reboot are left
    (the plan gives their commands).

    Everything that could refuse is checked before the first write: a blocker, or a
    disruptive change VFs in use stand in the way of (:attr:`PfPlan.refused`; unless
    *force*): the VF count or eswitch mode of a PF with any VF in use, the driver of a
    VF in use.

    Raises:
        PolicyError: a blocker (e.g. vfio-pci not loaded).
        Busy: a disruptive change while VFs are in use, without *force*.
        KernelError: the kernel refused a write (what came before it stays).
    """
    say = progress or (lambda _line: None)
    if the_plan.blockers and not the_plan.empty:
        raise PolicyError(list(the_plan.blockers))
    if not force:
        for pf_plan in the_plan.pfs:
            if pf_plan.refused:
                names = ", ".join(f"{vf.index} ({vf.address})" for vf in pf_plan.busy)
                what = ", ".join(str(c) for c in pf_plan.refused)
                raise Busy(
                    "apply the policy",
                    f"{pf_plan.pf.address} ({pf_plan.pf.name})",
                    errno.EBUSY,
                    driver=pf_plan.pf.driver,
                    detail=f"VF {names} in use; {what} would take them away "
                    "(pass --force to do it anyway)",
                )
    started = time.monotonic()
    done: list[tuple[PciAddress, Change]] = []
    for pf_plan in the_plan.pfs:
        done.extend(
            (pf_plan.pf.address, c)
            for c in _apply_pf(host, pf_plan, force=force, timeout=timeout, say=say)
        )
    return ApplyReport(tuple(done), round(time.monotonic() - started, 3))


def _apply_pf(  # noqa: PLR0912, PLR0915 - the vendor order, one step per kind of change
    host: Host, pf_plan: PfPlan, *, force: bool, timeout: float | None, say: Progress
) -> list[Change]:
    pf = pf_plan.pf
    target = pf_plan.target
    netdev = pf.netdevs[0] if pf.netdevs else None
    todo = [c for c in pf_plan.changes if c.applied]
    done: list[Change] = []
    deadline = time.monotonic() + (host.node.wait_timeout if timeout is None else timeout)
    carrier = host.sysfs.carrier(netdev) if netdev is not None else None
    for change in todo:
        if change.vf is None and change.what == "link" and netdev is not None:
            host.set_link(netdev, up=True)
            done.append(change)
        elif change.vf is None and change.what == "mtu" and netdev is not None:
            host.set_link(netdev, mtu=int(change.after))
            done.append(change)
    if netdev is not None and carrier and done:
        # an MTU change resets the PF (igb, ixgbe): VFs made before its link is back
        # come up with made-up MACs, so wait for the carrier it had
        say(f"{pf.name}: waiting for the PF's carrier...")
        while host.sysfs.carrier(netdev) is not True and time.monotonic() < deadline:
            time.sleep(host.node.poll_interval)
    numvfs = [c for c in todo if c.vf is None and c.what in ("eswitch mode", "sriov_numvfs")]
    if numvfs:
        mode = target.eswitch_mode if any(c.what == "eswitch mode" for c in numvfs) else None
        say(
            f"{pf.name}: {', '.join(str(c) for c in numvfs)} ({', '.join(pf_plan.numvfs_steps)}); "
            "waiting for the VFs and their netdevs..."
        )
        made = host.set_num_vfs(pf, target.num_vfs, force=force, timeout=timeout, eswitch_mode=mode)
        say(f"{pf.name}: {len(made.vfs)} VFs ready after {made.waited:.2f} s")
        done.extend(numvfs)
    vf_changes = [c for c in todo if c.vf is not None]
    if not vf_changes:
        return done
    hooks = host.hooks(pf)
    vfs = {vf.index: vf for vf in host.vfs(pf)}
    deadline = time.monotonic() + (host.node.wait_timeout if timeout is None else timeout)
    for group in target.groups:
        for index in group.indexes:
            vf = vfs.get(index)
            if vf is None:
                continue
            mine = [c for c in vf_changes if c.vf == index]
            if not mine:
                continue
            wanted = hooks.vf_driver(vf, group.device_type)
            if group.device_type is DeviceType.VFIO or vf.driver in (None, *USERSPACE_DRIVERS):
                if wanted is None or vf.driver != wanted:
                    vf = host.bind_driver(vf, group.device_type)
                    if vf.driver is None or (wanted is not None and vf.driver != wanted):
                        raise VfsNotReady(
                            f"VF {index} ({vf.address}) of {pf.name} did not bind to "
                            f"{wanted or 'its kernel driver'} (it has "
                            f"{vf.driver or 'no driver'}); for vfio-pci: is there an IOMMU?"
                        )
                done.extend(c for c in mine if c.what == "driver")
            if group.device_type is DeviceType.VFIO or group.mtu is None:
                continue
            if vf.netdev is None:
                say(f"{pf.name}: waiting for the netdev of VF {index} ({vf.address})...")
                vf = _wait_netdev(host, vf, deadline)
            assert vf.netdev is not None  # noqa: S101 - _wait_netdev raises otherwise
            if host.sysfs.netdev_mtu(vf.netdev) != group.mtu:
                host.set_link(vf.netdev, mtu=group.mtu)
            done.extend(c for c in mine if c.what == "mtu")
    return done


def _wait_netdev(host: Host, vf: VirtualFunction, deadline: float) -> VirtualFunction:
    while True:
        fresh = host.vf(vf.address)
        if fresh.netdev is not None:
            return fresh
        if time.monotonic() >= deadline:
            raise VfsNotReady(f"VF {vf.index} ({vf.address}) has no netdev after binding")
        time.sleep(host.node.poll_interval)
