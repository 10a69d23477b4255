"""VFs on demand: the agent's DRA driver raises a PF's VF count, within its policy's
``vfBudget``, when pending claims need a VF this node could make, and gives idle VFs
back down to the floor.

:class:`OnDemand` runs in a thread of its own, every ``interval`` seconds:

1. **observe** — three LISTs from the API server (every ResourceClaim, the pods no
   node has yet, the DeviceClasses), the devices the slice publisher wrote last, the
   node's VFs and who holds them here (prepared claims, CNI attachments, netdevs in
   pods);
2. **decide** — :func:`sriovlib.agent.vfdemand.decide`, pure;
3. **act** — for each resize, when it resets the PF's VFs: withdraw the PF's devices
   from the slices, wait ``settle`` seconds, and list the claims again: an allocation
   of one of them that came in the meantime calls the resize off. Then the kernel
   action (the policy's plan for the new count, so new VFs get the policy's driver and
   MTU), a reconcile of the pools, and the devices published again, with the pool's
   generation one higher.

Each resize is one log line (``VFs on demand: numvfs changed``) and counted in
``sriovlib_vf_resizes_total{pf,direction,outcome}``; the per-PF gauges
(``sriovlib_vf_budget_*``) are what ``sriovlib agent status`` shows. A raise that
cannot happen now (a VF of the PF in use) is logged once per reason and, with mode
``on``, a Warning Event ``VFsNotRaised`` on each claim it was for. With mode ``dry-run``
the decisions are logged and counted, never carried out.
"""

from __future__ import annotations

import enum
import logging
import threading
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from typing import TYPE_CHECKING, Any

import attrs

from sriovlib.agent.draclaims import ClaimRef
from sriovlib.agent.draevents import VFS_NOT_RAISED
from sriovlib.agent.draprepare import device_name
from sriovlib.agent.kubeapi import KubeApiError
from sriovlib.agent.vfdemand import (
    Blocked,
    Device,
    PfState,
    Resize,
    Verdict,
    allocated_devices,
    decide,
    pending_requests,
    waiting_claims,
)
from sriovlib.exceptions import SriovError
from sriovlib.models import PciAddress
from sriovlib.policy import VfBudget

if TYPE_CHECKING:
    from prometheus_client import CollectorRegistry

    from sriovlib.agent.draevents import ClaimEvents
    from sriovlib.agent.draslices import SlicePublisher
    from sriovlib.agent.kubeapi import KubeClient
    from sriovlib.host import Host
    from sriovlib.policy import PolicyFile

__all__ = [
    "CLAIMS",
    "DEFAULT_IDLE",
    "OnDemand",
    "OnDemandMode",
    "OnDemandOptions",
    "PolicyResizer",
]

log = logging.getLogger("sriovlib.agent")

CLAIMS = "/apis/resource.k8s.io/v1/resourceclaims"
CLASSES = "/apis/resource.k8s.io/v1/deviceclasses"
PODS = "/api/v1/pods"
#: Seconds VFs above the floor must stay free before they are given back.
DEFAULT_IDLE = 300.0
#: Seconds a PF whose resize failed is left alone before the next try.
RETRY_AFTER = 30.0
#: Seconds the Node's labels are kept before they are read again.
NODE_INTERVAL = 60.0

#: Changes the VF count of the PF at the address (raises what the Host or policy raise).
Resizer = Callable[[PciAddress, int], None]


class OnDemandMode(enum.StrEnum):
    """``--dra-on-demand``: resize, only log what would be resized, or neither."""

    ON = "on"
    DRY_RUN = "dry-run"
    OFF = "off"


@attrs.frozen(kw_only=True)
class OnDemandOptions:
    """How the VFs on demand run.

    Attributes:
        mode: On, dry-run or off.
        idle_seconds: How long VFs above the floor stay free before they are given back.
        interval: Seconds between two looks at the API server.
        settle: Seconds between withdrawing a PF's devices and checking that no claim
            was allocated one of them meanwhile.
    """

    mode: OnDemandMode = OnDemandMode.ON
    idle_seconds: float = DEFAULT_IDLE
    interval: float = 2.0
    settle: float = 1.0


class PolicyResizer:
    """Resizes through the node policy (:func:`sriovlib.policy.plan` with the new count,
    then :func:`~sriovlib.policy.apply` of that PF's plan alone): the new VFs get the
    policy's driver and MTU as ``apply`` gives them, and a VF in use refuses it."""

    def __init__(self, host: Host, policies: PolicyFile) -> None:
        self.host = host
        self.policies = policies

    def __call__(self, pf: PciAddress, count: int) -> None:
        from sriovlib.policy import Plan, apply, plan

        whole = plan(self.host, self.policies, counts={pf: count})
        mine = tuple(p for p in whole.pfs if p.pf.address == pf)
        apply(self.host, Plan(pfs=mine))


class OnDemand:
    """The VFs on demand of one agent (see the module documentation).

    Args:
        api: The API server.
        host: The node.
        driver: The DRA driver's name.
        node_name: The node (its pool's name).
        budgets: The PFs with a budget, by address.
        publisher: The agent's slice publisher.
        held_here: The PCI addresses of the VFs held on this node: prepared claims and
            CNI attachments.
        reconcile: Makes the agent's pools what the node has now.
        resize: The kernel action (default: ``Host.set_num_vfs``).
        options: Mode, idle period, intervals.
        registry: Where the metrics go (None: none).
        events: Where a claim's Event goes (None: none).
    """

    def __init__(
        self,
        api: KubeClient,
        host: Host,
        *,
        driver: str,
        node_name: str,
        budgets: Mapping[PciAddress, VfBudget],
        publisher: SlicePublisher,
        held_here: Callable[[], frozenset[PciAddress]],
        reconcile: Callable[[str], object],
        resize: Resizer | None = None,
        options: OnDemandOptions | None = None,
        registry: CollectorRegistry | None = None,
        events: ClaimEvents | None = None,
    ) -> None:
        self.api = api
        self.events = events
        self.host = host
        self.driver = driver
        self.node_name = node_name
        self.budgets = dict(budgets)
        self.publisher = publisher
        self.held_here = held_here
        self.reconcile = reconcile
        self.resize = resize or self._set_num_vfs
        self.options = options or OnDemandOptions()
        #: The last observation's PFs and verdict (``status``).
        self.pfs: tuple[PfState, ...] = ()
        self.verdict = Verdict()
        #: Resizes carried out, in order.
        self.done: list[Resize] = []
        self._free_since: dict[tuple[PciAddress, int], float] = {}
        self._retry: dict[PciAddress, float] = {}
        self._said: dict[PciAddress, str] = {}
        self._problem = ""
        self._node_object: Mapping[str, Any] | None = None
        self._node_read = 0.0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None
        self._lock = threading.Lock()
        self._counter: Any = None
        if registry is not None:
            self._metrics(registry)

    # -- running ----------------------------------------------------------------------

    def start(self) -> None:
        """Look every ``interval`` seconds in a thread, until :meth:`stop`."""
        log.info(
            "VFs on demand",
            extra={
                "mode": str(self.options.mode),
                "pfs": {str(a): str(b) for a, b in sorted(self.budgets.items())},
                "idle_seconds": self.options.idle_seconds,
            },
        )
        self._thread = threading.Thread(target=self._run, name="vfs-on-demand", daemon=True)
        self._thread.start()

    def stop(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(30)

    def _run(self) -> None:
        self._guarded()  # the first look at once: ``agent status`` shows the budgets
        while not self._stop.wait(self.options.interval):
            self._guarded()

    def _guarded(self) -> None:
        try:
            self.step()
        except Exception:  # a bug here must not end the VFs on demand for good
            log.exception("VFs on demand: the look failed")

    def step(self, now: float | None = None) -> Verdict:
        """Observe, decide, act once; the verdict (what the API server refused to tell
        is logged, and nothing is done)."""
        with self._lock:
            try:
                pods = self._items(PODS, {"fieldSelector": "spec.nodeName="})
                node = self._node(pods)
                # nothing waits and nothing is above its floor: the claims cannot change
                # anything (one LIST a look in the steady state)
                quiet = not waiting_claims(pods, node) and all(
                    self.host.pf(a).num_vfs <= b.min for a, b in self.budgets.items()
                )
                claims = [] if quiet else self._items(CLAIMS)
                classes = [] if quiet else self._items(CLASSES)
                pfs, free = self._observe(claims, time.monotonic() if now is None else now)
            except (KubeApiError, SriovError, OSError) as e:
                if str(e) != self._problem:
                    log.warning("VFs on demand: cannot look", extra={"error": str(e)})
                self._problem = str(e)
                return self.verdict
            self._problem = ""
            requests = pending_requests(claims, pods, classes, self.driver, node)
            verdict = decide(
                pfs,
                requests,
                free,
                driver=self.driver,
                idle_seconds=self.options.idle_seconds,
            )
            self.pfs, self.verdict = tuple(pfs), verdict
            self._say_blocked(verdict.blocked)
            for resize in verdict.resizes:
                if self._stop.is_set():
                    break
                self._act(resize, [str(r) for r in requests])
            return verdict

    def _node(self, pods: Sequence[Mapping[str, Any]]) -> Mapping[str, Any] | None:
        """The Node (its labels, for the pods' node selectors), read again at most every
        ``NODE_INTERVAL`` seconds, and only while some pod waits."""
        if not pods:
            return self._node_object
        if self._node_object is None or time.monotonic() >= self._node_read + NODE_INTERVAL:
            self._node_object = self.api.get(f"/api/v1/nodes/{self.node_name}")
            self._node_read = time.monotonic()
        return self._node_object

    def _items(self, path: str, query: Mapping[str, str] | None = None) -> list[dict[str, Any]]:
        """The items of a LIST, served from the API server's watch cache
        (``resourceVersion=0``: no quorum read of etcd each look)."""
        found = self.api.get(path, query={**(query or {}), "resourceVersion": "0"})
        return list(found.get("items") or ())

    # -- observing --------------------------------------------------------------------

    def _observe(
        self, claims: Sequence[Mapping[str, Any]], now: float
    ) -> tuple[list[PfState], list[Device]]:
        allocated = allocated_devices(claims, self.driver, self.node_name)
        held = self.held_here()
        published = [_device(d) for d in self.publisher.devices()]
        devices = [d for d in published if d is not None]
        free = [
            d
            for d in devices
            if d.name not in allocated
            and d.pf not in self.budgets  # a budget PF's free VFs: below, with its VFs
        ]
        pfs = []
        for address, budget in sorted(self.budgets.items()):
            pf = self.host.pf(address)
            vfs = self.host.vfs(pf)
            mine = {d.index: d for d in devices if d.pf == address}
            in_use = frozenset(
                vf.index
                for vf in vfs
                if device_name(vf.address) in allocated
                or vf.address in held
                or self.host.node.in_use(vf)
            )
            free += [d for i, d in sorted(mine.items()) if i not in in_use]
            pfs.append(
                PfState(
                    address=address,
                    name=pf.name,
                    budget=budget,
                    num_vfs=pf.num_vfs,
                    in_use=in_use,
                    unpublished=sum(vf.index not in mine for vf in vfs),
                    live=self._live(pf.address, pf.num_vfs, budget),
                    attributes=_prospective(pf, mine.values()),
                    idle=self._idle(address, pf.num_vfs, in_use, now),
                )
            )
        return pfs, free

    def _live(self, pf: PciAddress, num_vfs: int, budget: VfBudget) -> bool:
        """Whether the vendor plugin changes this PF's non-zero count without resetting
        its VFs (its numvfs plan does not go through 0)."""
        if num_vfs == 0:
            return False
        other = num_vfs + 1 if num_vfs < budget.max else num_vfs - 1
        try:
            return not self.host.plan_num_vfs(pf, other).disruptive
        except SriovError:
            return False

    def _idle(
        self, pf: PciAddress, num_vfs: int, in_use: frozenset[int], now: float
    ) -> dict[int, float]:
        """Seconds each VF of *pf* has been free (since it was made or last used)."""
        for key in [k for k in self._free_since if k[0] == pf and k[1] >= num_vfs]:
            del self._free_since[key]
        idle = {}
        for index in range(num_vfs):
            if index in in_use:
                self._free_since.pop((pf, index), None)
                idle[index] = 0.0
            else:
                idle[index] = now - self._free_since.setdefault((pf, index), now)
        return idle

    # -- acting -----------------------------------------------------------------------

    def _act(self, resize: Resize, requests: list[str]) -> None:
        if self.options.mode is OnDemandMode.DRY_RUN:
            if self._said.get(resize.pf) != str(resize):
                log.info(
                    "VFs on demand: would change numvfs (dry run)",
                    extra=self._extra(resize, requests),
                )
                self._count(resize, "dry-run")
            self._said[resize.pf] = str(resize)
            return
        if time.monotonic() < self._retry.get(resize.pf, 0.0):
            return
        started = time.monotonic()
        resets = resize.before > 0 and not self._live(
            resize.pf, resize.before, self.budgets[resize.pf]
        )
        if resets:
            problem = self._withdraw(resize)
            if problem is not None:
                self.publisher.withhold(frozenset(), publish=False)
                self.publisher.sync()
                log.warning(
                    "VFs on demand: numvfs not changed",
                    extra={**self._extra(resize), "why": problem},
                )
                self._count(resize, "called-off")
                return
        try:
            self.resize(resize.pf, resize.after)
        except (SriovError, OSError) as e:
            self._retry[resize.pf] = time.monotonic() + RETRY_AFTER
            log.error("VFs on demand: numvfs not changed", extra={**self._extra(resize),
                                                                  "error": str(e)})  # fmt: skip
            self._count(resize, "failed")
        else:
            self._said.pop(resize.pf, None)
            self.done.append(resize)
            self._count(resize, "done")
            log.info(
                "VFs on demand: numvfs changed",
                extra={
                    **self._extra(resize, requests),
                    "seconds": round(time.monotonic() - started, 3),
                },
            )
        finally:
            self.publisher.withhold(frozenset(), publish=False)
            self.reconcile("VFs on demand")

    def _withdraw(self, resize: Resize) -> str | None:
        """Take the PF's devices out of the slices, then check that no claim was given
        one meanwhile; why the resize must not go on, or None."""
        if not self.publisher.withhold(frozenset({resize.pf})):
            return "its devices could not be withdrawn from the ResourceSlices"
        time.sleep(self.options.settle)
        try:
            claims = self._items(CLAIMS)
            held = self.held_here()
            vfs = self.host.vfs(self.host.pf(resize.pf))
        except (KubeApiError, SriovError, OSError) as e:
            return f"who holds its VFs could not be read again: {e}"
        allocated = allocated_devices(claims, self.driver, self.node_name)
        taken = sorted(
            str(vf.address)
            for vf in vfs
            if device_name(vf.address) in allocated or vf.address in held
        )
        if taken:
            return f"VF {', '.join(taken)} allocated meanwhile"
        return None

    def _set_num_vfs(self, pf: PciAddress, count: int) -> None:
        self.host.set_num_vfs(pf, count)

    def _say_blocked(self, blocked: Sequence[Blocked]) -> None:
        for item in blocked:
            text = f"{item.wanted}: {item.reason}"
            if self._said.get(item.pf) != text:
                log.info(
                    "VFs on demand: numvfs cannot change now",
                    extra={"pf": item.name, "wanted": item.wanted, "why": item.reason},
                )
            self._said[item.pf] = text
            if self.events is None or self.options.mode is not OnDemandMode.ON:
                continue
            for request in item.requests:
                namespace, _, name = request.claim.partition("/")
                # the same message each look: counted, written again once a minute
                self.events.failed(
                    ClaimRef(namespace, name, request.uid),
                    VFS_NOT_RAISED,
                    f"node {self.node_name}: no free VF of {item.name} for request "
                    f"{request.request!r}, and its VF count cannot be raised to "
                    f"{item.wanted} now: {item.reason}",
                )

    @staticmethod
    def _extra(resize: Resize, requests: Sequence[str] = ()) -> dict[str, Any]:
        extra: dict[str, Any] = {
            "pf": resize.name,
            "address": str(resize.pf),
            "before": resize.before,
            "after": resize.after,
            "direction": resize.direction,
            "reason": resize.reason,
        }
        if requests and resize.direction == "raise":
            extra["claims"] = list(requests)
        return extra

    # -- metrics ----------------------------------------------------------------------

    def _metrics(self, registry: CollectorRegistry) -> None:
        from prometheus_client import Counter

        self._counter = Counter(
            "sriovlib_vf_resizes",
            "VF count changes of the VFs on demand, by PF, direction (raise, lower) and "
            "outcome (done, dry-run, called-off, failed)",
            ["pf", "direction", "outcome"],
            registry=registry,
        )
        registry.register(_Gauges(self))

    def _count(self, resize: Resize, outcome: str) -> None:
        if self._counter is not None:
            self._counter.labels(resize.name, resize.direction, outcome).inc()


class _Gauges:
    def __init__(self, owner: OnDemand) -> None:
        self.owner = owner

    def collect(self) -> Iterator[Any]:
        from prometheus_client.core import GaugeMetricFamily

        names = {
            "numvfs": "sriov_numvfs of the PF",
            "min": "the floor of its vfBudget",
            "max": "the ceiling of its vfBudget",
            "in_use": "its VFs in use",
            "wanted": "VFs pending claims want of it beyond its free ones",
            "blocked": "1 while a resize waits (VFs in use, unhealthy VFs)",
        }
        families = {
            key: GaugeMetricFamily(f"sriovlib_vf_budget_{key}", text, labels=["pf"])
            for key, text in names.items()
        }
        verdict = self.owner.verdict
        blocked = {b.pf for b in verdict.blocked}
        for pf in self.owner.pfs:
            values = {
                "numvfs": pf.num_vfs,
                "min": pf.budget.min,
                "max": pf.budget.max,
                "in_use": len(pf.in_use),
                "wanted": verdict.unmet.get(pf.address, 0),
                "blocked": int(pf.address in blocked),
            }
            for key, value in values.items():
                families[key].add_metric([pf.name], value)
        yield from families.values()


def _device(data: Mapping[str, Any]) -> Device | None:
    attributes = data.get("attributes") or {}
    try:
        pf = PciAddress.parse(str(attributes["pfPciAddress"]["string"]))
        index = int(attributes["vfIndex"]["int"])
    except (KeyError, TypeError, ValueError):
        return None
    return Device(str(data["name"]), pf, index, attributes)


def _prospective(pf: Any, published: Any) -> dict[str, Any]:
    """What is known of a VF the PF does not have yet: a published VF's attributes
    without those of its own, else the PF's."""
    for device in published:
        return {
            k: v
            for k, v in device.attributes.items()
            if k not in ("vfIndex", "resource.kubernetes.io/pciBusID", "k8s.cni.cncf.io/deviceID")
        }
    known: dict[str, Any] = {"pfPciAddress": {"string": str(pf.address)}}
    if pf.netdevs:
        known["pfName"] = {"string": pf.netdevs[0]}
    known["vendor"] = {"string": pf.ids.vendor_hex}
    if pf.numa_node is not None:
        known["numaNode"] = {"int": pf.numa_node}
    return known
