"""The network configuration: sriov-cni's keys, validated before anything changes."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest

from sriovlib.cni.netconf import NetConf, parse_netconf
from sriovlib.cni.protocol import CniError, Environment
from sriovlib.models import PciAddress, VfConfig, VfLinkState, VlanProto

from .conftest import CORPUS

DEVICE = "0000:03:02.0"


def parse(conf: dict[str, Any], args: str = "", **options: Any) -> NetConf:
    pairs = tuple(tuple(item.split("=", 1)) for item in args.split(";") if item)
    env = Environment("ADD", "c1", "/run/netns/p", "net1", ("/opt/cni/bin",), pairs)  # type: ignore[arg-type]
    return parse_netconf(conf, env, conf.get("cniVersion", "1.0.0"), **options)


def problems(conf: dict[str, Any], args: str = "", **options: Any) -> str:
    with pytest.raises(CniError) as info:
        parse(conf, args, **options)
    return f"{info.value.code} {info.value.details}"


def base(**fields: Any) -> dict[str, Any]:
    conf = {"cniVersion": "1.0.0", "name": "net", "type": "sriov", "deviceID": DEVICE}
    conf.update(fields)
    return conf


def corpus_files() -> list[Path]:
    return sorted(CORPUS.glob("*.json")) if CORPUS.is_dir() else []


class TestCorpus:
    @pytest.mark.parametrize("path", corpus_files(), ids=lambda p: p.name)
    def test_upstream_example_accepted(self, path: Path) -> None:
        """Every sriov-cni example is accepted as published, plus a deviceID if it lacks one."""
        conf = json.loads(path.read_text())
        conf.setdefault("deviceID", DEVICE)
        parsed = parse(conf)
        assert PciAddress.parse(conf["deviceID"]) == parsed.device_id
        if "vlan" in conf:
            assert conf["vlan"] == parsed.vf_config.vlan

    def test_corpus_present(self) -> None:
        """The shared corpus is where the tests expect it (else the test above is empty)."""
        if not CORPUS.is_dir():
            pytest.skip(f"corpus not found at {CORPUS}")
        assert 4 <= len(corpus_files())

    def test_full_example_fields(self) -> None:
        """The example with every field maps onto the VF settings one by one."""
        path = CORPUS / "example-03.json"
        if not path.exists():
            pytest.skip(f"corpus not found at {CORPUS}")
        parsed = parse(json.loads(path.read_text()))
        assert (
            VfConfig(
                mac="ca:fe:c0:ff:ee:00",
                vlan=1000,
                qos=4,
                vlan_proto=VlanProto.DOT1AD,
                spoofchk=False,
                trust=True,
                link_state=VfLinkState.ENABLE,
                min_tx_rate=100,
                max_tx_rate=200,
            )
            == parsed.vf_config
        )
        assert ("debug", "/tmp/sriov.log") == (parsed.log_level, parsed.log_file)


class TestFields:
    def test_minimal(self) -> None:
        """Only name, type, cniVersion and deviceID: nothing to configure, no IPAM."""
        parsed = parse(base())
        assert (VfConfig(), None, None) == (parsed.vf_config, parsed.ipam, parsed.mac)

    def test_short_pci_address(self) -> None:
        """bus:device.function means domain 0000 and is normalised."""
        assert "0000:03:02.0" == str(parse(base(deviceID="03:02.0")).device_id)

    @pytest.mark.parametrize(
        "device",
        [
            "../../../../etc",
            "0000:03:02.0/../../x",
            "/sys/bus/pci/devices/0000:03:02.0",
            "0000:03:02.8",
            "0000:03:20.0 ",
            "eth0",
            "",
            5,
            None,
        ],
    )
    def test_bad_device_id(self, device: object) -> None:
        """deviceID must be a PCI address: no paths, no names (code 7)."""
        assert problems(base(deviceID=device)).startswith("7 ")

    def test_vlan_defaults(self) -> None:
        """vlan alone means QoS 0 and 802.1Q, as sriov-cni does."""
        config = parse(base(vlan=0)).vf_config
        assert (0, 0, VlanProto.DOT1Q) == (config.vlan, config.qos, config.vlan_proto)

    @pytest.mark.parametrize("proto", ["802.1Q", "802.1ad", "802.1AD"])
    def test_vlan_proto_case(self, proto: str) -> None:
        """vlanProto is case-insensitive."""
        assert proto.lower() == str(parse(base(vlan=5, vlanProto=proto)).vf_config.vlan_proto)

    @pytest.mark.parametrize(
        ("fields", "needle"),
        [
            ({"vlan": 4095}, "vlan 4095 is outside 0-4094"),
            ({"vlan": -1}, "outside"),
            ({"vlan": "100"}, "vlan must be an integer"),
            ({"vlan": 10.0}, "vlan must be an integer"),
            ({"vlan": True}, "vlan must be an integer"),
            ({"vlanQoS": 3}, "vlanQoS needs vlan"),
            ({"vlan": 0, "vlanQoS": 3}, "non-zero vlan"),
            ({"vlan": 5, "vlanQoS": 8}, "outside 0-7"),
            ({"vlanProto": "802.1q"}, "vlanProto needs vlan"),
            ({"vlan": 0, "vlanProto": "802.1ad"}, "802.1ad needs a non-zero vlan"),
            ({"vlan": 5, "vlanProto": "qinq"}, "vlanProto 'qinq'"),
            ({"spoofchk": "yes"}, "spoofchk 'yes'"),
            ({"trust": True}, "trust True"),
            ({"link_state": "up"}, "link_state 'up'"),
            ({"min_tx_rate": -5}, "outside"),
            ({"max_tx_rate": 2**32}, "outside"),
            ({"min_tx_rate": 300, "max_tx_rate": 200}, "above max_tx_rate"),
            ({"mac": "01:00:5e:00:00:01"}, "multicast"),
            ({"mac": "00:00:00:00:00:00"}, "not a usable"),
            ({"mac": "ca:fe:c0:ff:ee"}, "not a MAC"),
            ({"mac": "cafe.c0ff.ee00"}, "not a MAC"),
            ({"ipam": "host-local"}, "ipam must be an object"),
            ({"ipam": {"subnet": "10.0.0.0/8"}}, "ipam.type is missing"),
            ({"ipam": {"type": "../../bin/sh"}}, "no paths"),
            ({"ipam": {"type": "/bin/sh"}}, "no paths"),
            ({"logLevel": "verbose"}, "logLevel 'verbose'"),
            ({"logFile": "relative.log"}, "absolute path"),
            ({"name": "bad name"}, "name 'bad name' is invalid"),
            ({"name": ""}, "name is missing"),
            ({"type": 3}, "type is missing"),
            ({"runtimeConfig": []}, "runtimeConfig must be an object"),
            ({"runtimeConfig": {"mac": "zz"}}, "runtimeConfig.mac"),
            ({"capabilities": ["mac"]}, "capabilities must be an object"),
        ],
    )
    def test_invalid(self, fields: dict[str, Any], needle: str) -> None:
        """Each invalid field is code 7 with a message that says what is wrong."""
        text = problems(base(**fields))
        assert text.startswith("7 ")
        assert needle in text

    def test_all_problems_at_once(self) -> None:
        """Several problems are reported together."""
        text = problems(base(vlan=5000, trust="maybe", mac="x"))
        assert all(part in text for part in ("vlan 5000", "trust 'maybe'", "mac 'x'"))

    def test_rates_written_together(self) -> None:
        """Either rate given means both are written, the other as 0 (sriov-cni)."""
        config = parse(base(max_tx_rate=200)).vf_config
        assert (0, 200) == (config.min_tx_rate, config.max_tx_rate)

    def test_empty_strings_mean_unset(self) -> None:
        """ "" for mac, spoofchk, trust, link_state leaves them alone, as upstream."""
        parsed = parse(base(mac="", spoofchk="", trust="", link_state="", logLevel=""))
        assert VfConfig() == parsed.vf_config

    def test_unknown_and_internal_keys_ignored(self) -> None:
        """Keys the plugin does not know (and sriov-cni's internal ones) are ignored."""
        parsed = parse(base(Master="ens1f0", VFID=3, MTU=9000, customKey={"a": 1}))
        assert VfConfig() == parsed.vf_config

    def test_empty_ipam_means_none(self) -> None:
        """ipam {} is no IPAM."""
        assert parse(base(ipam={})).ipam is None

    def test_mac_upper_and_dashes(self) -> None:
        """MACs are normalised to lower case with colons."""
        assert "ca:fe:c0:ff:ee:00" == parse(base(mac="CA-FE-C0-FF-EE-00")).mac


class TestMacPrecedence:
    def test_runtime_config_wins(self) -> None:
        """runtimeConfig.mac beats CNI_ARGS MAC= and mac."""
        conf = base(mac="02:00:00:00:00:03", runtimeConfig={"mac": "02:00:00:00:00:01"})
        parsed = parse(conf, "MAC=02:00:00:00:00:02")
        assert ("02:00:00:00:00:01", "runtimeConfig.mac") == (parsed.mac, parsed.mac_source)
        assert "02:00:00:00:00:01" == parsed.vf_config.mac

    def test_cni_args_beat_mac(self) -> None:
        """CNI_ARGS MAC= beats the netconf's mac."""
        parsed = parse(base(mac="02:00:00:00:00:03"), "IgnoreUnknown=1;MAC=02:00:00:00:00:02")
        assert ("02:00:00:00:00:02", "CNI_ARGS MAC") == (parsed.mac, parsed.mac_source)

    def test_mac_last(self) -> None:
        """The netconf's mac is used when nothing overrides it."""
        assert "mac" == parse(base(mac="02:00:00:00:00:03")).mac_source

    def test_bad_override_is_an_error(self) -> None:
        """An invalid MAC= in CNI_ARGS is reported even though mac is valid."""
        assert "CNI_ARGS MAC" in problems(base(mac="02:00:00:00:00:03"), "MAC=nope")

    def test_unknown_args(self) -> None:
        """Unknown CNI_ARGS keys are code 4 unless IgnoreUnknown is set."""
        assert problems(base(), "FOO=1").startswith("4 ")
        assert parse(base(), "IgnoreUnknown=1;FOO=1").device_id is not None
        assert parse(base(), "K8S_POD_NAME=x;K8S_POD_NAMESPACE=y").device_id is not None


class TestDeviceInfo:
    def write(self, tmp_path: Path, content: object) -> str:
        path = tmp_path / "net-c1-net1-device.json"
        path.write_text(content if isinstance(content, str) else json.dumps(content))
        return str(path)

    def conf(self, path: str) -> dict[str, Any]:
        conf = base(runtimeConfig={"CNIDeviceInfoFile": path})
        del conf["deviceID"]
        return conf

    def test_pci_file(self, tmp_path: Path) -> None:
        """Without deviceID, the device-info file Multus passes gives the VF."""
        path = self.write(
            tmp_path, {"type": "pci", "version": "1.1.0", "pci": {"pci-address": "0000:3b:02.1"}}
        )
        parsed = parse(self.conf(path))
        assert ("0000:3b:02.1", path) == (str(parsed.device_id), parsed.device_id_source)

    def test_vdpa_file(self, tmp_path: Path) -> None:
        """A vDPA device-info file carries the address under vdpa."""
        path = self.write(tmp_path, {"type": "vdpa", "vdpa": {"pci-address": "0000:3b:02.2"}})
        assert "0000:3b:02.2" == str(parse(self.conf(path)).device_id)

    def test_device_id_wins(self, tmp_path: Path) -> None:
        """deviceID, when present, beats the device-info file."""
        path = self.write(tmp_path, {"type": "pci", "pci": {"pci-address": "0000:3b:02.1"}})
        conf = base(runtimeConfig={"CNIDeviceInfoFile": path})
        assert DEVICE == str(parse(conf).device_id)

    @pytest.mark.parametrize(
        "content",
        [
            "not json",
            {"type": "pci"},
            {"type": "pci", "pci": {"pci-address": "../../etc"}},
            {"type": "net", "net": {"pci-address": "0000:3b:02.1"}},
            ["0000:3b:02.1"],
        ],
    )
    def test_bad_file(self, tmp_path: Path, content: object) -> None:
        """An unusable device-info file is code 7."""
        assert problems(self.conf(self.write(tmp_path, content))).startswith("7 ")

    def test_missing_file(self, tmp_path: Path) -> None:
        """A missing file is code 7, and a FIFO is not read (it would block)."""
        assert problems(self.conf(str(tmp_path / "none.json"))).startswith("7 ")
        import os

        os.mkfifo(tmp_path / "fifo")
        assert problems(self.conf(str(tmp_path / "fifo"))).startswith("7 ")

    def test_missing_device(self) -> None:
        """No deviceID and no device-info file: code 7 saying so."""
        conf = base()
        del conf["deviceID"]
        assert "deviceID is missing" in problems(conf)


class TestLenient:
    def test_del_ignores_vf_problems(self) -> None:
        """DEL tolerates bad SR-IOV fields (it restores what ADD recorded)."""
        parsed = parse(base(vlan=99999, deviceID="junk"), lenient=True, need_device=False)
        assert parsed.ignored
        assert VfConfig() == parsed.vf_config

    def test_del_still_needs_name_and_ipam(self) -> None:
        """DEL still refuses a configuration without a valid name or IPAM type."""
        assert problems(base(name=""), lenient=True).startswith("7 ")
        assert problems(base(ipam={"type": "a/b"}), lenient=True).startswith("7 ")

    def test_prev_result_parsed(self) -> None:
        """prevResult is read into canonical form whatever its version."""
        prev = {"cniVersion": "0.3.1", "ips": [{"version": "4", "address": "10.0.0.2/24"}]}
        parsed = parse(base(prevResult=prev))
        assert parsed.prev_result is not None
        assert [{"address": "10.0.0.2/24"}] == parsed.prev_result["ips"]
