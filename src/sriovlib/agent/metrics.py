"""The agent's Prometheus metrics, and the text endpoint that serves them.

:class:`Metrics` owns a registry of its own (never the process-wide default) with:

==========================================  ==========================================
metric                                      what
==========================================  ==========================================
``sriovlib_pool_devices{resource}``         devices the pool advertises
``sriovlib_pool_healthy{resource}``         of which healthy
``sriovlib_pool_allocated{resource}``       of which held by a CNI attachment
``sriovlib_listandwatch_updates_total``     device lists sent to the kubelet
``sriovlib_allocate_seconds``               Allocate latency (histogram)
``sriovlib_preferred_allocation_seconds``   GetPreferredAllocation latency (histogram)
``sriovlib_errors_total{resource,code}``    RPCs answered with an error, by gRPC code
``sriovlib_cni_seconds{command}``           fast-path CNI invocations (histogram)
``sriovlib_cni_errors_total{command,code}`` of which answered with an error, by CNI code
``sriovlib_health_changes_total``           devices that changed health
``sriovlib_reconciles_total{reason}``       reconciles of the pools
``sriovlib_reclaims_total``                 orphan VFs by outcome and by reason
``sriovlib_vf_budget_*{pf}``                VFs on demand: numvfs, min, max, in_use,
                                            wanted, blocked of each vfBudget PF
``sriovlib_vf_resizes_total``               their VF count changes, by PF, direction,
                                            outcome (``sriovlib.agent.ondemand``)
==========================================  ==========================================

The pool gauges are read from the live resources at each scrape; the rest are counted
as things happen. ``sriovlib agent status`` reads the same endpoint (:func:`read_status`).
"""

from __future__ import annotations

import urllib.request
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Histogram, start_http_server
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import Collector

from sriovlib.agent.resources import Resource

__all__ = ["Metrics", "parse_address", "read_status"]

_LATENCY_BUCKETS = (0.0005, 0.001, 0.002, 0.005, 0.01, 0.02, 0.05, 0.1, 0.25, 1.0)
_CNI_BUCKETS = (0.005, 0.01, 0.02, 0.05, 0.1, 0.2, 0.5, 1.0, 2.0, 5.0, 10.0)


def parse_address(text: str) -> tuple[str, int]:
    """``host:port`` (``[::1]:9808`` for IPv6; port 0: any free one) as a pair;
    ValueError otherwise."""
    host, sep, port = text.rpartition(":")
    if not sep or not port.isdigit() or not 0 <= int(port) < 65536:
        raise ValueError(f"expected HOST:PORT, not {text!r}")
    return host.strip("[]") or "0.0.0.0", int(port)  # noqa: S104 - only when asked


class _Pools(Collector):
    def __init__(self, resources: Callable[[], Sequence[Resource]], held: Callable[[], Any]):
        self.resources = resources
        self.held = held

    def collect(self) -> Iterator[GaugeMetricFamily]:
        devices = GaugeMetricFamily(
            "sriovlib_pool_devices", "Devices the pool advertises", labels=["resource"]
        )
        healthy = GaugeMetricFamily(
            "sriovlib_pool_healthy", "Healthy devices of the pool", labels=["resource"]
        )
        allocated = GaugeMetricFamily(
            "sriovlib_pool_allocated",
            "Devices of the pool held by a CNI attachment",
            labels=["resource"],
        )
        held = self.held()
        for resource in self.resources():
            listed = resource.devices()
            devices.add_metric([resource.name], len(listed))
            healthy.add_metric([resource.name], sum(d.healthy for d in listed))
            allocated.add_metric([resource.name], sum(d.id in held for d in listed))
        yield devices
        yield healthy
        yield allocated


class Metrics:
    """The agent's metrics (see the module documentation).

    Args:
        resources: The served resources, read at each scrape.
        held: The device IDs CNI attachments hold, read at each scrape.
    """

    def __init__(
        self, resources: Callable[[], Sequence[Resource]], held: Callable[[], Any]
    ) -> None:
        self.registry = CollectorRegistry(auto_describe=True)
        self.registry.register(_Pools(resources, held))
        self.updates = Counter(
            "sriovlib_listandwatch_updates",
            "Device lists sent to the kubelet",
            ["resource"],
            registry=self.registry,
        )
        self.allocate = Histogram(
            "sriovlib_allocate_seconds",
            "Allocate latency",
            ["resource"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.preferred = Histogram(
            "sriovlib_preferred_allocation_seconds",
            "GetPreferredAllocation latency",
            ["resource"],
            buckets=_LATENCY_BUCKETS,
            registry=self.registry,
        )
        self.errors = Counter(
            "sriovlib_errors",
            "RPCs answered with an error, by gRPC status code",
            ["resource", "code"],
            registry=self.registry,
        )
        self.cni = Histogram(
            "sriovlib_cni_seconds",
            "CNI invocations run on the fast path, by command",
            ["command"],
            buckets=_CNI_BUCKETS,
            registry=self.registry,
        )
        self.cni_errors = Counter(
            "sriovlib_cni_errors",
            "CNI invocations on the fast path answered with an error, by CNI code",
            ["command", "code"],
            registry=self.registry,
        )
        self.health_changes = Counter(
            "sriovlib_health_changes",
            "Devices that changed health",
            ["resource"],
            registry=self.registry,
        )
        self.reconciles = Counter(
            "sriovlib_reconciles", "Reconciles of the pools", ["reason"], registry=self.registry
        )
        self.reclaims = Counter(
            "sriovlib_reclaims",
            "Orphan VFs (their pod gone) by outcome (reclaimed, dry-run, failed) and by the "
            "sign of the gone pod (netns-gone, not-in-pod-resources)",
            ["outcome", "reason"],
            registry=self.registry,
        )
        self._server: Any = None

    def serve(self, address: str) -> tuple[str, int]:
        """Serve the text format on *address* (``host:port``; port 0 picks one) in a
        thread; the address it listens on."""
        host, port = parse_address(address)
        try:
            self._server, _thread = start_http_server(port, host, registry=self.registry)
        except OSError as e:  # a second agent on the node, most often
            raise OSError(f"--metrics-address {address}: {e.strerror or e}") from e
        bound: tuple[str, int] = self._server.server_address[:2]
        return bound

    def stop(self) -> None:
        if self._server is not None:
            self._server.shutdown()
            self._server.server_close()
            self._server = None


def read_status(address: str, timeout: float = 5.0) -> dict[str, Any]:
    """What a running agent's endpoint at *address* says, per pool and in total.

    Raises:
        OSError: nothing answers there.
    """
    host, port = parse_address(address)
    url = f"http://{'[' + host + ']' if ':' in host else host}:{port}/metrics"
    with urllib.request.urlopen(url, timeout=timeout) as answer:
        text = answer.read(1 << 22).decode()
    pools: dict[str, dict[str, float]] = {}
    reconciles = 0.0
    reclaims = dict.fromkeys(("reclaimed", "dry-run", "failed"), 0.0)
    budgets: dict[str, dict[str, int]] = {}
    resizes = dict.fromkeys(("raise", "lower"), 0)
    keys = {
        "sriovlib_pool_devices": "devices",
        "sriovlib_pool_healthy": "healthy",
        "sriovlib_pool_allocated": "allocated",
        "sriovlib_listandwatch_updates_total": "updates",
        "sriovlib_allocate_seconds_count": "allocates",
        "sriovlib_errors_total": "errors",
        "sriovlib_health_changes_total": "health_changes",
    }
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            if sample.name == "sriovlib_reconciles_total":
                reconciles += sample.value
            elif sample.name == "sriovlib_reclaims_total":
                outcome = sample.labels.get("outcome", "")
                reclaims[outcome] = reclaims.get(outcome, 0) + sample.value
            elif sample.name.startswith("sriovlib_vf_budget_") and "pf" in sample.labels:
                key = sample.name.removeprefix("sriovlib_vf_budget_")
                budgets.setdefault(sample.labels["pf"], {})[key] = int(sample.value)
            elif sample.name == "sriovlib_vf_resizes_total":
                if sample.labels.get("outcome") == "done":
                    direction = sample.labels.get("direction", "")
                    resizes[direction] = resizes.get(direction, 0) + int(sample.value)
            elif sample.name in keys and "resource" in sample.labels:
                pool = pools.setdefault(sample.labels["resource"], {})
                key = keys[sample.name]
                pool[key] = pool.get(key, 0) + sample.value
    return {
        # every key for every pool: a counter never incremented has no sample at all
        "pools": {
            name: {k: pool.get(k, 0.0) for k in keys.values()} for name, pool in pools.items()
        },
        "reconciles": int(reconciles),
        "reclaims": {outcome: int(n) for outcome, n in reclaims.items()},
        "budgets": budgets,
        "resizes": resizes,
    }
