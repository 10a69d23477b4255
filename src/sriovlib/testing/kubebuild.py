"""The kube tier's tools: Kubernetes built from the Go module proxy, two local images.

:func:`kube_tools` gives the binaries of :data:`COMMANDS` at :data:`KUBERNETES_VERSION`
and two single-layer OCI image archives (:data:`PAUSE_IMAGE`, :data:`BUSYBOX_IMAGE`),
building them the first time into :func:`cache_dir` and reusing them afterwards. Debian
supplies the rest (:data:`PACKAGES`: containerd, runc, etcd, the reference CNI plugins,
busybox, a C compiler for the pause binary, openssl), installed when missing as root.

The Kubernetes build: a throw-away module in ``cache_dir()/src`` requires
``k8s.io/kubernetes`` at :data:`KUBERNETES_VERSION` and ``replace``\\ s each module that
Kubernetes' own ``go.mod`` points at its ``staging/`` tree with the matching published
``v0.x.y`` release (the list is read from that ``go.mod``, never hard-coded); ``go mod
tidy`` fills ``go.sum``, and one ``go build -trimpath`` links the five commands with the
version stamped in (``kubelet --version`` says ``Kubernetes v1.34.4``). Go's caches live in
``cache_dir()/go`` like the client tier's (see :mod:`sriovlib.testing.clienttools`); a
cold build takes 12-15 minutes on 2 cores, a relink of a warm cache one or two.

No image registry is reachable, so the images are written here: ``pause`` is a static
binary compiled from :data:`PAUSE_SOURCE` (sleep until SIGINT/SIGTERM, reap children),
``busybox`` is Debian's static busybox with links for the applets tests use. Both are OCI
image-layout archives for ``ctr images import``.
"""

from __future__ import annotations

import contextlib
import fcntl
import gzip
import hashlib
import io
import json
import os
import re
import subprocess
import sys
import tarfile
import tempfile
from pathlib import Path

import attrs

from sriovlib.testing.clienttools import (
    ToolUnavailable,
    ensure_packages,
    go_environ,
    go_toolchain,
)

__all__ = [
    "BUSYBOX_IMAGE",
    "COMMANDS",
    "KUBERNETES_VERSION",
    "PACKAGES",
    "PAUSE_IMAGE",
    "KubeTools",
    "cache_dir",
    "kube_tools",
]

#: The Kubernetes release the tier builds (DRA ``resource.k8s.io/v1`` is GA from 1.34;
#: 1.35's kubelet refuses cgroup v1 hosts by default).
KUBERNETES_VERSION = "v1.34.4"

#: What is built from ``k8s.io/kubernetes/cmd``.
COMMANDS = ("kubelet", "kube-apiserver", "kube-controller-manager", "kube-scheduler", "kubectl")

#: Debian packages the tier runs (Kubernetes itself is built, not installed).
PACKAGES = (
    "containerd",
    "runc",
    "etcd-server",
    "containernetworking-plugins",
    "busybox-static",
    "gcc",
    "libc6-dev",
    "openssl",
)

#: The sandbox image containerd is configured with (never pulled).
PAUSE_IMAGE = "sriovlib.local/pause:1"

#: The image test pods run: busybox's shell and applets.
BUSYBOX_IMAGE = "sriovlib.local/busybox:1"

#: Applets linked in :data:`BUSYBOX_IMAGE`'s ``/bin``.
BUSYBOX_APPLETS = ("sh", "env", "cat", "ls", "sleep", "grep", "test", "stat", "ip", "echo")

#: The pause container: hold the pod's namespaces, reap what is reparented to it, exit 0
#: on SIGINT or SIGTERM.
PAUSE_SOURCE = r"""
#include <signal.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <unistd.h>

static void stop(int sig) { (void)sig; _exit(0); }

static void reap(int sig) {
    (void)sig;
    while (waitpid(-1, NULL, WNOHANG) > 0) {
    }
}

int main(void) {
    struct sigaction on_stop = {.sa_handler = stop};
    struct sigaction on_child = {.sa_handler = reap, .sa_flags = SA_NOCLDSTOP};
    if (sigaction(SIGINT, &on_stop, NULL) || sigaction(SIGTERM, &on_stop, NULL) ||
        sigaction(SIGCHLD, &on_child, NULL))
        return 1;
    for (;;)
        pause();
}
"""

_IMAGES_FORMAT = "sriovlib-kube-images-1"
_BUILD_DATE = "1970-01-01T00:00:00Z"
_BUILD_TIMEOUT = 3600.0
_STAGING = re.compile(r"^\s*(k8s\.io/[\w.-]+)\s*=>\s*\./staging/", re.MULTILINE)


@attrs.frozen
class KubeTools:
    """What :func:`kube_tools` built: the binaries' directory and the image archives."""

    bin_dir: Path
    #: OCI archives to import: (image name, path).
    images: tuple[tuple[str, Path], ...]
    version: str = KUBERNETES_VERSION

    def path(self, command: str) -> str:
        """The binary of *command* (one of :data:`COMMANDS`)."""
        if command not in COMMANDS:
            raise ValueError(f"not a built command: {command!r}")
        return str(self.bin_dir / command)


def cache_dir() -> Path:
    """``$SRIOVLIB_KUBE_CACHE`` or ``~/.cache/sriovlib-kube`` (``$XDG_CACHE_HOME`` honoured)."""
    configured = os.environ.get("SRIOVLIB_KUBE_CACHE")
    if configured:
        return Path(configured)
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "sriovlib-kube"


def kube_tools(*, progress: bool = True) -> KubeTools:
    """The tier's Kubernetes binaries and images, built once per machine (under an
    ``flock`` on ``cache_dir()/.build.lock``, so parallel sessions build once).

    Raises:
        ToolUnavailable: not root, a package cannot be installed, no Go new enough for
            Kubernetes' ``go.mod``, the module proxy unreachable, or a build failed; the
            message says which in one line.
    """
    if os.geteuid() != 0:
        raise ToolUnavailable("the kube tier runs containers: needs root")
    ensure_packages(PACKAGES)
    cache = cache_dir()
    try:
        cache.mkdir(parents=True, exist_ok=True)
        lock = os.open(cache / ".build.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ToolUnavailable(f"cannot use the cache directory {cache}: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        bin_dir = _kubernetes(cache, progress)
        images = _images(cache / "images")
    finally:
        os.close(lock)
    return KubeTools(bin_dir, images)


# -- Kubernetes ----------------------------------------------------------------------------------


def _ldflags() -> str:
    """The version stamp ``hack/lib/version.sh`` would set, for both version packages."""
    major, minor = KUBERNETES_VERSION.lstrip("v").split(".")[:2]
    values = {
        "gitVersion": KUBERNETES_VERSION,
        "gitMajor": major,
        "gitMinor": minor,
        "gitTreeState": "clean",
        "buildDate": _BUILD_DATE,
    }
    flags = ["-s", "-w"]
    for package in ("k8s.io/component-base/version", "k8s.io/client-go/pkg/version"):
        flags += [f"-X {package}.{name}={value}" for name, value in values.items()]
    return " ".join(flags)


def _stamp() -> str:
    return json.dumps({"kubernetes": KUBERNETES_VERSION, "ldflags": _ldflags()}, sort_keys=True)


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"sriovlib-kube: {message}", file=sys.stderr, flush=True)


def _kubernetes(cache: Path, progress: bool) -> Path:
    bin_dir = cache / "bin"
    stamp = bin_dir / ".built"
    with contextlib.suppress(OSError):
        if stamp.read_text() == _stamp() and all((bin_dir / c).exists() for c in COMMANDS):
            return bin_dir
    _log(progress, f"building Kubernetes {KUBERNETES_VERSION} (once per machine; 12-15 min cold)")
    src = cache / "src"
    src.mkdir(exist_ok=True)
    go_root = cache / "go"
    env = go_environ(go_root, str(go_root / "bin"))
    kubernetes_mod = _download_gomod(env, src)
    go_line = re.search(r"^go (\d+)\.(\d+)", kubernetes_mod, re.MULTILINE)
    at_least = (int(go_line[1]), int(go_line[2])) if go_line else (1, 24)
    go = go_toolchain(at_least)
    staging = sorted(set(_STAGING.findall(kubernetes_mod)))
    if not staging:
        raise ToolUnavailable(f"k8s.io/kubernetes@{KUBERNETES_VERSION}'s go.mod names no staging")
    published = "v0." + KUBERNETES_VERSION.lstrip("v").split(".", 1)[1]
    replaces = "".join(f"\t{m} => {m} {published}\n" for m in staging)
    (src / "go.mod").write_text(
        "module sriovlib.local/kubebuild\n\n"
        f"go {at_least[0]}.{at_least[1]}\n\n"
        f"require k8s.io/kubernetes {KUBERNETES_VERSION}\n\n"
        f"replace (\n{replaces})\n"
    )
    imports = "".join(f'\t_ "k8s.io/kubernetes/cmd/{c}"\n' for c in COMMANDS)
    (src / "tools.go").write_text(
        f"//go:build tools\n\npackage kubebuild\n\nimport (\n{imports})\n"
    )
    _go(go, ["mod", "tidy", "-e"], src, env, "go mod tidy")
    with tempfile.TemporaryDirectory(prefix=".build-", dir=cache) as out:
        packages = [f"k8s.io/kubernetes/cmd/{c}" for c in COMMANDS]
        _go(
            go,
            ["build", "-trimpath", "-ldflags", _ldflags(), "-o", out + "/", *packages],
            src,
            env,
            f"go build of Kubernetes {KUBERNETES_VERSION}",
        )
        bin_dir.mkdir(exist_ok=True)
        stamp.unlink(missing_ok=True)
        for command in COMMANDS:
            os.replace(Path(out) / command, bin_dir / command)
    stamp.write_text(_stamp())
    _log(progress, f"Kubernetes {KUBERNETES_VERSION} built into {bin_dir}")
    return bin_dir


def _download_gomod(env: dict[str, str], cwd: Path) -> str:
    """The text of ``k8s.io/kubernetes``'s own ``go.mod`` at the release."""
    go = go_toolchain()
    proc = _go(
        go,
        ["mod", "download", "-json", f"k8s.io/kubernetes@{KUBERNETES_VERSION}"],
        cwd,
        dict(env, GOFLAGS="-modcacherw"),
        f"go mod download k8s.io/kubernetes@{KUBERNETES_VERSION}",
    )
    try:
        return Path(json.loads(proc.stdout)["GoMod"]).read_text()
    except (ValueError, KeyError, OSError) as e:
        raise ToolUnavailable(f"go mod download gave no go.mod for Kubernetes: {e}") from None


def _go(
    go: str, args: list[str], cwd: Path, env: dict[str, str], what: str
) -> subprocess.CompletedProcess[str]:
    try:
        proc = subprocess.run(
            [go, *args],
            cwd=cwd,
            env=env,
            capture_output=True,
            text=True,
            timeout=_BUILD_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired:
        raise ToolUnavailable(f"{what} took over {_BUILD_TIMEOUT:.0f} s") from None
    if proc.returncode != 0:
        lines = (proc.stderr or proc.stdout).strip().splitlines()
        raise ToolUnavailable(f"{what} failed: {lines[-1] if lines else proc.returncode}")
    return proc


# -- images --------------------------------------------------------------------------------------


def _images(directory: Path) -> tuple[tuple[str, Path], ...]:
    pause, busybox = directory / "pause.tar", directory / "busybox.tar"
    stamp = directory / ".built"
    with contextlib.suppress(OSError):
        if stamp.read_text() == _IMAGES_FORMAT and pause.exists() and busybox.exists():
            return ((PAUSE_IMAGE, pause), (BUSYBOX_IMAGE, busybox))
    directory.mkdir(parents=True, exist_ok=True)
    stamp.unlink(missing_ok=True)
    with tempfile.TemporaryDirectory(prefix=".build-", dir=directory) as work:
        source, binary = Path(work) / "pause.c", Path(work) / "pause"
        source.write_text(PAUSE_SOURCE)
        proc = subprocess.run(
            ["gcc", "-Os", "-static", "-o", str(binary), str(source)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ToolUnavailable(f"gcc could not build the pause binary: {proc.stderr.strip()}")
        _write_image(pause, PAUSE_IMAGE, ["/pause"], {"pause": binary}, {})
    busybox_binary = Path("/bin/busybox")
    if not busybox_binary.exists():
        raise ToolUnavailable("busybox-static installed no /bin/busybox")
    links = {f"bin/{applet}": "busybox" for applet in BUSYBOX_APPLETS}
    _write_image(busybox, BUSYBOX_IMAGE, ["/bin/sh"], {"bin/busybox": busybox_binary}, links)
    stamp.write_text(_IMAGES_FORMAT)
    return ((PAUSE_IMAGE, pause), (BUSYBOX_IMAGE, busybox))


def _tar(entries: list[tuple[tarfile.TarInfo, bytes | None]]) -> bytes:
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w", format=tarfile.PAX_FORMAT) as archive:
        for info, data in entries:
            archive.addfile(info, io.BytesIO(data) if data is not None else None)
    return buffer.getvalue()


def _entry(
    name: str, kind: bytes, *, mode: int = 0o755, data: bytes = b"", link: str = ""
) -> tuple[tarfile.TarInfo, bytes | None]:
    info = tarfile.TarInfo(name)
    info.type, info.mode, info.mtime, info.linkname = kind, mode, 0, link
    if kind == tarfile.REGTYPE:
        info.size = len(data)
        return info, data
    return info, None


def _digest(data: bytes) -> str:
    return "sha256:" + hashlib.sha256(data).hexdigest()


def _write_image(
    target: Path, name: str, entrypoint: list[str], files: dict[str, Path], links: dict[str, str]
) -> None:
    """Write an OCI image-layout archive of one layer holding *files* and *links*."""
    directories = {"dev", "etc", "proc", "sys", "tmp"}
    for path in [*files, *links]:
        parts = path.split("/")[:-1]
        directories.update("/".join(parts[: i + 1]) for i in range(len(parts)))
    entries = [
        _entry(d, tarfile.DIRTYPE, mode=0o1777 if d == "tmp" else 0o755)
        for d in sorted(directories)
    ]
    entries += [_entry(p, tarfile.REGTYPE, data=src.read_bytes()) for p, src in files.items()]
    entries += [_entry(p, tarfile.SYMTYPE, link=to) for p, to in links.items()]
    layer = _tar(entries)
    compressed = gzip.compress(layer, mtime=0)
    config = json.dumps(
        {
            "architecture": "amd64",
            "os": "linux",
            "config": {"Entrypoint": entrypoint, "Env": ["PATH=/bin"], "WorkingDir": "/"},
            "rootfs": {"type": "layers", "diff_ids": [_digest(layer)]},
        }
    ).encode()
    manifest = json.dumps(
        {
            "schemaVersion": 2,
            "mediaType": "application/vnd.oci.image.manifest.v1+json",
            "config": {
                "mediaType": "application/vnd.oci.image.config.v1+json",
                "digest": _digest(config),
                "size": len(config),
            },
            "layers": [
                {
                    "mediaType": "application/vnd.oci.image.layer.v1.tar+gzip",
                    "digest": _digest(compressed),
                    "size": len(compressed),
                }
            ],
        }
    ).encode()
    index = json.dumps(
        {
            "schemaVersion": 2,
            "manifests": [
                {
                    "mediaType": "application/vnd.oci.image.manifest.v1+json",
                    "digest": _digest(manifest),
                    "size": len(manifest),
                    "annotations": {
                        "io.containerd.image.name": name,
                        "org.opencontainers.image.ref.name": name.rsplit(":", 1)[1],
                    },
                }
            ],
        }
    ).encode()
    blobs = [(f"blobs/sha256/{_digest(b)[7:]}", b) for b in (config, manifest, compressed)]
    outer = [
        _entry("oci-layout", tarfile.REGTYPE, mode=0o644, data=b'{"imageLayoutVersion":"1.0.0"}'),
        _entry("index.json", tarfile.REGTYPE, mode=0o644, data=index),
        *(_entry(path, tarfile.REGTYPE, mode=0o644, data=blob) for path, blob in blobs),
    ]
    partial = target.with_suffix(".partial")
    partial.write_bytes(_tar(outer))
    os.replace(partial, target)
