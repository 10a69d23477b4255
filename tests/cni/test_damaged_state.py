"""DEL with damaged state: an allocation record or a finished-attachment entry garbled
field by field, truncated at every length, replaced by a directory or a symlink. DEL
never reports success while the VF is still in the pod or still carries the pod's
settings: it restores from what is readable, or brings the VF home in safe defaults, or
fails and keeps the record."""

from __future__ import annotations

import json
import shutil
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest

from sriovlib.allocation import Owner
from sriovlib.models import ZERO_MAC, VfState

from .conftest import Node

POD_SETTINGS = {"vlan": 7, "vlanQoS": 3, "trust": "on", "spoofchk": "off", "max_tx_rate": 50}
#: What a VF looks like after a DEL that had to reset it (the fake mlx5 reports every
#: setting): the safe defaults of sriovlib.host.attach.SAFE_DEFAULTS.
SAFE = VfState(index=0, mac=ZERO_MAC, spoofchk=True, trust=False, query_rss=False)


def add(node: Node, index: int = 0) -> None:
    status, result = node.invoke("ADD", node.conf(index, mac="02:00:00:00:07:07", **POD_SETTINGS))
    assert 0 == status, result


def record_path(node: Node) -> Path:
    (path,) = (node.tmp / "state/allocations").glob("*@*.json")
    return path


def entry_path(node: Node) -> Path:
    (path,) = (node.tmp / "state/cni/attachments").glob("*.json")
    return path


def leaves(data: Any, path: tuple[Any, ...] = ()) -> Iterator[tuple[Any, ...]]:
    """Every path to a leaf of a JSON document."""
    if isinstance(data, dict):
        for key, value in data.items():
            yield from leaves(value, (*path, key))
    elif isinstance(data, list):
        for i, value in enumerate(data):
            yield from leaves(value, (*path, i))
    else:
        yield path


def garbled(data: Any, path: tuple[Any, ...], value: Any) -> Any:
    copy = json.loads(json.dumps(data))
    target = copy
    for key in path[:-1]:
        target = target[key]
    target[path[-1]] = value
    return copy


def del_is_honest(node: Node, index: int = 0) -> tuple[int, Any]:
    """Run DEL and check the promise: success means the VF is home without the pod's
    settings and its record is gone; failure means the record is kept."""
    status, error = node.invoke("DEL", node.conf(index))
    records = list((node.tmp / "state/allocations").glob("*@*"))
    if status == 0:
        assert () == node.kernel.link_names(node.pod), "DEL succeeded with the VF in the pod"
        state = node.state(index)
        assert (0, 0, False, True, 0) == (
            state.vlan,
            state.qos,
            state.trust,
            state.spoofchk,
            state.max_tx_rate,
        ), f"DEL succeeded with pod settings left: {state}"
        assert [] == records
    else:
        assert error["code"] in (106, 107), error
        assert records, "DEL failed and dropped the record"
    return status, error


def read_at_every_length(node: Node, path: Path, data: bytes) -> None:
    """*path* cut at every length of *data*: the service reads VF 0's attachment as
    damaged (no snapshot, the VF still named) or as whole, never anything in between
    and never an exception."""
    owner = Owner("c1", "net1", node.pod)
    whole = node.ctx.service.find("sriov-net", owner)
    assert whole is not None
    assert whole.snapshot is not None
    for length in range(len(data)):
        path.write_bytes(data[:length])
        held = node.ctx.service.find("sriov-net", owner)
        assert held is not None, length
        assert node.vf(0) == held.vf, length
        assert held.snapshot in (None, whole.snapshot), length


def reset_node(node: Node) -> None:
    """Put the fake node back to pristine after a case (for the loops below)."""
    if node.kernel.link_names(node.pod):
        assert 0 == node.invoke("DEL", node.conf(0))[0]
    shutil.rmtree(node.tmp / "state", ignore_errors=True)


class TestRecordDamaged:
    def test_every_record_field_garbled(self, node: Node) -> None:
        """Each leaf of the allocation record replaced by a wrong type or a wrong value,
        the finished entry gone: DEL keeps its promise every time."""
        add(node)
        original = json.loads(record_path(node).read_text())
        reset_node(node)
        paths = list(leaves(original))
        assert len(paths) > 20  # the snapshot's fields are in there
        outcomes = set()
        for path in paths:
            for value in (None, ["x"], "\x00garbage", -1):
                add(node)
                record = record_path(node)
                record.write_text(json.dumps(garbled(original, path, value)))
                entry_path(node).unlink()
                outcomes.add(del_is_honest(node)[0])
                reset_node(node)
        assert 0 in outcomes

    def test_record_truncated_at_every_length(self, node: Node) -> None:
        """The record cut at every length: the service reads it as damaged (no
        snapshot, the VF from the file name) or as whole, never anything in between
        and never an exception; and DEL, run end to end at every 50th length and the
        edges, keeps its promise."""
        add(node)
        record = record_path(node)
        data = record.read_bytes()
        entry_path(node).unlink()
        read_at_every_length(node, record, data)
        reset_node(node)
        for length in sorted({0, 1, len(data) - 1, *range(0, len(data), 50)}):
            add(node)
            record_path(node).write_bytes(data[:length])
            entry_path(node).unlink()
            status, error = del_is_honest(node)
            assert 0 == status, (length, error)  # the fake VF can always be reset
            reset_node(node)

    @pytest.mark.parametrize("replacement", ["directory", "symlink"])
    def test_record_replaced(self, node: Node, replacement: str) -> None:
        add(node)
        record = record_path(node)
        copy = node.tmp / "copy.json"
        shutil.copy(record, copy)
        record.unlink()
        if replacement == "directory":
            record.mkdir()
            (record / "inside").write_text("x")
        else:
            record.symlink_to(copy)
        entry_path(node).unlink()
        assert 0 == del_is_honest(node)[0]
        assert not record.exists()
        assert not record.is_symlink()
        assert copy.exists()  # the symlink was removed, not what it pointed to

    def test_safe_defaults_when_the_snapshot_is_lost(self, node: Node) -> None:
        """Without a readable snapshot the VF comes home with its admin MAC cleared,
        VLAN 0, spoofchk on, trust off, no rate limits."""
        add(node)
        data = json.loads(record_path(node).read_text())
        data["original_state"]["snapshot"] = "lost"
        record_path(node).write_text(json.dumps(data))
        entry_path(node).unlink()
        assert 0 == del_is_honest(node)[0]
        assert SAFE == node.state(0)
        assert [n for n in node.kernel.link_names() if n.startswith("sriovvf")]

    def test_reset_failing_keeps_the_record(self, node: Node) -> None:
        """When even the reset fails (the driver refuses the VLAN), DEL answers 107 and
        keeps the record; a later DEL, once the driver cooperates, finishes."""
        add(node)
        record_path(node).write_text("{")
        entry_path(node).unlink()
        node.kernel.fail("set_vf", 5, match="vlan", times=99)
        status, error = del_is_honest(node)
        assert (1, 107) == (status, error["code"])
        node.kernel._failures.clear()
        assert 0 == del_is_honest(node)[0]

    def test_dpdk_vf_with_lost_record(self, node: Node) -> None:
        """A vfio-pci VF (no netdev) whose record is unreadable: its settings reset."""
        add(node, 3)
        record_path(node).write_text("not json")
        entry_path(node).unlink()
        assert 0 == del_is_honest(node, 3)[0]


class TestEntryDamaged:
    def test_every_entry_field_garbled_with_the_snapshot_lost(self, node: Node) -> None:
        """The record's snapshot lost, and each leaf of the finished entry garbled: the
        entry is used where it is whole, else the VF is reset; DEL keeps its promise."""
        add(node)
        entry = json.loads(entry_path(node).read_text())
        reset_node(node)
        for path in leaves(entry):
            for value in (None, ["x"], "\x00garbage"):
                add(node)
                record = json.loads(record_path(node).read_text())
                record["original_state"]["snapshot"] = None
                record_path(node).write_text(json.dumps(record))
                entry_path(node).write_text(json.dumps(garbled(entry, path, value)))
                del_is_honest(node)
                reset_node(node)

    def test_entry_truncated_at_every_length_with_the_record_damaged(self, node: Node) -> None:
        """The finished entry cut at every length, the record damaged: read as unusable
        or whole, never an exception; DEL end to end at every 50th length and the edges."""
        add(node)
        data = entry_path(node).read_bytes()
        record_path(node).write_text("[]")
        read_at_every_length(node, entry_path(node), data)
        reset_node(node)
        for length in sorted({0, 1, len(data) - 1, *range(0, len(data), 50)}):
            add(node)
            record_path(node).write_text("[]")
            entry_path(node).write_bytes(data[:length])
            assert 0 == del_is_honest(node)[0], length
            reset_node(node)
