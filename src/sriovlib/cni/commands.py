"""ADD, DEL, CHECK, GC and STATUS: netconf and environment in, one call into the
:class:`~sriovlib.attachments.AttachmentService`, a result or a CNI error out.

What the service does (records written before any change, the per-VF lock, rollback,
release, collection of stale attachments) is documented in :mod:`sriovlib.attachments`.
This module adds what is CNI protocol: IPAM delegation as the service's
:class:`~sriovlib.attachments.Addressing` step (:class:`IpamStep`), the result (with
``prevResult`` chaining) kept with the finished attachment for CHECK, CHECK's
comparison against ``prevResult``, GC's valid-attachments list, STATUS, and the mapping
of domain errors to CNI error codes (:func:`cni_error`).

State lives under ``SRIOVLIB_STATE_DIR`` (default ``/var/lib/sriovlib``); waiting longer
than ``SRIOVLIB_CNI_LOCK_TIMEOUT`` seconds for a VF's lock gives code 11 (try again
later).
"""

from __future__ import annotations

import contextlib
import errno
import json
import logging
import math
import os
import stat
import sys
import threading
import time
from collections.abc import Callable, Iterator, Mapping
from pathlib import Path
from typing import TYPE_CHECKING, Any, TextIO, TypeVar

import attrs

from sriovlib.allocation import AllocationError, AlreadyAllocated, Owner, OwnerBusy, StoreError
from sriovlib.attachments import (
    ATTACH_STEPS,
    DEFAULT_LOCK_TIMEOUT,
    DEFAULT_STATE_DIR,
    AddressPlan,
    Attached,
    Attachment,
    AttachmentService,
    AttachRequest,
    LockTimeout,
    Reason,
    ReleaseFailed,
    StateError,
    VfUnavailable,
)
from sriovlib.cni import ipconfig
from sriovlib.cni.ipam import ExecIpam, Ipam, IpamRequest
from sriovlib.cni.netconf import LOG_LEVELS, NetConf, parse_netconf
from sriovlib.cni.protocol import (
    CHECK_FAILED,
    DEVICE_BUSY,
    DEVICE_NOT_FOUND,
    INCOMPATIBLE_VERSION,
    INTERNAL_ERROR,
    INVALID_CONFIG,
    INVALID_ENVIRONMENT,
    KERNEL_REFUSED,
    LIMITED_CONNECTIVITY,
    NOT_AVAILABLE,
    RELEASE_FAILED,
    STATE_ERROR,
    TRY_AGAIN_LATER,
    UNKNOWN_CONTAINER,
    CniError,
    Environment,
    Result,
    canonical,
    convert_result,
)
from sriovlib.exceptions import (
    AddressingRefused,
    Busy,
    DeviceNotFound,
    KernelError,
    KernelNotFound,
    NotApplied,
    SriovError,
)
from sriovlib.host import Host
from sriovlib.models import ZERO_MAC, InvalidVfConfig, PciAddress
from sriovlib.preparedvfs import (
    ClaimedVfAttached,
    NoClaimedVf,
    SeveralClaimedVfs,
    choose,
    read_prepared,
)

if TYPE_CHECKING:
    from sriovlib.plugins.manager import Plugins

__all__ = ["ADD_STEPS", "DEFAULT_STATE_DIR", "Context", "IpamStep", "cni_error", "execute"]

log = logging.getLogger("sriovlib.cni")
_T = TypeVar("_T")

#: The longest ``SRIOVLIB_CNI_LOCK_TIMEOUT`` accepted, in seconds.
MAX_LOCK_TIMEOUT = 3600.0
#: The steps of ADD, in order (what a checkpoint is called with; see
#: :mod:`sriovlib.testing.cni_binary`).
ADD_STEPS = ATTACH_STEPS


# -- context ---------------------------------------------------------------------------------


@attrs.define
class Context:
    """What a command runs against; :meth:`from_environ` builds the real one.

    Attributes:
        host_factory: Makes the :class:`Host` (called at most once, when needed).
        state_dir: The state directory (allocation store, finished attachments, locks).
        ipam: IPAM delegation.
        lock_timeout: Seconds to wait for a VF's lock.
        checkpoint: Called with the name of each step of ADD and DEL as it completes
            (the fault-injection tests' entry point passes one; the shipped binary none).
    """

    host_factory: Callable[[], Host]
    state_dir: Path
    ipam: Ipam
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    checkpoint: Callable[[str], None] | None = None
    _service: AttachmentService | None = attrs.field(default=None, init=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str], *, plugins: Plugins | None = None) -> Context:
        """The context a real invocation uses: ``SRIOVLIB_SYSFS_ROOT`` (default ``/``),
        ``SRIOVLIB_STATE_DIR``, ``SRIOVLIB_CNI_LOCK_TIMEOUT`` (seconds). The node agent
        passes its loaded vendor *plugins*."""
        root = environ.get("SRIOVLIB_SYSFS_ROOT") or "/"
        text = environ.get("SRIOVLIB_CNI_LOCK_TIMEOUT") or ""
        try:
            timeout = float(text) if text else DEFAULT_LOCK_TIMEOUT
        except ValueError:
            timeout = math.nan
        if not 0 <= timeout <= MAX_LOCK_TIMEOUT:  # also false for nan
            raise CniError(
                INVALID_ENVIRONMENT,
                "SRIOVLIB_CNI_LOCK_TIMEOUT must be a number of seconds",
                f"got {text!r}; from 0 to {MAX_LOCK_TIMEOUT:g}",
            )
        return cls(
            host_factory=lambda: Host(root, plugins=plugins),
            state_dir=Path(environ.get("SRIOVLIB_STATE_DIR") or DEFAULT_STATE_DIR),
            ipam=ExecIpam(environ),
            lock_timeout=timeout,
        )

    @property
    def service(self) -> AttachmentService:
        """The attachment service (made on first use)."""
        if self._service is None:
            self._service = AttachmentService(
                self.host_factory,
                self.state_dir,
                lock_timeout=self.lock_timeout,
                checkpoint=self._checkpoint,
            )
        return self._service

    @property
    def host(self) -> Host:
        """The Host (made on first use)."""
        return self.service.host

    def close(self) -> None:
        """Close what the Host opened, if one was made (see :meth:`Host.close`)."""
        host = self._service.host_if_made if self._service is not None else None
        if host is not None:
            host.close()

    def _checkpoint(self, step: str) -> None:
        log.debug("step %s done", step)
        if self.checkpoint is not None:
            self.checkpoint(step)


# -- entry point ---------------------------------------------------------------------------


def execute(
    env: Environment,
    config: dict[str, Any],
    stdin: bytes,
    version: str,
    context: Context | Callable[[Mapping[str, str]], Context] | None = None,
    environ: Mapping[str, str] | None = None,
    *,
    stderr: TextIO | None = None,
    shared: bool = False,
) -> str | None:
    """Run one command (not VERSION) against *context* (or the context a function makes
    from *environ*; default :meth:`Context.from_environ`); return what to print on
    success. The command's log goes to ``logFile``, else *stderr* (default
    ``sys.stderr``); *shared* says the process runs other commands at the same time (the
    node agent), so the log takes only this thread's records and leaves the process's
    logger settings alone.

    Raises:
        CniError: the failure to report.
    """
    lenient = env.command in ("DEL", "GC", "STATUS")
    conf = parse_netconf(
        config, env, version, need_device=env.command in ("ADD", "CHECK"), lenient=lenient
    )
    with _logging(conf, env, stderr, shared=shared):
        for problem in conf.ignored:
            log.warning("ignored for %s: %s", env.command, problem)
        if isinstance(context, Context):
            ctx = context
        else:
            ctx = (context or Context.from_environ)(environ or os.environ)
        started = time.monotonic()
        try:
            output: str | None = None
            if env.command == "ADD":
                output = json.dumps(_add(ctx, env, conf, stdin), indent=4)
                ctx._checkpoint("replied")
            elif env.command == "DEL":
                _delete(ctx, env, conf, stdin)
            elif env.command == "CHECK":
                _check(ctx, env, conf, stdin)
            elif env.command == "GC":
                _gc(ctx, env, conf, stdin)
            else:
                _status(ctx, env, conf, stdin)
        except Exception as e:
            error = cni_error(e, env.command)
            log.error("%s failed (code %d): %s", env.command, error.code, error)
            error.logged = True
            if error is e:
                raise
            raise error from None
        finally:
            _log_requests(ctx, started)
        log.info("%s done in %.3f s", env.command, time.monotonic() - started)
        return output


class _LogHandler(logging.StreamHandler):  # type: ignore[type-arg]
    """A log handler whose failures never change a command's outcome: a log file that
    cannot be written (a full disk, ``/dev/full``) is given up on with one line on
    *fallback* (the invocation's stderr), and the command goes on."""

    def __init__(self, stream: TextIO, fallback: TextIO) -> None:
        super().__init__(stream)
        self.fallback = fallback

    def handleError(self, record: logging.LogRecord) -> None:
        if self.stream is not self.fallback:
            _stderr_line(
                f"sriov: cannot write the log file any more: {sys.exc_info()[1]}", self.fallback
            )
            self.stream = self.fallback

    def flush(self) -> None:
        with contextlib.suppress(OSError, ValueError):
            super().flush()


class _ThisThread(logging.Filter):
    """Passes the records of the thread that made it (one invocation among several)."""

    def __init__(self) -> None:
        super().__init__()
        self.thread = threading.get_ident()

    def filter(self, record: logging.LogRecord) -> bool:
        return record.thread == self.thread


class _SharedLevels:
    """The ``sriovlib`` logger's level while invocations run side by side: low enough
    for the most verbose of them, the process's own level again when none is left
    (each invocation's handler has its own level, and so should the process's)."""

    def __init__(self) -> None:
        self._lock = threading.Lock()
        self._levels: list[int] = []
        self._base = logging.NOTSET

    def enter(self, logger: logging.Logger, level: int) -> None:
        with self._lock:
            if not self._levels:
                self._base = logger.level
            self._levels.append(level)
            logger.setLevel(min(logger.getEffectiveLevel(), level))

    def leave(self, logger: logging.Logger, level: int) -> None:
        with self._lock:
            self._levels.remove(level)
            if not self._levels:
                logger.setLevel(self._base)


_shared_levels = _SharedLevels()


def _stderr_line(text: str, stream: TextIO | None = None) -> None:
    with contextlib.suppress(OSError, ValueError):
        print(text, file=stream or sys.stderr, flush=True)


def _open_log(path: str) -> Any:
    """``logFile`` for appending: created 0600, never through a symlink, only a regular
    file (a device, a FIFO or a directory is refused)."""
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC, 0o600)
    try:
        if not stat.S_ISREG(os.fstat(fd).st_mode):
            raise OSError(errno.EINVAL, "not a regular file")
        return os.fdopen(fd, "a")
    except BaseException:
        os.close(fd)
        raise


@contextlib.contextmanager
def _logging(
    conf: NetConf, env: Environment, stderr: TextIO | None, *, shared: bool
) -> Iterator[None]:
    """Send this invocation's sriovlib log records (the plugin's and the attachment
    service's) to ``logFile`` (else *stderr*) at ``logLevel``."""
    fallback = stderr if stderr is not None else sys.stderr
    stream = None
    if conf.log_file is not None:
        try:
            stream = _open_log(conf.log_file)
        except OSError as e:
            _stderr_line(f"sriov: cannot open logFile {conf.log_file}: {e.strerror or e}", fallback)
    handler = _LogHandler(stream if stream is not None else fallback, fallback)
    who = f"{env.container_id or '-'}/{env.ifname or '-'}"
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s sriov[%(process)d] {env.command} {who}: %(message)s"
        )
    )
    level = LOG_LEVELS[conf.log_level]
    root = logging.getLogger("sriovlib")
    if shared:
        handler.addFilter(_ThisThread())
        handler.setLevel(level)
        _shared_levels.enter(root, level)
    else:
        previous = root.level, root.propagate
        root.setLevel(level)
        root.propagate = False
    root.addHandler(handler)
    try:
        yield
    finally:
        root.removeHandler(handler)
        if shared:
            _shared_levels.leave(root, level)
        else:
            root.setLevel(previous[0])
            root.propagate = previous[1]
        handler.flush()
        if stream is not None:
            with contextlib.suppress(OSError):
                stream.close()


def _log_requests(ctx: Context, started: float) -> None:
    """At debug level, the netlink requests this command made (the benchmark reads it)."""
    host = ctx._service.host_if_made if ctx._service is not None else None
    if not log.isEnabledFor(logging.DEBUG) or host is None:
        return
    counts = host.request_counts()
    log.debug(
        "netlink requests: %d %s (%.3f s)",
        sum(counts.values()),
        json.dumps(counts, sort_keys=True),
        time.monotonic() - started,
    )


# -- errors --------------------------------------------------------------------------------------


def cni_error(error: BaseException, command: str) -> CniError:  # noqa: PLR0911, PLR0912 - one per family
    """A domain exception as the CNI error a runtime should see; its notes (what the
    rollback did, what else failed) go into the details."""
    notes = "; ".join(getattr(error, "__notes__", None) or [])
    if isinstance(error, CniError):
        if notes:
            error.details = _join(error.details, notes)
        return error
    details = _join(str(error), notes)
    if isinstance(error, InvalidVfConfig):
        return CniError(INVALID_CONFIG, f"{command}: invalid VF settings", details)
    if isinstance(error, DeviceNotFound | KernelNotFound):
        return CniError(DEVICE_NOT_FOUND, f"{command}: device not found", details)
    if isinstance(error, LockTimeout):
        return CniError(TRY_AGAIN_LATER, f"VF {error.vf} is busy with another command", details)
    if isinstance(error, Busy):
        return CniError(TRY_AGAIN_LATER, f"{command}: the driver is busy", details)
    if isinstance(error, AddressingRefused):
        return CniError(
            KERNEL_REFUSED, f"adding {error.what} failed", _join(str(error.cause), notes)
        )
    if isinstance(error, ReleaseFailed):
        return CniError(RELEASE_FAILED, f"restoring VF {error.vf} failed", details)
    if isinstance(error, KernelError | NotApplied):
        return CniError(KERNEL_REFUSED, f"{command}: refused", details)
    if isinstance(error, VfUnavailable):
        return CniError(
            DEVICE_BUSY, error.message, "; ".join(d for d in (error.detail, notes) if d)
        )
    if isinstance(error, AlreadyAllocated | OwnerBusy | ClaimedVfAttached):
        return CniError(DEVICE_BUSY, str(error), notes)
    if isinstance(error, NoClaimedVf | SeveralClaimedVfs):
        return _claim_error(error, notes)
    if isinstance(error, StateError | StoreError | AllocationError | OSError):
        return CniError(STATE_ERROR, f"{command}: state directory problem", details)
    log.debug("%s: unexpected %s", command, type(error).__name__, exc_info=error)
    return CniError(INTERNAL_ERROR, f"{command}: {type(error).__name__}", details)


def _claim_error(error: NoClaimedVf | SeveralClaimedVfs, notes: str) -> CniError:
    """No VF of the pod's claims (101; 106 when damaged records may hold it), or several
    and nothing in the configuration to choose between them (7)."""
    if isinstance(error, SeveralClaimedVfs):
        return CniError(INVALID_CONFIG, str(error), notes)
    if error.damaged:
        damaged = "damaged records: " + "; ".join(error.damaged)
        return CniError(STATE_ERROR, str(error), _join(damaged, notes))
    return CniError(DEVICE_NOT_FOUND, str(error), notes)


def _join(*parts: str) -> str:
    return "; ".join(part for part in parts if part)


# -- IPAM, the service's addressing step ---------------------------------------------------------


def _need(value: _T | None, what: str) -> _T:
    """*value*, which validation guarantees for this command."""
    if value is None:
        raise CniError(INVALID_ENVIRONMENT, f"{what} is missing")
    return value


def _stored_config(conf: NetConf) -> dict[str, Any]:
    """The configuration as recorded for a later DEL or GC (without prevResult)."""
    return {k: v for k, v in conf.raw.items() if k != "prevResult"}


class IpamStep:
    """IPAM delegation as the attachment service's addressing step.

    ADD's own request goes to the IPAM plugin of this configuration, and so does its
    rollback. Every other release — DEL, a stale attachment cleared by ADD or collected
    by GC, a release still owed — uses the configuration recorded with the attachment,
    the one that reserved the address (a DEL naming another network, or another IPAM
    configuration, releases the right lease); only DEL of an attachment with nothing
    recorded uses this configuration.
    """

    def __init__(self, ctx: Context, env: Environment, conf: NetConf, stdin: bytes) -> None:
        self.ctx, self.env, self.conf, self.stdin = ctx, env, conf, stdin
        self.request: IpamRequest | None = None
        self.allocated: Result = {}

    def _request(
        self,
        plugin: str,
        config: bytes,
        version: str,
        container_id: str | None,
        netns: str | None,
        ifname: str | None,
    ) -> IpamRequest:
        return IpamRequest(
            plugin=plugin,
            config=config,
            version=version,
            container_id=container_id,
            netns=netns,
            ifname=ifname,
            path=self.env.path,
            args=";".join(f"{k}={v}" for k, v in self.env.args),
        )

    def own_request(self) -> IpamRequest | None:
        """This invocation's IPAM request (None without ``ipam``)."""
        if self.conf.ipam is None:
            return None
        env = self.env
        return self._request(
            self.conf.ipam["type"],
            self.stdin,
            self.conf.cni_version,
            env.container_id,
            env.netns,
            env.ifname,
        )

    def assign(self, attached: Attached) -> AddressPlan | None:
        """IPAM ADD; the addresses and routes of its result."""
        self.request = self.own_request()
        if self.request is None:
            return None
        self.allocated = self.ctx.ipam.add(self.request)
        ips = [{**ip, "interface": 0} for ip in self.allocated.get("ips", [])]
        self.allocated = {**self.allocated, "ips": ips}
        return ipconfig.address_plan(ips, self.allocated.get("routes", []))

    def release(self, owner: Owner, attachment: Attachment | None, reason: Reason) -> None:
        """IPAM DEL (see the class documentation for which configuration)."""
        ipam = self.ctx.ipam
        if reason is Reason.ROLLBACK:
            if self.request is not None:
                ipam.delete(self.request)
            return
        recorded = _recorded_ipam(attachment.recorded if attachment is not None else None)
        if recorded is not None:
            ipam.delete(self._request(*recorded, owner.container_id, owner.netns, owner.ifname))
            return
        own = self.own_request() if reason is Reason.DETACH else None
        if own is not None:
            ipam.delete(own)


def _recorded_ipam(config: Mapping[str, Any] | None) -> tuple[str, bytes, str] | None:
    """(plugin, stdin, version) for an IPAM DEL from a recorded configuration."""
    if not config or not isinstance(config.get("ipam"), dict):
        return None
    plugin = config["ipam"].get("type")
    if not isinstance(plugin, str) or not plugin:
        return None
    version = config.get("cniVersion")
    return plugin, canonical(config), version if isinstance(version, str) else "1.0.0"


# -- ADD ---------------------------------------------------------------------------------------


def _add(ctx: Context, env: Environment, conf: NetConf, stdin: bytes) -> dict[str, Any]:
    netns, ifname = _need(env.netns, "CNI_NETNS"), _need(env.ifname, "CNI_IFNAME")
    if not os.path.exists(netns):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {netns} does not exist")
    if _same_file(netns, "/proc/self/ns/net"):
        raise CniError(
            INVALID_ENVIRONMENT,
            f"CNI_NETNS {netns} is the plugin's own network namespace",
            "a VF is moved out of the host namespace into a pod's; this one is the host's",
        )
    if conf.ipam is not None:
        ctx.ipam.locate(conf.ipam["type"], env.path)  # fail before touching the VF
    owner = Owner(_need(env.container_id, "CNI_CONTAINERID"), ifname, netns)
    if conf.device_id is None:
        device_id, source = _claimed_vf(ctx, conf, owner)
    else:
        device_id, source = conf.device_id, conf.device_id_source or "deviceID"
        _check_not_claimed(ctx, conf, device_id)
    log.info("ADD VF %s (from %s) as %s in %s", device_id, source, ifname, netns)
    request = AttachRequest(
        owner,
        device_id,
        conf.name,
        mac=conf.mac,
        config=conf.vf_config,
        recorded=_stored_config(conf),
    )
    step = IpamStep(ctx, env, conf, stdin)
    replies: list[Result] = []

    def keep(attached: Attached) -> dict[str, Any]:
        own: Result = {"cniVersion": conf.cni_version, "interfaces": [_interface(conf, attached)]}
        for key in ("ips", "routes", "dns"):
            if step.allocated.get(key):
                own[key] = step.allocated[key]
        replies.append(_chain(conf.prev_result, own))
        return {"result": own}

    ctx.service.attach(request, step, keep)
    return convert_result(replies[-1], conf.cni_version)


def _claimed_vf(ctx: Context, conf: NetConf, owner: Owner) -> tuple[PciAddress, str]:
    """The VF the DRA driver prepared for the pod of ``CNI_ARGS`` (``conf.dra``), and
    where it came from."""
    choice = conf.dra
    namespace, pod, uid = _need(choice.pod, "CNI_ARGS K8S_POD_NAMESPACE and K8S_POD_NAME")
    store = ctx.service.store

    def holder(address: PciAddress) -> str | None:
        record = store.get(address)
        if record is None or record.owner.same_as(owner):
            return None
        netns = record.owner.netns
        if netns is not None and not os.path.exists(netns):
            return None  # a stale holder: the attach clears it
        return str(record.owner)

    prepared = read_prepared(ctx.state_dir, choice.driver)
    for damaged in prepared.damaged:
        log.warning("DRA record left out: %s", damaged)
    try:
        vf = choose(prepared, namespace=namespace, pod=pod, pod_uid=uid, claim=choice.claim,
                    request=choice.request, holder=holder)  # fmt: skip
    except NoClaimedVf as e:
        e.add_note(f"driver {choice.driver}, records in {ctx.state_dir}/dra/{choice.driver}/claims")
        raise
    try:
        ctx.host.vf(vf.address)
    except DeviceNotFound as e:
        raise NoClaimedVf(
            f"{vf} (prepared for pod {namespace}/{pod}) is not a VF of this node: the "
            f"record is from another node, or the VF went away ({e})"
        ) from None
    return vf.address, f"DRA {vf}"


def _check_not_claimed(ctx: Context, conf: NetConf, device_id: PciAddress) -> None:
    """A ``deviceID`` (the device plugin's, or written in the configuration) that a DRA
    claim holds for another pod is refused: one VF, one pod."""
    prepared = read_prepared(ctx.state_dir)
    pod = conf.dra.pod
    for vf in prepared.vfs:
        if vf.address != device_id:
            continue
        if pod is not None and vf.reserved_for(*pod):
            return
        pods = ", ".join(f"{vf.namespace}/{name}" for name, _ in vf.pods) or "no pod"
        raise ClaimedVfAttached(
            f"VF {device_id} is prepared for DRA claim {vf.namespace}/{vf.claim} of driver "
            f"{vf.driver} (reserved for {pods}), not for this pod"
        )


def _same_file(one: str, other: str) -> bool:
    try:
        a, b = os.stat(one), os.stat(other)
    except OSError:
        return False
    return (a.st_dev, a.st_ino) == (b.st_dev, b.st_ino)


def _interface(conf: NetConf, attached: Attached) -> dict[str, Any]:
    """The result's interface entry."""
    owner, snapshot = attached.request.owner, attached.snapshot
    interface: dict[str, Any] = {
        "name": owner.ifname,
        "sandbox": owner.netns,
        "pciID": str(snapshot.vf),
    }
    if attached.link is not None:
        interface["mac"] = attached.link.mac
        interface["mtu"] = attached.link.mtu
        return interface
    mac = conf.mac or snapshot.vf_state.mac
    if mac and mac != ZERO_MAC:
        interface["mac"] = mac
    if attached.pf_mtu is not None:
        interface["mtu"] = attached.pf_mtu
    return interface


def _chain(prev: Result | None, own: Result) -> Result:
    """This plugin's result appended to the previous plugin's (``prevResult``)."""
    if prev is None:
        return own
    interfaces = list(prev.get("interfaces", []))
    offset = len(interfaces)
    interfaces += own.get("interfaces", [])
    ips = list(prev.get("ips", [])) + [
        {**ip, "interface": ip.get("interface", 0) + offset} for ip in own.get("ips", [])
    ]
    result: Result = {"cniVersion": own["cniVersion"], "interfaces": interfaces}
    if ips:
        result["ips"] = ips
    routes = list(prev.get("routes", [])) + list(own.get("routes", []))
    if routes:
        result["routes"] = routes
    result["dns"] = own.get("dns") or prev.get("dns", {})
    return result


# -- DEL ---------------------------------------------------------------------------------------


def _delete(ctx: Context, env: Environment, conf: NetConf, stdin: bytes) -> None:
    owner = Owner(
        _need(env.container_id, "CNI_CONTAINERID"), _need(env.ifname, "CNI_IFNAME"), env.netns
    )
    step = IpamStep(ctx, env, conf, stdin)
    ctx.service.detach(owner, conf.name, step, vf=conf.device_id)


# -- CHECK -------------------------------------------------------------------------------------


def _check(ctx: Context, env: Environment, conf: NetConf, stdin: bytes) -> None:
    container_id = _need(env.container_id, "CNI_CONTAINERID")
    netns, ifname = _need(env.netns, "CNI_NETNS"), _need(env.ifname, "CNI_IFNAME")
    if conf.prev_result is None:
        raise CniError(
            INVALID_CONFIG, "CHECK needs prevResult", "the runtime must pass the result of the ADD"
        )
    owner = Owner(container_id, ifname, netns)
    held = ctx.service.find(conf.name, owner)
    if held is None:
        raise CniError(CHECK_FAILED, f"no attachment of {owner} is known to this plugin")
    problems: list[str] = []
    if conf.device_id is not None and conf.device_id != held.vf:
        problems.append(f"deviceID {conf.device_id} but VF {held.vf} is attached")
    dpdk = held.dpdk
    if dpdk is None:
        dpdk = held.snapshot is not None and held.snapshot.host_name is None
    host = ctx.host
    try:
        state = host.vf_state(held.vf)
        wrong = state.mismatches(conf.vf_config)
        problems += [
            f"VF {name} is {getattr(state, name)}, expected {getattr(conf.vf_config, name)}"
            for name in wrong
        ]
        if not dpdk:
            problems += _check_interface(host, env, conf, held)
    except (SriovError, OSError) as e:
        problems.append(str(e))
    if problems:
        raise CniError(CHECK_FAILED, f"{ifname} in {netns} is not as set up", "; ".join(problems))
    own = IpamStep(ctx, env, conf, stdin).own_request()
    if own is not None:
        ctx.ipam.check(own)


def _check_interface(host: Host, env: Environment, conf: NetConf, held: Attachment) -> list[str]:
    netns, ifname = _need(env.netns, "CNI_NETNS"), _need(env.ifname, "CNI_IFNAME")
    prev = _need(conf.prev_result, "prevResult")
    problems = []
    try:
        link = host.link(ifname, netns)
    except KernelNotFound:
        return [f"there is no interface {ifname} in {netns}"]
    if link.parent not in (None, str(held.vf)):
        problems.append(f"{ifname} is device {link.parent}, not VF {held.vf}")
    if not link.up:
        problems.append(f"{ifname} is down")
    interfaces = prev.get("interfaces", [])
    mine = [
        i
        for i, entry in enumerate(interfaces)
        if entry.get("name") == ifname and entry.get("sandbox") in (None, netns)
    ]
    if not mine:
        problems.append(f"prevResult lists no interface {ifname} in {netns}")
        return problems
    expected_mac = interfaces[mine[0]].get("mac")
    if expected_mac and expected_mac.lower() != link.mac:
        problems.append(f"{ifname} has MAC {link.mac}, prevResult says {expected_mac}")
    if conf.mac and conf.mac != link.mac:
        problems.append(f"{ifname} has MAC {link.mac}, the configuration asks {conf.mac}")
    wanted = [ip for ip in prev.get("ips", []) if ip.get("interface") == mine[0]]
    if wanted:
        present = ipconfig.addresses(host, netns, link)
        problems += [
            f"address {ip['address']} is missing on {ifname}"
            for ip in wanted
            if ip["address"] not in present
        ]
        routes = prev.get("routes", [])
        if routes:
            planned = ipconfig.plan_routes(wanted, routes)
            have = ipconfig.route_keys(host, netns, link)
            # only routes through this interface's gateways can be this plugin's
            gateways = {ip.get("gateway") for ip in wanted}
            problems += [
                f"route {r['dst']} via {r.get('gw') or 'link'} is missing on {ifname}"
                for r in planned
                if r.get("gw") in gateways and (r["dst"], r.get("gw")) not in have
            ]
    return problems


# -- GC and STATUS ------------------------------------------------------------------------------


def _valid_attachments(config: Mapping[str, Any]) -> set[tuple[str, str]]:
    key = "cni.dev/valid-attachments"
    value = config.get(key)
    if value is None:
        key = "cni.dev/attachments"  # what libcni also sends (CNI issue 1101)
        value = config.get(key)
    if value is None:
        return set()
    if not isinstance(value, list):
        raise CniError(INVALID_CONFIG, f"{key} must be a list")
    valid = set()
    for i, item in enumerate(value):
        if (
            not isinstance(item, dict)
            or not isinstance(item.get("containerID"), str)
            or not isinstance(item.get("ifname"), str)
        ):
            raise CniError(INVALID_CONFIG, f"{key}[{i}] must be {{containerID, ifname}} strings")
        valid.add((item["containerID"], item["ifname"]))
    return valid


def _gc(ctx: Context, env: Environment, conf: NetConf, stdin: bytes) -> None:
    valid = _valid_attachments(conf.raw)
    step = IpamStep(ctx, env, conf, stdin)
    _, failures = ctx.service.collect(conf.name, valid, step)
    errors = [cni_error(e, "GC") for e in failures]
    own = step.own_request()
    if own is not None:
        try:
            ctx.ipam.gc(own)
        except CniError as e:
            if not _predates(e):
                errors.append(e)
            else:
                log.warning("IPAM plugin %s does not know GC: %s", own.plugin, e)
    if errors:
        raise errors[0]


def _predates(error: CniError) -> bool:
    """Whether an IPAM error to GC or STATUS says the plugin predates the command (CNI
    before 1.1): an incompatible version, an unknown ``CNI_COMMAND``, or a missing
    container id — GC and STATUS have none (libcni sends ``CNI_CONTAINERID`` empty), so
    only a plugin that handles them as ADD/DEL/CHECK asks for one (Debian's host-local
    1.1.1: code 3, "missing containerID")."""
    return error.code in (INCOMPATIBLE_VERSION, UNKNOWN_CONTAINER) or (
        error.code == INVALID_ENVIRONMENT and "CNI_COMMAND" in error.msg.upper()
    )


def _status(ctx: Context, env: Environment, conf: NetConf, stdin: bytes) -> None:
    problems = ctx.service.problems()
    if problems:
        raise CniError(NOT_AVAILABLE, "the sriov plugin is not ready", "; ".join(problems))
    own = IpamStep(ctx, env, conf, stdin).own_request()
    if own is None:
        return
    if not env.path:
        raise CniError(
            INVALID_ENVIRONMENT,
            "CNI_PATH is not set",
            f"STATUS needs it to ask the IPAM plugin {own.plugin}",
        )
    try:
        ctx.ipam.status(own)
    except CniError as e:
        if _predates(e):
            log.info("IPAM plugin %s predates STATUS; taking it as ready", own.plugin)
            return
        code = e.code if e.code in (NOT_AVAILABLE, LIMITED_CONNECTIVITY) else NOT_AVAILABLE
        raise CniError(code, f"IPAM is not ready: {e.msg}", e.details) from None
