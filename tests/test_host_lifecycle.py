"""Host's VF lifecycle on the fake kernel: numvfs, settings, capabilities, attach/release."""

from __future__ import annotations

import contextlib
import errno
import json
import os
import shutil
from pathlib import Path

import attrs
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sriovlib.host import Host, NotApplied, VfsNotReady
from sriovlib.models import (
    AttachSnapshot,
    InvalidVfConfig,
    PciAddress,
    VfConfig,
    VfKnob,
    VfState,
    VirtualFunction,
    VlanProto,
)
from sriovlib.netlink import Busy, InvalidValue, KernelError, KernelNotFound, Unsupported
from sriovlib.plugins.manager import BUILTINS, Plugins
from sriovlib.testing import FakeSysfs, add_nic_model
from sriovlib.testing.fakenetlink import FakeNetlink

PF = PciAddress(0, 1, 0, 0)
IGB_SUPPORTED = {"mac", "vlan", "qos", "spoofchk", "trust", "max_tx_rate"}
IGB_REFUSED = {
    "link_state": "EOPNOTSUPP",
    "query_rss": "EOPNOTSUPP",
    "min_tx_rate": "EINVAL",
    "802.1ad": "EPROTONOSUPPORT",
}


#: Vendor plugins off: the Host on its own, facing the fake kernel's igb rules.
GENERIC_ONLY = Plugins(entry_points=False, disabled=BUILTINS)


def _kernel(root: Path, preset: str = "igb", **options: object) -> FakeNetlink:
    fs = FakeSysfs(root)
    add_nic_model(fs, preset, bus=0x01, ports=1, netdev_prefix="pf")
    return FakeNetlink(fs, **options)  # type: ignore[arg-type]


@pytest.fixture
def kernel(tmp_path: Path) -> FakeNetlink:
    """A fake igb port ``pf0`` with 4 VFs."""
    fake = _kernel(tmp_path / "root")
    fake.host(poll_interval=0.001).set_num_vfs("pf0", 4)
    fake.requests.clear()
    return fake


@pytest.fixture
def host(kernel: FakeNetlink) -> Host:
    """A Host on the fake kernel, with short waits."""
    return kernel.host(poll_interval=0.001, verify_timeout=0.01)


def _vf(host: Host, index: int) -> VirtualFunction:
    return host.vfs("pf0")[index]


def _vfio_node(tmp_path: Path) -> tuple[FakeNetlink, Host]:
    """A fake igb port ``pf0`` with 2 VFs, VF 1 bound to vfio-pci (no netdev)."""
    fs = FakeSysfs(tmp_path / "root")
    add_nic_model(fs, "igb", bus=0x01, ports=1, num_vfs=2, vfio_vfs=[1], netdev_prefix="pf")
    kernel = FakeNetlink(fs)
    return kernel, kernel.host(poll_interval=0.001, verify_timeout=0.01)


class TestSetNumVfs:
    """set_num_vfs validates, goes through 0, waits, and reports."""

    def test_enable_then_shrink_through_zero(self, tmp_path: Path) -> None:
        """0 -> 4 writes 4; 4 -> 2 writes 0 then 2; each reports what it did."""
        kernel = _kernel(tmp_path)
        host = kernel.host(poll_interval=0.001)
        up = host.set_num_vfs("pf0", 4)
        assert (up.before, up.after, up.writes) == (0, 4, (4,))
        assert [vf.netdev for vf in up.vfs] == ["pf0v0", "pf0v1", "pf0v2", "pf0v3"]
        down = host.set_num_vfs("pf0", 2)
        assert (down.before, down.after, down.writes) == (4, 2, (0, 2))
        assert [vf.index for vf in host.vfs("pf0")] == [0, 1]
        assert [value for _, value in kernel.sysfs_writes] == ["4", "0", "2"]

    def test_above_totalvfs_is_refused_before_writing(
        self, host: Host, kernel: FakeNetlink
    ) -> None:
        """8 on igb: a clear 'exceeds totalvfs 7' error and no write at all."""
        kernel.sysfs_writes.clear()
        with pytest.raises(InvalidValue, match="exceeds totalvfs 7") as caught:
            host.set_num_vfs("pf0", 8)
        assert caught.value.errno == errno.ERANGE
        assert kernel.sysfs_writes == []
        with pytest.raises(InvalidValue, match="negative"):
            host.set_num_vfs("pf0", -1)

    def test_same_count_is_a_no_op(self, host: Host, kernel: FakeNetlink) -> None:
        """Asking for the current count writes nothing."""
        kernel.sysfs_writes.clear()
        change = host.set_num_vfs(PF, 4)
        assert change.writes == ()
        assert kernel.sysfs_writes == []

    def test_refuses_to_destroy_vfs_in_use_unless_forced(
        self, host: Host, kernel: FakeNetlink
    ) -> None:
        """A VF attached to a pod blocks a change; force=True does it anyway."""
        pod = kernel.add_netns("pod")
        host.attach(_vf(host, 1), pod, "net1")
        with pytest.raises(Busy, match=r"VF 1 \(0000:01:00.2\) in use"):
            host.set_num_vfs("pf0", 2)
        assert host.set_num_vfs("pf0", 2, force=True).after == 2
        assert kernel.link_names(pod) == ()  # the kernel destroyed the pod's VF netdev

    def test_waits_for_late_netdevs(self, tmp_path: Path) -> None:
        """VF netdevs that appear after the write are waited for."""
        kernel = _kernel(tmp_path, netdev_delay=0.05)
        change = kernel.host(poll_interval=0.005).set_num_vfs("pf0", 3)
        assert [vf.netdev for vf in change.vfs] == ["pf0v0", "pf0v1", "pf0v2"]
        assert change.waited >= 0.04

    def test_gives_up_after_the_timeout(self, tmp_path: Path) -> None:
        """Netdevs that do not show up in time end in VfsNotReady naming them."""
        kernel = _kernel(tmp_path, netdev_delay=2.0)
        try:
            with pytest.raises(VfsNotReady, match=r"VF 0 .* has no netdev yet"):
                kernel.host(poll_interval=0.005).set_num_vfs("pf0", 2, timeout=0.05)
        finally:
            kernel.close()

    def test_kernel_refusal_is_mapped(self, tmp_path: Path) -> None:
        """A refused write becomes the matching domain error with the driver named."""

        class Refusing:
            def write(self, path: Path, value: str) -> None:
                raise OSError(errno.EBUSY, os.strerror(errno.EBUSY))

        kernel = _kernel(tmp_path)
        host = Host(kernel.fs.root, netlink=kernel, sysfs_writer=Refusing())
        with pytest.raises(Busy, match=r"set sriov_numvfs to 2 .*driver igb"):
            host.set_num_vfs("pf0", 2)


class TestConfigureVf:
    """configure_vf applies only what is asked, verifies it, and rolls back on failure."""

    def test_applies_and_reads_back(self, host: Host, kernel: FakeNetlink) -> None:
        """The settings igb supports are applied and the returned state shows them."""
        config = VfConfig(
            mac="02:00:00:00:00:10", vlan=100, qos=5, spoofchk=False, trust=True, max_tx_rate=500
        )
        state = host.configure_vf(_vf(host, 0), config)
        assert state.mismatches(config) == ()
        assert kernel.vf_state(PF, 0) == state
        assert kernel.requests["set_vf"] == 5  # vlan+qos is one request
        assert kernel.requests["vf_list"] == 2  # before and after

    def test_only_given_and_changed_fields_are_written(
        self, host: Host, kernel: FakeNetlink
    ) -> None:
        """Fields left None are untouched; fields already right cost no request."""
        host.configure_vf(_vf(host, 0), VfConfig(trust=True))
        kernel.requests.clear()
        state = host.configure_vf(_vf(host, 0), VfConfig(trust=True, spoofchk=True))
        assert kernel.requests["set_vf"] == 0
        assert state.trust is True

    def test_vlan_alone_resets_qos_to_zero(self, host: Host) -> None:
        """'vlan 7' without qos means qos 0, as ``ip link ... vf N vlan 7`` does."""
        host.configure_vf(_vf(host, 0), VfConfig(vlan=7, qos=3))
        state = host.configure_vf(_vf(host, 0), VfConfig(vlan=7))
        assert (state.vlan, state.qos) == (7, 0)

    @pytest.mark.parametrize(
        ("config", "knob", "code"),
        [
            (VfConfig(link_state="enable"), "link_state", errno.EOPNOTSUPP),
            (VfConfig(min_tx_rate=10), "min_tx_rate", errno.EINVAL),
            (VfConfig(vlan=5, vlan_proto="802.1ad"), "vlan_proto", errno.EPROTONOSUPPORT),
            (VfConfig(query_rss=True), "query_rss", errno.EOPNOTSUPP),
        ],
    )
    def test_unsupported_settings_leave_nothing_half_changed(
        self, kernel: FakeNetlink, config: VfConfig, knob: str, code: int
    ) -> None:
        """Mixed with supported settings, an igb refusal rolls everything back."""
        # the kernel's refusal itself: without the igb plugin, which refuses these first
        host = kernel.host(poll_interval=0.001, verify_timeout=0.01, plugins=GENERIC_ONLY)
        before = kernel.vf_state(PF, 2)
        mixed = VfConfig(
            **{**_fields(config), "mac": "02:00:00:00:00:22", "trust": True, "spoofchk": False}
        )
        with pytest.raises(KernelError) as caught:
            host.configure_vf(_vf(host, 2), mixed)
        error = caught.value
        assert (error.errno, error.knob, error.driver) == (code, knob, "igb")
        assert "on pf0 vf 2 (driver igb)" in str(error)
        assert kernel.vf_state(PF, 2) == before

    def test_failure_midway_rolls_back_what_was_applied(
        self, host: Host, kernel: FakeNetlink
    ) -> None:
        """A refusal after other steps undoes them, newest first, and says so."""
        before = kernel.vf_state(PF, 0)
        kernel.fail("set_vf", errno.EINVAL, match="mac")
        with pytest.raises(InvalidValue, match="rolled back vlan, spoofchk, trust") as caught:
            host.configure_vf(
                _vf(host, 0), VfConfig(vlan=9, spoofchk=False, trust=True, mac="02:00:00:00:00:01")
            )
        assert caught.value.knob == "mac"
        assert kernel.vf_state(PF, 0) == before

    def test_failed_rollback_is_reported_loudly(self, host: Host, kernel: FakeNetlink) -> None:
        """If undoing fails too, the error says the rollback is incomplete."""
        trusts: list[str] = []

        def second_trust_request(knob: str) -> bool:
            if knob == "trust":
                trusts.append(knob)
            return len(trusts) == 2 and knob == "trust"

        kernel.fail("set_vf", errno.EINVAL, match="mac")
        kernel.fail("set_vf", errno.EIO, match=second_trust_request)
        with pytest.raises(InvalidValue, match="ROLLBACK INCOMPLETE: could not put back trust"):
            host.configure_vf(_vf(host, 0), VfConfig(trust=True, mac="02:00:00:00:00:01"))
        assert kernel.vf_state(PF, 0).trust is True

    def test_busy_is_retried(self, host: Host, kernel: FakeNetlink) -> None:
        """An EBUSY answer (a VF resetting) is retried a few times."""
        kernel.fail("set_vf", errno.EBUSY, match="trust", times=2)
        assert host.configure_vf(_vf(host, 0), VfConfig(trust=True)).trust is True

    def test_setting_the_driver_ignores_is_not_applied(self, tmp_path: Path) -> None:
        """A driver that says yes but keeps the old value gets NotApplied and a rollback."""

        class Ignoring(FakeNetlink):
            def set_vf_trust(self, pf: str, vf: int, on: bool) -> None:
                self.requests["set_vf"] += 1

        fs = FakeSysfs(tmp_path / "root")
        add_nic_model(fs, "igb", bus=0x01, ports=1, netdev_prefix="pf")
        kernel = Ignoring(fs)
        host = kernel.host(poll_interval=0.001, verify_timeout=0.01)
        host.set_num_vfs("pf0", 1)
        with pytest.raises(NotApplied, match="trust: asked True, driver reports False") as caught:
            host.configure_vf(_vf(host, 0), VfConfig(spoofchk=False, trust=True))
        assert "rolled back spoofchk, trust" in str(caught.value)
        assert kernel.vf_state(PF, 0).spoofchk is True

    def test_bad_values_never_reach_the_kernel(self, host: Host, kernel: FakeNetlink) -> None:
        """VLAN > 4094, QoS > 7 or without VLAN, bad MAC, min > max, bad link_state."""
        bad = [
            {"vlan": 4095},
            {"qos": 3},
            {"vlan": 0, "qos": 3},
            {"vlan": 1, "qos": 8},
            {"mac": "02:00:00:00:00"},
            {"mac": "01:00:5e:00:00:01"},
            {"min_tx_rate": 100, "max_tx_rate": 10},
            {"link_state": "up"},
            {"vlan_proto": "802.1x", "vlan": 3},
            {"vlan_proto": "802.1ad", "vlan": 0},
            {"trust": "yes"},
        ]
        for fields in bad:
            with pytest.raises(InvalidVfConfig):
                VfConfig(**fields)  # type: ignore[arg-type]
        assert sum(kernel.requests.values()) == 0

    def test_known_unsupported_is_refused_without_a_request(self, kernel: FakeNetlink) -> None:
        """Once capabilities() probed igb, link_state is refused up front (even with no
        vendor plugin to know it)."""
        host = kernel.host(poll_interval=0.001, verify_timeout=0.01, plugins=GENERIC_ONLY)
        host.capabilities("pf0")
        kernel.requests.clear()
        with pytest.raises(Unsupported, match="refused it when probed; nothing was changed"):
            host.configure_vf(_vf(host, 0), VfConfig(mac="02:00:00:00:00:01", link_state="disable"))
        assert sum(kernel.requests.values()) == 0


class TestCapabilities:
    """capabilities() probes one VF, leaves it as it was and caches per driver."""

    def test_igb_exactly(self, host: Host) -> None:
        """igb: mac, vlan, qos, spoofchk, trust, max_tx_rate; not the four others."""
        caps = host.capabilities("pf0")
        assert caps.driver == "igb"
        assert {str(k) for k in caps.supported} == IGB_SUPPORTED
        assert {str(k): v for k, v in caps.unsupported} == IGB_REFUSED
        assert caps.unknown == ()
        assert caps.probed_vf == PciAddress(0, 1, 0, 4)  # the last free VF

    def test_probe_leaves_the_vf_as_it_was(self, host: Host, kernel: FakeNetlink) -> None:
        """A VF with settings keeps every one of them."""
        vf = _vf(host, 3)
        host.configure_vf(
            vf, VfConfig(mac="02:00:00:00:00:33", vlan=12, qos=1, trust=True, max_tx_rate=300)
        )
        before = kernel.vf_state(PF, 3)
        host.capabilities("pf0", vf=vf)
        assert kernel.vf_state(PF, 3) == before

    def test_cached_per_driver(self, host: Host, kernel: FakeNetlink) -> None:
        """A second call makes no request; refresh=True probes again."""
        first = host.capabilities("pf0")
        kernel.requests.clear()
        assert host.capabilities(PF) is first
        assert sum(kernel.requests.values()) == 0
        host.capabilities("pf0", refresh=True)
        assert kernel.requests["set_vf"] > 0

    def test_max_rate_unknown_without_carrier(self, host: Host, kernel: FakeNetlink) -> None:
        """Without PF carrier igb refuses any rate: that is 'unknown', not 'unsupported'."""
        kernel.set_carrier("pf0", False)
        caps = host.capabilities("pf0")
        assert VfKnob.MAX_TX_RATE in dict(caps.unknown)
        assert VfKnob.MAX_TX_RATE not in caps.supported

    def test_permissive_driver(self, tmp_path: Path) -> None:
        """A driver that accepts everything gets everything."""
        kernel = _kernel(tmp_path, preset="mlx5")
        host = kernel.host(poll_interval=0.001)
        host.set_num_vfs("pf0", 2)
        assert host.capabilities("pf0").supported == frozenset(VfKnob)

    def test_needs_a_vf(self, tmp_path: Path) -> None:
        """Without VFs there is nothing to probe."""
        kernel = _kernel(tmp_path)
        with pytest.raises(LookupError, match="enable VFs first"):
            kernel.host().capabilities("pf0")


class TestAttachRelease:
    """attach moves a VF netdev into a namespace; release puts everything back."""

    def test_attach_under_a_name_the_host_uses(self, host: Host, kernel: FakeNetlink) -> None:
        """net1 exists on the host: the VF still becomes net1 in the pod, with MAC/MTU, up."""
        kernel.add_link("net1")
        pod = kernel.add_netns("pod")
        snapshot = host.attach(_vf(host, 1), pod, "net1", mac="02:aa:00:00:00:01", mtu=1400)
        inside = kernel.link("net1", pod)
        assert (inside.mac, inside.mtu, inside.up, inside.parent) == (
            "02:aa:00:00:00:01",
            1400,
            True,
            "0000:01:00.2",
        )
        assert kernel.link("net1").parent is None  # the host's net1 is untouched
        assert (snapshot.host_name, snapshot.host_mac, snapshot.host_mtu) == (
            "pf0v1",
            "52:54:00:01:00:01",
            1500,
        )
        assert host.vf(snapshot.vf).netdev is None

    def test_release_restores_name_mac_mtu(self, host: Host, kernel: FakeNetlink) -> None:
        """After release the VF netdev is back on the host exactly as it was."""
        kernel.add_link("net1")
        pod = kernel.add_netns("pod")
        before = kernel.link("pf0v1")
        snapshot = host.attach(_vf(host, 1), pod, "net1", mac="02:aa:00:00:00:01", mtu=9000)
        report = host.release(snapshot)
        after = kernel.link("pf0v1")
        assert (after.name, after.mac, after.mtu, after.up) == (
            before.name,
            before.mac,
            before.mtu,
            before.up,
        )
        assert report.found_in == "namespace"
        # igb recorded the pod MAC as the VF's own: cleared, then the netdev's put back
        assert report.restored == ("vf_mac", "namespace", "mac", "mtu")
        assert report.warnings == ()
        assert kernel.vf_state(PF, 1).mac == before.mac  # the VF reports its own MAC again
        assert kernel.link_names(pod) == ()

    def test_release_twice(self, host: Host, kernel: FakeNetlink) -> None:
        """The second release finds the VF at home and does nothing (even though igb now
        reports the MAC the VF set for itself where the snapshot saw none)."""
        pod = kernel.add_netns("pod")
        snapshot = host.attach(_vf(host, 0), pod, "eth0", mac="02:aa:00:00:00:03", mtu=1400)
        host.release(snapshot)
        kernel.requests.clear()
        again = host.release(snapshot)
        assert (again.found_in, again.host_name, again.restored, again.warnings) == (
            "host",
            "pf0v0",
            (),
            (),
        )
        assert kernel.requests["set_link"] == kernel.requests["set_vf"] == 0

    def test_release_after_the_namespace_was_deleted(self, host: Host, kernel: FakeNetlink) -> None:
        """The kernel returned the VF as devN (net1 is taken): it is found and renamed."""
        kernel.add_link("net1")
        pod = kernel.add_netns("pod")
        snapshot = host.attach(_vf(host, 2), pod, "net1", mac="02:aa:00:00:00:02")
        kernel.delete_netns(pod)
        assert any(n.startswith("dev") for n in kernel.link_names())
        report = host.release(snapshot)
        assert report.found_in == "host"
        assert {"name", "mac"} <= set(report.restored)
        assert kernel.link("pf0v2").mac == snapshot.host_mac
        assert not any(n.startswith("dev") for n in kernel.link_names())

    def test_release_restores_vf_settings_first(self, host: Host, kernel: FakeNetlink) -> None:
        """Settings applied with attach(config=...) or afterwards are undone."""
        pod = kernel.add_netns("pod")
        original = kernel.vf_state(PF, 0)
        snapshot = host.attach(
            _vf(host, 0), pod, "net1", config=VfConfig(mac="02:00:00:00:00:07", vlan=30, trust=True)
        )
        assert kernel.vf_state(PF, 0).vlan == 30
        host.configure_vf(_vf(host, 0), VfConfig(spoofchk=False))
        report = host.release(snapshot)
        assert kernel.vf_state(PF, 0) == original
        assert {"vf_mac", "vf_vlan", "vf_trust", "vf_spoofchk"} <= set(report.restored)

    def test_one_mac_for_the_netdev_and_the_vf(self, host: Host, kernel: FakeNetlink) -> None:
        """mac= and config.mac together work on igb, which locks the VF's own MAC once an
        admin MAC is set: the netdev's MAC is set first, the admin MAC last."""
        pod = kernel.add_netns("pod")
        mac = "02:aa:00:00:00:0c"
        snapshot = host.attach(_vf(host, 0), pod, "net1", mac=mac, config=VfConfig(mac=mac, vlan=5))
        assert kernel.link("net1", pod).mac == mac
        assert kernel.vf_state(PF, 0).mac == mac
        report = host.release(snapshot)
        assert report.warnings == ()
        assert kernel.link("pf0v0").mac == snapshot.host_mac
        assert kernel.vf_state(PF, 0).vlan == 0

    def test_admin_mac_set_while_attached_is_cleared(self, host: Host, kernel: FakeNetlink) -> None:
        """An admin MAC set after attach is cleared first, so the netdev's MAC can be
        put back (igb refuses it while the admin MAC is there)."""
        pod = kernel.add_netns("pod")
        snapshot = host.attach(_vf(host, 0), pod, "net1", mac="02:aa:00:00:00:0d")
        host.configure_vf(_vf(host, 0), VfConfig(mac="02:aa:00:00:00:0e"))
        report = host.release(snapshot)
        assert report.warnings == ()
        assert "vf_mac" in report.restored
        assert kernel.link("pf0v0").mac == snapshot.host_mac
        assert kernel.vf_state(PF, 0).mac == snapshot.host_mac  # reported as its own again

    def test_admin_mac_from_before_attach_is_kept(self, host: Host, kernel: FakeNetlink) -> None:
        """An admin MAC that was there before attach stays after release."""
        host.configure_vf(_vf(host, 0), VfConfig(mac="02:aa:00:00:00:0f"))
        pod = kernel.add_netns("pod")
        snapshot = host.attach(_vf(host, 0), pod, "net1")
        report = host.release(snapshot)
        assert report.warnings == ()
        assert kernel.vf_state(PF, 0).mac == "02:aa:00:00:00:0f"

    def test_failure_part_way_restores_everything(self, host: Host, kernel: FakeNetlink) -> None:
        """Bringing the link up fails: the VF goes back with its name, MAC, settings."""
        pod = kernel.add_netns("pod")
        before_link, before_vf = kernel.link("pf0v0"), kernel.vf_state(PF, 0)
        kernel.fail("set_link", errno.EIO, match=lambda _: kernel.requests["set_link"] == 3)
        with pytest.raises(KernelError) as caught:
            host.attach(
                _vf(host, 0),
                pod,
                "net1",
                mac="02:aa:00:00:00:05",
                mtu=1400,
                config=VfConfig(trust=True),
            )
        assert any("the VF was restored" in note for note in caught.value.__notes__)
        assert kernel.link("pf0v0") == before_link
        # igb now reports the MAC the VF set for itself (its original one): same state
        after_vf = kernel.vf_state(PF, 0)
        assert after_vf.mac == before_link.mac
        assert attrs.evolve(after_vf, mac=before_vf.mac) == before_vf
        assert kernel.link_names(pod) == ()

    def test_rename_collision_inside_the_namespace(self, host: Host, kernel: FakeNetlink) -> None:
        """The pod already has net1: attach fails and the VF is back home unchanged."""
        pod = kernel.add_netns("pod")
        kernel.add_link("net1", pod)
        before = kernel.link("pf0v0")
        with pytest.raises(KernelError) as caught:
            host.attach(_vf(host, 0), pod, "net1")
        assert caught.value.errno == errno.EEXIST
        assert kernel.link("pf0v0") == before

    def test_stale_altnames_are_dropped(self, tmp_path: Path) -> None:
        """Where renames leave the old name as an altname, neither side keeps it."""
        kernel = _kernel(tmp_path, altname_on_rename=True)
        host = kernel.host(poll_interval=0.001)
        host.set_num_vfs("pf0", 1)
        pod = kernel.add_netns("pod")
        snapshot = host.attach(_vf(host, 0), pod, "net1")
        assert kernel.link("net1", pod).altnames == ()
        report = host.release(snapshot)
        assert kernel.link("pf0v0").altnames == ()
        assert "altname" in report.restored
        host.attach(_vf(host, 0), pod, "net1")  # a second attach is not blocked

    def test_vfio_vf_gets_settings_only(self, tmp_path: Path) -> None:
        """A VF bound to vfio-pci has no netdev: only its settings are snapshot/restored."""
        kernel, host = _vfio_node(tmp_path)
        pod = kernel.add_netns("pod")
        vf = _vf(host, 1)
        with pytest.raises(InvalidVfConfig, match="no netdev"):
            host.attach(vf, pod, "net1", mac="02:00:00:00:00:01")
        snapshot = host.attach(vf, pod, "net1", config=VfConfig(mac="02:00:00:00:00:01"))
        assert snapshot.host_name is None
        assert kernel.vf_state(PF, 1).mac == "02:00:00:00:00:01"
        report = host.release(snapshot)
        assert (report.found_in, report.host_name, report.restored) == (
            "none",
            None,
            ("vf_mac",),
        )
        assert kernel.vf_state(PF, 1).mac == "00:00:00:00:00:00"

    def test_snapshot_round_trips_through_json(self, host: Host, kernel: FakeNetlink) -> None:
        """A snapshot persisted as JSON releases the VF from another Host object."""
        pod = kernel.add_netns("pod")
        snapshot = host.attach(_vf(host, 0), pod, "net1", config=VfConfig(vlan=4))
        text = json.dumps(snapshot.to_dict())
        restored = AttachSnapshot.from_dict(json.loads(text))
        assert restored == snapshot
        kernel.host().release(restored)
        assert kernel.vf_state(PF, 0).vlan == 0
        assert "pf0v0" in kernel.link_names()

    def test_bad_arguments_are_refused_before_any_request(
        self, host: Host, kernel: FakeNetlink
    ) -> None:
        """Bad ifname, MAC, MTU or a missing namespace change nothing."""
        pod = kernel.add_netns("pod")
        vf = _vf(host, 0)
        with pytest.raises(ValueError, match="interface name"):
            host.attach(vf, pod, "x" * 16)
        with pytest.raises(InvalidVfConfig):
            host.attach(vf, pod, "net1", mac="zz")
        with pytest.raises(InvalidVfConfig):
            host.attach(vf, pod, "net1", mtu=40)
        with pytest.raises(KernelNotFound):
            host.attach(vf, pod + "-missing", "net1")
        assert sum(kernel.requests.values()) == 0

    def test_already_attached_vf(self, host: Host, kernel: FakeNetlink) -> None:
        """Attaching a VF whose netdev is away is refused."""
        pod = kernel.add_netns("pod")
        host.attach(_vf(host, 0), pod, "net1")
        with pytest.raises(LookupError, match="attached already"):
            host.attach(_vf(host, 0), pod, "net2")

    def test_netns_given_as_file_descriptor(self, host: Host, kernel: FakeNetlink) -> None:
        """With an fd the snapshot has no path; release takes the fd again."""
        pod = kernel.add_netns("pod")
        fd = os.open(pod, os.O_RDONLY)
        try:
            snapshot = host.attach(_vf(host, 0), fd, "net1")
            assert snapshot.netns is None
            assert host.release(snapshot, fd).found_in == "namespace"
        finally:
            os.close(fd)

    def test_one_vf_list_read_per_attach_and_per_release(
        self, host: Host, kernel: FakeNetlink
    ) -> None:
        """The PF's VF list (the costly request on big PFs) is read once each way."""
        pod = kernel.add_netns("pod")
        snapshot = host.attach(_vf(host, 0), pod, "net1", mac="02:aa:00:00:00:01", mtu=1400)
        assert kernel.requests["vf_list"] == 1
        assert sum(kernel.requests.values()) == 7
        kernel.requests.clear()
        host.release(snapshot)
        assert kernel.requests["vf_list"] == 1
        # igb recorded the pod MAC as the VF's MAC: one set_vf clears it (as on igb)
        assert sum(kernel.requests.values()) == 7


class TestSnapshotFirst:
    """snapshot() then attach(snapshot=...): the record can be made before any change."""

    def test_snapshot_reads_and_changes_nothing(self, host: Host, kernel: FakeNetlink) -> None:
        """One VF-list read and one lookup; the same snapshot attach would take."""
        pod = kernel.add_netns("pod")
        before = kernel.link("pf0v1")
        snapshot = host.snapshot(_vf(host, 1), pod, "net1", mac="02:AA:00:00:00:01 ")
        assert dict(kernel.requests) == {"vf_list": 1, "get_link": 1}
        assert kernel.link("pf0v1") == before
        assert kernel.link_names(pod) == ()
        assert (snapshot.mac, snapshot.host_index, snapshot.netns) == (
            "02:aa:00:00:00:01",
            before.index,
            pod,
        )
        attached = host.attach(_vf(host, 1), pod, "net1", mac="02:aa:00:00:00:01")
        assert attached == snapshot

    def test_attach_with_the_snapshot_reads_nothing_again(
        self, host: Host, kernel: FakeNetlink
    ) -> None:
        """attach(snapshot=...) returns that very snapshot, two requests cheaper."""
        pod = kernel.add_netns("pod")
        vf = _vf(host, 0)
        snapshot = host.snapshot(vf, pod, "net1", mac="02:aa:00:00:00:01")
        kernel.requests.clear()
        attached = host.attach(vf, pod, "net1", mac="02:aa:00:00:00:01", snapshot=snapshot)
        assert attached is snapshot
        assert kernel.requests["vf_list"] == 0
        # the move, the lookup inside, the MAC, up: no VF-list read, no host lookup
        assert dict(kernel.requests) == {"move_link": 1, "get_link": 1, "set_link": 2}
        assert kernel.link("net1", pod).mac == "02:aa:00:00:00:01"
        host.release(snapshot)
        assert "pf0v0" in kernel.link_names()

    def test_failure_restores_the_given_snapshot(self, host: Host, kernel: FakeNetlink) -> None:
        """All or nothing with a snapshot too: a refused move leaves the VF as it was."""
        pod = kernel.add_netns("pod")
        vf = _vf(host, 0)
        before_link, before_vf = kernel.link("pf0v0"), kernel.vf_state(PF, 0)
        snapshot = host.snapshot(vf, pod, "net1")
        stored = AttachSnapshot.from_dict(json.loads(json.dumps(snapshot.to_dict())))
        kernel.fail("move_link", errno.EINVAL)
        with pytest.raises(InvalidValue) as caught:
            host.attach(vf, pod, "net1", config=VfConfig(vlan=7, trust=True), snapshot=stored)
        assert any("the VF was restored" in note for note in caught.value.__notes__)
        assert (kernel.link("pf0v0"), kernel.vf_state(PF, 0)) == (before_link, before_vf)

    @pytest.mark.parametrize(
        ("change", "arguments"),
        [
            ("ifname", {"ifname": "net2"}),
            ("mac", {"mac": "02:aa:00:00:00:09"}),
            ("vf", {"index": 1}),
            ("namespace", {"pod": "other"}),
        ],
    )
    def test_a_snapshot_for_another_attach_is_refused(
        self, host: Host, kernel: FakeNetlink, change: str, arguments: dict[str, object]
    ) -> None:
        """Before any change, with the difference named."""
        pod = kernel.add_netns("pod")
        other = kernel.add_netns("other")
        snapshot = host.snapshot(_vf(host, 0), pod, "net1")
        vf = _vf(host, int(arguments.get("index", 0)))  # type: ignore[call-overload]
        target = other if arguments.get("pod") else pod
        kernel.requests.clear()
        with pytest.raises(ValueError, match="does not fit this attach"):
            host.attach(
                vf,
                target,
                str(arguments.get("ifname", "net1")),
                mac=arguments.get("mac"),  # type: ignore[arg-type]
                snapshot=snapshot,
            )
        assert kernel.requests["move_link"] == kernel.requests["set_vf"] == 0
        assert "pf0v0" in kernel.link_names()

    def test_a_stale_snapshot_is_refused(self, host: Host, kernel: FakeNetlink) -> None:
        """The netdev was renamed since the snapshot: refused, nothing moved."""
        pod = kernel.add_netns("pod")
        snapshot = host.snapshot(_vf(host, 0), pod, "net1")
        kernel.rename_link(kernel.link("pf0v0").index, "renamed")
        with pytest.raises(ValueError, match="host netdev 'pf0v0', now 'renamed'"):
            host.attach(_vf(host, 0), pod, "net1", snapshot=snapshot)
        assert "renamed" in kernel.link_names()

    def test_vf_without_netdev(self, tmp_path: Path) -> None:
        """A vfio-pci VF: settings only, no MAC recorded."""
        kernel, host = _vfio_node(tmp_path)
        pod = kernel.add_netns("pod")
        snapshot = host.snapshot(_vf(host, 1), pod, "net1", mac="02:00:00:00:00:01")
        assert (snapshot.host_name, snapshot.mac, snapshot.driver) == (None, None, "vfio-pci")
        assert dict(kernel.requests) == {"vf_list": 1}
        config = VfConfig(mac="02:00:00:00:00:01")
        assert host.attach(_vf(host, 1), pod, "net1", config=config, snapshot=snapshot) is snapshot
        assert kernel.vf_state(PF, 1).mac == "02:00:00:00:00:01"

    def test_pf_without_netdev(self, host: Host, kernel: FakeNetlink) -> None:
        """VF settings go through the PF's netdev: without one there is no snapshot."""
        pod = kernel.add_netns("pod")
        vf = _vf(host, 0)
        shutil.rmtree(kernel.fs.sys / "bus/pci/devices" / str(PF) / "net")
        with pytest.raises(LookupError, match="is its driver bound"):
            host.snapshot(vf, pod, "net1")
        assert sum(kernel.requests.values()) == 0


def _fields(config: VfConfig) -> dict[str, object]:
    return {name: getattr(config, name) for name in config.fields()}


def _expected(original: VfState, config: VfConfig) -> VfState:
    """The state configure_vf promises: the original with exactly the config applied."""
    changes = {name: getattr(config, name) for name in config.fields()}
    if config.vlan is not None:
        changes["qos"] = config.qos or 0
        changes["vlan_proto"] = config.vlan_proto or VlanProto.DOT1Q
    return attrs.evolve(original, **changes)  # type: ignore[arg-type]


# -- the property --------------------------------------------------------------------

_macs = st.one_of(
    st.sampled_from(
        ["02:00:00:00:00:01", "0A:1B:2C:3D:4E:5F", "01:00:5e:00:00:01", "zz", "00:00:00:00:00:00"]
    ),
    st.binary(min_size=6, max_size=6).map(lambda b: ":".join(f"{x:02x}" for x in b)),
)
_config_fields = st.fixed_dictionaries(
    {},
    optional={
        "mac": _macs,
        "vlan": st.integers(-2, 4200),
        "qos": st.integers(-1, 9),
        "vlan_proto": st.sampled_from(["802.1q", "802.1ad", "802.1AD", "qinq"]),
        "spoofchk": st.booleans(),
        "trust": st.booleans(),
        "link_state": st.sampled_from(["auto", "enable", "disable", "up"]),
        "min_tx_rate": st.integers(-1, 1200),
        "max_tx_rate": st.integers(-1, 1200),
        "query_rss": st.booleans(),
    },
)
_failures = st.lists(
    st.tuples(
        st.sampled_from(["mac", "vlan", "qos", "vlan_proto", "spoofchk", "trust", "max_tx_rate"]),
        st.sampled_from([errno.EBUSY, errno.EINVAL, errno.EIO]),
        st.integers(1, 5),
    ),
    max_size=2,
)


class TestAllOrNothing:
    """Any VfConfig is rejected before a kernel call, or ends exactly as asked or as before."""

    @settings(
        max_examples=300, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture]
    )
    @given(fields=_config_fields, failures=_failures, carrier=st.booleans(), start=_config_fields)
    def test_requested_or_original_never_between(
        self,
        tmp_path_factory: pytest.TempPathFactory,
        fields: dict[str, object],
        failures: list[tuple[str, int, int]],
        carrier: bool,
        start: dict[str, object],
    ) -> None:
        """The VF ends in exactly the requested or exactly the original state."""
        kernel = _kernel(tmp_path_factory.mktemp("prop") / "root")
        host = kernel.host(poll_interval=0.0, verify_timeout=0.0)
        host.set_num_vfs("pf0", 2)
        vf = _vf(host, 1)
        # give the VF a random starting state (what igb accepts of it)
        with contextlib.suppress(InvalidVfConfig, KernelError):
            host.configure_vf(vf, VfConfig(**start))  # type: ignore[arg-type]
        kernel.set_carrier("pf0", carrier)
        original = kernel.vf_state(PF, 1)
        for knob, code, times in failures:
            kernel.fail("set_vf", code, match=knob, times=times)
        kernel.requests.clear()
        try:
            config = VfConfig(**fields)  # type: ignore[arg-type]
        except InvalidVfConfig:
            assert sum(kernel.requests.values()) == 0
            return
        try:
            result = host.configure_vf(vf, config)
        except InvalidVfConfig:
            # the vendor plugin refused it up front: no kernel call at all
            assert sum(kernel.requests.values()) == 0
            assert kernel.vf_state(PF, 1) == original
            return
        except (KernelError, NotApplied) as error:
            message = str(error)
        else:
            message = ""
        if message:
            # an incomplete rollback is only possible when undo steps were made to fail
            # too, and then the error says so
            if "ROLLBACK INCOMPLETE" in message:
                assert failures
            else:
                assert kernel.vf_state(PF, 1) == original
            return
        final = kernel.vf_state(PF, 1)
        assert final == result == _expected(original, config)
