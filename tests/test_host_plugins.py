"""The Host carries out what the vendor plugins plan (on the fake kernel)."""

from __future__ import annotations

import errno
from pathlib import Path

import pytest

from sriovlib.exceptions import Busy, NotApplied
from sriovlib.host import Host, settings
from sriovlib.models import InvalidVfConfig, PciId, VfConfig, VfKnob
from sriovlib.netlink import InvalidValue, KernelError, Unsupported
from sriovlib.plugins import DeviceType, EswitchMode, PfMatch, VfLimit, hookimpl
from sriovlib.plugins.manager import BUILTINS, Plugins
from sriovlib.testing import FakeSysfs, add_nic_model
from sriovlib.testing.fakenetlink import FakeNetlink

GENERIC_ONLY = Plugins(entry_points=False, disabled=BUILTINS)
BUILT_INS = Plugins(entry_points=False)
MAC = "02:00:00:00:aa:01"


def kernel_with(tmp_path: Path, preset: str, num_vfs: int = 2) -> FakeNetlink:
    fs = FakeSysfs(tmp_path / "root")
    add_nic_model(fs, preset, bus=0x01, ports=1, netdev_prefix="pf")
    kernel = FakeNetlink(fs)
    kernel.host(poll_interval=0.001, plugins=GENERIC_ONLY).set_num_vfs("pf0", num_vfs)
    kernel.requests.clear()
    kernel.sysfs_writes.clear()
    return kernel


def host_of(kernel: FakeNetlink, plugins: Plugins = BUILT_INS) -> Host:
    return kernel.host(poll_interval=0.001, verify_timeout=0.05, plugins=plugins)


class TestMacReachesTheNetdev:
    def test_igb_rebinds_and_keeps_the_name(self, tmp_path: Path) -> None:
        """igb: the admin MAC reaches the bound netdev through a VF driver rebind."""
        kernel = kernel_with(tmp_path, "igb")
        host = host_of(kernel)
        vf = host.vfs("pf0")[1]
        host.configure_vf(vf, VfConfig(mac=MAC))
        after = host.vf(vf.address)
        assert (vf.netdev, MAC) == (after.netdev, kernel.link(after.netdev or "").mac)
        writes = [path.rsplit("/", 1)[1] for path, _ in kernel.sysfs_writes]
        assert ["unbind", "bind"] == writes

    def test_igb_probes_again_while_the_pf_resets(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A VF driver probed during a PF reset makes up a MAC: probe again until the
        admin MAC is on the netdev."""
        monkeypatch.setattr(settings, "REBIND_PAUSE", 0.001)
        kernel = kernel_with(tmp_path, "igb")
        host = host_of(kernel)
        vf = host.vfs("pf0")[1]
        kernel.reset_pf("pf0", probes=2)
        host.configure_vf(vf, VfConfig(mac=MAC))
        after = host.vf(vf.address)
        assert (vf.netdev, MAC) == (after.netdev, kernel.link(after.netdev or "").mac)
        writes = [path.rsplit("/", 1)[1] for path, _ in kernel.sysfs_writes]
        assert ["unbind", "bind"] * 3 == writes

    def test_igb_gives_up_on_a_pf_that_keeps_resetting(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """When every probe misses, the error says so and the admin MAC is rolled back."""
        monkeypatch.setattr(settings, "REBIND_PAUSE", 0.001)
        kernel = kernel_with(tmp_path, "igb")
        host = host_of(kernel)
        vf = host.vfs("pf0")[1]
        before = kernel.vf_state(vf.pf_address, 1)
        kernel.reset_pf("pf0", probes=100)
        with pytest.raises(NotApplied, match=f"mac of the VF netdev: asked {MAC}"):
            host.configure_vf(vf, VfConfig(mac=MAC))
        assert before == kernel.vf_state(vf.pf_address, 1)
        writes = [path.rsplit("/", 1)[1] for path, _ in kernel.sysfs_writes]
        assert settings.REBIND_ATTEMPTS * 2 == len(writes)

    def test_igb_without_its_plugin_fails_and_rolls_back(self, tmp_path: Path) -> None:
        """Without the igb plugin the netdev MAC set is refused (igb locks an admin MAC)
        and the admin MAC is rolled back: the quirk handling is what makes it work."""
        kernel = kernel_with(tmp_path, "igb")
        host = host_of(kernel, GENERIC_ONLY)
        vf = host.vfs("pf0")[1]
        before = kernel.vf_state(vf.pf_address, 1)
        with pytest.raises(KernelError) as caught:
            host.configure_vf(vf, VfConfig(mac=MAC))
        assert errno.EADDRNOTAVAIL == caught.value.errno
        assert before == kernel.vf_state(vf.pf_address, 1)

    def test_iavf_takes_it_by_itself(self, tmp_path: Path) -> None:
        """i40e: the plugin waits for iavf to show the MAC; no rebind, no netdev write."""
        kernel = kernel_with(tmp_path, "i40e")
        host = host_of(kernel)
        vf = host.vfs("pf0")[0]
        host.configure_vf(vf, VfConfig(mac=MAC))
        assert MAC == kernel.link(vf.netdev or "").mac
        assert [] == kernel.sysfs_writes
        assert 0 == kernel.requests["set_link"]

    def test_mlx5_sets_the_netdev_mac(self, tmp_path: Path) -> None:
        """mlx5: the plugin sets the same MAC on the VF netdev."""
        kernel = kernel_with(tmp_path, "mlx5")
        host = host_of(kernel)
        vf = host.vfs("pf0")[0]
        host.configure_vf(vf, VfConfig(mac=MAC))
        assert MAC == kernel.link(vf.netdev or "").mac
        assert 1 == kernel.requests["set_link"]


class TestVfLimits:
    def test_igb_limit_refuses_before_sysfs(self, tmp_path: Path) -> None:
        """An 82576 advertising 8 VFs gets 7 at most, refused with no sysfs write."""
        fs = FakeSysfs(tmp_path / "root")
        fs.add_pf(
            ids=PciId(0x8086, 0x10C9),
            driver="igb",
            vf_ids=PciId(0x8086, 0x10CA),
            vf_driver="igbvf",
            total_vfs=8,
            netdev="eth0",
        )
        kernel = FakeNetlink(fs)
        with pytest.raises(InvalidValue, match="igb driver allows at most 7") as caught:
            host_of(kernel).set_num_vfs("eth0", 8)
        assert errno.ERANGE == caught.value.errno
        assert [] == kernel.sysfs_writes
        host_of(kernel).set_num_vfs("eth0", 7)
        assert 7 == len(host_of(kernel).vfs("eth0"))

    def test_third_party_limit(self, tmp_path: Path) -> None:
        """A plugin's limit and its reason reach the caller."""

        class Tiny:
            @hookimpl
            def sriovlib_match_pf(self) -> PfMatch:
                return PfMatch.by_driver("ixgbe")

            @hookimpl
            def sriovlib_vf_limit(self) -> VfLimit:
                return VfLimit(3, "Tiny firmware has 3 VFs", "upgrade the firmware")

        kernel = kernel_with(tmp_path, "ixgbe", num_vfs=0)
        host = host_of(kernel, Plugins(entry_points=False, extra=[("tiny", Tiny())]))
        with pytest.raises(InvalidValue, match="Tiny firmware has 3 VFs; to raise it: upgrade"):
            host.set_num_vfs("pf0", 4)
        assert 3 == host.set_num_vfs("pf0", 3).after


class TestPlans:
    def test_mlx5_switchdev_in_the_plugins_order(self, tmp_path: Path) -> None:
        """mlx5 switchdev: VFs made in legacy, unbound, then the mode set through devlink
        (the fake refuses switchdev with a VF bound), then the VFs bound again."""
        kernel = kernel_with(tmp_path, "mlx5")
        host = host_of(kernel)
        change = host.set_num_vfs("pf0", 4, eswitch_mode=EswitchMode.SWITCHDEV)
        assert (0, 4) == change.writes
        assert EswitchMode.SWITCHDEV == host.eswitch_mode("pf0")
        assert all(vf.driver == "mlx5_core" for vf in host.vfs("pf0"))
        assert 1 == kernel.requests["devlink_set"]

    def test_mlx5_refuses_switchdev_with_bound_vfs(self, tmp_path: Path) -> None:
        """The fake kernel's rule the mlx5 order exists for."""
        kernel = kernel_with(tmp_path, "mlx5")
        with pytest.raises(Busy):
            kernel.set_eswitch_mode("0000:01:00.0", "switchdev")

    def test_ice_switchdev_only_without_vfs(self, tmp_path: Path) -> None:
        """ice: 0 VFs, then the mode, then the VFs; the fake refuses it with VFs."""
        kernel = kernel_with(tmp_path, "ice")
        with pytest.raises(Busy):
            kernel.set_eswitch_mode("0000:01:00.0", "switchdev")
        host = host_of(kernel)
        assert (0, 2) == host.set_num_vfs("pf0", 2, eswitch_mode=EswitchMode.SWITCHDEV).writes
        assert EswitchMode.SWITCHDEV == host.eswitch_mode("pf0")

    def test_switchdev_without_devlink_refused_before_any_write(self, tmp_path: Path) -> None:
        """igb has no devlink eswitch: switchdev is refused, nothing is touched."""
        kernel = kernel_with(tmp_path, "igb")
        with pytest.raises(Unsupported, match="no devlink eswitch"):
            host_of(kernel).set_num_vfs("pf0", 4, eswitch_mode=EswitchMode.SWITCHDEV)
        assert [] == kernel.sysfs_writes

    def test_generic_plan_goes_through_zero(self, tmp_path: Path) -> None:
        """2 -> 3 VFs is written as 0 then 3."""
        kernel = kernel_with(tmp_path, "ice")
        assert (0, 3) == host_of(kernel).set_num_vfs("pf0", 3).writes


class TestChecks:
    def test_82599_jumbo_refused_on_attach(self, tmp_path: Path) -> None:
        """An MTU of 9000 on an 82599 VF is refused while the PF has 1500."""
        kernel = kernel_with(tmp_path, "ixgbe")
        pod = kernel.add_netns("pod")
        host = host_of(kernel)
        with pytest.raises(InvalidVfConfig, match="82599"):
            host.attach(host.vfs("pf0")[0], pod, "net1", mtu=9000)
        assert 0 == kernel.requests["move_link"]

    def test_igb_link_state_refused_without_a_request(self, tmp_path: Path) -> None:
        """igb has no link state: refused by the plugin, not by a kernel round trip."""
        kernel = kernel_with(tmp_path, "igb")
        with pytest.raises(InvalidVfConfig, match="igb has no per-VF link state"):
            host_of(kernel).configure_vf(
                host_of(kernel).vfs("pf0")[0], VfConfig(link_state="disable")
            )
        assert 0 == sum(kernel.requests.values())


class TestRelease:
    def test_release_puts_back_only_what_the_plugin_allows(self, tmp_path: Path) -> None:
        """A plugin that cannot restore spoofchk keeps release from writing it."""

        class NoSpoofchkRestore:
            @hookimpl
            def sriovlib_match_pf(self) -> PfMatch:
                return PfMatch.by_driver("ice")

            @hookimpl
            def sriovlib_release_knobs(self, changed: frozenset[VfKnob]) -> frozenset[VfKnob]:
                return changed - {VfKnob.SPOOFCHK}

        kernel = kernel_with(tmp_path, "ice")
        host = host_of(kernel, Plugins(entry_points=False, extra=[("nsr", NoSpoofchkRestore())]))
        vf = host.vfs("pf0")[0]
        before = kernel.vf_state(vf.pf_address, 0)
        snapshot = host.attach(
            vf, kernel.add_netns("pod"), "net1", config=VfConfig(spoofchk=False, trust=True)
        )
        host.release(snapshot)
        after = kernel.vf_state(vf.pf_address, 0)
        assert (before.trust, False) == (after.trust, after.spoofchk)


class TestBindDriver:
    def test_vfio_and_back(self, tmp_path: Path) -> None:
        """A VF goes to vfio-pci for userspace and back to iavf for a netdev."""
        kernel = kernel_with(tmp_path, "i40e")
        kernel.fs.enable_iommu()  # vfio-pci takes only a function in an IOMMU group
        kernel.fs.load_driver("vfio-pci")
        host = host_of(kernel)
        vf = host.bind_driver(host.vfs("pf0")[1], DeviceType.VFIO)
        assert ("vfio-pci", None) == (vf.driver, vf.netdev)
        vf = host.bind_driver(vf, DeviceType.NETDEVICE)
        assert "iavf" == vf.driver
        assert vf.netdev is not None

    def test_mlx5_stays_on_mlx5_core(self, tmp_path: Path) -> None:
        """mlx5 DPDK keeps mlx5_core: nothing is unbound."""
        kernel = kernel_with(tmp_path, "mlx5")
        host = host_of(kernel)
        vf = host.bind_driver(host.vfs("pf0")[0], DeviceType.VFIO)
        assert "mlx5_core" == vf.driver
        assert [] == kernel.sysfs_writes
