"""Preparing a claim's VFs for its pod: the DRA driver's work behind the kubelet's calls.

:class:`Preparer` takes a claim the kubelet names, reads it (a
:class:`~sriovlib.agent.draclaims.ClaimSource`), looks each device allocated to this
driver up on the node, writes one CDI spec file for the claim and records the claim
(:class:`~sriovlib.agent.drastore.PreparedClaims`); the CDI device IDs are the answer.

Names, chosen here for the ResourceSlices to come:

- a VF is the device ``vf-<domain>-<bus>-<device>-<function>`` of its address
  (``vf-0000-5e-01-0`` for ``0000:5e:01.0``: a device name must be a DNS label);
- the CDI kind is ``<driver>/vf`` (``sriov.sriovlib.io/vf``) and a device's CDI name is
  ``<claim uid>-<device>``, unique on the node even when two spec files name one VF;
- the spec file is ``sriovlib-<driver>-<claim uid>.json`` in the CDI directory.

A CDI device's edits give the container the VF's device nodes (``/dev/vfio/vfio`` and
``/dev/vfio/<group>`` for a vfio-pci VF, its RDMA character devices when it has some),
``PCIDEVICE_<DRIVER>_<REQUEST>`` with the PCI addresses of the request's devices, and
``PCIDEVICE_<DRIVER>_<REQUEST>_INFO`` with the device plugin's ``_INFO`` keys (the same
variables the device plugin sets for a pool, the request standing for the pool).

Order makes it crash-safe: the spec is written before the record, and removed before
the record, so a record never names a spec that was not written, and a retry after any
crash finishes the work. A claim already recorded is answered from its record (its spec
written again if it is gone) without reading the claim again.

A claim's VF settings (vlan, qos, spoofchk, trust, link state, rates, MAC) are applied
through the host as the CNI's attachments apply them: each VF's snapshot
(``Host.snapshot``) is recorded (``complete`` false) before the first change, then
``Host.configure_vf`` applies; a failure restores the VFs done before it. Unprepare,
and a prepare that finds an incomplete record (the agent was killed), restore each VF
from its snapshot (``Host.release``) first.
"""

from __future__ import annotations

import json
import logging
import re
import threading
from collections.abc import Callable, Mapping
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from sriovlib._files import write_atomic
from sriovlib.agent.draclaims import (
    AllocatedDevice,
    ClaimError,
    ClaimRef,
    ClaimSource,
    ResourceClaim,
    VfDriver,
    VfSettings,
    parse_resource_claim,
)
from sriovlib.agent.drastore import PreparedClaim, PreparedClaims, PreparedDevice
from sriovlib.agent.grants import CDI_VERSION
from sriovlib.exceptions import DeviceNotFound, SriovError
from sriovlib.host import Host
from sriovlib.models import AttachSnapshot, ContainerDevices, PciAddress, VfConfig, VirtualFunction

__all__ = ["Preparer", "cdi_kind", "device_address", "device_name"]

log = logging.getLogger("sriovlib.agent")

#: The namespace a prepared VF's snapshot is read for: the host's (the VF stays there; the
#: CNI plugin moves its netdev into the pod later, with its own snapshot). The recorded
#: snapshot names no namespace, so restoring it looks for the netdev on the host only
#: and moves nothing (with the host's namespace named, the restore would find the netdev
#: "in the namespace" and move it onto the host where it already is).
_HOST_NETNS = "/proc/1/ns/net"

_DEVICE_NAME = re.compile(r"vf-([0-9a-f]{4,8})-([0-9a-f]{2})-([0-9a-f]{2})-([0-7])")
_ENV_UNSAFE = re.compile(r"[^A-Za-z0-9_]")


def device_name(address: PciAddress) -> str:
    """The DRA device name of the VF at *address*."""
    return f"vf-{address.domain:04x}-{address.bus:02x}-{address.device:02x}-{address.function}"


def device_address(name: str) -> PciAddress:
    """The PCI address a device name of :func:`device_name` stands for.

    Raises:
        ClaimError: *name* is not such a name.
    """
    match = _DEVICE_NAME.fullmatch(name)
    if match is None:
        raise ClaimError(
            f"device {name!r} is not a VF of this driver (expected vf-<domain>-<bus>-"
            "<device>-<function>, e.g. vf-0000-5e-01-0)"
        )
    return PciAddress.parse("{}:{}:{}.{}".format(*match.groups()))


def cdi_kind(driver: str) -> str:
    """The CDI kind of *driver*'s devices."""
    return f"{driver}/vf"


def _env_name(driver: str, request: str) -> str:
    return "PCIDEVICE_" + _ENV_UNSAFE.sub("_", f"{driver}_{request}").upper()


class Preparer:
    """Prepares and unprepares the claims of *driver* on *host*.

    Args:
        host: The node.
        claims: Where ResourceClaim objects are read.
        store: The record of prepared claims.
        cdi_dir: Where the CDI spec files go.
        driver: The DRA driver name.
        refusal: Why the VF at an address may not be prepared (the agent's pools give
            it to the device plugin, or to none), or None when it may; without it, any
            VF of the node may be.
    """

    def __init__(
        self,
        host: Host,
        claims: ClaimSource,
        store: PreparedClaims,
        *,
        cdi_dir: Path,
        driver: str,
        refusal: Callable[[PciAddress], str | None] | None = None,
    ) -> None:
        self.host = host
        self.refusal = refusal
        self.claims = claims
        self.store = store
        self.cdi_dir = cdi_dir
        self.driver = driver
        # one claim at a time: the check that no other claim holds a VF needs it
        self._lock = threading.Lock()

    def spec_path(self, uid: str) -> Path:
        """The CDI spec file of claim *uid*."""
        return self.cdi_dir / f"sriovlib-{self.driver}-{uid}.json"

    def prepare(self, ref: ClaimRef) -> PreparedClaim:
        """Prepare *ref* (or answer from its record if it is prepared already).

        Raises:
            ClaimError: the claim cannot be prepared (the message says why).
            SriovError, OSError: the node or the files failed.
        """
        problem = ref.problem()
        if problem is not None:
            raise ClaimError(problem)
        with self._lock:
            record = self.store.get(ref.uid)
            if record is not None:
                if record.claim != ref:
                    raise ClaimError(
                        f"claim uid {ref.uid} was prepared as {record.claim.namespace}/"
                        f"{record.claim.name}, not {ref.namespace}/{ref.name}"
                    )
                if record.complete:
                    self._write_spec(Path(record.cdi_spec), record.spec, only_if_missing=True)
                    return record
                # a prepare that was cut short (the agent killed): put the VFs back first
                self._restore(record)
                self.store.remove(ref.uid)
            claim = parse_resource_claim(
                self.claims.resource_claim(ref.namespace, ref.name), self.driver
            )
            if claim.ref.uid != ref.uid:
                raise ClaimError(
                    f"the API server's {ref.namespace}/{ref.name} has uid {claim.ref.uid}, "
                    f"not {ref.uid}: the claim was deleted and made again"
                )
            record = self._prepare(ref, claim)
            if any(d.previous is not None for d in record.devices):
                self.store.put(record)  # the VFs' previous state, before any change
                self._apply(record)
            record = attrs.evolve(record, complete=True)
            self._write_spec(Path(record.cdi_spec), record.spec)
            self.store.put(record)
            return record

    def unprepare(self, ref: ClaimRef) -> bool:
        """Undo :meth:`prepare` of *ref*: its CDI spec, then its record. Whether it was
        prepared; unpreparing a claim that is not is no error (a retry, or a claim the
        kubelet prepared through another driver instance)."""
        problem = ref.problem()
        if problem is not None:
            raise ClaimError(problem)
        with self._lock:
            record = self.store.get(ref.uid)
            if record is not None:
                self._restore(record)  # raises, keeping the record, if it cannot
            path = Path(record.cdi_spec) if record is not None else self.spec_path(ref.uid)
            path.unlink(missing_ok=True)
            return self.store.remove(ref.uid)

    def prepared(self) -> tuple[PreparedClaim, ...]:
        """Every claim prepared now."""
        return self.store.records()

    # -- the work ----------------------------------------------------------------------

    def _prepare(self, ref: ClaimRef, claim: ResourceClaim) -> PreparedClaim:
        held = {
            str(d.address): r.claim
            for r in self.store.records()
            if r.claim.uid != ref.uid
            for d in r.devices
        }
        kind = cdi_kind(self.driver)
        found: list[tuple[AllocatedDevice, VirtualFunction, VfSettings, ContainerDevices]] = []
        for device in claim.devices:
            address = device_address(device.device)
            where = f"device {device.device} ({address}) of request {device.request!r}"
            if str(address) in held:
                raise ClaimError(f"{where} is prepared for claim {held[str(address)]} already")
            refused = self.refusal(address) if self.refusal is not None else None
            if refused is not None:
                raise ClaimError(f"{where} is not this driver's to prepare: {refused}")
            settings = claim.settings(device.request)
            vf = self._vf(address, where)
            self._check_driver(vf, settings, where)
            needs = self.host.container_devices(vf, rdma=bool(vf.rdma_devices))
            if needs.missing:
                raise ClaimError(f"{where}: device node missing on the node: "
                                 f"{', '.join(needs.missing)}")  # fmt: skip
            found.append((device, vf, settings, needs))
        by_request: dict[str, list[tuple[VirtualFunction, ContainerDevices]]] = {}
        for device, vf, _, needs in found:
            by_request.setdefault(device.request, []).append((vf, needs))
        cdi_devices = []
        prepared = []
        for device, vf, settings, needs in found:
            name = f"{ref.uid}-{device.device}"
            previous = None
            if settings.vf_config.fields():
                # what unprepare restores, read now and changing nothing (the CNI's
                # snapshot: the VF's settings through its PF, its netdev on the host)
                ifname = vf.netdev or f"vf{vf.index}"  # a netdev name; unused without one
                snapshot = attrs.evolve(self.host.snapshot(vf, _HOST_NETNS, ifname), netns=None)
                previous = snapshot.to_dict()
            cdi_devices.append(
                {"name": name, "containerEdits": self._edits(device.request, by_request, needs)}
            )
            prepared.append(
                PreparedDevice(
                    request=device.request,
                    pool=device.pool,
                    device=device.device,
                    address=vf.address,
                    cdi_device_ids=(f"{kind}={name}",),
                    settings=settings.to_json(),
                    previous=previous,
                )
            )
        spec = {"cdiVersion": CDI_VERSION, "kind": kind, "devices": cdi_devices}
        return PreparedClaim(
            claim=ref,
            driver=self.driver,
            devices=tuple(prepared),
            cdi_spec=str(self.spec_path(ref.uid)),
            spec=spec,
            prepared_at=datetime.now(UTC),
            complete=False,
        )

    def _apply(self, record: PreparedClaim) -> None:
        """Apply each device's VF settings through the host (``Host.configure_vf``: only
        what differs, verified, its own steps undone if one fails). If a device fails,
        the devices done before it are restored, the record dropped, and the error
        raised with a note saying how the restore went."""
        for device in record.devices:
            if device.previous is None:
                continue
            try:
                self.host.configure_vf(device.address, _vf_config(device.settings))
            except (SriovError, OSError) as e:
                try:
                    self._restore(record)
                except (SriovError, OSError) as again:
                    e.add_note(f"restoring the claim's VFs failed too (kept for a retry): {again}")
                else:
                    self.store.remove(record.claim.uid)
                raise
            log.info(
                "VF settings applied",
                extra={"vf": str(device.address), "settings": dict(device.settings)},
            )

    def _restore(self, record: PreparedClaim) -> None:
        """Put every device of *record* back as it was before its settings (the CNI's
        release of a snapshot: only what differs is written, so again is harmless);
        every device is tried, the first failure raised with the others as notes."""
        failures: list[Exception] = []
        for device in reversed(record.devices):
            if device.previous is None:
                continue
            try:
                self.host.vf(device.address)
            except DeviceNotFound:
                log.warning("VF gone: nothing to restore", extra={"vf": str(device.address)})
                continue
            try:
                try:
                    snapshot = AttachSnapshot.from_dict(dict(device.previous))
                except (ValueError, TypeError, KeyError) as e:
                    # as the attachment service does with a snapshot it cannot use
                    log.warning(
                        "damaged snapshot in the record: VF reset to safe defaults",
                        extra={"vf": str(device.address), "error": str(e)},
                    )
                    report = self.host.reset_vf(device.address)
                else:
                    report = self.host.release(snapshot)
            except (SriovError, OSError) as e:
                failures.append(e)
                continue
            for warning in report.warnings:
                log.warning("VF restore", extra={"vf": str(device.address), "problem": warning})
            if report.restored:
                log.info(
                    "VF settings restored",
                    extra={"vf": str(device.address), "restored": list(report.restored)},
                )
        if failures:
            first = failures[0]
            for other in failures[1:]:
                first.add_note(str(other))
            raise first

    def _vf(self, address: PciAddress, where: str) -> VirtualFunction:
        try:
            function = self.host.pci_function(address)
        except SriovError as e:
            raise ClaimError(f"{where} is not on this node ({e})") from None
        if not isinstance(function, VirtualFunction):
            raise ClaimError(f"{where} is not a VF")
        return function

    @staticmethod
    def _check_driver(vf: VirtualFunction, settings: VfSettings, where: str) -> None:
        bound = vf.driver or "no driver"
        if settings.driver is VfDriver.VFIO_PCI and vf.driver != "vfio-pci":
            raise ClaimError(
                f"{where} is bound to {bound}, and the claim asks for vfio-pci "
                "(rebinding at prepare is not built yet)"
            )
        if settings.driver is VfDriver.NETDEVICE and vf.driver in (None, "vfio-pci"):
            raise ClaimError(
                f"{where} is bound to {bound}, and the claim asks for its network driver "
                "(rebinding at prepare is not built yet)"
            )

    def _edits(
        self,
        request: str,
        by_request: Mapping[str, list[tuple[VirtualFunction, ContainerDevices]]],
        needs: ContainerDevices,
    ) -> dict[str, Any]:
        env_name = _env_name(self.driver, request)
        members = by_request[request]
        info = {str(vf.address): _info(vf, n) for vf, n in members}
        env = [
            f"{env_name}={','.join(str(vf.address) for vf, _ in members)}",
            f"{env_name}_INFO={json.dumps(info, sort_keys=True)}",
            *(f"{k}={v}" for k, v in needs.env),
        ]
        edits: dict[str, Any] = {"env": env}
        if needs.nodes:
            edits["deviceNodes"] = [
                {"path": n.container_path, "hostPath": n.host_path, "permissions": "rw"}
                for n in needs.nodes
            ]
        if needs.mounts:
            edits["mounts"] = [
                {"hostPath": h, "containerPath": c, "options": ["ro", "nosuid", "nodev", "bind"]}
                for h, c in needs.mounts
            ]
        return edits

    def _write_spec(
        self, path: Path, spec: Mapping[str, Any], *, only_if_missing: bool = False
    ) -> None:
        if only_if_missing and path.exists():
            return
        path.parent.mkdir(parents=True, exist_ok=True)
        write_atomic(path, json.dumps(spec, indent=1, sort_keys=True).encode() + b"\n", 0o644)


def _vf_config(settings: Mapping[str, Any]) -> VfConfig:
    """The VF settings of a record's ``settings`` (``VfSettings.to_json``) as a VfConfig."""
    names = {f.name for f in attrs.fields(VfConfig)}
    return VfConfig(**{k: v for k, v in settings.items() if k in names})


def _info(vf: VirtualFunction, needs: ContainerDevices) -> dict[str, Any]:
    """The ``_INFO`` entry of one VF (the device plugin's keys)."""
    entry: dict[str, Any] = {"generic": {"deviceID": str(vf.address)}}
    if needs.vfio_group is not None:
        entry["vfio"] = {"mount": "/dev/vfio/vfio", "dev-mount": needs.vfio_group}
    if needs.rdma_device is not None:
        entry["rdma"] = {"rdma_dev": needs.rdma_device, **needs.rdma_nodes}
    return entry
