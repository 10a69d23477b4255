"""deploy/, checked offline: every manifest against the Kubernetes API schemas of the
version the kube tier runs (tests/data/k8s-schemas.json, from scripts/gen-k8s-schemas),
and what is ours in them against sriovlib itself (the pool config, the NAD's netconf,
the agent's arguments). The kube tier has the real API server judge them too
(tests/kube/test_deploy_kube.py)."""

from __future__ import annotations

import copy
import json
import os
import shutil
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest
import yaml

from sriovlib.cli import build_parser
from sriovlib.cni.fastpath import DEFAULT_SOCKET
from sriovlib.cni.netconf import parse_netconf
from sriovlib.cni.protocol import read_environment
from sriovlib.pools import parse_config
from sriovlib.testing.kubebuild import KUBERNETES_VERSION

ROOT = Path(__file__).resolve().parents[1]
DEPLOY = ROOT / "deploy"
SCHEMAS = json.loads((ROOT / "tests" / "data" / "k8s-schemas.json").read_text())


def documents(path: Path) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(path.read_text()) if doc is not None]


def manifests() -> list[tuple[str, dict[str, Any]]]:
    found = []
    for path in sorted(DEPLOY.rglob("*.yaml")):
        if path.name == "kustomization.yaml":
            continue
        found += [(str(path.relative_to(DEPLOY)), doc) for doc in documents(path)]
    return found


def by_kind(kind: str) -> dict[str, Any]:
    (doc,) = [doc for _, doc in manifests() if doc["kind"] == kind]
    return doc


# -- a validator of the OpenAPI v3 subset Kubernetes' schemas use -------------------------


_TYPES = {
    "string": lambda v: isinstance(v, str),
    "integer": lambda v: isinstance(v, int) and not isinstance(v, bool),
    "number": lambda v: isinstance(v, int | float) and not isinstance(v, bool),
    "boolean": lambda v: isinstance(v, bool),
    "array": lambda v: isinstance(v, list),
    "object": lambda v: isinstance(v, dict),
}


def problems(value: Any, schema: dict[str, Any], where: str = "") -> list[str]:  # noqa: PLR0911
    """What in *value* does not fit *schema*: unknown fields, wrong types, missing
    required fields (``$ref``, ``allOf``, ``oneOf``, maps and int-or-string resolved)."""
    if "$ref" in schema:
        return problems(value, SCHEMAS["schemas"][schema["$ref"].rsplit("/", 1)[-1]], where)
    if "allOf" in schema:
        return [p for part in schema["allOf"] for p in problems(value, part, where)]
    if "oneOf" in schema:
        if any(not problems(value, part, where) for part in schema["oneOf"]):
            return []
        return [f"{where or '.'}: {value!r} is none of {schema['oneOf']}"]
    if schema.get("x-kubernetes-preserve-unknown-fields"):
        return []
    kind = schema.get("type")
    if kind is not None and not _TYPES[kind](value):
        return [f"{where or '.'}: {value!r} is not a {kind}"]
    if kind == "array":
        return [
            p
            for i, v in enumerate(value)
            for p in problems(v, schema.get("items", {}), f"{where}[{i}]")
        ]
    if isinstance(value, dict) and ("properties" in schema or "additionalProperties" in schema):
        return _object_problems(value, schema, where)
    return []


def _object_problems(value: dict[str, Any], schema: dict[str, Any], where: str) -> list[str]:
    properties = schema.get("properties", {})
    extra = schema.get("additionalProperties")
    found = []
    for key, item in value.items():
        if key in properties:
            found += problems(item, properties[key], f"{where}.{key}")
        elif isinstance(extra, dict):
            found += problems(item, extra, f"{where}.{key}")
        else:
            found.append(f"{where}.{key}: unknown field")
    return found + [f"{where}.{k}: required" for k in schema.get("required", ()) if k not in value]


def kind_schema(kind: str) -> dict[str, Any]:
    return {"$ref": f"#/components/schemas/{SCHEMAS['kinds'][kind]}"}


def test_the_validator_catches_what_the_api_server_refuses() -> None:
    """It is no validator that passes everything: a typo, a wrong type, a missing
    required field, a bad int-or-string, each found."""
    daemonset = by_kind("DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    cases = [
        {**daemonset, "spce": {}},
        {**daemonset, "spec": {**daemonset["spec"], "selector": "app"}},
        {**daemonset, "spec": {k: v for k, v in daemonset["spec"].items() if k != "selector"}},
        {
            **daemonset,
            "spec": {**daemonset["spec"], "template": {"spec": {**spec, "hostPID": "yes"}}},
        },
        {
            **daemonset,
            "spec": {
                **daemonset["spec"],
                "updateStrategy": {"rollingUpdate": {"maxUnavailable": {"n": 1}}},
            },
        },
    ]
    for case in cases:
        assert problems(case, kind_schema("DaemonSet")), case


def test_the_schemas_are_of_the_tiers_kubernetes() -> None:
    assert SCHEMAS["kubernetes"] == KUBERNETES_VERSION


@pytest.mark.parametrize(
    ("path", "doc"), manifests(), ids=lambda v: v if isinstance(v, str) else ""
)
def test_every_manifest_fits_the_api(path: str, doc: dict[str, Any]) -> None:
    if doc["kind"] == "NetworkAttachmentDefinition":
        assert (doc["apiVersion"], set(doc)) == (
            "k8s.cni.cncf.io/v1",
            {"apiVersion", "kind", "metadata", "spec"},
        )
        assert set(doc["spec"]) == {"config"}
        assert isinstance(doc["spec"]["config"], str)
        return
    assert doc["kind"] in SCHEMAS["kinds"], f"{path}: no schema for {doc['kind']}"
    assert [] == problems(doc, kind_schema(doc["kind"]))


def test_the_kustomization_has_every_manifest_but_the_examples() -> None:
    kustomization = documents(DEPLOY / "kustomization.yaml")[0]
    listed = set(kustomization["resources"])
    assert listed == {p.name for p in DEPLOY.glob("*.yaml")} - {"kustomization.yaml"}
    assert kustomization["namespace"] == by_kind("Namespace")["metadata"]["name"]


# -- what is sriovlib's in them ---------------------------------------------------------------


def test_the_pool_config_is_a_strict_config() -> None:
    text = by_kind("ConfigMap")["data"]["config.json"]
    config = parse_config(text, compat=False, source="deploy/configmap.yaml")
    assert ["sriov_netdevice"] == [pool.resource_name for pool in config.pools]
    assert [] == list(config.warnings)


def test_the_nad_config_is_a_netconf_the_plugin_takes() -> None:
    nad = by_kind("NetworkAttachmentDefinition")
    conf = json.loads(nad["spec"]["config"])
    conf["deviceID"] = "0000:03:00.1"  # what Multus adds from the device plugin's grant
    env = read_environment({"CNI_COMMAND": "ADD", "CNI_CONTAINERID": "c", "CNI_NETNS": "/x",
                            "CNI_IFNAME": "net1", "CNI_PATH": "/opt/cni/bin"})  # fmt: skip
    parsed = parse_netconf(conf, env, conf["cniVersion"])
    assert parsed.ignored == ()
    resource = nad["metadata"]["annotations"]["k8s.v1.cni.cncf.io/resourceName"]
    pool = by_kind("ConfigMap")["data"]["config.json"]
    assert resource == "intel.com/" + json.loads(pool)["resourceList"][0]["resourceName"]


def test_the_agent_takes_its_arguments_and_probes() -> None:
    container = by_kind("DaemonSet")["spec"]["template"]["spec"]["containers"][0]
    assert container["command"][:1] == ["sriovlib"]
    parser = build_parser()
    args = parser.parse_args([*container["command"][1:], *container["args"]])
    assert args.config == "/etc/pcidp/config.json"
    mounts = {m["mountPath"] for m in container["volumeMounts"]}
    assert "/etc/pcidp" in mounts
    assert {str(args.device_plugin_dir), str(args.state_dir)} <= mounts
    assert str(Path(DEFAULT_SOCKET).parent) in mounts  # the fast path's socket
    # the fast path runs IPAM plugins in the agent: their state must be the node's
    assert {"/opt/cni/bin", "/var/lib/cni", "/var/run/netns"} <= mounts
    # the probes ask the agent's metrics endpoint, where it listens by default
    for probe in ("startupProbe", "readinessProbe", "livenessProbe"):
        get = container[probe]["httpGet"]
        assert f"{get['host']}:{get['port']}" == args.metrics_address
        assert get["path"] == "/metrics"
    images = {
        c["image"]
        for c in (*by_kind("DaemonSet")["spec"]["template"]["spec"]["initContainers"], container)
    }
    assert len(images) == 1


def test_the_committed_schemas_are_current(tmp_path: Path) -> None:
    """What scripts/gen-k8s-schemas writes from the kube tier's Kubernetes source."""
    from sriovlib.testing.kubebuild import cache_dir

    source = cache_dir() / "go" / "pkg" / "mod" / f"k8s.io/kubernetes@{KUBERNETES_VERSION}"
    if not (source / "api" / "openapi-spec" / "v3").is_dir():
        pytest.skip(f"no Kubernetes {KUBERNETES_VERSION} source in the module cache (kube tier)")
    out = tmp_path / "schemas.json"
    subprocess.run(
        [sys.executable, str(ROOT / "scripts" / "gen-k8s-schemas"), str(out)], check=True
    )
    assert out.read_text() == (ROOT / "tests" / "data" / "k8s-schemas.json").read_text()


# -- deploy/dra: the DRA Component over the default install -----------------------------------

DRA = DEPLOY / "dra"
_CLUSTER_SCOPED = {"Namespace", "ClusterRole", "ClusterRoleBinding"}


def _json_patch(doc: dict[str, Any], ops: list[dict[str, Any]]) -> None:
    """Apply RFC 6902 ``add`` and ``replace`` operations to *doc* in place."""
    for op in ops:
        *parents, last = op["path"].lstrip("/").split("/")
        node: Any = doc
        for part in parents:
            node = node[int(part)] if isinstance(node, list) else node[part]
        value = copy.deepcopy(op["value"])
        if op["op"] == "replace":
            assert (int(last) < len(node)) if isinstance(node, list) else last in node, op
        else:
            assert op["op"] == "add", op
        if isinstance(node, list):
            if last == "-":
                node.append(value)
            elif op["op"] == "add":
                node.insert(int(last), value)
            else:
                node[int(last)] = value
        else:
            node[last] = value


def _matches(doc: dict[str, Any], target: dict[str, Any]) -> bool:
    group, _, version = doc["apiVersion"].rpartition("/")
    return (
        doc["kind"] == target.get("kind", doc["kind"])
        and doc["metadata"]["name"] == target.get("name", doc["metadata"]["name"])
        and group == target.get("group", group)
        and version == target.get("version", version)
    )


def rendered_dra() -> list[dict[str, Any]]:
    """What ``kustomize build`` makes of a kustomization with ``resources: [deploy]`` and
    ``components: [deploy/dra]``, built here from the files (the base's resources in the
    base's namespace, the Component's resources, its JSON patches applied), so the
    checks need no kustomize; one test compares it with kubectl's when there is one."""
    base = documents(DEPLOY / "kustomization.yaml")[0]
    objects = []
    for name in base["resources"]:
        for doc in documents(DEPLOY / name):
            if doc["kind"] not in _CLUSTER_SCOPED:
                doc["metadata"]["namespace"] = base["namespace"]
            objects.append(doc)
    component = documents(DRA / "kustomization.yaml")[0]
    assert (component["apiVersion"], component["kind"]) == (
        "kustomize.config.k8s.io/v1alpha1",
        "Component",
    )
    assert set(component) <= {"apiVersion", "kind", "resources", "patches"}
    for name in component["resources"]:
        objects += documents(DRA / name)
    for patch in component["patches"]:
        targets = [doc for doc in objects if _matches(doc, patch["target"])]
        assert len(targets) == 1, patch["target"]
        _json_patch(targets[0], yaml.safe_load(patch["patch"]))
    return objects


def dra_kind(kind: str) -> dict[str, Any]:
    (doc,) = [doc for doc in rendered_dra() if doc["kind"] == kind]
    return doc


def test_the_dra_component_renders_as_kubectl_kustomize_does(tmp_path: Path) -> None:
    kubectl = shutil.which("kubectl")
    if kubectl is None:
        pytest.skip("no kubectl: the rendering is checked as built by the test only")
    (tmp_path / "kustomization.yaml").write_text(
        yaml.safe_dump(
            {
                "apiVersion": "kustomize.config.k8s.io/v1beta1",
                "kind": "Kustomization",
                "resources": [os.path.relpath(DEPLOY, tmp_path)],
                "components": [os.path.relpath(DRA, tmp_path)],
            }
        )
    )
    out = subprocess.run(
        [kubectl, "kustomize", str(tmp_path)],
        check=False,
        capture_output=True,
        text=True,
        timeout=60,
    )
    assert out.returncode == 0, out.stderr

    def keyed(docs: list[dict[str, Any]]) -> dict[tuple[str, str], dict[str, Any]]:
        return {(d["kind"], d["metadata"]["name"]): d for d in docs}

    assert keyed(list(yaml.safe_load_all(out.stdout))) == keyed(rendered_dra())


@pytest.mark.parametrize(
    "doc", rendered_dra(), ids=lambda d: f"{d['kind']}/{d['metadata']['name']}"
)
def test_every_object_of_the_dra_install_fits_the_api(doc: dict[str, Any]) -> None:
    assert [] == problems(doc, kind_schema(doc["kind"]))


def test_the_dra_agent_takes_its_arguments_mounts_and_token() -> None:
    daemonset = dra_kind("DaemonSet")
    spec = daemonset["spec"]["template"]["spec"]
    (container,) = spec["containers"]
    # NODE_NAME from the downward API, expanded by the kubelet in the arguments
    (env,) = container["env"]
    assert env == {"name": "NODE_NAME", "valueFrom": {"fieldRef": {"fieldPath": "spec.nodeName"}}}
    argv = [
        a.replace("$(NODE_NAME)", "node1") for a in (*container["command"][1:], *container["args"])
    ]
    args = build_parser().parse_args(argv)
    assert args.dra
    assert args.node_name == "node1"
    assert args.dra_pools is None  # every pool to DRA: none also a device-plugin resource
    assert args.kubeconfig is None  # the pod's service account
    # the token is mounted (the pod's setting wins over the ServiceAccount's false)
    assert spec["automountServiceAccountToken"] is True
    # the kubelet's directories, the node's own paths
    volumes = {v["name"]: v for v in spec["volumes"]}
    mounts = {m["mountPath"]: volumes[m["name"]] for m in container["volumeMounts"]}
    for path in (args.dra_registry_dir, args.dra_plugins_dir, args.cdi_dir):
        assert mounts[str(path)]["hostPath"]["path"] == str(path), path
    assert str(args.dra_registry_dir) == "/var/lib/kubelet/plugins_registry"
    assert str(args.dra_plugins_dir) == "/var/lib/kubelet/plugins"
    assert str(args.cdi_dir) == "/var/run/cdi"
    # what the default install has, the DRA one keeps
    base = by_kind("DaemonSet")["spec"]["template"]["spec"]
    assert base["containers"][0]["args"] == container["args"][: len(base["containers"][0]["args"])]
    assert {m["mountPath"] for m in base["containers"][0]["volumeMounts"]} < set(mounts)
    # the RBAC is bound to the agent's ServiceAccount in its namespace
    (subject,) = dra_kind("ClusterRoleBinding")["subjects"]
    assert subject == {
        "kind": "ServiceAccount",
        "name": spec["serviceAccountName"],
        "namespace": daemonset["metadata"]["namespace"],
    }
    assert (
        dra_kind("ClusterRoleBinding")["roleRef"]["name"]
        == dra_kind("ClusterRole")["metadata"]["name"]
    )


def test_the_default_install_stays_without_dra() -> None:
    spec = by_kind("DaemonSet")["spec"]["template"]["spec"]
    assert spec["automountServiceAccountToken"] is False
    assert "--dra" not in spec["containers"][0]["args"]
    assert "dra" not in documents(DEPLOY / "kustomization.yaml")[0]["resources"]
