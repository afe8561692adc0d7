"""What `agent run` tells its operator: a start line, a line per poll round, progress during a
long drain, and a stop summary. Each is a log event with a `summary` sentence (`logs.py`):
the console shows the sentence, JSON keeps the fields too.

Lag, everywhere the agent shows one (these lines, `agent status`, `/status`, the status page),
is now minus the time of the stream's committed position. The position stays at least a
lookback behind the newest change (late commits are re-read), and an idle stream's lag grows
until its next change: "last success" says when a poll last drained it.
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping

import structlog

from ordersync.agent.config import AgentConfig
from ordersync.agent.engine import CycleCounts, StreamStatus, SyncEngine
from ordersync.agent.lease import shown
from ordersync.domain.timestamps import format_rfc3339

log = structlog.get_logger("ordersync.agent")


def lag_seconds(state: StreamStatus, now_ms: int) -> float | None:
    """Now minus the position's time (module docstring); None before the first position."""
    if state.cursor is None:
        return None
    return max(0, now_ms - state.cursor.updated_at_ms) / 1000


def _max_lag(states: Iterable[StreamStatus], now_ms: int) -> float | None:
    lags = [lag for s in states if (lag := lag_seconds(s, now_ms)) is not None]
    return max(lags) if lags else None


def _seconds(value: float | None) -> str:
    if value is None:
        return "-"
    if value < 120:
        return f"{value:.1f} s"
    if value < 7200:
        return f"{value / 60:.0f} min"
    return f"{value / 3600:.1f} h"


def started(config: AgentConfig, status_url: str | None) -> None:
    sources = ", ".join(
        f"{s.name} ({s.dialect} {s.base_url}, every {s.interval:g} s)" for s in config.sources
    )
    sink = shown(config.sink.url)
    where = f"; status page {status_url}" if status_url else ""
    log.info(
        "agent_started",
        sources=[s.name for s in config.sources],
        sink=sink,
        status_url=status_url,
        summary=f"syncing {sources} into {sink}; replica lease held{where}",
    )


def poll_round(
    name: str, counts: CycleCounts, states: list[StreamStatus], now_ms: int, next_in: float | None
) -> None:
    lag = _max_lag(states, now_ms)
    after = "" if next_in is None else f"; next poll in {next_in:g} s"
    log.info(
        "poll_round",
        source=name,
        applied=counts.applied,
        duplicates=counts.duplicates,
        lag_seconds=lag,
        api_calls=counts.api_calls,
        next_poll_seconds=next_in,
        summary=f"{name}: {counts.applied} applied, {counts.duplicates} repeats, lag "
        f"{_seconds(lag)}, {counts.api_calls} calls{after}",
    )


def progress(name: str, applied: int, states: list[StreamStatus]) -> None:
    """A drain still running (a backfill): how far it got."""
    positions = ", ".join(
        f"{s.stream} at {format_rfc3339(s.cursor.updated_at_ms)}"
        for s in states
        if s.cursor is not None
    )
    log.info(
        "drain_progress",
        source=name,
        applied=applied,
        summary=f"{name}: draining, {applied} applied so far"
        + (f"; {positions}" if positions else ""),
    )


def stopping(signal_name: str) -> None:
    log.info(
        "agent_stopping",
        signal=signal_name,
        summary=f"stopping ({signal_name}): the page being written commits or is dropped whole",
    )


def stopped(engines: Mapping[str, SyncEngine], elapsed_s: float, now_ms: int) -> None:
    parts = []
    for name, engine in engines.items():
        states = engine.status()
        applied = sum(s.totals.applied for s in states)
        repeats = sum(s.totals.duplicates for s in states)
        calls = sum(s.totals.api_calls for s in states)
        positions = ", ".join(
            f"{s.stream} at {format_rfc3339(s.cursor.updated_at_ms)}"
            for s in states
            if s.cursor is not None
        )
        parts.append(
            f"{name} {applied} applied, {repeats} repeats, {calls} calls, lag "
            f"{_seconds(_max_lag(states, now_ms))}" + (f" ({positions})" if positions else "")
        )
    log.info(
        "agent_stopped",
        elapsed_seconds=round(elapsed_s, 1),
        summary=f"stopped after {_seconds(elapsed_s)}: " + "; ".join(parts),
    )
