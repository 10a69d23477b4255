"""The node policy's model: the policies as read, the merged target, their errors."""

from __future__ import annotations

import enum
from collections.abc import Sequence

import attrs

from sriovlib.exceptions import SriovError
from sriovlib.models import PciAddress, PhysicalFunction
from sriovlib.plugins.types import DeviceType, EswitchMode

#: The operator's API group and version, as its documents carry it.
OPERATOR_API = "sriovnetwork.openshift.io/v1"
#: The largest policy file read (bytes).
MAX_POLICY_FILE = 4 * 1024 * 1024
DEFAULT_PRIORITY = 99
#: The drivers that leave a VF without a netdev (userspace drivers).
USERSPACE_DRIVERS = frozenset({"vfio-pci", "uio_pci_generic", "igb_uio"})


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
