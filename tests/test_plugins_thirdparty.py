"""A real third-party plugin package, installed into a throw-away virtualenv."""

from __future__ import annotations

import json
import os
import subprocess
import sysconfig
import venv
from pathlib import Path

import pytest

ROOT = Path(__file__).parents[1]
ACME = ROOT / "examples/sriovlib-acme"
BROKEN = ROOT / "tests/data/sriovlib-broken"

CHECK_ACME = """
import json, sys, tempfile
from sriovlib import Host, PciId
from sriovlib.plugins.manager import Plugins
from sriovlib.testing import FakeSysfs
root = tempfile.mkdtemp()
fs = FakeSysfs(root)
fs.add_pf(ids=PciId(0x1D0F, 0xE5A1), driver="acme_en", vf_ids=PciId(0x1D0F, 0xE5A2),
          vf_driver="acme_vf", total_vfs=64, netdev="acme0")
fs.add_pf(ids=PciId(0x8086, 0x10C9), driver="igb", vf_ids=PciId(0x8086, 0x10CA),
          vf_driver="igbvf", total_vfs=7, netdev="eth1")
host = Host(root)
plugins = Plugins()
acme, igb = plugins.for_pf(host.pf("acme0")), plugins.for_pf(host.pf("eth1"))
print(json.dumps([acme.vendor, acme.vf_limit().max_vfs, igb.vendor, igb.vf_limit().max_vfs,
                  [e.name for e in plugins.errors]]))
"""


@pytest.fixture(scope="module")
def plugin_venv(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A virtualenv that sees this sriovlib and has the acme and broken plugins installed."""
    env_dir = tmp_path_factory.mktemp("plugin-venv")
    venv.create(env_dir, with_pip=True)
    python = env_dir / "bin/python"
    for package in (ACME, BROKEN):
        subprocess.run(
            # a normal install: pip fetches the build backend (setuptools) from PyPI
            [python, "-m", "pip", "install", "-q", "--no-deps", str(package)],
            check=True,
            capture_output=True,
            text=True,
            env={**os.environ, "PIP_DISABLE_PIP_VERSION_CHECK": "1"},
        )
    # Then make the sriovlib under test and its dependencies importable there.
    purelib = subprocess.run(
        [python, "-c", "import sysconfig; print(sysconfig.get_paths()['purelib'])"],
        check=True,
        capture_output=True,
        text=True,
    ).stdout.strip()
    ours = (str(ROOT / "src"), sysconfig.get_paths()["purelib"])
    Path(purelib, "sriovlib-under-test.pth").write_text("\n".join(ours) + "\n")
    return python


class TestThirdPartyPlugin:
    def test_example_plugin_overrides_its_hook(self, plugin_venv: Path) -> None:
        """The acme plugin drives its made-up NIC; igb keeps its own limit; broken is named."""
        out = subprocess.run(
            [plugin_venv, "-c", CHECK_ACME], check=True, capture_output=True, text=True
        ).stdout
        assert ["acme", 3, "igb", 7, ["broken"]] == json.loads(out)

    def test_cli_lists_plugins_and_reports_the_broken_one(self, plugin_venv: Path) -> None:
        """`sriovlib plugins --json` shows acme with its version and the failed plugin."""
        proc = subprocess.run(
            [plugin_venv, "-m", "sriovlib", "plugins", "--json"],
            check=False,
            capture_output=True,
            text=True,
        )
        assert 1 == proc.returncode
        data = json.loads(proc.stdout)
        acme = next(p for p in data["plugins"] if p["name"] == "acme")
        assert ("1.2.0", "sriovlib-acme", False) == (
            acme["version"],
            acme["distribution"],
            acme["builtin"],
        )
        assert ["sriovlib_match_pf", "sriovlib_vf_limit"] == acme["hooks"]
        (error,) = data["errors"]
        assert ("broken", "sriovlib-broken") == (error["name"], error["distribution"])
        assert "ModuleNotFoundError" in error["error"]
        assert {"generic", "mlx5", "i40e", "ixgbe", "ice", "igb"} <= {
            p["name"] for p in data["plugins"]
        }

    def test_disabling_the_broken_plugin(self, plugin_venv: Path) -> None:
        """Naming the broken plugin in SRIOVLIB_DISABLED_PLUGINS makes the listing clean."""
        proc = subprocess.run(
            [plugin_venv, "-m", "sriovlib", "plugins", "--json"],
            check=False,
            capture_output=True,
            text=True,
            env={**os.environ, "SRIOVLIB_DISABLED_PLUGINS": "broken"},
        )
        assert 0 == proc.returncode, proc.stderr
        assert [] == json.loads(proc.stdout)["errors"]
