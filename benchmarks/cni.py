"""CNI benchmark: VERSION and ADD+DEL through cnitool, against a bare interpreter start.

Run: ``python benchmarks/cni.py`` (``--repeat N``). In one run, interleaved:

- ``python -c pass`` with the interpreter the ``sriov`` script uses (the floor any
  Python plugin pays);
- ``CNI_COMMAND=VERSION sriov`` (the console script) and ``python -m sriovlib.cni``;
- the fast path: the console script's VERSION handed to the agent's server
  (``sriovlib.agent.cniserver.CniServer``, in this process), and its ADD handed to a
  listener that answers at once (what is left is the client's start, request and reply);
- as root, with cnitool and Debian's host-local available: ``cnitool add`` and
  ``cnitool del`` of a VF with a VLAN, a MAC and an address, on a node whose VFs are
  veths (``sriovlib.testing.cni.VethNode``), through the tests' entry point (the shipped
  code path with the veth backend) in-process, and through the shipped console script
  handing them to a fast-path agent (``sriovlib.testing.cni_agent``: the shipped server
  with the veth backend), interleaved with a bare start, and the netlink requests the
  plugin made for each (from its debug log).

Prints medians and minimums in milliseconds, the VERSION/bare ratio (target: at most
3x) and the fast path's (target: at most 1.5x). ``benchmarks/cni_vm.py`` measures ADD
and DEL both ways on a real igb VF in the VM. ``--baseline PATH`` (another checkout's
``sriov`` console script, e.g. before a refactor) interleaves its ADD/DEL pairs with
this checkout's on the same node and prints the ratios of the medians, wall time and
CPU time.

Import time of an in-process ADD (target: at most 40 ms), also as root with cnitool:
``cnitool add`` runs the plugin with ``PYTHONPROFILEIMPORTTIME=1`` and the plugin's
import log is read back. Two figures, medians of ``--repeat`` runs:

- *all imports of the ADD process*: the sum of ``-X importtime``'s self times of every
  module imported after interpreter start-up (what ``python -c pass`` imports is left
  out; ``-X importtime`` does not log what ``importlib.import_module`` loads, here the
  built-in vendor plugins), so it includes the tests' entry point and its veth backend
  (``sriovlib.testing``), which the shipped binary does not load;
- *the shipped ADD path*: what the shipped binary would import for that ADD, imported
  in the same order by a fresh interpreter: the ``sriovlib`` modules (not
  ``sriovlib.testing``) the ADD loaded, the modules shipped code imported inside a
  function, and the built-in vendor plugins (loaded with ``importlib.import_module``,
  which ``-X importtime`` does not log) — as the same sum, and as wall time over a bare
  start (interleaved with ``python -c pass``, without ``-X importtime``'s own overhead).

It also names which of the modules the CNI path must not load (pyroute2,
``importlib.metadata``, sqlite3, asyncio, ssl, ``unittest.mock``) the ADD process
loaded, and how the shipped path's sum splits between sriovlib's own modules and the
rest (attrs, pluggy, the standard library). ``--baseline-src DIR`` (another checkout's
``src``) measures the same figures for the ``sriovlib`` there, put first on
``PYTHONPATH``, interleaved with this checkout's, and prints the ratio of the shipped
paths' wall times. When the environment forbids writing bytecode
(``PYTHONDONTWRITEBYTECODE``), the timed processes keep their compiled files in a
private cache directory (``PYTHONPYCACHEPREFIX``), so that no timed start compiles a
module.
"""

from __future__ import annotations

import argparse
import contextlib
import json
import os
import resource
import statistics
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

SCRIPT = Path(sys.executable).parent / "sriov"
#: What the CNI path must not import (docs/cni.md#performance).
HEAVY = ("pyroute2", "importlib.metadata", "sqlite3", "asyncio", "ssl", "unittest.mock")
_PYCACHE = tempfile.TemporaryDirectory(prefix="cni-bench-pycache-")


def child_environ(base: dict[str, str] | None = None) -> dict[str, str]:
    """*base* (default this process's environment) for a timed process: compiled files
    are written (to a private cache if the environment said not to write them)."""
    env = dict(os.environ if base is None else base)
    if env.pop("PYTHONDONTWRITEBYTECODE", None) is not None:
        env.setdefault("PYTHONPYCACHEPREFIX", _PYCACHE.name)
    return env


def timed(argv: list[str], env: dict[str, str] | None = None, stdin: bytes | None = None) -> float:
    env = child_environ(env)
    start = time.perf_counter()
    if stdin is None:
        subprocess.run(
            argv, env=env, stdin=subprocess.DEVNULL, stdout=subprocess.DEVNULL, check=True
        )
    else:
        subprocess.run(argv, env=env, input=stdin, stdout=subprocess.DEVNULL, check=True)
    return time.perf_counter() - start


def import_log(text: str) -> list[tuple[str, int, int]]:
    """``-X importtime`` lines as (module, self µs, depth), in the order printed."""
    rows = []
    for line in text.splitlines():
        parts = line.split("|")
        if not line.startswith("import time:") or len(parts) != 3 or "self [us]" in line:
            continue
        name = parts[2].rstrip()
        depth = (len(name) - len(name.lstrip(" ")) - 1) // 2
        rows.append((name.strip(), int(parts[0].split(":")[1]), depth))
    return rows


def startup_modules() -> set[str]:
    """What a bare interpreter imports before running anything."""
    done = subprocess.run(
        [sys.executable, "-X", "importtime", "-c", "pass"],
        env=child_environ(),
        capture_output=True,
        text=True,
        check=True,
    )
    return {name for name, _, _ in import_log(done.stderr)}


def imported_after_startup(rows: list[tuple[str, int, int]], startup: set[str]) -> float:
    """Milliseconds: the self times of every module in *rows* not in *startup*."""
    return sum(own for name, own, _ in rows if name not in startup) / 1000


def row(label: str, samples: list[float], base: float | None = None) -> str:
    median = statistics.median(samples) * 1000
    ratio = f"{median / base:5.2f}x" if base else "      "
    return f"{label:<34} {median:8.1f} {min(samples) * 1000:8.1f} {ratio}"


def version_figures(repeat: int) -> tuple[float, float | None]:
    """VERSION in-process and through the fast path, and an ADD's fast-path client
    start; returns the worst in-process VERSION ratio and the worst fast-path ratio."""
    from sriovlib.agent.cniserver import CniServer
    from sriovlib.cni.fastpath import SOCKET_ENV

    env = dict(os.environ, CNI_COMMAND="VERSION")
    with tempfile.TemporaryDirectory(prefix="cni-bench-agent-") as work:
        server = CniServer(Path(work) / "agent.sock")
        server.start()
        instant = InstantAgent(Path(work) / "instant.sock")
        fast = {**env, SOCKET_ENV: str(server.path)}
        add = {**os.environ, "CNI_COMMAND": "ADD", SOCKET_ENV: str(instant.path)}
        add_conf = json.dumps(
            {"cniVersion": "1.0.0", "name": "n", "type": "sriov", "deviceID": "0000:03:00.1",
             "vlan": 100, "ipam": {"type": "host-local", "subnet": "10.1.0.0/24"}}
        ).encode()  # fmt: skip
        variants: dict[str, tuple[list[str], dict[str, str] | None, bytes | None]] = {
            "python -c pass": ([sys.executable, "-c", "pass"], None, None),
            "python -m sriovlib.cni  VERSION": ([sys.executable, "-m", "sriovlib.cni"], env, None),
        }
        fast_names = []
        if SCRIPT.exists():
            variants["sriov (console script)  VERSION"] = ([str(SCRIPT)], env, None)
            variants["sriov VERSION, fast path"] = ([str(SCRIPT)], fast, None)
            variants["sriov ADD client, fast path"] = ([str(SCRIPT)], add, add_conf)
            fast_names = ["sriov VERSION, fast path", "sriov ADD client, fast path"]
        samples: dict[str, list[float]] = {name: [] for name in variants}
        try:
            for argv, variant_env, stdin in variants.values():
                timed(argv, variant_env, stdin)  # warm the page cache and .pyc files
            for _ in range(repeat):
                for name, (argv, variant_env, stdin) in variants.items():
                    samples[name].append(timed(argv, variant_env, stdin))
        finally:
            server.stop()
            instant.stop()
    base = statistics.median(samples["python -c pass"]) * 1000
    print(f"{'':<34} {'median':>8} {'min':>8} {'vs bare':>6}")
    for name in variants:
        print(row(name, samples[name], base))
    print(
        "  (the ADD client: the console script handing an ADD to an agent that answers at\n"
        "   once, so what is timed is the client's start, its request and the reply)"
    )
    worst = max(
        statistics.median(samples[n]) * 1000 / base
        for n in variants
        if n != "python -c pass" and n not in fast_names
    )
    fast_worst = max(
        (statistics.median(samples[n]) * 1000 / base for n in fast_names), default=None
    )
    return worst, fast_worst


class InstantAgent:
    """A fast-path listener that answers every request at once with an empty success:
    what is left of a fast-path invocation's time is the client's."""

    def __init__(self, path: Path) -> None:
        import socket
        import threading

        self.path = path
        self.listener = socket.socket(socket.AF_UNIX)
        self.listener.bind(str(path))
        self.listener.listen(16)
        threading.Thread(target=self._serve, daemon=True).start()

    def _serve(self) -> None:
        from sriovlib.cni import fastpath

        while True:
            try:
                conn, _ = self.listener.accept()
            except OSError:
                return
            with conn:
                data = b""
                while chunk := conn.recv(1 << 16):
                    data += chunk
                fastpath.decode_request(data)
                conn.sendall(fastpath.ACCEPTED + fastpath.encode_reply(0, "{}", ""))

    def stop(self) -> None:
        import socket

        with contextlib.suppress(OSError):
            self.listener.shutdown(socket.SHUT_RDWR)
        self.listener.close()


def netlink_counts(log: Path, command: str) -> list[int]:
    counts = []
    for line in log.read_text().splitlines():
        if f" {command} " in line and "netlink requests: " in line:
            counts.append(int(line.split("netlink requests: ")[1].split()[0]))
    return counts


def cpu_of_children() -> float:
    usage = resource.getrusage(resource.RUSAGE_CHILDREN)
    return usage.ru_utime + usage.ru_stime


def add_del_figures(repeat: int, baseline: Path | None) -> None:
    from sriovlib.testing.cni import (
        ToolUnavailable,
        VethNode,
        cni_binary_dir,
        cni_plugins_dir,
        cnitool_path,
    )

    if os.geteuid() != 0:
        print("ADD+DEL through cnitool: skipped (needs root)")
        return
    try:
        tool, plugins = cnitool_path(), cni_plugins_dir()
    except ToolUnavailable as e:
        print(f"ADD+DEL through cnitool: skipped ({e})")
        return
    with tempfile.TemporaryDirectory(prefix="cni-bench-") as work_dir:
        work = Path(work_dir)
        bins = {"this checkout": cni_binary_dir(work / "bin", plugins)}
        agent = _fast_path(work, plugins, bins)
        if baseline is not None:
            # another checkout's plugin, on the same node (its veth backend is read from
            # the variable that checkout knows: the old SRIOVLIB_CNI_NETLINK is set too)
            other = work / "baseline-bin"
            other.mkdir()
            (other / "sriov").symlink_to(baseline)
            (other / "host-local").symlink_to(plugins / "host-local")
            bins["baseline"] = other
        with VethNode(work / "root", num_vfs=1) as node:
            (work / "net.d").mkdir()
            plugin = {
                "type": "sriov",
                "deviceID": str(node.vfs[0]),
                "vlan": 100,
                "mac": "02:00:00:00:05:01",
                "logLevel": "debug",
                "logFile": str(work / "sriov.log"),
                "ipam": {
                    "type": "host-local",
                    "subnet": "10.79.0.0/24",
                    "dataDir": str(work / "ipam"),
                },
            }
            conflist = {"cniVersion": "1.0.0", "name": "bench", "plugins": [plugin]}
            (work / "net.d/10-bench.conflist").write_text(json.dumps(conflist))
            env = {
                **os.environ,
                "NETCONFPATH": str(work / "net.d"),
                **node.environ(),
                "SRIOVLIB_CNI_NETLINK": node.environ()["SRIOVLIB_TEST_NETLINK"],
            }
            pod = node.add_pod()
            samples = {name: {"add": [], "del": [], "add cpu": [], "del cpu": []} for name in bins}
            bare: list[float] = []
            for i in range(repeat + 1):
                order = list(bins.items())
                if i:
                    bare.append(timed([sys.executable, "-c", "pass"]))
                for name, directory in order if i % 2 else reversed(order):
                    run_env = {
                        **env,
                        "CNI_PATH": str(directory),
                        "SRIOVLIB_STATE_DIR": str(work / "state" / name.replace(" ", "-")),
                        **(agent.environ() if agent is not None and name == "fast path" else {}),
                    }
                    for command in ("add", "del"):
                        cpu = cpu_of_children()
                        wall = timed([str(tool), command, "bench", pod], run_env)
                        if i:  # the first round warms caches
                            samples[name][command].append(wall)
                            samples[name][f"{command} cpu"].append(cpu_of_children() - cpu)
            log = work / "sriov.log"
            add_requests = netlink_counts(log, "ADD")
            del_requests = netlink_counts(log, "DEL")
        if agent is not None:
            agent.stop()
    _print_add_del(samples, bare, baseline is not None)
    print(
        f"netlink requests per ADD: {statistics.median(add_requests):.0f}, "
        f"per DEL: {statistics.median(del_requests):.0f}"
    )


def _fast_path(work: Path, plugins: Path, bins: dict[str, Path]) -> Any:
    """The shipped console script handing each invocation to an agent (the shipped
    server in a process of its own, with the veth backend), added to *bins*; the agent,
    started, or None without the console script."""
    from sriovlib.testing.cni_agent import FastPathAgent

    if not SCRIPT.exists():
        return None
    fast = work / "fast-bin"
    fast.mkdir()
    (fast / "sriov").symlink_to(SCRIPT)
    (fast / "host-local").symlink_to(plugins / "host-local")
    bins["fast path"] = fast
    agent = FastPathAgent(work / "agent" / "agent.sock")
    agent.start()
    return agent


def _print_add_del(
    samples: dict[str, dict[str, list[float]]], bare: list[float], baseline: bool
) -> None:
    print()
    print(f"{'through cnitool (veth VFs, host-local)':<34} {'median':>8} {'min':>8}")
    print(row("python -c pass (bare interpreter)", bare))
    for name, figures in samples.items():
        for what in ("add", "del"):
            print(row(f"cnitool {what} ({name})", figures[what]))
    if "fast path" in samples:
        print("fast path / in-process, medians of interleaved runs:")
        for what in ("add", "del", "add cpu", "del cpu"):
            mine = statistics.median(samples["fast path"][what])
            theirs = statistics.median(samples["this checkout"][what])
            print(f"  {what:<40} {mine / theirs:5.2f}x")
    if baseline:
        print()
        print("this checkout / baseline, medians of interleaved runs:")
        labels = {
            "add": "add (wall)",
            "del": "del (wall)",
            "add cpu": "add (CPU of cnitool, plugin, IPAM)",
            "del cpu": "del (CPU of cnitool, plugin, IPAM)",
        }
        for what, label in labels.items():
            mine = statistics.median(samples["this checkout"][what])
            theirs = statistics.median(samples["baseline"][what])
            print(f"  {label:<40} {mine / theirs:5.2f}x")


def import_figures(repeat: int, baseline_src: Path | None = None) -> float | None:
    """The import time of an in-process ADD (module docstring), of this checkout and, if
    *baseline_src* is given, of the ``sriovlib`` in that directory, interleaved; this
    checkout's shipped-path median wall time over a bare start in ms, or None if it
    could not be measured."""
    from sriovlib.testing.cni import ToolUnavailable, cni_plugins_dir, cnitool_path

    if os.geteuid() != 0:
        print("ADD imports: skipped (needs root)")
        return None
    try:
        tool, plugins = cnitool_path(), cni_plugins_dir()
    except ToolUnavailable as e:
        print(f"ADD imports: skipped ({e})")
        return None
    startup = startup_modules()
    # which sriovlib each variant imports: this process's, or the baseline's put first
    variants: dict[str, dict[str, str]] = {"this checkout": {}}
    if baseline_src is not None:
        variants["baseline"] = {"PYTHONPATH": str(baseline_src)}
    logs = _add_import_logs(tool, plugins, variants, repeat)
    shipped = {name: _shipped_modules(logs[name][-1], startup) for name in variants}
    replays = {name: "\n".join(f"import {m}" for m in shipped[name]) for name in variants}
    sums: dict[str, list[float]] = {name: [] for name in variants}
    deltas: dict[str, list[float]] = {name: [] for name in variants}
    replayed: dict[str, list[tuple[str, int, int]]] = {}
    for name, extra in variants.items():
        timed([sys.executable, "-c", replays[name]], {**os.environ, **extra})
    for _ in range(repeat):
        bare = timed([sys.executable, "-c", "pass"])
        for name, extra in variants.items():
            env = child_environ({**os.environ, **extra})
            deltas[name].append((timed([sys.executable, "-c", replays[name]], env) - bare) * 1000)
            done = subprocess.run(
                [sys.executable, "-X", "importtime", "-c", replays[name]],
                env=env,
                capture_output=True,
                text=True,
                check=True,
            )
            replayed[name] = import_log(done.stderr)
            sums[name].append(imported_after_startup(replayed[name], startup))
    print()
    print(f"imports of an in-process ADD (medians of {repeat}; ms):")
    for name in variants:
        everything = statistics.median(imported_after_startup(r, startup) for r in logs[name])
        loaded = {n for n, _, _ in logs[name][-1]}
        heavy = [h for h in HEAVY if any(n == h or n.startswith(f"{h}.") for n in loaded)]
        ours = sum(n.startswith("sriovlib") for n in shipped[name])
        heaviest = sorted(
            ((own, n) for n, own, _ in replayed[name] if n not in startup), reverse=True
        )[:6]
        print(f"  {name}:")
        print(f"    all imports of the ADD process (tests' entry point) {everything:8.1f}")
        print(
            f"    the shipped ADD path ({ours} sriovlib modules, "
            f"{len(shipped[name]) - ours} imported in functions, "
            f"{len({n for n, _, _ in replayed[name]} - startup)} modules in all):"
        )
        total, wall = statistics.median(sums[name]), statistics.median(deltas[name])
        own = sum(t for n, t, _ in replayed[name] if n.startswith("sriovlib")) / 1000
        print(f"      sum of -X importtime self times                 {total:8.1f}")
        print(f"        of which sriovlib's own modules (one run)     {own:8.1f}")
        print(f"      wall time over a bare start                     {wall:8.1f}")
        print(
            "      heaviest (self time, one run): "
            + ", ".join(f"{n} {own / 1000:.1f}" for own, n in heaviest)
        )
        print(f"    heavy modules the ADD process loaded: {', '.join(heavy) or 'none'}")
    if baseline_src is not None:
        ratio = statistics.median(deltas["this checkout"]) / statistics.median(deltas["baseline"])
        print(f"  this checkout / baseline, shipped ADD path wall time: {ratio:5.2f}x")
    return statistics.median(deltas["this checkout"])


def _add_import_logs(
    tool: Path, plugins: Path, variants: dict[str, dict[str, str]], repeat: int
) -> dict[str, list[list[tuple[str, int, int]]]]:
    """The import logs of *repeat* ADDs through cnitool per variant (extra environment),
    interleaved, after one round that warms caches; each ADD is followed by its DEL."""
    from sriovlib.testing.cni import VethNode, cni_binary_dir

    logs: dict[str, list[list[tuple[str, int, int]]]] = {name: [] for name in variants}
    with tempfile.TemporaryDirectory(prefix="cni-bench-imports-") as work_dir:
        work = Path(work_dir)
        directory = cni_binary_dir(work / "bin", plugins)
        with VethNode(work / "root", num_vfs=1) as node:
            (work / "net.d").mkdir()
            plugin = {
                "type": "sriov",
                "deviceID": str(node.vfs[0]),
                "vlan": 100,
                "mac": "02:00:00:00:05:02",
                "ipam": {
                    "type": "host-local",
                    "subnet": "10.79.1.0/24",
                    "dataDir": str(work / "ipam"),
                },
            }
            conflist = {"cniVersion": "1.0.0", "name": "imports", "plugins": [plugin]}
            (work / "net.d/10-imports.conflist").write_text(json.dumps(conflist))
            env = child_environ(
                {
                    **os.environ,
                    "NETCONFPATH": str(work / "net.d"),
                    "CNI_PATH": str(directory),
                    **node.environ(),
                }
            )
            pod = node.add_pod()
            for i in range(repeat + 1):
                order = list(variants.items())
                for name, extra in order if i % 2 else reversed(order):
                    state = {"SRIOVLIB_STATE_DIR": str(work / "state" / name.replace(" ", "-"))}
                    run_env = {**env, **extra, **state}
                    added = subprocess.run(
                        [str(tool), "add", "imports", pod],
                        env={**run_env, "PYTHONPROFILEIMPORTTIME": "1"},
                        capture_output=True,
                        text=True,
                        check=True,
                    )
                    subprocess.run(
                        [str(tool), "del", "imports", pod],
                        env=run_env,
                        capture_output=True,
                        check=True,
                    )
                    if i:  # the first round compiles and warms caches
                        logs[name].append(import_log(added.stderr))
    return logs


def _shipped_modules(rows: list[tuple[str, int, int]], startup: set[str]) -> list[str]:
    """What to replay for the shipped ADD path, from the ADD process's import log, in the
    order the imports started: its ``sriovlib`` modules (not ``sriovlib.testing``), the
    modules imported inside functions (logged at depth 0; the tests' entry point's own
    are nested under ``sriovlib.testing.cni``), and the built-in vendor plugins, which
    :class:`~sriovlib.plugins.manager.Plugins` imports with ``importlib.import_module``
    (not logged by ``-X importtime``)."""
    wanted = {
        name
        for name, _, depth in rows
        if not name.startswith("sriovlib.testing")
        and name not in startup
        and (name == "sriovlib" or name.startswith("sriovlib.") or depth == 0)
    }
    order = _start_order(rows, wanted)
    if "sriovlib.plugins.manager" in order:
        from sriovlib.plugins.manager import BUILTINS

        order += [f"sriovlib.vendors.{name}" for name in BUILTINS]
    return order


def _start_order(rows: list[tuple[str, int, int]], wanted: set[str]) -> list[str]:
    """*wanted* modules of an importtime log in the order their imports started."""
    Node = tuple[str, list[Any]]
    # the log is a post-order walk of the import tree: rebuild the tree, walk it pre-order
    pending: dict[int, list[Node]] = {}
    for name, _, depth in rows:
        pending.setdefault(depth, []).append((name, pending.pop(depth + 1, [])))
    order: list[str] = []

    def walk(nodes: list[Node]) -> None:
        for name, children in nodes:
            if name in wanted and name not in order:
                order.append(name)
            walk(children)

    walk(pending.get(0, []))
    return order


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--repeat", type=int, default=20)
    parser.add_argument(
        "--baseline",
        type=Path,
        help="another checkout's sriov console script: ADD/DEL pairs interleaved with it",
    )
    parser.add_argument(
        "--baseline-src",
        type=Path,
        help="another checkout's src directory: its ADD import figures interleaved",
    )
    args = parser.parse_args()
    worst, fast_worst = version_figures(args.repeat)
    add_del_figures(max(3, args.repeat // 2), args.baseline)
    imports = import_figures(max(3, args.repeat // 2), args.baseline_src)
    print()
    verdict = "within" if worst <= 3.0 else "ABOVE"
    print(f"VERSION: {worst:.2f}x a bare interpreter start ({verdict} the 3x target)")
    if fast_worst is not None:
        verdict = "within" if fast_worst <= 1.5 else "ABOVE"
        print(
            f"fast-path VERSION and ADD client start: at most {fast_worst:.2f}x a bare "
            f"interpreter start ({verdict} the 1.5x target)"
        )
    if imports is not None:
        verdict = "within" if imports <= 40.0 else "ABOVE"
        print(f"ADD imports (shipped path, wall): {imports:.1f} ms ({verdict} the 40 ms target)")


if __name__ == "__main__":
    main()
