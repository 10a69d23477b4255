"""The exceptions sriovlib raises.

Everything derives from :class:`SriovError`, so a caller can catch one class. Each
exception names what was asked for, so that a message alone tells an operator what to
look at.
"""

from __future__ import annotations

import errno
import os
from typing import Any

__all__ = [
    "AddressingRefused",
    "Busy",
    "DeviceNotFound",
    "InvalidPciAddress",
    "InvalidValue",
    "KernelError",
    "KernelNotFound",
    "NotApplied",
    "SriovError",
    "Unsupported",
    "VfsNotReady",
    "errno_name",
    "kernel_error",
]


class SriovError(Exception):
    """Base class of every error sriovlib raises on purpose."""


class InvalidPciAddress(SriovError, ValueError):
    """A string is not a PCI address of the form ``[dddd:]bb:dd.f``."""

    def __init__(self, text: str, reason: str) -> None:
        self.text = text
        self.reason = reason
        super().__init__(f"invalid PCI address {text!r}: {reason}")


class DeviceNotFound(SriovError, LookupError):
    """A lookup by name or PCI address matched no device on this host."""

    def __init__(self, kind: str, wanted: str, hint: str = "") -> None:
        self.kind = kind
        self.wanted = wanted
        message = f"no {kind} {wanted!r} on this host"
        if hint:
            message += f" ({hint})"
        super().__init__(message)


# -- kernel refusals (netlink requests and sysfs writes) ---------------------------------


class KernelError(SriovError):
    """The kernel refused an operation.

    Attributes:
        operation: What was asked, e.g. ``"set VF max_tx_rate"``.
        device: What it was asked of, e.g. ``"eth0 vf 2"``.
        errno: The kernel's errno (``errno.EOPNOTSUPP``...).
        driver: The driver in charge, when known.
        knob: The VF setting concerned, when there is one.
    """

    def __init__(
        self,
        operation: str,
        device: str,
        code: int,
        *,
        driver: str | None = None,
        knob: str | None = None,
        detail: str = "",
    ) -> None:
        self.operation = operation
        self.device = device
        self.errno = code
        self.driver = driver
        self.knob = knob
        self.detail = detail
        where = device if driver is None else f"{device} (driver {driver})"
        message = f"{operation} on {where} failed: {os.strerror(code)} [{self.errno_name}]"
        if detail:
            message += f": {detail}"
        super().__init__(message)

    @property
    def errno_name(self) -> str:
        """The symbolic errno, e.g. ``EOPNOTSUPP``."""
        return errno_name(self.errno)

    def __reduce__(self) -> tuple[Any, ...]:
        return (
            _rebuild_error,
            (
                type(self),
                self.operation,
                self.device,
                self.errno,
                self.driver,
                self.knob,
                self.detail,
            ),
        )


def errno_name(code: int) -> str:
    """``EOPNOTSUPP`` for 95 (Python's table says ``ENOTSUP``, the same number on Linux)."""
    if code == errno.EOPNOTSUPP:
        return "EOPNOTSUPP"
    return errno.errorcode.get(code, str(code))


def _rebuild_error(cls: type[KernelError], *args: Any) -> KernelError:
    operation, device, code, driver, knob, detail = args
    return cls(operation, device, code, driver=driver, knob=knob, detail=detail)


class KernelNotFound(KernelError, LookupError):
    """The device, VF or namespace does not exist (ENODEV, ENOENT, ENXIO)."""


class Unsupported(KernelError):
    """The driver does not implement this (EOPNOTSUPP, EPROTONOSUPPORT, ENOSYS)."""


class InvalidValue(KernelError, ValueError):
    """The driver refused the value (EINVAL, ERANGE)."""


class Busy(KernelError):
    """The device is busy; trying again later may work (EBUSY, EAGAIN)."""


_ERROR_CLASSES: dict[int, type[KernelError]] = {
    errno.ENODEV: KernelNotFound,
    errno.ENOENT: KernelNotFound,
    errno.ENXIO: KernelNotFound,
    errno.EOPNOTSUPP: Unsupported,
    errno.EPROTONOSUPPORT: Unsupported,
    errno.ENOSYS: Unsupported,
    errno.EINVAL: InvalidValue,
    errno.ERANGE: InvalidValue,
    errno.EBUSY: Busy,
    errno.EAGAIN: Busy,
}


def kernel_error(
    code: int,
    operation: str,
    device: str,
    *,
    driver: str | None = None,
    knob: str | None = None,
    detail: str = "",
) -> KernelError:
    """The :class:`KernelError` subclass for errno *code* (the base class for others)."""
    cls = _ERROR_CLASSES.get(code, KernelError)
    return cls(operation, device, code, driver=driver, knob=knob, detail=detail)


# -- the Host's own failures -------------------------------------------------------------


class VfsNotReady(SriovError, TimeoutError):
    """After a ``sriov_numvfs`` change, the VFs or their netdevs did not all appear in time."""


class NotApplied(SriovError):
    """The driver accepted a VF setting but reports another value; it was rolled back.

    Attributes:
        fields: The settings that did not take, as ``(name, asked, reported)``.
    """

    def __init__(
        self,
        device: str,
        driver: str | None,
        fields: tuple[tuple[str, object, object], ...],
        rollback: str,
    ) -> None:
        self.fields = fields
        detail = ", ".join(
            f"{name}: asked {asked}, driver reports {seen}" for name, asked, seen in fields
        )
        super().__init__(
            f"VF settings on {device} (driver {driver}) did not take ({detail}); {rollback}"
        )


class AddressingRefused(SriovError):
    """The kernel refused an address or a route for an interface.

    Attributes:
        what: ``address 10.0.0.2/24`` or ``route 0.0.0.0/0 via 10.0.0.1``.
        cause: The kernel's refusal.
    """

    def __init__(self, what: str, cause: KernelError) -> None:
        self.what = what
        self.cause = cause
        super().__init__(f"adding {what} failed: {cause}")
