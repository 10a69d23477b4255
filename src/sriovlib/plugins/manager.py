"""Loading plugins and answering hooks for one PF.

Order of registration: the built-in vendors (explicitly, from :data:`BUILTINS`), then
third-party plugins from the entry-point group ``sriovlib``. Each entry point is loaded
on its own: one that fails to import or to validate is recorded in
:attr:`Plugins.errors` by name and the others keep working. Names listed in the
environment variable ``SRIOVLIB_DISABLED_PLUGINS`` (comma-separated) are not loaded.

Finding entry points with :mod:`importlib.metadata` costs a CNI invocation more than
the rest of its plugin setup (importing it pulls in ``email``, ``zipfile``, ``csv``...
and it parses every installed distribution's metadata), and almost always finds
nothing. So a look at the installed distributions comes first
(:func:`may_declare_entry_points`): only if one of them declares the ``sriovlib``
group in its ``entry_points.txt``, or the import path holds something that look does
not understand (a zip file, an egg, a finder that lists distributions of its own), is
:mod:`importlib.metadata` imported and asked. Either way the plugins found are the
same. Built-in plugins never need it; their version (:meth:`Plugins.info`) is read on
demand.
"""

from __future__ import annotations

import importlib
import logging
import os
import sys
from collections.abc import Iterable, Mapping
from typing import TYPE_CHECKING, Any

import attrs
import pluggy

from sriovlib.plugins import NAME, hookspecs
from sriovlib.plugins.types import (
    DeviceSpecs,
    DeviceType,
    EswitchMode,
    Issue,
    MacFixup,
    NumVfsPlan,
    PfMatch,
    VfLimit,
)

if TYPE_CHECKING:
    from sriovlib.models import PhysicalFunction, VfConfig, VfKnob, VirtualFunction

__all__ = [
    "BUILTINS",
    "DISABLE_ENV",
    "PfHooks",
    "PluginInfo",
    "PluginLoadError",
    "Plugins",
    "may_declare_entry_points",
]

log = logging.getLogger(__name__)

#: Built-in vendor plugins, as module names under ``sriovlib.vendors``.
BUILTINS = ("generic", "mlx5", "i40e", "ixgbe", "ice", "igb")
GENERIC = "generic"
DISABLE_ENV = "SRIOVLIB_DISABLED_PLUGINS"


@attrs.frozen
class PluginInfo:
    """What ``sriovlib plugins`` shows about one registered plugin."""

    name: str
    version: str
    builtin: bool
    hooks: tuple[str, ...]
    distribution: str | None = None


@attrs.frozen
class PluginLoadError:
    """A third-party plugin that could not be loaded, and why."""

    name: str
    distribution: str | None
    error: str


class Plugins:
    """The plugin manager of one Host.

    Args:
        entry_points: Load third-party plugins from the ``sriovlib`` entry-point group.
        disabled: Plugin names not to load; default from ``SRIOVLIB_DISABLED_PLUGINS``.
        extra: Additional ``(name, plugin)`` pairs registered after everything else
            (tests and embedding applications).
    """

    def __init__(
        self,
        *,
        entry_points: bool = True,
        disabled: Iterable[str] | None = None,
        extra: Iterable[tuple[str, object]] = (),
        environ: Mapping[str, str] = os.environ,
    ) -> None:
        if disabled is None:
            disabled = (n.strip() for n in environ.get(DISABLE_ENV, "").split(","))
        self.disabled = frozenset(n for n in disabled if n)
        self.pm = pluggy.PluginManager(NAME)
        self.pm.add_hookspecs(hookspecs)
        self._builtin: set[str] = set()
        self._versions: dict[str, tuple[str, str | None]] = {}
        errors: list[PluginLoadError] = []
        for name in BUILTINS:
            if name in self.disabled and name != GENERIC:
                continue
            module = importlib.import_module(f"sriovlib.vendors.{name}")
            self.pm.register(module, name=name)
            self._builtin.add(name)
        if entry_points and may_declare_entry_points(NAME):
            errors.extend(self._load_entry_points())
        for name, plugin in extra:
            self.pm.register(plugin, name=name)
            self._versions[name] = ("", None)
        self.pm.check_pending()
        self.errors: tuple[PluginLoadError, ...] = tuple(errors)

    def _load_entry_points(self) -> list[PluginLoadError]:
        from importlib import metadata

        errors = []
        for ep in metadata.entry_points(group=NAME):
            dist = ep.dist.name if ep.dist is not None else None
            if ep.name in self.disabled:
                log.info("plugin %s disabled by %s", ep.name, DISABLE_ENV)
                continue
            if self.pm.get_plugin(ep.name) is not None:
                errors.append(PluginLoadError(ep.name, dist, "name already taken by a built-in"))
                continue
            try:
                plugin = ep.load()
                self.pm.register(plugin, name=ep.name)
                self.pm.check_pending()
            except Exception as e:
                if self.pm.get_plugin(ep.name) is not None:
                    self.pm.unregister(name=ep.name)
                message = f"{type(e).__name__}: {e}"
                log.warning("plugin %s (%s) failed to load: %s", ep.name, dist, message)
                errors.append(PluginLoadError(ep.name, dist, message))
                continue
            version = ep.dist.version if ep.dist is not None else ""
            self._versions[ep.name] = (version, dist)
        return errors

    # -- introspection ---------------------------------------------------------------

    def info(self) -> list[PluginInfo]:
        """Every registered plugin with its version and implemented hooks."""
        hooks_of: dict[str, list[str]] = {}
        for hook_name in sorted(self.pm.hook.__dict__):
            caller = getattr(self.pm.hook, hook_name)
            for impl in caller.get_hookimpls():
                hooks_of.setdefault(impl.plugin_name, []).append(hook_name)
        result = []
        for name, _plugin in self.pm.list_name_plugin():
            version, dist = (
                (_own_version(), "sriovlib")
                if name in self._builtin
                else self._versions.get(name, ("", None))
            )
            result.append(
                PluginInfo(
                    name=name,
                    version=version,
                    builtin=name in self._builtin,
                    hooks=tuple(hooks_of.get(name, ())),
                    distribution=dist,
                )
            )
        return result

    # -- choosing the plugin of a PF -----------------------------------------------------

    def vendor(self, pf: PhysicalFunction) -> str:
        """The name of the plugin that drives *pf* (``generic`` when none claims it)."""
        best: tuple[int, str] | None = None
        for impl in self.pm.hook.sriovlib_match_pf.get_hookimpls()[::-1]:  # call order
            args = {"pf": pf}
            match = impl.function(*(args[name] for name in impl.argnames))
            if match is not None and not isinstance(match, PfMatch):
                raise TypeError(
                    f"plugin {impl.plugin_name}: sriovlib_match_pf returned "
                    f"{match!r}, not a PfMatch or None"
                )
            if match is not None and (best is None or match.kind > best[0]):
                best = (match.kind, impl.plugin_name)
        return GENERIC if best is None else best[1]

    def for_pf(self, pf: PhysicalFunction) -> PfHooks:
        """The hooks of *pf*'s plugin, falling back to the generic plugin."""
        return PfHooks(self, pf, self.vendor(pf))


class PfHooks:
    """Typed calls of every hook for one PF, answered by its plugin, then generic."""

    def __init__(self, plugins: Plugins, pf: PhysicalFunction, vendor: str) -> None:
        self.pf = pf
        self.vendor = vendor
        keep = {vendor, GENERIC}
        self._others = [p for n, p in plugins.pm.list_name_plugin() if n not in keep]
        self._pm = plugins.pm

    def __repr__(self) -> str:
        return f"PfHooks(pf={self.pf.address}, vendor={self.vendor!r})"

    def _call(self, hook: str, **kwargs: Any) -> Any:
        caller = self._pm.subset_hook_caller(hook, remove_plugins=self._others)
        return caller(pf=self.pf, **kwargs)

    def vf_limit(self) -> VfLimit:
        """See :func:`~sriovlib.plugins.hookspecs.sriovlib_vf_limit`."""
        limit: VfLimit = self._call("sriovlib_vf_limit")
        return limit

    def check_vf_config(
        self, config: VfConfig, *, vf_mtu: int | None = None, pf_mtu: int | None = None
    ) -> list[Issue]:
        """See :func:`~sriovlib.plugins.hookspecs.sriovlib_check_vf_config`."""
        answers = self._call(
            "sriovlib_check_vf_config", config=config, vf_mtu=vf_mtu, pf_mtu=pf_mtu
        )
        return [issue for answer in answers for issue in answer]

    def numvfs_plan(
        self, current: int, target: int, eswitch_mode: EswitchMode | None = None
    ) -> NumVfsPlan:
        """See :func:`~sriovlib.plugins.hookspecs.sriovlib_numvfs_plan`."""
        plan: NumVfsPlan = self._call(
            "sriovlib_numvfs_plan", current=current, target=target, eswitch_mode=eswitch_mode
        )
        return plan

    def mac_fixup(self, vf: VirtualFunction) -> MacFixup:
        """See :func:`~sriovlib.plugins.hookspecs.sriovlib_mac_fixup`."""
        fixup: MacFixup = self._call("sriovlib_mac_fixup", vf=vf)
        return fixup

    def vf_driver(self, vf: VirtualFunction, device_type: DeviceType) -> str:
        """See :func:`~sriovlib.plugins.hookspecs.sriovlib_vf_driver`."""
        driver: str = self._call("sriovlib_vf_driver", vf=vf, device_type=device_type)
        return driver

    def device_specs(self, vf: VirtualFunction, device_type: DeviceType) -> DeviceSpecs:
        """See :func:`~sriovlib.plugins.hookspecs.sriovlib_device_specs`; answers merged."""
        answers: list[DeviceSpecs] = self._call(
            "sriovlib_device_specs", vf=vf, device_type=device_type
        )
        devices: list[str] = []
        mounts: list[tuple[str, str]] = []
        env: dict[str, str] = {}
        rdma: list[str] = []
        for answer in reversed(answers):  # generic first, the vendor may override env
            devices.extend(d for d in answer.devices if d not in devices)
            mounts.extend(m for m in answer.mounts if m not in mounts)
            rdma.extend(r for r in answer.rdma_devices if r not in rdma)
            env.update(answer.env)
        return DeviceSpecs(
            devices=tuple(devices),
            mounts=tuple(mounts),
            env=tuple(env.items()),
            rdma_devices=tuple(rdma),
        )

    def health(self, vfs: list[VirtualFunction]) -> list[Issue]:
        """See :func:`~sriovlib.plugins.hookspecs.sriovlib_health`."""
        answers = self._call("sriovlib_health", vfs=vfs)
        return [issue for answer in reversed(answers) for issue in answer]

    def release_knobs(self, changed: frozenset[VfKnob]) -> frozenset[VfKnob]:
        """See :func:`~sriovlib.plugins.hookspecs.sriovlib_release_knobs`."""
        knobs: frozenset[VfKnob] | None = self._call("sriovlib_release_knobs", changed=changed)
        return changed if knobs is None else knobs & changed


def _own_version() -> str:
    from importlib import metadata

    try:
        return metadata.version("sriovlib")
    except metadata.PackageNotFoundError:  # running from a source tree
        return "0+unknown"


def may_declare_entry_points(group: str, path: Iterable[object] | None = None) -> bool:
    """Whether an installed distribution may declare entry points in *group*: what
    decides if :mod:`importlib.metadata` is asked at all.

    Looks where :mod:`importlib.metadata` looks — each directory of *path* (default
    :data:`sys.path`; ``""`` is the working directory) for ``*.dist-info`` and
    ``*.egg-info`` entries — and reads only their ``entry_points.txt``, parsed as
    :mod:`importlib.metadata` parses it: True as soon as one has a ``[group]`` section.
    Also True (let :mod:`importlib.metadata`, which knows, decide) for what this look does
    not read: a path entry that is not a directory name (a zip file, an ``.egg``, not a
    string), a file that is not UTF-8, and a finder on :data:`sys.meta_path` other than
    the standard path finder that can list distributions. False only when no
    distribution can declare the group.
    """
    import importlib.machinery

    for finder in sys.meta_path:
        if finder is not importlib.machinery.PathFinder and hasattr(finder, "find_distributions"):
            return True
    for entry in sys.path if path is None else path:
        if not isinstance(entry, str) or entry.lower().endswith(".egg"):
            return True
        try:
            names = os.listdir(entry or ".")
        except NotADirectoryError:  # a zip file
            return True
        except OSError:  # missing or unreadable: importlib.metadata finds nothing there
            continue
        for name in names:
            if name.lower().endswith((".dist-info", ".egg-info")) and _declares(
                os.path.join(entry or ".", name, "entry_points.txt"), group
            ):
                return True
    return False


def _declares(entry_points_txt: str, group: str) -> bool:
    try:
        with open(entry_points_txt, "rb") as f:
            text = f.read().decode()
    except UnicodeDecodeError:
        return True
    except OSError:  # most distributions have no entry points (or it is an egg-info file)
        return False
    for raw in text.splitlines():
        line = raw.strip()
        if line.startswith("[") and line.endswith("]") and line.strip("[]") == group:
            return True
    return False
