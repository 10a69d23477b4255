"""Who holds which VF: a crash-safe store, and the preferred-allocation policy.

:class:`AllocationStore` keeps one JSON file per allocated VF in a directory (default
:data:`DEFAULT_DIRECTORY`). A file is named ``<VF address>@<owner key>.json`` and holds
the owner (container id, interface name and network namespace), the time, the pool and
the VF's original state — whatever the caller needs to put the VF back, as an opaque
JSON object. The directory listing alone says which VFs are taken and by whom, so an
allocation reads no record but the owner's own.

Every change is made under an exclusive ``flock`` on ``<directory>/.lock`` and written
atomically: a temporary file is written and fsynced, renamed over the final name, and the
directory is fsynced. A process killed at any instant therefore leaves either the old
record or the new one, never half of one; a leftover temporary file is ignored and
removed by the next writer. The kernel drops a dead process's lock.

:func:`preferred_allocation` is the pure policy behind kubelet's GetPreferredAllocation:
pack onto few PFs or spread across many, prefer given NUMA nodes (or keep the allocation
on one node when it fits), always including the devices kubelet says must be included.
"""

from __future__ import annotations

import enum
import errno
import functools
import hashlib
import json
import os
import re
import stat
from collections import Counter
from collections.abc import Callable, Collection, Iterable, Iterator, Mapping, Sequence
from contextlib import AbstractContextManager, contextmanager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, NamedTuple

import attrs

from sriovlib._files import TEMP_PREFIX, locked_dir, read_private, sync_directory, write_atomic
from sriovlib.exceptions import SriovError
from sriovlib.models import PciAddress
from sriovlib.sysfs import check_netdev_name

__all__ = [
    "DEFAULT_DIRECTORY",
    "Allocation",
    "AllocationError",
    "AllocationStore",
    "AlreadyAllocated",
    "Candidate",
    "Owner",
    "OwnerBusy",
    "Policy",
    "PoolExhausted",
    "PreferenceError",
    "StoreError",
    "preferred_allocation",
]

#: Where allocation records live unless the store is given another directory.
DEFAULT_DIRECTORY = Path("/var/lib/sriovlib/allocations")

#: Version of the record format, written into every record.
RECORD_FORMAT = 1

_RECORD_NAME = re.compile(
    r"(?P<vf>[0-9a-f]{4,8}:[0-9a-f]{2}:[0-9a-f]{2}\.[0-7])@(?P<key>[0-9a-f]{24})\.json"
)


# ---------------------------------------------------------------------------------
# errors
# ---------------------------------------------------------------------------------


class AllocationError(SriovError):
    """An allocation request that cannot be granted."""


class PoolExhausted(AllocationError):
    """Every candidate VF is held by someone."""


class AlreadyAllocated(AllocationError):
    """The requested VF is held by another owner."""

    def __init__(self, holder: Allocation) -> None:
        self.holder = holder
        super().__init__(
            f"VF {holder.vf} is held by {holder.owner} since {holder.allocated_at.isoformat()}"
        )


class OwnerBusy(AllocationError):
    """The owner already holds a VF that does not fit this request."""

    def __init__(self, held: Allocation) -> None:
        self.held = held
        pool = f" of pool {held.pool}" if held.pool else ""
        super().__init__(f"{held.owner} already holds VF {held.vf}{pool}; release it first")


class StoreError(SriovError):
    """The store directory holds something sriovlib did not write."""


class PreferenceError(SriovError, ValueError):
    """A preferred-allocation request that no answer satisfies."""


# ---------------------------------------------------------------------------------
# records
# ---------------------------------------------------------------------------------


def _check_container_id(_instance: object, _attribute: object, value: str) -> None:
    if not isinstance(value, str) or not value or "\0" in value:
        raise ValueError(f"invalid container id {value!r}: must be a non-empty string")


def _check_ifname(_instance: object, _attribute: object, value: str) -> None:
    check_netdev_name(value)


@attrs.frozen
class Owner:
    """Who holds a VF: a container's interface (what CNI ADD and DEL name).

    Attributes:
        container_id: The runtime's container (sandbox) id.
        ifname: The interface name inside the container.
        netns: The container's network namespace path; a record whose namespace is gone
            can be reclaimed. None means "never reclaim automatically".
    """

    container_id: str = attrs.field(validator=_check_container_id)
    ifname: str = attrs.field(validator=_check_ifname)
    netns: str | None = None

    @property
    def key(self) -> str:
        """A file-name-safe digest of container id and interface name."""
        data = f"{self.container_id}\0{self.ifname}".encode()
        return hashlib.sha256(data).hexdigest()[:24]

    def same_as(self, other: Owner) -> bool:
        """Whether *other* names the same container interface (the namespace may differ)."""
        return (self.container_id, self.ifname) == (other.container_id, other.ifname)

    def __str__(self) -> str:
        return f"container {self.container_id} interface {self.ifname}"


@attrs.frozen
class Allocation:
    """One record: a VF held by an owner.

    Attributes:
        vf: The VF's PCI address.
        owner: Who holds it.
        allocated_at: When it was allocated (UTC).
        pool: The pool it came from, if any (e.g. ``intel.com/mlx5_1017``).
        original_state: The caller's description of the VF before allocation, to restore
            on release (for example MAC, VLAN, trust, driver). Any JSON object.
    """

    vf: PciAddress
    owner: Owner
    allocated_at: datetime
    pool: str | None = None
    original_state: Mapping[str, Any] = attrs.field(factory=dict, hash=False)

    def to_json(self) -> dict[str, Any]:
        """The record as stored."""
        return {
            "format": RECORD_FORMAT,
            "vf": str(self.vf),
            "pool": self.pool,
            "owner": {
                "container_id": self.owner.container_id,
                "ifname": self.owner.ifname,
                "netns": self.owner.netns,
            },
            "allocated_at": self.allocated_at.isoformat(),
            "original_state": dict(self.original_state),
        }

    @classmethod
    def from_json(cls, data: object) -> Allocation:
        """Read a stored record; raise :class:`StoreError` if it is not one."""
        try:
            if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
                raise ValueError(f"not a format-{RECORD_FORMAT} record")
            owner = data["owner"]
            state = data["original_state"]
            pool = data["pool"]
            netns = owner["netns"]
            if not isinstance(state, dict) or not isinstance(pool, str | None):
                raise ValueError("original_state must be an object and pool a string")
            if not isinstance(netns, str | None):
                raise ValueError("owner.netns must be a string or null")
            allocated_at = datetime.fromisoformat(data["allocated_at"])
            if allocated_at.tzinfo is None:
                raise ValueError("allocated_at has no time zone")
            return cls(
                vf=PciAddress.parse(data["vf"]),
                owner=Owner(owner["container_id"], owner["ifname"], netns),
                allocated_at=allocated_at,
                pool=pool,
                original_state=state,
            )
        except (KeyError, TypeError, ValueError, AttributeError) as e:
            raise StoreError(f"malformed allocation record: {e}") from None


def _filename(vf: PciAddress, owner: Owner) -> str:
    return f"{vf}@{owner.key}.json"


def _json_state(state: Mapping[str, Any]) -> dict[str, Any]:
    """*state* as it reads back from JSON; raise if it is not a JSON object."""
    try:
        text = json.dumps(dict(state), allow_nan=False)
    except (TypeError, ValueError) as e:
        raise AllocationError(f"the VF's original state is not JSON: {e}") from None
    result: dict[str, Any] = json.loads(text)
    return result


# ---------------------------------------------------------------------------------
# preferred allocation (pure)
# ---------------------------------------------------------------------------------


class Policy(enum.StrEnum):
    """How to choose among free devices."""

    #: Fill the PFs already in use first, then the smallest PF that fits: keeps whole
    #: PFs free for large requests.
    PACK = "pack"
    #: One device per PF in turn: spreads a multi-device request over PFs.
    SPREAD = "spread"


@attrs.frozen
class Candidate:
    """A free device offered to the policy.

    Attributes:
        id: The device id (a VF's PCI address for net pools).
        pf: The PF it belongs to (any string that is equal for siblings).
        numa_node: Its NUMA node, or None when unknown.
    """

    id: str
    pf: str = ""
    numa_node: int | None = None


def preferred_allocation(
    available: Sequence[Candidate],
    size: int,
    *,
    must_include: Sequence[str] = (),
    policy: Policy = Policy.PACK,
    numa_nodes: Collection[int] | None = None,
) -> tuple[str, ...]:
    """Choose *size* device ids out of *available*.

    The result starts with *must_include* (which must be available) and is filled by
    *policy*. With *numa_nodes*, devices on those nodes come first; without, the
    allocation stays on one NUMA node when one node can hold it (the node of the
    must-include devices, if they share one). Ties go to the earlier PF id and, within
    a PF, to the order of *available*. Raises :class:`PreferenceError` when the request
    cannot be met.
    """
    by_id: dict[str, Candidate] = {}
    for device in available:
        by_id.setdefault(device.id, device)
    must = list(dict.fromkeys(must_include))
    missing = [m for m in must if m not in by_id]
    if missing:
        raise PreferenceError(f"must-include devices are not available: {', '.join(missing)}")
    if not len(must) <= size <= len(by_id):
        raise PreferenceError(
            f"cannot choose {size} devices out of {len(by_id)} available "
            f"with {len(must)} that must be included"
        )
    chosen = [by_id[m] for m in must]
    taken = set(must)
    rest = [d for d in by_id.values() if d.id not in taken]
    need = size - len(chosen)
    for tier in _numa_tiers(rest, chosen, need, policy, numa_nodes):
        if need == 0:
            break
        picked = _pick(tier, chosen, min(need, len(tier)), policy)
        chosen.extend(picked)
        need -= len(picked)
    return tuple(d.id for d in chosen)


def _numa_tiers(
    rest: Sequence[Candidate],
    chosen: Sequence[Candidate],
    need: int,
    policy: Policy,
    numa_nodes: Collection[int] | None,
) -> list[list[Candidate]]:
    """The free devices in order of NUMA preference: preferred first, then the others."""
    if numa_nodes is not None:
        nodes = set(numa_nodes)
        return [
            [d for d in rest if d.numa_node in nodes],
            [d for d in rest if d.numa_node not in nodes],
        ]
    groups: dict[int, list[Candidate]] = {}
    for device in rest:
        if device.numa_node is not None:
            groups.setdefault(device.numa_node, []).append(device)
    held = {d.numa_node for d in chosen}
    if len(held) > 1 or None in held:
        return [list(rest)]
    known = [n for n in held if n is not None] or list(groups)
    options = [n for n in known if len(groups.get(n, ())) >= need]
    if not options or need == 0:
        return [list(rest)]
    if policy is Policy.PACK:
        node = min(options, key=lambda n: (len(groups[n]), n))
    else:
        node = min(options, key=lambda n: (-len(groups[n]), n))
    return [groups[node], [d for d in rest if d.numa_node != node]]


def _pick(
    tier: Sequence[Candidate], chosen: Sequence[Candidate], count: int, policy: Policy
) -> list[Candidate]:
    """*count* devices of *tier* by *policy*, given the devices chosen so far."""
    free: dict[str, list[Candidate]] = {}
    for device in tier:
        free.setdefault(device.pf, []).append(device)
    used = Counter(d.pf for d in chosen)
    picked: list[Candidate] = []
    while len(picked) < count:
        remaining = count - len(picked)
        open_pfs = sorted(pf for pf, devices in free.items() if devices)
        if policy is Policy.SPREAD:
            pf = min(open_pfs, key=lambda p: (used[p], -len(free[p]), p))
            take = 1
        else:
            in_use = [p for p in open_pfs if used[p]]
            fits = [p for p in open_pfs if len(free[p]) >= remaining]
            if in_use:
                pf = min(in_use, key=lambda p: (-used[p], p))
            elif fits:
                pf = min(fits, key=lambda p: (len(free[p]), p))
            else:
                pf = min(open_pfs, key=lambda p: (-len(free[p]), p))
            take = remaining
        batch, free[pf] = free[pf][:take], free[pf][take:]
        picked.extend(batch)
        used[pf] += len(batch)
    return picked


# ---------------------------------------------------------------------------------
# the store
# ---------------------------------------------------------------------------------

StateSource = Mapping[str, Any] | Callable[[PciAddress], Mapping[str, Any]]


def _utc_now() -> datetime:
    return datetime.now(UTC)


_CANONICAL = re.compile(r"(?:[0-9a-f]{4}|[1-9a-f][0-9a-f]{4,7}):[0-9a-f]{2}:[01][0-9a-f]\.[0-7]")


@functools.lru_cache(maxsize=65536)
def _canonical(vf: str) -> str:
    """The kernel's spelling of a VF address (fast path for text already in it)."""
    return vf if _CANONICAL.fullmatch(vf) else str(PciAddress.parse(vf))


def _as_candidate(item: Candidate | PciAddress | str) -> Candidate:
    if isinstance(item, Candidate):
        canonical = _canonical(item.id)
        return item if canonical == item.id else attrs.evolve(item, id=canonical)
    return Candidate(str(item) if isinstance(item, PciAddress) else _canonical(item))


class _Entry(NamedTuple):
    """A record file seen in the directory listing."""

    name: str
    vf: str
    key: str


class AllocationStore:
    """Persistent VF allocations in *directory* (created on first use).

    Args:
        directory: Where records live.
        netns_exists: Tells whether an owner's namespace path still exists (reclaim).
        clock: The time source for ``allocated_at``.

    Every method reads the directory afresh, so any number of processes may share one
    store; changes are serialised by ``flock``.
    """

    def __init__(
        self,
        directory: str | os.PathLike[str] = DEFAULT_DIRECTORY,
        *,
        netns_exists: Callable[[str], bool] = os.path.exists,
        clock: Callable[[], datetime] = _utc_now,
    ) -> None:
        self.directory = Path(directory)
        self._netns_exists = netns_exists
        self._clock = clock

    def __repr__(self) -> str:
        return f"AllocationStore({str(self.directory)!r})"

    # -- allocation ----------------------------------------------------------------

    def allocate(
        self,
        owner: Owner,
        candidates: Iterable[Candidate | PciAddress | str],
        *,
        pool: str | None = None,
        original_state: StateSource | None = None,
        policy: Policy = Policy.PACK,
        numa_nodes: Collection[int] | None = None,
    ) -> Allocation:
        """Give *owner* one free VF out of *candidates* (a pool's devices).

        *original_state* is the VF's state to keep for restoring, or a function that
        reads it for the chosen VF (called under the lock). If *owner* already holds one
        of the candidates, that allocation is returned unchanged (a retried CNI ADD).

        Raises:
            PoolExhausted: Every candidate is held.
            OwnerBusy: The owner holds a VF that is not a candidate.
        """
        offered = [_as_candidate(c) for c in candidates]
        with self._locked(exclusive=True):
            entries = self._entries(clean=True)
            existing = self._held_by(owner, entries)
            if existing is not None:
                if any(c.id == str(existing.vf) for c in offered):
                    return existing
                raise OwnerBusy(existing)
            held = {e.vf for e in entries}
            free = [c for c in offered if c.id not in held]
            if not free:
                where = f" in pool {pool}" if pool else ""
                raise PoolExhausted(f"no free VF{where}: all {len(offered)} are held")
            (choice,) = preferred_allocation(free, 1, policy=policy, numa_nodes=numa_nodes)
            return self._create(PciAddress.parse(choice), owner, pool, original_state)

    def allocate_vf(
        self,
        owner: Owner,
        vf: PciAddress | str,
        *,
        pool: str | None = None,
        original_state: StateSource | None = None,
    ) -> Allocation:
        """Give *owner* this VF; return the owner's record if it holds it already.

        Raises:
            AlreadyAllocated: Another owner holds it.
            OwnerBusy: The owner holds another VF.
        """
        address = vf if isinstance(vf, PciAddress) else PciAddress.parse(vf)
        with self._locked(exclusive=True):
            entries = self._entries(clean=True)
            existing = self._held_by(owner, entries)
            if existing is not None:
                if existing.vf == address:
                    return existing
                raise OwnerBusy(existing)
            for entry in entries:
                if entry.vf == str(address):
                    holder = self._read_or_none(entry)
                    if holder is None:
                        raise StoreError(
                            f"VF {address} is held by an unreadable record "
                            f"{self.directory / entry.name}"
                        )
                    raise AlreadyAllocated(holder)
            return self._create(address, owner, pool, original_state)

    def _create(
        self,
        vf: PciAddress,
        owner: Owner,
        pool: str | None,
        original_state: StateSource | None,
    ) -> Allocation:
        if original_state is None:
            state: Mapping[str, Any] = {}
        elif callable(original_state):
            state = original_state(vf)
        else:
            state = original_state
        record = Allocation(
            vf=vf,
            owner=owner,
            allocated_at=self._clock().astimezone(UTC),
            pool=pool,
            original_state=_json_state(state),
        )
        data = json.dumps(record.to_json(), indent=2, allow_nan=False) + "\n"
        self._write(_filename(vf, owner), data.encode())
        return Allocation.from_json(json.loads(data))

    # -- release -------------------------------------------------------------------

    def release(self, owner: Owner) -> Allocation | None:
        """Drop the owner's record and return it (None when it holds nothing).

        Restore the VF from the returned ``original_state``; to keep the record until the
        restore has succeeded, use :meth:`releasing` instead.
        """
        key = owner.key
        with self._locked(exclusive=True):
            for entry in self._entries(clean=True):
                if entry.key == key:
                    record = self._read_or_none(entry)
                    self._unlink(entry.name)
                    return record
        return None

    def release_vf(self, vf: PciAddress | str) -> Allocation | None:
        """Drop the record of this VF, whoever holds it; return it (None if free)."""
        address = str(vf if isinstance(vf, PciAddress) else PciAddress.parse(vf))
        with self._locked(exclusive=True):
            for entry in self._entries(clean=True):
                if entry.vf == address:
                    record = self._read_or_none(entry)
                    self._unlink(entry.name)
                    return record
        return None

    @contextmanager
    def releasing(self, owner: Owner) -> Iterator[Allocation | None]:
        """Yield the owner's record and drop it only if the block succeeds.

        ``with store.releasing(owner) as record: restore(record)`` keeps the record (and
        with it the original state) when the restore raises. The lock is not held while
        the block runs; the record is dropped only if it is still the same one.
        """
        record = self.find(owner)
        yield record
        if record is None:
            return
        with self._locked(exclusive=True):
            path = self.directory / _filename(record.vf, owner)
            try:
                current = self._read(path)
            except FileNotFoundError:
                return
            if current == record:
                self._unlink(path.name)

    # -- queries -------------------------------------------------------------------

    def get(self, vf: PciAddress | str) -> Allocation | None:
        """The record of this VF, or None when it is free."""
        address = str(vf if isinstance(vf, PciAddress) else PciAddress.parse(vf))
        with self._locked(exclusive=False):
            for entry in self._entries():
                if entry.vf == address:
                    return self._read_or_raise(entry)
        return None

    def held_vf(self, owner: Owner) -> PciAddress | None:
        """The VF *owner* holds according to the file names alone, its record unread:
        for a record that is damaged (``find`` raises), this still names its VF."""
        key = owner.key
        with self._locked(exclusive=False):
            for entry in self._entries():
                if entry.key == key:
                    try:
                        return PciAddress.parse(entry.vf)
                    except ValueError:
                        continue
        return None

    def find(self, owner: Owner) -> Allocation | None:
        """The record held by *owner*, or None."""
        with self._locked(exclusive=False):
            return self._held_by(owner, self._entries())

    def records(self) -> tuple[Allocation, ...]:
        """Every readable record, in VF address order (see :meth:`check` for the rest)."""
        with self._locked(exclusive=False):
            records = [self._read_or_none(e) for e in self._entries()]
        return tuple(sorted((r for r in records if r is not None), key=lambda r: r.vf))

    def allocated(self) -> frozenset[PciAddress]:
        """The VFs held, from the directory listing alone (no record is read)."""
        with self._locked(exclusive=False):
            entries = self._entries()
        return frozenset(PciAddress.parse(e.vf) for e in entries if _RECORD_NAME.fullmatch(e.name))

    def stale(self) -> tuple[Allocation, ...]:
        """Records whose owner's network namespace no longer exists."""
        return tuple(r for r in self.records() if self._is_stale(r))

    def reclaim(self) -> tuple[Allocation, ...]:
        """Drop every stale record and return them (restore their VFs from them)."""
        dropped = []
        with self._locked(exclusive=True):
            for entry in self._entries(clean=True):
                record = self._read_or_none(entry)
                if record is not None and self._is_stale(record):
                    self._unlink(entry.name)
                    dropped.append(record)
        return tuple(sorted(dropped, key=lambda r: r.vf))

    def check(self) -> tuple[str, ...]:
        """Problems in the directory: unreadable records, files sriovlib did not write,
        a VF or an owner with two records. Empty when the store is consistent."""
        problems = []
        with self._locked(exclusive=False):
            try:
                names = sorted(os.listdir(self.directory))
            except FileNotFoundError:
                return ()
            entries = self._entries()
            for name in sorted(names):
                if not name.startswith(".") and _RECORD_NAME.fullmatch(name) is None:
                    problems.append(f"{name}: not an allocation record")
            entries = [e for e in entries if _RECORD_NAME.fullmatch(e.name)]
            for entry in sorted(entries):
                try:
                    self._read_or_raise(entry)
                except StoreError as e:
                    problems.append(str(e))
        for what, counts in (
            ("VF", Counter(e.vf for e in entries)),
            ("owner key", Counter(e.key for e in entries)),
        ):
            problems.extend(
                f"{what} {value} has {n} records" for value, n in sorted(counts.items()) if n > 1
            )
        return tuple(problems)

    # -- internals -------------------------------------------------------------------

    def _is_stale(self, record: Allocation) -> bool:
        netns = record.owner.netns
        return netns is not None and not self._netns_exists(netns)

    def _locked(self, *, exclusive: bool) -> AbstractContextManager[None]:
        return locked_dir(self.directory, exclusive=exclusive)

    def _entries(self, *, clean: bool = False) -> list[_Entry]:
        """The record files, from one directory listing.

        With *clean* (only under the exclusive lock), temporary files are deleted: only
        a writer holding the lock creates them, so any seen now belongs to a dead one.
        """
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        entries = []
        for name in names:
            if name.startswith("."):
                if clean and name.startswith(TEMP_PREFIX):
                    (self.directory / name).unlink(missing_ok=True)
                continue
            vf, at, rest = name.partition("@")
            if at and len(rest) == 29 and rest.endswith(".json"):
                entries.append(_Entry(name, vf, rest[:24]))
        return entries

    def _held_by(self, owner: Owner, entries: Sequence[_Entry]) -> Allocation | None:
        key = owner.key
        for entry in entries:
            if entry.key == key:
                record = self._read_or_raise(entry)
                if record.owner.same_as(owner):
                    return record
        return None

    def _read(self, path: Path) -> Allocation:
        data = read_private(path)
        try:
            record = Allocation.from_json(json.loads(data))
        except (ValueError, StoreError) as e:
            raise StoreError(f"{path}: {e}") from None
        if path.name != _filename(record.vf, record.owner):
            raise StoreError(
                f"{path}: the record is for VF {record.vf} and "
                f"{record.owner}, which does not match its file name"
            )
        return record

    def _read_or_raise(self, entry: _Entry) -> Allocation:
        try:
            return self._read(self.directory / entry.name)
        except OSError as e:
            raise StoreError(f"{self.directory / entry.name}: {e.strerror or e}") from None

    def _read_or_none(self, entry: _Entry) -> Allocation | None:
        try:
            return self._read_or_raise(entry)
        except StoreError:
            return None

    def _write(self, name: str, data: bytes) -> None:
        write_atomic(self.directory / name, data)

    def _unlink(self, name: str) -> None:
        """Remove an entry: a record file, or whatever was put in its place (a symlink
        is removed, not followed; a directory is removed with what it holds)."""
        path = self.directory / name
        try:
            if stat.S_ISDIR(os.lstat(path).st_mode):
                import shutil  # here only: shutil loads bz2, lzma and zlib, rarely needed

                shutil.rmtree(path)
            else:
                os.unlink(path)
        except OSError as e:
            if e.errno != errno.ENOENT:
                raise
        sync_directory(self.directory)
