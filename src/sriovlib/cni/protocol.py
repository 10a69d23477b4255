"""The CNI protocol: environment, stdin, spec versions, results and errors.

This module is on the path of every invocation, including ``VERSION``, which a runtime
may call often; it imports only the standard library pieces it needs (no attrs, no
pyroute2) so that ``VERSION`` costs little more than starting the interpreter.

What it implements, from the CNI specification (0.3.0 to 1.1.0):

- the environment: ``CNI_COMMAND`` and, per command, ``CNI_CONTAINERID``, ``CNI_NETNS``,
  ``CNI_IFNAME``, ``CNI_PATH``, ``CNI_ARGS``, with the spec's rules for each value;
- stdin: one JSON object whose ``cniVersion`` this plugin supports (``CHECK`` needs
  0.4.0 or later, ``STATUS`` and ``GC`` 1.1.0);
- results: parsed from any supported version (an IPAM plugin's reply, a ``prevResult``)
  into one canonical form, and printed in the version the configuration asks for;
- errors: :class:`CniError` carries a code; :func:`error_json` renders it the way the
  spec wants it on stdout.
"""

from __future__ import annotations

import json
import math
import os
import re

from sriovlib.cni.fastpath import MAX_STDIN  # the bound the binary reads stdin with

TYPE_CHECKING = False  # not typing.TYPE_CHECKING: VERSION must not import typing
if TYPE_CHECKING:
    from collections.abc import Mapping
    from typing import Any, TypeAlias

__all__ = [
    "COMMANDS",
    "LATEST_VERSION",
    "SUPPORTED_VERSIONS",
    "CniError",
    "Environment",
    "Result",
    "config_version",
    "convert_result",
    "decode_config",
    "error_json",
    "parse_cni_args",
    "parse_result",
    "read_environment",
    "version_at_least",
    "version_json",
]

#: The spec versions this plugin speaks, oldest first.
SUPPORTED_VERSIONS = ("0.3.0", "0.3.1", "0.4.0", "1.0.0", "1.1.0")
LATEST_VERSION = SUPPORTED_VERSIONS[-1]
COMMANDS = ("ADD", "DEL", "CHECK", "GC", "STATUS", "VERSION")

# Well-known error codes (spec "Error" section).
INCOMPATIBLE_VERSION = 1
UNSUPPORTED_FIELD = 2
UNKNOWN_CONTAINER = 3
INVALID_ENVIRONMENT = 4
IO_FAILURE = 5
DECODING_FAILURE = 6
INVALID_CONFIG = 7
TRY_AGAIN_LATER = 11
NOT_AVAILABLE = 50
LIMITED_CONNECTIVITY = 51
# This plugin's own codes (100 and up).
INTERNAL_ERROR = 100
DEVICE_NOT_FOUND = 101
DEVICE_BUSY = 102
KERNEL_REFUSED = 103
IPAM_FAILED = 104
CHECK_FAILED = 105
STATE_ERROR = 106
RELEASE_FAILED = 107

#: Messages for this plugin's own codes (documented in docs/cni.md).
OWN_CODES = {
    INTERNAL_ERROR: "unexpected internal error",
    DEVICE_NOT_FOUND: "the VF or its PF was not found",
    DEVICE_BUSY: "the VF is held by another attachment",
    KERNEL_REFUSED: "the kernel or driver refused a VF or link change",
    IPAM_FAILED: "the IPAM plugin failed or gave an unusable answer",
    CHECK_FAILED: "CHECK found the attachment not as it was set up",
    STATE_ERROR: "the plugin's state on disk is unreadable or unwritable",
    RELEASE_FAILED: "DEL could not restore the VF (state kept for a retry)",
}

_ID = re.compile(r"[a-zA-Z0-9][a-zA-Z0-9_.\-]*")
_CIDR = re.compile(r"[0-9A-Fa-f.:]+/[0-9]{1,3}")

# Which environment variables each command needs (spec 1.1.0, "Parameters").
_REQUIRED = {
    "ADD": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "CHECK": ("CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"),
    "DEL": ("CNI_CONTAINERID", "CNI_IFNAME", "CNI_PATH"),
    "GC": ("CNI_PATH",),
    "STATUS": (),
    "VERSION": (),
}


class CniError(Exception):
    """A failure to report to the runtime as CNI error JSON (and a non-zero exit).

    Attributes:
        code: The CNI error code (1-99 well-known, 100+ this plugin's own).
        msg: A short message.
        details: Longer text: what was found, what to do.
        logged: Whether the failure was already written to the log.
    """

    def __init__(self, code: int, msg: str, details: str = "") -> None:
        self.code = code
        self.msg = msg
        self.details = details
        self.logged = False
        super().__init__(f"{msg}: {details}" if details else msg)


def error_json(error: CniError, version: str | None) -> dict[str, object]:
    """The error object printed on stdout (``details`` left out when empty)."""
    data: dict[str, object] = {
        "cniVersion": version if version in SUPPORTED_VERSIONS else LATEST_VERSION,
        "code": error.code,
        "msg": error.msg,
    }
    if error.details:
        data["details"] = error.details
    return data


def version_json(requested: str | None) -> dict[str, object]:
    """The ``VERSION`` answer: the requested version when supported, else the latest."""
    version = requested if requested in SUPPORTED_VERSIONS else LATEST_VERSION
    return {"cniVersion": version, "supportedVersions": list(SUPPORTED_VERSIONS)}


def version_at_least(version: str, minimum: str) -> bool:
    """Whether spec *version* is *minimum* or later (both in ``x.y.z`` form)."""
    return _version_key(version) >= _version_key(minimum)


def _version_key(version: str) -> tuple[int, ...]:
    return tuple(int(part) for part in version.split("."))


# -- environment --------------------------------------------------------------------------


class Environment:
    """The ``CNI_*`` environment of one invocation, validated.

    Attributes:
        command: ``ADD``, ``DEL``, ``CHECK``, ``GC``, ``STATUS`` or ``VERSION``.
        container_id: ``CNI_CONTAINERID`` (None when the command does not take one).
        netns: ``CNI_NETNS``, an absolute path (None when absent; optional on DEL).
        ifname: ``CNI_IFNAME``.
        path: ``CNI_PATH`` split into directories.
        args: ``CNI_ARGS`` as (key, value) pairs, in order.
    """

    __slots__ = ("args", "command", "container_id", "ifname", "netns", "path")

    def __init__(
        self,
        command: str,
        container_id: str | None = None,
        netns: str | None = None,
        ifname: str | None = None,
        path: tuple[str, ...] = (),
        args: tuple[tuple[str, str], ...] = (),
    ) -> None:
        self.command = command
        self.container_id = container_id
        self.netns = netns
        self.ifname = ifname
        self.path = path
        self.args = args

    def __repr__(self) -> str:
        return (
            f"Environment(command={self.command!r}, container_id={self.container_id!r}, "
            f"netns={self.netns!r}, ifname={self.ifname!r})"
        )


def read_environment(environ: Mapping[str, str]) -> Environment:
    """Validate the ``CNI_*`` variables for the command; raise :class:`CniError` code 4.

    A variable that is set to the empty string counts as absent. A value that is
    present is checked even where the command does not need it.
    """
    command = environ.get("CNI_COMMAND", "")
    if not command:
        raise CniError(INVALID_ENVIRONMENT, "CNI_COMMAND is not set", _commands_hint())
    if command not in COMMANDS:
        raise CniError(
            INVALID_ENVIRONMENT, f"CNI_COMMAND {command!r} is not a CNI command", _commands_hint()
        )
    if command == "VERSION":
        return Environment(command)
    for name in _REQUIRED[command]:
        if not environ.get(name):
            raise CniError(INVALID_ENVIRONMENT, f"{name} is not set", f"{command} needs {name}")
    container_id = environ.get("CNI_CONTAINERID") or None
    if container_id is not None:
        check_identifier("CNI_CONTAINERID", container_id, INVALID_ENVIRONMENT)
    ifname = environ.get("CNI_IFNAME") or None
    if ifname is not None:
        check_ifname(ifname)
    netns = environ.get("CNI_NETNS") or None
    if netns is not None:
        if "\0" in netns or not netns.startswith("/"):
            raise CniError(
                INVALID_ENVIRONMENT,
                f"CNI_NETNS {netns!r} is not an absolute path",
                "it must name a network namespace file, e.g. /var/run/netns/pod1",
            )
        netns = os.path.normpath(netns)
    path = tuple(p for p in environ.get("CNI_PATH", "").split(os.pathsep) if p)
    args = parse_cni_args(environ.get("CNI_ARGS", ""))
    return Environment(command, container_id, netns, ifname, path, args)


def _commands_hint() -> str:
    return "expected one of " + ", ".join(COMMANDS)


def check_identifier(what: str, value: str, code: int) -> str:
    """A container id or network name: a letter or digit, then letters, digits, ``_.-``."""
    if not _ID.fullmatch(value):
        raise CniError(
            code,
            f"{what} {value!r} is invalid",
            "it must start with a letter or digit, followed by letters, digits, '_', '.' or '-'",
        )
    return value


def check_ifname(ifname: str) -> str:
    """``CNI_IFNAME``: 1-15 characters, not ``.``/``..``, no ``/``, ``:`` or whitespace."""
    problem = None
    if len(ifname) > 15:
        problem = f"it has {len(ifname)} characters; at most 15 are allowed"
    elif ifname in (".", ".."):
        problem = "'.' and '..' are not interface names"
    elif "/" in ifname or ":" in ifname:
        problem = "it must not contain '/' or ':'"
    elif any(c.isspace() or c == "\0" for c in ifname):
        problem = "it must not contain whitespace"
    if problem:
        raise CniError(INVALID_ENVIRONMENT, f"CNI_IFNAME {ifname!r} is invalid", problem)
    return ifname


def parse_cni_args(text: str) -> tuple[tuple[str, str], ...]:
    """``K1=V1;K2=V2`` into pairs; each pair must have exactly one ``=`` and a key."""
    pairs = []
    for item in text.split(";"):
        if not item:
            continue
        key, sep, value = item.partition("=")
        if not sep or not key or "=" in value:
            raise CniError(
                INVALID_ENVIRONMENT,
                f"CNI_ARGS has an invalid pair {item!r}",
                "expected KEY=VALUE pairs separated by ';'",
            )
        pairs.append((key, value))
    return tuple(pairs)


# -- stdin --------------------------------------------------------------------------------


def _reject_constant(name: str) -> object:
    raise ValueError(f"{name} is not valid JSON")


def _finite(text: str) -> float:
    value = float(text)
    if not math.isfinite(value):
        raise ValueError(f"number {text} is out of range")
    return value


def _without_duplicates(pairs: list[tuple[str, Any]]) -> dict[str, Any]:
    obj: dict[str, Any] = {}
    for key, value in pairs:
        if key in obj:
            raise ValueError(f"duplicate key {key!r}")
        obj[key] = value
    return obj


def canonical(config: Mapping[str, Any]) -> bytes:
    """*config* as the document handed on to delegates (IPAM): re-serialised from what
    was parsed, so that they see exactly what this plugin validated."""
    return json.dumps(config, separators=(",", ":"), allow_nan=False).encode()


def decode_config(data: bytes) -> dict[str, Any]:
    """Decode stdin: one JSON object of plain UTF-8, without a byte order mark or a
    duplicate key (CniError code 6 otherwise)."""
    if len(data) > MAX_STDIN:
        raise CniError(
            DECODING_FAILURE,
            "the network configuration is too large",
            f"{len(data)} bytes; at most {MAX_STDIN} are read",
        )
    if not data.strip():
        raise CniError(DECODING_FAILURE, "no network configuration on stdin")
    if data.startswith(b"\xef\xbb\xbf"):
        raise CniError(
            DECODING_FAILURE,
            "the network configuration starts with a byte order mark",
            "JSON on stdin must be plain UTF-8 without a BOM",
        )
    try:
        config = json.loads(
            data,
            parse_constant=_reject_constant,
            parse_float=_finite,
            object_pairs_hook=_without_duplicates,
        )
    except (ValueError, UnicodeDecodeError, RecursionError) as e:
        raise CniError(
            DECODING_FAILURE, "the network configuration is not valid JSON", str(e)
        ) from None

    if not isinstance(config, dict):
        raise CniError(
            DECODING_FAILURE,
            "the network configuration must be a JSON object",
            f"got {type(config).__name__}",
        )
    return config


def config_version(config: Mapping[str, Any], command: str) -> str:
    """The configuration's ``cniVersion`` if this plugin and *command* support it."""
    version = config.get("cniVersion")
    if version is None or version == "":
        raise CniError(
            INCOMPATIBLE_VERSION,
            "the network configuration has no cniVersion",
            "a missing version means 0.1.0; supported: " + ", ".join(SUPPORTED_VERSIONS),
        )
    if not isinstance(version, str):
        raise CniError(INVALID_CONFIG, "cniVersion must be a string", f"got {version!r}")
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"incompatible CNI version {version!r}",
            "supported: " + ", ".join(SUPPORTED_VERSIONS),
        )
    minimum = {"CHECK": "0.4.0", "GC": "1.1.0", "STATUS": "1.1.0"}.get(command)
    if minimum is not None and not version_at_least(version, minimum):
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"configuration version {version} does not support {command}",
            f"{command} needs cniVersion {minimum} or later",
        )
    return version


# -- results ------------------------------------------------------------------------------

#: A result in canonical (1.1.0) form: plain JSON values, optional keys left out.
if TYPE_CHECKING:
    Result: TypeAlias = dict[str, Any]
else:
    Result = dict

_INTERFACE_KEYS = {
    "name": str,
    "mac": str,
    "mtu": int,
    "sandbox": str,
    "socketPath": str,
    "pciID": str,
}
_ROUTE_KEYS = {
    "dst": str,
    "gw": str,
    "mtu": int,
    "advmss": int,
    "priority": int,
    "table": int,
    "scope": int,
}
_DNS_KEYS = ("nameservers", "domain", "search", "options")
# what each version knows beyond the 0.3.0 basics
_V11_INTERFACE_KEYS = ("mtu", "socketPath", "pciID")
_V11_ROUTE_KEYS = ("mtu", "advmss", "priority", "table", "scope")


def parse_result(data: object, default_version: str, what: str = "result") -> Result:
    """Read a result of any supported version into canonical form.

    *default_version* is used when the result has no ``cniVersion`` (as libcni does).
    Raises CniError code 1 for an unsupported version and *code 7* for a malformed one
    (a result reaches a plugin inside its configuration).
    """
    if not isinstance(data, dict):
        raise CniError(INVALID_CONFIG, f"{what} must be a JSON object", f"got {data!r:.80}")
    version = data.get("cniVersion") or default_version
    if version not in SUPPORTED_VERSIONS:
        raise CniError(
            INCOMPATIBLE_VERSION,
            f"{what} has unsupported version {version!r}",
            "supported: " + ", ".join(SUPPORTED_VERSIONS),
        )
    result: Result = {"cniVersion": version}
    problems: list[str] = []
    for key, parse in (
        ("interfaces", _parse_interface),
        ("ips", _parse_ip),
        ("routes", _parse_route),
    ):
        entries = []
        for i, item in enumerate(_list(data, key, problems)):
            entry = parse(item, f"{key}[{i}]", problems)
            if entry is not None:
                entries.append(entry)
        if entries:
            result[key] = entries
    if data.get("dns") is not None:
        result["dns"] = _parse_dns(data["dns"], problems)
    if problems:
        raise CniError(INVALID_CONFIG, f"malformed {what}", "; ".join(problems))
    return result


def _parse_interface(item: object, where: str, problems: list[str]) -> dict[str, Any] | None:
    entry = _object(item, where, _INTERFACE_KEYS, problems)
    if entry is not None and "name" not in entry:
        problems.append(f"{where} has no name")
    return entry


def _parse_ip(item: object, where: str, problems: list[str]) -> dict[str, Any] | None:
    import ipaddress

    if not isinstance(item, dict):
        problems.append(f"{where} is not an object")
        return None
    entry: dict[str, Any] = {}
    address = item.get("address")
    try:
        if not isinstance(address, str) or not _CIDR.fullmatch(address):
            raise ValueError("not address/prefix")
        entry["address"] = str(ipaddress.ip_interface(address))
    except ValueError:
        problems.append(f"{where}.address {address!r} is not an address/prefix")
        return None
    gateway = item.get("gateway")
    if gateway not in (None, ""):
        try:
            entry["gateway"] = str(ipaddress.ip_address(str(gateway)))
        except ValueError:
            problems.append(f"{where}.gateway {gateway!r} is not an IP address")
    index = item.get("interface")
    if index is not None:
        if not isinstance(index, int) or isinstance(index, bool) or index < 0:
            problems.append(f"{where}.interface must be a non-negative integer")
        else:
            entry["interface"] = index
    return entry


def _parse_route(item: object, where: str, problems: list[str]) -> dict[str, Any] | None:
    import ipaddress

    route = _object(item, where, _ROUTE_KEYS, problems)
    if route is None:
        return None
    try:
        route["dst"] = str(ipaddress.ip_network(str(route.get("dst", "")), strict=False))
        if "gw" in route:
            route["gw"] = str(ipaddress.ip_address(route["gw"]))
    except ValueError:
        problems.append(f"{where} has an invalid dst or gw")
        return None
    return route


def _parse_dns(dns: object, problems: list[str]) -> dict[str, Any]:
    if not isinstance(dns, dict):
        problems.append("dns is not an object")
        return {}
    parsed: dict[str, Any] = {}
    for key in _DNS_KEYS:
        value = dns.get(key)
        if value in (None, "", []):
            continue
        if key == "domain":
            if isinstance(value, str):
                parsed[key] = value
            else:
                problems.append("dns.domain must be a string")
        elif isinstance(value, list) and all(isinstance(v, str) for v in value):
            parsed[key] = value
        else:
            problems.append(f"dns.{key} must be a list of strings")
    return parsed


def _list(data: Mapping[str, Any], key: str, problems: list[str]) -> list[Any]:
    value = data.get(key)
    if value is None:
        return []
    if not isinstance(value, list):
        problems.append(f"{key} must be a list")
        return []
    return value


def _object(
    item: object, where: str, keys: Mapping[str, type], problems: list[str]
) -> dict[str, Any] | None:
    if not isinstance(item, dict):
        problems.append(f"{where} is not an object")
        return None
    entry = {}
    for key, kind in keys.items():
        value = item.get(key)
        if value is None or (kind is str and value == ""):
            continue
        if not isinstance(value, kind) or isinstance(value, bool):
            problems.append(f"{where}.{key} must be {'a string' if kind is str else 'an integer'}")
            continue
        entry[key] = value
    return entry


def convert_result(result: Result, version: str) -> dict[str, Any]:
    """*result* (canonical form) as JSON for spec *version*.

    Before 1.1.0 the interface fields ``mtu``, ``socketPath``, ``pciID`` and the route
    fields ``mtu``, ``advmss``, ``priority``, ``table``, ``scope`` do not exist; before
    1.0.0 every IP carries ``version`` ("4" or "6").
    """
    v11 = version_at_least(version, "1.1.0")
    v1 = version_at_least(version, "1.0.0")
    out: dict[str, Any] = {"cniVersion": version}
    interfaces = []
    for interface in result.get("interfaces", []):
        entry = dict(interface)
        if not v11:
            for key in _V11_INTERFACE_KEYS:
                entry.pop(key, None)
        interfaces.append(entry)
    if interfaces:
        out["interfaces"] = interfaces
    ips = []
    for ip in result.get("ips", []):
        entry = {}
        if not v1:
            entry["version"] = "6" if ":" in ip["address"] else "4"
        entry.update(ip)
        ips.append(entry)
    if ips:
        out["ips"] = ips
    routes = []
    for route in result.get("routes", []):
        entry = dict(route)
        if not v11:
            for key in _V11_ROUTE_KEYS:
                entry.pop(key, None)
        routes.append(entry)
    if routes:
        out["routes"] = routes
    out["dns"] = dict(result.get("dns", {}))
    return out
