"""``sriovlib list``: tables and JSON on example hosts and generated trees."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from sriovlib import Host, PciId
from sriovlib.cli import main
from sriovlib.testing import EXAMPLES, FakeSysfs, add_nic_model, build_example

# names for the ids the tests use (a small pci.ids, so that names do not depend on the
# version of the system's database)
PCI_IDS = """\
15b3  Mellanox Technologies
\t1017  MT27800 Family [ConnectX-5]
\t1018  MT27800 Family [ConnectX-5 Virtual Function]
8086  Intel Corporation
\t1572  Ethernet Controller X710 for 10GbE SFP+
"""

PF_KEYS = {
    "name", "address", "netdevs", "vendor_id", "device_id", "vendor_name", "device_name",
    "driver", "numa_node", "iommu_group", "link_type", "total_vfs", "num_vfs",
    "vfs_without_netdev", "switchdev", "problems", "vfs",
}  # fmt: skip
VF_KEYS = {
    "index", "address", "pf_address", "vendor_id", "device_id", "vendor_name", "device_name",
    "driver", "netdev", "numa_node", "iommu_group", "rdma_devices", "problems",
}  # fmt: skip


@pytest.fixture
def pci_ids_file(tmp_path: Path) -> Path:
    """A small pci.ids naming the Mellanox and Intel NICs of the presets."""
    path = tmp_path / "pci.ids"
    path.write_text(PCI_IDS)
    return path


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str], monkeypatch: pytest.MonkeyPatch) -> Any:
    """Run ``sriovlib ARGS`` in-process with a wide terminal; return (status, out, err)."""
    monkeypatch.setenv("COLUMNS", "250")

    def run(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


class TestExamples:
    @pytest.mark.parametrize("example", sorted(EXAMPLES))
    def test_table(self, cli: Any, example: str) -> None:
        """Every example host lists its PFs (or says there are none) and exits 0."""
        status, out, err = cli("list", "--example", example)
        assert (0, "") == (status, err)
        if example == "no-sriov":
            assert "No SR-IOV physical functions" in out
        else:
            assert "SR-IOV physical functions" in out
            assert "PCI address" in out

    @pytest.mark.parametrize("example", sorted(EXAMPLES))
    def test_json(self, cli: Any, example: str, tmp_path: Path) -> None:
        """Every example host gives valid JSON whose PFs and VFs match discovery."""
        status, out, _ = cli("list", "--example", example, "--json")
        data = json.loads(out)
        build_example(example, tmp_path / "root")
        inventory = Host(tmp_path / "root").inventory()
        assert 0 == status
        assert 1 == data["schema"]
        assert [str(pf.address) for pf in inventory.pfs] == [pf["address"] for pf in data["pfs"]]
        assert len(inventory.vfs) == sum(len(pf["vfs"]) for pf in data["pfs"])
        for pf in data["pfs"]:
            assert PF_KEYS == set(pf)
            assert pf["num_vfs"] == len(pf["vfs"])
            assert list(range(pf["num_vfs"])) == [vf["index"] for vf in pf["vfs"]]
            for vf in pf["vfs"]:
                assert VF_KEYS == set(vf)
                assert pf["address"] == vf["pf_address"]

    @pytest.mark.parametrize("example", sorted(EXAMPLES))
    def test_verbose_json_is_the_same(self, cli: Any, example: str) -> None:
        """-v does not change the JSON: VFs are always nested in their PF."""
        _, plain, _ = cli("list", "--example", example, "--json")
        _, verbose, _ = cli("list", "--example", example, "--json", "-v")
        assert json.loads(plain) == json.loads(verbose)


class TestTable:
    def test_mixed_pf_table(self, cli: Any, pci_ids_file: Path) -> None:
        """The PF table shows names, driver, NUMA, link, VFs used/total and VFs away."""
        status, out, _ = cli("list", "--example", "mixed", "--pci-ids", str(pci_ids_file))
        rows = {line.split()[0]: line for line in out.splitlines() if line.startswith("en")}
        assert 0 == status
        assert ["ens1f0", "ens1f1", "enp59s0f0", "enp59s0f1"] == list(rows)
        mlx = [cell.strip() for cell in rows["ens1f0"].split("│")]
        assert [
            "ens1f0", "0000:3b:00.0", "Mellanox Technologies", "MT27800 Family [ConnectX-5]",
            "mlx5_core", "0", "ethernet", "4/16", "1",
        ] == mlx  # fmt: skip
        intel = [cell.strip() for cell in rows["enp59s0f1"].split("│")]
        assert ["i40e", "1", "ethernet", "8/64", "2"] == intel[4:]
        assert "Ethernet Controller X710 for 10GbE SFP+" == intel[3]
        assert "VFs of" not in out

    def test_verbose_vf_tables(self, cli: Any) -> None:
        """-v adds one VF table per PF with netdev or '-', driver, NUMA, IOMMU and RDMA."""
        status, out, _ = cli("list", "--example", "mixed", "-v")
        assert 0 == status
        for title in (
            "VFs of ens1f0 (0000:3b:00.0)",
            "VFs of ens1f1 (0000:3b:00.1)",
            "VFs of enp59s0f0 (0000:5e:00.0)",
            "VFs of enp59s0f1 (0000:5e:00.1)",
        ):
            assert title in out
        rows = [
            [cell.strip() for cell in line.split("│")] for line in out.splitlines() if "│" in line
        ]
        away = next(r for r in rows if r[1] == "0000:3b:00.3")
        assert ["1", "0000:3b:00.3", "-", "mlx5_core", "0"] == away[:5]
        assert away[6].startswith("mlx5_")
        vfio = next(r for r in rows if r[1] == "0000:5e:01.1")
        assert ["7", "0000:5e:01.1", "-", "vfio-pci", "1"] == vfio[:5]
        assert vfio[5].isdigit()
        assert "-" == vfio[6]
        kernel = next(r for r in rows if r[1] == "0000:5e:00.2")
        assert ["0", "0000:5e:00.2", "enp59s0f0v0", "iavf", "1"] == kernel[:5]

    def test_ids_when_names_unknown(self, cli: Any, tmp_path: Path) -> None:
        """Without a pci.ids, vendor and device fall back to their hex ids."""
        status, out, _ = cli("list", "--example", "igb", "--pci-ids", str(tmp_path / "none"))
        row = next(line for line in out.splitlines() if line.startswith("enp1s0f0"))
        cells = [cell.strip() for cell in row.split("│")]
        assert 0 == status
        assert ["8086", "10c9", "igb"] == cells[2:5]

    def test_infiniband_link(self, cli: Any) -> None:
        """An InfiniBand port shows link type infiniband."""
        _, out, _ = cli("list", "--example", "mlx5-ib")
        row = next(line for line in out.splitlines() if line.startswith("ib0"))
        assert "infiniband" == row.split("│")[6].strip()

    def test_pf_without_vfs_in_verbose(self, cli: Any) -> None:
        """-v on a PF without VFs says so instead of printing an empty table."""
        _, out, _ = cli("list", "--example", "ixgbe", "-v")
        assert "enp4s0f0 (0000:3b:00.0): no VFs enabled." in out
        assert "0/63" in out

    def test_problems_are_shown(self, cli: Any, fake_sysfs: FakeSysfs) -> None:
        """An attribute that cannot be parsed is listed under Problems, in text and JSON."""
        (pf,) = add_nic_model(fake_sysfs, "i40e", bus=0x5E, num_vfs=2, ports=1)
        pf_dir = (fake_sysfs.sys / "bus/pci/devices" / str(pf.address)).resolve()
        (pf_dir / "numa_node").write_text("banana\n")
        status, out, _ = cli("list", "--sysfs-root", str(fake_sysfs.root))
        _, js, _ = cli("list", "--sysfs-root", str(fake_sysfs.root), "--json")
        assert 0 == status
        assert "Problems:" in out
        assert "PF enp59s0f0 (0000:5e:00.0): numa_node: malformed value 'banana'" in out
        assert ["numa_node: malformed value 'banana'"] == json.loads(js)["pfs"][0]["problems"]


class TestNoPfs:
    def test_clear_line_and_exit_zero(self, cli: Any, fake_sysfs: FakeSysfs) -> None:
        """A node with only non-SR-IOV NICs prints one clear line and exits 0."""
        fake_sysfs.add_nic(ids=PciId(0x8086, 0x1533), driver="igb", netdev="eno1")
        fake_sysfs.add_virtual_netdev("docker0")
        status, out, err = cli("list", "--sysfs-root", str(fake_sysfs.root))
        expected = (
            "No SR-IOV physical functions on this node (1 network PCI function without "
            "SR-IOV). Run `sriovlib doctor` to see why.\n"
        )
        assert (0, expected, "") == (status, out, err)

    def test_empty_json(self, cli: Any, fake_sysfs: FakeSysfs) -> None:
        """A node without PFs gives an empty pfs list in JSON."""
        status, out, _ = cli("list", "--sysfs-root", str(fake_sysfs.root), "--json")
        assert (0, {"schema": 1, "pfs": [], "problems": []}) == (status, json.loads(out))


class TestGeneratedHosts:
    def test_json_fields(self, cli: Any, fake_sysfs: FakeSysfs, pci_ids_file: Path) -> None:
        """Every JSON field of a PF and its VFs carries the discovered value."""
        add_nic_model(fake_sysfs, "mlx5", bus=0x3B, num_vfs=2, numa_node=1, ports=1, away_vfs=[0])
        fake_sysfs.enable_iommu()
        status, out, _ = cli(
            "list", "--sysfs-root", str(fake_sysfs.root), "--json", "--pci-ids", str(pci_ids_file)
        )
        (pf,) = json.loads(out)["pfs"]
        assert 0 == status
        vfs = pf.pop("vfs")
        group = pf.pop("iommu_group")
        assert isinstance(group, int)
        assert {
            "name": "ens1f0",
            "address": "0000:3b:00.0",
            "netdevs": ["ens1f0"],
            "vendor_id": "15b3",
            "device_id": "1017",
            "vendor_name": "Mellanox Technologies",
            "device_name": "MT27800 Family [ConnectX-5]",
            "driver": "mlx5_core",
            "numa_node": 1,
            "link_type": "ethernet",
            "total_vfs": 16,
            "num_vfs": 2,
            "vfs_without_netdev": 1,
            "switchdev": None,
            "problems": [],
        } == pf
        assert [None, "ens1f0v1"] == [vf["netdev"] for vf in vfs]
        assert ["0000:3b:00.1", "0000:3b:00.2"] == [vf["address"] for vf in vfs]
        assert {"1018"} == {vf["device_id"] for vf in vfs}
        expected_name = "MT27800 Family [ConnectX-5 Virtual Function]"
        assert {expected_name} == {vf["device_name"] for vf in vfs}
        assert all(len(vf["rdma_devices"]) == 1 for vf in vfs)

    def test_switchdev(self, cli: Any, fake_sysfs: FakeSysfs) -> None:
        """A PF in switchdev mode reports its switch id and port name."""
        add_nic_model(fake_sysfs, "mlx5", bus=0x3B, ports=1, switchdev=True)
        _, out, _ = cli("list", "--sysfs-root", str(fake_sysfs.root), "--json")
        switchdev = json.loads(out)["pfs"][0]["switchdev"]
        assert {"switch_id", "port_name"} == set(switchdev)
        assert "p0" == switchdev["port_name"]

    def test_unknown_example(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown example name is a usage error naming the choices."""
        with pytest.raises(SystemExit) as exit_info:
            main(["list", "--example", "nope"])
        assert 2 == exit_info.value.code
        assert "invalid choice: 'nope' (choose from 'mlx5'" in capsys.readouterr().err


class TestConsoleScript:
    def test_list_example_json(self) -> None:
        """The installed ``sriovlib`` script prints valid JSON for the mlx5 example."""
        script = Path(sys.executable).with_name("sriovlib")
        executable = str(script) if script.exists() else shutil.which("sriovlib")
        if executable is None:
            pytest.skip("the sriovlib console script is not installed")
        result = subprocess.run(
            [executable, "list", "--example", "mlx5", "--json"],
            capture_output=True,
            text=True,
            check=False,
            timeout=60,
        )
        data = json.loads(result.stdout)
        assert (0, "") == (result.returncode, result.stderr)
        assert ["ens1f0", "ens1f1"] == [pf["name"] for pf in data["pfs"]]
        assert [4, 4] == [len(pf["vfs"]) for pf in data["pfs"]]
        assert [1, 1] == [pf["vfs_without_netdev"] for pf in data["pfs"]]
