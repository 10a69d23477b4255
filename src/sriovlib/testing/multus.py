"""Multus for the kube tier: the thin plugin built from the Go module proxy, its config, NADs.

:func:`multus_path` gives the *thin* ``multus`` CNI binary (``cmd/multus``: one process
per CNI call that reads the pod and its NetworkAttachmentDefinitions from the API server
through a kubeconfig, then calls the delegates itself; not the daemon/shim pair) of
:data:`MULTUS_MODULE` at :data:`MULTUS_VERSION`. The module proxy serves Multus v4 only
under its ``gopkg.in`` path (the ``github.com/.../multus-cni/v4`` path is not a module).

The build follows :mod:`sriovlib.testing.kubebuild`: a throw-away module in
``cache_dir()/multus/src`` requires Multus at the release (its ``go.mod`` has no
``replace``, so the release's own dependency versions are what is linked), ``go mod
tidy`` fills ``go.sum`` and ``go build -trimpath`` links ``cmd/multus`` with the version
stamped in, as Multus' ``hack/build-go.sh`` does (``multus -version`` says ``version:v4.3.0``).
``go install ...@version`` cannot be used: it asks the proxy for the module's version
list, which this proxy refuses. Go's caches are the kube tier's (``cache_dir()/go``,
:func:`~sriovlib.testing.clienttools.go_environ`: ``GOFLAGS=-mod=mod -modcacherw``,
``GOTOOLCHAIN=local``, ``CGO_ENABLED=0``), so Kubernetes' modules are shared; the binary is
``cache_dir()/multus/multus-<version>``. A cold build takes about 3.5 minutes on 2 cores.

:func:`multus_conflist` writes the thin plugin's config for containerd's CNI config
directory (``00-multus.conflist``, first by name, so it is the pods' network) with a
default network as its one delegate; :data:`NAD_CRD` and :func:`network_attachment` are
the CustomResourceDefinition of the NetworkAttachmentDefinition spec (group
``k8s.cni.cncf.io``, version ``v1``) and an object of it, for ``kubectl create``.
"""

from __future__ import annotations

import contextlib
import fcntl
import json
import os
import re
import sys
import tempfile
from collections.abc import Mapping, Sequence
from pathlib import Path
from typing import Any

from sriovlib.testing.clienttools import ToolUnavailable, go_environ, go_toolchain
from sriovlib.testing.kubebuild import _go, cache_dir

__all__ = [
    "MULTUS_CNI_VERSION",
    "MULTUS_CONFLIST",
    "MULTUS_MODULE",
    "MULTUS_VERSION",
    "NAD_CRD",
    "NETWORKS_ANNOTATION",
    "NETWORK_STATUS_ANNOTATION",
    "multus_conflist",
    "multus_path",
    "network_attachment",
    "write_multus_conflist",
]

#: The module path the Go module proxy serves Multus v4 under.
MULTUS_MODULE = "gopkg.in/k8snetworkplumbingwg/multus-cni.v4"

#: The newest v4 release on the proxy (2026-05-29); ``go 1.25.0`` in its ``go.mod``,
#: builds with Go 1.26; libcni ``containernetworking/cni`` v1.3.0.
MULTUS_VERSION = "v4.3.0"

#: The spec version of the conflist :func:`multus_conflist` writes: containerd 1.6's libcni
#: speaks up to 1.0.0, Multus v4 accepts 0.3.1 to 1.1.0 and converts its delegates'
#: results (each delegate keeps its own ``cniVersion``) to this one.
MULTUS_CNI_VERSION = "1.0.0"

#: The file name in containerd's CNI config directory: sorts before the tier's
#: ``10-sriovlib-kube.conflist``, and containerd uses the first file only.
MULTUS_CONFLIST = "00-multus.conflist"

#: The pod annotation naming the extra networks (``name``, ``namespace/name``,
#: ``name@ifname``, comma separated, or a JSON list of selection objects).
NETWORKS_ANNOTATION = "k8s.v1.cni.cncf.io/networks"

#: The pod annotation Multus writes after an ADD: a JSON list, one entry per interface.
NETWORK_STATUS_ANNOTATION = "k8s.v1.cni.cncf.io/network-status"

_NAD_GROUP = "k8s.cni.cncf.io"
_NAD_PLURAL = "network-attachment-definitions"

#: The CustomResourceDefinition of NetworkAttachmentDefinition, from the Network
#: Plumbing Working Group's spec (v1): namespaced, ``spec.config`` a string holding a CNI
#: config (JSON) or empty (then Multus looks the name up in its ``confDir``).
NAD_CRD: dict[str, Any] = {
    "apiVersion": "apiextensions.k8s.io/v1",
    "kind": "CustomResourceDefinition",
    "metadata": {"name": f"{_NAD_PLURAL}.{_NAD_GROUP}"},
    "spec": {
        "group": _NAD_GROUP,
        "scope": "Namespaced",
        "names": {
            "plural": _NAD_PLURAL,
            "singular": "network-attachment-definition",
            "kind": "NetworkAttachmentDefinition",
            "shortNames": ["net-attach-def"],
        },
        "versions": [
            {
                "name": "v1",
                "served": True,
                "storage": True,
                "schema": {
                    "openAPIV3Schema": {
                        "description": "A network a pod can attach to through Multus.",
                        "type": "object",
                        "properties": {
                            "apiVersion": {"type": "string"},
                            "kind": {"type": "string"},
                            "metadata": {"type": "object"},
                            "spec": {
                                "type": "object",
                                "properties": {
                                    "config": {
                                        "description": "A CNI config or conflist, as JSON text.",
                                        "type": "string",
                                    }
                                },
                            },
                        },
                    }
                },
            }
        ],
    },
}


def network_attachment(
    name: str,
    config: Mapping[str, Any],
    *,
    namespace: str = "default",
    annotations: Mapping[str, str] | None = None,
) -> dict[str, Any]:
    """A NetworkAttachmentDefinition *name* whose ``spec.config`` is *config* as JSON text
    (*annotations*: e.g. ``k8s.v1.cni.cncf.io/resourceName`` for a device pool)."""
    metadata: dict[str, Any] = {"name": name, "namespace": namespace}
    if annotations:
        metadata["annotations"] = dict(annotations)
    return {
        "apiVersion": f"{_NAD_GROUP}/v1",
        "kind": "NetworkAttachmentDefinition",
        "metadata": metadata,
        "spec": {"config": json.dumps(config)},
    }


# -- the config -------------------------------------------------------------------------------


def multus_conflist(
    *,
    kubeconfig: Path,
    default_network: Mapping[str, Any],
    bin_dir: Path,
    state_dir: Path,
    log_file: Path | None = None,
    log_level: str = "verbose",
    system_namespaces: Sequence[str] = ("kube-system",),
) -> dict[str, Any]:
    """The thin plugin's conflist, every field set on purpose (Multus' defaults point at
    the host's ``/etc/cni``, ``/opt/cni`` and ``/var/lib/cni``, which the tier never uses).

    Args:
        kubeconfig: How Multus reaches the API server (``kubeconfig``): it reads the pod
            (its ``k8s.v1.cni.cncf.io/networks`` annotation) and the NADs it names, and
            writes the pod's ``network-status`` annotation.
        default_network: The cluster network, the one entry of ``delegates``: a conflist
            (a dict with ``plugins``) or a single plugin config. The first delegate is
            the "master" plugin: it gets ``eth0`` and its result is what Multus returns
            to the runtime (the pod IP).
        bin_dir: ``binDir``, where Multus finds the delegates' plugins.
        state_dir: Parent of ``cniDir`` (``state_dir/cache``: the delegates' configs
            saved at ADD for DEL, and libcni's result cache) and of ``confDir``
            (``state_dir/net.d``: where a NAD with an empty ``spec.config`` is looked up by
            name); both are created.
        log_file: ``logFile`` (None: Multus logs to stderr only, ``logToStderr`` stays on
            either way, so an error reaches containerd's log).
        log_level: ``logLevel``: ``panic``, ``error``, ``verbose`` or ``debug``.
        system_namespaces: ``systemNamespaces``: pods there get the default network only,
            whatever they are annotated with.
    """
    cache, confs = state_dir / "cache", state_dir / "net.d"
    for directory in (cache, confs):
        directory.mkdir(parents=True, exist_ok=True)
    plugin: dict[str, Any] = {
        "type": "multus",
        "kubeconfig": str(kubeconfig),
        "delegates": [dict(default_network)],
        "binDir": str(bin_dir),
        "cniDir": str(cache),
        "confDir": str(confs),
        "logLevel": log_level,
        "logToStderr": True,
        "systemNamespaces": list(system_namespaces),
    }
    if log_file is not None:
        plugin["logFile"] = str(log_file)
    return {
        "cniVersion": MULTUS_CNI_VERSION,
        "name": "multus-cni-network",
        "plugins": [plugin],
    }


def write_multus_conflist(conf_dir: Path, **options: Any) -> Path:
    """Write :func:`multus_conflist` (*options* are its arguments) as
    :data:`MULTUS_CONFLIST` in *conf_dir*, atomically; its path. The same bytes are
    written over the renamed file once more: a running containerd 1.6 ignores the
    ``CREATE`` of a rename and reloads its CNI config on a ``WRITE``."""
    target = conf_dir / MULTUS_CONFLIST
    data = json.dumps(multus_conflist(**options)).encode()
    with tempfile.NamedTemporaryFile("wb", dir=conf_dir, prefix=".", delete=False) as partial:
        partial.write(data)
    os.replace(partial.name, target)
    with open(target, "r+b") as f:
        f.write(data)
    return target


# -- the build --------------------------------------------------------------------------------


def _ldflags() -> str:
    return f"-s -w -X {MULTUS_MODULE}/pkg/multus.version={MULTUS_VERSION}"


def multus_path(*, progress: bool = True) -> Path:
    """The thin ``multus`` binary of :data:`MULTUS_VERSION`, built the first time (see the
    module documentation) under an ``flock`` on ``cache_dir()/multus/.build.lock``;
    ``$SRIOVLIB_MULTUS`` names a ready binary instead.

    Raises:
        ToolUnavailable: no Go new enough, the module proxy unreachable, or the build
            failed; the message says which in one line.
    """
    given = os.environ.get("SRIOVLIB_MULTUS")
    if given:
        return Path(given)
    cache = cache_dir()
    directory = cache / "multus"
    target = directory / f"multus-{MULTUS_VERSION}"
    if target.exists():
        return target
    try:
        directory.mkdir(parents=True, exist_ok=True)
        lock = os.open(directory / ".build.lock", os.O_RDWR | os.O_CREAT | os.O_CLOEXEC, 0o644)
    except OSError as e:
        raise ToolUnavailable(f"cannot use the cache directory {directory}: {e.strerror}") from None
    try:
        fcntl.flock(lock, fcntl.LOCK_EX)
        if not target.exists():
            _build(cache, target, progress)
    finally:
        os.close(lock)
    return target


def _log(progress: bool, message: str) -> None:
    if progress:
        print(f"sriovlib-kube: {message}", file=sys.stderr, flush=True)


def _build(cache: Path, target: Path, progress: bool) -> None:
    _log(progress, f"building Multus {MULTUS_VERSION} (once per machine; about 3.5 min cold)")
    src = target.parent / "src"
    src.mkdir(exist_ok=True)
    go_root = cache / "go"
    env = go_environ(go_root, str(go_root / "bin"))
    module = f"{MULTUS_MODULE}@{MULTUS_VERSION}"
    proc = _go(go_toolchain(), ["mod", "download", "-json", module], src, env,
               f"go mod download {module}")  # fmt: skip
    try:
        gomod = Path(json.loads(proc.stdout)["GoMod"]).read_text()
    except (ValueError, KeyError, OSError) as e:
        raise ToolUnavailable(f"go mod download gave no go.mod for Multus: {e}") from None
    go_line = re.search(r"^go (\d+)\.(\d+)", gomod, re.MULTILINE)
    at_least = (int(go_line[1]), int(go_line[2])) if go_line else (1, 21)
    go = go_toolchain(at_least)
    (src / "go.mod").write_text(
        "module sriovlib.local/multusbuild\n\n"
        f"go {at_least[0]}.{at_least[1]}\n\n"
        f"require {MULTUS_MODULE} {MULTUS_VERSION}\n"
    )
    (src / "tools.go").write_text(
        f'//go:build tools\n\npackage multusbuild\n\nimport _ "{MULTUS_MODULE}/cmd/multus"\n'
    )
    with contextlib.suppress(FileNotFoundError):
        (src / "go.sum").unlink()
    _go(go, ["mod", "tidy", "-e"], src, env, "go mod tidy (Multus)")
    with tempfile.TemporaryDirectory(prefix=".build-", dir=target.parent) as out:
        built = Path(out) / "multus"
        _go(
            go,
            ["build", "-trimpath", "-ldflags", _ldflags(), "-o", str(built),
             f"{MULTUS_MODULE}/cmd/multus"],
            src,
            env,
            f"go build of Multus {MULTUS_VERSION}",
        )  # fmt: skip
        os.replace(built, target)
    _log(progress, f"Multus {MULTUS_VERSION} built: {target}")
