"""The real CNI client on real netlink: cnitool + host-local on veth-backed VFs.

Tiers ``kernel`` and ``client``: runs as root; builds cnitool from Debian's source
package and uses Debian's containernetworking-plugins (installing them if needed), and
skips with a one-line reason where that is impossible. The VFs are fake PCI functions
whose netdevs are real veths in a throw-away host namespace (see
:mod:`sriovlib.testing.cni` for exactly which parts are real); the pods are real
namespaces, the addresses and routes real, the IPAM plugin the real host-local.
"""

from __future__ import annotations

import json
import os
import subprocess
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from sriovlib.allocation import AllocationStore
from sriovlib.cni.commands import ADD_STEPS
from sriovlib.testing.cni import (
    VethNode,
    cni_binary_dir,
)
from sriovlib.testing.cni_agent import FastPathAgent

pytestmark = [pytest.mark.kernel, pytest.mark.client]


@attrs.define
class Cnitool:
    """cnitool with its own NETCONFPATH, CNI_PATH, state and IPAM directories."""

    tool: Path
    node: VethNode
    tmp: Path
    name: str = "vethnet"
    #: The agent the plugin hands its invocations to, or None (in-process).
    agent: FastPathAgent | None = None

    @property
    def ipam_dir(self) -> Path:
        return self.tmp / "ipam"

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    def configure(self, **fields: Any) -> None:
        plugin = {
            "type": "sriov",
            "logLevel": "debug",
            "logFile": str(self.tmp / "sriov.log"),
            "ipam": {
                "type": "host-local",
                "subnet": "10.77.0.0/16",
                "dataDir": str(self.ipam_dir),
                "routes": [{"dst": "0.0.0.0/0"}],
            },
        }
        plugin.update(fields)
        directory = self.tmp / "net.d"
        directory.mkdir(exist_ok=True)
        conflist = {"cniVersion": "1.0.0", "name": self.name, "plugins": [plugin]}
        (directory / "10-vethnet.conflist").write_text(json.dumps(conflist))

    def env(self, **extra: str) -> dict[str, str]:
        return {
            **os.environ,
            "NETCONFPATH": str(self.tmp / "net.d"),
            "CNI_PATH": str(self.tmp / "bin"),
            "SRIOVLIB_STATE_DIR": str(self.state_dir),
            **self.node.environ(),
            **(self.agent.environ() if self.agent is not None else {}),
            **extra,
        }

    def __call__(self, verb: str, pod: str, **extra: str) -> subprocess.CompletedProcess[str]:
        return subprocess.run(
            [str(self.tool), verb, self.name, pod],
            env=self.env(**extra),
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def reservations(self) -> list[str]:
        directory = self.ipam_dir / self.name
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.name[0].isdigit())

    def records(self) -> list[str]:
        return [str(r.vf) for r in AllocationStore(self.state_dir / "allocations").records()]


@pytest.fixture(params=["in-process", "fast-path"])
def agent(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[FastPathAgent | None]:
    """Each test twice: the plugin in-process, and handing its invocations to an agent
    (the shipped fast-path server in a process of its own, with the same test backend)."""
    if request.param == "in-process":
        yield None
        return
    with FastPathAgent(tmp_path / "agent" / "agent.sock") as running:
        yield running


@pytest.fixture
def cnitool(
    cni_tools: tuple[Path, Path], tmp_path: Path, agent: FastPathAgent | None
) -> Iterator[Cnitool]:
    tool, plugins = cni_tools
    cni_binary_dir(tmp_path / "bin", plugins)
    with VethNode(tmp_path / "root", num_vfs=4) as node:
        runner = Cnitool(tool, node, tmp_path, agent=agent)
        runner.configure()
        yield runner
    if agent is not None and (tmp_path / "sriov.log").exists():  # they reached the agent
        assert set(agent.pids) & pids_of(runner)


#: Runs a test with the fast-path ``agent`` only.
FAST_PATH = pytest.mark.parametrize("agent", ["fast-path"], indirect=True)


def assert_killed(runner: Cnitool, done: subprocess.CompletedProcess[str]) -> None:
    """The plugin (in-process) or the agent (fast path) died at the kill point."""
    assert 1 == done.returncode
    if runner.agent is None:
        assert "signal: killed" in done.stderr
    else:
        assert "the node agent stopped during the operation" in done.stderr
        assert -9 == runner.agent.wait_dead()


def pids_of(runner: Cnitool, verb: str = "") -> set[int]:
    """The processes that logged (*verb*) lines in the plugin's log file."""
    found = set()
    for line in (runner.tmp / "sriov.log").read_text().splitlines():
        if (not verb or f" {verb} " in line) and " sriov[" in line:
            found.add(int(line.split(" sriov[", 1)[1].split("]", 1)[0]))
    return found


def ns(pod: str, *args: str) -> str:
    return subprocess.run(
        ["ip", "-n", os.path.basename(pod), *args], capture_output=True, text=True, check=True
    ).stdout


def host_view(node: VethNode) -> dict[str, tuple[Any, ...]]:
    """What must come back exactly: each VF netdev's name, index, MAC, MTU, up flag."""
    return {
        name: (link["ifindex"], link["address"], link["mtu"], "UP" in link["flags"])
        for name, link in node.host_links().items()
        if name != "lo"
    }


def assert_restored(
    runner: Cnitool, host_before: dict[str, tuple[Any, ...]], vfs_before: dict[str, Any]
) -> None:
    assert host_before == host_view(runner.node)
    assert vfs_before == runner.node.vf_states()
    assert [] == runner.records()
    assert [] == runner.reservations()


class TestRoundTrip:
    def test_add_check_del(self, cnitool: Cnitool) -> None:
        """ADD puts the VF in the pod with VLAN, MAC, address and route; CHECK passes and
        catches tampering; DEL restores everything; a second DEL is a no-op."""
        node = cnitool.node
        cnitool.configure(
            deviceID=str(node.vfs[1]),
            vlan=100,
            vlanQoS=3,
            mac="02:00:00:00:01:01",
            spoofchk="off",
            trust="on",
            max_tx_rate=800,
        )
        host_before, vfs_before = host_view(node), node.vf_states()
        pod = node.add_pod()

        added = cnitool("add", pod)
        assert 0 == added.returncode, added.stderr
        result = json.loads(added.stdout)
        assert "02:00:00:00:01:01" == result["interfaces"][0]["mac"]
        address = result["ips"][0]["address"]
        link = json.loads(ns(pod, "-j", "addr", "show", "eth0"))[0]
        assert ("02:00:00:00:01:01", True) == (link["address"], "UP" in link["flags"])
        assert address in {f"{a['local']}/{a['prefixlen']}" for a in link["addr_info"]}
        assert "default via 10.77.0.1 dev eth0" in ns(pod, "route")
        state = node.vf_states()[str(node.vfs[1])]
        assert (100, 3, "02:00:00:00:01:01", False, True, 800) == (
            state.vlan,
            state.qos,
            state.mac,
            state.spoofchk,
            state.trust,
            state.max_tx_rate,
        )
        assert node.vf_netdevs[1] not in host_view(node)
        assert [address.split("/")[0]] == cnitool.reservations()

        checked = cnitool("check", pod)
        assert 0 == checked.returncode, checked.stderr
        ns(pod, "addr", "del", address, "dev", "eth0")
        tampered = cnitool("check", pod)
        assert 1 == tampered.returncode
        assert f"address {address} is missing" in tampered.stderr

        deleted = cnitool("del", pod)
        assert 0 == deleted.returncode, deleted.stderr
        assert_restored(cnitool, host_before, vfs_before)
        again = cnitool("del", pod)
        assert 0 == again.returncode, again.stderr

    def test_error_reaches_cnitool(self, cnitool: Cnitool) -> None:
        """A configuration error comes back through libcni as msg; details."""
        cnitool.configure(deviceID="../../../etc", vlan=100)
        pod = cnitool.node.add_pod()
        failed = cnitool("add", pod)
        assert 1 == failed.returncode
        assert "invalid network configuration; deviceID" in failed.stderr


class TestConcurrency:
    def test_32_parallel_add_del_pairs(
        self, cni_tools: tuple[Path, Path], tmp_path: Path, agent: FastPathAgent | None
    ) -> None:
        """32 pods, 16 VFs of one PF: every ADD/DEL pair (retrying on 'busy' as a runtime
        does) succeeds, and afterwards every VF is restored and free."""
        tool, plugins = cni_tools
        cni_binary_dir(tmp_path / "bin", plugins)
        with VethNode(tmp_path / "root", num_vfs=16) as node:
            runner = Cnitool(tool, node, tmp_path, agent=agent)
            host_before, vfs_before = host_view(node), node.vf_states()
            pods = [node.add_pod() for _ in range(32)]
            failures: list[str] = []
            retries = [0]
            lock = threading.Lock()

            def worker(i: int) -> None:
                conf_dir = tmp_path / f"net{i}"
                conf_dir.mkdir()
                plugin = {
                    "type": "sriov",
                    "deviceID": str(node.vfs[i % 16]),
                    "vlan": 10 + i,
                    "mac": f"02:00:00:00:02:{i:02x}",
                    "ipam": {
                        "type": "host-local",
                        "subnet": "10.78.0.0/16",
                        "dataDir": str(runner.ipam_dir),
                    },
                }
                conflist = {"cniVersion": "1.0.0", "name": runner.name, "plugins": [plugin]}
                (conf_dir / "10.conflist").write_text(json.dumps(conflist))
                env = runner.env(NETCONFPATH=str(conf_dir))
                deadline = time.monotonic() + 240
                for verb in ("add", "del"):
                    while True:
                        proc = subprocess.run(
                            [str(tool), verb, runner.name, pods[i]],
                            env=env,
                            capture_output=True,
                            text=True,
                            timeout=120,
                            check=False,
                        )
                        if proc.returncode == 0:
                            break
                        busy = "is held by" in proc.stderr or "busy with another" in proc.stderr
                        if not busy or time.monotonic() > deadline:
                            with lock:
                                failures.append(f"{verb} {i}: {proc.stderr.strip()}")
                            return
                        with lock:
                            retries[0] += 1
                        time.sleep(0.05)

            threads = [threading.Thread(target=worker, args=(i,)) for i in range(32)]
            for thread in threads:
                thread.start()
            for thread in threads:
                thread.join()
            assert [] == failures
            assert_restored(runner, host_before, vfs_before)
            print(f"32 ADD/DEL pairs on 16 VFs: {retries[0]} retries on busy VFs")


class TestFaultInjection:
    @pytest.mark.parametrize("step", ADD_STEPS)
    def test_sigkill_during_add_then_del(self, cnitool: Cnitool, step: str) -> None:
        """The plugin SIGKILLed at each step of ADD: cnitool reports the failure, and a
        DEL restores the VF, the netdev and the IPAM reservation completely."""
        node = cnitool.node
        cnitool.configure(deviceID=str(node.vfs[2]), vlan=200, mac="02:00:00:00:03:03", trust="on")
        host_before, vfs_before = host_view(node), node.vf_states()
        pod = node.add_pod()
        killed = cnitool("add", pod, SRIOVLIB_TEST_KILL_AT=step)
        assert_killed(cnitool, killed)
        deleted = cnitool("del", pod)  # with the agent dead, in-process
        assert 0 == deleted.returncode, deleted.stderr
        assert_restored(cnitool, host_before, vfs_before)
        # and the VF is usable again
        again = cnitool("add", pod)
        assert 0 == again.returncode, again.stderr
        assert 0 == cnitool("del", pod).returncode
        assert_restored(cnitool, host_before, vfs_before)

    @pytest.mark.parametrize("step", ["del-ipam", "del-released"])
    def test_sigkill_during_del_then_del(self, cnitool: Cnitool, step: str) -> None:
        """The plugin SIGKILLed part-way through DEL: the next DEL finishes the job."""
        node = cnitool.node
        cnitool.configure(deviceID=str(node.vfs[3]), vlan=300, mac="02:00:00:00:04:04")
        host_before, vfs_before = host_view(node), node.vf_states()
        pod = node.add_pod()
        added = cnitool("add", pod)
        assert 0 == added.returncode, added.stderr
        killed = cnitool("del", pod, SRIOVLIB_TEST_KILL_AT=step)
        assert_killed(cnitool, killed)
        deleted = cnitool("del", pod)
        assert 0 == deleted.returncode, deleted.stderr
        assert_restored(cnitool, host_before, vfs_before)

    @FAST_PATH
    @pytest.mark.parametrize("step", ADD_STEPS)
    def test_agent_sigkill_during_add_then_del_through_the_restarted_agent(
        self, cnitool: Cnitool, step: str
    ) -> None:
        """The agent SIGKILLed at each step of an ADD it runs; a new agent starts (taking
        over the socket) and the DEL it runs restores everything."""
        node = cnitool.node
        agent = cnitool.agent
        assert agent is not None
        cnitool.configure(deviceID=str(node.vfs[1]), vlan=201, mac="02:00:00:00:03:05")
        host_before, vfs_before = host_view(node), node.vf_states()
        pod = node.add_pod()
        assert_killed(cnitool, cnitool("add", pod, SRIOVLIB_TEST_KILL_AT=step))
        agent.start()
        deleted = cnitool("del", pod)
        assert 0 == deleted.returncode, deleted.stderr
        assert agent.process is not None
        assert {agent.process.pid} == pids_of(cnitool, "DEL")  # the agent ran it
        assert_restored(cnitool, host_before, vfs_before)


class TestDualStack:
    def test_ipv4_and_ipv6(self, cnitool: Cnitool) -> None:
        """host-local with an IPv4 and an IPv6 range: both addresses and both default
        routes in the pod; CHECK passes; DEL releases both."""
        node = cnitool.node
        cnitool.configure(
            deviceID=str(node.vfs[0]),
            ipam={
                "type": "host-local",
                "ranges": [[{"subnet": "10.77.0.0/16"}], [{"subnet": "fd00:77::/64"}]],
                "routes": [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}],
                "dataDir": str(cnitool.ipam_dir),
            },
        )
        host_before, vfs_before = host_view(node), node.vf_states()
        pod = node.add_pod()
        added = cnitool("add", pod)
        assert 0 == added.returncode, added.stderr
        addresses = [ip["address"] for ip in json.loads(added.stdout)["ips"]]
        assert [4, 6] == [6 if ":" in a else 4 for a in addresses]
        shown = ns(pod, "addr", "show", "eth0")
        assert all(address in shown for address in addresses)
        assert "default via fd00:77::1 dev eth0" in ns(pod, "-6", "route")
        checked = cnitool("check", pod)
        assert 0 == checked.returncode, checked.stderr
        assert 0 == cnitool("del", pod).returncode
        assert_restored(cnitool, host_before, vfs_before)
