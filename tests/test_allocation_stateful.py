"""A Hypothesis state machine drives the allocation store against a dictionary model."""

from __future__ import annotations

import shutil
import tempfile
from pathlib import Path

import pytest
from hypothesis import settings
from hypothesis import strategies as st
from hypothesis.stateful import RuleBasedStateMachine, invariant, precondition, rule

from sriovlib import PciAddress
from sriovlib.allocation import (
    AllocationStore,
    AlreadyAllocated,
    Candidate,
    Owner,
    OwnerBusy,
    PoolExhausted,
)

VFS = [f"0000:3b:{d:02x}.{f}" for d in (0, 2) for f in range(2, 6)]  # two PFs, 4 VFs each
NAMESPACES = [f"/run/netns/pod{n}" for n in range(4)]
OWNERS = [Owner(f"pod{n}", ifname, NAMESPACES[n]) for n in range(4) for ifname in ("net1", "net2")]
SCRATCH = Path("/dev/shm") if Path("/dev/shm").is_dir() else None


def candidates(vfs: list[str]) -> list[Candidate]:
    return [Candidate(v, pf=v[:10]) for v in vfs]


class StoreMachine(RuleBasedStateMachine):
    """Allocate, release, reclaim and reload; the store must always equal the model."""

    def __init__(self) -> None:
        super().__init__()
        self.directory = Path(tempfile.mkdtemp(prefix="sriovlib-store-", dir=SCRATCH))
        self.live = set(NAMESPACES)
        self.store = self.open()
        self.model: dict[str, tuple[Owner, dict[str, object]]] = {}
        self.counter = 0

    def open(self) -> AllocationStore:
        return AllocationStore(self.directory, netns_exists=self.live.__contains__)

    def held_by(self, owner: Owner) -> str | None:
        return next((vf for vf, (o, _) in self.model.items() if o.same_as(owner)), None)

    def state(self) -> dict[str, object]:
        self.counter += 1
        return {"n": self.counter, "mac": f"52:54:00:00:00:{self.counter % 256:02x}"}

    @rule(
        owner=st.sampled_from(OWNERS),
        pool=st.lists(st.sampled_from(VFS), min_size=1, max_size=8, unique=True),
    )
    def allocate(self, owner: Owner, pool: list[str]) -> None:
        """Allocate from a pool: the held VF again, a free one, or the right error."""
        held = self.held_by(owner)
        state = self.state()
        if held is not None and held not in pool:
            with pytest.raises(OwnerBusy):
                self.store.allocate(owner, candidates(pool), original_state=state)
            return
        if held is None and all(v in self.model for v in pool):
            with pytest.raises(PoolExhausted):
                self.store.allocate(owner, candidates(pool), original_state=state)
            return
        record = self.store.allocate(owner, candidates(pool), original_state=state)
        vf = str(record.vf)
        if held is not None:
            assert held == vf
            assert self.model[vf][1] == record.original_state
            return
        assert vf in pool
        assert vf not in self.model
        assert state == record.original_state
        self.model[vf] = (owner, state)

    @rule(owner=st.sampled_from(OWNERS), vf=st.sampled_from(VFS))
    def allocate_vf(self, owner: Owner, vf: str) -> None:
        """Ask for one VF by address."""
        held = self.held_by(owner)
        state = self.state()
        if held is not None and held != vf:
            with pytest.raises(OwnerBusy):
                self.store.allocate_vf(owner, vf, original_state=state)
        elif held is None and vf in self.model:
            with pytest.raises(AlreadyAllocated):
                self.store.allocate_vf(owner, vf, original_state=state)
        else:
            record = self.store.allocate_vf(owner, vf, original_state=state)
            assert vf == str(record.vf)
            if held is None:
                self.model[vf] = (owner, state)

    @rule(owner=st.sampled_from(OWNERS))
    def release(self, owner: Owner) -> None:
        """Release by owner returns the record the model holds."""
        held = self.held_by(owner)
        record = self.store.release(owner)
        if held is None:
            assert record is None
        else:
            assert record is not None
            assert held == str(record.vf)
            assert self.model.pop(held)[1] == record.original_state

    @precondition(lambda self: bool(self.model))
    @rule(data=st.data())
    def release_makes_vf_available(self, data: st.DataObject) -> None:
        """After a release the VF can be allocated again, by someone else."""
        vf = data.draw(st.sampled_from(sorted(self.model)))
        holder = self.model[vf][0]
        assert holder.same_as(self.store.release_vf(vf).owner)  # type: ignore[union-attr]
        del self.model[vf]
        free = [o for o in OWNERS if self.held_by(o) is None and not o.same_as(holder)]
        if free:
            state = self.state()
            assert (
                PciAddress.parse(vf) == self.store.allocate_vf(free[0], vf, original_state=state).vf
            )
            self.model[vf] = (free[0], state)

    @rule(netns=st.sampled_from(NAMESPACES))
    def pod_dies(self, netns: str) -> None:
        """A pod's network namespace disappears."""
        self.live.discard(netns)

    @rule()
    def reclaim(self) -> None:
        """Reclaim drops exactly the records whose namespace is gone."""
        dead = {vf for vf, (o, _) in self.model.items() if o.netns not in self.live}
        assert dead == {str(r.vf) for r in self.store.reclaim()}
        for vf in dead:
            del self.model[vf]

    @rule()
    def reload(self) -> None:
        """A fresh store object on the same directory (a restarted process)."""
        self.store = self.open()

    @invariant()
    def disk_equals_model(self) -> None:
        """What a new reader loads equals the model: one owner per VF, states intact."""
        records = self.open().records()
        assert {str(r.vf): (r.owner, dict(r.original_state)) for r in records} == self.model
        assert len({r.owner.key for r in records}) == len(records)

    @invariant()
    def consistent(self) -> None:
        """The directory holds only well-formed records."""
        assert () == self.store.check()

    def teardown(self) -> None:
        shutil.rmtree(self.directory, ignore_errors=True)


StoreMachine.TestCase.settings = settings(max_examples=60, stateful_step_count=30, deadline=None)


class TestStoreMachine(StoreMachine.TestCase):  # type: ignore[name-defined,misc]
    """Runs the state machine."""
