"""Vendor plugins: choosing the plugin of a PF, every hook, every built-in quirk."""

from __future__ import annotations

import inspect
import re
import subprocess
import sys
import zipfile
from importlib import metadata
from pathlib import Path
from types import SimpleNamespace

import attrs
import pytest

from sriovlib import Host, LinkType, PciAddress, PciId, PhysicalFunction
from sriovlib.models import VfConfig, VfKnob, VfLinkState
from sriovlib.plugins import (
    DeviceType,
    EswitchMode,
    MacFixup,
    PfMatch,
    Severity,
    Step,
    StepKind,
    VfLimit,
    hookimpl,
    hookspecs,
    manager,
)
from sriovlib.plugins.manager import BUILTINS, PfHooks, Plugins, may_declare_entry_points
from sriovlib.testing import FakeSysfs, add_nic_model

HOOKS = sorted(n for n in dir(hookspecs) if n.startswith("sriovlib_"))


def pf_hooks(fs: FakeSysfs, preset: str, **options: object) -> tuple[Host, PfHooks]:
    """Build a NIC of *preset* and return the hooks of its first PF."""
    add_nic_model(fs, preset, bus=0x3B, ports=1, **options)  # type: ignore[arg-type]
    host = Host(fs.root)
    return host, Plugins(entry_points=False).for_pf(host.pfs()[0])


def pf_of(ids: PciId, driver: str | None, total: int = 8) -> PhysicalFunction:
    return PhysicalFunction(
        address=PciAddress.parse("0000:3b:00.0"),
        ids=ids,
        driver=driver,
        netdevs=("p0",),
        total_vfs=total,
    )


class TestChoosingThePlugin:
    @pytest.mark.parametrize("preset", ["mlx5", "i40e", "ixgbe", "ice", "igb"])
    def test_each_preset_gets_its_vendor(self, fake_sysfs: FakeSysfs, preset: str) -> None:
        """Every preset NIC is driven by the plugin of the same name."""
        _, hooks = pf_hooks(fake_sysfs, preset)
        assert preset == hooks.vendor

    def test_unknown_nic_falls_back_to_generic(self) -> None:
        """A PF no plugin claims is driven by the generic plugin."""
        assert "generic" == Plugins(entry_points=False).vendor(pf_of(PciId(0x1AF4, 1), "foo"))

    def test_pci_id_match_without_driver(self) -> None:
        """An unbound PF with known ids is claimed by its PCI id."""
        assert "i40e" == Plugins(entry_points=False).vendor(pf_of(PciId(0x8086, 0x1572), None))

    def test_driver_beats_pci_id(self) -> None:
        """A plugin matching the driver wins over one matching only the PCI id."""

        class Acme:
            @hookimpl
            def sriovlib_match_pf(self, pf: PhysicalFunction) -> PfMatch | None:
                return PfMatch.by_driver("acme_en") if pf.driver == "acme_en" else None

        plugins = Plugins(entry_points=False, extra=[("acme", Acme())])
        # i40e's ids, bound to acme_en: i40e matches by id, acme by driver
        assert "acme" == plugins.vendor(pf_of(PciId(0x8086, 0x1572), "acme_en"))
        assert "i40e" == plugins.vendor(pf_of(PciId(0x8086, 0x1572), "i40e"))

    def test_only_the_chosen_plugin_and_generic_answer(self) -> None:
        """Another vendor's answers never reach a PF it does not drive."""
        hooks = Plugins(entry_points=False).for_pf(pf_of(PciId(0x1AF4, 1), "virtio", total=200))
        assert 200 == hooks.vf_limit().max_vfs  # not igb's 7 nor ixgbe's 63

    def test_disabled_by_environment(self) -> None:
        """SRIOVLIB_DISABLED_PLUGINS removes a built-in; its PFs fall back to generic."""
        plugins = Plugins(entry_points=False, environ={"SRIOVLIB_DISABLED_PLUGINS": "igb, ice"})
        assert {"igb", "ice"} == plugins.disabled
        assert "igb" not in [i.name for i in plugins.info()]
        assert "generic" == plugins.vendor(pf_of(PciId(0x8086, 0x10C9), "igb"))

    def test_generic_cannot_be_disabled(self) -> None:
        """The fallback plugin stays even when named in the disable list."""
        plugins = Plugins(entry_points=False, disabled=["generic"])
        assert "generic" in [i.name for i in plugins.info()]

    def test_info_lists_builtins_with_hooks(self) -> None:
        """info() lists the six built-ins, in registration order, with their hooks."""
        infos = Plugins(entry_points=False).info()
        assert list(BUILTINS) == [i.name for i in infos]
        assert all(i.builtin for i in infos)
        # generic answers every hook but these three: no claim, no vendor-specific health
        # (doctor checks what all drivers share), "release everything" is the default
        generic_skips = {"sriovlib_match_pf", "sriovlib_release_knobs", "sriovlib_health"}
        assert set(HOOKS) - generic_skips == set(infos[0].hooks)
        assert all("sriovlib_match_pf" in i.hooks for i in infos[1:])


class TestEntryPointLoading:
    def test_broken_plugin_is_reported_and_others_load(
        self, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A plugin whose import fails is reported by name; a good one still loads."""

        class GoodPlugin:
            @hookimpl
            def sriovlib_vf_limit(self) -> VfLimit:
                return VfLimit(1, "good")

        def fake_entry_points(group: str) -> list[SimpleNamespace]:
            assert "sriovlib" == group
            dist = SimpleNamespace(name="sriovlib-thirdparty", version="9.9")

            def broken() -> object:
                raise ImportError("No module named 'missing_dep'")

            return [
                SimpleNamespace(name="broken", dist=dist, load=broken),
                SimpleNamespace(name="good", dist=dist, load=GoodPlugin),
            ]

        monkeypatch.setattr(metadata, "entry_points", fake_entry_points)
        monkeypatch.setattr(manager, "may_declare_entry_points", lambda group: True)
        plugins = Plugins()
        assert ["broken"] == [e.name for e in plugins.errors]
        assert "ImportError: No module named 'missing_dep'" == plugins.errors[0].error
        (good,) = [i for i in plugins.info() if i.name == "good"]
        assert ("9.9", "sriovlib-thirdparty", ("sriovlib_vf_limit",)) == (
            good.version,
            good.distribution,
            good.hooks,
        )

    def test_invalid_hookimpl_is_reported(self, monkeypatch: pytest.MonkeyPatch) -> None:
        """A plugin implementing an unknown hook name is rejected, not fatal."""

        class Typo:
            @hookimpl
            def sriovlib_vf_limt(self) -> None:
                return None

        dist = SimpleNamespace(name="sriovlib-typo", version="1")
        monkeypatch.setattr(
            metadata,
            "entry_points",
            lambda group: [SimpleNamespace(name="typo", dist=dist, load=Typo)],
        )
        monkeypatch.setattr(manager, "may_declare_entry_points", lambda group: True)
        plugins = Plugins()
        assert ["typo"] == [e.name for e in plugins.errors]
        assert "sriovlib_vf_limt" in plugins.errors[0].error
        assert "typo" not in [i.name for i in plugins.info()]


def fake_distribution(site: Path, name: str, entry_points: str, module: str = "") -> Path:
    """An installed distribution in *site*: its dist-info (METADATA, entry_points.txt)
    and, if given, the source of its module ``<name>_plugin``."""
    info = site / f"{name}-1.0.dist-info"
    info.mkdir(parents=True)
    (info / "METADATA").write_text(f"Metadata-Version: 2.1\nName: {name}\nVersion: 1.0\n")
    (info / "entry_points.txt").write_text(entry_points)
    if module:
        (site / f"{name}_plugin.py").write_text(module)
    return info


class TestEntryPointDiscovery:
    """importlib.metadata is asked only when a distribution may declare the group."""

    def test_a_declared_group_is_seen(self, tmp_path: Path) -> None:
        """A dist-info whose entry_points.txt has a [sriovlib] section counts."""
        fake_distribution(tmp_path, "other", "[console_scripts]\nx = y:z\n")
        assert not may_declare_entry_points("sriovlib", [str(tmp_path)])
        fake_distribution(
            tmp_path, "acme", "[console_scripts]\na = b:c\n\n [sriovlib] \nacme = m\n"
        )
        assert may_declare_entry_points("sriovlib", [str(tmp_path)])
        assert not may_declare_entry_points("sriovlib-other", [str(tmp_path)])

    def test_egg_info_counts_and_missing_directories_do_not(self, tmp_path: Path) -> None:
        """egg-info directories are read too; a missing path entry holds nothing."""
        egg_info = tmp_path / "Legacy.EGG-INFO"
        egg_info.mkdir()
        (egg_info / "entry_points.txt").write_text("[sriovlib]\nlegacy = legacy\n")
        (tmp_path / "plain.egg-info").write_text("Name: plain\n")  # a file: no entry points
        assert may_declare_entry_points("sriovlib", [str(tmp_path / "missing"), str(tmp_path)])
        assert not may_declare_entry_points("sriovlib", [str(tmp_path / "missing")])

    def test_what_it_cannot_read_is_left_to_importlib_metadata(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A zip file, an egg, a non-string entry, a non-UTF-8 entry_points.txt or a
        finder that lists distributions: importlib.metadata is asked."""
        archive = tmp_path / "plugins.zip"
        with zipfile.ZipFile(archive, "w") as z:
            z.writestr("empty.txt", "")
        assert may_declare_entry_points("sriovlib", [str(archive)])
        assert may_declare_entry_points("sriovlib", [str(tmp_path / "acme-1.0-py3.11.egg")])
        assert may_declare_entry_points("sriovlib", [tmp_path])
        info = fake_distribution(tmp_path / "latin", "latin", "")
        (info / "entry_points.txt").write_bytes(b"[sriovlib]\nna\xefve = x\n")
        assert may_declare_entry_points("sriovlib", [str(tmp_path / "latin")])
        assert not may_declare_entry_points("sriovlib", [])

        class Lister:
            def find_distributions(self, context: object = None) -> list[object]:
                return []

        monkeypatch.setattr(sys, "meta_path", [Lister(), *sys.meta_path])
        assert may_declare_entry_points("sriovlib", [])

    def test_a_plugin_on_the_path_is_loaded(
        self, tmp_path: Path, monkeypatch: pytest.MonkeyPatch
    ) -> None:
        """A real distribution on sys.path declaring a plugin: it is found, loaded and
        listed with its distribution's version."""
        module = (
            "from sriovlib.plugins import VfLimit, hookimpl\n"
            "@hookimpl\n"
            "def sriovlib_vf_limit():\n"
            "    return VfLimit(2, 'path plugin')\n"
        )
        fake_distribution(tmp_path, "pathy", "[sriovlib]\npathy = pathy_plugin\n", module)
        monkeypatch.syspath_prepend(str(tmp_path))
        plugins = Plugins()
        assert () == plugins.errors
        (pathy,) = [i for i in plugins.info() if i.name == "pathy"]
        assert ("1.0", "pathy", False) == (pathy.version, pathy.distribution, pathy.builtin)

    def test_builtins_alone_do_not_import_importlib_metadata(self, tmp_path: Path) -> None:
        """In a fresh interpreter where no distribution declares the group, loading the
        plugins imports no importlib.metadata; with one declared, it does and loads it."""
        code = (
            "import sys\n"
            "from sriovlib.plugins.manager import Plugins\n"
            "names = [name for name, _ in Plugins().pm.list_name_plugin()]\n"
            "print('importlib.metadata' in sys.modules, names[-1])\n"
        )
        fake_distribution(tmp_path, "other", "[console_scripts]\nx = y:z\n")
        run = [sys.executable, "-c", code]
        alone = subprocess.run(run, capture_output=True, text=True, check=True, cwd=tmp_path)
        assert "False igb" == alone.stdout.strip()
        fake_distribution(tmp_path, "late", "[sriovlib]\nlate = late_plugin\n", "X = 1\n")
        found = subprocess.run(run, capture_output=True, text=True, check=True, cwd=tmp_path)
        assert "True late" == found.stdout.strip()


class TestHooks:
    """One test per hook (test_hook_<name>), each on the plugin it matters most for."""

    def test_hook_sriovlib_match_pf(self, fake_sysfs: FakeSysfs) -> None:
        """mlx5 claims a ConnectX-5 by its driver."""
        host, _ = pf_hooks(fake_sysfs, "mlx5")
        from sriovlib.vendors import mlx5

        assert PfMatch.by_driver("mlx5_core") == mlx5.sriovlib_match_pf(host.pfs()[0])

    def test_hook_sriovlib_vf_limit(self, fake_sysfs: FakeSysfs) -> None:
        """igb caps at 7 VFs whatever sriov_totalvfs says."""
        fake_sysfs.add_pf(
            ids=PciId(0x8086, 0x10C9),
            driver="igb",
            vf_ids=PciId(0x8086, 0x10CA),
            vf_driver="igbvf",
            total_vfs=8,
            netdev="eth0",
        )
        hooks = Plugins(entry_points=False).for_pf(Host(fake_sysfs.root).pfs()[0])
        limit = hooks.vf_limit()
        assert 7 == limit.max_vfs
        assert "igb" in limit.reason

    def test_hook_sriovlib_check_vf_config(self, fake_sysfs: FakeSysfs) -> None:
        """igb rejects a link_state before any kernel call."""
        _, hooks = pf_hooks(fake_sysfs, "igb")
        issues = hooks.check_vf_config(VfConfig(link_state=VfLinkState.ENABLE))
        assert [Severity.ERROR] == [i.severity for i in issues]
        assert "link state" in issues[0].message

    def test_hook_sriovlib_numvfs_plan(self, fake_sysfs: FakeSysfs) -> None:
        """The generic plan goes through 0 between two non-zero counts."""
        _, hooks = pf_hooks(fake_sysfs, "igb")
        plan = hooks.numvfs_plan(4, 2)
        assert (Step(StepKind.WRITE_NUMVFS, 0), Step(StepKind.WRITE_NUMVFS, 2)) == plan.steps
        assert plan.disruptive
        assert () == hooks.numvfs_plan(3, 3).steps

    def test_hook_sriovlib_mac_fixup(self, fake_sysfs: FakeSysfs) -> None:
        """igb needs a VF driver rebind for an admin MAC to reach the netdev."""
        host, hooks = pf_hooks(fake_sysfs, "igb", num_vfs=1)
        assert MacFixup.REBIND == hooks.mac_fixup(host.vfs()[0])

    def test_hook_sriovlib_vf_driver(self, fake_sysfs: FakeSysfs) -> None:
        """Generic: vfio-pci for userspace, the VF's kernel driver for a netdev."""
        host, hooks = pf_hooks(fake_sysfs, "i40e", num_vfs=1)
        vf = host.vfs()[0]
        assert "vfio-pci" == hooks.vf_driver(vf, DeviceType.VFIO)
        assert "iavf" == hooks.vf_driver(vf, DeviceType.NETDEVICE)

    def test_hook_sriovlib_device_specs(self, fake_sysfs: FakeSysfs) -> None:
        """A vfio-pci VF brings its IOMMU group's device node."""
        host, hooks = pf_hooks(fake_sysfs, "ice", num_vfs=2, vfio_vfs=[1])
        vf = host.vfs()[1]
        specs = hooks.device_specs(vf, DeviceType.VFIO)
        assert ("/dev/vfio/vfio", f"/dev/vfio/{vf.iommu_group}") == specs.devices

    def test_hook_sriovlib_health(self, fake_sysfs: FakeSysfs) -> None:
        """mlx5 flags a VF put on vfio-pci, which its bifurcated driver does not need."""
        host, hooks = pf_hooks(fake_sysfs, "mlx5", num_vfs=3, vfio_vfs=[2])
        issues = hooks.health(list(host.vfs("ens1f0")))
        assert [Severity.WARNING] == [i.severity for i in issues]
        assert "VF 2 (0000:3b:00.3) is on vfio-pci" in issues[0].message
        assert issues[0].command is not None
        assert "drivers/mlx5_core/bind" in issues[0].command
        assert [] == hooks.health(list(host.vfs("ens1f0"))[:2])

    def test_hook_sriovlib_release_knobs(self, fake_sysfs: FakeSysfs) -> None:
        """Generic release restores every changed setting."""
        _, hooks = pf_hooks(fake_sysfs, "i40e")
        changed = frozenset({VfKnob.MAC, VfKnob.VLAN, VfKnob.LINK_STATE})
        assert changed == hooks.release_knobs(changed)


class TestVendorQuirks:
    """Each upstream quirk the vendor notes name; each test fails if its handling goes."""

    @pytest.mark.parametrize(
        ("preset", "total", "limit"),
        [("igb", 8, 7), ("ixgbe", 64, 63), ("i40e", 200, 128), ("ice", 300, 256), ("mlx5", 16, 16)],
    )
    def test_vf_limits(self, fake_sysfs: FakeSysfs, preset: str, total: int, limit: int) -> None:
        """Per-driver VF limits: igb 7, ixgbe 63, i40e 128, ice 256, mlx5 firmware."""
        from sriovlib.testing import PRESETS

        model = attrs.evolve(PRESETS[preset], total_vfs=total)
        add_nic_model(fake_sysfs, model, bus=0x3B, ports=1)
        hooks = Plugins(entry_points=False).for_pf(Host(fake_sysfs.root).pfs()[0])
        assert limit == hooks.vf_limit().max_vfs

    def test_mlx5_limit_explains_firmware(self, fake_sysfs: FakeSysfs) -> None:
        """mlx5's limit says how to raise it: mstconfig NUM_OF_VFS and a reboot."""
        _, hooks = pf_hooks(fake_sysfs, "mlx5")
        assert "NUM_OF_VFS" in hooks.vf_limit().raise_hint

    def test_82599_jumbo_needs_pf_mtu(self, fake_sysfs: FakeSysfs) -> None:
        """82599: a VF MTU above 1500 is refused while the PF MTU is 1500."""
        _, hooks = pf_hooks(fake_sysfs, "ixgbe")
        issues = hooks.check_vf_config(VfConfig(), vf_mtu=9000, pf_mtu=1500)
        assert [Severity.ERROR] == [i.severity for i in issues]
        assert "ip link set enp4s0f0 mtu 9000" == issues[0].hint
        assert [] == hooks.check_vf_config(VfConfig(), vf_mtu=9000, pf_mtu=9000)

    def test_igb_no_link_state_nor_min_rate(self, fake_sysfs: FakeSysfs) -> None:
        """igb: link_state and min_tx_rate are errors, max_tx_rate above 1000 too."""
        _, hooks = pf_hooks(fake_sysfs, "igb")
        assert 3 == len(
            hooks.check_vf_config(VfConfig(link_state="auto", min_tx_rate=10, max_tx_rate=2000))
        )
        assert [] == hooks.check_vf_config(VfConfig(max_tx_rate=100, trust=True))

    def test_igb_release_skips_missing_knobs(self, fake_sysfs: FakeSysfs) -> None:
        """igb release never writes back link_state (sriov-cni's unconditional reset fails)."""
        _, hooks = pf_hooks(fake_sysfs, "igb")
        changed = frozenset({VfKnob.LINK_STATE, VfKnob.SPOOFCHK, VfKnob.MIN_TX_RATE})
        assert frozenset({VfKnob.SPOOFCHK}) == hooks.release_knobs(changed)

    def test_mlx5_switchdev_order(self, fake_sysfs: FakeSysfs) -> None:
        """mlx5: legacy, numvfs through 0, unbind VFs, switchdev, rebind."""
        _, hooks = pf_hooks(fake_sysfs, "mlx5")
        plan = hooks.numvfs_plan(2, 4, EswitchMode.SWITCHDEV)
        assert [
            "set-eswitch-mode legacy",
            "write-numvfs 0",
            "write-numvfs 4",
            "unbind-vfs",
            "set-eswitch-mode switchdev",
            "bind-vfs",
        ] == [str(s) for s in plan.steps]

    def test_ice_switchdev_order(self, fake_sysfs: FakeSysfs) -> None:
        """ice: numvfs 0, then switchdev, then numvfs (the reverse of mlx5)."""
        _, hooks = pf_hooks(fake_sysfs, "ice")
        plan = hooks.numvfs_plan(2, 4, EswitchMode.SWITCHDEV)
        assert ["write-numvfs 0", "set-eswitch-mode switchdev", "write-numvfs 4"] == [
            str(s) for s in plan.steps
        ]

    @pytest.mark.parametrize(
        ("preset", "fixup"),
        [
            ("mlx5", MacFixup.SET_NETDEV_MAC),
            ("igb", MacFixup.REBIND),
            ("ixgbe", MacFixup.REBIND),
            ("i40e", MacFixup.WAIT_NETDEV),
            ("ice", MacFixup.WAIT_NETDEV),
        ],
    )
    def test_mac_fixups(self, fake_sysfs: FakeSysfs, preset: str, fixup: MacFixup) -> None:
        """How the admin MAC reaches a bound VF netdev, per driver."""
        host, hooks = pf_hooks(fake_sysfs, preset, num_vfs=1)
        assert fixup == hooks.mac_fixup(host.vfs()[0])

    def test_i40e_trust_for_own_mac(self, fake_sysfs: FakeSysfs) -> None:
        """i40e/iavf: an admin MAC without trust is flagged (VF can't override it)."""
        _, hooks = pf_hooks(fake_sysfs, "i40e")
        issues = hooks.check_vf_config(VfConfig(mac="02:00:00:00:00:01"))
        assert any("untrusted" in i.message for i in issues)
        assert not any(
            "untrusted" in i.message
            for i in hooks.check_vf_config(VfConfig(mac="02:00:00:00:00:01", trust=True))
        )

    def test_mlx5_dpdk_stays_on_mlx5_core(self, fake_sysfs: FakeSysfs) -> None:
        """mlx5 is bifurcated: DPDK VFs keep mlx5_core, not vfio-pci."""
        host, hooks = pf_hooks(fake_sysfs, "mlx5", num_vfs=1)
        assert "mlx5_core" == hooks.vf_driver(host.vfs()[0], DeviceType.VFIO)

    def test_mlx5_rdma_devices(self, fake_sysfs: FakeSysfs) -> None:
        """An mlx5 VF brings rdma_cm and its RDMA device for the container."""
        host, hooks = pf_hooks(fake_sysfs, "mlx5", num_vfs=1, link_type=LinkType.ETHERNET)
        vf = host.vfs()[0]
        specs = hooks.device_specs(vf, DeviceType.NETDEVICE)
        assert ("/dev/infiniband/rdma_cm",) == specs.devices
        assert vf.rdma_devices == specs.rdma_devices


class TestDocumentation:
    def test_every_hook_is_documented(self) -> None:
        """Each hookspec has a docstring with Args and Returns for the author's guide."""
        for name in HOOKS:
            doc = inspect.getdoc(getattr(hookspecs, name)) or ""
            assert len(doc) > 200, name
            assert "Returns:" in doc, name
            params = inspect.signature(getattr(hookspecs, name)).parameters
            for param in params:
                assert re.search(rf"^\s+{param}:", doc, re.M), f"{name}: {param} undocumented"

    def test_every_hook_has_a_test(self) -> None:
        """A test named test_hook_<hook> exists for every hook."""
        tests = {n for n in dir(TestHooks) if n.startswith("test_hook_")}
        assert {f"test_hook_{h}" for h in HOOKS} == tests

    def test_guide_renders_the_hookspecs(self) -> None:
        """The plugin author's guide pulls in the hookspec module and the example plugin."""
        guide = (Path(__file__).parents[1] / "docs/plugins.md").read_text()
        assert "::: sriovlib.plugins.hookspecs" in guide
        assert "sriovlib_acme" in guide
