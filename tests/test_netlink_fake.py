"""The fake kernel (sriovlib.testing.fakenetlink) enforces the kernel's rules."""

from __future__ import annotations

import errno
import ipaddress
import os
from pathlib import Path

import pytest

from sriovlib.models import PciAddress, VfLinkState, VlanProto
from sriovlib.netlink import (
    Busy,
    InvalidValue,
    KernelError,
    KernelNotFound,
    Route,
    Unsupported,
)
from sriovlib.sysfs import Sysfs
from sriovlib.testing import FakeSysfs, add_nic_model
from sriovlib.testing.fakenetlink import PERMISSIVE, DriverRules, FakeNetlink

PF = PciAddress(0, 1, 0, 0)


def _kernel(
    tmp_path: Path, preset: str = "igb", num_vfs: int = 0, **options: object
) -> FakeNetlink:
    fs = FakeSysfs(tmp_path / "root")
    add_nic_model(fs, preset, bus=0x01, ports=1, num_vfs=num_vfs, netdev_prefix="pf")
    return FakeNetlink(fs, **options)  # type: ignore[arg-type]


def _numvfs(kernel: FakeNetlink) -> Path:
    return kernel.fs.sys / "bus/pci/devices" / str(PF) / "sriov_numvfs"


@pytest.fixture
def igb(tmp_path: Path) -> FakeNetlink:
    """A fake igb port ``pf0`` with 4 VFs ``pf0v0``..``pf0v3``."""
    kernel = _kernel(tmp_path)
    kernel.write(_numvfs(kernel), "4")
    return kernel


class TestNumVfs:
    """sriov_numvfs writes follow the kernel: only through 0, at most totalvfs."""

    def test_enable_creates_vfs_and_netdevs(self, tmp_path: Path) -> None:
        """Writing 4 creates 4 VFs with netdevs in sysfs and as links."""
        kernel = _kernel(tmp_path)
        kernel.write(_numvfs(kernel), "4")
        vfs = Sysfs(kernel.fs.root).vfs_of(PF)
        assert [vf.netdev for vf in vfs] == ["pf0v0", "pf0v1", "pf0v2", "pf0v3"]
        assert kernel.link_names() == ("pf0", "pf0v0", "pf0v1", "pf0v2", "pf0v3")
        assert len(kernel.vf_states("pf0")) == 4

    def test_nonzero_to_nonzero_is_ebusy(self, igb: FakeNetlink) -> None:
        """4 -> 2 is refused with EBUSY and changes nothing."""
        with pytest.raises(OSError, match="busy") as caught:
            igb.write(_numvfs(igb), "2")
        assert caught.value.errno == errno.EBUSY
        assert _numvfs(igb).read_text().strip() == "4"

    def test_above_totalvfs_is_erange(self, tmp_path: Path) -> None:
        """igb's totalvfs is 7: writing 8 is ERANGE."""
        kernel = _kernel(tmp_path)
        with pytest.raises(OSError, match="range") as caught:
            kernel.write(_numvfs(kernel), "8")
        assert caught.value.errno == errno.ERANGE

    def test_garbage_is_einval_and_same_value_is_a_no_op(self, igb: FakeNetlink) -> None:
        """A non-number is EINVAL; writing the current count succeeds without change."""
        with pytest.raises(OSError, match="Invalid argument") as caught:
            igb.write(_numvfs(igb), "four")
        assert caught.value.errno == errno.EINVAL
        before = igb.link("pf0v0").index
        igb.write(_numvfs(igb), "4")
        assert igb.link("pf0v0").index == before

    def test_going_through_zero_destroys_every_vf_netdev(self, igb: FakeNetlink) -> None:
        """4 -> 0 -> 2 leaves two fresh VFs, even if a VF netdev was in a namespace."""
        pod = igb.add_netns("pod")
        igb.move_link(igb.link("pf0v3").index, "net1", target=pod)
        igb.write(_numvfs(igb), "0")
        assert igb.link_names() == ("pf0",)
        assert igb.link_names(pod) == ()
        igb.write(_numvfs(igb), "2")
        assert igb.link_names() == ("pf0", "pf0v0", "pf0v1")

    def test_other_attributes_are_plain_writes(self, igb: FakeNetlink) -> None:
        """Other attributes are written as is; a missing one is ENOENT."""
        autoprobe = _numvfs(igb).parent / "sriov_drivers_autoprobe"
        igb.write(autoprobe, "0")
        assert autoprobe.read_text().strip() == "0"
        with pytest.raises(OSError, match="No such file") as caught:
            igb.write(_numvfs(igb).parent / "no_such_attribute", "1")
        assert caught.value.errno == errno.ENOENT

    def test_netdevs_can_appear_late(self, tmp_path: Path) -> None:
        """With netdev_delay the VF netdevs show up in sysfs only after the delay."""
        kernel = _kernel(tmp_path, netdev_delay=0.05)
        kernel.write(_numvfs(kernel), "2")
        assert [vf.netdev for vf in Sysfs(kernel.fs.root).vfs_of(PF)] == [None, None]
        kernel.wait_idle()
        assert [vf.netdev for vf in Sysfs(kernel.fs.root).vfs_of(PF)] == ["pf0v0", "pf0v1"]


class TestIgbVfSettings:
    """VF settings on igb behave as measured on the real driver."""

    def test_supported_settings_apply(self, igb: FakeNetlink) -> None:
        """mac, vlan+qos, spoofchk, trust and max_tx_rate are accepted and read back."""
        igb.set_vf_mac("pf0", 1, "02:00:00:00:00:01")
        igb.set_vf_vlan("pf0", 1, 10, 3, VlanProto.DOT1Q)
        igb.set_vf_spoofchk("pf0", 1, False)
        igb.set_vf_trust("pf0", 1, True)
        igb.set_vf_rate("pf0", 1, 0, 1000)
        state = igb.vf_states("pf0")[1]
        assert (state.mac, state.vlan, state.qos) == ("02:00:00:00:00:01", 10, 3)
        assert (state.spoofchk, state.trust, state.max_tx_rate) == (False, True, 1000)
        assert state.query_rss is None  # igb does not report it

    @pytest.mark.parametrize(
        ("call", "cls", "code"),
        [
            (
                lambda k: k.set_vf_link_state("pf0", 0, VfLinkState.ENABLE),
                Unsupported,
                errno.EOPNOTSUPP,
            ),
            (lambda k: k.set_vf_query_rss("pf0", 0, True), Unsupported, errno.EOPNOTSUPP),
            (
                lambda k: k.set_vf_vlan("pf0", 0, 5, 0, VlanProto.DOT1AD),
                Unsupported,
                errno.EPROTONOSUPPORT,
            ),
            (lambda k: k.set_vf_rate("pf0", 0, 10, 100), InvalidValue, errno.EINVAL),
            (lambda k: k.set_vf_rate("pf0", 0, 0, 1001), InvalidValue, errno.EINVAL),
            (
                lambda k: k.set_vf_vlan("pf0", 0, 4096, 0, VlanProto.DOT1Q),
                InvalidValue,
                errno.EINVAL,
            ),
            (lambda k: k.set_vf_mac("pf0", 0, "01:00:5e:00:00:01"), InvalidValue, errno.EINVAL),
            (lambda k: k.set_vf_trust("pf0", 9, True), InvalidValue, errno.EINVAL),
            (lambda k: k.set_vf_trust("nope", 0, True), KernelNotFound, errno.ENODEV),
        ],
    )
    def test_refusals(self, igb: FakeNetlink, call: object, cls: type, code: int) -> None:
        """What igb refuses is refused with igb's errno, and nothing changes."""
        before = igb.vf_states("pf0")
        with pytest.raises(cls) as caught:
            call(igb)  # type: ignore[operator]
        assert caught.value.errno == code
        assert igb.vf_states("pf0") == before

    def test_rates_need_carrier(self, igb: FakeNetlink) -> None:
        """Without PF carrier even clearing the rate is EINVAL, as on igb."""
        igb.set_carrier("pf0", False)
        with pytest.raises(InvalidValue):
            igb.set_vf_rate("pf0", 0, 0, 0)
        igb.set_carrier("pf0", True)
        igb.set_vf_rate("pf0", 0, 0, 0)

    def test_vf_own_mac_is_reported_until_an_admin_mac_is_set(self, igb: FakeNetlink) -> None:
        """igb reports the MAC a VF set for itself; an admin MAC wins; zero clears it."""
        vf0 = igb.link("pf0v0").index
        igb.set_link(vf0, mac="02:00:00:00:00:05")
        assert igb.vf_states("pf0")[0].mac == "02:00:00:00:00:05"
        igb.set_vf_mac("pf0", 0, "02:00:00:00:00:01")
        assert igb.vf_states("pf0")[0].mac == "02:00:00:00:00:01"
        igb.set_vf_mac("pf0", 0, "00:00:00:00:00:00")
        assert igb.vf_states("pf0")[0].mac == "00:00:00:00:00:00"

    def test_admin_mac_locks_the_vf_netdev_mac(self, igb: FakeNetlink) -> None:
        """After an admin MAC, igb refuses the VF's own MAC change unless it is trusted."""
        vf0 = igb.link("pf0v0").index
        igb.set_vf_mac("pf0", 0, "02:00:00:00:00:01")
        with pytest.raises(KernelError) as caught:
            igb.set_link(vf0, mac="02:00:00:00:00:02")
        assert caught.value.errno == errno.EADDRNOTAVAIL
        igb.set_vf_trust("pf0", 0, True)
        igb.set_link(vf0, mac="02:00:00:00:00:02")

    def test_locking_is_a_rule(self, tmp_path: Path) -> None:
        """A driver without admin_mac_locks_vf lets the VF change its MAC."""
        rules = {"igb": DriverRules("igb", admin_mac_locks_vf=False)}
        kernel = _kernel(tmp_path, rules=rules)
        kernel.write(_numvfs(kernel), "1")
        kernel.set_vf_mac("pf0", 0, "02:00:00:00:00:01")
        kernel.set_link(kernel.link("pf0v0").index, mac="02:00:00:00:00:02")

    def test_other_drivers_are_permissive(self, tmp_path: Path) -> None:
        """A driver without rules accepts every setting."""
        kernel = _kernel(tmp_path, preset="mlx5")
        kernel.write(kernel.fs.sys / "bus/pci/devices" / str(PF) / "sriov_numvfs", "1")
        kernel.set_vf_link_state("pf0", 0, VfLinkState.DISABLE)
        kernel.set_vf_rate("pf0", 0, 10, 20000)
        kernel.set_vf_vlan("pf0", 0, 5, 1, VlanProto.DOT1AD)
        kernel.set_vf_query_rss("pf0", 0, True)
        state = kernel.vf_states("pf0")[0]
        assert (state.link_state, state.min_tx_rate, state.vlan_proto, state.query_rss) == (
            VfLinkState.DISABLE,
            10,
            VlanProto.DOT1AD,
            True,
        )

    def test_rules_can_be_given(self, tmp_path: Path) -> None:
        """Vendor-plugin authors pass rules for their driver."""
        rules = {"mlx5_core": DriverRules("mlx5_core", trust=False)}
        kernel = _kernel(tmp_path, preset="mlx5", rules=rules)
        kernel.write(kernel.fs.sys / "bus/pci/devices" / str(PF) / "sriov_numvfs", "1")
        with pytest.raises(Unsupported):
            kernel.set_vf_trust("pf0", 0, True)
        assert PERMISSIVE.trust


class TestLinks:
    """Links have names unique per namespace, and move and rename as in the kernel."""

    def test_move_and_rename_in_one_request_ignores_host_names(self, igb: FakeNetlink) -> None:
        """A VF netdev becomes net1 in a namespace while the host has its own net1."""
        igb.add_link("net1")
        pod = igb.add_netns("pod")
        igb.move_link(igb.link("pf0v0").index, "net1", target=pod)
        assert igb.link_names(pod) == ("net1",)
        assert "pf0v0" not in igb.link_names()
        assert igb.link("net1").parent is None  # the host's own net1 is untouched
        vfs = Sysfs(igb.fs.root).vfs_of(PF)
        assert vfs[0].netdev is None  # sysfs no longer shows it on the host

    def test_move_fails_before_moving_when_both_names_are_taken(self, igb: FakeNetlink) -> None:
        """Current and new name both taken in the target: EEXIST, nothing moved."""
        pod = igb.add_netns("pod")
        igb.add_link("pf0v0", pod)
        igb.add_link("net1", pod)
        with pytest.raises(KernelError) as caught:
            igb.move_link(igb.link("pf0v0").index, "net1", target=pod)
        assert caught.value.errno == errno.EEXIST
        assert "pf0v0" in igb.link_names()

    def test_rename_failing_after_the_move_leaves_it_moved(self, igb: FakeNetlink) -> None:
        """Only the new name taken: the link moves under its old name, then EEXIST."""
        pod = igb.add_netns("pod")
        igb.add_link("net1", pod)
        with pytest.raises(KernelError):
            igb.move_link(igb.link("pf0v0").index, "net1", target=pod)
        assert "pf0v0" in igb.link_names(pod)

    def test_rename_rules(self, igb: FakeNetlink) -> None:
        """Renaming an up link is EBUSY (kernel 6.1); a taken name is EEXIST."""
        index = igb.link("pf0v0").index
        igb.set_link(index, up=True)
        with pytest.raises(Busy):
            igb.rename_link(index, "x0")
        igb.set_link(index, up=False)
        with pytest.raises(KernelError) as caught:
            igb.rename_link(index, "pf0v1")
        assert caught.value.errno == errno.EEXIST
        igb.rename_link(index, "x0")
        assert Sysfs(igb.fs.root).vfs_of(PF)[0].netdev == "x0"

    def test_altnames_count_as_names(self, igb: FakeNetlink) -> None:
        """An altname blocks the same name; it can be deleted once, then ENOENT."""
        index = igb.link("pf0v0").index
        igb.add_altname(index, "enp1s16")
        with pytest.raises(KernelError):
            igb.rename_link(igb.link("pf0v1").index, "enp1s16")
        igb.delete_altname(index, "enp1s16")
        with pytest.raises(KernelNotFound):
            igb.delete_altname(index, "enp1s16")

    def test_deleting_a_namespace_returns_physical_netdevs(self, igb: FakeNetlink) -> None:
        """A VF netdev comes back under its name, or devN if taken; veths die."""
        pod = igb.add_netns("pod")
        igb.move_link(igb.link("pf0v0").index, "net1", target=pod)
        igb.move_link(igb.link("pf0v1").index, "net2", target=pod)
        igb.add_link("veth0", pod)
        igb.add_link("net2")
        igb.delete_netns(pod)
        names = igb.link_names()
        assert "net1" in names
        assert any(name.startswith("dev") for name in names)
        assert "veth0" not in names
        assert not os.path.exists(pod)

    def test_mac_and_mtu_rules(self, igb: FakeNetlink) -> None:
        """A multicast MAC is EADDRNOTAVAIL; an MTU beyond the device's range is EINVAL."""
        index = igb.link("pf0v0").index
        with pytest.raises(KernelError) as caught:
            igb.set_link(index, mac="01:00:00:00:00:01")
        assert caught.value.errno == errno.EADDRNOTAVAIL
        with pytest.raises(InvalidValue):
            igb.set_link(index, mtu=67)
        igb.set_link(index, mac="02:00:00:00:00:09", mtu=9000)
        net = igb.fs.sys / "class/net/pf0v0"
        assert (net / "address").read_text().strip() == "02:00:00:00:00:09"
        assert (net / "mtu").read_text().strip() == "9000"

    def test_unknown_namespace(self, igb: FakeNetlink, tmp_path: Path) -> None:
        """A missing path is not found; a file that is no namespace is EINVAL."""
        with pytest.raises(KernelNotFound):
            igb.get_link("lo", str(tmp_path / "missing"))
        stray = tmp_path / "stray"
        stray.touch()
        with pytest.raises(InvalidValue):
            igb.get_link("lo", str(stray))

    def test_namespace_by_file_descriptor(self, igb: FakeNetlink) -> None:
        """A namespace can be given as an open fd, as for the real kernel."""
        pod = igb.add_netns("pod")
        fd = os.open(pod, os.O_RDONLY)
        try:
            igb.move_link(igb.link("pf0v0").index, "net1", target=fd)
            assert igb.get_link("net1", fd).name == "net1"
        finally:
            os.close(fd)

    def test_eswitch_mode(self, tmp_path: Path, igb: FakeNetlink) -> None:
        """igb has no devlink (None); other PFs answer legacy or switchdev."""
        assert igb.eswitch_mode(str(PF)) is None
        fs = FakeSysfs(tmp_path / "other")
        add_nic_model(fs, "mlx5", bus=0x3B, ports=1, switchdev=True)
        add_nic_model(fs, "i40e", bus=0x5E, ports=1)
        kernel = FakeNetlink(fs)
        assert kernel.eswitch_mode("0000:3b:00.0") == "switchdev"
        assert kernel.eswitch_mode("0000:5e:00.0") == "legacy"


class TestAddressesAndRoutes:
    """Addresses, routes and sysctls belong to a link in its namespace (the kernel tier's
    ``tests/kernel/test_addresses.py`` holds these rules against the real kernel)."""

    def _pod_link(self, igb: FakeNetlink) -> tuple[str, int]:
        pod = igb.add_netns("pod")
        igb.move_link(igb.link("pf0v0").index, "net1", target=pod)
        index = igb.link("net1", pod).index
        igb.set_link(index, pod, up=True)
        return pod, index

    def test_address_rules(self, igb: FakeNetlink) -> None:
        """EEXIST for the same address unless replaced; ENODEV without the link."""
        pod, index = self._pod_link(igb)
        igb.add_address(index, ipaddress.ip_interface("10.0.0.2/24"), pod)
        with pytest.raises(KernelError) as caught:
            igb.add_address(index, ipaddress.ip_interface("10.0.0.2/24"), pod)
        assert caught.value.errno == errno.EEXIST
        igb.add_address(index, ipaddress.ip_interface("10.0.0.2/24"), pod, replace=True)
        igb.add_address(index, ipaddress.ip_interface("fd00::2/64"), pod)
        with pytest.raises(KernelError, match="EEXIST"):
            igb.add_address(index, ipaddress.ip_interface("fd00::2/48"), pod)
        with pytest.raises(KernelNotFound):
            igb.add_address(index + 100, ipaddress.ip_interface("10.0.0.3/24"), pod)
        assert ("10.0.0.2/24", "fd00::2/64") == tuple(map(str, igb.addresses(index, pod)))
        assert () == igb.addresses(index, None)  # not in the host namespace

    def test_route_rules(self, igb: FakeNetlink) -> None:
        """On-link gateways only; the same route twice is EEXIST; the link must be up."""
        pod, index = self._pod_link(igb)
        igb.add_address(index, ipaddress.ip_interface("10.0.0.2/24"), pod)
        for route, code in (
            (Route("0.0.0.0/0", "10.9.0.1"), errno.ENETUNREACH),
            (Route("::/0", "fd00::1"), errno.EHOSTUNREACH),
        ):
            with pytest.raises(KernelError) as caught:
                igb.add_route(index, route, pod)
            assert caught.value.errno == code
        igb.add_route(index, Route("0.0.0.0/0", "10.0.0.1"), pod)
        with pytest.raises(KernelError, match="EEXIST"):
            igb.add_route(index, Route("0.0.0.0/0", "10.0.0.1"), pod)
        assert (Route("10.0.0.0/24"), Route("0.0.0.0/0", "10.0.0.1")) == igb.routes(index, pod)
        igb.set_link(index, pod, up=False)
        assert () == igb.routes(index, pod)
        with pytest.raises(KernelError, match="ENETDOWN"):
            igb.add_route(index, Route("10.1.0.0/16"), pod)

    def test_a_move_drops_addresses_routes_and_sysctls(self, igb: FakeNetlink) -> None:
        """Back on the host, the VF netdev has none of what the pod gave it."""
        pod, index = self._pod_link(igb)
        igb.add_address(index, ipaddress.ip_interface("10.0.0.2/24"), pod)
        igb.set_link_sysctl("net1", "ipv4.arp_notify", 1, pod)
        assert {"ipv4.arp_notify": 1} == igb.sysctls("net1", pod)
        with pytest.raises(KernelNotFound, match="ENOENT"):
            igb.set_link_sysctl("net2", "ipv4.arp_notify", 1, pod)
        igb.move_link(index, "pf0v0", netns=pod)
        home = igb.link("pf0v0").index
        assert ((), (), {}) == (igb.addresses(home), igb.routes(home), igb.sysctls("pf0v0"))

    def test_counted_and_injectable(self, igb: FakeNetlink) -> None:
        """Each call is a request of its kind (sysctls are files: not counted, but a
        failure can still be injected)."""
        pod, index = self._pod_link(igb)
        igb.requests.clear()
        igb.addresses(index, pod)
        igb.routes(index, pod)
        igb.set_link_sysctl("net1", "ipv6.ndisc_notify", 1, pod)
        assert {"dump_addr": 1, "dump_route": 1} == dict(igb.requests)
        igb.fail("sysctl", errno.EACCES)
        with pytest.raises(KernelError, match="EACCES"):
            igb.set_link_sysctl("net1", "ipv4.arp_notify", 1, pod)


class TestAccounting:
    """Requests are counted and failures can be injected."""

    def test_requests_are_counted_by_kind(self, igb: FakeNetlink) -> None:
        """Each call is one request of its kind; the test helpers are not counted."""
        igb.requests.clear()
        igb.vf_states("pf0")
        igb.get_link("pf0v0")
        igb.set_vf_trust("pf0", 0, True)
        igb.link("pf0v0")
        igb.vf_state(PF, 0)
        assert dict(igb.requests) == {"vf_list": 1, "get_link": 1, "set_vf": 1}

    def test_injected_failure_hits_the_matching_request_once(self, igb: FakeNetlink) -> None:
        """fail() makes the next matching request fail with the errno, then stops."""
        igb.fail("set_vf", errno.EBUSY, match="mac")
        igb.set_vf_trust("pf0", 0, True)  # does not match
        with pytest.raises(Busy, match="injected"):
            igb.set_vf_mac("pf0", 0, "02:00:00:00:00:01")
        igb.set_vf_mac("pf0", 0, "02:00:00:00:00:01")
