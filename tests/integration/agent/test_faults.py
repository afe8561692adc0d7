"""Server errors, rate limits, connection resets and refused tokens, through the real hub."""

from __future__ import annotations

import asyncio
import random
from collections.abc import AsyncIterator
from email.utils import format_datetime
from pathlib import Path

import httpx
import pytest

from ordersync.agent.errors import AuthError, RetriesExhausted
from ordersync.agent.sinks.sql import SqlSink
from ordersync.domain.timestamps import from_ms
from tests.integration.agent.conftest import SinkFactory
from tests.integration.agent.harness import (
    FakeSleep,
    Hub,
    Intercept,
    assert_applied_at_most_once,
    assert_replica_equals_hub,
    build_engine,
)


@pytest.fixture
async def sink(tmp_path: Path) -> AsyncIterator[SqlSink]:
    opened = await SqlSink.open(f"sqlite:///{tmp_path}/replica.db")
    yield opened
    await opened.close()


def error(status: int, headers: dict[str, str] | None = None) -> httpx.Response:
    return httpx.Response(
        status,
        headers=headers or {},
        json={"error_type": "x", "message": f"injected {status}", "errors": []},
    )


async def test_5xx_answers_are_retried_with_backoff(hub: Hub, sink: SqlSink) -> None:
    """Two 503s and a 502 in a row are waited out; the page then arrives."""
    await hub.create_orders(30)

    async def fail_first(request: httpx.Request, n: int) -> httpx.Response | None:
        return error(503 if n < 3 else 502) if n <= 3 else None

    sleep = FakeSleep()
    engine = build_engine(
        hub, sink, transport=Intercept(httpx.ASGITransport(app=hub.app), fail_first), sleep=sleep
    )
    counts = await engine.run_cycle()
    assert counts.applied == 30
    assert len(sleep.waits) == 3
    assert counts.api_calls == counts.pages + 3
    await assert_replica_equals_hub(hub, sink)
    await assert_applied_at_most_once(sink, counts.applied)


@pytest.mark.parametrize("form", ["seconds", "http-date"])
async def test_429_waits_at_least_retry_after(hub: Hub, sink: SqlSink, form: str) -> None:
    """A 429 is waited out for no less than its Retry-After, in either header form."""
    await hub.create_orders(10)
    retry_at = (hub.clock.now // 1000 + 8) * 1000  # an HTTP-date has whole seconds
    expected = 7 if form == "seconds" else (retry_at - hub.clock.now) / 1000

    async def throttle_once(request: httpx.Request, n: int) -> httpx.Response | None:
        if n != 1:
            return None
        value = "7" if form == "seconds" else format_datetime(from_ms(retry_at), usegmt=True)
        return error(429, {"Retry-After": value})

    sleep = FakeSleep()
    engine = build_engine(
        hub, sink, transport=Intercept(httpx.ASGITransport(app=hub.app), throttle_once), sleep=sleep
    )
    counts = await engine.run_cycle()
    assert sleep.waits and sleep.waits[0] >= expected >= 7
    rate_limited = engine.metrics.registry.get_sample_value(
        "ordersync_agent_rate_limit_hits_total", {"source": "masonhub"}
    )
    assert rate_limited == 1
    await assert_replica_equals_hub(hub, sink)
    await assert_applied_at_most_once(sink, counts.applied)


async def test_connection_resets_and_timeouts_are_retried(
    hub: Hub, sink: SqlSink, dialect: str
) -> None:
    """Connect errors, reads cut mid-response and timeouts are transient."""
    await hub.create_orders(250)
    faults = {
        2: httpx.ConnectError("refused"),
        4: httpx.ReadError("reset by peer"),
        5: httpx.ReadTimeout("slow"),
    }

    async def break_some(request: httpx.Request, n: int) -> httpx.Response | None:
        if n in faults:
            raise faults[n]
        return None

    engine = build_engine(
        hub,
        sink,
        transport=Intercept(httpx.ASGITransport(app=hub.app), break_some),
        dialect=dialect,
    )
    counts = await engine.run_cycle()
    assert counts.applied == 250
    await assert_replica_equals_hub(hub, sink, dialect)
    await assert_applied_at_most_once(sink, counts.applied)


async def test_a_failed_cycle_moves_nothing_and_the_next_catches_up(
    hub: Hub, sink: SqlSink
) -> None:
    """Retries run out mid-drain; committed pages stay, the gap is caught up next cycle."""
    await hub.create_orders(250, tie=True)
    broken = {"on": True}

    async def outage(request: httpx.Request, n: int) -> httpx.Response | None:
        return error(503) if broken["on"] and n >= 2 else None

    engine = build_engine(hub, sink, transport=Intercept(httpx.ASGITransport(app=hub.app), outage))
    with pytest.raises(RetriesExhausted):
        await engine.run_cycle()
    state = {s.stream: s for s in engine.status()}["orders"]
    assert state.last_error is not None and "503" in state.last_error
    assert len(await sink.load_versions("masonhub", "order")) == 100
    broken["on"] = False
    counts = await engine.run_cycle()
    assert counts.applied == 150
    await assert_replica_equals_hub(hub, sink)
    await assert_applied_at_most_once(sink, 250)


async def test_a_refused_token_stops_the_source_with_a_clear_error(hub: Hub, sink: SqlSink) -> None:
    """401 is fatal: no retry, the run loop ends, status says what to fix."""
    await hub.create_orders(3)
    sleep = FakeSleep()
    engine = build_engine(hub, sink, token="osk_not-a-real-token", sleep=sleep)
    with pytest.raises(AuthError, match="refused the API token"):
        await engine.run(0.01, asyncio.Event())
    assert sleep.waits == []
    assert all(s.stopped and "token" in (s.last_error or "") for s in engine.status()[:1])


async def test_random_faults_on_every_kind_of_call_still_converge(
    hub: Hub, sink_factory: SinkFactory, dialect: str
) -> None:
    """A seeded mix of 5xx, 429 and resets on a third of the calls, while orders keep moving;
    once the writes stop, one more cycle (still under faults) leaves replica == hub, on every
    dialect and every kind of replica."""
    sink = await sink_factory()
    orders = await hub.create_orders(150, tie=True)
    await hub.create_orders(150)
    rng = random.Random(7)
    writing = True

    async def chaos(request: httpx.Request, n: int) -> httpx.Response | None:
        if writing and n % 4 == 0:
            hub.clock.advance(3)
            await hub.advance_order(rng.choice(orders).id)
        roll = rng.random()
        if roll < 0.1:
            return error(500)
        if roll < 0.2:
            return error(429, {"Retry-After": "1"})
        if roll < 0.3:
            raise httpx.ReadError("reset")
        return None

    engine = build_engine(
        hub, sink, transport=Intercept(httpx.ASGITransport(app=hub.app), chaos), dialect=dialect
    )
    applied = 0
    for _ in range(3):
        applied += (await engine.run_cycle()).applied
    # A write during the last cycle can land after that cycle's walk of its stream (e.g. while
    # shipments are read): only a cycle after the writes stop can promise equality.
    writing = False
    applied += (await engine.run_cycle()).applied
    await assert_replica_equals_hub(hub, sink, dialect)
    await assert_applied_at_most_once(sink, applied)
