"""Orphan reclaim: VFs held for pods that are gone, taken back without waiting for a DEL.

A CNI attachment record names its pod's network namespace, and a DEL may never come (a
runtime crash, a node reboot mid-teardown): upstream's users find such VFs leaked.
:class:`Reclaimer` looks at the records on each of the agent's wake-ups for two signs of
a gone pod:

- ``netns-gone``: the record's network namespace no longer exists;
- ``not-in-pod-resources``: the record's VF is a device of a pool the agent serves, the
  kubelet's pod-resources API answers, and none of its containers lists that device ID
  (under any resource name: a pool renamed by a config change keeps its pods' devices).
  A kubelet that does not answer leaves this sign unused.

A record seen orphaned continuously for ``grace`` seconds is reclaimed through
:meth:`sriovlib.attachments.AttachmentService.reclaim_orphan` (the sign checked again
under the VF's lock; the VF restored from its snapshot, the records dropped), or with
``dry-run`` only reported. The grace period covers a namespace that is briefly unmounted,
a record written a moment before its namespace, and a kubelet that lists its pods only
partly while it starts.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable, Collection, Iterable
from typing import TYPE_CHECKING, Protocol

from sriovlib.allocation import Allocation
from sriovlib.attachments import AttachmentService
from sriovlib.exceptions import SriovError

if TYPE_CHECKING:
    from sriovlib.agent.metrics import Metrics

__all__ = ["DEFAULT_GRACE", "HeldDevices", "OrphanReason", "ReclaimMode", "Reclaimer"]

log = logging.getLogger("sriovlib.agent")

#: Seconds a record must stay orphaned before it is reclaimed.
DEFAULT_GRACE = 60.0


class ReclaimMode(enum.StrEnum):
    """What the agent does with an orphan."""

    ON = "on"  # reclaim it
    DRY_RUN = "dry-run"  # log what would be reclaimed, change nothing
    OFF = "off"  # do not look


class OrphanReason(enum.StrEnum):
    """The sign that a record's pod is gone (the ``reason`` of logs and metrics)."""

    NETNS_GONE = "netns-gone"
    NOT_IN_POD_RESOURCES = "not-in-pod-resources"


class HeldDevices(Protocol):
    """Who knows which devices the kubelet's pods hold
    (:class:`~sriovlib.agent.podresources.PodResourcesClient`)."""

    def held_devices(self) -> dict[str, set[str]] | None:
        """Device IDs per resource name; None when unknown (nobody answers)."""
        ...


_WHY = {
    OrphanReason.NETNS_GONE: "its network namespace is gone",
    OrphanReason.NOT_IN_POD_RESOURCES: "no container of the kubelet holds its device",
}


class Reclaimer:
    """Reclaims the orphans of *attachments* after *grace* seconds (see the module docs).

    Args:
        attachments: The attachment service (its store is the CNI plugin's).
        mode: Reclaim, only report, or neither.
        grace: Seconds a record must stay orphaned.
        metrics: Where reclaims are counted, if anywhere.
        clock: Monotonic seconds (tests pass their own).
        pod_resources: The kubelet's pod-resources API, or None not to use it.
        served: The device IDs of the pools the agent serves now; only their records
            are judged by the pod-resources API.
    """

    def __init__(
        self,
        attachments: AttachmentService,
        *,
        mode: ReclaimMode = ReclaimMode.ON,
        grace: float = DEFAULT_GRACE,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
        pod_resources: HeldDevices | None = None,
        served: Callable[[], Collection[str]] = frozenset,
    ) -> None:
        self.attachments = attachments
        self.mode = mode
        self.grace = grace
        self.metrics = metrics
        self.clock = clock
        self.pod_resources = pod_resources
        self.served = served
        self._since: dict[tuple[str, str], float] = {}  # (VF, owner key) -> first seen
        self._reported: set[tuple[str, str]] = set()

    def step(self) -> list[str]:
        """Look once; return the VFs reclaimed (or, dry-run, that would be)."""
        if self.mode is ReclaimMode.OFF:
            return []
        try:
            seen = self._orphans()
        except (SriovError, OSError) as e:
            log.warning("cannot read the allocation store", extra={"error": str(e)})
            return []
        now = self.clock()
        self._since = {k: self._since.get(k, now) for k in seen}
        self._reported &= set(seen)
        done = []
        for key, (record, reason) in seen.items():
            if now - self._since[key] < self.grace:
                continue
            about = {
                "vf": key[0],
                "pool": record.pool,
                "container": record.owner.container_id,
                "ifname": record.owner.ifname,
                "netns": record.owner.netns,
                "reason": str(reason),
            }
            if self.mode is ReclaimMode.DRY_RUN:
                if key not in self._reported:
                    self._reported.add(key)
                    log.warning("orphan (dry run: not reclaimed)", extra=about)
                    self._count("dry-run", reason)
                    done.append(key[0])
                continue
            still = None if reason is OrphanReason.NETNS_GONE else self._still_unlisted
            try:
                taken = self.attachments.reclaim_orphan(record, still, why=_WHY[reason])
            except (SriovError, OSError) as e:
                log.error("orphan reclaim failed", extra={**about, "error": str(e)})
                self._count("failed", reason)
                continue
            if taken:
                log.warning("orphan reclaimed", extra=about)
                self._count("reclaimed", reason)
                done.append(key[0])
        return done

    def _orphans(self) -> dict[tuple[str, str], tuple[Allocation, OrphanReason]]:
        """Every orphan record now, by (VF, owner key), with its sign."""
        found = {_key(r): (r, OrphanReason.NETNS_GONE) for r in self.attachments.orphans()}
        if self.pod_resources is not None:
            rest = (r for r in self.attachments.store.records() if _key(r) not in found)
            for record in self._unlisted(rest):
                found[_key(record)] = (record, OrphanReason.NOT_IN_POD_RESOURCES)
        return found

    def _unlisted(self, records: Iterable[Allocation]) -> list[Allocation]:
        """Those of *records* whose VF is a served device that no container of the
        kubelet holds; none when the kubelet does not answer (it is not asked when no
        record is of a served device)."""
        served = self.served()
        candidates = [r for r in records if r.owner.netns is not None and str(r.vf) in served]
        if not candidates or self.pod_resources is None:
            return []
        held = self.pod_resources.held_devices()
        if held is None:
            return []
        listed = set().union(*held.values())
        return [r for r in candidates if str(r.vf) not in listed]

    def _still_unlisted(self, record: Allocation) -> bool:
        """Under the VF's lock: asked again, does no container hold it?"""
        return bool(self._unlisted([record]))

    def _count(self, outcome: str, reason: OrphanReason) -> None:
        if self.metrics is not None:
            self.metrics.reclaims.labels(outcome, str(reason)).inc()


def _key(record: Allocation) -> tuple[str, str]:
    return str(record.vf), record.owner.key
