"""Vendor and device names from pci.ids files."""

from __future__ import annotations

from pathlib import Path

import pytest

from sriovlib.models import PciId
from sriovlib.pciids import DEFAULT_PATHS, PciIds, find_pci_ids, open_pci_ids

# A realistic excerpt: header comments, the first vendor right after them, subsystem
# lines, a comment inside a block, the last vendor and the device-class section.
SAMPLE = """\
#
#\tList of PCI ID's
#
0001  SafeNet (wrong ID)
15b3  Mellanox Technologies
\t1017  MT27800 Family [ConnectX-5]
\t\t15b3 0020  ConnectX-5 EN network interface card, 10/25GbE dual-port SFP28
# a comment inside a vendor block
\t1018  MT27800 Family [ConnectX-5 Virtual Function]
8086  Intel Corporation
\t10c9  82576 Gigabit Network Connection
\t10ca  82576 Virtual Function
\t1572  Ethernet Controller X710 for 10GbE SFP+
ffff  Illegal Vendor ID

# List of known device classes, subclasses and programming interfaces
C 02  Network controller
\t00  Ethernet controller
\t07  Infiniband controller
"""


@pytest.fixture
def pci_ids(tmp_path: Path) -> PciIds:
    """A PciIds over the SAMPLE file."""
    path = tmp_path / "pci.ids"
    path.write_text(SAMPLE)
    return PciIds(path)


class TestLookup:
    def test_vendor_name(self, pci_ids: PciIds) -> None:
        """A vendor line gives the vendor's name."""
        assert "Mellanox Technologies" == pci_ids.vendor_name(0x15B3)
        assert "Intel Corporation" == pci_ids.vendor_name(0x8086)

    def test_device_name(self, pci_ids: PciIds) -> None:
        """A device line inside its vendor's block gives the device's name."""
        assert "MT27800 Family [ConnectX-5]" == pci_ids.device_name(PciId(0x15B3, 0x1017))
        assert "82576 Virtual Function" == pci_ids.device_name(PciId(0x8086, 0x10CA))

    def test_device_after_comment_and_subsystems(self, pci_ids: PciIds) -> None:
        """Subsystem and comment lines inside a block do not end the block."""
        expected = "MT27800 Family [ConnectX-5 Virtual Function]"
        assert expected == pci_ids.device_name(PciId(0x15B3, 0x1018))

    def test_names_pair(self, pci_ids: PciIds) -> None:
        """names() returns the vendor and the device name together."""
        expected = ("Intel Corporation", "Ethernet Controller X710 for 10GbE SFP+")
        assert expected == pci_ids.names(PciId(0x8086, 0x1572))

    def test_first_line_vendor(self, tmp_path: Path) -> None:
        """A vendor on the very first line of the file is found."""
        path = tmp_path / "pci.ids"
        path.write_text("1af4  Red Hat, Inc.\n\t1041  Virtio 1.0 network device\n")
        expected = ("Red Hat, Inc.", "Virtio 1.0 network device")
        assert expected == PciIds(path).names(PciId(0x1AF4, 0x1041))

    def test_device_of_another_vendor_is_not_found(self, pci_ids: PciIds) -> None:
        """A device id is only searched inside its own vendor's block."""
        assert pci_ids.device_name(PciId(0x15B3, 0x10C9)) is None
        assert pci_ids.device_name(PciId(0x0001, 0x1017)) is None

    def test_subsystem_id_is_not_a_device(self, pci_ids: PciIds) -> None:
        """A subsystem line (two tabs) is not mistaken for a device line."""
        assert pci_ids.device_name(PciId(0x15B3, 0x0020)) is None

    def test_unknown_ids(self, pci_ids: PciIds) -> None:
        """Unknown vendors and devices give None, the vendor name still when known."""
        assert (None, None) == pci_ids.names(PciId(0x1234, 0x5678))
        assert ("Intel Corporation", None) == pci_ids.names(PciId(0x8086, 0xFFFE))

    def test_last_vendor_block_stops_at_class_section(self, pci_ids: PciIds) -> None:
        """The last vendor's block ends where the device-class section begins."""
        assert "Illegal Vendor ID" == pci_ids.vendor_name(0xFFFF)
        assert pci_ids.device_name(PciId(0xFFFF, 0x0000)) is None

    def test_describe(self, pci_ids: PciIds) -> None:
        """describe() writes names and ids like ``lspci -nn``, ids alone when unknown."""
        expected = "Intel Corporation 82576 Gigabit Network Connection [8086:10c9]"
        assert expected == pci_ids.describe(PciId(0x8086, 0x10C9))
        assert "Intel Corporation [8086:abcd]" == pci_ids.describe(PciId(0x8086, 0xABCD))
        assert "[1234:5678]" == pci_ids.describe(PciId(0x1234, 0x5678))

    def test_crlf_file(self, tmp_path: Path) -> None:
        """A file with CRLF line ends gives names without a trailing carriage return."""
        path = tmp_path / "pci.ids"
        path.write_bytes(SAMPLE.replace("\n", "\r\n").encode())
        expected = ("Mellanox Technologies", "MT27800 Family [ConnectX-5 Virtual Function]")
        assert expected == PciIds(path).names(PciId(0x15B3, 0x1018))


class TestLaziness:
    def test_file_is_read_on_first_lookup(self, tmp_path: Path) -> None:
        """Constructing a PciIds reads nothing; the file is read at the first lookup."""
        path = tmp_path / "pci.ids"
        pci_ids = PciIds(path)
        path.write_text(SAMPLE)
        assert "Mellanox Technologies" == pci_ids.vendor_name(0x15B3)

    def test_answers_are_memoised(self, pci_ids: PciIds) -> None:
        """Once read, the file is not read again: answers survive its removal."""
        assert "Intel Corporation" == pci_ids.vendor_name(0x8086)
        pci_ids.path.unlink()
        assert "82576 Virtual Function" == pci_ids.device_name(PciId(0x8086, 0x10CA))
        assert "Intel Corporation" == pci_ids.vendor_name(0x8086)


class TestMissingOrMalformed:
    def test_no_database_installed(self, tmp_path: Path) -> None:
        """find_pci_ids gives None when none of the paths exists."""
        assert find_pci_ids([tmp_path / "a", tmp_path / "b"]) is None

    def test_first_existing_path_wins(self, tmp_path: Path) -> None:
        """find_pci_ids picks the first of its paths that is a file."""
        (tmp_path / "dir").mkdir()
        (tmp_path / "second").write_text(SAMPLE)
        (tmp_path / "third").write_text(SAMPLE)
        paths = [tmp_path / "missing", tmp_path / "dir", tmp_path / "second", tmp_path / "third"]
        found = find_pci_ids(paths)
        assert found is not None
        assert tmp_path / "second" == found.path

    def test_absent_file_gives_none(self, tmp_path: Path) -> None:
        """Lookups in a file that does not exist return None instead of raising."""
        pci_ids = open_pci_ids(tmp_path / "missing")
        assert pci_ids is not None
        assert (None, None) == pci_ids.names(PciId(0x15B3, 0x1017))
        assert "[15b3:1017]" == pci_ids.describe(PciId(0x15B3, 0x1017))

    def test_directory_gives_none(self, tmp_path: Path) -> None:
        """A path that is a directory (unreadable as a file) gives None."""
        assert PciIds(tmp_path).vendor_name(0x15B3) is None

    def test_garbage_is_tolerated(self, tmp_path: Path) -> None:
        """Binary junk, broken lines and a last line without newline do not break lookups."""
        path = tmp_path / "pci.ids"
        path.write_bytes(
            b"\x00\xff\xfe garbage\n"
            b"15b3 Mellanox single space\n"  # malformed: one space
            b"\t1017\n"  # malformed: no name
            b"8086  Intel \xff Corporation\n"  # invalid UTF-8
            b"\t10ca  82576 Virtual Function"  # no final newline
        )
        pci_ids = PciIds(path)
        assert (None, None) == pci_ids.names(PciId(0x15B3, 0x1017))
        assert "Intel \ufffd Corporation" == pci_ids.vendor_name(0x8086)
        assert "82576 Virtual Function" == pci_ids.device_name(PciId(0x8086, 0x10CA))

    def test_vendor_without_name(self, tmp_path: Path) -> None:
        """A vendor line with an empty name counts as unknown."""
        path = tmp_path / "pci.ids"
        path.write_text("15b3  \n\t1017  MT27800 Family [ConnectX-5]\n")
        assert (None, None) == PciIds(path).names(PciId(0x15B3, 0x1017))


class TestSystemDatabase:
    def test_real_names(self) -> None:
        """The installed pci.ids names the NICs of the example hosts."""
        pci_ids = find_pci_ids()
        if pci_ids is None:
            pytest.skip(f"no pci.ids installed (looked in {', '.join(DEFAULT_PATHS)})")
        assert "Mellanox Technologies" == pci_ids.vendor_name(0x15B3)
        assert "MT27800 Family [ConnectX-5]" == pci_ids.device_name(PciId(0x15B3, 0x1017))
        assert "82576 Gigabit Network Connection" == pci_ids.device_name(PciId(0x8086, 0x10C9))
