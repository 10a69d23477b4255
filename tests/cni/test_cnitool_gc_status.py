"""CNI 1.1.0 GC and STATUS through the real client: cnitool v1.3.0 on veth-backed VFs.

Tiers ``kernel`` and ``client``: runs as root; builds cnitool from the Go module proxy
(:func:`sriovlib.testing.clienttools.cnitool_path`) and uses Debian's
containernetworking-plugins, skipping with a one-line reason where that is impossible.
The node is the one of ``test_cnitool_kernel.py`` (:class:`sriovlib.testing.cni.VethNode`).

What cnitool and libcni v1.3.0 do, from their source:

- ``cnitool status NET NETNS`` runs STATUS on each plugin of the list in order (NETNS is
  required but unused), stopping at the first failure, and only if the list's
  ``cniVersion`` is at least 1.1.0; below that it answers success without running any
  plugin. CNI_CONTAINERID, CNI_NETNS and CNI_IFNAME are set but empty.
- ``cnitool gc NET NETNS`` calls ``GCNetworkList`` with no arguments, so:
  first libcni sends DEL for *every* attachment of NET in its cache
  (``/var/lib/cni/results``, fixed), with the current configuration, whatever the
  version; then, for cniVersion 1.1.0 and later, GC to each plugin with **no**
  ``cni.dev/valid-attachments`` key at all (not an empty list): everything of the network
  is stale. A valid list can only reach the plugin from the configuration file itself
  (libcni injects only ``name`` and ``cniVersion``), and it protects only attachments
  that are not in libcni's cache.

Each test uses its own network name, so libcni's DEL pass never touches what another
test (or an earlier run) left in ``/var/lib/cni/results``; the fixture removes this
network's cache files at the end.
"""

from __future__ import annotations

import contextlib
import hashlib
import json
import os
import subprocess
import uuid
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import attrs
import pytest

from sriovlib.allocation import AllocationStore
from sriovlib.testing.cni import VethNode, cni_binary_dir
from sriovlib.testing.cni_agent import FastPathAgent

pytestmark = [pytest.mark.kernel, pytest.mark.client]

LIBCNI_RESULTS = Path("/var/lib/cni/results")


def container_id(pod: str) -> str:
    """The container id cnitool derives from a netns path."""
    return "cnitool-" + hashlib.sha512(os.path.abspath(pod).encode()).hexdigest()[:20]


@attrs.define
class Client:
    """cnitool with its own NETCONFPATH, CNI_PATH and state directory, on one node."""

    tool: Path
    node: VethNode
    tmp: Path
    name: str = attrs.field(factory=lambda: f"gc{uuid.uuid4().hex[:8]}")
    #: The agent the plugin hands its invocations to, or None (in-process).
    agent: FastPathAgent | None = None

    @property
    def state_dir(self) -> Path:
        return self.tmp / "state"

    @property
    def ipam_dir(self) -> Path:
        return self.tmp / "ipam"

    @property
    def log(self) -> Path:
        return self.tmp / "sriov.log"

    def configure(
        self,
        version: str = "1.1.0",
        name: str | None = None,
        valid: list[str] | None = None,
        **fields: Any,
    ) -> None:
        """Write network *name* (this client's by default): one sriov plugin, no IPAM
        unless *fields* give one; *valid* (pods' netns paths) becomes the plugin's
        ``cni.dev/valid-attachments``, as a runtime's GC would inject it."""
        plugin = {"type": "sriov", "logLevel": "debug", "logFile": str(self.log), **fields}
        if valid is not None:
            plugin["cni.dev/valid-attachments"] = [
                {"containerID": container_id(pod), "ifname": "eth0"} for pod in valid
            ]
        conflist = {"cniVersion": version, "name": name or self.name, "plugins": [plugin]}
        directory = self.tmp / "net.d"
        directory.mkdir(exist_ok=True)
        (directory / f"10-{name or self.name}.conflist").write_text(json.dumps(conflist))

    def host_local(self) -> dict[str, Any]:
        return {"type": "host-local", "subnet": "10.79.0.0/16", "dataDir": str(self.ipam_dir)}

    def __call__(
        self, verb: str, pod: str = "/run/netns/unused", name: str | None = None, **extra: str
    ) -> subprocess.CompletedProcess[str]:
        env = {
            **os.environ,
            "NETCONFPATH": str(self.tmp / "net.d"),
            "CNI_PATH": str(self.tmp / "bin"),
            "SRIOVLIB_STATE_DIR": str(self.state_dir),
            **self.node.environ(),
            **(self.agent.environ() if self.agent is not None else {}),
            **extra,
        }
        return subprocess.run(
            [str(self.tool), verb, name or self.name, pod],
            env=env,
            capture_output=True,
            text=True,
            timeout=120,
            check=False,
        )

    def attach(self, vf: int, vlan: int, name: str | None = None, **fields: Any) -> str:
        """ADD VF *vf* with VLAN *vlan* to a fresh pod; returns the pod's netns path."""
        self.configure(name=name, deviceID=str(self.node.vfs[vf]), vlan=vlan, **fields)
        pod = self.node.add_pod()
        added = self(verb="add", pod=pod, name=name)
        assert 0 == added.returncode, added.stderr
        return pod

    def forget_in_libcni(self, pod: str, name: str | None = None) -> None:
        """Remove libcni's cache file of *pod*'s attachment, as if the runtime had lost
        ``/var/lib/cni`` (a tmpfs after a reboot, say) but not its sandboxes."""
        path = LIBCNI_RESULTS / f"{name or self.name}-{container_id(pod)}-eth0"
        assert path.exists()
        path.unlink()

    def cached(self, name: str | None = None) -> list[str]:
        """libcni's cached attachments of network *name*, as container ids."""
        prefix = f"{name or self.name}-"
        if not LIBCNI_RESULTS.is_dir():
            return []
        return sorted(
            json.loads(p.read_text())["containerId"]
            for p in LIBCNI_RESULTS.iterdir()
            if p.name.startswith(prefix)
        )

    def holders(self) -> dict[str, str]:
        """Who holds which VF, by the plugin's allocation records: VF -> container id."""
        store = AllocationStore(self.state_dir / "allocations")
        return {str(r.vf): r.owner.container_id for r in store.records()}

    def reservations(self) -> list[str]:
        directory = self.ipam_dir / self.name
        if not directory.is_dir():
            return []
        return sorted(p.name for p in directory.iterdir() if p.name[0].isdigit())


@pytest.fixture(params=["in-process", "fast-path"])
def client(
    request: pytest.FixtureRequest, cni_tools: tuple[Path, Path], tmp_path: Path
) -> Iterator[Client]:
    """cnitool with the plugin in-process, and handing its invocations to an agent."""
    tool, plugins = cni_tools
    cni_binary_dir(tmp_path / "bin", plugins)
    with contextlib.ExitStack() as stack:
        node = stack.enter_context(VethNode(tmp_path / "root", num_vfs=3))
        runner = Client(tool, node, tmp_path)
        if request.param == "fast-path":
            runner.agent = stack.enter_context(FastPathAgent(tmp_path / "agent" / "a.sock"))
        try:
            yield runner
        finally:
            for path in LIBCNI_RESULTS.glob(f"{runner.name}*-*"):
                path.unlink(missing_ok=True)


def in_pod(pod: str) -> dict[str, Any]:
    """``ip -j link show eth0`` in *pod*, or {} when it has no eth0."""
    proc = subprocess.run(
        ["ip", "-n", os.path.basename(pod), "-j", "link", "show", "eth0"],
        capture_output=True,
        text=True,
        check=False,
    )
    return json.loads(proc.stdout)[0] if proc.returncode == 0 else {}


def host_netdevs(node: VethNode) -> set[str]:
    return set(node.host_links()) - {"lo"}


def plugin_log(client: Client, verb: str) -> list[str]:
    """The plugin's log lines of *verb* (``GC``, ``DEL``, ``STATUS``...)."""
    if not client.log.exists():
        return []
    return [line for line in client.log.read_text().splitlines() if f" {verb} " in line]


class TestStatus:
    def test_ready(self, client: Client) -> None:
        """A 1.1.0 network on a usable node: cnitool status succeeds, and the plugin
        really was asked."""
        client.configure()
        status = client("status")
        assert (0, "", "") == (status.returncode, status.stdout, status.stderr)
        assert any("STATUS done" in line for line in plugin_log(client, "STATUS"))

    @pytest.mark.parametrize("broken", ["state", "state/allocations"])
    def test_unusable_state_directory(self, client: Client, broken: str) -> None:
        """A regular file where the state directory (or its allocations directory)
        should be: cnitool status fails with the plugin's reason (libcni shows
        "msg; details", never the code, 50 here)."""
        client.configure()
        (client.tmp / broken).parent.mkdir(parents=True, exist_ok=True)
        (client.tmp / broken).write_text("not a directory\n")
        status = client("status")
        assert 1 == status.returncode
        assert status.stderr.startswith("the sriov plugin is not ready; ")
        assert f"{client.tmp / broken}: Not a directory" in status.stderr
        assert any("STATUS failed (code 50)" in line for line in plugin_log(client, "STATUS"))

    def test_below_1_1_0_the_plugin_is_not_asked(self, client: Client) -> None:
        """libcni skips STATUS for a 1.0.0 list: success even with an unusable state
        directory, and the plugin never ran."""
        client.configure(version="1.0.0")
        client.state_dir.write_text("not a directory\n")
        status = client("status")
        assert (0, "") == (status.returncode, status.stderr)
        assert [] == plugin_log(client, "STATUS")

    def test_ipam_that_predates_status(self, client: Client) -> None:
        """With Debian's host-local 1.1.1 (no STATUS) as IPAM the plugin should take
        the IPAM as ready."""
        client.configure(ipam=client.host_local())
        status = client("status")
        assert (0, "") == (status.returncode, status.stderr)


class TestGc:
    def test_without_a_list_everything_of_the_network_goes(self, client: Client) -> None:
        """cnitool gc passes no valid attachments: libcni DELs the attachment it cached,
        the plugin's GC releases the one libcni had forgotten; another network's
        attachment stays."""
        node = client.node
        vfs_before, netdevs_before = node.vf_states(), host_netdevs(node)
        cached = client.attach(0, vlan=10)
        leaked = client.attach(1, vlan=11)
        client.forget_in_libcni(leaked)
        other = client.attach(2, vlan=12, name=f"{client.name}x")
        assert [container_id(cached)] == client.cached()
        client.configure()

        gc = client("gc")
        assert (0, "") == (gc.returncode, gc.stderr)
        assert {str(node.vfs[2]): container_id(other)} == client.holders()
        assert [] == client.cached()
        assert ({}, {}) == (in_pod(cached), in_pod(leaked))
        assert 12 == node.vf_states()[str(node.vfs[2])].vlan
        assert in_pod(other)
        for vf in (0, 1):
            assert vfs_before[str(node.vfs[vf])] == node.vf_states()[str(node.vfs[vf])]
        assert netdevs_before - {node.vf_netdevs[2]} == host_netdevs(node)
        # who did what (the plugin logs each command's lines with the command's name):
        # libcni's DEL took the cached one, the plugin's GC the leaked one
        del_lines, gc_lines = plugin_log(client, "DEL"), plugin_log(client, "GC")
        assert any(container_id(cached) in line for line in del_lines)
        assert not any(container_id(leaked) in line for line in del_lines)
        assert any(container_id(leaked) in line for line in gc_lines)
        assert not any(container_id(cached) in line for line in gc_lines)

    def test_valid_attachment_kept_the_other_released(self, client: Client) -> None:
        """A valid list in the configuration (the only way past cnitool) reaches the
        plugin's GC: the listed attachment keeps its VF, settings and pod interface;
        the unlisted one is released and its VF restored. The kept one still DELs."""
        node = client.node
        vfs_before, netdevs_before = node.vf_states(), host_netdevs(node)
        kept = client.attach(0, vlan=20, mac="02:00:00:00:20:20")
        stale = client.attach(1, vlan=21)
        client.forget_in_libcni(kept)
        client.forget_in_libcni(stale)
        client.configure(valid=[kept])

        gc = client("gc")
        assert (0, "") == (gc.returncode, gc.stderr)
        assert {str(node.vfs[0]): container_id(kept)} == client.holders()
        assert {} == in_pod(stale)
        assert vfs_before[str(node.vfs[1])] == node.vf_states()[str(node.vfs[1])]
        link = in_pod(kept)
        assert ("02:00:00:00:20:20", True) == (link["address"], "UP" in link["flags"])
        state = node.vf_states()[str(node.vfs[0])]
        assert (20, "02:00:00:00:20:20") == (state.vlan, state.mac)
        assert netdevs_before - {node.vf_netdevs[0]} == host_netdevs(node)

        deleted = client("del", kept)
        assert 0 == deleted.returncode, deleted.stderr
        assert {} == client.holders()
        assert (vfs_before, netdevs_before) == (node.vf_states(), host_netdevs(node))

    def test_cached_attachment_goes_even_if_listed(self, client: Client) -> None:
        """A valid list in the file does not protect an attachment libcni cached: its
        own DEL pass (no valid list from cnitool) runs before the plugin's GC."""
        node = client.node
        vfs_before = node.vf_states()
        pod = client.attach(0, vlan=30)
        client.configure(valid=[pod])
        gc = client("gc")
        assert (0, "") == (gc.returncode, gc.stderr)
        assert ({}, [], {}) == (client.holders(), client.cached(), in_pod(pod))
        assert vfs_before == node.vf_states()

    def test_releases_the_ipam_reservation(self, client: Client) -> None:
        """An attachment made at 1.0.0 with host-local (which does not know 1.1.0) and
        forgotten by libcni: GC at 1.1.0 releases the VF and, through the recorded 1.0.0
        IPAM configuration, the host-local reservation."""
        node = client.node
        vfs_before = node.vf_states()
        client.configure(version="1.0.0", deviceID=str(node.vfs[0]), ipam=client.host_local())
        pod = node.add_pod()
        added = client("add", pod)
        assert 0 == added.returncode, added.stderr
        assert 1 == len(client.reservations())
        client.forget_in_libcni(pod)
        client.configure(ipam=client.host_local())

        gc = client("gc")
        assert ({}, [], {}) == (client.holders(), client.reservations(), in_pod(pod))
        assert vfs_before == node.vf_states()
        assert (0, "") == (gc.returncode, gc.stderr)

    def test_below_1_1_0_libcni_still_deletes(self, client: Client) -> None:
        """At 1.0.0 libcni sends no GC, but its DEL pass still tears down the cached
        attachment (and nothing reaches the plugin as GC)."""
        node = client.node
        vfs_before = node.vf_states()
        client.configure(version="1.0.0", deviceID=str(node.vfs[0]), vlan=40)
        pod = node.add_pod()
        assert 0 == client("add", pod).returncode
        gc = client("gc")
        assert (0, "") == (gc.returncode, gc.stderr)
        assert ({}, [], {}) == (client.holders(), client.cached(), in_pod(pod))
        assert vfs_before == node.vf_states()
        assert [] == plugin_log(client, "GC")
