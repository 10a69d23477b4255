"""The igb vendor plugin on the real igb/igbvf driver (QEMU's emulated 82576)."""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sriovlib.testing.vm import SriovVM
from sriovlib.testing.vm_fixtures import reset_guest

pytestmark = pytest.mark.vm

SCENARIO = r"""
import json, os, subprocess
from pathlib import Path
from sriovlib import Host
from sriovlib.models import InvalidVfConfig, VfConfig
from sriovlib.netlink import InvalidValue
from sriovlib.sysfs import KernelWriter

class Recorder(KernelWriter):
    def __init__(self):
        self.writes = []
    def write(self, path, value):
        self.writes.append([str(path), value])
        super().write(path, value)

def ip_link(name):
    done = subprocess.run(["ip", "-j", "link", "show", "dev", name], capture_output=True,
                          text=True)
    return json.loads(done.stdout)[0] if done.returncode == 0 else None

pf = os.environ["SRIOV_PFS"].split()[0]
writer = Recorder()
host = Host("/", poll_interval=0.02, sysfs_writer=writer)
out = {"vendor": host.hooks(pf).vendor}
try:
    host.set_num_vfs(pf, 8)
    out["eight"] = "accepted"
except InvalidValue as e:
    out["eight"] = {"message": str(e), "errno": e.errno_name}
out["writes_for_eight"] = list(writer.writes)

host.set_num_vfs(pf, 2)
vf = host.vfs(pf)[1]
out["before"] = {"name": vf.netdev, "mac": ip_link(vf.netdev)["address"]}
host.configure_vf(vf, VfConfig(mac="02:00:00:00:cc:01"))
after = host.vf(vf.address)
out["after"] = {"name": after.netdev, "mac": ip_link(after.netdev)["address"],
                "admin": host.vf_state(after).mac}
out["rebind_writes"] = [w for w in writer.writes if w[0].endswith(("bind", "unbind"))]

host.netlink.requests.clear()
try:
    host.configure_vf(after, VfConfig(link_state="disable"))
    out["link_state"] = "accepted"
except InvalidVfConfig as e:
    out["link_state"] = {"message": str(e), "requests": sum(host.netlink.requests.values())}
result = out
"""


@pytest.fixture(scope="module")
def observed(sriov_vm: SriovVM) -> Iterator[dict[str, Any]]:
    """Run the scenario once in a clean VM; leave it clean."""
    reset_guest(sriov_vm)
    try:
        yield sriov_vm.python(SCENARIO, timeout=600)
    finally:
        reset_guest(sriov_vm)


class TestIgbPlugin:
    def test_igb_drives_the_82576(self, observed: dict[str, Any]) -> None:
        """The 82576 PF is claimed by the igb plugin."""
        assert "igb" == observed["vendor"]

    def test_eight_vfs_refused_by_the_igb_limit_before_sysfs(
        self, observed: dict[str, Any]
    ) -> None:
        """numvfs 8 is refused, naming the igb limit, before anything is written."""
        assert "ERANGE" == observed["eight"]["errno"]
        assert "the igb driver allows at most 7 VFs per port" in observed["eight"]["message"]
        assert [] == observed["writes_for_eight"]

    def test_admin_mac_reaches_the_bound_netdev(self, observed: dict[str, Any]) -> None:
        """After configure_vf(mac=...) the igbvf netdev carries it, under its old name."""
        assert observed["before"]["mac"] != "02:00:00:00:cc:01"
        assert {
            "name": observed["before"]["name"],
            "mac": "02:00:00:00:cc:01",
            "admin": "02:00:00:00:cc:01",
        } == observed["after"]
        assert ["unbind", "bind"] == [w[0].rsplit("/", 1)[1] for w in observed["rebind_writes"]]

    def test_link_state_refused_without_a_kernel_request(self, observed: dict[str, Any]) -> None:
        """igb has no link state: the plugin refuses it before any netlink request."""
        assert 0 == observed["link_state"]["requests"]
        assert "igb has no per-VF link state" in observed["link_state"]["message"]
