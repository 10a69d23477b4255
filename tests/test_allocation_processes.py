"""The allocation store under concurrent processes and under SIGKILL at every write step."""

from __future__ import annotations

import json
import multiprocessing
import os
import random
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest

from sriovlib.allocation import AllocationStore, Candidate, Owner, PoolExhausted

WORKERS = 16
CYCLES = 25
VFS = [f"0000:5e:{d:02x}.{f}" for d in range(2) for f in range(6)]  # 12 VFs for 16 workers


def _worker(directory: str, markers: str, worker: int, result: str) -> None:
    """Allocate, hold, release CYCLES times; count VFs another worker also believed held."""
    store = AllocationStore(directory)
    pool = [Candidate(v, pf=v[:10]) for v in VFS]
    doubles = exhausted = done = 0
    while done < CYCLES:
        owner = Owner(f"worker{worker}", f"net{done % 3}", f"/ns/{worker}")
        try:
            record = store.allocate(owner, pool, original_state={"worker": worker, "n": done})
        except PoolExhausted:
            exhausted += 1
            time.sleep(0.001)
            continue
        marker = Path(markers) / str(record.vf)
        try:
            os.close(os.open(marker, os.O_CREAT | os.O_EXCL | os.O_WRONLY))
            mine = True
        except FileExistsError:
            doubles += 1
            mine = False
        if record.original_state != {"worker": worker, "n": done}:
            doubles += 1
        time.sleep(random.uniform(0, 0.002))  # noqa: S311 (timing jitter, not secrets)
        if mine:
            marker.unlink()
        released = store.release(owner)
        if released is None or released.vf != record.vf:
            doubles += 1
        done += 1
    Path(result).write_text(json.dumps({"done": done, "doubles": doubles, "exhausted": exhausted}))


class TestManyProcesses:
    """Sixteen processes share one store on disk."""

    def test_no_double_allocation(self, tmp_path: Path) -> None:
        """400 allocate/release cycles over 12 VFs: never two holders, nothing left over."""
        store_dir, markers = tmp_path / "store", tmp_path / "held"
        markers.mkdir()
        context = multiprocessing.get_context("fork")
        processes = [
            context.Process(
                target=_worker, args=(str(store_dir), str(markers), n, str(tmp_path / f"r{n}"))
            )
            for n in range(WORKERS)
        ]
        for process in processes:
            process.start()
        for process in processes:
            process.join(timeout=120)
            assert 0 == process.exitcode
        results = [json.loads((tmp_path / f"r{n}").read_text()) for n in range(WORKERS)]
        assert WORKERS * CYCLES == sum(r["done"] for r in results)
        assert 0 == sum(r["doubles"] for r in results)
        store = AllocationStore(store_dir)
        assert () == store.records()
        assert () == store.check()
        assert [".lock"] == os.listdir(store_dir)


_CHILD = r"""
import os, signal, sys
from sriovlib.allocation import AllocationStore, Owner

directory, stage = sys.argv[1], sys.argv[2]
store = AllocationStore(directory)
real = {name: getattr(os, name) for name in ("write", "fsync", "rename", "unlink")}

def die():
    os.kill(os.getpid(), signal.SIGKILL)

def half_write(fd, data):
    real["write"](fd, bytes(data[: len(data) // 2]))
    die()

def then_die(name):
    def call(*args, **kwargs):
        real[name](*args, **kwargs)
        die()
    return call

if stage == "write":
    os.write = half_write
elif stage == "fsync":
    os.fsync = lambda fd: die()
elif stage == "rename":
    os.rename = then_die("rename")
elif stage == "unlink":
    os.unlink = then_die("unlink")
victim = Owner("victim", "net1", "/ns/victim")
if stage == "unlink":
    store.release(victim)
else:
    store.allocate(victim, ["0000:3b:00.2", "0000:3b:00.3"], original_state={"mac": "m"})
"""

_LOOP = r"""
import os, sys
from sriovlib.allocation import AllocationStore, Owner, PoolExhausted

directory, log = sys.argv[1], sys.argv[2]
store = AllocationStore(directory)
vfs = [f"0000:3b:{d:02x}.{f}" for d in range(4) for f in range(8)]
fd = os.open(log, os.O_WRONLY | os.O_APPEND | os.O_CREAT)
print("ready", flush=True)
n = 0
while True:
    owner = Owner(f"c{n % 40}", "net1")
    if store.find(owner) is None:
        try:
            record = store.allocate(owner, vfs, original_state={"n": n})
        except PoolExhausted:
            pass
        else:
            os.write(fd, f"held {owner.container_id} {record.vf}\n".encode())
    else:
        os.write(fd, f"releasing {owner.container_id}\n".encode())
        store.release(owner)
    n += 1
"""


def _run(script: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen([sys.executable, "-c", script, *args], stdout=subprocess.PIPE)


class TestSigkill:
    """A writer killed at any step leaves a store that loads and is consistent."""

    @pytest.mark.parametrize("stage", ["write", "fsync", "rename", "unlink"])
    def test_killed_at_each_step(self, tmp_path: Path, stage: str) -> None:
        """Killed mid-write, before rename, after rename, or mid-release."""
        store = AllocationStore(tmp_path)
        other = store.allocate(
            Owner("other", "net1"), ["0000:3b:00.2"], original_state={"mac": "o"}
        )
        if stage == "unlink":
            store.allocate(
                Owner("victim", "net1", "/ns/victim"), ["0000:3b:00.3"], original_state={"mac": "m"}
            )
        child = _run(_CHILD, str(tmp_path), stage)
        child.wait(timeout=60)
        assert -signal.SIGKILL == child.returncode
        after = AllocationStore(tmp_path)
        assert () == after.check()
        records = {r.owner.container_id: r for r in after.records()}
        assert other == records.pop("other")
        if stage in ("write", "fsync"):
            assert {} == records  # the new record never became visible
        elif stage == "rename":
            assert {"mac": "m"} == records["victim"].original_state  # complete, or absent
        else:
            assert {} == records
        # the lock died with the child; the next writer cleans its leftovers
        after.allocate(Owner("next", "net1"), ["0000:3b:00.4"])
        assert all(not n.startswith(".tmp-") for n in os.listdir(tmp_path))

    def test_killed_at_random_moments(self, tmp_path: Path) -> None:
        """A busy writer killed at random times: every record it reported held survives."""
        store_dir = tmp_path / "store"
        for round_ in range(8):
            log = tmp_path / f"log{round_}"
            child = _run(_LOOP, str(store_dir), str(log))
            assert child.stdout is not None
            assert b"ready\n" == child.stdout.readline()
            time.sleep(random.uniform(0.01, 0.15))  # noqa: S311 (a random moment to kill)
            child.send_signal(signal.SIGKILL)
            child.wait(timeout=60)
            store = AllocationStore(store_dir)
            assert () == store.check()
            held = {r.owner.container_id: str(r.vf) for r in store.records()}
            claimed: dict[str, str] = {}
            for line in log.read_text().splitlines():
                word, owner, *vf = line.split()
                if word == "held":
                    claimed[owner] = vf[0]
                else:
                    claimed.pop(owner, None)
            for owner, vf in claimed.items():
                assert held.get(owner) == vf
            assert len(set(held.values())) == len(held)
