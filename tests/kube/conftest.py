"""The kube tier: a real one-node Kubernetes (session-wide) and the agent serving it."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any, TypeVar

import pytest

from sriovlib.testing.clienttools import ToolUnavailable
from sriovlib.testing.kube import KubeCluster
from sriovlib.testing.kubebuild import kube_tools
from sriovlib.testing.vm import SriovVM

T = TypeVar("T")


def wait_for(
    what: str, check: Callable[[], T | None], timeout: float = 60, every: float = 0.1
) -> T:
    """*check*'s first true value, called every *every* seconds; fails the test naming
    *what* after *timeout* seconds."""
    deadline = time.monotonic() + timeout
    while True:
        value = check()
        if value:
            return value
        if time.monotonic() > deadline:
            raise AssertionError(f"timed out waiting for {what}")
        time.sleep(every)


#: A node's network in the igb VM: the kubelet needs a default route to pick a node IP,
#: and the chroot guest has no module autoload, so a dummy link carries the node address.
#: Mounts are shared, as systemd makes them on every node (an agent's /var/run/netns
#: mount follows the host's).
NODE_NETWORK = """
set -e
mount --make-rshared /
modprobe -a bridge veth dummy overlay
ip link add sk-node0 type dummy
ip addr add 192.0.2.10/32 dev sk-node0
ip link set sk-node0 up
ip route show default | grep -q . || ip route add default dev sk-node0
"""


@pytest.fixture
def vm_node(sriov_vm_clean: SriovVM) -> Iterator[SriovVM]:
    """The igb VM as a Kubernetes node: :data:`NODE_NETWORK` set up, undone after."""
    setup = sriov_vm_clean.run(NODE_NETWORK, timeout=60)
    assert setup.returncode == 0, setup.stderr
    yield sriov_vm_clean
    sriov_vm_clean.run("ip link del sk-node0", timeout=30)


@pytest.fixture(scope="session")
def kube_cluster() -> Iterator[KubeCluster]:
    if sys.platform != "linux" or os.geteuid() != 0:
        pytest.skip("kube tier: needs root on Linux (containers, mounts, cgroups)")
    try:
        tools = kube_tools()
    except ToolUnavailable as e:
        pytest.skip(f"kube tier: {e}")
    with KubeCluster(tools) as cluster:
        yield cluster


@pytest.fixture
def cluster(kube_cluster: KubeCluster) -> Iterator[KubeCluster]:
    """The cluster, with every pod deleted (and its devices freed) after the test."""
    yield kube_cluster
    kube_cluster.kubectl("delete", "pods", "--all", "--grace-period=1", "--wait=true")


class AgentProcess:
    """``sriovlib agent --example mixed`` serving the cluster's kubelet, JSON logs in a file."""

    def __init__(self, cluster: KubeCluster, tmp: Path, config: dict[str, Any], *extra: str):
        self.tmp = tmp
        tmp.mkdir()
        (tmp / "config.json").write_text(json.dumps(config))
        self.argv = [
            sys.executable, "-m", "sriovlib.agent",
            "--example", "mixed",
            "--config", str(tmp / "config.json"),
            "--device-plugin-dir", str(cluster.device_plugin_dir),
            "--state-dir", str(tmp / "state"),
            "--device-info-dir", str(tmp / "devinfo"),
            "--cni-socket", str(tmp / "agent.sock"),
            "--log-format", "json",
            "--metrics-address", "127.0.0.1:0",  # not the node's 9808: two may overlap
            *extra,
        ]  # fmt: skip
        self.resources = [f"intel.com/{r['resourceName']}" for r in config["resourceList"]]
        self.cluster = cluster
        self.log = tmp / "agent.log"
        self.proc: subprocess.Popen[bytes] | None = None

    def start(self, wait: bool = True) -> None:
        """Start the agent; unless not *wait*, until the kubelet watches every pool."""
        skip = len(self.events("ListAndWatch update")) if self.log.exists() else 0
        with open(self.log, "ab") as log:
            self.proc = subprocess.Popen(self.argv, stdin=subprocess.DEVNULL, stderr=log)
        if wait:
            self.wait_served(skip)

    def wait_served(self, skip: int, timeout: float = 30) -> None:
        """Until the kubelet watches every pool of this start (the first ListAndWatch
        answer of each went out): the kubelet's view is now this agent's, not a previous
        one's (whose devices it keeps, unhealthy, for a while)."""
        deadline = time.monotonic() + timeout
        while {e["resource"] for e in self.events("ListAndWatch update")[skip:]} != set(
            self.resources
        ):
            assert time.monotonic() < deadline, f"not watched:\n{self.log.read_text()}"
            time.sleep(0.1)

    def stop(self) -> int:
        assert self.proc is not None
        self.proc.send_signal(signal.SIGTERM)
        try:
            return self.proc.wait(20)
        finally:
            self.proc.kill()

    def events(self, name: str | None = None) -> list[dict[str, Any]]:
        records = [json.loads(line) for line in self.log.read_text().splitlines() if line]
        return [r for r in records if name is None or r["event"] == name]

    def wait_event(self, name: str, count: int = 1, timeout: float = 30) -> list[dict[str, Any]]:
        deadline = time.monotonic() + timeout
        while len(found := self.events(name)) < count:
            assert self.proc is not None
            assert self.proc.poll() is None, f"the agent exited:\n{self.log.read_text()[-2000:]}"
            assert time.monotonic() < deadline, f"no {count}x {name!r}:\n{self.log.read_text()}"
            time.sleep(0.1)
        return found


@pytest.fixture
def agent_factory(cluster: KubeCluster, tmp_path: Path) -> Iterator[Any]:
    started: list[AgentProcess] = []

    def make(config: dict[str, Any], *extra: str) -> AgentProcess:
        agent = AgentProcess(cluster, tmp_path / f"agent{len(started)}", config, *extra)
        agent.start()
        started.append(agent)
        return agent

    yield make
    for agent in started:
        if agent.proc is not None and agent.proc.poll() is None:
            agent.stop()
        for resource in agent.resources:  # the next test starts from an empty node
            cluster.wait_allocatable(resource, "0")
