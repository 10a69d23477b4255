"""deploy/Containerfile is the image sriovlib.testing.image builds and the DaemonSet runs."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from sriovlib.testing.image import (
    BASE_IMAGE,
    ENTRYPOINT,
    LAUNCHER,
    containerfile_settings,
    source_tree,
)

ROOT = Path(__file__).resolve().parents[1]
CONTAINERFILE = (ROOT / "deploy" / "Containerfile").read_text()


def test_containerfile_builds_from_the_local_base_and_runs_the_agent():
    assert containerfile_settings(CONTAINERFILE) == (BASE_IMAGE, ENTRYPOINT)


def test_containerfile_installs_the_launcher_where_the_builder_says():
    copies = re.findall(r"^COPY\s+(\S+)\s+(\S+)\s*$", CONTAINERFILE, re.MULTILINE)
    assert ("deploy/sriov-cni.sh", LAUNCHER) in copies


def test_the_launcher_execs_the_venv_of_the_nodes_current_release():
    launcher = (ROOT / "deploy" / "sriov-cni.sh").read_text()
    assert launcher.startswith("#!/bin/sh\n")
    last = launcher.strip().splitlines()[-1]
    assert last == 'exec "$venv/bin/python" "$venv/bin/sriov" "$@"'
    assert "venv=/opt/sriovlib/current/venv\n" in launcher


def test_the_builder_finds_this_checkout():
    assert source_tree() == ROOT


@pytest.mark.parametrize(
    ("text", "error"),
    [
        ('ENTRYPOINT ["x"]\n', "expected one FROM, found 0"),
        ('FROM a\nFROM b\nENTRYPOINT ["x"]\n', "expected one FROM, found 2"),
        ("FROM a\n", "no ENTRYPOINT"),
        ("FROM a\nENTRYPOINT sriovlib agent\n", "not in exec form"),
        ('FROM a\nENTRYPOINT {"a": 1}\n', "not a list of strings"),
    ],
)
def test_containerfile_settings_refuses_what_the_builder_cannot_check(text: str, error: str):
    with pytest.raises(ValueError, match=error):
        containerfile_settings(text)


def test_containerfile_settings_reads_continued_lines_and_skips_comments():
    text = '# FROM nothing\nFROM \\\n  base:1\nENTRYPOINT ["a", \\\n  "b"]\n'
    assert containerfile_settings(text) == ("base:1", ("a", "b"))
