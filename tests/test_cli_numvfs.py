"""`sriovlib numvfs`: the plan, then the change, on example nodes (fake kernel)."""

from __future__ import annotations

import json

import pytest

from sriovlib.cli import main


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(list(argv))
    out, err = capsys.readouterr()
    return status, out, err


class TestNumVfs:
    def test_dry_run_shows_the_plan_and_changes_nothing(
        self, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--dry-run prints the vendor plugin's plan through 0 and applies nothing."""
        status, out, _ = run(
            capsys, "numvfs", "ens1f0", "8", "--example", "mlx5", "--dry-run", "--json"
        )
        report = json.loads(out)
        assert 0 == status
        assert ("mlx5", 4, 8, False) == (
            report["plugin"],
            report["before"],
            report["after"],
            report["applied"],
        )
        assert ["write-numvfs 0", "write-numvfs 8"] == report["plan"]

    def test_apply_creates_the_vfs(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Without --dry-run the VFs are created and listed with their netdevs."""
        status, out, _ = run(capsys, "numvfs", "enp4s0f0", "3", "--example", "ixgbe", "--json")
        report = json.loads(out)
        assert (0, True, [3]) == (status, report["applied"], report["writes"])
        assert [0, 1, 2] == [vf["index"] for vf in report["vfs"]]
        assert all(vf["netdev"] for vf in report["vfs"])

    def test_table_output(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The human output names the PF, the plugin, the plan and the result."""
        status, out, err = run(capsys, "numvfs", "enp59s0f0", "4", "--example", "i40e")
        assert 0 == status
        assert "i40e plugin: 8 -> 4 VFs" in out
        assert "plan: write-numvfs 0, write-numvfs 4" in out
        assert "done in" in out
        assert "applying" in err

    def test_vendor_limit_is_a_clear_error(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Above the igb limit: exit 1 and a message naming the limit, no traceback."""
        status, out, err = run(capsys, "numvfs", "enp1s0f0", "8", "--example", "igb")
        assert 1 == status
        assert "8 exceeds totalvfs 7; the igb driver allows at most 7 VFs per port" in err
        assert "Traceback" not in err + out

    def test_unknown_pf(self, capsys: pytest.CaptureFixture[str]) -> None:
        """An unknown PF name is an error naming it."""
        status, _, err = run(capsys, "numvfs", "nope0", "1", "--example", "igb")
        assert 1 == status
        assert "no PF 'nope0'" in err

    def test_same_count_is_nothing_to_do(self, capsys: pytest.CaptureFixture[str]) -> None:
        """Asking for the current count plans nothing and changes nothing."""
        status, out, _ = run(capsys, "numvfs", "ens2f0", "16", "--example", "ice")
        assert 0 == status
        assert "plan: nothing to do" in out
