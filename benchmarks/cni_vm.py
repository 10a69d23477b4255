"""CNI ADD+DEL on a real igb VF in the VM: fast path vs in-process vs a bare interpreter.

Run (root, with QEMU and the VM's prerequisites; ``docs/testing.md``):
``python benchmarks/cni_vm.py`` (``--repeat N``, default 8). One boot of the igb VM
(TCG here); in the guest, one VF, the shipped ``sriovlib agent`` serving the fast path
(``sriovlib.testing.cni_agent.start_in_guest``), and per round, interleaved (the order
alternating):

- ``python -c pass`` (what any Python plugin pays to start),
- ``cnitool add`` then ``cnitool del`` of the VF (VLAN, MAC, host-local address) with
  the shipped ``sriov`` running in-process (its socket pointed at nothing),
- the same through the fast path (the agent runs it).

Prints the medians in milliseconds and the ratios of the medians. The first round only
warms caches.
"""

from __future__ import annotations

import argparse
import json
import shlex
import statistics
import sys
from pathlib import Path

from sriovlib.testing.cni import cni_plugins_dir, cnitool_path
from sriovlib.testing.cni_agent import start_in_guest
from sriovlib.testing.vm import SriovVM, unavailable_reason

WORK = "/tmp/cni-vm-bench"

#: Runs in the guest's persistent interpreter: the timed loop.
LOOP = """
import os, subprocess, sys, time
work, tool, repeat = {work!r}, {tool!r}, {repeat}
def env(fast):
    return dict(os.environ, NETCONFPATH=work + "/net.d", CNI_PATH=work + "/bin",
                CNI_IFNAME="net1", SRIOVLIB_STATE_DIR=work + "/state",
                SRIOVLIB_AGENT_SOCKET=work + ("/agent.sock" if fast else "/no-agent.sock"))
def timed(argv, e=None):
    started = time.perf_counter()
    done = subprocess.run(argv, env=e, capture_output=True, text=True)
    if done.returncode != 0:
        raise RuntimeError(f"{{argv}}: {{done.stderr}}")
    return time.perf_counter() - started
samples = {{k: [] for k in ("bare", "in-process add", "in-process del",
                             "fast path add", "fast path del")}}
for i in range(repeat + 1):
    order = [("in-process", False), ("fast path", True)]
    bare = timed([sys.executable, "-c", "pass"])
    for name, fast in order if i % 2 else reversed(order):
        for verb in ("add", "del"):
            took = timed([tool, verb, "bench", "/run/netns/bench"], env(fast))
            if i:
                samples[f"{{name}} {{verb}}"].append(took)
    if i:
        samples["bare"].append(bare)
result = samples
"""


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=8)
    args = parser.parse_args()
    reason = unavailable_reason()
    if reason is not None:
        print(f"skipped: the SR-IOV VM cannot run here ({reason})")
        return 0
    tool, plugins = cnitool_path(), cni_plugins_dir()  # before the boot: the guest sees them
    sriov = Path(sys.executable).parent / "sriov"
    with SriovVM(pfs=1, memory_mb=2048) as vm:
        pf = vm.pf_netdevs[0]
        vm.run(
            f"rm -rf {WORK} && mkdir -p {WORK}/bin {WORK}/net.d && "
            f"ln -s {shlex.quote(str(sriov))} {WORK}/bin/sriov && "
            f"ln -s {plugins}/host-local {WORK}/bin/host-local && "
            f"echo 1 > /sys/class/net/{pf}/device/sriov_numvfs && "
            f"for i in $(seq 200); do ls /sys/class/net/{pf}/device/virtfn0/net/* >/dev/null "
            "2>&1 && break; sleep 0.05; done && ip netns add bench",
            timeout=120,
        )
        vf = vm.run(f"basename $(readlink /sys/class/net/{pf}/device/virtfn0)").stdout.strip()
        plugin = {
            "type": "sriov",
            "deviceID": vf,
            "vlan": 100,
            "mac": "02:00:00:00:0c:01",
            "ipam": {"type": "host-local", "subnet": "10.89.0.0/24", "dataDir": f"{WORK}/ipam"},
        }
        conflist = {"cniVersion": "1.0.0", "name": "bench", "plugins": [plugin]}
        vm.run(f"echo {shlex.quote(json.dumps(conflist))} > {WORK}/net.d/10-bench.conflist")
        pool = {"resourceName": "igb", "selectors": {"drivers": ["igbvf"]}}
        start_in_guest(vm, WORK, {"resourceList": [pool]})
        samples = vm.python(
            LOOP.format(work=WORK, tool=str(tool), repeat=args.repeat),
            timeout=60 * (args.repeat + 1) * 2,
        )
        kernel = vm.kernel_version
    medians = {name: statistics.median(values) * 1000 for name, values in samples.items()}
    print(f"igb VF in the VM (kernel {kernel}), {args.repeat} interleaved rounds, medians:")
    for name, value in medians.items():
        print(f"  {name:<20} {value:8.0f} ms")
    for verb in ("add", "del"):
        fast, slow = medians[f"fast path {verb}"], medians[f"in-process {verb}"]
        bare = medians["bare"]
        print(
            f"  {verb}: fast path / in-process {fast / slow:5.2f}x; in-process {verb} is "
            f"{slow / bare:.1f}x a bare start, fast path {fast / bare:.1f}x"
        )
    return 0


if __name__ == "__main__":
    sys.exit(main())
