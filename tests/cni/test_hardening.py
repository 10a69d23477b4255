"""What a broken or hostile environment finds: logging that fails, bytes that are not
what was parsed, loose umasks, planted symlinks, out-of-range numbers, the host's own
namespace, unbounded stdin. Each test fails on the plugin before these guarantees."""

from __future__ import annotations

import errno
import json
import os
import shutil
import stat
import subprocess
import sys
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sriovlib.allocation import AllocationStore
from sriovlib.cni.invoke import run
from sriovlib.cni.ipam import IpamRequest
from sriovlib.cni.protocol import CniError, Result, canonical
from sriovlib.testing.cni import FakeIpam

from .conftest import Node

SCRIPT = Path(sys.executable).parent / "sriov"


def untouched(node: Node, index: int = 0) -> bool:
    """The VF and the node as the fixture made them: nothing moved, nothing set."""
    return (
        node.state(index).vlan == 0
        and node.kernel.link_names(node.pod) == ()
        and {n: node.kernel.link(n) for n in node.kernel.link_names()} == node.original
    )


def fill(path: Path) -> int:
    """Write *path* until the file system is full; the errno that stopped it."""
    with open(path, "wb", buffering=0) as filler:
        while True:
            try:
                filler.write(b"x" * 4096)
            except OSError as e:
                return e.errno or 0


class RecordingIpam(FakeIpam):
    """FakeIpam that keeps the configuration bytes of every request."""

    def __init__(self) -> None:
        super().__init__()
        self.configs: list[bytes] = []

    def add(self, request: IpamRequest) -> Result:
        self.configs.append(request.config)
        return super().add(request)

    def delete(self, request: IpamRequest) -> None:
        self.configs.append(request.config)
        super().delete(request)


class TestLogging:
    def test_device_as_log_file_changes_nothing(self, node: Node) -> None:
        """``logFile: /dev/full`` (a device: refused, logs go to stderr) — ADD and DEL
        succeed as without it."""
        conf = node.conf(0, vlan=5, logFile="/dev/full", logLevel="debug")
        status, result = node.invoke("ADD", conf)
        assert 0 == status, result
        assert 5 == node.state(0).vlan
        assert (0, None) == node.invoke("DEL", conf)
        assert untouched(node)

    @pytest.mark.skipif(os.geteuid() != 0, reason="needs root to mount a tmpfs")
    def test_full_disk_changes_nothing(self, node: Node) -> None:
        """A log file on a full file system: ADD fully succeeds, DEL too."""
        mount = node.tmp / "full"
        mount.mkdir()
        subprocess.run(["mount", "-t", "tmpfs", "-o", "size=64k", "tmpfs", str(mount)], check=True)
        try:
            log = mount / "sriov.log"
            log.write_text("")
            assert errno.ENOSPC == fill(mount / "filler")
            conf = node.conf(0, vlan=6, logFile=str(log), logLevel="debug")
            status, result = node.invoke("ADD", conf)
            assert 0 == status, result
            assert 6 == node.state(0).vlan
            assert (0, None) == node.invoke("DEL", conf)
            assert untouched(node)
        finally:
            subprocess.run(["umount", str(mount)], check=False)


class TestWhatIsPassedOn:
    def test_byte_order_mark_is_refused_before_any_change(self, node: Node) -> None:
        data = b"\xef\xbb\xbf" + json.dumps(node.conf(0, vlan=5)).encode()
        status, error = node.invoke("ADD", data)
        assert (1, 6) == (status, error["code"])
        assert "byte order mark" in error["msg"]
        assert ([], True) == (node.ipam.calls, untouched(node))

    def test_duplicate_keys_are_refused(self, node: Node) -> None:
        text = json.dumps(node.conf(0, vlan=5))[:-1] + ', "vlan": 6}'
        status, error = node.invoke("ADD", text.encode())
        assert (1, 6) == (status, error["code"])
        assert "duplicate key 'vlan'" in error["details"]
        assert ([], True) == (node.ipam.calls, untouched(node))

    @pytest.mark.parametrize("number", ["1e400", "-1e400"])
    def test_non_finite_numbers_are_refused(self, node: Node, number: str) -> None:
        text = json.dumps(node.conf(0))[:-1] + f', "min_tx_rate": {number}}}'
        status, error = node.invoke("ADD", text.encode())
        assert (1, 6) == (status, error["code"])
        assert untouched(node)

    def test_ipam_gets_the_parsed_document(self, node: Node) -> None:
        """IPAM ADD and DEL are handed the configuration as parsed, re-serialised — not
        the caller's bytes (escapes, spacing)."""
        ipam = RecordingIpam()
        node.ctx.ipam = ipam
        conf = node.conf(0, vlan=5)
        raw = json.dumps(conf, indent=7).replace('"sriov-net"', '"\\u0073riov-net"').encode()
        assert 0 == node.invoke("ADD", raw)[0]
        assert 0 == node.invoke("DEL", raw)[0]
        assert [canonical(conf), canonical(conf)] == ipam.configs


class TestStateFiles:
    @pytest.fixture
    def loose_umask(self) -> Iterator[None]:
        old = os.umask(0)
        try:
            yield
        finally:
            os.umask(old)

    def test_private_whatever_the_umask(self, node: Node, loose_umask: None) -> None:
        """Under ``umask 000`` every directory the plugin makes is 0700 and every file
        0600 (records hold container ids, namespaces and whole configurations)."""
        assert 0 == node.invoke("ADD", node.conf(0))[0]
        state = node.tmp / "state"
        modes = {
            str(path.relative_to(node.tmp)): stat.S_IMODE(path.lstat().st_mode)
            for path in [state, *state.rglob("*")]
        }
        directories = {p: m for p, m in modes.items() if (node.tmp / p).is_dir()}
        files = {p: m for p, m in modes.items() if p not in directories}
        assert {"state", "state/allocations", "state/cni", "state/cni/attachments"} <= set(
            directories
        )
        assert dict.fromkeys(directories, 448) == directories
        assert len(files) >= 4  # the record, the store's lock, the VF's lock, the entry
        assert dict.fromkeys(files, 384) == files

    @pytest.mark.parametrize("planted", ["state/cni/attachments", "state/allocations"])
    def test_planted_directory_symlink(self, node: Node, planted: str) -> None:
        """A symlink where a state directory belongs is refused (106) before the VF is
        touched, and nothing is written where it points."""
        target = node.tmp / "elsewhere"
        target.mkdir()
        (node.tmp / planted).parent.mkdir(parents=True, exist_ok=True)
        (node.tmp / planted).symlink_to(target)
        status, error = node.invoke("ADD", node.conf(0, vlan=5))
        assert (1, 106) == (status, error["code"]), error
        assert ([], []) == (list(target.iterdir()), node.ipam.calls)
        assert untouched(node)

    def test_planted_lock_symlink(self, node: Node) -> None:
        """The VF's lock file planted as a symlink to a file elsewhere: refused, and the
        file is neither created nor changed."""
        locks = node.tmp / "state/cni/locks"
        locks.mkdir(parents=True)
        victim = node.tmp / "victim"
        (locks / f"{node.vf(0)}.lock").symlink_to(victim)
        status, error = node.invoke("ADD", node.conf(0, vlan=5))
        assert (1, 106) == (status, error["code"]), error
        assert not victim.exists()
        assert untouched(node)

    def test_planted_record_symlink_is_not_read(self, node: Node) -> None:
        """A record file replaced by a symlink (here to a copy of itself) is not
        followed: the store reports it (106) instead of acting on what it points to."""
        assert 0 == node.invoke("ADD", node.conf(0))[0]
        (record,) = (node.tmp / "state/allocations").glob("*@*.json")
        copy = node.tmp / "copy.json"
        shutil.copy(record, copy)
        record.unlink()
        record.symlink_to(copy)
        before = copy.read_bytes()
        status, error = node.invoke("ADD", node.conf(0))  # the same attachment again
        assert (1, 106) == (status, error["code"]), error
        assert before == copy.read_bytes()

    def test_log_file_symlink_is_not_followed(self, node: Node, tmp_path: Path) -> None:
        """``logFile`` planted as a symlink: refused (logs go to stderr), the target is
        not created, and ADD succeeds."""
        link = tmp_path / "sriov.log"
        link.symlink_to(tmp_path / "target.log")
        status, result = node.invoke("ADD", node.conf(0, logFile=str(link)))
        assert 0 == status, result
        assert not (tmp_path / "target.log").exists()

    def test_log_file_is_created_private(self, node: Node, tmp_path: Path) -> None:
        old = os.umask(0)
        try:
            assert 0 == node.invoke("ADD", node.conf(0, logFile=str(tmp_path / "new.log")))[0]
        finally:
            os.umask(old)
        assert 0o600 == stat.S_IMODE((tmp_path / "new.log").stat().st_mode)


class TestEnvironmentEdges:
    @pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e9", "soon"])
    def test_lock_timeout_in_range(self, value: str, node: Node) -> None:
        """``SRIOVLIB_CNI_LOCK_TIMEOUT`` must be a finite number of seconds, 0-3600:
        ``nan`` or ``inf`` waited forever."""
        env = {**node.env("ADD"), "SRIOVLIB_CNI_LOCK_TIMEOUT": value}
        data = json.dumps(node.conf(0)).encode()
        status, out = run(env, lambda: data)  # the real context: it fails before a Host
        error = json.loads(out)
        assert (1, 4) == (status, error["code"])
        assert "SRIOVLIB_CNI_LOCK_TIMEOUT" in error["msg"]

    def test_host_namespace_is_refused(self, node: Node) -> None:
        """CNI_NETNS naming the plugin's own namespace: code 4 before any change."""
        status, error = node.invoke("ADD", node.conf(0, vlan=5), CNI_NETNS="/proc/self/ns/net")
        assert (1, 4) == (status, error["code"])
        assert "own network namespace" in error["msg"]
        assert ([], True) == (node.ipam.calls, untouched(node))

    def test_endless_stdin_is_bounded(self, tmp_path: Path) -> None:
        """``/dev/zero`` as stdin: the shipped binary reads a bounded amount and answers
        code 6 (it used to read until memory ran out)."""
        argv = [str(SCRIPT)] if SCRIPT.exists() else [sys.executable, "-m", "sriovlib.cni"]
        env: dict[str, Any] = {
            "PATH": os.environ.get("PATH", ""),
            "SRIOVLIB_AGENT_SOCKET": os.environ["SRIOVLIB_AGENT_SOCKET"],  # in-process
            "CNI_COMMAND": "ADD",
            "CNI_CONTAINERID": "c1",
            "CNI_NETNS": str(tmp_path),
            "CNI_IFNAME": "net1",
            "CNI_PATH": str(tmp_path),
        }
        with open("/dev/zero", "rb") as zero:
            done = subprocess.run(
                argv, stdin=zero, env=env, capture_output=True, timeout=60, check=False
            )
        assert 1 == done.returncode
        assert 6 == json.loads(done.stdout)["code"]
        assert "too large" in json.loads(done.stdout)["msg"]


class TestIpamRelease:
    def test_failing_ipam_del_frees_the_vf_and_keeps_the_lease_owed(self, node: Node) -> None:
        """IPAM DEL failing: the VF is restored and free at once (another pod can take
        it), DEL reports IPAM's error, and the next DEL releases the lease."""
        assert 0 == node.invoke("ADD", node.conf(0, vlan=5))[0]
        node.ipam.failures["DEL"] = CniError(11, "host-local is busy")
        status, error = node.invoke("DEL", node.conf(0))
        assert (1, 11) == (status, error["code"])
        assert "free again" in error["details"]
        assert untouched(node)
        assert {("c1", "net1")} == set(node.ipam.allocations)  # still owed
        other = node.kernel.add_netns("pod2")
        assert 0 == node.invoke("ADD", node.conf(0), CNI_CONTAINERID="c2", CNI_NETNS=other)[0]
        assert (0, None) == node.invoke("DEL", node.conf(0))  # c1 again: the lease goes
        assert {("c2", "net1")} == set(node.ipam.allocations)

    def test_gc_settles_an_owed_lease(self, node: Node) -> None:
        assert 0 == node.invoke("ADD", node.conf(0))[0]
        node.ipam.failures["DEL"] = CniError(11, "host-local is busy")
        assert 1 == node.invoke("DEL", node.conf(0))[0]
        gc = node.conf(0, cniVersion="1.1.0")
        gc["cni.dev/valid-attachments"] = []
        assert (0, None) == node.invoke("GC", gc)
        assert {} == node.ipam.allocations

    def test_del_uses_the_recorded_configuration(self, node: Node) -> None:
        """A DEL naming another network (or another IPAM configuration) releases the
        lease with the configuration that reserved it."""
        ipam = RecordingIpam()
        node.ctx.ipam = ipam
        assert 0 == node.invoke("ADD", node.conf(0))[0]
        moved = node.conf(0, name="other-net", ipam={"type": "host-local", "subnet": "10.9.0.0/16"})
        assert (0, None) == node.invoke("DEL", moved)
        assert {} == ipam.allocations
        assert ["sriov-net", "sriov-net"] == [json.loads(c)["name"] for c in ipam.configs]
        assert () == tuple(AllocationStore(node.tmp / "state/allocations").records())
