"""Prometheus metrics. Each app gets its own registry so several apps can live in one process."""

from __future__ import annotations

from collections.abc import Callable, Iterable
from typing import Any

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily
from prometheus_client.registry import Collector


class _PoolCollector(Collector):
    def __init__(self, pool_getter: Callable[[], Any]) -> None:
        self._pool_getter = pool_getter

    def collect(self) -> Iterable[GaugeMetricFamily]:
        pool = self._pool_getter()
        size = GaugeMetricFamily("controlplane_db_pool_size", "Connections open in the DB pool")
        idle = GaugeMetricFamily("controlplane_db_pool_idle", "Idle connections in the DB pool")
        if pool is not None:
            size.add_metric([], pool.get_size())
            idle.add_metric([], pool.get_idle_size())
        yield size
        yield idle


class Metrics:
    def __init__(self, pool_getter: Callable[[], Any]) -> None:
        self.registry = CollectorRegistry()
        self.requests = Counter(
            "controlplane_http_requests",
            "HTTP requests by route template, method and status",
            ["route", "method", "status"],
            registry=self.registry,
        )
        self.latency = Histogram(
            "controlplane_http_request_duration_seconds",
            "HTTP request latency",
            ["route", "method"],
            registry=self.registry,
        )
        self.in_flight = Gauge(
            "controlplane_http_requests_in_flight", "Requests being served", registry=self.registry
        )
        self.temporal_errors = Counter(
            "controlplane_temporal_client_errors",
            "Failed calls from the API to Temporal",
            ["operation"],
            registry=self.registry,
        )
        self.registry.register(_PoolCollector(pool_getter))
