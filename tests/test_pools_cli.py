"""``sriovlib pools`` and ``sriovlib config generate``."""

from __future__ import annotations

import io
import json
import subprocess
import sys
from pathlib import Path

import pytest

from sriovlib.cli import main
from sriovlib.pools import parse_config

CORPUS = Path(__file__).resolve().parents[2] / "shared/corpus/device-plugin-configs"
needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}")


def feed_stdin(monkeypatch: pytest.MonkeyPatch, text: str) -> None:
    monkeypatch.setattr(sys, "stdin", io.TextIOWrapper(io.BytesIO(text.encode())))


class TestConfigGenerate:
    """``config generate`` writes a strict, complete config."""

    def test_stdout(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The output parses strictly and has one pool for the ConnectX-5."""
        assert 0 == main(["config", "generate", "--example", "mlx5"])
        config = parse_config(capsys.readouterr().out)
        assert ["mlx5_1017"] == [p.resource_name for p in config.pools]

    def test_output_file_and_options(self, tmp_path: Path) -> None:
        """``-o`` writes the file; ``--split-by-driver`` and ``--resource-prefix`` apply."""
        out = tmp_path / "config.json"
        assert 0 == main(
            [
                "config",
                "generate",
                "--example",
                "i40e",
                "-o",
                str(out),
                "--split-by-driver",
                "--resource-prefix",
                "example.com",
            ]
        )
        pools = parse_config(out.read_text()).pools
        assert ["i40e_1572_iavf", "i40e_1572_vfio_pci"] == [p.resource_name for p in pools]
        assert {"example.com"} == {p.resource_prefix for p in pools}
        assert [] == [p.name for p in tmp_path.iterdir() if p.name.startswith(".")]

    def test_pf_without_vfs_noted(self, capsys: pytest.CaptureFixture[str]) -> None:
        """PFs without VFs get no pool, and stderr says so."""
        assert 0 == main(["config", "generate", "--example", "ixgbe"])
        captured = capsys.readouterr()
        assert {"resourceList": []} == json.loads(captured.out)
        assert "has no VFs enabled" in captured.err

    def test_no_action(self, capsys: pytest.CaptureFixture[str]) -> None:
        """``config`` alone prints its help and exits 2."""
        assert 2 == main(["config"])
        assert "generate" in capsys.readouterr().err


class TestPools:
    """``pools --config`` shows membership and reasons."""

    def test_generated_config_pools_every_vf(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """generate | pools --config - shows every VF in a pool (the acceptance check)."""
        assert 0 == main(["config", "generate", "--example", "mlx5"])
        feed_stdin(monkeypatch, capsys.readouterr().out)
        assert 0 == main(["pools", "--config", "-", "--example", "mlx5"])
        out = capsys.readouterr().out
        assert "VFs in a pool: 8 of 8" in out
        assert "intel.com/mlx5_1017 (netDevice): 8 devices" in out

    def test_shell_pipeline(self) -> None:
        """The same pipeline through two real processes."""
        command = [sys.executable, "-m", "sriovlib"]
        generate = subprocess.run(
            [*command, "config", "generate", "--example", "mlx5"], capture_output=True, check=True
        )
        shown = subprocess.run(
            [*command, "pools", "--config", "-", "--example", "mlx5", "--json"],
            input=generate.stdout,
            capture_output=True,
            check=True,
        )
        data = json.loads(shown.stdout)
        assert 8 == len(data["pools"][0]["devices"])
        assert [] == [u for u in data["unmatched"] if u["kind"] == "vf"]

    @needs_corpus
    def test_json_with_reasons(self, capsys: pytest.CaptureFixture[str]) -> None:
        """The JSON lists members, and each unmatched device with a reason per pool."""
        assert 0 == main(
            [
                "pools",
                "--config",
                str(CORPUS / "deployments__configMap.json"),
                "--example",
                "i40e",
                "--json",
            ]
        )
        data = json.loads(capsys.readouterr().out)
        assert [12, 0, 0, 0] == [len(p["devices"]) for p in data["pools"]]
        vfio = [u for u in data["unmatched"] if u["driver"] == "vfio-pci"]
        assert 4 == len(vfio)
        assert any("pfNames" in r for r in vfio[0]["reasons"])
        assert "empty" in data["pools"][1]["notes"][0]

    @needs_corpus
    def test_table_keeps_brackets(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """Value lists in reasons print literally (the table renderer must not eat them)."""
        monkeypatch.setenv("COLUMNS", "200")
        assert 0 == main(
            ["pools", "--config", str(CORPUS / "deployments__configMap.json"), "--example", "i40e"]
        )
        assert "not in drivers [i40evf, iavf, ixgbevf]" in capsys.readouterr().out

    @needs_corpus
    def test_invalid_json_exits_with_location(self, capsys: pytest.CaptureFixture[str]) -> None:
        """A published file that is not JSON exits non-zero with line and column."""
        path = CORPUS / "docs__vdpa__configMap.json"
        assert 0 != main(["pools", "--config", str(path), "--example", "mlx5"])
        assert f"{path}:3:9: invalid JSON" in capsys.readouterr().err

    def test_compat_warnings_on_stderr(
        self, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--compat accepts a typo, warns about it, and shows what upstream would do."""
        text = '{"resourceList": [{"resourceName": "a", "selectors": {"pfName": ["x"]}}]}'
        feed_stdin(monkeypatch, text)
        assert 0 != main(["pools", "--config", "-", "--example", "mlx5"])
        assert "did you mean 'pfNames'?" in capsys.readouterr().err
        feed_stdin(monkeypatch, text)
        assert 0 == main(["pools", "--config", "-", "--example", "mlx5", "--compat"])
        captured = capsys.readouterr()
        column = text.index('"pfName"') + 1
        assert f"<stdin>:1:{column}: resourceList[0].selectors.pfName" in captured.err
        assert "VFs in a pool: 8 of 8" in captured.out

    def test_missing_file(self, capsys: pytest.CaptureFixture[str], tmp_path: Path) -> None:
        """A missing file is a one-line error."""
        assert 0 != main(["pools", "--config", str(tmp_path / "none.json"), "--example", "igb"])
        assert "No such file" in capsys.readouterr().err
