"""The CNI plugin on real igb VFs (QEMU's 82576 in the VM), driven by the real cnitool.

ADD puts a real VF into a pod namespace with a VLAN (through the PF), an address and a
route from the real host-local; DEL restores it, compared attribute by attribute with
what ``ip -j -d link`` showed before ADD — the VF netdev on the host and the VF's entry
in the PF's VF list. Also: the pod namespace deleted before DEL (the kernel hands the
VF back under another name).
"""

from __future__ import annotations

import json
import shlex
from pathlib import Path
from typing import Any

import pytest

from sriovlib.testing.cni import ToolUnavailable, cni_plugins_dir, cnitool_path
from sriovlib.testing.cni_agent import start_in_guest
from sriovlib.testing.vm import SriovVM

pytestmark = [pytest.mark.vm, pytest.mark.client]

WORK = "/tmp/cni-vm"
#: VF netdev attributes that must come back exactly (``ip -j -d link show``).
LINK_KEYS = (
    "ifname",
    "ifindex",
    "address",
    "mtu",
    "flags",
    "altnames",
    "txqlen",
    "link_type",
    "parentdev",
    "promiscuity",
)
#: Per-VF fields of the PF's VF list that are settings, not counters.
VF_KEYS = ("vf", "address", "vlan_list", "spoofchk", "trust", "link_state", "rate", "query_rss_en")


@pytest.fixture(scope="session")
def vm_cni_tools() -> tuple[Path, Path]:
    """cnitool and host-local, made before the VM boots so the guest sees them."""
    try:
        return cnitool_path(), cni_plugins_dir()
    except ToolUnavailable as e:
        pytest.skip(f"cnitool or the CNI plugins are unavailable: {e}")


class Guest:
    """cnitool and inspection commands in the guest."""

    def __init__(self, vm: SriovVM, tool: Path, plugins: Path) -> None:
        self.vm = vm
        self.tool = tool
        self.pf = vm.pf_netdevs[0]
        sriov = Path(vm.python_executable).parent / "sriov"
        setup = self.sh(
            f"rm -rf {WORK} && mkdir -p {WORK}/bin {WORK}/net.d && "
            f"test -x {shlex.quote(str(tool))} && test -x {plugins}/host-local && "
            f"test -x {shlex.quote(str(sriov))} && "
            f"ln -s {shlex.quote(str(sriov))} {WORK}/bin/sriov && "
            f"ln -s {plugins}/host-local {WORK}/bin/host-local",
            check=False,
        )
        if setup["rc"] != 0:
            pytest.skip(f"the guest cannot see cnitool, host-local or sriov: {setup['err']}")

    def sh(self, cmd: str, *, check: bool = True) -> dict[str, Any]:
        done = self.vm.run(cmd, timeout=120)
        out = {"rc": done.returncode, "out": done.stdout, "err": done.stderr}
        if check and done.returncode != 0:
            raise AssertionError(f"{cmd!r} failed: {done.stderr}")
        return out

    def ipj(self, *args: str) -> Any:
        return json.loads(self.sh("ip -j " + " ".join(map(shlex.quote, args)))["out"])

    def enable_vfs(self, count: int) -> list[str]:
        self.sh(
            f"echo {count} > /sys/class/net/{self.pf}/device/sriov_numvfs && "
            f"for i in $(seq 200); do [ $(ls -d /sys/class/net/{self.pf}/device/virtfn*/net/* "
            f"2>/dev/null | wc -l) -ge {count} ] && break; sleep 0.05; done"
        )
        out = self.sh(
            f"for l in /sys/class/net/{self.pf}/device/virtfn*; do basename $(readlink $l); done"
        )["out"]
        return sorted(out.split())

    def netdev(self, vf: str) -> str | None:
        names = self.sh(f"ls /sys/bus/pci/devices/{vf}/net 2>/dev/null", check=False)["out"]
        return names.split()[0] if names.split() else None

    def vf_index(self, vf: str) -> int:
        out = self.sh(
            f"for l in /sys/class/net/{self.pf}/device/virtfn*; do "
            f"[ $(basename $(readlink $l)) = {vf} ] && echo ${{l##*virtfn}}; done; true"
        )
        return int(out["out"].strip())

    def view(self, vf: str) -> dict[str, Any]:
        """The VF as the kernel shows it: its host netdev and its PF-side settings."""
        name = self.netdev(vf)
        link = None
        if name is not None:
            shown = self.ipj("-d", "link", "show", "dev", name)[0]
            link = {key: shown.get(key) for key in LINK_KEYS}
        index = self.vf_index(vf)
        entry = self.ipj("link", "show", "dev", self.pf)[0]["vfinfo_list"][index]
        return {"link": link, "vf": {key: entry.get(key) for key in VF_KEYS}}

    def configure(self, **plugin: Any) -> None:
        conf = {
            "cniVersion": "1.0.0",
            "name": "igbnet",
            "plugins": [
                {
                    "type": "sriov",
                    "logLevel": "debug",
                    "logFile": f"{WORK}/sriov.log",
                    "ipam": {
                        "type": "host-local",
                        "subnet": "10.88.0.0/24",
                        "dataDir": f"{WORK}/ipam",
                        "routes": [{"dst": "0.0.0.0/0"}],
                    },
                    **plugin,
                }
            ],
        }
        text = shlex.quote(json.dumps(conf))
        self.sh(f"echo {text} > {WORK}/net.d/10-igb.conflist")

    def cnitool(
        self, verb: str, pod: str, ifname: str = "net1", *, agent: bool = False
    ) -> dict[str, Any]:
        """cnitool *verb*; with *agent*, the plugin hands it to the agent's socket."""
        return self.sh(self.cnitool_command(verb, pod, ifname, agent=agent), check=False)

    def cnitool_command(
        self, verb: str, pod: str, ifname: str = "net1", *, agent: bool = False
    ) -> str:
        socket = f"{WORK}/agent.sock" if agent else f"{WORK}/no-agent.sock"
        env = (
            f"NETCONFPATH={WORK}/net.d CNI_PATH={WORK}/bin CNI_IFNAME={ifname} "
            f"SRIOVLIB_STATE_DIR={WORK}/state SRIOVLIB_AGENT_SOCKET={socket}"
        )
        return f"{env} {shlex.quote(str(self.tool))} {verb} igbnet /run/netns/{pod}"

    def plugin_pids(self, verb: str) -> set[int]:
        """The processes that logged *verb* lines in the plugin's log."""
        text = self.sh(f"cat {WORK}/sriov.log 2>/dev/null || true")["out"]
        return {
            int(line.split(" sriov[", 1)[1].split("]", 1)[0])
            for line in text.splitlines()
            if f" {verb} " in line and " sriov[" in line
        }

    def add_then_delete_namespace(self, pod: str, vf: str) -> None:
        """ADD *vf* as eth0 of a new namespace *pod*, then delete the namespace (no DEL)
        and wait for the kernel to return the VF's netdev to the host."""
        self.sh(f"ip netns add {pod}")
        added = self.cnitool("add", pod, ifname="eth0")
        assert 0 == added["rc"], added["err"]
        self.sh(f"ip netns del {pod}")
        self.sh(
            f"for i in $(seq 100); do ls /sys/bus/pci/devices/{vf}/net/* >/dev/null 2>&1 "
            "&& break; sleep 0.05; done"
        )

    def records(self) -> list[str]:
        return self.sh(f"ls {WORK}/state/allocations 2>/dev/null | grep -v '^\\.' || true")[
            "out"
        ].split()

    def reservations(self) -> list[str]:
        out = self.sh(f"ls {WORK}/ipam/igbnet 2>/dev/null || true")["out"].split()
        return [name for name in out if name[0].isdigit()]


def assert_same(before: dict[str, Any], after: dict[str, Any]) -> None:
    """Every attribute of the VF netdev and of the VF's entry in the PF's list is as
    before, one by one. One reading of the PF list's MAC is the same thing: a MAC never
    set through the PF shows as 00:00:00:00:00:00 until the VF first resets, and as the
    VF netdev's own MAC after that (igb records what the VF registers); the netdev's MAC
    itself is compared exactly above it."""
    for key in LINK_KEYS:
        assert (key, before["link"][key]) == (key, after["link"][key])
    for key in VF_KEYS:
        if key == "address" and before["vf"][key] == "00:00:00:00:00:00":
            assert after["vf"][key] in ("00:00:00:00:00:00", before["link"]["address"])
            continue
        assert (key, before["vf"][key]) == (key, after["vf"][key])


@pytest.fixture
def guest(vm_cni_tools: tuple[Path, Path], sriov_vm_clean: SriovVM) -> Guest:
    tool, plugins = vm_cni_tools
    return Guest(sriov_vm_clean, tool, plugins)


class TestIgbRoundTrip:
    def test_add_check_del_restores_exactly(self, guest: Guest) -> None:
        """A real igb VF: ADD with VLAN, QoS, spoofchk, trust and an address; CHECK; DEL
        puts every attribute of the VF netdev and the VF entry back."""
        vfs = guest.enable_vfs(2)
        vf = vfs[1]
        before = guest.view(vf)
        host_name = before["link"]["ifname"]
        guest.configure(deviceID=vf, vlan=100, vlanQoS=2, spoofchk="off", trust="on")
        guest.sh("ip netns add pod1")

        added = guest.cnitool("add", "pod1")
        assert 0 == added["rc"], added["err"] + guest.sh(f"cat {WORK}/sriov.log")["out"]
        result = json.loads(added["out"])
        address = result["ips"][0]["address"]
        inside = guest.ipj("-d", "-n", "pod1", "addr", "show", "dev", "net1")[0]
        assert vf == inside.get("parentdev")
        assert "UP" in inside["flags"]
        assert address in {f"{a['local']}/{a['prefixlen']}" for a in inside["addr_info"]}
        assert "default via 10.88.0.1 dev net1" in guest.sh("ip -n pod1 route")["out"]
        during = guest.view(vf)
        assert during["link"] is None  # gone from the host namespace
        assert [{"vlan": 100, "qos": 2}] == during["vf"]["vlan_list"]
        assert (False, True) == (during["vf"]["spoofchk"], during["vf"]["trust"])
        assert result["interfaces"][0]["mac"] == inside["address"]

        checked = guest.cnitool("check", "pod1")
        assert 0 == checked["rc"], checked["err"]

        deleted = guest.cnitool("del", "pod1")
        assert 0 == deleted["rc"], deleted["err"]
        after = guest.view(vf)
        assert_same(before, after)
        assert host_name == after["link"]["ifname"]
        assert ["lo"] == [link["ifname"] for link in guest.ipj("-n", "pod1", "link", "show")]
        assert [] == guest.records()
        assert [] == guest.reservations()
        assert 0 == guest.cnitool("del", "pod1")["rc"]

    def test_namespace_deleted_before_del(self, guest: Guest) -> None:
        """The pod namespace goes first (the kernel returns the VF under another name):
        DEL still restores the VF's name, MAC and settings."""
        vfs = guest.enable_vfs(2)
        vf = vfs[0]
        before = guest.view(vf)
        guest.configure(deviceID=vf, vlan=7, trust="on")
        guest.add_then_delete_namespace("pod2", vf)
        returned = guest.netdev(vf)
        deleted = guest.cnitool("del", "pod2", ifname="eth0")
        assert 0 == deleted["rc"], deleted["err"]
        after = guest.view(vf)
        print(f"the kernel returned the VF as {returned}; DEL renamed it back")
        assert_same(before, after)
        assert [] == guest.records()
        assert [] == guest.reservations()


class TestIgbOrphanReclaim:
    def test_the_agents_reclaim_restores_a_vf_whose_pod_is_gone(self, guest: Guest) -> None:
        """ADD, then the pod namespace deleted and no DEL ever: the agent's reclaim (its
        Reclaimer on the real kernel, grace 0) restores the VF's name, MAC and settings
        and drops the records; the IPAM reservation is owed to the runtime's DEL or GC,
        and the DEL that comes late releases it (and touches the VF no more)."""
        vfs = guest.enable_vfs(2)
        vf = vfs[1]
        before = guest.view(vf)
        guest.configure(deviceID=vf, vlan=9, trust="on")
        guest.add_then_delete_namespace("pod3", vf)
        assert len(guest.records()) == 1
        reclaimed = guest.vm.python(
            f"""
from sriovlib.agent.reclaim import Reclaimer
from sriovlib.attachments import AttachmentService
from sriovlib.host import Host
result = Reclaimer(AttachmentService(Host("/"), "{WORK}/state"), grace=0).step()
"""
        )
        assert [vf] == reclaimed
        assert_same(before, guest.view(vf))
        assert [] == guest.records()
        assert len(guest.reservations()) == 1  # owed to the runtime's DEL or GC
        late = guest.cnitool("del", "pod3", ifname="eth0")  # the DEL that came late
        assert 0 == late["rc"], late["err"]
        assert [] == guest.reservations()
        assert_same(before, guest.view(vf))  # and the VF, given to no one, untouched


class TestIgbFastPath:
    def test_the_agent_runs_add_and_del_and_its_sigkill_mid_add_loses_nothing(
        self, guest: Guest
    ) -> None:
        """The shipped ``sriovlib agent`` in the guest serves the fast path: the shipped
        ``sriov`` hands it an ADD (the VF in the pod with its VLAN and MAC) and a DEL
        (everything restored). Then the agent is SIGKILLed while it runs an ADD (once
        the VF's record is on disk): the binary answers code 11, and a DEL — in-process,
        the agent being dead — restores the VF exactly."""
        vf = guest.enable_vfs(2)[0]
        before = guest.view(vf)
        pid = start_in_guest(
            guest.vm,
            WORK,
            {"resourceList": [{"resourceName": "igb", "selectors": {"drivers": ["igbvf"]}}]},
        )
        guest.configure(deviceID=vf, vlan=11, mac="02:00:00:00:0b:01")
        guest.sh("ip netns add fp1")
        added = guest.cnitool("add", "fp1", agent=True)
        assert 0 == added["rc"], added["err"]
        assert {pid} == guest.plugin_pids("ADD")  # the agent ran it, not the binary
        link = json.loads(guest.sh("ip -n fp1 -j link show net1")["out"])[0]
        assert "02:00:00:00:0b:01" == link["address"]
        entry = guest.ipj("link", "show", "dev", guest.pf)[0]["vfinfo_list"][guest.vf_index(vf)]
        assert 11 == entry["vlan_list"][0]["vlan"]
        deleted = guest.cnitool("del", "fp1", agent=True)
        assert 0 == deleted["rc"], deleted["err"]
        assert_same(before, guest.view(vf))

        guest.sh("ip netns add fp2")
        allocations = f"{WORK}/state/allocations"
        killed = guest.sh(
            f"({guest.cnitool_command('add', 'fp2', agent=True)} > {WORK}/kill.out "
            f"2> {WORK}/kill.err; echo $? > {WORK}/kill.rc) & "
            f'for i in $(seq 3000); do [ -n "$(ls {allocations} 2>/dev/null)" ] && break; '
            f"sleep 0.005; done; kill -9 {pid}; wait; cat {WORK}/kill.rc {WORK}/kill.err"
        )["out"]
        rc, _, err = killed.partition("\n")
        assert "1" == rc.strip(), killed
        assert "the node agent stopped during the operation" in err  # code 11
        assert "dead" == guest.sh(f"[ -d /proc/{pid} ] && echo alive || echo dead")["out"].strip()
        assert 1 == len(guest.records())  # the half-done ADD, recorded
        deleted = guest.cnitool("del", "fp2", agent=True)  # no agent: in-process
        assert 0 == deleted["rc"], deleted["err"]
        assert 1 == len(guest.plugin_pids("DEL") - {pid})  # this DEL: the binary's own
        assert_same(before, guest.view(vf))
        assert [] == guest.records()
        assert [] == guest.reservations()


class TestIgbDamagedState:
    def test_del_with_the_record_and_entry_destroyed(self, guest: Guest) -> None:
        """The allocation record garbled and the finished entry gone while a real igb VF
        is in a pod with a VLAN, trust and spoofchk off: DEL brings the VF home (under
        the kernel's sriovvfN name, its host name being lost) in the safe defaults — no
        VLAN, spoofchk on, trust off — and only then drops the record and the lease."""
        vfs = guest.enable_vfs(2)
        vf = vfs[1]
        guest.configure(deviceID=vf, vlan=300, spoofchk="off", trust="on")
        guest.sh("ip netns add pod3")
        added = guest.cnitool("add", "pod3")
        assert 0 == added["rc"], added["err"]
        guest.sh(
            f"for f in {WORK}/state/allocations/*@*.json; do echo '{{\"format\": 1, ' > $f; "
            f"done; rm -f {WORK}/state/cni/attachments/*.json"
        )
        deleted = guest.cnitool("del", "pod3")
        assert 0 == deleted["rc"], deleted["err"] + guest.sh(f"cat {WORK}/sriov.log")["out"]
        after = guest.view(vf)
        assert after["link"] is not None  # home, in the host namespace
        assert after["link"]["ifname"].startswith("sriovvf")
        assert ["lo"] == [link["ifname"] for link in guest.ipj("-n", "pod3", "link", "show")]
        vlan = (after["vf"]["vlan_list"] or [{}])[0].get("vlan", 0)
        assert (0, True, False) == (vlan, after["vf"]["spoofchk"], after["vf"]["trust"])
        assert [] == guest.records()
        assert [] == guest.reservations()  # the recorded configuration was unreadable,
        # so this DEL's own configuration released the lease
