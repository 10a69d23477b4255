"""The attachment service: give a VF to a container crash-safely, take it back exactly.

"Give VF *v* to container *c* as interface *i* in namespace *n* with settings *k*; take
it back as it was; collect what is stale." :class:`AttachmentService` does that for every
entrypoint that hands out VFs (the CNI plugin today; the agent's CNI fast path and its
orphan reclaim next). It owns the bookkeeping and calls the :class:`~sriovlib.host.Host`
for the kernel work. It knows no protocol: address assignment (the CNI's IPAM
delegation) is an :class:`Addressing` step the caller passes in, and failures are domain
exceptions (:mod:`sriovlib.exceptions`, :mod:`sriovlib.allocation`) that carry what an
adapter needs to pick its error code.

State, under the state directory (``/var/lib/sriovlib`` by default):

- ``allocations/``: the :class:`~sriovlib.allocation.AllocationStore`. :meth:`attach`
  writes the VF's record — owner, the VF's snapshot from before any change, the network
  and what the caller asked to keep — *before* it changes anything, so a process killed
  at any instant leaves what :meth:`detach` needs.
- ``cni/attachments/``: one :class:`FinishedAttachments` entry per attachment, written
  when :meth:`attach` has finished (with what the caller asked to keep: the CNI's
  result, for CHECK). :meth:`detach` works without it. (The ``cni/`` in the path is
  where version 0.1 kept it; the layout is kept so that an upgrade finds it.)
- ``cni/locks/<VF>.lock``: the per-VF ``flock`` every operation on that VF holds
  throughout, address assignment included. Waiting longer than the lock timeout raises
  :class:`LockTimeout`.

:meth:`attach`: lock; clear a stale holder (a holder whose namespace is gone, or this very
owner from an earlier attach that was never detached); snapshot; record; configure and
attach the VF (:meth:`Host.attach <sriovlib.host.Host.attach>` with that snapshot);
address assignment; addresses and routes on the interface; the finished entry. A failure
at any step undoes every earlier one — address assignment included — and the exception
says how that went (a note). :meth:`detach`: address release, restore the VF from the
recorded snapshot (or, where that is lost or does not fit, bring it home in safe
defaults), drop the records; nothing left to do is success. A VF that cannot be restored
keeps its records so that a retry can finish; an address release that fails does not
hold the VF: the VF is freed and the release kept as owed (``cni/owed/``), tried again by
the next detach and by :meth:`collect`.

*checkpoint*, when given, is called with the name of each step as it completes
(:data:`ATTACH_STEPS`, :data:`DETACH_STEPS`): the fault-injection tests kill the process
there through :mod:`sriovlib.testing.cni_binary`.
"""

from __future__ import annotations

import contextlib
import enum
import fcntl
import hashlib
import json
import logging
import os
import time
from collections.abc import Callable, Iterator, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any, Protocol

import attrs

from sriovlib._files import private_dir, read_private, write_atomic
from sriovlib.allocation import Allocation, AllocationStore, AlreadyAllocated, Owner, OwnerBusy
from sriovlib.exceptions import DeviceNotFound, KernelError, SriovError
from sriovlib.host import USERSPACE_DRIVERS, Host
from sriovlib.models import (
    ZERO_MAC,
    AttachSnapshot,
    IpInterface,
    LinkInfo,
    PciAddress,
    Route,
    VfConfig,
    VfState,
    VirtualFunction,
)

__all__ = [
    "ATTACH_STEPS",
    "DEFAULT_LOCK_TIMEOUT",
    "DEFAULT_STATE_DIR",
    "DETACH_STEPS",
    "AddressPlan",
    "Addressing",
    "AttachRequest",
    "Attached",
    "Attachment",
    "AttachmentService",
    "FinishedAttachments",
    "LockTimeout",
    "Reason",
    "ReleaseFailed",
    "StateError",
    "VfUnavailable",
]

log = logging.getLogger("sriovlib.attachments")

#: Where the service keeps its state unless told otherwise.
DEFAULT_STATE_DIR = Path("/var/lib/sriovlib")
#: Seconds to wait for another operation's lock on a VF.
DEFAULT_LOCK_TIMEOUT = 20.0
#: The steps of :meth:`AttachmentService.attach` reported to *checkpoint*, in order
#: (``replied`` is the CNI plugin's own, after it printed the result).
ATTACH_STEPS = ("locked", "allocated", "attached", "ipam-added", "addressed", "cached", "replied")
#: The steps of :meth:`AttachmentService.detach` reported to *checkpoint*.
DETACH_STEPS = ("del-ipam", "del-released")
_FINISHED_FORMAT = 1


# -- errors ----------------------------------------------------------------------------------


class LockTimeout(SriovError):
    """Another operation held the VF's lock longer than the lock timeout; try again."""

    def __init__(self, vf: PciAddress, timeout: float) -> None:
        self.vf = vf
        self.timeout = timeout
        super().__init__(
            f"VF {vf} is busy with another operation: its lock was not free within "
            f"{timeout:g} s; try again"
        )


class StateError(SriovError):
    """The state directory could not be read or written (the message says which file)."""


class VfUnavailable(SriovError):
    """The VF cannot be given out now (no netdev on the host, held by something else)."""

    def __init__(self, message: str, detail: str) -> None:
        self.message = message
        self.detail = detail
        super().__init__(f"{message}: {detail}")


class ReleaseFailed(SriovError):
    """Restoring a VF failed; its records are kept so that a retry can finish."""

    def __init__(self, vf: PciAddress, detail: str) -> None:
        self.vf = vf
        self.detail = detail
        super().__init__(f"restoring VF {vf} failed: {detail}")


# -- values ----------------------------------------------------------------------------------


@attrs.frozen
class AttachRequest:
    """One VF for one owner.

    Attributes:
        owner: Who gets it: container id, interface name, namespace path (required).
        vf: The VF's PCI address.
        network: The network the attachment belongs to (the CNI's ``name``); records are
            found by network and owner, and :meth:`AttachmentService.collect` works per
            network.
        mac: The MAC of the interface in the pod (None: keep the VF's own).
        config: VF settings applied through the PF (None: none), undone on release.
        recorded: What to keep with the record for a later release, as JSON-able data
            (the CNI: its configuration, for IPAM DEL).
    """

    owner: Owner
    vf: PciAddress
    network: str
    mac: str | None = None
    config: VfConfig | None = None
    recorded: Mapping[str, Any] = attrs.field(factory=dict, eq=False)


@attrs.frozen
class Attachment:
    """What the service knows about one attachment, from its records.

    Attributes:
        vf: The VF.
        owner: Its holder.
        snapshot: The VF as it was before the attach (None: the record's is unreadable).
        network: The network it belongs to (None: unknown).
        recorded: What the caller asked to keep (:attr:`AttachRequest.recorded`).
        dpdk: The VF has no netdev (bound to a userspace driver); None when unknown.
        finished: Whether the attach finished (its finished entry exists).
    """

    vf: PciAddress
    owner: Owner
    snapshot: AttachSnapshot | None
    network: str | None
    recorded: Mapping[str, Any] | None = attrs.field(eq=False)
    dpdk: bool | None = None
    finished: bool = False


@attrs.frozen
class Attached:
    """A VF in its namespace, as :class:`Addressing` and the caller see it.

    Attributes:
        request: The request.
        snapshot: What the release restores.
        dpdk: The VF has no netdev (userspace driver): *link* is None.
        link: The interface in the namespace.
        pf_mtu: For a DPDK VF, its PF's MTU (None when unknown).
    """

    request: AttachRequest
    snapshot: AttachSnapshot
    dpdk: bool
    link: LinkInfo | None
    pf_mtu: int | None = None


@attrs.frozen
class AddressPlan:
    """The addresses and routes to put on the interface in the namespace."""

    addresses: tuple[IpInterface, ...] = ()
    routes: tuple[Route, ...] = ()


class Reason(enum.Enum):
    """Why :meth:`Addressing.release` is called."""

    #: The attach that just assigned the addresses failed later on.
    ROLLBACK = "rollback"
    #: The owner asked for its attachment to be taken back.
    DETACH = "detach"
    #: The attachment is stale (namespace gone, a repeated attach, not valid any more).
    STALE = "stale"


class Addressing(Protocol):
    """Address assignment, a step of :meth:`AttachmentService.attach` (the CNI plugin's
    is IPAM delegation). Either method may raise; the service reports it."""

    def assign(self, attached: Attached) -> AddressPlan | None:
        """Reserve addresses for *attached*; the service puts them on its interface.
        None: nothing to assign for this attachment."""

    def release(self, owner: Owner, attachment: Attachment | None, reason: Reason) -> None:
        """Give back what :meth:`assign` reserved for *owner* (idempotent; *attachment*
        is None when nothing is recorded for it)."""


# -- the finished entries ----------------------------------------------------------------------


class FinishedAttachments:
    """One JSON file per finished attach, keyed by (network, container id, interface)."""

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
            data = json.loads(read_private(path))
        except FileNotFoundError:
            return None
        except (OSError, ValueError) as e:
            log.warning("ignoring unreadable attachment file %s: %s", path, e)
            return None
        if not isinstance(data, dict) or data.get("format") != _FINISHED_FORMAT:
            log.warning("ignoring attachment file %s: not written by sriovlib", path)
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

    def write(self, entry: Mapping[str, Any]) -> None:
        """Write atomically (see :func:`sriovlib._files.write_atomic`), root only."""
        path = self.path(entry["network"], entry["containerID"], entry["ifname"])
        data = json.dumps({"format": _FINISHED_FORMAT, **entry}, indent=2).encode() + b"\n"
        try:
            private_dir(self.directory.parent.parent, follow=True)
            private_dir(self.directory.parent)
            private_dir(self.directory)
            write_atomic(path, data, mode=0o600)
        except OSError as e:
            raise StateError(f"cannot write {path}: {e}") from None

    def delete(self, network: str, container_id: str, ifname: str) -> None:
        """Remove the entry (no error when it is missing)."""
        path = self.path(network, container_id, ifname)
        try:
            path.unlink()
        except (FileNotFoundError, NotADirectoryError):
            return
        except OSError as e:
            raise StateError(f"cannot remove {path}: {e}") from None


# -- the service -------------------------------------------------------------------------------


class AttachmentService:
    """Gives VFs to owners and takes them back (see the module documentation).

    Args:
        host: The Host, or a function that makes it (called once, when first needed: an
            operation that fails early never loads netlink).
        state_dir: The state directory.
        lock_timeout: Seconds to wait for a VF's lock.
        checkpoint: Called with each step's name as it completes (tests).
    """

    def __init__(
        self,
        host: Host | Callable[[], Host],
        state_dir: str | os.PathLike[str] = DEFAULT_STATE_DIR,
        *,
        lock_timeout: float = DEFAULT_LOCK_TIMEOUT,
        checkpoint: Callable[[str], None] | None = None,
    ) -> None:
        self._host = host if isinstance(host, Host) else None
        self._make_host = host if not isinstance(host, Host) else None
        self.state_dir = Path(state_dir)
        self.lock_timeout = lock_timeout
        self.checkpoint = checkpoint if checkpoint is not None else _no_checkpoint
        self.store = AllocationStore(self.state_dir / "allocations")
        self.finished = FinishedAttachments(self.state_dir / "cni" / "attachments")
        #: Address releases that failed after the VF was restored (see :meth:`detach`).
        self.owed = FinishedAttachments(self.state_dir / "cni" / "owed")

    @property
    def host(self) -> Host:
        """The Host (made on first use)."""
        if self._host is None and self._make_host is not None:
            self._host = self._make_host()
            self._make_host = None
        if self._host is None:  # pragma: no cover - one of the two is always set
            raise TypeError("AttachmentService needs a Host")
        return self._host

    @property
    def host_if_made(self) -> Host | None:
        """The Host if it has been made."""
        return self._host

    def _private_dirs(self) -> None:
        """The state directory and the service's directories under it, 0700 and ours
        (none of those under it a symlink: see :func:`sriovlib._files.private_dir`)."""
        private_dir(self.state_dir, follow=True)
        for part in ("allocations", "cni", "cni/attachments", "cni/locks", "cni/owed"):
            private_dir(self.state_dir / part)

    @contextlib.contextmanager
    def lock(self, vf: PciAddress) -> Iterator[None]:
        """Hold *vf*'s lock; :class:`LockTimeout` after ``lock_timeout`` seconds."""
        directory = self.state_dir / "cni" / "locks"
        try:
            self._private_dirs()
            fd = os.open(
                directory / f"{vf}.lock",
                os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC,
                0o600,
            )
        except OSError as e:
            raise StateError(f"cannot create the lock of VF {vf}: {e}") from None
        try:
            deadline = time.monotonic() + self.lock_timeout
            delay = 0.005
            while True:
                try:
                    fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
                    break
                except BlockingIOError:
                    if time.monotonic() >= deadline:
                        raise LockTimeout(vf, self.lock_timeout) from None
                    time.sleep(delay)
                    delay = min(delay * 2, 0.1)
            yield
        finally:
            os.close(fd)

    # -- attach ----------------------------------------------------------------------------

    def attach(
        self,
        request: AttachRequest,
        addressing: Addressing | None = None,
        keep: Callable[[Attached], Mapping[str, Any]] | None = None,
    ) -> Attached:
        """Give the VF to the owner (see the module documentation for the steps).

        *keep*, called once the VF is attached and addressed, returns what to store with
        the finished entry (the CNI: its result, for CHECK).

        Raises:
            DeviceNotFound: no such VF, or its PF has no netdev.
            AlreadyAllocated: the VF is held by a live owner.
            OwnerBusy: the owner holds another VF.
            VfUnavailable: the VF has no netdev on the host and is not a DPDK VF.
            LockTimeout, StateError, StoreError: the lock or the records.
            KernelError, NotApplied, InvalidVfConfig, AddressingRefused: the kernel
                work; or whatever *addressing* raised. After the record was written, the
                exception carries a note saying how the rollback went.
        """
        owner = request.owner
        netns = _netns_of(owner)
        host = self.host
        vf = self._lookup(request.vf)
        log.info("attach VF %s as %s in %s", vf.address, owner.ifname, netns)
        with self.lock(vf.address):
            self.checkpoint("locked")
            self._clear_stale(owner, vf.address, addressing)
            vf = self._lookup(vf.address)  # fresh, after any clean-up
            dpdk = vf.netdev is None and vf.driver in USERSPACE_DRIVERS
            if vf.netdev is None and not dpdk:
                raise VfUnavailable(
                    f"VF {vf.address} has no network interface on the host",
                    f"driver {vf.driver}: it is probably attached to another pod by "
                    "something other than sriovlib, or its driver is still loading",
                )
            # what attach restores on failure and detach from, on disk before any change
            snapshot = host.snapshot(vf, netns, owner.ifname, None if dpdk else request.mac)
            state = {
                "snapshot": snapshot.to_dict(),
                "attachment": {
                    "network": request.network,
                    "dpdk": dpdk,
                    "recorded": dict(request.recorded),
                },
            }
            self.store.allocate_vf(owner, vf.address, original_state=state)
            self.checkpoint("allocated")
            return self._attach_and_address(request, snapshot, dpdk, addressing, keep)

    def _attach_and_address(
        self,
        request: AttachRequest,
        snapshot: AttachSnapshot,
        dpdk: bool,
        addressing: Addressing | None,
        keep: Callable[[Attached], Mapping[str, Any]] | None,
    ) -> Attached:
        owner, host = request.owner, self.host
        netns = _netns_of(owner)
        assigned = False
        try:
            config = request.config if request.config and request.config.fields() else None
            host.attach(
                snapshot.vf,
                netns,
                owner.ifname,
                mac=None if dpdk else request.mac,
                config=config,
                snapshot=snapshot,
            )
            self.checkpoint("attached")
            attached = Attached(
                request,
                snapshot,
                dpdk,
                None if dpdk else host.link(owner.ifname, netns),
                _pf_mtu(host, snapshot) if dpdk else None,
            )
            assigned = addressing is not None
            plan = None if addressing is None else addressing.assign(attached)
            if plan is not None:
                self.checkpoint("ipam-added")
                if attached.link is not None:
                    host.configure_addresses(netns, attached.link, plan.addresses, plan.routes)
                    self.checkpoint("addressed")
            kept = dict(keep(attached)) if keep is not None else {}
            self.finished.write(
                {
                    "network": request.network,
                    "containerID": owner.container_id,
                    "ifname": owner.ifname,
                    "netns": netns,
                    "vf": str(snapshot.vf),
                    "dpdk": dpdk,
                    "snapshot": snapshot.to_dict(),
                    "config": dict(request.recorded),
                    **kept,
                    "addedAt": datetime.now(UTC).isoformat(),
                }
            )
            self.checkpoint("cached")
        except BaseException as failure:
            failure.add_note(self._roll_back(request, snapshot, addressing if assigned else None))
            raise
        log.info(
            "VF %s is %s in %s%s",
            snapshot.vf,
            owner.ifname,
            netns,
            " (DPDK: no netdev)" if dpdk else "",
        )
        return attached

    def _roll_back(
        self, request: AttachRequest, snapshot: AttachSnapshot, addressing: Addressing | None
    ) -> str:
        """Undo a failed attach; say how it went."""
        done: list[str] = []
        failed: list[str] = []
        owner = request.owner
        held = Attachment(
            snapshot.vf,
            owner,
            snapshot,
            request.network,
            request.recorded,
            dpdk=snapshot.host_name is None,
        )
        if addressing is not None:
            try:
                addressing.release(owner, held, Reason.ROLLBACK)
                done.append("IPAM released")
            except Exception as e:
                failed.append(f"IPAM DEL failed: {e}")
        try:
            self._restore(held, owner.netns)
            done.append("VF restored")
        except ReleaseFailed as e:
            failed.append(str(e))
        if not failed:
            try:
                self._forget(held)
                done.append("allocation dropped")
            except (SriovError, OSError) as e:
                failed.append(str(e))
        if failed:
            log.error("attach rollback incomplete: %s", "; ".join(failed))
            return "ROLLBACK INCOMPLETE (a DEL will finish it): " + "; ".join(failed)
        log.info("attach rolled back: %s", ", ".join(done))
        return "rolled back: " + ", ".join(done)

    def _lookup(self, address: PciAddress) -> VirtualFunction:
        try:
            return self.host.vf(address)
        except DeviceNotFound as e:
            raise DeviceNotFound(
                "VF", str(address), f"{e}; check the device plugin's allocation and sriov_numvfs"
            ) from None

    def _clear_stale(self, owner: Owner, vf: PciAddress, addressing: Addressing | None) -> None:
        """Make room: an earlier attach of this owner that was never detached, or a holder
        whose namespace no longer exists, is cleaned up; a live holder is an error."""
        mine = self.store.find(owner)
        holder = self.store.get(vf)
        if mine is not None and mine.vf != vf:
            raise OwnerBusy(mine)
        if holder is None:
            return
        same = holder.owner.same_as(owner)
        gone = holder.owner.netns is not None and not os.path.exists(holder.owner.netns)
        if not same and not gone:
            raise AlreadyAllocated(holder)
        why = (
            "an earlier attach of the same owner was never detached"
            if same
            else f"its namespace {holder.owner.netns} is gone"
        )
        self._clean_up(self._held_of(holder), addressing, why)

    # -- detach ----------------------------------------------------------------------------

    def detach(
        self,
        owner: Owner,
        network: str,
        addressing: Addressing | None = None,
        *,
        vf: PciAddress | None = None,
    ) -> Attachment | None:
        """Take back what *owner* holds on *network*: address release, the VF restored
        from its snapshot, the records dropped. Returns what was held (None: nothing was
        recorded, which is success). *vf* is the VF the caller believes it holds, used
        only when nothing is recorded (to take its lock).

        A release still owed from an earlier detach is tried again first.

        Raises:
            ReleaseFailed: the VF could not be restored (the records are kept, and any
                address release failure is a note).
            LockTimeout, StateError: the lock or the records.
            Whatever *addressing* raised: the VF is restored and its record dropped all
                the same (it is free for the next owner), and the release is kept as
                owed (``cni/owed/``) for the next detach of *owner* and for
                :meth:`collect`.
        """
        held = self.find(network, owner)
        owed = self._owed(owner)
        target = next((h.vf for h in (held, owed) if h is not None), vf)
        if target is None:
            log.info("detach: nothing recorded for %s", owner)
            if addressing is not None:
                addressing.release(owner, None, Reason.DETACH)
            return None
        with self.lock(target):
            held = self.find(network, owner)  # again, under the lock
            owed = self._owed(owner)
            address_error: Exception | None = None
            if addressing is not None:
                try:
                    addressing.release(owner, held or owed, Reason.DETACH)
                except Exception as e:
                    address_error = e
            self.checkpoint("del-ipam")
            if held is None:
                log.info("detach: no VF recorded for %s (VF %s left as it is)", owner, target)
            else:
                if vf is not None and vf != held.vf:
                    log.warning(
                        "VF %s differs from the recorded VF %s; releasing the recorded one",
                        vf,
                        held.vf,
                    )
                try:
                    self._restore(held, owner.netns)
                except ReleaseFailed as e:
                    if address_error is not None:
                        e.add_note(str(address_error))
                    raise  # the records stay: the next detach tries both again
                self.checkpoint("del-released")
                self._forget(held)
            if address_error is not None:
                self._owe(held or owed, owner, network)
                address_error.add_note(
                    "the VF is restored and free again; the address release is kept and "
                    "tried again by the next DEL of this attachment and by GC"
                )
                raise address_error
            if owed is not None:
                self.owed.delete(owed.network or network, owner.container_id, owner.ifname)
            return held

    # -- address releases still owed ---------------------------------------------------------

    def _owed(self, owner: Owner) -> Attachment | None:
        """The address release still owed for *owner* (see :meth:`detach`), if any."""
        for _, entry in self.owed.entries():
            if (entry.get("containerID"), entry.get("ifname")) == (
                owner.container_id,
                owner.ifname,
            ):
                held = _attachment(None, entry)
                if held is not None:
                    return held
        return None

    def _owe(
        self, held: Attachment | None, owner: Owner, network: str, why: str = "failed"
    ) -> None:
        """Keep an address release that failed (or that *why* else was not done), for
        the next detach of *owner* and for :meth:`collect`: the VF itself is already
        free."""
        if held is None:
            return  # nothing recorded: the caller's own configuration is all there was
        log.warning("the address release of %s %s: kept to try again", owner, why)
        self.owed.write(
            {
                "network": held.network or network,
                "containerID": owner.container_id,
                "ifname": owner.ifname,
                "netns": owner.netns,
                "vf": str(held.vf),
                "snapshot": None,
                "config": dict(held.recorded or {}),
                "owedSince": datetime.now(UTC).isoformat(),
            }
        )

    def _settle_owed(
        self, network: str | None, valid: set[tuple[str, str]], addressing: Addressing
    ) -> list[Exception]:
        """Try every owed address release of *network* (every network: None) whose
        owner is not in *valid*; drop the ones that succeed."""
        errors: list[Exception] = []
        for _, entry in self.owed.entries():
            held = _attachment(None, entry)
            if held is None or (network is not None and held.network != network):
                continue
            if (held.owner.container_id, held.owner.ifname) in valid:
                continue
            try:
                addressing.release(held.owner, held, Reason.STALE)
            except Exception as e:
                errors.append(e)
                continue
            self.owed.delete(held.network or "", held.owner.container_id, held.owner.ifname)
        return errors

    def find(self, network: str, owner: Owner) -> Attachment | None:
        """What is recorded for *owner* on *network* (the allocation record, which is
        authoritative, combined with the finished entry); None when nothing is."""
        entry = self.finished.read(network, owner.container_id, owner.ifname)
        damaged = None
        try:
            record = self.store.find(owner)
        except (SriovError, OSError) as e:
            log.warning("allocation record of %s unreadable: %s", owner, e)
            record = None
            damaged = self.store.held_vf(owner)  # its file name still names the VF
        if entry is None and record is not None:
            log.info("no finished entry for %s: using the allocation record", owner)
        held = _attachment(record, entry)
        if held is None and damaged is not None:
            held = Attachment(damaged, owner, None, network, None)
        return held

    # -- collect ---------------------------------------------------------------------------

    def collect(
        self,
        network: str,
        valid: set[tuple[str, str]],
        addressing: Addressing | None = None,
    ) -> tuple[int, list[Exception]]:
        """Take back every attachment of *network* whose (container id, interface) is not
        in *valid*, and drop finished entries left without a record. Returns how many
        were taken back and the failures (each one kept for a later try)."""
        errors: list[Exception] = []
        released = 0
        for record in self.store.records():
            if _network_of(record) != network:
                continue
            if (record.owner.container_id, record.owner.ifname) in valid:
                continue
            try:
                with self.lock(record.vf):
                    current = self.store.find(record.owner)
                    if current is None or current.vf != record.vf:
                        continue
                    held = self._held_of(current)
                    self._clean_up(held, addressing, "not in the runtime's valid attachments")
                    released += 1
            except Exception as e:  # the addressing step's own errors too
                errors.append(e)
        for path, entry in self.finished.entries():
            if entry.get("network") != network:
                continue
            if (entry.get("containerID"), entry.get("ifname")) in valid:
                continue
            try:
                owner = Owner(entry["containerID"], entry["ifname"], entry.get("netns"))
                if self.store.find(owner) is None:
                    log.info("dropping the finished entry %s: no record left", path)
                    path.unlink(missing_ok=True)
            except (KeyError, ValueError, TypeError, SriovError, OSError) as e:
                log.warning("cannot judge the finished entry %s: %s", path, e)
        if addressing is not None:
            errors += self._settle_owed(network, valid, addressing)
        log.info("collected %d attachment(s) of network %s", released, network)
        return released, errors

    def orphans(self) -> tuple[Allocation, ...]:
        """The records whose owner's network namespace is gone: the pod went without a
        DEL (yet). Records without a namespace are never orphans."""
        return self.store.stale()

    def reclaim_orphan(
        self,
        record: Allocation,
        still_orphan: Callable[[Allocation], bool] | None = None,
        *,
        why: str = "its network namespace is gone",
    ) -> bool:
        """Take back the VF of *record*, an orphan, as a DEL would: the VF restored from
        its snapshot (or reset to safe defaults), the records dropped. The address
        release (IPAM, which runs with the runtime's ``CNI_PATH`` and environment) is
        kept as owed (``cni/owed/``, as after a failed release): the runtime's DEL of
        that attachment, if it ever comes, or its next GC of the network releases it.

        Whether the record is still an orphan is asked again under the VF's lock, of the
        record as it is then: by *still_orphan* (the caller's own sign of a gone pod),
        by default whether its network namespace is gone. False, and nothing done, when
        the record changed or is no longer an orphan; *why* goes into the log.

        Raises:
            ReleaseFailed: the VF could not be restored (the records are kept).
        """
        with self.lock(record.vf):
            current = self.store.find(record.owner)
            if current is None or current.vf != record.vf:
                return False
            if still_orphan is None:
                if current not in self.store.stale():
                    return False
            elif current.owner.netns is None or not still_orphan(current):
                return False  # a record without a namespace is never reclaimed
            held = self._held_of(current)
            self._clean_up(held, None, f"{why} (orphan reclaim)")
            if held.recorded and held.recorded.get("ipam"):
                self._owe(held, held.owner, held.network or "", "left to the runtime's DEL or GC")
            return True

    def problems(self) -> list[str]:
        """Why the service could not work now (an empty list when it can)."""
        found = []
        try:
            self._private_dirs()
        except OSError as e:
            found.append(f"{getattr(e, 'filename', None) or self.state_dir}: {e.strerror or e}")
        else:
            if not os.access(self.state_dir / "allocations", os.W_OK):
                found.append(f"{self.state_dir / 'allocations'} is not writable")
        pci_devices = Path(self.host.sysfs.root) / "sys/bus/pci/devices"
        if not pci_devices.is_dir():
            found.append(f"{pci_devices} does not exist")
        return found

    # -- shared steps ----------------------------------------------------------------------

    def _held_of(self, record: Allocation) -> Attachment:
        network = _network_of(record)
        entry = None
        if network is not None:
            entry = self.finished.read(network, record.owner.container_id, record.owner.ifname)
        held = _attachment(record, entry)
        if held is None:  # pragma: no cover - a record always names its VF and owner
            raise StateError(f"the allocation record of VF {record.vf} could not be read")
        return held

    def _clean_up(self, held: Attachment, addressing: Addressing | None, why: str) -> None:
        """Undo an earlier attachment completely, then forget it."""
        log.warning("cleaning up %s on VF %s: %s", held.owner, held.vf, why)
        if addressing is not None:
            addressing.release(held.owner, held, Reason.STALE)
        self._restore(held, held.owner.netns)
        self._forget(held)

    def _restore(self, held: Attachment, netns: str | None) -> None:
        """Restore the VF from the snapshot, or, where it is lost, bring it home in
        :data:`~sriovlib.host.attach.SAFE_DEFAULTS` (:class:`ReleaseFailed` when that
        fails)."""
        netns = netns or held.owner.netns
        snapshot = held.snapshot
        try:
            current = self.host.vf(held.vf)
        except DeviceNotFound:
            log.warning("VF %s no longer exists: nothing to restore", held.vf)
            return
        try:
            if snapshot is not None and not self._fits(snapshot, current):
                snapshot = None
            if snapshot is None:
                log.warning(
                    "no usable snapshot of VF %s: bringing it home in safe defaults", held.vf
                )
                report = self.host.reset_vf(held.vf, netns, held.owner.ifname)
            else:
                report = self.host.release(snapshot, netns or snapshot.netns)
                if not self._home(held.vf):
                    log.warning(
                        "the release left VF %s outside the host (%s): resetting it",
                        held.vf,
                        "; ".join(report.warnings) or "no netdev found",
                    )
                    report = self.host.reset_vf(held.vf, netns, held.owner.ifname)
                    snapshot = None
            if not self._home(held.vf):
                raise DeviceNotFound("netdev of VF", str(held.vf), "it is not back on the host")
        except (SriovError, OSError) as e:
            raise ReleaseFailed(held.vf, f"{_with_notes(e)}; kept for a retry") from None
        for warning in report.warnings:
            log.warning("release of VF %s: %s", held.vf, warning)
        log.info(
            "VF %s restored (found in %s, restored: %s)",
            held.vf,
            report.found_in,
            ", ".join(report.restored) or "nothing needed",
        )
        if snapshot is not None:
            self._converge(snapshot)

    def _fits(self, snapshot: AttachSnapshot, vf: VirtualFunction) -> bool:
        """Whether *snapshot* is one of *vf* as the node has it now (a damaged one that
        names another VF, index or PF must not be restored onto anything)."""
        try:
            pf = self.host.pf(vf.pf_address)
        except SriovError:
            return False
        here = (vf.address, vf.index, pf.address)
        if (snapshot.vf, snapshot.vf_index, snapshot.pf) != here or (
            snapshot.pf_netdev not in pf.netdevs
        ):
            log.warning("the snapshot of VF %s does not fit it: %s", vf.address, snapshot)
            return False
        return True

    def _home(self, vf: PciAddress) -> bool:
        """Whether *vf* is on the host: its netdev there, or no netdev to have (a
        userspace driver, no driver, the VF gone)."""
        try:
            current = self.host.vf(vf)
        except DeviceNotFound:
            return True
        if current.driver is None or current.driver in USERSPACE_DRIVERS:
            return True
        return current.netdev is not None

    def _converge(self, snapshot: AttachSnapshot) -> None:
        """Read the VF's settings back and restore them once more if they moved.

        A driver may change a VF setting as a side effect of what the netdev goes through
        during the release; a second pass, with the netdev home and quiet, settles it.
        A VF that still differs after it is not released (:class:`ReleaseFailed`): the
        records stay, so that no VF goes back to the pool with a pod's settings.
        """
        try:
            current = self.host.vf_state(snapshot.vf)
        except (SriovError, OSError) as e:
            log.warning("cannot read VF %s back after the release: %s", snapshot.vf, e)
            return
        if _same_settings(current, snapshot):
            return
        log.info("VF %s settings moved during the release; restoring them again", snapshot.vf)
        try:
            self.host.release(snapshot)
            current = self.host.vf_state(snapshot.vf)
        except (SriovError, OSError) as e:
            raise ReleaseFailed(snapshot.vf, _with_notes(e)) from None
        if not _same_settings(current, snapshot):
            raise ReleaseFailed(
                snapshot.vf,
                f"its settings are {current} after two restores, were {snapshot.vf_state}; "
                "kept for a retry",
            )

    def _forget(self, held: Attachment) -> None:
        """Drop the finished entry, then the allocation record (in that order: a detach
        killed in between still finds the record)."""
        if held.network is not None:
            self.finished.delete(held.network, held.owner.container_id, held.owner.ifname)
        try:
            self.store.release(held.owner)
        except OSError as e:
            raise StateError(f"cannot drop the allocation of VF {held.vf}: {e}") from None


# -- helpers -----------------------------------------------------------------------------------


def _no_checkpoint(step: str) -> None:
    log.debug("step %s done", step)


def _netns_of(owner: Owner) -> str:
    if owner.netns is None:
        raise ValueError(f"{owner} has no network namespace to attach into")
    return owner.netns


def _pf_mtu(host: Host, snapshot: AttachSnapshot) -> int | None:
    with contextlib.suppress(KernelError):
        return host.link(snapshot.pf_netdev).mtu
    return None


def _with_notes(error: BaseException) -> str:
    notes = getattr(error, "__notes__", None) or []
    return "; ".join([str(error), *notes])


def _recorded_part(record: Allocation) -> Mapping[str, Any]:
    """The service's part of a record (version 0.1 wrote it under ``cni``)."""
    state = record.original_state
    part = state.get("attachment", state.get("cni"))
    return part if isinstance(part, dict) else {}


def _network_of(record: Allocation) -> str | None:
    network = _recorded_part(record).get("network")
    return network if isinstance(network, str) else None


#: What parsing a damaged record or entry raises (a field of the wrong type or value).
_MALFORMED = (KeyError, TypeError, ValueError, AttributeError, IndexError)


def _attachment(record: Allocation | None, entry: Mapping[str, Any] | None) -> Attachment | None:
    """Combine the allocation record (authoritative: written before any change) with the
    finished entry (written after the attach); either may be missing."""
    snapshot = None
    recorded: Any = None
    network = None
    vf = None
    owner = None
    dpdk = None
    if entry is not None:
        try:
            vf = PciAddress.parse(entry["vf"])
            owner = Owner(entry["containerID"], entry["ifname"], entry.get("netns"))
            recorded = entry.get("config")
            network = entry.get("network")
            dpdk = bool(entry.get("dpdk"))
            if entry.get("snapshot") is not None:
                snapshot = AttachSnapshot.from_dict(entry["snapshot"])
        except _MALFORMED as e:
            log.warning("ignoring a malformed finished entry: %s", e)
    if record is not None:
        vf, owner = record.vf, record.owner
        try:
            snapshot = AttachSnapshot.from_dict(record.original_state["snapshot"])
        except _MALFORMED as e:
            log.warning("allocation record of VF %s has no usable snapshot: %s", vf, e)
        part = _recorded_part(record)
        recorded = part.get("recorded", part.get("config", recorded))
        network = part.get("network", network)
        if dpdk is None and isinstance(part.get("dpdk"), bool):
            dpdk = part["dpdk"]
    if vf is None or owner is None:
        return None
    return Attachment(
        vf,
        owner,
        snapshot,
        network if isinstance(network, str) else None,
        recorded if isinstance(recorded, dict) else None,
        dpdk,
        entry is not None,
    )


def _same_settings(current: VfState, snapshot: AttachSnapshot) -> bool:
    """Whether *current* is the snapshot's VF state. A MAC that was never set through the
    PF reads as zero or, once the VF has reset (igb), as the VF netdev's own MAC: either
    counts as the same (see :meth:`Host.release <sriovlib.host.Host.release>`)."""
    own = (ZERO_MAC, snapshot.host_mac)
    if snapshot.vf_state.mac in own and current.mac in own:
        current = attrs.evolve(current, mac=snapshot.vf_state.mac)
    return current == snapshot.vf_state
