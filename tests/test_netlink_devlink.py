"""KernelNetlink's devlink eswitch requests, against a stand-in for pyroute2's DL socket
(no machine here has a devlink eswitch): the message sriovlib sends and its errors."""

from __future__ import annotations

import errno
from typing import Any, ClassVar

import pytest
from pyroute2.netlink.devlink import DEVLINK_NAMES
from pyroute2.netlink.exceptions import NetlinkError

from sriovlib.exceptions import Busy, InvalidValue
from sriovlib.netlink import KernelNetlink


class FakeDL:
    """Records requests; answers with *error* if set."""

    sent: ClassVar[list[Any]] = []
    error: int | None = None
    prid = 42

    def nlm_request(self, msg: Any, msg_type: int, msg_flags: int) -> list[Any]:
        FakeDL.sent.append((msg, msg_type, msg_flags))
        if FakeDL.error is not None:
            raise NetlinkError(FakeDL.error)
        return []

    def close(self) -> None:
        pass


@pytest.fixture
def dl(monkeypatch: pytest.MonkeyPatch) -> type[FakeDL]:
    import pyroute2

    FakeDL.sent, FakeDL.error = [], None
    monkeypatch.setattr(pyroute2, "DL", FakeDL)
    return FakeDL


class TestSetEswitchMode:
    def test_request(self, dl: type[FakeDL]) -> None:
        """ESWITCH_SET for pci/<address> with mode 1 (switchdev), acked, counted."""
        kernel = KernelNetlink()
        kernel.set_eswitch_mode("0000:3b:00.0", "switchdev")
        ((msg, msg_type, _),) = dl.sent
        assert DEVLINK_NAMES["DEVLINK_CMD_ESWITCH_SET"] == msg["cmd"]
        assert 42 == msg_type
        assert [
            ("DEVLINK_ATTR_BUS_NAME", "pci"),
            ("DEVLINK_ATTR_DEV_NAME", "0000:3b:00.0"),
            ("DEVLINK_ATTR_ESWITCH_MODE", 1),
        ] == msg["attrs"]
        msg.encode()  # pyroute2 can encode what is sent
        assert 1 == kernel.requests["devlink_set"]

    def test_busy(self, dl: type[FakeDL]) -> None:
        """The driver's EBUSY (ice with VFs) becomes Busy naming the device."""
        dl.error = errno.EBUSY
        with pytest.raises(Busy, match=r"0000:3b:00\.0"):
            KernelNetlink().set_eswitch_mode("0000:3b:00.0", "legacy")

    def test_unknown_mode(self, dl: type[FakeDL]) -> None:
        """A mode devlink has no number for is refused before any request."""
        with pytest.raises(InvalidValue):
            KernelNetlink().set_eswitch_mode("0000:3b:00.0", "offload")
        assert [] == dl.sent
