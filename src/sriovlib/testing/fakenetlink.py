"""A fake kernel for tests: netlink and sysfs writes over a :class:`FakeSysfs` tree.

:class:`FakeNetlink` implements :class:`sriovlib.netlink.NetlinkBackend` and
:class:`sriovlib.sysfs.SysfsWriter`, and keeps the generated tree in step with what it
does, so a :class:`sriovlib.Host` built on both sees the same world through sysfs and
netlink::

    fs = FakeSysfs(tmp_path)
    add_nic_model(fs, "igb", bus=0x01, ports=1)
    kernel = FakeNetlink(fs)
    host = kernel.host()                      # Host(fs.root, netlink=kernel, sysfs_writer=kernel)
    host.set_num_vfs("enp1s0f0", 4)
    pod = kernel.add_netns("pod1")            # a namespace, named by a path
    snapshot = host.attach(host.vfs("enp1s0f0")[0], pod, "net1")

It enforces the kernel's rules rather than accepting everything:

- ``sriov_numvfs`` changes only through 0 (EBUSY), is at most ``sriov_totalvfs``
  (ERANGE), and a change destroys every VF netdev, wherever it is;
- ``drivers_probe`` binds the ``driver_override`` driver (else the one matching the PCI
  id: the kernel driver another function of the same ids has); ``vfio-pci`` takes only
  a function in an IOMMU group, unless vfio's no-IOMMU mode is on (a ``bind`` is
  EINVAL, a probe leaves the function unbound, as the kernel);
- VF settings follow the PF driver's :class:`DriverRules`; :data:`DRIVER_RULES` holds
  what the real igb driver does (measured in the VM tier: ``link_state`` and
  ``query_rss`` EOPNOTSUPP, ``min_tx_rate > 0`` EINVAL, ``max_tx_rate`` only
  ``0 < R <= 1000`` while the PF has carrier, 802.1ad EPROTONOSUPPORT); other drivers
  get :data:`PERMISSIVE` unless you pass rules; a VF driver probing while its PF resets
  (:meth:`FakeNetlink.reset_pf`) makes up a MAC instead of taking the admin MAC;
- the devlink eswitch mode changes only where the driver has one (EOPNOTSUPP), ice only
  with no VFs, mlx5 into switchdev only with every VF unbound (EBUSY);
- links live in namespaces (files whose inode is their identity, as with ``nsfs``);
  names are unique per namespace, counting altnames; a rename of an up link is EBUSY (as
  on kernel 6.1); a move into a namespace with the new name in one request renames in the
  target, and fails before moving when the current and the new name are both taken
  there; moving closes the link; deleting a namespace sends physical netdevs back to the
  host under their name, or ``devN`` when that is taken, and destroys virtual ones;
- addresses, routes and per-interface sysctls belong to a link in its namespace, as the
  kernel has them (measured on kernel 6.x with veths, ``tests/kernel/test_addresses.py``
  runs the same cases on both): a link that changes namespace loses all three; taking a
  link down drops the routes through it and its IPv6 addresses (IPv4 addresses stay);
  an address already there is EEXIST unless replaced (IPv4: same address and prefix
  length; IPv6: same address); the same route twice is EEXIST; a route needs the link up
  (ENETDOWN) and an on-link gateway — inside the prefix of one of the link's addresses
  or of a route onto the link, or IPv6 link-local — else ENETUNREACH (IPv4) or
  EHOSTUNREACH (IPv6); a missing interface is ENODEV (ENOENT for a sysctl). The
  kernel's own prefix routes are listed while the link is up; IPv6 link-local addresses
  are not made up.

Every request is counted in :attr:`FakeNetlink.requests` (same kinds as
:class:`~sriovlib.netlink.KernelNetlink`), and :meth:`FakeNetlink.fail` injects an errno
into the next matching request.
"""

from __future__ import annotations

import collections
import errno
import ipaddress
import os
import shutil
import threading
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from sriovlib.models import (
    RT_SCOPE_LINK,
    ZERO_MAC,
    PciAddress,
    VfLinkState,
    VfState,
    VlanProto,
)
from sriovlib.netlink import (
    LINK_SYSCTLS,
    RT_TABLE_MAIN,
    IpAddress,
    IpInterface,
    KernelError,
    LinkInfo,
    LinkSysctl,
    NetnsRef,
    Route,
    kernel_error,
)
from sriovlib.testing.builder import FakeSysfs

if TYPE_CHECKING:
    from sriovlib.host import Host

__all__ = ["DRIVER_RULES", "PERMISSIVE", "DriverRules", "FakeNetlink", "VethKernel"]


@attrs.frozen
class DriverRules:
    """How a PF driver answers VF settings (what the fake kernel enforces).

    Attributes:
        name: The driver name these rules are for.
        link_state / query_rss / vlan_8021ad / trust / spoofchk: Whether the setting is
            implemented (refused with EOPNOTSUPP, 802.1ad with EPROTONOSUPPORT).
        min_tx_rate: Whether a non-zero minimum rate is accepted (else EINVAL).
        max_tx_rate_limit: Highest max rate in Mbit/s (the link speed), None for any.
        rate_needs_carrier: Rate changes (even to 0) need PF carrier, else EINVAL.
        reports_query_rss: Whether the driver reports ``rss_query_en`` (else unknown).
        devlink: Whether the PF has a devlink instance with an eswitch.
        admin_mac_locks_vf: A VF whose admin MAC is set (and that is not trusted) may
            not change its own MAC (EADDRNOTAVAIL; igb logs "attempted to override
            administratively set MAC address").
        reports_own_mac: Without an admin MAC, the PF reports the MAC the VF netdev set
            for itself as the VF's MAC (igb, once the VF driver has talked to the PF).
        vf_max_mtu: Largest MTU the VF netdev takes.
        admin_mac_to_netdev: An admin MAC also reaches the VF's bound netdev (iavf
            picks it up from the PF); otherwise the netdev keeps its MAC until the VF
            driver probes again (igb, ixgbe) or the MAC is set on the netdev (mlx5).
        eswitch_needs_no_vfs: The eswitch mode changes only with no VFs (ice: EBUSY).
        eswitch_needs_unbound_vfs: switchdev is entered only with every VF unbound
            (mlx5: EBUSY).
    """

    name: str
    link_state: bool = True
    query_rss: bool = True
    vlan_8021ad: bool = True
    trust: bool = True
    spoofchk: bool = True
    min_tx_rate: bool = True
    max_tx_rate_limit: int | None = None
    rate_needs_carrier: bool = False
    reports_query_rss: bool = True
    devlink: bool = True
    admin_mac_locks_vf: bool = False
    reports_own_mac: bool = False
    vf_max_mtu: int = 9216
    admin_mac_to_netdev: bool = False
    eswitch_needs_no_vfs: bool = False
    eswitch_needs_unbound_vfs: bool = False


#: Rules for drivers whose behaviour was measured on real hardware or emulation.
DRIVER_RULES: dict[str, DriverRules] = {
    "igb": DriverRules(
        "igb",
        link_state=False,
        query_rss=False,
        vlan_8021ad=False,
        min_tx_rate=False,
        max_tx_rate_limit=1000,
        rate_needs_carrier=True,
        reports_query_rss=False,
        devlink=False,
        reports_own_mac=True,
        admin_mac_locks_vf=True,
    ),
    # iavf (the VF driver of i40e and ice) takes an admin MAC from the PF by itself
    "i40e": DriverRules("i40e", admin_mac_to_netdev=True),
    "ice": DriverRules("ice", admin_mac_to_netdev=True, eswitch_needs_no_vfs=True),
    "mlx5_core": DriverRules("mlx5_core", eswitch_needs_unbound_vfs=True),
}

#: Rules for any other driver: every setting accepted.
PERMISSIVE = DriverRules("generic")

_MIN_MTU = 68
_USERSPACE = ("vfio-pci", "uio_pci_generic", "igb_uio")


@attrs.define
class _Vf:
    mac: str = ZERO_MAC
    admin_mac: bool = False  # the MAC was set through the PF (not by the VF itself)
    vlan: int = 0
    qos: int = 0
    proto: VlanProto = VlanProto.DOT1Q
    spoofchk: bool = True
    trust: bool = False
    link_state: VfLinkState = VfLinkState.AUTO
    min_tx_rate: int = 0
    max_tx_rate: int = 0
    query_rss: bool = False


@attrs.define
class _Link:
    index: int
    name: str
    mac: str
    mtu: int
    up: bool
    ns: tuple[int, int]
    parent: str | None  # PCI address of the device behind a physical netdev
    virtual: bool
    altnames: list[str] = attrs.field(factory=list)
    stash: Path | None = None  # sysfs directory while the link is out of the host
    addresses: list[IpInterface] = attrs.field(factory=list)
    routes: list[Route] = attrs.field(factory=list)  # added ones (not the prefix routes)
    sysctls: dict[str, int] = attrs.field(factory=dict)

    def flush(self) -> None:
        """What the kernel drops when the link changes namespace."""
        self.addresses.clear()
        self.routes.clear()
        self.sysctls.clear()

    def prefix_routes(self) -> list[Route]:
        """The kernel's own routes to the prefixes of the link's addresses (while up)."""
        if not self.up:
            return []
        networks = [a.network for a in self.addresses if a.network.prefixlen < a.max_prefixlen]
        return [Route(network) for network in dict.fromkeys(networks)]

    def on_link(self, gateway: IpAddress) -> bool:
        """Whether *gateway* can be reached straight over this link."""
        if not self.up:
            return False
        own = [a.ip for a in self.addresses if a.version == 4]
        onto = [r.dst for r in self.prefix_routes() + self.routes if r.gateway is None]
        return gateway in own or any(
            net.version == gateway.version and gateway in net for net in onto
        )


@attrs.define
class _Failure:
    kind: str
    code: int
    match: Callable[[str], bool]
    times: int


class FakeNetlink:
    """A fake kernel over *fs* (see the module documentation).

    Args:
        fs: The fake sysfs tree; links are created for every netdev already in it.
        rules: Driver rules by driver name, on top of :data:`DRIVER_RULES`.
        netdev_delay: Seconds after a ``sriov_numvfs`` write before the new VFs' netdevs
            show up in sysfs (the real kernel probes VF drivers asynchronously).
        altname_on_rename: Keep a renamed link's old name as an altname, as some
            distribution kernels and udev setups do (sriov-cni issue 445).
    """

    def __init__(
        self,
        fs: FakeSysfs,
        *,
        rules: dict[str, DriverRules] | None = None,
        netdev_delay: float = 0.0,
        altname_on_rename: bool = False,
    ) -> None:
        self.fs = fs
        self.rules = {**DRIVER_RULES, **(rules or {})}
        self.netdev_delay = netdev_delay
        self.altname_on_rename = altname_on_rename
        self.requests: collections.Counter[str] = collections.Counter()
        self.sysfs_writes: list[tuple[str, str]] = []
        self._lock = threading.RLock()
        self._failures: list[_Failure] = []
        self._links: dict[int, _Link] = {}
        self._next_index = 2
        self._vfs: dict[PciAddress, list[_Vf]] = {}
        self._netns_dir = fs.root / "run" / "netns"
        self._netns_dir.mkdir(parents=True, exist_ok=True)
        self._stash = fs.root / ".fake-kernel"
        self._stash.mkdir(exist_ok=True)
        home = self._stash / "host-netns"
        home.touch()
        self.home_netns = str(home)
        self._home = _key(home)
        self._namespaces: dict[tuple[int, int], str] = {self._home: "host"}
        self._timers: list[threading.Timer] = []
        self._id_driver: dict[str, str] = {}  # PCI address -> its kernel (netdev) driver
        self._last_mac: dict[str, str] = {}  # PCI address -> MAC of its last netdev
        self._resetting: dict[str, int] = {}  # PF PCI address -> VF probes left in the reset
        self._watchers: list[FakeEvents] = []
        self._eswitch: dict[str, str] = {}  # PF PCI address -> mode set through devlink
        self._load()

    def __repr__(self) -> str:
        return f"FakeNetlink(root={str(self.fs.root)!r}, requests={sum(self.requests.values())})"

    # -- test helpers ------------------------------------------------------------------

    def host(self, **options: object) -> Host:
        """A :class:`sriovlib.Host` on this tree that uses this fake for netlink and
        sysfs writes."""
        from sriovlib.host import Host

        return Host(self.fs.root, netlink=self, sysfs_writer=self, **options)  # type: ignore[arg-type]

    def add_netns(self, name: str) -> str:
        """Create a namespace; return its path (pass it wherever a namespace is asked)."""
        path = self._netns_dir / name
        path.touch(exist_ok=False)
        with self._lock:
            self._namespaces[_key(path)] = name
        return str(path)

    def delete_netns(self, path: str | os.PathLike[str]) -> None:
        """Delete a namespace as the kernel does when its last reference goes away:
        physical netdevs return to the host (as ``devN`` if their name is taken there),
        virtual ones are destroyed."""
        with self._lock:
            key = _key(Path(path))
            del self._namespaces[key]
            os.unlink(path)
            for link in sorted(self._in(key), key=lambda link: link.index):
                if link.virtual:
                    del self._links[link.index]
                    continue
                if self._taken(self._home, link.name) or any(
                    self._taken(self._home, alt) for alt in link.altnames
                ):
                    link.name = f"dev{link.index}"
                link.up = False
                link.flush()
                self._enter_host(link)

    def add_link(
        self,
        name: str,
        netns: NetnsRef | None = None,
        *,
        mac: str = "02:42:ac:11:00:02",
        mtu: int = 1500,
        up: bool = False,
    ) -> int:
        """Add a virtual interface (a veth end, a bridge); return its ifindex."""
        with self._lock:
            key = self._ns(netns, "add link")
            if self._taken(key, name):
                raise OSError(errno.EEXIST, f"{name} exists")
            link = _Link(self._new_index(), name, mac, mtu, up, key, None, virtual=True)
            self._links[link.index] = link
            if key == self._home:
                path = self.fs.sys / "devices/virtual/net" / name
                path.mkdir(parents=True)
                _write(path / "type", "1")
                self._write_attrs(link, path)
                (self.fs.sys / "class/net" / name).symlink_to(
                    os.path.relpath(path, self.fs.sys / "class/net")
                )
            return link.index

    def link(self, name: str, netns: NetnsRef | None = None) -> LinkInfo:
        """Look at a link without counting a request (for assertions)."""
        with self._lock:
            return self._info(self._by_name(self._ns(netns, "look up"), name, "look up"))

    def link_names(self, netns: NetnsRef | None = None) -> tuple[str, ...]:
        """The names of the links in *netns*, sorted (for assertions)."""
        with self._lock:
            return tuple(sorted(link.name for link in self._in(self._ns(netns, "list"))))

    def sysctls(self, name: str, netns: NetnsRef | None = None) -> dict[str, int]:
        """The per-interface sysctls set on a link (for assertions; not counted)."""
        with self._lock:
            return dict(self._by_name(self._ns(netns, "look up"), name, "look up").sysctls)

    def remove_address(
        self, name: str, address: str | IpInterface, netns: NetnsRef | None = None
    ) -> None:
        """Take an address off a link, as someone tampering with a pod would (a test
        helper; not counted)."""
        with self._lock:
            link = self._by_name(self._ns(netns, "delete address"), name, "delete address")
            gone = ipaddress.ip_interface(address)
            link.addresses = [a for a in link.addresses if a != gone]

    def vf_state(self, pf: PciAddress, index: int) -> VfState:
        """A VF's settings without counting a request (for assertions)."""
        with self._lock:
            return self._state(pf, index)

    def set_carrier(self, pf_netdev: str, carrier: bool) -> None:
        """Plug or unplug the PF's cable (rate limits on igb need carrier)."""
        link = self._by_name(self._home, pf_netdev, "set carrier")
        if link.parent is None:
            raise ValueError(f"{pf_netdev} is not a PCI netdev")
        _write(self._device(link.parent) / "net" / pf_netdev / "carrier", "1" if carrier else "0")
        self._notify()

    def reset_pf(self, pf_netdev: str, probes: int = 1) -> None:
        """Put the PF in a reset that lasts for the next *probes* VF driver probes under it.

        A VF driver that probes while its PF resets cannot ask the PF for its MAC and
        makes one up, ignoring the admin MAC (igbvf does this for up to a second after
        every ``sriov_numvfs`` change on the real 82576).
        """
        with self._lock:
            link = self._by_name(self._home, pf_netdev, "reset PF")
            if link.parent is None:
                raise ValueError(f"{pf_netdev} is not a PCI netdev")
            self._resetting[link.parent] = probes

    def fail(
        self, kind: str, code: int, *, match: str | Callable[[str], bool] = "", times: int = 1
    ) -> None:
        """Make the next *times* requests of *kind* (``set_vf``, ``move_link``...) whose
        description contains *match* (or for which *match* returns True) fail with
        *code*. The description of ``set_vf`` is the knob (``mac``, ``vlan``...)."""
        test = match if callable(match) else (lambda text, part=match: part in text)
        self._failures.append(_Failure(kind, code, test, times))

    def wait_idle(self) -> None:
        """Wait for delayed netdevs (``netdev_delay``) to appear."""
        for timer in list(self._timers):
            timer.join()

    # -- sysfs writes (SysfsWriter) ---------------------------------------------------

    def write(self, path: Path, value: str) -> None:
        """A write to a sysfs attribute, with the kernel's rules for ``sriov_numvfs``."""
        try:
            self._write_sysfs(path, value)
        finally:
            self._notify()  # a uevent (bind, unbind, VFs added or removed) or a no-op

    def _write_sysfs(self, path: Path, value: str) -> None:
        with self._lock:
            self.sysfs_writes.append((str(path), value))
            target = Path(path)
            if target.name == "sriov_numvfs":
                self._write_num_vfs(PciAddress.parse(target.parent.name), value)
                return
            if target.name in ("bind", "unbind") and target.parent.parent.name == "drivers":
                bind = self._bind if target.name == "bind" else self._unbind
                bind(target.parent.name, value.strip())
                return
            if target.name == "drivers_probe":
                self._probe(value.strip())
                return
            if not Path(path).is_file():
                raise OSError(errno.ENOENT, os.strerror(errno.ENOENT), str(path))
            _write(Path(path), value.strip())

    def _write_num_vfs(self, pf: PciAddress, value: str) -> None:
        device = self._device(str(pf))
        try:
            count = int(value.strip())
        except ValueError:
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL)) from None
        total = int((device / "sriov_totalvfs").read_text())
        current = int((device / "sriov_numvfs").read_text())
        if count < 0 or count > total:
            raise OSError(errno.ERANGE, os.strerror(errno.ERANGE))
        if count == current:
            return
        if current and count:
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))
        vf_addresses = {self.fs_vf(device, i).name for i in range(current)}
        for link in list(self._links.values()):
            if link.parent in vf_addresses:
                self._destroy(link)
        self.fs.set_num_vfs(pf, count)
        self._vfs[pf] = [_Vf() for _ in range(count)]
        new = []
        for i in range(count):
            vf_dir = self.fs_vf(device, i)
            for net in sorted((vf_dir / "net").iterdir()):
                new.append(self._adopt(net, vf_dir.name, up=False))
        if self.netdev_delay and new:
            for link in new:
                self._leave_host(link)
            timer = threading.Timer(self.netdev_delay, self._appear, args=(new,))
            self._timers.append(timer)
            timer.start()

    def _unbind(self, driver: str, address: str) -> None:
        """``drivers/<driver>/unbind``: the function's netdevs disappear."""
        device = self._device(address)
        if _basename(device / "driver") != driver:
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), address)
        for link in [link for link in self._links.values() if link.parent == address]:
            self._destroy(link)
        (device / "driver").unlink()
        (self.fs.sys / "bus/pci/drivers" / driver / address).unlink(missing_ok=True)
        if driver not in _USERSPACE:
            # what a probe without driver_override binds again (the PCI id match)
            self._id_driver[address] = driver

    def _bind(self, driver: str, address: str) -> None:
        """``drivers/<driver>/bind``: a netdev driver probes and creates a netdev named
        by the kernel (``ethN``), carrying the VF's admin MAC if one is set."""
        device = self._device(address)
        if (device / "driver").is_symlink():
            raise OSError(errno.EBUSY, os.strerror(errno.EBUSY), address)
        drv = self.fs.sys / "bus/pci/drivers" / driver
        if not drv.is_dir():
            raise OSError(errno.ENODEV, os.strerror(errno.ENODEV), driver)
        if driver == "vfio-pci" and not self._vfio_can_take(device):
            # vfio_pci_probe fails without an IOMMU group (and no no-IOMMU mode)
            raise OSError(errno.EINVAL, os.strerror(errno.EINVAL), address)
        real = device.resolve()
        (real / "driver").symlink_to(os.path.relpath(drv, real))
        (drv / address).symlink_to(os.path.relpath(real, drv))
        if driver in _USERSPACE:
            return
        mac = self._last_mac.get(address, "02:00:00:00:00:01")
        vf = self._vf_record(address)
        pf = _basename(device / "physfn")
        if pf is not None and self._resetting.get(pf, 0) > 0:
            self._resetting[pf] -= 1
            mac = ":".join(f"{b:02x}" for b in (0x02, *os.urandom(5)))
        elif vf is not None and vf.admin_mac:
            mac = vf.mac
        name = next(f"eth{n}" for n in range(1000) if not self._taken(self._home, f"eth{n}"))
        net = real / "net" / name
        net.mkdir(parents=True)
        _write(net / "type", "1")
        _write(net / "address", mac)
        _write(net / "mtu", "1500")
        (net / "device").symlink_to(os.path.relpath(real, net))
        (self.fs.sys / "class/net" / name).symlink_to(
            os.path.relpath(net, self.fs.sys / "class/net")
        )
        self._adopt(net, address, up=False)

    def _probe(self, address: str) -> None:
        """``drivers_probe``: bind the ``driver_override`` driver, else the kernel driver
        matching the PCI id (here: the netdev driver the function had before)."""
        device = self._device(address)
        if (device / "driver").is_symlink():
            return
        override = _read(device / "driver_override")
        driver = override if override not in (None, "", "(null)") else None
        driver = driver or self._id_driver.get(address) or self._id_match(device)
        if driver == "vfio-pci" and not self._vfio_can_take(device):
            return  # the probe fails; drivers_probe reports no error, the VF stays unbound
        if driver is not None:
            self._bind(driver, address)

    def _id_match(self, device: Path) -> str | None:
        """The kernel driver whose PCI id table matches *device*: here, the driver
        another function with the same vendor and device id is bound to (never a
        userspace one, which matches no id but through ``driver_override``)."""
        ids = (_read(device / "vendor"), _read(device / "device"))
        for other in sorted((self.fs.sys / "bus/pci/devices").iterdir()):
            if (_read(other / "vendor"), _read(other / "device")) != ids:
                continue
            driver = _basename(other / "driver") or self._id_driver.get(other.name)
            if driver is not None and driver not in _USERSPACE:
                return driver
        return None

    def _vfio_can_take(self, device: Path) -> bool:
        """vfio-pci binds a function in an IOMMU group, or any in no-IOMMU mode."""
        noiommu = self.fs.sys / "module/vfio/parameters/enable_unsafe_noiommu_mode"
        return (device / "iommu_group").exists() or _read(noiommu) in ("Y", "1")

    def _vf_record(self, address: str) -> _Vf | None:
        physfn = self._device(address) / "physfn"
        if not physfn.exists():
            return None
        pf = PciAddress.parse(physfn.resolve().name)
        for entry in physfn.resolve().glob("virtfn*"):
            if entry.resolve().name == address:
                return self._vfs[pf][int(entry.name[6:])]
        return None

    def _appear(self, links: list[_Link]) -> None:
        with self._lock:
            for link in links:
                if link.index in self._links and link.ns == self._home:
                    self._enter_host(link)

    def fs_vf(self, pf_device: Path, index: int) -> Path:
        """The sysfs directory of VF *index* of the PF at *pf_device*."""
        return (pf_device / f"virtfn{index}").resolve()

    # -- NetlinkBackend: VF settings ---------------------------------------------------

    def vf_states(self, pf: str) -> tuple[VfState, ...]:
        """Every VF's settings (one request)."""
        with self._lock:
            self._request("vf_list", "", "read VF list", pf)
            address = self._pf(pf, "read VF list")
            return tuple(self._state(address, i) for i in range(len(self._vfs.get(address, []))))

    def set_vf_mac(self, pf: str, vf: int, mac: str) -> None:
        """Set the admin MAC: a multicast address is EINVAL, zero clears it."""
        with self._lock:
            state, rules, _ = self._vf_request(pf, vf, "mac")
            if int(mac[:2], 16) & 1:
                raise self._vf_error(errno.EINVAL, pf, vf, "mac")
            state.mac, state.admin_mac = mac, mac != ZERO_MAC
            if rules.admin_mac_to_netdev and state.admin_mac:
                address = self.fs_vf(self._device(str(self._pf(pf, "set VF mac"))), vf).name
                for link in self._links.values():
                    if link.parent == address:
                        link.mac = mac
                        self._sync(link)

    def set_vf_vlan(self, pf: str, vf: int, vlan: int, qos: int, proto: VlanProto) -> None:
        """Set VLAN/QoS/protocol: vlan > 4095 or qos > 7 is EINVAL."""
        with self._lock:
            knob = "vlan" if proto is VlanProto.DOT1Q else "vlan_proto"
            state, rules, _ = self._vf_request(pf, vf, knob)
            if vlan > 4095 or qos > 7:
                raise self._vf_error(errno.EINVAL, pf, vf, knob)
            if proto is VlanProto.DOT1AD and not rules.vlan_8021ad:
                raise self._vf_error(errno.EPROTONOSUPPORT, pf, vf, knob)
            state.vlan, state.qos, state.proto = vlan, qos, proto

    def set_vf_rate(self, pf: str, vf: int, min_tx_rate: int, max_tx_rate: int) -> None:
        """Set both rates, under the driver's rate rules."""
        with self._lock:
            knob = "min_tx_rate" if min_tx_rate else "max_tx_rate"
            state, rules, link = self._vf_request(pf, vf, knob)
            if min_tx_rate and not rules.min_tx_rate:
                raise self._vf_error(errno.EINVAL, pf, vf, knob)
            if rules.rate_needs_carrier and not self._carrier(link):
                raise self._vf_error(errno.EINVAL, pf, vf, knob)
            limit = rules.max_tx_rate_limit
            if limit is not None and max_tx_rate > limit:
                raise self._vf_error(errno.EINVAL, pf, vf, knob)
            if max_tx_rate and min_tx_rate > max_tx_rate:
                raise self._vf_error(errno.EINVAL, pf, vf, knob)
            state.min_tx_rate, state.max_tx_rate = min_tx_rate, max_tx_rate

    def set_vf_spoofchk(self, pf: str, vf: int, on: bool) -> None:
        """Turn spoof checking on or off."""
        with self._lock:
            state, rules, _ = self._vf_request(pf, vf, "spoofchk")
            if not rules.spoofchk:
                raise self._vf_error(errno.EOPNOTSUPP, pf, vf, "spoofchk")
            state.spoofchk = on

    def set_vf_trust(self, pf: str, vf: int, on: bool) -> None:
        """Turn trusted mode on or off."""
        with self._lock:
            state, rules, _ = self._vf_request(pf, vf, "trust")
            if not rules.trust:
                raise self._vf_error(errno.EOPNOTSUPP, pf, vf, "trust")
            state.trust = on

    def set_vf_link_state(self, pf: str, vf: int, state: VfLinkState) -> None:
        """Set the link state."""
        with self._lock:
            vf_state, rules, _ = self._vf_request(pf, vf, "link_state")
            if not rules.link_state:
                raise self._vf_error(errno.EOPNOTSUPP, pf, vf, "link_state")
            vf_state.link_state = state

    def set_vf_query_rss(self, pf: str, vf: int, on: bool) -> None:
        """Allow or forbid RSS queries."""
        with self._lock:
            state, rules, _ = self._vf_request(pf, vf, "query_rss")
            if not rules.query_rss:
                raise self._vf_error(errno.EOPNOTSUPP, pf, vf, "query_rss")
            state.query_rss = on

    # -- NetlinkBackend: links -----------------------------------------------------------

    def get_link(self, name: str, netns: NetnsRef | None = None) -> LinkInfo:
        """Look a link up by name (one request)."""
        with self._lock:
            self._request("get_link", name, "look up", name)
            return self._info(self._by_name(self._ns(netns, "look up"), name, "look up"))

    def links(self, netns: NetnsRef | None = None) -> tuple[LinkInfo, ...]:
        """Every link in *netns* (one request)."""
        with self._lock:
            self._request("dump_links", "", "list links", "namespace")
            key = self._ns(netns, "list links")
            return tuple(self._info(link) for link in sorted(self._in(key), key=lambda x: x.index))

    def set_link(
        self,
        index: int,
        netns: NetnsRef | None = None,
        *,
        mac: str | None = None,
        mtu: int | None = None,
        up: bool | None = None,
    ) -> None:
        """Change MAC, MTU and the up flag, in the kernel's order (MAC, MTU, flags)."""
        with self._lock:
            device = f"ifindex {index}"
            self._request("set_link", device, "set link", device)
            link = self._by_index(self._ns(netns, "set link"), index, "set link")
            if mac is not None:
                if int(mac[:2], 16) & 1 or mac == ZERO_MAC:
                    raise kernel_error(errno.EADDRNOTAVAIL, f"set mac {mac}", link.name)
                vf = self._vf_of(link)
                if (
                    vf is not None
                    and vf[1].admin_mac
                    and not vf[1].trust
                    and vf[0].admin_mac_locks_vf
                ):
                    raise kernel_error(
                        errno.EADDRNOTAVAIL,
                        f"set mac {mac}",
                        link.name,
                        detail="the VF's MAC is set administratively",
                    )
                if vf is not None and vf[0].reports_own_mac and not vf[1].admin_mac:
                    vf[1].mac = mac
                link.mac = mac
            if mtu is not None:
                highest = 65535 if link.virtual else self._vf_rules(link).vf_max_mtu
                if not _MIN_MTU <= mtu <= highest:
                    raise kernel_error(errno.EINVAL, f"set mtu {mtu}", link.name)
                link.mtu = mtu
            if up is not None:
                if link.up and not up:
                    link.routes.clear()
                    link.addresses = [a for a in link.addresses if a.version == 4]
                link.up = up
            self._sync(link)

    def rename_link(self, index: int, name: str, netns: NetnsRef | None = None) -> None:
        """Rename: EBUSY while up, EEXIST when the name is taken."""
        with self._lock:
            device = f"ifindex {index}"
            self._request("rename_link", name, f"rename to {name!r}", device)
            key = self._ns(netns, "rename")
            link = self._by_index(key, index, "rename")
            if name == link.name:
                return
            if link.up:
                raise kernel_error(errno.EBUSY, f"rename to {name!r}", link.name)
            if self._taken(key, name):
                raise kernel_error(errno.EEXIST, f"rename to {name!r}", link.name)
            self._rename(link, name)

    def move_link(
        self,
        index: int,
        name: str,
        *,
        netns: NetnsRef | None = None,
        target: NetnsRef | None = None,
    ) -> None:
        """Move into *target* and rename there, with the kernel's collision rules."""
        with self._lock:
            device = f"ifindex {index}"
            operation = f"move as {name!r}"
            self._request("move_link", name, operation, device)
            source = self._ns(netns, operation)
            link = self._by_index(source, index, operation)
            into = self._ns(target, operation)
            if into == source:
                raise kernel_error(errno.EINVAL, operation, link.name)
            if self._taken(into, link.name) and self._taken(into, name):
                raise kernel_error(errno.EEXIST, operation, link.name)
            if any(self._taken(into, alt) for alt in link.altnames):
                raise kernel_error(
                    errno.EEXIST, operation, link.name, detail="an altname is taken in the target"
                )
            name = self._free_name(into, name)
            current = name if self._taken(into, link.name) else link.name
            if source == self._home:
                self._leave_host(link)
            link.ns, link.up, link.name = into, False, current
            link.flush()
            if into == self._home:
                self._enter_host(link)
            if name != link.name:
                if self._taken(into, name):
                    # moved, but the rename in the target failed: it stays under its name
                    raise kernel_error(errno.EEXIST, operation, link.name)
                self._rename(link, name)

    def delete_altname(self, index: int, altname: str, netns: NetnsRef | None = None) -> None:
        """Drop an altname (ENOENT if the link has none by that name)."""
        with self._lock:
            device = f"ifindex {index}"
            self._request("del_altname", altname, f"delete altname {altname!r}", device)
            link = self._by_index(self._ns(netns, "delete altname"), index, "delete altname")
            if altname not in link.altnames:
                raise kernel_error(errno.ENOENT, f"delete altname {altname!r}", link.name)
            link.altnames.remove(altname)

    def add_altname(self, index: int, altname: str, netns: NetnsRef | None = None) -> None:
        """Give a link an altname, as udev or a distribution kernel does on rename (a test
        helper; not counted)."""
        with self._lock:
            key = self._ns(netns, "add altname")
            link = self._by_index(key, index, "add altname")
            if self._taken(key, altname):
                raise kernel_error(errno.EEXIST, f"add altname {altname!r}", link.name)
            link.altnames.append(altname)

    # -- NetlinkBackend: addresses, routes, sysctls ------------------------------------

    def add_address(
        self,
        index: int,
        address: IpInterface,
        netns: NetnsRef | None = None,
        *,
        replace: bool = False,
    ) -> None:
        """Add an address: ENODEV without the link, EEXIST when it is there already
        (unless *replace*: then it is updated)."""
        with self._lock:
            operation, device = f"add address {address}", f"ifindex {index}"
            self._request("add_addr", str(address), operation, device)
            link = self._by_index(self._ns(netns, operation), index, operation)
            for i, present in enumerate(link.addresses):
                if _same_address(present, address):
                    if not replace:
                        raise kernel_error(errno.EEXIST, operation, link.name)
                    link.addresses[i] = address
                    return
            link.addresses.append(address)

    def addresses(self, index: int, netns: NetnsRef | None = None) -> tuple[IpInterface, ...]:
        """The link's addresses, IPv4 first (one request; none for a missing link, as
        a dump has no error for that)."""
        with self._lock:
            self._request("dump_addr", "", "list addresses", f"ifindex {index}")
            link = self._links.get(index)
            if link is None or link.ns != self._ns(netns, "list addresses"):
                return ()
            return tuple(sorted(link.addresses, key=lambda a: a.version))

    def add_route(self, index: int, route: Route, netns: NetnsRef | None = None) -> None:
        """Add a route under the kernel's rules (see the module documentation)."""
        with self._lock:
            operation, device = f"add route {route}", f"ifindex {index}"
            self._request("add_route", str(route), operation, device)
            link = self._by_index(self._ns(netns, operation), index, operation)
            gateway = route.gateway
            if gateway is None or (gateway.version == 6 and gateway.is_link_local):
                if not link.up:
                    raise kernel_error(errno.ENETDOWN, operation, link.name)
            elif gateway.version == 4 and route.effective_scope >= RT_SCOPE_LINK:
                raise kernel_error(
                    errno.ENETUNREACH, operation, link.name, detail="a gateway needs a wider scope"
                )
            elif not link.on_link(gateway):
                code = errno.ENETUNREACH if gateway.version == 4 else errno.EHOSTUNREACH
                raise kernel_error(code, operation, link.name, detail="gateway not on-link")
            entry = attrs.evolve(route, scope=route.effective_scope)
            if entry in link.routes:
                raise kernel_error(errno.EEXIST, operation, link.name)
            link.routes.append(entry)

    def routes(
        self, index: int, netns: NetnsRef | None = None, *, table: int = RT_TABLE_MAIN
    ) -> tuple[Route, ...]:
        """The routes through the link in *table*, its prefix routes included (one
        request), IPv4 first."""
        with self._lock:
            self._request("dump_route", "", "list routes", f"ifindex {index}")
            link = self._links.get(index)
            if link is None or link.ns != self._ns(netns, "list routes"):
                return ()
            found = [r for r in link.prefix_routes() if r.table == table] + [
                Route(r.dst, r.gateway, table=r.table) for r in link.routes if r.table == table
            ]
            return tuple(sorted(found, key=lambda r: r.dst.version))

    def set_link_sysctl(
        self, name: str, key: LinkSysctl, value: int, netns: NetnsRef | None = None
    ) -> None:
        """Set a per-interface sysctl: ENOENT without the link (not a netlink request:
        not counted, but ``fail("sysctl", ...)`` applies)."""
        with self._lock:
            operation = f"set {key} to {value}"
            if not name or "/" in name or name in (".", "..") or key not in LINK_SYSCTLS:
                raise kernel_error(errno.EINVAL, operation, repr(name))
            self._inject("sysctl", key, operation, name)
            key_ns = self._ns(netns, operation)
            link = next((x for x in self._in(key_ns) if x.name == name), None)
            if link is None:
                raise kernel_error(errno.ENOENT, operation, name)
            link.sysctls[key] = int(value)

    def eswitch_mode(self, pci_address: str) -> str | None:
        """``switchdev`` for a PF with a switch id, ``legacy`` otherwise; None for
        drivers without devlink (igb) and for unknown devices."""
        with self._lock:
            self._request("devlink", pci_address, "read eswitch mode", pci_address)
            device = self.fs.sys / "bus/pci/devices" / pci_address
            if not (device / "sriov_totalvfs").exists():
                return None
            driver = _basename(device / "driver")
            if not self.rules.get(driver or "", PERMISSIVE).devlink:
                return None
            if pci_address in self._eswitch:
                return self._eswitch[pci_address]
            switchdev = any(device.glob("net/*/phys_switch_id"))
            return "switchdev" if switchdev else "legacy"

    def set_eswitch_mode(self, pci_address: str, mode: str) -> None:
        """Set the eswitch mode under the driver's rules: EOPNOTSUPP without devlink,
        EBUSY with VFs (ice) or with a VF bound to a driver on the way to switchdev
        (mlx5). Representors are not made up."""
        with self._lock:
            operation = f"set eswitch mode {mode}"
            self._request("devlink_set", pci_address, operation, pci_address)
            device = self.fs.sys / "bus/pci/devices" / pci_address
            if mode not in ("legacy", "switchdev") or not device.exists():
                raise kernel_error(errno.EINVAL, operation, pci_address)
            rules = self.rules.get(_basename(device / "driver") or "", PERMISSIVE)
            if not (device / "sriov_totalvfs").exists() or not rules.devlink:
                raise kernel_error(errno.EOPNOTSUPP, operation, pci_address)
            if self.eswitch_mode(pci_address) == mode:
                return
            vfs = [(device / f"virtfn{i}") for i in range(int(_read(device / "sriov_numvfs") or 0))]
            if rules.eswitch_needs_no_vfs and vfs:
                raise kernel_error(errno.EBUSY, operation, pci_address, detail="VFs exist")
            bound = [vf for vf in vfs if (vf / "driver").exists()]
            if rules.eswitch_needs_unbound_vfs and mode == "switchdev" and bound:
                raise kernel_error(errno.EBUSY, operation, pci_address, detail="VFs bound")
            self._eswitch[pci_address] = mode

    def watch(self) -> FakeEvents:
        """Events on every change of a link or a device this fake makes (as the kernel
        sends rtnetlink and uevent messages), and on :meth:`set_carrier`."""
        events = FakeEvents(self._unwatch)
        with self._lock:
            self._watchers.append(events)
        return events

    def _unwatch(self, events: FakeEvents) -> None:
        with self._lock:
            if events in self._watchers:
                self._watchers.remove(events)

    def _notify(self) -> None:
        with self._lock:
            for events in self._watchers:
                events.fire()

    def forget_namespaces(self) -> None:
        """Nothing to close in the fake."""

    def close(self) -> None:
        """Stop pending delayed netdevs."""
        for timer in self._timers:
            timer.cancel()

    # -- internals ----------------------------------------------------------------------

    def _request(self, kind: str, detail: str, operation: str, device: str) -> None:
        self.requests[kind] += 1
        self._inject(kind, detail, operation, device)

    def _inject(self, kind: str, detail: str, operation: str, device: str) -> None:
        for failure in self._failures:
            if failure.kind == kind and failure.times > 0 and failure.match(detail):
                failure.times -= 1
                raise kernel_error(failure.code, operation, device, detail="injected")

    def _vf_request(self, pf: str, vf: int, knob: str) -> tuple[_Vf, DriverRules, _Link]:
        self._request("set_vf", knob, f"set VF {knob}", f"{pf} vf {vf}")
        address = self._pf(pf, f"set VF {knob}")
        vfs = self._vfs.get(address, [])
        if not 0 <= vf < len(vfs):
            raise self._vf_error(errno.EINVAL, pf, vf, knob)
        link = self._by_name(self._home, pf, f"set VF {knob}")
        return vfs[vf], self._rules_of(address), link

    def _vf_error(self, code: int, pf: str, vf: int, knob: str) -> KernelError:
        return kernel_error(code, f"set VF {knob}", f"{pf} vf {vf}", knob=knob)

    def _pf(self, name: str, operation: str) -> PciAddress:
        link = self._by_name(self._home, name, operation)
        if link.parent is None or not (self._device(link.parent) / "sriov_totalvfs").exists():
            raise kernel_error(errno.EOPNOTSUPP, operation, name, detail="not an SR-IOV PF")
        return PciAddress.parse(link.parent)

    def _rules_of(self, pf: PciAddress) -> DriverRules:
        driver = _basename(self._device(str(pf)) / "driver")
        return self.rules.get(driver or "", PERMISSIVE)

    def _vf_rules(self, link: _Link) -> DriverRules:
        physfn = self._device(link.parent or "") / "physfn"
        if link.parent is None or not physfn.exists():
            return PERMISSIVE
        return self._rules_of(PciAddress.parse(physfn.resolve().name))

    def _vf_of(self, link: _Link) -> tuple[DriverRules, _Vf] | None:
        """The PF driver's rules and the VF record behind a VF netdev (None otherwise)."""
        if link.parent is None:
            return None
        physfn = self._device(link.parent) / "physfn"
        if not physfn.exists():
            return None
        pf = PciAddress.parse(physfn.resolve().name)
        for entry in physfn.resolve().glob("virtfn*"):
            if entry.resolve().name == link.parent:
                return self._rules_of(pf), self._vfs[pf][int(entry.name[6:])]
        return None

    def _state(self, pf: PciAddress, index: int) -> VfState:
        vf = self._vfs[pf][index]
        rules = self._rules_of(pf)
        return VfState(
            index=index,
            mac=vf.mac,
            vlan=vf.vlan,
            qos=vf.qos,
            vlan_proto=vf.proto,
            spoofchk=vf.spoofchk,
            trust=vf.trust,
            link_state=vf.link_state,
            min_tx_rate=vf.min_tx_rate,
            max_tx_rate=vf.max_tx_rate,
            query_rss=vf.query_rss if rules.reports_query_rss else None,
        )

    def _info(self, link: _Link) -> LinkInfo:
        """The link as netlink reports it; carrier as its ``carrier`` file says, for a
        PCI netdev in the host namespace that has one (:meth:`set_carrier`)."""
        carrier = None
        if link.parent is not None and link.ns == self._home:
            text = _read(self._device(link.parent) / "net" / link.name / "carrier")
            carrier = None if text is None else text == "1"
        return _info(link, carrier)

    def _carrier(self, link: _Link) -> bool:
        path = self._device(link.parent or "") / "net" / link.name / "carrier"
        try:
            return path.read_text().strip() == "1"
        except OSError:
            return False

    def _ns(self, ref: NetnsRef | None, operation: str) -> tuple[int, int]:
        if ref is None:
            return self._home
        try:
            key = _key(ref)
        except OSError as e:
            where = f"fd {ref}" if isinstance(ref, int) else os.fspath(ref)
            raise kernel_error(e.errno or errno.ENOENT, "open network namespace", where) from None
        if key not in self._namespaces:
            raise kernel_error(
                errno.EINVAL,
                "enter network namespace",
                str(ref),
                detail=f"not a namespace ({operation})",
            )
        return key

    def _in(self, key: tuple[int, int]) -> list[_Link]:
        return [link for link in self._links.values() if link.ns == key]

    def _taken(self, key: tuple[int, int], name: str) -> bool:
        return any(link.name == name or name in link.altnames for link in self._in(key))

    def _by_name(self, key: tuple[int, int], name: str, operation: str) -> _Link:
        for link in self._in(key):
            if link.name == name:
                return link
        raise kernel_error(errno.ENODEV, operation, name)

    def _by_index(self, key: tuple[int, int], index: int, operation: str) -> _Link:
        link = self._links.get(index)
        if link is None or link.ns != key:
            raise kernel_error(errno.ENODEV, operation, f"ifindex {index}")
        return link

    def _free_name(self, key: tuple[int, int], name: str) -> str:
        """*name*, or for a pattern such as ``dev%d`` the first free name it gives."""
        if "%d" not in name:
            return name
        return next(
            candidate
            for candidate in (name.replace("%d", str(n), 1) for n in range(1 << 16))
            if not self._taken(key, candidate)
        )

    def _new_index(self) -> int:
        index = self._next_index
        self._next_index += 1
        return index

    def _device(self, address: str) -> Path:
        return self.fs.sys / "bus/pci/devices" / address

    # sysfs bookkeeping: a link in the host namespace has its directory in the tree

    def _load(self) -> None:
        class_net = self.fs.sys / "class/net"
        for entry in sorted(class_net.iterdir()):
            net = entry.resolve()
            device = net / "device"
            parent = device.resolve().name if device.exists() else None
            up = _read(net / "operstate") == "up"
            self._adopt(net, parent, up=up)
        for device in sorted((self.fs.sys / "bus/pci/devices").iterdir()):
            if (device / "sriov_totalvfs").exists():
                count = int((device / "sriov_numvfs").read_text())
                self._vfs[PciAddress.parse(device.name)] = [_Vf() for _ in range(count)]
                for net in device.glob("net/*"):
                    if not (net / "carrier").exists():
                        _write(net / "carrier", "1")

    def _adopt(self, net: Path, parent: str | None, *, up: bool) -> _Link:
        link = _Link(
            index=self._new_index(),
            name=net.name,
            mac=_read(net / "address") or ZERO_MAC,
            mtu=int(_read(net / "mtu") or 1500),
            up=up,
            ns=self._home,
            parent=parent,
            virtual=parent is None,
        )
        self._links[link.index] = link
        self._sync(link)
        return link

    def _sysfs_dir(self, link: _Link) -> Path:
        if link.parent is None:
            return self.fs.sys / "devices/virtual/net" / link.name
        return self._device(link.parent).resolve() / "net" / link.name

    def _sync(self, link: _Link) -> None:
        if link.ns == self._home and link.stash is None:
            self._write_attrs(link, self._sysfs_dir(link))
        self._notify()

    def _write_attrs(self, link: _Link, path: Path) -> None:
        if path.is_dir():
            _write(path / "address", link.mac)
            _write(path / "mtu", str(link.mtu))
            _write(path / "operstate", "up" if link.up else "down")

    def _leave_host(self, link: _Link) -> None:
        path = self._sysfs_dir(link)
        (self.fs.sys / "class/net" / link.name).unlink(missing_ok=True)
        link.stash = self._stash / f"link{link.index}"
        if link.stash.exists():
            shutil.rmtree(link.stash)
        if path.is_dir():
            shutil.move(path, link.stash)
        else:
            link.stash.mkdir()

    def _enter_host(self, link: _Link) -> None:
        link.ns = self._home
        path = self._sysfs_dir(link)
        path.parent.mkdir(parents=True, exist_ok=True)
        if link.stash is not None and link.stash.is_dir():
            shutil.move(link.stash, path)
        else:
            path.mkdir()
        link.stash = None
        (self.fs.sys / "class/net" / link.name).symlink_to(
            os.path.relpath(path, self.fs.sys / "class/net")
        )
        self._sync(link)

    def _rename(self, link: _Link, name: str) -> None:
        name = self._free_name(link.ns, name)
        if self.altname_on_rename and not self._taken(link.ns, name):
            link.altnames.append(link.name)
        if link.ns == self._home:
            self._leave_host(link)
            link.name = name
            self._enter_host(link)
        else:
            link.name = name

    def _destroy(self, link: _Link) -> None:
        self._notify()
        if link.parent is not None:
            self._last_mac[link.parent] = link.mac
        if link.ns == self._home:
            self._leave_host(link)
        if link.stash is not None and link.stash.exists():
            shutil.rmtree(link.stash)
        del self._links[link.index]


def _same_address(present: IpInterface, new: IpInterface) -> bool:
    """Whether the kernel takes *new* for *present*: IPv4 by address and prefix length,
    IPv6 by address alone."""
    if present.version != new.version or present.ip != new.ip:
        return False
    return new.version == 6 or present.network.prefixlen == new.network.prefixlen


def _key(ref: NetnsRef | Path) -> tuple[int, int]:
    st = os.fstat(ref) if isinstance(ref, int) else os.stat(ref)
    return st.st_dev, st.st_ino


def _info(link: _Link, carrier: bool | None = None) -> LinkInfo:
    return LinkInfo(
        index=link.index,
        name=link.name,
        mac=link.mac,
        mtu=link.mtu,
        up=link.up,
        altnames=tuple(link.altnames),
        parent=link.parent,
        carrier=carrier,
    )


def _read(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _write(path: Path, text: str) -> None:
    path.write_text(text + "\n")


def _basename(link: Path) -> str | None:
    try:
        return os.path.basename(os.readlink(link))
    except OSError:
        return None


class FakeEvents:
    """:class:`~sriovlib.netlink.EventSource` of a :class:`FakeNetlink`."""

    def __init__(self, on_close: Callable[[FakeEvents], None]) -> None:
        self.missing: list[str] = []
        self._on_close = on_close
        self._event = threading.Event()
        self._closed = False

    def fire(self) -> None:
        self._event.set()

    def wait(self, timeout: float | None) -> bool:
        fired = self._event.wait(timeout)
        self._event.clear()
        return fired and not self._closed

    def close(self) -> None:
        self._closed = True
        self._on_close(self)
        self._event.set()


#: The :class:`~sriovlib.netlink.NetlinkBackend` methods about VFs (the PF's VF list).
VF_SETTINGS = frozenset(
    {
        "vf_states",
        "set_vf_mac",
        "set_vf_vlan",
        "set_vf_rate",
        "set_vf_spoofchk",
        "set_vf_trust",
        "set_vf_link_state",
        "set_vf_query_rss",
        "eswitch_mode",
    }
)


class VethKernel:
    """A backend for the kernel tier: links (veth pairs standing in for VF netdevs) from
    the real kernel, VF settings from the fake kernel, since a veth has no VFs.

    Use it as ``Host(fs.root, netlink=VethKernel(real, fake), sysfs_writer=fake)``.
    """

    def __init__(self, real: object, fake: FakeNetlink) -> None:
        self.real = real
        self.fake = fake

    def __getattr__(self, name: str) -> object:
        return getattr(self.fake if name in VF_SETTINGS else self.real, name)
