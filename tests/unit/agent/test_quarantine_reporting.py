"""The quarantine's count as the agent reports it: the Prometheus gauge and /status."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

from ordersync.agent.engine import StreamStatus
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.runner import status_payload


def gauge(metrics: AgentMetrics, source: str) -> float | None:
    return metrics.registry.get_sample_value(
        "ordersync_agent_quarantined_records", {"source": source}
    )


def test_the_gauge_reads_the_sinks_count_at_each_scrape() -> None:
    """ordersync_agent_quarantined_records{source} is what the sink holds now (records leave the
    quarantine when a retry lands them), summed over the sinks watched."""
    metrics = AgentMetrics()
    first: dict[str, int] = {"a": 2}
    metrics.watch_quarantine(lambda: first)
    metrics.watch_quarantine(lambda: {"a": 1, "b": 0})
    assert (gauge(metrics, "a"), gauge(metrics, "b")) == (3.0, 0.0)
    first["a"] = 0
    assert gauge(metrics, "a") == 1.0


def test_status_rows_carry_the_sources_quarantined_count() -> None:
    """/status (and so `agent status` while the agent runs) shows per stream how many records
    of its source sit in the quarantine."""
    runtime: Any = SimpleNamespace(
        sink=SimpleNamespace(quarantine_counts={"m": 2}),
        stopped={},
        budgets=SimpleNamespace(exhausted=lambda source: None),
        status=lambda: [StreamStatus("m", "orders"), StreamStatus("n", "orders")],
    )
    rows = status_payload(runtime)
    assert [(r["source"], r["quarantined"]) for r in rows] == [("m", 2), ("n", 0)]
