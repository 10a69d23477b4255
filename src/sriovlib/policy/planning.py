"""Comparing the node with the merged target: every change, with what it costs."""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from sriovlib.exceptions import SriovError
from sriovlib.models import LinkInfo, LinkType, PciAddress, PhysicalFunction, VirtualFunction
from sriovlib.plugins.types import DeviceType, EswitchMode
from sriovlib.policy.merging import merge, pool_config
from sriovlib.policy.model import (
    USERSPACE_DRIVERS,
    Disruption,
    NodePolicy,
    NodeTarget,
    PfTarget,
    PolicyError,
    PolicyFile,
    PolicyLinkType,
)
from sriovlib.pools import PoolConfig

if TYPE_CHECKING:
    from sriovlib.host import Host


@attrs.frozen(kw_only=True)
class Change:
    """One difference between the node and the target.

    Attributes:
        what: What changes (``mtu``, ``sriov_numvfs``, ``driver``...).
        before / after: The value now and the value wanted, as text.
        disruption: What it costs the workloads.
        vf: The VF index for a VF's change, None for the PF's or the node's.
        command: For a change sriovlib does not make (a reboot), what to run.
        applied: Whether :func:`apply` makes it (False: reported only).
        note: Why, in a few words.
    """

    what: str
    before: str
    after: str
    disruption: Disruption
    vf: int | None = None
    command: str | None = None
    applied: bool = True
    note: str = ""

    @property
    def subject(self) -> str:
        """``PF``, ``VF 3`` or ``node``."""
        return "PF" if self.vf is None else f"VF {self.vf}"

    def __str__(self) -> str:
        return f"{self.subject} {self.what} {self.before} -> {self.after}"

    def to_dict(self) -> dict[str, Any]:
        """The change as JSON."""
        out: dict[str, Any] = {
            "vf": self.vf,
            "what": self.what,
            "before": self.before,
            "after": self.after,
            "disruption": str(self.disruption),
            "applied": self.applied,
        }
        if self.command is not None:
            out["command"] = self.command
        if self.note:
            out["note"] = self.note
        return out


@attrs.frozen(kw_only=True)
class PfPlan:
    """The changes of one PF, in the order :func:`apply` makes them.

    Attributes:
        target: What the policies want.
        vendor: The vendor plugin handling the PF.
        changes: Every difference, applied or reported.
        numvfs_steps: The plugin's steps for the VF count (and eswitch mode).
        busy: The PF's VFs in use now (a disruptive change is refused while any is).
    """

    target: PfTarget
    vendor: str
    changes: tuple[Change, ...] = ()
    numvfs_steps: tuple[str, ...] = ()
    busy: tuple[VirtualFunction, ...] = ()

    @property
    def pf(self) -> PhysicalFunction:
        """The PF."""
        return self.target.pf

    @property
    def disruptive(self) -> bool:
        """Whether an applied change disrupts pods holding VFs of this PF."""
        return any(c.applied and c.disruption is Disruption.PODS for c in self.changes)

    @property
    def refused(self) -> tuple[Change, ...]:
        """The disruptive changes VFs in use stand in the way of: a PF-wide one (the VF
        count, the eswitch mode) while any VF is in use, a VF's driver while that VF is."""
        held = {vf.index for vf in self.busy}
        disruptive = [c for c in self.changes if c.applied and c.disruption is Disruption.PODS]
        return tuple(c for c in disruptive if (c.vf is None and held) or c.vf in held)

    def to_dict(self) -> dict[str, Any]:
        """The PF's plan as JSON."""
        t = self.target
        return {
            "pf": str(self.pf.address),
            "name": self.pf.name,
            "plugin": self.vendor,
            "policies": list(t.policies),
            "target": {
                "numVfs": t.num_vfs,
                "vfBudget": None
                if t.budget is None
                else {"min": t.budget.min, "max": t.budget.max},
                "mtu": t.mtu,
                "eSwitchMode": None if t.eswitch_mode is None else str(t.eswitch_mode),
                "linkType": None if t.link_type is None else str(t.link_type),
                "externallyManaged": t.externally_managed,
                "groups": [
                    {
                        "policy": g.policy,
                        "resourceName": g.resource_name,
                        "vfs": f"{g.first}-{g.last}",
                        "deviceType": str(g.device_type),
                        "mtu": g.mtu,
                    }
                    for g in t.groups
                ],
            },
            "changes": [c.to_dict() for c in self.changes],
            "numvfs_steps": list(self.numvfs_steps),
            "busy": [str(vf.address) for vf in self.busy],
            "refused_without_force": [str(c) for c in self.refused],
            "notes": list(t.notes),
        }


@attrs.frozen(kw_only=True)
class Plan:
    """Everything :func:`apply` would do, and what needs a reboot.

    Attributes:
        pfs: One plan per selected PF, in PCI order.
        node: Node-wide changes (kernel arguments).
        blockers: What must be done by hand before the plan can be applied.
        warnings: From the file and the merge (a selector matching nothing).
        pools: The device-plugin pools of the policies.
    """

    pfs: tuple[PfPlan, ...]
    node: tuple[Change, ...] = ()
    blockers: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()
    pools: PoolConfig = attrs.field(factory=PoolConfig)

    @property
    def changes(self) -> tuple[Change, ...]:
        """Every change of the node and its PFs."""
        return self.node + tuple(c for p in self.pfs for c in p.changes)

    @property
    def empty(self) -> bool:
        """Whether nothing would be written."""
        return not any(c.applied for c in self.changes)

    @property
    def needs_reboot(self) -> bool:
        """Whether a change only takes effect after a reboot."""
        return any(c.disruption is Disruption.REBOOT for c in self.changes)

    def to_dict(self) -> dict[str, Any]:
        """The plan as JSON."""
        from sriovlib.pools import config_to_dict

        return {
            "pfs": [p.to_dict() for p in self.pfs],
            "node": [c.to_dict() for c in self.node],
            "blockers": list(self.blockers),
            "warnings": list(self.warnings),
            "needs_reboot": self.needs_reboot,
            "pool_config": config_to_dict(self.pools),
        }


def plan(
    host: Host,
    policies: PolicyFile | Sequence[NodePolicy],
    *,
    counts: Mapping[PciAddress, int] | None = None,
) -> Plan:
    """Compare the node with the merged policies and list every change (writes nothing).

    *counts* sets the VF count of PFs with a budget (the DRA driver's VFs on demand); a
    count outside the PF's budget, or for a PF without one, is an error. Without it a
    budget PF keeps its count brought into the budget (raised to the floor, lowered to
    the ceiling).

    Raises:
        PolicyError: a conflict, or a target this node cannot reach (a VF count above
            a limit, switchdev on a driver without an eswitch, an externally managed PF
            short of VFs).
    """
    from sriovlib.doctor import IOMMU_OPTIONS

    file = policies if isinstance(policies, PolicyFile) else PolicyFile(tuple(policies))
    target = merge(file.policies, host.inventory())
    problems: list[str] = []
    if counts:
        target = _with_counts(target, counts)
    node: list[Change] = []
    blockers: list[str] = []
    wants_vfio = any(g.device_type is DeviceType.VFIO for t in target.pfs for g in t.groups)
    iommu_missing = False
    if wants_vfio:
        if host.sysfs.iommu_groups() == 0 and not host.sysfs.vfio_noiommu_enabled():
            iommu_missing = True
            option = IOMMU_OPTIONS.get(host.sysfs.cpu_vendor() or "", "intel_iommu=on iommu=pt")
            node.append(
                Change(
                    what="kernel arguments",
                    before=host.sysfs.kernel_cmdline() or "(unreadable)",
                    after=f"+ {option}",
                    disruption=Disruption.REBOOT,
                    applied=False,
                    command="sudo sed -i 's/^GRUB_CMDLINE_LINUX=\"/&"
                    + option
                    + " /' /etc/default/grub && sudo update-grub && sudo reboot",
                    note="vfio-pci needs an IOMMU",
                )
            )
        elif not host.sysfs.pci_driver_loaded("vfio-pci"):
            blockers.append("the vfio-pci driver is not loaded; run: modprobe vfio-pci")
    pf_plans = []
    for pf_target in target.pfs:
        try:
            pf_plans.append(_plan_pf(host, pf_target, iommu_missing=iommu_missing))
        except (PolicyError, SriovError) as e:
            problems.append(str(e))
    if problems:
        raise PolicyError(problems)
    return Plan(
        pfs=tuple(pf_plans),
        node=tuple(node),
        blockers=tuple(blockers),
        warnings=file.warnings + target.warnings,
        pools=pool_config(target),
    )


def _with_counts(target: NodeTarget, counts: Mapping[PciAddress, int]) -> NodeTarget:
    """*target* with the VF counts of *counts* for its budget PFs."""
    problems = []
    pfs = []
    known = {t.pf.address for t in target.pfs}
    for address in sorted(set(counts) - known):
        problems.append(f"{address}: no policy selects this PF")
    for pf_target in target.pfs:
        count = counts.get(pf_target.pf.address)
        budget = pf_target.budget
        if count is None:
            pfs.append(pf_target)
        elif budget is None:
            problems.append(f"{pf_target.pf.name}: has no vfBudget, its numVfs is fixed")
        elif budget.clamp(count) != count:
            problems.append(f"{pf_target.pf.name}: {count} VFs is outside its vfBudget {budget}")
        else:
            pfs.append(attrs.evolve(pf_target, num_vfs=count))
    if problems:
        raise PolicyError(problems)
    return attrs.evolve(target, pfs=tuple(pfs))


def _plan_pf(host: Host, target: PfTarget, *, iommu_missing: bool) -> PfPlan:
    pf = host.pf(target.pf.address)
    hooks = host.hooks(pf)
    changes: list[Change] = []
    netdev = pf.netdevs[0] if pf.netdevs else None
    link = host.link(netdev) if netdev is not None else None
    label = f"{pf.name} ({pf.address})"
    changes += _firmware_changes(pf, target, label)
    _check_external(pf, target, link, label)
    if link is not None and not link.up and not target.externally_managed:
        changes.append(Change(what="link", before="down", after="up", disruption=Disruption.LIVE))
    if (
        target.mtu is not None
        and link is not None
        and link.mtu < target.mtu
        and not target.externally_managed
    ):
        changes.append(
            Change(
                what="mtu",
                before=str(link.mtu),
                after=str(target.mtu),
                disruption=Disruption.LIVE,
                note="raised, never lowered; the PF link may flap",
            )
        )
    mode_change = None
    if target.eswitch_mode is not None:
        now_mode = host.eswitch_mode(pf)
        if now_mode is None and target.eswitch_mode is EswitchMode.SWITCHDEV:
            raise PolicyError(
                [
                    f"{label}: eSwitchMode switchdev wanted, but the {pf.driver} driver has "
                    "no devlink eswitch"
                ]
            )
        if now_mode is not None and now_mode is not target.eswitch_mode:
            mode_change = target.eswitch_mode
            changes.append(
                Change(
                    what="eswitch mode",
                    before=str(now_mode),
                    after=str(target.eswitch_mode),
                    disruption=Disruption.PODS,
                    note="through devlink; the VFs are recreated",
                )
            )
    steps: tuple[str, ...] = ()
    recreate = False
    if not target.externally_managed and (pf.num_vfs != target.num_vfs or mode_change):
        numvfs = host.plan_num_vfs(pf, target.num_vfs, eswitch_mode=mode_change)
        steps = tuple(str(s) for s in numvfs.steps)
        recreate = numvfs.disruptive or (pf.num_vfs == 0 and target.num_vfs > 0)
        if numvfs.needs_reboot:
            changes.append(
                Change(
                    what="sriov_numvfs",
                    before=str(pf.num_vfs),
                    after=str(target.num_vfs),
                    disruption=Disruption.REBOOT,
                    applied=False,
                    command=hooks.vf_limit().raise_hint or None,
                    note=numvfs.note,
                )
            )
        elif pf.num_vfs != target.num_vfs:
            changes.append(
                Change(
                    what="sriov_numvfs",
                    before=str(pf.num_vfs),
                    after=str(target.num_vfs),
                    disruption=Disruption.PODS if pf.num_vfs else Disruption.LIVE,
                    note=numvfs.note if pf.num_vfs else "",
                )
            )
    current = {vf.index: vf for vf in host.vfs(pf)} if not recreate else {}
    changes += _vf_changes(host, target, current, iommu_missing=iommu_missing)
    busy = tuple(vf for vf in host.vfs(pf) if host.node.in_use(vf)) if pf.num_vfs else ()
    return PfPlan(
        target=target,
        vendor=hooks.vendor,
        changes=tuple(changes),
        numvfs_steps=steps,
        busy=busy,
    )


def _firmware_changes(pf: PhysicalFunction, target: PfTarget, label: str) -> list[Change]:
    """A link type change: a firmware setting, so a reboot (mlx5 only)."""
    if target.link_type is None:
        return []
    has = PolicyLinkType.IB if pf.link_type is LinkType.INFINIBAND else PolicyLinkType.ETH
    if has is target.link_type:
        return []
    if pf.driver != "mlx5_core":
        raise PolicyError(
            [
                f"{label}: linkType {target.link_type} wanted, the PF is {has}; the "
                f"{pf.driver} driver cannot change it"
            ]
        )
    port = pf.address.function + 1
    return [
        Change(
            what="link type",
            before=str(has),
            after=str(target.link_type),
            disruption=Disruption.REBOOT,
            applied=False,
            command=f"mstconfig -d {pf.address} -y set "
            f"LINK_TYPE_P{port}={str(target.link_type).upper()} && sudo reboot",
            note="a firmware setting",
        )
    ]


def _check_external(
    pf: PhysicalFunction, target: PfTarget, link: LinkInfo | None, label: str
) -> None:
    """An externally managed PF must already have the VFs and MTU asked for."""
    if not target.externally_managed:
        return
    short = []
    if pf.num_vfs < target.num_vfs:
        short.append(f"{pf.num_vfs} VFs, the policies need {target.num_vfs}")
    if target.mtu is not None and link is not None and link.mtu < target.mtu:
        short.append(f"MTU {link.mtu}, the policies need {target.mtu}")
    if short:
        raise PolicyError(
            [
                f"{label} is externally managed and has {' and '.join(short)}: whoever "
                "manages it must create them (sriovlib apply does not)"
            ]
        )


def _vf_changes(
    host: Host,
    target: PfTarget,
    current: Mapping[int, VirtualFunction],
    *,
    iommu_missing: bool,
) -> list[Change]:
    """The VF drivers and MTUs to change (*current*: the VFs that stay, by index)."""
    hooks = host.hooks(target.pf)
    changes: list[Change] = []
    for group in target.groups:
        for index in group.indexes:
            vf = current.get(index)
            if group.device_type is DeviceType.VFIO:
                now = "(new VF)" if vf is None else (vf.driver or "(none)")
                if vf is None or vf.driver != "vfio-pci":
                    changes.append(
                        Change(
                            what="driver",
                            before=now,
                            after="vfio-pci",
                            vf=index,
                            disruption=Disruption.PODS
                            if vf is not None and vf.driver is not None
                            else Disruption.LIVE,
                            applied=not iommu_missing,
                            note="after the reboot" if iommu_missing else "",
                        )
                    )
                continue
            wanted = None if vf is None else hooks.vf_driver(vf, DeviceType.NETDEVICE)
            rebind = vf is not None and (vf.driver is None or vf.driver in USERSPACE_DRIVERS)
            if rebind and vf is not None:
                changes.append(
                    Change(
                        what="driver",
                        before=vf.driver or "(none)",
                        after=wanted or "the kernel's VF driver",
                        vf=index,
                        disruption=Disruption.PODS if vf.driver else Disruption.LIVE,
                    )
                )
            if group.mtu is None:
                continue
            mtu = None
            if vf is not None and vf.netdev is not None and not rebind:
                mtu = host.sysfs.netdev_mtu(vf.netdev)
            elif vf is not None and vf.netdev is None and not rebind:
                continue  # in a pod: not ours to change now
            if mtu != group.mtu:
                changes.append(
                    Change(
                        what="mtu",
                        before="(new netdev)" if mtu is None else str(mtu),
                        after=str(group.mtu),
                        vf=index,
                        disruption=Disruption.LIVE,
                    )
                )
    return changes
