"""A DRA claim asking for another driver than its VF has, on the real igb VFs of a VM
with an emulated Intel IOMMU: the DRA driver (in the guest, driven by the DRA kubelet
stand-in over its real sockets) binds an igbvf VF to vfio-pci at prepare and back at
unprepare, binds a vfio-pci VF to igbvf for ``driver: netdevice`` and back, and refuses
a VF whose netdev is in a pod, changing nothing. Checked against sysfs and ``ip``, not
the agent's own view. One VM and one round trip serve every test (the guest is slow).
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from sriovlib.testing.vm import SriovVM, unavailable_reason

pytestmark = pytest.mark.vm

SCENARIO = r"""
import json, os, subprocess, time
from pathlib import Path
from sriovlib.agent.dra import DraOptions, DraPlugin
from sriovlib.host import Host
from sriovlib.plugins.types import DeviceType
from sriovlib.testing.drakubelet import (
    DraKubeletStandIn, FakeClaims, device_name_of, resource_claim,
)

pf = os.environ["SRIOV_PFS"].split()[0]
work = Path("/tmp/dra-rebind-vm")
work.mkdir(parents=True, exist_ok=True)
out = {"pf": pf}

def sh(cmd):
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return {"rc": done.returncode, "out": done.stdout, "err": done.stderr}

def vf_state(address):
    dev = Path("/sys/bus/pci/devices") / address
    driver = dev / "driver"
    group = dev / "iommu_group"
    nets = sorted(p.name for p in (dev / "net").iterdir()) if (dev / "net").is_dir() else []
    gname = group.resolve().name if group.exists() else None
    return {
        "driver": driver.resolve().name if driver.exists() else None,
        "override": (dev / "driver_override").read_text().strip(),
        "netdev": nets[0] if nets else None,
        "iommu_group": gname,
        "dev_vfio": gname is not None and os.path.exists(f"/dev/vfio/{gname}"),
    }

def pf_vfs():
    link = json.loads(sh(f"ip -j -d link show {pf}")["out"])[0]
    return link.get("vfinfo_list", [])

out["modprobe"] = sh("modprobe vfio-pci")
host = Host("/")
host.set_num_vfs(pf, 2)
deadline = time.monotonic() + 120
while any(vf.netdev is None for vf in host.vfs(pf)):
    assert time.monotonic() < deadline, "igbvf netdevs never appeared"
    time.sleep(0.5)
vf0, vf1 = (str(vf.address) for vf in host.vfs(pf))
out["vfs"] = [vf0, vf1]
host.bind_driver(vf1, DeviceType.VFIO)  # as `sriovlib apply` leaves a deviceType: vfio-pci VF
out["before"] = {a: vf_state(a) for a in (vf0, vf1)}
out["pf_before"] = pf_vfs()

claims = FakeClaims()
options = DraOptions(
    registry_dir=work / "registry", plugins_dir=work / "plugins",
    cdi_dir=work / "cdi", state_dir=work / "state",
)
plugin = DraPlugin(host, claims, options)
plugin.start()
standin = DraKubeletStandIn(work / "registry")
standin.__enter__()
client = standin.register()

def claim(name, address, **parameters):
    return claims.add(resource_claim(
        name, devices=[("vf", "node", device_name_of(address))],
        config=[{"parameters": parameters}],
    ))

def spec_of(ref):
    path = work / "cdi" / f"sriovlib-{options.driver_name}-{ref.uid}.json"
    return json.loads(path.read_text()) if path.exists() else None

# igbvf -> vfio-pci, with a VLAN
dpdk = claim("dpdk", vf0, driver="vfio-pci", vlan=11)
began = time.monotonic()
answer = client.prepare(dpdk).claims[dpdk.uid]
out["dpdk_prepare"] = {"error": answer.error, "seconds": round(time.monotonic() - began, 3),
                       "cdi": [list(d.cdi_device_ids) for d in answer.devices]}
out["dpdk_prepared"] = vf_state(vf0)
out["dpdk_spec"] = spec_of(dpdk)
out["dpdk_pf"] = pf_vfs()
began = time.monotonic()
out["dpdk_unprepare"] = client.unprepare(dpdk).claims[dpdk.uid].error
out["dpdk_unprepare_seconds"] = round(time.monotonic() - began, 3)
out["dpdk_after"] = vf_state(vf0)
out["dpdk_spec_after"] = spec_of(dpdk)

# vfio-pci -> igbvf
net = claim("net", vf1, driver="netdevice")
began = time.monotonic()
out["net_prepare"] = client.prepare(net).claims[net.uid].error
out["net_prepare_seconds"] = round(time.monotonic() - began, 3)
out["net_prepared"] = vf_state(vf1)
out["net_spec"] = spec_of(net)
out["net_unprepare"] = client.unprepare(net).claims[net.uid].error
out["net_after"] = vf_state(vf1)

# a VF whose netdev is in a pod: refused, nothing changed
sh("ip netns add rebindpod")
out["moved"] = sh(f"ip link set {out['before'][vf0]['netdev']} netns rebindpod name net1")
pod_before = vf_state(vf0)
busy = claim("busy", vf0, driver="vfio-pci")
out["busy_prepare"] = client.prepare(busy).claims[busy.uid].error
out["busy_state"] = [pod_before, vf_state(vf0)]
out["busy_in_pod"] = sh("ip netns exec rebindpod ip -j link show net1")["rc"]
out["busy_spec"] = spec_of(busy)
sh("ip netns delete rebindpod")

standin.__exit__(None, None, None)
plugin.stop()
out["pf_after"] = pf_vfs()
result = out
"""


@pytest.fixture(scope="module")
def iommu_vm() -> Iterator[SriovVM]:
    """One igb PF behind QEMU's emulated Intel IOMMU."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"SR-IOV VM unavailable: {reason}")
    with SriovVM(pfs=1, iommu=True) as vm:
        yield vm


@pytest.fixture(scope="module")
def observed(iommu_vm: SriovVM) -> dict[str, Any]:
    result: dict[str, Any] = iommu_vm.python(SCENARIO, timeout=900)
    print(json.dumps(result, indent=1), file=sys.stderr)  # the figures of record (-s)
    return result


def vlan_of(vfinfo: list[dict[str, Any]], index: int) -> int:
    vlans = vfinfo[index].get("vlan_list") or [{}]
    return int(vlans[0].get("vlan", 0))


class TestRebindOnIgb:
    def test_the_guest_has_vfio_pci_and_the_vfs_their_groups(
        self, observed: dict[str, Any]
    ) -> None:
        assert observed["modprobe"]["rc"] == 0, observed["modprobe"]
        vf0, vf1 = observed["vfs"]
        assert observed["before"][vf0]["driver"] == "igbvf"
        assert observed["before"][vf0]["netdev"] is not None
        assert observed["before"][vf0]["iommu_group"] is not None
        assert observed["before"][vf1]["driver"] == "vfio-pci"

    def test_an_igbvf_vf_is_bound_to_vfio_pci_with_its_group_in_the_spec(
        self, observed: dict[str, Any]
    ) -> None:
        vf0 = observed["vfs"][0]
        assert observed["dpdk_prepare"]["error"] == ""
        got = observed["dpdk_prepared"]
        assert (got["driver"], got["netdev"], got["dev_vfio"]) == ("vfio-pci", None, True)
        (device,) = observed["dpdk_spec"]["devices"]
        nodes = {n["hostPath"] for n in device["containerEdits"]["deviceNodes"]}
        assert nodes == {"/dev/vfio/vfio", f"/dev/vfio/{got['iommu_group']}"}
        env = dict(e.split("=", 1) for e in device["containerEdits"]["env"])
        assert env["PCIDEVICE_SRIOV_SRIOVLIB_IO_VF"] == vf0
        assert vlan_of(observed["dpdk_pf"], 0) == 11  # the PF-side setting on a vfio VF

    def test_unprepare_brings_igbvf_back_with_its_netdev_name(
        self, observed: dict[str, Any]
    ) -> None:
        vf0 = observed["vfs"][0]
        assert observed["dpdk_unprepare"] == ""
        assert observed["dpdk_after"] == observed["before"][vf0]
        assert observed["dpdk_spec_after"] is None

    def test_a_vfio_vf_is_bound_to_igbvf_and_back(self, observed: dict[str, Any]) -> None:
        vf1 = observed["vfs"][1]
        assert observed["net_prepare"] == ""
        got = observed["net_prepared"]
        assert got["driver"] == "igbvf"
        assert got["netdev"] is not None
        assert "deviceNodes" not in observed["net_spec"]["devices"][0]["containerEdits"]
        assert observed["net_unprepare"] == ""
        assert observed["net_after"] == observed["before"][vf1]  # vfio-pci, pinned again

    def test_a_vf_whose_netdev_is_in_a_pod_is_refused_unchanged(
        self, observed: dict[str, Any]
    ) -> None:
        assert observed["moved"]["rc"] == 0, observed["moved"]
        assert observed["busy_prepare"].endswith(
            "it cannot be rebound: its netdev is not in the host's namespace (in a pod?)"
        )
        before, after = observed["busy_state"]
        assert before == after
        assert after["driver"] == "igbvf"
        assert observed["busy_in_pod"] == 0  # the netdev still in the pod
        assert observed["busy_spec"] is None

    def test_the_pf_holds_no_setting_of_the_claims_after(self, observed: dict[str, Any]) -> None:
        assert [vlan_of(observed["pf_after"], i) for i in (0, 1)] == [0, 0]
        assert vlan_of(observed["pf_before"], 0) == 0
