"""Crash-safe, private small files: what the allocation store and the attachment
service keep under the state directory.

- :func:`private_dir` makes a directory only its owner can use (0700 whatever the
  umask) and refuses one that is a planted symlink, not a directory, or someone else's;
- :func:`write_atomic` replaces a file so that a crash leaves the old or the new content
  (0600 by default);
- :func:`read_private` reads a regular file without following a symlink, at most a
  bounded number of bytes; :func:`read_bounded` and :func:`read_stream` bound what the
  CLI and sysfs read (a config, ``pci.ids``, a sysfs attribute, standard input);
- :func:`locked_dir` holds a private directory's ``.lock`` file under ``flock``
  (shared or exclusive), the way every store under the state directory serialises.
"""

from __future__ import annotations

import errno
import fcntl
import os
import stat
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path

__all__ = [
    "MAX_STATE_FILE",
    "TEMP_PREFIX",
    "WrongKind",
    "locked_dir",
    "private_dir",
    "read_bounded",
    "read_private",
    "read_stream",
    "sync_directory",
    "write_atomic",
]

#: The largest state file read (records and entries are a few KiB).
MAX_STATE_FILE = 1 << 20

#: Prefix of the temporary files :func:`write_atomic` creates (readers skip dot files).
TEMP_PREFIX = ".tmp-"


def write_atomic(path: Path, data: bytes, mode: int = 0o600) -> None:
    """Replace *path* with *data* so that a crash at any instant leaves the old or the
    new content, never a mix: write a temporary file, fsync it, rename it over *path*,
    fsync the directory. The temporary file is removed if anything fails."""
    # os.urandom, not the secrets module: it is what secrets.token_hex calls, without the
    # imports (random, base64, hmac) a CNI invocation would pay for
    temp = path.parent / f"{TEMP_PREFIX}{os.getpid()}-{os.urandom(4).hex()}"
    fd = os.open(temp, os.O_WRONLY | os.O_CREAT | os.O_EXCL | os.O_CLOEXEC, mode)
    try:
        try:
            os.fchmod(fd, mode)  # the umask only ever removes bits; make them exact
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


@contextmanager
def locked_dir(directory: Path, *, exclusive: bool) -> Iterator[None]:
    """Hold *directory*'s ``.lock`` under ``flock``, exclusive or shared, made private
    first (:func:`private_dir`); the lock file is created 0600 and never followed."""
    private_dir(directory)
    flags = os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW | os.O_CLOEXEC
    fd = os.open(directory / ".lock", flags, 0o600)
    try:
        fcntl.flock(fd, fcntl.LOCK_EX if exclusive else fcntl.LOCK_SH)
        yield
    finally:
        os.close(fd)


def private_dir(path: Path, *, follow: bool = False) -> Path:
    """Make *path* a directory only its owner uses: missing components are created 0700
    (whatever the umask), an existing one of ours gets 0700.

    *follow* allows *path* itself to be a symlink to a directory (a state directory an
    administrator moved); a directory under it never is.

    Raises:
        OSError: ELOOP for a symlink, ENOTDIR for something else than a directory, EPERM
            for a directory of another user.
    """
    missing = []
    probe = path
    while not os.path.lexists(probe) and probe != probe.parent:
        missing.append(probe)
        probe = probe.parent
    for directory in reversed(missing):
        try:
            os.mkdir(directory, 0o700)
        except FileExistsError:
            pass  # another process was quicker; judged below
        else:
            os.chmod(directory, 0o700)
    info = os.lstat(path)
    if stat.S_ISLNK(info.st_mode):
        if not follow:
            raise OSError(errno.ELOOP, "a symlink where a directory must be", str(path))
        info = os.stat(path)
    if not stat.S_ISDIR(info.st_mode):
        raise OSError(errno.ENOTDIR, os.strerror(errno.ENOTDIR), str(path))
    if info.st_uid != os.geteuid():
        raise OSError(errno.EPERM, f"owned by uid {info.st_uid}, not by us", str(path))
    if stat.S_IMODE(info.st_mode) != 0o700:
        os.chmod(path, 0o700)
    return path


def read_private(path: Path, limit: int = MAX_STATE_FILE) -> bytes:
    """The content of the regular file *path*, not followed through a symlink.

    Raises:
        FileNotFoundError: there is none.
        OSError: ELOOP for a symlink, EINVAL for something else than a regular file,
            EFBIG beyond *limit* bytes.
    """
    return _read(path, limit, follow=False, pipes=False)


def read_bounded(path: str | os.PathLike[str], limit: int, *, pipes: bool = False) -> bytes:
    """The content of *path* — a regular file, or with *pipes* also a FIFO or a pipe
    (``--config <(command)``) — at most *limit* bytes. A device (``/dev/zero``), a
    directory or a socket is refused, and a FIFO is never waited on when *pipes* is off.

    Raises:
        OSError: as :func:`read_private` (EINVAL for the refused kinds).
    """
    return _read(path, limit, follow=True, pipes=pipes)


def read_stream(stream: object, limit: int, what: str) -> bytes:
    """At most *limit* bytes of an open binary stream (standard input).

    Raises:
        OSError: EBADF when *stream* is missing (the descriptor was closed), EFBIG
            beyond *limit*.
    """
    read = getattr(getattr(stream, "buffer", stream), "read", None)
    if read is None:
        raise OSError(errno.EBADF, f"{what} is closed")
    data: bytes = read(limit + 1)
    if len(data) > limit:
        raise OSError(errno.EFBIG, f"{what} holds more than {limit} bytes")
    return data


class WrongKind(OSError):
    """The path is not the kind of file that may be read there (errno EINVAL)."""


def _read(path: str | os.PathLike[str], limit: int, *, follow: bool, pipes: bool) -> bytes:
    flags = os.O_RDONLY | os.O_CLOEXEC | os.O_NONBLOCK | (0 if follow else os.O_NOFOLLOW)
    fd = os.open(path, flags)
    try:
        mode = os.fstat(fd).st_mode
        if not (stat.S_ISREG(mode) or (pipes and stat.S_ISFIFO(mode))):
            kinds = "a regular file or a pipe" if pipes else "a regular file"
            raise WrongKind(errno.EINVAL, f"not {kinds}", os.fspath(path))
        if stat.S_ISFIFO(mode):
            os.set_blocking(fd, True)  # a pipe the caller named: wait for its writer
        chunks = []
        size = 0
        while chunk := os.read(fd, min(1 << 16, limit + 1 - size)):
            chunks.append(chunk)
            size += len(chunk)
            if size > limit:
                raise OSError(errno.EFBIG, f"larger than {limit} bytes", os.fspath(path))
        return b"".join(chunks)
    finally:
        os.close(fd)
