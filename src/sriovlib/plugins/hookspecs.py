"""The hooks a vendor plugin can implement.

Each docstring below is the plugin author's documentation of that hook; the docs site
renders this module as the hook reference.

**How a PF finds its plugin.** sriovlib asks every plugin :func:`sriovlib_match_pf`. A
plugin that recognises the PF's *driver* wins over one that only recognises its PCI ids;
among equals, the plugin registered last (third-party plugins register after the
built-ins) wins. No claim at all means the ``generic`` plugin drives the PF.

**How the other hooks are answered.** For a PF, every other hook is called on the chosen
plugin and the ``generic`` plugin only, the chosen one first. Hooks marked *first result*
stop at the first answer that is not None, so a plugin implements only what its hardware
does differently and returns None (or leaves the hook out) for the rest. *Collecting*
hooks gather the answers of both.

**Rules.** Hooks receive values (:class:`~sriovlib.models.PhysicalFunction`,
:class:`~sriovlib.models.VirtualFunction`, :class:`~sriovlib.models.VfConfig`...) and
return plans or findings (:mod:`sriovlib.plugins.types`); the Host carries them out. Do
not write to sysfs or netlink from a hook and keep no module-level state: the same
plugin serves every PF of the node, and its hooks are tested without hardware. Accept
only the arguments you use — pluggy passes those by name — so new arguments can be added
to a hook without breaking your plugin.
"""

from __future__ import annotations

from typing import TYPE_CHECKING

import pluggy

if TYPE_CHECKING:
    from sriovlib.models import PhysicalFunction, VfConfig, VfKnob, VirtualFunction
    from sriovlib.plugins.types import (
        DeviceSpecs,
        DeviceType,
        EswitchMode,
        Issue,
        MacFixup,
        NumVfsPlan,
        PfMatch,
        VfLimit,
    )

_spec = pluggy.HookspecMarker("sriovlib")

__all__ = [
    "sriovlib_check_vf_config",
    "sriovlib_device_specs",
    "sriovlib_health",
    "sriovlib_mac_fixup",
    "sriovlib_match_pf",
    "sriovlib_numvfs_plan",
    "sriovlib_release_knobs",
    "sriovlib_vf_driver",
    "sriovlib_vf_limit",
]


@_spec
def sriovlib_match_pf(pf: PhysicalFunction) -> PfMatch | None:
    """Claim the PFs your plugin drives.

    Look at the bound driver first (``pf.driver``), then at the PCI ids (``pf.ids``):
    the same silicon can be bound to a different driver, and one driver serves many
    device ids.

    Args:
        pf: The PF as discovered from sysfs.

    Returns:
        ``PfMatch.by_driver(pf.driver)`` when the driver is yours,
        ``PfMatch.by_pci_id(str(pf.ids))`` when only the ids are, None otherwise.

    Example::

        @hookimpl
        def sriovlib_match_pf(pf):
            if pf.driver == "acme_en":
                return PfMatch.by_driver(pf.driver)
            if pf.ids.vendor == 0x1D0F:
                return PfMatch.by_pci_id(str(pf.ids))
            return None
    """


@_spec(firstresult=True)
def sriovlib_vf_limit(pf: PhysicalFunction) -> VfLimit | None:
    """The most VFs this PF can have. *First result.*

    ``Host.set_num_vfs`` refuses a larger count before touching sysfs, with the
    ``reason`` in its message. The generic answer is ``sriov_totalvfs``; return a
    lower limit where the driver enforces one (igb: 7 per port; ixgbe: 63; i40e: 128 per
    device, and the NVM may allow fewer), or explain how to raise it (mlx5: the firmware
    setting ``NUM_OF_VFS``, which needs a reboot).

    Args:
        pf: The PF.

    Returns:
        A :class:`~sriovlib.plugins.types.VfLimit`, or None to use the generic answer.
    """


@_spec
def sriovlib_check_vf_config(  # type: ignore[empty-body]
    pf: PhysicalFunction, config: VfConfig, vf_mtu: int | None, pf_mtu: int | None
) -> list[Issue]:
    """Find what the hardware cannot do in a desired VF configuration. *Collecting.*

    Called before any kernel change; an issue of severity ``error`` rejects the whole
    configuration, so nothing is half applied. Examples: igb has no per-VF link state;
    on an 82599 a VF MTU above 1500 only works when the PF's MTU is raised too.

    Args:
        pf: The PF the VF belongs to.
        config: The requested VF settings (fields left None are not being changed).
        vf_mtu: The MTU the VF netdev is to get, or None if unchanged.
        pf_mtu: The PF netdev's current MTU, or None if it has no netdev.

    Returns:
        A list of :class:`~sriovlib.plugins.types.Issue`, empty when all is well.
    """


@_spec(firstresult=True)
def sriovlib_numvfs_plan(
    pf: PhysicalFunction, current: int, target: int, eswitch_mode: EswitchMode | None
) -> NumVfsPlan | None:
    """The sequence that changes the VF count and eswitch mode. *First result.*

    The generic plan writes ``sriov_numvfs`` through 0 (the kernel refuses a change
    between two non-zero counts). Drivers that need the eswitch mode set in a certain
    order answer here: mlx5 goes legacy, sets the count, unbinds the VFs, switches to
    switchdev and rebinds; ice must switch to switchdev with no VFs and then set the
    count.

    Args:
        pf: The PF.
        current: ``sriov_numvfs`` now.
        target: The wanted VF count (already checked against the VF limit).
        eswitch_mode: The wanted eswitch mode, or None to leave it.

    Returns:
        A :class:`~sriovlib.plugins.types.NumVfsPlan` (empty steps when nothing changes),
        or None to use the generic plan.
    """


@_spec(firstresult=True)
def sriovlib_mac_fixup(pf: PhysicalFunction, vf: VirtualFunction) -> MacFixup | None:
    """What it takes for an admin MAC set through the PF to reach the VF's netdev.
    *First result.*

    The Host sets ``IFLA_VF_MAC`` on the PF, then does what this hook says when the VF
    is bound to a kernel driver: nothing, also set the netdev's MAC, wait for the driver
    to propagate it, or re-probe the VF driver. Observed behaviour: igb and ixgbe only
    apply it after a VF driver reload (and then deny the VF changing its own MAC); i40e
    and ice (iavf) propagate it asynchronously; mlx5 needs the netdev MAC set too.

    Args:
        pf: The PF.
        vf: The VF whose admin MAC was just set.

    Returns:
        A :class:`~sriovlib.plugins.types.MacFixup`, or None for the generic answer
        (``set-netdev-mac``).
    """


@_spec(firstresult=True)
def sriovlib_vf_driver(
    pf: PhysicalFunction, vf: VirtualFunction, device_type: DeviceType
) -> str | None:
    """The kernel driver a VF must be bound to for a device type. *First result.*

    The Host rebinds a VF whose driver differs, through ``driver_override`` and
    ``drivers_probe``. The generic answer is ``vfio-pci`` for userspace (DPDK, VMs) and
    the VF's PCI-id default driver for a netdev. mlx5 is bifurcated: its VFs stay on
    ``mlx5_core`` even for DPDK.

    Args:
        pf: The PF.
        vf: The VF.
        device_type: ``netdevice`` or ``vfio-pci``.

    Returns:
        A driver name, or None for the generic answer.
    """


@_spec
def sriovlib_device_specs(
    pf: PhysicalFunction, vf: VirtualFunction, device_type: DeviceType
) -> DeviceSpecs | None:
    """Device nodes, mounts and environment a container needs with this VF.
    *Collecting.*

    The generic plugin adds the VFIO group node for ``vfio-pci`` VFs; mlx5 adds the RDMA
    character devices (``/dev/infiniband/uverbsN``, ``rdma_cm``) of the VF's RDMA
    device.

    Args:
        pf: The PF.
        vf: The allocated VF.
        device_type: How the VF is handed over.

    Returns:
        A :class:`~sriovlib.plugins.types.DeviceSpecs`, or None when nothing is needed.
    """


@_spec
def sriovlib_health(  # type: ignore[empty-body]
    pf: PhysicalFunction, vfs: list[VirtualFunction]
) -> list[Issue]:
    """Check a PF and its VFs for trouble. *Collecting.*

    ``sriovlib doctor`` shows the answers next to its own checks, which already cover
    what every driver shares (SR-IOV disabled, VFs missing after enabling, an unbound
    PF, unreadable attributes). Report what your hardware can get wrong beyond that
    (e.g. an InfiniBand VF with an all-zero GUID, a VF on a driver it does not need),
    with a ``command`` that fixes it where there is one.

    Args:
        pf: The PF.
        vfs: Its VFs as discovered now.

    Returns:
        A list of :class:`~sriovlib.plugins.types.Issue`, empty when healthy.
    """


@_spec(firstresult=True)
def sriovlib_release_knobs(
    pf: PhysicalFunction, changed: frozenset[VfKnob]
) -> frozenset[VfKnob] | None:
    """Which changed VF settings to put back when a workload releases a VF.
    *First result.*

    On release the Host compares the VF's settings with the snapshot taken before it
    was handed out and restores what differs. Answer with the subset your driver can
    restore: a driver that has no such knob reports a fixed value that may not match
    the snapshot, and writing it back would fail the release (sriov-cni resets the link
    state unconditionally, which igb refuses). The generic answer restores everything.

    Args:
        pf: The PF.
        changed: The settings that differ from the snapshot.

    Returns:
        The settings to restore (a subset of *changed*), or None for all of them.
    """
