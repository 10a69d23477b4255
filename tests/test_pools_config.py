"""Parsing device-plugin config files: strict errors, compat leniency, the real corpus."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from sriovlib.pools import (
    ConfigError,
    ConfigProblem,
    DeviceType,
    IndexRange,
    Malformed,
    Pool,
    PoolConfig,
    Selector,
    VfFilter,
    dump_config,
    load_config,
    parse_config,
    parse_vf_filter,
)

CORPUS = Path(__file__).resolve().parents[2] / "shared/corpus/device-plugin-configs"
NOT_JSON = {
    # file: (line, column) of the first syntax error, counted by hand in the file
    "docs__dpdk__configMap-virt.json": (12, 10),
    "docs__vdpa__configMap.json": (3, 9),
    "readme-example-00.json": (86, 15),
}


def corpus_files() -> list[Path]:
    if not CORPUS.is_dir():
        return []
    return sorted(CORPUS.glob("*.json"))


needs_corpus = pytest.mark.skipif(not CORPUS.is_dir(), reason=f"no corpus at {CORPUS}")


def config(*pools: dict[str, Any]) -> str:
    return json.dumps({"resourceList": list(pools)})


def errors(text: str, *, compat: bool = False) -> list[str]:
    with pytest.raises(ConfigError) as info:
        parse_config(text, compat=compat, source="c.json")
    return [str(p) for p in info.value.problems]


def warnings(text: str) -> list[str]:
    return [str(w) for w in parse_config(text, compat=True, source="c.json").warnings]


class TestCorpus:
    """Every upstream config file, used as published."""

    @needs_corpus
    def test_corpus_is_complete(self) -> None:
        """The corpus holds the ten files the acceptance criteria name."""
        assert len(corpus_files()) == 10
        assert set(NOT_JSON) <= {p.name for p in corpus_files()}

    @needs_corpus
    @pytest.mark.parametrize("compat", [False, True])
    @pytest.mark.parametrize("name", sorted(NOT_JSON))
    def test_invalid_json_names_line_and_column(self, name: str, compat: bool) -> None:
        """The three files that are not JSON give one error with the exact line and column."""
        path = CORPUS / name
        with pytest.raises(ConfigError) as info:
            load_config(path, compat=compat)
        (problem,) = info.value.problems
        assert NOT_JSON[name] == (problem.line, problem.column)
        assert str(problem).startswith(f"{path}:{problem.line}:{problem.column}: invalid JSON")

    @needs_corpus
    def test_trailing_comma_is_called_by_its_name(self) -> None:
        """A trailing comma is reported at the comma, as a trailing comma."""
        with pytest.raises(ConfigError) as info:
            load_config(CORPUS / "readme-example-00.json")
        line, column = NOT_JSON["readme-example-00.json"]
        text = (CORPUS / "readme-example-00.json").read_text().splitlines()[line - 1]
        assert "," == text[column - 1]
        assert "trailing comma" in str(info.value)

    @needs_corpus
    @pytest.mark.parametrize(
        "path", [p for p in corpus_files() if p.name not in NOT_JSON], ids=lambda p: p.name
    )
    def test_valid_files_parse_strictly(self, path: Path) -> None:
        """Every valid published config passes strict parsing, with nothing for compat to excuse."""
        strict = load_config(path)
        compat = load_config(path, compat=True)
        assert strict.pools == compat.pools
        assert () == compat.warnings
        raw = json.loads(path.read_text())
        assert [r["resourceName"] for r in raw["resourceList"]] == [
            p.resource_name for p in strict.pools
        ]

    @needs_corpus
    def test_selector_values_survive(self) -> None:
        """The README-style deployment config keeps every selector value."""
        cfg = load_config(CORPUS / "deployments__configMap.json")
        dpdk = cfg.pools[1]
        assert ("154c", "10ed", "1889") == dpdk.selectors[0].devices
        assert (VfFilter("enp0s0f0"), VfFilter("enp2s2f1")) == dpdk.selectors[0].pf_names
        assert cfg.pools[2].selectors[0].is_rdma


class TestStrictErrors:
    """Strict mode turns each silent upstream pitfall into a located error."""

    def test_typo_key_did_you_mean(self) -> None:
        """``pfName`` (upstream #204: the pool matches everything) suggests ``pfNames``."""
        text = '{"resourceList": [{"resourceName": "a",\n "selectors": {"pfName": ["ens1f0"]}}]}'
        (message,) = errors(text)
        assert message.startswith("c.json:2:16: resourceList[0].selectors.pfName:")
        assert "did you mean 'pfNames'?" in message

    def test_selector_outside_selectors(self) -> None:
        """``rootDevices`` beside ``selectors`` (upstream #181) says where it belongs."""
        (message,) = errors(
            config({"resourceName": "a", "rootDevices": ["0000:3b:00.0"], "selectors": {}})
        )
        assert "'rootDevices' is a selector: move it inside \"selectors\"" in message

    def test_key_case(self) -> None:
        """``IsRdma`` (what the operator writes) is an error in strict mode only."""
        text = config({"resourceName": "a", "selectors": {"IsRdma": True}})
        (message,) = errors(text)
        assert "should be spelt 'isRdma'" in message
        pool = parse_config(text, compat=True).pools[0]
        assert pool.selectors[0].is_rdma

    def test_second_pfnames_entry_for_one_pf(self) -> None:
        """A second entry for the same PF (silently dropped upstream) is an error."""
        text = config({"resourceName": "a", "selectors": {"pfNames": ["ens1f0#0-3", "ENS1F0#8-9"]}})
        (message,) = errors(text)
        assert "uses only the first" in message
        assert "merge them as 'ens1f0#0-3,8-9'" in message

    def test_overlapping_ranges(self) -> None:
        """Overlapping ranges for one PF are flagged with the VFs listed twice."""
        (message,) = errors(
            config({"resourceName": "a", "selectors": {"pfNames": ["ens1f0#0-3,2-7"]}})
        )
        assert "VF ranges 0-3 and 2-7 overlap (VF 2-3 listed twice)" in message

    @pytest.mark.parametrize(
        ("entry", "words"),
        [
            ("ens1f0#", "nothing after '#'"),
            ("ens1f0#1,,3", "empty item"),
            ("ens1f0#7-2", "reversed; write '2-7'"),
            ("ens1f0#a", "'a' is not a VF index"),
            ("ens1f0#1#2", "more than one '#'"),
            ("ens1f0#+3", "'+3' is not a VF index"),
            ("ens1f0#70000", "at most 65535"),
            ("#0-3", "PF name before '#' is empty"),
            ("ens 1#0", "invalid interface name"),
        ],
    )
    def test_malformed_ranges(self, entry: str, words: str) -> None:
        """A malformed VF list (upstream drops the device silently) is a precise error."""
        (message,) = errors(config({"resourceName": "a", "selectors": {"pfNames": [entry]}}))
        assert words in message

    def test_short_pci_address(self) -> None:
        """``3b:00.2`` never matches upstream; strict mode asks for the full form."""
        (message,) = errors(
            config({"resourceName": "a", "selectors": {"pciAddresses": ["3b:00.2"]}})
        )
        assert "write '0000:3b:00.2'" in message

    def test_root_device_short_address(self) -> None:
        """rootDevices targets must be full PCI addresses too."""
        (message,) = errors(
            config({"resourceName": "a", "selectors": {"rootDevices": ["3B:00.0#0-1"]}})
        )
        assert "write '0000:3b:00.0'" in message

    @pytest.mark.parametrize(("value", "fix"), [("15B3", "'15b3'"), ("0x8086", "'8086'")])
    def test_vendor_spelling(self, value: str, fix: str) -> None:
        """Vendor ids are compared as text upstream, so only lower-case hex is accepted."""
        (message,) = errors(config({"resourceName": "a", "selectors": {"vendors": [value]}}))
        assert f"write {fix}" in message

    def test_link_type_typo(self) -> None:
        """``ethernet`` is not netlink's name; the message suggests ``ether``."""
        (message,) = errors(config({"resourceName": "a", "selectors": {"linkTypes": ["ethernet"]}}))
        assert "did you mean 'ether'?" in message

    def test_selector_not_applied_to_device_type(self) -> None:
        """Upstream ignores acpiIndexes on accelerators; strict mode says so."""
        (message,) = errors(
            config(
                {
                    "resourceName": "a",
                    "deviceType": "accelerator",
                    "selectors": {"acpiIndexes": ["1"]},
                }
            )
        )
        assert "never applies it" in message
        (message,) = errors(
            config(
                {
                    "resourceName": "a",
                    "deviceType": "accelerator",
                    "selectors": {"pfNames": ["ens1f0"]},
                }
            )
        )
        assert "not a selector of accelerator pools" in message

    def test_hyphen_in_resource_name(self) -> None:
        """A '-' ends up in the PCIDEVICE_ variable; strict mode suggests '_'."""
        (message,) = errors(config({"resourceName": "sriov-a", "selectors": {}}))
        assert "use 'sriov_a'" in message

    def test_empty_list(self) -> None:
        """An empty value list filters nothing upstream, which is rarely meant."""
        (message,) = errors(config({"resourceName": "a", "selectors": {"drivers": []}}))
        assert "does not filter anything" in message

    def test_duplicate_json_key(self) -> None:
        """Go keeps the last of two equal keys; strict mode refuses the ambiguity."""
        text = '{"resourceList": [{"resourceName": "a", "resourceName": "b", "selectors": {}}]}'
        (message,) = errors(text)
        assert "duplicate key 'resourceName'" in message
        assert "b" == parse_config(text, compat=True).pools[0].resource_name

    def test_all_problems_reported_in_order(self) -> None:
        """Every problem of a file is listed, sorted by position."""
        text = (
            '{"resourceList": [\n{"resourceName": "a", "selectors": {"vendor": ["8086"]}},\n'
            '{"resourceName": "b", "selectors": {"devices": ["154C"]}}]}'
        )
        problems = errors(text)
        assert 2 == len(problems)
        assert problems[0].startswith("c.json:2:")
        assert problems[1].startswith("c.json:3:")


class TestErrorsInBothModes:
    """What upstream rejects at startup is an error in compat mode as well."""

    @pytest.mark.parametrize(
        ("pool", "words"),
        [
            ({"selectors": {}}, 'missing "resourceName"'),
            ({"resourceName": "a"}, 'missing "selectors"'),
            ({"resourceName": "a", "selectors": []}, "an empty list of selectors"),
            ({"resourceName": "a b", "selectors": {}}, "must be letters, digits"),
            (
                {"resourceName": "a", "deviceType": "netdevice", "selectors": {}},
                "did you mean 'netDevice'?",
            ),
            ({"resourceName": "a", "selectors": {"vendors": "8086"}}, "expected a list"),
            ({"resourceName": "a", "selectors": {"isRdma": "true"}}, "expected true or false"),
            (
                {"resourceName": "a", "selectors": {"isRdma": True, "vdpaType": "vhost"}},
                "exclude each other",
            ),
            (
                {"resourceName": "a", "deviceType": "auxNetDevice", "selectors": {}},
                '"auxTypes": ["sf"]',
            ),
            ({"resourceName": "a", "selectors": [1]}, "expected a selector object"),
        ],
    )
    @pytest.mark.parametrize("compat", [False, True])
    def test_rejected(self, pool: dict[str, Any], words: str, compat: bool) -> None:
        """The message names the problem in both modes."""
        assert any(words in m for m in errors(config(pool), compat=compat))

    @pytest.mark.parametrize("compat", [False, True])
    def test_duplicate_resource(self, compat: bool) -> None:
        """Two pools with one prefix and name are refused, naming the first."""
        text = config(
            {"resourceName": "a", "selectors": {}},
            {"resourceName": "a", "resourcePrefix": "intel.com", "selectors": {}},
        )
        (message,) = errors(text, compat=compat)
        assert "intel.com/a is already defined by resourceList[0]" in message

    @pytest.mark.parametrize("text", ["", "[", '{"a": NaN}', '{"resourceList": [}', "\ufeff{}"])
    def test_not_json(self, text: str) -> None:
        """Text that is not JSON is one located error."""
        (message,) = errors(text, compat=True)
        assert message.startswith("c.json:1:")

    def test_invalid_utf8(self) -> None:
        """Bytes that are not UTF-8 are located too."""
        with pytest.raises(ConfigError) as info:
            parse_config(b'{\n "resourceList": "\xff"}')
        assert (2, 19) == (info.value.problems[0].line, info.value.problems[0].column)


class TestCompat:
    """Compat mode accepts what upstream accepts and reads it the way upstream does."""

    def test_unknown_keys_are_warnings(self) -> None:
        """An ignored key is a warning with its position; the pool still parses."""
        text = config({"resourceName": "a", "selectors": {"pfName": ["x"], "vendors": ["8086"]}})
        (warning,) = warnings(text)
        assert "did you mean 'pfNames'?" in warning
        pool = parse_config(text, compat=True).pools[0]
        assert Selector(vendors=("8086",)) == pool.selectors[0]

    def test_second_entry_ignored(self) -> None:
        """Only the first pfNames entry of a PF counts, as upstream."""
        pool = parse_config(
            config({"resourceName": "a", "selectors": {"pfNames": ["ens1f0#0-3", "ens1f0#8-9"]}}),
            compat=True,
        ).pools[0]
        assert 2 == len(pool.selectors[0].pf_names)

    def test_null_and_empty(self) -> None:
        """``null`` and ``[]`` mean "not set", with a warning each."""
        text = config({"resourceName": "a", "selectors": {"vendors": None, "drivers": []}})
        assert 2 == len(warnings(text))
        assert Selector() == parse_config(text, compat=True).pools[0].selectors[0]

    def test_missing_resource_list(self) -> None:
        """No resourceList means no pools, as the device plugin starts empty."""
        assert () == parse_config("{}", compat=True).pools
        assert ["resourceList"] == [w.split('"')[1] for w in warnings("{}")]


class TestVfRanges:
    """The ``name#0,2-7`` syntax of pfNames and rootDevices."""

    def test_parse(self) -> None:
        """Indexes and inclusive ranges, in order."""
        entry = parse_vf_filter("ens1f0#0,2-7,9")
        assert VfFilter("ens1f0", (IndexRange(0, 0), IndexRange(2, 7), IndexRange(9, 9))) == entry
        assert [0, 2, 3, 4, 5, 6, 7, 9] == [i for i in range(12) if entry.selects(i)]
        assert "ens1f0#0,2-7,9" == str(entry)

    def test_whole_pf(self) -> None:
        """Without '#', every VF of the PF is selected."""
        entry = parse_vf_filter("ens1f0")
        assert entry.ranges is None
        assert entry.selects(63)

    def test_compat_reads_left_to_right(self) -> None:
        """Upstream stops at the first unreadable part: VFs named before it still count."""
        entry = parse_vf_filter("ens1f0#0,x,2", compat=True)
        assert (IndexRange(0, 0), Malformed("x")) == entry.ranges
        assert [0] == [i for i in range(4) if entry.selects(i)]

    def test_compat_go_integers(self) -> None:
        """Go's Atoi takes a sign and leading zeros."""
        entry = parse_vf_filter("p#+1-03", compat=True)
        assert (IndexRange(1, 3),) == entry.ranges

    def test_root_devices(self) -> None:
        """rootDevices entries key on the PF's full PCI address."""
        entry = parse_vf_filter("0000:3b:00.0#0-1", "rootDevices")
        assert "0000:3b:00.0" == entry.target
        with pytest.raises(ConfigError):
            parse_vf_filter("3b:00.0", "rootDevices")

    @given(st.text(alphabet="0123456789-,#+ ax", max_size=20))
    def test_any_spec_is_an_entry_or_our_error(self, spec: str) -> None:
        """Any text after '#' parses or raises ConfigError; compat mode never raises."""
        text = f"ens1f0#{spec}"
        try:
            strict = parse_vf_filter(text)
        except ConfigError:
            strict = None
        compat = parse_vf_filter(text, compat=True)
        if strict is not None:
            assert all(strict.selects(i) == compat.selects(i) for i in range(-1, 40))

    @given(st.lists(st.tuples(st.integers(0, 300), st.integers(0, 20)), min_size=1, max_size=6))
    def test_disjoint_ranges_round_trip(self, spans: list[tuple[int, int]]) -> None:
        """Any list of disjoint ranges parses to exactly the VFs it names."""
        ranges, wanted, start = [], set(), 0
        for gap, length in spans:
            first = start + gap
            ranges.append(f"{first}-{first + length}" if length else str(first))
            wanted |= set(range(first, first + length + 1))
            start = first + length + 1
        entry = parse_vf_filter("ens1f0#" + ",".join(ranges))
        assert wanted == {i for i in range(start + 2) if entry.selects(i)}


_KEYS = [
    "resourceList",
    "resourceName",
    "selectors",
    "vendors",
    "pfNames",
    "isRdma",
    "IsRdma",
    "deviceType",
    "drivers",
    "rootDevices",
    "pfName",
    "additionalInfo",
]
_json_values = st.recursive(
    st.none()
    | st.booleans()
    | st.integers()
    | st.sampled_from(["8086", "ens1f0#0-3", "ens1f0#x", "netDevice", "a", "", "0000:3b:00.0#1"]),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.sampled_from(_KEYS), inner, max_size=4)
    ),
    max_leaves=20,
)


class TestNeverCrashes:
    """Whatever the input, the parser returns a config or raises ConfigError."""

    @settings(max_examples=300)
    @given(_json_values, st.booleans())
    def test_json_documents(self, document: Any, compat: bool) -> None:
        """Arbitrary JSON shaped like configs."""
        parsed: PoolConfig | ConfigError
        try:
            parsed = parse_config(json.dumps(document), compat=compat)
        except ConfigError as e:
            parsed = e
        if isinstance(parsed, ConfigError):
            assert parsed.problems
        else:
            assert all(p.selectors for p in parsed.pools)

    @settings(max_examples=300)
    @given(st.text(alphabet='{}[]":,0123456789abtrueflsn \n\\', max_size=60), st.booleans())
    def test_arbitrary_text(self, text: str, compat: bool) -> None:
        """Arbitrary JSON-ish text."""
        problems: tuple[ConfigProblem, ...] = ()
        try:
            parse_config(text, compat=compat)
        except ConfigError as e:
            problems = e.problems
        assert all(p.line is None or p.line >= 1 for p in problems)

    def test_deep_nesting(self) -> None:
        """Nesting beyond any sane config is an error, not a RecursionError."""
        with pytest.raises(ConfigError):
            parse_config("[" * 100_000 + "]" * 100_000)
        with pytest.raises(ConfigError):
            parse_config('{"resourceList": ' + "[" * 200 + "]" * 200 + "}")


_names = st.text(alphabet="abcdefgh_", min_size=1, max_size=8)
_selectors = st.builds(
    Selector,
    vendors=st.lists(st.sampled_from(["8086", "15b3"]), max_size=2, unique=True).map(tuple),
    devices=st.lists(st.sampled_from(["154c", "1018"]), max_size=2, unique=True).map(tuple),
    pf_names=st.lists(
        st.sampled_from(["ens1f0", "ens1f1#0-3", "ens2f0#1,5-7"]),
        max_size=2,
        unique_by=lambda t: t.split("#")[0],
    ).map(lambda xs: tuple(parse_vf_filter(x) for x in xs)),
    is_rdma=st.booleans(),
    need_vhost_net=st.booleans(),
)


class TestRoundTrip:
    """What sriovlib writes, sriovlib reads back unchanged (strictly)."""

    @given(
        st.lists(
            st.tuples(
                _names,
                st.lists(_selectors, min_size=1, max_size=3),
                st.sampled_from([None, "example.com"]),
                st.booleans(),
            ),
            max_size=4,
            unique_by=lambda t: t[0],
        )
    )
    def test_dump_then_parse(
        self, specs: list[tuple[str, list[Selector], str | None, bool]]
    ) -> None:
        """dump_config then parse_config is the identity."""
        pools = tuple(
            Pool(
                resource_name=name,
                resource_prefix=prefix,
                selectors=tuple(sel),
                exclude_topology=exclude,
            )
            for name, sel, prefix, exclude in specs
        )
        original = PoolConfig(pools=pools)
        assert original == parse_config(dump_config(original))

    def test_additional_info(self) -> None:
        """additionalInfo keeps the '*' and per-device maps."""
        text = config(
            {
                "resourceName": "a",
                "selectors": {},
                "additionalInfo": {"*": {"token": "x"}, "0000:3b:00.2": {"k": "v"}},
            }
        )
        pool = parse_config(text).pools[0]
        assert {"*": {"token": "x"}, "0000:3b:00.2": {"k": "v"}} == pool.additional_info
        assert pool == parse_config(dump_config(PoolConfig((pool,)))).pools[0]
        assert DeviceType.NET_DEVICE == pool.device_type
