"""The exceptions sriovlib raises.

Everything derives from :class:`SriovError`, so a caller can catch one class. Each
exception names what was asked for, so that a message alone tells an operator what to
look at.
"""

from __future__ import annotations

__all__ = [
    "DeviceNotFound",
    "InvalidPciAddress",
    "SriovError",
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
