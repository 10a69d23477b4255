"""The layers of docs/architecture.md, checked on the source: who may import whom, and
that no shipped entrypoint reads a test-only switch."""

from __future__ import annotations

import ast
import json
import os
import subprocess
import sys
from pathlib import Path

import pytest

from sriovlib.allocation import AllocationStore
from sriovlib.models import PciId
from sriovlib.testing import FakeSysfs

SRC = Path(__file__).resolve().parents[1] / "src" / "sriovlib"
#: The entrypoints: protocol translation only.
ADAPTERS = ("cni", "cli", "agent")
#: The only modules that may touch the kernel directly.
KERNEL_MODULES = ("sriovlib.netlink", "sriovlib.sysfs")


def imports(path: Path) -> set[str]:
    """Every module *path* imports (``from a.b import c`` counts as ``a.b`` and ``a.b.c``)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found.update(f"{node.module}.{alias.name}" for alias in node.names)
    return found


def modules(package: str) -> list[Path]:
    return sorted((SRC / package).rglob("*.py"))


@pytest.mark.parametrize("package", ADAPTERS)
def test_adapters_do_not_touch_the_kernel(package: str) -> None:
    """The entrypoints reach the kernel only through the Host and the attachment
    service: they import neither netlink.py nor sysfs.py."""
    offenders = {
        str(path.relative_to(SRC)): sorted(
            name
            for name in imports(path)
            if any(name == k or name.startswith(f"{k}.") for k in KERNEL_MODULES)
        )
        for path in modules(package)
    }
    assert {} == {path: names for path, names in offenders.items() if names}


#: Where an entrypoint may import another (docs/architecture.md), as module prefixes: the
#: CLI starts the agent and reads the fast path's socket default, the ``sriovlib-agent``
#: script runs the CLI's command, the agent's fast-path server runs the CNI's invocation.
CROSSINGS = {
    "cli/agent.py": ("sriovlib.agent", "sriovlib.cni.fastpath"),
    "agent/__main__.py": ("sriovlib.cli",),
    "agent/cniserver.py": ("sriovlib.cni",),
}


def test_entrypoints_import_each_other_only_where_documented() -> None:
    """Outside CROSSINGS no entrypoint imports another one."""
    offenders = {}
    for package in ADAPTERS:
        others = [f"sriovlib.{a}" for a in ADAPTERS if a != package]
        for path in modules(package):
            where = str(path.relative_to(SRC))
            names = sorted(
                name
                for name in imports(path)
                if any(name == o or name.startswith(f"{o}.") for o in others)
                and not name.startswith(CROSSINGS.get(where, ("-",)))
            )
            if names:
                offenders[where] = names
    assert {} == offenders


def test_only_the_netlink_module_imports_pyroute2() -> None:
    """pyroute2 is imported in sriovlib.netlink alone (where only devlink's eswitch
    mode still uses it): nothing else may bring its package ``__init__`` back."""
    offenders = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path != SRC / "netlink.py"
        and any(name == "pyroute2" or name.startswith("pyroute2.") for name in imports(path))
    )
    assert [] == offenders


def test_only_the_kube_api_client_speaks_to_the_api_server() -> None:
    """``sriovlib.agent.kubeapi`` is the agent's one client of the Kubernetes API: no
    other shipped module imports ``http.client`` or the ``kubernetes`` package, and the
    client itself imports nothing of sriovlib but the exceptions (the DRA modules call
    it; it knows no DRA)."""
    client = SRC / "agent" / "kubeapi.py"
    offenders = sorted(
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path != client
        and path.relative_to(SRC).parts[0] != "testing"
        and any(n in ("http.client", "kubernetes") or n.startswith("kubernetes.")
                for n in imports(path))
    )  # fmt: skip
    assert [] == offenders
    own = sorted(n for n in imports(client) if n.startswith("sriovlib"))
    assert own == ["sriovlib.exceptions", "sriovlib.exceptions.SriovError"]


def test_host_parts_do_not_import_the_facade() -> None:
    """The Host's parts share the node context; none imports the facade (no circle)."""
    offenders = [
        str(path.relative_to(SRC))
        for path in modules("host")
        if path.name != "__init__.py" and "sriovlib.host.Host" in imports(path)
    ]
    assert [] == offenders


def test_the_core_imports_no_adapter() -> None:
    """Core modules (everything but the entrypoints and the testing kit) import no
    entrypoint: the agent reuses the attachment service without the CNI package."""
    core = [
        path
        for path in SRC.rglob("*.py")
        if path.relative_to(SRC).parts[0] not in (*ADAPTERS, "testing", "__main__.py")
    ]
    offenders = {
        str(path.relative_to(SRC)): sorted(
            name
            for name in imports(path)
            if any(name.startswith(f"sriovlib.{a}") for a in ADAPTERS)
            or name.startswith("sriovlib.testing")
        )
        for path in core
    }
    assert {} == {path: names for path, names in offenders.items() if names}


def test_shipped_code_reads_no_test_switch() -> None:
    """Outside sriovlib.testing, no module names a test-only variable."""
    offenders = [
        str(path.relative_to(SRC))
        for path in SRC.rglob("*.py")
        if path.relative_to(SRC).parts[0] != "testing"
        and any(word in path.read_text() for word in ("SRIOVLIB_TEST_", "KILL_AT", "_NETLINK="))
    ]
    assert [] == offenders


SWITCHES = {
    "kill": {"SRIOVLIB_CNI_KILL_AT": "locked", "SRIOVLIB_TEST_KILL_AT": "locked"},
    "backend": {
        "SRIOVLIB_CNI_NETLINK": "sriovlib.testing.cni:veth_backend",
        "SRIOVLIB_TEST_NETLINK": "sriovlib.testing.cni:veth_backend",
    },
}


@pytest.mark.parametrize("switches", ["kill", "backend"])
def test_shipped_sriov_ignores_kill_and_backend_switches(tmp_path: Path, switches: str) -> None:
    """The shipped ``sriov`` run with the kill switches (old and new names) or the
    backend switches set: it is not killed at ``locked`` (which an ADD of this VF
    passes) and loads no test backend: it goes on to the real kernel, which has no such
    PF netdev, and answers with CNI error JSON of its own."""
    script = Path(sys.executable).parent / "sriov"
    argv = [str(script)] if script.exists() else [sys.executable, "-m", "sriovlib.cni"]
    netns = tmp_path / "netns"
    netns.write_text("")
    fs = FakeSysfs(tmp_path / "root")
    pf = fs.add_pf(
        ids=PciId(0x15B3, 0x1017),
        driver="mlx5_core",
        vf_ids=PciId(0x15B3, 0x1018),
        vf_driver="mlx5_core",
        total_vfs=2,
        num_vfs=2,
        netdev="sriovnopf0",  # no such interface on this machine
    )
    env = {
        "PATH": os.environ.get("PATH", ""),
        "CNI_COMMAND": "ADD",
        "CNI_CONTAINERID": "c1",
        "CNI_NETNS": str(netns),
        "CNI_IFNAME": "net1",
        "CNI_PATH": str(tmp_path),
        "SRIOVLIB_SYSFS_ROOT": str(tmp_path / "root"),
        "SRIOVLIB_STATE_DIR": str(tmp_path / "state"),
        "SRIOVLIB_VETH_HOST_NETNS": str(tmp_path / "no-such-netns"),
        "SRIOVLIB_AGENT_SOCKET": os.environ["SRIOVLIB_AGENT_SOCKET"],  # nobody's: in-process
        **SWITCHES[switches],
    }
    conf = {"cniVersion": "1.0.0", "name": "n", "type": "sriov", "deviceID": str(pf.vf_address(0))}
    done = subprocess.run(
        argv, input=json.dumps(conf).encode(), env=env, capture_output=True, timeout=60, check=False
    )
    assert 1 == done.returncode, done.stderr  # not -9: nothing killed it
    error = json.loads(done.stdout)
    assert 101 == error["code"], error
    assert "sriovnopf0" in error["details"], error
    assert () == AllocationStore(tmp_path / "state/allocations").records()


def test_the_cnis_reader_of_dra_records_stays_light() -> None:
    """``sriovlib.preparedvfs`` is on the CNI's ADD path: of sriovlib it imports only the
    file helpers, the models and the exceptions (no agent module, no grpc)."""
    own = sorted(
        n.split(".")[1]
        for n in imports(SRC / "preparedvfs.py")
        if n.startswith("sriovlib.") and n.count(".") == 1
    )
    assert own == ["_files", "exceptions", "models"]
    outside = {n.split(".")[0] for n in imports(SRC / "preparedvfs.py")} - {"sriovlib"}
    assert outside <= {"__future__", "json", "os", "re", "collections", "pathlib", "attrs"}
