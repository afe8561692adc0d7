"""ApiClient over httpx.MockTransport: log fields, auth errors, retry policy, Retry-After."""

from __future__ import annotations

import random

import httpx
import pytest
import structlog

from ordersync.agent.client import ApiClient
from ordersync.agent.errors import AuthError, RequestRejected, RetriesExhausted, Unreachable
from ordersync.agent.retry import RetryPolicy, parse_retry_after

NOW = 1_704_067_200_000


def make_client(handler, waits: list[float], attempts: int = 3) -> ApiClient:  # type: ignore[no-untyped-def]
    async def sleep(seconds: float) -> None:
        waits.append(seconds)

    return ApiClient(
        httpx.AsyncClient(transport=httpx.MockTransport(handler)),
        "http://hub/api/v1",
        "tok",
        retry=RetryPolicy(attempts=attempts),
        sleep=sleep,
        clock=lambda: NOW,
        rng=random.Random(1),
    )


async def test_each_call_logs_the_seed_000_fields() -> None:
    """timestamp, endpoint, query_params, response_code, records_returned, processing_time_ms."""
    client = make_client(lambda r: httpx.Response(200, json={"data": [{}, {}]}), [])
    with structlog.testing.capture_logs() as logs:
        await client.get_json("/orders", {"limit": 100})
    (line,) = [entry for entry in logs if entry["event"] == "api_call"]
    assert line["endpoint"] == "/orders" and line["query_params"] == {"limit": 100}
    assert line["response_code"] == 200 and line["records_returned"] == 2
    assert {"timestamp", "processing_time_ms", "source", "attempt"} <= line.keys()


@pytest.mark.parametrize("status", [401, 403])
async def test_refused_credentials_are_fatal_and_never_retried(status: int) -> None:
    """401/403 raise AuthError at once."""
    waits: list[float] = []
    client = make_client(lambda r: httpx.Response(status, json={"message": "bad token"}), waits)
    with pytest.raises(AuthError, match="bad token"):
        await client.get_json("/orders", {})
    assert waits == [] and client.calls == 1


async def test_other_4xx_are_rejected_without_retry() -> None:
    """A 400 means our request is wrong; retrying would not help."""
    client = make_client(lambda r: httpx.Response(400, json={"message": "no"}), [])
    with pytest.raises(RequestRejected):
        await client.get_json("/orders", {})


async def test_persistent_5xx_exhaust_the_policy_with_bounded_jittered_waits() -> None:
    """Full jitter: each wait within [0, initial * 2**(n-1)]; then RetriesExhausted."""
    waits: list[float] = []
    client = make_client(lambda r: httpx.Response(503), waits, attempts=4)
    with pytest.raises(RetriesExhausted):
        await client.get_json("/orders", {})
    assert len(waits) == 3
    assert all(0 <= w <= 0.5 * 2**i for i, w in enumerate(waits))


def test_retry_after_accepts_seconds_and_http_dates() -> None:
    """Delta-seconds and IMF-fixdate both parse; garbage is ignored."""
    assert parse_retry_after("12", NOW) == 12
    assert parse_retry_after("Mon, 01 Jan 2024 00:00:30 GMT", NOW) == 30
    assert parse_retry_after("soon", NOW) is None


async def test_the_server_date_header_is_exposed() -> None:
    """The engine caps its cursor with the server's clock."""
    client = make_client(
        lambda r: httpx.Response(
            200, json={"data": []}, headers={"date": "Mon, 01 Jan 2024 00:00:05 GMT"}
        ),
        [],
    )
    response = await client.get_json("/orders", {})
    assert response.server_time_ms == NOW + 5_000


async def test_probe_returns_the_status_once_without_retrying() -> None:
    """The preflight's probe: one call, the platform's status as is (here a 503), no wait."""
    waits: list[float] = []
    seen: list[httpx.Request] = []

    def answer(request: httpx.Request) -> httpx.Response:
        seen.append(request)
        return httpx.Response(503)

    client = make_client(answer, waits)
    assert await client.probe("POST", "/poll", {"limit": 1}, {"filters": {}}) == 503
    assert waits == [] and len(seen) == 1
    assert seen[0].headers["authorization"] == "Bearer tok"
    assert seen[0].headers["content-type"] == "application/json"
    assert seen[0].url.params["limit"] == "1" and seen[0].content == b'{"filters":{}}'


async def test_probe_names_an_unreachable_platform() -> None:
    """No answer at all (connection refused): Unreachable, with the cause."""

    def refuse(request: httpx.Request) -> httpx.Response:
        raise httpx.ConnectError("refused")

    with pytest.raises(Unreachable, match="ConnectError: refused"):
        await make_client(refuse, []).probe("GET", "/orders")
