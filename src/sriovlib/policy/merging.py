"""Merging the policies that select this node's PFs, as the operator does; the
device-plugin pools they describe."""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING, Any

from sriovlib.models import PciAddress, PhysicalFunction
from sriovlib.plugins.types import DeviceType
from sriovlib.policy.model import NodePolicy, NodeTarget, PfTarget, PolicyError, VfBudget, VfGroup
from sriovlib.pools import IndexRange, Pool, PoolConfig, Selector, VfFilter

if TYPE_CHECKING:
    from sriovlib.sysfs import Inventory


def merge(policies: Sequence[NodePolicy], inventory: Inventory) -> NodeTarget:
    """Select this node's PFs and merge the policies on each, as the operator does.

    Policies are taken from the lowest priority (99) to the highest (0), then by name,
    so a later one wins: its VF range replaces the overlapping ranges of policies of
    lower priority on the same PF. Two policies of equal priority claiming the same VF,
    or disagreeing on ``eSwitchMode`` or ``linkType`` of one PF, are a conflict.

    Raises:
        PolicyError: every conflict, naming both policies.
    """
    ordered = sorted(policies, key=lambda p: (-p.priority, p.name))
    by_name = {p.name: p for p in policies}
    groups: dict[PciAddress, list[VfGroup]] = {}
    notes: dict[PciAddress, list[str]] = {}
    warnings: list[str] = []
    problems: list[str] = []
    pfs = {pf.address: pf for pf in inventory.pfs}
    for policy in ordered:
        selected = [
            pf
            for pf in inventory.pfs
            if policy.nic_selector.selects(pf) and _budget_fits(policy, pf, problems)
        ]
        if not selected:
            warnings.append(f"policy {policy.name!r}: its nicSelector matches no PF on this node")
        for pf in selected:
            entry = policy.nic_selector.pf_name(pf)
            first, last = (0, policy.ceiling - 1)
            if entry is not None and entry.first is not None and entry.last is not None:
                first, last = entry.first, entry.last
            if last < first:  # numVfs 0: no VFs to configure
                groups.setdefault(pf.address, [])
                continue
            new = VfGroup(
                policy=policy.name,
                priority=policy.priority,
                resource_name=policy.resource_name,
                first=first,
                last=last,
                device_type=policy.device_type,
                mtu=policy.mtu,
                is_rdma=policy.is_rdma,
                need_vhost_net=policy.need_vhost_net,
                exclude_topology=policy.exclude_topology,
            )
            kept = []
            for old in groups.get(pf.address, []):
                if not old.overlaps(new):
                    kept.append(old)
                elif old.priority == new.priority:
                    problems.append(
                        f"policies {old.policy!r} and {new.policy!r} (both priority "
                        f"{new.priority}) both claim VFs {max(old.first, new.first)}-"
                        f"{min(old.last, new.last)} of {pf.name}: give one a different "
                        "priority or split the VF ranges"
                    )
                    kept.append(old)
                else:
                    notes.setdefault(pf.address, []).append(
                        f"policy {new.policy!r} (priority {new.priority}) takes VFs "
                        f"{new.first}-{new.last} of {pf.name} over from policy "
                        f"{old.policy!r} (priority {old.priority})"
                    )
            groups[pf.address] = [*kept, new]
    targets = []
    for address in sorted(groups):
        pf = pfs[address]
        left = [by_name[g.policy] for g in groups[address]]
        if not left:  # only numVfs-0 policies
            left = [p for p in ordered if p.nic_selector.selects(pf)][-1:]
        mode = _one(left, "eSwitchMode", lambda p: p.eswitch_mode, pf, problems)
        link = _one(left, "linkType", lambda p: p.link_type, pf, problems)
        mtus = [p.mtu for p in left if p.mtu is not None]
        budget = _budget(left, pf, problems)
        targets.append(
            PfTarget(
                pf=pf,
                num_vfs=budget.clamp(pf.num_vfs)
                if budget is not None
                else max(p.num_vfs for p in left),
                budget=budget,
                mtu=max(mtus) if mtus else None,
                eswitch_mode=mode,
                link_type=link,
                externally_managed=any(p.externally_managed for p in left),
                groups=tuple(sorted(groups[address], key=lambda g: g.first)),
                notes=tuple(notes.get(address, ())),
            )
        )
    if problems:
        raise PolicyError(problems)
    return NodeTarget(tuple(targets), tuple(warnings))


def _budget_fits(policy: NodePolicy, pf: PhysicalFunction, problems: list[str]) -> bool:
    """Whether *policy*'s budget (if any) fits *pf*'s ``sriov_totalvfs``."""
    if policy.vf_budget is None or policy.vf_budget.max <= pf.total_vfs:
        return True
    problems.append(
        f"policy {policy.name!r}: vfBudget.max {policy.vf_budget.max} exceeds totalvfs "
        f"{pf.total_vfs} of {pf.name}"
    )
    return False


def _budget(
    policies: Sequence[NodePolicy], pf: PhysicalFunction, problems: list[str]
) -> VfBudget | None:
    """The PF's budget when a policy on it has one: the floor is the largest fixed
    ``numVfs`` or ``vfBudget.min``, the ceiling the largest ``vfBudget.max``."""
    budgets = [p.vf_budget for p in policies if p.vf_budget is not None]
    if not budgets:
        return None
    floor = max(p.num_vfs for p in policies)
    ceiling = max(b.max for b in budgets)
    if floor > ceiling:
        fixed = max(policies, key=lambda p: p.num_vfs)
        problems.append(
            f"policy {fixed.name!r} wants {floor} VFs of {pf.name}, above the vfBudget.max "
            f"{ceiling} of the others on it: raise their max or lower its numVfs"
        )
        return None
    return VfBudget(floor, ceiling)


def _one(
    policies: Sequence[NodePolicy],
    key: str,
    value: Callable[[NodePolicy], Any],
    pf: PhysicalFunction,
    problems: list[str],
) -> Any:
    """The value of the highest-priority policy that sets *key*; equal priorities that
    disagree are a conflict."""
    setting = [p for p in policies if value(p) is not None]
    if not setting:
        return None
    best = min(p.priority for p in setting)
    top = sorted({str(value(p)): p for p in setting if p.priority == best}.items())
    if len(top) > 1:
        (a_value, a), (b_value, b) = top[:2]
        problems.append(
            f"policies {a.name!r} and {b.name!r} (both priority {best}) want {key} "
            f"{a_value} and {b_value} of {pf.name}"
        )
    return value(top[0][1])


# -- the pools ---------------------------------------------------------------------------


def pool_config(target: NodeTarget) -> PoolConfig:
    """The device-plugin pools of the merged policies: one per ``resourceName``, each
    VF range selected by its PF's name and range (``pfNames: ["ens1f0#0-1"]``, or
    ``rootDevices`` for a PF without an interface), vfio-pci ranges also by the
    ``vfio-pci`` driver (as the operator writes them)."""
    found: dict[str, dict[tuple[DeviceType, bool, bool], list[tuple[PfTarget, VfGroup]]]] = {}
    exclude: dict[str, bool] = {}
    for pf_target in target.pfs:
        for group in pf_target.groups:
            key = (group.device_type, group.is_rdma, group.need_vhost_net)
            found.setdefault(group.resource_name, {}).setdefault(key, []).append((pf_target, group))
            exclude[group.resource_name] = (
                exclude.get(group.resource_name, False) or group.exclude_topology
            )
    pools = []
    for name in sorted(found):
        selectors = []
        for (device_type, rdma, vhost), members in found[name].items():
            pf_names = []
            roots = []
            for pf_target, group in members:
                ranges = (IndexRange(group.first, group.last),)
                if pf_target.pf.netdevs:
                    pf_names.append(VfFilter(pf_target.pf.netdevs[0], ranges))
                else:
                    roots.append(VfFilter(str(pf_target.pf.address), ranges))
            selectors.append(
                Selector(
                    vendors=tuple(sorted({pf.pf.ids.vendor_hex for pf, _ in members})),
                    drivers=("vfio-pci",) if device_type is DeviceType.VFIO else (),
                    pf_names=tuple(pf_names),
                    root_devices=tuple(roots),
                    is_rdma=rdma,
                    need_vhost_net=vhost,
                )
            )
        pools.append(
            Pool(resource_name=name, exclude_topology=exclude[name], selectors=tuple(selectors))
        )
    return PoolConfig(pools=tuple(pools))
