"""``sriovlib apply`` on the real igb driver, in a VM with an emulated Intel IOMMU.

The issue's policy: 4 VFs, PF MTU 9000, VFs 0-1 netdevice (igbvf) in poolA, 2-3
vfio-pci in poolB. The VM has QEMU's ``intel-iommu`` and ``intel_iommu=on``, so the VFs
have IOMMU groups and vfio-pci really takes them (``/dev/vfio/<group>``). Checked: the
kernel state after apply, a re-apply makes zero sysfs writes and zero netlink changes,
a numVfs change with a VF in a pod is refused and changes nothing, ``--dry-run``
changes nothing. The guest is slow (TCG), so one VM and one round trip serve every test.
"""

from __future__ import annotations

import json
import sys
from collections.abc import Iterator
from typing import Any

import pytest

from sriovlib.testing.vm import SriovVM, unavailable_reason

pytestmark = pytest.mark.vm

SCENARIO = r'''
import contextlib, io, json, os, subprocess
from pathlib import Path
from sriovlib.cli import main
from sriovlib.host import Host
from sriovlib.policy import apply, load_policies, plan
from sriovlib.sysfs import KernelWriter

pf = os.environ["SRIOV_PFS"].split()[0]
work = Path("/tmp/policy-vm")
work.mkdir(parents=True, exist_ok=True)
out = {"pf": pf}

def sh(cmd):
    done = subprocess.run(cmd, shell=True, capture_output=True, text=True)
    return {"rc": done.returncode, "out": done.stdout, "err": done.stderr}

def cli(*args):
    stdout, stderr = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(stdout), contextlib.redirect_stderr(stderr):
        status = main(["apply", *args])
    return {"status": status, "out": stdout.getvalue(), "err": stderr.getvalue()}

def state():
    dev = Path(f"/sys/class/net/{pf}/device")
    vfs = []
    for i in range(int((dev / "sriov_numvfs").read_text())):
        vf = (dev / f"virtfn{i}").resolve()
        driver = vf / "driver"
        group = vf / "iommu_group"
        nets = sorted(p.name for p in (vf / "net").iterdir()) if (vf / "net").is_dir() else []
        gname = group.resolve().name if group.exists() else None
        vfs.append({
            "address": vf.name,
            "driver": driver.resolve().name if driver.exists() else None,
            "override": (vf / "driver_override").read_text().strip(),
            "netdev": nets[0] if nets else None,
            "mtu": int(Path(f"/sys/class/net/{nets[0]}/mtu").read_text()) if nets else None,
            "iommu_group": gname,
            "dev_vfio": gname is not None and os.path.exists(f"/dev/vfio/{gname}"),
        })
    return {
        "numvfs": int((dev / "sriov_numvfs").read_text()),
        "pf_mtu": int(Path(f"/sys/class/net/{pf}/mtu").read_text()),
        "vfs": vfs,
    }

class Counting:
    """The kernel writer, counting every sysfs write."""
    def __init__(self):
        self.writes = []
        self.kernel = KernelWriter()
    def write(self, path, value):
        self.writes.append([str(path), value])
        self.kernel.write(path, value)

out["cmdline"] = Path("/proc/cmdline").read_text()
out["iommu_groups"] = len(os.listdir("/sys/kernel/iommu_groups"))
out["modprobe"] = sh("modprobe vfio-pci")
policy = work / "policy.yaml"
policy.write_text(POLICY.replace("PF", pf))
pools = work / "config.json"

out["fresh"] = state()
out["dry_run"] = cli("-f", str(policy), "--dry-run")
out["dry_run_json"] = json.loads(cli("-f", str(policy), "--dry-run", "--json")["out"])
out["after_dry_run"] = state()
out["apply"] = cli("-f", str(policy), "--pool-config", str(pools))
out["applied"] = state()
out["pool_config"] = json.loads(pools.read_text())

counting = Counting()
host = Host("/", sysfs_writer=counting)
again = plan(host, load_policies(policy))
out["reapply_empty"] = again.empty
out["reapply_done"] = [str(c) for _, c in apply(host, again).done]
out["reapply_writes"] = counting.writes
out["reapply_requests"] = dict(host.request_counts())
out["reapply_cli"] = json.loads(cli("-f", str(policy), "--json")["out"])["applied"]

vf0 = out["applied"]["vfs"][0]["netdev"]
sh("ip netns add policypod")
out["moved"] = sh(f"ip link set {vf0} netns policypod")
changed = work / "changed.yaml"
changed.write_text(POLICY.replace("PF", pf).replace("numVfs: 4", "numVfs: 5"))
out["refused"] = cli("-f", str(changed))
out["after_refusal"] = state()
sh("ip netns delete policypod")
result = out
'''

POLICY = """
policies:
  - name: pool-a
    resourceName: poolA
    numVfs: 4
    mtu: 9000
    nicSelector: {pfNames: ["PF#0-1"]}
  - name: pool-b
    resourceName: poolB
    numVfs: 4
    deviceType: vfio-pci
    nicSelector: {pfNames: ["PF#2-3"]}
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
    result: dict[str, Any] = iommu_vm.python(f"POLICY = {POLICY!r}\n" + SCENARIO, timeout=900)
    # the figures of record (pytest -s): the plan as the CLI prints it, the state after
    print("--- dry run ---\n" + result["dry_run"]["out"], file=sys.stderr)
    print("--- apply ---\n" + result["apply"]["out"], file=sys.stderr)
    print("--- applied ---\n" + json.dumps(result["applied"], indent=1), file=sys.stderr)
    return result


class TestApplyOnIgb:
    def test_the_guest_has_an_iommu(self, observed: dict[str, Any]) -> None:
        """intel_iommu=on and QEMU's intel-iommu: IOMMU groups exist; vfio-pci loads."""
        assert "intel_iommu=on" in observed["cmdline"]
        assert observed["iommu_groups"] > 0
        assert 0 == observed["modprobe"]["rc"], observed["modprobe"]

    def test_dry_run_changes_nothing(self, observed: dict[str, Any]) -> None:
        """--dry-run prints the plan with its labels and leaves the kernel as it was."""
        assert 0 == observed["dry_run"]["status"], observed["dry_run"]
        text = observed["dry_run"]["out"]
        assert "PF    sriov_numvfs 0 -> 4" in text
        assert "PF    mtu 1500 -> 9000" in text
        assert "VF 2  driver (new VF) -> vfio-pci" in text
        assert observed["fresh"] == observed["after_dry_run"]
        assert 0 == observed["fresh"]["numvfs"]

    def test_kernel_state_after_apply(self, observed: dict[str, Any]) -> None:
        """4 VFs, PF MTU 9000; VFs 0-1 on igbvf with MTU 9000; VFs 2-3 on vfio-pci in
        IOMMU groups whose /dev/vfio nodes exist."""
        assert 0 == observed["apply"]["status"], observed["apply"]
        assert "waiting for the VFs" in observed["apply"]["err"]
        state = observed["applied"]
        assert (4, 9000) == (state["numvfs"], state["pf_mtu"])
        vfs = state["vfs"]
        assert ["igbvf", "igbvf", "vfio-pci", "vfio-pci"] == [vf["driver"] for vf in vfs]
        assert [9000, 9000] == [vf["mtu"] for vf in vfs[:2]]
        assert [None, None] == [vf["netdev"] for vf in vfs[2:]]
        assert all(vf["iommu_group"] is not None for vf in vfs)
        assert [True, True] == [vf["dev_vfio"] for vf in vfs[2:]]
        assert ["vfio-pci", "vfio-pci"] == [vf["override"] for vf in vfs[2:]]

    def test_pool_config(self, observed: dict[str, Any]) -> None:
        """The written pools select the ranges by the PF's name; B by vfio-pci too."""
        pf = observed["pf"]
        pools = {
            p["resourceName"]: p["selectors"][0] for p in observed["pool_config"]["resourceList"]
        }
        assert [f"{pf}#0-1"] == pools["poolA"]["pfNames"]
        assert ([f"{pf}#2-3"], ["vfio-pci"]) == (
            pools["poolB"]["pfNames"],
            pools["poolB"]["drivers"],
        )

    def test_reapply_makes_zero_writes(self, observed: dict[str, Any]) -> None:
        """The second apply plans nothing, writes no sysfs file and changes nothing
        through netlink (it only reads)."""
        assert observed["reapply_empty"]
        assert [] == observed["reapply_done"]
        assert [] == observed["reapply_writes"]
        mutating = {"set_link", "set_vf", "rename_link", "move_link"}
        assert {} == {k: v for k, v in observed["reapply_requests"].items() if k in mutating}
        assert [] == observed["reapply_cli"]

    def test_numvfs_change_with_an_allocated_vf_is_refused(self, observed: dict[str, Any]) -> None:
        """With VF 0 in a pod's namespace, numVfs 4 -> 5 is refused in one line and the
        kernel keeps every VF as it was (apart from VF 0 having left)."""
        assert 0 == observed["moved"]["rc"], observed["moved"]
        refused = observed["refused"]
        assert 1 == refused["status"]
        assert 1 == len(refused["err"].strip().splitlines()), refused["err"]
        assert "in use" in refused["err"]
        assert "--force" in refused["err"]
        after = observed["after_refusal"]
        assert 4 == after["numvfs"]
        before = observed["applied"]["vfs"]
        assert [vf["driver"] for vf in before] == [vf["driver"] for vf in after["vfs"]]
