"""attach/release on the real kernel: veth pairs in throw-away namespaces stand in for VF
netdevs; the VF settings (which veths do not have) come from the fake kernel."""

from __future__ import annotations

import contextlib
import itertools
import json
import os
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sriovlib.host import Host
from sriovlib.models import AttachSnapshot, PciAddress, VfConfig
from sriovlib.netlink import KernelError, KernelNetlink
from sriovlib.testing import FakeSysfs, add_nic_model
from sriovlib.testing.fakenetlink import FakeNetlink, VethKernel

pytestmark = pytest.mark.kernel

PF = PciAddress(0, 1, 0, 0)
_counter = itertools.count()


def _unavailable() -> str | None:
    if os.geteuid() != 0:
        return "kernel tier needs root (network namespaces, veth)"
    if shutil.which("ip") is None:
        return "kernel tier needs iproute2's ip"
    probe = f"sriovlib-probe-{os.getpid()}"
    made = subprocess.run(
        ["ip", "netns", "add", probe], check=False, capture_output=True, text=True
    )
    if made.returncode:
        return f"cannot create a network namespace: {made.stderr.strip()}"
    try:
        veth = subprocess.run(
            ["ip", "-n", probe, "link", "add", "name", "va", "type", "veth", "peer", "name", "vb"],
            check=False,
            capture_output=True,
            text=True,
        )
        if veth.returncode:
            return f"cannot create a veth pair: {veth.stderr.strip()}"
    finally:
        subprocess.run(["ip", "netns", "del", probe], check=False, capture_output=True)
    return None


_REASON = _unavailable()


def ip(*args: str) -> str:
    """Run ``ip``; return stdout; fail the test on error."""
    result = subprocess.run(["ip", *args], check=False, capture_output=True, text=True)
    assert result.returncode == 0, f"ip {' '.join(args)}: {result.stderr}"
    return result.stdout


def add_host_net1(node: Node) -> None:
    """Give the host an interface named net1 (a veth), the name the pod will use."""
    ip("-n", node.host_ns, "link", "add", "name", "net1", "type", "veth", "peer", "name", "net1p")


def link(ns: str, name: str) -> dict[str, Any] | None:
    """``ip -j link show`` of one link, as iproute2 sees it (None if absent)."""
    result = subprocess.run(
        ["ip", "-n", ns, "-j", "link", "show", "dev", name],
        check=False,
        capture_output=True,
        text=True,
    )
    if result.returncode:
        return None
    found: list[dict[str, Any]] = json.loads(result.stdout)
    return found[0]


class Node:
    """A throw-away "host" namespace with VF netdevs (veths) and a "pod" namespace."""

    def __init__(self, tmp_path: Path) -> None:
        n = next(_counter)
        self.host_ns = f"sriovlib-h{os.getpid()}-{n}"
        self.pod_ns = f"sriovlib-p{os.getpid()}-{n}"
        ip("netns", "add", self.host_ns)
        ip("netns", "add", self.pod_ns)
        self.pod = f"/run/netns/{self.pod_ns}"
        fs = FakeSysfs(tmp_path / "root")
        add_nic_model(fs, "igb", bus=0x01, ports=1, num_vfs=2, netdev_prefix="pf")
        for i in range(2):  # pf0v0, pf0v1: the VF netdev names the tree has
            ip(
                "-n",
                self.host_ns,
                "link",
                "add",
                "name",
                f"pf0v{i}",
                "type",
                "veth",
                "peer",
                "name",
                f"peer{i}",
            )
            ip("-n", self.host_ns, "link", "set", f"pf0v{i}", "address", f"02:00:00:00:10:0{i}")
        self.fake = FakeNetlink(fs)
        self.real = KernelNetlink(f"/run/netns/{self.host_ns}")
        self.host = Host(
            fs.root,
            netlink=VethKernel(self.real, self.fake),  # type: ignore[arg-type]
            sysfs_writer=self.fake,
            poll_interval=0.001,
        )

    def vf(self, index: int) -> PciAddress:
        return self.host.vfs("pf0")[index].address

    def close(self) -> None:
        self.real.close()
        for ns in (self.pod_ns, self.host_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)


@pytest.fixture
def node(tmp_path: Path) -> Iterator[Node]:
    """A fresh throw-away node; skips with a one-line reason where it cannot run."""
    if _REASON is not None:
        pytest.skip(_REASON)
    made = Node(tmp_path)
    try:
        yield made
    finally:
        made.close()


class TestAttach:
    """attach moves the netdev into the pod under its new name, in one request."""

    def test_name_of_a_host_interface(self, node: Node) -> None:
        """The host has net1; the VF becomes net1 in the pod anyway, with MAC/MTU, up."""
        add_host_net1(node)
        host_net1 = link(node.host_ns, "net1")
        node.host.attach(node.vf(0), node.pod, "net1", mac="02:aa:00:00:00:01", mtu=1400)
        inside = link(node.pod_ns, "net1")
        assert inside is not None
        assert (inside["address"], inside["mtu"]) == ("02:aa:00:00:00:01", 1400)
        assert "UP" in inside["flags"]
        assert link(node.host_ns, "pf0v0") is None
        assert link(node.host_ns, "net1") == host_net1  # untouched

    def test_eth0_inside_and_outside(self, node: Node) -> None:
        """Both namespaces may have eth0; the VF is renamed in the pod only."""
        ip(
            "-n",
            node.host_ns,
            "link",
            "add",
            "name",
            "eth0",
            "type",
            "veth",
            "peer",
            "name",
            "eth0p",
        )
        node.host.attach(node.vf(1), node.pod, "eth0")
        assert link(node.pod_ns, "eth0") is not None
        assert link(node.host_ns, "eth0") is not None

    def test_taken_name_inside_restores_the_vf(self, node: Node) -> None:
        """The pod has net1: the kernel moves, fails to rename; attach undoes the move."""
        ip("-n", node.pod_ns, "link", "add", "name", "net1", "type", "veth", "peer", "name", "x1")
        before = link(node.host_ns, "pf0v0")
        with pytest.raises(KernelError, match="File exists") as caught:
            node.host.attach(node.vf(0), node.pod, "net1")
        assert any("the VF was restored" in note for note in caught.value.__notes__)
        after = link(node.host_ns, "pf0v0")
        assert after is not None
        assert before is not None
        # (the ifindex may differ: it was taken in the pod, so the kernel gave another)
        assert (after["address"], after["mtu"], after["flags"]) == (
            before["address"],
            before["mtu"],
            before["flags"],
        )
        assert link(node.pod_ns, "net1") is not None  # the pod's own net1 stays

    def test_namespace_as_file_descriptor(self, node: Node) -> None:
        """An open fd works for attach and release."""
        fd = os.open(node.pod, os.O_RDONLY)
        try:
            snapshot = node.host.attach(node.vf(0), fd, "net5", mtu=1300)
            assert link(node.pod_ns, "net5") is not None
            node.host.release(snapshot, fd)
        finally:
            os.close(fd)
        assert link(node.host_ns, "pf0v0")["mtu"] == 1500  # type: ignore[index]


class TestRelease:
    """release puts name, MAC, MTU and the VF settings back, whatever happened since."""

    def test_restores_name_mac_and_mtu(self, node: Node) -> None:
        """After a round trip the VF netdev is back under its name with MAC and MTU."""
        add_host_net1(node)
        before = link(node.host_ns, "pf0v0")
        snapshot = node.host.attach(
            node.vf(0),
            node.pod,
            "net1",
            mac="02:aa:00:00:00:01",
            mtu=9000,
            config=VfConfig(vlan=12, trust=True),
        )
        report = node.host.release(snapshot)
        after = link(node.host_ns, "pf0v0")
        assert after is not None
        assert before is not None
        for key in ("address", "mtu", "flags"):
            assert after[key] == before[key], key
        assert report.found_in == "namespace"
        assert set(report.restored) >= {"namespace", "mac", "mtu", "vf_vlan", "vf_trust"}
        assert link(node.pod_ns, "net1") is None
        assert node.fake.vf_state(PF, 0).vlan == 0

    def test_twice(self, node: Node) -> None:
        """The second release finds everything in place and changes nothing."""
        snapshot = node.host.attach(node.vf(1), node.pod, "net1", mtu=1280)
        node.host.release(snapshot)
        before = link(node.host_ns, "pf0v1")
        node.real.requests.clear()
        again = node.host.release(snapshot)
        assert (again.found_in, again.restored, again.warnings) == ("host", (), ())
        assert link(node.host_ns, "pf0v1") == before
        assert node.real.requests["set_link"] == node.real.requests["move_link"] == 0

    def test_namespace_deleted_first(self, node: Node) -> None:
        """The pod namespace is gone (a veth dies with it): settings are restored, the
        namespace is not re-created, and release says what it could not find."""
        snapshot = node.host.attach(node.vf(0), node.pod, "net1", config=VfConfig(trust=True))
        ip("netns", "del", node.pod_ns)
        report = node.host.release(snapshot)
        assert report.restored == ("vf_trust",)
        assert report.found_in == "none"
        assert any("no netdev" in w for w in report.warnings)
        assert not os.path.exists(node.pod)  # not resurrected by the release

    def test_up_host_netdev_comes_back_up(self, node: Node) -> None:
        """A netdev that was up on the host is up again after release."""
        ip("-n", node.host_ns, "link", "set", "pf0v1", "up")
        snapshot = node.host.attach(node.vf(1), node.pod, "net1")
        report = node.host.release(snapshot)
        assert "UP" in link(node.host_ns, "pf0v1")["flags"]  # type: ignore[index]
        assert "up" in report.restored

    def test_host_name_taken_meanwhile(self, node: Node) -> None:
        """Someone took the VF's host name: it comes back under a kernel-chosen name, with
        its MAC and MTU, and the report says why."""
        add_host_net1(node)
        snapshot = node.host.attach(node.vf(0), node.pod, "net1", mtu=1400)
        ip(
            "-n",
            node.host_ns,
            "link",
            "add",
            "name",
            "pf0v0",
            "type",
            "veth",
            "peer",
            "name",
            "intr",
        )
        report = node.host.release(snapshot)
        assert report.host_name is not None
        assert report.host_name.startswith("sriovvf")
        assert any("taken" in w for w in report.warnings)
        back = link(node.host_ns, report.host_name)
        assert back is not None
        assert (back["address"], back["mtu"]) == ("02:00:00:00:10:00", 1500)

    def test_snapshot_survives_a_process_boundary(self, node: Node) -> None:
        """A snapshot saved as JSON is released by a fresh Host and backend."""
        snapshot = node.host.attach(node.vf(0), node.pod, "net1", mac="02:aa:00:00:00:09")
        saved = json.dumps(snapshot.to_dict())
        with contextlib.closing(KernelNetlink(f"/run/netns/{node.host_ns}")) as fresh:
            host = Host(node.host.sysfs.root, netlink=VethKernel(fresh, node.fake))  # type: ignore[arg-type]
            host.release(AttachSnapshot.from_dict(json.loads(saved)))
        assert link(node.host_ns, "pf0v0")["address"] == "02:00:00:00:10:00"  # type: ignore[index]
