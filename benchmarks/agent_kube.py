"""The agent against a real kubelet and API server (the kube tier's one-node cluster).

Run (as root): ``python benchmarks/agent_kube.py [--json] [--rounds N]``.

On a fake node of 16 PFs x 128 VFs (one pool of 2048 devices, as in
``benchmarks/agent.py``) and on the ``mixed`` example's 12-device pool, each round:

1. agent start → ``registered`` (the agent's log) → the node's Allocatable in the API
   shows every device (polled every 50 ms);
2. kubelet restart → the node Ready again → Allocatable back to every device;
3. agent stop → Allocatable 0 (the kubelet notices the plugin went).

The kubelet reports node status every 2 s (``nodeStatusUpdateFrequency``) or sooner on a
change, so step 1 is mostly the kubelet's own latency.
"""

from __future__ import annotations

import argparse
import functools
import json
import signal
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent))

from agent import build

from sriovlib.testing.kube import KubeCluster
from sriovlib.testing.kubebuild import kube_tools


def _until(check: object, timeout: float = 120) -> float:
    started = time.monotonic()
    while not check():  # type: ignore[operator]
        if time.monotonic() - started > timeout:
            raise TimeoutError("timed out")
        time.sleep(0.05)
    return time.monotonic() - started


def _registered(log: Path) -> bool:
    return any(
        json.loads(line).get("event") == "registered"
        for line in log.read_text().splitlines()
        if line
    )


def measure(cluster: KubeCluster, tmp: Path, host: list[str], devices: int, rounds: int) -> dict:
    config = tmp / "config.json"
    config.write_text(
        json.dumps(
            {"resourceList": [{"resourceName": "bench", "selectors": {"drivers": ["iavf"]}}]}
        )
    )
    resource = "intel.com/bench"
    samples: dict[str, list[float]] = {
        "start_to_registered": [],
        "registered_to_allocatable": [],
        "kubelet_restart_to_allocatable": [],
        "stop_to_zero": [],
    }
    for n in range(rounds):
        log = tmp / f"agent-{n}.log"
        with open(log, "wb") as out:
            started = time.monotonic()
            agent = subprocess.Popen(
                [
                    sys.executable,
                    "-m",
                    "sriovlib.agent",
                    *host,
                    "--config",
                    str(config),
                    "--device-plugin-dir",
                    str(cluster.device_plugin_dir),
                    "--state-dir",
                    str(tmp / "state"),
                    "--device-info-dir",
                    str(tmp / "devinfo"),
                    "--cni-socket",
                    "off",
                    "--log-format",
                    "json",
                ],
                stderr=out,
            )
        try:
            _until(functools.partial(_registered, log))
            samples["start_to_registered"].append(time.monotonic() - started)
            samples["registered_to_allocatable"].append(
                _until(lambda: cluster.allocatable(resource) == str(devices))
            )
            started = time.monotonic()
            cluster.restart_kubelet()
            _until(lambda: cluster.allocatable(resource) == str(devices))
            samples["kubelet_restart_to_allocatable"].append(time.monotonic() - started)
        finally:
            started = time.monotonic()
            agent.send_signal(signal.SIGTERM)
            agent.wait(30)
        samples["stop_to_zero"].append(_until(lambda: cluster.allocatable(resource) == "0"))
    return {
        "devices": devices,
        **{k: {"p50_s": round(statistics.median(v), 2), "max_s": round(max(v), 2)}
           for k, v in samples.items()},
    }  # fmt: skip


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    parser.add_argument("--rounds", type=int, default=3)
    args = parser.parse_args()
    results = []
    with tempfile.TemporaryDirectory() as tmp, KubeCluster(kube_tools(), progress=False) as c:
        root = Path(tmp) / "root"
        build(root, 16, 128)
        for name, host, devices in (
            ("2048", ["--sysfs-root", str(root)], 2048),
            ("mixed", ["--example", "mixed"], 12),
        ):
            work = Path(tmp) / name
            work.mkdir()
            results.append(measure(c, work, host, devices, args.rounds))
        version = c.node()["status"]["nodeInfo"]["kubeletVersion"]
    if args.json:
        print(json.dumps({"kubelet": version, "results": results}))
        return
    print(f"real kubelet {version}, {args.rounds} rounds each (p50 / max, seconds)")
    for r in results:
        print(f"  {r['devices']} devices:")
        for key, value in r.items():
            if key != "devices":
                print(f"    {key:32} {value['p50_s']:6.2f} / {value['max_s']:.2f}")


if __name__ == "__main__":
    main()
