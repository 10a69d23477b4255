"""The network configuration of the ``sriov`` plugin, validated before anything changes.

The keys are sriov-cni's (``docs/cni.md`` lists each one), so an existing
NetworkAttachmentDefinition works unchanged. Every problem in a configuration is found
and reported at once, as CNI error code 7, before any device is touched:

- ``deviceID`` must be a PCI address (``0000:03:02.0``; ``03:02.0`` means domain 0).
  Anything else — a path, ``../`` — is refused, so the value can never steer a sysfs
  lookup outside ``/sys/bus/pci/devices``. Without ``deviceID``, the address is read from
  the device-info file Multus names in ``runtimeConfig.CNIDeviceInfoFile``.
- ``vlan`` 0-4094, ``vlanQoS`` 0-7 and ``vlanProto`` ``802.1q``/``802.1ad`` with
  sriov-cni's rules (QoS and protocol need a VLAN; a non-zero QoS and 802.1ad need a
  non-zero VLAN); ``spoofchk``/``trust`` ``on``/``off``; ``link_state``
  ``auto``/``enable``/``disable``; rates in Mbit/s with ``min_tx_rate`` at most
  ``max_tx_rate``; ``mac`` a unicast MAC address.
- The MAC comes from ``runtimeConfig.mac`` (the ``mac`` capability), else ``MAC=`` in
  ``CNI_ARGS``, else ``mac``.
- With neither ``deviceID`` nor a device-info file, ADD takes the VF that the DRA driver
  prepared for the pod ``CNI_ARGS`` names (``K8S_POD_NAMESPACE``, ``K8S_POD_NAME``,
  ``K8S_POD_UID``: :mod:`sriovlib.preparedvfs`); ``dra`` may name the driver, the pod's
  claim and the request: ``{"driver": "sriov.sriovlib.io", "claim": "net", "request":
  "vf"}``, all optional.
"""

from __future__ import annotations

import json
import logging
import os
import re
import stat
from collections.abc import Mapping
from typing import Any

import attrs

from sriovlib.cni.protocol import (
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    CniError,
    Environment,
    Result,
    check_identifier,
    parse_result,
)
from sriovlib.exceptions import InvalidPciAddress
from sriovlib.models import PciAddress, VfConfig
from sriovlib.preparedvfs import DEFAULT_DRIVER, driver_name_problem
from sriovlib.vfsettings import normal_mac, vf_settings

__all__ = ["LOG_LEVELS", "DraChoice", "NetConf", "parse_netconf"]

#: sriov-cni's log levels and the :mod:`logging` level each one maps to.
LOG_LEVELS = {
    "panic": logging.CRITICAL,
    "error": logging.ERROR,
    "warning": logging.WARNING,
    "info": logging.INFO,
    "debug": logging.DEBUG,
}

#: ``CNI_ARGS`` keys accepted without ``IgnoreUnknown`` (Kubernetes sends the K8S_* ones).
KNOWN_ARGS = frozenset(
    {
        "IgnoreUnknown",
        "MAC",
        "K8S_POD_NAMESPACE",
        "K8S_POD_NAME",
        "K8S_POD_INFRA_CONTAINER_ID",
        "K8S_POD_UID",
    }
)

_PLUGIN_NAME = re.compile(r"[A-Za-z0-9][A-Za-z0-9_.+\-]*")
_MAX_DEVICE_INFO = 64 << 10


@attrs.frozen
class DraChoice:
    """Which VF of the pod's DRA claims to take when no ``deviceID`` is given (``dra``).

    Attributes:
        driver: The DRA driver whose prepared claims are looked at.
        claim: The pod's name for the claim (``spec.resourceClaims[].name``) or the
            claim's own name; None: any claim of the pod.
        request: The claim's request; None: any.
        pod: (namespace, name, uid) of the pod from ``CNI_ARGS``; None when they are not
            there (uid None when only the namespace and name are).
    """

    driver: str = DEFAULT_DRIVER
    claim: str | None = None
    request: str | None = None
    pod: tuple[str, str, str | None] | None = None


@attrs.frozen
class NetConf:
    """A validated network configuration.

    Attributes:
        cni_version: The configuration's spec version.
        name: The network name.
        type: The plugin type (the binary's name, normally ``sriov``).
        device_id: The VF's PCI address; None only where the command does not need one
            (DEL, GC, STATUS) and none was given.
        device_id_source: Where ``device_id`` came from (``deviceID`` or the device-info
            file's path).
        vf_config: The VF settings to apply through the PF (the MAC included).
        mac: The MAC for the VF after the precedence rules, or None.
        mac_source: ``runtimeConfig.mac``, ``CNI_ARGS MAC`` or ``mac``.
        ipam: The ``ipam`` object, or None when there is no IPAM plugin.
        log_level: A key of :data:`LOG_LEVELS`.
        log_file: Where logs go (None: stderr).
        prev_result: ``prevResult`` in canonical form, or None.
        raw: The decoded configuration as received.
        ignored: Problems tolerated because the command only cleans up (DEL).
        dra: Where the VF comes from when ``device_id`` is None at ADD.
    """

    cni_version: str
    name: str
    type: str
    device_id: PciAddress | None
    device_id_source: str | None
    vf_config: VfConfig
    mac: str | None
    mac_source: str | None
    ipam: Mapping[str, Any] | None = attrs.field(eq=False, hash=False)
    log_level: str
    log_file: str | None
    prev_result: Result | None = attrs.field(eq=False, hash=False)
    raw: Mapping[str, Any] = attrs.field(eq=False, hash=False, repr=False)
    ignored: tuple[str, ...] = ()
    dra: DraChoice = DraChoice()

    @property
    def ipam_type(self) -> str | None:
        """The IPAM plugin's name, or None."""
        return None if self.ipam is None else str(self.ipam["type"])


def parse_netconf(
    config: Mapping[str, Any],
    env: Environment,
    version: str,
    *,
    need_device: bool = True,
    lenient: bool = False,
) -> NetConf:
    """Validate *config* (already decoded, its version checked) with *env*'s ``CNI_ARGS``.

    Args:
        config: The decoded stdin.
        env: The invocation's environment (for ``CNI_ARGS``).
        version: The configuration's ``cniVersion``.
        need_device: Whether a VF address is required (ADD, CHECK).
        lenient: For DEL: problems in the SR-IOV settings are recorded in
            ``ignored`` instead of raised (DEL restores what was recorded at ADD and
            must still release IPAM); problems in the name, logging or IPAM still fail.

    Raises:
        CniError: code 4 for ``CNI_ARGS`` problems, 7 for configuration problems (all
            of them in one message), 1 for a ``prevResult`` of an unsupported version.
    """
    args = _cni_args(env.args)
    fatal: list[str] = []
    soft: list[str] = []

    name = config.get("name")
    if not isinstance(name, str) or not name:
        fatal.append("name is missing (it must be a non-empty string)")
        name = ""
    else:
        try:
            check_identifier("name", name, INVALID_CONFIG)
        except CniError as e:
            fatal.append(f"{e.msg} ({e.details})")
    plugin_type = config.get("type")
    if not isinstance(plugin_type, str) or not plugin_type:
        fatal.append('type is missing (it must be the plugin name, e.g. "sriov")')
        plugin_type = ""

    log_level = _log_level(config.get("logLevel"), fatal)
    log_file = _log_file(config.get("logFile"), fatal)
    ipam = _ipam(config.get("ipam"), fatal)
    for key in ("capabilities", "args", "dns"):
        if config.get(key) is not None and not isinstance(config[key], dict):
            fatal.append(f"{key} must be an object")
    runtime = config.get("runtimeConfig")
    if runtime is None:
        runtime = {}
    elif not isinstance(runtime, dict):
        fatal.append("runtimeConfig must be an object")
        runtime = {}

    dra = _dra(config.get("dra"), args, soft)
    device_id, source = _device_id(
        config, runtime, soft, need_device=need_device, from_claim=dra.pod is not None
    )
    mac, mac_source = _mac(config, runtime, args, soft)
    vf_config = vf_settings(config, mac, soft)

    prev_result = None
    if config.get("prevResult") is not None:
        prev_result = parse_result(config["prevResult"], version, "prevResult")

    problems = fatal if lenient else fatal + soft
    if problems:
        raise CniError(INVALID_CONFIG, "invalid network configuration", "; ".join(problems))
    if lenient and soft:
        vf_config = VfConfig()
    return NetConf(
        cni_version=version,
        name=name,
        type=plugin_type,
        device_id=device_id,
        device_id_source=source,
        vf_config=vf_config,
        mac=mac,
        mac_source=mac_source,
        ipam=ipam,
        log_level=log_level,
        log_file=log_file,
        prev_result=prev_result,
        raw=config,
        ignored=tuple(soft) if lenient else (),
        dra=dra,
    )


# -- pieces ---------------------------------------------------------------------------------


def _cni_args(pairs: tuple[tuple[str, str], ...]) -> dict[str, str]:
    args = dict(pairs)
    ignore = args.get("IgnoreUnknown", "0").lower()
    if ignore not in ("0", "1", "true", "false"):
        raise CniError(
            INVALID_ENVIRONMENT,
            f"CNI_ARGS IgnoreUnknown={args['IgnoreUnknown']!r} is not a boolean",
            "use IgnoreUnknown=1 or IgnoreUnknown=true",
        )
    unknown = sorted(set(args) - KNOWN_ARGS)
    if unknown and ignore not in ("1", "true"):
        raise CniError(
            INVALID_ENVIRONMENT,
            f"CNI_ARGS has unknown keys: {', '.join(unknown)}",
            "known keys: " + ", ".join(sorted(KNOWN_ARGS)) + "; add IgnoreUnknown=1 to "
            "allow others",
        )
    return args


def _log_level(value: object, problems: list[str]) -> str:
    if value is None or value == "":
        return "info"
    if isinstance(value, str) and value.lower() in LOG_LEVELS:
        return value.lower()
    problems.append(f"logLevel {value!r} is not one of {', '.join(LOG_LEVELS)}")
    return "info"


def _log_file(value: object, problems: list[str]) -> str | None:
    if value is None or value == "":
        return None
    if not isinstance(value, str) or "\0" in value or not value.startswith("/"):
        problems.append(f"logFile {value!r} must be an absolute path")
        return None
    return value


def _ipam(value: object, problems: list[str]) -> dict[str, Any] | None:
    if value is None or value == {}:
        return None
    if not isinstance(value, dict):
        problems.append("ipam must be an object")
        return None
    plugin = value.get("type")
    if not isinstance(plugin, str) or not plugin:
        problems.append('ipam.type is missing (the IPAM plugin\'s name, e.g. "host-local")')
        return None
    if not _PLUGIN_NAME.fullmatch(plugin) or plugin in (".", ".."):
        problems.append(f"ipam.type {plugin!r} is not a plugin name (no paths allowed)")
        return None
    return value


def _pci(value: object, where: str, problems: list[str]) -> PciAddress | None:
    if not isinstance(value, str):
        problems.append(f'{where} must be a PCI address string such as "0000:03:02.0"')
        return None
    try:
        return PciAddress.parse(value)
    except InvalidPciAddress as e:
        problems.append(f"{where}: {e}")
        return None


def _device_id(
    config: Mapping[str, Any],
    runtime: Mapping[str, Any],
    problems: list[str],
    *,
    need_device: bool,
    from_claim: bool = False,
) -> tuple[PciAddress | None, str | None]:
    value = config.get("deviceID")
    if value is not None and value != "":
        return _pci(value, "deviceID", problems), "deviceID"
    info_file = runtime.get("CNIDeviceInfoFile")
    if info_file is not None and info_file != "":
        address = _device_info_address(info_file, problems if need_device else [])
        if address is not None:
            return address, str(info_file)
        return None, None
    if need_device and not from_claim:
        problems.append(
            "deviceID is missing: give the VF's PCI address, let Multus pass a "
            "device-info file (capability CNIDeviceInfoFile), or run the plugin for a "
            "Kubernetes pod (CNI_ARGS K8S_POD_NAMESPACE and K8S_POD_NAME) whose DRA claim "
            "prepared the VF"
        )
    return None, None


def _dra(value: object, args: dict[str, str], problems: list[str]) -> DraChoice:
    """``dra`` and the pod of ``CNI_ARGS``."""
    namespace, name = args.get("K8S_POD_NAMESPACE"), args.get("K8S_POD_NAME")
    uid = args.get("K8S_POD_UID") or None
    pod = (namespace, name, uid) if namespace and name else None
    if value is None:
        return DraChoice(pod=pod)
    if not isinstance(value, dict):
        problems.append('dra must be an object such as {"claim": "net", "request": "vf"}')
        return DraChoice(pod=pod)
    found: dict[str, str | None] = {}
    for key in ("driver", "claim", "request"):
        item = value.get(key)
        if item is None or item == "":
            found[key] = None
        elif not isinstance(item, str) or len(item) > 253 or "\0" in item:
            problems.append(f"dra.{key} must be a string of at most 253 characters")
            found[key] = None
        else:
            found[key] = item
    unknown = sorted(set(value) - {"driver", "claim", "request"})
    if unknown:
        problems.append(f"dra has unknown keys: {', '.join(unknown)} (known: driver, claim, "
                        "request)")  # fmt: skip
    driver = found["driver"] or DEFAULT_DRIVER
    problem = driver_name_problem(driver)
    if problem is not None:
        problems.append(f"dra.driver {problem}")
        driver = DEFAULT_DRIVER
    return DraChoice(driver, found["claim"], found["request"], pod)


def _device_info_address(path: object, problems: list[str]) -> PciAddress | None:
    """The PCI address in a Multus device-info file (``{"type": "pci", "pci":
    {"pci-address": ...}}``; vDPA files carry it under ``vdpa``)."""
    where = f"runtimeConfig.CNIDeviceInfoFile {path!r}"
    if not isinstance(path, str) or "\0" in path or not path.startswith("/"):
        problems.append(f"{where} must be an absolute path")
        return None
    try:
        fd = os.open(path, os.O_RDONLY | os.O_CLOEXEC | os.O_NOFOLLOW | os.O_NONBLOCK)
        try:
            if not stat.S_ISREG(os.fstat(fd).st_mode):
                raise OSError("not a regular file")
            data = os.read(fd, _MAX_DEVICE_INFO + 1)
        finally:
            os.close(fd)
        if len(data) > _MAX_DEVICE_INFO:
            raise ValueError("larger than 64 KiB")
        info = json.loads(data)
    except (OSError, ValueError, RecursionError) as e:
        problems.append(f"{where} cannot be read: {e}")
        return None
    if not isinstance(info, dict):
        problems.append(f"{where} is not a JSON object")
        return None
    kind = info.get("type")
    section = info.get(kind) if isinstance(kind, str) and kind in ("pci", "vdpa") else None
    if not isinstance(section, dict) or "pci-address" not in section:
        problems.append(f"{where} has no {kind or 'pci'}.pci-address")
        return None
    return _pci(section["pci-address"], f"{where} pci-address", problems)


def _mac(
    config: Mapping[str, Any],
    runtime: Mapping[str, Any],
    args: Mapping[str, str],
    problems: list[str],
) -> tuple[str | None, str | None]:
    # every source is validated, even those a higher-precedence one overrides
    candidates = (
        (normal_mac(runtime.get("mac"), "runtimeConfig.mac", problems), "runtimeConfig.mac"),
        (normal_mac(args.get("MAC"), "CNI_ARGS MAC", problems), "CNI_ARGS MAC"),
        (normal_mac(config.get("mac"), "mac", problems), "mac"),
    )
    for mac, source in candidates:
        if mac is not None:
            return mac, source
    return None, None
