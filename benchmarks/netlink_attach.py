"""Netlink requests and time of Host.attach + Host.release for one VF, on veth.

Run as root (it creates two throw-away network namespaces and a veth pair)::

    .venv/bin/python benchmarks/netlink_attach.py [--iterations 200] [--vfs 256]

The VF netdev is one end of a veth pair in a throw-away "host" namespace; links are
moved, renamed and configured by the real kernel (sriovlib.netlink.KernelNetlink). A
veth has no VFs, so the PF's VF list and VF settings come from the fake kernel, which
counts them the same way. The target is at most one full VF-list read of the PF per
attach and per release: on a PF with hundreds of VFs that read is the one request whose
cost grows with the PF (see the decode figure printed last).
"""

from __future__ import annotations

import argparse
import collections
import os
import statistics
import struct
import subprocess
import sys
import tempfile
import time
from pathlib import Path

from sriovlib.host import Host
from sriovlib.netlink import KernelNetlink, _codec, _vf_state, _vfinfo_chunks
from sriovlib.testing import FakeSysfs, add_nic_model
from sriovlib.testing.fakenetlink import FakeNetlink, VethKernel


def ip(*args: str) -> None:
    subprocess.run(["ip", *args], check=True, capture_output=True)


def counts(real: KernelNetlink, fake: FakeNetlink) -> collections.Counter[str]:
    total = collections.Counter(real.requests)
    total.update(fake.requests)
    return total


def attach_release(iterations: int) -> None:
    tag = f"{os.getpid()}"
    host_ns, pod_ns = f"sriovlib-bench-h{tag}", f"sriovlib-bench-p{tag}"
    ip("netns", "add", host_ns)
    ip("netns", "add", pod_ns)
    try:
        ip("-n", host_ns, "link", "add", "name", "pf0v0", "type", "veth", "peer", "name", "peer0")
        ip("-n", host_ns, "link", "add", "name", "net1", "type", "veth", "peer", "name", "net1p")
        with tempfile.TemporaryDirectory() as tmp:
            fs = FakeSysfs(Path(tmp) / "root")
            add_nic_model(fs, "igb", bus=0x01, ports=1, num_vfs=1, netdev_prefix="pf")
            fake = FakeNetlink(fs)
            with KernelNetlink(f"/run/netns/{host_ns}") as real:
                host = Host(fs.root, netlink=VethKernel(real, fake), sysfs_writer=fake)  # type: ignore[arg-type]
                vf = host.vfs("pf0")[0]
                pod = f"/run/netns/{pod_ns}"
                attach_times, release_times = [], []
                attach_counts = release_counts = collections.Counter[str]()
                for i in range(iterations):
                    real.requests.clear()
                    fake.requests.clear()
                    started = time.perf_counter()
                    snapshot = host.attach(vf, pod, "net1", mac="02:aa:00:00:00:01", mtu=1400)
                    attach_times.append(time.perf_counter() - started)
                    if i == 0:
                        attach_counts = counts(real, fake)
                    real.requests.clear()
                    fake.requests.clear()
                    started = time.perf_counter()
                    host.release(snapshot)
                    release_times.append(time.perf_counter() - started)
                    if i == 0:
                        release_counts = counts(real, fake)
    finally:
        for ns in (pod_ns, host_ns):
            subprocess.run(["ip", "netns", "del", ns], check=False, capture_output=True)
    print(f"attach + release of one VF netdev (veth), {iterations} rounds")
    for name, times, counted in (
        ("attach", attach_times, attach_counts),
        ("release", release_times, release_counts),
    ):
        kinds = ", ".join(f"{kind} {n}" for kind, n in sorted(counted.items()))
        print(
            f"  {name:8} {sum(counted.values()):2} requests ({kinds}); "
            f"VF-list reads {counted['vf_list']}; "
            f"median {statistics.median(times) * 1e3:.2f} ms, "
            f"p95 {sorted(times)[int(len(times) * 0.95) - 1] * 1e3:.2f} ms"
        )


def decode_figure(vfs: int, rounds: int = 20) -> None:
    """Time decoding one PF reply with *vfs* VFs (the per-read CPU cost)."""
    message_class = _codec()
    entries = []
    for i in range(vfs):
        msg = message_class()
        attrs = [
            ("IFLA_VF_MAC", {"vf": i, "mac": "02:00:00:00:00:01"}),
            ("IFLA_VF_VLAN", {"vf": i, "vlan": 0, "qos": 0}),
            ("IFLA_VF_RATE", {"vf": i, "min_tx_rate": 0, "max_tx_rate": 0}),
            ("IFLA_VF_SPOOFCHK", {"vf": i, "spoofchk": 1}),
            ("IFLA_VF_LINK_STATE", {"vf": i, "link_state": 0}),
            ("IFLA_VF_RSS_QUERY_EN", {"vf": i, "rss_query_en": 0}),
            ("IFLA_VF_TRUST", {"vf": i, "trust": 0}),
        ]
        msg["attrs"] = [("IFLA_VFINFO_LIST", {"attrs": [("IFLA_VF_INFO", {"attrs": attrs})]})]
        msg.encode()
        entries.append(bytes(msg.data)[36:])
    body = b"".join(entries)
    vflist = struct.pack("=HH", (4 + len(body)) & 0xFFFF, 22) + body
    payload = b"\0" * 16 + vflist
    reply = struct.pack("=IHHII", 16 + len(payload), 16, 0, 1, 0) + payload
    times = []
    for _ in range(rounds):
        started = time.perf_counter()
        states = []
        for chunk in _vfinfo_chunks(reply):
            info = message_class.vflist.vfinfo(chunk)
            info.decode()
            states.append(_vf_state(info))
        times.append(time.perf_counter() - started)
    assert len(states) == vfs
    print(
        f"decoding one VF-list reply of {vfs} VFs ({len(reply)} bytes): "
        f"median {statistics.median(times) * 1e3:.1f} ms"
    )


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--iterations", type=int, default=200)
    parser.add_argument("--vfs", type=int, default=256)
    args = parser.parse_args()
    if os.geteuid() != 0:
        print("skipped: needs root (network namespaces, veth)")
        return 0
    attach_release(args.iterations)
    decode_figure(args.vfs)
    return 0


if __name__ == "__main__":
    sys.exit(main())
