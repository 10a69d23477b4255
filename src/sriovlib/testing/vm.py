"""A real-kernel VM for tests: QEMU with emulated Intel 82576 (``igb``) SR-IOV NICs.

:class:`SriovVM` boots the host's Debian kernel in QEMU (``-M q35``, one ``igb`` per PCIe
root port) with the **host root file system** as the guest root: read-only over 9p with a
tmpfs overlay on top, so the guest runs the host's Python, virtualenv and sources
unchanged and every write vanishes with the VM. The guest's real ``igb``/``igbvf``
drivers create real VFs. One boot serves many commands::

    with SriovVM(pfs=1) as vm:
        pf = vm.pf_netdevs[0]
        vm.run(f"echo 4 > /sys/class/net/{pf}/device/sriov_numvfs")
        vm.python("import pyroute2; ipr = pyroute2.IPRoute()")   # globals persist
        links = vm.python("result = [l.get_attr('IFLA_IFNAME') for l in ipr.get_links()]")

:func:`unavailable_reason` says in one line why the VM cannot run here (or None).

Boot (about 5-7 s to ready under TCG on 2 cores; see the shared recipe for the facts):

- the kernel is the newest ``/boot/vmlinuz-*`` whose ``/lib/modules/<version>`` exists;
  its uncompressed ``vmlinux`` is extracted once (PVH direct boot, ~3 s faster under TCG);
- a tiny initramfs (static busybox + the virtio/9p/overlay modules in dependency order
  from ``modules.dep``) mounts the host ``/`` over 9p, puts the overlay on top, mounts a
  per-VM read-write 9p share at ``/run/sriov-vm`` (``config.json`` and ``stage2``) and
  chroots into the overlay;
- ``stage2`` mounts devpts, ``/dev/shm``, cgroup2, creates ``/run/netns``, brings ``lo``
  up, loads ``virtio_console igb igbvf`` and sets the PFs up in the background (link
  negotiation overlaps Python's start-up), and execs the agent
  (:mod:`sriovlib.testing._vm_agent`) with the host's ``sys.executable``;
- the agent applies the host's cwd and environment (PATH plus the sbin directories,
  HOME, LANG, LC_ALL, VIRTUAL_ENV, PYTHONPATH, then ``env=``), waits for the drivers,
  the PFs and their carrier, exports ``SRIOV_PFS`` (PF names), starts its persistent
  Python worker and says hello.

vmlinux and initramfs are cached in ``$SRIOV_VM_CACHE`` (default
``$XDG_CACHE_HOME/sriovlib-vm`` or ``~/.cache/sriovlib-vm``), keyed by kernel version and
a hash of their inputs' content.

**Protocol.** The host listens on a Unix socket; QEMU connects to it as the backend of a
virtio-serial port named ``org.sriovlib.agent`` (``-device virtserialport``), which the
agent opens as ``/dev/vportNpM``. Messages in both directions are a 4-byte big-endian
length followed by a UTF-8 JSON object. The agent speaks first with
``{"op": "hello", "pfs": [...], "kernel": ..., "uptime": ...}`` (or ``"error"``); then
the host sends one request at a time and waits for its reply:

- ``{"id", "op": "ping"}`` → ``{"id", "ok", "uptime"}``
- ``{"id", "op": "run", "cmd", "timeout"}`` → ``{"id", "returncode", "stdout", "stderr",
  "timeout"}`` (``sh -c cmd`` in its own session; killed with its process group on timeout)
- ``{"id", "op": "python", "code", "timeout"}`` → ``{"id", "ok": true, "result"}`` or
  ``{"id", "ok": false, "exc_type", "message", "traceback"}`` or
  ``{"id", "ok": false, "timeout": true, "message"}``

Python code runs in one persistent worker process (the same file with ``--worker``,
behind a pipe pair with the same framing), so a runaway snippet is killed on timeout
without losing the VM. The worker's and the agent's stdout/stderr go to the guest console
(``console.log``). Every wait on the host is bounded: the guest enforces the request's
timeout, the host waits that long plus :data:`HOST_GRACE` seconds, and on a host-side
timeout or QEMU's death raises :class:`VMError` with the tail of the console log and
stops the VM. When the host end of the port closes, the agent powers the guest off.

Limits: the guest sees the host files through 9p with ``cache=loose``, so a host file
changed after the guest first read it may look stale in that VM; guest writes (outside
``/run/sriov-vm``) never reach the host. TCG makes guest CPU work 10-20x slower than
native (``import pyroute2`` about 3 s): pay such costs once per VM through
:meth:`SriovVM.python`, and call the interpreter by its real path (a pyenv shim costs
seconds).

Environment overrides: ``SRIOV_VM_ACCEL`` (``kvm``/``tcg``/``auto``), ``SRIOV_VM_KERNEL``
(a vmlinuz path), ``SRIOV_VM_QEMU``, ``SRIOV_VM_BUSYBOX``, ``SRIOV_VM_CACHE``,
``SRIOV_VM_APPEND`` (extra kernel command line, e.g. ``loglevel=7``).
"""

from __future__ import annotations

import functools
import gzip
import hashlib
import json
import lzma
import os
import platform
import re
import shlex
import shutil
import socket
import struct
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
import zlib
from collections.abc import Iterable, Mapping
from pathlib import Path
from types import TracebackType
from typing import Any, Self

import attrs

__all__ = [
    "HOST_GRACE",
    "MAX_MEMORY_MB",
    "CommandResult",
    "GuestError",
    "SriovVM",
    "VMError",
    "VMTimeoutError",
    "unavailable_reason",
]

#: Seconds the host waits beyond a request's own timeout before declaring the guest hung.
HOST_GRACE = 30.0
#: Guest memory from which q35 maps RAM above 4 GiB; QEMU 10's igb then leaves the VFs'
#: reset handshake unanswered (measured: 2304 MiB works, 2816 MiB does not).
MAX_MEMORY_MB = 2816

PORT_NAME = "org.sriovlib.agent"
#: Loaded by the initramfs (with their dependencies, in order) to reach the host root.
INITRAMFS_MODULES = ("virtio_pci", "9pnet_virtio", "9p", "overlay")
#: Loaded by stage2 from the host's /lib/modules once the root is mounted.
GUEST_MODULES = ("virtio_console", "igb", "igbvf")
#: Created in the guest by stage2 once GUEST_MODULES are loaded.
MODULES_MARKER = "/run/sriov-vm.modules-loaded"
PASSED_ENV = ("PATH", "HOME", "LANG", "LC_ALL", "VIRTUAL_ENV", "PYTHONPATH")
SBIN_DIRS = ("/usr/local/sbin", "/usr/local/bin", "/usr/sbin", "/usr/bin", "/sbin", "/bin")
_CACHE_FORMAT = "sriovlib-vm-1"
_AGENT = Path(__file__).resolve().with_name("_vm_agent.py")
_HEADER = struct.Struct(">I")
_MAX_MESSAGE = 256 * 1024 * 1024

_INIT_SCRIPT = r"""#!/bin/busybox sh
# sriovlib VM initramfs: mount the host root read-only over 9p, overlay a tmpfs, chroot.
/bin/busybox --install -s /bin
export PATH=/bin
mount -t devtmpfs dev /dev
mount -t proc proc /proc
mount -t sysfs sys /sys
fatal() { echo "sriov-vm init: FATAL: $*" > /dev/console; poweroff -f; sleep 5; }
while read -r m; do
  insmod "/modules/$m.ko" || echo "sriov-vm init: insmod $m failed" > /dev/console
done < /modules/order
O=trans=virtio,version=9p2000.L,msize=262144
mount -t 9p -o "$O,ro,cache=loose" hostroot /lower || fatal "cannot mount 9p hostroot"
mount -t tmpfs -o mode=755 upper /upper && mkdir -p /upper/u /upper/w
mount -t overlay -o lowerdir=/lower,upperdir=/upper/u,workdir=/upper/w overlay /newroot ||
  fatal "cannot mount the overlay root"
mount -t tmpfs -o mode=755,nosuid,nodev run /newroot/run || fatal "cannot mount /run"
mkdir -p /newroot/run/sriov-vm
mount -t 9p -o "$O,cache=none" vmio /newroot/run/sriov-vm || fatal "cannot mount 9p vmio"
mount --move /dev /newroot/dev
mount --move /proc /newroot/proc
mount --move /sys /newroot/sys
chroot /newroot /bin/sh /run/sriov-vm/stage2
echo "sriov-vm init: stage2 exited with status $?; powering off" > /dev/console
poweroff -f
"""

_STAGE2_TEMPLATE = """#!/bin/sh
# generated by sriovlib.testing.vm; runs as root, chrooted into the guest's overlay root
export PATH={path} HOME=/root TERM=dumb
log() {{ read -r up _ < /proc/uptime; echo "[$up] sriov-vm stage2: $*" > /dev/console; }}
log started
mkdir -p /dev/pts /dev/shm /run/netns /run/lock
mount -t devpts -o newinstance,ptmxmode=0666 devpts /dev/pts && ln -sf pts/ptmx /dev/ptmx
mount -t tmpfs -o mode=1777,nosuid,nodev shm /dev/shm
mount -t cgroup2 cgroup2 /sys/fs/cgroup 2>/dev/null
ln -sf /proc/self/fd /dev/fd
hostname sriov-vm
ip link set lo up || log "cannot bring lo up"
# load the drivers and start the PFs' link negotiation while Python starts; the agent
# waits for the marker file, then for the PFs and their carrier
(
  log "loading {modules}"
  modprobe -a {modules} || log "modprobe {modules} failed"
  for n in /sys/bus/pci/drivers/igb/*/net/*; do [ -e "$n" ] && ip link set "${{n##*/}}" up; done
  log "drivers loaded"
  : > {marker}
) &
log "starting the agent"
# -S: the agent needs only the standard library (its Python worker gets the full site)
exec {python} -S -P -u {agent} /run/sriov-vm/config.json </dev/null >/dev/console 2>&1
"""


# ---------------------------------------------------------------------------------------
# results and errors


@attrs.frozen
class CommandResult:
    """What a shell command in the guest returned."""

    returncode: int
    stdout: str
    stderr: str


class VMError(Exception):
    """The VM could not boot, died, hung, or broke the protocol."""


class VMTimeoutError(VMError):
    """A guest command or Python snippet exceeded its timeout.

    ``result`` holds the partial output of a timed-out :meth:`SriovVM.run` (None for
    :meth:`SriovVM.python` and for a guest that stopped answering altogether).
    """

    def __init__(self, message: str, result: CommandResult | None = None) -> None:
        super().__init__(message)
        self.result = result


class GuestError(VMError):
    """Python code run by :meth:`SriovVM.python` raised in the guest."""

    def __init__(self, exc_type: str, message: str, traceback: str) -> None:
        text = f"guest Python raised {exc_type}: {message}"
        if traceback:
            text += f"\n--- guest traceback ---\n{traceback.rstrip()}"
        super().__init__(text)
        #: Qualified name of the guest exception's class, e.g. ``"ZeroDivisionError"``.
        self.exc_type = exc_type
        #: The guest exception's ``str()``.
        self.guest_message = message
        #: The formatted guest traceback.
        self.traceback = traceback


# ---------------------------------------------------------------------------------------
# host checks


@attrs.frozen
class _HostSetup:
    qemu: str
    vmlinuz: Path
    kernel_version: str
    busybox: Path


def _version_key(text: str) -> list[tuple[int, str]]:
    return [(int(p), "") if p.isdigit() else (-1, p) for p in re.split(r"(\d+)", text)]


def _find_kernel() -> tuple[Path, str] | str:  # noqa: PLR0911 - one return per check
    override = os.environ.get("SRIOV_VM_KERNEL")
    if override:
        path = Path(override)
        if not path.is_file():
            return f"SRIOV_VM_KERNEL={override} is not a file"
        version = path.name.removeprefix("vmlinuz-")
        if not Path("/lib/modules", version, "modules.dep").is_file():
            return f"no /lib/modules/{version}/modules.dep for SRIOV_VM_KERNEL={override}"
        return path, version
    candidates = sorted(
        Path("/boot").glob("vmlinuz-*"), key=lambda p: _version_key(p.name), reverse=True
    )
    if not candidates:
        return "no /boot/vmlinuz-* (apt-get install linux-image-amd64)"
    for path in candidates:
        version = path.name.removeprefix("vmlinuz-")
        if Path("/lib/modules", version, "modules.dep").is_file():
            if not os.access(path, os.R_OK):
                return f"{path} is not readable"
            return path, version
    return "no /boot/vmlinuz-* with a matching /lib/modules/<version>/modules.dep"


def _is_static_elf(path: Path) -> bool:
    """True for an ELF executable without a PT_INTERP program header."""
    try:
        with path.open("rb") as f:
            ident = f.read(64)
            if len(ident) < 64 or ident[:4] != b"\x7fELF":
                return False
            is64 = ident[4] == 2
            end = "<" if ident[5] == 1 else ">"
            if is64:
                phoff, phentsize, phnum = (
                    struct.unpack_from(end + "Q", ident, 0x20)[0],
                    *struct.unpack_from(end + "HH", ident, 0x36),
                )
            else:
                phoff, phentsize, phnum = (
                    struct.unpack_from(end + "I", ident, 0x1C)[0],
                    *struct.unpack_from(end + "HH", ident, 0x2A),
                )
            f.seek(phoff)
            table = f.read(phentsize * phnum)
    except OSError:
        return False
    pt_interp = 3
    return all(
        struct.unpack_from(end + "I", table, i * phentsize)[0] != pt_interp
        for i in range(phnum)
        if (i + 1) * phentsize <= len(table)
    )


def _find_busybox() -> Path | str:
    override = os.environ.get("SRIOV_VM_BUSYBOX")
    candidates = [override] if override else ["/bin/busybox", "/usr/bin/busybox"]
    for candidate in candidates:
        path = Path(candidate)
        if path.is_file():
            if _is_static_elf(path):
                return path
            return f"{path} is not statically linked (apt-get install busybox-static)"
    return "no busybox (apt-get install busybox-static)"


@functools.cache
def _qemu_has_igb(qemu: str) -> bool | str:
    try:
        proc = subprocess.run(
            [qemu, "-nodefaults", "-machine", "none", "-device", "help"],
            capture_output=True,
            text=True,
            timeout=60,
            check=False,
        )
    except (OSError, subprocess.TimeoutExpired) as exc:
        return f"{qemu} -device help failed: {exc}"
    return re.search(r'^name "igb"', proc.stdout, re.MULTILINE) is not None


def _which(name: str) -> str | None:
    path = os.pathsep.join([os.environ.get("PATH", ""), *SBIN_DIRS])
    return shutil.which(name, path=path)


def _probe_host() -> _HostSetup | str:  # noqa: PLR0911 - one return per check
    if platform.system() != "Linux" or platform.machine() != "x86_64":
        return f"needs an x86_64 Linux host (this is {platform.system()} {platform.machine()})"
    if os.geteuid() != 0:
        return "not root (the VM tier shares the whole host root file system with the guest)"
    override = os.environ.get("SRIOV_VM_QEMU")
    qemu = shutil.which(override) if override else _which("qemu-system-x86_64")
    if not qemu:
        if override:
            return f"SRIOV_VM_QEMU={override} is not an executable"
        return "no qemu-system-x86_64 (apt-get install -t bookworm-backports qemu-system-x86)"
    has_igb = _qemu_has_igb(qemu)
    if isinstance(has_igb, str):
        return has_igb
    if not has_igb:
        return f"{qemu} has no igb device (needs QEMU >= 8.0, e.g. from bookworm-backports)"
    kernel = _find_kernel()
    if isinstance(kernel, str):
        return kernel
    vmlinuz, version = kernel
    busybox = _find_busybox()
    if isinstance(busybox, str):
        return busybox
    for tool, package in (("modprobe", "kmod"), ("ip", "iproute2")):
        if _which(tool) is None:
            return f"no {tool} on the host (apt-get install {package}); the guest uses it"
    try:
        index = _ModuleIndex(version)
        index.resolve((*INITRAMFS_MODULES, *GUEST_MODULES))
    except (OSError, LookupError) as exc:
        return str(exc)
    return _HostSetup(qemu=qemu, vmlinuz=vmlinuz, kernel_version=version, busybox=busybox)


def unavailable_reason() -> str | None:
    """Why the VM tier cannot run on this machine (one line), or None when it can."""
    setup = _probe_host()
    return setup if isinstance(setup, str) else None


def _kvm_usable() -> bool:
    """Real hardware-assisted KVM (a paravirtual /dev/kvm cannot boot a stock kernel)."""
    if not os.access("/dev/kvm", os.R_OK | os.W_OK):
        return False
    if not (Path("/sys/module/kvm_intel").exists() or Path("/sys/module/kvm_amd").exists()):
        return False
    try:
        cpuinfo = Path("/proc/cpuinfo").read_text()
    except OSError:
        return False
    return re.search(r"^flags\s*:.*\b(vmx|svm)\b", cpuinfo, re.MULTILINE) is not None


# ---------------------------------------------------------------------------------------
# boot artefacts (cached)


def cache_dir() -> Path:
    """Where vmlinux and initramfs images are cached."""
    override = os.environ.get("SRIOV_VM_CACHE")
    if override:
        return Path(override)
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg) if xdg else Path.home() / ".cache"
    return base / "sriovlib-vm"


def _atomic_write(path: Path, data: bytes) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    try:
        with os.fdopen(fd, "wb") as f:
            f.write(data)
        Path(tmp).replace(path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise


class _ModuleIndex:
    """Kernel modules of one version, from ``/lib/modules/<version>/modules.dep``."""

    def __init__(self, version: str) -> None:
        self.root = Path("/lib/modules", version)
        self.version = version
        self.paths: dict[str, Path] = {}
        self.deps: dict[str, list[str]] = {}
        for line in (self.root / "modules.dep").read_text().splitlines():
            target, _, deps = line.partition(":")
            if not target:
                continue
            name = self.name_of(target)
            self.paths[name] = self.root / target
            self.deps[name] = [self.name_of(d) for d in deps.split()]
        builtin = self.root / "modules.builtin"
        self.builtin = (
            {self.name_of(line) for line in builtin.read_text().split()}
            if builtin.is_file()
            else set()
        )

    @staticmethod
    def name_of(path: str) -> str:
        """``kernel/fs/9p/9p.ko.xz`` → ``9p``; dashes become underscores."""
        name = path.rsplit("/", 1)[-1]
        name = re.sub(r"\.ko(\.(xz|gz|zst))?$", "", name)
        return name.replace("-", "_")

    def resolve(self, names: Iterable[str]) -> list[str]:
        """Loadable modules for ``names`` with dependencies first (built-ins dropped)."""
        order: list[str] = []
        seen: set[str] = set()

        def visit(name: str) -> None:
            name = name.replace("-", "_")
            if name in seen:
                return
            seen.add(name)
            if name not in self.paths:
                if name in self.builtin:
                    return
                raise LookupError(f"kernel module {name} not found in {self.root}")
            for dep in self.deps[name]:
                visit(dep)
            order.append(name)

        for name in names:
            visit(name)
        return order

    def read(self, name: str) -> bytes:
        """The uncompressed ``.ko`` image of a module."""
        path = self.paths[name]
        data = path.read_bytes()
        if path.name.endswith(".ko.xz"):
            return lzma.decompress(data)
        if path.name.endswith(".ko.gz"):
            return gzip.decompress(data)
        if path.name.endswith(".ko.zst"):
            return subprocess.run(
                ["zstd", "-qdc"], input=data, capture_output=True, check=True
            ).stdout
        return data


def _cpio_newc(entries: list[tuple[str, int, bytes, int]]) -> bytes:
    """A newc cpio archive from ``(name, mode, data, rdev)`` entries."""
    out = bytearray()

    def add(ino: int, name: str, mode: int, data: bytes, rdev: int) -> None:
        raw_name = name.encode() + b"\0"
        fields = (ino, mode, 0, 0, 2 if mode & 0o040000 else 1, 0, len(data), 0, 0,
                  os.major(rdev), os.minor(rdev), len(raw_name), 0)  # fmt: skip
        out.extend(b"070701" + b"".join(b"%08x" % f for f in fields) + raw_name)
        out.extend(b"\0" * (-len(out) % 4))
        out.extend(data)
        out.extend(b"\0" * (-len(out) % 4))

    for ino, (name, mode, data, rdev) in enumerate(entries, start=1):
        add(ino, name, mode, data, rdev)
    add(0, "TRAILER!!!", 0, b"", 0)
    return bytes(out)


def _initramfs(setup: _HostSetup, progress: bool) -> Path:
    """Build (once) and return the cached initramfs for ``setup``."""
    index = _ModuleIndex(setup.kernel_version)
    modules = index.resolve(INITRAMFS_MODULES)
    busybox = setup.busybox.read_bytes()
    images = {name: index.read(name) for name in modules}
    digest = hashlib.sha256()
    for part in (_CACHE_FORMAT, setup.kernel_version, _INIT_SCRIPT, " ".join(modules)):
        digest.update(part.encode() + b"\0")
    digest.update(busybox)
    for name in modules:
        digest.update(images[name])
    path = cache_dir() / f"initramfs-{setup.kernel_version}-{digest.hexdigest()[:16]}.cpio"
    if path.is_file():
        return path
    _log(progress, f"building {path}")
    entries: list[tuple[str, int, bytes, int]] = [
        (d, 0o040755, b"", 0)
        for d in ("bin", "dev", "proc", "sys", "lower", "upper", "newroot", "modules")
    ]
    entries.append(("dev/console", 0o020600, b"", os.makedev(5, 1)))
    entries.append(("init", 0o100755, _INIT_SCRIPT.encode(), 0))
    entries.append(("bin/busybox", 0o100755, busybox, 0))
    entries.extend((f"modules/{name}.ko", 0o100644, images[name], 0) for name in modules)
    entries.append(("modules/order", 0o100644, "".join(f"{m}\n" for m in modules).encode(), 0))
    _atomic_write(path, _cpio_newc(entries))
    return path


def _extract_vmlinux(image: bytes) -> bytes | None:
    """The uncompressed ELF vmlinux inside a bzImage, if it has a PVH entry note."""
    for magic in (b"\xfd7zXZ\x00", b"\x1f\x8b\x08", b"\x28\xb5\x2f\xfd"):
        start = image.find(magic)
        if start < 0:
            continue
        try:
            if magic.startswith(b"\xfd7z"):
                out = lzma.LZMADecompressor(lzma.FORMAT_XZ).decompress(image[start:])
            elif magic.startswith(b"\x1f\x8b"):
                out = zlib.decompressobj(31).decompress(image[start:])
            else:
                out = subprocess.run(
                    ["zstd", "-qdc"], input=image[start:], capture_output=True, check=False
                ).stdout
        except (lzma.LZMAError, zlib.error, OSError):
            continue
        if out[:4] == b"\x7fELF" and b"Xen\x00" in out:
            return out
    return None


def _boot_image(setup: _HostSetup, progress: bool) -> Path:
    """The cached PVH-bootable vmlinux, or the vmlinuz itself if extraction fails."""
    image = setup.vmlinuz.read_bytes()
    key = hashlib.sha256(image).hexdigest()[:16]
    path = cache_dir() / f"vmlinux-{setup.kernel_version}-{key}"
    failed = path.with_name(path.name + ".failed")
    if path.is_file():
        return path
    if failed.exists():
        return setup.vmlinuz
    _log(progress, f"extracting {path} from {setup.vmlinuz} (once)")
    vmlinux = _extract_vmlinux(image)
    if vmlinux is None:
        _atomic_write(failed, b"")
        return setup.vmlinuz
    _atomic_write(path, vmlinux)
    return path


# ---------------------------------------------------------------------------------------
# the VM


def _log(enabled: bool, message: str) -> None:
    if enabled:
        print(f"sriov-vm: {message}", file=sys.stderr, flush=True)


def _guest_path(host_path: str) -> str:
    parts = [p for p in host_path.split(os.pathsep) if p]
    parts += [d for d in SBIN_DIRS if d not in parts]
    return os.pathsep.join(parts)


class SriovVM:
    """A QEMU guest with ``pfs`` emulated igb SR-IOV NICs, booted from the host root fs.

    Use as a context manager (or call :meth:`start` and :meth:`close`). After start,
    :attr:`pf_netdevs` lists the PF netdev names in the guest (PCI order), every PF is up
    with carrier, and :meth:`run` / :meth:`python` execute in the guest as root. Calls are
    serialised (thread-safe); the VM is single-use: after :meth:`close` or a fatal error
    build a new one.
    """

    def __init__(
        self,
        pfs: int = 1,
        memory_mb: int = 1024,
        boot_timeout: float = 180.0,
        *,
        cpus: int | None = None,
        accel: str | None = None,
        env: Mapping[str, str] | None = None,
        python: str | None = None,
        carrier_timeout: float = 30.0,
        progress: bool = True,
        iommu: bool = False,
    ) -> None:
        """Describe the VM; nothing runs before :meth:`start`.

        Args:
            pfs: number of igb NICs (PFs), each behind its own PCIe root port.
            memory_mb: guest memory, below :data:`MAX_MEMORY_MB` (q35 puts RAM above
                4 GiB from there on, and QEMU's igb then stops answering the VFs'
                mailbox: igbvf logs "PF still in reset state" and makes up a MAC).
            boot_timeout: seconds from QEMU start to the agent's hello (PFs up, carrier).
            cpus: guest vCPUs (default: 2, or 1 on a single-CPU host).
            accel: ``"kvm"``, ``"tcg"`` or None (``$SRIOV_VM_ACCEL`` or auto: KVM only
                with real vmx/svm and kvm_intel/kvm_amd).
            env: extra environment variables for guest commands and Python.
            python: guest interpreter path (default: the host's ``sys.executable``).
            carrier_timeout: seconds to wait for PF carrier during boot.
            progress: print progress lines (``sriov-vm: ...``) to stderr.
            iommu: give the guest an emulated Intel IOMMU (QEMU's ``intel-iommu`` with
                interrupt remapping, ``kernel-irqchip=split`` under KVM, ``intel_iommu=on``
                on the guest command line), so VFs get IOMMU groups and vfio-pci takes
                them with ``/dev/vfio/<group>``; off by default (the boot stays as fast).
        """
        if pfs < 1:
            raise ValueError("pfs must be at least 1")
        if memory_mb >= MAX_MEMORY_MB:
            raise ValueError(
                f"memory_mb must be below {MAX_MEMORY_MB}: with guest RAM above 4 GiB the "
                "emulated igb no longer answers its VFs"
            )
        self.pfs = pfs
        self.memory_mb = memory_mb
        self.boot_timeout = boot_timeout
        self.cpus = cpus if cpus is not None else min(2, os.cpu_count() or 1)
        self.accel = accel or os.environ.get("SRIOV_VM_ACCEL") or "auto"
        if self.accel not in ("kvm", "tcg", "auto"):
            raise ValueError(f"accel must be kvm, tcg or auto, not {self.accel!r}")
        self.extra_env = dict(env or {})
        self.python_executable = python or sys.executable
        self.carrier_timeout = carrier_timeout
        self.progress = progress
        self.iommu = iommu
        #: PF netdev names in the guest, in PCI order (set by :meth:`start`).
        self.pf_netdevs: list[str] = []
        #: Guest kernel release (set by :meth:`start`).
        self.kernel_version = ""
        #: Seconds from :meth:`start` to ready.
        self.boot_seconds = 0.0
        #: Working directory of guest commands (the host cwd at :meth:`start`).
        self.cwd = ""
        self._proc: subprocess.Popen[bytes] | None = None
        self._sock: socket.socket | None = None
        self._run_dir: Path | None = None
        self._lock = threading.Lock()
        self._next_id = 0
        self._dead_reason: str | None = None

    # -- lifecycle ----------------------------------------------------------------------

    def __enter__(self) -> Self:
        if self._proc is None:
            self.start()
        return self

    def __exit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        self.close()

    @property
    def alive(self) -> bool:
        """True while QEMU runs and the agent answers."""
        return self._proc is not None and self._proc.poll() is None and self._dead_reason is None

    def start(self) -> None:
        """Boot the VM and wait until the agent is ready; raise :class:`VMError` if not."""
        if self._proc is not None or self._dead_reason is not None:
            raise VMError("this SriovVM was already started; create a new one")
        setup = _probe_host()
        if isinstance(setup, str):
            raise VMError(f"the SR-IOV VM cannot run here: {setup}")
        started = time.monotonic()
        kvm = self.accel == "kvm" or (self.accel == "auto" and _kvm_usable())
        self.accel = "kvm" if kvm else "tcg"
        self.kernel_version = setup.kernel_version
        self.cwd = str(Path.cwd())
        boot_image = _boot_image(setup, self.progress)
        initrd = _initramfs(setup, self.progress)
        self._run_dir = Path(tempfile.mkdtemp(prefix="sriov-vm-"))
        try:
            self._boot(setup, boot_image, initrd)
        except BaseException:
            self.close()
            raise
        self.boot_seconds = time.monotonic() - started
        _log(
            self.progress,
            f"ready in {self.boot_seconds:.1f} s (PFs: {' '.join(self.pf_netdevs)})",
        )

    def _boot(self, setup: _HostSetup, boot_image: Path, initrd: Path) -> None:
        assert self._run_dir is not None  # noqa: S101 - set by start()
        share = self._run_dir / "share"
        share.mkdir()
        env = {k: os.environ[k] for k in PASSED_ENV if k in os.environ}
        env["PATH"] = _guest_path(env.get("PATH", ""))
        env.update(self.extra_env)
        config = {
            "env": env,
            "cwd": self.cwd,
            "pfs": self.pfs,
            "port_name": PORT_NAME,
            "modules_marker": MODULES_MARKER,
            "pf_timeout": 30.0,
            "carrier_timeout": self.carrier_timeout,
        }
        (share / "config.json").write_text(json.dumps(config, indent=1))
        stage2 = _STAGE2_TEMPLATE.format(
            path=shlex.quote(":".join(SBIN_DIRS)),
            modules=" ".join(GUEST_MODULES),
            python=shlex.quote(self.python_executable),
            agent=shlex.quote(str(_AGENT)),
            marker=MODULES_MARKER,
        )
        (share / "stage2").write_text(stage2)
        listener = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
        try:
            listener.bind(str(self._run_dir / "agent.sock"))
            listener.listen(1)
            command = self._qemu_command(setup, boot_image, initrd, share)
            _log(
                self.progress,
                f"booting ({self.accel}, {self.cpus} vCPU, {self.memory_mb} MiB, "
                f"{self.pfs} PF{', IOMMU' if self.iommu else ''}, "
                f"kernel {setup.kernel_version})...",
            )
            deadline = time.monotonic() + self.boot_timeout
            with (self._run_dir / "qemu.log").open("wb") as qemu_log:
                self._proc = subprocess.Popen(
                    command, stdin=subprocess.DEVNULL, stdout=qemu_log, stderr=subprocess.STDOUT
                )
            self._sock = self._accept(listener, deadline)
        finally:
            listener.close()
        hello = self._receive(deadline, f"booting (boot_timeout={self.boot_timeout:g} s)")
        if hello.get("op") != "hello":
            raise self._fatal(VMError, f"unexpected first message from the agent: {hello!r}")
        if "error" in hello:
            raise self._fatal(VMError, f"guest set-up failed: {hello['error']}")
        self.pf_netdevs = [str(pf) for pf in hello["pfs"]]
        self.kernel_version = str(hello.get("kernel", self.kernel_version))

    def _qemu_command(
        self, setup: _HostSetup, boot_image: Path, initrd: Path, share: Path
    ) -> list[str]:
        assert self._run_dir is not None  # noqa: S101 - set by start()
        for path in (boot_image, initrd, share, self._run_dir):
            if "," in str(path):
                raise VMError(f"QEMU option paths must not contain commas: {path}")
        if self.accel == "kvm":
            accel = ["-accel", "kvm", "-cpu", "host"]
        else:
            accel = ["-accel", "tcg,thread=multi,tb-size=256", "-cpu", "max"]
        append = "console=ttyS0 loglevel=4 panic=-1 cryptomgr.notests mitigations=off"
        machine = "q35"
        iommu: list[str] = []
        if self.iommu:
            # interrupt remapping needs the split irqchip under KVM (TCG has no in-kernel
            # irqchip to split); the IOMMU device comes before the PCI devices it covers
            machine += ",kernel-irqchip=split" if self.accel == "kvm" else ""
            iommu = ["-device", "intel-iommu,intremap=on"]
            append += " intel_iommu=on"
        append = f"{append} {os.environ.get('SRIOV_VM_APPEND', '')}".strip()
        sock = self._run_dir / "agent.sock"
        command = [
            setup.qemu, "-M", machine, *accel, *iommu,
            "-smp", str(self.cpus), "-m", str(self.memory_mb),
            "-nodefaults", "-no-user-config", "-display", "none", "-no-reboot",
            "-kernel", str(boot_image), "-initrd", str(initrd), "-append", append,
            "-device", "isa-debug-exit,iobase=0xf4,iosize=0x04",
            "-serial", f"file:{self._run_dir / 'console.log'}",
            "-virtfs", "local,path=/,mount_tag=hostroot,security_model=none,readonly=on,"
            "multidevs=remap",
            "-virtfs", f"local,path={share},mount_tag=vmio,security_model=none,multidevs=remap",
            "-device", "virtio-serial-pci,id=vser0",
            "-chardev", f"socket,id=agent,path={sock}",
            "-device", f"virtserialport,bus=vser0.0,chardev=agent,name={PORT_NAME}",
        ]  # fmt: skip
        for i in range(1, self.pfs + 1):
            command += [
                "-device", f"pcie-root-port,id=rp{i},chassis={i},slot={i}",
                "-netdev", f"user,id=n{i}",
                "-device", f"igb,bus=rp{i},netdev=n{i},mac=52:54:00:12:34:{0x55 + i:02x}",
            ]  # fmt: skip
        return command

    def close(self) -> None:
        """Stop QEMU and remove the per-VM directory (idempotent)."""
        if self._sock is not None:
            self._sock.close()
            self._sock = None
        if self._proc is not None:
            if self._proc.poll() is None:
                self._proc.terminate()
                try:
                    self._proc.wait(timeout=10)
                except subprocess.TimeoutExpired:
                    self._proc.kill()
                    self._proc.wait()
            if self._dead_reason is None:
                self._dead_reason = "closed"
        if self._run_dir is not None:
            shutil.rmtree(self._run_dir, ignore_errors=True)
            self._run_dir = None

    # -- diagnostics --------------------------------------------------------------------

    def console_log(self) -> str:
        """The guest console so far (kernel warnings, agent and Python worker output)."""
        if self._run_dir is None:
            return ""
        try:
            return (self._run_dir / "console.log").read_text(errors="replace")
        except OSError:
            return ""

    def _console_tail(self, lines: int = 40) -> str:
        text = "\n".join(self.console_log().splitlines()[-lines:])
        qemu_log = ""
        if self._run_dir is not None:
            try:
                qemu_log = (self._run_dir / "qemu.log").read_text(errors="replace").strip()
            except OSError:
                qemu_log = ""
        tail = f"--- guest console (last {lines} lines) ---\n{text}"
        if qemu_log:
            tail += f"\n--- qemu output ---\n{qemu_log[-4000:]}"
        return tail

    def _fatal(self, cls: type[VMError], message: str) -> VMError:
        """Build an error carrying the console tail, then stop the VM for good."""
        if self._proc is not None and self._proc.poll() is None:
            time.sleep(0.2)  # let the guest's last console lines reach the file
        error = cls(f"{message}\n{self._console_tail()}")
        self._dead_reason = message
        self.close()
        return error

    # -- transport ----------------------------------------------------------------------

    def _accept(self, listener: socket.socket, deadline: float) -> socket.socket:
        while True:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fatal(VMTimeoutError, "QEMU did not connect to the agent socket")
            listener.settimeout(min(remaining, 0.5))
            try:
                conn, _ = listener.accept()
            except TimeoutError:
                self._check_qemu("starting QEMU")
                continue
            return conn

    def _check_qemu(self, doing: str) -> None:
        if self._proc is None:
            raise VMError("the VM is not running")
        status = self._proc.poll()
        if status is not None:
            raise self._fatal(VMError, f"QEMU exited with status {status} while {doing}")

    def _recv_exact(self, size: int, deadline: float, doing: str) -> bytes:
        assert self._sock is not None  # noqa: S101 - checked by the callers
        since = time.monotonic()
        buf = bytearray()
        while len(buf) < size:
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                raise self._fatal(
                    VMTimeoutError,
                    f"no answer from the guest agent within {time.monotonic() - since:.0f} s "
                    f"while {doing}; VM stopped",
                )
            self._sock.settimeout(min(remaining, 0.5))
            try:
                chunk = self._sock.recv(min(size - len(buf), 1 << 20))
            except TimeoutError:
                self._check_qemu(doing)
                continue
            if not chunk:
                self._check_qemu(doing)
                raise self._fatal(VMError, f"the guest agent closed the channel while {doing}")
            buf += chunk
        return bytes(buf)

    def _receive(self, deadline: float, doing: str) -> dict[str, Any]:
        (size,) = _HEADER.unpack(self._recv_exact(_HEADER.size, deadline, doing))
        if size > _MAX_MESSAGE:
            raise self._fatal(VMError, f"protocol error: {size}-byte message while {doing}")
        message = json.loads(self._recv_exact(size, deadline, doing).decode("utf-8"))
        if not isinstance(message, dict):
            raise self._fatal(VMError, f"protocol error: non-object message while {doing}")
        return message

    def _request(self, message: dict[str, Any], timeout: float, doing: str) -> dict[str, Any]:
        with self._lock:
            if self._sock is None or not self.alive:
                raise VMError(f"the VM is not running ({self._dead_reason or 'not started'})")
            self._next_id += 1
            message["id"] = self._next_id
            body = json.dumps(message).encode("utf-8")
            deadline = time.monotonic() + timeout + HOST_GRACE
            try:
                self._sock.settimeout(max(deadline - time.monotonic(), 0.1))
                self._sock.sendall(_HEADER.pack(len(body)) + body)
            except OSError as exc:
                raise self._fatal(VMError, f"cannot send to the guest agent ({exc})") from exc
            reply = self._receive(deadline, doing)
            if reply.get("id") != message["id"]:
                raise self._fatal(VMError, f"protocol error: reply {reply!r} to {message['id']}")
            if "agent_error" in reply:
                raise VMError(f"guest agent error while {doing}: {reply['agent_error']}")
            return reply

    # -- commands -----------------------------------------------------------------------

    def ping(self) -> float:
        """Round-trip to the agent; return the guest uptime in seconds."""
        reply = self._request({"op": "ping"}, 10.0, "pinging")
        return float(reply["uptime"])

    def run(self, cmd: str, timeout: float = 120.0) -> CommandResult:
        """Run ``sh -c cmd`` as root in the guest (cwd: the host cwd at start).

        stdin is /dev/null; stdout and stderr are decoded as UTF-8 (invalid bytes
        replaced). On timeout the command's process group is killed and
        :class:`VMTimeoutError` (with the partial output in ``result``) is raised; the VM
        stays usable. Background processes that keep stdout open delay the reply until
        they exit or the timeout hits: redirect their output.
        """
        reply = self._request(
            {"op": "run", "cmd": cmd, "timeout": timeout}, timeout, f"running {cmd!r}"
        )
        result = CommandResult(
            returncode=int(reply["returncode"]),
            stdout=str(reply["stdout"]),
            stderr=str(reply["stderr"]),
        )
        if reply.get("timeout"):
            raise VMTimeoutError(
                f"guest command timed out after {timeout:g} s: {cmd!r}\n"
                f"stdout: {result.stdout[-2000:]!r}\nstderr: {result.stderr[-2000:]!r}",
                result,
            )
        return result

    def python(self, code: str, timeout: float = 300.0) -> Any:
        """Execute Python ``code`` in the guest's persistent interpreter; return ``result``.

        ``code`` is dedented, then executed in one long-lived guest process (the host's
        interpreter, so the host's virtualenv is importable) whose globals persist across
        calls. The value the code assigns to the global ``result`` (None if it assigns
        none) is returned through JSON. A guest exception raises :class:`GuestError`
        with the guest traceback; a timeout raises :class:`VMTimeoutError` after the
        worker was killed (its globals are then lost; the next call starts afresh).
        """
        reply = self._request(
            {"op": "python", "code": textwrap.dedent(code), "timeout": timeout},
            timeout,
            "running guest Python",
        )
        if reply.get("ok"):
            return reply.get("result")
        if reply.get("timeout"):
            raise VMTimeoutError(str(reply.get("message")))
        raise GuestError(
            str(reply.get("exc_type")), str(reply.get("message")), str(reply.get("traceback"))
        )
