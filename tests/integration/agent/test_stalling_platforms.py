"""Platforms that never answer or answer a byte at a time: every request ends at its deadline
(a retryable failure), `abort()` ends requests in flight, and SIGTERM stops the agent."""

from __future__ import annotations

import asyncio
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import httpx
import pytest

from ordersync.agent.client import ApiClient
from ordersync.agent.engine import SyncEngine
from ordersync.agent.errors import RequestAborted, RetriesExhausted
from ordersync.agent.retry import RetryPolicy
from ordersync.agent.sinks.jsonl import JsonlSink
from ordersync.agent.sources.masonhub import MasonHubSource
from tests.integration.agent.stalling_platform import (
    StallingPlatform,
    serving,
    serving_in_thread,
)

ORDERSYNC = [sys.executable, "-m", "ordersync.cli"]
SHIPMENT = {
    "id": "s1",
    "version": 1,
    "updated_at": "2024-01-01T00:00:00.000Z",
    "order_id": "o1",
    "status": "shipped",
}
# Only against a hang: fails a test that would otherwise never end, bounds nothing expected.
HANG_GUARD = 60


def hanging_client() -> tuple[ApiClient, asyncio.Event]:
    """A client whose platform receives each request and never answers."""
    arrived = asyncio.Event()

    async def never(request: httpx.Request) -> httpx.Response:
        arrived.set()
        await asyncio.Event().wait()
        raise AssertionError("unreachable")

    async def no_wait(seconds: float) -> None:
        pass

    http = httpx.AsyncClient(transport=httpx.MockTransport(never))
    client = ApiClient(http, "http://p.test", "t", sleep=no_wait, retry=RetryPolicy(attempts=3))
    return client, arrived


async def test_a_deadline_hit_is_a_retryable_failure_that_exhausts_the_policy() -> None:
    """A platform that never answers: each attempt ends at the deadline, is retried, and the
    policy's attempts end the request with RetriesExhausted naming the deadline."""
    client, _ = hanging_client()
    client.deadline = 0.05
    with pytest.raises(RetriesExhausted, match="deadline"):
        await asyncio.wait_for(client.get_json("/orders", {}), HANG_GUARD)
    assert client.calls == 3
    retried = client.metrics.registry.get_sample_value(
        "ordersync_agent_retries_total", {"source": "masonhub", "reason": "deadline"}
    )
    assert retried == 2


async def test_abort_ends_a_request_in_flight_and_refuses_new_ones_until_resumed() -> None:
    """`abort()` while a request waits for its answer: RequestAborted, at once; new requests
    are refused the same way until `resume()`."""
    client, arrived = hanging_client()
    waiting = asyncio.ensure_future(client.get_json("/orders", {}))
    await asyncio.wait_for(arrived.wait(), HANG_GUARD)
    client.abort()
    with pytest.raises(RequestAborted):
        await asyncio.wait_for(waiting, HANG_GUARD)
    with pytest.raises(RequestAborted):
        await client.get_json("/orders", {})
    assert client.calls == 1
    client.resume()
    client.http = httpx.AsyncClient(
        transport=httpx.MockTransport(lambda r: httpx.Response(200, json={"data": []}))
    )
    assert (await client.get_json("/orders", {})).status == 200


async def test_abort_also_ends_a_retry_backoff() -> None:
    """Stopping while a retry waits out its backoff: RequestAborted, not the full wait."""
    backing_off = asyncio.Event()

    async def long_sleep(seconds: float) -> None:
        backing_off.set()
        await asyncio.Event().wait()

    http = httpx.AsyncClient(transport=httpx.MockTransport(lambda r: httpx.Response(503)))
    client = ApiClient(http, "http://p.test", "t", sleep=long_sleep)
    waiting = asyncio.ensure_future(client.get_json("/orders", {}))
    await asyncio.wait_for(backing_off.wait(), HANG_GUARD)
    client.abort()
    with pytest.raises(RequestAborted):
        await asyncio.wait_for(waiting, HANG_GUARD)


async def test_a_dripping_stream_fails_at_its_deadline_and_the_other_stream_syncs(
    tmp_path: Path,
) -> None:
    """Orders answered one byte at a time (over a real socket) never complete: the deadline
    fails them, retries run out, and the shipments stream of the same source is still synced
    in that cycle."""
    platform = StallingPlatform(
        stalls={"/orders": "drip"}, answers={"/shipments": {"data": [SHIPMENT]}}, drip_interval=0.02
    )

    async def no_wait(seconds: float) -> None:
        pass

    async with serving(platform) as base_url, httpx.AsyncClient() as http:
        client = ApiClient(
            http, base_url, "t", deadline=0.3, retry=RetryPolicy(attempts=2), sleep=no_wait
        )
        sink = await JsonlSink.open(tmp_path / "changes.jsonl")
        engine = SyncEngine(MasonHubSource(client), sink)
        with pytest.raises(RetriesExhausted, match="deadline"):
            await asyncio.wait_for(engine.run_cycle(), HANG_GUARD)
        await sink.close()
    states = {state.stream: state for state in engine.status()}
    assert states["shipments"].caught_up and states["shipments"].totals.applied == 1
    assert not states["orders"].caught_up and states["orders"].cursor is None
    assert len(platform.stalled) == 2  # the first attempt and its one retry


def write_config(tmp_path: Path, base_url: str) -> Path:
    config = tmp_path / "agent.toml"
    config.write_text(
        "\n".join(
            [
                "[[sources]]",
                'name = "masonhub"',
                'dialect = "masonhub"',
                f'base_url = "{base_url}"',
                'token_env = "MASONHUB_TOKEN"',
                "interval = 1",
                "lookback = 5",
                "[sink]",
                f'url = "jsonl://{tmp_path}/changes.jsonl"',
            ]
        )
    )
    return config


@pytest.mark.parametrize(
    ("mode", "stall_preflight"),
    [("hang", False), ("drip", False), ("hang", True)],
    ids=["hung-listing", "dripping-listing", "hung-preflight"],
)
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_a_signal_stops_the_agent_whatever_the_platform_does(
    tmp_path: Path, mode: str, stall_preflight: bool, stop: signal.Signals
) -> None:
    """An `agent run` whose request hangs (or drips a byte a second) exits 0 on a signal, with
    no traceback, instead of waiting for an answer that never comes."""
    platform = StallingPlatform(stalls={"/orders": mode}, stall_preflight=stall_preflight)
    with serving_in_thread(platform) as base_url:
        process = subprocess.Popen(
            [*ORDERSYNC, "agent", "run", "--config", str(write_config(tmp_path, base_url))],
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            env={**os.environ, "MASONHUB_TOKEN": "x"},
            cwd=tmp_path,
            start_new_session=True,
        )
        try:
            started = time.monotonic()
            while not platform.stalled and process.poll() is None:
                assert time.monotonic() - started < HANG_GUARD, "the agent never sent a request"
                time.sleep(0.05)
            time.sleep(0.3)  # the stalled request is in flight, not just sent
            signalled = time.monotonic()
            process.send_signal(stop)
            _, stderr = process.communicate(timeout=20)  # a hang guard, not the expectation
            print(f"\n{mode} (preflight stalled: {stall_preflight}): exited "
                  f"{time.monotonic() - signalled:.2f} s after {stop.name}")  # fmt: skip
        finally:
            process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr, stderr
