"""The VF lifecycle on the real igb/igbvf driver (QEMU's emulated 82576).

The guest is slow (Python runs 10-20x slower under TCG), so the whole scenario runs in
two guest round trips; each test below checks one part of what was observed. Every
observation that matters is also read back with ``ip -j`` in the guest, independently of
sriovlib.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import pytest

from sriovlib.testing.vm import SriovVM
from sriovlib.testing.vm_fixtures import reset_guest

pytestmark = pytest.mark.vm

COMMON = r"""
import errno, json, os, subprocess, time
from sriovlib import Host
from sriovlib.models import VfConfig
from sriovlib.netlink import KernelError
from sriovlib.plugins.manager import BUILTINS, Plugins

pf = os.environ["SRIOV_PFS"].split()[0]
# The kernel's own answers: no vendor plugin (the igb one refuses what igb lacks before
# asking the kernel; tests/vm/test_igb_plugin_vm.py covers that).
host = Host("/", poll_interval=0.02,
            plugins=Plugins(entry_points=False, disabled=BUILTINS))

def sh(cmd):
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return {"rc": done.returncode, "out": done.stdout, "err": done.stderr}

def ipj(*args):
    done = subprocess.run(["ip", "-j", *args], capture_output=True, text=True)
    return json.loads(done.stdout) if done.returncode == 0 else None

def err(e):
    return {"type": type(e).__name__, "errno": e.errno_name, "knob": e.knob,
            "driver": e.driver, "message": str(e)}

def ip_vf(index):
    return ipj("link", "show", "dev", pf)[0]["vfinfo_list"][index]
"""

SETTINGS = r"""
out = {}
numvfs = f"/sys/class/net/{pf}/device/sriov_numvfs"

# -- sriov_numvfs: 0 -> 4 -> 2 (through 0), then 8
change = host.set_num_vfs(pf, 4)
out["up"] = {"writes": list(change.writes), "netdevs": [vf.netdev for vf in change.vfs],
             "sysfs": open(numvfs).read().strip(), "waited": change.waited}
change = host.set_num_vfs(pf, 2)
out["down"] = {"writes": list(change.writes), "netdevs": [vf.netdev for vf in change.vfs],
               "sysfs": open(numvfs).read().strip()}
try:
    host.set_num_vfs(pf, 8)
    out["eight"] = "accepted"
except KernelError as e:
    out["eight"] = err(e)
out["after_eight"] = open(numvfs).read().strip()

# -- settings igb supports, applied and read back
vf0 = host.vfs(pf)[0]
wanted = VfConfig(mac="02:00:00:00:aa:01", vlan=100, qos=3, spoofchk=False, trust=True,
                  max_tx_rate=200)
state = host.configure_vf(vf0, wanted)
out["configured"] = state.to_dict()
out["mismatches"] = list(state.mismatches(wanted))
out["ip_vf0"] = ip_vf(0)

# -- settings igb refuses, each mixed with settings it accepts
before = host.vf_state(vf0)
out["refused"] = {}
for name, config in [
    ("link_state", VfConfig(link_state="disable", trust=False)),
    ("min_tx_rate", VfConfig(min_tx_rate=10, max_tx_rate=300, spoofchk=True)),
    ("802.1ad", VfConfig(max_tx_rate=300, vlan=5, vlan_proto="802.1ad", trust=False)),
    ("query_rss", VfConfig(query_rss=True, mac="02:00:00:00:aa:02")),
]:
    try:
        host.configure_vf(vf0, config)
        out["refused"][name] = "accepted"
    except KernelError as e:
        out["refused"][name] = dict(err(e), unchanged=host.vf_state(vf0) == before)
out["ip_vf0_after_refusals"] = ip_vf(0)

# -- capabilities, probed on a VF that must come out unchanged
ip_vf1_before = ip_vf(1)
caps = host.capabilities(pf)
out["caps"] = {"driver": caps.driver, "supported": sorted(caps.supported),
               "unsupported": {str(k): v for k, v in caps.unsupported},
               "unknown": {str(k): v for k, v in caps.unknown}, "probed": str(caps.probed_vf)}
out["probe_left_vf1"] = ip_vf(1) == ip_vf1_before
out["eswitch"] = host.netlink.eswitch_mode(str(host.pf(pf).address))

result = out
"""

ATTACH = r"""
out = {}
sh("modprobe veth")
sh("ip link add name net1 type veth peer name net1p")
out["host_net1"] = ipj("link", "show", "dev", "net1")[0]["ifindex"]
vf1 = host.vfs(pf)[1]
out["vf1_address"] = str(vf1.address)
original = ipj("link", "show", "dev", vf1.netdev)[0]
out["original"] = {"name": original["ifname"], "mac": original["address"],
                   "mtu": original["mtu"]}

# -- attach as net1 while the host has net1, then release
sh("ip netns add pod1")
host.netlink.requests.clear()
started = time.monotonic()
snapshot = host.attach(vf1, "/run/netns/pod1", "net1", mac="02:00:00:00:bb:01", mtu=1400)
out["attach_seconds"] = time.monotonic() - started
out["attach_requests"] = dict(host.netlink.requests)
inside = ipj("-d", "-n", "pod1", "link", "show", "dev", "net1")[0]
out["inside"] = {"mac": inside["address"], "mtu": inside["mtu"], "flags": inside["flags"],
                 "parent": inside.get("parentdev")}
out["host_net1_after_attach"] = ipj("link", "show", "dev", "net1")[0]["ifindex"]
out["vf1_on_host_while_attached"] = host.vf(vf1.address).netdev
host.netlink.requests.clear()
started = time.monotonic()
report = host.release(snapshot)
out["release_seconds"] = time.monotonic() - started
out["release_requests"] = dict(host.netlink.requests)
out["release"] = {"found_in": report.found_in, "host_name": report.host_name,
                  "restored": list(report.restored), "warnings": list(report.warnings)}
back = ipj("link", "show", "dev", original["ifname"])
out["back"] = None if back is None else {"mac": back[0]["address"], "mtu": back[0]["mtu"]}
out["pod1_links"] = [l["ifname"] for l in ipj("-n", "pod1", "link", "show")]

# -- release twice
again = host.release(snapshot)
out["again"] = {"found_in": again.found_in, "restored": list(again.restored),
                "warnings": list(again.warnings)}

# -- the pod namespace is deleted before release
sh("ip netns add pod2")
snapshot = host.attach(vf1, "/run/netns/pod2", "net1", mac="02:00:00:00:bb:02",
                       config=VfConfig(vlan=42, trust=True))
sh("ip netns del pod2")
deadline = time.monotonic() + 10
while host.vf(vf1.address).netdev is None and time.monotonic() < deadline:
    time.sleep(0.05)
out["returned_as"] = host.vf(vf1.address).netdev
report = host.release(snapshot)
out["release_gone"] = {"found_in": report.found_in, "host_name": report.host_name,
                       "restored": list(report.restored), "warnings": list(report.warnings)}
back = ipj("link", "show", "dev", original["ifname"])
out["back_gone"] = None if back is None else {"mac": back[0]["address"],
                                               "mtu": back[0]["mtu"]}
out["vf1_settings"] = ip_vf(1)
out["pod2_exists"] = os.path.exists("/run/netns/pod2")
result = out
"""


@pytest.fixture(scope="module")
def observed(sriov_vm: SriovVM) -> Iterator[dict[str, Any]]:
    """Run the whole scenario in the guest (two round trips) and return what it saw;
    afterwards leave the shared VM as it was (no VFs, no namespaces, no net1)."""
    reset_guest(sriov_vm)
    try:
        sriov_vm.python(COMMON, timeout=120)
        settings = sriov_vm.python(SETTINGS, timeout=300)
        attach = sriov_vm.python(ATTACH, timeout=300)
        yield {**settings, **attach}
    finally:
        sriov_vm.run("ip link del net1 2>/dev/null; true")
        reset_guest(sriov_vm)


class TestNumVfs:
    """sriov_numvfs on igb: 0 -> 4 -> 2 through 0; 8 refused with a clear message."""

    def test_zero_four_two(self, observed: dict[str, Any]) -> None:
        """4 VFs with netdevs, then 2 by writing 0 first."""
        assert observed["up"]["writes"] == [4]
        assert observed["up"]["sysfs"] == "4"
        assert all(observed["up"]["netdevs"])
        assert len(observed["up"]["netdevs"]) == 4
        assert observed["down"]["writes"] == [0, 2]
        assert observed["down"]["sysfs"] == "2"
        assert all(observed["down"]["netdevs"])

    def test_eight_exceeds_totalvfs(self, observed: dict[str, Any]) -> None:
        """8 is refused before any write: 'exceeds totalvfs 7', ERANGE, count unchanged."""
        eight = observed["eight"]
        assert eight["type"] == "InvalidValue"
        assert eight["errno"] == "ERANGE"
        assert "exceeds totalvfs 7" in eight["message"]
        assert observed["after_eight"] == "2"


class TestSettings:
    """VF settings on igb: the supported ones apply; the others are refused cleanly."""

    def test_supported_settings_read_back(self, observed: dict[str, Any]) -> None:
        """mac, vlan+qos, spoofchk, trust and max_tx_rate as sriovlib and ip see them."""
        assert observed["mismatches"] == []
        state = observed["configured"]
        assert (state["mac"], state["vlan"], state["qos"]) == ("02:00:00:00:aa:01", 100, 3)
        assert (state["spoofchk"], state["trust"], state["max_tx_rate"]) == (False, True, 200)
        seen = observed["ip_vf0"]
        assert seen["address"] == "02:00:00:00:aa:01"
        assert seen["vlan_list"][0]["vlan"] == 100
        assert seen["vlan_list"][0]["qos"] == 3
        assert seen["spoofchk"] is False
        assert seen["trust"] is True
        assert seen["rate"]["max_tx"] == 200

    @pytest.mark.parametrize(
        ("name", "errno_name", "knob"),
        [
            ("link_state", "EOPNOTSUPP", "link_state"),
            ("min_tx_rate", "EINVAL", "min_tx_rate"),
            ("802.1ad", "EPROTONOSUPPORT", "vlan_proto"),
            ("query_rss", "EOPNOTSUPP", "query_rss"),
        ],
    )
    def test_refused_with_nothing_half_changed(
        self, observed: dict[str, Any], name: str, errno_name: str, knob: str
    ) -> None:
        """Each refusal names the setting, igb and the errno; the VF is as before."""
        refused = observed["refused"][name]
        assert refused != "accepted"
        assert (refused["errno"], refused["knob"], refused["driver"]) == (errno_name, knob, "igb")
        assert "(driver igb)" in refused["message"]
        assert refused["unchanged"] is True

    def test_a_real_rollback(self, observed: dict[str, Any]) -> None:
        """max_tx_rate 300 was applied before 802.1ad was refused, and was undone."""
        assert "rolled back max_tx_rate" in observed["refused"]["802.1ad"]["message"]
        assert observed["ip_vf0_after_refusals"] == observed["ip_vf0"]

    def test_capabilities_exactly(self, observed: dict[str, Any]) -> None:
        """capabilities() lists what igb does and refuses, and probing changed nothing."""
        caps = observed["caps"]
        assert caps["driver"] == "igb"
        assert caps["supported"] == sorted(
            ["mac", "vlan", "qos", "spoofchk", "trust", "max_tx_rate"]
        )
        assert caps["unsupported"] == {
            "link_state": "EOPNOTSUPP",
            "min_tx_rate": "EINVAL",
            "802.1ad": "EPROTONOSUPPORT",
            "query_rss": "EOPNOTSUPP",
        }
        assert caps["unknown"] == {}
        assert observed["probe_left_vf1"] is True

    def test_no_devlink_eswitch_on_igb(self, observed: dict[str, Any]) -> None:
        """igb registers no devlink instance: the eswitch mode is unknown (None)."""
        assert observed["eswitch"] is None


class TestAttachRelease:
    """A real VF netdev goes into a namespace as net1 and comes back as it was."""

    def test_attached_as_net1_beside_the_hosts_net1(self, observed: dict[str, Any]) -> None:
        """Inside: net1 with the MAC and MTU asked, up, parent the VF; host's net1 kept."""
        inside = observed["inside"]
        assert (inside["mac"], inside["mtu"]) == ("02:00:00:00:bb:01", 1400)
        assert "UP" in inside["flags"]
        assert inside["parent"] == observed["vf1_address"]
        assert observed["host_net1_after_attach"] == observed["host_net1"]
        assert observed["vf1_on_host_while_attached"] is None

    def test_released_with_name_and_mac(self, observed: dict[str, Any]) -> None:
        """Release brings back the original name, MAC and MTU; the pod is empty."""
        assert observed["release"]["found_in"] == "namespace"
        assert observed["release"]["host_name"] == observed["original"]["name"]
        assert observed["release"]["warnings"] == []
        assert observed["back"] == {
            "mac": observed["original"]["mac"],
            "mtu": observed["original"]["mtu"],
        }
        assert observed["pod1_links"] == ["lo"]

    def test_one_vf_list_read_each_way(self, observed: dict[str, Any]) -> None:
        """Attach and release each read the PF's VF list once."""
        assert observed["attach_requests"]["vf_list"] == 1
        assert observed["release_requests"]["vf_list"] == 1

    def test_release_twice(self, observed: dict[str, Any]) -> None:
        """The second release finds everything in place."""
        assert observed["again"] == {"found_in": "host", "restored": [], "warnings": []}

    def test_release_after_namespace_deleted(self, observed: dict[str, Any]) -> None:
        """The kernel returned the VF (as devN: net1 is taken); release finds it by PCI
        address, renames it and restores MAC and VF settings; the namespace stays gone."""
        assert observed["returned_as"] not in (None, observed["original"]["name"])
        gone = observed["release_gone"]
        assert gone["found_in"] == "host"
        assert gone["host_name"] == observed["original"]["name"]
        assert {"name", "mac", "vf_vlan", "vf_trust"} <= set(gone["restored"])
        assert gone["warnings"] == []
        assert observed["back_gone"]["mac"] == observed["original"]["mac"]
        settings = observed["vf1_settings"]
        assert settings.get("trust") is False
        assert settings.get("vlan_list", [{"vlan": 0}])[0].get("vlan", 0) == 0
        assert observed["pod2_exists"] is False
