"""Pool membership: selectors on every vendor preset, upstream's rules, generated configs.

``upstream_select`` below is an independent, literal re-implementation of the device
plugin's filter chain (reference §1) over the raw JSON, used as an oracle: on the real
corpus and on generated configs, ``assign(parse_config(..., compat=True))`` must select
exactly what it selects.
"""

from __future__ import annotations

import json
import re
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sriovlib import Host, LinkType, PciAddress, PciId
from sriovlib.pools import (
    ConfigError,
    DeviceKind,
    PoolConfig,
    PoolDevice,
    assign,
    discover_devices,
    dump_config,
    generate_config,
    parse_config,
)
from sriovlib.sysfs import read_selector_facts
from sriovlib.testing import EXAMPLES, PRESETS, FakeSysfs, add_nic_model, build_example

CORPUS = Path(__file__).resolve().parents[2] / "shared/corpus/device-plugin-configs"


# -- the oracle ---------------------------------------------------------------------


def _get(obj: dict[str, Any], key: str) -> Any:
    """Go's decoding of one struct field: keys match case-insensitively, the last wins."""
    found = None
    for k, v in obj.items():
        if k.casefold() == key.casefold():
            found = v
    return found


def _go_atoi(text: str) -> int | None:
    return int(text) if re.fullmatch(r"[+-]?[0-9]{1,18}", text) else None


def _is_selected(vf_index: int, selector: str) -> bool:  # noqa: PLR0911 (upstream's shape)
    """Upstream isSelected, step by step."""
    if "#" not in selector:
        return True
    fields = selector.split("#")
    if len(fields) != 2:
        return False
    for entry in fields[1].split(","):
        if "-" in entry:
            bounds = entry.split("-")
            if len(bounds) != 2:
                return False
            start, end = _go_atoi(bounds[0]), _go_atoi(bounds[1])
            if start is None or end is None:
                return False
            if start <= vf_index <= end:
                return True
        else:
            index = _go_atoi(entry)
            if index is None:
                return False
            if index == vf_index:
                return True
    return False


def _get_item(hay: list[str], needle: str) -> str | None:
    for item in hay:
        if item.split("#")[0].casefold() == needle.casefold():
            return item
    return None


def _vf_filter(key: str) -> Callable[[list[str], PoolDevice], bool]:
    def check(values: list[str], d: PoolDevice) -> bool:
        parent = (
            d.pf_name if key == "pfNames" else (None if d.pf_address is None else str(d.pf_address))
        )
        if not parent:
            return False
        item = _get_item(values, parent)
        index = -1 if d.vf_index is None else d.vf_index
        return item is not None and _is_selected(index, item)

    return check


_FILTERS: list[tuple[str, Callable[[Any, PoolDevice], bool]]] = [
    ("vendors", lambda v, d: d.ids.vendor_hex in v),
    ("devices", lambda v, d: d.ids.device_hex in v),
    ("drivers", lambda v, d: d.driver in v),
    ("pciAddresses", lambda v, d: str(d.address) in v),
    ("acpiIndexes", lambda v, d: d.acpi_index in v),
    ("pfNames", _vf_filter("pfNames")),
    ("rootDevices", _vf_filter("rootDevices")),
    ("linkTypes", lambda v, d: d.link_type in v),
    ("ddpProfiles", lambda v, d: d.ddp_profile in v),
    ("pKeys", lambda v, d: d.pkey in v),
    ("isRdma", lambda v, d: bool(d.rdma_devices)),
    ("vdpaType", lambda v, d: d.vdpa_driver == f"{v}_vdpa"),
]


def upstream_select(raw: dict[str, Any], devices: tuple[PoolDevice, ...]) -> dict[str, list[str]]:
    """Pool name -> device addresses, the way the device plugin fills its pools."""
    taken: set[str] = set()
    pools: dict[str, list[str]] = {}
    for rc in _get(raw, "resourceList") or []:
        name = _get(rc, "resourceName")
        members: list[str] = []
        selectors = _get(rc, "selectors")
        selectors = [selectors] if isinstance(selectors, dict) else selectors
        if (_get(rc, "deviceType") or "netDevice") == "netDevice":
            for selector in selectors:
                found = [d for d in devices if d.excluded is None and str(d.address) not in taken]
                for key, keep in _FILTERS:
                    value = _get(selector, key)
                    if value:  # an empty list, false or "" does not filter
                        found = [d for d in found if keep(value, d)]
                for d in found:
                    taken.add(str(d.address))
                    members.append(str(d.address))
        pools[name] = sorted(members)
    return pools


def selected(config: PoolConfig, devices: tuple[PoolDevice, ...]) -> dict[str, list[str]]:
    return {
        m.pool.resource_name: sorted(str(d.address) for d in m.devices)
        for m in assign(config, devices).pools
    }


# -- hosts --------------------------------------------------------------------------


def example_devices(name: str) -> tuple[PoolDevice, ...]:
    with tempfile.TemporaryDirectory() as root:
        build_example(name, root)
        host = Host(root)
        return discover_devices(host.inventory(), read_selector_facts(host.sysfs))


EXAMPLE_DEVICES = {name: example_devices(name) for name in EXAMPLES}


@pytest.fixture
def preset_host(fake_sysfs: FakeSysfs) -> Callable[[str], tuple[PoolDevice, ...]]:
    def build(preset: str) -> tuple[PoolDevice, ...]:
        add_nic_model(fake_sysfs, preset, bus=0x3B, num_vfs=4, numa_node=0)
        host = Host(fake_sysfs.root)
        return discover_devices(host.inventory(), read_selector_facts(host.sysfs))

    return build


def pool(**selector: Any) -> str:
    return json.dumps({"resourceList": [{"resourceName": "p", "selectors": selector}]})


def members(text: str, devices: tuple[PoolDevice, ...]) -> list[PoolDevice]:
    return list(assign(parse_config(text), devices).pools[0].devices)


class TestSelectorsPerPreset:
    """Each selector on each vendor's NIC model (two ports, four VFs each)."""

    @pytest.mark.parametrize("preset", sorted(PRESETS))
    def test_vendor_and_device(self, preset_host: Any, preset: str) -> None:
        """The VF id pair selects exactly the VFs; the PF id pair selects nothing."""
        model = PRESETS[preset]
        devices = preset_host(preset)
        vfs = members(
            pool(vendors=[model.vf_ids.vendor_hex], devices=[model.vf_ids.device_hex]), devices
        )
        assert 8 == len(vfs)
        assert all(d.kind is DeviceKind.VF for d in vfs)
        assert [] == members(pool(devices=[model.pf_ids.device_hex]), devices)

    @pytest.mark.parametrize("preset", sorted(PRESETS))
    def test_driver(self, preset_host: Any, preset: str) -> None:
        """drivers matches the bound VF driver."""
        devices = preset_host(preset)
        assert 8 == len(members(pool(drivers=[PRESETS[preset].vf_driver]), devices))
        assert [] == members(pool(drivers=["vfio-pci"]), devices)

    @pytest.mark.parametrize("preset", sorted(PRESETS))
    def test_pf_names_with_ranges(self, preset_host: Any, preset: str) -> None:
        """pfNames with '#' picks those VF indexes of that PF only."""
        devices = preset_host(preset)
        pf0 = f"{PRESETS[preset].netdev_prefix}0"
        found = members(pool(pfNames=[f"{pf0}#0,2-3"]), devices)
        assert [(pf0, 0), (pf0, 2), (pf0, 3)] == [(d.pf_name, d.vf_index) for d in found]
        assert 4 == len(members(pool(pfNames=[pf0.upper()]), devices))

    @pytest.mark.parametrize("preset", sorted(PRESETS))
    def test_root_devices(self, preset_host: Any, preset: str) -> None:
        """rootDevices keys on the PF address."""
        devices = preset_host(preset)
        found = members(pool(rootDevices=["0000:3b:00.1#1"]), devices)
        assert [(PciAddress.parse("0000:3b:00.1"), 1)] == [
            (d.pf_address, d.vf_index) for d in found
        ]

    @pytest.mark.parametrize("preset", sorted(PRESETS))
    def test_pci_addresses_and_link_type(self, preset_host: Any, preset: str) -> None:
        """pciAddresses picks single functions; linkTypes ether matches Ethernet VFs."""
        devices = preset_host(preset)
        first = next(d for d in devices if d.kind is DeviceKind.VF)
        assert [first] == members(pool(pciAddresses=[str(first.address)]), devices)
        assert 8 == len(members(pool(linkTypes=["ether"]), devices))
        assert [] == members(pool(linkTypes=["infiniband"]), devices)

    @pytest.mark.parametrize("preset", sorted(PRESETS))
    def test_rdma(self, preset_host: Any, preset: str) -> None:
        """isRdma keeps only functions with an RDMA device (the mlx5 VFs here)."""
        devices = preset_host(preset)
        expected = 8 if PRESETS[preset].rdma else 0
        assert expected == len(members(pool(isRdma=True), devices))

    @pytest.mark.parametrize("preset", sorted(PRESETS))
    def test_unknown_facts_match_nothing(self, preset_host: Any, preset: str) -> None:
        """DDP profiles, pkeys and vDPA are not in the fake tree, so they match nothing."""
        devices = preset_host(preset)
        for selector in (
            {"ddpProfiles": ["ICE OS Default Package"]},
            {"pKeys": ["0x7fff"]},
            {"vdpaType": "vhost"},
            {"acpiIndexes": ["1"]},
        ):
            assert [] == members(pool(**selector), devices)

    def test_infiniband(self) -> None:
        """The mlx5 InfiniBand example has link type infiniband."""
        devices = EXAMPLE_DEVICES["mlx5-ib"]
        assert 4 == len(members(pool(linkTypes=["infiniband"]), devices))


class TestUpstreamRules:
    """AND across fields, OR within, union of objects, first match wins, PFs with VFs out."""

    def test_and_or(self) -> None:
        """Fields are ANDed; the values of one field are ORed."""
        devices = EXAMPLE_DEVICES["mixed"]
        both = pool(vendors=["8086", "15b3"], drivers=["vfio-pci"])
        assert 4 == len(members(both, devices))

    def test_union_of_objects(self) -> None:
        """A list of selector objects is their union."""
        devices = EXAMPLE_DEVICES["mixed"]
        text = json.dumps(
            {
                "resourceList": [
                    {
                        "resourceName": "p",
                        "selectors": [{"drivers": ["vfio-pci"]}, {"devices": ["1018"]}],
                    }
                ]
            }
        )
        assert 12 == len(members(text, devices))

    def test_first_match_wins(self) -> None:
        """A device selected by two pools stays in the first; the overlap is reported."""
        devices = EXAMPLE_DEVICES["i40e"]
        text = json.dumps(
            {
                "resourceList": [
                    {"resourceName": "dpdk", "selectors": {"drivers": ["vfio-pci"]}},
                    {
                        "resourceName": "all",
                        "selectors": {"vendors": ["8086"], "devices": ["154c"]},
                    },
                ]
            }
        )
        result = assign(parse_config(text), devices)
        assert [4, 12] == [len(m.devices) for m in result.pools]
        assert 4 == len(result.shadowed)

    def test_pf_with_vfs_excluded(self) -> None:
        """An empty selector takes every VF and the non-SR-IOV NIC, but no PF with VFs."""
        devices = EXAMPLE_DEVICES["mlx5"]
        found = members(pool(), devices)
        assert {DeviceKind.VF, DeviceKind.NIC} == {d.kind for d in found}
        unmatched = assign(parse_config(pool()), devices).unmatched
        assert 2 == len(unmatched)
        assert all("VFs enabled" in u.reasons[0] for u in unmatched)

    def test_pf_without_vfs_is_poolable(self) -> None:
        """A PF with SR-IOV off is pooled whole, as upstream does."""
        found = members(pool(devices=["10fb"]), EXAMPLE_DEVICES["ixgbe"])
        assert [DeviceKind.PF, DeviceKind.PF] == [d.kind for d in found]

    def test_default_route_excluded(self, fake_sysfs: FakeSysfs) -> None:
        """A device carrying the IPv4 default route is never pooled."""
        fake_sysfs.add_nic(ids=PciId(0x8086, 0x1533), driver="igb", netdev="eno1")
        (fake_sysfs.root / "proc/net").mkdir(parents=True)
        (fake_sysfs.root / "proc/net/route").write_text(
            "Iface\tDestination\tGateway \tFlags\tRefCnt\tUse\tMetric\tMask\t\tMTU\tWindow\tIRTT\n"
            "eno1\t00000000\t0101A8C0\t0003\t0\t0\t0\t00000000\t0\t0\t0\n"
        )
        host = Host(fake_sysfs.root)
        devices = discover_devices(host.inventory(), read_selector_facts(host.sysfs))
        result = assign(parse_config(pool()), devices)
        assert () == result.pools[0].devices
        assert "default route (eno1)" in result.unmatched[0].reasons[0]

    def test_unmatched_reason_names_the_field(self) -> None:
        """The reason names the first failing field per pool, in upstream's filter order."""
        result = assign(
            parse_config(pool(vendors=["8086"], pfNames=["x"])), EXAMPLE_DEVICES["i40e"]
        )
        reasons = {u.device.kind: u.reasons[0] for u in result.unmatched}
        assert "PF enp59s0f0 not in pfNames [x]" in next(
            u.reasons[0] for u in result.unmatched if u.device.kind is DeviceKind.VF
        )
        assert "device" not in reasons[DeviceKind.NIC] or "pfNames" in reasons[DeviceKind.NIC]

    def test_switchdev_uplink_is_the_pf_name(self, fake_sysfs: FakeSysfs) -> None:
        """In switchdev mode the PF's name is its uplink, whatever sorts first."""
        add_nic_model(fake_sysfs, "mlx5", bus=0x3B, num_vfs=2, ports=1, switchdev=True)
        rep = fake_sysfs.sys / "bus/pci/devices/0000:3b:00.0/net/aaa_rep0"
        rep.mkdir()
        (rep / "type").write_text("1\n")
        (rep / "phys_port_name").write_text("pf0vf0\n")
        host = Host(fake_sysfs.root)
        devices = discover_devices(host.inventory(), read_selector_facts(host.sysfs))
        assert {"ens1f0"} == {d.pf_name for d in devices if d.kind is DeviceKind.VF}

    def test_acpi_index_and_vdpa_readers(self, fake_sysfs: FakeSysfs) -> None:
        """acpiIndexes and vdpaType read the real sysfs attributes where present."""
        (pf,) = add_nic_model(fake_sysfs, "mlx5", bus=0x3B, num_vfs=2, ports=1)
        vf = fake_sysfs._device_path(pf.vf_address(0))
        (vf / "acpi_index").write_text("7\n")
        vdpa = vf / "vdpa0"
        vdpa.mkdir()
        driver = fake_sysfs.sys / "bus/vdpa/drivers/vhost_vdpa"
        driver.mkdir(parents=True)
        (vdpa / "driver").symlink_to(driver)
        (fake_sysfs.sys / "bus/vdpa/devices").mkdir(parents=True)
        (fake_sysfs.sys / "bus/vdpa/devices/vdpa0").symlink_to(vdpa)
        host = Host(fake_sysfs.root)
        devices = discover_devices(host.inventory(), read_selector_facts(host.sysfs))
        assert [pf.vf_address(0)] == [d.address for d in members(pool(acpiIndexes=["7"]), devices)]
        assert [pf.vf_address(0)] == [d.address for d in members(pool(vdpaType="vhost"), devices)]


class TestAgainstUpstreamOracle:
    """The compat reading selects what the device plugin's own algorithm selects."""

    @pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}")
    @pytest.mark.parametrize("example", sorted(EXAMPLES))
    def test_corpus_on_every_example(self, example: str) -> None:
        """Each valid corpus file on each example host, strict and compat alike."""
        devices = EXAMPLE_DEVICES[example]
        for path in sorted(CORPUS.glob("*.json")):
            try:
                raw = json.loads(path.read_text())
            except ValueError:
                continue
            expected = upstream_select(raw, devices)
            for compat in (False, True):
                got = selected(parse_config(path.read_bytes(), compat=compat), devices)
                assert expected == got, (path.name, example, compat)

    @pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}")
    @pytest.mark.parametrize(
        ("name", "example", "expected"),
        [
            ("deployments__configMap.json", "i40e", {"intel_sriov_netdevice": 12}),
            ("deployments__configMap.json", "ice", {"intel_sriov_netdevice": 32}),
            ("docs__dpdk__configMap.json", "i40e", {"intel_x710vfio": 4}),
            ("docs__dpdk__configMap-all-nics.json", "mixed", {"nic": 12}),
            ("docs__dpdk__mlnx-dpdk__configMap.json", "mlx5", {"mlnx_connectx5": 8}),
            ("docs__rdma__configMap.json", "mlx5", {"mlnx_rdma": 8}),
            ("docs__rdma__configMap.json", "mlx5-ib", {"mlnx_rdma": 4}),
            ("docs__ddp__e800__configMap.json", "ice", {}),
        ],
    )
    def test_known_answers(self, name: str, example: str, expected: dict[str, int]) -> None:
        """Hand-checked counts for the files on their matching hosts."""
        cfg = parse_config((CORPUS / name).read_bytes())
        counts = {
            m.pool.resource_name: len(m.devices)
            for m in assign(cfg, EXAMPLE_DEVICES[example]).pools
            if m.devices
        }
        assert expected == counts

    @settings(max_examples=150, suppress_health_check=[HealthCheck.too_slow])
    @given(st.data())
    def test_generated_configs(self, data: st.DataObject) -> None:
        """Random configs (typos, case, ranges, duplicates) agree with the oracle."""
        raw = data.draw(_raw_configs)
        example = data.draw(st.sampled_from(["mixed", "i40e", "mlx5", "ixgbe", "mlx5-ib"]))
        devices = EXAMPLE_DEVICES[example]
        text = json.dumps(raw)
        expected = upstream_select(raw, devices)
        assert expected == selected(parse_config(text, compat=True), devices)
        try:
            strict = parse_config(text)
        except ConfigError:
            return
        assert expected == selected(strict, devices)


_spec = st.one_of(
    st.just(""),
    st.lists(
        st.one_of(
            st.integers(0, 9).map(str),
            st.tuples(st.integers(0, 9), st.integers(0, 9)).map(lambda t: f"{t[0]}-{t[1]}"),
            st.sampled_from(["x", "", "+1", "1-2-3", "-1"]),
        ),
        min_size=1,
        max_size=3,
    ).map(lambda xs: "#" + ",".join(xs)),
)
_selector = st.fixed_dictionaries(
    {},
    optional={
        "vendors": st.lists(st.sampled_from(["8086", "15b3", "15B3"]), max_size=2),
        "devices": st.lists(st.sampled_from(["154c", "1018", "10fb", "1533"]), max_size=2),
        "Drivers": st.lists(st.sampled_from(["iavf", "vfio-pci", "mlx5_core", "igb"]), max_size=2),
        "pfNames": st.lists(
            st.tuples(st.sampled_from(["enp59s0f0", "ENS1F1", "ens1f0", "ib0"]), _spec).map(
                "".join
            ),
            max_size=3,
        ),
        "rootDevices": st.lists(
            st.tuples(st.sampled_from(["0000:3b:00.0", "0000:5e:00.1", "3b:00.1"]), _spec).map(
                "".join
            ),
            max_size=2,
        ),
        "linkTypes": st.lists(st.sampled_from(["ether", "infiniband", "ethernet"]), max_size=2),
        "IsRdma": st.booleans(),
        "pciAddresses": st.lists(
            st.sampled_from(["0000:3b:00.2", "0000:5e:02.3", "3b:00.3"]), max_size=2
        ),
        "pfName": st.just(["ens1f0"]),
        "DEVICES": st.lists(st.sampled_from(["154c", "1018"]), max_size=1),
    },
)
_raw_configs = st.lists(
    st.tuples(
        st.sampled_from(["a", "b", "c", "d"]),
        st.one_of(_selector, st.lists(_selector, min_size=1, max_size=3)),
    ),
    max_size=3,
    unique_by=lambda t: t[0],
).map(lambda pools: {"resourceList": [{"resourceName": n, "selectors": s} for n, s in pools]})


class TestGenerate:
    """``generate_config`` pools every VF of every example with a strict config."""

    @pytest.mark.parametrize("example", sorted(EXAMPLES))
    @pytest.mark.parametrize("split", [False, True])
    def test_every_vf_pooled(self, example: str, split: bool) -> None:
        """Each VF lands in exactly the pool of its PF model (and driver when split)."""
        with tempfile.TemporaryDirectory() as root:
            build_example(example, root)
            host = Host(root)
            inventory = host.inventory()
            facts = read_selector_facts(host.sysfs)
        devices = discover_devices(inventory, facts)
        config = parse_config(
            dump_config(generate_config(inventory, facts=facts, split_by_driver=split))
        )
        result = assign(config, devices)
        vfs = [d for d in devices if d.kind is DeviceKind.VF]
        pooled = [d for m in result.pools for d in m.devices]
        assert sorted(d.address for d in vfs) == sorted(d.address for d in pooled)
        for m in result.pools:
            assert len({(d.ids, d.link_type) for d in m.devices}) == 1
            if split:
                assert len({d.driver for d in m.devices}) == 1

    def test_shared_vf_ids_pinned_to_pfs(self, fake_sysfs: FakeSysfs) -> None:
        """Two PF models with one VF id get rootDevices so that each keeps its own VFs."""
        add_nic_model(fake_sysfs, "i40e", bus=0x3B, num_vfs=2, ports=1)
        xxv = attrs_evolve_model("i40e", pf_ids=PciId(0x8086, 0x158B))
        add_nic_model(fake_sysfs, xxv, bus=0x5E, num_vfs=2, ports=1, netdev_prefix="ens5f")
        host = Host(fake_sysfs.root)
        inventory = host.inventory()
        config = generate_config(inventory)
        assert 2 == len(config.pools)
        assert all(p.selectors[0].root_devices for p in config.pools)
        result = assign(config, discover_devices(inventory))
        assert [2, 2] == [len(m.devices) for m in result.pools]

    def test_both_link_types_of_one_model(self, fake_sysfs: FakeSysfs) -> None:
        """One model in Ethernet and InfiniBand mode gets linkTypes per pool."""
        add_nic_model(fake_sysfs, "mlx5", bus=0x3B, num_vfs=2, ports=1)
        add_nic_model(
            fake_sysfs, "mlx5", bus=0x5E, num_vfs=2, ports=1, link_type=LinkType.INFINIBAND
        )
        config = generate_config(Host(fake_sysfs.root).inventory())
        assert [("ether",), ("infiniband",)] == [p.selectors[0].link_types for p in config.pools]
        assert ["mlx5_1017", "mlx5_1017_ib"] == [p.resource_name for p in config.pools]

    def test_rdma_only_when_every_vf_has_it(self) -> None:
        """isRdma is set for the mlx5 pool, whose VFs all have RDMA devices."""
        with tempfile.TemporaryDirectory() as root:
            build_example("mixed", root)
            config = generate_config(Host(root).inventory())
        assert [True, False] == [p.selectors[0].is_rdma for p in config.pools]


def attrs_evolve_model(preset: str, **changes: Any) -> Any:
    import attrs

    return attrs.evolve(PRESETS[preset], **changes)
