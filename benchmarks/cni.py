"""CNI benchmark: VERSION and ADD+DEL through cnitool, against a bare interpreter start.

Run: ``python benchmarks/cni.py`` (``--repeat N``). In one run, interleaved:

- ``python -c pass`` with the interpreter the ``sriov`` script uses (the floor any
  Python plugin pays);
- ``CNI_COMMAND=VERSION sriov`` (the console script) and ``python -m sriovlib.cni``;
- as root, with cnitool and Debian's host-local available: ``cnitool add`` and
  ``cnitool del`` of a VF with a VLAN, a MAC and an address, on a node whose VFs are
  veths (``sriovlib.testing.cni.VethNode``), through the tests' entry point (the shipped
  code path with the veth backend), and the netlink requests the plugin made for each
  (from its debug log).

Prints medians and minimums in milliseconds and the VERSION/bare ratio (target: at most
3x). ``--baseline PATH`` (another checkout's ``sriov`` console script, e.g. before a
refactor) interleaves its ADD/DEL pairs with this checkout's on the same node and prints
the ratios of the medians, wall time and CPU time.
"""

from __future__ import annotations

import argparse
import json
import os
import resource
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


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def add_del_figures(repeat: int, baseline: Path | None) -> None:
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
        bins = {"this checkout": cni_binary_dir(work / "bin", plugins)}
        if baseline is not None:
            # another checkout's plugin, on the same node (its veth backend is read from
            # the variable that checkout knows: the old SRIOVLIB_CNI_NETLINK is set too)
            other = work / "baseline-bin"
            other.mkdir()
            (other / "sriov").symlink_to(baseline)
            (other / "host-local").symlink_to(plugins / "host-local")
            bins["baseline"] = other
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
                **node.environ(),
                "SRIOVLIB_CNI_NETLINK": node.environ()["SRIOVLIB_TEST_NETLINK"],
            }
            pod = node.add_pod()
            samples = {name: {"add": [], "del": [], "add cpu": [], "del cpu": []} for name in bins}
            for i in range(repeat + 1):
                order = list(bins.items())
                for name, directory in order if i % 2 else reversed(order):
                    run_env = {
                        **env,
                        "CNI_PATH": str(directory),
                        "SRIOVLIB_STATE_DIR": str(work / "state" / name.replace(" ", "-")),
                    }
                    for command in ("add", "del"):
                        cpu = cpu_of_children()
                        wall = timed([str(tool), command, "bench", pod], run_env)
                        if i:  # the first round warms caches
                            samples[name][command].append(wall)
                            samples[name][f"{command} cpu"].append(cpu_of_children() - cpu)
            log = work / "sriov.log"
            add_requests = netlink_counts(log, "ADD")
            del_requests = netlink_counts(log, "DEL")
    print()
    print(f"{'through cnitool (veth VFs, host-local)':<34} {'median':>8} {'min':>8}")
    for name, figures in samples.items():
        for what in ("add", "del"):
            print(row(f"cnitool {what} ({name})", figures[what]))
    if baseline is not None:
        print()
        print("this checkout / baseline, medians of interleaved runs:")
        labels = {
            "add": "add (wall)",
            "del": "del (wall)",
            "add cpu": "add (CPU of cnitool, plugin, IPAM)",
            "del cpu": "del (CPU of cnitool, plugin, IPAM)",
        }
        for what, label in labels.items():
            mine = statistics.median(samples["this checkout"][what])
            theirs = statistics.median(samples["baseline"][what])
            print(f"  {label:<40} {mine / theirs:5.2f}x")
    print(
        f"netlink requests per ADD: {statistics.median(add_requests):.0f}, "
        f"per DEL: {statistics.median(del_requests):.0f}"
    )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout's sriov console script: ADD/DEL pairs interleaved with it",
    )
    args = parser.parse_args()
    worst = version_figures(args.repeat)
    add_del_figures(max(3, args.repeat // 2), args.baseline)
    print()
    verdict = "within" if worst <= 3.0 else "ABOVE"
    print(f"VERSION: {worst:.2f}x a bare interpreter start ({verdict} the 3x target)")


if __name__ == "__main__":
    main()
