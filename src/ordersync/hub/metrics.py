"""The hub's Prometheus metrics, served at `/metrics`.

    ordersync_hub_requests_total{method, route, code}   requests answered, by route template
    ordersync_hub_request_seconds{method, route}        latency histogram (first byte in, last out)
    ordersync_hub_quota_rejections_total{route}         429s of the quota limiter (not injected)
    ordersync_hub_event_log_head                        the newest change feed position
    ordersync_hub_connections{state}                    connections live and revoked

Routes are templates (`/api/v1/orders/{order_id}`), and a path no route serves counts as
`unmatched`: a client probing random paths cannot grow the series without bound.

Several workers (`hub serve --workers N`): prometheus-client's multiprocess mode. Each worker
writes its counters to files in `PROMETHEUS_MULTIPROC_DIR` (set by `hub.serve` before the
workers start) and a scrape, whichever worker answers it, sums every worker's files: the figures
are the hub's, not one worker's. The database figures (event log head, connections) are read at
scrape time, so they are the same whichever worker answers. One worker keeps its metrics on a
registry of its own app (tests run several hubs in one process).
"""

from __future__ import annotations

import os
from collections.abc import Iterator

from prometheus_client import CollectorRegistry, Counter, Histogram, generate_latest
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.multiprocess import MultiProcessCollector
from prometheus_client.registry import Collector

MULTIPROC_ENV = "PROMETHEUS_MULTIPROC_DIR"
CONTENT_TYPE = "text/plain; version=0.0.4; charset=utf-8"
UNMATCHED = "unmatched"
_LATENCY_BUCKETS = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0)


class HubMetrics:
    """The request metrics of one hub app (one worker)."""

    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        self.multiprocess_dir = os.environ.get(MULTIPROC_ENV) or None
        r = self.registry
        self.requests = Counter(
            "ordersync_hub_requests",
            "Requests answered, by route template and status code",
            ["method", "route", "code"],
            registry=r,
        )
        self.latency = Histogram(
            "ordersync_hub_request_seconds",
            "Time from a request's arrival to its response's last byte",
            ["method", "route"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.quota_rejections = Counter(
            "ordersync_hub_quota_rejections",
            "Requests refused with 429 because a connection's quota window was full",
            ["route"],
            registry=r,
        )

    def observe(
        self, method: str, route: str, status: int, seconds: float, quota_refused: bool
    ) -> None:
        self.requests.labels(method, route, str(status)).inc()
        self.latency.labels(method, route).observe(seconds)
        if quota_refused:
            self.quota_rejections.labels(route).inc()

    def exposition(self, head: int, live: int, revoked: int) -> bytes:
        """The text a scrape gets: request metrics (summed over workers) and database figures."""
        requests = generate_latest(self._summed())
        database = CollectorRegistry()
        database.register(_DatabaseFigures(head, live, revoked))
        return requests + generate_latest(database)

    def _summed(self) -> CollectorRegistry:
        """Every worker's request metrics (multiprocess mode), else this app's."""
        if not self.multiprocess_dir:
            return self.registry
        summed = CollectorRegistry()
        MultiProcessCollector(summed, path=self.multiprocess_dir)  # type: ignore[no-untyped-call]
        return summed

    def totals(self) -> dict[str, int]:
        """Requests in all, by status code, and quota rejections (every worker's)."""
        codes: dict[str, int] = {}
        rejected = 0
        for metric in self._summed().collect():
            for sample in metric.samples:
                if sample.name == "ordersync_hub_requests_total":
                    code = sample.labels["code"]
                    codes[code] = codes.get(code, 0) + int(sample.value)
                elif sample.name == "ordersync_hub_quota_rejections_total":
                    rejected += int(sample.value)
        return {"requests": sum(codes.values()), "quota_rejections": rejected, **codes}


class _DatabaseFigures(Collector):
    def __init__(self, head: int, live: int, revoked: int) -> None:
        self.head, self.live, self.revoked = head, live, revoked

    def collect(self) -> Iterator[Metric]:
        yield GaugeMetricFamily(
            "ordersync_hub_event_log_head",
            "The event log head: every event id up to it is final",
            value=self.head,
        )
        connections = GaugeMetricFamily(
            "ordersync_hub_connections", "Connections (issued tokens) by state", labels=["state"]
        )
        connections.add_metric(["live"], self.live)
        connections.add_metric(["revoked"], self.revoked)
        yield connections
