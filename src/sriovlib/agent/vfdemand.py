"""VFs on demand, the decision: from what the API server and the node say now, which PF's
VF count to raise or lower, within its policy's ``vfBudget``. Pure: no I/O, no clock;
:mod:`sriovlib.agent.ondemand` observes, asks :func:`decide`, and acts.

The rules (``docs/dra.md``, "VFs on demand"):

- **Demand** (:func:`pending_requests`): a request of a ResourceClaim that is not
  allocated, not being deleted, and referenced by a pod no node has yet, whose
  DeviceClass is this driver's (one of its CEL selectors is ``device.driver ==
  "<driver>"``). Requests of allocation mode ``All`` ask for what exists, never for more.
- **Free devices**: the devices this node publishes that no claim's allocation names.
  A pending request takes the free devices its selectors match first (the scheduler
  will allocate them: no raise); only what is left is unmet.
- **Matching** (:func:`matches`): the selectors are read as far as a conjunction of
  ``device.driver`` and ``device.attributes[...]`` comparisons with literals goes; a
  clause false for the device rules it out, one that cannot be read (another CEL
  form, an attribute a VF not made yet has no value for) may match. A PF the budget
  can still grow takes the unmet requests its next VF may match, in PCI order.
- **Safety**: changing a non-zero VF count resets every VF of the PF (the kernel goes
  through 0), so a resize waits while any VF of the PF is in use, unless the vendor
  plugin's plan changes the count live (:attr:`PfState.live`; no built-in does).
- **Reclaim**: VFs above ``max(min, highest VF in use + 1)`` that stayed free longer
  than the idle period are given back, when that is safe by the same rule.
"""

from __future__ import annotations

import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import attrs

from sriovlib.models import PciAddress
from sriovlib.policy import VfBudget

__all__ = [
    "Blocked",
    "Device",
    "PfState",
    "Request",
    "Resize",
    "Verdict",
    "allocated_devices",
    "decide",
    "matches",
    "may_go_to",
    "pending_requests",
    "waiting_claims",
]

Attributes = Mapping[str, Mapping[str, Any]]

#: The attributes the driver publishes (``sriovlib.agent.draslices``): a VF not made
#: yet may have any of them, with a value of its own or one not known before it exists.
PUBLISHED = frozenset(
    {
        "pfName",
        "pfPciAddress",
        "vfIndex",
        "vendor",
        "deviceID",
        "driver",
        "numaNode",
        "linkType",
        "rdma",
        "eswitchMode",
        "resource.kubernetes.io/pciBusID",
        "resource.kubernetes.io/pcieRoot",
        "k8s.cni.cncf.io/resourceName",
        "k8s.cni.cncf.io/deviceID",
    }
)


@attrs.frozen
class Request:
    """A device request of a pending claim (see the module documentation).

    Attributes:
        claim: ``namespace/name`` of the claim.
        request: The request's name.
        count: How many devices it needs.
        selectors: Its CEL expressions and its DeviceClass's, all of which must hold.
        created: The claim's ``creationTimestamp`` (older claims are served first).
        uid: The claim's UID (where its Event goes).
    """

    claim: str
    request: str
    count: int = 1
    selectors: tuple[str, ...] = ()
    created: str = ""
    uid: str = ""

    def __str__(self) -> str:
        return f"{self.claim} request {self.request!r}"


@attrs.frozen
class Device:
    """A device this node publishes: its name, its PF and VF index, its attributes."""

    name: str
    pf: PciAddress
    index: int
    attributes: Attributes = attrs.field(factory=dict, eq=False)


@attrs.frozen(kw_only=True)
class PfState:
    """One PF with a budget, as observed now.

    Attributes:
        address / name: The PF.
        budget: Its ``vfBudget``.
        num_vfs: ``sriov_numvfs`` now.
        in_use: Indexes of its VFs in use (a prepared claim, a CNI attachment, an
            allocation in the API server, a netdev moved into a pod).
        unpublished: Of its VFs, how many are not published (unhealthy): a raise would
            not help the claims.
        live: Whether the vendor plugin changes its count without resetting the VFs.
        attributes: What is known of the attributes of a VF it does not have yet.
        idle: Seconds each of its VFs (by index) has been free.
    """

    address: PciAddress
    name: str
    budget: VfBudget
    num_vfs: int
    in_use: frozenset[int] = frozenset()
    unpublished: int = 0
    live: bool = False
    attributes: Attributes = attrs.field(factory=dict, eq=False)
    idle: Mapping[int, float] = attrs.field(factory=dict, eq=False)

    def label(self) -> str:
        return f"{self.name} ({self.address})"


@attrs.frozen
class Resize:
    """Set *pf*'s VF count from *before* to *after*, and why."""

    pf: PciAddress
    name: str
    before: int
    after: int
    reason: str

    @property
    def direction(self) -> str:
        """``raise`` or ``lower``."""
        return "raise" if self.after > self.before else "lower"

    def __str__(self) -> str:
        return f"{self.name}: {self.direction} numvfs {self.before} -> {self.after} ({self.reason})"


@attrs.frozen
class Blocked:
    """A resize of *pf* to *wanted* that cannot happen now, and why; for a raise, the
    pending *requests* it was for."""

    pf: PciAddress
    name: str
    wanted: int
    reason: str
    requests: tuple[Request, ...] = ()


@attrs.frozen
class Verdict:
    """What :func:`decide` says.

    Attributes:
        resizes: What to do now, one per PF at most.
        blocked: What would be done but is not safe or possible now.
        unmet: Per PF, the devices pending requests need of it beyond its free ones.
        unserved: Pending requests no free device and no budget of this node can serve.
    """

    resizes: tuple[Resize, ...] = ()
    blocked: tuple[Blocked, ...] = ()
    unmet: Mapping[PciAddress, int] = attrs.field(factory=dict)
    unserved: tuple[Request, ...] = ()


# -- what the API server says ---------------------------------------------------------------


def allocated_devices(
    claims: Iterable[Mapping[str, Any]], driver: str, pool: str
) -> frozenset[str]:
    """The devices of *driver*'s *pool* the allocation of any of *claims* names."""
    found = set()
    for claim in claims:
        allocation = (claim.get("status") or {}).get("allocation") or {}
        for result in (allocation.get("devices") or {}).get("results") or ():
            if result.get("driver") == driver and result.get("pool") == pool:
                found.add(str(result.get("device")))
    return frozenset(found)


def pending_requests(
    claims: Iterable[Mapping[str, Any]],
    pods: Iterable[Mapping[str, Any]],
    classes: Iterable[Mapping[str, Any]],
    driver: str,
    node: Mapping[str, Any] | None = None,
) -> tuple[Request, ...]:
    """The requests of the unallocated claims that pods not yet on a node wait for,
    whose DeviceClass is *driver*'s, oldest claim first; with *node* (the Node object),
    only pods that may go there."""
    waiting = waiting_claims(pods, node)
    ours = {}
    for device_class in classes:
        expressions = _expressions((device_class.get("spec") or {}).get("selectors"))
        if any(_names_driver(e, driver) for e in expressions):
            ours[str(device_class["metadata"]["name"])] = expressions
    found = []
    for claim in claims:
        meta = claim.get("metadata") or {}
        key = (str(meta.get("namespace", "")), str(meta.get("name", "")))
        if key not in waiting or meta.get("deletionTimestamp"):
            continue
        if (claim.get("status") or {}).get("allocation"):
            continue
        for request in ((claim.get("spec") or {}).get("devices") or {}).get("requests") or ():
            exact = _ours(request, ours)
            if exact is None:
                continue
            found.append(
                Request(
                    claim=f"{key[0]}/{key[1]}",
                    request=str(request.get("name", "")),
                    count=int(exact.get("count", 1) or 1),
                    selectors=ours[exact["deviceClassName"]] + _expressions(exact.get("selectors")),
                    created=str(meta.get("creationTimestamp", "")),
                    uid=str(meta.get("uid", "")),
                )
            )
    return tuple(sorted(found, key=lambda r: (r.created, r.claim, r.request)))


def waiting_claims(
    pods: Iterable[Mapping[str, Any]], node: Mapping[str, Any] | None = None
) -> set[tuple[str, str]]:
    """(namespace, name) of the claims the pods no node has yet refer to; with *node*,
    of the pods whose node selector and required node affinity do not rule it out."""
    waiting: set[tuple[str, str]] = set()
    for pod in pods:
        meta, spec = pod.get("metadata") or {}, pod.get("spec") or {}
        if spec.get("nodeName") or meta.get("deletionTimestamp"):
            continue
        if node is not None and not may_go_to(spec, node):
            continue
        namespace = str(meta.get("namespace", ""))
        named = [e.get("resourceClaimName") for e in spec.get("resourceClaims") or ()]
        named += [
            s.get("resourceClaimName")
            for s in (pod.get("status") or {}).get("resourceClaimStatuses") or ()
        ]
        waiting.update((namespace, str(n)) for n in named if n)
    return waiting


def may_go_to(spec: Mapping[str, Any], node: Mapping[str, Any]) -> bool:
    """Whether a pod of *spec* may be placed on *node* as far as its ``nodeSelector``
    and its required node affinity say (``In``, ``NotIn``, ``Exists``,
    ``DoesNotExist`` on labels, ``metadata.name`` fields; another operator may match).
    Taints, resources and the rest are the scheduler's."""
    meta = node.get("metadata") or {}
    labels = {str(k): str(v) for k, v in (meta.get("labels") or {}).items()}
    for key, value in (spec.get("nodeSelector") or {}).items():
        if labels.get(str(key)) != str(value):
            return False
    required = ((spec.get("affinity") or {}).get("nodeAffinity") or {}).get(
        "requiredDuringSchedulingIgnoredDuringExecution"
    ) or {}
    terms = required.get("nodeSelectorTerms") or ()
    fields = {"metadata.name": str(meta.get("name", ""))}
    return not terms or any(
        all(_expression_holds(e, labels) for e in term.get("matchExpressions") or ())
        and all(_expression_holds(e, fields) for e in term.get("matchFields") or ())
        for term in terms
    )


def _expression_holds(expression: Mapping[str, Any], values: Mapping[str, str]) -> bool:
    key, operator = str(expression.get("key", "")), expression.get("operator")
    wanted = [str(v) for v in expression.get("values") or ()]
    if operator == "In":
        return key in values and values[key] in wanted
    if operator == "NotIn":
        return key not in values or values[key] not in wanted
    if operator == "Exists":
        return key in values
    if operator == "DoesNotExist":
        return key not in values
    return True  # Gt, Lt: may hold


def _ours(
    request: Mapping[str, Any], ours: Mapping[str, tuple[str, ...]]
) -> Mapping[str, Any] | None:
    """The request's exact-count part if its class is one of *ours* (for a prioritized
    list, its first alternative of ours), else None."""
    exact = request.get("exactly")
    if exact is None:
        exact = next(
            (s for s in request.get("firstAvailable") or () if s.get("deviceClassName") in ours),
            None,
        )
    if not exact or exact.get("deviceClassName") not in ours:
        return None
    if exact.get("allocationMode", "ExactCount") != "ExactCount":
        return None  # All: what exists, never more
    return exact  # type: ignore[no-any-return]


def _expressions(selectors: Any) -> tuple[str, ...]:
    return tuple(
        str(s["cel"]["expression"])
        for s in selectors or ()
        if isinstance(s, Mapping) and isinstance(s.get("cel"), Mapping)
    )


def _names_driver(expression: str, driver: str) -> bool:
    clauses = _clauses(expression)
    return clauses is not None and any(
        (m := _DRIVER.fullmatch(c)) is not None and m[1] == "==" and _literal(m[2]) == driver
        for c in clauses
    )


# -- matching ---------------------------------------------------------------------------

_LITERAL = r"(\"[^\"\\]*\"|'[^'\\]*'|-?\d+|true|false)"
_DRIVER = re.compile(r"\s*device\.driver\s*(==|!=)\s*" + _LITERAL + r"\s*")
_ATTRIBUTE = re.compile(
    r"\s*device\.attributes\[\s*[\"']([^\"']+)[\"']\s*\]"
    r"(?:\.([A-Za-z_]\w*)|\[\s*[\"']([^\"']+)[\"']\s*\])"
    r"\s*(==|!=)\s*" + _LITERAL + r"\s*"
)


def _clauses(expression: str) -> list[str] | None:
    """The expression's ``&&`` clauses, or None if it is not a plain conjunction."""
    clauses: list[str] = []
    current: list[str] = []
    quote = ""
    i = 0
    while i < len(expression):
        char = expression[i]
        if quote:
            quote = "" if char == quote else quote
        elif char in "\"'":
            quote = char
        elif expression.startswith("&&", i):
            clauses.append("".join(current))
            current = []
            i += 2
            continue
        elif expression.startswith("||", i) or char in "()?":
            return None
        current.append(char)
        i += 1
    clauses.append("".join(current))
    return clauses


def _literal(text: str) -> object:
    if text[0] in "\"'":
        return text[1:-1]
    if text in ("true", "false"):
        return text == "true"
    return int(text)


def _value(attribute: Mapping[str, Any]) -> object:
    for kind in ("string", "int", "bool", "version"):
        if kind in attribute:
            return attribute[kind]
    return None


def _clause(clause: str, attributes: Attributes, driver: str, *, prospective: bool) -> bool | None:
    found = _DRIVER.fullmatch(clause)
    if found is not None:
        equal = _literal(found[2]) == driver
        return equal if found[1] == "==" else not equal
    found = _ATTRIBUTE.fullmatch(clause)
    if found is None:
        return None
    domain, name = found[1], found[2] or found[3]
    key = name if domain == driver else f"{domain}/{name}"
    if key not in attributes:
        # of a VF not made yet not all is known; any other missing attribute is a CEL
        # error for this device, which then does not match
        return None if prospective and key in PUBLISHED else False
    equal = _value(attributes[key]) == _literal(found[5])
    return equal if found[4] == "==" else not equal


def matches(
    selectors: Sequence[str], attributes: Attributes, driver: str, *, prospective: bool = False
) -> bool | None:
    """Whether a device with *attributes* of *driver* satisfies every CEL expression of
    *selectors*: False if a clause is false, True if every clause is read and true,
    None if some cannot be read (may match). *prospective*: the attributes are those
    known of a VF not made yet."""
    verdict: bool | None = True
    for expression in selectors:
        clauses = _clauses(expression)
        if clauses is None:
            verdict = None
            continue
        for clause in clauses:
            result = _clause(clause, attributes, driver, prospective=prospective)
            if result is False:
                return False
            if result is None:
                verdict = None
    return verdict


# -- the decision ------------------------------------------------------------------------


def decide(
    pfs: Sequence[PfState],
    requests: Sequence[Request],
    free: Sequence[Device],
    *,
    driver: str,
    idle_seconds: float,
) -> Verdict:
    """What to do now with the VF counts of *pfs* (see the module documentation).

    Args:
        pfs: The PFs with a budget.
        requests: The pending requests, in the order they are served.
        free: The published devices no allocation names.
        driver: The DRA driver's name (for ``device.driver`` and its own attributes).
        idle_seconds: How long VFs must stay free before they are given back.
    """
    available = list(free)
    reserved: dict[PciAddress, set[int]] = {}
    unmet: dict[PciAddress, int] = {}
    wanting: dict[PciAddress, list[Request]] = {}
    unserved: list[Request] = []
    ordered = sorted(pfs, key=lambda p: p.address)
    for request in requests:
        needed = request.count
        for device in list(available):
            if needed and matches(request.selectors, device.attributes, driver) is not False:
                available.remove(device)
                reserved.setdefault(device.pf, set()).add(device.index)
                needed -= 1
        for pf in ordered:
            room = pf.budget.max - pf.num_vfs - unmet.get(pf.address, 0)
            if (
                needed
                and room > 0
                and matches(request.selectors, pf.attributes, driver, prospective=True) is not False
            ):
                take = min(needed, room)
                unmet[pf.address] = unmet.get(pf.address, 0) + take
                wanting.setdefault(pf.address, []).append(request)
                needed -= take
        if needed:
            unserved.append(request)
    resizes: list[Resize] = []
    blocked: list[Blocked] = []
    for pf in ordered:
        busy = pf.in_use | reserved.get(pf.address, set())
        step = _step(pf, busy, unmet.get(pf.address, 0), idle_seconds)
        if step is None:
            continue
        wanted, reason = step
        problem = _unsafe(pf, busy, wanted)
        if problem is not None:
            wanted_by = tuple(wanting.get(pf.address, ())) if wanted > pf.num_vfs else ()
            blocked.append(Blocked(pf.address, pf.name, wanted, problem, wanted_by))
        else:
            resizes.append(Resize(pf.address, pf.name, pf.num_vfs, wanted, reason))
    return Verdict(tuple(resizes), tuple(blocked), unmet, tuple(unserved))


def _step(
    pf: PfState, busy: set[int] | frozenset[int], unmet: int, idle_seconds: float
) -> tuple[int, str] | None:
    """The count *pf* should have and why, or None to leave it: raised by what pending
    claims need of it, or lowered to the floor of what is busy when the VFs above it
    have all been idle long enough."""
    if unmet:
        return pf.num_vfs + unmet, f"{unmet} VF(s) wanted by pending claims"
    keep = max(pf.budget.min, max(busy) + 1 if busy else 0)
    idle = [i for i in range(keep, pf.num_vfs) if pf.idle.get(i, 0.0) >= idle_seconds]
    if keep >= pf.num_vfs or len(idle) < pf.num_vfs - keep:
        return None
    return keep, f"VFs {keep}-{pf.num_vfs - 1} free for {idle_seconds:g} s or more"


def _unsafe(pf: PfState, busy: set[int] | frozenset[int], wanted: int) -> str | None:
    """Why changing *pf*'s count to *wanted* is not safe or useful now, or None."""
    if wanted > pf.num_vfs and pf.unpublished:
        return f"{pf.unpublished} of its VFs are unhealthy: more would not be published"
    if pf.live or pf.num_vfs == 0 or not busy:
        return None
    names = ", ".join(str(i) for i in sorted(busy))
    return (
        f"VF {names} in use: numvfs {pf.num_vfs} -> {wanted} goes through 0 and would reset "
        f"every VF of {pf.name}"
    )
