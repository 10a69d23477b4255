"""Reading a policy file: YAML documents or JSON, sriovlib's own or the operator's, every
problem named with its policy and field."""

from __future__ import annotations

import difflib
import enum
import json
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

from sriovlib._files import read_bounded
from sriovlib.models import PciAddress
from sriovlib.plugins.types import DeviceType, EswitchMode
from sriovlib.policy.model import (
    DEFAULT_PRIORITY,
    MAX_POLICY_FILE,
    OPERATOR_API,
    NicSelector,
    NodePolicy,
    PfName,
    PolicyError,
    PolicyFile,
    PolicyLinkType,
    VfBudget,
)

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
