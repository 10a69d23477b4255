"""``sriovlib agent``: the node agent, serving the kubelet's device-plugin API per pool.

A drop-in for sriov-network-device-plugin: the same ``config.json`` (``--config``,
default ``/etc/pcidp/config.json``), resource prefix, socket names, environment
variables and device-info files. Runs until SIGTERM or SIGINT, then stops the servers
and removes their sockets. Logs go to standard error (``--log-format json|text``).
"""

from __future__ import annotations

import argparse
import gc
import logging
import os
import signal
import socket
import threading
from pathlib import Path
from typing import Any

from sriovlib.cli._common import add_host_options, open_host, print_json, print_table
from sriovlib.cli.pools import read_config
from sriovlib.cni.fastpath import DEFAULT_SOCKET, SOCKET_ENV
from sriovlib.pools import DEFAULT_PREFIX, PoolConfig, check_resource_prefix

__all__ = ["DEFAULT_CONFIG", "register", "run"]

DEFAULT_CONFIG = "/etc/pcidp/config.json"
DEFAULT_METRICS = "127.0.0.1:9808"
#: The ``agent status --json`` document's version.
STATUS_SCHEMA = "sriovlib.agent-status/1"


def _prefix(text: str) -> str:
    try:
        return check_resource_prefix(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _carrier_setting(text: str) -> tuple[str | None, bool]:
    name, _, value = text.rpartition("=")
    if value not in ("on", "off") or (text.count("=") and not name):
        raise argparse.ArgumentTypeError(f"expected on, off, POOL=on or POOL=off, not {text!r}")
    return (name or None), value == "on"


def _seconds(text: str) -> float:
    try:
        value = float(text)
    except ValueError:
        value = -1.0
    if not 0.1 <= value <= 86400:
        raise argparse.ArgumentTypeError(f"expected seconds from 0.1 to 86400, not {text!r}")
    return value


def _carrier_settings(
    settings: list[tuple[str | None, bool]], config: PoolConfig, prefix: str
) -> tuple[bool, dict[str, bool]]:
    """The default and the per-pool values of ``--pf-carrier-health``; a pool name the
    config does not have is an error."""
    default, pools = True, {}
    names = {p.resource_name for p in config.pools} | {p.full_name(prefix) for p in config.pools}
    for name, on in settings:
        if name is None:
            default = on
        elif name not in names:
            raise ValueError(f"--pf-carrier-health: no pool {name!r} in the config")
        else:
            pools[name] = on
    return default, pools


def _metrics_address(text: str) -> str | None:
    from sriovlib.agent.metrics import parse_address

    if text == "off":
        return None
    try:
        parse_address(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None
    return text


def _driver_name(text: str) -> str:
    from sriovlib.agent.draclaims import check_driver_name

    try:
        return check_driver_name(text)
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e)) from None


def _pool_names(text: str) -> frozenset[str]:
    names = frozenset(n.strip() for n in text.split(",") if n.strip())
    if not names:
        raise argparse.ArgumentTypeError("name at least one pool (resourceName, with or "
                                         "without its prefix)")  # fmt: skip
    return names


def _socket_or_off(text: str) -> Path | None:
    return None if text == "off" else Path(text)


def run_status(args: argparse.Namespace) -> int:
    """Print what the agent at ``--metrics-address`` serves; an error (exit 2) if none answers."""
    from sriovlib.agent.metrics import read_status

    if args.metrics_address is None:
        raise ValueError("status needs the agent's --metrics-address, not off")
    try:
        status = read_status(args.metrics_address)
    except OSError as e:
        raise OSError(f"no agent answers at {args.metrics_address}: {e}") from None
    if args.json:
        print_json({"schema": STATUS_SCHEMA, **status})
        return 0
    columns = ("pool", "devices", "healthy", "allocated", "ListAndWatch updates",
               "Allocates", "errors", "health changes")  # fmt: skip
    keys = ("devices", "healthy", "allocated", "updates", "allocates", "errors",
            "health_changes")  # fmt: skip
    rows = [
        [name, *(str(int(figures.get(key, 0))) for key in keys)]
        for name, figures in sorted(status["pools"].items())
    ]
    print_table(f"sriovlib agent at {args.metrics_address}", columns, rows)
    reclaims = ", ".join(f"{k} {v}" for k, v in status["reclaims"].items())
    print(f"reconciles: {status['reconciles']}; orphan reclaims: {reclaims}")
    if status["budgets"]:
        figures = ("numvfs", "min", "max", "in_use", "wanted", "blocked")
        print_table(
            "VFs on demand",
            ("PF", "numvfs", "min", "max", "in use", "wanted", "blocked"),
            [[pf, *(str(f.get(k, 0)) for k in figures)] for pf, f in
             sorted(status["budgets"].items())],
        )  # fmt: skip
        print("resizes: " + ", ".join(f"{k} {v}" for k, v in status["resizes"].items()))
    return 0


def register(subparsers: Any) -> None:
    """Add the ``agent`` subcommand."""
    from sriovlib.agent.dra import DEFAULT_PLUGINS_DIR, DEFAULT_REGISTRY_DIR
    from sriovlib.agent.draclaims import DEFAULT_DRIVER_NAME
    from sriovlib.agent.podresources import DEFAULT_SOCKET as DEFAULT_POD_RESOURCES_SOCKET
    from sriovlib.agent.runner import (
        DEFAULT_CDI_DIR,
        DEFAULT_DEVICE_INFO_DIR,
        DEFAULT_DEVICE_PLUGIN_DIR,
    )

    parser = subparsers.add_parser(
        "agent",
        help="run the node agent: the kubelet device plugin for every pool",
        description="Serve every pool of a sriov-network-device-plugin config.json to the "
        "kubelet (one device-plugin socket per pool), re-registering when the kubelet "
        "restarts, until SIGTERM.",
    )
    parser.add_argument(
        "--config",
        metavar="FILE",
        default=DEFAULT_CONFIG,
        help="the pool config, sriov-network-device-plugin's config.json (default: %(default)s)",
    )
    parser.add_argument(
        "--policy",
        metavar="FILE",
        help="a node policy file (sriovlib apply's): applied at start, before "
        "registering, and its resourceNames are the pools (--config is then not read)",
    )
    parser.add_argument(
        "--compat",
        action="store_true",
        help="accept what sriov-network-device-plugin accepts (keys in any case, unknown "
        "keys...), each leniency logged as a warning",
    )
    parser.add_argument(
        "--resource-prefix",
        metavar="PREFIX",
        type=_prefix,
        default=DEFAULT_PREFIX,
        help="the resource prefix of pools without resourcePrefix (default: %(default)s)",
    )
    parser.add_argument(
        "--device-plugin-dir",
        metavar="DIR",
        type=Path,
        default=DEFAULT_DEVICE_PLUGIN_DIR,
        help="the kubelet's device-plugin directory (default: %(default)s)",
    )
    parser.add_argument(
        "--state-dir",
        metavar="DIR",
        type=Path,
        default=Path("/var/lib/sriovlib"),
        help="the attachment state directory shared with the CNI plugin (default: %(default)s)",
    )
    parser.add_argument(
        "--device-info-dir",
        metavar="DIR",
        type=Path,
        default=DEFAULT_DEVICE_INFO_DIR,
        help="where the Multus device-info files go (default: %(default)s)",
    )
    parser.add_argument(
        "--use-cdi",
        action="store_true",
        help="hand devices over as CDI devices, with a CDI spec file per pool",
    )
    parser.add_argument(
        "--cdi-dir",
        metavar="DIR",
        type=Path,
        default=DEFAULT_CDI_DIR,
        help="where the CDI spec files go with --use-cdi or --dra (default: %(default)s)",
    )
    parser.add_argument(
        "--dra",
        action="store_true",
        help="also serve the kubelet as a DRA driver (dra/v1, Kubernetes >= 1.34): "
        "register in --dra-registry-dir, prepare claims' VFs as CDI devices",
    )
    parser.add_argument(
        "--dra-pools",
        metavar="NAME[,NAME]",
        type=_pool_names,
        action="append",
        default=None,
        help="with --dra: the pools served as DRA devices (resourceName, with or without "
        "its prefix; repeatable); the others stay device-plugin resources. A pool is "
        "served one way, never both (default: every pool, with --dra)",
    )
    parser.add_argument(
        "--dra-driver-name",
        metavar="NAME",
        type=_driver_name,
        default=DEFAULT_DRIVER_NAME,
        help="the DRA driver name, a DNS subdomain (default: %(default)s)",
    )
    parser.add_argument(
        "--dra-registry-dir",
        metavar="DIR",
        type=Path,
        default=DEFAULT_REGISTRY_DIR,
        help="the kubelet's plugin-watcher directory, where <driver>-reg.sock goes "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--dra-plugins-dir",
        metavar="DIR",
        type=Path,
        default=DEFAULT_PLUGINS_DIR,
        help="the kubelet's plugins directory, where <driver>/dra.sock goes (default: %(default)s)",
    )
    parser.add_argument(
        "--kubeconfig",
        metavar="FILE",
        help="with --dra: reach the API server with this kubeconfig (default: the pod's "
        "service account when in a pod; otherwise no API access, and claims cannot be read)",
    )
    parser.add_argument(
        "--node-name",
        metavar="NAME",
        default=os.environ.get("NODE_NAME") or socket.gethostname(),
        help="with --dra: the Node whose ResourceSlices the agent publishes "
        "(default: $NODE_NAME, else the host name: %(default)s)",
    )
    parser.add_argument(
        "--dra-on-demand",
        choices=("on", "dry-run", "off"),
        default="on",
        help="with --dra and a --policy giving PFs a vfBudget: raise a PF's VF count "
        "within it when pending claims need a VF, and give idle VFs back; or only log "
        "what would change, or neither (default: %(default)s)",
    )
    parser.add_argument(
        "--dra-idle-seconds",
        metavar="SECONDS",
        type=_seconds,
        default=300.0,
        help="with --dra-on-demand: how long VFs above a vfBudget's min stay free before "
        "they are given back (default: %(default)s)",
    )
    parser.add_argument(
        "--allocation-policy",
        choices=("pack", "spread"),
        default="pack",
        help="GetPreferredAllocation, after NUMA affinity: fill the PFs in use first "
        "(pack) or one device per PF in turn (spread) (default: %(default)s)",
    )
    parser.add_argument(
        "--pf-carrier-health",
        metavar="[POOL=]on|off",
        type=_carrier_setting,
        action="append",
        default=[],
        help="whether a VF is unhealthy while its PF is down or has no carrier: for every "
        "pool, or with POOL= for one (repeatable; default: on). Turn it off where VF-to-VF "
        "traffic on the NIC's switch is what pods need: it survives a carrier loss",
    )
    parser.add_argument(
        "--rescan-interval",
        metavar="SECONDS",
        type=_seconds,
        default=30.0,
        help="health is re-read on every kernel link or device event, and without any "
        "every SECONDS (default: %(default)s)",
    )
    parser.add_argument(
        "--reclaim",
        choices=("on", "dry-run", "off"),
        default="on",
        help="VFs still held for pods that are gone (their network namespace, or with "
        "--pod-resources-socket their device in the kubelet): take them back, "
        "only log them, or leave them (default: %(default)s)",
    )
    parser.add_argument(
        "--reclaim-grace",
        metavar="SECONDS",
        type=_seconds,
        default=60.0,
        help="how long such a VF must stay orphaned before it is reclaimed (default: %(default)s)",
    )
    parser.add_argument(
        "--pod-resources-socket",
        metavar="PATH|off",
        type=_socket_or_off,
        default=DEFAULT_POD_RESOURCES_SOCKET,
        help="the kubelet's pod-resources API: a VF of a pool held for no container it "
        "lists is an orphan too; unused while it does not answer, or off "
        "(default: %(default)s)",
    )
    parser.add_argument(
        "--cni-socket",
        metavar="PATH|off",
        type=_socket_or_off,
        default=os.environ.get(SOCKET_ENV) or DEFAULT_SOCKET,
        help="where the CNI fast path listens: the sriov binary hands its invocations to "
        f"the agent there; or off (default: ${SOCKET_ENV}, else "
        f"{DEFAULT_SOCKET})",
    )
    parser.add_argument(
        "--metrics-address",
        metavar="HOST:PORT|off",
        type=_metrics_address,
        default=DEFAULT_METRICS,
        help="where the Prometheus text endpoint listens, or off (default: %(default)s); "
        "`sriovlib agent status` reads it",
    )
    parser.add_argument(
        "--log-format",
        choices=("text", "json"),
        default="text",
        help="log lines on standard error as text or JSON objects (default: %(default)s)",
    )
    parser.add_argument(
        "--log-level",
        choices=("debug", "info", "warning", "error"),
        default="info",
        help="the least severe level logged (default: %(default)s)",
    )
    add_host_options(parser, json=False)
    parser.set_defaults(func=run)
    commands = parser.add_subparsers(dest="agent_command", metavar="{status}")
    status = commands.add_parser(
        "status",
        help="print a running agent's live view: every pool's devices, health, updates",
        description="Read a running agent's metrics endpoint and print every pool.",
    )
    status.add_argument(
        "--metrics-address",
        metavar="HOST:PORT",
        type=_metrics_address,
        default=DEFAULT_METRICS,
        help="the agent's --metrics-address (default: %(default)s)",
    )
    status.add_argument("--json", action="store_true", help="print JSON instead of a table")
    status.set_defaults(func=run_status)


def run(args: argparse.Namespace) -> int:
    """Serve until SIGTERM/SIGINT; exit 0 after a clean stop."""
    from sriovlib.agent import logs
    from sriovlib.agent.dra import DraOptions
    from sriovlib.agent.ondemand import OnDemandMode, OnDemandOptions, PolicyResizer
    from sriovlib.agent.reclaim import ReclaimMode
    from sriovlib.agent.runner import Agent, AgentOptions, ConfigFile
    from sriovlib.allocation import Policy

    logs.setup(args.log_format, getattr(logging, args.log_level.upper()))
    log = logging.getLogger("sriovlib.agent")
    policies = None
    if args.policy is not None:
        from sriovlib.policy import load_policies

        policies = load_policies(args.policy)
        for text in policies.warnings:
            log.warning("policy", extra={"problem": text})
        config = PoolConfig()
    else:
        config = read_config(args.config, compat=args.compat, default_prefix=args.resource_prefix)
    for warning in config.warnings:
        log.warning("config", extra={"problem": str(warning)})
    if args.dra_pools and not args.dra:
        log.warning("--dra-pools without --dra: every pool is a device-plugin resource")
    stop = threading.Event()

    def on_signal(signum: int, _frame: object) -> None:
        log.info("signal: stopping", extra={"signal": signal.Signals(signum).name})
        stop.set()

    previous = {s: signal.signal(s, on_signal) for s in (signal.SIGTERM, signal.SIGINT)}
    try:
        with open_host(args) as host:
            budgets: dict[Any, Any] = {}
            if policies is not None:
                config = _apply_policy(host, policies, log)
                budgets = _budgets(host, policies, log, args)
            carrier_default, carrier_pools = _carrier_settings(
                args.pf_carrier_health, config, args.resource_prefix
            )
            options = AgentOptions(
                resource_prefix=args.resource_prefix,
                device_plugin_dir=args.device_plugin_dir,
                state_dir=args.state_dir,
                device_info_dir=args.device_info_dir,
                cdi_dir=args.cdi_dir if args.use_cdi else None,
                policy=Policy(args.allocation_policy),
                pf_carrier_health=carrier_default,
                pf_carrier_pools=carrier_pools,
                rescan_interval=args.rescan_interval,
                metrics_address=args.metrics_address,
                reclaim=ReclaimMode(args.reclaim),
                reclaim_grace=args.reclaim_grace,
                cni_socket=args.cni_socket,
                pod_resources_socket=args.pod_resources_socket,
                dra=DraOptions(
                    driver_name=args.dra_driver_name,
                    registry_dir=args.dra_registry_dir,
                    plugins_dir=args.dra_plugins_dir,
                    cdi_dir=args.cdi_dir,
                    state_dir=args.state_dir,
                    pools=frozenset().union(*args.dra_pools) if args.dra_pools else None,
                )
                if args.dra
                else None,
                on_demand=OnDemandOptions(
                    mode=OnDemandMode(args.dra_on_demand), idle_seconds=args.dra_idle_seconds
                ),
            )
            source = None
            if policies is None and args.config != "-":  # standard input is read once
                source = ConfigFile(
                    args.config,
                    lambda: read_config(
                        args.config, compat=args.compat, default_prefix=args.resource_prefix
                    ),
                )
            api = _api_client(args, log) if args.dra else None
            agent = Agent(
                host,
                config,
                options,
                config_file=source,
                api=api,
                node_name=args.node_name,
                budgets=budgets,
                resize=PolicyResizer(host, policies) if policies is not None else None,
            )
            try:
                agent.start()
                # what start built lives as long as the agent: keep the collector off it,
                # or its full passes pause Allocate answers by milliseconds
                gc.freeze()
                log.info(
                    "agent started",
                    extra={
                        "config": args.policy or args.config,
                        "resources": [r.name for r in agent.resources],
                    },
                )
                stop.wait()
            finally:
                agent.stop()
    finally:
        for signum, handler in previous.items():
            signal.signal(signum, handler)
    return 0


def _api_client(args: argparse.Namespace, log: logging.Logger) -> Any:
    """The API server client of ``--dra``: ``--kubeconfig``, else the pod's service
    account, else None (logged: claims cannot be read, no ResourceSlices)."""
    from sriovlib.agent.kubeapi import KubeClient, in_cluster, load_kubeconfig

    if args.kubeconfig is not None:
        config = load_kubeconfig(args.kubeconfig)
    elif os.environ.get("KUBERNETES_SERVICE_HOST"):
        config = in_cluster()
    else:
        log.warning(
            "DRA driver without API server access: no ResourceSlices, and claims cannot be "
            "read (run in a pod, or give --kubeconfig FILE)"
        )
        return None
    log.info("API server", extra={"server": config.server, "credentials": config.source})
    return KubeClient(config)


def _budgets(
    host: Any, policies: Any, log: logging.Logger, args: argparse.Namespace
) -> dict[Any, Any]:
    """The PFs the policies give a vfBudget whose VFs are DRA devices, by address
    (the others logged: with --dra absent, or their pools left to the device plugin by
    --dra-pools, nothing raises their counts)."""
    from sriovlib.policy import merge

    pools = frozenset().union(*args.dra_pools) if args.dra_pools else None
    budgets, left = {}, []
    for target in merge(policies.policies, host.inventory()).pfs:
        if target.budget is None:
            continue
        names = {g.resource_name for g in target.groups}
        if args.dra and (pools is None or all(
            n in pools or f"{args.resource_prefix}/{n}" in pools for n in names
        )):  # fmt: skip
            budgets[target.pf.address] = target.budget
        else:
            left.append(target.pf.name)
    if left:
        log.warning(
            "vfBudget of PFs whose VFs are not DRA devices (no --dra, or pools not in "
            "--dra-pools): they keep the count apply gave them",
            extra={"pfs": sorted(left)},
        )
    return budgets


def _apply_policy(host: Any, policies: Any, log: logging.Logger) -> PoolConfig:
    """Make the node what *policies* say before anything is served, and return their
    pools. A change refused by the kernel or by VFs in use (a restarted agent must not
    take VFs from running pods) is logged and the node served as it is; a policy that
    cannot apply to this node at all (a conflict) stops the agent."""
    from sriovlib.exceptions import KernelError, VfsNotReady
    from sriovlib.policy import PolicyError, apply, plan

    the_plan = plan(host, policies)
    for text in the_plan.warnings[len(policies.warnings) :]:
        log.warning("policy", extra={"problem": text})
    for change in the_plan.changes:
        if not change.applied:
            log.warning(
                "policy: not applied",
                extra={"change": str(change), "disruption": str(change.disruption),
                       "command": change.command},
            )  # fmt: skip
    if the_plan.empty:
        log.info("policy: the node is as the policies say", extra={"policy": policies.source})
        return the_plan.pools
    try:
        report = apply(host, the_plan, progress=lambda line: log.info("policy: " + line))
    except (KernelError, VfsNotReady, PolicyError) as e:
        log.error("policy: not applied; serving the node as it is", extra={"error": str(e)})
    else:
        log.info(
            "policy applied",
            extra={"changes": [str(c) for _, c in report.done], "seconds": report.seconds},
        )
    return the_plan.pools
