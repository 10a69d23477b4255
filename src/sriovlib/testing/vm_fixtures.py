"""pytest fixtures for the VM tier (tests marked ``vm``).

- ``sriov_vm`` (session): one :class:`~sriovlib.testing.vm.SriovVM` with one igb PF and
  2.5 GiB (enough for the kube tier's kubelet, API server, etcd and containerd, and
  below :data:`~sriovlib.testing.vm.MAX_MEMORY_MB`),
  booted on first use and stopped at the end of the session; every test using it skips
  with a one-line reason where the VM cannot run (:func:`~sriovlib.testing.vm.
  unavailable_reason`). A failed boot errors every test that uses it (not one boot
  attempt per test).
- ``sriov_vm_clean`` (function): the same VM after :func:`reset_guest`, for tests that
  need no VFs and no leftover network namespaces at start.

The sriovlib pytest plugin imports these fixtures; this module is also a plugin of its
own (``pytest -p sriovlib.testing.vm_fixtures``), which registers the ``vm`` marker.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator

import pytest

from sriovlib.testing.vm import SriovVM, unavailable_reason

__all__ = ["RESET_SCRIPT", "reset_guest", "sriov_vm", "sriov_vm_clean"]

#: Shell run in the guest by :func:`reset_guest`: VFs off on every igb PF (through 0, as
#: the driver requires), autoprobe back on, every netns deleted (a VF moved into one
#: returns to the root namespace), every PF up, and carrier awaited (the PF link flaps
#: after each ``sriov_numvfs`` change; VFs created while it is down misbehave).
RESET_SCRIPT = r"""
set -u
for dev in /sys/bus/pci/drivers/igb/*/; do
  [ -e "${dev}sriov_numvfs" ] || continue
  [ "$(cat "${dev}sriov_numvfs")" = 0 ] || echo 0 > "${dev}sriov_numvfs" || exit 1
  echo 1 > "${dev}sriov_drivers_autoprobe"
done
ip -all netns delete 2>/dev/null || true
pfs=""
for n in /sys/bus/pci/drivers/igb/*/net/*; do
  [ -e "$n" ] || continue
  pfs="$pfs ${n##*/}"
  ip link set "${n##*/}" up || exit 1
done
i=0
for pf in $pfs; do
  while [ "$(cat "/sys/class/net/$pf/carrier" 2>/dev/null)" != 1 ]; do
    i=$((i + 1))
    [ "$i" -lt 1000 ] || { echo "no carrier on $pf" >&2; exit 1; }
    sleep 0.02
  done
done
"""


def reset_guest(vm: SriovVM, timeout: float = 60.0) -> None:
    """Put the guest's SR-IOV state back to boot state (see :data:`RESET_SCRIPT`).

    Raises AssertionError with the guest's stderr when the reset fails.
    """
    result = vm.run(RESET_SCRIPT, timeout=timeout)
    if result.returncode != 0:
        raise AssertionError(
            f"resetting the SR-IOV VM failed (status {result.returncode}): {result.stderr}"
        )


def pytest_configure(config: pytest.Config) -> None:
    """Register the ``vm`` marker (when this module is loaded as a plugin by itself)."""
    config.addinivalue_line(
        "markers", "vm: runs in a QEMU VM with an emulated SR-IOV NIC (real igb/igbvf driver)"
    )


def _capture_disabled(request: pytest.FixtureRequest) -> contextlib.AbstractContextManager[None]:
    """Show the VM's boot progress on the terminal despite output capturing."""
    capture = request.config.pluginmanager.getplugin("capturemanager")
    if capture is None:
        return contextlib.nullcontext()
    manager: contextlib.AbstractContextManager[None] = capture.global_and_fixture_disabled()
    return manager


@pytest.fixture(scope="session")
def sriov_vm(request: pytest.FixtureRequest) -> Iterator[SriovVM]:
    """A session-wide SR-IOV VM with one igb PF; skips where the VM cannot run."""
    reason = unavailable_reason()
    if reason is not None:
        pytest.skip(f"SR-IOV VM unavailable: {reason}")
    vm = SriovVM(pfs=1, memory_mb=2560)  # the kube tier runs a whole node in it
    try:
        with _capture_disabled(request):
            vm.start()
        yield vm
    finally:
        vm.close()


@pytest.fixture
def sriov_vm_clean(sriov_vm: SriovVM) -> SriovVM:
    """The session VM with no VFs, no network namespaces and every PF up with carrier."""
    reset_guest(sriov_vm)
    return sriov_vm
