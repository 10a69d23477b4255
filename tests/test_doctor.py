"""``sriovlib doctor``: node checks, their findings, rendering and exit status."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sriovlib import Host, PciAddress, PciId
from sriovlib.cli import main
from sriovlib.doctor import Finding, Severity, diagnose, node_usable
from sriovlib.pciids import PciIds
from sriovlib.testing import EXAMPLES, FakeSysfs, add_nic_model

FINDING_KEYS = {"check", "severity", "subject", "title", "detail", "command"}
PCI_IDS = """\
8086  Intel Corporation
\t10fb  82599ES 10-Gigabit SFI/SFP+ Network Connection
\t1533  I210 Gigabit Network Connection
"""


@pytest.fixture
def cli(capsys: pytest.CaptureFixture[str]) -> Any:
    """Run ``sriovlib ARGS`` in-process; return (status, out, err)."""

    def run(*args: str) -> tuple[int, str, str]:
        status = main(list(args))
        captured = capsys.readouterr()
        return status, captured.out, captured.err

    return run


def _findings(root: Path, names: PciIds | None = None) -> list[Finding]:
    return diagnose(Host(root), names)


def _by_check(findings: list[Finding], check: str) -> list[Finding]:
    return [f for f in findings if f.check == check]


def _pf_dir(fs: FakeSysfs, address: PciAddress) -> Path:
    return (fs.sys / "bus/pci/devices" / str(address)).resolve()


class TestExamples:
    @pytest.mark.parametrize("example", sorted(EXAMPLES))
    def test_exit_status_and_text(self, cli: Any, example: str) -> None:
        """Every example prints findings and a result; only no-sriov exits 1."""
        status, out, err = cli("doctor", "--example", example)
        assert "" == err
        assert (1 if example == "no-sriov" else 0) == status
        assert "Result: SR-IOV is" in out
        assert "Candidate NICs: eno1" in out
        assert "docker0" in out

    @pytest.mark.parametrize("example", sorted(EXAMPLES))
    def test_json(self, cli: Any, example: str) -> None:
        """Every example gives valid JSON whose verdict matches the exit status."""
        status, out, _ = cli("doctor", "--example", example, "--json")
        data = json.loads(out)
        assert 1 == data["schema"]
        assert (status == 0) == data["usable"]
        assert all(FINDING_KEYS == set(f) for f in data["findings"])
        assert {"ok", "info", "warning", "error"} >= {f["severity"] for f in data["findings"]}
        assert "usable" == data["findings"][-1]["check"]

    def test_mixed_is_all_good(self, cli: Any) -> None:
        """The mixed example has four usable PFs, IOMMU on and vfio-pci loaded."""
        status, out, _ = cli("doctor", "--example", "mixed", "--json")
        findings = json.loads(out)["findings"]
        severity = {f["check"]: f["severity"] for f in findings}
        assert 0 == status
        assert "ok" == severity["iommu"]
        assert "ok" == severity["vfio-pci"]
        assert "4 usable SR-IOV PFs: ens1f0, ens1f1, enp59s0f0, enp59s0f1" == findings[-1]["title"]
        assert [] == [f for f in findings if f["severity"] in ("warning", "error")]

    def test_ixgbe_numvfs_zero(self, cli: Any) -> None:
        """An example without VFs is usable but says how to enable them, one per PF."""
        status, out, _ = cli("doctor", "--example", "ixgbe")
        assert 0 == status
        assert "run: echo 63 > /sys/class/net/enp4s0f0/device/sriov_numvfs\n" in out
        assert "run: echo 63 > /sys/class/net/enp4s0f1/device/sriov_numvfs\n" in out
        assert "Result: SR-IOV is usable on this node (2 warnings)." in out


class TestCandidateNics:
    def test_virtual_interfaces_are_skipped_and_listed(self, fake_sysfs: FakeSysfs) -> None:
        """Interfaces without a device are not candidates, and are named as skipped."""
        add_nic_model(fake_sysfs, "i40e", bus=0x5E, num_vfs=2, ports=1)
        fake_sysfs.add_nic(ids=PciId(0x8086, 0x1533), driver="igb", netdev="eno1")
        for name in ("docker0", "br0", "veth9"):
            fake_sysfs.add_virtual_netdev(name)
        (interfaces,) = _by_check(_findings(fake_sysfs.root), "interfaces")
        assert "Candidate NICs: eno1, enp59s0f0" == interfaces.title
        assert (
            "2 VF interfaces not counted. Skipped 3 virtual interfaces (no device behind "
            "them): br0, docker0, veth9."
        ) == interfaces.detail

    def test_nic_without_sriov(self, fake_sysfs: FakeSysfs, tmp_path: Path) -> None:
        """A NIC without sriov_totalvfs is reported with address, names, ids and driver."""
        (tmp_path / "pci.ids").write_text(PCI_IDS)
        fake_sysfs.add_nic(
            ids=PciId(0x8086, 0x1533), driver="igb", netdev="eno1", address="0000:01:00.0"
        )
        findings = _findings(fake_sysfs.root, PciIds(tmp_path / "pci.ids"))
        (nic,) = _by_check(findings, "sriov")
        assert (Severity.INFO, "eno1 (0000:01:00.0): not SR-IOV capable") == (
            nic.severity,
            nic.title,
        )
        assert nic.detail.startswith(
            "0000:01:00.0 Intel Corporation I210 Gigabit Network Connection [8086:1533], "
            "driver igb."
        )
        assert "lspci -vvv -s 0000:01:00.0 | grep -i 'SR-IOV'" == nic.command

    def test_pf_facts(self, fake_sysfs: FakeSysfs) -> None:
        """A capable PF is reported with its address, ids, driver, NUMA node and link."""
        add_nic_model(fake_sysfs, "mlx5", bus=0x3B, num_vfs=1, ports=1, numa_node=1)
        (pf,) = _by_check(_findings(fake_sysfs.root), "sriov")
        assert (Severity.OK, "ens1f0 (0000:3b:00.0): SR-IOV capable, up to 16 VFs") == (
            pf.severity,
            pf.title,
        )
        assert (
            "0000:3b:00.0 [15b3:1017], driver mlx5_core, NUMA node 1, link ethernet." == pf.detail
        )
        assert "0000:3b:00.0" == pf.subject


class TestPfChecks:
    def test_numvfs_zero(self, fake_sysfs: FakeSysfs) -> None:
        """A PF without VFs gets a warning with the exact echo command."""
        add_nic_model(fake_sysfs, "igb", bus=0x01, ports=1)
        (numvfs,) = _by_check(_findings(fake_sysfs.root), "numvfs")
        assert Severity.WARNING == numvfs.severity
        assert "enp1s0f0 (0000:01:00.0): no VFs enabled (sriov_numvfs is 0)" == numvfs.title
        assert "echo 7 > /sys/class/net/enp1s0f0/device/sriov_numvfs" == numvfs.command

    def test_numvfs_set(self, fake_sysfs: FakeSysfs) -> None:
        """Enabled VFs are counted, with those bound to vfio-pci or away in a pod."""
        add_nic_model(
            fake_sysfs, "i40e", bus=0x5E, num_vfs=6, ports=1, vfio_vfs=[4, 5], away_vfs=[0]
        )
        (numvfs,) = _by_check(_findings(fake_sysfs.root), "numvfs")
        assert (Severity.OK, "enp59s0f0 (0000:5e:00.0): 6 of 64 VFs enabled") == (
            numvfs.severity,
            numvfs.title,
        )
        assert (
            "3 without an interface in the host namespace (2 bound to vfio-pci, "
            "1 moved into a pod or unbound)."
        ) == numvfs.detail

    def test_numvfs_disagrees_with_vfs_found(self, fake_sysfs: FakeSysfs) -> None:
        """sriov_numvfs above the VFs found is a warning that resets through 0."""
        (pf,) = add_nic_model(fake_sysfs, "i40e", bus=0x5E, num_vfs=2, ports=1)
        (_pf_dir(fake_sysfs, pf.address) / "sriov_numvfs").write_text("3\n")
        (numvfs,) = _by_check(_findings(fake_sysfs.root), "numvfs")
        assert Severity.WARNING == numvfs.severity
        path = "/sys/class/net/enp59s0f0/device/sriov_numvfs"
        assert f"echo 0 > {path} && echo 3 > {path}" == numvfs.command

    def test_pf_without_netdev(self, fake_sysfs: FakeSysfs) -> None:
        """A PF without an interface is flagged; its echo command uses the PCI path."""
        fake_sysfs.add_pf(
            ids=PciId(0x8086, 0x1572),
            driver="i40e",
            vf_ids=PciId(0x8086, 0x154C),
            vf_driver="iavf",
            total_vfs=64,
            address="0000:5e:00.0",
            netdev=None,
        )
        findings = _findings(fake_sysfs.root)
        (netdev,) = _by_check(findings, "netdev")
        (numvfs,) = _by_check(findings, "numvfs")
        assert (Severity.WARNING, "0000:5e:00.0: the PF has no network interface") == (
            netdev.severity,
            netdev.title,
        )
        assert "echo 64 > /sys/bus/pci/devices/0000:5e:00.0/sriov_numvfs" == numvfs.command
        assert node_usable(findings)

    def test_pf_without_driver(self, fake_sysfs: FakeSysfs, cli: Any) -> None:
        """An unbound PF is not usable: a driver warning, an error verdict and exit 1."""
        (pf,) = add_nic_model(fake_sysfs, "ixgbe", bus=0x04, ports=1)
        (_pf_dir(fake_sysfs, pf.address) / "driver").unlink()
        findings = _findings(fake_sysfs.root)
        (driver,) = _by_check(findings, "driver")
        (verdict,) = _by_check(findings, "usable")
        assert "echo 0000:04:00.0 > /sys/bus/pci/drivers_probe" == driver.command
        assert [] == _by_check(findings, "numvfs")
        assert (Severity.ERROR, "No usable SR-IOV PF on this node") == (
            verdict.severity,
            verdict.title,
        )
        assert "enp4s0f0 (no driver)" in verdict.detail
        status, out, _ = cli("doctor", "--sysfs-root", str(fake_sysfs.root))
        assert 1 == status
        assert "run: echo 0000:04:00.0 > /sys/bus/pci/drivers_probe" in out

    def test_totalvfs_zero(self, fake_sysfs: FakeSysfs) -> None:
        """sriov_totalvfs 0 means SR-IOV is disabled in firmware: not usable."""
        (pf,) = add_nic_model(fake_sysfs, "mlx5", bus=0x3B, ports=1)
        (_pf_dir(fake_sysfs, pf.address) / "sriov_totalvfs").write_text("0\n")
        findings = _findings(fake_sysfs.root)
        (sriov,) = _by_check(findings, "sriov")
        assert Severity.WARNING == sriov.severity
        assert "mlxconfig -d 0000:3b:00.0 set SRIOV_EN=1 NUM_OF_VFS=8" == sriov.command
        assert not node_usable(findings)

    def test_scan_problems(self, fake_sysfs: FakeSysfs) -> None:
        """Attributes the scan could not parse become warnings on their device."""
        (pf,) = add_nic_model(fake_sysfs, "i40e", bus=0x5E, num_vfs=1, ports=1)
        (_pf_dir(fake_sysfs, pf.address) / "numa_node").write_text("banana\n")
        problems = _by_check(_findings(fake_sysfs.root), "problem")
        assert [
            (Severity.WARNING, "enp59s0f0 (0000:5e:00.0): numa_node: malformed value 'banana'")
        ] == [(p.severity, p.title) for p in problems]
        assert "ls -l /sys/bus/pci/devices/0000:5e:00.0/" == problems[0].command

    def test_one_usable_pf_is_enough(self, fake_sysfs: FakeSysfs) -> None:
        """One unusable PF next to a usable one is a warning, not an error."""
        pf0, _ = add_nic_model(fake_sysfs, "ixgbe", bus=0x04)
        (_pf_dir(fake_sysfs, pf0.address) / "driver").unlink()
        findings = _findings(fake_sysfs.root)
        assert node_usable(findings)
        assert "1 usable SR-IOV PF: enp4s0f1" == findings[-1].title


class TestIommu:
    def test_no_iommu_intel(self, fake_sysfs: FakeSysfs) -> None:
        """Without IOMMU groups, the intel_iommu option and the current cmdline are shown."""
        add_nic_model(fake_sysfs, "i40e", bus=0x5E, num_vfs=1, ports=1)
        (fake_sysfs.root / "proc").mkdir()
        (fake_sysfs.root / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro\n")
        (fake_sysfs.root / "proc/cpuinfo").write_text("processor\t: 0\nvendor_id\t: GenuineIntel\n")
        (iommu,) = _by_check(_findings(fake_sysfs.root), "iommu")
        assert Severity.WARNING == iommu.severity
        assert "IOMMU not enabled: VFs cannot be used with vfio-pci" == iommu.title
        assert iommu.command is not None
        assert "intel_iommu=on iommu=pt" in iommu.command
        assert "Current kernel command line: BOOT_IMAGE=/vmlinuz root=/dev/sda1 ro" in iommu.detail

    def test_no_iommu_amd(self, fake_sysfs: FakeSysfs) -> None:
        """On an AMD CPU the amd_iommu option is proposed."""
        (fake_sysfs.root / "proc").mkdir()
        (fake_sysfs.root / "proc/cpuinfo").write_text("vendor_id\t: AuthenticAMD\n")
        (iommu,) = _by_check(_findings(fake_sysfs.root), "iommu")
        expected = (
            "sudo sed -i 's/^GRUB_CMDLINE_LINUX=\"/&amd_iommu=on iommu=pt /' /etc/default/grub"
            " && sudo update-grub && sudo reboot"
        )
        assert expected == iommu.command

    def test_requested_but_inactive(self, fake_sysfs: FakeSysfs) -> None:
        """intel_iommu=on without IOMMU groups points at the firmware setting."""
        (fake_sysfs.root / "proc").mkdir()
        (fake_sysfs.root / "proc/cmdline").write_text("root=/dev/sda1 intel_iommu=on\n")
        (iommu,) = _by_check(_findings(fake_sysfs.root), "iommu")
        assert "IOMMU requested on the kernel command line but not active" == iommu.title
        assert "VT-d" in iommu.detail

    def test_iommu_enabled(self, fake_sysfs: FakeSysfs) -> None:
        """IOMMU groups present: the check is ok and counts them."""
        fake_sysfs.add_nic(ids=PciId(0x8086, 0x1533), driver="igb", netdev="eno1")
        fake_sysfs.enable_iommu()
        (iommu,) = _by_check(_findings(fake_sysfs.root), "iommu")
        assert (Severity.OK, "IOMMU enabled (1 IOMMU group)") == (iommu.severity, iommu.title)
        assert iommu.subject is None


class TestVfio:
    def test_loaded(self, fake_sysfs: FakeSysfs) -> None:
        """A registered vfio-pci driver is ok."""
        fake_sysfs.load_driver("vfio-pci")
        (vfio,) = _by_check(_findings(fake_sysfs.root), "vfio-pci")
        assert (Severity.OK, None) == (vfio.severity, vfio.command)

    def test_module_available(self, fake_sysfs: FakeSysfs) -> None:
        """A vfio_pci module that is not registered as a driver gets modprobe."""
        (fake_sysfs.sys / "module/vfio_pci").mkdir()
        (vfio,) = _by_check(_findings(fake_sysfs.root), "vfio-pci")
        assert (Severity.INFO, "sudo modprobe vfio-pci") == (vfio.severity, vfio.command)

    def test_missing(self, fake_sysfs: FakeSysfs) -> None:
        """No vfio-pci driver or module is a warning."""
        (vfio,) = _by_check(_findings(fake_sysfs.root), "vfio-pci")
        assert (Severity.WARNING, "vfio-pci is not available in this kernel") == (
            vfio.severity,
            vfio.title,
        )


class TestRendering:
    def test_text_layout(self, fake_sysfs: FakeSysfs, cli: Any) -> None:
        """Each finding is a tagged title, wrapped detail and one unwrapped run: line."""
        add_nic_model(fake_sysfs, "ice", bus=0x3B, ports=1)
        status, out, _ = cli("doctor", "--sysfs-root", str(fake_sysfs.root))
        lines = out.splitlines()
        assert 0 == status
        assert "  WARN  ens2f0 (0000:3b:00.0): no VFs enabled (sriov_numvfs is 0)" in lines
        assert "        run: echo 128 > /sys/class/net/ens2f0/device/sriov_numvfs" in lines
        assert "  OK    1 usable SR-IOV PF: ens2f0" in lines
        assert "\033[" not in out
        assert all(len(line) <= 88 for line in lines if "run: " not in line)
        assert "Result: SR-IOV is usable on this node (3 warnings)." == lines[-1]

    def test_json_matches_findings(self, fake_sysfs: FakeSysfs, cli: Any) -> None:
        """The JSON findings are the diagnose() findings, in order, field by field."""
        add_nic_model(fake_sysfs, "igb", bus=0x01, num_vfs=2)
        _, out, _ = cli("doctor", "--sysfs-root", str(fake_sysfs.root), "--json", "--pci-ids", "/x")
        expected = [
            {
                "check": f.check,
                "severity": str(f.severity),
                "subject": f.subject,
                "title": f.title,
                "detail": f.detail,
                "command": f.command,
            }
            for f in diagnose(Host(fake_sysfs.root), PciIds("/x"))
        ]
        assert expected == json.loads(out)["findings"]

    def test_empty_tree(self, cli: Any, fake_sysfs: FakeSysfs) -> None:
        """A node without any network PCI function still explains itself and exits 1."""
        status, out, _ = cli("doctor", "--sysfs-root", str(fake_sysfs.root))
        assert 1 == status
        assert "  ERROR No SR-IOV NIC on this node" in out
        assert "No network PCI function was found at all." in out

    def test_unreadable_bus(self, cli: Any, tmp_path: Path) -> None:
        """A sysfs root without a PCI bus is a warning and an error verdict naming it."""
        status, out, _ = cli("doctor", "--sysfs-root", str(tmp_path / "missing"), "--json")
        findings = json.loads(out)["findings"]
        problems = [f for f in findings if f["check"] == "problem"]
        assert 1 == status
        assert 1 == len(problems)
        assert "sys/bus/pci/devices: No such file or directory" in problems[0]["title"]
        assert "the PCI bus could not be fully read" in findings[-1]["detail"]


class TestRealNode:
    def test_this_machine_has_no_sriov(self, cli: Any) -> None:
        """On this machine's real /sys, doctor explains there is no SR-IOV NIC and exits 1."""
        if not Path("/sys/bus/pci/devices").is_dir():
            pytest.skip("no /sys/bus/pci on this machine")
        if Host("/").pfs():
            pytest.skip("this machine has an SR-IOV PF; the test is for nodes without one")
        status, out, _ = cli("doctor")
        _, js, _ = cli("doctor", "--json")
        verdict = json.loads(js)["findings"][-1]
        assert 1 == status
        assert "  ERROR No SR-IOV NIC on this node" in out
        assert "Result: SR-IOV is NOT usable on this node" in out
        assert ("usable", "error", "No SR-IOV NIC on this node") == (
            verdict["check"],
            verdict["severity"],
            verdict["title"],
        )
        assert "No network PCI function has SR-IOV" in verdict["detail"] or (
            "No network PCI function was found at all." == verdict["detail"]
        )


class TestVendorPluginFindings:
    def test_mlx5_vf_on_vfio_is_reported_with_a_command(self, fake_sysfs: FakeSysfs) -> None:
        """doctor shows the mlx5 plugin's health finding and its fix command."""
        from sriovlib.doctor import diagnose

        add_nic_model(fake_sysfs, "mlx5", bus=0x3B, ports=1, num_vfs=2, vfio_vfs=[1])
        findings = [f for f in diagnose(Host(fake_sysfs.root)) if f.check == "plugin:mlx5"]
        assert 1 == len(findings)
        assert "is on vfio-pci" in findings[0].title
        assert findings[0].command is not None
        assert "drivers/mlx5_core/bind" in findings[0].command
