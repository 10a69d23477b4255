"""The attachment service on its own (no CNI): the order of its steps, what it records
when, rollback, detach, stale holders, collection, and its errors — on the fake kernel,
with a recording addressing step."""

from __future__ import annotations

import errno
import fcntl
import ipaddress
import os
from pathlib import Path
from typing import Any

import attrs
import pytest

from sriovlib.allocation import AllocationStore, AlreadyAllocated, Owner, OwnerBusy
from sriovlib.attachments import (
    ATTACH_STEPS,
    DETACH_STEPS,
    AddressPlan,
    Attached,
    Attachment,
    AttachmentService,
    AttachRequest,
    LockTimeout,
    Reason,
    ReleaseFailed,
    VfUnavailable,
)
from sriovlib.exceptions import AddressingRefused
from sriovlib.models import PciAddress, Route, VfConfig
from sriovlib.testing import FakeSysfs, add_nic_model
from sriovlib.testing.builder import FakePf
from sriovlib.testing.fakenetlink import FakeNetlink

PLAN = AddressPlan((ipaddress.ip_interface("10.9.0.2/24"),), (Route("0.0.0.0/0", "10.9.0.1"),))


@attrs.define
class Recorder:
    """An addressing step that records its calls and what was on disk at each."""

    service: AttachmentService | None = None
    calls: list[tuple[str, str, Reason | None]] = attrs.field(factory=list)
    seen_record: list[bool] = attrs.field(factory=list)
    fail_assign: Exception | None = None
    fail_release: Exception | None = None
    plan: AddressPlan = attrs.field(factory=lambda: PLAN)

    def assign(self, attached: Attached) -> AddressPlan | None:
        assert self.service is not None
        owner = attached.request.owner
        self.calls.append(("assign", owner.container_id, None))
        self.seen_record.append(self.service.store.find(owner) is not None)
        if self.fail_assign is not None:
            raise self.fail_assign
        return self.plan

    def release(self, owner: Owner, attachment: Attachment | None, reason: Reason) -> None:
        self.calls.append(("release", owner.container_id, reason))
        if self.fail_release is not None:
            raise self.fail_release


@attrs.define
class Bench:
    kernel: FakeNetlink
    pf: FakePf
    service: AttachmentService
    step: Recorder
    steps: list[str]
    tmp: Path

    def request(self, index: int = 0, cid: str = "c1", netns: str | None = None, **kw: Any) -> Any:
        owner = Owner(cid, "net1", netns or self.kernel.add_netns(f"pod-{cid}"))
        return AttachRequest(owner, self.pf.vf_address(index), "net-a", **kw)

    def state(self, index: int = 0) -> Any:
        return self.kernel.vf_state(self.pf.address, index)

    def records(self) -> tuple[Any, ...]:
        return AllocationStore(self.tmp / "state/allocations").records()


@pytest.fixture
def bench(tmp_path: Path) -> Bench:
    fs = FakeSysfs(tmp_path / "root")
    (pf,) = add_nic_model(fs, "mlx5", bus=3, num_vfs=4, ports=1, vfio_vfs=(3,))
    kernel = FakeNetlink(fs)
    steps: list[str] = []
    service = AttachmentService(
        kernel.host(verify_timeout=0.0),
        tmp_path / "state",
        lock_timeout=0.2,
        checkpoint=steps.append,
    )
    return Bench(kernel, pf, service, Recorder(service), steps, tmp_path)


class TestAttachDetach:
    def test_steps_records_and_restore(self, bench: Bench) -> None:
        """Attach records the VF before addressing, puts the plan on the interface, keeps
        what the caller asks; detach releases the addresses, restores the VF and drops
        both records, reporting each step in order."""
        before = bench.state(0)
        request = bench.request(0, config=VfConfig(vlan=12), mac="02:00:00:00:00:21")
        attached = bench.service.attach(request, bench.step, lambda a: {"result": {"ok": 1}})
        assert list(ATTACH_STEPS[:-1]) == bench.steps
        assert [True] == bench.step.seen_record
        assert attached.link is not None
        assert "02:00:00:00:00:21" == attached.link.mac
        assert 12 == bench.state(0).vlan
        inside = bench.kernel.addresses(attached.link.index, request.owner.netns)
        assert ["10.9.0.2/24"] == [str(a) for a in inside]
        held = bench.service.find("net-a", request.owner)
        assert held is not None
        assert (True, False) == (held.finished, held.dpdk)
        entry = bench.service.finished.read("net-a", "c1", "net1")
        assert entry is not None
        assert {"ok": 1} == entry["result"]

        bench.steps.clear()
        assert held == bench.service.detach(request.owner, "net-a", bench.step)
        assert list(DETACH_STEPS) == bench.steps
        assert ("release", "c1", Reason.DETACH) == bench.step.calls[-1]
        assert before == bench.state(0)
        assert "ens1f0v0" in bench.kernel.link_names()
        assert () == bench.records()
        assert bench.service.find("net-a", request.owner) is None

    def test_detach_of_nothing_still_releases_addresses(self, bench: Bench) -> None:
        """A detach with nothing recorded succeeds and still gives the addressing step
        its release (an IPAM lease may exist without a VF record)."""
        owner = Owner("ghost", "net1", None)
        assert bench.service.detach(owner, "net-a", bench.step) is None
        assert [("release", "ghost", Reason.DETACH)] == bench.step.calls

    def test_dpdk_vf(self, bench: Bench) -> None:
        """A VF on vfio-pci gets its settings and no link; addressing has no interface."""
        attached = bench.service.attach(bench.request(3, config=VfConfig(vlan=7)), bench.step)
        assert (True, None) == (attached.dpdk, attached.link)
        assert 7 == bench.state(3).vlan


class TestRollback:
    def test_addressing_failure_undoes_everything(self, bench: Bench) -> None:
        """The addressing step raising: its release, the VF restored, the record
        dropped; the caller's exception comes back with a note saying so."""
        before = bench.state(1)
        bench.step.fail_assign = RuntimeError("no leases")
        with pytest.raises(RuntimeError, match="no leases") as caught:
            bench.service.attach(bench.request(1, config=VfConfig(vlan=5)), bench.step)
        assert [
            "rolled back: IPAM released, VF restored, allocation dropped"
        ] == caught.value.__notes__
        assert ("release", "c1", Reason.ROLLBACK) == bench.step.calls[-1]
        assert before == bench.state(1)
        assert () == bench.records()

    def test_address_refused_is_a_domain_error(self, bench: Bench) -> None:
        """The kernel refusing an address: AddressingRefused naming it, rolled back."""
        bench.kernel.fail("add_addr", errno.EADDRNOTAVAIL)
        with pytest.raises(AddressingRefused, match=r"address 10\.9\.0\.2/24") as caught:
            bench.service.attach(bench.request(0), bench.step)
        assert errno.EADDRNOTAVAIL == caught.value.cause.errno
        assert () == bench.records()

    def test_failed_rollback_keeps_the_record(self, bench: Bench) -> None:
        """When the rollback cannot restore the VF (the driver refuses the VLAN back),
        the record stays for a later detach, and the note says so."""

        class Breaking(Recorder):
            def assign(self, attached: Attached) -> AddressPlan | None:
                bench.kernel.fail("set_vf", errno.EIO, match="vlan", times=99)
                raise RuntimeError("no leases")

        step = Breaking(bench.service)
        request = bench.request(1, config=VfConfig(vlan=5))
        with pytest.raises(RuntimeError) as caught:
            bench.service.attach(request, step)
        (note,) = caught.value.__notes__
        assert note.startswith("ROLLBACK INCOMPLETE (a DEL will finish it): restoring VF")
        assert 1 == len(bench.records())
        bench.kernel._failures.clear()
        assert bench.service.detach(request.owner, "net-a", step) is not None
        assert (0, ()) == (bench.state(1).vlan, bench.records())


class TestDetachFailures:
    def test_release_failure_keeps_records(self, bench: Bench) -> None:
        """The VF cannot be restored: ReleaseFailed, the records stay, and a second
        detach, once the kernel cooperates, finishes."""
        request = bench.request(0, config=VfConfig(vlan=12))
        bench.service.attach(request, bench.step)
        bench.kernel.fail("set_vf", errno.EIO, match="vlan", times=99)
        with pytest.raises(ReleaseFailed, match="kept for a retry"):
            bench.service.detach(request.owner, "net-a", bench.step)
        assert 1 == len(bench.records())
        bench.kernel._failures.clear()
        assert bench.service.detach(request.owner, "net-a", bench.step) is not None
        assert () == bench.records()
        assert 0 == bench.state(0).vlan

    def test_addressing_failure_on_detach(self, bench: Bench) -> None:
        """The addressing release failing on detach: the VF is restored and free again
        at once (its record dropped), the error is the caller's, and the release is
        owed: the next detach of the owner tries it again and, when it works, forgets it."""
        request = bench.request(0, config=VfConfig(vlan=12))
        bench.service.attach(request, bench.step)
        bench.step.fail_release = RuntimeError("IPAM down")
        with pytest.raises(RuntimeError, match="IPAM down") as caught:
            bench.service.detach(request.owner, "net-a", bench.step)
        assert "free again" in caught.value.__notes__[0]
        assert (0, ()) == (bench.state(0).vlan, bench.records())
        assert 1 == len(bench.service.owed.entries())
        bench.service.attach(bench.request(0, "c2"), bench.step)  # the VF is usable
        bench.step.fail_release = None
        assert bench.service.detach(request.owner, "net-a", bench.step) is None
        assert ("release", "c1", Reason.DETACH) == bench.step.calls[-1]
        assert [] == bench.service.owed.entries()

    def test_owed_release_is_settled_by_collect(self, bench: Bench) -> None:
        request = bench.request(0)
        bench.service.attach(request, bench.step)
        bench.step.fail_release = RuntimeError("IPAM down")
        with pytest.raises(RuntimeError):
            bench.service.detach(request.owner, "net-a", bench.step)
        released, errors = bench.service.collect("net-a", set(), bench.step)
        assert (0, ["IPAM down"]) == (released, [str(e) for e in errors])
        bench.step.fail_release = None
        assert (0, []) == bench.service.collect("net-a", set(), bench.step)
        assert ("release", "c1", Reason.STALE) == bench.step.calls[-1]
        assert [] == bench.service.owed.entries()


class TestHolders:
    def test_live_holder(self, bench: Bench) -> None:
        bench.service.attach(bench.request(0, "c1"), bench.step)
        with pytest.raises(AlreadyAllocated, match="c1"):
            bench.service.attach(bench.request(0, "c2"), bench.step)

    def test_owner_holds_another_vf(self, bench: Bench) -> None:
        first = bench.request(0, "c1")
        bench.service.attach(first, bench.step)
        with pytest.raises(OwnerBusy):
            bench.service.attach(bench.request(1, "c1", netns=first.owner.netns), bench.step)

    def test_stale_holder_cleaned_up(self, bench: Bench) -> None:
        """A holder whose namespace is gone is released (addressing as STALE, the VF
        restored) before the new owner gets the VF."""
        old = bench.request(0, "c1", config=VfConfig(vlan=3))
        bench.service.attach(old, bench.step)
        assert old.owner.netns is not None
        bench.kernel.delete_netns(old.owner.netns)
        bench.service.attach(bench.request(0, "c2", config=VfConfig(vlan=4)), bench.step)
        assert ("release", "c1", Reason.STALE) in bench.step.calls
        assert 4 == bench.state(0).vlan
        assert ["c2"] == [r.owner.container_id for r in bench.records()]

    def test_vf_without_netdev(self, bench: Bench) -> None:
        """A netdev-driver VF whose netdev is not on the host (taken by something
        else): VfUnavailable, nothing recorded."""
        owner = Owner("x", "eth9", bench.kernel.add_netns("elsewhere"))
        bench.kernel.move_link(bench.kernel.link("ens1f0v2").index, "eth9", target=owner.netns)
        with pytest.raises(VfUnavailable, match="no network interface on the host"):
            bench.service.attach(bench.request(2), bench.step)
        assert () == bench.records()

    def test_lock_timeout(self, bench: Bench) -> None:
        locks = bench.tmp / "state/cni/locks"
        locks.mkdir(parents=True)
        fd = os.open(locks / f"{bench.pf.vf_address(0)}.lock", os.O_RDWR | os.O_CREAT)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX)
            with pytest.raises(LockTimeout, match="try again"):
                bench.service.attach(bench.request(0), bench.step)
        finally:
            os.close(fd)
        assert [] == bench.step.calls


class TestCollect:
    def test_invalid_attachments_go_valid_ones_stay(self, bench: Bench) -> None:
        keep, drop = bench.request(0, "keep"), bench.request(1, "drop", config=VfConfig(vlan=8))
        other = attrs.evolve(bench.request(2, "other"), network="net-b")
        for request in (keep, drop, other):
            bench.service.attach(request, bench.step)
        released, errors = bench.service.collect("net-a", {("keep", "net1")}, bench.step)
        assert (1, []) == (released, errors)
        assert {"keep", "other"} == {r.owner.container_id for r in bench.records()}
        assert 0 == bench.state(1).vlan
        assert ("release", "drop", Reason.STALE) == bench.step.calls[-1]
        assert bench.service.finished.read("net-a", "drop", "net1") is None

    def test_failures_are_returned_and_kept(self, bench: Bench) -> None:
        request = bench.request(0, "gone")
        bench.service.attach(request, bench.step)
        bench.step.fail_release = RuntimeError("IPAM down")
        released, errors = bench.service.collect("net-a", set(), bench.step)
        assert (0, ["IPAM down"]) == (released, [str(e) for e in errors])
        assert 1 == len(bench.records())


def test_records_of_version_0_1_are_read(bench: Bench) -> None:
    """A record written by 0.1 (its part under ``cni``, the configuration as
    ``config``) is found and released like a new one."""
    request = bench.request(0, config=VfConfig(vlan=9))
    bench.service.attach(request, bench.step)
    store = bench.service.store
    (record,) = store.records()
    old_state = dict(record.original_state)
    part = old_state.pop("attachment")
    old_state["cni"] = {"network": part["network"], "dpdk": part["dpdk"], "config": {"a": 1}}
    store.release(request.owner)
    store.allocate_vf(request.owner, PciAddress.parse(str(record.vf)), original_state=old_state)
    bench.service.finished.delete("net-a", "c1", "net1")
    held = bench.service.find("net-a", request.owner)
    assert held is not None
    assert ("net-a", {"a": 1}, False) == (held.network, held.recorded, held.dpdk)
    bench.service.detach(request.owner, "net-a", bench.step)
    assert 0 == bench.state(0).vlan
    assert () == bench.records()


class TestOrphanReclaim:
    """An orphan's VF comes back at once; its address release is owed to the runtime's
    DEL or GC (IPAM runs with the runtime's CNI_PATH and environment)."""

    def orphan(self, bench: Bench, cid: str, **kw: Any) -> Any:
        request = bench.request(0, cid, config=VfConfig(vlan=5), **kw)
        bench.service.attach(request, bench.step)
        bench.kernel.delete_netns(request.owner.netns)
        (record,) = bench.service.orphans()
        assert bench.service.reclaim_orphan(record)
        assert () == bench.records()
        assert 0 == bench.state(0).vlan
        return request

    def test_the_release_is_owed_and_settled_by_gc(self, bench: Bench) -> None:
        request = self.orphan(bench, "gone", recorded={"ipam": {"type": "host-local"}})
        assert [("assign", "gone", None)] == bench.step.calls  # nothing released yet
        assert bench.service.owed.read("net-a", "gone", "net1") is not None
        released, errors = bench.service.collect("net-a", set(), bench.step)
        assert (0, []) == (released, errors)
        assert ("release", "gone", Reason.STALE) == bench.step.calls[-1]
        assert bench.service.owed.read("net-a", "gone", "net1") is None
        assert bench.service.find("net-a", request.owner) is None

    def test_the_release_is_owed_and_settled_by_the_del(self, bench: Bench) -> None:
        request = self.orphan(bench, "late", recorded={"ipam": {"type": "host-local"}})
        assert bench.service.detach(request.owner, "net-a", bench.step) is None
        assert ("release", "late", Reason.DETACH) == bench.step.calls[-1]
        assert bench.service.owed.read("net-a", "late", "net1") is None

    def test_nothing_is_owed_without_ipam(self, bench: Bench) -> None:
        self.orphan(bench, "static")
        assert [] == bench.service.owed.entries()
