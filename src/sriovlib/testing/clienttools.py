"""The client tier's tools: ``cnitool`` built from the Go module proxy, Debian's reference plugins.

:func:`cnitool_path` gives a ``cnitool`` that speaks CNI 1.1.0 (``add``, ``check``,
``del``, ``gc``, ``status``): it is built once from ``github.com/containernetworking/cni``
at :data:`CNITOOL_VERSION` with the machine's Go toolchain and kept in :func:`cache_dir`.
:func:`cni_plugins_dir` finds (or installs) Debian's ``containernetworking-plugins`` for
``host-local`` IPAM. Both raise :class:`ToolUnavailable` with a one-line reason where
that is impossible (no usable Go and not root to install one, the module proxy
unreachable, no apt), so tests can skip.

The build:

- the toolchain is the newest ``go`` (on ``PATH``, ``/usr/local/go/bin/go``,
  ``/usr/bin/go``, ``/usr/lib/go-*/bin/go``) that is at least :data:`GO_MINIMUM`, the
  ``go`` line of the module's ``go.mod``. With none, as root, Debian's ``golang-go`` is
  installed from ``<codename>-backports`` (Go 1.23 for bookworm), the source line added
  if missing;
- ``go install github.com/containernetworking/cni/cnitool@v1.3.0`` runs outside any
  module, with ``GOTOOLCHAIN=local`` (never download a toolchain), ``GOFLAGS=-mod=mod
  -modcacherw``, ``CGO_ENABLED=0`` (a static binary, no C compiler needed) and
  ``-trimpath``;
- everything Go writes lives under ``cache_dir()/go`` (``GOPATH``, ``GOMODCACHE`` in
  ``go/pkg/mod``, ``GOCACHE`` in ``go/cache``), never in ``~/go``. ``-modcacherw`` keeps
  the module cache deletable with ``rm -rf``;
- ``GOPROXY`` is the module cache's own download directory first, then ``$GOPROXY`` (the
  Go default, ``https://proxy.golang.org,direct``, when unset): the first build needs the
  proxy, a rebuild of the same version does not.
"""

from __future__ import annotations

import contextlib
import fcntl
import os
import re
import shutil
import subprocess
import tempfile
from collections.abc import Sequence
from pathlib import Path

__all__ = [
    "CNITOOL_PACKAGE",
    "CNITOOL_VERSION",
    "GO_MINIMUM",
    "ToolUnavailable",
    "cache_dir",
    "cni_plugins_dir",
    "cnitool_path",
    "ensure_packages",
    "go_environ",
    "go_toolchain",
]

#: The release of ``github.com/containernetworking/cni`` that cnitool is built from: the
#: newest whose cnitool has ``gc`` and ``status`` as a single file over libcni (v1.3.1
#: moved it to cobra); libcni at this release supports spec versions 0.1.0 to 1.1.0.
CNITOOL_VERSION = "v1.3.0"

#: The Go package of cnitool at :data:`CNITOOL_VERSION` (inside the main module).
CNITOOL_PACKAGE = "github.com/containernetworking/cni/cnitool"

#: The oldest Go that builds :data:`CNITOOL_VERSION` (its ``go.mod`` says ``go 1.21``).
GO_MINIMUM = (1, 21)

_DEFAULT_GOPROXY = "https://proxy.golang.org,direct"
_GO_CANDIDATES = ("/usr/local/go/bin/go", "/usr/bin/go")


class ToolUnavailable(RuntimeError):
    """A CNI tool cannot be had on this machine; the message is a one-line reason."""


def cache_dir() -> Path:
    """Where built tools are kept: ``$SRIOVLIB_CNI_CACHE`` or ``~/.cache/sriovlib-cni``
    (``$XDG_CACHE_HOME/sriovlib-cni`` when that is set)."""
    configured = os.environ.get("SRIOVLIB_CNI_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sriovlib-cni"


# -- Debian packages -----------------------------------------------------------------------------


def _installed(package: str) -> bool:
    proc = subprocess.run(
        ["dpkg-query", "-W", "-f=${Status}", package], capture_output=True, text=True, check=False
    )
    return proc.returncode == 0 and "ok installed" in proc.stdout


def _last_line(proc: subprocess.CompletedProcess[str]) -> str:
    lines = (proc.stderr or proc.stdout).strip().splitlines()
    return lines[-1] if lines else f"no output, exit status {proc.returncode}"


def _apt(*args: str, timeout: float = 900) -> None:
    env = dict(os.environ, DEBIAN_FRONTEND="noninteractive")
    try:
        proc = subprocess.run(
            ["apt-get", *args],
            capture_output=True,
            text=True,
            env=env,
            timeout=timeout,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ToolUnavailable(f"apt-get {' '.join(args[:2])} took over {timeout:.0f} s") from None
    if proc.returncode != 0:
        raise ToolUnavailable(f"apt-get {' '.join(args[:2])} failed: {_last_line(proc)}")


def _may_install(what: str) -> None:
    if os.geteuid() != 0:
        raise ToolUnavailable(f"needs {what} (not root to install)")
    if shutil.which("apt-get") is None:
        raise ToolUnavailable(f"needs {what} (no apt-get)")


def ensure_packages(packages: Sequence[str]) -> None:
    """Install the Debian *packages* that are missing (as root, with apt).

    Raises:
        ToolUnavailable: some are missing and this is not root, there is no apt-get, or
            apt-get failed.
    """
    missing = [p for p in packages if not _installed(p)]
    if not missing:
        return
    _may_install(f"Debian packages {', '.join(missing)}")
    _apt("update", "-q")
    _apt("install", "-y", "-q", "--no-install-recommends", *missing)


def cni_plugins_dir() -> Path:
    """Debian's reference plugins (``host-local``...), installing them if needed.

    Raises:
        ToolUnavailable: they are not installed and cannot be.
    """
    directory = Path("/usr/lib/cni")
    if not (directory / "host-local").exists():
        ensure_packages(["containernetworking-plugins"])
    if not (directory / "host-local").exists():
        raise ToolUnavailable("containernetworking-plugins installed no /usr/lib/cni/host-local")
    return directory


# -- the Go toolchain ----------------------------------------------------------------------------


def _go_version(go: str) -> tuple[int, ...] | None:
    """The version of the toolchain *go* (``go1.26.8`` is ``(1, 26, 8)``), None if it
    does not run."""
    try:
        proc = subprocess.run(
            [go, "env", "GOVERSION"],
            capture_output=True,
            text=True,
            env=dict(os.environ, GOTOOLCHAIN="local"),
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired):
        return None
    match = re.search(r"go(\d+)\.(\d+)(?:\.(\d+))?", proc.stdout.strip())
    if proc.returncode != 0 or match is None:
        return None
    return tuple(int(part) for part in match.groups(default="0"))


def _find_go() -> tuple[str, tuple[int, ...]] | None:
    """The newest Go toolchain on this machine, with its version; None if there is none."""
    candidates = [
        shutil.which("go"),
        *_GO_CANDIDATES,
        *sorted(map(str, Path("/usr/lib").glob("go-*/bin/go"))),
    ]
    found: dict[str, tuple[str, tuple[int, ...]]] = {}
    for go in candidates:
        if go is None or not os.access(go, os.X_OK):
            continue
        real = os.path.realpath(go)
        if real in found:
            continue
        version = _go_version(go)
        if version is not None:
            found[real] = (go, version)
    return max(found.values(), key=lambda item: item[1], default=None)


def _codename() -> str:
    with contextlib.suppress(OSError):
        for line in Path("/etc/os-release").read_text().splitlines():
            if line.startswith("VERSION_CODENAME="):
                return line.split("=", 1)[1].strip().strip('"') or "bookworm"
    return "bookworm"


def _install_backports_go(codename: str) -> None:
    """Install Debian's ``golang-go`` from *codename*-backports, adding its source line
    if no apt source mentions it."""
    suite = f"{codename}-backports"
    sources = [Path("/etc/apt/sources.list"), *Path("/etc/apt/sources.list.d").glob("*")]
    if not any(suite in path.read_text(errors="replace") for path in sources if path.is_file()):
        Path(f"/etc/apt/sources.list.d/sriovlib-{suite}.list").write_text(
            f"deb http://deb.debian.org/debian {suite} main\n"
        )
    _apt("update", "-q")
    _apt("install", "-y", "-q", "--no-install-recommends", "-t", suite, "golang-go")


def go_toolchain(at_least: tuple[int, ...] = GO_MINIMUM) -> str:
    """A Go toolchain of at least *at_least* (default :data:`GO_MINIMUM`): the newest one
    present, else (as root) Debian's ``golang-go`` from backports.

    Raises:
        ToolUnavailable: there is none and it cannot be installed or is too old.
    """
    minimum = ".".join(map(str, at_least))
    best = _find_go()
    if best is not None and best[1] >= at_least:
        return best[0]
    have = "no Go" if best is None else f"Go {'.'.join(map(str, best[1]))} at {best[0]}"
    codename = _codename()
    _may_install(f"Go >= {minimum} ({have}; would install golang-go from {codename}-backports)")
    _install_backports_go(codename)
    best = _find_go()
    if best is None or best[1] < at_least:
        got = "no Go" if best is None else f"Go {'.'.join(map(str, best[1]))}"
        raise ToolUnavailable(
            f"needs Go >= {minimum}; golang-go from {codename}-backports gave {got}"
        )
    return best[0]


# -- cnitool -------------------------------------------------------------------------------------


def cnitool_path() -> Path:
    """``cnitool`` of ``containernetworking/cni`` :data:`CNITOOL_VERSION` (CNI 1.1.0: its
    verbs are ``add``, ``check``, ``del``, ``gc`` and ``status``).

    ``$SRIOVLIB_CNITOOL`` names a ready binary instead, returned as is. Otherwise the
    binary is ``cache_dir()/cnitool-<version>``, built the first time (see the module
    documentation for how) under an ``flock`` on ``cache_dir()/.build.lock``, so
    concurrent callers build it once; later calls return it without running Go.

    Raises:
        ToolUnavailable: it cannot be built here; the message says why in one line.
    """
    given = os.environ.get("SRIOVLIB_CNITOOL")
    if given:
        return Path(given)
    cache = cache_dir()
    target = cache / f"cnitool-{CNITOOL_VERSION}"
    if target.exists():
        return target
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = os.open(cache / ".build.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ToolUnavailable(f"cannot use the cache directory {cache}: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            _build_cnitool(go_toolchain(), target)
    finally:
        os.close(lock)
    return target


def go_environ(go_root: Path, gobin: str) -> dict[str, str]:
    """The environment of the build: everything under *go_root*, the binary into *gobin*."""
    modcache = go_root / "pkg" / "mod"
    upstream = os.environ.get("GOPROXY") or _DEFAULT_GOPROXY
    return {
        **os.environ,
        "GOPATH": str(go_root),
        "GOMODCACHE": str(modcache),
        "GOCACHE": str(go_root / "cache"),
        "GOBIN": gobin,
        "GOPROXY": f"file://{modcache}/cache/download,{upstream}",
        "GOFLAGS": "-mod=mod -modcacherw",
        "GOTOOLCHAIN": "local",
        "GO111MODULE": "on",
        "GOWORK": "off",
        "CGO_ENABLED": "0",
    }


def _build_cnitool(go: str, target: Path) -> None:
    """``go install`` cnitool into a temporary directory, then rename it to *target*."""
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as work:
        try:
            proc = subprocess.run(
                [go, "install", "-trimpath", f"{CNITOOL_PACKAGE}@{CNITOOL_VERSION}"],
                cwd=work,
                env=go_environ(target.parent / "go", work),
                capture_output=True,
                text=True,
                timeout=900,
                check=False,
            )
        except subprocess.TimeoutExpired:
            raise ToolUnavailable("go install of cnitool took over 900 s") from None
        built = Path(work) / "cnitool"
        if proc.returncode != 0 or not built.exists():
            raise ToolUnavailable(
                f"go install {CNITOOL_PACKAGE}@{CNITOOL_VERSION} failed: {_last_line(proc)}"
            )
        os.replace(built, target)
