"""Node policies (sriovlib.policy): the file format, the operator's merge, the plan and
its application on the fake kernel, which enforces the kernel's rules and counts writes."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from sriovlib.exceptions import Busy
from sriovlib.models import PciAddress
from sriovlib.plugins.types import DeviceType, EswitchMode
from sriovlib.policy import (
    OPERATOR_API,
    Disruption,
    NodePolicy,
    PolicyError,
    apply,
    merge,
    parse_policies,
    plan,
)
from sriovlib.pools import assign, discover_devices, dump_config, parse_config
from sriovlib.testing import FakeSysfs
from sriovlib.testing.fakenetlink import FakeNetlink
from sriovlib.testing.presets import add_nic_model

PF = "enp1s0f0"
PF_ADDRESS = PciAddress.parse("0000:01:00.0")

#: The issue's node: 4 VFs, PF MTU 9000, VFs 0-1 netdevice in pool A, 2-3 vfio-pci in B.
ISSUE_POLICY = f"""
policies:
  - name: pool-a
    resourceName: poolA
    numVfs: 4
    mtu: 9000
    nicSelector: {{pfNames: ["{PF}#0-1"]}}
  - name: pool-b
    resourceName: poolB
    numVfs: 4
    deviceType: vfio-pci
    nicSelector: {{pfNames: ["{PF}#2-3"]}}
"""

OPERATOR_DOC = f"""
apiVersion: {OPERATOR_API}
kind: SriovNetworkNodePolicy
metadata:
  name: policy-1
  namespace: sriov-network-operator
  resourceVersion: "4711"
spec:
  resourceName: intelnics
  nodeSelector:
    feature.node.kubernetes.io/network-sriov.capable: "true"
  priority: 10
  mtu: 1500
  numVfs: 4
  nicSelector:
    vendor: "8086"
    deviceID: "10c9"
    rootDevices: ["0000:01:00.0"]
  deviceType: netdevice
  isRdma: false
status: {{}}
"""


def node(tmp_path: Path, *, iommu: bool = True, vfio: bool = True, ports: int = 1) -> FakeNetlink:
    """An igb node (82576) with *ports* PFs and no VFs yet."""
    fs = FakeSysfs(tmp_path / "node")
    if iommu:
        fs.enable_iommu()
    if vfio:
        fs.load_driver("vfio-pci")
    add_nic_model(fs, "igb", bus=0x01, ports=ports)
    kernel = FakeNetlink(fs)
    for i in range(ports):
        kernel.set_carrier(f"enp1s0f{i}", True)
    return kernel


def policy(**fields: object) -> NodePolicy:
    """One parsed native policy with *fields* on top of a minimal one."""
    entry = {"name": "p", "resourceName": "r", "numVfs": 4, "nicSelector": {"pfNames": [PF]}}
    entry.update(fields)
    return parse_policies(json.dumps({"policies": [entry]})).policies[0]


def problem(text: str) -> str:
    with pytest.raises(PolicyError) as info:
        parse_policies(text, source="p.yaml")
    message = str(info.value)
    assert "\n" not in message
    return message


MUTATING = ("set_link", "set_vf", "rename_link", "move_link", "devlink_set")


def writes(kernel: FakeNetlink) -> tuple[int, int]:
    """Sysfs writes and mutating netlink requests so far."""
    return len(kernel.sysfs_writes), sum(kernel.requests[k] for k in MUTATING)


class TestFormat:
    def test_native_policies(self) -> None:
        """sriovlib's own format: a list of named specs, with the operator's defaults."""
        a, b = parse_policies(ISSUE_POLICY).policies
        assert ("pool-a", "poolA", 4, 9000, 99, DeviceType.NETDEVICE) == (
            a.name,
            a.resource_name,
            a.num_vfs,
            a.mtu,
            a.priority,
            a.device_type,
        )
        assert (DeviceType.VFIO, None) == (b.device_type, b.mtu)
        assert "enp1s0f0#2-3" == str(b.nic_selector.pf_names[0])

    def test_operator_document_as_is(self) -> None:
        """A SriovNetworkNodePolicy taken off a cluster (metadata, nodeSelector, status)
        is accepted unchanged."""
        (p,) = parse_policies(OPERATOR_DOC).policies
        assert ("policy-1", "intelnics", 10, "8086", "10c9") == (
            p.name,
            p.resource_name,
            p.priority,
            p.nic_selector.vendor,
            p.nic_selector.device_id,
        )
        assert (PF_ADDRESS,) == p.nic_selector.root_devices

    def test_kubectl_list_and_several_documents(self) -> None:
        """`kubectl get -o yaml` prints a List; several YAML documents are read too."""
        listed = json.dumps(
            {"apiVersion": "v1", "kind": "List", "items": [_operator("a"), _operator("b")]}
        )
        assert ["a", "b"] == [p.name for p in parse_policies(listed).policies]
        both = OPERATOR_DOC + "\n---\n" + ISSUE_POLICY
        assert ["policy-1", "pool-a", "pool-b"] == [p.name for p in parse_policies(both).policies]

    def test_json(self) -> None:
        """A JSON file is read as JSON."""
        (p,) = parse_policies(json.dumps(_operator("j"))).policies
        assert "j" == p.name

    def test_unknown_field_suggests(self) -> None:
        """A misspelt field is an error with the field it probably is."""
        assert "unknown field 'numVf' (did you mean 'numVfs'?)" in problem(
            ISSUE_POLICY.replace("numVfs: 4\n    mtu", "numVf: 4\n    mtu")
        )
        assert "unknown field 'pfName' (did you mean 'pfNames'?)" in problem(
            ISSUE_POLICY.replace("pfNames", "pfName", 1)
        )
        assert "unknown field 'eswitchMode' (did you mean 'eSwitchMode'?)" in problem(
            OPERATOR_DOC.replace("isRdma: false", "eswitchMode: legacy")
        )

    @pytest.mark.parametrize(
        ("change", "message"),
        [
            (("deviceType: vfio-pci", "deviceType: dpdk"), "'dpdk' is not one of netdevice"),
            (("numVfs: 4\n    mtu", "numVfs: four\n    mtu"), "numVfs: expected an integer"),
            (("#0-1", "#1-0"), "the first VF is after the last"),
            (("#2-3", "#2-5"), "reaches VF 5 but numVfs is 4"),
            (("#0-1", "#0:1"), "write the VF range as NAME#FIRST-LAST"),
            (("resourceName: poolA", "resourceName: pool-A"), "may hold only letters"),
            (("mtu: 9000", "mtu: 9000\n    priority: 100"), "priority: 100 is not from 0 to 99"),
            (("deviceType: vfio-pci", "deviceType: vfio-pci\n    isRdma: true"), "isRdma needs"),
            (("    resourceName: poolA\n", ""), "resourceName is required"),
            (('{pfNames: ["enp1s0f0#0-1"]}', "{}"), "selects nothing"),
            (("pool-b", "pool-a"), "two policies are named 'pool-a'"),
        ],
    )
    def test_bad_values(self, change: tuple[str, str], message: str) -> None:
        """Each bad value is a one-line error naming the policy and the field."""
        assert message in problem(ISSUE_POLICY.replace(*change, 1))

    def test_operator_fields_sriovlib_cannot_do(self) -> None:
        """vdpaType and bridge are the operator's but not done here: an error, not a
        silent skip; netFilter (OpenStack) is a warning."""
        assert "vdpaType: not supported" in problem(
            OPERATOR_DOC.replace("isRdma: false", "vdpaType: virtio")
        )
        warned = parse_policies(OPERATOR_DOC.replace('vendor: "8086"', "netFilter: x"))
        assert any("netFilter" in w for w in warned.warnings)

    def test_not_a_policy(self) -> None:
        """Another kind, bad YAML or an empty file are one-line errors."""
        assert "kind 'SriovNetworkNodeState' is not SriovNetworkNodePolicy" in problem(
            OPERATOR_DOC.replace("kind: SriovNetworkNodePolicy", "kind: SriovNetworkNodeState")
        )
        assert "invalid YAML" in problem("policies: [a\n")
        assert "no policies" in problem("")
        assert "did you mean 'policies'" in problem("policy: []\n")


def _operator(name: str, **spec: object) -> dict[str, object]:
    return {
        "apiVersion": OPERATOR_API,
        "kind": "SriovNetworkNodePolicy",
        "metadata": {"name": name, "namespace": "sriov-network-operator"},
        "spec": {
            "resourceName": name.replace("-", "_"),
            "numVfs": 4,
            "nicSelector": {"pfNames": [PF]},
            "nodeSelector": {},
            **spec,
        },
    }


class TestMerge:
    def inventory(self, tmp_path: Path, ports: int = 2):  # type: ignore[no-untyped-def]
        return node(tmp_path, ports=ports).host().inventory()

    def test_partitions_of_one_pf(self, tmp_path: Path) -> None:
        """Two policies on different VF ranges of a PF both stay; the PF gets the larger
        numVfs and MTU (the operator's mergeConfigs)."""
        a = policy(name="a", numVfs=4, mtu=9000, nicSelector={"pfNames": [f"{PF}#0-1"]})
        b = policy(name="b", numVfs=6, mtu=1500, nicSelector={"pfNames": [f"{PF}#2-5"]})
        (target,) = merge([a, b], self.inventory(tmp_path)).pfs
        assert (6, 9000) == (target.num_vfs, target.mtu)
        assert [("a", 0, 1), ("b", 2, 5)] == [(g.policy, g.first, g.last) for g in target.groups]

    def test_higher_priority_takes_over_overlapping_vfs(self, tmp_path: Path) -> None:
        """A lower priority number wins the VFs it overlaps; the note names both."""
        low = policy(name="wide", priority=50, numVfs=6)
        high = policy(name="dpdk", priority=10, nicSelector={"pfNames": [f"{PF}#0-1"]})
        (target,) = merge([high, low], self.inventory(tmp_path)).pfs
        assert [("dpdk", 0, 1)] == [(g.policy, g.first, g.last) for g in target.groups]
        assert 4 == target.num_vfs  # the policy left decides
        assert "policy 'dpdk' (priority 10) takes VFs 0-1" in target.notes[0]
        assert "from policy 'wide' (priority 50)" in target.notes[0]

    def test_equal_priority_overlap_is_a_conflict(self, tmp_path: Path) -> None:
        """Two policies of one priority claiming a VF: an error naming both."""
        a = policy(name="a", nicSelector={"pfNames": [f"{PF}#0-2"]})
        b = policy(name="b", nicSelector={"pfNames": [f"{PF}#2-3"]})
        with pytest.raises(PolicyError, match=r"policies 'a' and 'b' \(both priority 99\) both "
                           r"claim VFs 2-2 of enp1s0f0"):  # fmt: skip
            merge([a, b], self.inventory(tmp_path))

    def test_equal_priority_disagreeing_pf_setting(self, tmp_path: Path) -> None:
        """Non-overlapping ranges that want different eswitch modes of one PF conflict."""
        a = policy(name="a", eSwitchMode="legacy", nicSelector={"pfNames": [f"{PF}#0-1"]})
        b = policy(name="b", eSwitchMode="switchdev", nicSelector={"pfNames": [f"{PF}#2-3"]})
        with pytest.raises(PolicyError, match="want eSwitchMode legacy and switchdev"):
            merge([a, b], self.inventory(tmp_path))

    def test_selectors(self, tmp_path: Path) -> None:
        """vendor and deviceID are the PF's; rootDevices its address; all must match."""
        inventory = self.inventory(tmp_path)
        by_id = policy(nicSelector={"vendor": "8086", "deviceID": "10c9"})
        assert 2 == len(merge([by_id], inventory).pfs)
        by_root = policy(nicSelector={"rootDevices": ["0000:01:00.1"]})
        assert ["enp1s0f1"] == [t.pf.name for t in merge([by_root], inventory).pfs]
        both = policy(nicSelector={"deviceID": "1572", "pfNames": [PF]})
        result = merge([both], inventory)
        assert () == result.pfs
        assert ["policy 'p': its nicSelector matches no PF on this node"] == list(result.warnings)


class TestPlanAndApply:
    def test_the_plan_labels_each_change(self, tmp_path: Path) -> None:
        """From no VFs: PF MTU, the VF count (nothing destroyed: live), new VFs' drivers
        and MTUs; the pools follow the resourceNames."""
        host = node(tmp_path).host()
        the_plan = plan(host, parse_policies(ISSUE_POLICY))
        (pf_plan,) = the_plan.pfs
        assert [
            ("PF mtu 1500 -> 9000", Disruption.LIVE),
            ("PF sriov_numvfs 0 -> 4", Disruption.LIVE),
            ("VF 0 mtu (new netdev) -> 9000", Disruption.LIVE),
            ("VF 1 mtu (new netdev) -> 9000", Disruption.LIVE),
            ("VF 2 driver (new VF) -> vfio-pci", Disruption.LIVE),
            ("VF 3 driver (new VF) -> vfio-pci", Disruption.LIVE),
        ] == [(str(c), c.disruption) for c in pf_plan.changes]
        assert ("write-numvfs 4",) == pf_plan.numvfs_steps
        assert not the_plan.needs_reboot

    def test_apply_then_reapply_writes_nothing(self, tmp_path: Path) -> None:
        """After apply the kernel holds the policy (VFs 2-3 really on vfio-pci through
        driver_override); a second apply of the same file plans nothing and makes zero
        sysfs writes and zero netlink changes."""
        kernel = node(tmp_path)
        host = kernel.host()
        policies = parse_policies(ISSUE_POLICY)
        before = writes(kernel)
        report = apply(host, plan(host, policies))
        assert 6 == len(report.done)
        assert writes(kernel) != before
        vfs = host.vfs(PF)
        assert ["igbvf", "igbvf", "vfio-pci", "vfio-pci"] == [vf.driver for vf in vfs]
        assert [9000, 9000] == [host.link(vf.netdev).mtu for vf in vfs[:2] if vf.netdev]
        assert (None, None) == (vfs[2].netdev, vfs[3].netdev)
        assert 9000 == host.link(PF).mtu
        override = kernel.fs.sys / "bus/pci/devices" / str(vfs[2].address) / "driver_override"
        assert "vfio-pci" == override.read_text().strip()

        after = writes(kernel)
        again = plan(host, policies)
        assert again.empty
        assert () == apply(host, again).done
        assert after == writes(kernel)

    def test_pools_select_exactly_the_ranges(self, tmp_path: Path) -> None:
        """The written pool config passes the strict parser and, on the applied node,
        pools VFs 0-1 as poolA and 2-3 (vfio-pci) as poolB."""
        kernel = node(tmp_path)
        host = kernel.host()
        the_plan = plan(host, parse_policies(ISSUE_POLICY))
        apply(host, the_plan)
        config = parse_config(dump_config(the_plan.pools))
        members = assign(config, discover_devices(host.inventory()))
        found = {m.pool.resource_name: [d.vf_index for d in m.devices] for m in members.pools}
        assert {"poolA": [0, 1], "poolB": [2, 3]} == found

    def test_count_change_with_a_vf_in_use_is_refused(self, tmp_path: Path) -> None:
        """Changing numVfs destroys every VF: refused while one is in a pod, with nothing
        written; --force does it."""
        kernel = node(tmp_path)
        host = kernel.host()
        apply(host, plan(host, parse_policies(ISSUE_POLICY)))
        vf0 = host.vfs(PF)[0]
        assert vf0.netdev is not None
        pod = kernel.add_netns("pod")
        host.netlink.move_link(host.link(vf0.netdev).index, "net1", target=pod)
        changed = parse_policies(ISSUE_POLICY.replace("numVfs: 4", "numVfs: 5"))
        the_plan = plan(host, changed)
        assert [("PF sriov_numvfs 4 -> 5", Disruption.PODS)] == [
            (str(c), c.disruption) for c in the_plan.pfs[0].changes if c.what == "sriov_numvfs"
        ]
        before = writes(kernel)
        with pytest.raises(Busy, match=r"VF 0 \(0000:01:00\.1\) in use"):
            apply(host, the_plan)
        assert before == writes(kernel)
        apply(host, the_plan, force=True)
        assert 5 == len(host.vfs(PF))

    def test_rebinding_a_vf_disrupts_its_pods(self, tmp_path: Path) -> None:
        """Moving VFs from netdevice to vfio-pci is labelled disruptive and done through
        driver_override; back again restores the kernel driver and its MTU."""
        kernel = node(tmp_path)
        host = kernel.host()
        apply(host, plan(host, parse_policies(ISSUE_POLICY)))
        swapped = ISSUE_POLICY.replace("#0-1", "#X").replace("#2-3", "#0-1").replace("#X", "#2-3")
        the_plan = plan(host, parse_policies(swapped))
        drivers = [(str(c), c.disruption) for c in the_plan.pfs[0].changes if c.what == "driver"]
        assert [
            ("VF 0 driver igbvf -> vfio-pci", Disruption.PODS),
            ("VF 1 driver igbvf -> vfio-pci", Disruption.PODS),
            ("VF 2 driver vfio-pci -> the kernel's VF driver", Disruption.PODS),
            ("VF 3 driver vfio-pci -> the kernel's VF driver", Disruption.PODS),
        ] == drivers
        apply(host, the_plan)
        vfs = host.vfs(PF)
        assert ["vfio-pci", "vfio-pci", "igbvf", "igbvf"] == [vf.driver for vf in vfs]
        assert [9000, 9000] == [host.link(vf.netdev).mtu for vf in vfs[2:] if vf.netdev]
        assert plan(host, parse_policies(swapped)).empty

    def test_no_iommu_needs_a_reboot(self, tmp_path: Path) -> None:
        """vfio-pci without an IOMMU: the kernel arguments are a reboot change with the
        command to run; the vfio binds wait for it; the rest is applied."""
        kernel = node(tmp_path, iommu=False)
        host = kernel.host()
        the_plan = plan(host, parse_policies(ISSUE_POLICY))
        (arguments,) = the_plan.node
        assert (Disruption.REBOOT, False) == (arguments.disruption, arguments.applied)
        assert "intel_iommu=on iommu=pt" in arguments.after
        assert "update-grub" in (arguments.command or "")
        assert the_plan.needs_reboot
        binds = [c for c in the_plan.pfs[0].changes if c.what == "driver"]
        assert [False, False] == [c.applied for c in binds]
        apply(host, the_plan)
        assert ["igbvf"] * 4 == [vf.driver for vf in host.vfs(PF)]

    def test_vfio_module_missing_blocks(self, tmp_path: Path) -> None:
        """With an IOMMU but no vfio-pci driver loaded, apply refuses before any write."""
        kernel = node(tmp_path, vfio=False)
        host = kernel.host()
        the_plan = plan(host, parse_policies(ISSUE_POLICY))
        assert ("the vfio-pci driver is not loaded; run: modprobe vfio-pci",) == the_plan.blockers
        before = writes(kernel)
        with pytest.raises(PolicyError, match="modprobe vfio-pci"):
            apply(host, the_plan)
        assert before == writes(kernel)

    def test_fake_kernel_refuses_vfio_without_iommu_group(self, tmp_path: Path) -> None:
        """The fake kernel's rule behind the reboot label: a driver_override probe to
        vfio-pci of a VF in no IOMMU group leaves it unbound."""
        kernel = node(tmp_path, iommu=False)
        host = kernel.host()
        host.set_num_vfs(PF, 1)
        vf = host.bind_driver(host.vfs(PF)[0], DeviceType.VFIO)
        assert vf.driver is None

    def test_switchdev_on_igb_is_an_error(self, tmp_path: Path) -> None:
        """igb has no devlink eswitch: switchdev cannot be reached, said before any write."""
        host = node(tmp_path).host()
        with pytest.raises(PolicyError, match="no devlink eswitch"):
            plan(host, [policy(eSwitchMode="switchdev")])
        assert [] == [c for c in plan(host, [policy(eSwitchMode="legacy")]).changes if
                      c.what == "eswitch mode"]  # fmt: skip

    def test_too_many_vfs(self, tmp_path: Path) -> None:
        """Above the igb limit of 7: the plan fails naming the limit."""
        host = node(tmp_path).host()
        with pytest.raises(PolicyError, match="exceeds totalvfs 7"):
            plan(host, [policy(numVfs=8)])

    def test_externally_managed(self, tmp_path: Path) -> None:
        """An externally managed PF's VF count is never written; too few VFs is an error."""
        kernel = node(tmp_path)
        host = kernel.host()
        with pytest.raises(PolicyError, match="externally managed and has 0 VFs"):
            plan(host, [policy(externallyManaged=True)])
        host.set_num_vfs(PF, 4)
        the_plan = plan(host, [policy(externallyManaged=True, mtu=1500)])
        assert [] == [c for c in the_plan.changes if c.vf is None]

    def test_pf_mtu_is_never_lowered(self, tmp_path: Path) -> None:
        """Like the operator, a smaller mtu than the PF has leaves the PF alone."""
        kernel = node(tmp_path)
        host = kernel.host()
        host.set_link(PF, mtu=9000)
        assert () == plan(host, [policy(mtu=1500, numVfs=0)]).changes

    def test_eswitch_mode_is_read(self, tmp_path: Path) -> None:
        """An eswitch mode already as wanted is no change."""
        fs = FakeSysfs(tmp_path / "mlx")
        add_nic_model(fs, "mlx5", bus=0x3B, ports=1, num_vfs=2, switchdev=True)
        host = FakeNetlink(fs).host()
        assert EswitchMode.SWITCHDEV == host.eswitch_mode("ens1f0")
        p = policy(eSwitchMode="switchdev", numVfs=2, nicSelector={"pfNames": ["ens1f0"]})
        assert [] == [c for c in plan(host, [p]).changes if c.vf is None]

    def test_eswitch_mode_change_through_devlink(self, tmp_path: Path) -> None:
        """legacy -> switchdev on mlx5 disrupts the PF's pods and is made in the
        plugin's order through devlink; applying it again changes nothing."""
        fs = FakeSysfs(tmp_path / "mlx")
        add_nic_model(fs, "mlx5", bus=0x3B, ports=1, num_vfs=2)
        kernel = FakeNetlink(fs)
        host = kernel.host()
        p = policy(eSwitchMode="switchdev", numVfs=2, nicSelector={"pfNames": ["ens1f0"]})
        the_plan = plan(host, [p])
        assert [("PF eswitch mode legacy -> switchdev", Disruption.PODS)] == [
            (str(c), c.disruption) for c in the_plan.changes
        ]
        apply(host, the_plan)
        assert EswitchMode.SWITCHDEV == host.eswitch_mode("ens1f0")
        assert 1 == kernel.requests["devlink_set"]
        before = writes(kernel)
        assert plan(host, [p]).empty
        assert before == writes(kernel)

    def test_a_rebind_is_refused_only_for_the_vf_in_use(self, tmp_path: Path) -> None:
        """Rebinding VF 1 while VF 0 is in a pod goes ahead; rebinding VF 0 is refused."""
        kernel = node(tmp_path)
        host = kernel.host()
        apply(host, plan(host, parse_policies(ISSUE_POLICY)))
        vf0 = host.vfs(PF)[0]
        assert vf0.netdev is not None
        host.netlink.move_link(host.link(vf0.netdev).index, "net1", target=kernel.add_netns("p"))
        one = ISSUE_POLICY.replace("#0-1", "#0-0").replace("#2-3", "#1-3")
        apply(host, plan(host, parse_policies(one)))
        assert ["igbvf", "vfio-pci"] == [vf.driver for vf in host.vfs(PF)[:2]]
        none = ISSUE_POLICY.replace("#0-1", "#3-3").replace("#2-3", "#0-2")
        the_plan = plan(host, parse_policies(none))
        assert ["VF 0 driver igbvf -> vfio-pci"] == [str(c) for c in the_plan.pfs[0].refused]
        with pytest.raises(Busy, match="VF 0 driver igbvf -> vfio-pci would take them away"):
            apply(host, the_plan)
