"""deploy/ judged by the real kube-apiserver of the tier (``--dry-run=server``: admission,
defaulting and validation run, nothing is stored). The offline check of the same files is
tests/test_deploy.py."""

from __future__ import annotations

import json
import os
from pathlib import Path

import pytest

from sriovlib.testing.kube import KubeCluster, KubeError
from sriovlib.testing.multus import NAD_CRD

pytestmark = pytest.mark.kube

DEPLOY = Path(__file__).resolve().parents[2] / "deploy"


def test_every_manifest_passes_a_server_side_dry_run(kube_cluster: KubeCluster) -> None:
    """``kubectl apply -k deploy/ --dry-run=server``: every object is accepted as it
    would be created (the namespace exists for real first: a dry run creates nothing,
    so the namespaced objects would otherwise find no namespace)."""
    kube_cluster.kubectl("create", "namespace", "sriovlib", check=False)
    out = kube_cluster.kubectl("apply", "-k", str(DEPLOY), "--dry-run=server", "-o", "json")
    items = json.loads(out)["items"]
    kinds = sorted((item["kind"], item["metadata"]["name"]) for item in items)
    assert kinds == [
        ("ConfigMap", "sriovlib-config"),
        ("DaemonSet", "sriovlib-agent"),
        ("Namespace", "sriovlib"),
        ("ServiceAccount", "sriovlib-agent"),
    ]
    (daemonset,) = [item for item in items if item["kind"] == "DaemonSet"]
    assert daemonset["metadata"]["namespace"] == "sriovlib"
    spec = daemonset["spec"]["template"]["spec"]
    assert (True, True) == (spec["hostNetwork"], spec["hostPID"])
    assert spec["priorityClassName"] == "system-node-critical"
    with pytest.raises(KubeError):  # and nothing was stored
        kube_cluster.get("daemonset", "sriovlib-agent", "sriovlib")


def test_the_example_nad_passes_a_server_side_dry_run(kube_cluster: KubeCluster) -> None:
    kube_cluster.install_crd(NAD_CRD)
    out = kube_cluster.kubectl(
        "apply", "-f", str(DEPLOY / "examples" / "sriov-net.yaml"), "--dry-run=server", "-o", "json"
    )
    nad = json.loads(out)
    assert nad["kind"] == "NetworkAttachmentDefinition"
    assert json.loads(nad["spec"]["config"])["type"] == "sriov"


def test_the_dra_component_passes_a_server_side_dry_run(
    kube_cluster: KubeCluster, tmp_path: Path
) -> None:
    """deploy/ with the deploy/dra Component, as its comment says to use it: the RBAC
    and the patched DaemonSet are accepted as they would be created."""
    kube_cluster.kubectl("create", "namespace", "sriovlib", check=False)
    (tmp_path / "kustomization.yaml").write_text(
        json.dumps(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(DEPLOY, tmp_path)],
                "components": [os.path.relpath(DEPLOY / "dra", tmp_path)],
            }
        )
    )
    out = kube_cluster.kubectl("apply", "-k", str(tmp_path), "--dry-run=server", "-o", "json")
    items = json.loads(out)["items"]
    kinds = {(item["kind"], item["metadata"]["name"]) for item in items}
    assert {
        ("ClusterRole", "sriovlib-agent-dra"),
        ("ClusterRoleBinding", "sriovlib-agent-dra"),
        ("DaemonSet", "sriovlib-agent"),
    } <= kinds
    (daemonset,) = [item for item in items if item["kind"] == "DaemonSet"]
    (agent,) = [
        c for c in daemonset["spec"]["template"]["spec"]["containers"] if c["name"] == "agent"
    ]
    assert "--dra" in agent["args"]
    with pytest.raises(KubeError):  # and nothing was stored
        kube_cluster.get("clusterrole", "sriovlib-agent-dra")
