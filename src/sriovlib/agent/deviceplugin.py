"""The kubelet's ``DevicePlugin`` service (v1beta1) for one resource: translation only.

Requests become calls on the :class:`~sriovlib.agent.resources.Resource` (the devices and
their health), the allocator's policy (:func:`sriovlib.allocation.preferred_allocation`)
and the :class:`~sriovlib.agent.grants.Granter`; answers and errors become protobuf
messages and gRPC status codes:

==========================  ==================================================================
RPC                         answer
==========================  ==================================================================
GetDevicePluginOptions      preferred allocation available; no PreStartContainer
ListAndWatch                every device with its health and NUMA node, again on each change
GetPreferredAllocation      NUMA node first, then pack (or spread) over PFs; devices a CNI
                            attachment record still holds last; none when the request
                            cannot be met (the kubelet then chooses)
Allocate                    env, device nodes (or CDI devices), device-info files;
                            NOT_FOUND for an unknown ID, FAILED_PRECONDITION for an unhealthy one
PreStartContainer           nothing to do (not requested)
==========================  ==================================================================
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Iterator
from typing import TYPE_CHECKING, Any

import grpc

from sriovlib.agent.api import deviceplugin_pb2 as pb
from sriovlib.agent.api import deviceplugin_pb2_grpc as pb_grpc
from sriovlib.agent.grants import Grant, Granter, GrantError, Refusal
from sriovlib.agent.resources import AgentDevice, Resource
from sriovlib.allocation import Candidate, Policy, PreferenceError, preferred_allocation

if TYPE_CHECKING:
    from sriovlib.agent.metrics import Metrics

__all__ = ["DevicePluginService", "device_message"]

log = logging.getLogger("sriovlib.agent")

#: How often a ListAndWatch stream looks whether the kubelet is still listening.
WATCH_TICK = 1.0

_STATUS = {
    Refusal.UNKNOWN: grpc.StatusCode.NOT_FOUND,
    Refusal.UNHEALTHY: grpc.StatusCode.FAILED_PRECONDITION,
}


def device_message(device: AgentDevice, *, topology: bool) -> pb.Device:
    """The kubelet's view of one device."""
    message = pb.Device(ID=device.id, health=str(device.health))
    if topology and device.device.numa_node is not None:
        message.topology.nodes.add(ID=device.device.numa_node)
    return message


class DevicePluginService(pb_grpc.DevicePluginServicer):
    """The device-plugin service of *resource*.

    Args:
        resource: The pool's live devices.
        granter: Builds Allocate answers.
        policy: How GetPreferredAllocation spreads a request over PFs.
        held: The device IDs that CNI attachment records hold now (may be slow: it is
            called once per GetPreferredAllocation).
        metrics: Where latencies, updates and errors are counted, if anywhere.
    """

    def __init__(
        self,
        resource: Resource,
        granter: Granter,
        *,
        policy: Policy = Policy.PACK,
        held: Callable[[], frozenset[str]] = frozenset,
        metrics: Metrics | None = None,
    ) -> None:
        self.resource = resource
        self.granter = granter
        self.policy = policy
        self.held = held
        self.metrics = metrics
        self._streams_lock = threading.Lock()
        self._streams = 0
        self._left_at: float | None = None

    def abandoned(self, now: float) -> float:
        """Seconds since the kubelet left this resource's last ListAndWatch stream (0
        while a stream is open, or if none was left since :meth:`registered`).

        The kubelet ends a plugin's stream when it drops the plugin: on its way down, or
        (the kubelet's device manager keys its clients by resource name) when the stream
        of an *earlier* plugin of the same resource ends, say an old device plugin
        deleted after this agent took the resource over. Only a new registration brings
        the resource back then."""
        with self._streams_lock:
            if self._streams or self._left_at is None:
                return 0.0
            return max(0.0, now - self._left_at)

    def registered(self) -> None:
        """A registration went through: the streams left before it are forgotten."""
        with self._streams_lock:
            self._left_at = None

    def GetDevicePluginOptions(self, request: pb.Empty, context: Any) -> pb.DevicePluginOptions:
        return pb.DevicePluginOptions(
            pre_start_required=False, get_preferred_allocation_available=True
        )

    def ListAndWatch(self, request: pb.Empty, context: Any) -> Iterator[pb.ListAndWatchResponse]:
        with self._streams_lock:
            self._streams += 1
        left = True  # by the kubelet, unless the resource closes
        try:
            yield from self._list_and_watch(context)
            left = not self.resource.closed
        finally:
            with self._streams_lock:
                self._streams -= 1
                if left and not self._streams:
                    self._left_at = time.monotonic()

    def _list_and_watch(self, context: Any) -> Iterator[pb.ListAndWatchResponse]:
        topology = not self.resource.pool.exclude_topology
        seen = 0
        while context.is_active():
            update = self.resource.watch(seen, WATCH_TICK)
            if update is None:
                return  # the resource is closed: the agent stops or the pool is gone
            generation, devices = update
            if generation == seen:
                continue
            seen = generation
            healthy = sum(d.healthy for d in devices)
            log.info(
                "ListAndWatch update",
                extra={
                    "resource": self.resource.name,
                    "devices": len(devices),
                    "healthy": healthy,
                    "generation": generation,
                },
            )
            if self.metrics is not None:
                self.metrics.updates.labels(self.resource.name).inc()
            yield pb.ListAndWatchResponse(
                devices=[device_message(d, topology=topology) for d in devices]
            )

    def GetPreferredAllocation(
        self, request: pb.PreferredAllocationRequest, context: Any
    ) -> pb.PreferredAllocationResponse:
        started = time.perf_counter()
        held = self.held() if request.container_requests else frozenset()
        response = pb.PreferredAllocationResponse()
        for container in request.container_requests:
            chosen = self._prefer(container, held)
            response.container_responses.add(deviceIDs=chosen)
            log.info(
                "GetPreferredAllocation",
                extra={"resource": self.resource.name, "devices": list(chosen)},
            )
        if self.metrics is not None:
            self.metrics.preferred.labels(self.resource.name).observe(time.perf_counter() - started)
        return response

    def _prefer(
        self, container: pb.ContainerPreferredAllocationRequest, held: frozenset[str]
    ) -> tuple[str, ...]:
        offered = self.resource.candidates(container.available_deviceIDs)
        healthy = {d.id for d in self.resource.devices() if d.healthy}
        must = list(container.must_include_deviceIDs)
        usable = [c for c in offered if c.id in healthy or c.id in must]
        size = container.allocation_size
        free = [c for c in usable if c.id not in held or c.id in must]
        pools: list[list[Candidate]] = [free, usable] if len(free) >= size else [usable]
        problem = "no devices offered"
        for candidates in pools:
            try:
                return preferred_allocation(candidates, size, must_include=must, policy=self.policy)
            except PreferenceError as e:
                problem = str(e)
        # An error would fail the pod's admission; no preference lets the kubelet choose.
        log.warning(
            "GetPreferredAllocation: no preference",
            extra={"resource": self.resource.name, "reason": problem},
        )
        return ()

    def Allocate(self, request: pb.AllocateRequest, context: Any) -> pb.AllocateResponse:
        started = time.perf_counter()
        response = pb.AllocateResponse()
        for container in request.container_requests:
            try:
                grant = self.granter.grant(self.resource, list(container.devices_ids))
            except GrantError as e:
                log.warning(
                    "Allocate refused",
                    extra={"resource": self.resource.name, "device": e.device_id, "error": str(e)},
                )
                if self.metrics is not None:
                    code = _STATUS[e.refusal].name
                    self.metrics.errors.labels(self.resource.name, code).inc()
                context.abort(_STATUS[e.refusal], f"{self.resource.name}: {e}")
            response.container_responses.append(_container_response(grant))
        log.info(
            "Allocate",
            extra={
                "resource": self.resource.name,
                "devices": [list(c.devices_ids) for c in request.container_requests],
                "ms": round((time.perf_counter() - started) * 1000, 2),
            },
        )
        if self.metrics is not None:
            self.metrics.allocate.labels(self.resource.name).observe(time.perf_counter() - started)
        return response

    def PreStartContainer(
        self, request: pb.PreStartContainerRequest, context: Any
    ) -> pb.PreStartContainerResponse:
        return pb.PreStartContainerResponse()


def _container_response(grant: Grant) -> pb.ContainerAllocateResponse:
    response = pb.ContainerAllocateResponse(envs=dict(grant.envs))
    for node in grant.devices:
        response.devices.add(
            container_path=node.container_path, host_path=node.host_path, permissions="rw"
        )
    for host_path, container_path in grant.mounts:
        response.mounts.add(container_path=container_path, host_path=host_path, read_only=True)
    for name in grant.cdi_devices:
        response.cdi_devices.add(name=name)
    return response
