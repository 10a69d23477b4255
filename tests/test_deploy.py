"""deploy/, checked offline: every manifest against the Kubernetes API schemas of the
version the kube tier runs (tests/data/k8s-schemas.json, from scripts/gen-k8s-schemas),
and what is ours in them against sriovlib itself (the pool config, the NAD's netconf,
the agent's arguments). The kube tier has the real API server judge them too
(tests/kube/test_deploy_kube.py)."""

from __future__ import annotations

import json
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
