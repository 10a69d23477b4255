"""Allocation-store benchmark: latency with 2048 VFs held, and 16-process throughput.

Run: ``python benchmarks/allocation.py`` (``--dir DIR`` for the store's file system,
default the system temporary directory, i.e. a real disk where fsync costs what it costs
on a node; ``--dir /dev/shm`` shows the cost without durable storage).

1. Latency: 2048 VFs are held (records written directly, outside the timing), the pool
   offers those 2048 plus 256 free VFs, and one owner allocates and releases a VF N times.
   Prints the median, 90th and 99th percentile of allocate, release and the pair.
2. Contention: 16 processes each run M allocate+release cycles on the same store (with
   the 2048 records in it); prints cycles per second over the wall time.
"""

from __future__ import annotations

import argparse
import json
import multiprocessing
import statistics
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path

from sriovlib import PciAddress
from sriovlib.allocation import Allocation, AllocationStore, Candidate, Owner

HELD = 2048
FREE = 256
VFS_PER_PF = 64


def pool() -> list[Candidate]:
    """(HELD + FREE) VFs, 64 per PF, PFs alternating between two NUMA nodes."""
    out = []
    for n in range(HELD + FREE):
        pf, index = divmod(n, VFS_PER_PF)
        bus = 0x10 + pf
        address = PciAddress(0, bus, 2 + index // 8, index % 8)
        out.append(Candidate(str(address), pf=f"0000:{bus:02x}:00.0", numa_node=pf % 2))
    return out


def fill(directory: Path, candidates: list[Candidate]) -> None:
    """Write HELD records the way the store names them (setup, not timed)."""
    directory.mkdir(parents=True, exist_ok=True)
    now = datetime.now(UTC)
    for n, candidate in enumerate(candidates[:HELD]):
        owner = Owner(f"{n:064x}", "net1", f"/var/run/netns/cni-{n:08x}")
        record = Allocation(
            vf=PciAddress.parse(candidate.id),
            owner=owner,
            allocated_at=now,
            pool="example.com/bench",
            original_state={
                "mac": "52:54:00:12:34:56",
                "vlan": 0,
                "spoofchk": True,
                "trust": False,
            },
        )
        name = f"{candidate.id}@{owner.key}.json"
        (directory / name).write_text(json.dumps(record.to_json(), indent=2) + "\n")


def percentiles(samples: list[float]) -> str:
    ordered = sorted(samples)

    def at(q: float) -> float:
        return ordered[min(len(ordered) - 1, int(q * len(ordered)))] * 1e3

    return (
        f"median {statistics.median(ordered) * 1e3:6.2f} ms  p90 {at(0.9):6.2f} ms  "
        f"p99 {at(0.99):6.2f} ms"
    )


def latency(directory: Path, candidates: list[Candidate], repeat: int) -> None:
    store = AllocationStore(directory)
    owner = Owner("benchmark", "net1", "/var/run/netns/bench")
    allocate, release, pair = [], [], []
    for _ in range(repeat):
        t0 = time.perf_counter()
        store.allocate(
            owner, candidates, pool="example.com/bench", original_state={"mac": "52:54:00:00:00:01"}
        )
        t1 = time.perf_counter()
        store.release(owner)
        t2 = time.perf_counter()
        allocate.append(t1 - t0)
        release.append(t2 - t1)
        pair.append(t2 - t0)
    print(f"  allocate          {percentiles(allocate)}")
    print(f"  release           {percentiles(release)}")
    print(f"  allocate+release  {percentiles(pair)}")


def _worker(directory: str, worker: int, cycles: int, start: float) -> None:
    store = AllocationStore(directory)
    candidates = pool()
    owner = Owner(f"worker{worker}", "net1")
    while time.time() < start:
        time.sleep(0.0005)
    for _ in range(cycles):
        store.allocate(owner, candidates, original_state={"worker": worker})
        store.release(owner)


def contention(directory: Path, processes: int, cycles: int) -> None:
    context = multiprocessing.get_context("fork")
    start = time.time() + 0.5
    workers = [
        context.Process(target=_worker, args=(str(directory), n, cycles, start))
        for n in range(processes)
    ]
    for w in workers:
        w.start()
    for w in workers:
        w.join()
        if w.exitcode != 0:
            raise SystemExit(f"worker failed with exit code {w.exitcode}")
    elapsed = time.time() - start
    total = processes * cycles
    print(
        f"  {processes} processes x {cycles} cycles: {total} allocate+release in "
        f"{elapsed:.2f} s = {total / elapsed:.0f} cycles/s "
        f"({elapsed / total * 1e3:.2f} ms per cycle, serialised by flock)"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--dir", help="where to create the store (default: system temp)")
    parser.add_argument("--repeat", type=int, default=200, help="latency samples")
    parser.add_argument("--cycles", type=int, default=40, help="cycles per process")
    parser.add_argument("--processes", type=int, default=16)
    args = parser.parse_args()
    candidates = pool()
    with tempfile.TemporaryDirectory(prefix="sriovlib-bench-", dir=args.dir) as tmp:
        directory = Path(tmp) / "allocations"
        fill(directory, candidates)
        print(f"store: {directory} ({HELD} records; pool of {len(candidates)} VFs)")
        print("latency, one process:")
        latency(directory, candidates, args.repeat)
        print("contention:")
        contention(directory, args.processes, args.cycles)


if __name__ == "__main__":
    main()
