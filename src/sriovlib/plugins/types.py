"""The values hooks receive and return.

They are plain frozen records: a hook describes what should happen (a plan, a limit, a
list of issues) and sriovlib's Host does it. So plugins hold no state, do no I/O in
planning hooks, and can be tested on fake hosts.
"""

from __future__ import annotations

import enum

import attrs

__all__ = [
    "DeviceSpecs",
    "DeviceType",
    "EswitchMode",
    "Issue",
    "MacFixup",
    "MatchKind",
    "NumVfsPlan",
    "PfMatch",
    "Severity",
    "Step",
    "StepKind",
    "VfLimit",
]


class MatchKind(enum.IntEnum):
    """How a plugin recognised a PF; a driver match beats a PCI id match."""

    PCI_ID = 1
    DRIVER = 2


@attrs.frozen
class PfMatch:
    """A plugin's claim on a PF (see ``sriovlib_match_pf``)."""

    kind: MatchKind
    reason: str = ""

    @classmethod
    def by_driver(cls, driver: str) -> PfMatch:
        """The PF is bound to *driver*, which this plugin handles."""
        return cls(MatchKind.DRIVER, f"driver {driver}")

    @classmethod
    def by_pci_id(cls, pci_id: str) -> PfMatch:
        """The PF's vendor:device is in this plugin's id table."""
        return cls(MatchKind.PCI_ID, f"PCI id {pci_id}")


@attrs.frozen
class VfLimit:
    """The most VFs a PF can have and why.

    Attributes:
        max_vfs: The limit; asking for more is refused before sysfs is touched.
        reason: Where the limit comes from, shown in the refusal.
        raise_hint: How to get more, if at all (e.g. a firmware setting).
    """

    max_vfs: int
    reason: str
    raise_hint: str = ""


class Severity(enum.StrEnum):
    """How bad an :class:`Issue` is; ``error`` blocks the change."""

    INFO = "info"
    WARNING = "warning"
    ERROR = "error"


@attrs.frozen
class Issue:
    """One finding of a check or health hook.

    Attributes:
        severity: How bad it is.
        message: What is wrong, in one sentence.
        hint: What to do about it, in words.
        command: A shell command that fixes or investigates it, if there is one
            (``sriovlib doctor`` prints it to copy).
    """

    severity: Severity
    message: str
    hint: str = ""
    command: str | None = None


class EswitchMode(enum.StrEnum):
    """The embedded switch mode of a PF (devlink)."""

    LEGACY = "legacy"
    SWITCHDEV = "switchdev"


class StepKind(enum.StrEnum):
    """One action of a :class:`NumVfsPlan`, carried out in order by the Host."""

    WRITE_NUMVFS = "write-numvfs"
    SET_ESWITCH_MODE = "set-eswitch-mode"
    UNBIND_VFS = "unbind-vfs"
    BIND_VFS = "bind-vfs"


@attrs.frozen
class Step:
    """An action and its argument (a VF count, an eswitch mode, or none)."""

    kind: StepKind
    value: int | str | None = None

    def __str__(self) -> str:
        return self.kind.value if self.value is None else f"{self.kind.value} {self.value}"


@attrs.frozen
class NumVfsPlan:
    """How to go from the current VF count and eswitch mode to the wanted ones.

    Attributes:
        steps: The actions, in order; empty when nothing needs to change.
        needs_reboot: The change only takes effect after a reboot (e.g. a firmware
            setting); the Host refuses to apply such a plan.
        note: A sentence for humans on why the steps are what they are.
    """

    steps: tuple[Step, ...]
    needs_reboot: bool = False
    note: str = ""

    @property
    def disruptive(self) -> bool:
        """True when existing VFs are destroyed (numvfs passes through 0)."""
        return any(s.kind is StepKind.WRITE_NUMVFS and s.value == 0 for s in self.steps)


class MacFixup(enum.StrEnum):
    """What makes an admin MAC set through the PF reach a VF's bound netdev.

    - ``none``: nothing; the driver propagates it at once.
    - ``set-netdev-mac``: also set the same MAC on the VF netdev.
    - ``wait-netdev``: the driver propagates it asynchronously; poll the netdev.
    - ``rebind``: only a VF driver re-probe applies it (unbind, then bind).
    """

    NONE = "none"
    SET_NETDEV_MAC = "set-netdev-mac"
    WAIT_NETDEV = "wait-netdev"
    REBIND = "rebind"


class DeviceType(enum.StrEnum):
    """How a VF is handed to a workload: as a kernel netdev or to a userspace driver."""

    NETDEVICE = "netdevice"
    VFIO = "vfio-pci"


@attrs.frozen
class DeviceSpecs:
    """What a container needs besides the VF itself.

    Attributes:
        devices: Device nodes to expose (``/dev/vfio/12``, ``/dev/infiniband/uverbs3``).
        mounts: Host paths to mount, as (host path, container path) pairs.
        env: Extra environment variables.
        rdma_devices: RDMA devices (``mlx5_3``) whose character devices (``uverbsN``,
            ``umadN``, ``issmN``) the Host looks up in sysfs and adds to ``devices``.
    """

    devices: tuple[str, ...] = ()
    mounts: tuple[tuple[str, str], ...] = ()
    env: tuple[tuple[str, str], ...] = ()
    rdma_devices: tuple[str, ...] = ()
