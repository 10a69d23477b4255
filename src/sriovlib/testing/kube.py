"""A real one-node Kubernetes for tests: etcd, kube-apiserver, containerd + runc, kubelet.

:class:`KubeCluster` starts the pieces :func:`~sriovlib.testing.kubebuild.kube_tools`
built, each with its files in a private run directory (a tmpfs under ``/run``), and
stops them leaving nothing behind: no pods, mounts, network namespaces, bridge or
cgroups. Device plugins register with it through :attr:`KubeCluster.device_plugin_dir`
(give that to ``sriovlib agent --device-plugin-dir``); tests talk to the API server with
:meth:`KubeCluster.kubectl` and the helpers around it.

    with KubeCluster(kube_tools()) as cluster:
        ...start the agent with --device-plugin-dir cluster.device_plugin_dir...
        cluster.wait_allocatable("intel.com/sriov", "4")
        cluster.create(cluster.pod("app", "env", limits={"intel.com/sriov": 1}))

How it is put together (each line a fix for this kind of machine: root without
``CAP_SYS_RESOURCE``, no systemd, no registry, perhaps an overlay root in a VM):

- containerd's root, state, socket, runc root, CNI config and plugin directory all sit in
  the run directory (nothing in ``/etc/cni``, ``/opt/cni`` or ``/var/lib/containerd``);
  ``restrict_oom_score_adj`` (runc cannot lower ``oom_score_adj`` without
  ``CAP_SYS_RESOURCE``), the ``cgroupfs`` driver, the local pause image as sandbox image;
  pods get Debian's ``bridge`` + ``host-local`` on a bridge of their own;
- the API server authenticates static tokens and allows everything; the
  ServiceAccount admission plugin is off, so pods set ``automountServiceAccountToken:
  false`` and ``nodeName`` (:meth:`KubeCluster.pod` does);
- the kubelet keeps its root directory and pod logs in the run directory, but two paths
  are compiled in: ``/var/lib/kubelet/device-plugins`` (where it serves ``kubelet.sock``
  and dials plugins) and ``/var/log/containers``. It runs in a mount namespace of its own
  where those two are bind mounts of run-directory paths, so the host's stay untouched
  (empty mount points are created if missing and removed again);
- ``nodeStatusUpdateFrequency: 2s``: capacity reaches the API in about a second.

Two options make it a node as a cluster's are, for end-to-end tests on a throw-away
machine (the igb VM, whose root file system is an overlay that vanishes with it):

- ``node_paths=True``: the kubelet's root is ``/var/lib/kubelet`` (so the pod-resources
  socket Multus dials, ``/var/lib/kubelet/pod-resources/kubelet.sock``, is the kubelet's),
  containerd's CNI directories are ``/opt/cni/bin`` (Debian's plugins copied in, so a
  container mounting it can run them) and ``/etc/cni/net.d``. Refused unless ``/`` is
  an overlay;
- ``controllers=True``: kube-controller-manager (the DaemonSet, garbage-collector,
  namespace, node-lifecycle and resource-claim controllers) and kube-scheduler run too, so
  a DaemonSet gets its pods, a pod's ResourceClaimTemplate its ResourceClaim, and
  :meth:`KubeCluster.pod` with ``scheduled=True`` leaves placement to the scheduler.
  :meth:`KubeCluster.start_controllers` starts them on a cluster started without them
  (a test module sharing the session's cluster), :meth:`KubeCluster.stop_controllers`
  stops them again.

*images* are more OCI archives imported into containerd at start (the agent's image).

Two more are for the API server alone: ``api_only=True`` starts etcd and kube-apiserver
and nothing else (no containerd, no kubelet, no Node: a test makes what it needs), so it
can run beside the session's cluster; ``authorization_mode`` is the API server's
``--authorization-mode`` (``AlwaysAllow`` unless given; ``"Node,RBAC"`` to have roles
enforced: the admin is in ``system:masters``, the kubelet's user in ``system:nodes``).

``service_accounts=True`` (with *controllers*) gives pods their service account's token
as a real cluster does: the API server's ServiceAccount admission adds the projected
``kube-api-access`` volume (a token the kubelet requests bound to the pod, and the
``kube-root-ca.crt`` ConfigMap's CA), kube-controller-manager's serviceaccount controller
makes each namespace's ``default`` ServiceAccount and its root-CA publisher the
ConfigMap, holding the API server's self-signed serving certificate (its CA). It needs
*node_paths*: the kubelet then runs in the node's own mount namespace, as a real node's
does (elsewhere it runs in a private one, its bind mounts kept from the host), since
containerd must see the tmpfs the kubelet mounts for each projected token volume (from
a private namespace the container gets the empty directory under it).
:attr:`KubeCluster.api_port` is the port a pod on the node's network dials at
``127.0.0.1`` (no kube-proxy routes the ``kubernetes`` Service here).
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import shlex
import shutil
import signal
import socket
import ssl
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from collections.abc import Callable, Iterator, Mapping, Sequence
from pathlib import Path
from types import TracebackType
from typing import Any, Self, TypeVar

from sriovlib.testing.clienttools import ToolUnavailable
from sriovlib.testing.kubebuild import BUSYBOX_IMAGE, PAUSE_IMAGE, KubeTools

__all__ = ["KubeCluster", "KubeError"]

T = TypeVar("T")

_CNI_PLUGINS = ("bridge", "host-local", "loopback")
_COMPILED_IN = {
    "kubelet/device-plugins": "/var/lib/kubelet/device-plugins",
    "container-logs": "/var/log/containers",
}
#: Compiled-in directories the pieces create (shim sockets in /run/containerd/s; containerd
#: and the kubelet make /var/lib/kubelet): removed at stop when they were not there before
#: and are empty again. Deepest first.
_HOST_DIRS = tuple(
    Path(p)
    for p in (
        "/run/containerd/s",
        "/run/containerd",
        "/var/lib/kubelet/device-plugins",
        "/var/lib/kubelet",
        "/var/log/containers",
    )
)
_ADMIN_TOKEN = "sriovlib-admin"  # noqa: S105 - a throw-away cluster on 127.0.0.1
_KUBELET_TOKEN = "sriovlib-kubelet"  # noqa: S105


class KubeError(RuntimeError):
    """A cluster piece failed to start or answer; the message says which, with log lines."""


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port: int = s.getsockname()[1]
        return port


def _mounts() -> list[str]:
    """Mount points, in /proc/self/mounts order (octal escapes decoded)."""
    points = []
    for line in Path("/proc/self/mounts").read_text().splitlines():
        field = line.split(" ")[1]
        points.append(field.encode().decode("unicode_escape"))
    return points


class KubeCluster:
    """One node: etcd, kube-apiserver, containerd, kubelet (see the module documentation).

    Use as a context manager or call :meth:`start` and :meth:`stop`; single use.
    *timeout_scale* stretches every wait (the TCG VM is about 5-10 times slower).
    """

    def __init__(
        self,
        tools: KubeTools,
        *,
        node_name: str = "sriovlib-node",
        node_ip: str | None = None,
        timeout_scale: float = 1.0,
        progress: bool = True,
        node_paths: bool = False,
        controllers: bool = False,
        images: Sequence[Path] = (),
        api_only: bool = False,
        authorization_mode: str = "AlwaysAllow",
        service_accounts: bool = False,
    ) -> None:
        self.tools = tools
        self.service_accounts = service_accounts
        self.api_only = api_only
        self.authorization_mode = authorization_mode
        self.node_paths = node_paths
        self.controllers = controllers
        self.images = tuple(images)
        self.node_name = node_name
        self.node_ip = node_ip
        self.timeout_scale = timeout_scale
        self.progress = progress
        self.run_dir = Path()
        #: Seconds each step of :meth:`start` took, by name.
        self.timings: dict[str, float] = {}
        self._procs: dict[str, subprocess.Popen[bytes]] = {}
        self._created_dirs: list[Path] = []
        self._netns_before: set[str] = set()
        self._bridge = f"skube{os.getpid() % 100000}"
        self._ports: dict[str, int] = {}
        if service_accounts and not node_paths:
            raise ValueError("service_accounts needs node_paths (the kubelet's token mounts)")
        if node_paths and not _root_is_overlay():
            raise ToolUnavailable("node_paths needs a throw-away root (an overlay on /)")

    # -- paths ----------------------------------------------------------------------------------

    @property
    def device_plugin_dir(self) -> Path:
        """The kubelet's device-plugin directory, as seen from the host."""
        return self.kubelet_root / "device-plugins"

    @property
    def kubelet_root(self) -> Path:
        return Path("/var/lib/kubelet") if self.node_paths else self.run_dir / "kubelet"

    @property
    def kubeconfig(self) -> Path:
        return self.run_dir / "pki" / "admin.kubeconfig"

    @property
    def containerd_socket(self) -> Path:
        return self.run_dir / "containerd.sock"

    @property
    def cni_bin_dir(self) -> Path:
        """containerd's CNI plugin directory (links to Debian's plugins, in the run
        directory; with *node_paths* ``/opt/cni/bin`` holding copies of them)."""
        return Path("/opt/cni/bin") if self.node_paths else self.run_dir / "cni" / "bin"

    @property
    def cni_conf_dir(self) -> Path:
        """containerd's CNI config directory; the first file by name is the pods' network."""
        return Path("/etc/cni/net.d") if self.node_paths else self.run_dir / "cni" / "conf"

    def default_network(self) -> dict[str, Any]:
        """The conflist pods get unless another config sorts first: Debian's ``bridge`` on
        a bridge of the cluster's own, ``host-local`` addresses in 10.250.0.0/24."""
        return {
            "cniVersion": "0.4.0",
            "name": "sriovlib-kube",
            "plugins": [
                {
                    "type": "bridge",
                    "bridge": self._bridge,
                    "isGateway": False,
                    "ipMasq": False,
                    "ipam": {
                        "type": "host-local",
                        "ranges": [[{"subnet": "10.250.0.0/24"}]],
                        "dataDir": str(self.run_dir / "cni" / "ipam"),
                    },
                },
            ],
        }

    def set_cni_config(
        self,
        filename: str,
        config: Mapping[str, Any] | None,
        *,
        plugins: Mapping[str, Path] | None = None,
    ) -> None:
        """Write *config* as *filename* in :attr:`cni_conf_dir` (atomically), or remove that
        file when *config* is None; link each of *plugins* (name → binary) into
        :attr:`cni_bin_dir` first. containerd watches the directory and loads the first
        file by name for the next sandbox; it reports no reload, so a caller checks the
        effect on a pod (delete the pods of the old network first: DEL follows the config
        of the moment)."""
        for name, binary in (plugins or {}).items():
            link = self.cni_bin_dir / name
            if not link.is_symlink() or link.readlink() != binary:
                link.unlink(missing_ok=True)
                link.symlink_to(binary)
        target = self.cni_conf_dir / filename
        if config is None:
            target.unlink(missing_ok=True)
            return
        data = json.dumps(config).encode()
        partial = self.cni_conf_dir / f".{filename}.partial"  # one file system: a rename
        partial.write_bytes(data)
        os.replace(partial, target)
        # containerd 1.6 ignores the CREATE a rename makes and reloads on a WRITE: write
        # the same bytes over the complete file once more
        with open(target, "r+b") as f:
            f.write(data)

    def log_path(self, name: str) -> Path:
        """The log file of *name* (``etcd``, ``kube-apiserver``, ``containerd``, ``kubelet``,
        ``kube-controller-manager``, ``kube-scheduler``)."""
        return self.run_dir / "log" / f"{name}.log"

    # -- lifecycle --------------------------------------------------------------------------

    def __enter__(self) -> Self:
        try:
            self.start()
        except BaseException:
            self.stop()
            raise
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.stop()

    def _log(self, message: str) -> None:
        if self.progress:
            print(f"sriovlib-kube: {message}", file=sys.stderr, flush=True)

    def _timed(self, name: str, start: float) -> None:
        self.timings[name] = time.monotonic() - start
        self._log(f"{name} in {self.timings[name]:.1f} s")

    def start(self) -> None:
        """Start every piece and wait until the node is Ready in the API."""
        self.run_dir = Path(tempfile.mkdtemp(prefix="sriovlib-kube-", dir="/run"))
        self._mount_tmpfs()
        for sub in ("log", "pki", "etcd", "cni/bin", "cni/conf", "cni/ipam", "pod-logs"):
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        for directory in (self.cni_bin_dir, self.cni_conf_dir, self.kubelet_root):
            directory.mkdir(parents=True, exist_ok=True)  # the kubelet makes no parents
        for sub in _COMPILED_IN:
            (self.run_dir / sub).mkdir(parents=True, exist_ok=True)
        with contextlib.suppress(OSError):
            self._netns_before = set(os.listdir("/var/run/netns"))
        self._created_dirs = [p for p in _HOST_DIRS if not p.exists()]
        names = ("etcd", "peer", "api", "kubelet", "healthz", "controllers", "scheduler")
        self._ports = {n: _free_port() for n in names}
        self._write_credentials()
        if self.api_only:
            self._start_etcd()
            self._start_apiserver()
            return
        self._start_containerd()
        self._start_etcd()
        self._start_apiserver()
        if self.controllers:
            self._start_controllers()
        self.start_kubelet()

    def _mount_tmpfs(self) -> None:
        proc = subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "mode=0755", "sriovlib-kube", str(self.run_dir)],
            capture_output=True,
            text=True,
            check=False,
        )
        if proc.returncode != 0:
            raise ToolUnavailable(f"cannot mount a tmpfs for the cluster: {proc.stderr.strip()}")

    def _spawn(self, name: str, argv: list[str]) -> subprocess.Popen[bytes]:
        with open(self.log_path(name), "ab") as log:
            proc = subprocess.Popen(
                argv,
                stdin=subprocess.DEVNULL,
                stdout=log,
                stderr=subprocess.STDOUT,
                start_new_session=True,
            )
        self._procs[name] = proc
        return proc

    def _wait(self, what: str, check: Callable[[], T | None], timeout: float, name: str) -> T:
        """Poll *check* until it returns something not None, or fail naming *what*."""
        deadline = time.monotonic() + timeout * self.timeout_scale
        while True:
            with contextlib.suppress(OSError, ValueError, subprocess.SubprocessError):
                result = check()
                if result is not None:
                    return result
            proc = self._procs.get(name)
            if proc is not None and proc.poll() is not None:
                status = proc.returncode
                raise KubeError(f"{name} exited ({status}) before {what}:\n{self.tail(name)}")
            if time.monotonic() > deadline:
                raise KubeError(f"timed out waiting for {what}:\n{self.tail(name)}")
            time.sleep(0.1)

    def tail(self, name: str, lines: int = 15) -> str:
        """The last *lines* lines of *name*'s log."""
        try:
            return "\n".join(self.log_path(name).read_text(errors="replace").splitlines()[-lines:])
        except OSError:
            return "(no log)"

    def _write_credentials(self) -> None:
        pki = self.run_dir / "pki"
        key, pub = pki / "sa.key", pki / "sa.pub"
        for argv in (
            ["openssl", "genrsa", "-out", str(key), "2048"],
            ["openssl", "rsa", "-in", str(key), "-pubout", "-out", str(pub)],
        ):
            proc = subprocess.run(argv, capture_output=True, text=True, check=False)
            if proc.returncode != 0:
                raise KubeError(f"{shlex.join(argv)} failed: {proc.stderr.strip()}")
        (pki / "tokens.csv").write_text(
            f"{_ADMIN_TOKEN},admin,admin,system:masters\n"
            f"{_KUBELET_TOKEN},system:node:{self.node_name},kubelet,system:nodes\n"
        )
        for user, token in (("admin", _ADMIN_TOKEN), ("kubelet", _KUBELET_TOKEN)):
            config = {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [
                    {
                        "name": "local",
                        "cluster": {
                            "server": f"https://127.0.0.1:{self._ports['api']}",
                            "insecure-skip-tls-verify": True,
                        },
                    }
                ],
                "users": [{"name": user, "user": {"token": token}}],
                "contexts": [{"name": "local", "context": {"cluster": "local", "user": user}}],
                "current-context": "local",
            }
            (pki / f"{user}.kubeconfig").write_text(json.dumps(config))

    def _start_containerd(self) -> None:
        run = self.run_dir
        for plugin in _CNI_PLUGINS:
            source, target = Path("/usr/lib/cni") / plugin, self.cni_bin_dir / plugin
            if self.node_paths:
                shutil.copy2(source, target)
            else:
                target.symlink_to(source)
        conflist = self.cni_conf_dir / "10-sriovlib-kube.conflist"
        conflist.write_text(json.dumps(self.default_network()))
        cri = 'plugins."io.containerd.grpc.v1.cri"'
        config = f"""version = 2
root = "{run}/containerd/root"
state = "{run}/containerd/state"
[grpc]
  address = "{self.containerd_socket}"
[plugins."io.containerd.internal.v1.opt"]
  path = "{run}/containerd/opt"
[{cri}]
  sandbox_image = "{PAUSE_IMAGE}"
  restrict_oom_score_adj = true
  [{cri}.containerd]
    snapshotter = "overlayfs"
    default_runtime_name = "runc"
    [{cri}.containerd.runtimes.runc]
      runtime_type = "io.containerd.runc.v2"
      [{cri}.containerd.runtimes.runc.options]
        SystemdCgroup = false
        Root = "{run}/runc"
  [{cri}.cni]
    bin_dir = "{self.cni_bin_dir}"
    conf_dir = "{self.cni_conf_dir}"
"""
        (run / "containerd.toml").write_text(config)
        started = time.monotonic()
        self._spawn("containerd", ["containerd", "--config", str(run / "containerd.toml")])
        self._wait("containerd's socket", lambda: self._ctr("version") or None, 30, "containerd")
        self._timed("containerd ready", started)
        started = time.monotonic()
        for archive in [a for _, a in self.tools.images] + list(self.images):
            self._ctr("images", "import", str(archive), check=True)
        self._timed("images imported", started)

    def _ctr(self, *args: str, check: bool = False) -> str:
        proc = subprocess.run(
            ["ctr", "-a", str(self.containerd_socket), "-n", "k8s.io", *args],
            capture_output=True,
            text=True,
            timeout=60 * self.timeout_scale,
            check=False,
        )
        if proc.returncode != 0:
            if check:
                raise KubeError(f"ctr {' '.join(args[:2])} failed: {proc.stderr.strip()}")
            return ""
        return proc.stdout

    def _start_etcd(self) -> None:
        client = f"http://127.0.0.1:{self._ports['etcd']}"
        peer = f"http://127.0.0.1:{self._ports['peer']}"
        started = time.monotonic()
        self._spawn(
            "etcd",
            [
                "etcd",
                "--name=default",
                f"--data-dir={self.run_dir / 'etcd' / 'data'}",
                f"--listen-client-urls={client}",
                f"--advertise-client-urls={client}",
                f"--listen-peer-urls={peer}",
                f"--initial-advertise-peer-urls={peer}",
                f"--initial-cluster=default={peer}",
            ],
        )

        def healthy() -> bool | None:
            url = f"{client}/health"  # http://127.0.0.1 only
            with urllib.request.urlopen(url, timeout=2) as reply:  # noqa: S310
                return json.load(reply).get("health") == "true" or None

        self._wait("etcd's health", healthy, 30, "etcd")
        self._timed("etcd ready", started)

    def _start_apiserver(self) -> None:
        pki = self.run_dir / "pki"
        audience = "https://kubernetes.default.svc"
        started = time.monotonic()
        self._spawn(
            "kube-apiserver",
            [
                self.tools.path("kube-apiserver"),
                f"--etcd-servers=http://127.0.0.1:{self._ports['etcd']}",
                "--bind-address=127.0.0.1",
                "--advertise-address=127.0.0.1",
                f"--secure-port={self._ports['api']}",
                f"--cert-dir={pki / 'apiserver'}",
                "--endpoint-reconciler-type=none",
                "--service-cluster-ip-range=10.96.0.0/24",
                f"--token-auth-file={pki / 'tokens.csv'}",
                f"--authorization-mode={self.authorization_mode}",
                "--allow-privileged=true",  # as every real cluster: the agent is privileged
                *([] if self.service_accounts else ["--disable-admission-plugins=ServiceAccount"]),
                f"--service-account-issuer={audience}",
                f"--service-account-key-file={pki / 'sa.pub'}",
                f"--service-account-signing-key-file={pki / 'sa.key'}",
                f"--api-audiences={audience}",
            ],
        )
        self._wait("the API server's /readyz", lambda: self.api_get("/readyz") == "ok" or None,
                   90, "kube-apiserver")  # fmt: skip
        self._timed("kube-apiserver ready", started)

    def _start_controllers(self) -> None:
        """kube-controller-manager and kube-scheduler, as admin, no leader election."""
        pki = self.run_dir / "pki"
        common = [
            f"--kubeconfig={self.kubeconfig}",
            f"--authentication-kubeconfig={self.kubeconfig}",
            f"--authorization-kubeconfig={self.kubeconfig}",
            "--leader-elect=false",
            "--bind-address=127.0.0.1",
        ]
        started = time.monotonic()
        self._spawn(
            "kube-controller-manager",
            [
                self.tools.path("kube-controller-manager"),
                *common,
                f"--secure-port={self._ports['controllers']}",
                f"--cert-dir={pki / 'controller-manager'}",
                # node-lifecycle: lifts the not-ready taint the kubelet registers with;
                # resourceclaim: a pod's claims from its ResourceClaimTemplates (DRA)
                "--controllers=daemonset-controller,garbage-collector-controller,"
                "namespace-controller,node-lifecycle-controller,resourceclaim-controller"
                + (
                    ",serviceaccount-controller,root-ca-certificate-publisher-controller"
                    if self.service_accounts
                    else ""
                ),
                "--use-service-account-credentials=false",
                *(
                    [f"--root-ca-file={pki / 'apiserver' / 'apiserver.crt'}"]
                    if self.service_accounts
                    else []
                ),
            ],
        )
        self._spawn(
            "kube-scheduler",
            [
                self.tools.path("kube-scheduler"),
                *common,
                f"--secure-port={self._ports['scheduler']}",
                f"--cert-dir={pki / 'scheduler'}",
            ],
        )
        for name, port in (
            ("kube-controller-manager", "controllers"),
            ("kube-scheduler", "scheduler"),
        ):
            url = f"https://127.0.0.1:{self._ports[port]}/healthz"
            self._wait(f"{name}'s /healthz", functools.partial(_healthy, url), 90, name)
        self._timed("kube-controller-manager and kube-scheduler ready", started)

    def start_controllers(self) -> None:
        """Start kube-controller-manager and kube-scheduler on the running cluster, if
        they do not run (it was started without *controllers*, or they were stopped)."""
        if "kube-scheduler" not in self._procs:
            self._start_controllers()
            self.controllers = True

    def stop_controllers(self) -> None:
        """Stop kube-controller-manager and kube-scheduler; the rest keeps running."""
        for name in ("kube-scheduler", "kube-controller-manager"):
            self._terminate(name)
        self.controllers = False

    @property
    def api_port(self) -> int:
        """The API server's port on ``127.0.0.1`` (the node's loopback)."""
        return self._ports["api"]

    def api_get(self, path: str) -> str:
        """GET *path* on the API server as admin; the body as text."""
        return _get_insecure(f"https://127.0.0.1:{self._ports['api']}{path}", _ADMIN_TOKEN)

    # -- the kubelet --------------------------------------------------------------------------

    def _kubelet_config(self) -> Path:
        run = self.run_dir
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1",
            "kind": "KubeletConfiguration",
            "address": "127.0.0.1",
            "port": self._ports["kubelet"],
            "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1",
            "healthzPort": self._ports["healthz"],
            "authentication": {"anonymous": {"enabled": True}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "cgroupDriver": "cgroupfs",
            "containerRuntimeEndpoint": f"unix://{self.containerd_socket}",
            "failSwapOn": False,
            "failCgroupV1": False,
            "nodeStatusUpdateFrequency": "2s",
            "nodeStatusReportFrequency": "2s",
            "syncFrequency": "5s",
            "evictionHard": {},
            "imageGCHighThresholdPercent": 100,
            "makeIPTablesUtilChains": False,
            "podLogsDir": str(run / "pod-logs"),
            "resolvConf": "/etc/resolv.conf",
            "serializeImagePulls": False,
        }
        path = run / "kubelet.yaml"
        path.write_text(json.dumps(config))
        return path

    def _mount_points(self) -> list[tuple[Path, str]]:
        """(run-directory path, compiled-in path) pairs; the compiled-in ones made if
        missing (:data:`_HOST_DIRS`: removed again at stop). None with *node_paths*."""
        if self.node_paths:
            return []
        for target in _COMPILED_IN.values():
            Path(target).mkdir(parents=True, exist_ok=True)
        return [(self.run_dir / sub, target) for sub, target in _COMPILED_IN.items()]

    def start_kubelet(self) -> None:
        """Start the kubelet (again, after :meth:`stop_kubelet`) and wait for the node to be
        Ready and ``kubelet.sock`` to be new."""
        old = self.device_plugin_dir / "kubelet.sock"
        before = old.stat().st_ino if old.exists() else None
        binds = " && ".join(
            [
                f"mount --bind {shlex.quote(str(src))} {shlex.quote(dst)}"
                for src, dst in self._mount_points()
            ]
            + ["true"]
        )
        kubelet = [
            self.tools.path("kubelet"),
            f"--config={self._kubelet_config()}",
            f"--root-dir={self.kubelet_root}",
            # these two defaults ignore --root-dir
            f"--cert-dir={self.kubelet_root / 'pki'}",
            f"--volume-plugin-dir={self.kubelet_root / 'volume-plugins'}",
            f"--kubeconfig={self.run_dir / 'pki' / 'kubelet.kubeconfig'}",
            f"--hostname-override={self.node_name}",
            "--v=2",
        ]
        if self.node_ip:
            kubelet.append(f"--node-ip={self.node_ip}")
        started = time.monotonic()
        if self.service_accounts:  # the node's mount namespace (see the module docs)
            self._spawn("kubelet", kubelet)
        else:
            self._spawn(
                "kubelet",
                ["unshare", "--mount", "--propagation", "private", "--", "sh", "-c",
                 f"{binds} && exec {shlex.join(kubelet)}"],
            )  # fmt: skip

        def fresh_socket() -> bool | None:
            sock = self.device_plugin_dir / "kubelet.sock"
            return (sock.is_socket() and sock.stat().st_ino != before) or None

        self._wait("the kubelet's device-plugin socket", fresh_socket, 90, "kubelet")
        self._wait("the node to be Ready", self._node_ready, 90, "kubelet")
        self._timed("kubelet started, node Ready", started)

    def _node_ready(self) -> bool | None:
        node = self.node()
        conditions = node.get("status", {}).get("conditions", [])
        return any(c["type"] == "Ready" and c["status"] == "True" for c in conditions) or None

    def stop_kubelet(self) -> None:
        """Stop the kubelet (SIGTERM); pods keep running, as on a kubelet restart."""
        self._terminate("kubelet")

    def restart_kubelet(self) -> float:
        """Stop and start the kubelet; the seconds until the node was Ready again."""
        started = time.monotonic()
        self.stop_kubelet()
        self.start_kubelet()
        return time.monotonic() - started

    # -- the API --------------------------------------------------------------------------------

    def kubectl(self, *args: str, input: str | None = None, check: bool = True) -> str:
        """Run kubectl as admin; its standard output. Raises KubeError on failure if *check*."""
        proc = subprocess.run(
            [
                self.tools.path("kubectl"),
                f"--kubeconfig={self.kubeconfig}",
                f"--cache-dir={self.run_dir / 'kubectl-cache'}",
                *args,
            ],
            input=input,
            capture_output=True,
            text=True,
            timeout=60 * self.timeout_scale,
            check=False,
        )
        if check and proc.returncode != 0:
            raise KubeError(f"kubectl {' '.join(args)} failed: {proc.stderr.strip()}")
        return proc.stdout

    def get(self, kind: str, name: str, namespace: str = "default") -> dict[str, Any]:
        """The object as JSON; raises KubeError when it does not exist. Pods are read
        from the API directly (tests poll them: a kubectl start costs seconds in the VM)."""
        if kind in ("pod", "pods"):
            data: dict[str, Any] = json.loads(
                self.api_get(f"/api/v1/namespaces/{namespace}/pods/{name}")
            )
            if data.get("kind") != "Pod":
                raise KubeError(f"pod {namespace}/{name}: {data.get('message', data)}")
            return data
        found: dict[str, Any] = json.loads(
            self.kubectl("get", kind, name, "-n", namespace, "-o", "json")
        )
        return found

    def node(self) -> dict[str, Any]:
        """The Node object as JSON; empty while the kubelet has not registered it."""
        data: dict[str, Any] = json.loads(self.api_get(f"/api/v1/nodes/{self.node_name}"))
        return data if data.get("kind") == "Node" else {}

    def allocatable(self, resource: str) -> str | None:
        """The node's Allocatable of *resource* in the API (None: not listed)."""
        value: str | None = self.node().get("status", {}).get("allocatable", {}).get(resource)
        return value

    def wait_allocatable(self, resource: str, value: str, timeout: float = 60) -> float:
        """Wait until Allocatable of *resource* is *value*; the seconds it took."""
        started = time.monotonic()
        self._wait(
            f"allocatable {resource} = {value} (now {self.allocatable(resource)})",
            lambda: self.allocatable(resource) == value or None,
            timeout,
            "kubelet",
        )
        return time.monotonic() - started

    def create(self, manifest: Mapping[str, Any]) -> None:
        self.kubectl("create", "-f", "-", input=json.dumps(manifest))

    def install_crd(self, crd: Mapping[str, Any]) -> str:
        """Apply the CustomResourceDefinition *crd* (idempotent: tests sharing the cluster
        may each install it) and wait until it is Established; returns ``crd/<name>``."""
        self.kubectl("apply", "-f", "-", input=json.dumps(crd))
        ref = f"crd/{crd['metadata']['name']}"
        self.kubectl("wait", "--for=condition=Established", ref, "--timeout=60s")
        return ref

    def pod(
        self,
        name: str,
        command: str | list[str],
        *,
        limits: Mapping[str, int] | None = None,
        restart: str = "Never",
        annotations: Mapping[str, str] | None = None,
        scheduled: bool = False,
    ) -> dict[str, Any]:
        """A pod manifest bound to this node (or, if *scheduled*, left to the scheduler):
        one busybox container running *command* (a shell command line, or an argv run
        without a shell)."""
        container: dict[str, Any] = {
            "name": "app",
            "image": BUSYBOX_IMAGE,
            "imagePullPolicy": "Never",
            "command": ["/bin/sh", "-c", command] if isinstance(command, str) else command,
        }
        if limits:
            container["resources"] = {"limits": {k: str(v) for k, v in limits.items()}}
        metadata: dict[str, Any] = {"name": name, "namespace": "default"}
        if annotations:
            metadata["annotations"] = dict(annotations)
        spec: dict[str, Any] = {
            "restartPolicy": restart,
            "automountServiceAccountToken": False,
            "terminationGracePeriodSeconds": 1,
            "containers": [container],
        }
        if not scheduled:
            spec["nodeName"] = self.node_name
        return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}

    def wait_pod(self, name: str, phases: tuple[str, ...], timeout: float = 60) -> dict[str, Any]:
        """Wait until pod *name* is in one of *phases*; the pod as JSON."""

        def in_phase() -> dict[str, Any] | None:
            pod = self.get("pod", name)
            return pod if pod.get("status", {}).get("phase") in phases else None

        return self._wait(f"pod {name} in {'/'.join(phases)}", in_phase, timeout, "kubelet")

    def pod_log(self, name: str, container: str = "app", namespace: str = "default") -> str:
        """What the container wrote (stdout and stderr), from the CRI log files."""
        # a deleted pod of the same name may leave its directory behind for a while
        uid = self.get("pod", name, namespace=namespace)["metadata"]["uid"]
        directory = self.run_dir / "pod-logs" / f"{namespace}_{name}_{uid}" / container
        lines = []
        for log in sorted(directory.glob("*.log")):
            for line in log.read_text(errors="replace").splitlines():
                # <time> <stream> <P|F> <text>
                parts = line.split(" ", 3)
                lines.append(parts[3] if len(parts) == 4 else "")
        return "\n".join(lines) + ("\n" if lines else "")

    def delete_pod(self, name: str, *, wait: bool = True) -> None:
        self.kubectl("delete", "pod", name, "--grace-period=1", f"--wait={str(wait).lower()}",
                     "--ignore-not-found")  # fmt: skip

    def events(self, name: str) -> list[str]:
        """The messages of the events about object *name*."""
        data = json.loads(self.kubectl("get", "events", "-o", "json",
                                       f"--field-selector=involvedObject.name={name}"))  # fmt: skip
        return [str(item.get("message", "")) for item in data.get("items", [])]

    # -- stop -----------------------------------------------------------------------------------

    def _terminate(self, name: str, timeout: float = 15) -> None:
        proc = self._procs.pop(name, None)
        if proc is None or proc.poll() is not None:
            return
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGTERM)
        try:
            proc.wait(timeout)
        except subprocess.TimeoutExpired:
            with contextlib.suppress(ProcessLookupError):
                os.killpg(proc.pid, signal.SIGKILL)
            proc.wait(10)

    def stop(self) -> None:
        """Stop everything and remove every trace; safe to call twice or after a failed start."""
        if self.run_dir == Path():
            return
        if self.api_only:  # no node: nothing of containerd's or the kubelet's to clean
            for name in ("kube-apiserver", "etcd"):
                self._terminate(name)
            self._unmount()
            with contextlib.suppress(OSError):
                self.run_dir.rmdir()
            self.run_dir = Path()
            return
        if "kubelet" in self._procs and "kube-apiserver" in self._procs:
            with contextlib.suppress(KubeError, subprocess.SubprocessError):
                self.kubectl("delete", "pods", "--all", "--all-namespaces", "--grace-period=1",
                             "--wait=false", check=False)  # fmt: skip
                self._drain()
        for name in (
            "kubelet",
            "kube-scheduler",
            "kube-controller-manager",
            "kube-apiserver",
            "etcd",
        ):
            self._terminate(name)
        if "containerd" in self._procs:
            for task in self._ctr("tasks", "ls", "-q").split():
                self._ctr("tasks", "kill", "-s", "KILL", task)
            self._terminate("containerd")
        self._kill_shims()
        self._unmount()
        self._cleanup_network()
        self._remove_cgroups()
        self._remove_created_dirs()
        with contextlib.suppress(OSError):
            self.run_dir.rmdir()
        self.run_dir = Path()

    def _remove_created_dirs(self) -> None:
        """rmdir :data:`_HOST_DIRS` we created, deepest first, once they are empty."""
        for path in self._created_dirs:
            with contextlib.suppress(OSError):
                path.rmdir()

    def _drain(self) -> None:
        """Wait for the kubelet to stop every container and tear down every sandbox (CNI
        DEL and the shm mount go last)."""
        deadline = time.monotonic() + 60 * self.timeout_scale
        shm = f"{self.run_dir}/containerd/"
        while time.monotonic() < deadline:
            tasks = self._ctr("tasks", "ls", "-q").split()
            if not tasks and not any(m.startswith(shm) and m.endswith("/shm") for m in _mounts()):
                return
            time.sleep(0.2)

    def _kill_shims(self) -> None:
        """Kill containerd shims still serving our socket (they outlive containerd)."""
        marker = str(self.containerd_socket).encode()
        for pid in filter(str.isdigit, os.listdir("/proc")):
            with contextlib.suppress(OSError):
                if marker in Path(f"/proc/{pid}/cmdline").read_bytes():
                    os.kill(int(pid), signal.SIGKILL)

    def _unmount(self) -> None:
        prefix = f"{self.run_dir}/"
        # the volumes a kubelet in the node's namespace left (service_accounts)
        pods = f"{self.kubelet_root / 'pods'}/" if self.service_accounts else prefix
        for point in reversed(_mounts()):
            if point.startswith((prefix, pods)):
                subprocess.run(["umount", "-l", point], capture_output=True, check=False)
        subprocess.run(["umount", "-l", str(self.run_dir)], capture_output=True, check=False)

    def _cleanup_network(self) -> None:
        with contextlib.suppress(OSError):
            for name in set(os.listdir("/var/run/netns")) - self._netns_before:
                if name.startswith("cni-"):
                    argv = ["ip", "netns", "delete", name]
                    subprocess.run(argv, capture_output=True, check=False)
        subprocess.run(["ip", "link", "del", self._bridge], capture_output=True, check=False)

    def _remove_cgroups(self) -> None:
        roots = [Path("/sys/fs/cgroup")]
        roots += [p for p in Path("/sys/fs/cgroup").iterdir() if p.is_dir() and not p.is_symlink()]
        for root in roots:
            top = root / "kubepods"
            if top.is_dir():
                for directory in sorted(_walk_dirs(top), key=lambda p: -len(p.parts)):
                    with contextlib.suppress(OSError):
                        directory.rmdir()


def _get_insecure(url: str, token: str | None = None) -> str:
    """GET *url* on 127.0.0.1 (a self-signed certificate), with a bearer *token*; the body."""
    context = ssl.create_default_context()
    context.check_hostname = False
    context.verify_mode = ssl.CERT_NONE
    headers = {"Authorization": f"Bearer {token}"} if token else {}
    request = urllib.request.Request(url, headers=headers)  # noqa: S310 - https://127.0.0.1
    try:
        with urllib.request.urlopen(request, timeout=5, context=context) as reply:  # noqa: S310
            return str(reply.read().decode())
    except urllib.error.HTTPError as e:
        return e.read().decode(errors="replace")


def _healthy(url: str) -> bool | None:
    return _get_insecure(url) == "ok" or None


def _root_is_overlay() -> bool:
    for line in Path("/proc/self/mounts").read_text().splitlines():
        fields = line.split(" ")
        if fields[1] == "/" and fields[2] == "overlay":
            return True
    return False


def _walk_dirs(top: Path) -> Iterator[Path]:
    yield top
    for dirpath, dirnames, _ in os.walk(top):
        for name in dirnames:
            yield Path(dirpath) / name
