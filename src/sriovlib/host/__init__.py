"""The :class:`Host` facade: the one object every entrypoint goes through for the kernel.

Each concern lives in its own module of this package; the facade composes them over one
:class:`~sriovlib.host.node.NodeContext` and reads as their table of contents:

==========================  ===========================================================
module                      what it does
==========================  ===========================================================
:mod:`.node`                sysfs, the netlink backend, the plugins, timeouts, lookups
:mod:`.numvfs`              ``sriov_numvfs``: plan and change the VF count of a PF
:mod:`.settings`            VF settings through the PF: apply, verify, undo; capabilities
:mod:`.drivers`             rebinding a VF's driver, binding a device type's driver
:mod:`.attach`              snapshot, attach a VF netdev to a namespace, release it
:mod:`.addresses`           addresses and routes on an interface in a namespace
:mod:`.devices`             device nodes, mounts and environment a container needs
==========================  ===========================================================

Sysfs goes through :class:`~sriovlib.sysfs.Sysfs`, netlink through a
:class:`~sriovlib.netlink.NetlinkBackend` (the real kernel unless one is passed in,
created on first use so that discovery never loads pyroute2). See ``docs/lifecycle.md``.
"""

from __future__ import annotations

import os
from collections.abc import Callable, Mapping, Sequence
from typing import TYPE_CHECKING

from sriovlib.exceptions import NotApplied, VfsNotReady
from sriovlib.host.addresses import Addresses
from sriovlib.host.attach import Attach
from sriovlib.host.devices import container_devices
from sriovlib.host.drivers import Drivers
from sriovlib.host.node import USERSPACE_DRIVERS, NodeContext
from sriovlib.host.numvfs import NumVfs
from sriovlib.host.settings import VfSettings
from sriovlib.models import (
    AttachSnapshot,
    ContainerDevices,
    IpInterface,
    LinkInfo,
    NetnsRef,
    NetworkDevice,
    NumVfsChange,
    PciAddress,
    PhysicalFunction,
    ReleaseReport,
    Route,
    VfCapabilities,
    VfConfig,
    VfState,
    VirtualFunction,
)
from sriovlib.plugins.types import DeviceType, EswitchMode, NumVfsPlan
from sriovlib.sysfs import Inventory, SelectorFacts, Sysfs, SysfsWriter, read_selector_facts

if TYPE_CHECKING:
    from sriovlib.netlink import EventSource, NetlinkBackend
    from sriovlib.plugins.manager import PfHooks, Plugins

__all__ = [
    "USERSPACE_DRIVERS",
    "Host",
    "Inventory",
    "NotApplied",
    "SelectorFacts",
    "VfsNotReady",
]


class Host:
    """SR-IOV view of one Linux node.

    Args:
        sysfs_root: The directory that holds ``sys/`` — ``/`` on a real node, a tree made
            by :class:`sriovlib.testing.FakeSysfs` in tests and examples.
        netlink: The netlink backend; default the real kernel
            (:class:`~sriovlib.netlink.KernelNetlink`), created on first use. Tests pass
            :class:`sriovlib.testing.fakenetlink.FakeNetlink`.
        sysfs_writer: Where sysfs writes go (default the kernel; the fake kernel in tests).
        in_use: Tells whether a VF is taken (``set_num_vfs`` refuses to destroy such VFs
            unless forced). Default: a VF whose driver has a netdev but whose netdev is
            not in the host namespace, i.e. one moved into a pod.
        wait_timeout: Default bound, in seconds, on waiting for VFs and netdevs.
        verify_timeout: How long ``configure_vf`` keeps re-reading a VF whose driver
            applies settings asynchronously before calling them not applied.
        poll_interval: Seconds between two looks while waiting.
        plugins: The vendor plugins (:class:`~sriovlib.plugins.manager.Plugins`);
            default: built-ins plus installed third-party plugins, loaded on first use.

    Vendor differences come from the plugins (:meth:`hooks`): the VF limit and the
    sequence of ``set_num_vfs``, checks before ``configure_vf`` and ``attach``, what
    makes an admin MAC reach a bound VF netdev, the driver of a device type, and which
    settings ``release`` puts back. The Host itself carries out what they plan.

    Every query reads the kernel afresh: VFs come and go, and a cached answer would go
    stale behind a long-running daemon's back. Lookups of one device read only that
    device, not the whole bus. The only cache is :meth:`capabilities`' answer per driver.
    """

    def __init__(
        self,
        sysfs_root: str | os.PathLike[str] = "/",
        *,
        netlink: NetlinkBackend | None = None,
        sysfs_writer: SysfsWriter | None = None,
        in_use: Callable[[VirtualFunction], bool] | None = None,
        wait_timeout: float = 30.0,
        verify_timeout: float = 1.0,
        poll_interval: float = 0.05,
        plugins: Plugins | None = None,
    ) -> None:
        self.node = NodeContext(
            sysfs_root,
            netlink=netlink,
            sysfs_writer=sysfs_writer,
            in_use=in_use,
            wait_timeout=wait_timeout,
            verify_timeout=verify_timeout,
            poll_interval=poll_interval,
            plugins=plugins,
        )
        self._numvfs = NumVfs(self.node)
        self._drivers = Drivers(self.node)
        self._settings = VfSettings(self.node, self._drivers)
        self._attach = Attach(self.node, self._settings)
        self._addresses = Addresses(self.node)

    def __repr__(self) -> str:
        return f"Host(sysfs_root={str(self.sysfs.root)!r})"

    def close(self) -> None:
        """Close the kernel netlink backend if this Host created it (a given backend is
        its giver's to close). A process that ends needs no call; a daemon that makes a
        Host per request (the agent's CNI fast path) does."""
        self.node.close()

    # -- the node: sysfs, netlink, plugins (node.py) -------------------------------------

    @property
    def sysfs(self) -> Sysfs:
        """The sysfs reader and writer."""
        return self.node.sysfs

    @property
    def netlink(self) -> NetlinkBackend:
        """The netlink backend (the real kernel's is created here on first use)."""
        return self.node.netlink

    @property
    def plugins(self) -> Plugins:
        """The vendor plugins (loaded here on first use)."""
        return self.node.plugins

    def hooks(self, pf: PhysicalFunction | str | PciAddress) -> PfHooks:
        """The vendor hooks of *pf*: its plugin's answers, falling back to generic."""
        return self.node.hooks(pf)

    def request_counts(self) -> Mapping[str, int]:
        """Netlink requests made so far, by kind, where the backend counts them (the
        fake kernel and the benchmarks' backends do); empty otherwise."""
        backend = self.node.netlink_if_created
        return dict(getattr(backend, "requests", None) or {})

    # -- discovery (node.py, sysfs.py) ---------------------------------------------------

    def inventory(self) -> Inventory:
        """One scan of the PCI bus: PFs, VFs, other NICs and unreadable devices."""
        return self.sysfs.scan()

    def selector_facts(self) -> SelectorFacts:
        """What pool selectors match on beyond the inventory (acpi_index, RDMA, vDPA,
        default route), for every network function, in one pass."""
        return read_selector_facts(self.sysfs)

    def pfs(self) -> tuple[PhysicalFunction, ...]:
        """Every SR-IOV capable PF, in PCI address order."""
        return self.sysfs.scan().pfs

    def vfs(self, pf: PhysicalFunction | str | None = None) -> tuple[VirtualFunction, ...]:
        """Every VF on the node, or only those of *pf* (a PF, its name or its address),
        ordered by VF index within a PF."""
        if pf is None:
            return self.sysfs.scan().vfs
        parent = pf if isinstance(pf, PhysicalFunction) else self.pf(pf)
        vfs = [v for v in self.sysfs.scan().vfs if v.pf_address == parent.address]
        return tuple(sorted(vfs, key=lambda v: v.index))

    def pf(self, name_or_address: str | PciAddress) -> PhysicalFunction:
        """The PF with this netdev name or PCI address; :class:`DeviceNotFound` if none."""
        return self.node.pf(name_or_address)

    def pci_function(
        self, address: str | PciAddress
    ) -> PhysicalFunction | VirtualFunction | NetworkDevice:
        """The PF, VF or other NIC at *address*, read afresh; :class:`DeviceNotFound` if
        there is none."""
        pci = address if isinstance(address, PciAddress) else PciAddress.parse(address)
        return self.node.sysfs.device(pci)

    def function_addresses(self) -> frozenset[str]:
        """Every PCI function's address, from one directory listing (cheap enough to
        tell after each kernel event whether functions came or went)."""
        return self.node.sysfs.function_addresses()

    def bound_driver(self, address: str | PciAddress) -> str | None:
        """The driver bound to the PCI function at *address* now (None: none), without
        reading the rest of it; :class:`DeviceNotFound` if there is none."""
        pci = address if isinstance(address, PciAddress) else PciAddress.parse(address)
        return self.node.sysfs.bound_driver(pci)

    def pcie_root(self, address: str | PciAddress) -> str | None:
        """The PCIe root complex of the function at *address* (``pci0000:00``, the
        ``resource.kubernetes.io/pcieRoot`` of DRA), or None if sysfs does not say."""
        pci = address if isinstance(address, PciAddress) else PciAddress.parse(address)
        return self.node.sysfs.pcie_root(pci)

    def vf(self, address: str | PciAddress) -> VirtualFunction:
        """The VF at this PCI address; :class:`DeviceNotFound` if there is none."""
        return self.node.vf(address)

    # -- sriov_numvfs (numvfs.py) --------------------------------------------------------

    def set_num_vfs(
        self,
        pf: PhysicalFunction | str | PciAddress,
        count: int,
        *,
        force: bool = False,
        timeout: float | None = None,
        eswitch_mode: EswitchMode | None = None,
    ) -> NumVfsChange:
        """Make *pf* have *count* VFs and wait for them: :meth:`.NumVfs.set_num_vfs`."""
        return self._numvfs.set_num_vfs(
            pf, count, force=force, timeout=timeout, eswitch_mode=eswitch_mode
        )

    def plan_num_vfs(
        self,
        pf: PhysicalFunction | str | PciAddress,
        count: int,
        *,
        eswitch_mode: EswitchMode | None = None,
    ) -> NumVfsPlan:
        """What :meth:`set_num_vfs` would do: :meth:`.NumVfs.plan_num_vfs`."""
        return self._numvfs.plan_num_vfs(pf, count, eswitch_mode=eswitch_mode)

    def eswitch_mode(self, pf: PhysicalFunction | str | PciAddress) -> EswitchMode | None:
        """*pf*'s devlink eswitch mode now; None where the driver has no devlink eswitch
        (igb, ixgbe)."""
        parent = self.node.fresh_pf(pf)
        mode = self.node.netlink.eswitch_mode(str(parent.address))
        return None if mode is None else EswitchMode(mode)

    # -- VF settings (settings.py) -------------------------------------------------------

    def vf_state(self, vf: VirtualFunction | PciAddress | str) -> VfState:
        """The VF's settings as its PF's driver reports them: :meth:`.VfSettings.vf_state`."""
        return self._settings.vf_state(vf)

    def vf_states(self, pf: PhysicalFunction | str | PciAddress) -> tuple[VfState, ...]:
        """Every VF's settings of *pf* from one VF-list read: :meth:`.VfSettings.vf_states`."""
        return self._settings.vf_states(pf)

    def configure_vf(self, vf: VirtualFunction | PciAddress | str, config: VfConfig) -> VfState:
        """Apply, verify and return the VF's settings: :meth:`.VfSettings.configure_vf`."""
        return self._settings.configure_vf(vf, config)

    def capabilities(
        self,
        pf: PhysicalFunction | str | PciAddress,
        *,
        vf: VirtualFunction | PciAddress | str | None = None,
        refresh: bool = False,
    ) -> VfCapabilities:
        """Which VF settings *pf*'s driver accepts: :meth:`.VfSettings.capabilities`."""
        return self._settings.capabilities(pf, vf=vf, refresh=refresh)

    # -- drivers (drivers.py) ------------------------------------------------------------

    def rebind_vf(self, vf: VirtualFunction | PciAddress | str) -> VirtualFunction:
        """Re-probe a VF's driver, keeping its netdev name: :meth:`.Drivers.rebind_vf`."""
        return self._drivers.rebind_vf(vf)

    def bind_driver(
        self, vf: VirtualFunction | PciAddress | str, device_type: DeviceType
    ) -> VirtualFunction:
        """Bind a VF to *device_type*'s driver: :meth:`.Drivers.bind_driver`."""
        return self._drivers.bind_driver(vf, device_type)

    def bind_problem(
        self, vf: VirtualFunction | PciAddress | str, device_type: DeviceType
    ) -> str | None:
        """Why binding a VF to *device_type*'s driver would fail now, or None:
        :meth:`.Drivers.bind_problem`."""
        return self._drivers.bind_problem(vf, device_type)

    def bind_back(
        self, vf: VirtualFunction | PciAddress | str, driver: str | None, netdev: str | None
    ) -> VirtualFunction:
        """Bind a VF to the driver it had before (its netdev named so again):
        :meth:`.Drivers.bind_back`."""
        return self._drivers.bind_back(vf, driver, netdev)

    # -- attach and release (attach.py) --------------------------------------------------

    def snapshot(
        self,
        vf: VirtualFunction | PciAddress | str,
        netns: NetnsRef,
        ifname: str,
        mac: str | None = None,
    ) -> AttachSnapshot:
        """What :meth:`attach` would record, changing nothing: :meth:`.Attach.snapshot`."""
        return self._attach.snapshot(vf, netns, ifname, mac)

    def attach(
        self,
        vf: VirtualFunction | PciAddress | str,
        netns: NetnsRef,
        ifname: str,
        mac: str | None = None,
        mtu: int | None = None,
        *,
        config: VfConfig | None = None,
        snapshot: AttachSnapshot | None = None,
    ) -> AttachSnapshot:
        """Move the VF's netdev into *netns* as *ifname*: :meth:`.Attach.attach`."""
        return self._attach.attach(vf, netns, ifname, mac, mtu, config=config, snapshot=snapshot)

    def release(self, snapshot: AttachSnapshot, netns: NetnsRef | None = None) -> ReleaseReport:
        """Undo :meth:`attach`: :meth:`.Attach.release`."""
        return self._attach.release(snapshot, netns)

    def reset_vf(
        self,
        vf: VirtualFunction | PciAddress | str,
        netns: NetnsRef | None = None,
        ifname: str | None = None,
    ) -> ReleaseReport:
        """Bring a VF home in safe defaults when its snapshot is lost: :meth:`.Attach.reset`."""
        return self._attach.reset(vf, netns, ifname)

    # -- what a container needs with a VF (devices.py) -----------------------------------

    def container_devices(
        self, vf: VirtualFunction | PciAddress | str, *, rdma: bool = False, vhost_net: bool = False
    ) -> ContainerDevices:
        """The device nodes, mounts and environment a container needs with *vf*: the
        vendor plugins' :meth:`~sriovlib.plugins.manager.PfHooks.device_specs` found on
        the node. RDMA character devices only with *rdma*; ``/dev/vhost-net`` and
        ``/dev/net/tun`` with *vhost_net* when both exist. :func:`.container_devices`."""
        return container_devices(self.node, self.node.fresh_vf(vf), rdma=rdma, vhost_net=vhost_net)

    # -- addresses and routes (addresses.py) ---------------------------------------------

    def link(self, ifname: str, netns: NetnsRef | None = None) -> LinkInfo:
        """The interface *ifname* in *netns*: :meth:`.Addresses.link`."""
        return self._addresses.link(ifname, netns)

    def set_link(
        self,
        ifname: str,
        *,
        mtu: int | None = None,
        up: bool | None = None,
        netns: NetnsRef | None = None,
    ) -> LinkInfo:
        """Set the MTU and/or up flag of *ifname*: :meth:`.Addresses.set_link`."""
        return self._addresses.set_link(ifname, mtu=mtu, up=up, netns=netns)

    def watch(self) -> EventSource:
        """Subscribe to the kernel's link and device events on this node
        (:meth:`sriovlib.netlink.NetlinkBackend.watch`); close it when done."""
        return self.node.netlink.watch()

    def configure_addresses(
        self,
        netns: NetnsRef,
        link: LinkInfo,
        addresses: Sequence[IpInterface],
        routes: Sequence[Route],
    ) -> None:
        """Put addresses and routes on *link*: :meth:`.Addresses.configure`."""
        self._addresses.configure(netns, link, addresses, routes)

    def addresses(self, netns: NetnsRef, link: LinkInfo) -> tuple[IpInterface, ...]:
        """The addresses on *link*: :meth:`.Addresses.addresses`."""
        return self._addresses.addresses(netns, link)

    def routes(self, netns: NetnsRef, link: LinkInfo) -> tuple[Route, ...]:
        """The routes through *link*: :meth:`.Addresses.routes`."""
        return self._addresses.routes(netns, link)
