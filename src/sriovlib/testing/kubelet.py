"""An in-process kubelet stand-in for device-plugin tests, built from the same proto.

:class:`KubeletStandIn` serves the kubelet's ``Registration`` service on
``kubelet.sock`` in a directory and, like the kubelet, checks each registration (API
version ``v1beta1``, an extended resource name ``<domain>/<name>``, an endpoint that is
a socket in the directory) before it connects back to the plugin: it then watches the
plugin's ``ListAndWatch`` stream in a thread and offers the plugin's RPCs through a
:class:`PluginClient`. :meth:`KubeletStandIn.restart` does what a kubelet restart does
to the directory: every plugin socket is deleted and ``kubelet.sock`` is made anew.

    with KubeletStandIn(tmp_path) as kubelet:
        ...start the agent with --device-plugin-dir tmp_path...
        plugin = kubelet.wait_plugin("intel.com/sriov")
        devices = plugin.wait_devices(lambda ds: len(ds) == 8)
        response = plugin.allocate(["0000:03:02.0"])
"""

from __future__ import annotations

import os
import re
import stat
import threading
import time
from collections.abc import Callable, Sequence
from concurrent import futures
from pathlib import Path
from typing import Any

import grpc

from sriovlib.agent.api import deviceplugin_pb2 as pb
from sriovlib.agent.api import deviceplugin_pb2_grpc as pb_grpc
from sriovlib.agent.kubelet import unix_target

__all__ = ["KubeletStandIn", "PluginClient", "Refused"]

_RESOURCE = re.compile(
    r"[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*"
    r"/[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?"
)


class Refused(Exception):
    """The stand-in refused a registration (the message says why)."""


class PluginClient:
    """The kubelet's side of one registered plugin: its RPCs and its device list."""

    def __init__(self, directory: Path, request: pb.RegisterRequest) -> None:
        self.resource = request.resource_name
        self.endpoint = request.endpoint
        self.options = request.options
        self._channel = grpc.insecure_channel(unix_target(directory / request.endpoint))
        self.stub = pb_grpc.DevicePluginStub(self._channel)  # type: ignore[no-untyped-call]
        self._cond = threading.Condition()
        self.updates: list[list[pb.Device]] = []
        self.stream_error: str | None = None
        self._stream: Any = None
        self._thread = threading.Thread(target=self._watch, daemon=True, name="standin-watch")
        self._thread.start()

    def _watch(self) -> None:
        try:
            self._stream = self.stub.ListAndWatch(pb.Empty())
            for response in self._stream:
                with self._cond:
                    self.updates.append(list(response.devices))
                    self._cond.notify_all()
        except grpc.RpcError as e:
            with self._cond:
                self.stream_error = e.code().name
                self._cond.notify_all()
        with self._cond:
            self.stream_error = self.stream_error or "ended"
            self._cond.notify_all()

    @property
    def devices(self) -> list[pb.Device]:
        """The latest device list (empty before the first)."""
        with self._cond:
            return list(self.updates[-1]) if self.updates else []

    def wait_devices(
        self, predicate: Callable[[list[pb.Device]], bool], timeout: float = 10.0
    ) -> list[pb.Device]:
        """Wait until the latest device list satisfies *predicate*; return it."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not (self.updates and predicate(self.updates[-1])):
                left = deadline - time.monotonic()
                if left <= 0:
                    last = self.updates[-1] if self.updates else None
                    raise TimeoutError(f"{self.resource}: device list never matched: {last}")
                self._cond.wait(left)
            return list(self.updates[-1])

    def healthy(self) -> list[str]:
        """The IDs of the healthy devices in the latest list."""
        return [d.ID for d in self.devices if d.health == "Healthy"]

    def get_options(self) -> pb.DevicePluginOptions:
        options: pb.DevicePluginOptions = self.stub.GetDevicePluginOptions(pb.Empty(), timeout=5)
        return options

    def allocate(self, *containers: Sequence[str]) -> pb.AllocateResponse:
        """Allocate, one list of device IDs per container."""
        request = pb.AllocateRequest()
        for ids in containers:
            request.container_requests.add(devices_ids=list(ids))
        response: pb.AllocateResponse = self.stub.Allocate(request, timeout=5)
        return response

    def preferred(
        self, available: Sequence[str], size: int, must_include: Sequence[str] = ()
    ) -> list[str]:
        """GetPreferredAllocation for one container."""
        request = pb.PreferredAllocationRequest()
        request.container_requests.add(
            available_deviceIDs=list(available),
            must_include_deviceIDs=list(must_include),
            allocation_size=size,
        )
        response = self.stub.GetPreferredAllocation(request, timeout=5)
        return list(response.container_responses[0].deviceIDs)

    def close(self) -> None:
        if self._stream is not None:
            self._stream.cancel()
        self._channel.close()
        self._thread.join(5)


class _Registration(pb_grpc.RegistrationServicer):
    def __init__(self, kubelet: KubeletStandIn) -> None:
        self.kubelet = kubelet

    def Register(self, request: pb.RegisterRequest, context: Any) -> pb.Empty:
        try:
            self.kubelet._accept(request)
        except Refused as e:
            context.abort(grpc.StatusCode.INVALID_ARGUMENT, str(e))
        return pb.Empty()


class KubeletStandIn:
    """A kubelet's device manager in *directory* (see the module docstring)."""

    def __init__(
        self, directory: Path, *, refuse: Callable[[pb.RegisterRequest], str | None] | None = None
    ) -> None:
        self.directory = Path(directory)
        self.refuse = refuse
        self.registrations: list[pb.RegisterRequest] = []
        self.plugins: dict[str, PluginClient] = {}
        self._cond = threading.Condition()
        self._server: grpc.Server | None = None

    def __enter__(self) -> KubeletStandIn:
        self.start()
        return self

    def __exit__(self, *exc: object) -> None:
        self.stop()

    @property
    def socket(self) -> Path:
        return self.directory / "kubelet.sock"

    def start(self) -> None:
        """Serve Registration on a fresh ``kubelet.sock``."""
        self.directory.mkdir(parents=True, exist_ok=True)
        self.socket.unlink(missing_ok=True)
        server = grpc.server(futures.ThreadPoolExecutor(max_workers=4))
        pb_grpc.add_RegistrationServicer_to_server(_Registration(self), server)  # type: ignore[no-untyped-call]
        server.add_insecure_port(unix_target(self.socket))
        server.start()
        self._server = server

    def stop(self) -> None:
        """Stop serving and drop every plugin connection."""
        with self._cond:
            plugins, self.plugins = list(self.plugins.values()), {}
        for plugin in plugins:
            plugin.close()
        if self._server is not None:
            self._server.stop(0).wait(5)
            self._server = None
        self.socket.unlink(missing_ok=True)

    def drop(self, resource: str) -> None:
        """What the kubelet does when it disconnects a plugin (and keeps serving):
        close its stream and connection and forget it, ``kubelet.sock`` untouched."""
        with self._cond:
            plugin = self.plugins.pop(resource)
        plugin.close()

    def restart(self) -> None:
        """What a kubelet restart does: drop the plugins, delete every socket in the
        directory, serve a new ``kubelet.sock``."""
        self.stop()
        for entry in self.directory.iterdir():
            if stat.S_ISSOCK(os.lstat(entry).st_mode):
                entry.unlink()
        self.start()

    def _accept(self, request: pb.RegisterRequest) -> None:
        if request.version != "v1beta1":
            raise Refused(f"unsupported API version {request.version!r}")
        if not _RESOURCE.fullmatch(request.resource_name):
            raise Refused(f"invalid extended resource name {request.resource_name!r}")
        endpoint = self.directory / request.endpoint
        if "/" in request.endpoint or not endpoint.is_socket():
            raise Refused(f"endpoint {request.endpoint!r} is not a socket in {self.directory}")
        if self.refuse is not None:
            reason = self.refuse(request)
            if reason is not None:
                raise Refused(reason)
        plugin = PluginClient(self.directory, request)
        with self._cond:
            old = self.plugins.pop(request.resource_name, None)
            self.plugins[request.resource_name] = plugin
            self.registrations.append(request)
            self._cond.notify_all()
        if old is not None:
            old.close()

    def wait_plugin(self, resource: str, timeout: float = 10.0, *, after: int = 0) -> PluginClient:
        """The plugin of *resource* once it has registered (more than *after* times)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                count = sum(r.resource_name == resource for r in self.registrations)
                if count > after and resource in self.plugins:
                    return self.plugins[resource]
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError(f"{resource} never registered (seen: {self.registrations})")
                self._cond.wait(left)

    def registered(self, resource: str) -> int:
        """How many times *resource* registered."""
        with self._cond:
            return sum(r.resource_name == resource for r in self.registrations)
