"""The VM harness itself: commands, persistent guest Python, a real igb PF and its VFs."""

from __future__ import annotations

import os
import sys
from pathlib import Path

import pytest

from sriovlib.testing.vm import MAX_MEMORY_MB, CommandResult, GuestError, SriovVM, VMTimeoutError
from sriovlib.testing.vm_fixtures import reset_guest

pytestmark = pytest.mark.vm


class TestRun:
    def test_status_and_output_come_back(self, sriov_vm: SriovVM) -> None:
        """A shell command's exit status, stdout and stderr come back."""
        result = sriov_vm.run("echo hello; echo oops >&2; exit 3")
        assert result == CommandResult(returncode=3, stdout="hello\n", stderr="oops\n")

    def test_root_in_host_cwd_with_host_path(self, sriov_vm: SriovVM) -> None:
        """Commands run as root in the host's cwd with the host's PATH and PF list."""
        result = sriov_vm.run('id -u; pwd; echo "$PATH"; echo "$SRIOV_PFS"')
        uid, cwd, path, pfs = result.stdout.splitlines()
        assert (uid, cwd, pfs) == ("0", str(Path.cwd()), " ".join(sriov_vm.pf_netdevs))
        assert path.startswith(os.environ["PATH"].split(os.pathsep)[0])

    def test_timeout_kills_command_and_vm_survives(self, sriov_vm: SriovVM) -> None:
        """A command over its timeout raises VMTimeoutError; the VM keeps serving."""
        with pytest.raises(VMTimeoutError) as caught:
            sriov_vm.run("echo started; sleep 60", timeout=1)
        assert caught.value.result is not None
        assert caught.value.result.stdout == "started\n"
        assert sriov_vm.run("echo still here").stdout == "still here\n"

    def test_netns_and_loopback(self, sriov_vm: SriovVM) -> None:
        """`ip netns add` works and lo is up in the guest."""
        result = sriov_vm.run(
            "ip netns add harness-ns && ip netns exec harness-ns true && ip netns del harness-ns"
            " && cat /sys/class/net/lo/flags"
        )
        assert result.returncode == 0, result.stderr
        assert int(result.stdout, 16) & 0x1  # IFF_UP


class TestPython:
    def test_globals_persist_between_calls(self, sriov_vm: SriovVM) -> None:
        """Names defined by one python() call are visible to the next."""
        sriov_vm.python("harness_counter = 41")
        assert sriov_vm.python("harness_counter += 1; result = harness_counter") == 42

    def test_result_is_json_decoded_and_optional(self, sriov_vm: SriovVM) -> None:
        """`result` comes back JSON-decoded; code that sets none returns None."""
        assert sriov_vm.python("result = {'a': [1, 2.5, None, 'x']}") == {"a": [1, 2.5, None, "x"]}
        assert sriov_vm.python("unused = 1") is None

    def test_guest_runs_host_interpreter(self, sriov_vm: SriovVM) -> None:
        """The guest worker is the host's interpreter, in the host's cwd."""
        code = """
            import sys
            from pathlib import Path
            result = [sys.executable, sys.prefix, str(Path.cwd())]
        """
        assert sriov_vm.python(code) == [sys.executable, sys.prefix, str(Path.cwd())]

    def test_guest_exception_raises_guest_error(self, sriov_vm: SriovVM) -> None:
        """An exception in the guest raises GuestError carrying the guest traceback."""
        with pytest.raises(GuestError) as caught:
            sriov_vm.python("def boom():\n    return 1 / 0\nboom()")
        assert caught.value.exc_type == "ZeroDivisionError"
        assert "in boom" in caught.value.traceback
        assert "return 1 / 0" in caught.value.traceback
        assert sriov_vm.python("result = 'alive'") == "alive"


class TestSriov:
    def test_pf_is_an_igb_82576(self, sriov_vm: SriovVM) -> None:
        """The guest sees an 8086:10c9 igb PF that offers 7 VFs."""
        assert len(sriov_vm.pf_netdevs) == 1
        dev = f"/sys/class/net/{sriov_vm.pf_netdevs[0]}/device"
        result = sriov_vm.run(
            f"cat {dev}/vendor {dev}/device {dev}/sriov_totalvfs {dev}/sriov_numvfs;"
            f" basename $(readlink {dev}/driver)"
        )
        assert result.stdout.split() == ["0x8086", "0x10c9", "7", "0", "igb"]

    def test_numvfs_creates_and_removes_igbvf_vfs(self, sriov_vm_clean: SriovVM) -> None:
        """Writing sriov_numvfs=4 creates 4 igbvf VFs; writing 0 removes them."""
        code = """
            import time
            from pathlib import Path

            def vfs(dev):
                out = []
                for link in sorted(dev.glob("virtfn*")):
                    driver = link / "driver"
                    out.append({
                        "device": (link / "device").read_text().strip(),
                        "driver": driver.resolve().name if driver.exists() else None,
                        "netdevs": sorted(p.name for p in (link / "net").glob("*")),
                    })
                return out

            dev = Path(f"/sys/class/net/{pf}/device")
            (dev / "sriov_numvfs").write_text("4")
            deadline = time.monotonic() + 30
            while time.monotonic() < deadline and not all(v["netdevs"] for v in vfs(dev)):
                time.sleep(0.05)
            created = vfs(dev)
            numvfs_on = (dev / "sriov_numvfs").read_text().strip()
            (dev / "sriov_numvfs").write_text("0")
            result = {
                "created": created,
                "numvfs_on": numvfs_on,
                "after": vfs(dev),
                "numvfs_off": (dev / "sriov_numvfs").read_text().strip(),
            }
        """
        sriov_vm_clean.python(f"pf = {sriov_vm_clean.pf_netdevs[0]!r}")
        out = sriov_vm_clean.python(code)
        assert out["numvfs_on"] == "4"
        assert [(v["device"], v["driver"]) for v in out["created"]] == [("0x10ca", "igbvf")] * 4
        assert all(len(v["netdevs"]) == 1 for v in out["created"])
        assert (out["after"], out["numvfs_off"]) == ([], "0")


class TestReset:
    def test_reset_guest_removes_vfs_and_netns(self, sriov_vm_clean: SriovVM) -> None:
        """reset_guest() disables VFs, deletes netns and leaves the PF up with carrier."""
        pf = sriov_vm_clean.pf_netdevs[0]
        dev = f"/sys/class/net/{pf}/device"
        setup = sriov_vm_clean.run(
            f"echo 2 > {dev}/sriov_numvfs && ip netns add harness-reset"
            f" && ip link set $(ls {dev}/virtfn0/net) netns harness-reset"
        )
        assert setup.returncode == 0, setup.stderr
        reset_guest(sriov_vm_clean)
        after = sriov_vm_clean.run(
            f"cat {dev}/sriov_numvfs /sys/class/net/{pf}/carrier; ls {dev} | grep -c virtfn;"
            " ip netns list | wc -l"
        )
        assert after.stdout.split() == ["0", "1", "0", "0"]


def test_memory_that_silences_the_igb_mailbox_is_refused() -> None:
    """From MAX_MEMORY_MB on, igbvf never gets its MAC from the PF: refuse it up front."""
    with pytest.raises(ValueError, match=f"below {MAX_MEMORY_MB}"):
        SriovVM(memory_mb=MAX_MEMORY_MB)
    assert MAX_MEMORY_MB - 1 == SriovVM(memory_mb=MAX_MEMORY_MB - 1).memory_mb
