"""Resource pools in the format of sriov-network-device-plugin's ``config.json``.

A config is a ``resourceList`` of pools; each pool has one selector object or a list of
them, and a device joins the first pool, in file order, one of whose selector objects
matches it. Inside one selector object every field must match (AND) and a field matches
when any of its values does (OR); an empty object matches every device. A PF that has VFs
enabled is never pooled; its VFs are.

:func:`parse_config` reads the file. By default it is strict: every spelling that the
device plugin would silently misread — an unknown or misspelt key, a second ``pfNames``
entry for the same PF, a malformed or overlapping VF range, a PCI address or id not
written the way the plugin compares it — is an error naming the place in the file. With
``compat=True`` it accepts what the plugin accepts (keys in any case, unknown keys
ignored...) and reproduces what the plugin would then select, recording each leniency as
a warning. :func:`assign` computes the membership of every pool on a set of devices
(:func:`discover_devices` builds them from an :class:`~sriovlib.sysfs.Inventory`), and
:func:`generate_config` writes a config that pools every VF of a node.
"""

from __future__ import annotations

import difflib
import enum
import functools
import itertools
import json
import re
from collections.abc import Callable, Iterable, Mapping, Sequence
from pathlib import Path
from typing import Any

import attrs

from sriovlib._files import read_bounded
from sriovlib.allocation import Candidate
from sriovlib.exceptions import InvalidPciAddress, SriovError
from sriovlib.models import LinkType, PciAddress, PciId
from sriovlib.sysfs import Inventory, SelectorFacts, check_netdev_name

__all__ = [
    "DEFAULT_PREFIX",
    "MAX_CONFIG",
    "Assignment",
    "ConfigError",
    "ConfigProblem",
    "DeviceKind",
    "DeviceType",
    "IndexRange",
    "Malformed",
    "Pool",
    "PoolConfig",
    "PoolDevice",
    "PoolMembers",
    "Selector",
    "Unmatched",
    "VfFilter",
    "assign",
    "check_resource_prefix",
    "config_to_dict",
    "discover_devices",
    "dump_config",
    "generate_config",
    "load_config",
    "parse_config",
    "parse_vf_filter",
]

#: The prefix the device plugin uses when a pool sets none (its ``-resource-prefix``).
DEFAULT_PREFIX = "intel.com"

#: The largest VF index there can be: ``TotalVFs`` is a 16-bit field.
MAX_VF_INDEX = 0xFFFF
#: The largest config file read (upstream configs are a few KiB).
MAX_CONFIG = 4 << 20


# ---------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------


@attrs.frozen
class ConfigProblem:
    """One error or warning about a config file.

    Attributes:
        message: What is wrong and, where there is one, the fix.
        source: The file name (``<stdin>`` for standard input).
        path: Where in the document, e.g. ``resourceList[1].selectors[0].pfNames[0]``.
        line: 1-based line, or None when the problem is not tied to a place.
        column: 1-based column (in characters), or None.
    """

    message: str
    source: str = "<config>"
    path: str = ""
    line: int | None = None
    column: int | None = None

    def __str__(self) -> str:
        where = self.source
        if self.line is not None:
            where += f":{self.line}:{self.column}"
        where += ":"
        if self.path:
            where += f" {self.path}:"
        return f"{where} {self.message}"


def _problem_order(problem: ConfigProblem) -> tuple[int, int]:
    return (problem.line or 0, problem.column or 0)


class ConfigError(SriovError, ValueError):
    """A pool config that cannot be used; ``problems`` lists every error found."""

    def __init__(self, problems: Sequence[ConfigProblem]) -> None:
        self.problems = tuple(sorted(problems, key=_problem_order))
        lines = [str(p) for p in self.problems]
        super().__init__("\n".join(lines) if lines else "invalid pool config")


# ---------------------------------------------------------------------------------
# the model
# ---------------------------------------------------------------------------------


class DeviceType(enum.StrEnum):
    """The ``deviceType`` of a pool: which class of device it is made of."""

    NET_DEVICE = "netDevice"
    ACCELERATOR = "accelerator"
    AUX_NET_DEVICE = "auxNetDevice"


@attrs.frozen
class IndexRange:
    """VF indexes *first* to *last*, both included (``3`` is ``IndexRange(3, 3)``)."""

    first: int
    last: int

    def __contains__(self, index: object) -> bool:
        return isinstance(index, int) and self.first <= index <= self.last

    def __str__(self) -> str:
        return str(self.first) if self.first == self.last else f"{self.first}-{self.last}"


@attrs.frozen
class Malformed:
    """A part of a VF range list that the device plugin cannot parse (compat mode only).

    The plugin reads the list left to right and gives up at such a part, so VFs named
    before it are still selected and none after it.
    """

    text: str

    def __str__(self) -> str:
        return self.text


@attrs.frozen
class VfFilter:
    """One ``pfNames`` or ``rootDevices`` entry: a PF and, optionally, some of its VFs.

    Attributes:
        target: The PF's interface name (pfNames) or PCI address (rootDevices), compared
            without regard to case as the device plugin does.
        ranges: The VF indexes after ``#``, or None for every VF of the PF.
    """

    target: str
    ranges: tuple[IndexRange | Malformed, ...] | None = None

    def selects(self, index: int) -> bool:
        """Whether VF number *index* of the target PF is selected."""
        if self.ranges is None:
            return True
        for item in self.ranges:
            if isinstance(item, Malformed):
                return False
            if index in item:
                return True
        return False

    def __str__(self) -> str:
        if self.ranges is None:
            return self.target
        return f"{self.target}#{','.join(str(r) for r in self.ranges)}"


@attrs.frozen(kw_only=True)
class Selector:
    """One selector object. An empty tuple (or False/None) means the field is not set.

    The fields are the config keys in snake case; :data:`SELECTOR_KEYS` maps the names.
    """

    vendors: tuple[str, ...] = ()
    devices: tuple[str, ...] = ()
    drivers: tuple[str, ...] = ()
    pci_addresses: tuple[str, ...] = ()
    acpi_indexes: tuple[str, ...] = ()
    pf_names: tuple[VfFilter, ...] = ()
    root_devices: tuple[VfFilter, ...] = ()
    link_types: tuple[str, ...] = ()
    ddp_profiles: tuple[str, ...] = ()
    pkeys: tuple[str, ...] = ()
    is_rdma: bool = False
    need_vhost_net: bool = False
    vdpa_type: str | None = None
    aux_types: tuple[str, ...] = ()

    def to_dict(self) -> dict[str, Any]:
        """The selector object as the config file writes it (unset fields left out)."""
        out: dict[str, Any] = {}
        for key, field in SELECTOR_KEYS.items():
            value = getattr(self, field)
            if not value:
                continue
            if field in ("pf_names", "root_devices"):
                out[key] = [str(v) for v in value]
            elif isinstance(value, tuple):
                out[key] = list(value)
            else:
                out[key] = value
        return out


#: Config key → :class:`Selector` field, in the order the device plugin applies them.
SELECTOR_KEYS: dict[str, str] = {
    "vendors": "vendors",
    "devices": "devices",
    "drivers": "drivers",
    "pciAddresses": "pci_addresses",
    "acpiIndexes": "acpi_indexes",
    "pfNames": "pf_names",
    "rootDevices": "root_devices",
    "linkTypes": "link_types",
    "ddpProfiles": "ddp_profiles",
    "pKeys": "pkeys",
    "isRdma": "is_rdma",
    "needVhostNet": "need_vhost_net",
    "vdpaType": "vdpa_type",
    "auxTypes": "aux_types",
}

#: The selector keys each device type applies (upstream ``pkg/types``).
APPLIED_KEYS: dict[DeviceType, tuple[str, ...]] = {
    DeviceType.NET_DEVICE: (
        "vendors",
        "devices",
        "drivers",
        "pciAddresses",
        "acpiIndexes",
        "pfNames",
        "rootDevices",
        "linkTypes",
        "ddpProfiles",
        "pKeys",
        "isRdma",
        "needVhostNet",
        "vdpaType",
    ),
    DeviceType.ACCELERATOR: ("vendors", "devices", "drivers", "pciAddresses"),
    DeviceType.AUX_NET_DEVICE: (
        "vendors",
        "devices",
        "drivers",
        "pfNames",
        "rootDevices",
        "linkTypes",
        "isRdma",
        "needVhostNet",
        "auxTypes",
    ),
}

#: Keys the plugin parses for a device type but never applies.
_IGNORED_KEYS: dict[DeviceType, tuple[str, ...]] = {
    DeviceType.NET_DEVICE: (),
    DeviceType.ACCELERATOR: ("acpiIndexes",),
    DeviceType.AUX_NET_DEVICE: ("acpiIndexes",),
}

_POOL_KEYS = (
    "resourceName",
    "resourcePrefix",
    "deviceType",
    "excludeTopology",
    "selectors",
    "additionalInfo",
)

#: Link types (netlink encapsulation names) an SR-IOV function can have.
LINK_TYPES = ("ether", "infiniband")

_VDPA_DRIVERS = {"vhost": "vhost_vdpa", "virtio": "virtio_vdpa"}


@attrs.frozen(kw_only=True)
class Pool:
    """One ``resourceList`` entry.

    Attributes:
        resource_name: ``resourceName``.
        resource_prefix: ``resourcePrefix``, or None for the plugin's default.
        device_type: ``deviceType``.
        exclude_topology: ``excludeTopology``.
        selectors: The selector objects, in file order (one object is a list of one).
        additional_info: ``additionalInfo``: ``"*"`` or a device id → extra key/values.
    """

    resource_name: str
    resource_prefix: str | None = None
    device_type: DeviceType = DeviceType.NET_DEVICE
    exclude_topology: bool = False
    selectors: tuple[Selector, ...] = (Selector(),)
    additional_info: Mapping[str, Mapping[str, str]] = attrs.field(factory=dict, hash=False)

    def full_name(self, default_prefix: str = DEFAULT_PREFIX) -> str:
        """``prefix/name``, the extended resource a pod requests."""
        return f"{self.resource_prefix or default_prefix}/{self.resource_name}"

    def to_dict(self) -> dict[str, Any]:
        """The pool as the config file writes it."""
        out: dict[str, Any] = {"resourceName": self.resource_name}
        if self.resource_prefix is not None:
            out["resourcePrefix"] = self.resource_prefix
        out["deviceType"] = str(self.device_type)
        if self.exclude_topology:
            out["excludeTopology"] = True
        out["selectors"] = [s.to_dict() for s in self.selectors]
        if self.additional_info:
            out["additionalInfo"] = {k: dict(v) for k, v in self.additional_info.items()}
        return out


@attrs.frozen
class PoolConfig:
    """A parsed config: the pools in file order and what compat mode let through."""

    pools: tuple[Pool, ...] = ()
    warnings: tuple[ConfigProblem, ...] = ()
    compat: bool = False
    default_prefix: str = DEFAULT_PREFIX


def config_to_dict(config: PoolConfig) -> dict[str, Any]:
    """The config as a JSON-able ``{"resourceList": [...]}``."""
    return {"resourceList": [p.to_dict() for p in config.pools]}


def dump_config(config: PoolConfig) -> str:
    """The config as indented JSON text with a final newline (short lists on one line)."""
    return _format(config_to_dict(config), "") + "\n"


def _format(value: Any, indent: str) -> str:
    inner = indent + "  "
    if isinstance(value, dict) and value:
        items = [f"{inner}{json.dumps(k)}: {_format(v, inner)}" for k, v in value.items()]
        return "{\n" + ",\n".join(items) + f"\n{indent}}}"
    if isinstance(value, list) and any(isinstance(v, dict | list) for v in value):
        items = [f"{inner}{_format(v, inner)}" for v in value]
        return "[\n" + ",\n".join(items) + f"\n{indent}]"
    return json.dumps(value)


# ---------------------------------------------------------------------------------
# JSON with positions
# ---------------------------------------------------------------------------------

_WS = re.compile(r"[ \t\n\r]*")


def _skip(text: str, pos: int) -> int:
    """The offset of the first non-whitespace character at or after *pos*."""
    match = _WS.match(text, pos)
    return pos if match is None else match.end()


_NUMBER = re.compile(r"-?(?:0|[1-9][0-9]*)(?:\.[0-9]+)?(?:[eE][-+]?[0-9]+)?")
_MAX_DEPTH = 64


@attrs.frozen
class _Node:
    """A JSON value and the offset where it starts.

    ``kind`` is object (value: list of (key, key offset, node)), array (list of nodes),
    string, number (its text), bool or null.
    """

    kind: str
    value: Any
    pos: int


class _Document:
    """JSON text parsed into :class:`_Node` values that remember their offsets."""

    def __init__(self, text: str, source: str) -> None:
        self.text = text
        self.source = source

    def location(self, pos: int) -> tuple[int, int]:
        """1-based (line, column) of offset *pos*."""
        line = self.text.count("\n", 0, pos) + 1
        column = pos - self.text.rfind("\n", 0, pos)
        return line, column

    def problem(self, pos: int | None, path: str, message: str) -> ConfigProblem:
        if pos is None:
            return ConfigProblem(message, self.source, path)
        line, column = self.location(pos)
        return ConfigProblem(message, self.source, path, line, column)

    def parse(self) -> _Node:
        """Check the syntax with the standard decoder, then build the positioned tree."""
        try:
            json.loads(self.text, parse_int=str, parse_float=str)
        except json.JSONDecodeError as e:
            raise ConfigError([self._syntax_problem(e)]) from None
        except RecursionError:
            raise ConfigError([self.problem(None, "", "invalid JSON: nested too deeply")]) from None
        return self._value(0, 0)[0]

    def _syntax_problem(self, e: json.JSONDecodeError) -> ConfigProblem:
        pos, text = e.pos, self.text
        message = e.msg
        if pos < len(text) and text[pos] in "}]":
            before = text[:pos].rstrip(" \t\n\r")
            if before.endswith(","):
                closer = "object" if text[pos] == "}" else "list"
                return self.problem(
                    len(before) - 1,
                    "",
                    f"invalid JSON: trailing comma before the end of the {closer} "
                    "(JSON allows none)",
                )
        if pos < len(text):
            message += f", found {text[pos]!r}"
        else:
            message += ", found the end of the text"
        return self.problem(pos, "", f"invalid JSON: {message}")

    def _value(self, pos: int, depth: int) -> tuple[_Node, int]:
        text = self.text
        pos = _skip(text, pos)
        if depth > _MAX_DEPTH:
            raise ConfigError([self.problem(pos, "", "invalid config: nested too deeply")])
        char = text[pos]
        if char == "{":
            return self._object(pos, depth)
        if char == "[":
            return self._array(pos, depth)
        if char == '"':
            string, end = _scanstring(text, pos + 1)
            return _Node("string", string, pos), end
        for literal, kind, value in _LITERALS:
            if text.startswith(literal, pos):
                return _Node(kind, value, pos), pos + len(literal)
        match = _NUMBER.match(text, pos)
        if match is None:  # NaN, Infinity: Python's decoder takes them, JSON does not
            raise ConfigError(
                [self.problem(pos, "", "invalid JSON: NaN and Infinity are not JSON numbers")]
            )
        return _Node("number", match.group(), pos), match.end()

    def _object(self, pos: int, depth: int) -> tuple[_Node, int]:
        text = self.text
        members: list[tuple[str, int, _Node]] = []
        i = _skip(text, pos + 1)
        if text[i] == "}":
            return _Node("object", members, pos), i + 1
        while True:
            key_pos = _skip(text, i)
            key, after = _scanstring(text, key_pos + 1)
            value, i = self._value(_skip(text, after) + 1, depth + 1)  # past ':'
            members.append((key, key_pos, value))
            i = _skip(text, i)
            if text[i] == "}":
                return _Node("object", members, pos), i + 1
            i += 1  # past ','

    def _array(self, pos: int, depth: int) -> tuple[_Node, int]:
        text = self.text
        items: list[_Node] = []
        i = _skip(text, pos + 1)
        if text[i] == "]":
            return _Node("array", items, pos), i + 1
        while True:
            item, i = self._value(i, depth + 1)
            items.append(item)
            i = _skip(text, i)
            if text[i] == "]":
                return _Node("array", items, pos), i + 1
            i += 1  # past ','


_LITERALS: tuple[tuple[str, str, bool | None], ...] = (
    ("true", "bool", True),
    ("false", "bool", False),
    ("null", "null", None),
)


def _scanstring(text: str, end: int) -> tuple[str, int]:
    """Decode the JSON string whose opening quote is just before *end*."""
    value, after = json.decoder.scanstring(text, end)  # type: ignore[attr-defined]
    return str(value), int(after)


_KIND_NAMES = {
    "object": "an object",
    "array": "a list",
    "string": "a string",
    "number": "a number",
    "bool": "a boolean",
    "null": "null",
}


# ---------------------------------------------------------------------------------
# parsing and validation
# ---------------------------------------------------------------------------------


class _Parser:
    """Validates the positioned tree into a :class:`PoolConfig`, collecting problems."""

    def __init__(self, doc: _Document, compat: bool, default_prefix: str) -> None:
        self.doc = doc
        self.compat = compat
        self.default_prefix = default_prefix
        self.errors: list[ConfigProblem] = []
        self.warnings: list[ConfigProblem] = []

    # -- reporting --------------------------------------------------------------

    def error(self, pos: int | None, path: str, message: str) -> None:
        """Something the device plugin rejects too: an error in both modes."""
        self.errors.append(self.doc.problem(pos, path, message))

    def lenient(self, pos: int | None, path: str, message: str) -> None:
        """Something the plugin accepts but silently misreads: a warning in compat mode."""
        target = self.warnings if self.compat else self.errors
        target.append(self.doc.problem(pos, path, message))

    # -- structure --------------------------------------------------------------

    def members(
        self,
        node: _Node,
        path: str,
        known: Sequence[str],
        hints: Mapping[str, str],
    ) -> dict[str, tuple[_Node, int]]:
        """The object's members by canonical key, the way Go's decoder maps them."""
        found: dict[str, tuple[_Node, int]] = {}
        for key, key_pos, value in node.value:
            where = _join(path, key)
            canonical = key if key in known else None
            if canonical is None:
                folded = [k for k in known if k.casefold() == key.casefold()]
                if folded:
                    canonical = folded[0]
                    self.lenient(
                        key_pos,
                        where,
                        f"key {key!r} should be spelt {canonical!r}: the device plugin "
                        "ignores the case of keys, sriovlib does not (use --compat)",
                    )
                else:
                    hint = hints.get(key) or _did_you_mean(key, [*known, *hints])
                    self.lenient(
                        key_pos,
                        where,
                        f"unknown key {key!r}, which the device plugin ignores{hint}",
                    )
                    continue
            if canonical in found:
                self.lenient(
                    key_pos,
                    where,
                    f"duplicate key {key!r}: the device plugin keeps only the last value",
                )
            found[canonical] = (value, key_pos)
        return found

    def expect(self, node: _Node, path: str, kind: str, what: str) -> bool:
        if node.kind == kind:
            return True
        self.error(node.pos, path, f"expected {what}, got {_KIND_NAMES[node.kind]}")
        return False

    def null_as_absent(self, node: _Node, path: str) -> bool:
        """Go leaves a field unset for ``null``; strict mode asks for the key's removal."""
        if node.kind != "null":
            return False
        self.lenient(node.pos, path, "null: remove the key or give it a value")
        return True

    def strings(self, node: _Node, path: str) -> list[tuple[str, int]] | None:
        """A list of strings with their offsets; None when absent or malformed."""
        if self.null_as_absent(node, path):
            return None
        if not self.expect(node, path, "array", "a list of strings"):
            return None
        values: list[tuple[str, int]] = []
        for i, item in enumerate(node.value):
            if item.kind == "null":  # Go decodes it as ""
                self.lenient(item.pos, f"{path}[{i}]", "null in a list of strings")
                values.append(("", item.pos))
            elif self.expect(item, f"{path}[{i}]", "string", "a string"):
                values.append((item.value, item.pos))
        if not node.value:
            self.lenient(
                node.pos,
                path,
                "an empty list does not filter anything (the "
                "device plugin treats it as absent); remove the key",
            )
        return values

    def boolean(self, node: _Node, path: str) -> bool:
        if self.null_as_absent(node, path):
            return False
        if not self.expect(node, path, "bool", "true or false"):
            return False
        return bool(node.value)

    def string(self, node: _Node, path: str) -> str | None:
        if self.null_as_absent(node, path):
            return None
        if not self.expect(node, path, "string", "a string"):
            return None
        return str(node.value)

    # -- the document -------------------------------------------------------------

    def config(self, root: _Node) -> tuple[Pool, ...]:
        if not self.expect(root, "", "object", 'an object {"resourceList": [...]}'):
            return ()
        hints = dict.fromkeys(_POOL_KEYS, '; pools go inside "resourceList"')
        top = self.members(root, "", ("resourceList",), hints)
        if "resourceList" not in top:
            self.lenient(
                root.pos, "", 'missing "resourceList": the device plugin would start with no pools'
            )
            return ()
        node, _ = top["resourceList"]
        if self.null_as_absent(node, "resourceList"):
            return ()
        if not self.expect(node, "resourceList", "array", "a list of pools"):
            return ()
        pools: list[Pool] = []
        names: dict[str, str] = {}
        for i, item in enumerate(node.value):
            path = f"resourceList[{i}]"
            pool = self.pool(item, path)
            if pool is None:
                continue
            full = pool.full_name(self.default_prefix)
            if full in names:
                self.error(
                    item.pos,
                    path,
                    f"resource {full} is already defined by "
                    f"{names[full]}; the device plugin refuses to start",
                )
                continue
            names[full] = path
            pools.append(pool)
        return tuple(pools)

    def pool(self, node: _Node, path: str) -> Pool | None:
        if not self.expect(node, path, "object", "a pool object"):
            return None
        hints = {
            key: f'; {key!r} is a selector: move it inside "selectors"' for key in SELECTOR_KEYS
        }
        hints["resourceList"] = '; "resourceList" belongs at the top level'
        fields = self.members(node, path, _POOL_KEYS, hints)
        errors_before = len(self.errors)
        name = self.pool_name(fields, node, path)
        prefix = self.pool_prefix(fields, path)
        device_type = self.device_type(fields, path)
        got = _field(fields, path, "excludeTopology")
        exclude = got is not None and self.boolean(*got)
        got = _field(fields, path, "selectors")
        selectors: tuple[Selector, ...] = ()
        if got is None:
            self.error(
                node.pos,
                path,
                'missing "selectors": the device plugin crashes '
                'without it (write "selectors": {} to select every device)',
            )
        else:
            selectors = self.selectors(*got, device_type or DeviceType.NET_DEVICE)
        got = _field(fields, path, "additionalInfo")
        info = {} if got is None else self.additional_info(*got, device_type)
        if len(self.errors) > errors_before or name is None or device_type is None:
            return None
        return Pool(
            resource_name=name,
            resource_prefix=prefix,
            device_type=device_type,
            exclude_topology=exclude,
            selectors=selectors,
            additional_info=info,
        )

    def pool_name(self, fields: _Fields, node: _Node, path: str) -> str | None:
        got = _field(fields, path, "resourceName")
        name = None if got is None else self.string(*got)
        if got is None or name is None:
            self.error(node.pos, path, 'missing "resourceName": the device plugin refuses to start')
            return None
        value, where = got
        if not re.fullmatch(r"[a-zA-Z0-9_-]+", name):
            self.error(
                value.pos,
                where,
                f"resource name {name!r} must be letters, digits, "
                "'_' or '-'; the device plugin refuses to start",
            )
            return None
        if "-" in name:
            self.lenient(
                value.pos,
                where,
                f"resource name {name!r} contains '-', which "
                f"ends up in the PCIDEVICE_* variable name; use "
                f"{name.replace('-', '_')!r}",
            )
        return name

    def pool_prefix(self, fields: _Fields, path: str) -> str | None:
        got = _field(fields, path, "resourcePrefix")
        prefix = None if got is None else self.string(*got)
        if got is not None and prefix is not None and not _DNS_SUBDOMAIN.fullmatch(prefix):
            self.lenient(
                got[0].pos,
                got[1],
                f"{prefix!r} is not a DNS subdomain such as "
                "'example.com'; kubelet would refuse the resource name",
            )
        return prefix or None

    def device_type(self, fields: _Fields, path: str) -> DeviceType | None:
        got = _field(fields, path, "deviceType")
        text = None if got is None else self.string(*got)
        if got is None or text is None:
            return DeviceType.NET_DEVICE
        try:
            return DeviceType(text)
        except ValueError:
            choices = [str(t) for t in DeviceType]
            self.error(
                got[0].pos,
                got[1],
                f"unknown device type {text!r}"
                f"{_did_you_mean(text, choices)}; choose one of {', '.join(choices)}",
            )
            return None

    def selectors(self, node: _Node, path: str, device_type: DeviceType) -> tuple[Selector, ...]:
        if node.kind == "object":
            one = self.selector(node, path, device_type)
            return () if one is None else (one,)
        if node.kind != "array":
            self.error(
                node.pos,
                path,
                f"expected a selector object or a list of them, got {_KIND_NAMES[node.kind]}",
            )
            return ()
        if not node.value:
            self.error(
                node.pos,
                path,
                "an empty list of selectors: the device plugin "
                "refuses it (write {} to select every device)",
            )
            return ()
        selectors = []
        for i, item in enumerate(node.value):
            one = self.selector(item, f"{path}[{i}]", device_type)
            if one is None:
                return ()
            selectors.append(one)
        return tuple(selectors)

    def selector(self, node: _Node, path: str, device_type: DeviceType) -> Selector | None:
        if not self.expect(node, path, "object", "a selector object"):
            return None
        fields = self.members(node, path, APPLIED_KEYS[device_type], _selector_hints(device_type))
        errors_before = len(self.errors)
        values: dict[str, Any] = {}
        for key, (value, _) in fields.items():
            parsed = self.selector_field(key, value, _join(path, key))
            if parsed is not None:
                values[SELECTOR_KEYS[key]] = parsed
        if device_type is DeviceType.AUX_NET_DEVICE and not values.get("aux_types"):
            self.error(
                node.pos,
                path,
                'an auxNetDevice selector needs "auxTypes": ["sf"]; '
                "the device plugin rejects the pool otherwise",
            )
        if values.get("is_rdma") and values.get("vdpa_type"):
            self.error(
                node.pos,
                path,
                '"isRdma" and "vdpaType" exclude each other; the device plugin refuses to start',
            )
        if len(self.errors) > errors_before:
            return None
        return Selector(**values)

    def selector_field(self, key: str, value: _Node, where: str) -> object:
        """The parsed value of one selector key, or None when absent or invalid."""
        if key in ("isRdma", "needVhostNet"):
            return self.boolean(value, where)
        if key == "vdpaType":
            return self.vdpa_type(value, where)
        if key in ("pfNames", "rootDevices"):
            return self.vf_filters(value, where, key)
        items = self.strings(value, where)
        if items is None:
            return None
        return tuple(
            self.selector_value(key, v, p, f"{where}[{i}]") for i, (v, p) in enumerate(items)
        )

    def selector_value(self, key: str, value: str, pos: int, path: str) -> str:
        """Check one string of a list selector; return it as the plugin compares it."""
        if not value:
            self.lenient(pos, path, "an empty string matches no device")
            return value
        if key in ("vendors", "devices"):
            if not re.fullmatch(r"[0-9a-f]{4}", value):
                try:
                    normal = PciId.parse(f"{value}:0" if key == "vendors" else f"0:{value}")
                    wanted = normal.vendor_hex if key == "vendors" else normal.device_hex
                    fix = f"; write {wanted!r}"
                except ValueError:
                    fix = ""
                self.lenient(
                    pos,
                    path,
                    f"{value!r} is not 4 lower-case hex digits, so it "
                    f"matches no device (the plugin compares the text){fix}",
                )
        elif key == "pciAddresses":
            self.check_address(value, pos, path)
        elif key == "acpiIndexes":
            if not value.isdigit() or not value.isascii():
                self.lenient(pos, path, f"{value!r} is not a decimal ACPI index")
        elif key == "linkTypes":
            if value not in LINK_TYPES:
                hint = _did_you_mean(value.lower(), LINK_TYPES)
                self.lenient(
                    pos,
                    path,
                    f"{value!r} is not the link type of an SR-IOV "
                    f"device{hint} (choose {' or '.join(LINK_TYPES)})",
                )
        elif key == "auxTypes" and value != "sf":
            self.error(
                pos,
                path,
                f"auxiliary device type {value!r} is not supported; "
                "the device plugin accepts only 'sf'",
            )
        return value

    def check_address(self, value: str, pos: int, path: str) -> None:
        try:
            address = PciAddress.parse(value)
        except InvalidPciAddress as e:
            self.lenient(pos, path, f"{e}; it matches no device")
            return
        if str(address) != value:
            self.lenient(
                pos,
                path,
                f"write {str(address)!r}: the device plugin compares "
                f"the full lower-case form, so {value!r} matches no device",
            )

    def vdpa_type(self, node: _Node, path: str) -> str | None:
        text = self.string(node, path)
        if text is not None and text not in _VDPA_DRIVERS:
            hint = _did_you_mean(text, list(_VDPA_DRIVERS))
            self.lenient(
                node.pos,
                path,
                f"vDPA type {text!r} matches no device{hint} (choose vhost or virtio)",
            )
        return text or None

    def vf_filters(self, node: _Node, path: str, key: str) -> tuple[VfFilter, ...]:
        items = self.strings(node, path)
        if items is None:
            return ()
        filters: list[VfFilter] = []
        seen: dict[str, int] = {}
        for i, (text, pos) in enumerate(items):
            where = f"{path}[{i}]"
            target = text.partition("#")[0]
            if self.compat and not target:
                self.lenient(pos, where, "an entry without a PF matches no device")
            folded = target.casefold()
            if folded in seen:
                first = items[seen[folded]][0]
                merged = _merge_hint(first, text)
                self.lenient(
                    pos,
                    where,
                    f"second entry for {target!r} (the first is "
                    f"{first!r}): the device plugin uses only the first{merged}",
                )
            else:
                seen[folded] = i
            result = _parse_filter(text, key, self.compat)
            if isinstance(result, str):
                self.error(pos, where, result)
                continue
            entry, warnings = result
            for warning in warnings:
                self.lenient(pos, where, warning)
            if key == "rootDevices":
                self.check_address(entry.target, pos, where)
            filters.append(entry)
        return tuple(filters)

    def additional_info(
        self, node: _Node, path: str, device_type: DeviceType | None
    ) -> dict[str, dict[str, str]]:
        if self.null_as_absent(node, path):
            return {}
        if not self.expect(node, path, "object", 'an object {"*": {...}, "<device>": {...}}'):
            return {}
        info: dict[str, dict[str, str]] = {}
        for key, key_pos, value in node.value:
            where = _join(path, key)
            if key != "*" and device_type is not DeviceType.AUX_NET_DEVICE:
                self.check_address(key, key_pos, where)
            if not self.expect(value, where, "object", "an object of string values"):
                continue
            entry: dict[str, str] = {}
            for inner, _inner_pos, item in value.value:
                if self.expect(item, _join(where, inner), "string", "a string"):
                    entry[inner] = item.value
            info[key] = entry
        return info


_Fields = dict[str, tuple[_Node, int]]


def _field(fields: _Fields, path: str, key: str) -> tuple[_Node, str] | None:
    """The node of *key* and its path, or None when the key is absent."""
    if key not in fields:
        return None
    return fields[key][0], _join(path, key)


@functools.cache
def _selector_hints(device_type: DeviceType) -> dict[str, str]:
    """Explanations for keys that are valid somewhere, but not in this selector."""
    hints = {key: f'; {key!r} belongs to the pool, outside "selectors"' for key in _POOL_KEYS}
    for key in SELECTOR_KEYS:
        if key not in APPLIED_KEYS[device_type]:
            users = [str(t) for t, keys in APPLIED_KEYS.items() if key in keys]
            hints[key] = (
                f"; {key!r} is not a selector of {device_type} pools (only of "
                f"{' and '.join(users)} pools)"
            )
    for key in _IGNORED_KEYS[device_type]:
        hints[key] = (
            f"; the device plugin reads {key!r} for {device_type} pools but never applies it"
        )
    return hints


_DNS_SUBDOMAIN = re.compile(r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*")


def check_resource_prefix(prefix: str) -> str:
    """*prefix* if it is a resource prefix the kubelet takes (a DNS subdomain such as
    ``intel.com``); :class:`ValueError` saying why not otherwise."""
    if len(prefix) > 253 or not _DNS_SUBDOMAIN.fullmatch(prefix):
        raise ValueError(
            f"resource prefix {prefix!r} is not a DNS subdomain such as 'intel.com' "
            "(lower-case letters, digits, '-' and '.'); the kubelet would refuse it"
        )
    return prefix


def _join(path: str, key: str) -> str:
    if re.fullmatch(r"[A-Za-z_*][A-Za-z0-9_]*", key):
        return f"{path}.{key}" if path else key
    return f"{path}[{json.dumps(key)}]"


def _did_you_mean(word: str, choices: Iterable[str]) -> str:
    choices = list(dict.fromkeys(choices))
    folded = {c.casefold(): c for c in choices}
    close = difflib.get_close_matches(word.casefold(), list(folded), n=1, cutoff=0.6)
    return f"; did you mean {folded[close[0]]!r}?" if close else ""


def _merge_hint(first: str, second: str) -> str:
    a, b = first.partition("#"), second.partition("#")
    if a[1] and b[1]:
        return f"; merge them as '{a[0]}#{a[2]},{b[2]}'"
    return ""


# ---------------------------------------------------------------------------------
# VF range lists ("ens1f0#0,2-7")
# ---------------------------------------------------------------------------------

_DIGITS = re.compile(r"[0-9]+")
_GO_INT = re.compile(r"[+-]?[0-9]+")


def _go_atoi(text: str) -> int | None:
    """Go's strconv.Atoi: optional sign, decimal digits, 64-bit range."""
    if not _GO_INT.fullmatch(text):
        return None
    digits = text.lstrip("+-").lstrip("0")
    if len(digits) > 19:
        return None
    value = int(text)
    return value if -(2**63) <= value < 2**63 else None


def _parse_filter(text: str, key: str, compat: bool) -> tuple[VfFilter, list[str]] | str:
    """Parse one pfNames/rootDevices entry.

    Returns the filter and warnings (compat mode), or the error message (strict mode).
    """
    if compat:
        return _compat_filter(text)
    target, sep, spec = text.partition("#")
    error = _strict_target(target, key)
    if error is None and not sep:
        return VfFilter(target), []
    if error is None:
        parsed = _strict_ranges(spec)
        if not isinstance(parsed, str):
            return VfFilter(target, parsed), []
        error = parsed
    return f"{text!r}: {error}"


def _compat_filter(text: str) -> tuple[VfFilter, list[str]]:
    """Read an entry the way the device plugin does, noting where it goes wrong."""
    target, sep, spec = text.partition("#")
    if not sep:
        return VfFilter(target), []
    warnings = []
    strict = _strict_ranges(spec)
    if isinstance(strict, str):
        warnings.append(f"{text!r}: {strict}; read the way the device plugin reads it")
    if "#" in spec:
        return VfFilter(target, (Malformed(spec),)), warnings
    items: list[IndexRange | Malformed] = []
    for part in spec.split(","):
        bounds = part.split("-") if "-" in part else [part, part]
        first = _go_atoi(bounds[0]) if len(bounds) == 2 else None
        last = _go_atoi(bounds[1]) if len(bounds) == 2 else None
        if first is None or last is None:
            items.append(Malformed(part))
            break
        items.append(IndexRange(first, last))
    return VfFilter(target, tuple(items)), warnings


def _strict_target(target: str, key: str) -> str | None:
    if key == "pfNames":
        if not target:
            return "the PF name before '#' is empty"
        try:
            check_netdev_name(target)
        except ValueError as e:
            return str(e)
        return None
    if not target:
        return "the PF address before '#' is empty"
    return None  # the address itself is checked by the caller


def _strict_ranges(spec: str) -> tuple[IndexRange, ...] | str:
    """Parse ``0,2-7`` strictly; return the ranges or the reason it is malformed."""
    if "#" in spec:
        return "more than one '#'"
    if not spec:
        return (
            "nothing after '#': list VF indexes such as '0-3,5', or drop the '#' to select every VF"
        )
    ranges: list[IndexRange] = []
    for part in spec.split(","):
        parsed = _strict_part(part)
        if isinstance(parsed, str):
            return parsed
        ranges.append(parsed)
    ordered = sorted(ranges, key=lambda r: (r.first, r.last))
    for a, b in itertools.pairwise(ordered):
        if b.first <= a.last:
            both = IndexRange(b.first, min(a.last, b.last))
            return f"VF ranges {a} and {b} overlap (VF {both} listed twice)"
    return tuple(ranges)


def _strict_part(part: str) -> IndexRange | str:
    """One item of a strict VF list: ``N`` or ``A-B``."""
    if not part:
        return "an empty item in the VF list (two commas in a row, or one at an end)"
    first_text, dash, last_text = part.partition("-")
    if not _DIGITS.fullmatch(first_text) or (dash and not _DIGITS.fullmatch(last_text)):
        return (
            f"{part!r} is not a VF index or a range such as '2-7' (decimal digits "
            "only, no spaces or signs)"
        )
    first = _bounded(first_text)
    last = _bounded(last_text) if dash else first
    if first is None or last is None:
        return f"{part!r}: a VF index is at most {MAX_VF_INDEX}"
    if first > last:
        return f"range {part!r} is reversed; write '{last}-{first}'"
    return IndexRange(first, last)


def _bounded(text: str) -> int | None:
    digits = text.lstrip("0")
    if len(digits) > 5:
        return None
    value = int(text)
    return value if value <= MAX_VF_INDEX else None


def parse_vf_filter(text: str, key: str = "pfNames", *, compat: bool = False) -> VfFilter:
    """Parse one ``pfNames`` (or, with ``key="rootDevices"``, ``rootDevices``) entry.

    Raises :class:`ConfigError` when strict parsing rejects it; in compat mode nothing is
    rejected and unreadable parts become :class:`Malformed` items, as in the plugin.
    """
    if key not in ("pfNames", "rootDevices"):
        raise ValueError(f"key must be 'pfNames' or 'rootDevices', not {key!r}")
    result = _parse_filter(text, key, compat)
    if isinstance(result, str):
        raise ConfigError([ConfigProblem(result, path=key)])
    entry = result[0]
    if key == "rootDevices" and not compat:
        try:
            address = PciAddress.parse(entry.target)
        except InvalidPciAddress as e:
            raise ConfigError([ConfigProblem(f"{text!r}: {e}", path=key)]) from None
        if str(address) != entry.target:
            raise ConfigError(
                [ConfigProblem(f"{text!r}: write the PF address as {str(address)!r}", path=key)]
            )
    return entry


def parse_config(
    text: str | bytes,
    *,
    compat: bool = False,
    source: str = "<config>",
    default_prefix: str = DEFAULT_PREFIX,
) -> PoolConfig:
    """Parse a device-plugin ``config.json``.

    Args:
        text: The file's contents (bytes must be UTF-8).
        compat: Accept what the device plugin accepts and select what it would select;
            each leniency becomes a warning in ``PoolConfig.warnings``.
        source: The name used in messages.
        default_prefix: The plugin's ``-resource-prefix`` (for duplicate-name checks).

    Raises:
        ConfigError: Listing every problem, each with its line and column.
    """
    if isinstance(text, bytes):
        data = text
        try:
            text = data.decode("utf-8")
        except UnicodeDecodeError as e:
            good = data[: e.start].decode("utf-8", errors="replace")
            line = good.count("\n") + 1
            column = len(good) - good.rfind("\n")
            raise ConfigError([ConfigProblem("invalid UTF-8", source, "", line, column)]) from None
    doc = _Document(text, source)
    root = doc.parse()
    parser = _Parser(doc, compat, default_prefix)
    pools = parser.config(root)
    if parser.errors:
        raise ConfigError(parser.errors)
    warnings = tuple(sorted(parser.warnings, key=_problem_order))
    return PoolConfig(pools=pools, warnings=warnings, compat=compat, default_prefix=default_prefix)


def load_config(
    path: str | Path, *, compat: bool = False, default_prefix: str = DEFAULT_PREFIX
) -> PoolConfig:
    """Read and parse the config file at *path* (see :func:`parse_config`)."""
    data = read_bounded(path, MAX_CONFIG, pipes=True)
    return parse_config(data, compat=compat, source=str(path), default_prefix=default_prefix)


# ---------------------------------------------------------------------------------
# devices
# ---------------------------------------------------------------------------------


class DeviceKind(enum.StrEnum):
    """What a poolable PCI function is."""

    VF = "vf"
    PF = "pf"
    NIC = "nic"


_ENCAP = {1: "ether", 32: "infiniband", 772: "loopback", 65534: "none"}
_LINK_ENCAP = {LinkType.ETHERNET: "ether", LinkType.INFINIBAND: "infiniband"}


@attrs.frozen(kw_only=True)
class PoolDevice:
    """A network-class PCI function as the selectors see it.

    Attributes:
        address: PCI address (the device id a pod receives).
        kind: VF, PF (one without VFs enabled) or NIC (no SR-IOV).
        ids: Vendor and device id.
        driver: The bound driver, or None.
        pf_address: The parent PF of a VF.
        pf_name: The parent PF's interface name (its uplink in switchdev mode).
        vf_index: The VF's number on its PF.
        link_type: ``ether`` or ``infiniband`` (netlink's names), None if unknown.
        netdevs: The function's interfaces in the host namespace.
        numa_node: NUMA node or None.
        rdma_devices: RDMA devices of the function.
        acpi_index: The firmware's ACPI index, or None.
        vdpa_driver: The driver of its vDPA device, or None.
        ddp_profile: The Intel DDP profile, or None (not read yet).
        pkey: The InfiniBand partition key at index 0, or None (not read yet).
        excluded: Why the device plugin would never pool this device, or None.
    """

    address: PciAddress
    kind: DeviceKind
    ids: PciId
    driver: str | None = None
    pf_address: PciAddress | None = None
    pf_name: str | None = None
    vf_index: int | None = None
    link_type: str | None = None
    netdevs: tuple[str, ...] = ()
    numa_node: int | None = None
    rdma_devices: tuple[str, ...] = ()
    acpi_index: str | None = None
    vdpa_driver: str | None = None
    ddp_profile: str | None = None
    pkey: str | None = None
    excluded: str | None = None

    def to_dict(self) -> dict[str, Any]:
        """A JSON-able summary."""
        return {
            "address": str(self.address),
            "kind": str(self.kind),
            "id": str(self.ids),
            "driver": self.driver,
            "pf": None if self.pf_address is None else str(self.pf_address),
            "pfName": self.pf_name,
            "vfIndex": self.vf_index,
            "linkType": self.link_type,
            "netdevs": list(self.netdevs),
            "numaNode": self.numa_node,
            "rdmaDevices": list(self.rdma_devices),
        }


def discover_devices(
    inventory: Inventory, facts: SelectorFacts | None = None
) -> tuple[PoolDevice, ...]:
    """The devices the device plugin would consider, in PCI address order.

    PFs with VFs enabled and devices carrying the IPv4 default route are included with
    ``excluded`` set, so that callers can say why they are in no pool.
    """
    facts = facts or SelectorFacts()
    routes = facts.default_route_netdevs
    pfs = {pf.address: pf for pf in inventory.pfs}
    devices: list[PoolDevice] = []

    def route_reason(netdevs: Iterable[str]) -> str | None:
        hit = sorted(set(netdevs) & routes)
        if hit:
            return (
                f"carries the IPv4 default route ({', '.join(hit)}); the device plugin "
                "never pools it"
            )
        return None

    def pf_name(address: PciAddress) -> str | None:
        pf = pfs.get(address)
        if pf is None:
            return None
        return facts.uplink.get(address) or (pf.netdevs[0] if pf.netdevs else None)

    for pf in inventory.pfs:
        excluded = None
        if pf.num_vfs > 0:
            excluded = (
                f"a PF with {pf.num_vfs} VFs enabled; the device plugin pools its VFs, never the PF"
            )
        devices.append(
            PoolDevice(
                address=pf.address,
                kind=DeviceKind.PF,
                ids=pf.ids,
                driver=pf.driver,
                link_type=_LINK_ENCAP.get(pf.link_type),
                netdevs=pf.netdevs,
                numa_node=pf.numa_node,
                rdma_devices=facts.rdma_devices.get(pf.address, ()),
                acpi_index=facts.acpi_index.get(pf.address),
                vdpa_driver=facts.vdpa_driver.get(pf.address),
                excluded=excluded or route_reason(pf.netdevs),
            )
        )
    for vf in inventory.vfs:
        parent = pfs.get(vf.pf_address)
        link = None if parent is None else _LINK_ENCAP.get(parent.link_type)
        netdevs = () if vf.netdev is None else (vf.netdev,)
        devices.append(
            PoolDevice(
                address=vf.address,
                kind=DeviceKind.VF,
                ids=vf.ids,
                driver=vf.driver,
                pf_address=vf.pf_address,
                pf_name=pf_name(vf.pf_address),
                vf_index=vf.index,
                link_type=link,
                netdevs=netdevs,
                numa_node=vf.numa_node,
                rdma_devices=vf.rdma_devices,
                acpi_index=facts.acpi_index.get(vf.address),
                vdpa_driver=facts.vdpa_driver.get(vf.address),
                excluded=route_reason(netdevs),
            )
        )
    for nic in inventory.other_nics:
        arphrd = facts.arphrd.get(nic.address)
        devices.append(
            PoolDevice(
                address=nic.address,
                kind=DeviceKind.NIC,
                ids=nic.ids,
                driver=nic.driver,
                link_type=None if arphrd is None else _ENCAP.get(arphrd),
                netdevs=nic.netdevs,
                rdma_devices=facts.rdma_devices.get(nic.address, ()),
                acpi_index=facts.acpi_index.get(nic.address),
                vdpa_driver=facts.vdpa_driver.get(nic.address),
                excluded=route_reason(nic.netdevs),
            )
        )
    devices.sort(key=lambda d: d.address)
    return tuple(devices)


# ---------------------------------------------------------------------------------
# membership
# ---------------------------------------------------------------------------------


def _listed(values: Sequence[str]) -> str:
    return "[" + ", ".join(values) + "]"


def _first_filter(filters: Sequence[VfFilter], target: str) -> VfFilter | None:
    folded = target.casefold()
    for entry in filters:
        if entry.target.casefold() == folded:
            return entry
    return None


def _vendor(s: Selector, d: PoolDevice) -> str | None:
    if s.vendors and d.ids.vendor_hex not in s.vendors:
        return f"vendor {d.ids.vendor_hex} not in vendors {_listed(s.vendors)}"
    return None


def _device_id(s: Selector, d: PoolDevice) -> str | None:
    if s.devices and d.ids.device_hex not in s.devices:
        return f"device id {d.ids.device_hex} not in devices {_listed(s.devices)}"
    return None


def _driver(s: Selector, d: PoolDevice) -> str | None:
    if s.drivers and d.driver not in s.drivers:
        return f"driver {d.driver or '(none)'} not in drivers {_listed(s.drivers)}"
    return None


def _pci_address(s: Selector, d: PoolDevice) -> str | None:
    if s.pci_addresses and str(d.address) not in s.pci_addresses:
        return f"address not in pciAddresses {_listed(s.pci_addresses)}"
    return None


def _acpi_index(s: Selector, d: PoolDevice) -> str | None:
    if s.acpi_indexes and d.acpi_index not in s.acpi_indexes:
        return (
            f"ACPI index {d.acpi_index or 'unknown'} not in acpiIndexes {_listed(s.acpi_indexes)}"
        )
    return None


def _vf_filter(
    key: str, filters: Sequence[VfFilter], parent: str | None, d: PoolDevice
) -> str | None:
    if not filters:
        return None
    if parent is None:
        return f"{key} selects VFs by their PF; this device is not the VF of a known PF"
    entry = _first_filter(filters, parent)
    if entry is None:
        return f"PF {parent} not in {key} {_listed([str(f) for f in filters])}"
    if not entry.selects(-1 if d.vf_index is None else d.vf_index):
        return f"VF {d.vf_index} not in the range of {key} entry {entry}"
    return None


def _pf_name(s: Selector, d: PoolDevice) -> str | None:
    return _vf_filter("pfNames", s.pf_names, d.pf_name, d)


def _root_device(s: Selector, d: PoolDevice) -> str | None:
    parent = None if d.pf_address is None else str(d.pf_address)
    return _vf_filter("rootDevices", s.root_devices, parent, d)


def _link_type(s: Selector, d: PoolDevice) -> str | None:
    if s.link_types and d.link_type not in s.link_types:
        return f"link type {d.link_type or 'unknown'} not in linkTypes {_listed(s.link_types)}"
    return None


def _ddp_profile(s: Selector, d: PoolDevice) -> str | None:
    if s.ddp_profiles and d.ddp_profile not in s.ddp_profiles:
        found = d.ddp_profile or "unknown (sriovlib does not read DDP profiles yet)"
        return f"DDP profile {found} not in ddpProfiles"
    return None


def _pkey(s: Selector, d: PoolDevice) -> str | None:
    if s.pkeys and d.pkey not in s.pkeys:
        return f"pkey {d.pkey or 'unknown (sriovlib does not read pkeys yet)'} not in pKeys"
    return None


def _rdma(s: Selector, d: PoolDevice) -> str | None:
    if s.is_rdma and not d.rdma_devices:
        return "isRdma: the device has no RDMA device"
    return None


def _vdpa(s: Selector, d: PoolDevice) -> str | None:
    if s.vdpa_type is not None and d.vdpa_driver != _VDPA_DRIVERS.get(s.vdpa_type):
        return f"vdpaType {s.vdpa_type}: the device has no {s.vdpa_type} vDPA device"
    return None


#: The checks in the device plugin's filter order.
_CHECKS: tuple[Callable[[Selector, PoolDevice], str | None], ...] = (
    _vendor,
    _device_id,
    _driver,
    _pci_address,
    _acpi_index,
    _pf_name,
    _root_device,
    _link_type,
    _ddp_profile,
    _pkey,
    _rdma,
    _vdpa,
)


def selector_mismatch(selector: Selector, device: PoolDevice) -> str | None:
    """Why *selector* does not match *device* (the first failing field), or None."""
    for check in _CHECKS:
        reason = check(selector, device)
        if reason is not None:
            return reason
    return None


def pool_mismatch(pool: Pool, device: PoolDevice) -> str | None:
    """Why no selector object of *pool* matches *device*, or None when one does."""
    if pool.device_type is DeviceType.ACCELERATOR:
        return "an accelerator pool (PCI class 0x12): it never takes network devices"
    if pool.device_type is DeviceType.AUX_NET_DEVICE:
        return "an auxNetDevice pool: it takes auxiliary devices (SFs), not PCI functions"
    reasons = []
    for selector in pool.selectors:
        reason = selector_mismatch(selector, device)
        if reason is None:
            return None
        reasons.append(reason)
    if len(reasons) == 1:
        return reasons[0]
    return "; ".join(f"selector {i}: {r}" for i, r in enumerate(reasons))


@attrs.frozen
class PoolMembers:
    """The devices of one pool, in PCI address order, and notes about the pool."""

    pool: Pool
    devices: tuple[PoolDevice, ...] = ()
    notes: tuple[str, ...] = ()

    def candidates(self) -> tuple[Candidate, ...]:
        """The pool's devices as offered to the allocator (id, PF, NUMA node)."""
        return tuple(
            Candidate(str(d.address), str(d.pf_address or d.address), d.numa_node)
            for d in self.devices
        )


@attrs.frozen
class Unmatched:
    """A device no pool takes, and why (one reason per pool, or why it is excluded)."""

    device: PoolDevice
    reasons: tuple[str, ...]


@attrs.frozen
class Shadowed:
    """A device that a later pool also selects: the first pool keeps it."""

    device: PoolDevice
    pool: Pool
    also: tuple[Pool, ...]


@attrs.frozen
class Assignment:
    """Pool membership on one node."""

    pools: tuple[PoolMembers, ...]
    unmatched: tuple[Unmatched, ...] = ()
    shadowed: tuple[Shadowed, ...] = ()

    def pool_of(self, address: PciAddress) -> Pool | None:
        """The pool that holds the device at *address*, or None."""
        for members in self.pools:
            if any(d.address == address for d in members.devices):
                return members.pool
        return None


def assign(config: PoolConfig, devices: Sequence[PoolDevice]) -> Assignment:
    """Put every device in the first pool that selects it (the device plugin's rule)."""
    members: list[list[PoolDevice]] = [[] for _ in config.pools]
    unmatched: list[Unmatched] = []
    shadowed: list[Shadowed] = []
    for device in devices:
        if device.excluded is not None:
            unmatched.append(Unmatched(device, (device.excluded,)))
            continue
        winner: int | None = None
        also: list[Pool] = []
        reasons: list[str] = []
        for i, pool in enumerate(config.pools):
            reason = pool_mismatch(pool, device)
            if reason is None:
                if winner is None:
                    winner = i
                else:
                    also.append(pool)
            elif winner is None:
                reasons.append(f"{pool.resource_name}: {reason}")
        if winner is None:
            unmatched.append(Unmatched(device, tuple(reasons) or ("the config has no pools",)))
            continue
        members[winner].append(device)
        if also:
            shadowed.append(Shadowed(device, config.pools[winner], tuple(also)))
    pf_names = {d.pf_name.casefold() for d in devices if d.pf_name}
    pf_addresses = {str(d.pf_address) for d in devices if d.pf_address}
    result = []
    for pool, found in zip(config.pools, members, strict=True):
        result.append(PoolMembers(pool, tuple(found), _notes(pool, found, pf_names, pf_addresses)))
    return Assignment(tuple(result), tuple(unmatched), tuple(shadowed))


def _notes(
    pool: Pool, found: Sequence[PoolDevice], pf_names: set[str], pf_addresses: set[str]
) -> tuple[str, ...]:
    notes = []
    if pool.device_type is DeviceType.ACCELERATOR:
        notes.append("sriovlib discovers network devices only; accelerators are not listed")
    elif pool.device_type is DeviceType.AUX_NET_DEVICE:
        notes.append("sriovlib does not discover auxiliary devices (SFs) yet")
    if not found:
        notes.append("empty: the device plugin does not advertise a pool without devices")
    for selector in pool.selectors:
        for entry in selector.pf_names:
            if entry.target.casefold() not in pf_names:
                notes.append(f"pfNames entry {entry} names no PF with VFs on this node")
        for entry in selector.root_devices:
            if entry.target.casefold() not in pf_addresses:
                notes.append(f"rootDevices entry {entry} names no PF with VFs on this node")
        if selector.need_vhost_net:
            notes.append("needVhostNet: adds /dev/vhost-net and /dev/net/tun to each allocation")
    return tuple(dict.fromkeys(notes))


# ---------------------------------------------------------------------------------
# generating a config
# ---------------------------------------------------------------------------------


def generate_config(
    inventory: Inventory,
    *,
    facts: SelectorFacts | None = None,
    split_by_driver: bool = False,
    resource_prefix: str | None = None,
) -> PoolConfig:
    """A strict config that pools every VF of the node.

    By default there is one pool per PF model and link type, selected by the VFs'
    vendor and device ids; ``linkTypes`` is added only where one model runs both link
    types, ``rootDevices`` only where different models share a VF id, and ``isRdma`` where
    every VF of the pool has an RDMA device (so pods get the RDMA device nodes). With
    *split_by_driver*, VFs bound to different drivers (``iavf`` and ``vfio-pci``) get
    separate pools selected by ``drivers`` too. PFs without VFs get no pool.
    """
    devices = [
        d
        for d in discover_devices(inventory, facts)
        if d.kind is DeviceKind.VF and d.excluded is None
    ]
    pfs = {pf.address: pf for pf in inventory.pfs}
    groups: dict[tuple[PciId, str | None, str | None], list[PoolDevice]] = {}
    for device in devices:
        pf = pfs.get(device.pf_address) if device.pf_address else None
        model = pf.ids if pf is not None else device.ids
        driver = device.driver if split_by_driver else None
        groups.setdefault((model, device.link_type, driver), []).append(device)

    names: set[str] = set()
    pools: list[Pool] = []
    keys = sorted(groups, key=lambda k: (k[0], k[1] or "", k[2] or ""))
    link_types_of: dict[PciId, set[str | None]] = {}
    for model, link, _ in keys:
        link_types_of.setdefault(model, set()).add(link)
    for key in keys:
        model, link, driver = key
        found = groups[key]
        pf = next((pfs[d.pf_address] for d in found if d.pf_address in pfs), None)
        name = _pool_name(pf.driver if pf else None, model, link, driver, names)
        ids = sorted({d.ids for d in found})
        values: dict[str, Any] = {
            "vendors": tuple(sorted({i.vendor_hex for i in ids})),
            "devices": tuple(sorted({i.device_hex for i in ids})),
        }
        if driver is not None:
            values["drivers"] = (driver,)
        if len(link_types_of[model]) > 1 and link is not None:
            values["link_types"] = (link,)
        if all(d.rdma_devices for d in found):
            values["is_rdma"] = True
        pools.append(
            Pool(
                resource_name=name, resource_prefix=resource_prefix, selectors=(Selector(**values),)
            )
        )

    config = PoolConfig(pools=tuple(pools))
    # Where VF ids are shared across models, pin each pool to its PFs' addresses.
    assignment = assign(config, devices)
    fixed = []
    for key, members in zip(keys, assignment.pools, strict=True):
        wanted = {d.address for d in groups[key]}
        if {d.address for d in members.devices} != wanted:
            roots = sorted({d.pf_address for d in groups[key] if d.pf_address})
            selector = attrs.evolve(
                members.pool.selectors[0], root_devices=tuple(VfFilter(str(a)) for a in roots)
            )
            fixed.append(attrs.evolve(members.pool, selectors=(selector,)))
        else:
            fixed.append(members.pool)
    return PoolConfig(pools=tuple(fixed))


def _pool_name(
    pf_driver: str | None, model: PciId, link: str | None, driver: str | None, taken: set[str]
) -> str:
    base = (pf_driver or "sriov").removesuffix("_core")
    parts = [base, model.device_hex]
    if link == "infiniband":
        parts.append("ib")
    if driver is not None:
        parts.append(driver)
    name = re.sub(r"[^A-Za-z0-9_]", "_", "_".join(parts))
    if name in taken:
        name = f"{name}_{model.vendor_hex}"
    candidate, n = name, 2
    while candidate in taken:
        candidate = f"{name}_{n}"
        n += 1
    taken.add(candidate)
    return candidate
