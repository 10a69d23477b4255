"""Value objects that describe SR-IOV hardware.

Every model is an immutable ``attrs`` value: a change is a new value made with
:func:`attrs.evolve`. Constructors do no I/O; reading the kernel is
:mod:`sriovlib.sysfs`'s job, and parsing text is the job of the named constructors
(``PciAddress.parse``, ``PciId.parse``).
"""

from __future__ import annotations

import enum
import ipaddress
import os
import re
from collections.abc import Callable, Mapping
from typing import Any, TypeAlias

import attrs

from sriovlib.exceptions import InvalidPciAddress, SriovError

__all__ = [
    "RT_SCOPE_LINK",
    "RT_SCOPE_UNIVERSE",
    "RT_TABLE_MAIN",
    "ZERO_MAC",
    "AttachSnapshot",
    "ContainerDevices",
    "DeviceNode",
    "InvalidVfConfig",
    "IpAddress",
    "IpInterface",
    "IpNetwork",
    "LinkInfo",
    "LinkType",
    "NetnsRef",
    "NetworkDevice",
    "NumVfsChange",
    "PciAddress",
    "PciId",
    "PhysicalFunction",
    "ReleaseReport",
    "Route",
    "Switchdev",
    "VfCapabilities",
    "VfConfig",
    "VfKnob",
    "VfLinkState",
    "VfState",
    "VirtualFunction",
    "VlanProto",
    "mac_problem",
]

_PCI_ADDRESS = re.compile(
    r"(?:(?P<domain>[0-9a-fA-F]{4,8}):)?"
    r"(?P<bus>[0-9a-fA-F]{2}):(?P<device>[0-9a-fA-F]{2})\.(?P<function>[0-7])"
)


def _check_pci_text(text: str) -> re.Match[str]:
    """Return the match of *text* against the PCI address grammar, or explain the miss."""
    if not text:
        raise InvalidPciAddress(text, "it is empty")
    if text != text.strip():
        raise InvalidPciAddress(text, "it has leading or trailing whitespace")
    match = _PCI_ADDRESS.fullmatch(text)
    if match is not None:
        return match
    if "/" in text or ".." in text:
        raise InvalidPciAddress(text, "it contains a path component")
    parts = text.split(":")
    if len(parts) not in (2, 3):
        raise InvalidPciAddress(text, "expected [domain:]bus:device.function, e.g. 0000:03:00.1")
    slot = parts[-1]
    if "." not in slot:
        raise InvalidPciAddress(text, "the function number after '.' is missing")
    device, _, function = slot.partition(".")
    if not re.fullmatch(r"[0-7]", function):
        raise InvalidPciAddress(text, f"function {function!r} is not a digit 0-7")
    if not re.fullmatch(r"[0-9a-fA-F]{2}", device):
        raise InvalidPciAddress(text, f"device {device!r} is not two hex digits")
    if not re.fullmatch(r"[0-9a-fA-F]{2}", parts[-2]):
        raise InvalidPciAddress(text, f"bus {parts[-2]!r} is not two hex digits")
    raise InvalidPciAddress(text, f"domain {parts[0]!r} is not 4 to 8 hex digits")


@attrs.frozen(order=True)
class PciAddress:
    """A PCI function address, always in the kernel's full lower-case form.

    Build one with :meth:`parse`; ``str()`` gives ``0000:03:00.1``.
    """

    domain: int
    bus: int
    device: int
    function: int

    @classmethod
    def parse(cls, text: str) -> PciAddress:
        """Parse ``0000:03:00.1`` or ``03:00.1`` (domain 0); raise :class:`InvalidPciAddress`."""
        match = _check_pci_text(text)
        domain = match["domain"]
        address = cls(
            domain=int(domain, 16) if domain else 0,
            bus=int(match["bus"], 16),
            device=int(match["device"], 16),
            function=int(match["function"]),
        )
        if address.device > 0x1F:
            raise InvalidPciAddress(text, f"device {match['device']!r} is above 1f")
        return address

    def __str__(self) -> str:
        return f"{self.domain:04x}:{self.bus:02x}:{self.device:02x}.{self.function}"


@attrs.frozen(order=True)
class PciId:
    """A PCI ``vendor:device`` id pair such as ``15b3:1017``."""

    vendor: int
    device: int

    @classmethod
    def parse(cls, text: str) -> PciId:
        """Parse ``15b3:1017`` (an optional ``0x`` on either half is accepted)."""
        vendor, sep, device = text.partition(":")
        try:
            if not sep:
                raise ValueError(text)
            return cls(vendor=_hex16(vendor), device=_hex16(device))
        except ValueError:
            raise ValueError(
                f"invalid PCI id {text!r}: expected vendor:device, e.g. 8086:10c9"
            ) from None

    @property
    def vendor_hex(self) -> str:
        """The vendor id as 4 lower-case hex digits, as config files write it."""
        return f"{self.vendor:04x}"

    @property
    def device_hex(self) -> str:
        """The device id as 4 lower-case hex digits, as config files write it."""
        return f"{self.device:04x}"

    def __str__(self) -> str:
        return f"{self.vendor:04x}:{self.device:04x}"


def _hex16(text: str) -> int:
    text = text.strip().lower().removeprefix("0x")
    if not re.fullmatch(r"[0-9a-f]{1,4}", text):
        raise ValueError(text)
    return int(text, 16)


class LinkType(enum.StrEnum):
    """The link layer of a port, from the netdev's ``type`` (ARPHRD_*) attribute."""

    ETHERNET = "ethernet"
    INFINIBAND = "infiniband"
    UNKNOWN = "unknown"

    @classmethod
    def from_arphrd(cls, value: int) -> LinkType:
        """Map the kernel's ARPHRD number (1 ethernet, 32 infiniband) to a link type."""
        return {1: cls.ETHERNET, 32: cls.INFINIBAND}.get(value, cls.UNKNOWN)


@attrs.frozen
class Switchdev:
    """Switch identity of a port in switchdev mode (the uplink or a representor)."""

    switch_id: str
    port_name: str


@attrs.frozen
class PhysicalFunction:
    """An SR-IOV capable PCI function (it has ``sriov_totalvfs``).

    Attributes:
        address: The PF's PCI address.
        ids: Vendor and device id.
        driver: The bound kernel driver, or None when unbound.
        netdevs: The PF's network interfaces (usually one; none when it is unbound).
        numa_node: The NUMA node, or None when the platform reports none (-1).
        iommu_group: The IOMMU group number, or None without an IOMMU.
        total_vfs: ``sriov_totalvfs``: the most VFs the device and driver allow.
        num_vfs: ``sriov_numvfs``: the VFs enabled now.
        link_type: Ethernet or InfiniBand, from the first netdev.
        switchdev: The uplink's switch id and port name when in switchdev mode.
        problems: Attributes that could not be read or parsed, one message each.
    """

    address: PciAddress
    ids: PciId
    driver: str | None
    netdevs: tuple[str, ...] = ()
    numa_node: int | None = None
    iommu_group: int | None = None
    total_vfs: int = 0
    num_vfs: int = 0
    link_type: LinkType = LinkType.ETHERNET
    switchdev: Switchdev | None = None
    problems: tuple[str, ...] = ()

    @property
    def name(self) -> str:
        """The first netdev name, or the PCI address when the PF has no netdev."""
        return self.netdevs[0] if self.netdevs else str(self.address)


@attrs.frozen
class VirtualFunction:
    """A VF of a PF (it has a ``physfn`` link).

    Attributes:
        address: The VF's PCI address.
        index: The VF number on its PF (the N of the PF's ``virtfnN`` link).
        pf_address: The PCI address of the parent PF.
        ids: Vendor and device id (VF ids are shared across a NIC family).
        driver: The bound driver (``iavf``, ``mlx5_core``, ``vfio-pci``...) or None.
        netdev: The VF's interface in the host namespace, or None when it is bound to a
            userspace driver, unbound, or moved into a pod's namespace.
        numa_node: The NUMA node, or None.
        iommu_group: The IOMMU group number, or None.
        rdma_devices: RDMA device names under ``infiniband/`` (e.g. ``mlx5_2``).
        problems: Attributes that could not be read or parsed, one message each.
    """

    address: PciAddress
    index: int
    pf_address: PciAddress
    ids: PciId
    driver: str | None
    netdev: str | None = None
    numa_node: int | None = None
    iommu_group: int | None = None
    rdma_devices: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


@attrs.frozen
class NetworkDevice:
    """A network-class PCI function without SR-IOV (shown by ``doctor``)."""

    address: PciAddress
    ids: PciId
    driver: str | None
    netdevs: tuple[str, ...] = ()
    problems: tuple[str, ...] = ()


# -- VF configuration and observed state (issue 3: the VF lifecycle) --------------------
#
# ``VfConfig`` is what a caller asks for; ``VfState`` is what the kernel reports for one VF
# through its PF (``IFLA_VFINFO_LIST``). Both use the same field names, so a config can be
# checked against a state field by field. A bad config never exists: the constructor
# rejects it, so nothing with a bad value can reach the kernel.


class InvalidVfConfig(SriovError, ValueError):
    """A :class:`VfConfig` value is out of range or inconsistent; nothing was changed.

    Attributes:
        problems: One message per problem found (all of them, not just the first).
    """

    def __init__(self, problems: tuple[str, ...]) -> None:
        self.problems = problems
        super().__init__("invalid VF configuration: " + "; ".join(problems))


class VlanProto(enum.StrEnum):
    """The VLAN protocol of a VF's port VLAN."""

    DOT1Q = "802.1q"
    DOT1AD = "802.1ad"

    @property
    def ethertype(self) -> int:
        """The ethertype the kernel takes (0x8100 or 0x88a8)."""
        return 0x88A8 if self is VlanProto.DOT1AD else 0x8100

    @classmethod
    def from_ethertype(cls, value: int) -> VlanProto:
        """The protocol for ethertype *value*; anything but 0x88a8 reads as 802.1Q."""
        return cls.DOT1AD if value == 0x88A8 else cls.DOT1Q


class VfLinkState(enum.StrEnum):
    """A VF's administrative link state (``ip link set PF vf N state ...``)."""

    AUTO = "auto"
    ENABLE = "enable"
    DISABLE = "disable"

    @property
    def kernel_value(self) -> int:
        """``IFLA_VF_LINK_STATE_*``: auto 0, enable 1, disable 2."""
        return _LINK_STATE_VALUES[self]

    @classmethod
    def from_kernel(cls, value: int) -> VfLinkState | None:
        """The state for an ``IFLA_VF_LINK_STATE_*`` number, or None for an unknown one."""
        for state, number in _LINK_STATE_VALUES.items():
            if number == value:
                return state
        return None


_LINK_STATE_VALUES = {VfLinkState.AUTO: 0, VfLinkState.ENABLE: 1, VfLinkState.DISABLE: 2}


class VfKnob(enum.StrEnum):
    """One VF setting a driver may or may not accept (see ``Host.capabilities``)."""

    MAC = "mac"
    VLAN = "vlan"
    QOS = "qos"
    VLAN_8021AD = "802.1ad"
    SPOOFCHK = "spoofchk"
    TRUST = "trust"
    LINK_STATE = "link_state"
    MIN_TX_RATE = "min_tx_rate"
    MAX_TX_RATE = "max_tx_rate"
    QUERY_RSS = "query_rss"


ZERO_MAC = "00:00:00:00:00:00"
_MAC = re.compile(r"[0-9a-f]{2}(?::[0-9a-f]{2}){5}")
_MAX_U32 = 2**32 - 1


def mac_problem(mac: str) -> str | None:
    """Why *mac* (lower case) is not a usable unicast MAC address, or None if it is."""
    if not _MAC.fullmatch(mac):
        return f"mac {mac!r} is not of the form 02:00:00:00:00:01"
    if mac == ZERO_MAC:
        return "mac 00:00:00:00:00:00 is not a usable address"
    if int(mac[:2], 16) & 1:
        return f"mac {mac} is a multicast address"
    return None


def _lower_mac(value: object) -> object:
    return value.strip().lower() if isinstance(value, str) else value


def _vlan_proto(value: object) -> object:
    if isinstance(value, str) and value.lower() in ("802.1q", "802.1ad"):
        return VlanProto(value.lower())
    return value


def _link_state(value: object) -> object:
    if isinstance(value, str) and value in VfLinkState.__members__.values():
        return VfLinkState(value)
    return value


@attrs.frozen
class VfConfig:
    """The VF settings a caller wants; a field left None is not touched.

    Attributes:
        mac: Administrative MAC address (set through the PF), e.g. ``02:00:00:00:00:01``.
        vlan: Port VLAN 0-4094 (0 removes it).
        qos: VLAN priority 0-7; needs ``vlan`` (a non-zero qos needs a non-zero vlan).
        vlan_proto: ``802.1q`` (default) or ``802.1ad``; needs a non-zero ``vlan``.
        spoofchk: MAC/VLAN anti-spoofing.
        trust: Trusted mode (promiscuous, MAC changes from inside the VF).
        link_state: ``auto``, ``enable`` or ``disable``.
        min_tx_rate: Guaranteed rate in Mbit/s (0 = none).
        max_tx_rate: Rate limit in Mbit/s (0 = no limit).
        query_rss: Let the VF query the PF's RSS configuration.

    The constructor checks every field and raises :class:`InvalidVfConfig` listing every
    problem; strings for ``vlan_proto`` and ``link_state`` are accepted and converted.
    """

    mac: str | None = attrs.field(default=None, converter=_lower_mac)
    vlan: int | None = None
    qos: int | None = None
    vlan_proto: VlanProto | None = attrs.field(default=None, converter=_vlan_proto)
    spoofchk: bool | None = None
    trust: bool | None = None
    link_state: VfLinkState | None = attrs.field(default=None, converter=_link_state)
    min_tx_rate: int | None = None
    max_tx_rate: int | None = None
    query_rss: bool | None = None

    def __attrs_post_init__(self) -> None:
        problems = self._problems()
        if problems:
            raise InvalidVfConfig(tuple(problems))

    def _problems(self) -> list[str]:  # noqa: PLR0912 - one check per rule, in order
        problems: list[str] = []
        if self.mac is not None:
            problem = mac_problem(self.mac) if isinstance(self.mac, str) else "mac must be a string"
            if problem:
                problems.append(problem)
        typed = len(problems)
        for name in ("vlan", "qos", "min_tx_rate", "max_tx_rate"):
            value = getattr(self, name)
            if value is not None and (not isinstance(value, int) or isinstance(value, bool)):
                problems.append(f"{name} must be an integer, not {value!r}")
        for name in ("spoofchk", "trust", "query_rss"):
            value = getattr(self, name)
            if value is not None and not isinstance(value, bool):
                problems.append(f"{name} must be true or false, not {value!r}")
        if len(problems) > typed:
            return problems  # range checks below assume the types are right
        if self.vlan is not None and not 0 <= self.vlan <= 4094:
            problems.append(f"vlan {self.vlan} is outside 0-4094")
        if self.qos is not None:
            if not 0 <= self.qos <= 7:
                problems.append(f"qos {self.qos} is outside 0-7")
            elif self.vlan is None:
                problems.append("qos needs vlan")
            elif self.qos and not self.vlan:
                problems.append(f"qos {self.qos} needs a non-zero vlan")
        proto: object = self.vlan_proto  # may hold an unconverted string
        if proto is not None:
            if not isinstance(proto, VlanProto):
                problems.append(f"unknown vlan_proto {self.vlan_proto!r}: use 802.1q or 802.1ad")
            elif self.vlan is None:
                problems.append("vlan_proto needs vlan")
            elif self.vlan_proto is VlanProto.DOT1AD and not self.vlan:
                problems.append("vlan_proto 802.1ad needs a non-zero vlan")
        link_state: object = self.link_state
        if link_state is not None and not isinstance(link_state, VfLinkState):
            problems.append(f"unknown link_state {self.link_state!r}: use auto, enable or disable")
        for name in ("min_tx_rate", "max_tx_rate"):
            value = getattr(self, name)
            if value is not None and not 0 <= value <= _MAX_U32:
                problems.append(f"{name} {value} is outside 0-{_MAX_U32}")
        if (
            self.min_tx_rate is not None
            and self.max_tx_rate
            and self.min_tx_rate > self.max_tx_rate
        ):
            problems.append(
                f"min_tx_rate {self.min_tx_rate} is above max_tx_rate {self.max_tx_rate}"
            )
        return problems

    def fields(self) -> tuple[str, ...]:
        """The names of the fields that are set, in declaration order."""
        return tuple(f.name for f in attrs.fields(VfConfig) if getattr(self, f.name) is not None)

    def knobs(self) -> frozenset[VfKnob]:
        """The driver features this config needs (for checking against capabilities)."""
        needed: set[VfKnob] = set()
        for name in self.fields():
            if name == "vlan_proto":
                if self.vlan_proto is VlanProto.DOT1AD:
                    needed.add(VfKnob.VLAN_8021AD)
            elif name == "qos":
                if self.qos:
                    needed.add(VfKnob.QOS)
            elif name == "min_tx_rate":
                if self.min_tx_rate:
                    needed.add(VfKnob.MIN_TX_RATE)
            else:
                needed.add(VfKnob(name))
        return frozenset(needed)


@attrs.frozen
class VfState:
    """A VF's administrative settings as its PF's driver reports them.

    Attributes:
        index: The VF number on its PF.
        mac: The administrative MAC; ``00:00:00:00:00:00`` when none is set.
        vlan / qos / vlan_proto: The port VLAN (0: none).
        spoofchk / trust / query_rss: None when the driver does not report the setting.
        link_state: None when the driver reports a value the kernel does not define.
        min_tx_rate / max_tx_rate: Mbit/s, 0 for none.
    """

    index: int
    mac: str = ZERO_MAC
    vlan: int = 0
    qos: int = 0
    vlan_proto: VlanProto = VlanProto.DOT1Q
    spoofchk: bool | None = None
    trust: bool | None = None
    link_state: VfLinkState | None = VfLinkState.AUTO
    min_tx_rate: int = 0
    max_tx_rate: int = 0
    query_rss: bool | None = None

    def mismatches(self, config: VfConfig) -> tuple[str, ...]:
        """The fields of *config* whose value this state does not have.

        A field the driver does not report (None here) cannot be checked and is not
        counted as a mismatch.
        """
        return tuple(
            name
            for name in config.fields()
            if getattr(self, name) is not None and getattr(self, name) != getattr(config, name)
        )

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict (enums as their strings)."""
        return {
            f.name: (str(v) if isinstance(v, enum.Enum) else v)
            for f in attrs.fields(VfState)
            for v in (getattr(self, f.name),)
        }

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> VfState:
        """Rebuild a state written by :meth:`to_dict`; ValueError for a field of the
        wrong type or out of range (a damaged record)."""
        values = dict(data)
        _check_fields("VF state", values, _VF_STATE_FIELDS)
        values["vlan_proto"] = VlanProto(str(values.get("vlan_proto", VlanProto.DOT1Q)))
        link_state = values.get("link_state")
        values["link_state"] = None if link_state is None else VfLinkState(str(link_state))
        return cls(**values)  # type: ignore[arg-type]


@attrs.frozen
class VfCapabilities:
    """Which VF settings a PF's driver accepts, as found by probing one VF.

    Attributes:
        driver: The PF driver the answer is cached for.
        supported: Settings the driver accepted.
        unsupported: Settings the driver refused, each with the errno name it gave
            (``EOPNOTSUPP``, ``EINVAL``, ``EPROTONOSUPPORT``...).
        unknown: Settings that could not be tested, each with the reason.
        probed_vf: The PCI address of the VF that was probed.
    """

    driver: str | None
    supported: frozenset[VfKnob]
    unsupported: tuple[tuple[VfKnob, str], ...] = ()
    unknown: tuple[tuple[VfKnob, str], ...] = ()
    probed_vf: PciAddress | None = None

    def refused(self) -> frozenset[VfKnob]:
        """The settings the driver refused."""
        return frozenset(knob for knob, _ in self.unsupported)

    def reason(self, knob: VfKnob) -> str | None:
        """The errno name the driver gave when refusing *knob* (None if not refused)."""
        return dict(self.unsupported).get(knob)


@attrs.frozen
class NumVfsChange:
    """What ``Host.set_num_vfs`` did.

    Attributes:
        pf: The PF's address.
        before / after: ``sriov_numvfs`` before and after.
        writes: The values written to ``sriov_numvfs``, in order (``(0, 2)`` when going
            from 4 to 2; empty when nothing had to change).
        waited: Seconds spent waiting for VFs, their netdevs and the PF's carrier.
        vfs: The VFs present afterwards.
    """

    pf: PciAddress
    before: int
    after: int
    writes: tuple[int, ...]
    waited: float
    vfs: tuple[VirtualFunction, ...] = ()


_NETDEV_NAME = re.compile(r"[!-~]{1,15}")  # printable ASCII, no space
_NOT_IN_NETDEV = frozenset("/:")


def _netdev_name(value: object) -> bool:
    return (
        isinstance(value, str)
        and _NETDEV_NAME.fullmatch(value) is not None
        and not _NOT_IN_NETDEV & set(value)
        and value not in (".", "..")
    )


def _mac(value: object) -> bool:
    return isinstance(value, str) and _MAC.fullmatch(value) is not None


def _count(high: int) -> Callable[[object], bool]:
    def check(value: object) -> bool:
        return type(value) is int and 0 <= value <= high

    return check


def _optional(check: Callable[[object], bool]) -> Callable[[object], bool]:
    return lambda value: value is None or check(value)


def _flag(value: object) -> bool:
    return isinstance(value, bool)


def _text(value: object) -> bool:
    return isinstance(value, str)


_U32 = 0xFFFFFFFF
_VF_STATE_FIELDS: dict[str, Callable[[object], bool]] = {
    "index": _count(_U32),
    "mac": _mac,
    "vlan": _count(4095),
    "qos": _count(7),
    "vlan_proto": _text,
    "spoofchk": _optional(_flag),
    "trust": _optional(_flag),
    "link_state": _optional(_text),
    "min_tx_rate": _count(_U32),
    "max_tx_rate": _count(_U32),
    "query_rss": _optional(_flag),
}
_SNAPSHOT_FIELDS: dict[str, Callable[[object], bool]] = {
    "vf": _text,
    "pf": _text,
    "vf_index": _count(_U32),
    "pf_netdev": _netdev_name,
    "netns": _optional(_text),
    "ifname": _netdev_name,
    "host_name": _optional(_netdev_name),
    "host_mac": _optional(_mac),
    "host_mtu": _optional(_count(_U32)),
    "host_up": _optional(_flag),
    "driver": _optional(_text),
    "vf_state": lambda value: isinstance(value, dict),
    "host_index": _optional(_count(_U32)),
    "mac": _optional(_mac),
}


def _check_fields(
    kind: str, values: dict[str, object], checks: dict[str, Callable[[object], bool]]
) -> None:
    """Refuse a stored value whose fields are not what :meth:`to_dict` writes."""
    for name, value in values.items():
        check = checks.get(name)
        if check is None:
            raise ValueError(f"{kind} has an unknown field {name!r}")
        if not check(value):
            raise ValueError(f"{kind} field {name!r} cannot be {value!r}")


@attrs.frozen
class AttachSnapshot:
    """Everything ``Host.attach`` changed, so ``Host.release`` can undo it.

    Persist it with :meth:`to_dict` (plain JSON types) if the release may happen in
    another process.

    Attributes:
        vf / pf: PCI addresses of the VF and its PF.
        vf_index: The VF number on the PF.
        pf_netdev: The PF interface the VF settings go through.
        netns: The target namespace as a path (None when it was given as a file
            descriptor: pass it again to ``release``).
        ifname: The VF's name inside the namespace.
        host_name / host_mac / host_mtu / host_up: The netdev as it was on the host;
            all None when the VF had no netdev (bound to vfio-pci or another userspace
            driver): then only the VF settings are restored.
        host_index: The netdev's ifindex on the host at attach time (for the record: the
            kernel gives it another one when the index is taken in the namespace).
        mac: The MAC ``attach`` gave the netdev in the namespace, if any. With
            ``host_mac`` it identifies the netdev where the kernel reports no parent
            device (kernels before 5.16; veths in the kernel tests).
        driver: The VF's driver at attach time.
        vf_state: The VF's settings through the PF before anything changed.
    """

    vf: PciAddress
    pf: PciAddress
    vf_index: int
    pf_netdev: str
    netns: str | None
    ifname: str
    host_name: str | None
    host_mac: str | None
    host_mtu: int | None
    host_up: bool | None
    driver: str | None
    vf_state: VfState
    host_index: int | None = None
    mac: str | None = None

    def to_dict(self) -> dict[str, object]:
        """A JSON-ready dict."""
        data = attrs.asdict(self, recurse=False)
        data["vf"], data["pf"] = str(self.vf), str(self.pf)
        data["vf_state"] = self.vf_state.to_dict()
        return data

    @classmethod
    def from_dict(cls, data: dict[str, object]) -> AttachSnapshot:
        """Rebuild a snapshot written by :meth:`to_dict`; ValueError for a field of the
        wrong type or value (a damaged record)."""
        if not isinstance(data, dict):
            raise ValueError(f"a snapshot must be an object, not {type(data).__name__}")
        values = dict(data)
        _check_fields("snapshot", values, _SNAPSHOT_FIELDS)
        values["vf"] = PciAddress.parse(str(values["vf"]))
        values["pf"] = PciAddress.parse(str(values["pf"]))
        values["vf_state"] = VfState.from_dict(values["vf_state"])  # type: ignore[arg-type]
        return cls(**values)  # type: ignore[arg-type]


@attrs.frozen
class ReleaseReport:
    """What ``Host.release`` found and did.

    Attributes:
        vf: The VF's address.
        found_in: Where the VF netdev was: ``"namespace"`` (moved back), ``"host"``
            (the namespace was gone, or an earlier release already moved it), or
            ``"none"`` (no netdev: vfio-pci, unbound, or the VF no longer exists).
        host_name: The VF netdev's name on the host afterwards (None without netdev).
        restored: What was put back (``name``, ``mac``, ``mtu``, ``up``, ``down`` and VF
            setting names); empty when everything already matched the snapshot.
        warnings: Things that could not be restored, one message each.
    """

    vf: PciAddress
    found_in: str
    host_name: str | None
    restored: tuple[str, ...] = ()
    warnings: tuple[str, ...] = ()


#: A network namespace: a path (``/run/netns/pod1``, ``/proc/PID/ns/net``) or an open fd.
NetnsRef: TypeAlias = "str | os.PathLike[str] | int"
#: An address with its prefix length, as on an interface (``10.0.0.2/24``).
IpInterface: TypeAlias = "ipaddress.IPv4Interface | ipaddress.IPv6Interface"
#: A route destination.
IpNetwork: TypeAlias = "ipaddress.IPv4Network | ipaddress.IPv6Network"
#: A gateway.
IpAddress: TypeAlias = "ipaddress.IPv4Address | ipaddress.IPv6Address"
#: The main routing table.
RT_TABLE_MAIN = 254
#: ``rtm_scope`` of a route through a gateway, and of one straight onto the link.
RT_SCOPE_UNIVERSE, RT_SCOPE_LINK = 0, 253


# -- network interfaces, addresses and routes, as netlink reports them -------------------


@attrs.frozen
class LinkInfo:
    """One network interface as netlink reports it.

    Attributes:
        index: The ifindex (in its namespace).
        name: The interface name.
        mac: The interface's own (effective) MAC address.
        mtu: The MTU.
        up: Whether it is administratively up (``IFF_UP``).
        altnames: Alternative names.
        parent: The parent device name, e.g. the PCI address ``0000:01:10.0`` of a VF
            netdev (``IFLA_PARENT_DEV_NAME``); None for virtual devices or old kernels.
        carrier: Whether the link has carrier (``IFLA_CARRIER``: a cable and a link
            partner for a NIC, an up peer for a veth); None when not reported.
    """

    index: int
    name: str
    mac: str
    mtu: int
    up: bool
    altnames: tuple[str, ...] = ()
    parent: str | None = None
    carrier: bool | None = None


def _network(value: str | IpNetwork) -> IpNetwork:
    return ipaddress.ip_network(value, strict=False)


def _gateway(value: str | IpAddress | None) -> IpAddress | None:
    return None if value is None else ipaddress.ip_address(value)


def _u32(_: object, attribute: attrs.Attribute[Any], value: int | None) -> None:
    if value is not None and not 0 <= value <= 0xFFFFFFFF:
        raise ValueError(f"route {attribute.name} {value} is not a 32-bit unsigned number")


@attrs.frozen
class Route:
    """One route through an interface.

    Strings are accepted for *dst* and *gateway*; a destination with host bits set is
    taken as its network (``10.1.2.3/16`` is ``10.1.0.0/16``), and a gateway of the
    other address family is refused with ValueError.

    Attributes:
        dst: The destination network.
        gateway: The next hop; None for a route straight onto the link.
        table: The routing table (default main, 254).
        scope: ``rtm_scope``; None for the usual one: universe (0) with a gateway, link
            (253) without. (IPv6 routes have no scope: the kernel ignores it.)
        priority: The metric; None for the kernel's default.
        mtu / advmss: The route's MTU and advertised MSS metrics; None for none.

    The routes :meth:`NetlinkBackend.routes` lists carry *dst*, *gateway* and *table*;
    the options that only shape a new route (scope, priority, metrics) are left None.
    """

    dst: IpNetwork = attrs.field(converter=_network)
    gateway: IpAddress | None = attrs.field(default=None, converter=_gateway)
    table: int = attrs.field(default=RT_TABLE_MAIN, validator=_u32)
    scope: int | None = attrs.field(default=None)
    priority: int | None = attrs.field(default=None, validator=_u32)
    mtu: int | None = attrs.field(default=None, validator=_u32)
    advmss: int | None = attrs.field(default=None, validator=_u32)

    @gateway.validator
    def _same_family(self, _: attrs.Attribute[Any], value: IpAddress | None) -> None:
        if value is not None and value.version != self.dst.version:
            raise ValueError(f"gateway {value} is not an IPv{self.dst.version} address")

    @scope.validator
    def _scope_byte(self, _: attrs.Attribute[Any], value: int | None) -> None:
        if value is not None and not 0 <= value <= 255:
            raise ValueError(f"route scope {value} is not 0-255")

    @property
    def effective_scope(self) -> int:
        """The scope the route is added with (:attr:`scope`, or its default)."""
        if self.scope is not None:
            return self.scope
        return RT_SCOPE_UNIVERSE if self.gateway is not None else RT_SCOPE_LINK

    def __str__(self) -> str:
        via = f"via {self.gateway}" if self.gateway is not None else "via link"
        table = "" if self.table == RT_TABLE_MAIN else f" table {self.table}"
        return f"{self.dst} {via}{table}"


# ---------------------------------------------------------------------------------
# what a container needs with a device
# ---------------------------------------------------------------------------------


@attrs.frozen
class DeviceNode:
    """A device node to expose in a container.

    Attributes:
        host_path: Where it is on this node (under the sysfs root of a test tree).
        container_path: Where the container sees it (``/dev/vfio/12``).
    """

    host_path: str
    container_path: str


@attrs.frozen(kw_only=True)
class ContainerDevices:
    """Everything a container needs besides the VF itself, found on the node.

    Attributes:
        nodes: Device nodes, de-duplicated, in the order they were asked for.
        mounts: Host paths to mount, as (host path, container path) pairs.
        env: Extra environment variables from the vendor plugins.
        vfio_group: The container path of the VF's VFIO group node, or None.
        rdma_device: The VF's RDMA device (``mlx5_2``), or None.
        rdma_nodes: The container paths of its character devices by kind
            (``uverbs``, ``umad``, ``issm``, ``rdma_cm``).
        vhost_net: Whether ``/dev/vhost-net`` and ``/dev/net/tun`` are among the nodes.
        missing: Device nodes the VF needs that do not exist on the node.
    """

    nodes: tuple[DeviceNode, ...] = ()
    mounts: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    vfio_group: str | None = None
    rdma_device: str | None = None
    rdma_nodes: Mapping[str, str] = attrs.field(factory=dict, hash=False)
    vhost_net: bool = False
    missing: tuple[str, ...] = ()
