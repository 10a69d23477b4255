"""``sriovlib list -v`` on the real igb driver (QEMU's 82576 in the VM).

What ``list`` reports for each VF must be what ``ip -j link show PF`` reports, before
and after ``Host.configure_vf``; after a CNI ADD (the shipped ``sriov`` binary, no IPAM)
the VF shows its holder; as an unprivileged user the settings are still read and one
line says the store is unreadable. The guest is slow, so the whole scenario runs in one
round trip and each test checks one part of it.
"""

from __future__ import annotations

from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sriovlib.testing.vm import SriovVM
from sriovlib.testing.vm_fixtures import reset_guest

pytestmark = pytest.mark.vm

WORK = "/tmp/list-vm"
CONTAINER = "3f9c2a7d1e4b"

SCENARIO = r"""
def _list_vm_scenario(bin_dir):
    import contextlib, io, json, os, subprocess
    from sriovlib import Host
    from sriovlib.cli import main
    from sriovlib.cli.list import read_details
    from sriovlib.models import VfConfig

    work, container = "/tmp/list-vm", "3f9c2a7d1e4b"
    pf = os.environ["SRIOV_PFS"].split()[0]
    out = {"pf": pf}

    def sh(cmd, **kw):
        done = subprocess.run(cmd, shell=True, capture_output=True, text=True, **kw)
        return {"rc": done.returncode, "out": done.stdout, "err": done.stderr}

    def ip_vfs():
        shown = subprocess.run(["ip", "-j", "link", "show", "dev", pf],
                               capture_output=True, text=True, check=True).stdout
        return json.loads(shown)[0]["vfinfo_list"]

    def listed(*args):
        buffer = io.StringIO()
        with contextlib.redirect_stdout(buffer):
            status = main(["list", "--json", pf, *args])
        return {"status": status, "json": json.loads(buffer.getvalue())}

    sh(f"rm -rf {work} && mkdir -p {work}/bin")
    host = Host("/")
    host.set_num_vfs(pf, 3)
    out["before"] = {"list": listed(), "ip": ip_vfs()}

    vfs = host.vfs(pf)
    host.configure_vf(vfs[1], VfConfig(mac="02:00:00:00:aa:01", vlan=100, qos=3,
                                       spoofchk=False, trust=True, max_tx_rate=200))
    out["configured"] = {"list": listed(), "ip": ip_vfs()}

    counted = Host("/")
    read_details(counted, counted.inventory())
    out["requests"] = dict(counted.request_counts())

    conf = json.dumps({"cniVersion": "1.0.0", "name": "igbnet", "type": "sriov",
                       "deviceID": str(vfs[2].address), "vlan": 42, "trust": "on"})
    sh("ip netns add listpod")
    env = {**os.environ, "CNI_CONTAINERID": container, "CNI_NETNS": "/run/netns/listpod",
           "CNI_IFNAME": "net1", "CNI_PATH": f"{work}/bin",
           "SRIOVLIB_STATE_DIR": f"{work}/state"}
    cni = lambda command: sh(f"{bin_dir}/sriov", input=conf, env={**env, "CNI_COMMAND": command})
    out["add"] = cni("ADD")
    out["held"] = {"list": listed("--state-dir", f"{work}/state"), "ip": ip_vfs()}
    out["table"] = sh(f"COLUMNS=250 {bin_dir}/sriovlib list -v {pf} --state-dir {work}/state")
    out["nobody"] = sh(f"setpriv --reuid 65534 --regid 65534 --clear-groups "
                       f"{bin_dir}/sriovlib list -v {pf} --state-dir {work}/state")
    out["del"] = cni("DEL")
    out["released"] = {"list": listed("--state-dir", f"{work}/state"), "ip": ip_vfs()}
    return out
"""


@pytest.fixture(scope="module")
def observed(sriov_vm: SriovVM) -> Iterator[dict[str, Any]]:
    """Run the scenario in the guest (one round trip); leave the VM as it was."""
    reset_guest(sriov_vm)
    try:
        bin_dir = str(Path(sriov_vm.python_executable).parent)
        sriov_vm.python(SCENARIO, timeout=60)
        yield sriov_vm.python(f"result = _list_vm_scenario({bin_dir!r})", timeout=600)
    finally:
        sriov_vm.run(f"rm -rf {WORK}")
        reset_guest(sriov_vm)


def from_ip(entry: dict[str, Any]) -> dict[str, Any]:
    """One ``vfinfo_list`` entry of ``ip -j link show`` as ``list --json`` spells it; a
    key ip leaves out (the driver does not report it) is None."""
    vlan = (entry.get("vlan_list") or [{}])[0]
    return {
        "mac": entry["address"],
        "vlan": vlan.get("vlan", 0),
        "qos": vlan.get("qos", 0),
        "vlan_proto": vlan.get("protocol", "802.1Q").lower(),
        "spoofchk": entry.get("spoofchk"),
        "trust": entry.get("trust"),
        "link_state": entry.get("link_state"),
        "min_tx_rate": entry["rate"]["min_tx"],
        "max_tx_rate": entry["rate"]["max_tx"],
        "query_rss": entry.get("query_rss_en"),
    }


def settings(step: dict[str, Any]) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(what list reported, what ip reported) for every VF, in VF order."""
    (pf,) = step["list"]["json"]["pfs"]
    return [vf["settings"] for vf in pf["vfs"]], [from_ip(entry) for entry in step["ip"]]


def holders(step: dict[str, Any]) -> list[dict[str, Any] | None]:
    (pf,) = step["list"]["json"]["pfs"]
    return [vf["holder"] for vf in pf["vfs"]]


class TestSettingsEqualIp:
    @pytest.mark.parametrize("step", ["before", "configured", "held", "released"])
    def test_every_vf(self, observed: dict[str, Any], step: str) -> None:
        """Each VF's settings are ip's, field by field, at every step of the scenario."""
        ours, ip = settings(observed[step])
        assert 0 == observed[step]["list"]["status"]
        assert 3 == len(ours)
        assert ip == ours

    def test_configure_vf_shows(self, observed: dict[str, Any]) -> None:
        """The configured VF shows what configure_vf set; igb does not report query_rss
        (ip leaves it out), so it is null, not false."""
        vf1 = settings(observed["configured"])[0][1]
        assert {
            "mac": "02:00:00:00:aa:01",
            "vlan": 100,
            "qos": 3,
            "vlan_proto": "802.1q",
            "spoofchk": False,
            "trust": True,
            "link_state": "auto",
            "min_tx_rate": 0,
            "max_tx_rate": 200,
            "query_rss": None,
        } == vf1

    def test_one_request_per_pf(self, observed: dict[str, Any]) -> None:
        """Reading the settings of a PF's three VFs is one netlink request."""
        assert {"vf_list": 1} == observed["requests"]


class TestHolderOnIgb:
    def test_after_add_and_del(self, observed: dict[str, Any]) -> None:
        """After a CNI ADD the VF is held by the container as net1 in the pod's
        namespace, with the VLAN and trust ADD set; after DEL it is free again."""
        assert 0 == observed["add"]["rc"], observed["add"]["err"]
        vf0, vf1, vf2 = holders(observed["held"])
        assert ("held", CONTAINER, "net1", "/run/netns/listpod") == (
            vf2["state"],
            vf2["container_id"],
            vf2["ifname"],
            vf2["netns"],
        )
        assert vf2["since"]
        assert ["free", "free"] == [vf0["state"], vf1["state"]]
        held = settings(observed["held"])[0][2]
        assert (42, True) == (held["vlan"], held["trust"])
        assert 0 == observed["del"]["rc"], observed["del"]["err"]
        assert ["free"] * 3 == [h["state"] for h in holders(observed["released"])]

    def test_table(self, observed: dict[str, Any]) -> None:
        """The human table has the settings and the holder of each VF (printed: it is
        the example in docs/cli.md)."""
        table = observed["table"]
        print(table["out"])
        assert (0, "") == (table["rc"], table["err"])
        row = next(line for line in table["out"].splitlines() if f"{CONTAINER}, net1" in line)
        assert "42" in row.split("│")[8]
        assert "in /run/netns/listpod, since " in row
        assert "Query RSS" in table["out"]


class TestUnprivileged:
    def test_nobody(self, observed: dict[str, Any]) -> None:
        """As nobody the settings are still read (reading a VF list needs no privilege);
        the root-only store is one line, and there is no traceback."""
        nobody = observed["nobody"]
        lines = nobody["out"].splitlines()
        assert (0, "") == (nobody["rc"], nobody["err"])
        assert any("02:00:00:00:aa:01" in line for line in lines)
        why = [line for line in lines if "holders" in line]
        assert [
            f"VF holders not shown: cannot read {WORK}/state/allocations: Permission denied."
        ] == why
