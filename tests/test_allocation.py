"""The allocation store (single process) and the preferred-allocation policy."""

from __future__ import annotations

import json
import os
import tempfile
from collections import Counter
from datetime import UTC, datetime
from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sriovlib import Host, PciAddress
from sriovlib.allocation import (
    AllocationError,
    AllocationStore,
    AlreadyAllocated,
    Candidate,
    Owner,
    OwnerBusy,
    Policy,
    PoolExhausted,
    PreferenceError,
    StoreError,
    preferred_allocation,
)
from sriovlib.pools import assign, discover_devices, generate_config
from sriovlib.testing import build_example

VFS = [f"0000:3b:00.{f}" for f in range(2, 8)]
FIXED = datetime(2025, 1, 2, 3, 4, 5, tzinfo=UTC)


@pytest.fixture
def store(tmp_path: Path) -> AllocationStore:
    return AllocationStore(tmp_path / "allocations", clock=lambda: FIXED)


def owner(n: int, netns: str | None = None) -> Owner:
    return Owner(f"container{n}", "net1", netns)


class TestAllocate:
    """Allocating from a pool and by address."""

    def test_record_on_disk(self, store: AllocationStore) -> None:
        """One human-readable JSON file per VF with owner, time, pool and original state."""
        record = store.allocate(
            owner(1, "/run/netns/a"),
            VFS,
            pool="intel.com/x",
            original_state={"mac": "52:54:00:00:00:01", "vlan": 0},
        )
        (path,) = store.directory.glob("*.json")
        assert path.name.startswith(f"{record.vf}@")
        data = json.loads(path.read_text())
        assert {
            "format": 1,
            "vf": str(record.vf),
            "pool": "intel.com/x",
            "owner": {"container_id": "container1", "ifname": "net1", "netns": "/run/netns/a"},
            "allocated_at": "2025-01-02T03:04:05+00:00",
            "original_state": {"mac": "52:54:00:00:00:01", "vlan": 0},
        } == data
        assert path.read_text().count("\n") > 5  # indented for people

    def test_idempotent_for_the_same_owner(self, store: AllocationStore) -> None:
        """A retried request returns the same VF and writes nothing."""
        first = store.allocate(owner(1), VFS)
        again = store.allocate(Owner("container1", "net1", "/other/netns"), VFS)
        assert first == again
        assert 1 == len(store.records())

    def test_owner_busy(self, store: AllocationStore) -> None:
        """An owner holding a VF outside the candidates must release it first."""
        store.allocate_vf(owner(1), VFS[0])
        with pytest.raises(OwnerBusy, match="release it first"):
            store.allocate(owner(1), VFS[1:])
        with pytest.raises(OwnerBusy):
            store.allocate_vf(owner(1), VFS[1])

    def test_exhausted(self, store: AllocationStore) -> None:
        """When every candidate is held the error names the pool."""
        for n, _ in enumerate(VFS):
            store.allocate(owner(n), VFS)
        assert set(VFS) == {str(a) for a in store.allocated()}
        with pytest.raises(PoolExhausted, match="in pool p: all 6 are held"):
            store.allocate(owner(99), VFS, pool="p")

    def test_specific_vf_held(self, store: AllocationStore) -> None:
        """Asking for a held VF names its holder."""
        store.allocate_vf(owner(1), VFS[0])
        with pytest.raises(AlreadyAllocated, match="container1"):
            store.allocate_vf(owner(2), VFS[0])

    def test_state_callback(self, store: AllocationStore) -> None:
        """A callable original state is read for the chosen VF."""
        record = store.allocate(owner(1), VFS, original_state=lambda vf: {"vf": str(vf)})
        assert {"vf": str(record.vf)} == record.original_state

    def test_state_must_be_json(self, store: AllocationStore) -> None:
        """A state JSON cannot hold is refused before anything is written."""
        with pytest.raises(AllocationError, match="not JSON"):
            store.allocate(owner(1), VFS, original_state={"x": object()})
        assert () == store.records()

    def test_owner_validation(self) -> None:
        """Owners need a container id and a valid interface name."""
        with pytest.raises(ValueError, match="container id"):
            Owner("", "net1")
        with pytest.raises(ValueError, match="interface name"):
            Owner("c", "net/1")

    def test_pack_policy_fills_a_pf(self, store: AllocationStore) -> None:
        """One VF at a time, PACK fills the fuller PF first."""
        candidates = [Candidate(v, pf="a" if i < 2 else "b") for i, v in enumerate(VFS)]
        got = [store.allocate(owner(n), candidates).vf for n in range(3)]
        assert [PciAddress.parse(v) for v in (VFS[0], VFS[1], VFS[2])] == got

    def test_pool_candidates(self, tmp_path: Path) -> None:
        """A pool's members go straight into the allocator."""
        with tempfile.TemporaryDirectory() as root:
            build_example("mlx5", root)
            inventory = Host(root).inventory()
        config = generate_config(inventory)
        (members,) = assign(config, discover_devices(inventory)).pools
        store = AllocationStore(tmp_path)
        for n in range(8):
            store.allocate(owner(n), members.candidates(), pool="nvidia.com/cx5")
        with pytest.raises(PoolExhausted):
            store.allocate(owner(8), members.candidates())


class TestRelease:
    """Releasing, reclaiming and the two-step release."""

    def test_release_returns_the_record(self, store: AllocationStore) -> None:
        """release gives back the original state; the VF is free again."""
        record = store.allocate(owner(1), VFS[:1], original_state={"trust": "off"})
        assert record == store.release(owner(1))
        assert None is store.release(owner(1))
        assert store.allocate(owner(2), VFS[:1]).vf == record.vf

    def test_release_vf(self, store: AllocationStore) -> None:
        """release_vf frees a VF whoever holds it."""
        record = store.allocate_vf(owner(1), VFS[0])
        assert record == store.release_vf(VFS[0])
        assert None is store.get(VFS[0])

    def test_releasing_keeps_record_on_failure(self, store: AllocationStore) -> None:
        """If restoring fails, the record (and the original state) stays."""
        store.allocate(owner(1), VFS)

        def failing_restore() -> None:
            with store.releasing(owner(1)) as record:
                assert record is not None
                raise RuntimeError("netlink said no")

        with pytest.raises(RuntimeError):
            failing_restore()
        assert store.find(owner(1)) is not None
        with store.releasing(owner(1)) as record:
            assert record is not None
        assert store.find(owner(1)) is None

    def test_stale_and_reclaim(self, tmp_path: Path) -> None:
        """Records whose namespace is gone are stale; reclaim drops only those."""
        alive = {"/ns/1"}
        store = AllocationStore(tmp_path, netns_exists=alive.__contains__)
        store.allocate(owner(1, "/ns/1"), VFS)
        gone = store.allocate(owner(2, "/ns/2"), VFS)
        store.allocate(owner(3), VFS)  # no namespace recorded: never reclaimed
        assert (gone,) == store.stale()
        assert (gone,) == store.reclaim()
        assert 2 == len(store.records())
        assert () == store.reclaim()

    def test_real_netns_paths(self, tmp_path: Path) -> None:
        """By default a namespace exists when its path does."""
        store = AllocationStore(tmp_path / "s")
        ns = tmp_path / "netns"
        ns.touch()
        store.allocate(owner(1, str(ns)), VFS)
        assert () == store.stale()
        ns.unlink()
        assert 1 == len(store.reclaim())


class TestDirectory:
    """What the store does with files it did not expect."""

    def test_leftover_temp_files(self, store: AllocationStore) -> None:
        """A dead writer's temporary file is ignored by readers and removed by writers."""
        store.allocate(owner(1), VFS)
        leftover = store.directory / ".tmp-12345-deadbeef"
        leftover.write_text('{"half": ')
        assert 1 == len(store.records())
        assert () == store.check()
        store.allocate(owner(2), VFS)
        assert not leftover.exists()

    def test_corrupt_record_keeps_vf_taken(self, store: AllocationStore) -> None:
        """An unreadable record is reported and its VF is never handed out again."""
        record = store.allocate_vf(owner(1), VFS[0])
        (path,) = store.directory.glob("*.json")
        path.write_text("{")
        assert () == store.records()
        (problem,) = store.check()
        assert str(path) in problem
        with pytest.raises(PoolExhausted):
            store.allocate(owner(2), VFS[:1])
        with pytest.raises(StoreError):
            store.get(record.vf)
        assert None is store.release_vf(record.vf)
        assert () == store.check()

    def test_foreign_file(self, store: AllocationStore) -> None:
        """A file sriovlib did not write is named by check()."""
        store.directory.mkdir(parents=True)
        (store.directory / "notes.txt").write_text("hi")
        assert ("notes.txt: not an allocation record",) == store.check()

    def test_renamed_record(self, store: AllocationStore) -> None:
        """A record whose content does not match its file name is reported."""
        store.allocate_vf(owner(1), VFS[0])
        (path,) = store.directory.glob("*.json")
        path.rename(path.with_name(path.name.replace(VFS[0], VFS[1])))
        assert any("does not match its file name" in p for p in store.check())

    def test_default_directory(self) -> None:
        """The default lives under /var/lib/sriovlib."""
        assert "/var/lib/sriovlib/allocations" == str(AllocationStore().directory)

    def test_lock_file_only(self, store: AllocationStore) -> None:
        """After a release, only the lock file is left."""
        store.allocate(owner(1), VFS)
        store.release(owner(1))
        assert [".lock"] == os.listdir(store.directory)


def devices(spec: list[tuple[int, int | None, int]]) -> list[Candidate]:
    """Candidates from (pf, numa, count) triples."""
    out = []
    for pf, numa, count in spec:
        out.extend(
            Candidate(f"0000:{pf:02x}:{i // 8:02x}.{i % 8}", f"pf{pf}", numa) for i in range(count)
        )
    return out


_pools = st.lists(
    st.tuples(st.integers(1, 6), st.none(), st.integers(1, 8)),
    min_size=1,
    max_size=5,
    unique_by=lambda t: t[0],
)


class TestPreferredAllocation:
    """The pure policy behind GetPreferredAllocation."""

    def test_pack_best_fit(self) -> None:
        """PACK uses the smallest PF that holds the whole request."""
        available = devices([(1, None, 8), (2, None, 3), (3, None, 5)])
        got = preferred_allocation(available, 3)
        assert {"pf2"} == {c.pf for c in available if c.id in got}

    def test_spread(self) -> None:
        """SPREAD takes one per PF in turn."""
        available = devices([(1, None, 8), (2, None, 3), (3, None, 5)])
        got = preferred_allocation(available, 3, policy=Policy.SPREAD)
        assert {"pf1", "pf2", "pf3"} == {c.pf for c in available if c.id in got}

    def test_must_include_pulls_its_pf(self) -> None:
        """PACK fills the PF of a must-include device first."""
        available = devices([(1, None, 8), (2, None, 3)])
        must = available[0].id
        got = preferred_allocation(available, 4, must_include=[must])
        assert must == got[0]
        assert {"pf1"} == {c.pf for c in available if c.id in got}

    def test_numa_given(self) -> None:
        """With NUMA nodes given, their devices come first."""
        available = devices([(1, 0, 4), (2, 1, 4)])
        got = preferred_allocation(available, 2, numa_nodes={1})
        assert {1} == {c.numa_node for c in available if c.id in got}

    def test_numa_auto_alignment(self) -> None:
        """Without NUMA nodes given, one node holds the allocation when it can."""
        available = devices([(1, 0, 2), (2, 0, 2), (3, 1, 3)])
        got = preferred_allocation(available, 3)  # PACK: the node that fits most tightly
        assert {1} == {c.numa_node for c in available if c.id in got}
        got = preferred_allocation(available, 3, policy=Policy.SPREAD)  # the roomiest node
        assert {0} == {c.numa_node for c in available if c.id in got}
        must = available[0].id  # on node 0, which has 4 devices
        got = preferred_allocation(available, 3, must_include=[must], policy=Policy.SPREAD)
        assert {0} == {c.numa_node for c in available if c.id in got}

    @pytest.mark.parametrize(
        ("size", "must", "words"),
        [
            (9, [], "cannot choose 9"),
            (1, ["0000:01:00.0", "0000:01:00.1"], "cannot choose"),
            (1, ["0000:99:00.0"], "not available"),
        ],
    )
    def test_impossible(self, size: int, must: list[str], words: str) -> None:
        """Requests that no answer meets raise PreferenceError."""
        with pytest.raises(PreferenceError, match=words):
            preferred_allocation(devices([(1, None, 8)]), size, must_include=must)

    @given(_pools, st.data(), st.sampled_from(list(Policy)))
    def test_valid_answer(
        self, spec: list[tuple[int, None, int]], data: st.DataObject, policy: Policy
    ) -> None:
        """The answer has the size asked, no duplicates, and every must-include device."""
        available = devices(spec)
        size = data.draw(st.integers(1, len(available)))
        must = data.draw(
            st.lists(st.sampled_from([c.id for c in available]), unique=True, max_size=size)
        )
        got = preferred_allocation(available, size, must_include=must, policy=policy)
        assert size == len(got) == len(set(got))
        assert set(must) <= set(got) <= {c.id for c in available}
        assert tuple(must) == got[: len(must)]

    @given(_pools, st.data())
    def test_pack_uses_fewest_pfs(
        self, spec: list[tuple[int, None, int]], data: st.DataObject
    ) -> None:
        """PACK uses the least number of PFs that can hold the request."""
        available = devices(spec)
        size = data.draw(st.integers(1, len(available)))
        got = set(preferred_allocation(available, size))
        used = {c.pf for c in available if c.id in got}
        sizes = sorted((count for _, _, count in spec), reverse=True)
        fewest = next(k for k in range(1, len(sizes) + 1) if sum(sizes[:k]) >= size)
        assert fewest == len(used)

    @given(_pools, st.data())
    def test_spread_uses_most_pfs_evenly(
        self, spec: list[tuple[int, None, int]], data: st.DataObject
    ) -> None:
        """SPREAD touches as many PFs as it can and keeps their shares within one."""
        available = devices(spec)
        size = data.draw(st.integers(1, len(available)))
        got = set(preferred_allocation(available, size, policy=Policy.SPREAD))
        share = Counter(c.pf for c in available if c.id in got)
        assert min(size, len(spec)) == len(share)
        capacity = {f"pf{pf}": count for pf, _, count in spec}
        not_full = [n for pf, n in share.items() if n < capacity[pf]]
        if not_full:
            assert max(share.values()) - min(not_full) <= 1


def test_owner_key_is_stable() -> None:
    """The file-name key depends on container id and interface only."""
    assert Owner("c", "net1").key == Owner("c", "net1", "/ns").key
    assert Owner("c", "net1").key != Owner("c", "net2").key
    assert 24 == len(Owner("c", "net1").key)
