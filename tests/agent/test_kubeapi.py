"""The Kubernetes API client's credentials: kubeconfig files (as kubectl reads them) and
the in-cluster service account, and the one-line errors when they are not usable. The
client's requests and the server's errors are tested against a real kube-apiserver in
tests/kube/test_dra_kube.py."""

from __future__ import annotations

import base64
import json
from pathlib import Path

import pytest

from sriovlib.agent.kubeapi import KubeClient, KubeConfigError, in_cluster, load_kubeconfig


def kubeconfig(tmp_path: Path, user: dict[str, object], cluster: dict[str, object]) -> Path:
    path = tmp_path / "kubeconfig"
    path.write_text(
        json.dumps(
            {
                "apiVersion": "v1",
                "kind": "Config",
                "clusters": [{"name": "c", "cluster": cluster}],
                "users": [{"name": "u", "user": user}],
                "contexts": [
                    {"name": "ctx", "context": {"cluster": "c", "user": "u"}},
                    {"name": "other", "context": {"cluster": "missing", "user": "u"}},
                ],
                "current-context": "ctx",
            }
        )
    )
    return path


def test_a_token_kubeconfig_as_the_kube_tier_writes_it(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path,
        {"token": "abc"},
        {"server": "https://127.0.0.1:6443/", "insecure-skip-tls-verify": True},
    )
    config = load_kubeconfig(path)
    assert config.server == "https://127.0.0.1:6443"
    assert config.token == "abc"  # noqa: S105 - a test value
    assert config.insecure
    assert config.source == str(path)
    assert "abc" not in repr(config)  # the token stays out of logs


def test_client_certificates_and_ca_as_files_or_inline_data(tmp_path: Path) -> None:
    """Paths are relative to the kubeconfig (as kubectl reads them); ``*-data`` is
    written to private files."""
    (tmp_path / "ca.crt").write_text("ca")
    data = base64.b64encode(b"PEM KEY").decode()
    path = kubeconfig(
        tmp_path,
        {"client-certificate": "client.crt", "client-key-data": data},
        {"server": "https://10.0.0.1:6443", "certificate-authority": "ca.crt"},
    )
    config = load_kubeconfig(path)
    assert config.ca_file == tmp_path / "ca.crt"
    assert config.cert_file == tmp_path / "client.crt"
    assert config.key_file is not None
    assert config.key_file.read_bytes() == b"PEM KEY"
    assert config.key_file.stat().st_mode & 0o077 == 0
    assert config.token is None
    assert not config.insecure


@pytest.mark.parametrize(
    ("user", "cluster", "context", "message"),
    [
        ({}, {}, None, "cluster 'c' has no server"),
        ({"client-certificate": "c.crt"}, {"server": "https://h"}, None, "without the other"),
        ({"client-key-data": "!!"}, {"server": "https://h"}, None, "client-key-data is not base64"),
        ({}, {"server": "https://h"}, "other", "no cluster 'missing' in clusters"),
        ({}, {"server": "https://h"}, "nope", "no context 'nope' in contexts"),
    ],
)
def test_an_unusable_kubeconfig_is_one_line_naming_the_file(
    tmp_path: Path,
    user: dict[str, object],
    cluster: dict[str, object],
    context: str | None,
    message: str,
) -> None:
    path = kubeconfig(tmp_path, user, cluster)
    with pytest.raises(KubeConfigError, match=f"^kubeconfig {path}: .*{message}") as error:
        load_kubeconfig(path, context)
    assert "\n" not in str(error.value)


def test_a_missing_or_broken_kubeconfig(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="No such file or directory"):
        load_kubeconfig(tmp_path / "none")
    (tmp_path / "bad").write_text("{: [")
    with pytest.raises(KubeConfigError, match="is not YAML"):
        load_kubeconfig(tmp_path / "bad")


def test_missing_tls_files_are_a_config_error_not_a_traceback(tmp_path: Path) -> None:
    path = kubeconfig(
        tmp_path, {"token": "t"}, {"server": "https://h:1", "certificate-authority": "none.crt"}
    )
    with pytest.raises(KubeConfigError, match="cannot load the TLS files"):
        KubeClient(load_kubeconfig(path))


def test_in_cluster_needs_the_service_environment_and_account(tmp_path: Path) -> None:
    with pytest.raises(KubeConfigError, match="not in a pod: KUBERNETES_SERVICE_HOST"):
        in_cluster({}, tmp_path)
    env = {"KUBERNETES_SERVICE_HOST": "fd00::1", "KUBERNETES_SERVICE_PORT": "443"}
    with pytest.raises(KubeConfigError, match=f"{tmp_path / 'token'} is missing"):
        in_cluster(env, tmp_path)
    (tmp_path / "token").write_text("t\n")
    (tmp_path / "ca.crt").write_text("ca")
    config = in_cluster(env, tmp_path)
    assert config.server == "https://[fd00::1]:443"
    assert config.token_file == tmp_path / "token"
    assert config.ca_file == tmp_path / "ca.crt"
