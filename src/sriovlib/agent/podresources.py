"""The kubelet's pod-resources API (v1), as far as orphan reclaim needs it.

The kubelet serves ``v1.PodResourcesLister`` on ``<kubelet root>/pod-resources/kubelet.sock``:
``List`` names every pod it runs and, per container, the device IDs it allocated per
extended resource. :class:`PodResourcesClient` turns that into
``{resource name: {device ID, ...}}``, or None when nobody answers (no kubelet, a kubelet
too old for v1, a socket not mounted into the agent's container); the agent then judges
orphans without it. A change between answering and not is logged once, at info.
"""

from __future__ import annotations

import logging
import stat
from pathlib import Path

import grpc

from sriovlib.agent.api import podresources_pb2 as pb
from sriovlib.agent.api import podresources_pb2_grpc as pb_grpc
from sriovlib.agent.kubelet import unix_target

__all__ = ["DEFAULT_SOCKET", "TIMEOUT", "PodResourcesClient"]

log = logging.getLogger("sriovlib.agent")

#: Where the kubelet serves the pod-resources API by default.
DEFAULT_SOCKET = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
#: Seconds one List may take: the agent asks on its wake-ups, which must stay short.
TIMEOUT = 2.0
#: The kubelet's own pod-resources client allows 16 MiB answers (many pods).
_MAX_MESSAGE = 16 << 20


class PodResourcesClient:
    """Asks the kubelet at *socket* which devices its pods hold.

    Args:
        socket: The pod-resources socket.
        timeout: Seconds a List may take before the kubelet counts as unreachable.
    """

    def __init__(self, socket: str | Path = DEFAULT_SOCKET, *, timeout: float = TIMEOUT):
        self.socket = Path(socket)
        self.timeout = timeout
        #: Whether the last question was answered (None before the first one).
        self.reachable: bool | None = None

    def held_devices(self) -> dict[str, set[str]] | None:
        """The device IDs the kubelet's containers hold, per resource name; None when
        the kubelet does not answer."""
        try:
            if not stat.S_ISSOCK(self.socket.stat().st_mode):
                raise OSError(f"{self.socket} is not a socket")
            with grpc.insecure_channel(
                unix_target(self.socket),
                options=[("grpc.max_receive_message_length", _MAX_MESSAGE)],
            ) as channel:
                stub = pb_grpc.PodResourcesListerStub(channel)  # type: ignore[no-untyped-call]
                answer = stub.List(pb.ListPodResourcesRequest(), timeout=self.timeout)
        except grpc.RpcError as e:
            self._unreachable(f"{e.code().name}: {e.details()}")
            return None
        except OSError as e:
            self._unreachable(e.strerror or str(e))
            return None
        held: dict[str, set[str]] = {}
        for pod in answer.pod_resources:
            for container in pod.containers:
                for devices in container.devices:
                    held.setdefault(devices.resource_name, set()).update(devices.device_ids)
        if self.reachable is not True:
            log.info("pod-resources API answers", extra={"socket": str(self.socket)})
        self.reachable = True
        return held

    def _unreachable(self, error: str) -> None:
        if self.reachable is not False:
            log.info(
                "pod-resources API not reachable: orphans judged by their network namespace only",
                extra={"socket": str(self.socket), "error": error},
            )
        self.reachable = False
