"""CNI benchmark: VERSION and ADD+DEL through cnitool, against a bare interpreter start.

Run: ``python benchmarks/cni.py`` (``--repeat N``). In one run, interleaved:

- ``python -c pass`` with the interpreter the ``sriov`` script uses (the floor any
  Python plugin pays);
- ``CNI_COMMAND=VERSION sriov`` (the console script) and ``python -m sriovlib.cni``;
- as root, with cnitool and Debian's host-local available: ``cnitool add`` and
  ``cnitool del`` of a VF with a VLAN, a MAC and an address, on a node whose VFs are
  veths (``sriovlib.testing.cni.VethNode``), and the netlink requests the plugin made
  for each (from its debug log).

Prints medians and minimums in milliseconds and the VERSION/bare ratio (target: at most
3x).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

SCRIPT = Path(sys.executable).parent / "sriov"


def timed(argv: list[str], env: dict[str, str] | None = None) -> float:
    start = time.perf_counter()
    subprocess.run(argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def row(label: str, samples: list[float], base: float | None = None) -> str:
    median = statistics.median(samples) * 1000
    ratio = f"{median / base:5.2f}x" if base else "      "
    return f"{label:<34} {median:8.1f} {min(samples) * 1000:8.1f} {ratio}"


def version_figures(repeat: int) -> float:
    env = dict(os.environ, CNI_COMMAND="VERSION")
    variants: dict[str, tuple[list[str], dict[str, str] | None]] = {
        "python -c pass": ([sys.executable, "-c", "pass"], None),
        "python -m sriovlib.cni  VERSION": ([sys.executable, "-m", "sriovlib.cni"], env),
    }
    if SCRIPT.exists():
        variants["sriov (console script)  VERSION"] = ([str(SCRIPT)], env)
    samples: dict[str, list[float]] = {name: [] for name in variants}
    for argv, variant_env in variants.values():
        timed(argv, variant_env)  # warm the page cache and .pyc files
    for _ in range(repeat):
        for name, (argv, variant_env) in variants.items():
            samples[name].append(timed(argv, variant_env))
    base = statistics.median(samples["python -c pass"]) * 1000
    print(f"{'':<34} {'median':>8} {'min':>8} {'vs bare':>6}")
    worst = 0.0
    for name in variants:
        print(row(name, samples[name], base))
        worst = max(worst, statistics.median(samples[name]) * 1000 / base)
    return worst


def netlink_counts(log: Path, command: str) -> list[int]:
    counts = []
    for line in log.read_text().splitlines():
        if f" {command} " in line and "netlink requests: " in line:
            counts.append(int(line.split("netlink requests: ")[1].split()[0]))
    return counts


def add_del_figures(repeat: int) -> None:
    from sriovlib.testing.cni import (
        ToolUnavailable,
        VethNode,
        cni_binary_dir,
        cni_plugins_dir,
        cnitool_path,
    )

    if os.geteuid() != 0:
        print("ADD+DEL through cnitool: skipped (needs root)")
        return
    try:
        tool, plugins = cnitool_path(), cni_plugins_dir()
    except ToolUnavailable as e:
        print(f"ADD+DEL through cnitool: skipped ({e})")
        return
    with tempfile.TemporaryDirectory(prefix="cni-bench-") as work_dir:
        work = Path(work_dir)
        cni_binary_dir(work / "bin", plugins)
        with VethNode(work / "root", num_vfs=1) as node:
            (work / "net.d").mkdir()
            plugin = {
                "type": "sriov",
                "deviceID": str(node.vfs[0]),
                "vlan": 100,
                "mac": "02:00:00:00:05:01",
                "logLevel": "debug",
                "logFile": str(work / "sriov.log"),
                "ipam": {
                    "type": "host-local",
                    "subnet": "10.79.0.0/24",
                    "dataDir": str(work / "ipam"),
                },
            }
            conflist = {"cniVersion": "1.0.0", "name": "bench", "plugins": [plugin]}
            (work / "net.d/10-bench.conflist").write_text(json.dumps(conflist))
            env = {
                **os.environ,
                "NETCONFPATH": str(work / "net.d"),
                "CNI_PATH": str(work / "bin"),
                "SRIOVLIB_STATE_DIR": str(work / "state"),
                **node.environ(),
            }
            pod = node.add_pod()
            adds: list[float] = []
            dels: list[float] = []
            for i in range(repeat + 1):
                add = timed([str(tool), "add", "bench", pod], env)
                delete = timed([str(tool), "del", "bench", pod], env)
                if i:  # the first pair warms caches
                    adds.append(add)
                    dels.append(delete)
            log = work / "sriov.log"
            add_requests = netlink_counts(log, "ADD")
            del_requests = netlink_counts(log, "DEL")
    print()
    print(f"{'through cnitool (veth VFs, host-local)':<34} {'median':>8} {'min':>8}")
    print(row("cnitool add", adds))
    print(row("cnitool del", dels))
    print(
        f"netlink requests per ADD: {statistics.median(add_requests):.0f}, "
        f"per DEL: {statistics.median(del_requests):.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    args = parser.parse_args()
    worst = version_figures(args.repeat)
    add_del_figures(max(3, args.repeat // 2))
    print()
    verdict = "within" if worst <= 3.0 else "ABOVE"
    print(f"VERSION: {worst:.2f}x a bare interpreter start ({verdict} the 3x target)")


if __name__ == "__main__":
    main()
