"""Claim errors where the user looks: Kubernetes Events on the ResourceClaim.

The kubelet shows a prepare's per-claim error in the pod's events, and retries; the
claim itself says nothing. :class:`ClaimEvents` posts a ``core/v1`` Event whose
``involvedObject`` is the ResourceClaim (``kubectl describe resourceclaim`` lists it),
``type: Warning``, reason ``PrepareFailed`` (or ``UnprepareFailed``) and the error's
one line as its message, through the agent's API client (:mod:`sriovlib.agent.kubeapi`).
The VFs on demand post ``VFsNotRaised`` the same way on a pending claim whose VF the
node could make but not now (:mod:`sriovlib.agent.ondemand`).

A kubelet retrying a bad claim must not flood the API server, so one claim, reason and
message make one Event, named after them (``<claim>.<digest>``): the first failure
creates it, a repeat only counts in memory, and at most once per ``interval`` seconds
(60 by default) the Event is written again with its ``count`` and ``lastTimestamp``, as
the kubelet's own event recorder folds repeats. A restarted agent finds its Event by
that name (the create is ``AlreadyExists``) and writes it again from its own count.

Posting happens on one thread of its own, so a slow or unreachable API server never
delays the kubelet's answer; a failure (``403 Forbidden`` without the RBAC verbs, say)
is logged as ``Event not posted`` with the request's one-line error, and the prepare's
answer is the same.
"""

from __future__ import annotations

import hashlib
import logging
import queue
import threading
import time
from collections import OrderedDict
from collections.abc import Callable
from datetime import UTC, datetime
from typing import Any
from urllib.parse import quote

import attrs

from sriovlib.agent.draclaims import ClaimRef
from sriovlib.agent.kubeapi import AlreadyExists, KubeApiError, KubeClient

__all__ = ["EVENT_INTERVAL", "PREPARE_FAILED", "UNPREPARE_FAILED", "VFS_NOT_RAISED", "ClaimEvents"]

log = logging.getLogger("sriovlib.agent")

#: The reasons of the Events.
PREPARE_FAILED = "PrepareFailed"
UNPREPARE_FAILED = "UnprepareFailed"
VFS_NOT_RAISED = "VFsNotRaised"
#: Seconds between two writes of one Event while its failure repeats.
EVENT_INTERVAL = 60.0
#: How many Events are remembered (the oldest forgotten first).
_REMEMBERED = 1024
#: The API server's limit of an Event's message (bytes are counted; stay well below).
_MESSAGE_LIMIT = 1024


@attrs.define
class _Seen:
    name: str
    count: int
    first: str
    written_at: float
    written_count: int


class ClaimEvents:
    """Posts the Events of failed (or waiting) claims to *api* for *driver* on *node_name*.

    Args:
        api: The API server.
        driver: The DRA driver name (the Events' ``source.component`` and
            ``reportingComponent``).
        node_name: The node (``source.host`` and ``reportingInstance``).
        interval: Seconds between two writes of one Event while its failure repeats.
        clock: Monotonic seconds (for tests).
    """

    def __init__(
        self,
        api: KubeClient,
        *,
        driver: str,
        node_name: str,
        interval: float = EVENT_INTERVAL,
        clock: Callable[[], float] = time.monotonic,
    ) -> None:
        self.api = api
        self.driver = driver
        self.node_name = node_name
        self.interval = interval
        self.clock = clock
        self.posted = 0  # requests made (created or written again)
        self._seen: OrderedDict[tuple[str, str, str], _Seen] = OrderedDict()
        self._queue: queue.Queue[tuple[ClaimRef, str, str] | None] = queue.Queue()
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sriovlib-events", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        if self._thread is not None:
            self._queue.put(None)
            self._thread.join(15)
            self._thread = None

    def failed(self, ref: ClaimRef, reason: str, message: str) -> None:
        """Claim *ref* failed for *reason* with *message*: its Event, soon (never
        blocks). A reference the kubelet sent malformed gets none."""
        if ref.problem() is None:
            self._queue.put((ref, reason, message))

    def wait_idle(self, timeout: float = 15.0) -> None:
        """Wait until every failure given so far is handled (for tests)."""
        deadline = time.monotonic() + timeout
        while self._queue.unfinished_tasks:
            if time.monotonic() > deadline:
                raise TimeoutError("Events still being posted")
            time.sleep(0.02)

    def _run(self) -> None:
        while True:
            item = self._queue.get()
            try:
                if item is None:
                    return
                self._post(*item)
            except Exception:  # a bug here must not end the Events for good
                log.exception("Event not posted")
            finally:
                self._queue.task_done()

    def _post(self, ref: ClaimRef, reason: str, message: str) -> None:
        message = message[:_MESSAGE_LIMIT]
        key = (ref.uid, reason, message)
        now = self.clock()
        seen = self._seen.get(key)
        if seen is not None:
            seen.count += 1
            self._seen.move_to_end(key)
            if now - seen.written_at < self.interval:
                return  # counted; written with the next write
        else:
            seen = _Seen(_event_name(ref, key), 1, _timestamp(), now, 0)
            self._seen[key] = seen
            while len(self._seen) > _REMEMBERED:
                self._seen.popitem(last=False)
        body = self._event(ref, reason, message, seen)
        path = f"/api/v1/namespaces/{quote(ref.namespace, safe='')}/events"
        try:
            if seen.written_count == 0:
                try:
                    self.api.create(path, body)
                except AlreadyExists:
                    # this agent before a restart made it: written again with our count
                    self.api.replace(f"{path}/{quote(seen.name, safe='')}", body)
            else:
                self.api.replace(f"{path}/{quote(seen.name, safe='')}", body)
        except KubeApiError as e:
            seen.written_at = now  # not again before the interval: no retry storm
            log.warning(
                "Event not posted",
                extra={"claim": f"{ref.namespace}/{ref.name}", "reason": reason, "error": str(e)},
            )
            return
        self.posted += 1
        seen.written_at, seen.written_count = now, seen.count
        log.info(
            "Event posted",
            extra={
                "claim": f"{ref.namespace}/{ref.name}",
                "reason": reason,
                "event": seen.name,
                "count": seen.count,
            },
        )

    def _event(self, ref: ClaimRef, reason: str, message: str, seen: _Seen) -> dict[str, Any]:
        return {
            "apiVersion": "v1",
            "kind": "Event",
            "metadata": {"name": seen.name, "namespace": ref.namespace},
            "involvedObject": {
                "apiVersion": "resource.k8s.io/v1",
                "kind": "ResourceClaim",
                "namespace": ref.namespace,
                "name": ref.name,
                "uid": ref.uid,
            },
            "type": "Warning",
            "reason": reason,
            "message": message,
            "count": seen.count,
            "firstTimestamp": seen.first,
            "lastTimestamp": _timestamp(),
            "source": {"component": self.driver, "host": self.node_name},
            "reportingComponent": self.driver,
            "reportingInstance": self.node_name,
        }


def _event_name(ref: ClaimRef, key: tuple[str, str, str]) -> str:
    digest = hashlib.sha256("\0".join(key).encode()).hexdigest()[:16]
    return f"{ref.name[:200]}.{digest}"


def _timestamp() -> str:
    return datetime.now(UTC).strftime("%Y-%m-%dT%H:%M:%SZ")
