"""Discovery on the real igb/igbvf drivers, compared with sysfs and `ip link` in the VM."""

from __future__ import annotations

import json

import pytest

from sriovlib.testing.vm import SriovVM

pytestmark = pytest.mark.vm

DISCOVER = """
from sriovlib import Host
host = Host("/")
inventory = host.inventory()
result = {
    "pfs": [
        {"address": str(p.address), "ids": str(p.ids), "driver": p.driver,
         "netdevs": list(p.netdevs), "total": p.total_vfs, "num": p.num_vfs,
         "link": p.link_type.value, "problems": list(p.problems)}
        for p in inventory.pfs
    ],
    "vfs": [
        {"address": str(v.address), "index": v.index, "pf": str(v.pf_address),
         "ids": str(v.ids), "driver": v.driver, "netdev": v.netdev,
         "problems": list(v.problems)}
        for v in inventory.vfs
    ],
    "by_name": str(host.pf(inventory.pfs[0].netdevs[0]).address) if inventory.pfs else None,
}
"""

# What the kernel says, read with plain shell tools: "<vf address> <index> <netdev>".
GROUND_TRUTH = r"""
pf=$(readlink -f /sys/class/net/$1/device)
for l in $pf/virtfn*; do
  i=${l##*virtfn}; a=$(basename $(readlink $l))
  n=$(ls /sys/bus/pci/devices/$a/net 2>/dev/null | head -1)
  echo "$a $i ${n:--}"
done | sort
"""


class TestDiscoveryOnIgb:
    def test_pf_and_four_vfs(self, sriov_vm_clean: SriovVM) -> None:
        """The 82576 PF is found with totalvfs 7; after numvfs=4, exactly its 4 igbvf VFs."""
        vm = sriov_vm_clean
        pf_name = vm.pf_netdevs[0]
        before = vm.python(DISCOVER)
        (pf,) = before["pfs"]
        assert ("8086:10c9", "igb", 7, 0, "ethernet", []) == (
            pf["ids"],
            pf["driver"],
            pf["total"],
            pf["num"],
            pf["link"],
            pf["problems"],
        )
        assert [pf_name] == pf["netdevs"]
        assert pf["address"] == before["by_name"]
        assert [] == before["vfs"]

        enable = vm.run(
            f"echo 4 > /sys/class/net/{pf_name}/device/sriov_numvfs && "
            # VF netdevs appear asynchronously after probe
            f"for i in $(seq 100); do [ $(ls -d /sys/class/net/{pf_name}/device/virtfn*/net/* "
            "2>/dev/null | wc -l) -ge 4 ] && break; sleep 0.1; done"
        )
        assert 0 == enable.returncode, enable.stderr
        after = vm.python(DISCOVER)
        truth = vm.run(GROUND_TRUTH.replace("$1", pf_name)).stdout.split("\n")
        ip_link = json.loads(vm.run("ip -j link show").stdout)

        (pf,) = after["pfs"]
        assert 4 == pf["num"]
        vfs = sorted(after["vfs"], key=lambda v: v["index"])
        assert [0, 1, 2, 3] == [v["index"] for v in vfs]
        assert {"8086:10ca"} == {v["ids"] for v in vfs}
        assert {"igbvf"} == {v["driver"] for v in vfs}
        assert {pf["address"]} == {v["pf"] for v in vfs}
        assert all(v["problems"] == [] for v in vfs)
        # the same addresses, indices and netdevs as sysfs read by hand
        assert sorted(t for t in truth if t) == sorted(
            f"{v['address']} {v['index']} {v['netdev'] or '-'}" for v in vfs
        )
        # every VF netdev is a real link `ip link` shows
        assert {v["netdev"] for v in vfs} <= {link["ifname"] for link in ip_link}
        # 82576 VFs: offset 128, stride 2 -> 01:10.0, 01:10.2, ...
        bus = pf["address"][:7]
        assert [f"{bus}:10.{f}" for f in (0, 2, 4, 6)] == [v["address"] for v in vfs]
