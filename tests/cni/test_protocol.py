"""The CNI protocol layer: environment, stdin, versions, results, errors."""

from __future__ import annotations

import json

import pytest

from sriovlib.cni.invoke import run
from sriovlib.cni.protocol import (
    SUPPORTED_VERSIONS,
    CniError,
    config_version,
    convert_result,
    decode_config,
    parse_cni_args,
    parse_result,
    read_environment,
)

BASE = {
    "CNI_COMMAND": "ADD",
    "CNI_CONTAINERID": "abc",
    "CNI_NETNS": "/var/run/netns/pod",
    "CNI_IFNAME": "net1",
    "CNI_PATH": "/opt/cni/bin",
}


def env_error(**changes: str | None) -> CniError:
    environ = {k: v for k, v in {**BASE, **changes}.items() if v is not None}
    with pytest.raises(CniError) as info:
        read_environment(environ)
    return info.value


class TestEnvironment:
    def test_valid_add(self) -> None:
        """A complete ADD environment is read as given."""
        env = read_environment(
            {**BASE, "CNI_ARGS": "IgnoreUnknown=1;MAC=02:00:00:00:00:01", "CNI_PATH": "/a::/b"}
        )
        assert ("ADD", "abc", "/var/run/netns/pod", "net1") == (
            env.command,
            env.container_id,
            env.netns,
            env.ifname,
        )
        assert ("/a", "/b") == env.path
        assert (("IgnoreUnknown", "1"), ("MAC", "02:00:00:00:00:01")) == env.args

    @pytest.mark.parametrize("missing", ["CNI_CONTAINERID", "CNI_NETNS", "CNI_IFNAME", "CNI_PATH"])
    def test_add_needs_each_variable(self, missing: str) -> None:
        """ADD without any of its variables is code 4, naming the variable."""
        error = env_error(**{missing: None})
        assert 4 == error.code
        assert missing in error.msg

    def test_empty_counts_as_missing(self) -> None:
        """CNI_IFNAME set to the empty string is an error, not the default."""
        assert 4 == env_error(CNI_IFNAME="").code

    def test_del_without_netns(self) -> None:
        """DEL may come without CNI_NETNS (the namespace is gone)."""
        env = read_environment({**BASE, "CNI_COMMAND": "DEL", "CNI_NETNS": ""})
        assert env.netns is None

    def test_gc_needs_only_path(self) -> None:
        """GC needs CNI_PATH and nothing else; STATUS and VERSION need nothing."""
        assert "GC" == read_environment({"CNI_COMMAND": "GC", "CNI_PATH": "/x"}).command
        assert "STATUS" == read_environment({"CNI_COMMAND": "STATUS"}).command
        assert "VERSION" == read_environment({"CNI_COMMAND": "VERSION"}).command
        with pytest.raises(CniError):
            read_environment({"CNI_COMMAND": "GC"})

    @pytest.mark.parametrize("command", ["", "add", "FROB", "VERSION "])
    def test_unknown_command(self, command: str) -> None:
        """CNI_COMMAND must be one of the six commands, exactly."""
        assert 4 == env_error(CNI_COMMAND=command).code

    @pytest.mark.parametrize(
        "cid", ["-abc", "_x", ".x", "a b", "a/b", "a:b", "ä", "a\nb", "a\0b", "x;y"]
    )
    def test_bad_container_id(self, cid: str) -> None:
        """The container id starts alphanumeric and holds only letters, digits, _ . -."""
        error = env_error(CNI_CONTAINERID=cid)
        assert 4 == error.code
        assert "CNI_CONTAINERID" in error.msg

    @pytest.mark.parametrize("cid", ["a", "0", "abc-DEF_1.2", "x" * 200])
    def test_good_container_id(self, cid: str) -> None:
        """Long ids and every allowed character pass."""
        assert cid == read_environment({**BASE, "CNI_CONTAINERID": cid}).container_id

    @pytest.mark.parametrize(
        "ifname", ["a" * 16, ".", "..", "a/b", "a:b", "a b", "a\tb", "a\nb", "\u00a0x"]
    )
    def test_bad_ifname(self, ifname: str) -> None:
        """ifname: at most 15 characters, not . or .., no / : or whitespace."""
        error = env_error(CNI_IFNAME=ifname)
        assert 4 == error.code
        assert "CNI_IFNAME" in error.msg

    @pytest.mark.parametrize("ifname", ["a" * 15, "eth0", "net1.100", "a-b_c", "...", "é"])
    def test_good_ifname(self, ifname: str) -> None:
        """Fifteen characters, dots and dashes are fine."""
        assert ifname == read_environment({**BASE, "CNI_IFNAME": ifname}).ifname

    @pytest.mark.parametrize("netns", ["relative/path", "netns", "/a\0b"])
    def test_bad_netns(self, netns: str) -> None:
        """CNI_NETNS must be an absolute path."""
        assert 4 == env_error(CNI_NETNS=netns).code

    def test_netns_normalised(self) -> None:
        """Redundant separators in CNI_NETNS are folded."""
        assert (
            "/var/run/netns/x"
            == read_environment({**BASE, "CNI_NETNS": "/var//run/netns/./x"}).netns
        )


class TestCniArgs:
    def test_pairs(self) -> None:
        """K=V pairs separated by ';', empty items ignored."""
        assert (("A", "1"), ("B", "")) == parse_cni_args("A=1;;B=")

    @pytest.mark.parametrize("text", ["A", "=1", "A=1=2", "A=1;B"])
    def test_bad_pairs(self, text: str) -> None:
        """A pair without '=' or key, or with a second '=', is code 4."""
        with pytest.raises(CniError) as info:
            parse_cni_args(text)
        assert 4 == info.value.code


class TestConfig:
    @pytest.mark.parametrize(
        "data", [b"", b"   ", b"{", b"[]", b"null", b"42", b'"x"', b"\xff\xfe", b"[" * 100000]
    )
    def test_decode_failures(self, data: bytes) -> None:
        """Anything but one JSON object is code 6."""
        with pytest.raises(CniError) as info:
            decode_config(data)
        assert 6 == info.value.code

    def test_nan_refused(self) -> None:
        """NaN is not JSON."""
        with pytest.raises(CniError):
            decode_config(b'{"vlan": NaN}')

    @pytest.mark.parametrize("version", SUPPORTED_VERSIONS)
    def test_supported_versions(self, version: str) -> None:
        """Each supported version is accepted for ADD."""
        assert version == config_version({"cniVersion": version}, "ADD")

    @pytest.mark.parametrize("version", [None, "", "0.1.0", "0.2.0", "1.2.0", "2.0.0", "v1"])
    def test_unsupported_versions(self, version: str | None) -> None:
        """Other versions (and none, which means 0.1.0) are code 1."""
        with pytest.raises(CniError) as info:
            config_version({"cniVersion": version}, "ADD")
        assert 1 == info.value.code

    def test_version_not_a_string(self) -> None:
        """A numeric cniVersion is a config error."""
        with pytest.raises(CniError) as info:
            config_version({"cniVersion": 1.0}, "ADD")
        assert 7 == info.value.code

    @pytest.mark.parametrize(
        ("command", "version", "ok"),
        [
            ("CHECK", "0.3.1", False),
            ("CHECK", "0.4.0", True),
            ("GC", "1.0.0", False),
            ("GC", "1.1.0", True),
            ("STATUS", "1.0.0", False),
            ("STATUS", "1.1.0", True),
        ],
    )
    def test_command_minimum_versions(self, command: str, version: str, ok: bool) -> None:
        """CHECK needs 0.4.0, GC and STATUS 1.1.0 (code 1 otherwise)."""
        if ok:
            assert version == config_version({"cniVersion": version}, command)
        else:
            with pytest.raises(CniError) as info:
                config_version({"cniVersion": version}, command)
            assert 1 == info.value.code


RESULT_110 = {
    "cniVersion": "1.1.0",
    "interfaces": [
        {
            "name": "net1",
            "mac": "02:00:00:00:00:01",
            "mtu": 1500,
            "sandbox": "/run/netns/p",
            "pciID": "0000:03:00.2",
        }
    ],
    "ips": [
        {"address": "10.1.2.3/24", "gateway": "10.1.2.1", "interface": 0},
        {"address": "fd00::3/64", "interface": 0},
    ],
    "routes": [{"dst": "0.0.0.0/0", "gw": "10.1.2.1", "mtu": 1400, "priority": 10}],
    "dns": {"nameservers": ["10.1.2.53"], "search": ["example.org"]},
}


class TestResults:
    def test_round_trip_110(self) -> None:
        """A 1.1.0 result survives parse and convert unchanged."""
        assert RESULT_110 == convert_result(parse_result(RESULT_110, "1.1.0"), "1.1.0")

    def test_to_100(self) -> None:
        """1.0.0 has no interface mtu/pciID and no route mtu/priority."""
        out = convert_result(parse_result(RESULT_110, "1.1.0"), "1.0.0")
        assert {"name", "mac", "sandbox"} == set(out["interfaces"][0])
        assert {"dst": "0.0.0.0/0", "gw": "10.1.2.1"} == out["routes"][0]
        assert "version" not in out["ips"][0]

    @pytest.mark.parametrize("version", ["0.3.0", "0.3.1", "0.4.0"])
    def test_to_0x(self, version: str) -> None:
        """Before 1.0.0 every IP carries its version."""
        out = convert_result(parse_result(RESULT_110, "1.1.0"), version)
        assert version == out["cniVersion"]
        assert ["4", "6"] == [ip["version"] for ip in out["ips"]]

    def test_parse_031_with_versions(self) -> None:
        """A 0.3.1 result (an old IPAM plugin's) is read; its version field is dropped."""
        old = {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.0.0.2/8"}]}
        parsed = parse_result(old, "1.0.0")
        assert [{"address": "10.0.0.2/8"}] == parsed["ips"]

    def test_default_version(self) -> None:
        """A result without cniVersion takes the configuration's."""
        assert "0.4.0" == parse_result({"ips": []}, "0.4.0")["cniVersion"]

    @pytest.mark.parametrize(
        "bad",
        [
            {"ips": [{"address": "10.0.0.2"}]},
            {"ips": [{"address": "10.0.0.2/255.0.0.0"}]},
            {"ips": [{"address": 7}]},
            {"ips": [{"address": "10.0.0.2/8", "gateway": "x"}]},
            {"ips": [{"address": "10.0.0.2/8", "interface": -1}]},
            {"interfaces": [{"mac": "x"}]},
            {"interfaces": "eth0"},
            {"routes": [{"dst": "nope"}]},
            {"dns": {"nameservers": "1.1.1.1"}},
            [],
        ],
    )
    def test_malformed(self, bad: object) -> None:
        """Malformed results are code 7 (they reach us as configuration)."""
        with pytest.raises(CniError) as info:
            parse_result(bad, "1.0.0")
        assert 7 == info.value.code

    def test_unsupported_result_version(self) -> None:
        """A 0.2.0 result is code 1."""
        with pytest.raises(CniError) as info:
            parse_result({"cniVersion": "0.2.0", "ip4": {}}, "1.0.0")
        assert 1 == info.value.code


class TestRun:
    def test_version(self) -> None:
        """VERSION lists the supported versions, echoing the requested one."""
        status, out = run({"CNI_COMMAND": "VERSION"}, lambda: b'{"cniVersion": "0.4.0"}')
        assert 0 == status
        assert {"cniVersion": "0.4.0", "supportedVersions": list(SUPPORTED_VERSIONS)} == json.loads(
            out
        )

    def test_version_without_stdin(self) -> None:
        """VERSION with nothing (or garbage) on stdin answers with the latest version."""
        for data in (b"", b"garbage", b"[]"):
            status, out = run({"CNI_COMMAND": "VERSION"}, lambda data=data: data)
            assert (0, "1.1.0") == (status, json.loads(out)["cniVersion"])

    def test_error_json_shape(self) -> None:
        """A failure prints {cniVersion, code, msg, details} and returns 1."""
        status, out = run({"CNI_COMMAND": "BOGUS"}, lambda: b"")
        assert 1 == status
        error = json.loads(out)
        assert {"cniVersion", "code", "msg", "details"} == set(error)
        assert 4 == error["code"]

    def test_error_uses_config_version(self) -> None:
        """Once the configuration's version is known, errors carry it."""
        conf = {"cniVersion": "0.4.0", "name": "n", "type": "sriov"}
        status, out = run(BASE, lambda: json.dumps(conf).encode())
        assert (1, "0.4.0", 7) == (status, json.loads(out)["cniVersion"], json.loads(out)["code"])

    def test_stdin_failure(self) -> None:
        """An unreadable stdin is code 5."""

        def broken() -> bytes:
            raise OSError(5, "Input/output error")

        status, out = run(BASE, broken)
        assert (1, 5) == (status, json.loads(out)["code"])

    def test_unexpected_exception(self) -> None:
        """Anything unexpected becomes code 100, not a traceback."""

        def boom() -> bytes:
            raise ZeroDivisionError("boom")

        status, out = run(BASE, boom)
        assert (1, 100) == (status, json.loads(out)["code"])
        assert "ZeroDivisionError" in json.loads(out)["msg"]
