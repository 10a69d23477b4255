"""Health benchmark: PF carrier loss → the ListAndWatch update that says so.

Run as root: ``python benchmarks/agent_health.py [--rounds N] [--json]``.

1. the real kernel: a veth node (:class:`sriovlib.testing.cni.VethNode` with a real PF
   netdev, 4 VFs); the PF's veth peer goes down, then up again; the kernel's link event
   reaches the agent (in process), which pushes the new health to the in-process kubelet
   stand-in: the time from ``ip link set`` returning to the stand-in receiving the list;
2. the fake kernel with 2048 VFs on 16 PFs (``FakeNetlink.set_carrier`` on one PF): the
   same latency when an assessment reads 2048 devices.

Medians, p90 and max over the rounds, in milliseconds, for the loss and the return
apart, with QUIET seconds between changes (see there).
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import sys
import tempfile
import time
from collections.abc import Callable
from pathlib import Path

from sriovlib.agent.runner import Agent, AgentOptions
from sriovlib.host import Host
from sriovlib.pools import parse_config
from sriovlib.testing.cni import VethNode, VethVfNetlink
from sriovlib.testing.fakenetlink import FakeNetlink
from sriovlib.testing.kubelet import KubeletStandIn, PluginClient

sys.path.insert(0, str(Path(__file__).parent))
from agent import PFS, VFS, build

#: Seconds between two changes: the kernel sends a link's carrier loss through its link
#: watch, which runs at most once a second, so a loss right after another link change
#: would time the kernel's batching (up to 1 s), not the agent.
QUIET = 1.1


def figures(samples: list[float]) -> dict[str, float]:
    ordered = sorted(samples)
    return {
        "p50": round(statistics.median(ordered) * 1000, 1),
        "p90": round(ordered[int(len(ordered) * 0.9) - 1] * 1000, 1),
        "max": round(ordered[-1] * 1000, 1),
    }


def rounds(
    plugin: PluginClient, unplug: Callable[[bool], None], affected: int, count: int
) -> dict[str, dict[str, float]]:
    """Unplug and plug *count* times; the latency of each until *affected* devices are
    unhealthy, then none."""
    samples: dict[str, list[float]] = {"loss": [], "return": []}
    for _ in range(count):
        for carrier, key, want in ((False, "loss", affected), (True, "return", 0)):
            started = time.perf_counter()
            unplug(carrier)
            plugin.wait_devices(
                lambda ds, n=want: sum(d.health == "Unhealthy" for d in ds) == n, timeout=10
            )
            samples[key].append(time.perf_counter() - started)
            time.sleep(QUIET)
    return {key: figures(values) for key, values in samples.items()}


def serve(host: Host, config: dict[str, object], tmp: Path) -> tuple[Agent, KubeletStandIn]:
    options = AgentOptions(
        device_plugin_dir=tmp / "dp", state_dir=tmp / "state", device_info_dir=tmp / "devinfo"
    )
    agent = Agent(host, parse_config(json.dumps(config).encode()), options)
    kubelet = KubeletStandIn(options.device_plugin_dir)
    kubelet.start()
    agent.start()
    return agent, kubelet


def veth(tmp: Path, count: int) -> dict[str, dict[str, float]]:
    config = {"resourceList": [{"resourceName": "veth", "selectors": {"devices": ["1018"]}}]}
    with VethNode(tmp / "veth-root", num_vfs=4, pf_link=True) as node:
        netlink = VethVfNetlink(node.root, node.host_netns)
        agent, kubelet = serve(Host(node.root, netlink=netlink), config, tmp / "veth")
        try:
            plugin = kubelet.wait_plugin("intel.com/veth")
            plugin.wait_devices(lambda ds: len(ds) == 4)
            return rounds(plugin, node.set_pf_carrier, 4, count)
        finally:
            agent.stop()
            kubelet.stop()
            netlink.close()


def fake(tmp: Path, count: int) -> dict[str, dict[str, float]]:
    build(tmp / "fake-root", PFS, VFS)
    from sriovlib.testing.builder import FakeSysfs

    kernel = FakeNetlink(FakeSysfs(tmp / "fake-root"))
    config = {"resourceList": [{"resourceName": "bench", "selectors": {"drivers": ["iavf"]}}]}
    agent, kubelet = serve(kernel.host(), config, tmp / "fake")
    try:
        plugin = kubelet.wait_plugin("intel.com/bench", timeout=60)
        plugin.wait_devices(lambda ds: len(ds) == PFS * VFS, timeout=60)
        return rounds(plugin, lambda on: kernel.set_carrier("ens0f0", on), VFS, count)
    finally:
        agent.stop()
        kubelet.stop()


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--rounds", type=int, default=20, help="unplug/plug rounds (20)")
    parser.add_argument("--json", action="store_true", help="print one JSON line")
    args = parser.parse_args()
    if os.geteuid() != 0:
        sys.exit("agent_health.py: needs root (network namespaces, veth)")
    with tempfile.TemporaryDirectory(prefix="sriovlib-bench-health-") as tmp:
        result = {
            "veth_4_devices_ms": veth(Path(tmp), args.rounds),
            "fake_2048_devices_ms": fake(Path(tmp), args.rounds),
        }
    if args.json:
        print(json.dumps(result))
        return
    for key, value in result.items():
        print(f"  {key:24} {value}")


if __name__ == "__main__":
    main()
