"""Device-plugin agent benchmark: 2048 devices in one pool, the agent as a real process.

Run: ``python benchmarks/agent.py [--json]``.

A fake node with 16 PFs of 128 VFs (PFs alternating between NUMA nodes 0 and 1) and a
config with one pool taking every VF. ``sriovlib agent --sysfs-root`` serves it to the
in-process kubelet stand-in (:class:`sriovlib.testing.kubelet.KubeletStandIn`), which is
the client of every call timed here:

1. agent start → Register received;
2. Register → the first ListAndWatch response with all 2048 devices, and its size;
3. GetDevicePluginOptions (the floor: a gRPC round trip between two Python processes
   that does nothing), Allocate of one device (N calls) and of four, p50/p99/max;
4. GetPreferredAllocation of 1 and 8 out of all 2048, p50/p99;
5. the agent's RSS (VmRSS, VmHWM) after start and after the loops, and with 16 devices.

Its files (fake sysfs, state, device-info files) live in ``/dev/shm`` where there is one:
on a node the device-info files are on ``/var/run``, a tmpfs, and a disk's fsync would
otherwise be what Allocate's first grant of each device measures.
"""

from __future__ import annotations

import argparse
import json
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sriovlib.models import PciAddress, PciId
from sriovlib.testing.builder import FakeSysfs
from sriovlib.testing.kubelet import KubeletStandIn

PFS, VFS = 16, 128


def build(root: Path, pfs: int, vfs: int) -> None:
    fs = FakeSysfs(root)
    for n in range(pfs):
        fs.add_pf(
            ids=PciId(0x8086, 0x1572),
            driver="i40e",
            vf_ids=PciId(0x8086, 0x154C),
            vf_driver="iavf",
            total_vfs=vfs,
            num_vfs=vfs,
            address=PciAddress(0, 0x10 + 2 * n, 0, 0),
            netdev=f"ens{n}f0",
            numa_node=n % 2,
        )


def rss(pid: int) -> dict[str, float]:
    out = {}
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        key, _, value = line.partition(":")
        if key in ("VmRSS", "VmHWM"):
            out[key] = round(int(value.split()[0]) / 1024, 1)
    return out


def pct(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered) * 1000, 3),
        "p99": round(ordered[int(len(ordered) * 0.99) - 1] * 1000, 3),
        "max": round(ordered[-1] * 1000, 3),
    }


def run(tmp: Path, pfs: int, vfs: int, calls: int) -> dict[str, object]:
    root = tmp / f"root-{pfs * vfs}"
    build(root, pfs, vfs)
    config = tmp / f"config-{pfs * vfs}.json"
    config.write_text(
        json.dumps(
            {"resourceList": [{"resourceName": "bench", "selectors": {"drivers": ["iavf"]}}]}
        )
    )
    dp = tmp / f"dp-{pfs * vfs}"
    result: dict[str, object] = {"devices": pfs * vfs}
    with KubeletStandIn(dp) as kubelet:
        started = time.perf_counter()
        agent = subprocess.Popen(
            [sys.executable, "-m", "sriovlib.agent", "--sysfs-root", str(root),
             "--config", str(config), "--device-plugin-dir", str(dp),
             "--state-dir", str(tmp / "state"), "--device-info-dir", str(tmp / "devinfo"),
             "--cni-socket", "off", "--log-level", "warning"],
        )  # fmt: skip
        try:
            plugin = kubelet.wait_plugin("intel.com/bench", timeout=120)
            registered = time.perf_counter()
            devices = plugin.wait_devices(lambda ds: len(ds) == pfs * vfs, timeout=60)
            listed = time.perf_counter()
            result["start_to_registered_s"] = round(registered - started, 3)
            result["registered_to_full_list_ms"] = round((listed - registered) * 1000, 1)
            message = plugin.updates[0]
            result["list_bytes"] = sum(d.ByteSize() + 2 for d in message)
            result["rss_after_start_mb"] = rss(agent.pid)
            ids = [d.ID for d in devices]
            floor = []
            for _ in range(calls // 4):
                t = time.perf_counter()
                plugin.get_options()
                floor.append(time.perf_counter() - t)
            result["empty_call_ms"] = pct(floor)
            one = []
            for i in range(calls):
                t = time.perf_counter()
                plugin.allocate([ids[i % len(ids)]])
                one.append(time.perf_counter() - t)
            four = []
            for i in range(calls // 4):
                t = time.perf_counter()
                plugin.allocate(ids[(4 * i) % len(ids) :][:4])
                four.append(time.perf_counter() - t)
            result["allocate_1_ms"] = pct(one)
            result["allocate_4_ms"] = pct(four)
            for size in (1, 8):
                samples = []
                for _ in range(max(calls // 10, 10)):
                    t = time.perf_counter()
                    plugin.preferred(ids, size)
                    samples.append(time.perf_counter() - t)
                result[f"preferred_{size}_ms"] = pct(samples)
            result["rss_after_loops_mb"] = rss(agent.pid)
        finally:
            agent.terminate()
            agent.wait(30)
    return result


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--calls", type=int, default=2000, help="Allocate calls (default 2000)")
    args = parser.parse_args()
    # on a node the device-info files go to /var/run (a tmpfs), so a grant's fsync is free;
    # a temporary directory on disk would time the disk instead
    shm = "/dev/shm" if Path("/dev/shm").is_dir() else None
    with tempfile.TemporaryDirectory(prefix="sriovlib-bench-agent-", dir=shm) as tmp:
        big = run(Path(tmp), PFS, VFS, args.calls)
        small = run(Path(tmp), 2, 8, 200)
    if args.json:
        print(json.dumps({"pool_2048": big, "pool_16": small}))
        return
    for name, figures in (("2048 devices", big), ("16 devices", small)):
        print(f"== {name}")
        for key, value in figures.items():
            print(f"  {key:28} {value}")


if __name__ == "__main__":
    main()
