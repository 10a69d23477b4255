"""Fixtures for the CNI tests: a fake node and a way to invoke the plugin in-process."""

from __future__ import annotations

import json
import os
import shutil
import sys
from collections.abc import Iterator, Mapping
from pathlib import Path
from typing import Any

import attrs
import pytest

from sriovlib.agent.cniserver import CniServer
from sriovlib.cni import fastpath
from sriovlib.cni.commands import Context
from sriovlib.cni.fastpath import SOCKET_ENV
from sriovlib.cni.invoke import run
from sriovlib.models import PciAddress
from sriovlib.netlink import Route
from sriovlib.testing import FakeSysfs, add_nic_model
from sriovlib.testing.builder import FakePf
from sriovlib.testing.clienttools import ToolUnavailable, cni_plugins_dir, cnitool_path
from sriovlib.testing.cni import FakeIpam, fake_context
from sriovlib.testing.fakenetlink import FakeNetlink

CORPUS = Path(__file__).resolve().parents[3] / "shared" / "corpus" / "sriov-cni-netconfs"


@attrs.define
class Node:
    """A fake node: one mlx5 PF with 4 VFs (VF 3 on vfio-pci), fake IPAM, a pod."""

    kernel: FakeNetlink
    pf: FakePf
    ctx: Context
    ipam: FakeIpam
    pod: str
    tmp: Path
    original: dict[str, Any] = attrs.field(factory=dict)
    #: The agent's fast-path server the invocations go through, or None (in-process).
    agent: CniServer | None = None

    def addresses(self, ifname: str = "net1") -> tuple[str, ...]:
        """The addresses on *ifname* in the pod, as the fake kernel has them."""
        index = self.kernel.link(ifname, self.pod).index
        return tuple(str(a) for a in self.kernel.addresses(index, self.pod))

    def routes(self, ifname: str = "net1") -> tuple[Route, ...]:
        """The routes through *ifname* in the pod, as the fake kernel has them."""
        index = self.kernel.link(ifname, self.pod).index
        return self.kernel.routes(index, self.pod)

    def vf(self, index: int) -> PciAddress:
        return self.pf.vf_address(index)

    def conf(self, index: int = 0, **fields: Any) -> dict[str, Any]:
        conf: dict[str, Any] = {
            "cniVersion": "1.0.0",
            "name": "sriov-net",
            "type": "sriov",
            "deviceID": str(self.vf(index)),
            "ipam": {"type": "host-local", "subnet": "10.56.217.0/24"},
        }
        conf.update(fields)
        return {k: v for k, v in conf.items() if v is not None}

    def env(self, command: str = "ADD", **overrides: str | None) -> dict[str, str]:
        env = {
            "CNI_COMMAND": command,
            "CNI_CONTAINERID": "c1",
            "CNI_NETNS": self.pod,
            "CNI_IFNAME": "net1",
            "CNI_PATH": "/opt/cni/bin",
        }
        for key, value in overrides.items():
            if value is None:
                env.pop(key, None)
            else:
                env[key] = value
        return env

    def invoke(
        self, command: str, conf: Mapping[str, Any] | bytes, **env: str | None
    ) -> tuple[int, Any]:
        """One invocation, in-process or through the agent's fast path (the mode)."""
        data = conf if isinstance(conf, bytes) else json.dumps(conf).encode()
        if self.agent is None:
            status, out = run(self.env(command, **env), lambda: data, self.ctx)
        else:
            environ = {**self.env(command, **env), SOCKET_ENV: str(self.agent.path)}
            reply = fastpath.forward(environ, data)
            assert reply is not None, "the agent did not take the invocation"
            status, out, err = reply
            sys.stderr.write(err)
        return status, (json.loads(out) if out else None)

    def state(self, index: int) -> Any:
        return self.kernel.vf_state(self.pf.address, index)


@pytest.fixture(params=["in-process", "fast-path"])
def node(request: pytest.FixtureRequest, tmp_path: Path) -> Iterator[Node]:
    """The fake node; each test runs twice: the invocation in-process, and handed to
    the agent's fast-path server (the shipped client and server, over a real socket)."""
    fs = FakeSysfs(tmp_path / "root")
    (pf,) = add_nic_model(fs, "mlx5", bus=3, num_vfs=4, ports=1, vfio_vfs=(3,))
    kernel = FakeNetlink(fs)
    ipam = FakeIpam()
    ctx = fake_context(kernel, tmp_path / "state", ipam=ipam, lock_timeout=0.3)
    pod = kernel.add_netns("pod1")
    original = {name: kernel.link(name) for name in kernel.link_names()}
    node = Node(kernel, pf, ctx, ipam, pod, tmp_path, original)
    if request.param == "in-process":
        yield node
        return
    node.agent = CniServer(tmp_path / "agent" / "agent.sock", lambda _environ: ctx)
    node.agent.start()
    try:
        yield node
    finally:
        node.agent.stop()


@pytest.fixture(scope="session")
def cni_tools() -> tuple[Path, Path]:
    """cnitool and the reference plugins for the kernel + client tier (skips, with the
    reason, where they cannot be had)."""
    if os.geteuid() != 0:
        pytest.skip("needs root (network namespaces, veths)")
    if shutil.which("ip") is None:
        pytest.skip("needs iproute2's ip")
    try:
        return cnitool_path(), cni_plugins_dir()
    except ToolUnavailable as e:
        pytest.skip(f"cnitool or the CNI plugins are unavailable: {e}")
