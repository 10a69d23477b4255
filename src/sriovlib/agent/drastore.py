"""The DRA driver's record of prepared claims: crash-safe, one file per claim.

A kubelet that retries ``NodePrepareResources`` (after a timeout, a kubelet restart, an
agent restart) must get the answer it got the first time, without the claim being read
again; ``NodeUnprepareResources`` must find what to undo. So a prepared claim is a JSON
file ``<claim uid>.json`` in the record directory (default
``/var/lib/sriovlib/dra/<driver>/claims``), written as the allocation store writes its
records: under an exclusive ``flock`` on ``.lock``, atomically (temporary file, fsync,
rename, fsync of the directory), in a directory only root can use. A process killed at
any instant leaves the record or none, never half of one; a temporary file left by a
dead writer is removed by the next one.

The record holds the claim (namespace, name, UID), each device (request, pool, device
name, PCI address, CDI device IDs, the VF settings its configuration asked for), the
CDI spec file's name and its whole content, so the spec can be written again from the
record alone; and for a claim that asked for VF settings, each VF's state before they
were applied (``previous``), and for a VF the claim rebound to another driver the
driver and netdev name it had (``rebind``), written before the first change with
``complete`` false; the pods the claim was reserved for when it was prepared
(``reservedFor``) and the pod's name for the claim (``podClaimName``), which the CNI
plugin reads to give a pod the VF of its claim (:mod:`sriovlib.preparedvfs`; a record
written before those keys has none).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from contextlib import AbstractContextManager
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import attrs

from sriovlib._files import TEMP_PREFIX, locked_dir, read_private, sync_directory, write_atomic
from sriovlib.agent.draclaims import ClaimRef, PodRef
from sriovlib.allocation import StoreError
from sriovlib.models import PciAddress
from sriovlib.preparedvfs import RECORD_FORMAT

__all__ = ["RECORD_FORMAT", "PreparedClaim", "PreparedClaims", "PreparedDevice"]


@attrs.frozen
class PreparedDevice:
    """One device of a prepared claim."""

    request: str
    pool: str
    device: str
    address: PciAddress
    cdi_device_ids: tuple[str, ...]
    settings: Mapping[str, Any] = attrs.field(factory=dict, eq=False)
    #: The VF as it was before its settings were applied (``AttachSnapshot.to_dict``),
    #: what unprepare restores; None when the claim asked for no VF setting.
    previous: Mapping[str, Any] | None = attrs.field(default=None, eq=False)
    #: When the claim asked for another driver than the VF had: what unprepare binds it
    #: back to, ``{"driver": <driver or None>, "netdev": <its name or None>, "to":
    #: <netdevice or vfio-pci>}``, recorded before the rebind; None when not rebound.
    rebind: Mapping[str, Any] | None = attrs.field(default=None, eq=False)

    def to_json(self) -> dict[str, Any]:
        data = {
            "request": self.request,
            "pool": self.pool,
            "device": self.device,
            "address": str(self.address),
            "cdiDeviceIDs": list(self.cdi_device_ids),
            "settings": dict(self.settings),
        }
        if self.previous is not None:
            data["previous"] = dict(self.previous)
        if self.rebind is not None:
            data["rebind"] = dict(self.rebind)
        return data

    @classmethod
    def from_json(cls, data: Mapping[str, Any]) -> PreparedDevice:
        return cls(
            request=str(data["request"]),
            pool=str(data["pool"]),
            device=str(data["device"]),
            address=PciAddress.parse(str(data["address"])),
            cdi_device_ids=tuple(str(i) for i in data["cdiDeviceIDs"]),
            settings=dict(data.get("settings", {})),
            previous=dict(data["previous"]) if data.get("previous") is not None else None,
            rebind=dict(data["rebind"]) if data.get("rebind") is not None else None,
        )


@attrs.frozen
class PreparedClaim:
    """A claim this driver prepared."""

    claim: ClaimRef
    driver: str
    devices: tuple[PreparedDevice, ...]
    cdi_spec: str
    spec: Mapping[str, Any] = attrs.field(eq=False)
    prepared_at: datetime = attrs.field(eq=False)
    #: False while the prepare is under way: the VFs' previous state is on disk, their
    #: settings may be half applied and the spec may not be written yet. A record found
    #: so (the agent was killed) is restored and prepared again, or restored at unprepare.
    complete: bool = attrs.field(default=True, eq=False)
    #: The pods the claim is reserved for, and the pod's name for the claim.
    reserved_for: tuple[PodRef, ...] = attrs.field(default=(), eq=False)
    pod_claim: str | None = attrs.field(default=None, eq=False)

    def to_json(self) -> dict[str, Any]:
        data = {
            "format": RECORD_FORMAT,
            "complete": self.complete,
            "driver": self.driver,
            "claim": {
                "namespace": self.claim.namespace,
                "name": self.claim.name,
                "uid": self.claim.uid,
            },
            "preparedAt": self.prepared_at.astimezone(UTC).isoformat(),
            "devices": [d.to_json() for d in self.devices],
            "cdiSpecFile": self.cdi_spec,
            "cdiSpec": dict(self.spec),
            "reservedFor": [{"name": p.name, "uid": p.uid} for p in self.reserved_for],
        }
        if self.pod_claim is not None:
            data["podClaimName"] = self.pod_claim
        return data

    @classmethod
    def from_json(cls, data: object) -> PreparedClaim:
        """Raises :class:`ValueError` (or ``KeyError``/``TypeError``) for a damaged one."""
        if not isinstance(data, dict) or data.get("format") != RECORD_FORMAT:
            raise ValueError(f"not a prepared-claim record of format {RECORD_FORMAT}")
        claim = data["claim"]
        return cls(
            claim=ClaimRef(str(claim["namespace"]), str(claim["name"]), str(claim["uid"])),
            driver=str(data["driver"]),
            devices=tuple(PreparedDevice.from_json(d) for d in data["devices"]),
            cdi_spec=str(data["cdiSpecFile"]),
            spec=dict(data["cdiSpec"]),
            prepared_at=datetime.fromisoformat(str(data["preparedAt"])),
            complete=bool(data.get("complete", True)),
            reserved_for=tuple(
                PodRef(str(p["name"]), str(p["uid"])) for p in data.get("reservedFor", ())
            ),
            pod_claim=str(data["podClaimName"]) if data.get("podClaimName") else None,
        )


class PreparedClaims:
    """The prepared claims in *directory* (created 0700 on first write)."""

    def __init__(self, directory: Path) -> None:
        self.directory = Path(directory)

    def __repr__(self) -> str:
        return f"PreparedClaims({str(self.directory)!r})"

    def _path(self, uid: str) -> Path:
        # the caller checked the UID (ClaimRef.problem): no '/' nor '.' can reach here
        return self.directory / f"{uid}.json"

    def get(self, uid: str) -> PreparedClaim | None:
        """The record of claim *uid*, or None.

        Raises:
            StoreError: the record exists but cannot be read.
        """
        with self._locked(exclusive=False):
            return self._read(uid)

    def put(self, record: PreparedClaim) -> None:
        """Write (or replace) the record of *record*'s claim."""
        data = json.dumps(record.to_json(), indent=2, sort_keys=True, allow_nan=False) + "\n"
        with self._locked(exclusive=True):
            self._clean()
            write_atomic(self._path(record.claim.uid), data.encode())

    def remove(self, uid: str) -> bool:
        """Drop the record of claim *uid*; whether there was one."""
        with self._locked(exclusive=True):
            self._clean()
            try:
                os.unlink(self._path(uid))
            except FileNotFoundError:
                return False
            sync_directory(self.directory)
            return True

    def records(self) -> tuple[PreparedClaim, ...]:
        """Every readable record, by claim UID (a damaged one is left out)."""
        with self._locked(exclusive=False):
            found = []
            for name in sorted(self._names()):
                try:
                    record = self._read(name[: -len(".json")])
                except StoreError:
                    continue
                if record is not None:
                    found.append(record)
        return tuple(found)

    def _names(self) -> list[str]:
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return []
        return [n for n in names if not n.startswith(".") and n.endswith(".json")]

    def _read(self, uid: str) -> PreparedClaim | None:
        path = self._path(uid)
        try:
            data = read_private(path)
        except FileNotFoundError:
            return None
        except OSError as e:
            raise StoreError(f"{path}: {e.strerror or e}") from None
        try:
            record = PreparedClaim.from_json(json.loads(data))
        except (ValueError, KeyError, TypeError) as e:
            raise StoreError(f"{path}: a damaged prepared-claim record ({e})") from None
        if record.claim.uid != uid:
            raise StoreError(f"{path}: the record is of claim uid {record.claim.uid}")
        return record

    def _clean(self) -> None:
        """Remove temporary files (only a writer holding the lock makes them)."""
        try:
            names = os.listdir(self.directory)
        except FileNotFoundError:
            return
        for name in names:
            if name.startswith(TEMP_PREFIX):
                (self.directory / name).unlink(missing_ok=True)

    def _locked(self, *, exclusive: bool) -> AbstractContextManager[None]:
        return locked_dir(self.directory, exclusive=exclusive)
