"""The CLI at the edges: inputs that never end or are not files, closed or failing
standard streams, ``-o`` onto what is not a regular file, and a property test per
command: whatever the arguments, an answer and an exit status, never a traceback, and on
error the node unchanged."""

from __future__ import annotations

import hashlib
import os
import stat
import subprocess
import sys
import threading
from pathlib import Path

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from sriovlib.cli import main
from sriovlib.testing import FakeSysfs, add_nic_model

CLI = [sys.executable, "-m", "sriovlib"]


def cli(*args: str, timeout: float = 60, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*CLI, *args], capture_output=True, text=True, timeout=timeout, check=False, **kwargs
    )


def one_line_error(done: subprocess.CompletedProcess[str]) -> None:
    assert done.returncode not in (0, None), done
    assert "Traceback" not in done.stderr, done.stderr
    assert "Exception ignored" not in done.stderr, done.stderr
    assert 1 == len(done.stderr.strip().splitlines()), done.stderr


@pytest.fixture
def tree(tmp_path: Path) -> FakeSysfs:
    fs = FakeSysfs(tmp_path / "root")
    add_nic_model(fs, "mlx5", bus=3, num_vfs=2, ports=1)
    return fs


def tree_digest(root: Path) -> str:
    """Everything under *root*: names, kinds, link targets and file contents."""
    digest = hashlib.sha256()
    for path in sorted(root.rglob("*")):
        info = path.lstat()
        digest.update(f"{path.relative_to(root)}\0{stat.S_IFMT(info.st_mode)}\0".encode())
        if stat.S_ISLNK(info.st_mode):
            digest.update(os.readlink(path).encode())
        elif stat.S_ISREG(info.st_mode):
            digest.update(path.read_bytes())
    return digest.hexdigest()


class TestBoundedInput:
    def test_fifo_in_the_sysfs_tree_does_not_hang(self, tree: FakeSysfs) -> None:
        """An attribute that is a FIFO (nobody writes to it): ``list`` finishes and
        names the problem instead of waiting forever."""
        (vf,) = list((tree.root / "sys/bus/pci/devices").glob("0000:03:00.2"))
        (vf / "vendor").unlink()
        os.mkfifo(vf / "vendor")
        done = cli("list", "-v", "--sysfs-root", str(tree.root), "--json", timeout=30)
        assert "not a regular file" in done.stdout + done.stderr
        assert "Traceback" not in done.stderr

    def test_device_as_config(self) -> None:
        """``pools --config /dev/zero``: one line, no MemoryError."""
        done = cli("pools", "--config", "/dev/zero", "--example", "mlx5", timeout=30)
        one_line_error(done)
        assert "not a regular file or a pipe" in done.stderr

    def test_oversized_config(self, tmp_path: Path) -> None:
        big = tmp_path / "config.json"
        big.write_bytes(b" " * (4 << 20) + b"{}")
        done = cli("pools", "--config", str(big), "--example", "mlx5")
        one_line_error(done)
        assert "larger than" in done.stderr

    def test_config_from_a_pipe(self) -> None:
        """A pipe (``--config <(...)``) still works: pipes are waited on, devices not."""
        done = cli(
            "pools", "--config", "/dev/stdin", "--example", "mlx5", input='{"resourceList": []}'
        )
        assert 0 == done.returncode, done.stderr

    def test_device_as_pci_ids(self) -> None:
        """``--pci-ids /dev/zero``: names are unknown, the listing is there."""
        done = cli("list", "--example", "mlx5", "--pci-ids", "/dev/zero", timeout=30)
        assert 0 == done.returncode, done.stderr
        assert "ens1f0" in done.stdout


class TestNumbers:
    @pytest.mark.parametrize("value", ["nan", "inf", "-1", "1e400", "soon"])
    def test_numvfs_timeout_is_finite_and_in_range(self, value: str, tree: FakeSysfs) -> None:
        """``numvfs --timeout nan`` waited forever for VFs that never came."""
        done = cli(
            "numvfs",
            "ens1f0",
            "3",
            "--timeout",
            value,
            "--sysfs-root",
            str(tree.root),
            timeout=30,
        )
        assert 2 == done.returncode, done.stderr
        assert "seconds" in done.stderr
        assert "Traceback" not in done.stderr


class TestStandardStreams:
    def test_stdin_closed(self) -> None:
        done = cli("pools", "--config", "-", "--example", "mlx5", preexec_fn=lambda: os.close(0))
        one_line_error(done)
        assert "standard input is closed" in done.stderr

    def test_stdout_closed(self) -> None:
        done = cli("list", "--example", "mlx5", preexec_fn=lambda: os.close(1))
        one_line_error(done)
        assert "standard output is closed" in done.stderr

    def test_stdout_full(self) -> None:
        with open("/dev/full", "w") as full:
            done = subprocess.run(
                [*CLI, "list", "--example", "mixed", "-v"],
                stdout=full,
                stderr=subprocess.PIPE,
                text=True,
                timeout=60,
                check=False,
            )
        one_line_error(done)
        assert "No space left on device" in done.stderr


class TestOutputFile:
    def test_device_is_written_through(self, tmp_path: Path) -> None:
        """``-o`` onto a device node writes to the device and leaves the node a device
        (it used to be replaced by a regular file). The node is a private copy of
        /dev/null, so a failure cannot damage the system's."""
        if os.geteuid() != 0:
            pytest.skip("needs root to make a device node")
        node = tmp_path / "null"
        os.mknod(node, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
        done = cli("config", "generate", "--example", "mlx5", "-o", str(node))
        assert 0 == done.returncode, done.stderr
        assert stat.S_ISCHR(node.lstat().st_mode)
        assert os.makedev(1, 3) == node.lstat().st_rdev

    def test_fifo_is_written_through(self, tmp_path: Path) -> None:
        fifo = tmp_path / "fifo"
        os.mkfifo(fifo)
        got: list[bytes] = []
        reader = threading.Thread(target=lambda: got.append(fifo.read_bytes()))
        reader.start()
        done = cli("config", "generate", "--example", "mlx5", "-o", str(fifo))
        reader.join(30)
        assert 0 == done.returncode, done.stderr
        assert b'"resourceList"' in got[0]
        assert stat.S_ISFIFO(fifo.lstat().st_mode)

    def test_dash_is_standard_output(self) -> None:
        done = cli("config", "generate", "--example", "mlx5", "-o", "-")
        assert 0 == done.returncode, done.stderr
        assert '"resourceList"' in done.stdout

    def test_symlink_is_followed_and_kept(self, tmp_path: Path) -> None:
        """A ConfigMap-style link: the target is replaced, the link stays a link."""
        data = tmp_path / "..data"
        data.mkdir()
        (data / "config.json").write_text("old")
        (data / "config.json").chmod(0o640)
        link = tmp_path / "config.json"
        link.symlink_to(data / "config.json")
        done = cli("config", "generate", "--example", "mlx5", "-o", str(link))
        assert 0 == done.returncode, done.stderr
        assert link.is_symlink()
        assert '"resourceList"' in (data / "config.json").read_text()
        assert 0o640 == stat.S_IMODE((data / "config.json").stat().st_mode)

    def test_regular_file_is_replaced_atomically(self, tmp_path: Path) -> None:
        out = tmp_path / "config.json"
        out.write_text("old")
        inode = out.stat().st_ino
        assert 0 == cli("config", "generate", "--example", "mlx5", "-o", str(out)).returncode
        assert inode != out.stat().st_ino  # a new file renamed over the old one
        assert [] == [p for p in tmp_path.iterdir() if p.name.startswith(".")]


# -- one property test per command --------------------------------------------------------

TOKENS = st.sampled_from(
    [
        "-v",
        "--json",
        "--compat",
        "--dry-run",
        "--force",
        "--split-by-driver",
        "--timeout",
        "0",
        "-1",
        "nan",
        "1e400",
        "3",
        "999",
        "ens1f0",
        "0000:03:00.0",
        "../../x",
        "x" * 16,
        "",
        "-",
        "/dev/zero",
        "/dev/null",
        "/nonexistent",
        "--eswitch-mode",
        "switchdev",
        "--resource-prefix",
        "a/b",
        "--pci-ids",
        "--config",
        "é",
        "\x00",
    ]
)
COMMANDS = {
    "list": [],
    "doctor": [],
    "numvfs": [],
    "apply": ["-f"],
    "pools": [],
    "config": ["generate"],
    "plugins": [],
}


@pytest.mark.parametrize("command", sorted(COMMANDS))
@settings(
    max_examples=60,
    deadline=None,
    suppress_health_check=[HealthCheck.function_scoped_fixture],
)
@given(tokens=st.lists(TOKENS, max_size=6))
def test_any_arguments_give_an_answer(
    command: str,
    tokens: list[str],
    tree: FakeSysfs,
    capsys: pytest.CaptureFixture[str],
) -> None:
    """Any arguments to any command: an exit status (argparse's 2 for bad usage), no
    exception, no traceback; and when it fails, the node's tree is as it was."""
    if "\x00" in "".join(tokens):
        tokens = [t.replace("\x00", "") for t in tokens]
    argv = [command, *COMMANDS[command], *tokens, "--sysfs-root", str(tree.root)]
    if command == "plugins":
        argv = [command, *tokens]
    before = tree_digest(tree.root)
    try:
        status = main(argv)
    except SystemExit as e:  # argparse's usage errors and --help
        status = e.code if isinstance(e.code, int) else 2
    _, err = capsys.readouterr()
    assert status in (0, 1, 2, 130), (argv, status, err)
    assert "Traceback" not in err
    if status != 0:
        assert before == tree_digest(tree.root), (argv, err)
