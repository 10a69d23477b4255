"""ADD, DEL, CHECK, GC and STATUS on top of the Host, the allocation store and IPAM.

State, under the state directory (``/var/lib/sriovlib`` unless ``SRIOVLIB_STATE_DIR``
says otherwise):

- ``allocations/``: the :class:`~sriovlib.allocation.AllocationStore` shared with the rest
  of sriovlib. ADD writes the VF's record — owner (container id, interface, namespace),
  the VF's snapshot from before any change, the configuration, the DPDK flag — *before*
  it changes anything, so a process killed at any instant leaves what DEL needs.
- ``cni/attachments/``: one file per attachment written when ADD has finished (the
  result, for CHECK); DEL works without it.
- ``cni/locks/<VF>.lock``: the per-VF ``flock`` every command on that VF holds
  throughout, IPAM included. Waiting longer than the lock timeout gives code 11 (try
  again later).

ADD: lock, clear a stale holder (a holder whose namespace is gone, or this very
attachment from an earlier ADD that never got its DEL), snapshot (:meth:`Host.snapshot`),
record, configure and attach the VF through :meth:`Host.attach` with that snapshot, IPAM
ADD, addresses and routes (:mod:`sriovlib.cni.ipconfig`, through the Host's netlink
backend), cache, reply.
A failure at any step undoes every earlier one — IPAM included — before the error is
reported. DEL: IPAM DEL, :meth:`Host.release` from the recorded snapshot, drop the
records; it succeeds when there is nothing left to do, and keeps the records (so a retry
can finish) when a step fails.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import importlib
import json
import logging
import os
import signal
import sys
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, TypeVar

import attrs

from sriovlib._files import write_atomic
from sriovlib.allocation import (
    AllocationError,
    AllocationStore,
    AlreadyAllocated,
    Owner,
    OwnerBusy,
    StoreError,
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
    CniError,
    Environment,
    Result,
    convert_result,
)
from sriovlib.exceptions import DeviceNotFound, SriovError
from sriovlib.host import USERSPACE_DRIVERS, Host, NotApplied
from sriovlib.models import (
    ZERO_MAC,
    AttachSnapshot,
    InvalidVfConfig,
    PciAddress,
    VfState,
    VirtualFunction,
)
from sriovlib.netlink import Busy, KernelError, KernelNotFound, LinkInfo, NetlinkBackend

__all__ = ["ADD_STEPS", "DEFAULT_STATE_DIR", "AttachmentCache", "Context", "execute"]

log = logging.getLogger("sriovlib.cni")
_T = TypeVar("_T")

#: Where the plugin keeps its state unless ``SRIOVLIB_STATE_DIR`` is set.
DEFAULT_STATE_DIR = Path("/var/lib/sriovlib")
#: Seconds to wait for another command's lock on a VF before answering code 11.
DEFAULT_LOCK_TIMEOUT = 20.0
#: The steps of ADD after which ``SRIOVLIB_CNI_KILL_AT`` can SIGKILL the process (tests).
ADD_STEPS = ("locked", "allocated", "attached", "ipam-added", "addressed", "cached", "replied")
_CACHE_FORMAT = 1
_TESTING_PREFIX = "sriovlib.testing."


# -- context ---------------------------------------------------------------------------------


@attrs.define
class Context:
    """What a command runs against; :meth:`from_environ` builds the real one.

    Attributes:
        host_factory: Makes the :class:`Host` (called at most once, when needed).
        state_dir: The state directory (allocation store, attachment cache, locks).
        ipam: IPAM delegation.
        lock_timeout: Seconds to wait for a VF's lock.
        kill_at: Test hook: SIGKILL this process after this ADD/DEL step.
    """

    host_factory: Callable[[], Host]
    state_dir: Path
    ipam: Ipam
    lock_timeout: float = DEFAULT_LOCK_TIMEOUT
    kill_at: str | None = None
    _host: Host | None = attrs.field(default=None, init=False)
    _started: float = attrs.field(factory=time.monotonic, init=False)

    @classmethod
    def from_environ(cls, environ: Mapping[str, str]) -> Context:
        """The context a real invocation uses.

        Environment: ``SRIOVLIB_SYSFS_ROOT`` (default ``/``), ``SRIOVLIB_STATE_DIR``,
        ``SRIOVLIB_CNI_LOCK_TIMEOUT`` (seconds), and two for tests:
        ``SRIOVLIB_CNI_NETLINK=sriovlib.testing.<module>:<factory>`` (a netlink backend
        built by ``factory(sysfs_root, environ)``) and ``SRIOVLIB_CNI_KILL_AT=<step>``.
        """
        root = environ.get("SRIOVLIB_SYSFS_ROOT") or "/"
        factory_name = environ.get("SRIOVLIB_CNI_NETLINK") or None
        try:
            timeout = float(environ.get("SRIOVLIB_CNI_LOCK_TIMEOUT") or DEFAULT_LOCK_TIMEOUT)
        except ValueError:
            raise CniError(
                INVALID_ENVIRONMENT, "SRIOVLIB_CNI_LOCK_TIMEOUT must be a number of seconds"
            ) from None

        def make_host() -> Host:
            netlink = _netlink_factory(factory_name, root, environ) if factory_name else None
            return Host(root, netlink=netlink)

        return cls(
            host_factory=make_host,
            state_dir=Path(environ.get("SRIOVLIB_STATE_DIR") or DEFAULT_STATE_DIR),
            ipam=ExecIpam(environ),
            lock_timeout=timeout,
            kill_at=environ.get("SRIOVLIB_CNI_KILL_AT") or None,
        )

    @property
    def host(self) -> Host:
        """The Host (made on first use)."""
        if self._host is None:
            self._host = self.host_factory()
        return self._host

    @property
    def store(self) -> AllocationStore:
        """The allocation store."""
        return AllocationStore(self.state_dir / "allocations")

    @property
    def cache(self) -> AttachmentCache:
        """The attachment cache."""
        return AttachmentCache(self.state_dir / "cni" / "attachments")

    def checkpoint(self, step: str) -> None:
        """Log that *step* is done (debug) and die here if the test hook asks for it (the
        fault-injection tests)."""
        log.debug("step %s done at %.3f s", step, time.monotonic() - self._started)
        if self.kill_at == step:
            log.debug("SRIOVLIB_CNI_KILL_AT=%s: killing myself", step)
            for handler in log.handlers:
                handler.flush()
            os.kill(os.getpid(), signal.SIGKILL)

    @contextlib.contextmanager
    def lock(self, vf: PciAddress) -> Iterator[None]:
        """Hold *vf*'s lock; CniError code 11 after ``lock_timeout`` seconds."""
        directory = self.state_dir / "cni" / "locks"
        try:
            directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            fd = os.open(directory / f"{vf}.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o600)
        except OSError as e:
            raise CniError(STATE_ERROR, f"cannot create the lock of VF {vf}", str(e)) from None
        try:
            deadline = time.monotonic() + self.lock_timeout
            delay = 0.005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise CniError(
                            TRY_AGAIN_LATER,
                            f"VF {vf} is busy with another CNI command",
                            f"its lock was not free within {self.lock_timeout:g} s; try again",
                        ) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)
            yield
        finally:
            os.close(fd)


def _netlink_factory(name: str, root: str, environ: Mapping[str, str]) -> NetlinkBackend:
    module_name, _, attribute = name.partition(":")
    if not module_name.startswith(_TESTING_PREFIX) or not attribute:
        raise CniError(
            INVALID_ENVIRONMENT,
            f"SRIOVLIB_CNI_NETLINK={name!r} is not allowed",
            f"it must name a factory in a {_TESTING_PREFIX}* module as module:function",
        )
    factory = getattr(importlib.import_module(module_name), attribute)
    backend: NetlinkBackend = factory(root, environ)
    return backend


# -- the attachment cache ------------------------------------------------------------------


class AttachmentCache:
    """One JSON file per finished ADD, keyed by (network, container id, interface)."""

    def __init__(self, directory: Path) -> None:
        self.directory = directory

    def path(self, network: str, container_id: str, ifname: str) -> Path:
        """The file of one attachment."""
        key = hashlib.sha256(f"{network}\0{container_id}\0{ifname}".encode()).hexdigest()
        return self.directory / f"{key[:32]}.json"

    def read(self, network: str, container_id: str, ifname: str) -> dict[str, Any] | None:
        """The entry, or None when it is missing or unreadable (logged)."""
        return self._load(self.path(network, container_id, ifname))

    def _load(self, path: Path) -> dict[str, Any] | None:
        try:
            data = json.loads(path.read_bytes())
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable cache file %s: %s", path, e)
            return None
        if not isinstance(data, dict) or data.get("format") != _CACHE_FORMAT:
            log.warning("ignoring cache file %s: not written by this plugin", path)
            return None
        return data

    def entries(self) -> list[tuple[Path, dict[str, Any]]]:
        """Every readable entry."""
        try:
            names = sorted(os.listdir(self.directory))
        except (FileNotFoundError, NotADirectoryError):
            return []
        found = []
        for name in names:
            if name.endswith(".json") and not name.startswith("."):
                data = self._load(self.directory / name)
                if data is not None:
                    found.append((self.directory / name, data))
        return found

    def write(self, entry: dict[str, Any]) -> None:
        """Write atomically (see :func:`sriovlib._files.write_atomic`), root only."""
        path = self.path(entry["network"], entry["containerID"], entry["ifname"])
        data = json.dumps({"format": _CACHE_FORMAT, **entry}, indent=2).encode() + b"\n"
        try:
            self.directory.mkdir(parents=True, exist_ok=True, mode=0o700)
            write_atomic(path, data, mode=0o600)
        except OSError as e:
            raise CniError(STATE_ERROR, f"cannot write {path}", str(e)) from None

    def delete(self, network: str, container_id: str, ifname: str) -> None:
        """Remove the entry (no error when it is missing)."""
        path = self.path(network, container_id, ifname)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise CniError(STATE_ERROR, f"cannot remove {path}", str(e)) from None


# -- entry point ---------------------------------------------------------------------------


def execute(
    env: Environment,
    config: dict[str, Any],
    stdin: bytes,
    version: str,
    context: Context | None = None,
    environ: Mapping[str, str] | None = None,
) -> str | None:
    """Run one command (not VERSION); return what to print on success.

    Raises:
        CniError: the failure to report.
    """
    lenient = env.command in ("DEL", "GC", "STATUS")
    conf = parse_netconf(
        config, env, version, need_device=env.command in ("ADD", "CHECK"), lenient=lenient
    )
    with _logging(conf, env):
        for problem in conf.ignored:
            log.warning("ignored for %s: %s", env.command, problem)
        ctx = context if context is not None else Context.from_environ(environ or os.environ)
        started = time.monotonic()
        try:
            output: str | None = None
            if env.command == "ADD":
                output = json.dumps(_add(ctx, env, conf, stdin), indent=4)
                ctx.checkpoint("replied")
            elif env.command == "DEL":
                _delete(ctx, env, conf, stdin)
            elif env.command == "CHECK":
                _check(ctx, env, conf, stdin)
            elif env.command == "GC":
                _gc(ctx, env, conf, stdin)
            else:
                _status(ctx, env, conf, stdin)
        except CniError as e:
            log.error("%s failed (code %d): %s", env.command, e.code, e)
            e.logged = True
            raise
        finally:
            _log_requests(ctx, started)
        log.info("%s done in %.3f s", env.command, time.monotonic() - started)
        return output


@contextlib.contextmanager
def _logging(conf: NetConf, env: Environment) -> Iterator[None]:
    """Send this invocation's log records to ``logFile`` (else stderr) at ``logLevel``."""
    handler: logging.Handler
    stream = None
    if conf.log_file is not None:
        try:
            stream = open(conf.log_file, "a")  # noqa: SIM115 - closed below
            handler = logging.StreamHandler(stream)
        except OSError as e:
            handler = logging.StreamHandler(sys.stderr)
            print(f"sriov: cannot open logFile {conf.log_file}: {e}", file=sys.stderr)
    else:
        handler = logging.StreamHandler(sys.stderr)
    who = f"{env.container_id or '-'}/{env.ifname or '-'}"
    handler.setFormatter(
        logging.Formatter(
            f"%(asctime)s %(levelname)s sriov[%(process)d] {env.command} {who}: %(message)s"
        )
    )
    log.addHandler(handler)
    previous = log.level, log.propagate
    log.setLevel(LOG_LEVELS[conf.log_level])
    log.propagate = False
    try:
        yield
    finally:
        log.removeHandler(handler)
        log.setLevel(previous[0])
        log.propagate = previous[1]
        handler.flush()
        if stream is not None:
            stream.close()


def _log_requests(ctx: Context, started: float) -> None:
    """At debug level, the netlink requests this command made (the benchmark reads it)."""
    if not log.isEnabledFor(logging.DEBUG) or ctx._host is None:
        return
    counts: dict[str, int] = dict(getattr(ctx._host.netlink, "requests", None) or {})
    log.debug(
        "netlink requests: %d %s (%.3f s)",
        sum(counts.values()),
        json.dumps(counts, sort_keys=True),
        time.monotonic() - started,
    )


# -- helpers -----------------------------------------------------------------------------------


def _need(value: _T | None, what: str) -> _T:
    """*value*, which validation guarantees for this command."""
    if value is None:
        raise CniError(INVALID_ENVIRONMENT, f"{what} is missing")
    return value


def _cni_args(env: Environment) -> str:
    return ";".join(f"{k}={v}" for k, v in env.args)


def _stored_config(conf: NetConf) -> dict[str, Any]:
    """The configuration as recorded for a later DEL or GC (without prevResult)."""
    return {k: v for k, v in conf.raw.items() if k != "prevResult"}


def _ipam_request(
    plugin: str,
    config: bytes,
    version: str,
    env: Environment,
    *,
    container_id: str | None = None,
    netns: str | None = None,
    ifname: str | None = None,
) -> IpamRequest:
    return IpamRequest(
        plugin=plugin,
        config=config,
        version=version,
        container_id=container_id if container_id is not None else env.container_id,
        netns=netns if netns is not None else env.netns,
        ifname=ifname if ifname is not None else env.ifname,
        path=env.path,
        args=_cni_args(env),
    )


def _device_error(error: BaseException, doing: str) -> CniError:  # noqa: PLR0911 - one per family
    """A library exception as the CNI error a runtime should see."""
    if isinstance(error, CniError):
        return error
    if isinstance(error, InvalidVfConfig):
        return CniError(INVALID_CONFIG, f"{doing}: invalid VF settings", str(error))
    if isinstance(error, DeviceNotFound | KernelNotFound):
        return CniError(DEVICE_NOT_FOUND, f"{doing}: device not found", _with_notes(error))
    if isinstance(error, Busy):
        return CniError(TRY_AGAIN_LATER, f"{doing}: the driver is busy", _with_notes(error))
    if isinstance(error, KernelError | NotApplied):
        return CniError(KERNEL_REFUSED, f"{doing}: refused", _with_notes(error))
    if isinstance(error, AlreadyAllocated | OwnerBusy):
        return CniError(DEVICE_BUSY, f"{doing}: VF already taken", str(error))
    if isinstance(error, StoreError | AllocationError):
        return CniError(STATE_ERROR, f"{doing}: allocation store problem", str(error))
    if isinstance(error, OSError):
        return CniError(STATE_ERROR, f"{doing}: I/O error", str(error))
    return CniError(INTERNAL_ERROR, f"{doing}: {type(error).__name__}", _with_notes(error))


def _with_notes(error: BaseException) -> str:
    notes = getattr(error, "__notes__", None) or []
    return "; ".join([str(error), *notes])


def _lookup_vf(host: Host, address: PciAddress) -> VirtualFunction:
    try:
        return host.vf(address)
    except DeviceNotFound as e:
        raise CniError(
            DEVICE_NOT_FOUND,
            f"deviceID {address} is not a VF on this node",
            f"{e}; check the device plugin's allocation and sriov_numvfs",
        ) from None


@attrs.frozen
class _Held:
    """What DEL and GC need about one attachment, from its record and/or its cache."""

    vf: PciAddress
    owner: Owner
    snapshot: AttachSnapshot | None
    config: Mapping[str, Any] | None = attrs.field(eq=False)
    network: str | None


def _held_from(record: Any | None, cache: Mapping[str, Any] | None) -> _Held | None:
    """Combine the allocation record (authoritative: written before any change) with the
    cache entry (written after ADD); either may be missing."""
    snapshot = None
    config = None
    network = None
    vf = None
    owner = None
    if cache is not None:
        try:
            vf = PciAddress.parse(cache["vf"])
            owner = Owner(cache["containerID"], cache["ifname"], cache.get("netns"))
            snapshot = AttachSnapshot.from_dict(cache["snapshot"])
            config = cache.get("config")
            network = cache.get("network")
        except (KeyError, TypeError, ValueError) as e:
            log.warning("ignoring a malformed cache entry: %s", e)
    if record is not None:
        vf, owner = record.vf, record.owner
        state = record.original_state
        try:
            snapshot = AttachSnapshot.from_dict(state["snapshot"])
        except (KeyError, TypeError, ValueError) as e:
            log.warning("allocation record of VF %s has no usable snapshot: %s", vf, e)
        cni = state.get("cni") if isinstance(state.get("cni"), dict) else {}
        config = cni.get("config", config)
        network = cni.get("network", network)
    if vf is None or owner is None:
        return None
    return _Held(vf, owner, snapshot, config if isinstance(config, dict) else None, network)


def _held_of(record: Any, cache: Mapping[str, Any] | None) -> _Held:
    held = _held_from(record, cache)
    if held is None:
        raise CniError(STATE_ERROR, "an allocation record could not be read")
    return held


def _release_vf(ctx: Context, held: _Held, netns: str | None) -> None:
    """Restore the VF from the snapshot (CniError 107 when that fails)."""
    if held.snapshot is None:
        log.warning("no snapshot of VF %s recorded: its settings cannot be restored", held.vf)
        return
    try:
        report = ctx.host.release(held.snapshot, netns or held.snapshot.netns)
    except (SriovError, OSError) as e:
        raise CniError(
            RELEASE_FAILED, f"restoring VF {held.vf} failed", f"{_with_notes(e)}; kept for a retry"
        ) from None
    for warning in report.warnings:
        log.warning("release of VF %s: %s", held.vf, warning)
    log.info(
        "VF %s restored (found in %s, restored: %s)",
        held.vf,
        report.found_in,
        ", ".join(report.restored) or "nothing needed",
    )
    _converge(ctx, held.snapshot)


def _same_settings(current: VfState, snapshot: AttachSnapshot) -> bool:
    """Whether *current* is the snapshot's VF state. A MAC that was never set through the
    PF reads as zero or, once the VF has reset (igb), as the VF netdev's own MAC: either
    counts as the same (see :meth:`Host.release`)."""
    own = (ZERO_MAC, snapshot.host_mac)
    if snapshot.vf_state.mac in own and current.mac in own:
        current = attrs.evolve(current, mac=snapshot.vf_state.mac)
    return current == snapshot.vf_state


def _converge(ctx: Context, snapshot: AttachSnapshot) -> None:
    """Read the VF's settings back and restore them once more if they moved.

    A driver may change a VF setting as a side effect of what the netdev goes through
    during the release; a second pass, with the netdev home and quiet, settles it.
    """
    try:
        current = ctx.host.vf_state(snapshot.vf)
    except (SriovError, OSError) as e:
        log.warning("cannot read VF %s back after the release: %s", snapshot.vf, e)
        return
    if _same_settings(current, snapshot):
        return
    log.info("VF %s settings moved during the release; restoring them again", snapshot.vf)
    try:
        ctx.host.release(snapshot)
        current = ctx.host.vf_state(snapshot.vf)
    except (SriovError, OSError) as e:
        raise CniError(
            RELEASE_FAILED, f"restoring VF {snapshot.vf} failed", _with_notes(e)
        ) from None
    if not _same_settings(current, snapshot):
        log.warning(
            "VF %s is %s after the release, was %s", snapshot.vf, current, snapshot.vf_state
        )


def _ipam_delete(
    ctx: Context,
    env: Environment,
    plugin: str,
    config: bytes,
    version: str,
    owner: Owner,
) -> None:
    ctx.ipam.delete(
        _ipam_request(
            plugin,
            config,
            version,
            env,
            container_id=owner.container_id,
            netns=owner.netns,
            ifname=owner.ifname,
        )
    )


def _recorded_ipam(config: Mapping[str, Any] | None) -> tuple[str, bytes, str] | None:
    """(plugin, stdin, version) for an IPAM DEL from a recorded configuration."""
    if not config or not isinstance(config.get("ipam"), dict):
        return None
    plugin = config["ipam"].get("type")
    if not isinstance(plugin, str) or not plugin:
        return None
    version = config.get("cniVersion")
    return plugin, json.dumps(config).encode(), version if isinstance(version, str) else "1.0.0"


def _forget(ctx: Context, held: _Held) -> None:
    """Drop the cache entry, then the allocation record (in that order: a DEL killed in
    between still finds the record)."""
    if held.network is not None:
        ctx.cache.delete(held.network, held.owner.container_id, held.owner.ifname)
    try:
        ctx.store.release(held.owner)
    except (StoreError, OSError) as e:
        raise CniError(STATE_ERROR, f"cannot drop the allocation of VF {held.vf}", str(e)) from None


def _clean_up(ctx: Context, env: Environment, held: _Held, why: str) -> None:
    """Undo an earlier attachment completely (IPAM from its recorded configuration, the
    VF from its snapshot), then forget it."""
    log.warning("cleaning up %s on VF %s: %s", held.owner, held.vf, why)
    ipam = _recorded_ipam(held.config)
    if ipam is not None:
        _ipam_delete(ctx, env, *ipam, held.owner)
    _release_vf(ctx, held, held.owner.netns)
    _forget(ctx, held)


# -- ADD ---------------------------------------------------------------------------------------


def _add(ctx: Context, env: Environment, conf: NetConf, stdin: bytes) -> dict[str, Any]:
    device_id = _need(conf.device_id, "deviceID")
    netns, ifname = _need(env.netns, "CNI_NETNS"), _need(env.ifname, "CNI_IFNAME")
    if not os.path.exists(netns):
        raise CniError(INVALID_ENVIRONMENT, f"CNI_NETNS {netns} does not exist")
    if conf.ipam is not None:
        ctx.ipam.locate(conf.ipam["type"], env.path)  # fail before touching the VF
    host = ctx.host
    vf = _lookup_vf(host, device_id)
    owner = Owner(_need(env.container_id, "CNI_CONTAINERID"), ifname, netns)
    log.info("ADD VF %s (from %s) as %s in %s", vf.address, conf.device_id_source, ifname, netns)
    with ctx.lock(vf.address):
        ctx.checkpoint("locked")
        _clear_stale(ctx, env, owner, vf.address)
        vf = _lookup_vf(host, vf.address)  # fresh, after any clean-up
        dpdk = vf.netdev is None and vf.driver in USERSPACE_DRIVERS
        if vf.netdev is None and not dpdk:
            raise CniError(
                DEVICE_BUSY,
                f"VF {vf.address} has no network interface on the host",
                f"driver {vf.driver}: it is probably attached to another pod by something "
                "other than this plugin, or its driver is still loading",
            )
        try:
            # what attach will restore on failure and DEL from, on disk before any change
            snapshot = host.snapshot(vf, netns, ifname, None if dpdk else conf.mac)
        except (SriovError, OSError) as e:
            raise _device_error(e, f"reading VF {vf.address}") from None
        cni_state = {"network": conf.name, "dpdk": dpdk, "config": _stored_config(conf)}
        try:
            ctx.store.allocate_vf(
                owner,
                vf.address,
                original_state={"snapshot": snapshot.to_dict(), "cni": cni_state},
            )
        except (SriovError, OSError) as e:
            raise _device_error(e, f"allocating VF {vf.address}") from None
        ctx.checkpoint("allocated")
        return _attach_and_address(ctx, env, conf, stdin, vf, snapshot, owner, dpdk)


def _clear_stale(ctx: Context, env: Environment, owner: Owner, vf: PciAddress) -> None:
    """Make room: an earlier ADD of this attachment that never got its DEL, or a holder
    whose namespace no longer exists, is cleaned up; a live holder is an error."""
    store = ctx.store
    try:
        mine = store.find(owner)
        holder = store.get(vf)
    except (StoreError, OSError) as e:
        raise _device_error(e, f"reading the allocation of VF {vf}") from None
    if mine is not None and mine.vf != vf:
        raise CniError(
            DEVICE_BUSY,
            f"{owner} already holds VF {mine.vf}",
            "a second ADD for the same container and interface needs a DEL first",
        )
    if holder is None:
        return
    same = holder.owner.same_as(owner)
    gone = holder.owner.netns is not None and not os.path.exists(holder.owner.netns)
    if not same and not gone:
        raise CniError(
            DEVICE_BUSY,
            f"VF {vf} is held by {holder.owner}",
            f"since {holder.allocated_at.isoformat()}; its namespace "
            f"{holder.owner.netns} still exists",
        )
    cache = None
    network = holder.original_state.get("cni", {}).get("network")
    if isinstance(network, str):
        cache = ctx.cache.read(network, holder.owner.container_id, holder.owner.ifname)
    held = _held_of(holder, cache)
    why = (
        "an earlier ADD of the same attachment was never deleted"
        if same
        else f"its namespace {holder.owner.netns} is gone"
    )
    _clean_up(ctx, env, held, why)


def _attach_and_address(
    ctx: Context,
    env: Environment,
    conf: NetConf,
    stdin: bytes,
    vf: VirtualFunction,
    snapshot: AttachSnapshot,
    owner: Owner,
    dpdk: bool,
) -> dict[str, Any]:
    netns, ifname = _need(env.netns, "CNI_NETNS"), _need(env.ifname, "CNI_IFNAME")
    container_id = _need(env.container_id, "CNI_CONTAINERID")
    host = ctx.host
    ipam_request = None
    try:
        try:
            host.attach(
                vf,
                netns,
                ifname,
                mac=None if dpdk else conf.mac,
                config=conf.vf_config if conf.vf_config.fields() else None,
                snapshot=snapshot,
            )
        except (SriovError, OSError) as e:
            raise _device_error(e, f"attaching VF {vf.address}") from None
        ctx.checkpoint("attached")
        interface, link = _interface(host, conf, env, snapshot, dpdk)
        own: Result = {"cniVersion": conf.cni_version, "interfaces": [interface]}
        if conf.ipam is not None:
            ipam_request = _ipam_request(conf.ipam["type"], stdin, conf.cni_version, env)
            allocated = ctx.ipam.add(ipam_request)
            ctx.checkpoint("ipam-added")
            ips = [{**ip, "interface": 0} for ip in allocated.get("ips", [])]
            own["ips"] = ips
            if allocated.get("routes"):
                own["routes"] = allocated["routes"]
            if allocated.get("dns"):
                own["dns"] = allocated["dns"]
            if link is not None:
                ipconfig.configure(host.netlink, netns, link, ips, own.get("routes", []))
                ctx.checkpoint("addressed")
        result = _chain(conf.prev_result, own)
        ctx.cache.write(
            {
                "network": conf.name,
                "containerID": container_id,
                "ifname": ifname,
                "netns": netns,
                "vf": str(vf.address),
                "dpdk": dpdk,
                "snapshot": snapshot.to_dict(),
                "config": _stored_config(conf),
                "result": own,
                "addedAt": datetime.now(UTC).isoformat(),
            }
        )
        ctx.checkpoint("cached")
    except BaseException as failure:
        note = _roll_back(ctx, env, conf, snapshot, owner, ipam_request)
        if isinstance(failure, CniError):
            failure.details = "; ".join(d for d in (failure.details, note) if d)
            raise
        if isinstance(failure, Exception):
            error = _device_error(failure, f"ADD of VF {vf.address}")
            error.details = "; ".join(d for d in (error.details, note) if d)
            raise error from None
        raise
    log.info("VF %s is %s in %s%s", vf.address, ifname, netns, " (DPDK: no netdev)" if dpdk else "")
    return convert_result(result, conf.cni_version)


def _interface(
    host: Host, conf: NetConf, env: Environment, snapshot: AttachSnapshot, dpdk: bool
) -> tuple[dict[str, Any], LinkInfo | None]:
    """The result's interface entry, and the interface in the pod (None for DPDK)."""
    netns, ifname = _need(env.netns, "CNI_NETNS"), _need(env.ifname, "CNI_IFNAME")
    interface: dict[str, Any] = {"name": ifname, "sandbox": netns, "pciID": str(snapshot.vf)}
    if not dpdk:
        link = host.netlink.get_link(ifname, netns)
        interface["mac"] = link.mac
        interface["mtu"] = link.mtu
        return interface, link
    mac = conf.mac or snapshot.vf_state.mac
    if mac and mac != ZERO_MAC:
        interface["mac"] = mac
    with contextlib.suppress(KernelError):
        interface["mtu"] = host.netlink.get_link(snapshot.pf_netdev).mtu
    return interface, None


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


def _roll_back(
    ctx: Context,
    env: Environment,
    conf: NetConf,
    snapshot: AttachSnapshot,
    owner: Owner,
    ipam_request: IpamRequest | None,
) -> str:
    """Undo a failed ADD; say how it went (for the error's details)."""
    done = []
    failed = []
    if ipam_request is not None:
        try:
            ctx.ipam.delete(ipam_request)
            done.append("IPAM released")
        except CniError as e:
            failed.append(f"IPAM DEL failed: {e}")
    held = _Held(snapshot.vf, owner, snapshot, _stored_config(conf), conf.name)
    try:
        _release_vf(ctx, held, env.netns)
        done.append("VF restored")
    except CniError as e:
        failed.append(str(e))
    if not failed:
        try:
            _forget(ctx, held)
            done.append("allocation dropped")
        except CniError as e:
            failed.append(str(e))
    if failed:
        log.error("ADD rollback incomplete: %s", "; ".join(failed))
        return "ROLLBACK INCOMPLETE (a DEL will finish it): " + "; ".join(failed)
    log.info("ADD rolled back: %s", ", ".join(done))
    return "rolled back: " + ", ".join(done)


# -- DEL ---------------------------------------------------------------------------------------


def _delete(ctx: Context, env: Environment, conf: NetConf, stdin: bytes) -> None:
    owner = Owner(
        _need(env.container_id, "CNI_CONTAINERID"), _need(env.ifname, "CNI_IFNAME"), env.netns
    )
    held = _find_held(ctx, conf, owner)
    vf = held.vf if held is not None else conf.device_id
    if vf is None:
        log.info("DEL: nothing recorded for %s", owner)
        _delete_ipam(ctx, env, conf, stdin, None, owner)
        return
    with ctx.lock(vf):
        held = _find_held(ctx, conf, owner)  # again, under the lock
        errors: list[CniError] = []
        try:
            _delete_ipam(ctx, env, conf, stdin, held, owner)
        except CniError as e:
            errors.append(e)
        ctx.checkpoint("del-ipam")
        if held is None:
            log.info("DEL: no VF recorded for %s (deviceID %s left as it is)", owner, vf)
        else:
            if conf.device_id is not None and conf.device_id != held.vf:
                log.warning(
                    "deviceID %s differs from the recorded VF %s; releasing the recorded one",
                    conf.device_id,
                    held.vf,
                )
            try:
                _release_vf(ctx, held, env.netns)
            except CniError as e:
                errors.append(e)
            ctx.checkpoint("del-released")
        if errors:
            first = errors[0]
            if len(errors) > 1:
                first.details = "; ".join([first.details, *map(str, errors[1:])])
            raise first
        if held is not None:
            _forget(ctx, held)


def _find_held(ctx: Context, conf: NetConf, owner: Owner) -> _Held | None:
    cache = ctx.cache.read(conf.name, owner.container_id, owner.ifname)
    try:
        record = ctx.store.find(owner)
    except (StoreError, OSError) as e:
        log.warning("allocation record of %s unreadable: %s", owner, e)
        record = None
    if cache is None and record is not None:
        log.info("no cache for %s: using the allocation record of VF %s", owner, record.vf)
    return _held_from(record, cache)


def _delete_ipam(
    ctx: Context,
    env: Environment,
    conf: NetConf,
    stdin: bytes,
    held: _Held | None,
    owner: Owner,
) -> None:
    """IPAM DEL with this DEL's configuration, else the recorded one."""
    if conf.ipam is not None:
        ctx.ipam.delete(_ipam_request(conf.ipam["type"], stdin, conf.cni_version, env))
        return
    recorded = _recorded_ipam(held.config if held is not None else None)
    if recorded is not None:
        _ipam_delete(ctx, env, *recorded, owner)


# -- CHECK -------------------------------------------------------------------------------------


def _check(ctx: Context, env: Environment, conf: NetConf, stdin: bytes) -> None:
    container_id = _need(env.container_id, "CNI_CONTAINERID")
    netns, ifname = _need(env.netns, "CNI_NETNS"), _need(env.ifname, "CNI_IFNAME")
    if conf.prev_result is None:
        raise CniError(
            INVALID_CONFIG, "CHECK needs prevResult", "the runtime must pass the result of the ADD"
        )
    owner = Owner(container_id, ifname, netns)
    cache = ctx.cache.read(conf.name, container_id, ifname)
    held = _find_held(ctx, conf, owner)
    if held is None:
        raise CniError(CHECK_FAILED, f"no attachment of {owner} is known to this plugin")
    problems: list[str] = []
    if conf.device_id is not None and conf.device_id != held.vf:
        problems.append(f"deviceID {conf.device_id} but VF {held.vf} is attached")
    if cache is not None:
        dpdk = bool(cache.get("dpdk"))
    else:
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
            problems += _check_interface(ctx, env, conf, held)
    except (SriovError, OSError) as e:
        problems.append(str(e))
    if problems:
        raise CniError(CHECK_FAILED, f"{ifname} in {netns} is not as set up", "; ".join(problems))
    if conf.ipam is not None:
        ctx.ipam.check(_ipam_request(conf.ipam["type"], stdin, conf.cni_version, env))


def _check_interface(ctx: Context, env: Environment, conf: NetConf, held: _Held) -> list[str]:
    netns, ifname = _need(env.netns, "CNI_NETNS"), _need(env.ifname, "CNI_IFNAME")
    prev = _need(conf.prev_result, "prevResult")
    problems = []
    try:
        link = ctx.host.netlink.get_link(ifname, netns)
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
        nl = ctx.host.netlink
        present = ipconfig.addresses(nl, netns, link)
        problems += [
            f"address {ip['address']} is missing on {ifname}"
            for ip in wanted
            if ip["address"] not in present
        ]
        routes = prev.get("routes", [])
        if routes:
            planned = ipconfig.plan_routes(wanted, routes)
            have = ipconfig.route_keys(nl, netns, link)
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
    errors = _gc_allocations(ctx, env, conf, valid)
    _gc_cache(ctx, conf, valid)
    if conf.ipam is not None:
        try:
            ctx.ipam.gc(_ipam_request(conf.ipam["type"], stdin, conf.cni_version, env))
        except CniError as e:
            if not _predates(e):
                errors.append(e)
            else:
                log.warning("IPAM plugin %s does not know GC: %s", conf.ipam["type"], e)
    if errors:
        raise errors[0]


def _gc_allocations(
    ctx: Context, env: Environment, conf: NetConf, valid: set[tuple[str, str]]
) -> list[CniError]:
    """Release every attachment of this network that is not in *valid*."""
    errors: list[CniError] = []
    released = 0
    try:
        records = ctx.store.records()
    except (StoreError, OSError) as e:
        raise _device_error(e, "reading the allocation store") from None
    for record in records:
        cni = record.original_state.get("cni")
        if not isinstance(cni, dict) or cni.get("network") != conf.name:
            continue
        if (record.owner.container_id, record.owner.ifname) in valid:
            continue
        try:
            with ctx.lock(record.vf):
                current = ctx.store.find(record.owner)
                if current is None or current.vf != record.vf:
                    continue
                cache = ctx.cache.read(conf.name, record.owner.container_id, record.owner.ifname)
                held = _held_of(current, cache)
                _clean_up(ctx, env, held, "not in the runtime's valid attachments")
                released += 1
        except CniError as e:
            errors.append(e)
    log.info("GC released %d attachment(s) of network %s", released, conf.name)
    return errors


def _gc_cache(ctx: Context, conf: NetConf, valid: set[tuple[str, str]]) -> None:
    """Drop cache entries of this network that have no allocation record left."""
    for path, entry in ctx.cache.entries():
        if entry.get("network") != conf.name:
            continue
        if (entry.get("containerID"), entry.get("ifname")) in valid:
            continue
        try:
            owner = Owner(entry["containerID"], entry["ifname"], entry.get("netns"))
            if ctx.store.find(owner) is None:
                log.info("GC: dropping orphaned cache entry %s", path)
                path.unlink(missing_ok=True)
        except (KeyError, ValueError, TypeError, SriovError, OSError) as e:
            log.warning("GC: cannot judge cache entry %s: %s", path, e)


def _predates(error: CniError) -> bool:
    """Whether an IPAM error says the plugin predates the command (CNI before 1.1)."""
    return error.code == INCOMPATIBLE_VERSION or (
        error.code == INVALID_ENVIRONMENT and "CNI_COMMAND" in error.msg.upper()
    )


def _status(ctx: Context, env: Environment, conf: NetConf, stdin: bytes) -> None:
    problems = []
    for directory in (ctx.state_dir / "allocations", ctx.state_dir / "cni"):
        try:
            directory.mkdir(parents=True, exist_ok=True)
            if not os.access(directory, os.W_OK):
                problems.append(f"{directory} is not writable")
        except OSError as e:
            problems.append(f"{directory}: {e.strerror or e}")
    pci_devices = Path(ctx.host.sysfs.root) / "sys/bus/pci/devices"
    if not pci_devices.is_dir():
        problems.append(f"{pci_devices} does not exist")
    if problems:
        raise CniError(NOT_AVAILABLE, "the sriov plugin is not ready", "; ".join(problems))
    if conf.ipam is None:
        return
    if not env.path:
        raise CniError(
            INVALID_ENVIRONMENT,
            "CNI_PATH is not set",
            f"STATUS needs it to ask the IPAM plugin {conf.ipam['type']}",
        )
    try:
        ctx.ipam.status(_ipam_request(conf.ipam["type"], stdin, conf.cni_version, env))
    except CniError as e:
        if _predates(e):
            log.info("IPAM plugin %s predates STATUS; taking it as ready", conf.ipam["type"])
            return
        code = e.code if e.code in (NOT_AVAILABLE, LIMITED_CONNECTIVITY) else NOT_AVAILABLE
        raise CniError(code, f"IPAM is not ready: {e.msg}", e.details) from None
