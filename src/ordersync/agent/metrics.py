"""Prometheus metrics of seed 000's list, on a registry the caller owns.

Passing the registry in (instead of using prometheus_client's global one) keeps tests isolated
and lets one process run several agents side by side.
"""

from __future__ import annotations

from collections.abc import Callable, Iterator, Mapping
from typing import TYPE_CHECKING

from prometheus_client import CollectorRegistry, Counter, Gauge, Histogram
from prometheus_client.core import GaugeMetricFamily, Metric
from prometheus_client.registry import Collector

if TYPE_CHECKING:
    from ordersync.agent.verify import VerifyReport

_LATENCY_BUCKETS = (0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0)


QuarantineCounts = Callable[[], Mapping[str, int]]  # source -> records quarantined


class _Quarantined(Collector):
    """Read at each scrape from the sinks that keep a quarantine: their count is the truth
    (records leave it when a retry lands them), not something to add up here."""

    def __init__(self) -> None:
        self.sinks: list[QuarantineCounts] = []

    def collect(self) -> Iterator[Metric]:
        family = GaugeMetricFamily(
            "ordersync_agent_quarantined_records",
            "Records the sink could not store, kept in its quarantine and retried every cycle",
            labels=["source"],
        )
        totals: dict[str, int] = {}
        for counts in self.sinks:
            for source, n in counts().items():
                totals[source] = totals.get(source, 0) + n
        for source, n in sorted(totals.items()):
            family.add_metric([source], n)
        yield family


class AgentMetrics:
    def __init__(self, registry: CollectorRegistry | None = None) -> None:
        self.registry = registry if registry is not None else CollectorRegistry()
        r = self.registry
        self._quarantined = _Quarantined()
        r.register(self._quarantined)
        self.request_seconds = Histogram(
            "ordersync_agent_request_seconds",
            "Latency of platform API calls",
            ["source", "endpoint"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )
        self.requests = Counter(
            "ordersync_agent_requests",
            "Platform API calls by response code",
            ["source", "endpoint", "code"],
            registry=r,
        )
        self.rate_limit_hits = Counter(
            "ordersync_agent_rate_limit_hits", "429 answers received", ["source"], registry=r
        )
        self.retries = Counter(
            "ordersync_agent_retries",
            "Retried API calls by reason",
            ["source", "reason"],
            registry=r,
        )
        self.records_applied = Counter(
            "ordersync_agent_records_applied",
            "Record versions applied to the sink",
            ["source", "stream"],
            registry=r,
        )
        self.duplicates_dropped = Counter(
            "ordersync_agent_duplicates_dropped",
            "Records already applied (overlap, retries)",
            ["source", "stream"],
            registry=r,
        )
        self.freshness_lag = Gauge(
            "ordersync_agent_freshness_lag_seconds",
            "Age of the newest complete view of the stream (server time)",
            ["source", "stream"],
            registry=r,
        )
        self.last_success = Gauge(
            "ordersync_agent_last_success_timestamp_seconds",
            "Unix time of the last poll that drained the stream",
            ["source", "stream"],
            registry=r,
        )
        self.cycle_failures = Counter(
            "ordersync_agent_cycle_failures",
            "Sync cycles that failed",
            ["source", "stream"],
            registry=r,
        )
        # Client-side rate-limit budgets (agent/budget.py): pacing waits, and what is left.
        self.budget_waits = Counter(
            "ordersync_agent_budget_waits",
            "Requests held back by the rate-limit budget, by the window that was full",
            ["source", "window"],
            registry=r,
        )
        self.budget_wait_seconds = Counter(
            "ordersync_agent_budget_wait_seconds",
            "Seconds requests waited for the rate-limit budget",
            ["source", "window"],
            registry=r,
        )
        self.quota_remaining = Gauge(
            "ordersync_agent_quota_remaining",
            "Requests left in the current quota window, as far as the agent knows",
            ["budget", "window"],
            registry=r,
        )
        self.verify_records = Gauge(
            "ordersync_agent_verify_records",
            "agent verify's last round: missing, stale, extra and quarantined records up to the"
            " stream's position (drift), and in_flight ones changed since (the next poll's)",
            ["source", "stream", "state"],
            registry=r,
        )
        self.quota_exhausted_until = Gauge(
            "ordersync_agent_quota_exhausted_until_seconds",
            "Unix time at which a spent quota reopens (0: none is spent)",
            ["budget"],
            registry=r,
        )

        # The webhook receiver (agent/webhooks.py) and its inbox (agent/inbox.py).
        self.webhooks_received = Counter(
            "ordersync_agent_webhooks_received",
            "Webhook deliveries verified and stored in the inbox",
            ["source"],
            registry=r,
        )
        self.webhooks_rejected = Counter(
            "ordersync_agent_webhooks_rejected",
            "Webhook deliveries not stored, by reason (invalid_signature, stale_timestamp, "
            "replayed, body_too_large, malformed_body, unknown_source, ...)",
            ["source", "reason"],
            registry=r,
        )
        self.webhooks_carried = Counter(
            "ordersync_agent_webhooks_carried",
            "Webhook entities applied from the delivered document (no fetch by id)",
            ["source"],
            registry=r,
        )
        self.inbox_depth = Gauge(
            "ordersync_agent_webhook_inbox_depth",
            "Webhook events received and not yet applied",
            ["source"],
            registry=r,
        )
        self.webhook_apply_seconds = Histogram(
            "ordersync_agent_webhook_apply_seconds",
            "From a webhook's receipt to the commit of its entity's apply",
            ["source"],
            registry=r,
            buckets=_LATENCY_BUCKETS,
        )

    def record_verify(self, report: VerifyReport) -> None:
        """Set the verify gauge from one `agent verify` round of a source."""
        for s in report.streams:
            for state, ids in (
                ("missing", s.missing),
                ("stale", s.stale),
                ("extra", s.extra),
                ("quarantined", s.quarantined),
                ("in_flight", s.in_flight),
            ):
                self.verify_records.labels(report.source, s.stream, state).set(len(ids))

    def watch_quarantine(self, counts: QuarantineCounts) -> None:
        """Report `counts()` (a sink's quarantine per source) as the quarantined gauge."""
        self._quarantined.sinks.append(counts)
