"""pytest plugin shipped with sriovlib (entry point ``pytest11``).

Fixtures:
    fake_sysfs: an empty :class:`~sriovlib.testing.FakeSysfs` in a temporary directory.
    sriov_vm: a session-wide QEMU VM with an emulated Intel 82576 (real igb driver);
        tests using it skip with a one-line reason where the VM cannot run.
    sriov_vm_clean: the same VM, reset first (no VFs, no namespaces, PFs up).

Markers: ``kernel`` (root, real netlink in throw-away namespaces), ``vm`` (the VM tier),
``client`` (real CNI/kubelet clients) and ``kube`` (a real one-node Kubernetes,
:mod:`sriovlib.testing.kube`).
"""

from __future__ import annotations

from pathlib import Path

import pytest

from sriovlib.testing.builder import FakeSysfs
from sriovlib.testing.vm_fixtures import sriov_vm, sriov_vm_clean

__all__ = ["fake_sysfs", "sriov_vm", "sriov_vm_clean"]

MARKERS = {
    "kernel": "needs root and real netlink in throw-away network namespaces",
    "vm": "runs in a QEMU VM with an emulated SR-IOV NIC (real igb/igbvf driver)",
    "client": "drives an entrypoint through a real client (cnitool, kubelet stand-in)",
    "kube": "runs a real kubelet, kube-apiserver, etcd, containerd and runc (built once)",
}


def pytest_configure(config: pytest.Config) -> None:
    for name, text in MARKERS.items():
        config.addinivalue_line("markers", f"{name}: {text}")


@pytest.fixture
def fake_sysfs(tmp_path: Path) -> FakeSysfs:
    """An empty fake sysfs tree; add NICs with ``add_pf``/``add_nic_model``."""
    return FakeSysfs(tmp_path / "root")
