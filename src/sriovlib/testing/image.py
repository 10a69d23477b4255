"""The node agent's container image, built with no image registry.

:func:`agent_image` gives an OCI archive of ``deploy/Containerfile`` built from this
source tree, importable with ``ctr -n k8s.io images import`` and named
:func:`image_ref` (``localhost/sriovlib-agent:<version>``). It builds in three steps,
each kept in :func:`cache_dir`:

1. the base: ``debootstrap --variant=minbase`` of Debian :data:`BASE_SUITE` with
   :data:`BASE_PACKAGES` into a scratch directory, apt's caches dropped, tarred
   (``base/<key>.tar``, keyed by suite, packages and mirror), then imported into buildah's
   store as :data:`BASE_IMAGE` (``buildah from scratch``, ``buildah add``, ``buildah
   commit``) whenever the store's copy is missing or from another key;
2. the agent: the sriovlib wheel built from the source tree (``pip wheel --no-deps``; the
   wheel is reproducible, so its hash names the tree's content), a build context of
   ``deploy/Containerfile``, ``deploy/sriov-cni.sh`` and ``dist/<wheel>``, and ``buildah
   bud`` with chroot isolation and ``--pull=never``; pip fetches the dependencies from
   PyPI inside the build. The machine's CA bundle is bind-mounted over the base's for the
   build's ``RUN`` steps only (a proxy that re-signs TLS is trusted by the machine, not
   by Debian's bundle) and is not in the image;
3. the archive: ``buildah push <ref> oci-archive:<path>:<ref>`` to
   ``agent-<version>-<key>.tar``, where the key hashes the wheel, the Containerfile, the
   launcher and the base; the image then leaves buildah's store (the archive is the
   cache) and older archives are removed.

buildah's store is ``cache_dir()/storage`` with the ``vfs`` driver (no overlay mounts,
so it also works where the root filesystem is an overlay). Debian's ``debootstrap`` and
``buildah`` are installed with apt when missing. Cold, the whole build takes about two
minutes on 2 cores (debootstrap most of it); warm, the wheel build and a hash.
"""

from __future__ import annotations

import contextlib
import fcntl
import hashlib
import json
import os
import re
import shutil
import subprocess
import sys
import tempfile
import time
from collections.abc import Sequence
from pathlib import Path

from sriovlib.testing.clienttools import ToolUnavailable, ensure_packages

__all__ = [
    "BASE_IMAGE",
    "BASE_PACKAGES",
    "BASE_SUITE",
    "ENTRYPOINT",
    "IMAGE_NAME",
    "LAUNCHER",
    "PACKAGES",
    "ImageBuildError",
    "agent_image",
    "cache_dir",
    "containerfile_settings",
    "image_ref",
    "source_tree",
]

#: The Debian release of the base root filesystem.
BASE_SUITE = "bookworm"

#: What debootstrap installs on top of minbase.
BASE_PACKAGES = ("python3", "python3-venv", "iproute2", "ca-certificates")

#: The local image the Containerfile is built ``FROM`` (never pulled).
BASE_IMAGE = f"localhost/sriovlib-base:{BASE_SUITE}"

#: The agent image's name; the tag is sriovlib's version.
IMAGE_NAME = "localhost/sriovlib-agent"

#: The image's ``ENTRYPOINT``.
ENTRYPOINT = ("sriovlib", "agent")

#: Where the image keeps the CNI launcher that the DaemonSet copies to ``/opt/cni/bin``.
LAUNCHER = "/opt/sriovlib/cni/sriov"

#: Debian packages the build runs.
PACKAGES = ("debootstrap", "buildah")

#: The Debian mirror debootstrap fetches from (``$SRIOVLIB_IMAGE_MIRROR`` overrides it).
MIRROR = "http://deb.debian.org/debian"

_FORMAT = "sriovlib-agent-image-1"
_CONTAINERFILE = "deploy/Containerfile"
_LAUNCHER_SOURCE = "deploy/sriov-cni.sh"
_BASE_LABEL = "org.sriovlib.base-key"
_CA_BUNDLE = "/etc/ssl/certs/ca-certificates.crt"
_TIMEOUT = 1800.0
#: Lines of a failed build that mean the network, not the Containerfile, is at fault.
_NETWORK_TROUBLE = re.compile(
    r"Could not fetch URL|Failed to establish a new connection|Temporary failure in name "
    r"resolution|Network is unreachable|CERTIFICATE_VERIFY_FAILED"
    r"|Read timed out"
)


class ImageBuildError(RuntimeError):
    """The image build failed for a reason of the project's own (the Containerfile, the
    wheel), not of the machine: the message names the step and the log."""


def cache_dir() -> Path:
    """``$SRIOVLIB_IMAGE_CACHE`` or ``~/.cache/sriovlib-image`` (``$XDG_CACHE_HOME`` honoured)."""
    configured = os.environ.get("SRIOVLIB_IMAGE_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sriovlib-image"


def image_ref(version: str | None = None) -> str:
    """``localhost/sriovlib-agent:<version>`` (default: the installed sriovlib's)."""
    if version is None:
        from sriovlib import __version__

        version = __version__
    return f"{IMAGE_NAME}:{version}"


def source_tree() -> Path:
    """The source checkout this sriovlib runs from (it holds ``deploy/Containerfile``).

    Raises:
        ToolUnavailable: sriovlib is installed from a wheel, not run from a checkout.
    """
    here = Path(__file__).resolve()
    for candidate in here.parents:
        if (candidate / _CONTAINERFILE).is_file() and (candidate / "pyproject.toml").is_file():
            return candidate
    raise ToolUnavailable(f"no source checkout with {_CONTAINERFILE} above {here.parent}")


def containerfile_settings(text: str) -> tuple[str, tuple[str, ...]]:
    """The ``FROM`` image and the exec-form ``ENTRYPOINT`` of a one-stage Containerfile.

    Raises:
        ValueError: no or several ``FROM``, no ``ENTRYPOINT`` or one in shell form.
    """
    logical = re.sub(r"\\\n", " ", text)
    instructions = [
        line.strip()
        for line in logical.splitlines()
        if line.strip() and not line.lstrip().startswith("#")
    ]
    froms = [i.split()[1] for i in instructions if i.split()[0].upper() == "FROM"]
    if len(froms) != 1:
        raise ValueError(f"expected one FROM, found {len(froms)}")
    entrypoints = [i for i in instructions if i.split()[0].upper() == "ENTRYPOINT"]
    if not entrypoints:
        raise ValueError("no ENTRYPOINT")
    try:
        argv = json.loads(entrypoints[-1].split(None, 1)[1])
    except (IndexError, ValueError):
        raise ValueError(f"ENTRYPOINT not in exec form: {entrypoints[-1]!r}") from None
    if not isinstance(argv, list) or not all(isinstance(a, str) for a in argv):
        raise ValueError(f"ENTRYPOINT not a list of strings: {entrypoints[-1]!r}")
    return froms[0], tuple(argv)


def agent_image(progress: bool = True, *, source: Path | None = None) -> Path:
    """The OCI archive of the agent image for *source* (default :func:`source_tree`),
    built once per content under an ``flock`` on ``cache_dir()/.build.lock``.

    Raises:
        ToolUnavailable: not root, debootstrap or buildah cannot be installed, the mirror
            or PyPI unreachable, or buildah cannot work here; one line saying which.
        ImageBuildError: the build itself failed (the Containerfile, the wheel).
    """
    if sys.platform != "linux" or os.geteuid() != 0:
        raise ToolUnavailable("building the agent image needs root on Linux (debootstrap, buildah)")
    tree = source or source_tree()
    containerfile = (tree / _CONTAINERFILE).read_bytes()
    launcher = (tree / _LAUNCHER_SOURCE).read_bytes()
    base_from, _ = containerfile_settings(containerfile.decode())
    if base_from != BASE_IMAGE:
        raise ImageBuildError(f"{_CONTAINERFILE} builds FROM {base_from}, not {BASE_IMAGE}")
    missing = [p for p in PACKAGES if shutil.which(p) is None]
    if missing:
        _log(progress, f"installing Debian packages {', '.join(missing)}")
        ensure_packages(PACKAGES)
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = os.open(cache / ".build.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ToolUnavailable(f"cannot use the cache directory {cache}: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        with tempfile.TemporaryDirectory(prefix=".build-", dir=cache) as work:
            return _build(cache, Path(work), tree, containerfile, launcher, progress)
    finally:
        os.close(lock)


# -- steps ---------------------------------------------------------------------------------------


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"sriovlib-image: {message}", file=sys.stderr, flush=True)


def _build(
    cache: Path, work: Path, tree: Path, containerfile: bytes, launcher: bytes, progress: bool
) -> Path:
    wheel = _wheel(tree, work / "dist")
    version = wheel.name.split("-")[1]
    base_key = _base_key()
    digest = hashlib.sha256()
    for part in (_FORMAT.encode(), base_key.encode(), containerfile, launcher, wheel.read_bytes()):
        digest.update(hashlib.sha256(part).digest())
    key = digest.hexdigest()[:16]
    archive = cache / f"agent-{version}-{key}.tar"
    if archive.is_file():
        return archive
    started = time.monotonic()
    base = _base_tar(cache, work, base_key, progress)
    store = _Store(cache)
    store.import_base(base, base_key, progress)
    context = work / "context"
    (context / "deploy").mkdir(parents=True)
    (context / "dist").mkdir()
    (context / _CONTAINERFILE).write_bytes(containerfile)
    (context / _LAUNCHER_SOURCE).write_bytes(launcher)
    shutil.copy2(wheel, context / "dist" / wheel.name)
    ref = image_ref(version)
    _log(progress, f"buildah bud {ref} (pip from PyPI inside the build)")
    step = time.monotonic()
    args = ["bud", "--isolation", "chroot", "--pull=never", "--layers=false"]
    if os.path.isfile(_CA_BUNDLE):
        args += ["--volume", f"{_CA_BUNDLE}:{_CA_BUNDLE}:ro"]
    args += ["--build-arg", f"VERSION={version}", "-f", str(context / _CONTAINERFILE)]
    store.run([*args, "-t", ref, str(context)], "buildah bud", ours=True)
    _log(progress, f"built {ref} in {time.monotonic() - step:.0f} s; writing the OCI archive")
    partial = archive.with_suffix(".partial")
    try:
        store.run(["push", ref, f"oci-archive:{partial}:{ref}"], "buildah push")
        os.replace(partial, archive)
    finally:
        partial.unlink(missing_ok=True)
        store.run(["rmi", ref], "buildah rmi", check=False)
    for old in cache.glob("agent-*.tar"):
        if old != archive:
            old.unlink(missing_ok=True)
    size = archive.stat().st_size >> 20
    _log(progress, f"{archive} ({size} MiB) in {time.monotonic() - started:.0f} s")
    return archive


def _wheel(tree: Path, out: Path) -> Path:
    proc = _run(
        [sys.executable, "-m", "pip", "wheel", "--no-deps", "-q", "-w", str(out), str(tree)],
        "pip wheel of sriovlib",
        ours=True,
        timeout=600,
    )
    wheels = sorted(out.glob("sriovlib-*-py3-none-any.whl"))
    if len(wheels) != 1:
        raise ImageBuildError(f"pip wheel made {len(wheels)} sriovlib wheels: {proc.stdout}")
    return wheels[0]


def _mirror() -> str:
    return os.environ.get("SRIOVLIB_IMAGE_MIRROR") or MIRROR


def _base_key() -> str:
    stamp = json.dumps([_FORMAT, BASE_SUITE, sorted(BASE_PACKAGES), _mirror()])
    return hashlib.sha256(stamp.encode()).hexdigest()[:16]


def _base_tar(cache: Path, work: Path, key: str, progress: bool) -> Path:
    target = cache / "base" / f"{BASE_SUITE}-{key}.tar"
    if target.is_file():
        return target
    target.parent.mkdir(exist_ok=True)
    rootfs = work / "rootfs"
    _log(progress, f"debootstrap {BASE_SUITE} minbase + {', '.join(BASE_PACKAGES)} (~100 s)")
    started = time.monotonic()
    try:
        _run(
            ["debootstrap", "--variant=minbase", f"--include={','.join(BASE_PACKAGES)}",
             BASE_SUITE, str(rootfs), _mirror()],
            f"debootstrap {BASE_SUITE} from {_mirror()}",
        )  # fmt: skip
        for cached in ("var/cache/apt", "var/lib/apt/lists"):
            for entry in (rootfs / cached).glob("**/*"):
                if entry.is_file() and entry.name != "lock":
                    entry.unlink()
        partial = target.with_suffix(".partial")
        _run(["tar", "--numeric-owner", "-C", str(rootfs), "-cf", str(partial), "."], "tar")
        os.replace(partial, target)
    finally:
        with contextlib.suppress(FileNotFoundError):
            for mount in _mounts_under(rootfs):  # debootstrap unmounts; be sure
                subprocess.run(["umount", "-l", mount], check=False, capture_output=True)
            shutil.rmtree(rootfs)
    for old in target.parent.glob("*.tar"):
        if old != target:
            old.unlink(missing_ok=True)
    _log(progress, f"base root filesystem ready in {time.monotonic() - started:.0f} s")
    return target


def _mounts_under(path: Path) -> list[str]:
    prefix = str(path) + "/"
    with open("/proc/self/mounts") as mounts:
        found = [line.split()[1] for line in mounts if line.split()[1].startswith(prefix)]
    return sorted(found, reverse=True)


class _Store:
    """buildah with its own store (vfs) under the cache."""

    def __init__(self, cache: Path) -> None:
        self.options = [
            "--root", str(cache / "storage"),
            "--runroot", str(cache / "runroot"),
            "--storage-driver", "vfs",
        ]  # fmt: skip

    def run(self, args: Sequence[str], what: str, *, check: bool = True, ours: bool = False) -> str:
        return _run(["buildah", *self.options, *args], what, check=check, ours=ours).stdout

    def import_base(self, tar: Path, key: str, progress: bool) -> None:
        label = "{{index .OCIv1.Config.Labels " + json.dumps(_BASE_LABEL) + "}}"
        found = self.run(
            ["inspect", "--type", "image", "--format", label, BASE_IMAGE],
            "buildah inspect",
            check=False,
        )
        if found.strip() == key:
            return
        _log(progress, f"importing the base root filesystem as {BASE_IMAGE}")
        container = self.run(["from", "scratch"], "buildah from").strip()
        try:
            self.run(["add", container, str(tar), "/"], "buildah add")
            self.run(["config", "--label", f"{_BASE_LABEL}={key}", "--cmd", "/bin/sh", container],
                     "buildah config")  # fmt: skip
            self.run(["commit", "--rm", container, BASE_IMAGE], "buildah commit")
        except BaseException:
            self.run(["rm", container], "buildah rm", check=False)
            raise
        self.run(["rmi", "--prune"], "buildah rmi", check=False)


def _run(
    argv: Sequence[str],
    what: str,
    *,
    check: bool = True,
    ours: bool = False,
    timeout: float = _TIMEOUT,
) -> subprocess.CompletedProcess[str]:
    """Run *argv*. A failure raises :class:`ImageBuildError` when the step builds the
    project's own files (*ours*) and the output shows no network trouble, else
    :class:`ToolUnavailable`; either names the last line, and the whole output is kept
    in ``cache_dir()/last-failure.log``."""
    try:
        proc = subprocess.run(
            list(argv), capture_output=True, text=True, timeout=timeout, check=False
        )
    except FileNotFoundError:
        raise ToolUnavailable(f"{what}: {argv[0]} is not installed") from None
    except subprocess.TimeoutExpired:
        raise ToolUnavailable(f"{what} took over {timeout:.0f} s") from None
    if proc.returncode == 0 or not check:
        return proc
    output = proc.stdout + proc.stderr
    kept = cache_dir() / "last-failure.log"
    with contextlib.suppress(OSError):
        kept.write_text(f"$ {' '.join(argv)}\n{output}")
    lines = [line.strip() for line in output.splitlines() if line.strip()]
    last = lines[-1] if lines else f"exit status {proc.returncode}"
    trouble = [line for line in lines if _NETWORK_TROUBLE.search(line)]
    if trouble:
        raise ToolUnavailable(f"{what}: network trouble: {trouble[-1][:200]} (log: {kept})")
    if ours:
        raise ImageBuildError(f"{what} failed: {last} (log: {kept})")
    raise ToolUnavailable(f"{what} failed: {last} (log: {kept})")
