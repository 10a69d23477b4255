"""Value objects that describe SR-IOV hardware.

Every model is an immutable ``attrs`` value: a change is a new value made with
:func:`attrs.evolve`. Constructors do no I/O; reading the kernel is
:mod:`sriovlib.sysfs`'s job, and parsing text is the job of the named constructors
(``PciAddress.parse``, ``PciId.parse``).
"""

from __future__ import annotations

import enum
import re

import attrs

from sriovlib.exceptions import InvalidPciAddress

__all__ = [
    "LinkType",
    "NetworkDevice",
    "PciAddress",
    "PciId",
    "PhysicalFunction",
    "Switchdev",
    "VirtualFunction",
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
