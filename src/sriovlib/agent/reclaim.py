"""Orphan reclaim: VFs held for pods that are gone, taken back without waiting for a DEL.

A CNI attachment record names its pod's network namespace. When that namespace is gone
the pod is gone, and a DEL may never come (a runtime crash, a node reboot mid-teardown):
upstream's users find such VFs leaked. :class:`Reclaimer` looks at the records on each
of the agent's wake-ups; a record seen orphaned continuously for ``grace`` seconds is
reclaimed through :meth:`sriovlib.attachments.AttachmentService.reclaim_orphan` (the VF
restored from its snapshot, the records dropped), or with ``dry-run`` only reported.
The grace period covers a namespace that is briefly unmounted or a record written a
moment before its namespace.
"""

from __future__ import annotations

import enum
import logging
import time
from collections.abc import Callable
from typing import TYPE_CHECKING

from sriovlib.attachments import AttachmentService
from sriovlib.exceptions import SriovError

if TYPE_CHECKING:
    from sriovlib.agent.metrics import Metrics

__all__ = ["DEFAULT_GRACE", "ReclaimMode", "Reclaimer"]

log = logging.getLogger("sriovlib.agent")

#: Seconds a record must stay orphaned before it is reclaimed.
DEFAULT_GRACE = 60.0


class ReclaimMode(enum.StrEnum):
    """What the agent does with an orphan."""

    ON = "on"  # reclaim it
    DRY_RUN = "dry-run"  # log what would be reclaimed, change nothing
    OFF = "off"  # do not look


class Reclaimer:
    """Reclaims the orphans of *attachments* after *grace* seconds (see the module docs).

    Args:
        attachments: The attachment service (its store is the CNI plugin's).
        mode: Reclaim, only report, or neither.
        grace: Seconds a record must stay orphaned.
        metrics: Where reclaims are counted, if anywhere.
        clock: Monotonic seconds (tests pass their own).
    """

    def __init__(
        self,
        attachments: AttachmentService,
        *,
        mode: ReclaimMode = ReclaimMode.ON,
        grace: float = DEFAULT_GRACE,
        metrics: Metrics | None = None,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.attachments = attachments
        self.mode = mode
        self.grace = grace
        self.metrics = metrics
        self.clock = clock
        self._since: dict[tuple[str, str], float] = {}  # (VF, owner key) -> first seen
        self._reported: set[tuple[str, str]] = set()

    def step(self) -> list[str]:
        """Look once; return the VFs reclaimed (or, dry-run, that would be)."""
        if self.mode is ReclaimMode.OFF:
            return []
        try:
            orphans = self.attachments.orphans()
        except (SriovError, OSError) as e:
            log.warning("cannot read the allocation store", extra={"error": str(e)})
            return []
        now = self.clock()
        seen = {(str(r.vf), r.owner.key): r for r in orphans}
        self._since = {k: self._since.get(k, now) for k in seen}
        self._reported &= set(seen)
        done = []
        for key, record in seen.items():
            if now - self._since[key] < self.grace:
                continue
            about = {
                "vf": key[0],
                "pool": record.pool,
                "container": record.owner.container_id,
                "ifname": record.owner.ifname,
                "netns": record.owner.netns,
            }
            if self.mode is ReclaimMode.DRY_RUN:
                if key not in self._reported:
                    self._reported.add(key)
                    log.warning("orphan (dry run: not reclaimed)", extra=about)
                    self._count("dry-run")
                    done.append(key[0])
                continue
            try:
                taken = self.attachments.reclaim_orphan(record)
            except (SriovError, OSError) as e:
                log.error("orphan reclaim failed", extra={**about, "error": str(e)})
                self._count("failed")
                continue
            if taken:
                log.warning("orphan reclaimed", extra=about)
                self._count("reclaimed")
                done.append(key[0])
        return done

    def _count(self, outcome: str) -> None:
        if self.metrics is not None:
            self.metrics.reclaims.labels(outcome).inc()
