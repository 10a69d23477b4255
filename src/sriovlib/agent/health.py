"""Device health, re-read whenever the kernel reports a change.

:class:`HealthWatch` keeps every device's health true to the node. It waits on the
kernel's link and device events (:meth:`sriovlib.Host.watch`: rtnetlink link messages,
kobject uevents) and, shortly after any (so that a burst is read once), assesses every
device; without events it assesses again every ``rescan`` seconds, in case one was lost.

A device is unhealthy while:

- it is gone from the node, or bound to another driver than when its pool was built
  (someone rebound it to ``vfio-pci``, say);
- its PF's interface is down or has no carrier, for pools that ask for it
  (``--pf-carrier-health``: on by default; off where VF-to-VF traffic on the PF's
  embedded switch is what matters, which survives a carrier loss);
- a device node it needs is missing (found by an Allocate, or by the full check a device
  already unhealthy gets, so that it comes back only when that is fixed too).

A change is pushed to the kubelet by the resource's ListAndWatch stream.
"""

from __future__ import annotations

import logging
import threading
import time
from collections.abc import Callable, Sequence
from typing import TYPE_CHECKING

from sriovlib.agent.grants import Granter
from sriovlib.agent.resources import AgentDevice, Health, Resource
from sriovlib.exceptions import SriovError
from sriovlib.host import Host

if TYPE_CHECKING:
    from sriovlib.agent.metrics import Metrics

__all__ = ["RESCAN_INTERVAL", "SETTLE", "TICK", "HealthWatch"]

log = logging.getLogger("sriovlib.agent")

#: Seconds between two assessments when no event comes.
RESCAN_INTERVAL = 30.0
#: Seconds to let a burst of events pass before assessing.
SETTLE = 0.05
#: Seconds between two wake-ups without events (the agent looks at its config file then).
TICK = 2.0


class HealthWatch:
    """Assesses the devices of *resources* on *host* on every kernel event.

    Args:
        host: The node.
        granter: Its checks of a device (gone, rebound, device nodes).
        resources: The resources to keep true (read on every assessment).
        pf_carrier: Whether a resource's devices follow their PF's link state.
        rescan: Seconds between assessments without events.
        on_wake: Called on every wake-up before an assessment, with True after events
            and False every *tick* seconds without (the agent reconciles there).
        after_wake: Called at the end of every wake-up, after the assessment if there
            was one (the agent publishes what it changed there, at once).
        tick: Seconds between wake-ups without events.
        metrics: Where health changes are counted, if anywhere.
    """

    def __init__(
        self,
        host: Host,
        granter: Granter,
        resources: Callable[[], Sequence[Resource]],
        *,
        pf_carrier: Callable[[Resource], bool],
        rescan: float = RESCAN_INTERVAL,
        on_wake: Callable[[bool], None] | None = None,
        after_wake: Callable[[], None] | None = None,
        tick: float = TICK,
        metrics: Metrics | None = None,
    ) -> None:
        self.host = host
        self.granter = granter
        self.resources = resources
        self.pf_carrier = pf_carrier
        self.rescan = rescan
        self.on_wake = on_wake
        self.after_wake = after_wake
        self.tick = tick
        self.metrics = metrics
        self.assessments = 0
        self._stopping = threading.Event()
        self._events = host.watch()
        for what in self._events.missing:
            log.warning("not watched: health follows it only by re-scan", extra={"what": what})
        self._thread: threading.Thread | None = None

    def start(self) -> None:
        self._thread = threading.Thread(target=self._run, name="sriovlib-health", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stopping.set()
        self._events.close()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        rescan_at = time.monotonic() + self.rescan
        while not self._stopping.is_set():
            event = self._events.wait(max(0.0, min(self.tick, rescan_at - time.monotonic())))
            if event:
                if self._stopping.wait(SETTLE):
                    return
                while self._events.wait(0):
                    pass  # the rest of the burst: one assessment reads it all
            elif self._stopping.is_set():
                return
            try:
                if self.on_wake is not None:
                    self.on_wake(event)
                if event or time.monotonic() >= rescan_at:
                    self.assess()
                    rescan_at = time.monotonic() + self.rescan
                if self.after_wake is not None:
                    self.after_wake()
            except Exception:  # a bug here must not end health for good
                log.exception("health assessment failed")

    def assess(self) -> int:
        """Assess every device now; return how many changed health."""
        self.assessments += 1
        links: dict[str, str | None] = {}
        changed = 0
        for resource in self.resources():
            follow_pf = self.pf_carrier(resource)
            states = {}
            for device in resource.devices():
                problem = self._problem(device, links if follow_pf else None)
                health = Health.HEALTHY if problem is None else Health.UNHEALTHY
                states[device.id] = (health, problem)
            for device_id in resource.update_health(states):
                changed += 1
                if self.metrics is not None:
                    self.metrics.health_changes.labels(resource.name).inc()
                health, problem = states[device_id]
                log.info(
                    "device health",
                    extra={
                        "resource": resource.name,
                        "device": device_id,
                        "health": str(health),
                        "reason": problem,
                    },
                )
        return changed

    def _problem(self, device: AgentDevice, links: dict[str, str | None] | None) -> str | None:
        # a healthy device gets the cheap checks; an unhealthy one the full check too,
        # so a missing device node found by Allocate is not forgotten
        problem = self.granter.problem(device, device_nodes=not device.healthy)
        if problem is not None or links is None or device.device.pf_name is None:
            return problem
        pf = device.device.pf_name
        if pf not in links:
            links[pf] = self._pf_problem(pf)
        return links[pf]

    def _pf_problem(self, pf: str) -> str | None:
        try:
            link = self.host.link(pf)
        except SriovError:
            return None  # renamed or gone: the device checks and the re-scan say more
        if not link.up:
            return f"its PF {pf} is down"
        if link.carrier is False:
            return f"its PF {pf} has no carrier"
        return None
