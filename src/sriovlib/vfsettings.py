"""The VF settings of the sriov-cni netconf, parsed into a :class:`~sriovlib.models.VfConfig`.

One vocabulary, two edges: the ``sriov`` CNI plugin reads these keys from its network
configuration (:mod:`sriovlib.cni.netconf`), and the agent's DRA driver reads the same
keys from a ResourceClaim's opaque configuration (:mod:`sriovlib.agent.draclaims`), so a
NetworkAttachmentDefinition's settings move into a claim unchanged and are checked by the
same rules:

- ``vlan`` 0-4094, ``vlanQoS`` 0-7 and ``vlanProto`` ``802.1q``/``802.1ad`` (QoS and
  protocol need a VLAN; a non-zero QoS and 802.1ad need a non-zero VLAN);
- ``spoofchk`` and ``trust`` ``on``/``off``; ``link_state`` ``auto``/``enable``/``disable``;
- ``min_tx_rate`` and ``max_tx_rate`` in Mbit/s, the first at most the second;
- ``mac`` a unicast MAC address (``:`` or ``-`` separated, any case).

Every problem is appended to a list the caller owns, so one message names them all.
"""

from __future__ import annotations

import re
from collections.abc import Mapping
from typing import Any

from sriovlib.models import InvalidVfConfig, VfConfig, mac_problem

__all__ = ["MAX_RATE", "SETTING_KEYS", "normal_mac", "vf_settings"]

#: The netconf keys :func:`vf_settings` reads (``mac`` through :func:`normal_mac`).
SETTING_KEYS = (
    "vlan",
    "vlanQoS",
    "vlanProto",
    "spoofchk",
    "trust",
    "link_state",
    "min_tx_rate",
    "max_tx_rate",
    "mac",
)
#: The largest rate in Mbit/s the kernel takes (a u32).
MAX_RATE = 2**32 - 1

_MAC_INPUT = re.compile(r"[0-9a-fA-F]{2}([:-])[0-9a-fA-F]{2}(?:\1[0-9a-fA-F]{2}){4}")


def normal_mac(value: object, where: str, problems: list[str]) -> str | None:
    """*value* as a lower-case ``:``-separated unicast MAC, None when absent or empty; a
    problem (named by *where*) when it is not one."""
    if value is None or value == "":
        return None
    if not isinstance(value, str) or not _MAC_INPUT.fullmatch(value):
        problems.append(f"{where} {value!r} is not a MAC address such as 02:00:00:00:00:01")
        return None
    mac = value.lower().replace("-", ":")
    problem = mac_problem(mac)
    if problem:
        problems.append(f"{where}: {problem}")
        return None
    return mac


def _integer(
    config: Mapping[str, Any], key: str, low: int, high: int, problems: list[str]
) -> int | None:
    value = config.get(key)
    if value is None:
        return None
    if not isinstance(value, int) or isinstance(value, bool):
        problems.append(f"{key} must be an integer, not {value!r}")
        return None
    if not low <= value <= high:
        problems.append(f"{key} {value} is outside {low}-{high}")
        return None
    return value


def _choice(
    config: Mapping[str, Any], key: str, choices: tuple[str, ...], problems: list[str]
) -> str | None:
    value = config.get(key)
    if value is None or value == "":
        return None
    if isinstance(value, str) and value.lower() in choices:
        return value.lower()
    problems.append(f"{key} {value!r} is not one of {', '.join(choices)}")
    return None


def vf_settings(config: Mapping[str, Any], mac: str | None, problems: list[str]) -> VfConfig:
    """The VF settings of *config* (its keys of :data:`SETTING_KEYS` but ``mac``, which
    the caller resolves: the CNI has three sources for it) with *mac*. On any problem,
    the problems are appended and an empty :class:`VfConfig` is returned."""
    before = len(problems)
    vlan = _integer(config, "vlan", 0, 4094, problems)
    qos = _integer(config, "vlanQoS", 0, 7, problems)
    proto = _choice(config, "vlanProto", ("802.1q", "802.1ad"), problems)
    spoofchk = _choice(config, "spoofchk", ("on", "off"), problems)
    trust = _choice(config, "trust", ("on", "off"), problems)
    link_state = _choice(config, "link_state", ("auto", "enable", "disable"), problems)
    low = _integer(config, "min_tx_rate", 0, MAX_RATE, problems)
    high = _integer(config, "max_tx_rate", 0, MAX_RATE, problems)
    vlan_given = config.get("vlan") is not None
    if config.get("vlanQoS") is not None and not vlan_given:
        problems.append("vlanQoS needs vlan")
    elif qos and vlan == 0:
        problems.append(f"vlanQoS {qos} needs a non-zero vlan")
    if config.get("vlanProto") not in (None, "") and not vlan_given:
        problems.append("vlanProto needs vlan")
    elif proto == "802.1ad" and vlan == 0:
        problems.append("vlanProto 802.1ad needs a non-zero vlan")
    if low is not None and high and low > high:
        problems.append(f"min_tx_rate {low} is above max_tx_rate {high}")
    if len(problems) > before:
        return VfConfig()
    rates_given = low is not None or high is not None
    try:
        return VfConfig(
            mac=mac,
            vlan=vlan,
            qos=qos if qos is not None else (0 if vlan is not None else None),
            vlan_proto=proto if proto is not None else ("802.1q" if vlan is not None else None),
            spoofchk=None if spoofchk is None else spoofchk == "on",
            trust=None if trust is None else trust == "on",
            link_state=link_state,
            # sriov-cni writes both rates when either is given; the other becomes 0
            min_tx_rate=(low or 0) if rates_given else None,
            max_tx_rate=(high or 0) if rates_given else None,
        )
    except InvalidVfConfig as e:
        problems.extend(e.problems)
        return VfConfig()
