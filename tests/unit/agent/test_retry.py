"""One retrier (agent/retry.py, on stamina) for the platform client and the HTTP sink."""

from __future__ import annotations

import asyncio
import random
from pathlib import Path

import httpx
import pytest
import stamina

from ordersync.agent.client import ApiClient
from ordersync.agent.errors import RateLimited, RetriesExhausted, SinkError
from ordersync.agent.records import Cursor, Record
from ordersync.agent.retry import RetryPolicy
from ordersync.agent.sinks.http import HttpSink


def recording() -> tuple[list[float], object]:
    waits: list[float] = []

    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return waits, sleep


async def test_stamina_drives_the_attempts_so_its_switch_turns_retries_off() -> None:
    """With `stamina.set_active(False)` a 503 is tried once, not retried."""
    calls: list[int] = []

    def answer(request: httpx.Request) -> httpx.Response:
        calls.append(1)
        return httpx.Response(503)

    waits, sleep = recording()
    client = ApiClient(
        httpx.AsyncClient(transport=httpx.MockTransport(answer)), "http://p", "t", sleep=sleep
    )  # type: ignore[arg-type]
    stamina.set_active(False)
    try:
        with pytest.raises(RetriesExhausted):
            await client.get_json("/orders", {})
    finally:
        stamina.set_active(True)
    assert len(calls) == 1 and waits == []


async def test_a_retry_after_longer_than_the_policy_accepts_is_rate_limited() -> None:
    """A 429 asking for an hour, with a policy accepting 10 minutes, gives up at once."""
    waits, sleep = recording()
    client = ApiClient(
        httpx.AsyncClient(
            transport=httpx.MockTransport(
                lambda r: httpx.Response(429, headers={"Retry-After": "3600"})
            )
        ),
        "http://p",
        "t",
        sleep=sleep,  # type: ignore[arg-type]
    )
    with pytest.raises(RateLimited, match="3600 s"):
        await client.get_json("/orders", {})
    assert waits == []


def record() -> Record:
    return Record("order", "o1", 1, 1_000, {"id": "o1"})


async def test_the_http_sink_waits_a_429_out_for_at_least_its_retry_after(tmp_path: Path) -> None:
    """The sink retries through the same policy: 429 + Retry-After 7 waits >= 7 s."""
    answers = iter([httpx.Response(429, headers={"Retry-After": "7"}), httpx.Response(202)])
    waits, sleep = recording()
    sink = await HttpSink.open(
        "http://erp/ingest",
        httpx.AsyncClient(transport=httpx.MockTransport(lambda r: next(answers))),
        tmp_path / "state.json",
        sleep=sleep,
    )
    result = await sink.apply_page("s", "orders", [record()], Cursor(1_000, "o1"))
    assert result.applied == 1 and waits and waits[0] >= 7


async def test_the_http_sink_gives_up_after_the_policys_attempts(tmp_path: Path) -> None:
    """Persistent 503s: `attempts - 1` jittered waits, then SinkError; the cursor stays."""
    waits, sleep = recording()
    sink = HttpSink(
        "http://erp/ingest",
        httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(503))),
        tmp_path / "state.json",
        retry=RetryPolicy(attempts=3),
        sleep=sleep,  # type: ignore[arg-type]
    )
    sink.retrier.rng = random.Random(1)
    with pytest.raises(SinkError, match="failed 3 times"):
        await sink.apply_page("s", "orders", [record()], Cursor(1_000, "o1"))
    assert len(waits) == 2 and all(0 <= w <= 0.5 * 2**i for i, w in enumerate(waits))
    assert await sink.load_cursor("s", "orders") is None


async def test_an_erp_that_never_answers_is_retried_at_each_deadline(tmp_path: Path) -> None:
    """Each POST ends at the sink's deadline and is retried; then SinkError, cursor kept."""
    posts: list[int] = []

    async def never(request: httpx.Request) -> httpx.Response:
        posts.append(1)
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    waits, sleep = recording()
    sink = HttpSink(
        "http://erp/ingest",
        httpx.AsyncClient(transport=httpx.MockTransport(never)),
        tmp_path / "state.json",
        retry=RetryPolicy(attempts=2),
        sleep=sleep,  # type: ignore[arg-type]
        deadline=0.05,
    )
    with pytest.raises(SinkError, match="deadline"):
        await asyncio.wait_for(sink.apply_page("s", "orders", [record()], Cursor(1, "o1")), 60)
    assert len(posts) == 2 and len(waits) == 1
    assert await sink.load_cursor("s", "orders") is None
