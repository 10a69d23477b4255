"""The agent as one object: read the node, serve every pool, stop cleanly.

:class:`Agent` composes the parts: discovery through the :class:`~sriovlib.host.Host`,
the pools of the config (:func:`~sriovlib.agent.resources.build_resources`), one
:class:`~sriovlib.agent.deviceplugin.DevicePluginService` and
:class:`~sriovlib.agent.kubelet.PluginServer` per pool, the
:class:`~sriovlib.agent.kubelet.Supervisor`, the
:class:`~sriovlib.agent.health.HealthWatch`, and the attachment service's allocation
store (which devices CNI attachments hold). :meth:`Agent.stop` ends the streams, stops
the servers and removes their sockets; files are only ever replaced atomically, so a
stop at any instant leaves nothing half-written.
"""

from __future__ import annotations

import logging
from collections.abc import Mapping, Sequence
from pathlib import Path

import attrs

from sriovlib.agent.deviceplugin import DevicePluginService
from sriovlib.agent.grants import Granter
from sriovlib.agent.health import RESCAN_INTERVAL, HealthWatch
from sriovlib.agent.kubelet import PluginServer, Supervisor
from sriovlib.agent.resources import Resource, build_resources
from sriovlib.allocation import Policy
from sriovlib.attachments import AttachmentService
from sriovlib.exceptions import SriovError
from sriovlib.host import Host
from sriovlib.pools import DEFAULT_PREFIX, PoolConfig, assign, discover_devices

__all__ = [
    "DEFAULT_CDI_DIR",
    "DEFAULT_DEVICE_INFO_DIR",
    "DEFAULT_DEVICE_PLUGIN_DIR",
    "Agent",
    "AgentOptions",
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

    def follows_pf_carrier(self, resource: Resource) -> bool:
        """Whether *resource*'s devices follow their PF's link state."""
        for key in (resource.name, resource.pool.resource_name):
            if key in self.pf_carrier_pools:
                return self.pf_carrier_pools[key]
        return self.pf_carrier_health


class Agent:
    """The node agent's device-plugin half for *config* on *host*."""

    def __init__(self, host: Host, config: PoolConfig, options: AgentOptions) -> None:
        self.host = host
        self.config = config
        self.options = options
        self.attachments = AttachmentService(host, options.state_dir)
        self.granter = Granter(
            host, device_info_dir=options.device_info_dir, cdi_dir=options.cdi_dir
        )
        self.resources: list[Resource] = []
        self.services: list[DevicePluginService] = []
        self.servers: list[PluginServer] = []
        self.supervisor: Supervisor | None = None
        self.health: HealthWatch | None = None

    def _held(self) -> frozenset[str]:
        try:
            return frozenset(str(a) for a in self.attachments.store.allocated())
        except (SriovError, OSError) as e:
            log.warning("cannot read the allocation store", extra={"error": str(e)})
            return frozenset()

    def discover(self) -> list[Resource]:
        """Read the node and build one resource per pool with devices."""
        devices = discover_devices(self.host.inventory(), self.host.selector_facts())
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
        self.resources = list(self.discover() if resources is None else resources)
        self.health = HealthWatch(
            self.host,
            self.granter,
            lambda: self.resources,
            pf_carrier=self.options.follows_pf_carrier,
            rescan=self.options.rescan_interval,
        )
        self.health.assess()  # the first ListAndWatch already tells the truth
        directory = self.options.device_plugin_dir
        directory.mkdir(parents=True, exist_ok=True)
        for resource in self.resources:
            service = DevicePluginService(
                resource, self.granter, policy=self.options.policy, held=self._held
            )
            server = PluginServer(service, directory)
            self.granter.prune_device_info(resource)
            self.granter.write_cdi_spec(resource)
            server.start()
            self.services.append(service)
            self.servers.append(server)
            log.info(
                "serving",
                extra={
                    "resource": resource.name,
                    "socket": str(server.path),
                    "devices": len(resource.devices()),
                },
            )
        self.supervisor = Supervisor(directory, self.servers)
        self.supervisor.step()  # register now if the kubelet is there
        self.supervisor.start()
        self.health.start()

    def stop(self) -> None:
        """End the streams, stop supervising and serving, remove the sockets."""
        if self.health is not None:
            self.health.stop()
        for resource in self.resources:
            resource.close()
        if self.supervisor is not None:
            self.supervisor.stop()
        for server in self.servers:
            server.stop()
        log.info("stopped", extra={"resources": [r.name for r in self.resources]})
