"""ADD, DEL, CHECK, GC and STATUS on a fake node (FakeNetlink, fake IPAM)."""

from __future__ import annotations

import errno
import fcntl
import json
import os
import shutil
from typing import Any

import pytest

from sriovlib.allocation import AllocationStore
from sriovlib.cni.protocol import CniError
from sriovlib.models import VfState, VlanProto
from sriovlib.netlink import Route
from sriovlib.testing.cni import FakeIpam

from .conftest import Node


def pristine(node: Node, index: int) -> VfState:
    return VfState(index=index, spoofchk=True, trust=False, query_rss=False)


class TestAdd:
    def test_add_configures_and_attaches(self, node: Node) -> None:
        """ADD applies the VF settings, moves the netdev in as CNI_IFNAME with the MAC,
        configures the IPAM address and route, and reports it all."""
        conf = node.conf(
            1,
            vlan=100,
            vlanQoS=2,
            mac="CA:FE:C0:FF:EE:01",
            spoofchk="off",
            trust="on",
            max_tx_rate=500,
        )
        status, result = node.invoke("ADD", conf)
        assert 0 == status, result
        state = node.state(1)
        assert (100, 2, VlanProto.DOT1Q, "ca:fe:c0:ff:ee:01", False, True, 500) == (
            state.vlan,
            state.qos,
            state.vlan_proto,
            state.mac,
            state.spoofchk,
            state.trust,
            state.max_tx_rate,
        )
        link = node.kernel.link("net1", node.pod)
        assert ("ca:fe:c0:ff:ee:01", True, str(node.vf(1))) == (link.mac, link.up, link.parent)
        assert ("10.56.217.2/24",) == node.addresses()
        assert (Route("10.56.217.0/24"), Route("0.0.0.0/0", "10.56.217.1")) == node.routes()
        assert {"ipv4.arp_notify": 1, "ipv6.ndisc_notify": 1} == node.kernel.sysctls(
            "net1", node.pod
        )
        assert {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "net1", "mac": "ca:fe:c0:ff:ee:01", "sandbox": node.pod}],
            "ips": [{"address": "10.56.217.2/24", "gateway": "10.56.217.1", "interface": 0}],
            "routes": [{"dst": "0.0.0.0/0"}],
            "dns": {},
        } == result

    def test_result_110_has_pci_id_and_mtu(self, node: Node) -> None:
        """A 1.1.0 configuration gets interface mtu and pciID in the result."""
        status, result = node.invoke("ADD", node.conf(0, cniVersion="1.1.0"))
        assert 0 == status, result
        interface = result["interfaces"][0]
        assert (str(node.vf(0)), 1500) == (interface["pciID"], interface["mtu"])

    @pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
    def test_old_versions(self, node: Node, version: str) -> None:
        """Results for 0.x configurations carry ips[].version."""
        status, result = node.invoke("ADD", node.conf(0, cniVersion=version))
        assert 0 == status, result
        assert (version, "4") == (result["cniVersion"], result["ips"][0]["version"])

    def test_no_ipam(self, node: Node) -> None:
        """Without ipam the result has the interface and no IPs."""
        status, result = node.invoke("ADD", node.conf(0, ipam=None))
        assert 0 == status, result
        assert "ips" not in result
        assert [] == node.ipam.calls

    def test_ifname_taken_in_pod(self, node: Node) -> None:
        """CNI_IFNAME may be a name the host uses: the rename happens inside the pod."""
        status, _ = node.invoke("ADD", node.conf(0), CNI_IFNAME="ens1f0v1")
        assert 0 == status
        assert ("ens1f0v1",) == node.kernel.link_names(node.pod)

    def test_prev_result_is_chained(self, node: Node) -> None:
        """With a prevResult, our interface and IPs are appended (indices shifted)."""
        prev = {
            "cniVersion": "1.0.0",
            "interfaces": [{"name": "eth0", "sandbox": node.pod}],
            "ips": [{"address": "192.168.0.5/24", "interface": 0}],
            "dns": {"nameservers": ["192.168.0.1"]},
        }
        status, result = node.invoke("ADD", node.conf(0, prevResult=prev))
        assert 0 == status, result
        assert ["eth0", "net1"] == [i["name"] for i in result["interfaces"]]
        assert [0, 1] == [ip["interface"] for ip in result["ips"]]
        assert {"nameservers": ["192.168.0.1"]} == result["dns"]

    def test_dpdk_vf(self, node: Node) -> None:
        """A vfio-pci VF gets its settings, no netdev move; DEL restores the settings."""
        conf = node.conf(3, vlan=7, mac="02:00:00:00:00:07")
        status, result = node.invoke("ADD", conf)
        assert 0 == status, result
        assert (7, "02:00:00:00:00:07") == (node.state(3).vlan, node.state(3).mac)
        assert () == node.kernel.link_names(node.pod)
        assert "02:00:00:00:00:07" == result["interfaces"][0]["mac"]
        record = AllocationStore(node.tmp / "state/allocations").get(node.vf(3))
        assert record is not None
        assert record.original_state["attachment"]["dpdk"] is True
        status, _ = node.invoke("DEL", conf)
        assert 0 == status
        assert pristine(node, 3) == node.state(3)
        assert {} == node.ipam.allocations

    def test_missing_vf(self, node: Node) -> None:
        """A deviceID that is no VF here is code 101 and changes nothing."""
        status, error = node.invoke("ADD", node.conf(0, deviceID="0000:99:00.1"))
        assert (1, 101) == (status, error["code"])
        assert [] == node.ipam.calls

    def test_pf_is_not_a_vf(self, node: Node) -> None:
        """deviceID naming the PF itself is refused."""
        status, error = node.invoke("ADD", node.conf(0, deviceID=str(node.pf.address)))
        assert (1, 101) == (status, error["code"])

    def test_pf_without_netdev(self, node: Node) -> None:
        """VF settings go through the PF's netdev: without one, code 101 before anything
        is recorded or changed."""
        shutil.rmtree(node.kernel.fs.sys / "bus/pci/devices" / str(node.pf.address) / "net")
        status, error = node.invoke("ADD", node.conf(0, vlan=3))
        assert (1, 101) == (status, error["code"])
        assert "is its driver bound?" in error["details"]
        assert () == AllocationStore(node.tmp / "state/allocations").records()
        assert [] == node.ipam.calls
        assert 0 == node.kernel.requests["move_link"] + node.kernel.requests["set_vf"]

    def test_netns_must_exist(self, node: Node) -> None:
        """ADD into a namespace that does not exist is code 4."""
        status, error = node.invoke("ADD", node.conf(0), CNI_NETNS="/run/netns/nope")
        assert (1, 4) == (status, error["code"])

    def test_ipam_plugin_missing(self, node: Node) -> None:
        """A missing IPAM plugin is found out before the VF is touched."""
        node.ipam.missing = True
        status, error = node.invoke("ADD", node.conf(0, vlan=3))
        assert (1, 104) == (status, error["code"])
        assert pristine(node, 0) == node.state(0)


class TestRollback:
    def assert_untouched(self, node: Node, index: int = 0) -> None:
        assert pristine(node, index) == node.state(index)
        assert f"ens1f0v{index}" in node.kernel.link_names()
        assert () == node.kernel.link_names(node.pod)
        assert {} == node.ipam.allocations
        assert () == AllocationStore(node.tmp / "state/allocations").records()

    def test_ipam_failure(self, node: Node) -> None:
        """IPAM refusing ADD undoes the VF settings and the move; its error is passed on."""
        node.ipam.failures["ADD"] = CniError(7, "no such subnet", "details")
        status, error = node.invoke("ADD", node.conf(0, vlan=9, mac="02:00:00:00:00:09"))
        assert (1, 7) == (status, error["code"])
        assert "rolled back" in error["details"]
        self.assert_untouched(node)

    @pytest.mark.parametrize(
        ("kind", "code", "what"),
        [
            ("add_addr", errno.EADDRNOTAVAIL, "adding address 10.56.217.2/24 failed"),
            ("add_route", errno.ENETUNREACH, "adding route 0.0.0.0/0 via 10.56.217.1 failed"),
        ],
    )
    def test_address_failure_releases_ipam(
        self, node: Node, kind: str, code: int, what: str
    ) -> None:
        """The kernel refusing an address or a route after IPAM ADD: code 103 naming it,
        IPAM DEL, the VF restored."""
        node.kernel.fail(kind, code)
        status, error = node.invoke("ADD", node.conf(0, vlan=9))
        assert (1, 103, what) == (status, error["code"], error["msg"])
        assert errno.errorcode[code] in error["details"]
        assert ["ADD", "DEL"] == [c[0] for c in node.ipam.calls]
        self.assert_untouched(node)

    def test_existing_route_counts_as_done(self, node: Node) -> None:
        """A route the kernel already has (EEXIST) is not an error."""
        node.kernel.fail("add_route", errno.EEXIST)
        status, result = node.invoke("ADD", node.conf(0))
        assert 0 == status, result

    def test_notify_sysctls_are_best_effort(self, node: Node) -> None:
        """A sysctl that cannot be set (IPv6 disabled: no ipv6/conf) does not fail ADD."""
        node.kernel.fail("sysctl", errno.ENOENT, match="ipv6")
        status, result = node.invoke("ADD", node.conf(0))
        assert 0 == status, result
        assert {"ipv4.arp_notify": 1} == node.kernel.sysctls("net1", node.pod)

    def test_ipv6_result(self, node: Node) -> None:
        """An IPv6 result: the address, the interface's prefix route and the default
        route through the gateway are in the pod; CHECK passes."""
        node.ipam = node.ctx.ipam = FakeIpam("fd00:56::/120", routes=("::/0",))
        conf = node.conf(0)
        status, result = node.invoke("ADD", conf)
        assert 0 == status, result
        assert ("fd00:56::2/120",) == node.addresses()
        assert (Route("fd00:56::/120"), Route("::/0", "fd00:56::1")) == node.routes()
        assert (0, None) == node.invoke("CHECK", {**conf, "prevResult": result})

    def test_vf_setting_refused(self, node: Node) -> None:
        """The driver refusing a VF setting is code 103, nothing left changed."""
        node.kernel.fail("set_vf", errno.EOPNOTSUPP, match="trust")
        status, error = node.invoke("ADD", node.conf(0, vlan=9, trust="on"))
        assert (1, 103) == (status, error["code"])
        self.assert_untouched(node)

    def test_move_refused(self, node: Node) -> None:
        """A failed move into the pod is rolled back."""
        node.kernel.fail("move_link", errno.EINVAL)
        status, error = node.invoke("ADD", node.conf(0, vlan=9))
        assert (1, 103) == (status, error["code"])
        self.assert_untouched(node)

    def test_busy_driver_is_try_again(self, node: Node) -> None:
        """EBUSY that outlasts the retries is code 11."""
        node.kernel.fail("set_vf", errno.EBUSY, match="vlan", times=10)
        status, error = node.invoke("ADD", node.conf(0, vlan=9))
        assert (1, 11) == (status, error["code"])
        self.assert_untouched(node)

    def test_cache_write_failure(self, node: Node) -> None:
        """Even the last step failing (state not writable) rolls everything back."""
        (node.tmp / "state/cni").mkdir(parents=True)
        (node.tmp / "state/cni/attachments").write_text("a file, not a directory")
        status, error = node.invoke("ADD", node.conf(0, vlan=9))
        assert (1, 106) == (status, error["code"])
        self.assert_untouched(node)


class TestDel:
    def add(self, node: Node, index: int = 0, **fields: Any) -> dict[str, Any]:
        conf = node.conf(index, vlan=42, mac="02:00:00:00:00:42", trust="on", **fields)
        status, result = node.invoke("ADD", conf)
        assert 0 == status, result
        return conf

    def assert_restored(self, node: Node, index: int = 0) -> None:
        assert pristine(node, index) == node.state(index)
        name = f"ens1f0v{index}"
        assert node.original[name] == node.kernel.link(name)
        assert {} == node.ipam.allocations
        assert () == AllocationStore(node.tmp / "state/allocations").records()
        assert [] == list((node.tmp / "state/cni/attachments").glob("*.json"))

    def test_del_restores_everything(self, node: Node) -> None:
        """DEL: IPAM released, VF settings, name, MAC, MTU, up state back, records gone."""
        before = node.kernel.link("ens1f0v0")
        conf = self.add(node)
        status, out = node.invoke("DEL", conf)
        assert (0, None) == (status, out)
        assert before == node.kernel.link("ens1f0v0")
        self.assert_restored(node)

    def test_del_twice(self, node: Node) -> None:
        """A second DEL succeeds and does nothing."""
        conf = self.add(node)
        assert 0 == node.invoke("DEL", conf)[0]
        assert 0 == node.invoke("DEL", conf)[0]
        self.assert_restored(node)

    def test_del_without_add(self, node: Node) -> None:
        """DEL of something never added succeeds (and still asks IPAM to release)."""
        status, _ = node.invoke("DEL", node.conf(2))
        assert 0 == status
        assert [("DEL", "c1", "net1")] == node.ipam.calls

    def test_del_without_cache(self, node: Node) -> None:
        """With the cache gone, DEL restores from the allocation record."""
        conf = self.add(node)
        for path in (node.tmp / "state/cni/attachments").glob("*.json"):
            path.unlink()
        assert 0 == node.invoke("DEL", conf)[0]
        self.assert_restored(node)

    def test_del_with_corrupt_cache(self, node: Node) -> None:
        """A corrupt cache file is ignored in favour of the record."""
        conf = self.add(node)
        for path in (node.tmp / "state/cni/attachments").glob("*.json"):
            path.write_text("{garbage")
        assert 0 == node.invoke("DEL", conf)[0]
        self.assert_restored(node)

    def test_del_without_ipam_in_stdin(self, node: Node) -> None:
        """A DEL whose configuration lost its ipam still releases the recorded one."""
        conf = self.add(node)
        assert 0 == node.invoke("DEL", {**conf, "ipam": None})[0]
        self.assert_restored(node)

    def test_del_netns_gone(self, node: Node) -> None:
        """After the pod namespace is deleted (the VF is back on the host as devN),
        DEL still restores the name and settings."""
        conf = self.add(node)
        node.kernel.delete_netns(node.pod)
        assert 0 == node.invoke("DEL", conf)[0]
        self.assert_restored(node)

    def test_del_empty_netns(self, node: Node) -> None:
        """DEL without CNI_NETNS uses the recorded namespace."""
        conf = self.add(node)
        assert 0 == node.invoke("DEL", conf, CNI_NETNS=None)[0]
        self.assert_restored(node)

    def test_del_invalid_vf_fields(self, node: Node) -> None:
        """DEL with a configuration that would not pass ADD still cleans up."""
        conf = self.add(node)
        assert 0 == node.invoke("DEL", {**conf, "vlan": 99999, "trust": "maybe"})[0]
        self.assert_restored(node)

    def test_del_restore_failure_keeps_state(self, node: Node) -> None:
        """When restoring fails, DEL fails and keeps the record; a retry finishes."""
        conf = self.add(node)
        node.kernel.fail("move_link", errno.EBUSY, times=1)
        status, error = node.invoke("DEL", conf)
        assert (1, 107) == (status, error["code"])
        assert 1 == len(AllocationStore(node.tmp / "state/allocations").records())
        assert 0 == node.invoke("DEL", conf)[0]
        self.assert_restored(node)

    def test_del_ipam_failure_keeps_state(self, node: Node) -> None:
        """An IPAM DEL failure is reported (the VF is restored anyway) and retried."""
        conf = self.add(node)
        node.ipam.failures["DEL"] = CniError(11, "busy")
        assert (1, 11) == (node.invoke("DEL", conf)[0], 11)
        assert pristine(node, 0) == node.state(0)
        assert 0 == node.invoke("DEL", conf)[0]
        self.assert_restored(node)

    def test_altname_cleared(self, tmp_path: Any, node: Node) -> None:
        """If the kernel kept the pod name as an altname, release drops it (sriov-cni 445)."""
        node.kernel.altname_on_rename = True
        conf = self.add(node)
        assert 0 == node.invoke("DEL", conf)[0]
        assert "net1" not in node.kernel.link("ens1f0v0").altnames


class TestReuse:
    def test_second_add_same_vf_other_pod(self, node: Node) -> None:
        """A VF held by a live pod is code 102."""
        assert 0 == node.invoke("ADD", node.conf(0))[0]
        other = node.kernel.add_netns("pod2")
        status, error = node.invoke("ADD", node.conf(0), CNI_CONTAINERID="c2", CNI_NETNS=other)
        assert (1, 102) == (status, error["code"])
        assert "c1" in error["msg"]

    def test_stale_holder_reclaimed(self, node: Node) -> None:
        """A holder whose namespace is gone is cleaned up (VF and IPAM) by the next ADD."""
        conf = node.conf(0, vlan=5)
        assert 0 == node.invoke("ADD", conf)[0]
        node.kernel.delete_netns(node.pod)
        other = node.kernel.add_netns("pod2")
        status, result = node.invoke(
            "ADD", node.conf(0, vlan=6), CNI_CONTAINERID="c2", CNI_NETNS=other
        )
        assert 0 == status, result
        assert {("c2", "net1")} == set(node.ipam.allocations)
        assert 6 == node.state(0).vlan
        assert 0 == node.invoke("DEL", node.conf(0), CNI_CONTAINERID="c2", CNI_NETNS=other)[0]
        assert pristine(node, 0) == node.state(0)
        assert "ens1f0v0" in node.kernel.link_names()

    def test_repeated_add(self, node: Node) -> None:
        """A second ADD of the same attachment redoes it cleanly (one IP, one record)."""
        assert 0 == node.invoke("ADD", node.conf(0, vlan=5))[0]
        status, result = node.invoke("ADD", node.conf(0, vlan=5))
        assert 0 == status, result
        assert 1 == len(node.ipam.allocations)
        assert 0 == node.invoke("DEL", node.conf(0))[0]
        assert pristine(node, 0) == node.state(0)

    def test_same_attachment_other_vf(self, node: Node) -> None:
        """The same container interface cannot take a second VF without a DEL."""
        assert 0 == node.invoke("ADD", node.conf(0))[0]
        status, error = node.invoke("ADD", node.conf(1))
        assert (1, 102) == (status, error["code"])

    def test_lock_contention_is_code_11(self, node: Node) -> None:
        """While another command holds the VF's lock, ADD answers 11 (try again later)."""
        locks = node.tmp / "state/cni/locks"
        locks.mkdir(parents=True)
        fd = os.open(locks / f"{node.vf(0)}.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            status, error = node.invoke("ADD", node.conf(0))
        finally:
            os.close(fd)
        assert (1, 11) == (status, error["code"])
        assert pristine(node, 0) == node.state(0)


class TestCheck:
    def add(self, node: Node, **fields: Any) -> dict[str, Any]:
        conf = node.conf(0, cniVersion="1.0.0", vlan=42, mac="02:00:00:00:00:42", **fields)
        status, result = node.invoke("ADD", conf)
        assert 0 == status, result
        return {**conf, "prevResult": result}

    def test_check_passes(self, node: Node) -> None:
        """CHECK right after ADD succeeds with no output, and asks IPAM too."""
        conf = self.add(node)
        assert (0, None) == node.invoke("CHECK", conf)
        assert "CHECK" == node.ipam.calls[-1][0]

    def test_check_needs_prev_result(self, node: Node) -> None:
        """CHECK without prevResult is code 7."""
        conf = self.add(node)
        del conf["prevResult"]
        assert 7 == node.invoke("CHECK", conf)[1]["code"]

    def test_check_unknown(self, node: Node) -> None:
        """CHECK of an attachment the plugin does not know fails."""
        conf = self.add(node)
        assert 105 == node.invoke("CHECK", conf, CNI_CONTAINERID="other")[1]["code"]

    def test_check_vlan_changed(self, node: Node) -> None:
        """CHECK notices a VF setting changed behind its back."""
        conf = self.add(node)
        node.kernel.set_vf_vlan("ens1f0", 0, 43, 0, VlanProto.DOT1Q)
        status, error = node.invoke("CHECK", conf)
        assert (1, 105) == (status, error["code"])
        assert "vlan" in error["details"]

    def test_check_address_removed(self, node: Node) -> None:
        """CHECK notices a missing address."""
        conf = self.add(node)
        node.kernel.remove_address("net1", "10.56.217.2/24", node.pod)
        status, error = node.invoke("CHECK", conf)
        assert (1, 105) == (status, error["code"])
        assert "10.56.217.2/24" in error["details"]

    def test_check_route_gone(self, node: Node) -> None:
        """CHECK notices a missing route (taking the interface down and up again drops
        the routes through it, as the kernel does)."""
        conf = self.add(node)
        index = node.kernel.link("net1", node.pod).index
        node.kernel.set_link(index, node.pod, up=False)
        node.kernel.set_link(index, node.pod, up=True)
        status, error = node.invoke("CHECK", conf)
        assert (1, 105) == (status, error["code"])
        assert "route 0.0.0.0/0 via 10.56.217.1 is missing" in error["details"]
        assert "address" not in error["details"]  # IPv4 addresses stay

    def test_check_interface_gone(self, node: Node) -> None:
        """CHECK notices the interface renamed away."""
        conf = self.add(node)
        index = node.kernel.link("net1", node.pod).index
        node.kernel.set_link(index, node.pod, up=False)
        node.kernel.rename_link(index, "other", node.pod)
        status, error = node.invoke("CHECK", conf)
        assert (1, 105) == (status, error["code"])
        assert "no interface net1" in error["details"]

    def test_check_mac_changed(self, node: Node) -> None:
        """CHECK notices the interface's MAC changed."""
        conf = self.add(node)
        index = node.kernel.link("net1", node.pod).index
        node.kernel.set_link(index, node.pod, mac="02:00:00:00:00:99")
        status, error = node.invoke("CHECK", conf)
        assert (1, 105) == (status, error["code"])
        assert "MAC" in error["details"]

    def test_check_ipam_failure(self, node: Node) -> None:
        """IPAM's CHECK failure is passed on."""
        conf = self.add(node)
        node.ipam.failures["CHECK"] = CniError(7, "lost the lease")
        assert 7 == node.invoke("CHECK", conf)[1]["code"]

    def test_check_old_version_refused(self, node: Node) -> None:
        """CHECK with a 0.3.1 configuration is code 1."""
        conf = self.add(node)
        assert 1 == node.invoke("CHECK", {**conf, "cniVersion": "0.3.1"})[1]["code"]


class TestGcAndStatus:
    def test_gc_releases_stale(self, node: Node) -> None:
        """GC releases attachments of this network that are not in the valid list."""
        for index, cid in ((0, "keep"), (1, "drop")):
            pod = node.kernel.add_netns(f"pod-{cid}")
            status, _ = node.invoke(
                "ADD", node.conf(index, vlan=10 + index), CNI_CONTAINERID=cid, CNI_NETNS=pod
            )
            assert 0 == status
        gc = node.conf(0, cniVersion="1.1.0")
        gc["cni.dev/valid-attachments"] = [{"containerID": "keep", "ifname": "net1"}]
        status, out = node.invoke("GC", gc, CNI_CONTAINERID=None, CNI_NETNS=None, CNI_IFNAME=None)
        assert (0, None) == (status, out)
        assert 10 == node.state(0).vlan
        assert pristine(node, 1) == node.state(1)
        records = AllocationStore(node.tmp / "state/allocations").records()
        assert [("keep", "net1")] == [(r.owner.container_id, r.owner.ifname) for r in records]
        assert {("keep", "net1")} == set(node.ipam.allocations)
        assert "GC" == node.ipam.calls[-1][0]

    def test_gc_other_network_untouched(self, node: Node) -> None:
        """GC only touches attachments of its own network."""
        assert 0 == node.invoke("ADD", node.conf(0, name="other-net"))[0]
        gc = node.conf(0, cniVersion="1.1.0", ipam=None)
        gc["cni.dev/valid-attachments"] = []
        assert 0 == node.invoke("GC", gc)[0]
        assert 1 == len(AllocationStore(node.tmp / "state/allocations").records())

    def test_gc_malformed_list(self, node: Node) -> None:
        """A malformed valid-attachments list is code 7."""
        gc = node.conf(0, cniVersion="1.1.0")
        gc["cni.dev/valid-attachments"] = [{"containerID": 1}]
        assert 7 == node.invoke("GC", gc)[1]["code"]

    @pytest.mark.parametrize(
        "error",
        [CniError(4, "unknown CNI_COMMAND: GC"), CniError(3, "missing containerID")],
        ids=["unknown-command", "missing-container-id"],
    )
    def test_gc_ipam_predating_gc(self, node: Node, error: CniError) -> None:
        """An IPAM plugin that does not know GC (code 4, or code 3 for the container id
        GC does not have, as Debian's host-local 1.1.1 answers) does not fail GC."""
        node.ipam.failures["GC"] = error
        gc = node.conf(0, cniVersion="1.1.0")
        gc["cni.dev/valid-attachments"] = []
        assert (0, None) == node.invoke("GC", gc)

    def test_status_ready(self, node: Node) -> None:
        """STATUS with a usable state directory and sysfs exits 0 silently."""
        assert (0, None) == node.invoke("STATUS", node.conf(0, cniVersion="1.1.0"))
        assert "STATUS" == node.ipam.calls[-1][0]

    def test_status_not_ready(self, node: Node) -> None:
        """An unusable state directory makes STATUS answer 50."""
        node.ctx.state_dir = node.tmp / "afile"
        node.ctx.state_dir.write_text("x")
        status, error = node.invoke("STATUS", node.conf(0, cniVersion="1.1.0"))
        assert (1, 50) == (status, error["code"])

    def test_status_ipam_not_ready(self, node: Node) -> None:
        """IPAM's STATUS failure is passed on as 50 (or its own 50/51)."""
        node.ipam.failures["STATUS"] = CniError(51, "limited")
        assert 51 == node.invoke("STATUS", node.conf(0, cniVersion="1.1.0"))[1]["code"]
        node.ipam.failures["STATUS"] = CniError(999, "weird")
        assert 50 == node.invoke("STATUS", node.conf(0, cniVersion="1.1.0"))[1]["code"]

    @pytest.mark.parametrize(
        "error",
        [
            CniError(1, "incompatible CNI versions"),
            CniError(4, "unknown CNI_COMMAND: STATUS"),
            CniError(3, "missing containerID"),
        ],
        ids=["incompatible", "unknown-command", "missing-container-id"],
    )
    def test_status_ipam_predating_status(self, node: Node, error: CniError) -> None:
        """An IPAM plugin that predates STATUS (code 1, 4, or 3 for the container id
        STATUS does not have) counts as ready."""
        node.ipam.failures["STATUS"] = error
        assert (0, None) == node.invoke("STATUS", node.conf(0, cniVersion="1.1.0"))

    def test_status_needs_110(self, node: Node) -> None:
        """STATUS and GC with a 1.0.0 configuration are code 1."""
        assert 1 == node.invoke("STATUS", node.conf(0))[1]["code"]
        assert 1 == node.invoke("GC", node.conf(0))[1]["code"]


class TestLogging:
    def test_log_file(self, node: Node) -> None:
        """logFile receives the log lines; logLevel debug adds the netlink request count."""
        log_file = node.tmp / "sriov.log"
        conf = node.conf(0, logFile=str(log_file), logLevel="debug")
        assert 0 == node.invoke("ADD", conf)[0]
        text = log_file.read_text()
        assert "ADD c1/net1: ADD done" in text
        assert "netlink requests:" in text
        counts = json.loads(text.split("netlink requests: ")[1].split(" ", 1)[1].rsplit(" (", 1)[0])
        assert counts["move_link"] == 1

    def test_unwritable_log_file(self, node: Node, capsys: pytest.CaptureFixture[str]) -> None:
        """An unwritable logFile falls back to stderr; the command still works."""
        conf = node.conf(0, logFile="/nonexistent-dir/x.log")
        assert 0 == node.invoke("ADD", conf)[0]
        assert "cannot open logFile" in capsys.readouterr().err
