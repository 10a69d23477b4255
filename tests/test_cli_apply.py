"""`sriovlib apply -f FILE`: the plan, --dry-run, --json, --force, the pool config, and
one-line errors, on a fake kernel that lives across invocations."""

from __future__ import annotations

import contextlib
import json
from collections.abc import Iterator
from pathlib import Path

import pytest

import sriovlib.cli.apply
from sriovlib.cli import main
from sriovlib.host import Host
from sriovlib.pools import load_config
from sriovlib.testing.fakenetlink import FakeNetlink
from tests.test_policy import ISSUE_POLICY, PF, node, writes


@pytest.fixture
def kernel(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> FakeNetlink:
    """An igb node every `sriovlib apply` of the test runs on."""
    fake = node(tmp_path)

    @contextlib.contextmanager
    def open_host(_args: object) -> Iterator[Host]:
        yield fake.host()

    monkeypatch.setattr(sriovlib.cli.apply, "open_host", open_host)
    return fake


@pytest.fixture
def policy_file(tmp_path: Path) -> Path:
    path = tmp_path / "policy.yaml"
    path.write_text(ISSUE_POLICY)
    return path


def run(capsys: pytest.CaptureFixture[str], *argv: str) -> tuple[int, str, str]:
    status = main(["apply", *argv])
    out, err = capsys.readouterr()
    return status, out, err


class TestApply:
    def test_dry_run_prints_the_plan_and_writes_nothing(
        self, kernel: FakeNetlink, policy_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """--dry-run: every change with its label, the pools, and no write at all."""
        before = writes(kernel)
        status, out, _ = run(capsys, "-f", str(policy_file), "--dry-run")
        assert 0 == status
        assert "enp1s0f0 (0000:01:00.0), igb plugin, policies pool-a, pool-b" in out
        assert "PF    sriov_numvfs 0 -> 4" in out
        assert "VF 2  driver (new VF) -> vfio-pci" in out
        assert "[live]" in out
        assert "pool poolB: enp1s0f0#2-3 (vfio-pci)" in out
        assert "dry run: nothing changed" in out
        assert before == writes(kernel)

    def test_apply_json_then_nothing_to_do(
        self,
        kernel: FakeNetlink,
        policy_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """--json reports the plan and what was applied; the pool config is written;
        the second run applies nothing, writes nothing, keeps the file."""
        pools = tmp_path / "config.json"
        argv = ("-f", str(policy_file), "--json", "--pool-config", str(pools))
        status, out, err = run(capsys, *argv)
        report = json.loads(out)
        assert (0, True) == (status, report["pool_config_written"])
        assert 6 == len(report["applied"])
        assert "waiting for the VFs" in err
        assert ["poolA", "poolB"] == [p.resource_name for p in load_config(pools).pools]
        stamp = pools.stat().st_mtime_ns
        after = writes(kernel)

        status, out, _ = run(capsys, *argv)
        report = json.loads(out)
        assert (0, [], False) == (status, report["applied"], report["pool_config_written"])
        assert after == writes(kernel)
        assert stamp == pools.stat().st_mtime_ns
        assert all(not pf["changes"] for pf in report["plan"]["pfs"])

    def test_human_second_run(
        self, kernel: FakeNetlink, policy_file: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """The human output of an applied node says there is nothing to do."""
        assert 0 == run(capsys, "-f", str(policy_file))[0]
        status, out, _ = run(capsys, "-f", str(policy_file))
        assert 0 == status
        assert "no changes" in out
        assert "nothing to do" in out

    def test_disruptive_change_refused_then_forced(
        self,
        kernel: FakeNetlink,
        policy_file: Path,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
    ) -> None:
        """A numVfs change while a VF is in a pod: one error line, exit 1, nothing
        written; --force applies it."""
        run(capsys, "-f", str(policy_file))
        host = kernel.host()
        vf0 = host.vfs(PF)[0]
        assert vf0.netdev is not None
        host.netlink.move_link(host.link(vf0.netdev).index, "net1", target=kernel.add_netns("p"))
        changed = tmp_path / "changed.yaml"
        changed.write_text(ISSUE_POLICY.replace("numVfs: 4", "numVfs: 6"))
        before = writes(kernel)
        status, out, err = run(capsys, "-f", str(changed))
        assert 1 == status
        assert 1 == len(err.strip().splitlines())
        assert "in use" in err
        assert "--force" in err
        assert "VFs in use: 0 (a disruptive change needs --force)" in out
        assert before == writes(kernel)
        assert 0 == run(capsys, "-f", str(changed), "--force")[0]
        assert 6 == len(kernel.host().vfs(PF))

    @pytest.mark.parametrize(
        ("text", "message"),
        [
            ("policies: [{name: a}]\n", "resourceName is required"),
            (ISSUE_POLICY.replace("mtu:", "mut:"), "unknown field 'mut' (did you mean 'mtu'?)"),
            ("policies: [\n", "invalid YAML"),
        ],
    )
    def test_bad_file_is_one_line(
        self,
        kernel: FakeNetlink,
        tmp_path: Path,
        capsys: pytest.CaptureFixture[str],
        text: str,
        message: str,
    ) -> None:
        """A bad policy file: one error line, no traceback, nothing written."""
        path = tmp_path / "bad.yaml"
        path.write_text(text)
        before = writes(kernel)
        status, out, err = run(capsys, "-f", str(path))
        assert 1 == status
        assert [f"sriovlib apply: error: {err.split('error: ', 1)[1].strip()}"] == (
            err.strip().splitlines()
        )
        assert message in err
        assert "Traceback" not in out + err
        assert before == writes(kernel)

    def test_missing_file(self, kernel: FakeNetlink, capsys: pytest.CaptureFixture[str]) -> None:
        """A file that is not there: exit 2, one line."""
        status, _, err = run(capsys, "-f", "/nonexistent/policy.yaml")
        assert 2 == status
        assert 1 == len(err.strip().splitlines())

    def test_warning_for_a_selector_matching_nothing(
        self, kernel: FakeNetlink, tmp_path: Path, capsys: pytest.CaptureFixture[str]
    ) -> None:
        """A policy for another node's PF is a warning, and nothing changes."""
        path = tmp_path / "other.yaml"
        path.write_text(ISSUE_POLICY.replace(PF, "ens9f0"))
        status, out, err = run(capsys, "-f", str(path))
        assert 0 == status
        assert "warning: policy 'pool-a': its nicSelector matches no PF" in err
        assert "nothing to do" in out


def test_example_node(tmp_path: Path, capsys: pytest.CaptureFixture[str]) -> None:
    """On a built-in example node (no monkeypatching): plan and apply work end to end."""
    path = tmp_path / "p.yaml"
    path.write_text(ISSUE_POLICY.replace(PF, "enp4s0f0"))
    status, out, _ = run(capsys, "-f", str(path), "--example", "ixgbe", "--json")
    report = json.loads(out)
    assert 0 == status
    assert ["pool-a", "pool-b"] == report["policies"]
    assert 6 == len(report["applied"])
