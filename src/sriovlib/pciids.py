"""Vendor and device names from the system's ``pci.ids`` database.

The database is the text file that ``lspci`` reads (package ``pci.ids`` on Debian,
``hwdata`` on Fedora)::

    15b3  Mellanox Technologies
    \t1017  MT27800 Family [ConnectX-5]
    \t\t15b3 0020  ConnectX-5 EN network interface card ...

Names are looked up only for the ids asked for: the file is read once (about 1 ms for
1.3 MB) and then searched with ``bytes.find`` for the vendor line and, inside that
vendor's block, the device line. A lookup costs well under a millisecond, about ten
times less than parsing the whole file into a dict (~25 ms), and ``sriovlib list`` asks
for a handful of ids. Answers are memoised per :class:`PciIds` object.

The file is optional: :func:`find_pci_ids` returns None when no database is installed,
and a missing, unreadable or malformed file makes lookups return None rather than
raise, so callers fall back to printing the numeric ids.
"""

from __future__ import annotations

import os
import re
from collections.abc import Sequence
from pathlib import Path

from sriovlib._files import read_bounded
from sriovlib.models import PciId

__all__ = ["DEFAULT_PATHS", "PciIds", "find_pci_ids", "open_pci_ids"]

#: Where distributions install pci.ids, most common first.
DEFAULT_PATHS: tuple[str, ...] = (
    "/usr/share/misc/pci.ids",  # Debian, Ubuntu (package pci.ids)
    "/usr/share/hwdata/pci.ids",  # Fedora, RHEL, Arch (package hwdata)
    "/usr/share/pci.ids",  # older layouts
)

# A top-level line that is neither indented nor a comment ends a vendor's block
# (the next vendor, or the "C xx" device-class section at the end of the file).
#: The largest pci.ids read (the full database is about 1.5 MiB).
_MAX_PCI_IDS = 32 << 20
_BLOCK_END = re.compile(rb"\n[^\t#\r\n]")


def find_pci_ids(paths: Sequence[str | os.PathLike[str]] = DEFAULT_PATHS) -> PciIds | None:
    """The first pci.ids among *paths* that is a file, or None when none is installed."""
    for path in paths:
        if Path(path).is_file():
            return PciIds(path)
    return None


def open_pci_ids(path: str | os.PathLike[str] | None) -> PciIds | None:
    """*path* as a :class:`PciIds`, or the system's database when *path* is None.

    A *path* that does not exist is not an error: lookups in it find nothing, and the
    caller shows numeric ids, exactly as on a node without pci.ids.
    """
    if path is None:
        return find_pci_ids()
    return PciIds(path)


class PciIds:
    """Name lookups in one pci.ids file, read on the first lookup.

    Args:
        path: The pci.ids file. It need not exist: then every lookup returns None.
    """

    def __init__(self, path: str | os.PathLike[str]) -> None:
        self.path = Path(path)
        self._data: bytes | None = None
        # vendor id -> (name or None, block start, block end); None when absent
        self._vendors: dict[int, tuple[str, int, int] | None] = {}
        self._devices: dict[PciId, str | None] = {}

    def __repr__(self) -> str:
        return f"PciIds({str(self.path)!r})"

    def vendor_name(self, vendor: int) -> str | None:
        """The name of *vendor* (e.g. ``Mellanox Technologies``), or None if unknown."""
        block = self._vendor(vendor)
        return None if block is None else block[0]

    def device_name(self, ids: PciId) -> str | None:
        """The name of device *ids* (e.g. ``MT27800 Family [ConnectX-5]``), or None."""
        if ids in self._devices:
            return self._devices[ids]
        name = None
        block = self._vendor(ids.vendor)
        if block is not None:
            _, start, end = block
            name = self._line_name(f"\n\t{ids.device:04x}  ".encode(), start, end)
        self._devices[ids] = name
        return name

    def names(self, ids: PciId) -> tuple[str | None, str | None]:
        """``(vendor name, device name)`` of *ids*; either may be None."""
        return self.vendor_name(ids.vendor), self.device_name(ids)

    def describe(self, ids: PciId) -> str:
        """``Vendor Device [vvvv:dddd]`` with whatever names are known, like ``lspci -nn``."""
        vendor, device = self.names(ids)
        words = [w for w in (vendor, device) if w]
        return " ".join([*words, f"[{ids}]"])

    # -- internals ------------------------------------------------------------------

    def _text(self) -> bytes:
        if self._data is None:
            try:
                # a leading newline lets every line, the first included, match "\n<id>"
                self._data = b"\n" + read_bounded(self.path, _MAX_PCI_IDS)
            except OSError:
                self._data = b""
        return self._data

    def _vendor(self, vendor: int) -> tuple[str, int, int] | None:
        if vendor in self._vendors:
            return self._vendors[vendor]
        text = self._text()
        result = None
        needle = f"\n{vendor:04x}  ".encode()
        start = text.find(needle)
        if start >= 0:
            line_end = _line_end(text, start + 1)
            name = _decode(text[start + len(needle) : line_end])
            match = _BLOCK_END.search(text, line_end)
            end = match.start() if match else len(text)
            if name:
                result = (name, line_end, end)
        self._vendors[vendor] = result
        return result

    def _line_name(self, needle: bytes, start: int, end: int) -> str | None:
        text = self._text()
        found = text.find(needle, start, end)
        if found < 0:
            return None
        return _decode(text[found + len(needle) : _line_end(text, found + 1)]) or None


def _line_end(text: bytes, start: int) -> int:
    end = text.find(b"\n", start)
    return len(text) if end < 0 else end


def _decode(raw: bytes) -> str:
    return raw.decode("utf-8", errors="replace").strip()
