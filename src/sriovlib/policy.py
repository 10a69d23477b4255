"""Declarative node policy: what ``sriovlib apply`` reads, merges, plans and applies.

A policy file holds SR-IOV node policies with the fields of sriov-network-operator's
``SriovNetworkNodePolicy`` spec, either as sriovlib's own document::

    policies:
      - name: pool-a
        resourceName: poolA
        numVfs: 4
        mtu: 9000
        nicSelector: {pfNames: ["ens1f0#0-1"]}

or as the operator's own documents (``apiVersion: sriovnetwork.openshift.io/v1``,
``kind: SriovNetworkNodePolicy``, or a ``List`` of them as ``kubectl get -o yaml``
prints), several per file as YAML documents, or JSON.

Four steps, each separable so it can be tested without hardware:

1. :func:`parse_policies` checks the file: unknown fields are errors with a suggestion,
   values are checked the way the operator's webhook does;
2. :func:`merge` selects this node's PFs and merges overlapping policies as the
   operator does: in order of priority (a lower number wins), then name; on one PF the
   VF ranges of a higher-priority policy replace overlapping ranges of lower ones, a
   VF range claimed by two policies of equal priority is a conflict naming both, and
   the PF gets the largest ``numVfs`` and ``mtu`` of the policies left on it;
3. :func:`plan` compares the merged target with the node and lists every change, each
   labelled :class:`Disruption` (live, disrupts pods holding VFs of the PF, needs a
   reboot), reboot-only changes with the command that makes them;
4. :func:`apply` carries the plan out in the vendor plugins' order (PF link up and MTU,
   eswitch mode and VF count through the plugin's numvfs plan, VF driver binding, VF
   MTU), refusing disruptive changes while VFs are in use unless forced. A plan of a
   node already in the target state is empty, so a second apply writes nothing.

:func:`pool_config` writes the device-plugin pools the policies' ``resourceName``\\ s
describe. See ``docs/policy.md``.
"""

from __future__ import annotations

import difflib
import enum
import errno
import json
import time
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING, Any

import attrs

from sriovlib._files import read_bounded
from sriovlib.exceptions import Busy, SriovError, VfsNotReady
from sriovlib.models import LinkInfo, LinkType, PciAddress, PhysicalFunction, VirtualFunction
from sriovlib.plugins.types import DeviceType, EswitchMode
from sriovlib.pools import IndexRange, Pool, PoolConfig, Selector, VfFilter

if TYPE_CHECKING:
    from sriovlib.host import Host
    from sriovlib.sysfs import Inventory

__all__ = [
    "MAX_POLICY_FILE",
    "OPERATOR_API",
    "ApplyReport",
    "Change",
    "Disruption",
    "NicSelector",
    "NodePolicy",
    "NodeTarget",
    "PfName",
    "PfPlan",
    "PfTarget",
    "Plan",
    "PolicyError",
    "PolicyFile",
    "VfBudget",
    "VfGroup",
    "apply",
    "load_policies",
    "merge",
    "parse_policies",
    "plan",
    "pool_config",
]

#: The operator's API group and version, as its documents carry it.
OPERATOR_API = "sriovnetwork.openshift.io/v1"
#: The largest policy file read (bytes).
MAX_POLICY_FILE = 4 * 1024 * 1024
DEFAULT_PRIORITY = 99

_SPEC_KEYS = (
    "resourceName",
    "nodeSelector",
    "priority",
    "mtu",
    "numVfs",
    "vfBudget",
    "nicSelector",
    "deviceType",
    "isRdma",
    "linkType",
    "eSwitchMode",
    "externallyManaged",
    "needVhostNet",
    "excludeTopology",
    "vdpaType",
    "bridge",
)
_BUDGET_KEYS = ("min", "max")
_SELECTOR_KEYS = ("vendor", "deviceID", "pfNames", "rootDevices", "netFilter")
_OPERATOR_KEYS = ("apiVersion", "kind", "metadata", "spec", "status")
_NATIVE_KEYS = ("apiVersion", "kind", "policies")
_LIST_KEYS = ("apiVersion", "kind", "metadata", "items")
_HEX_ID = frozenset("0123456789abcdef")


class PolicyError(SriovError, ValueError):
    """A policy file that cannot be applied: every problem, on one line."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = tuple(problems)
        more = f" (and {len(problems) - 1} more: {'; '.join(problems[1:])})" if problems[1:] else ""
        super().__init__(f"{problems[0]}{more}")


class Disruption(enum.StrEnum):
    """What a change costs the node's workloads."""

    LIVE = "live"
    PODS = "disrupts pods holding VFs of this PF"
    REBOOT = "needs a reboot"


class PolicyLinkType(enum.StrEnum):
    """``linkType``: Ethernet or InfiniBand (the operator accepts either case)."""

    ETH = "eth"
    IB = "ib"


# -- the model ---------------------------------------------------------------------------


@attrs.frozen
class VfBudget:
    """``vfBudget``: the PF's VF count may be anything from *min* (the floor ``apply``
    sets) to *max* (the most the DRA driver raises it to when claims need VFs, see
    ``docs/dra.md``), instead of one fixed ``numVfs``."""

    min: int
    max: int

    def clamp(self, count: int) -> int:
        """*count* brought into the budget."""
        return max(self.min, min(self.max, count))

    def __str__(self) -> str:
        return f"{self.min}-{self.max}"


@attrs.frozen
class PfName:
    """One ``pfNames`` entry: a PF's interface name and optionally a VF range
    (``ens1f0#2-7``)."""

    name: str
    first: int | None = None
    last: int | None = None

    def __str__(self) -> str:
        return self.name if self.first is None else f"{self.name}#{self.first}-{self.last}"


@attrs.frozen(kw_only=True)
class NicSelector:
    """``nicSelector``: every field that is set must match the PF (vendor and deviceID
    are the PF's ids; pfNames and rootDevices match any of their entries)."""

    vendor: str | None = None
    device_id: str | None = None
    pf_names: tuple[PfName, ...] = ()
    root_devices: tuple[PciAddress, ...] = ()

    def selects(self, pf: PhysicalFunction) -> bool:
        """Whether *pf* is selected."""
        if self.vendor is not None and pf.ids.vendor_hex != self.vendor:
            return False
        if self.device_id is not None and pf.ids.device_hex != self.device_id:
            return False
        if self.pf_names and self.pf_name(pf) is None:
            return False
        return not self.root_devices or pf.address in self.root_devices

    def pf_name(self, pf: PhysicalFunction) -> PfName | None:
        """The ``pfNames`` entry naming one of *pf*'s interfaces, if any."""
        return next((entry for entry in self.pf_names if entry.name in pf.netdevs), None)


@attrs.frozen(kw_only=True)
class NodePolicy:
    """One policy: a ``SriovNetworkNodePolicy`` spec and its name.

    Attributes:
        name: ``metadata.name`` (or ``name`` in sriovlib's own format).
        resource_name: The device-plugin pool its VFs join.
        num_vfs: ``numVfs`` of every selected PF; with a budget, its floor.
        vf_budget: ``vfBudget``, or None for a fixed ``numVfs``.
        priority: 0 (highest) to 99 (lowest, the default).
        mtu: The PF's MTU (raised, never lowered) and the netdevice VFs' MTU.
        device_type: ``netdevice`` (the kernel VF driver) or ``vfio-pci``.
        is_rdma / need_vhost_net / exclude_topology: carried to the pool's selector.
        link_type: ``eth`` or ``ib``; a change is a firmware setting (reboot).
        eswitch_mode: ``legacy`` or ``switchdev``; None leaves the mode as it is.
        externally_managed: The VFs are created by someone else; apply only checks
            that the PF has at least ``numVfs`` VFs and ``mtu``.
        nic_selector: Which PFs it selects.
        source: Where it came from, for messages (``file: SriovNetworkNodePolicy/x``).
    """

    name: str
    resource_name: str
    num_vfs: int
    nic_selector: NicSelector
    priority: int = DEFAULT_PRIORITY
    mtu: int | None = None
    device_type: DeviceType = DeviceType.NETDEVICE
    is_rdma: bool = False
    need_vhost_net: bool = False
    exclude_topology: bool = False
    link_type: PolicyLinkType | None = None
    eswitch_mode: EswitchMode | None = None
    externally_managed: bool = False
    vf_budget: VfBudget | None = None
    source: str = ""

    @property
    def ceiling(self) -> int:
        """The most VFs the policy gives a PF: ``numVfs``, or the budget's max."""
        return self.vf_budget.max if self.vf_budget is not None else self.num_vfs


@attrs.frozen
class PolicyFile:
    """The policies of a file, in file order, and what was accepted with a warning."""

    policies: tuple[NodePolicy, ...]
    warnings: tuple[str, ...] = ()
    source: str = "<policy>"


@attrs.frozen(kw_only=True)
class VfGroup:
    """A range of VFs on one PF that one policy configures (both ends included)."""

    policy: str
    priority: int
    resource_name: str
    first: int
    last: int
    device_type: DeviceType = DeviceType.NETDEVICE
    mtu: int | None = None
    is_rdma: bool = False
    need_vhost_net: bool = False
    exclude_topology: bool = False

    @property
    def indexes(self) -> range:
        """The VF indexes of the group."""
        return range(self.first, self.last + 1)

    def overlaps(self, other: VfGroup) -> bool:
        """Whether the two ranges share a VF."""
        return self.first <= other.last and other.first <= self.last


@attrs.frozen(kw_only=True)
class PfTarget:
    """What the policies want of one PF after merging.

    Attributes:
        pf: The PF as discovered.
        num_vfs: The VF count (the largest ``numVfs`` of the policies left on it; with
            a budget, the PF's count now brought into the budget).
        budget: The VF budget of the PF (the floor: the largest ``numVfs`` or
            ``vfBudget.min``; the ceiling: the largest ``vfBudget.max``), or None.
        mtu: The PF MTU (the largest ``mtu``), or None to leave it.
        eswitch_mode / link_type: None to leave it.
        externally_managed: Only check the VF count and MTU, never write them.
        groups: The VF ranges, in VF order.
        notes: How the merge got here (a policy overriding another's VFs).
    """

    pf: PhysicalFunction
    num_vfs: int
    mtu: int | None = None
    eswitch_mode: EswitchMode | None = None
    link_type: PolicyLinkType | None = None
    externally_managed: bool = False
    budget: VfBudget | None = None
    groups: tuple[VfGroup, ...] = ()
    notes: tuple[str, ...] = ()

    @property
    def policies(self) -> tuple[str, ...]:
        """The names of the policies configuring this PF."""
        return tuple(dict.fromkeys(g.policy for g in self.groups))

    def group_of(self, index: int) -> VfGroup | None:
        """The group VF *index* belongs to (None: no policy configures it)."""
        return next((g for g in self.groups if index in g.indexes), None)


@attrs.frozen
class NodeTarget:
    """The merged policies of this node: one target per selected PF (PCI order)."""

    pfs: tuple[PfTarget, ...]
    warnings: tuple[str, ...] = ()


# -- parsing -----------------------------------------------------------------------------


def load_policies(path: str | Path) -> PolicyFile:
    """Read and check the policy file at *path* (``-``: standard input)."""
    data = read_bounded(path, MAX_POLICY_FILE, pipes=True)
    return parse_policies(data, source=str(path))


def parse_policies(text: str | bytes, *, source: str = "<policy>") -> PolicyFile:
    """Check a policy file (YAML documents or JSON) and return its policies.

    Raises:
        PolicyError: listing every problem, each naming the policy and the field.
    """
    if isinstance(text, bytes):
        try:
            text = text.decode("utf-8")
        except UnicodeDecodeError as e:
            raise PolicyError([f"{source}: invalid UTF-8 at byte {e.start}"]) from None
    documents = _documents(text, source)
    parser = _Parser(source)
    for number, document in enumerate(documents, 1):
        parser.document(document, f"document {number}" if len(documents) > 1 else "")
    names: dict[str, str] = {}
    for policy in parser.policies:
        if policy.name in names:
            parser.problems.append(
                f"{source}: two policies are named {policy.name!r} ({names[policy.name]} "
                f"and {policy.source})"
            )
        names.setdefault(policy.name, policy.source)
    if not parser.problems and not parser.policies:
        parser.problems.append(f"{source}: no policies in the file")
    if parser.problems:
        raise PolicyError(parser.problems)
    return PolicyFile(tuple(parser.policies), tuple(parser.warnings), source)


def _documents(text: str, source: str) -> list[Any]:
    stripped = text.lstrip()
    if stripped.startswith(("{", "[")):
        try:
            return [json.loads(text)]
        except json.JSONDecodeError as e:
            if stripped.startswith("["):  # YAML flow sequences start so too; JSON only
                raise PolicyError(
                    [f"{source}: line {e.lineno} column {e.colno}: invalid JSON: {e.msg}"]
                ) from None
    import yaml

    try:
        documents = [d for d in yaml.safe_load_all(text) if d is not None]
    except yaml.YAMLError as e:
        mark = getattr(e, "problem_mark", None)
        where = f"line {mark.line + 1} column {mark.column + 1}: " if mark is not None else ""
        problem = getattr(e, "problem", None) or str(e).splitlines()[0]
        raise PolicyError([f"{source}: {where}invalid YAML: {problem}"]) from None
    return documents


class _Parser:
    def __init__(self, source: str) -> None:
        self.source = source
        self.policies: list[NodePolicy] = []
        self.problems: list[str] = []
        self.warnings: list[str] = []

    def problem(self, where: str, message: str) -> None:
        self.problems.append(f"{self.source}: {where}: {message}" if where else message)

    def known(self, data: Mapping[str, Any], keys: Sequence[str], where: str) -> None:
        for key in data:
            if key not in keys:
                self.problem(where, f"unknown field {key!r}{_did_you_mean(str(key), keys)}")

    def document(self, data: Any, where: str) -> None:  # noqa: PLR0912 - one branch per kind
        label = where or "the file"
        if not isinstance(data, dict):
            self.problem(where, f"expected a mapping, not {_kind(data)}")
            return
        kind = data.get("kind")
        api = data.get("apiVersion")
        if kind == "SriovNetworkNodePolicy":
            if api != OPERATOR_API:
                self.problem(where, f"apiVersion {api!r} is not {OPERATOR_API!r}")
            self.operator(data, where)
        elif kind in ("List", "SriovNetworkNodePolicyList"):
            self.known(data, _LIST_KEYS, where)
            items = data.get("items")
            if not isinstance(items, list):
                self.problem(where, f"items: expected a list, not {_kind(items)}")
                return
            for i, item in enumerate(items):
                item_where = _join(where, f"items[{i}]")
                if isinstance(item, dict) and item.get("kind") == "SriovNetworkNodePolicy":
                    self.operator(item, item_where)
                elif isinstance(item, dict):
                    self.warnings.append(
                        f"{self.source}: {item_where}: a {item.get('kind')!r} is not a "
                        "SriovNetworkNodePolicy: skipped"
                    )
                else:
                    self.problem(item_where, f"expected a mapping, not {_kind(item)}")
        elif kind is None and "policies" in data:
            self.known(data, _NATIVE_KEYS, where)
            entries = data["policies"]
            if not isinstance(entries, list):
                self.problem(_join(where, "policies"), f"expected a list, not {_kind(entries)}")
                return
            for i, entry in enumerate(entries):
                entry_where = _join(where, f"policies[{i}]")
                if not isinstance(entry, dict):
                    self.problem(entry_where, f"expected a mapping, not {_kind(entry)}")
                    continue
                name = entry.get("name")
                spec = {k: v for k, v in entry.items() if k != "name"}
                self.policy(name, spec, entry_where, native=True)
        elif kind is not None:
            self.problem(
                where,
                f"kind {kind!r} is not SriovNetworkNodePolicy"
                + _did_you_mean(str(kind), ("SriovNetworkNodePolicy",)),
            )
        else:
            self.problem(
                where,
                f"{label} has neither 'policies' nor kind: SriovNetworkNodePolicy"
                + _did_you_mean_any(data, ("policies", "kind")),
            )

    def operator(self, data: Mapping[str, Any], where: str) -> None:
        self.known(data, _OPERATOR_KEYS, where)
        metadata = data.get("metadata")
        if not isinstance(metadata, dict) or not metadata.get("name"):
            self.problem(where, "metadata.name is missing")
            return
        spec = data.get("spec")
        if not isinstance(spec, dict):
            self.problem(_join(where, "spec"), f"expected a mapping, not {_kind(spec)}")
            return
        self.policy(metadata["name"], spec, where, native=False)

    def policy(  # noqa: PLR0912 - one check per field
        self, name: Any, spec: Mapping[str, Any], where: str, *, native: bool
    ) -> None:
        if not isinstance(name, str) or not name:
            self.problem(where, "a policy needs a name (a non-empty string)")
            return
        where = f"policy {name!r}"
        field = (lambda key: key) if native else (lambda key: f"spec.{key}")
        count = len(self.problems)
        keys = _SPEC_KEYS if not native else tuple(k for k in _SPEC_KEYS if k != "nodeSelector")
        self.known(spec, keys, where)

        def get(key: str, kinds: tuple[type, ...], what: str, default: Any = None) -> Any:
            value = spec.get(key, default)
            if value is None or value is default:
                return value
            if not isinstance(value, kinds) or (isinstance(value, bool) and bool not in kinds):
                self.problem(where, f"{field(key)}: expected {what}, not {value!r}")
                return default
            return value

        resource = get("resourceName", (str,), "a string")
        if resource is None:
            self.problem(where, f"{field('resourceName')} is required")
        elif not resource or not all(c.isalnum() or c == "_" for c in resource):
            self.problem(
                where,
                f"{field('resourceName')}: {resource!r} may hold only letters, digits and _",
            )
        num_vfs, budget = self.count(spec, get("numVfs", (int,), "an integer"), field, where)
        ceiling = budget.max if budget is not None else num_vfs
        priority = get("priority", (int,), "an integer", DEFAULT_PRIORITY)
        if not 0 <= priority <= 99:
            self.problem(where, f"{field('priority')}: {priority} is not from 0 to 99")
        mtu = get("mtu", (int,), "an integer")
        if mtu is not None and not 68 <= mtu <= 65535:
            self.problem(where, f"{field('mtu')}: {mtu} is not from 68 to 65535")
        device_type = self.choice(spec, "deviceType", DeviceType, field, where)
        link_type = self.choice(spec, "linkType", PolicyLinkType, field, where, fold=True)
        mode = self.choice(spec, "eSwitchMode", EswitchMode, field, where)
        flags = {
            key: bool(get(key, (bool,), "true or false", False))
            for key in ("isRdma", "needVhostNet", "externallyManaged", "excludeTopology")
        }
        for key in ("vdpaType", "bridge"):
            if spec.get(key):
                self.problem(where, f"{field(key)}: not supported by sriovlib apply yet")
        if budget is not None and flags["externallyManaged"]:
            self.problem(
                where,
                f"{field('vfBudget')} with externallyManaged: whoever manages the PF makes "
                "its VFs, the agent cannot raise them",
            )
        if device_type is DeviceType.VFIO and flags["isRdma"]:
            self.problem(where, "isRdma needs deviceType netdevice (vfio-pci VFs have no RDMA)")
        if mode is EswitchMode.SWITCHDEV and link_type is PolicyLinkType.IB:
            self.problem(where, "eSwitchMode switchdev needs linkType eth")
        selector = self.selector(spec.get("nicSelector"), field("nicSelector"), where)
        if selector is not None and ceiling is not None:
            for entry in selector.pf_names:
                if entry.last is not None and entry.last >= ceiling:
                    limit = "numVfs" if budget is None else "vfBudget.max"
                    self.problem(
                        where,
                        f"{field('nicSelector')}.pfNames: {entry} reaches VF {entry.last} but "
                        f"{limit} is {ceiling} (VFs are numbered from 0)",
                    )
        if len(self.problems) > count or selector is None:
            return
        self.policies.append(
            NodePolicy(
                name=name,
                resource_name=resource,
                num_vfs=budget.min if budget is not None else int(num_vfs or 0),
                vf_budget=budget,
                nic_selector=selector,
                priority=priority,
                mtu=mtu,
                device_type=device_type or DeviceType.NETDEVICE,
                is_rdma=flags["isRdma"],
                need_vhost_net=flags["needVhostNet"],
                exclude_topology=flags["excludeTopology"],
                link_type=link_type,
                eswitch_mode=mode,
                externally_managed=flags["externallyManaged"],
                source=f"{self.source}: policy {name!r}",
            )
        )

    def count(
        self, spec: Mapping[str, Any], num_vfs: int | None, field: Callable[[str], str], where: str
    ) -> tuple[int | None, VfBudget | None]:
        """``numVfs`` or ``vfBudget``: exactly one of them."""
        budget = self.budget(spec.get("vfBudget"), field("vfBudget"), where)
        if num_vfs is not None and "vfBudget" in spec:
            self.problem(
                where,
                f"{field('numVfs')} and {field('vfBudget')}: give one (a fixed count, or "
                "a floor and a ceiling), not both",
            )
        elif num_vfs is None and "vfBudget" not in spec:
            self.problem(where, f"{field('numVfs')} (or {field('vfBudget')}) is required")
        elif num_vfs is not None and num_vfs < 0:
            self.problem(where, f"{field('numVfs')}: {num_vfs} is negative")
        return num_vfs, budget

    def budget(self, data: Any, name: str, where: str) -> VfBudget | None:
        """``vfBudget: {min: M, max: N}``: 0 <= min <= max, max >= 1."""
        if data is None:
            return None
        if not isinstance(data, dict):
            self.problem(where, f"{name}: expected a mapping {{min: M, max: N}}, not {_kind(data)}")
            return None
        count = len(self.problems)
        self.known(data, _BUDGET_KEYS, f"{where}: {name}")
        values: dict[str, int] = {}
        for key in _BUDGET_KEYS:
            value = data.get(key, 0 if key == "min" else None)
            if value is None:
                self.problem(where, f"{name}.{key} is required")
            elif not isinstance(value, int) or isinstance(value, bool):
                self.problem(where, f"{name}.{key}: expected an integer, not {value!r}")
            elif value < 0:
                self.problem(where, f"{name}.{key}: {value} is negative")
            else:
                values[key] = value
        if len(self.problems) > count:
            return None
        if values["max"] == 0:
            self.problem(where, f"{name}.max: 0 gives no VF to raise (use numVfs: 0)")
            return None
        if values["min"] > values["max"]:
            self.problem(where, f"{name}: min {values['min']} is above max {values['max']}")
            return None
        return VfBudget(values["min"], values["max"])

    def choice(
        self,
        spec: Mapping[str, Any],
        key: str,
        enum_type: type[enum.StrEnum],
        field: Callable[[str], str],
        where: str,
        *,
        fold: bool = False,
    ) -> Any:
        value = spec.get(key)
        if value is None:
            return None
        values = [str(m.value) for m in enum_type]
        text = value.lower() if fold and isinstance(value, str) else value
        if text not in values:
            self.problem(
                where,
                f"{field(key)}: {value!r} is not one of {', '.join(values)}"
                + (_did_you_mean(value, values) if isinstance(value, str) else ""),
            )
            return None
        return enum_type(text)

    def selector(self, data: Any, name: str, where: str) -> NicSelector | None:
        if data is None:
            self.problem(where, f"{name} is required")
            return None
        if not isinstance(data, dict):
            self.problem(where, f"{name}: expected a mapping, not {_kind(data)}")
            return None
        count = len(self.problems)
        self.known(data, _SELECTOR_KEYS, f"{where}: {name}")
        vendor = self.hex_id(data.get("vendor"), f"{name}.vendor", where)
        device = self.hex_id(data.get("deviceID"), f"{name}.deviceID", where)
        pf_names: list[PfName] = []
        for i, text in enumerate(self.strings(data.get("pfNames"), f"{name}.pfNames", where)):
            entry = self.pf_name(text, f"{name}.pfNames[{i}]", where)
            if entry is not None:
                if any(e.name == entry.name for e in pf_names):
                    self.problem(where, f"{name}.pfNames: {entry.name!r} is named twice")
                pf_names.append(entry)
        roots = []
        for text in self.strings(data.get("rootDevices"), f"{name}.rootDevices", where):
            try:
                roots.append(PciAddress.parse(text))
            except ValueError as e:
                self.problem(where, f"{name}.rootDevices: {e}")
        if data.get("netFilter"):
            self.warnings.append(
                f"{self.source}: {where}: {name}.netFilter selects OpenStack networks; "
                "ignored on this node"
            )
        if vendor is None and device is None and not pf_names and not roots:
            self.problem(
                where,
                f"{name} selects nothing: set vendor, deviceID, pfNames or rootDevices "
                "(an empty selector would take every PF)",
            )
        if len(self.problems) > count:
            return None
        return NicSelector(
            vendor=vendor, device_id=device, pf_names=tuple(pf_names), root_devices=tuple(roots)
        )

    def hex_id(self, value: Any, name: str, where: str) -> str | None:
        if value is None:
            return None
        text = str(value).lower() if isinstance(value, str | int) else None
        if text is None or len(text) != 4 or not set(text) <= _HEX_ID:
            self.problem(where, f"{name}: {value!r} is not a 4-digit hex id such as '8086'")
            return None
        return text

    def strings(self, value: Any, name: str, where: str) -> list[str]:
        if value is None:
            return []
        if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
            self.problem(where, f"{name}: expected a list of strings, not {value!r}")
            return []
        return list(value)

    def pf_name(self, text: str, name: str, where: str) -> PfName | None:
        netdev, sep, spec = text.partition("#")
        if not netdev or len(netdev) > 15 or "/" in netdev or " " in netdev:
            self.problem(where, f"{name}: {text!r} is not an interface name")
            return None
        if not sep:
            return PfName(netdev)
        first, dash, last = spec.partition("-")
        if not (first.isdigit() and last.isdigit() and dash):
            self.problem(where, f"{name}: {text!r}: write the VF range as NAME#FIRST-LAST")
            return None
        if int(first) > int(last):
            self.problem(where, f"{name}: {text!r}: the first VF is after the last")
            return None
        return PfName(netdev, int(first), int(last))


def _kind(value: Any) -> str:
    if isinstance(value, dict):
        return "a mapping"
    if isinstance(value, list):
        return "a list"
    return repr(value)


def _join(where: str, part: str) -> str:
    return f"{where}: {part}" if where else part


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    close = difflib.get_close_matches(word, list(choices), n=1, cutoff=0.6)
    if not close:
        folded = {c.lower(): c for c in choices}
        close = [folded[word.lower()]] if word.lower() in folded else []
    return f" (did you mean {close[0]!r}?)" if close else ""


def _did_you_mean_any(data: Mapping[str, Any], choices: Sequence[str]) -> str:
    for key in data:
        hint = _did_you_mean(str(key), choices)
        if hint:
            return f"; {key!r}{hint}"
    return ""


# -- merging -----------------------------------------------------------------------------


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


# -- planning ----------------------------------------------------------------------------


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
            rebind = vf is not None and (vf.driver is None or vf.driver in _USERSPACE)
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


_USERSPACE = frozenset({"vfio-pci", "uio_pci_generic", "igb_uio"})


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


# -- applying ----------------------------------------------------------------------------


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
            if group.device_type is DeviceType.VFIO or vf.driver in (None, *_USERSPACE):
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
