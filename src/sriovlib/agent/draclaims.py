"""ResourceClaims as the DRA driver reads them: the devices allocated to it, and their
VF settings from the claim's opaque configuration.

The kubelet's ``NodePrepareResources`` (``dra/v1``) names a claim only — namespace, name
and UID. Which devices the scheduler allocated to it, and the configuration that goes
with them, are in the ResourceClaim object (``resource.k8s.io/v1``) of the API server:
``status.allocation.devices.results`` and ``status.allocation.devices.config``. A
:class:`ClaimSource` fetches that object; :func:`parse_resource_claim` keeps what
concerns this driver and checks it, with a message naming the field for each problem.

The driver's opaque parameters carry the sriov-cni netconf's VF settings (the same keys,
checked by the same rules: :mod:`sriovlib.vfsettings`) and the driver the VF must be
bound to::

    {"apiVersion": "sriovlib.io/v1alpha1", "kind": "VfConfig",
     "vlan": 100, "vlanQoS": 3, "spoofchk": "on", "trust": "off",
     "min_tx_rate": 100, "max_tx_rate": 1000, "mac": "02:00:00:00:00:01",
     "link_state": "enable", "driver": "netdevice"}

Configuration entries apply to the requests they name (all of them when they name none),
the class's entries before the claim's, a later key overriding an earlier one.

:class:`ApiServerClaims` reads the claim from the API server
(:mod:`sriovlib.agent.kubeapi`); :class:`NoApiServer` is the source of an agent without
API access, and says so in each claim's error.
"""

from __future__ import annotations

import difflib
import enum
import re
from collections.abc import Mapping, Sequence
from typing import TYPE_CHECKING, Any, Protocol
from urllib.parse import quote

import attrs

from sriovlib.exceptions import SriovError
from sriovlib.models import VfConfig
from sriovlib.vfsettings import SETTING_KEYS, normal_mac, vf_settings

if TYPE_CHECKING:
    from sriovlib.agent.kubeapi import KubeClient

__all__ = [
    "CONFIG_API_VERSION",
    "CONFIG_KIND",
    "DEFAULT_DRIVER_NAME",
    "POD_CLAIM_ANNOTATION",
    "AllocatedDevice",
    "ApiServerClaims",
    "ClaimError",
    "ClaimRef",
    "ClaimSource",
    "ClaimUnavailable",
    "NoApiServer",
    "OpaqueConfig",
    "PodRef",
    "ResourceClaim",
    "VfDriver",
    "VfSettings",
    "check_driver_name",
    "parse_resource_claim",
    "parse_vf_parameters",
]

#: The DRA driver name unless ``--dra-driver-name`` says otherwise.
DEFAULT_DRIVER_NAME = "sriov.sriovlib.io"
#: The ``apiVersion`` and ``kind`` the opaque parameters may declare (both optional).
CONFIG_API_VERSION = "sriovlib.io/v1alpha1"
CONFIG_KIND = "VfConfig"

_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_DNS_SUBDOMAIN = re.compile(rf"{_DNS_LABEL}(\.{_DNS_LABEL})*")
_UID = re.compile(r"[A-Za-z0-9][A-Za-z0-9-]{0,62}")
_CONFIG_KEYS = ("apiVersion", "kind", "driver", *SETTING_KEYS)
#: The annotation the resource-claim controller puts on a claim it makes from a pod's
#: ResourceClaimTemplate: the pod's own name for the claim (``spec.resourceClaims[].name``).
POD_CLAIM_ANNOTATION = "resource.kubernetes.io/pod-claim-name"


class ClaimError(SriovError):
    """A claim that cannot be prepared as it is (the message says what and where)."""


class ClaimUnavailable(ClaimError):
    """The claim could not be read (not found, the API server unreachable)."""


def check_driver_name(name: str) -> str:
    """*name* if it is a DRA driver name (a DNS subdomain of at most 63 characters, the
    API server's rule for ``driver`` in ResourceSlices and claims); :class:`ValueError`
    saying why not otherwise."""
    if len(name) > 63 or not _DNS_SUBDOMAIN.fullmatch(name):
        raise ValueError(
            f"DRA driver name {name!r} is not a DNS subdomain of at most 63 characters "
            "such as 'sriov.sriovlib.io' (lower-case letters, digits, '-' and '.')"
        )
    return name


@attrs.frozen
class ClaimRef:
    """A claim as the kubelet names it."""

    namespace: str
    name: str
    uid: str

    def __str__(self) -> str:
        return f"{self.namespace}/{self.name} (uid {self.uid})"

    def problem(self) -> str | None:
        """What makes this reference unusable (a field missing or malformed), or None."""
        missing = [f for f in ("namespace", "name", "uid") if not getattr(self, f)]
        if missing:
            return f"the claim has no {' and no '.join(missing)}"
        if not _UID.fullmatch(self.uid):
            return f"the claim's uid {self.uid!r} is not a Kubernetes UID"
        return None


class VfDriver(enum.StrEnum):
    """The driver a claim wants its VFs bound to."""

    NETDEVICE = "netdevice"  # the VF's kernel network driver (iavf, mlx5_core...)
    VFIO_PCI = "vfio-pci"


@attrs.frozen
class VfSettings:
    """What a claim's configuration asks of one VF.

    Attributes:
        vf_config: The VF settings (through the PF), empty when none are asked.
        driver: The driver the VF must be bound to, or None for any.
    """

    vf_config: VfConfig = attrs.field(factory=VfConfig)
    driver: VfDriver | None = None

    def to_json(self) -> dict[str, Any]:
        """The settings as JSON values (what the prepared-claim record keeps)."""
        data: dict[str, Any] = {}
        for name in self.vf_config.fields():
            value = getattr(self.vf_config, name)
            data[name] = value.value if isinstance(value, enum.Enum) else value
        if self.driver is not None:
            data["driver"] = str(self.driver)
        return data


@attrs.frozen
class AllocatedDevice:
    """A device of the claim's allocation that belongs to this driver."""

    request: str
    pool: str
    device: str


@attrs.frozen
class OpaqueConfig:
    """One configuration entry for this driver: the requests it applies to (all when
    empty), its parameters, and where it was in the claim (for messages)."""

    requests: tuple[str, ...]
    parameters: Mapping[str, Any] = attrs.field(eq=False)
    where: str

    def applies_to(self, request: str) -> bool:
        """Whether this entry configures *request* (``req/sub`` is also ``req``'s)."""
        return not self.requests or any(
            r == request or request.startswith(f"{r}/") for r in self.requests
        )


@attrs.frozen
class PodRef:
    """A pod a claim is reserved for (an entry of ``status.reservedFor``; the pod is in
    the claim's namespace)."""

    name: str
    uid: str


@attrs.frozen
class ResourceClaim:
    """What this driver needs of one ResourceClaim.

    Attributes:
        reserved_for: The pods the claim is reserved for (the scheduler reserves it for
            its pod before binding the pod, so they are known when the kubelet prepares);
            other kinds of consumer are left out.
        pod_claim: The pod's name for a claim made from its ResourceClaimTemplate
            (:data:`POD_CLAIM_ANNOTATION`), or None.
    """

    ref: ClaimRef
    devices: tuple[AllocatedDevice, ...]
    configs: tuple[OpaqueConfig, ...]
    reserved_for: tuple[PodRef, ...] = ()
    pod_claim: str | None = None

    def settings(self, request: str) -> VfSettings:
        """The VF settings for the devices of *request*: the entries that apply to it
        merged in order (a later key overrides), then checked together.

        Raises:
            ClaimError: the merged settings break a rule (``vlanQoS`` without ``vlan``...).
        """
        merged: dict[str, Any] = {}
        for config in self.configs:
            if config.applies_to(request):
                merged.update(config.parameters)
        return parse_vf_parameters(merged, f"the configuration of request {request!r}")


class ClaimSource(Protocol):
    """Where ResourceClaim objects come from (the API server)."""

    def resource_claim(self, namespace: str, name: str) -> Mapping[str, Any]:
        """The ResourceClaim *namespace*/*name* as the API server serves it (JSON).

        Raises:
            ClaimUnavailable: there is none, or it cannot be read now.
        """


class NoApiServer:
    """The claim source of an agent without API access (``--dra`` outside a pod and
    without ``--kubeconfig``): every claim is unavailable, with a message that says why."""

    def resource_claim(self, namespace: str, name: str) -> Mapping[str, Any]:
        raise ClaimUnavailable(
            f"cannot read ResourceClaim {namespace}/{name}: this agent has no API server "
            "access (run it in a pod with a service account, or give --kubeconfig FILE)"
        )


class ApiServerClaims:
    """ResourceClaims read from the API server (``resource.k8s.io/v1``), one GET per
    claim: the kubelet asks only for claims it has not seen prepared, and the preparer
    answers a recorded one from its record. The UID check (a claim deleted and made
    again under the same name) is the preparer's, on the object this returns."""

    def __init__(self, api: KubeClient) -> None:
        self.api = api

    def resource_claim(self, namespace: str, name: str) -> Mapping[str, Any]:
        from sriovlib.agent.kubeapi import KubeApiError, NotFound

        path = (
            f"/apis/resource.k8s.io/v1/namespaces/{quote(namespace, safe='')}"
            f"/resourceclaims/{quote(name, safe='')}"
        )
        try:
            return self.api.get(path)
        except NotFound:
            raise ClaimUnavailable(
                f"ResourceClaim {namespace}/{name} is not in the API server (deleted?)"
            ) from None
        except KubeApiError as e:
            raise ClaimUnavailable(f"cannot read ResourceClaim {namespace}/{name}: {e}") from None


def parse_resource_claim(data: object, driver: str) -> ResourceClaim:
    """The parts of the ResourceClaim *data* (``resource.k8s.io/v1`` JSON) that concern
    *driver*: its allocated devices and their configuration entries.

    Raises:
        ClaimError: not a ResourceClaim, not allocated, no device of *driver*, a field
            of the wrong type, or opaque parameters of *driver* that are invalid.
    """
    claim = _object(data, "the ResourceClaim")
    meta = _object(claim.get("metadata"), "metadata")
    ref = ClaimRef(
        namespace=_string(meta.get("namespace"), "metadata.namespace"),
        name=_string(meta.get("name"), "metadata.name"),
        uid=_string(meta.get("uid"), "metadata.uid"),
    )
    status = _object(claim.get("status", {}), "status")
    if status.get("allocation") is None:
        raise ClaimError("the claim is not allocated (status.allocation is empty)")
    allocation = _object(status["allocation"], "status.allocation")
    devices = _object(allocation.get("devices", {}), "status.allocation.devices")
    mine = []
    for i, item in enumerate(_list(devices.get("results"), "status.allocation.devices.results")):
        where = f"status.allocation.devices.results[{i}]"
        result = _object(item, where)
        if _string(result.get("driver"), f"{where}.driver") != driver:
            continue
        mine.append(
            AllocatedDevice(
                request=_string(result.get("request"), f"{where}.request"),
                pool=_string(result.get("pool"), f"{where}.pool"),
                device=_string(result.get("device"), f"{where}.device"),
            )
        )
    if not mine:
        raise ClaimError(f"no device of the claim's allocation is of driver {driver}")
    configs = _configs(devices.get("config"), driver)
    annotations = _object(meta.get("annotations") or {}, "metadata.annotations")
    pod_claim = annotations.get(POD_CLAIM_ANNOTATION)
    return ResourceClaim(
        ref,
        tuple(mine),
        configs,
        reserved_for=_reserved_for(status.get("reservedFor")),
        pod_claim=pod_claim if isinstance(pod_claim, str) and pod_claim else None,
    )


def _reserved_for(data: object) -> tuple[PodRef, ...]:
    """The pods of ``status.reservedFor`` (``resource: pods`` in the core group)."""
    pods = []
    for i, item in enumerate(_list(data, "status.reservedFor")):
        where = f"status.reservedFor[{i}]"
        entry = _object(item, where)
        if entry.get("resource") != "pods" or entry.get("apiGroup") not in (None, ""):
            continue
        pods.append(PodRef(_string(entry.get("name"), f"{where}.name"),
                           _string(entry.get("uid"), f"{where}.uid")))  # fmt: skip
    return tuple(pods)


def _configs(data: object, driver: str) -> tuple[OpaqueConfig, ...]:
    entries: list[tuple[int, OpaqueConfig]] = []
    for i, item in enumerate(_list(data, "status.allocation.devices.config")):
        where = f"status.allocation.devices.config[{i}]"
        entry = _object(item, where)
        if entry.get("opaque") is None:
            continue
        opaque = _object(entry["opaque"], f"{where}.opaque")
        if _string(opaque.get("driver"), f"{where}.opaque.driver") != driver:
            continue
        requests = tuple(
            _string(r, f"{where}.requests[{j}]")
            for j, r in enumerate(_list(entry.get("requests"), f"{where}.requests"))
        )
        parameters = _object(opaque.get("parameters", {}), f"{where}.opaque.parameters")
        _check_entry(parameters, f"{where}.opaque.parameters")
        source = entry.get("source")
        if source not in (None, "FromClass", "FromClaim"):
            raise ClaimError(f"{where}.source {source!r} is not FromClass or FromClaim")
        entries.append(
            (0 if source == "FromClass" else 1, OpaqueConfig(requests, parameters, where))
        )
    return tuple(c for _, c in sorted(entries, key=lambda e: e[0]))


def _check_entry(parameters: Mapping[str, Any], where: str) -> None:
    """Check each key of one entry on its own (unknown, wrong type, out of range): the
    rules between keys (``vlanQoS`` needs ``vlan``) apply to the merged settings, since
    another entry (the class's) may give the other key."""
    problems = []
    for key, value in parameters.items():
        context = {"vlan": 1} if key in ("vlanQoS", "vlanProto") else {}
        try:
            parse_vf_parameters({**context, key: value}, where)
        except ClaimError as e:
            problems.append(str(e).removeprefix(f"{where}: "))
    if problems:
        raise ClaimError(f"{where}: {'; '.join(problems)}")


def parse_vf_parameters(parameters: Mapping[str, Any], where: str) -> VfSettings:
    """The VF settings of this driver's opaque *parameters* (see the module docstring).

    Raises:
        ClaimError: every problem at once, each named with *where* — unknown keys (with
            the closest known one), wrong types, values out of range, broken rules.
    """
    problems: list[str] = []
    for key in parameters:
        if key not in _CONFIG_KEYS:
            close = difflib.get_close_matches(str(key), _CONFIG_KEYS, n=1, cutoff=0.6)
            hint = f" (did you mean {close[0]!r}?)" if close else ""
            problems.append(f"unknown key {key!r}{hint}")
    for key, expected in (("apiVersion", CONFIG_API_VERSION), ("kind", CONFIG_KIND)):
        value = parameters.get(key)
        if value is not None and value != expected:
            problems.append(f"{key} {value!r} is not {expected!r}")
    driver: VfDriver | None = None
    value = parameters.get("driver")
    if value not in (None, ""):
        try:
            driver = VfDriver(value)
        except ValueError:
            problems.append(f"driver {value!r} is not one of netdevice, vfio-pci")
    mac = normal_mac(parameters.get("mac"), "mac", problems)
    config = vf_settings(parameters, mac, problems)
    if problems:
        raise ClaimError(f"{where}: {'; '.join(problems)}")
    return VfSettings(config, driver)


def _object(value: object, where: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ClaimError(f"{where} must be an object, not {_kind(value)}")
    return value


def _list(value: object, where: str) -> Sequence[Any]:
    if value is None:
        return ()
    if not isinstance(value, list):
        raise ClaimError(f"{where} must be a list, not {_kind(value)}")
    return value


def _string(value: object, where: str) -> str:
    if not isinstance(value, str) or not value:
        raise ClaimError(f"{where} must be a non-empty string, not {_kind(value)}")
    return value


def _kind(value: object) -> str:
    if value is None:
        return "missing"
    if isinstance(value, Mapping):
        return "an object"
    if isinstance(value, list):
        return "a list"
    return repr(value)
