"""A small typed client of the Kubernetes API: what the DRA driver needs, nothing more.

The agent reads ResourceClaims and publishes ResourceSlices; for that it needs JSON over
HTTPS with a bearer token or a client certificate, and errors it can act on. The
official ``kubernetes`` package does all that and much more, at a price measured in
docs/dra.md; this module is the standard library only (``http.client``, ``ssl``,
``json``).

Where the credentials come from:

- :func:`in_cluster`: the pod's service account, as every in-cluster client reads it
  (``KUBERNETES_SERVICE_HOST``/``KUBERNETES_SERVICE_PORT``, the token and CA in
  ``/var/run/secrets/kubernetes.io/serviceaccount``); the token file is re-read once a
  minute, since the kubelet rotates projected tokens;
- :func:`load_kubeconfig`: a kubeconfig file (YAML or JSON), its current context (or the
  one named): ``server``, ``certificate-authority(-data)`` or
  ``insecure-skip-tls-verify``, and a ``token``, ``tokenFile`` or
  ``client-certificate(-data)`` with ``client-key(-data)``.

Every failure is a :class:`KubeApiError` with a one-line message naming the request:
:class:`NotFound` (404), :class:`Conflict` (409; :class:`AlreadyExists` when the object
exists), :class:`Forbidden` (403), :class:`Unauthorized` (401), :class:`Invalid` (422),
:class:`Unreachable` (no connection, TLS failure, a timeout), :class:`KubeConfigError`
(the credentials cannot be read).
"""

from __future__ import annotations

import base64
import http.client
import json
import os
import ssl
import tempfile
import threading
import time
import urllib.parse
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import attrs

from sriovlib.exceptions import SriovError

__all__ = [
    "SERVICE_ACCOUNT_DIR",
    "AlreadyExists",
    "Conflict",
    "Forbidden",
    "Invalid",
    "KubeApiError",
    "KubeClient",
    "KubeConfig",
    "KubeConfigError",
    "NotFound",
    "Unauthorized",
    "Unreachable",
    "in_cluster",
    "load_kubeconfig",
]

#: Where a pod's service-account credentials are mounted.
SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
#: Seconds a request may take (connect, send, answer) unless the client says otherwise.
DEFAULT_TIMEOUT = 10.0
#: Seconds a token read from a file is used before the file is read again.
TOKEN_REREAD = 60.0


class KubeApiError(SriovError):
    """A request to the API server failed (the message is one line and names it).

    Attributes:
        status: The HTTP status, or None when no answer came.
        reason: The API's ``reason`` (``NotFound``, ``AlreadyExists``...), or None.
    """

    def __init__(self, message: str, status: int | None = None, reason: str | None = None):
        super().__init__(message)
        self.status = status
        self.reason = reason


class KubeConfigError(KubeApiError):
    """The credentials (kubeconfig, service account) cannot be read or are incomplete."""


class Unreachable(KubeApiError):
    """No answer: the connection, TLS or a timeout failed."""


class NotFound(KubeApiError):
    """404: no such object (or no such resource type on this server)."""


class Conflict(KubeApiError):
    """409: the object changed since it was read (a stale ``resourceVersion``)."""


class AlreadyExists(Conflict):
    """409 ``AlreadyExists``: a create of an object that is there."""


class Forbidden(KubeApiError):
    """403: the identity may not do this (RBAC), or admission refused it."""


class Unauthorized(KubeApiError):
    """401: the server does not accept the credentials."""


class Invalid(KubeApiError):
    """422: the object does not pass the API's validation."""


_BY_STATUS: dict[int, type[KubeApiError]] = {
    401: Unauthorized,
    403: Forbidden,
    404: NotFound,
    409: Conflict,
    422: Invalid,
}


@attrs.frozen
class KubeConfig:
    """How to reach and authenticate to one API server.

    Attributes:
        server: ``https://host:port`` (``http://`` only for a test's local server).
        token: A bearer token, or None.
        token_file: A file holding the bearer token (re-read once a minute), or None.
        ca_file: The CA bundle to verify the server with; None: the system's.
        insecure: Do not verify the server's certificate (``insecure-skip-tls-verify``).
        cert_file: A client certificate (PEM), with *key_file*, or None.
        key_file: Its private key (PEM), or None.
        source: Where this came from, for messages (a path, ``in-cluster``).
    """

    server: str
    token: str | None = attrs.field(default=None, repr=False)
    token_file: Path | None = None
    ca_file: Path | None = None
    insecure: bool = False
    cert_file: Path | None = None
    key_file: Path | None = None
    source: str = ""


def in_cluster(
    environ: Mapping[str, str] | None = None, account_dir: Path = SERVICE_ACCOUNT_DIR
) -> KubeConfig:
    """The pod's own credentials (see the module documentation).

    Raises:
        KubeConfigError: not in a pod (no ``KUBERNETES_SERVICE_HOST``), or the
            service account's token or CA is missing.
    """
    env = os.environ if environ is None else environ
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT")
    if not host or not port:
        raise KubeConfigError(
            "not in a pod: KUBERNETES_SERVICE_HOST and KUBERNETES_SERVICE_PORT are not set "
            "(give --kubeconfig FILE outside a cluster)"
        )
    token, ca = account_dir / "token", account_dir / "ca.crt"
    for path in (token, ca):
        if not path.is_file():
            raise KubeConfigError(f"in-cluster config: {path} is missing (no service account?)")
    if ":" in host:
        host = f"[{host}]"  # an IPv6 address
    return KubeConfig(
        server=f"https://{host}:{port}", token_file=token, ca_file=ca, source="in-cluster"
    )


def load_kubeconfig(path: str | os.PathLike[str], context: str | None = None) -> KubeConfig:
    """The cluster and user of *context* (default: the current one) in kubeconfig *path*.

    Inline ``*-data`` values are written to private temporary files (``ssl`` reads only
    files), removed at exit.

    Raises:
        KubeConfigError: the file cannot be read or parsed, or misses what is needed.
    """
    import yaml  # a kubeconfig is YAML (JSON is YAML too)

    where = os.fspath(path)
    try:
        data = yaml.safe_load(Path(where).read_text())
    except OSError as e:
        raise KubeConfigError(f"kubeconfig {where}: {e.strerror or e}") from None
    except yaml.YAMLError as e:
        first = str(e).splitlines()[0] if str(e) else type(e).__name__
        raise KubeConfigError(f"kubeconfig {where} is not YAML: {first}") from None
    if not isinstance(data, Mapping):
        raise KubeConfigError(f"kubeconfig {where} is not a mapping")
    name = context or data.get("current-context")
    if not name:
        raise KubeConfigError(f"kubeconfig {where} has no current-context")
    ctx = _named(data, "contexts", name, "context", where)
    cluster = _named(data, "clusters", ctx.get("cluster"), "cluster", where)
    user = _named(data, "users", ctx.get("user"), "user", where) if ctx.get("user") else {}
    server = cluster.get("server")
    if not isinstance(server, str) or not server.startswith(("https://", "http://")):
        raise KubeConfigError(f"kubeconfig {where}: cluster {ctx.get('cluster')!r} has no server")
    base = Path(where).resolve().parent

    def file_of(key: str, section: Mapping[str, Any]) -> Path | None:
        if section.get(f"{key}-data"):
            return _private_file(str(section[f"{key}-data"]), key, where)
        if section.get(key):
            return base / str(section[key])  # relative to the kubeconfig, as kubectl reads it
        return None

    cert, key = file_of("client-certificate", user), file_of("client-key", user)
    if (cert is None) != (key is None):
        raise KubeConfigError(
            f"kubeconfig {where}: user {ctx.get('user')!r} has a client certificate or key "
            "without the other"
        )
    return KubeConfig(
        server=server.rstrip("/"),
        token=str(user["token"]) if user.get("token") else None,
        token_file=base / str(user["tokenFile"]) if user.get("tokenFile") else None,
        ca_file=file_of("certificate-authority", cluster),
        insecure=bool(cluster.get("insecure-skip-tls-verify", False)),
        cert_file=cert,
        key_file=key,
        source=where,
    )


def _named(data: Mapping[str, Any], section: str, name: object, key: str, where: str) -> Any:
    for entry in data.get(section) or ():
        if isinstance(entry, Mapping) and entry.get("name") == name:
            value = entry.get(key)
            if isinstance(value, Mapping):
                return value
    raise KubeConfigError(f"kubeconfig {where}: no {key} {name!r} in {section}")


_PRIVATE_DIR: list[Path] = []


def _private_file(b64: str, what: str, where: str) -> Path:
    try:
        content = base64.b64decode(b64, validate=True)
    except ValueError:
        raise KubeConfigError(f"kubeconfig {where}: {what}-data is not base64") from None
    if not _PRIVATE_DIR:
        import atexit
        import shutil

        _PRIVATE_DIR.append(Path(tempfile.mkdtemp(prefix="sriovlib-kubeconfig-")))
        atexit.register(shutil.rmtree, _PRIVATE_DIR[0], True)
    fd, name = tempfile.mkstemp(prefix=f"{what}-", dir=_PRIVATE_DIR[0])
    with os.fdopen(fd, "wb") as f:
        f.write(content)
    return Path(name)


class KubeClient:
    """JSON requests to the API server of *config* (thread-safe; one connection each).

    Args:
        config: Where and who.
        timeout: Seconds each request may take.
    """

    def __init__(self, config: KubeConfig, *, timeout: float = DEFAULT_TIMEOUT) -> None:
        self.config = config
        self.timeout = timeout
        url = urllib.parse.urlsplit(config.server)
        self._https = url.scheme == "https"
        self._host = url.hostname or ""
        self._port = url.port or (443 if self._https else 80)
        self._prefix = url.path.rstrip("/")
        self._lock = threading.Lock()
        self._token: tuple[float, str | None] | None = None
        self._ssl: ssl.SSLContext | None = self._context() if self._https else None

    def __repr__(self) -> str:
        return f"KubeClient({self.config.server!r})"

    def _context(self) -> ssl.SSLContext:
        cfg = self.config
        try:
            if cfg.insecure:
                context = ssl.SSLContext(ssl.PROTOCOL_TLS_CLIENT)
                context.check_hostname = False
                context.verify_mode = ssl.CERT_NONE
            else:
                cafile = str(cfg.ca_file) if cfg.ca_file is not None else None
                context = ssl.create_default_context(cafile=cafile)
            if cfg.cert_file is not None and cfg.key_file is not None:
                context.load_cert_chain(str(cfg.cert_file), str(cfg.key_file))
        except (OSError, ssl.SSLError) as e:
            raise KubeConfigError(
                f"{cfg.source or cfg.server}: cannot load the TLS files: {_reason(e)}"
            ) from None
        return context

    def _bearer(self) -> str | None:
        cfg = self.config
        if cfg.token is not None:
            return cfg.token
        if cfg.token_file is None:
            return None
        with self._lock:
            now = time.monotonic()
            if self._token is None or now - self._token[0] > TOKEN_REREAD:
                try:
                    self._token = (now, cfg.token_file.read_text().strip())
                except OSError as e:
                    raise KubeConfigError(
                        f"cannot read the token {cfg.token_file}: {e.strerror or e}"
                    ) from None
            return self._token[1]

    # -- requests -------------------------------------------------------------------------

    def get(self, path: str, query: Mapping[str, str] | None = None) -> dict[str, Any]:
        """GET *path* (``/api/v1/nodes/n1``); the object."""
        return self.request("GET", path, query=query)

    def create(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """POST *body* to the collection *path*; the object as stored."""
        return self.request("POST", path, body)

    def replace(self, path: str, body: Mapping[str, Any]) -> dict[str, Any]:
        """PUT *body* at *path* (its ``metadata.resourceVersion`` guards the update)."""
        return self.request("PUT", path, body)

    def delete(self, path: str) -> dict[str, Any]:
        """DELETE *path*; the server's answer (the object or a Status)."""
        return self.request("DELETE", path)

    def request(
        self,
        method: str,
        path: str,
        body: Mapping[str, Any] | None = None,
        *,
        query: Mapping[str, str] | None = None,
    ) -> dict[str, Any]:
        """One request; the JSON answer.

        Raises:
            KubeApiError: the subclass for the status (see the module documentation).
        """
        target = self._prefix + path
        if query:
            target += "?" + urllib.parse.urlencode(query)
        what = f"{method} {path}"
        headers = {"Accept": "application/json", "User-Agent": "sriovlib-agent"}
        token = self._bearer()
        if token:
            headers["Authorization"] = f"Bearer {token}"
        payload = None
        if body is not None:
            payload = json.dumps(body).encode()
            headers["Content-Type"] = "application/json"
        connection: http.client.HTTPConnection
        if self._https:
            connection = http.client.HTTPSConnection(
                self._host, self._port, timeout=self.timeout, context=self._ssl
            )
        else:
            connection = http.client.HTTPConnection(self._host, self._port, timeout=self.timeout)
        try:
            connection.request(method, target, body=payload, headers=headers)
            response = connection.getresponse()
            status, raw = response.status, response.read()
        except (OSError, http.client.HTTPException) as e:
            raise Unreachable(
                f"{what}: cannot reach the API server at {self.config.server}: {_reason(e)}"
            ) from None
        finally:
            connection.close()
        try:
            data = json.loads(raw) if raw else {}
        except ValueError:
            data = None
        if 200 <= status < 300:
            if not isinstance(data, dict):
                raise KubeApiError(f"{what}: the answer is not a JSON object", status)
            return data
        raise _error(what, status, data, raw)


def _error(what: str, status: int, data: object, raw: bytes) -> KubeApiError:
    reason = message = None
    if isinstance(data, dict) and data.get("kind") == "Status":
        reason = data.get("reason") if isinstance(data.get("reason"), str) else None
        message = data.get("message") if isinstance(data.get("message"), str) else None
    if not message:
        message = raw.decode(errors="replace").strip() or http.client.responses.get(status, "")
    text = " ".join(message.split())[:500]
    cls = _BY_STATUS.get(status, KubeApiError)
    if status == 409 and reason == "AlreadyExists":
        cls = AlreadyExists
    return cls(f"{what}: {status} {reason or http.client.responses.get(status, '')}: {text}",
               status, reason)  # fmt: skip


def _reason(error: BaseException) -> str:
    if isinstance(error, TimeoutError):
        return "timed out"
    if isinstance(error, ssl.SSLCertVerificationError):
        return f"TLS: certificate verify failed ({error.verify_message})"
    if isinstance(error, OSError) and error.strerror:
        return error.strerror
    text = " ".join(str(error).split())
    return text or type(error).__name__
