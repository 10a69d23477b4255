"""``sriovlib list -v`` after a real CNI ADD: the holder column on veth-backed VFs.

Kernel tier (root): the VFs are fake PCI functions whose netdevs are real veths in a
throw-away host namespace, the pod a real namespace (:class:`sriovlib.testing.cni.
VethNode`); ADD and DEL are the tests' CNI binary run as a process of its own (the
shipped code path), recording into a state directory that ``list`` then reads.
"""

from __future__ import annotations

import contextlib
import importlib
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from sriovlib.allocation import AllocationStore
from sriovlib.cli import main
from sriovlib.host import Host
from sriovlib.testing.cni import VethNode, VethVfNetlink, cni_binary_dir

pytestmark = pytest.mark.kernel

list_command = importlib.import_module("sriovlib.cli.list")


@attrs.define
class Node:
    """A veth-backed node, the CNI binary's directory and the state directory."""

    veth: VethNode
    bin: Path
    state: Path

    def cni(self, command: str, pod: str) -> subprocess.CompletedProcess[str]:
        """Run the CNI plugin for container ``c-list`` on VF 1 as ``net1`` in *pod*."""
        conf = {
            "cniVersion": "1.0.0",
            "name": "vethnet",
            "type": "sriov",
            "deviceID": str(self.veth.vfs[1]),
            "vlan": 100,
            "trust": "on",
        }
        env = {
            **os.environ,
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "c-list",
            "CNI_NETNS": pod,
            "CNI_IFNAME": "net1",
            "CNI_PATH": str(self.bin),
            "SRIOVLIB_STATE_DIR": str(self.state),
            **self.veth.environ(),
        }
        return subprocess.run(
            [str(self.bin / "sriov")],
            input=json.dumps(conf),
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    if os.geteuid() != 0:
        pytest.skip("kernel tier needs root (network namespaces, veth)")
    if shutil.which("ip") is None:
        pytest.skip("kernel tier needs iproute2's ip")
    with VethNode(tmp_path / "root", num_vfs=3) as veth:
        yield Node(veth, cni_binary_dir(tmp_path / "bin"), tmp_path / "state")


def list_vfs(
    node: Node, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str], *args: str
) -> tuple[Host, str]:
    """``sriovlib list ARGS --state-dir STATE`` on the node's Host; (the Host, stdout)."""
    host = Host(node.veth.root, netlink=VethVfNetlink(node.veth.root, node.veth.host_netns))
    monkeypatch.setattr(list_command, "open_host", lambda _args: contextlib.nullcontext(host))
    monkeypatch.setenv("COLUMNS", "250")
    assert 0 == main(["list", *args, "--state-dir", str(node.state)])
    return host, capsys.readouterr().out


def vf_cells(out: str, column: str) -> dict[str, str]:
    """One column of the VF table, by PCI address (the table's rows follow its header)."""
    lines = out.splitlines()
    start = next(i for i, line in enumerate(lines) if line.startswith("VF ┃"))
    header = [cell.strip() for cell in lines[start].split("┃")]
    rows = [[cell.strip() for cell in line.split("│")] for line in lines[start + 2 :]]
    at = header.index(column)
    return {row[1]: row[at] for row in rows if len(row) == len(header)}


class TestHolderAfterCniAdd:
    def test_holder_column_and_json(
        self, node: Node, monkeypatch: pytest.MonkeyPatch, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """After ADD the VF shows the container, interface, pod namespace and time of
        its allocation record, with the settings ADD gave it (one VF-list request); the
        other VFs are free; after DEL it is free again with its settings undone."""
        vf = str(node.veth.vfs[1])
        pod = node.veth.add_pod()
        added = node.cni("ADD", pod)
        assert 0 == added.returncode, added.stdout + added.stderr
        record = AllocationStore(node.state / "allocations").get(vf)
        assert record is not None

        host, table = list_vfs(node, monkeypatch, capsys, "-v")
        _, js = list_vfs(node, monkeypatch, capsys, "--json")
        vfs = {entry["address"]: entry for entry in json.loads(js)["pfs"][0]["vfs"]}
        since = record.allocated_at.strftime("%Y-%m-%d %H:%M:%S")
        holders = vf_cells(table, "Holder")
        assert f"c-list, net1 in {pod}, since {since} UTC" == holders.pop(vf)
        assert {"free"} == set(holders.values())
        assert "-" == vf_cells(table, "Netdev")[vf]  # moved into the pod
        assert ("100", "on") == (vf_cells(table, "VLAN")[vf], vf_cells(table, "Trust")[vf])
        assert {
            "state": "held",
            "container_id": "c-list",
            "ifname": "net1",
            "netns": pod,
            "since": record.allocated_at.isoformat(),
        } == vfs[vf]["holder"]
        state = node.veth.vf_states()[vf]
        expected: dict[str, Any] = {k: v for k, v in state.to_dict().items() if k != "index"}
        assert expected == vfs[vf]["settings"]
        assert (100, True) == (vfs[vf]["settings"]["vlan"], vfs[vf]["settings"]["trust"])
        assert 1 == host.request_counts()["vf_list"]

        deleted = node.cni("DEL", pod)
        assert 0 == deleted.returncode, deleted.stdout + deleted.stderr
        _, after = list_vfs(node, monkeypatch, capsys, "-v")
        assert "free" == vf_cells(after, "Holder")[vf]
        assert ("-", "off") == (vf_cells(after, "VLAN")[vf], vf_cells(after, "Trust")[vf])
