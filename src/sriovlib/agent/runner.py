"""The agent as one object: read the node, serve every pool, stop cleanly.

:class:`Agent` composes the parts: discovery through the :class:`~sriovlib.host.Host`,
the pools of the config (:func:`~sriovlib.agent.resources.build_resources`), one
:class:`~sriovlib.agent.deviceplugin.DevicePluginService` and
:class:`~sriovlib.agent.kubelet.PluginServer` per pool, the
:class:`~sriovlib.agent.kubelet.Supervisor`, the
:class:`~sriovlib.agent.health.HealthWatch`, and the attachment service's allocation
store (which devices CNI attachments hold), and with ``AgentOptions.dra`` the DRA kubelet
plugin (:class:`~sriovlib.agent.dra.DraPlugin`), which, given the API server, reads its
claims there and publishes the pools' VFs as ResourceSlices
(:class:`~sriovlib.agent.draslices.SlicePublisher`, synced on every wake-up of the health
watch and after every reconcile). :meth:`Agent.stop` ends the streams, stops
the servers and removes their sockets; files are only ever replaced atomically, so a
stop at any instant leaves nothing half-written.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import TYPE_CHECKING

import attrs

from sriovlib.agent.cniserver import CniServer
from sriovlib.agent.deviceplugin import DevicePluginService
from sriovlib.agent.dra import DraOptions, DraPlugin
from sriovlib.agent.draclaims import ApiServerClaims, ClaimSource, NoApiServer
from sriovlib.agent.draevents import ClaimEvents
from sriovlib.agent.draslices import SlicePublisher
from sriovlib.agent.grants import Granter
from sriovlib.agent.health import RESCAN_INTERVAL, HealthWatch
from sriovlib.agent.kubelet import PluginServer, Supervisor
from sriovlib.agent.ondemand import OnDemand, OnDemandMode, OnDemandOptions, Resizer
from sriovlib.agent.podresources import PodResourcesClient
from sriovlib.agent.reclaim import DEFAULT_GRACE, Reclaimer, ReclaimMode
from sriovlib.agent.resources import Resource, build_resources
from sriovlib.allocation import Policy
from sriovlib.attachments import AttachmentService
from sriovlib.exceptions import SriovError
from sriovlib.host import Host
from sriovlib.models import PciAddress
from sriovlib.pools import DEFAULT_PREFIX, Pool, PoolConfig, assign, discover_devices

if TYPE_CHECKING:
    from sriovlib.agent.kubeapi import KubeClient
    from sriovlib.agent.metrics import Metrics
    from sriovlib.policy import VfBudget

__all__ = [
    "DEFAULT_CDI_DIR",
    "DEFAULT_DEVICE_INFO_DIR",
    "DEFAULT_DEVICE_PLUGIN_DIR",
    "Agent",
    "AgentOptions",
    "ConfigFile",
]

log = logging.getLogger("sriovlib.agent")

DEFAULT_DEVICE_PLUGIN_DIR = Path("/var/lib/kubelet/device-plugins")
DEFAULT_DEVICE_INFO_DIR = Path("/var/run/k8s.cni.cncf.io/devinfo/dp")
DEFAULT_CDI_DIR = Path("/var/run/cdi")


@attrs.frozen(kw_only=True)
class AgentOptions:
    """How the agent serves.

    Attributes:
        resource_prefix: The default resource prefix (``intel.com``).
        device_plugin_dir: The kubelet's device-plugin directory.
        state_dir: The attachment service's state directory.
        device_info_dir: Where the Multus device-info files go (None: none are written).
        cdi_dir: Where the CDI spec files go, or None without CDI.
        policy: How a request is spread over PFs.
        pf_carrier_health: Whether devices are unhealthy while their PF is down or has no
            carrier, for the pools not in *pf_carrier_pools*.
        pf_carrier_pools: The same, per pool (by resource name, with or without prefix).
        rescan_interval: Seconds between health assessments when no kernel event comes.
        metrics_address: Where the Prometheus endpoint listens (``host:port``), or None.
        reclaim: What to do with VFs held for pods whose namespace is gone.
        reclaim_grace: Seconds such a record must stay orphaned first.
        pod_resources_socket: The kubelet's pod-resources socket, whose absence of a
            served device from every pod is another sign of an orphan; None: not used.
        dra: How the DRA kubelet plugin serves, or None for none.
        on_demand: How the DRA driver's VFs on demand run (PFs with a ``vfBudget``).
    """

    resource_prefix: str = DEFAULT_PREFIX
    device_plugin_dir: Path = DEFAULT_DEVICE_PLUGIN_DIR
    state_dir: Path = Path("/var/lib/sriovlib")
    device_info_dir: Path | None = DEFAULT_DEVICE_INFO_DIR
    cdi_dir: Path | None = None
    policy: Policy = Policy.PACK
    pf_carrier_health: bool = True
    pf_carrier_pools: Mapping[str, bool] = attrs.field(factory=dict)
    rescan_interval: float = RESCAN_INTERVAL
    metrics_address: str | None = None
    reclaim: ReclaimMode = ReclaimMode.ON
    reclaim_grace: float = DEFAULT_GRACE
    cni_socket: Path | None = None
    pod_resources_socket: Path | None = None
    dra: DraOptions | None = None
    on_demand: OnDemandOptions = attrs.field(factory=OnDemandOptions)

    def for_dra(self, resource: Resource) -> bool:
        """Whether *resource* is served as DRA devices (published in ResourceSlices,
        prepared for claims) rather than to the kubelet's device-plugin API: one or the
        other, never both, so one VF cannot be handed out twice."""
        return self.dra is not None and self.dra.owns(resource.name, resource.pool.resource_name)

    def follows_pf_carrier(self, resource: Resource) -> bool:
        """Whether *resource*'s devices follow their PF's link state."""
        for key in (resource.name, resource.pool.resource_name):
            if key in self.pf_carrier_pools:
                return self.pf_carrier_pools[key]
        return self.pf_carrier_health


class ConfigFile:
    """The pool config's file, re-read when it changes.

    A change is seen through ``stat`` of the path with symlinks followed, so a
    ConfigMap's update (the kubelet swaps its ``..data`` symlink to a new directory) is
    one, as is an edit in place.

    Args:
        path: The file.
        load: Parses it (raises what the CLI reports for a bad config).
    """

    def __init__(self, path: str, load: Callable[[], PoolConfig]) -> None:
        self.path = path
        self.load = load
        self._seen = self._stamp()

    def _stamp(self) -> tuple[int, int, int, int] | None:
        try:
            st = os.stat(self.path)
        except OSError:
            return None
        return st.st_dev, st.st_ino, st.st_size, st.st_mtime_ns

    def changed(self) -> bool:
        """Whether the file is another than when last asked (True once per change)."""
        stamp = self._stamp()
        if stamp == self._seen:
            return False
        self._seen = stamp
        return stamp is not None  # a file gone for a moment (an editor's rename) is no config


class Agent:
    """The node agent's device-plugin half for *config* on *host*.

    With *config_file*, a change of that file reloads the pools (a config that does not
    parse is logged and the running one kept). With ``options.dra`` and *api*, the DRA
    plugin reads ResourceClaims from the API server and the pools' VFs are published as
    ResourceSlices of node *node_name*; without *api* claims come from *claims* (default:
    :class:`~sriovlib.agent.draclaims.NoApiServer`) and nothing is published. With
    *budgets* (the PFs of a policy's ``vfBudget``) and slices published, the DRA driver
    makes VFs on demand (:class:`~sriovlib.agent.ondemand.OnDemand`), changing the
    counts through *resize*.
    """

    def __init__(
        self,
        host: Host,
        config: PoolConfig,
        options: AgentOptions,
        *,
        config_file: ConfigFile | None = None,
        claims: ClaimSource | None = None,
        api: KubeClient | None = None,
        node_name: str | None = None,
        budgets: Mapping[PciAddress, VfBudget] | None = None,
        resize: Resizer | None = None,
    ) -> None:
        self.host = host
        self.config = config
        self.options = options
        self.config_file = config_file
        self.attachments = AttachmentService(host, options.state_dir)
        self.granter = Granter(
            host, device_info_dir=options.device_info_dir, cdi_dir=options.cdi_dir
        )
        self.resources: list[Resource] = []
        self.services: list[DevicePluginService] = []
        self.servers: list[PluginServer] = []
        self.supervisor: Supervisor | None = None
        self.health: HealthWatch | None = None
        self.reconciles = 0
        from sriovlib.agent.metrics import Metrics  # prometheus_client: the agent only

        self.metrics: Metrics = Metrics(lambda: self.resources, self._held)
        self.metrics_address: tuple[str, int] | None = None
        self.reclaimer = Reclaimer(
            self.attachments,
            mode=options.reclaim,
            grace=options.reclaim_grace,
            metrics=self.metrics,
            pod_resources=(
                PodResourcesClient(options.pod_resources_socket)
                if options.pod_resources_socket is not None
                else None
            ),
            # only device-plugin pools: the pod-resources API lists what the kubelet
            # granted through them; a DRA VF's holder is a claim, which it does not list
            served=lambda: {
                d.id for r in self.resources if not self.options.for_dra(r) for d in r.devices()
            },
        )
        self.cni: CniServer | None = None
        self.dra: DraPlugin | None = None
        self.slices: SlicePublisher | None = None
        self.events: ClaimEvents | None = None
        if options.dra is not None:
            if claims is None:
                claims = ApiServerClaims(api) if api is not None else NoApiServer()
            if api is not None and node_name:
                self.events = ClaimEvents(api, driver=options.dra.driver_name, node_name=node_name)
            self.dra = DraPlugin(
                host,
                claims,
                options.dra,
                refusal=self._dra_refusal,
                on_registered=self._dra_registered,
                holder=self._cni_holder,
                on_failure=self.events.failed if self.events is not None else None,
            )
            self.granter.rebound = self.dra.preparer.rebound
            if api is not None:
                if not node_name:
                    raise ValueError("publishing ResourceSlices needs the node's name")
                self.slices = SlicePublisher(
                    api,
                    host,
                    driver=options.dra.driver_name,
                    node_name=node_name,
                    resources=self.dra_resources,
                )
        self.on_demand: OnDemand | None = None
        if budgets and options.dra is not None and api is None:
            log.warning("VFs on demand need API server access: the vfBudget PFs stay as they are")
        if (
            api is not None
            and self.slices is not None
            and options.dra is not None
            and budgets
            and options.on_demand.mode is not OnDemandMode.OFF
        ):
            self.on_demand = OnDemand(
                api,
                host,
                driver=options.dra.driver_name,
                node_name=str(node_name),
                budgets=budgets,
                publisher=self.slices,
                held_here=self._held_here,
                reconcile=self.reconcile,
                resize=resize,
                options=options.on_demand,
                registry=self.metrics.registry,
                events=self.events,
            )
        self._functions: frozenset[str] = frozenset()
        self._lock = threading.RLock()

    def dra_resources(self) -> list[Resource]:
        """The pools served as DRA devices (the rest are device-plugin resources)."""
        return [r for r in self.resources if self.options.for_dra(r)]

    def _dra_registered(self) -> None:
        """The kubelet registered the DRA driver: if it just started, it is about to
        delete the node's slices; the publisher checks them at every wake-up a while."""
        if self.slices is not None:
            self.slices.registered()

    def _dra_refusal(self, address: PciAddress) -> str | None:
        """Why the DRA driver may not prepare the VF at *address*, or None if it may."""
        device_id = str(address)
        for resource in self.resources:
            if resource.get(device_id) is not None:
                if self.options.for_dra(resource):
                    return None
                return (
                    f"it is in pool {resource.name}, which the device plugin serves "
                    "(not one of --dra-pools)"
                )
        return "it is in no pool of the agent's config"

    def _cni_holder(self, address: PciAddress) -> str | None:
        """Which CNI attachment holds the VF at *address*, or None."""
        allocation = self.attachments.store.get(address)
        return None if allocation is None else f"the CNI attachment of {allocation.owner}"

    def _held_here(self) -> frozenset[PciAddress]:
        """The VFs held on this node: by prepared DRA claims and CNI attachments (raises
        what the stores raise: the VFs on demand change nothing they cannot read)."""
        held = set(self.attachments.store.allocated())
        if self.dra is not None:
            held.update(d.address for c in self.dra.preparer.store.records() for d in c.devices)
        return frozenset(held)

    def _held(self) -> frozenset[str]:
        try:
            return frozenset(str(a) for a in self.attachments.store.allocated())
        except (SriovError, OSError) as e:
            log.warning("cannot read the allocation store", extra={"error": str(e)})
            return frozenset()

    def discover(self) -> list[Resource]:
        """Read the node and build one resource per pool with devices (a VF a DRA claim
        bound to another driver as it was before: the claim's driver is not its pool's)."""
        inventory = self.host.inventory()
        rebound = self.dra.preparer.rebound() if self.dra is not None else {}
        if rebound:
            inventory = attrs.evolve(
                inventory,
                vfs=tuple(
                    attrs.evolve(vf, driver=rebound[str(vf.address)][0],
                                 netdev=rebound[str(vf.address)][1])
                    if str(vf.address) in rebound
                    else vf
                    for vf in inventory.vfs
                ),
            )  # fmt: skip
        devices = discover_devices(inventory, self.host.selector_facts())
        for members in assign(self.config, devices).pools:
            if not members.devices:
                log.warning(
                    "pool has no devices on this node: not advertised",
                    extra={"resource": members.pool.full_name(self.options.resource_prefix)},
                )
        return build_resources(self.config, devices, self.options.resource_prefix)

    def start(self, resources: Sequence[Resource] | None = None) -> None:
        """Serve every resource (discovered now unless given) and start supervising."""
        self.host.plugins  # noqa: B018 - load the vendor plugins before serving threads
        self._functions = self.host.function_addresses()
        self.resources = list(self.discover() if resources is None else resources)
        self.health = HealthWatch(
            self.host,
            self.granter,
            lambda: self.resources,
            pf_carrier=self.options.follows_pf_carrier,
            rescan=self.options.rescan_interval,
            on_wake=self._on_wake,
            after_wake=self._after_wake,
            metrics=self.metrics,
        )
        self.health.assess()  # the first ListAndWatch already tells the truth
        self.options.device_plugin_dir.mkdir(parents=True, exist_ok=True)
        self.supervisor = Supervisor(self.options.device_plugin_dir, [])
        for resource in self.resources:
            if self.options.for_dra(resource):
                log.info(
                    "pool served as DRA devices: not registered with the device-plugin API",
                    extra={"resource": resource.name, "devices": len(resource.devices())},
                )
            else:
                self._serve(resource)
        self._check_dra_pools()
        self.supervisor.step()  # register now if the kubelet is there
        self.supervisor.start()
        self.health.start()
        if self.options.metrics_address is not None:
            self.metrics_address = self.metrics.serve(self.options.metrics_address)
            host, port = self.metrics_address
            log.info("metrics", extra={"address": f"{host}:{port}"})
        if self.options.cni_socket is not None:
            self.cni = CniServer(
                self.options.cni_socket, plugins=self.host.plugins, metrics=self.metrics
            )
            self.cni.start()
        if self.events is not None:
            self.events.start()
        if self.dra is not None:
            self.dra.start()
        if self.slices is not None:
            self.slices.start()
        if self.on_demand is not None:
            self.on_demand.start()

    def _serve(self, resource: Resource) -> None:
        service = DevicePluginService(
            resource,
            self.granter,
            policy=self.options.policy,
            held=self._held,
            metrics=self.metrics,
        )
        server = PluginServer(service, self.options.device_plugin_dir)
        self.granter.prune_device_info(resource)
        self.granter.write_cdi_spec(resource)
        server.start()
        self.services.append(service)
        self.servers.append(server)
        if self.supervisor is not None:
            self.supervisor.add(server)
        log.info(
            "serving",
            extra={
                "resource": resource.name,
                "socket": str(server.path),
                "devices": len(resource.devices()),
            },
        )

    def _unserve(self, resource: Resource, why: str = "pool removed: no longer served") -> None:
        resource.close()
        for server in [s for s in self.servers if s.resource is resource]:
            if self.supervisor is not None:
                self.supervisor.remove(server)
            server.stop()
            self.servers.remove(server)
        self.services = [s for s in self.services if s.resource is not resource]
        self.granter.remove_cdi_spec(resource)
        log.info(why, extra={"resource": resource.name})

    def _served(self, resource: Resource) -> bool:
        """Whether *resource* has a device-plugin server now."""
        return any(s.resource is resource for s in self.servers)

    def _check_dra_pools(self) -> None:
        """Log the names of ``--dra-pools`` that match no pool of the config."""
        names = self.options.dra.pools if self.options.dra is not None else None
        if not names:
            return
        known: set[str] = set()
        for pool in self.config.pools:
            known.update((pool.full_name(self.options.resource_prefix), pool.resource_name))
        unknown = sorted(names - known)
        if unknown:
            log.warning(
                "--dra-pools names pools the config does not have", extra={"pools": unknown}
            )

    def _on_wake(self, event: bool) -> None:
        """Reclaim orphans; reconcile when the config file changed, or after kernel
        events when PCI functions came or went (VFs created or removed)."""
        self.reclaimer.step()
        reason = None
        if self.config_file is not None and self.config_file.changed():
            try:
                self.config = self.config_file.load()
            except (SriovError, ValueError, OSError) as e:
                log.error(
                    "config changed but cannot be read: keeping the running one",
                    extra={"config": self.config_file.path, "error": str(e)},
                )
                return
            reason = "config changed"
        if reason is None and event and self.host.function_addresses() != self._functions:
            reason = "PCI functions came or went"
        if reason is not None:
            self.reconcile(reason)

    def _after_wake(self) -> None:
        """Publish what this wake-up's reconcile and assessment changed."""
        if self.slices is not None:
            self.slices.sync()

    def reconcile(self, reason: str = "asked") -> dict[str, list[str]]:
        """Make the served pools what the config and the node say now: a pool whose
        resource name stays keeps its socket and takes its new devices (a pool left
        without devices is served with none, so the kubelet sees 0 at once); a new pool
        is served; a pool gone from the config is stopped. Returns the resource names
        ``added``, ``changed`` and ``removed``.
        """
        with self._lock:
            self.reconciles += 1
            self.metrics.reconciles.labels(reason).inc()
            self._functions = self.host.function_addresses()
            fresh = {r.name: r for r in self.discover()}
            wanted = {p.full_name(self.options.resource_prefix) for p in self.config.pools}
            outcome: dict[str, list[str]] = {"added": [], "changed": [], "removed": []}
            kept: list[Resource] = []
            for resource in self.resources:
                new = fresh.pop(resource.name, None)
                if new is not None or resource.name in wanted:
                    pool = new.pool if new is not None else self._pool_named(resource)
                    changed = resource.reconfigure(pool, new.devices() if new is not None else ())
                    resource = self._reown(resource)  # noqa: PLW2901 - may be a new one
                    if changed:
                        outcome["changed"].append(resource.name)
                        if self._served(resource):
                            self.granter.prune_device_info(resource)
                            self.granter.write_cdi_spec(resource)
                    kept.append(resource)
                else:
                    if self._served(resource):
                        self._unserve(resource)
                    else:
                        resource.close()
                        log.info("pool removed", extra={"resource": resource.name})
                    outcome["removed"].append(resource.name)
            for resource in fresh.values():
                if not self.options.for_dra(resource):
                    self._serve(resource)
                kept.append(resource)
                outcome["added"].append(resource.name)
            self.resources = kept
            log.info("reconciled", extra={"reason": reason, **outcome})
        if self.health is not None:
            self.health.assess()
        if self.supervisor is not None:
            self.supervisor.step()  # register the new pools now
        if self.slices is not None:
            self.slices.sync()
        return outcome

    def _reown(self, resource: Resource) -> Resource:
        """Serve *resource* the way the options say now: a device-plugin pool handed to
        DRA stops being served to the kubelet (its socket goes, so the kubelet stops
        advertising it); a DRA pool handed back is served. Returns the resource to keep
        (a new one when its watches had to end)."""
        served = self._served(resource)
        if self.options.for_dra(resource) and served:
            self._unserve(resource, "pool handed to DRA: no longer a device-plugin resource")
            return Resource(resource.pool, self.options.resource_prefix, resource.devices())
        if not self.options.for_dra(resource) and not served:
            if resource.closed:
                resource = Resource(resource.pool, self.options.resource_prefix, resource.devices())
            self._serve(resource)
        return resource

    def _pool_named(self, resource: Resource) -> Pool:
        for pool in self.config.pools:
            if pool.full_name(self.options.resource_prefix) == resource.name:
                return pool
        return resource.pool

    def stop(self) -> None:
        """Finish the CNI invocations under way, end the streams, stop supervising and
        serving, remove the sockets."""
        began = time.monotonic()
        if self.on_demand is not None:
            self.on_demand.stop()
        if self.dra is not None:
            self.dra.stop()
        if self.events is not None:
            self.events.stop()
        if self.cni is not None:
            self.cni.stop()
        self.metrics.stop()
        if self.health is not None:
            self.health.stop()
        with self._lock:
            for resource in self.resources:
                resource.close()
            if self.supervisor is not None:
                self.supervisor.stop()
            for server in self.servers:
                server.stop()
        log.info(
            "stopped",
            extra={
                "resources": [r.name for r in self.resources],
                "seconds": round(time.monotonic() - began, 3),
            },
        )
