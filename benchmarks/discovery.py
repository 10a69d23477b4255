"""Discovery benchmark: scan a generated host of 8 PFs x 256 VFs, and 2x and 4x that.

Run: ``python benchmarks/discovery.py`` (``--repeat N``, ``--dir DIR`` for the trees;
default a tmpfs such as /dev/shm, the closest thing to the in-memory sysfs).
Prints total milliseconds and microseconds per VF for each size, the best of N scans
after one warm-up, so the growth can be read off one run on a noisy machine.
"""

from __future__ import annotations

import argparse
import os
import shutil
import tempfile
import time

from sriovlib import Host, PciAddress, PciId
from sriovlib.testing import FakeSysfs

VFS_PER_PF = 256


def build(root: str, pfs: int) -> None:
    """A host with *pfs* ConnectX-5 PFs, each with 256 VFs, on buses 0x10, 0x12..."""
    fs = FakeSysfs(root)
    fs.enable_iommu()
    for n in range(pfs):
        fs.add_pf(
            ids=PciId(0x15B3, 0x1017),
            driver="mlx5_core",
            vf_ids=PciId(0x15B3, 0x1018),
            vf_driver="mlx5_core",
            total_vfs=VFS_PER_PF,
            num_vfs=VFS_PER_PF,
            address=PciAddress(0, 0x10 + 2 * n, 0, 0),
            netdev=f"ens{n}f0",
            numa_node=n % 2,
            rdma=True,
        )


def best_scan(root: str, repeat: int) -> tuple[float, int]:
    host = Host(root)
    host.inventory()  # warm the dentry cache, as on a live node
    best = float("inf")
    found = 0
    for _ in range(repeat):
        start = time.perf_counter()
        inventory = host.inventory()
        best = min(best, time.perf_counter() - start)
        found = len(inventory.vfs)
    return best, found


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=5)
    parser.add_argument("--dir", default="/dev/shm" if os.path.isdir("/dev/shm") else None)
    args = parser.parse_args()
    print(f"{'size':>5} {'PFs':>4} {'VFs':>6} {'total ms':>9} {'us/VF':>7} {'vs 1x':>6}")
    base = None
    for factor in (1, 2, 4):
        root = tempfile.mkdtemp(prefix="sriovlib-bench-", dir=args.dir)
        try:
            build(root, 8 * factor)
            seconds, vfs = best_scan(root, args.repeat)
        finally:
            shutil.rmtree(root)
        per_vf = seconds / vfs * 1e6
        base = base or seconds
        print(
            f"{factor:>4}x {8 * factor:>4} {vfs:>6} {seconds * 1e3:>9.1f} {per_vf:>7.1f} "
            f"{seconds / base:>5.2f}x"
        )


if __name__ == "__main__":
    main()
