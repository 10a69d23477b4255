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

A claim asking for another driver than its VF has (``driver: vfio-pci`` for a VF on its
kernel driver, ``driver: netdevice`` for one on vfio-pci) has the VF bound to it
(``Host.bind_driver``, what ``sriovlib apply`` uses) after the driver and netdev name it
had are recorded (``rebind``); the CDI edits are those of the VF as it is then (its
``/dev/vfio/<group>``), and unprepare binds it back (``Host.bind_back``) before its
settings are restored. What would make the bind fail is checked before anything changes
(``Host.bind_problem``: no IOMMU group, the driver not loaded), and a VF whose netdev is
not on the host or that a CNI attachment holds is not rebound (the unbind would take the
netdev from its pod).
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
from sriovlib.host import USERSPACE_DRIVERS, Host
from sriovlib.models import AttachSnapshot, ContainerDevices, PciAddress, VfConfig, VirtualFunction
from sriovlib.plugins.types import DeviceType

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
        holder: Who else holds the VF at an address now (a CNI attachment), or None:
            such a VF is not rebound to another driver.
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
        holder: Callable[[PciAddress], str | None] | None = None,
    ) -> None:
        self.host = host
        self.refusal = refusal
        self.holder = holder
        self.claims = claims
        self.store = store
        self.cdi_dir = cdi_dir
        self.driver = driver
        # one claim at a time: the check that no other claim holds a VF needs it
        self._lock = threading.Lock()
        self._rebound = self._rebound_in(store.records())

    @staticmethod
    def _rebound_in(
        records: tuple[PreparedClaim, ...],
    ) -> Mapping[str, tuple[str | None, str | None]]:
        return {
            str(d.address): (d.rebind.get("driver"), d.rebind.get("netdev"))
            for r in records
            for d in r.devices
            if d.rebind is not None
        }

    def rebound(self) -> Mapping[str, tuple[str | None, str | None]]:
        """The VFs prepared claims have bound to another driver (or are binding), by
        address: the driver and netdev name each had before, what its pool knows it by
        (the health watch does not count the claim's driver against it)."""
        return self._rebound

    def _note_rebound(self) -> None:
        self._rebound = self._rebound_in(self.store.records())

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
            record, found = self._prepare(ref, claim)
            if any(d.previous is not None or d.rebind is not None for d in record.devices):
                self.store.put(record)  # the VFs' previous state, before any change
                self._note_rebound()  # before the bind: its uevent is no one else's rebind
                try:
                    record = self._change(record, found)
                except (SriovError, OSError) as e:
                    try:
                        self._restore(record)
                    except (SriovError, OSError) as again:
                        e.add_note(
                            f"restoring the claim's VFs failed too (kept for a retry): {again}"
                        )
                    else:
                        self.store.remove(record.claim.uid)
                    raise
                finally:
                    self._note_rebound()
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
            removed = self.store.remove(ref.uid)
            self._note_rebound()
            return removed

    def prepared(self) -> tuple[PreparedClaim, ...]:
        """Every claim prepared now."""
        return self.store.records()

    # -- the work ----------------------------------------------------------------------

    def _prepare(self, ref: ClaimRef, claim: ResourceClaim) -> tuple[PreparedClaim, list[_Found]]:
        """Check every device of *claim* and read what a restore needs, changing
        nothing: the record to write first (its spec that of the VFs as they are) and
        what was found."""
        held = {
            str(d.address): r.claim
            for r in self.store.records()
            if r.claim.uid != ref.uid
            for d in r.devices
        }
        kind = cdi_kind(self.driver)
        found: list[_Found] = []
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
            bind = self._bind_to(vf, settings, where)
            needs = ContainerDevices()
            if bind is None:  # a rebound VF's needs are known once it is bound
                needs = self._needs(vf, where)
            found.append(_Found(device, vf, settings, needs, bind))
        prepared = []
        for item in found:
            vf = item.vf
            previous = None
            if item.settings.vf_config.fields():
                # what unprepare restores, read now and changing nothing (the CNI's
                # snapshot: the VF's settings through its PF, its netdev on the host)
                ifname = vf.netdev or f"vf{vf.index}"  # a netdev name; unused without one
                snapshot = attrs.evolve(self.host.snapshot(vf, _HOST_NETNS, ifname), netns=None)
                previous = snapshot.to_dict()
            rebind = None
            if item.bind is not None:
                rebind = {"driver": vf.driver, "netdev": vf.netdev, "to": str(item.bind)}
            name = f"{ref.uid}-{item.device.device}"
            prepared.append(
                PreparedDevice(
                    request=item.device.request,
                    pool=item.device.pool,
                    device=item.device.device,
                    address=vf.address,
                    cdi_device_ids=(f"{kind}={name}",),
                    settings=item.settings.to_json(),
                    previous=previous,
                    rebind=rebind,
                )
            )
        record = PreparedClaim(
            claim=ref,
            driver=self.driver,
            devices=tuple(prepared),
            cdi_spec=str(self.spec_path(ref.uid)),
            spec=self._spec(ref, found),
            prepared_at=datetime.now(UTC),
            complete=False,
            reserved_for=claim.reserved_for,
            pod_claim=claim.pod_claim,
        )
        return record, found

    def _change(self, record: PreparedClaim, found: list[_Found]) -> PreparedClaim:
        """Bind each VF the claim wants on another driver to it (the spec made again from
        the VFs as they are then), then apply each device's VF settings through the host
        (``Host.configure_vf``: only what differs, verified, its own steps undone if one
        fails). The caller restores the claim's VFs if this raises."""
        rebound = False
        for i, item in enumerate(found):
            if item.bind is None:
                continue
            where = (
                f"device {item.device.device} ({item.vf.address}) of request "
                f"{item.device.request!r}"
            )
            vf = self.host.bind_driver(item.vf, item.bind)
            if not self._bound_as(vf, item.bind):
                raise ClaimError(
                    f"{where} did not bind to {item.bind} (it has {vf.driver or 'no driver'})"
                )
            log.info(
                "VF rebound",
                extra={"vf": str(vf.address), "from": item.vf.driver, "to": vf.driver},
            )
            found[i] = attrs.evolve(item, vf=vf, needs=self._needs(vf, where))
            rebound = True
        if rebound:
            record = attrs.evolve(record, spec=self._spec(record.claim, found))
        for device in record.devices:
            if device.previous is None:
                continue
            self.host.configure_vf(device.address, _vf_config(device.settings))
            log.info(
                "VF settings applied",
                extra={"vf": str(device.address), "settings": dict(device.settings)},
            )
        return record

    def _spec(self, ref: ClaimRef, found: list[_Found]) -> dict[str, Any]:
        by_request: dict[str, list[tuple[VirtualFunction, ContainerDevices]]] = {}
        for item in found:
            by_request.setdefault(item.device.request, []).append((item.vf, item.needs))
        devices = [
            {
                "name": f"{ref.uid}-{item.device.device}",
                "containerEdits": self._edits(item.device.request, by_request, item.needs),
            }
            for item in found
        ]
        return {"cdiVersion": CDI_VERSION, "kind": cdi_kind(self.driver), "devices": devices}

    def _restore(self, record: PreparedClaim) -> None:
        """Put every device of *record* back as it was before its settings (the CNI's
        release of a snapshot: only what differs is written, so again is harmless);
        every device is tried, the first failure raised with the others as notes."""
        failures: list[Exception] = []
        for device in reversed(record.devices):
            if device.previous is None and device.rebind is None:
                continue
            try:
                self.host.vf(device.address)
            except DeviceNotFound:
                log.warning("VF gone: nothing to restore", extra={"vf": str(device.address)})
                continue
            try:
                if device.rebind is not None:
                    self._bind_back(device)
                if device.previous is None:
                    continue
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

    def _bind_to(self, vf: VirtualFunction, settings: VfSettings, where: str) -> DeviceType | None:
        """The device type whose driver *vf* must be bound to for *settings*, or None
        when it is on a fitting driver; :class:`ClaimError` if it cannot be rebound."""
        if settings.driver is None:
            return None
        if settings.driver is VfDriver.VFIO_PCI:
            wanted = DeviceType.VFIO
            target = self.host.hooks(vf.pf_address).vf_driver(vf, wanted)
            if target is not None and vf.driver == target:
                return None  # vfio-pci, or a bifurcated driver's own (mlx5_core)
        else:
            wanted = DeviceType.NETDEVICE
            if vf.driver is not None and vf.driver not in USERSPACE_DRIVERS:
                return None
        bound = vf.driver or "no driver"
        why = self.host.bind_problem(vf, wanted)
        if why is None and self.holder is not None:
            holder = self.holder(vf.address)
            if holder is not None:
                why = f"it is held by {holder}"
        if why is None and vf.netdev is None and vf.driver not in (None, *USERSPACE_DRIVERS):
            why = "its netdev is not in the host's namespace (in a pod?)"
        if why is not None:
            raise ClaimError(
                f"{where} is bound to {bound}, and the claim asks for {settings.driver}: "
                f"it cannot be rebound: {why}"
            )
        return wanted

    @staticmethod
    def _bound_as(vf: VirtualFunction, wanted: DeviceType) -> bool:
        if wanted is DeviceType.VFIO:
            return vf.driver is not None
        return vf.driver is not None and vf.driver not in USERSPACE_DRIVERS

    def _needs(self, vf: VirtualFunction, where: str) -> ContainerDevices:
        needs = self.host.container_devices(vf, rdma=bool(vf.rdma_devices))
        if needs.missing:
            raise ClaimError(f"{where}: device node missing on the node: "
                             f"{', '.join(needs.missing)}")  # fmt: skip
        return needs

    def _bind_back(self, device: PreparedDevice) -> None:
        """Bind a VF the claim rebound to the driver it had (its netdev name too), unless
        a CNI attachment holds it now (the unbind would take the netdev from the pod)."""
        assert device.rebind is not None  # noqa: S101 - the caller checked
        driver = device.rebind.get("driver")
        netdev = device.rebind.get("netdev")
        if self.holder is not None:
            holder = self.holder(device.address)
            if holder is not None:
                raise ClaimError(
                    f"VF {device.address} is held by {holder}: not bound back to "
                    f"{driver or 'no driver'} while it is"
                )
        before = self.host.bound_driver(device.address)
        vf = self.host.bind_back(
            device.address,
            str(driver) if driver is not None else None,
            str(netdev) if netdev is not None else None,
        )
        if before != vf.driver:
            log.info(
                "VF bound back",
                extra={"vf": str(device.address), "from": before, "to": vf.driver},
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


@attrs.frozen
class _Found:
    """A device of a claim as the prepare found it on the node."""

    device: AllocatedDevice
    vf: VirtualFunction
    settings: VfSettings
    needs: ContainerDevices
    bind: DeviceType | None  # the device type to bind it to, None when it stays


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
