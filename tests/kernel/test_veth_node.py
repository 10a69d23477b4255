"""The testing kit's veth node: pods come and go without their names colliding."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

from sriovlib.testing.cni import VethNode

from .test_attach_release import _REASON

pytestmark = pytest.mark.kernel


def test_a_deleted_pods_name_is_not_reused(tmp_path: Path) -> None:
    """After ``delete_pod``, ``add_pod`` makes a new namespace instead of failing on
    the name of a pod that is still alive."""
    if _REASON is not None:
        pytest.skip(_REASON)
    with VethNode(tmp_path / "root", num_vfs=1) as node:
        first, second = node.add_pod(), node.add_pod()
        node.delete_pod(first)
        third = node.add_pod()
        assert len({first, second, third}) == 3
        assert os.path.exists(second)
        assert os.path.exists(third)
