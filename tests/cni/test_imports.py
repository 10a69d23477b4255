"""What the CNI plugin's in-process path imports: none of the heavy modules.

Each of these costs a CNI invocation start-up time and none is needed: pyroute2 (its
package ``__init__`` loads IPDB, NDB with sqlite3, asyncio, ssl, ``unittest.mock``;
``sriovlib.netlink`` encodes its messages by hand), ``importlib.metadata`` (asked only
when an installed distribution declares ``sriovlib`` plugins, and this test environment
has none: ``tests/test_plugins.py`` covers the other case) and what they drag in.
Behaviour, not timing: the figures are measured by ``benchmarks/cni.py``.
"""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sriovlib.testing.cni import VethNode, cni_binary_dir

#: Modules (and their submodules) the CNI path must not load.
HEAVY = (
    "pyroute2",
    "importlib.metadata",
    "sqlite3",
    "asyncio",
    "ssl",
    "unittest.mock",
    "email",
    "zipfile",
)

#: Loads what an ADD loads without a kernel: the entry module, the commands, the netlink
#: backend with a link request and a decoded reply, the plugins with entry points.
ADD_PATH = """
import json, sys
import sriovlib.cni.__main__
import sriovlib.cni.commands
from sriovlib.netlink import KernelNetlink, _link_info, _link_request
from sriovlib.plugins.manager import Plugins

KernelNetlink().close()
_link_info(bytes(16) + _link_request(index=1).body)
Plugins()
print(json.dumps(sorted(sys.modules)))
"""


def heavy_in(modules: list[str]) -> list[str]:
    return sorted(m for m in modules if any(m == h or m.startswith(f"{h}.") for h in HEAVY))


def test_add_path_loads_no_heavy_module() -> None:
    """The entry module, the ADD commands, the netlink codec and the plugin manager,
    imported and used in a fresh interpreter, load none of the heavy modules."""
    out = subprocess.run(
        [sys.executable, "-c", ADD_PATH], capture_output=True, text=True, check=True
    ).stdout
    modules = json.loads(out)
    assert "sriovlib.vendors.igb" in modules  # the built-in plugins were loaded
    assert [] == heavy_in(modules)


def test_version_loads_only_the_protocol() -> None:
    """VERSION imports the protocol module and nothing else of sriovlib."""
    code = (
        "import io, json, sys\n"
        "from sriovlib.cni.invoke import run\n"
        "run({'CNI_COMMAND': 'VERSION'}, lambda: b'')\n"
        "print(json.dumps(sorted(sys.modules)))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True
    ).stdout
    ours = [m for m in json.loads(out) if m.startswith("sriovlib")]
    assert ["sriovlib", "sriovlib.cni", "sriovlib.cni.fastpath", "sriovlib.cni.invoke"] == ours[:4]
    assert ["sriovlib.cni.protocol"] == ours[4:]


@pytest.mark.kernel
@pytest.mark.client
def test_add_and_del_through_cnitool_load_no_heavy_module(
    cni_tools: tuple[Path, Path], tmp_path: Path
) -> None:
    """A real ADD and DEL (cnitool, host-local, veth VFs, real netlink): at exit the
    plugin process has loaded none of the heavy modules."""
    tool, plugins = cni_tools
    bin_dir = cni_binary_dir(tmp_path / "bin", plugins)
    dump = tmp_path / "modules"
    # the tests' entry point, writing its sys.modules on the way out
    (bin_dir / "sriov").write_text(
        f"#!{sys.executable}\n"
        "import json, os, sys\n"
        "from sriovlib.testing.cni_binary import main\n"
        "status = main()\n"
        f"path = {str(dump)!r} + '.' + os.environ['CNI_COMMAND']\n"
        "with open(path, 'w') as f:\n"
        "    json.dump(sorted(sys.modules), f)\n"
        "sys.exit(status)\n"
    )
    with VethNode(tmp_path / "root", num_vfs=1) as node:
        plugin = {
            "type": "sriov",
            "deviceID": str(node.vfs[0]),
            "vlan": 100,
            "mac": "02:00:00:00:07:01",
            "ipam": {
                "type": "host-local",
                "subnet": "10.78.0.0/24",
                "dataDir": str(tmp_path / "ipam"),
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }
        (tmp_path / "net.d").mkdir()
        conflist = {"cniVersion": "1.0.0", "name": "imports", "plugins": [plugin]}
        (tmp_path / "net.d/10-imports.conflist").write_text(json.dumps(conflist))
        env = {
            **node.environ(),
            "PATH": "/usr/sbin:/usr/bin:/sbin:/bin",
            "SRIOVLIB_AGENT_SOCKET": os.environ["SRIOVLIB_AGENT_SOCKET"],  # in-process
            "NETCONFPATH": str(tmp_path / "net.d"),
            "CNI_PATH": str(bin_dir),
            "SRIOVLIB_STATE_DIR": str(tmp_path / "state"),
        }
        pod = node.add_pod()
        for verb in ("add", "del"):
            done = subprocess.run(
                [str(tool), verb, "imports", pod],
                env=env,
                capture_output=True,
                text=True,
                timeout=120,
                check=False,
            )
            assert 0 == done.returncode, done.stderr
    for command in ("ADD", "DEL"):
        modules = json.loads(Path(f"{dump}.{command}").read_text())
        assert "sriovlib.attachments" in modules
        assert [] == heavy_in(modules), command
