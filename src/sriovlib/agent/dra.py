"""The agent's DRA kubelet plugin: registration and the ``DRAPlugin`` service, translation only.

Two gRPC servers on two unix sockets, as the kubelet's plugin manager expects of a DRA
driver (Kubernetes >= 1.34):

- ``<plugins_registry>/<driver>-reg.sock`` serves ``pluginregistration.Registration``:
  the kubelet's plugin watcher sees the socket appear, calls ``GetInfo`` (type
  ``DRAPlugin``, the driver name, the endpoint, versions ``["v1.DRAPlugin"]``), then
  ``NotifyRegistrationStatus`` with its verdict;
- ``<plugins>/<driver>/dra.sock`` (the endpoint) serves
  ``k8s.io.kubelet.pkg.apis.dra.v1.DRAPlugin``: ``NodePrepareResources`` and
  ``NodeUnprepareResources``, answered through the :class:`~sriovlib.agent.draprepare.Preparer`.

Every claim of a request gets its entry in the answer: a claim that fails gets its
error there (the kubelet retries that claim, and shows the message in the pod's
events), never a failure of the whole call, and never a traceback — an unexpected error
is logged with its traceback and answered as one line.
"""

from __future__ import annotations

import logging
import os
import stat
import threading
import time
from collections.abc import Callable
from concurrent import futures
from pathlib import Path
from typing import Any, TypeVar

import attrs
import grpc

from sriovlib.agent.api import dra_pb2 as pb
from sriovlib.agent.api import dra_pb2_grpc as pb_grpc
from sriovlib.agent.api import pluginregistration_pb2 as reg
from sriovlib.agent.api import pluginregistration_pb2_grpc as reg_grpc
from sriovlib.agent.draclaims import (
    DEFAULT_DRIVER_NAME,
    ClaimError,
    ClaimRef,
    ClaimSource,
    check_driver_name,
)
from sriovlib.agent.draprepare import Preparer
from sriovlib.agent.drastore import PreparedClaims
from sriovlib.agent.kubelet import unix_target
from sriovlib.exceptions import SriovError
from sriovlib.host import Host
from sriovlib.models import PciAddress

__all__ = [
    "DEFAULT_PLUGINS_DIR",
    "DEFAULT_REGISTRY_DIR",
    "PLUGIN_TYPE",
    "SUPPORTED_VERSIONS",
    "DraOptions",
    "DraPlugin",
    "DraService",
    "RegistrationService",
]

log = logging.getLogger("sriovlib.agent")

DEFAULT_REGISTRY_DIR = Path("/var/lib/kubelet/plugins_registry")
DEFAULT_PLUGINS_DIR = Path("/var/lib/kubelet/plugins")
#: What GetInfo answers: the plugin type the kubelet's DRA handler takes ...
PLUGIN_TYPE = "DRAPlugin"
#: ... and the service versions served on the endpoint.
SUPPORTED_VERSIONS = ("v1.DRAPlugin",)
WORKERS = 4

T = TypeVar("T")


@attrs.frozen(kw_only=True)
class DraOptions:
    """Where and as what the DRA plugin serves.

    Attributes:
        driver_name: The DRA driver name (a DNS subdomain, at most 63 characters).
        registry_dir: The kubelet's plugin-watcher directory.
        plugins_dir: The kubelet's plugins directory; the endpoint is
            ``<plugins_dir>/<driver>/dra.sock``.
        cdi_dir: Where the claims' CDI spec files go.
        state_dir: The agent's state directory; the prepared claims are recorded in
            ``<state_dir>/dra/<driver>/claims``.
        pools: The pools served as DRA devices instead of device-plugin resources, by
            resource name (with or without its prefix); None: every pool. A pool is
            served one way or the other, never both (``--dra-pools``).
    """

    driver_name: str = attrs.field(default=DEFAULT_DRIVER_NAME)
    registry_dir: Path = DEFAULT_REGISTRY_DIR
    plugins_dir: Path = DEFAULT_PLUGINS_DIR
    cdi_dir: Path = Path("/var/run/cdi")
    state_dir: Path = Path("/var/lib/sriovlib")
    pools: frozenset[str] | None = attrs.field(
        default=None, converter=attrs.converters.optional(frozenset)
    )

    def owns(self, resource_name: str, pool_name: str) -> bool:
        """Whether the pool *pool_name* (resource *resource_name*, with its prefix) is
        served as DRA devices."""
        return self.pools is None or resource_name in self.pools or pool_name in self.pools

    @driver_name.validator
    def _check(self, _attribute: object, value: str) -> None:
        check_driver_name(value)

    @property
    def registration_socket(self) -> Path:
        return self.registry_dir / f"{self.driver_name}-reg.sock"

    @property
    def endpoint(self) -> Path:
        return self.plugins_dir / self.driver_name / "dra.sock"

    @property
    def record_dir(self) -> Path:
        return self.state_dir / "dra" / self.driver_name / "claims"


class RegistrationService(reg_grpc.RegistrationServicer):
    """``pluginregistration.Registration`` for one DRA driver."""

    def __init__(
        self, options: DraOptions, *, on_registered: Callable[[], None] | None = None
    ) -> None:
        self.options = options
        self.on_registered = on_registered
        self._cond = threading.Condition()
        #: The kubelet's verdicts, in order: (registered, error).
        self.statuses: list[tuple[bool, str]] = []

    def GetInfo(self, request: reg.InfoRequest, context: Any) -> reg.PluginInfo:
        return reg.PluginInfo(
            type=PLUGIN_TYPE,
            name=self.options.driver_name,
            endpoint=str(self.options.endpoint),
            supported_versions=list(SUPPORTED_VERSIONS),
        )

    def NotifyRegistrationStatus(
        self, request: reg.RegistrationStatus, context: Any
    ) -> reg.RegistrationStatusResponse:
        if request.plugin_registered:
            log.info("DRA driver registered", extra={"driver": self.options.driver_name})
            if self.on_registered is not None:
                self.on_registered()
        else:
            log.error(
                "DRA driver registration failed",
                extra={"driver": self.options.driver_name, "error": request.error},
            )
        with self._cond:
            self.statuses.append((request.plugin_registered, request.error))
            self._cond.notify_all()
        return reg.RegistrationStatusResponse()

    def wait_status(self, timeout: float = 10.0) -> tuple[bool, str]:
        """The kubelet's latest verdict, once there is one."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while not self.statuses:
                left = deadline - time.monotonic()
                if left <= 0:
                    raise TimeoutError("the kubelet never sent a registration status")
                self._cond.wait(left)
            return self.statuses[-1]


class DraService(pb_grpc.DRAPluginServicer):
    """``DRAPlugin`` (v1): each claim through the preparer, each failure in its entry."""

    def __init__(
        self,
        preparer: Preparer,
        on_failure: Callable[[ClaimRef, str, str], None] | None = None,
    ) -> None:
        self.preparer = preparer
        #: Called with the claim, ``PrepareFailed`` or ``UnprepareFailed`` and the error
        #: of each claim that fails (the agent posts it as an Event on the claim).
        self.on_failure = on_failure

    def NodePrepareResources(
        self, request: pb.NodePrepareResourcesRequest, context: Any
    ) -> pb.NodePrepareResourcesResponse:
        started = time.perf_counter()
        response = pb.NodePrepareResourcesResponse()
        for claim in request.claims:
            ref = ClaimRef(claim.namespace, claim.name, claim.uid)
            entry = response.claims[claim.uid]
            record, error = _attempt("NodePrepareResources", ref, self.preparer.prepare)
            if record is None:
                entry.error = error or "not prepared"
                if self.on_failure is not None:
                    self.on_failure(ref, "PrepareFailed", entry.error)
                continue
            for device in record.devices:
                entry.devices.add(
                    request_names=[device.request],
                    pool_name=device.pool,
                    device_name=device.device,
                    cdi_device_ids=list(device.cdi_device_ids),
                )
            log.info(
                "NodePrepareResources",
                extra={
                    "claim": f"{ref.namespace}/{ref.name}",
                    "uid": ref.uid,
                    "devices": [str(d.address) for d in record.devices],
                    "ms": round((time.perf_counter() - started) * 1000, 2),
                },
            )
        return response

    def NodeUnprepareResources(
        self, request: pb.NodeUnprepareResourcesRequest, context: Any
    ) -> pb.NodeUnprepareResourcesResponse:
        response = pb.NodeUnprepareResourcesResponse()
        for claim in request.claims:
            ref = ClaimRef(claim.namespace, claim.name, claim.uid)
            entry = response.claims[claim.uid]
            was, error = _attempt("NodeUnprepareResources", ref, self.preparer.unprepare)
            if error is not None:
                entry.error = error
                if self.on_failure is not None:
                    self.on_failure(ref, "UnprepareFailed", error)
            else:
                log.info(
                    "NodeUnprepareResources",
                    extra={"claim": f"{ref.namespace}/{ref.name}", "uid": ref.uid, "was": was},
                )
        return response


def _attempt(
    what: str, ref: ClaimRef, call: Callable[[ClaimRef], T]
) -> tuple[T | None, str | None]:
    """``call(ref)`` and None, or None and the one-line error for the claim's entry."""
    try:
        return call(ref), None
    except ClaimError as e:
        error = str(e)
    except (SriovError, OSError) as e:  # the node or the files: worth a look in the log
        error = str(e)
        log.warning(f"{what}: the node or the files failed", extra={"uid": ref.uid, "error": error})
    except Exception as e:  # a bug must still answer the kubelet, in one line
        log.exception(f"{what}: internal error", extra={"uid": ref.uid})
        error = f"internal error: {type(e).__name__}: {e}"
    error = f"claim {ref.namespace}/{ref.name}: {error}"
    log.warning(f"{what} refused", extra={"uid": ref.uid, "error": error})
    return None, error


class DraPlugin:
    """The DRA driver of the agent on *host*: the two servers and the preparer.

    Args:
        host: The node.
        claims: Where ResourceClaim objects are read.
        options: Names and directories.
        refusal: Why a VF may not be prepared (it is in no pool given to DRA), or None
            when it may; without it any VF of the node may be.
        on_registered: Called when the kubelet says it registered the driver (at its
            every start).
        holder: Who else holds a VF now (a CNI attachment), or None: such a VF is not
            rebound to the driver a claim asks for.
        on_failure: Told of each claim that fails (claim, reason, error): the agent's
            Events on the claim.
    """

    def __init__(
        self,
        host: Host,
        claims: ClaimSource,
        options: DraOptions,
        *,
        refusal: Callable[[PciAddress], str | None] | None = None,
        on_registered: Callable[[], None] | None = None,
        holder: Callable[[PciAddress], str | None] | None = None,
        on_failure: Callable[[ClaimRef, str, str], None] | None = None,
    ) -> None:
        self.options = options
        self.preparer = Preparer(
            host,
            claims,
            PreparedClaims(options.record_dir),
            cdi_dir=options.cdi_dir,
            driver=options.driver_name,
            refusal=refusal,
            holder=holder,
        )
        self.registration = RegistrationService(options, on_registered=on_registered)
        self.service = DraService(self.preparer, on_failure)
        self._servers: list[tuple[grpc.Server, Path]] = []

    def start(self) -> None:
        """Serve the endpoint, then the registration socket (the kubelet dials the
        endpoint as soon as it has read GetInfo)."""
        self._serve(self.options.endpoint, "dra", pb_grpc.add_DRAPluginServicer_to_server,
                    self.service)  # fmt: skip
        self._serve(
            self.options.registration_socket,
            "dra-reg",
            reg_grpc.add_RegistrationServicer_to_server,
            self.registration,
        )
        log.info(
            "DRA driver serving",
            extra={
                "driver": self.options.driver_name,
                "registration": str(self.options.registration_socket),
                "endpoint": str(self.options.endpoint),
                "prepared": len(self.preparer.prepared()),
            },
        )

    def _serve(self, path: Path, name: str, add: Any, servicer: object) -> None:
        path.parent.mkdir(parents=True, exist_ok=True)
        _remove_socket(path)
        server = grpc.server(
            futures.ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix=name)
        )
        add(servicer, server)
        if server.add_insecure_port(unix_target(path)) == 0:
            raise OSError(f"cannot listen on {path}")
        server.start()
        self._servers.append((server, path))

    def stop(self, grace: float = 1.0) -> None:
        """Stop serving, the registration socket first (the kubelet then forgets the
        driver), and remove both sockets. The prepared claims stay recorded."""
        servers, self._servers = self._servers, []
        for server, path in reversed(servers):
            server.stop(grace).wait(grace + 1)
            _remove_socket(path)


def _remove_socket(path: Path) -> None:
    try:
        mode = os.lstat(path).st_mode
    except FileNotFoundError:
        return
    if stat.S_ISSOCK(mode) or stat.S_ISLNK(mode):
        path.unlink()
