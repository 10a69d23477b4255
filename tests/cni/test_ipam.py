"""IPAM delegation: finding the plugin, its environment and stdin, its answers."""

from __future__ import annotations

import json
import os
import stat
from pathlib import Path

import pytest

from sriovlib.cni.ipam import ExecIpam, IpamRequest, find_plugin
from sriovlib.cni.ipconfig import plan_routes
from sriovlib.cni.protocol import CniError

CONFIG = json.dumps({"cniVersion": "1.0.0", "name": "n", "ipam": {"type": "fake"}}).encode()


def plugin(directory: Path, body: str, name: str = "fake") -> Path:
    path = directory / name
    path.write_text("#!/bin/sh\n" + body)
    path.chmod(path.stat().st_mode | stat.S_IXUSR)
    return path


def request(directory: Path, **changes: object) -> IpamRequest:
    values: dict[str, object] = {
        "plugin": "fake",
        "config": CONFIG,
        "version": "1.0.0",
        "container_id": "c1",
        "netns": "/run/netns/p",
        "ifname": "net1",
        "path": (str(directory),),
        "args": "IgnoreUnknown=1",
    }
    values.update(changes)
    return IpamRequest(**values)  # type: ignore[arg-type]


class TestExecIpam:
    def test_add_passes_env_and_stdin(self, tmp_path: Path) -> None:
        """The plugin sees CNI_COMMAND=ADD, the attachment and the whole config on stdin;
        its result is read (a 0.4.0 one too) and its stderr goes to the log."""
        plugin(
            tmp_path,
            'cat > "$0.stdin"; env | grep ^CNI_ | sort > "$0.env"; echo note >&2\n'
            'echo \'{"cniVersion":"0.4.0","ips":[{"version":"4","address":"10.1.0.5/16",'
            '"gateway":"10.1.0.1"}],"routes":[{"dst":"0.0.0.0/0"}]}\'\n',
        )
        result = ExecIpam(os.environ).add(request(tmp_path))
        assert [{"address": "10.1.0.5/16", "gateway": "10.1.0.1"}] == result["ips"]
        assert CONFIG == (tmp_path / "fake.stdin").read_bytes()
        env = (tmp_path / "fake.env").read_text().splitlines()
        assert {
            "CNI_ARGS=IgnoreUnknown=1",
            "CNI_COMMAND=ADD",
            "CNI_CONTAINERID=c1",
            "CNI_IFNAME=net1",
            "CNI_NETNS=/run/netns/p",
            f"CNI_PATH={tmp_path}",
        } <= set(env)

    def test_error_json_passed_through(self, tmp_path: Path) -> None:
        """The plugin's CNI error keeps its code; msg and details are kept."""
        plugin(tmp_path, 'echo \'{"code": 11, "msg": "busy", "details": "later"}\'; exit 1\n')
        with pytest.raises(CniError) as info:
            ExecIpam(os.environ).delete(request(tmp_path))
        assert (11, "later") == (info.value.code, info.value.details)
        assert "busy" in info.value.msg

    def test_failure_without_json(self, tmp_path: Path) -> None:
        """A failure without a CNI error is code 104 with the plugin's output."""
        plugin(tmp_path, "echo oops >&2; exit 3\n")
        with pytest.raises(CniError) as info:
            ExecIpam(os.environ).check(request(tmp_path))
        assert (104, "oops") == (info.value.code, info.value.details)

    @pytest.mark.parametrize(
        "output", ["", "not json", '{"cniVersion":"1.0.0"}', '{"ips":[{"address":"x"}]}']
    )
    def test_unusable_add_result(self, tmp_path: Path, output: str) -> None:
        """ADD output that is not a result with at least one IP is code 104."""
        plugin(tmp_path, f"echo '{output}'\n")
        with pytest.raises(CniError) as info:
            ExecIpam(os.environ).add(request(tmp_path))
        assert 104 == info.value.code

    def test_timeout(self, tmp_path: Path) -> None:
        """A hung plugin is killed after the timeout."""
        plugin(tmp_path, "sleep 30\n")
        with pytest.raises(CniError) as info:
            ExecIpam(os.environ, timeout=0.3).gc(request(tmp_path))
        assert "timed out" in info.value.msg

    def test_not_found(self, tmp_path: Path) -> None:
        """A plugin missing from CNI_PATH (or not executable) is code 104."""
        (tmp_path / "fake").write_text("not executable")
        with pytest.raises(CniError) as info:
            find_plugin("fake", (str(tmp_path), "/nonexistent"))
        assert 104 == info.value.code
        assert str(tmp_path) in info.value.details

    def test_first_directory_wins(self, tmp_path: Path) -> None:
        """CNI_PATH is searched in order."""
        (tmp_path / "a").mkdir()
        (tmp_path / "b").mkdir()
        plugin(tmp_path / "b", "exit 0\n")
        first = plugin(tmp_path / "a", "exit 0\n")
        assert str(first) == find_plugin("fake", (str(tmp_path / "a"), str(tmp_path / "b")))


class TestRoutes:
    def test_gateway_filled_per_family(self) -> None:
        """A route without gw goes through the first gateway of its family."""
        ips = [
            {"address": "10.0.0.2/24", "gateway": "10.0.0.1"},
            {"address": "fd00::2/64", "gateway": "fd00::1"},
        ]
        routes = [{"dst": "0.0.0.0/0"}, {"dst": "::/0"}, {"dst": "10.9.0.0/16", "gw": "10.0.0.9"}]
        assert [
            {"dst": "0.0.0.0/0", "gw": "10.0.0.1"},
            {"dst": "::/0", "gw": "fd00::1"},
            {"dst": "10.9.0.0/16", "gw": "10.0.0.9"},
        ] == plan_routes(ips, routes)

    def test_no_gateway_means_on_link(self) -> None:
        """Without any gateway a route stays on-link."""
        assert [{"dst": "10.9.0.0/16"}] == plan_routes(
            [{"address": "10.0.0.2/24"}], [{"dst": "10.9.0.0/16"}]
        )
