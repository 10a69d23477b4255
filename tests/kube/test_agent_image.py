"""The agent's container image (deploy/Containerfile, built by sriovlib.testing.image)
in the kube tier's containerd, and its CNI tree run by this machine's python3 as a node's
would be."""

from __future__ import annotations

import gzip
import io
import json
import os
import subprocess
import tarfile
from pathlib import Path
from typing import Any

import pytest

from sriovlib import __version__
from sriovlib.testing.clienttools import ToolUnavailable
from sriovlib.testing.image import ENTRYPOINT, LAUNCHER, agent_image, image_ref
from sriovlib.testing.kube import KubeCluster

pytestmark = pytest.mark.kube

REF = image_ref(__version__)


@pytest.fixture(scope="module")
def archive() -> Path:
    try:
        return agent_image()
    except ToolUnavailable as e:
        pytest.skip(f"agent image: {e}")


@pytest.fixture(scope="module")
def imported(kube_cluster: KubeCluster, archive: Path) -> str:
    """The archive imported into the cluster's containerd exactly as a node's admin would."""
    subprocess.run(
        ["ctr", "-a", str(kube_cluster.containerd_socket), "-n", "k8s.io",
         "images", "import", str(archive)],
        check=True, capture_output=True, text=True, timeout=300,
    )  # fmt: skip
    return REF


def _layers(archive: Path) -> list[tarfile.TarFile]:
    """The image's layers, base first, read from the OCI layout inside *archive*."""
    with tarfile.open(archive) as outer:

        def read(name: str) -> bytes:
            member = outer.extractfile(name)
            assert member is not None, name
            return member.read()

        def blob(digest: str) -> bytes:
            return read("blobs/sha256/" + digest.split(":", 1)[1])

        (entry,) = json.loads(read("index.json"))["manifests"]
        assert entry["annotations"]["org.opencontainers.image.ref.name"] == REF
        manifest = json.loads(blob(entry["digest"]))
        config = json.loads(blob(manifest["config"]["digest"]))
        layers = [blob(layer["digest"]) for layer in manifest["layers"]]
    assert config["config"]["Entrypoint"] == list(ENTRYPOINT)
    return [tarfile.open(fileobj=io.BytesIO(gzip.decompress(data))) for data in layers]


def _pod(cluster: KubeCluster, name: str, **container: Any) -> dict[str, Any]:
    pod = cluster.pod(name, "true")
    (spec,) = pod["spec"]["containers"]
    del spec["command"]
    spec.update(image=REF, imagePullPolicy="Never", **container)
    return pod


def test_archive_imports_into_containerd_and_a_pod_prints_the_version(
    cluster: KubeCluster, imported: str
):
    listed = subprocess.run(
        ["ctr", "-a", str(cluster.containerd_socket), "-n", "k8s.io", "images", "ls", "-q"],
        check=True, capture_output=True, text=True,
    ).stdout.split()  # fmt: skip
    assert imported in listed
    cluster.create(_pod(cluster, "agent-version", command=["sriovlib", "--version"]))
    pod = cluster.wait_pod("agent-version", ("Succeeded", "Failed"), timeout=120)
    log = cluster.pod_log("agent-version")
    assert pod["status"]["phase"] == "Succeeded", log
    assert log.strip() == __version__


def test_the_entrypoint_is_the_agent(cluster: KubeCluster, imported: str):
    cluster.create(_pod(cluster, "agent-help", args=["--help"]))
    pod = cluster.wait_pod("agent-help", ("Succeeded", "Failed"), timeout=120)
    log = cluster.pod_log("agent-help")
    assert pod["status"]["phase"] == "Succeeded", log
    assert log.startswith("usage: sriovlib agent ")


@pytest.fixture(scope="module")
def node_tree(archive: Path, tmp_path_factory: pytest.TempPathFactory) -> Path:
    """What the DaemonSet's init container leaves on a node, in a scratch directory
    standing for the node's /opt: the image's /opt/sriovlib as ``sriovlib/r1`` with
    ``sriovlib/current`` pointing at it, and the launcher as ``cni/bin/sriov`` with the
    node path it names moved into the scratch directory."""
    opt = tmp_path_factory.mktemp("opt")
    image = opt / "image"
    for layer in _layers(archive):
        with layer:
            wanted = [m for m in layer.getmembers() if m.name.startswith("opt/sriovlib/")]
            layer.extractall(image, members=wanted, filter="tar")
    os.rename(image / "opt" / "sriovlib", opt / "sriovlib-r1")
    (opt / "sriovlib").mkdir()
    os.rename(opt / "sriovlib-r1", opt / "sriovlib" / "r1")
    (opt / "sriovlib" / "current").symlink_to("r1")
    launcher = (opt / "sriovlib" / "r1" / LAUNCHER.removeprefix("/opt/sriovlib/")).read_text()
    assert launcher.count("/opt/sriovlib/current/venv") == 2  # the venv, and its message
    (opt / "cni" / "bin").mkdir(parents=True)
    copied = opt / "cni" / "bin" / "sriov"
    copied.write_text(launcher.replace("/opt/sriovlib/", f"{opt}/sriovlib/"))
    copied.chmod(0o755)
    return opt


def _cni(plugin: Path, command: str) -> subprocess.CompletedProcess[str]:
    env = dict(os.environ, CNI_COMMAND=command, CNI_PATH=str(plugin.parent))
    return subprocess.run(
        [str(plugin)], input='{"cniVersion": "1.0.0"}', env=env,
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip


def test_the_copied_venv_runs_the_cni_plugin_with_the_nodes_python(node_tree: Path):
    proc = _cni(node_tree / "cni" / "bin" / "sriov", "VERSION")
    assert proc.returncode == 0, proc.stderr
    reply = json.loads(proc.stdout)
    assert reply["cniVersion"] == "1.0.0"
    assert "1.1.0" in reply["supportedVersions"]


def test_the_launcher_without_sriovlib_on_the_node_answers_a_cni_error(node_tree: Path):
    (node_tree / "sriovlib" / "current").rename(node_tree / "sriovlib" / "previous")
    try:
        proc = _cni(node_tree / "cni" / "bin" / "sriov", "ADD")
    finally:
        (node_tree / "sriovlib" / "previous").rename(node_tree / "sriovlib" / "current")
    assert proc.returncode == 1
    error = json.loads(proc.stdout)
    assert error["code"] == 999
    assert "not installed on this node" in error["msg"]
    assert "python3" in proc.stderr
