"""``sriovlib list``: tables and JSON on example hosts and generated trees."""

from __future__ import annotations

import contextlib
import errno
import importlib
import json
import shutil
import subprocess
import sys
from collections.abc import Callable
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs
import pytest

from sriovlib import Host, PciId
from sriovlib.allocation import AllocationStore, Owner
from sriovlib.cli import main
from sriovlib.models import VfLinkState, VfState, VlanProto
from sriovlib.testing import EXAMPLES, PRESETS, FakeSysfs, add_nic_model, build_example
from sriovlib.testing.fakenetlink import DRIVER_RULES, PERMISSIVE, FakeNetlink

list_command = importlib.import_module("sriovlib.cli.list")

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
    "driver", "netdev", "numa_node", "iommu_group", "rdma_devices", "problems", "settings",
    "holder",
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


def tables(out: str) -> list[list[dict[str, str]]]:
    """Every table printed in *out*, each row as {column: cell}."""
    found: list[list[dict[str, str]]] = []
    header: list[str] = []
    for line in out.splitlines():
        if "┃" in line:
            header = [cell.strip() for cell in line.split("┃")]
            found.append([])
        elif "│" in line:
            cells = [cell.strip() for cell in line.split("│")]
            found[-1].append(dict(zip(header, cells, strict=True)))
    return found


def vf_rows(out: str) -> dict[str, dict[str, str]]:
    """The rows of every VF table in *out* (all tables after the PF table), by address."""
    return {row["PCI address"]: row for table in tables(out)[1:] for row in table}


def settings_of(state: VfState) -> dict[str, Any]:
    """A VF's state as ``--json`` carries it: its settings without the index."""
    return {k: v for k, v in state.to_dict().items() if k != "index"}


@pytest.fixture
def on_host(monkeypatch: pytest.MonkeyPatch) -> Callable[[Host], None]:
    """Make ``sriovlib list`` run on the given Host (one built on a fake kernel here)."""

    def use(host: Host) -> None:
        monkeypatch.setattr(list_command, "open_host", lambda _args: contextlib.nullcontext(host))

    return use


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
        """-v does not change the JSON: VFs are always nested in their PF, each with its
        settings and holder."""
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
        expected = {"schema": 1, "pfs": [], "problems": [], "notes": []}
        assert (0, expected) == (status, json.loads(out))


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


#: What VF 1 of every port is set to, as far as the preset's driver takes it.
MAC = "02:00:00:00:00:01"


def configure_vf1(kernel: FakeNetlink, pf: str, driver: str) -> None:
    """Set every setting the driver has on VF 1 of *pf*, through the fake kernel."""
    rules = DRIVER_RULES.get(driver, PERMISSIVE)
    kernel.set_carrier(pf, True)  # igb changes rates only with carrier
    kernel.set_vf_mac(pf, 1, MAC)
    proto = VlanProto.DOT1AD if rules.vlan_8021ad else VlanProto.DOT1Q
    kernel.set_vf_vlan(pf, 1, 100, 3, proto)
    kernel.set_vf_spoofchk(pf, 1, False)
    kernel.set_vf_trust(pf, 1, True)
    kernel.set_vf_rate(pf, 1, 10 if rules.min_tx_rate else 0, 200)
    if rules.link_state:
        kernel.set_vf_link_state(pf, 1, VfLinkState.DISABLE)
    if rules.query_rss:
        kernel.set_vf_query_rss(pf, 1, True)


class TestSettingsPerPreset:
    """-v on the fake kernel, one NIC model at a time (the kernel's per-driver rules)."""

    @pytest.fixture(params=sorted(PRESETS))
    def node(self, request: pytest.FixtureRequest, fake_sysfs: FakeSysfs) -> Any:
        """A dual-port card of the preset with 3 VFs per port, VF 1 of each configured,
        and a PF of the same model without VFs."""
        preset = request.param
        pfs = add_nic_model(fake_sysfs, preset, bus=0x3B, num_vfs=3, ports=2)
        add_nic_model(fake_sysfs, preset, bus=0x5E, ports=1, netdev_prefix="idle")
        kernel = FakeNetlink(fake_sysfs)
        for pf in pfs:
            configure_vf1(kernel, pf.netdev or "", PRESETS[preset].pf_driver)
        kernel.requests.clear()
        return preset, pfs, kernel

    def test_json_equals_the_kernel(self, cli: Any, on_host: Any, node: Any) -> None:
        """Every VF's JSON settings are what the kernel reports for it, read with one
        VF-list request per PF with VFs (none for the PF without)."""
        _, pfs, kernel = node
        on_host(kernel.host())
        status, out, _ = cli("list", "-v", "--json")
        data = json.loads(out)
        vfs = {vf["address"]: vf for pf in data["pfs"] for vf in pf["vfs"]}
        expected = {
            str(pf.vf_address(i)): settings_of(kernel.vf_state(pf.address, i))
            for pf in pfs
            for i in range(3)
        }
        assert 0 == status
        assert expected == {address: vf["settings"] for address, vf in vfs.items()}
        assert {"vf_list": 2} == dict(kernel.requests)

    def test_table_cells(self, cli: Any, on_host: Any, node: Any) -> None:
        """The configured VF's row shows each setting as the driver took it; a setting
        the driver does not report (igb: query_rss) is unknown."""
        preset, pfs, kernel = node
        on_host(kernel.host())
        status, out, _ = cli("list", "-v")
        row = vf_rows(out)[str(pfs[1].vf_address(1))]
        rules = DRIVER_RULES.get(PRESETS[preset].pf_driver, PERMISSIVE)
        assert 0 == status
        assert {
            "MAC": MAC,
            "VLAN": "100 qos 3 802.1ad" if rules.vlan_8021ad else "100 qos 3",
            "Spoofchk": "off",
            "Trust": "on",
            "Link state": "disable" if rules.link_state else "auto",
            "Min rate": "10" if rules.min_tx_rate else "0",
            "Max rate": "200",
            "Query RSS": ("on" if rules.query_rss else "off")
            if rules.reports_query_rss
            else "unknown",
        } == {column: row[column] for column in list_command.SETTINGS_COLUMNS}
        untouched = vf_rows(out)[str(pfs[1].vf_address(0))]
        assert ("-", "0", "0") == (untouched["VLAN"], untouched["Min rate"], untouched["Max rate"])
        assert {"vf_list": 2} == dict(kernel.requests)

    def test_without_verbose_no_netlink(self, cli: Any, on_host: Any, node: Any) -> None:
        """Plain `list` (no -v, no --json) asks netlink nothing."""
        _, _, kernel = node
        on_host(kernel.host())
        status, out, _ = cli("list")
        assert (0, {}) == (status, dict(kernel.requests))
        assert "VFs of" not in out


class _Unreporting(FakeNetlink):
    """A fake kernel whose driver reports neither spoofchk, trust, link state nor
    query_rss (the kernel's -1 / undefined values)."""

    def vf_states(self, pf: str) -> tuple[VfState, ...]:
        return tuple(
            attrs.evolve(s, spoofchk=None, trust=None, link_state=None, query_rss=None)
            for s in super().vf_states(pf)
        )


class TestUnknownSettings:
    def test_unknown_not_default(self, cli: Any, on_host: Any, fake_sysfs: FakeSysfs) -> None:
        """Settings the driver does not report are "unknown" in the table and null in
        JSON, never a default; the ones it reports are shown."""
        (pf,) = add_nic_model(fake_sysfs, "mlx5", bus=0x3B, num_vfs=1, ports=1)
        on_host(_Unreporting(fake_sysfs).host())
        _, out, _ = cli("list", "-v")
        _, js, _ = cli("list", "--json")
        row = vf_rows(out)[str(pf.vf_address(0))]
        (vf,) = json.loads(js)["pfs"][0]["vfs"]
        assert ["unknown"] * 4 == [row[c] for c in ("Spoofchk", "Trust", "Link state", "Query RSS")]
        assert ("00:00:00:00:00:00", "-") == (row["MAC"], row["VLAN"])
        assert {None} == {
            vf["settings"][k] for k in ("spoofchk", "trust", "link_state", "query_rss")
        }
        assert 0 == vf["settings"]["max_tx_rate"]


class TestNetlinkUnavailable:
    @pytest.fixture
    def no_kernel(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """The real kernel's backend cannot be made (as without netlink, in a sandbox)."""

        def refuse(*_args: object, **_kwargs: object) -> None:
            raise PermissionError(errno.EPERM, "Operation not permitted")

        monkeypatch.setattr("sriovlib.netlink.KernelNetlink", refuse)

    @pytest.mark.usefixtures("no_kernel")
    def test_sysfs_root_tree(self, cli: Any, fake_sysfs: FakeSysfs) -> None:
        """A --sysfs-root tree is never paired with this node's netlink: the VFs are
        listed from sysfs, and one line says why their settings are missing."""
        add_nic_model(fake_sysfs, "i40e", bus=0x5E, num_vfs=2, ports=2)
        root = str(fake_sysfs.root)
        status, out, err = cli("list", "-v", "--sysfs-root", root)
        _, js, _ = cli("list", "--json", "--sysfs-root", root)
        why = [line for line in out.splitlines() if "settings" in line]
        data = json.loads(js)
        assert (0, "") == (status, err)
        assert [
            f"VF settings not shown: sysfs is read from --sysfs-root {root}, and netlink can "
            "only ask this node's kernel (--example NAME runs on a fake kernel)."
        ] == why
        assert 4 == len(vf_rows(out))
        assert all("MAC" not in row for row in vf_rows(out).values())
        assert {None} == {vf["settings"] for pf in data["pfs"] for vf in pf["vfs"]}
        assert why[0] == data["notes"][0]

    @pytest.mark.usefixtures("no_kernel")
    def test_backend_cannot_be_made(self, fake_sysfs: FakeSysfs) -> None:
        """When netlink cannot be opened at all, one note says so for every PF."""
        add_nic_model(fake_sysfs, "i40e", bus=0x5E, num_vfs=2, ports=2)
        host = Host(fake_sysfs.root)
        details = list_command.read_details(host, host.inventory())
        assert (
            "VF settings not shown: netlink is unavailable: [Errno 1] Operation not permitted.",
            "VF holders not shown: no state directory was given.",
        ) == details.notes
        assert ({}, frozenset()) == (details.settings, details.read_pfs)

    def test_refused_request(self, cli: Any, on_host: Any, fake_sysfs: FakeSysfs) -> None:
        """A VF-list request the kernel refuses (EPERM) is one line; the next PF is not
        asked the same thing again."""
        add_nic_model(fake_sysfs, "i40e", bus=0x5E, num_vfs=2, ports=2)
        kernel = FakeNetlink(fake_sysfs)
        kernel.fail("vf_list", errno.EPERM)
        on_host(kernel.host())
        status, out, _ = cli("list", "-v")
        why = [line for line in out.splitlines() if "settings" in line]
        assert 0 == status
        assert 1 == len(why)
        assert why[0].startswith("VF settings not shown: netlink is unavailable: read VF list")
        assert "[EPERM]" in why[0]
        assert {"vf_list": 1} == dict(kernel.requests)

    def test_pf_without_netdev(self, cli: Any, on_host: Any, fake_sysfs: FakeSysfs) -> None:
        """A PF without an interface to ask through is noted by name; the other PF's VFs
        still show their settings."""
        (good,) = add_nic_model(fake_sysfs, "mlx5", bus=0x3B, num_vfs=1, ports=1)
        model = PRESETS["mlx5"]
        bare = fake_sysfs.add_pf(
            ids=model.pf_ids,
            driver=model.pf_driver,
            vf_ids=model.vf_ids,
            vf_driver=model.vf_driver,
            total_vfs=4,
            num_vfs=1,
            address="0000:5e:00.0",
        )
        on_host(FakeNetlink(fake_sysfs).host())
        status, out, _ = cli("list", "-v")
        rows = vf_rows(out)
        assert 0 == status
        assert f"VF settings of {bare.address} not shown: no netdev of PF" in out
        assert "MAC" not in rows[str(bare.vf_address(0))]
        assert "00:00:00:00:00:00" == rows[str(good.vf_address(0))]["MAC"]


class TestHolders:
    """The Holder column and ``holder`` object, from the allocation store (read only)."""

    SINCE = datetime(2025, 5, 1, 12, 0, 1, tzinfo=UTC)

    def hold(self, state: Path, vf: str) -> None:
        store = AllocationStore(state / "allocations", clock=lambda: self.SINCE)
        store.allocate_vf(Owner("c1", "net1", "/run/netns/pod1"), vf)

    def test_held_and_free(self, cli: Any, tmp_path: Path) -> None:
        """A held VF shows container id, interface, namespace and since when; the others
        are free; JSON carries the same fields."""
        self.hold(tmp_path / "state", "0000:3b:00.3")
        state = str(tmp_path / "state")
        status, out, _ = cli("list", "-v", "--example", "mlx5", "--state-dir", state)
        _, js, _ = cli("list", "--json", "--example", "mlx5", "--state-dir", state)
        rows = vf_rows(out)
        vfs = {vf["address"]: vf for pf in json.loads(js)["pfs"] for vf in pf["vfs"]}
        assert 0 == status
        expected = "c1, net1 in /run/netns/pod1, since 2025-05-01 12:00:01 UTC"
        assert expected == rows["0000:3b:00.3"]["Holder"]
        assert {"free"} == {r["Holder"] for a, r in rows.items() if a != "0000:3b:00.3"}
        assert {
            "state": "held",
            "container_id": "c1",
            "ifname": "net1",
            "netns": "/run/netns/pod1",
            "since": "2025-05-01T12:00:01+00:00",
        } == vfs["0000:3b:00.3"]["holder"]
        free = {"state": "free", "container_id": None, "ifname": None, "netns": None}
        assert free | {"since": None} == vfs["0000:3b:00.2"]["holder"]
        assert f"Holder: from the allocation store in {state}/allocations." in out

    def test_state_dir_from_environment(
        self, cli: Any, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """SRIOVLIB_STATE_DIR names the state directory, as for the CNI plugin."""
        self.hold(tmp_path / "state", "0000:3b:00.3")
        monkeypatch.setenv("SRIOVLIB_STATE_DIR", str(tmp_path / "state"))
        _, out, _ = cli("list", "-v", "--example", "mlx5")
        assert vf_rows(out)["0000:3b:00.3"]["Holder"].startswith("c1, net1 in /run/netns/pod1")

    def test_unreadable_record(self, cli: Any, tmp_path: Path) -> None:
        """A record that names a VF but cannot be read still marks it held."""
        self.hold(tmp_path / "state", "0000:3b:00.3")
        (tmp_path / "state/allocations" / f"0000:3b:00.4@{'0' * 24}.json").write_text("{")
        state = str(tmp_path / "state")
        _, out, _ = cli("list", "-v", "--example", "mlx5", "--state-dir", state)
        _, js, _ = cli("list", "--json", "--example", "mlx5", "--state-dir", state)
        vfs = {vf["address"]: vf for pf in json.loads(js)["pfs"] for vf in pf["vfs"]}
        assert "held (unreadable record)" == vf_rows(out)["0000:3b:00.4"]["Holder"]
        assert "unreadable" == vfs["0000:3b:00.4"]["holder"]["state"]

    def test_missing_store(self, cli: Any, tmp_path: Path) -> None:
        """No store: every VF is free, one line says so, and nothing is created."""
        state = tmp_path / "nothing"
        status, out, _ = cli("list", "-v", "--example", "mlx5", "--state-dir", str(state))
        assert 0 == status
        assert {"free"} == {row["Holder"] for row in vf_rows(out).values()}
        assert [f"No allocation store at {state}/allocations: no VF is held through it."] == [
            line for line in out.splitlines() if "store" in line
        ]
        assert not state.exists()

    @pytest.mark.parametrize("file", ["state", "state/allocations"])
    def test_unreadable_store(self, cli: Any, tmp_path: Path, file: str) -> None:
        """A store that cannot be read is one line, no Holder column, no traceback."""
        (tmp_path / file).parent.mkdir(parents=True, exist_ok=True)
        (tmp_path / file).write_text("not a directory")
        state = str(tmp_path / "state")
        status, out, err = cli("list", "-v", "--example", "mlx5", "--state-dir", state)
        _, js, _ = cli("list", "--json", "--example", "mlx5", "--state-dir", state)
        why = [line for line in out.splitlines() if "holders" in line]
        assert (0, "") == (status, err)
        assert 1 == len(why)
        assert why[0].startswith("VF holders not shown: cannot read ")
        assert "Not a directory" in why[0]
        assert all("Holder" not in row for row in vf_rows(out).values())
        assert {None} == {vf["holder"] for pf in json.loads(js)["pfs"] for vf in pf["vfs"]}

    def test_example_reads_no_node_store(self, cli: Any) -> None:
        """An example host does not read this node's store unless told where one is."""
        _, out, _ = cli("list", "-v", "--example", "mlx5")
        assert (
            "VF holders not shown: an example host has no allocation store "
            "(--state-dir DIR reads one)."
        ) in out.splitlines()


class TestOnePf:
    @pytest.mark.parametrize("wanted", ["enp59s0f1", "0000:5e:00.1"])
    def test_only_that_pf(self, cli: Any, wanted: str) -> None:
        """`list -v PF` (name or address) shows that PF and its VFs only, also in JSON."""
        status, out, _ = cli("list", "-v", "--example", "mixed", wanted)
        _, js, _ = cli("list", "--json", "--example", "mixed", wanted)
        (pf,) = json.loads(js)["pfs"]
        assert 0 == status
        assert ["enp59s0f1"] == [row["PF"] for row in tables(out)[0]]
        assert ["VFs of enp59s0f1 (0000:5e:00.1)"] == [
            line.strip() for line in out.splitlines() if line.startswith("VFs of")
        ]
        assert 8 == len(vf_rows(out))
        assert ("enp59s0f1", 8) == (pf["name"], len(pf["vfs"]))

    @pytest.mark.parametrize(
        ("wanted", "why"),
        [
            ("nope", "neither a PCI address nor a network interface"),
            ("0000:5e:00.2", "0000:5e:00.2 is VF 0 of 0000:5e:00.0, not an SR-IOV PF"),
        ],
    )
    def test_not_a_pf(self, cli: Any, wanted: str, why: str) -> None:
        """A name that is no PF is a one-line error and exit status 1."""
        status, out, err = cli("list", "-v", "--example", "mixed", wanted)
        assert (1, "") == (status, out)
        assert f"sriovlib list: error: no PF {wanted!r} on this host ({why})\n" == err
