"""The VFs the DRA driver prepared, and for which pods: how the CNI plugin finds the VF of
a pod's claim when its configuration names no ``deviceID``.

The agent's DRA driver (``sriovlib agent --dra``, :mod:`sriovlib.agent.drastore`) keeps
one JSON record per prepared claim in ``<state dir>/dra/<driver>/claims/<uid>.json``:
the claim, its devices (request, device name, PCI address), the pods it is reserved for
(``status.reservedFor``, set by the scheduler before the pod is bound, so known when the
kubelet prepares) and the pod's own name for the claim (the
``resource.kubernetes.io/pod-claim-name`` annotation of a claim made from a
ResourceClaimTemplate). This module reads those records with the standard library only
(the CNI plugin's start-up pays for every import), under the directory's shared
``flock``, and chooses the pod's VF (:func:`choose`):

- only complete records (a prepare the kubelet was answered for) reserved for the pod
  (by its UID; by namespace and name when the runtime passes no UID);
- narrowed to the claim the configuration names (the pod's name for it, or the claim's
  own name) and to a request, when it names them;
- without the VFs attached to another owner already (a second ADD cannot take one);
- VFs of one request are interchangeable: the first free one (by PCI address) is taken;
  free VFs of several claims or requests and nothing to choose between them is an error.

A record that cannot be read, or that is not of its directory's driver, is left out and
reported (:attr:`Prepared.damaged`).
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterable
from pathlib import Path

import attrs

from sriovlib._files import locked_dir, read_private
from sriovlib.exceptions import InvalidPciAddress, SriovError
from sriovlib.models import PciAddress

__all__ = [
    "DEFAULT_DRIVER",
    "RECORD_FORMAT",
    "ClaimedVfAttached",
    "NoClaimedVf",
    "Prepared",
    "PreparedVf",
    "SeveralClaimedVfs",
    "choose",
    "claims_dir",
    "driver_name_problem",
    "read_prepared",
]

#: The version of the prepared-claim record format (written by the agent).
RECORD_FORMAT = 1
#: The DRA driver name the agent serves unless ``--dra-driver-name`` says otherwise.
DEFAULT_DRIVER = "sriov.sriovlib.io"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")


def driver_name_problem(name: str) -> str | None:
    """Why *name* is not a DRA driver name (a DNS subdomain of at most 63 characters),
    or None."""
    if len(name) > 63 or not _DNS_SUBDOMAIN.fullmatch(name):
        return (
            f"{name!r} is not a DRA driver name (a DNS subdomain of at most 63 characters "
            "such as 'sriov.sriovlib.io')"
        )
    return None


def claims_dir(state_dir: Path, driver: str) -> Path:
    """Where the records of *driver*'s prepared claims are (a checked driver name)."""
    return Path(state_dir) / "dra" / driver / "claims"


@attrs.frozen
class PreparedVf:
    """One VF of a prepared claim, with the pods the claim is reserved for."""

    address: PciAddress
    driver: str
    namespace: str
    claim: str
    claim_uid: str
    request: str
    device: str
    pod_claim: str | None
    #: (name, uid) of each pod the claim is reserved for.
    pods: tuple[tuple[str, str], ...]

    def __str__(self) -> str:
        return (
            f"VF {self.address} of claim {self.namespace}/{self.claim} (request {self.request!r})"
        )

    def reserved_for(self, namespace: str, name: str, uid: str | None) -> bool:
        """Whether the claim is reserved for the pod (its UID decides when known)."""
        if namespace != self.namespace:
            return False
        if uid:
            return any(pod_uid == uid for _, pod_uid in self.pods)
        return any(pod_name == name for pod_name, _ in self.pods)

    def named(self, claim: str | None, request: str | None) -> bool:
        """Whether this VF is of *claim* (the pod's name for it or its own name) and of
        *request* (``req`` also takes ``req/sub``); None matches any."""
        if claim is not None and claim not in (self.pod_claim, self.claim):
            return False
        return request is None or self.request == request or self.request.startswith(f"{request}/")


@attrs.frozen
class Prepared:
    """What the records say: every VF of every readable complete record, and the
    records that could not be used (``path: why``)."""

    vfs: tuple[PreparedVf, ...] = ()
    damaged: tuple[str, ...] = ()


def read_prepared(state_dir: Path, driver: str | None = None) -> Prepared:
    """The VFs *driver*'s prepared claims hold (every driver's when None).

    Nothing is created: a node without DRA records has none.
    """
    base = Path(state_dir) / "dra"
    if driver is not None:
        drivers = [driver]
    else:
        try:
            drivers = sorted(n for n in os.listdir(base) if not n.startswith("."))
        except OSError:
            return Prepared()
    vfs: list[PreparedVf] = []
    damaged: list[str] = []
    for name in drivers:
        directory = claims_dir(state_dir, name)
        if not directory.is_dir():
            continue
        with locked_dir(directory, exclusive=False):
            for entry in sorted(os.listdir(directory)):
                if entry.startswith(".") or not entry.endswith(".json"):
                    continue
                path = directory / entry
                try:
                    vfs += _record_vfs(path, name)
                except (OSError, ValueError, KeyError, TypeError, InvalidPciAddress) as e:
                    why = e.strerror if isinstance(e, OSError) and e.strerror else str(e)
                    damaged.append(f"{path}: {why}")
    return Prepared(tuple(vfs), tuple(damaged))


def _record_vfs(path: Path, driver: str) -> list[PreparedVf]:
    data = json.loads(read_private(path))
    if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
        raise ValueError(f"not a prepared-claim record of format {RECORD_FORMAT}")
    if data["driver"] != driver:
        raise ValueError(f"a record of driver {data['driver']!r} among those of {driver!r}")
    if not data.get("complete", True):
        return []  # a prepare under way, or cut short: the kubelet has no answer yet
    claim = data["claim"]
    if f"{claim['uid']}.json" != path.name:
        raise ValueError(f"the record is of claim uid {claim['uid']}")
    pods = tuple((str(p["name"]), str(p["uid"])) for p in data.get("reservedFor", ()))
    pod_claim = data.get("podClaimName")
    return [
        PreparedVf(
            address=PciAddress.parse(str(device["address"])),
            driver=driver,
            namespace=str(claim["namespace"]),
            claim=str(claim["name"]),
            claim_uid=str(claim["uid"]),
            request=str(device["request"]),
            device=str(device["device"]),
            pod_claim=str(pod_claim) if pod_claim else None,
            pods=pods,
        )
        for device in data["devices"]
    ]


# -- choosing the pod's VF -------------------------------------------------------------------


class NoClaimedVf(SriovError):
    """No VF is prepared for the pod (with the claim and request asked for)."""

    def __init__(self, message: str, damaged: Iterable[str] = ()) -> None:
        self.damaged = tuple(damaged)
        super().__init__(message)


class SeveralClaimedVfs(SriovError):
    """VFs of several claims or requests are free for the pod, and nothing says which."""


class ClaimedVfAttached(SriovError):
    """Every VF prepared for the pod (as asked) is attached already."""


def choose(
    prepared: Prepared,
    *,
    namespace: str,
    pod: str,
    pod_uid: str | None,
    claim: str | None = None,
    request: str | None = None,
    holder: Callable[[PciAddress], str | None],
) -> PreparedVf:
    """The VF to give the pod (see the module documentation).

    Args:
        holder: Who holds a VF already (a description), or None when it is free for
            this attachment (free, or held by this very attachment: a retried ADD).

    Raises:
        NoClaimedVf, SeveralClaimedVfs, ClaimedVfAttached: as their names say, with a
            message naming the pod, what was asked and the candidates.
    """
    who = f"pod {namespace}/{pod}" + (f" (uid {pod_uid})" if pod_uid else "")
    asked = "".join(
        f", {what} {value!r}" for what, value in (("claim", claim), ("request", request)) if value
    )
    mine = [v for v in prepared.vfs if v.reserved_for(namespace, pod, pod_uid)]
    wanted = [v for v in mine if v.named(claim, request)]
    if not wanted:
        others = f"; its claims have: {', '.join(str(v) for v in mine)}" if mine else ""
        raise NoClaimedVf(f"no VF of a DRA claim is prepared for {who}{asked}{others}",
                          prepared.damaged)  # fmt: skip
    held = {v: holder(v.address) for v in wanted}
    free = [v for v in wanted if held[v] is None]
    if not free:
        raise ClaimedVfAttached(
            f"every VF prepared for {who}{asked} is attached already: "
            + "; ".join(f"{v} to {held[v]}" for v in wanted)
        )
    groups = {(v.claim_uid, v.request) for v in free}
    if len(groups) > 1:
        raise SeveralClaimedVfs(
            f"{len(free)} VFs of different claims or requests are prepared for {who} and "
            f'free: {", ".join(str(v) for v in free)}; name one with "dra": '
            '{"claim": ..., "request": ...} in the network configuration'
        )
    return min(free, key=lambda v: str(v.address))
