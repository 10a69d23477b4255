"""Crash-safe small-file writes shared by the allocation store and the CNI cache."""

from __future__ import annotations

import os
import secrets
from pathlib import Path

__all__ = ["TEMP_PREFIX", "sync_directory", "write_atomic"]

#: Prefix of the temporary files :func:`write_atomic` creates (readers skip dot files).
TEMP_PREFIX = ".tmp-"


def write_atomic(path: Path, data: bytes, mode: int = 0o644) -> None:
    """Replace *path* with *data* so that a crash at any instant leaves the old or the
    new content, never a mix: write a temporary file, fsync it, rename it over *path*,
    fsync the directory. The temporary file is removed if anything fails."""
    temp = path.parent / f"{TEMP_PREFIX}{os.getpid()}-{secrets.token_hex(4)}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            view = memoryview(data)
            while view:
                view = view[os.write(fd, view) :]
            os.fsync(fd)
        finally:
            os.close(fd)
        os.rename(temp, path)
    except BaseException:
        temp.unlink(missing_ok=True)
        raise
    sync_directory(path.parent)


def sync_directory(directory: Path) -> None:
    """fsync *directory*, so that a rename or unlink in it survives a crash."""
    fd = os.open(directory, os.O_RDONLY | os.O_DIRECTORY | os.O_CLOEXEC)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
