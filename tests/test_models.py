"""Models: parsing at the edges, normalised values."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from sriovlib import InvalidPciAddress, LinkType, PciAddress, PciId

pci_addresses = st.builds(
    PciAddress,
    domain=st.integers(0, 0xFFFF),
    bus=st.integers(0, 0xFF),
    device=st.integers(0, 0x1F),
    function=st.integers(0, 7),
)


class TestPciAddress:
    def test_full_form(self) -> None:
        """The kernel's full form parses into its parts."""
        assert PciAddress(0, 3, 0, 1) == PciAddress.parse("0000:03:00.1")

    def test_short_form_means_domain_zero(self) -> None:
        """bus:device.function is accepted and normalised to domain 0000."""
        assert "0000:03:00.1" == str(PciAddress.parse("03:00.1"))

    def test_upper_case_normalised(self) -> None:
        """Hex digits come out lower-case."""
        assert "0000:af:1f.7" == str(PciAddress.parse("0000:AF:1F.7"))

    @given(pci_addresses)
    def test_round_trip(self, address: PciAddress) -> None:
        """str() and parse() are inverse for every valid address."""
        assert address == PciAddress.parse(str(address))

    @given(pci_addresses)
    def test_short_form_round_trip(self, address: PciAddress) -> None:
        """A domain-0 address parses the same from its short form."""
        short = str(address).split(":", 1)[1]
        assert PciAddress.parse(short).domain == 0
        assert (address.bus, address.device, address.function) == (
            PciAddress.parse(short).bus,
            PciAddress.parse(short).device,
            PciAddress.parse(short).function,
        )

    @pytest.mark.parametrize(
        ("text", "reason"),
        [
            ("", "empty"),
            (" 03:00.1", "whitespace"),
            ("../../x", "path component"),
            ("0000:03:00.1/../..", "path component"),
            ("0000:03:00", "function number"),
            ("0000:03:00.8", "function '8'"),
            ("0000:3:00.1", "bus '3'"),
            ("0000:03:0g.1", "device '0g'"),
            ("0000:03:20.1", "above 1f"),
            ("00:0000:03:00.1", "expected [domain:]bus:device.function"),
            ("000:03:00.1", "domain '000'"),
        ],
    )
    def test_rejects_with_reason(self, text: str, reason: str) -> None:
        """Garbage is rejected with a message that says what is wrong."""
        with pytest.raises(InvalidPciAddress) as info:
            PciAddress.parse(text)
        assert reason in str(info.value)
        assert repr(text) in str(info.value)

    @given(st.text(max_size=20))
    def test_any_text_parses_or_raises_invalid(self, text: str) -> None:
        """Arbitrary text either parses to a canonical address or raises InvalidPciAddress."""
        try:
            address = PciAddress.parse(text)
        except InvalidPciAddress:
            return
        assert address == PciAddress.parse(str(address))

    def test_ordering_follows_bus_order(self) -> None:
        """Addresses sort as the PCI bus orders them."""
        texts = ["0000:3b:00.1", "0000:03:00.0", "0000:3b:00.0"]
        assert ["0000:03:00.0", "0000:3b:00.0", "0000:3b:00.1"] == [
            str(a) for a in sorted(PciAddress.parse(t) for t in texts)
        ]


class TestPciId:
    def test_parse(self) -> None:
        """vendor:device parses, with or without 0x."""
        assert PciId(0x15B3, 0x1017) == PciId.parse("15b3:1017")
        assert PciId(0x8086, 0x10C9) == PciId.parse("0x8086:0x10C9")

    @pytest.mark.parametrize("text", ["15b3", "15b3:", "xyz:1017", "15b3:10170"])
    def test_rejects(self, text: str) -> None:
        """Anything else is a ValueError naming the text."""
        with pytest.raises(ValueError, match="invalid PCI id"):
            PciId.parse(text)

    def test_str(self) -> None:
        """str() gives 4+4 lower-case hex digits."""
        assert "8086:154c" == str(PciId(0x8086, 0x154C))


class TestLinkType:
    def test_from_arphrd(self) -> None:
        """ARPHRD 1 is Ethernet, 32 InfiniBand, anything else unknown."""
        assert LinkType.ETHERNET == LinkType.from_arphrd(1)
        assert LinkType.INFINIBAND == LinkType.from_arphrd(32)
        assert LinkType.UNKNOWN == LinkType.from_arphrd(772)
