"""Discovery from sysfs trees built like the kernel's."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sriovlib import DeviceNotFound, Host, LinkType, PciAddress, PciId
from sriovlib.testing import PRESETS, FakeSysfs, add_nic_model, build_example


class TestPresets:
    @pytest.mark.parametrize("preset", sorted(PRESETS))
    def test_pf_and_vf_ids_and_drivers(self, fake_sysfs: FakeSysfs, preset: str) -> None:
        """Every preset is discovered with its real ids, drivers and VF limit."""
        model = PRESETS[preset]
        add_nic_model(fake_sysfs, preset, bus=0x3B, num_vfs=3)
        inventory = Host(fake_sysfs.root).inventory()

        assert model.ports == len(inventory.pfs)
        for pf in inventory.pfs:
            assert (model.pf_ids, model.pf_driver) == (pf.ids, pf.driver)
            assert (model.total_vfs, 3) == (pf.total_vfs, pf.num_vfs)
            assert () == pf.problems
        assert 3 * model.ports == len(inventory.vfs)
        for vf in inventory.vfs:
            assert (model.vf_ids, model.vf_driver) == (vf.ids, vf.driver)
            assert vf.netdev is not None

    def test_igb_limit(self, fake_sysfs: FakeSysfs) -> None:
        """The 82576 preset caps at 7 VFs per port, as the igb driver does."""
        add_nic_model(fake_sysfs, "igb", bus=1, num_vfs=7, ports=1)
        (pf,) = Host(fake_sysfs.root).pfs()
        assert (PciId(0x8086, 0x10C9), 7, 7) == (pf.ids, pf.total_vfs, pf.num_vfs)


class TestDiscovery:
    def test_vf_index_address_and_parent(self, fake_sysfs: FakeSysfs) -> None:
        """VF indices come from the PF's virtfnN links, addresses follow offset/stride."""
        (pf0, pf1) = add_nic_model(fake_sysfs, "mlx5", bus=0x3B, num_vfs=4)
        host = Host(fake_sysfs.root)

        vfs = host.vfs("ens1f1")
        assert [0, 1, 2, 3] == [v.index for v in vfs]
        assert [pf1.vf_address(i) for i in range(4)] == [v.address for v in vfs]
        assert {pf1.address} == {v.pf_address for v in vfs}
        assert PciAddress.parse("0000:3b:00.2") == host.vfs(pf0.address.__str__())[0].address

    @pytest.mark.parametrize("damage", [None, "missing", "wrong"])
    def test_one_vf_read_by_address_knows_its_index(
        self, fake_sysfs: FakeSysfs, damage: str | None
    ) -> None:
        """A VF read alone gets the index of its virtfnN link, whether the PF's offset
        and stride lead straight to it or not (then every link is read)."""
        (pf,) = add_nic_model(fake_sysfs, "i40e", bus=0x5E, num_vfs=6, ports=1)
        pf_dir = fake_sysfs.root / "sys/bus/pci/devices" / str(pf.address)
        for name in ("sriov_offset", "sriov_stride"):
            if damage == "missing":
                (pf_dir / name).unlink()
            elif damage == "wrong":
                (pf_dir / name).write_text("3\n")
        host = Host(fake_sysfs.root)
        assert [0, 4, 5] == [host.vf(pf.vf_address(i)).index for i in (0, 4, 5)]
        assert () == host.vf(pf.vf_address(5)).problems

    def test_vfio_vf_has_no_netdev_but_iommu_group(self, fake_sysfs: FakeSysfs) -> None:
        """A VF bound to vfio-pci has no netdev and sits in an IOMMU group."""
        add_nic_model(fake_sysfs, "i40e", bus=0x5E, num_vfs=4, ports=1, vfio_vfs=[2])
        vfs = Host(fake_sysfs.root).vfs()
        assert ("vfio-pci", None) == (vfs[2].driver, vfs[2].netdev)
        assert vfs[2].iommu_group is not None
        assert "iavf" == vfs[1].driver
        assert (fake_sysfs.root / "dev/vfio" / str(vfs[2].iommu_group)).exists()

    def test_vf_away_in_pod_namespace(self, fake_sysfs: FakeSysfs) -> None:
        """A VF whose netdev moved into a pod namespace is found, without a netdev."""
        add_nic_model(fake_sysfs, "ice", bus=0x3B, num_vfs=2, ports=1, away_vfs=[0])
        vfs = Host(fake_sysfs.root).vfs()
        assert [None, "ens2f0v1"] == [v.netdev for v in vfs]

    def test_numa_node(self, fake_sysfs: FakeSysfs) -> None:
        """numa_node -1 means none; other values are kept."""
        add_nic_model(fake_sysfs, "ixgbe", bus=0x3B, num_vfs=1, ports=1, numa_node=1)
        add_nic_model(fake_sysfs, "igb", bus=0x5E, num_vfs=1, ports=1)
        host = Host(fake_sysfs.root)
        assert [1, None] == [pf.numa_node for pf in host.pfs()]
        assert [1, None] == [vf.numa_node for vf in host.vfs()]

    def test_infiniband_and_rdma(self, fake_sysfs: FakeSysfs) -> None:
        """An InfiniBand port reports its link type; mlx5 functions list RDMA devices."""
        add_nic_model(
            fake_sysfs, "mlx5", bus=0x3B, num_vfs=2, ports=1, link_type=LinkType.INFINIBAND
        )
        host = Host(fake_sysfs.root)
        (pf,) = host.pfs()
        assert (LinkType.INFINIBAND, ("ib0",)) == (pf.link_type, pf.netdevs)
        assert all(len(vf.rdma_devices) == 1 for vf in host.vfs())

    def test_switchdev_uplink(self, fake_sysfs: FakeSysfs) -> None:
        """An uplink in switchdev mode carries its switch id and port name."""
        add_nic_model(fake_sysfs, "mlx5", bus=0x3B, ports=1, switchdev=True)
        (pf,) = Host(fake_sysfs.root).pfs()
        assert pf.switchdev is not None
        assert "p0" == pf.switchdev.port_name

    def test_other_nics_and_virtual_netdevs(self) -> None:
        """A NIC without SR-IOV is listed apart; virtual interfaces have no device."""
        with tempfile.TemporaryDirectory() as root:
            build_example("no-sriov", root)
            host = Host(root)
            inventory = host.inventory()
            assert () == inventory.pfs
            assert [("eno1",)] == [n.netdevs for n in inventory.other_nics]
            assert ("cni0", "docker0", "veth1a2b3c4d") == host.sysfs.virtual_netdevs()

    def test_empty_root(self, tmp_path: Path) -> None:
        """A root without sys/ gives an empty inventory with one problem, not a crash."""
        inventory = Host(tmp_path).inventory()
        assert ((), ()) == (inventory.pfs, inventory.vfs)
        assert 1 == len(inventory.problems)


class TestProblems:
    def test_malformed_attribute_is_reported_on_the_device(self, fake_sysfs: FakeSysfs) -> None:
        """A malformed numa_node becomes a problem on that VF; the scan goes on."""
        (pf,) = add_nic_model(fake_sysfs, "igb", bus=1, num_vfs=3, ports=1)
        vf_dir = fake_sysfs.sys / "bus/pci/devices" / str(pf.vf_address(1))
        (vf_dir / "numa_node").write_text("garbage\n")
        vfs = Host(fake_sysfs.root).vfs()
        assert 3 == len(vfs)
        assert ("numa_node: malformed value 'garbage'",) == vfs[1].problems
        assert () == vfs[0].problems

    def test_unreadable_attribute_is_reported(self, fake_sysfs: FakeSysfs) -> None:
        """An attribute that cannot be read (here a directory) becomes a problem."""
        (pf,) = add_nic_model(fake_sysfs, "igb", bus=1, num_vfs=1, ports=1)
        numvfs = fake_sysfs.sys / "bus/pci/devices" / str(pf.address) / "sriov_numvfs"
        numvfs.unlink()
        numvfs.mkdir()
        (found,) = Host(fake_sysfs.root).pfs()
        assert any(p.startswith("sriov_numvfs:") for p in found.problems)

    def test_unreadable_class_skips_only_that_device(self, fake_sysfs: FakeSysfs) -> None:
        """A device whose class cannot be read is listed as a problem; others are found."""
        (pf,) = add_nic_model(fake_sysfs, "igb", bus=1, num_vfs=2, ports=1)
        cls = fake_sysfs.sys / "bus/pci/devices" / str(pf.vf_address(0)) / "class"
        cls.unlink()
        inventory = Host(fake_sysfs.root).inventory()
        assert 1 == len(inventory.vfs)
        assert 1 == len(inventory.problems)
        assert str(pf.vf_address(0)) in inventory.problems[0]


class TestHostLookups:
    def test_pf_by_name_and_address(self, fake_sysfs: FakeSysfs) -> None:
        """pf() accepts the netdev name, the full and the short PCI address."""
        add_nic_model(fake_sysfs, "i40e", bus=0x3B, ports=1)
        host = Host(fake_sysfs.root)
        assert host.pf("enp59s0f0") == host.pf("0000:3b:00.0") == host.pf("3b:00.0")

    def test_vf_by_address(self, fake_sysfs: FakeSysfs) -> None:
        """vf() reads one VF, with the same answer as a full scan."""
        add_nic_model(fake_sysfs, "ice", bus=0x3B, num_vfs=3, ports=1)
        host = Host(fake_sysfs.root)
        assert host.vfs()[2] == host.vf(host.vfs()[2].address)

    @pytest.mark.parametrize(
        ("wanted", "message"),
        [
            ("ens9f9", "no PF 'ens9f9'"),
            ("0000:99:00.0", "no PCI device '0000:99:00.0'"),
            ("docker0", "virtual interface"),
            ("eno1", "not an SR-IOV PF"),
            ("0000:3b:00.2", "VF 0 of 0000:3b:00.0"),
            ("../../etc", "invalid interface name"),
        ],
    )
    def test_pf_miss_names_what_was_asked(self, wanted: str, message: str) -> None:
        """A missed PF lookup raises DeviceNotFound saying what was asked for and why."""
        with tempfile.TemporaryDirectory() as root:
            build_example("i40e", root)
            with pytest.raises(DeviceNotFound, match=message.replace(".", r"\.")):
                Host(root).pf(wanted)

    def test_vf_miss(self, fake_sysfs: FakeSysfs) -> None:
        """vf() on a PF address explains that it is not a VF."""
        add_nic_model(fake_sysfs, "igb", bus=1, ports=1)
        with pytest.raises(DeviceNotFound, match="an SR-IOV PF"):
            Host(fake_sysfs.root).vf("0000:01:00.0")


@st.composite
def host_layouts(draw: st.DrawFn) -> list[tuple[str, int, int, list[int], list[int]]]:
    """Up to 3 NICs: (preset, ports, numvfs, vfio indices, away indices)."""
    layouts = []
    for _ in range(draw(st.integers(1, 3))):
        preset = draw(st.sampled_from(sorted(PRESETS)))
        num = draw(st.integers(0, min(PRESETS[preset].total_vfs, 8)))
        indices = st.lists(st.integers(0, max(num - 1, 0)), max_size=num, unique=True)
        layouts.append((preset, draw(st.integers(1, 2)), num, draw(indices), draw(indices)))
    return layouts


class TestGeneratedHosts:
    @settings(max_examples=40)
    @given(host_layouts())
    def test_invariants(self, layouts: list[tuple[str, int, int, list[int], list[int]]]) -> None:
        """Every VF's PF exists, indices are unique per PF, numvfs equals the VFs found."""
        with tempfile.TemporaryDirectory() as root:
            fs = FakeSysfs(root)
            for n, (preset, ports, num, vfio, away) in enumerate(layouts):
                add_nic_model(
                    fs,
                    preset,
                    bus=0x10 + 0x10 * n,
                    ports=ports,
                    num_vfs=num,
                    vfio_vfs=vfio,
                    away_vfs=away,
                    netdev_prefix=f"n{n}p",
                )
            inventory = Host(root).inventory()
            pfs = {pf.address: pf for pf in inventory.pfs}

            assert sum(ports for _, ports, *_ in layouts) == len(pfs)
            for vf in inventory.vfs:
                assert vf.pf_address in pfs
                assert () == vf.problems
            for address, pf in pfs.items():
                indices = [vf.index for vf in inventory.vfs if vf.pf_address == address]
                assert sorted(set(indices)) == sorted(indices)
                assert pf.num_vfs == len(indices)
                assert list(range(pf.num_vfs)) == sorted(indices)


class TestRealSysfs:
    def test_scan_of_this_machine_does_not_crash(self) -> None:
        """Scanning the real /sys returns an inventory whatever the hardware."""
        if not os.path.isdir("/sys/bus/pci/devices"):
            pytest.skip("no /sys/bus/pci on this machine")
        inventory = Host("/").inventory()
        assert all(vf.pf_address in {pf.address for pf in inventory.pfs} for vf in inventory.vfs)
