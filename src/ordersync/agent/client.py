"""The platform API client: retries, rate limits, the server's clock, one log line per call.

It never touches sockets: an injected `httpx.AsyncClient` does (tests pass one built on
`httpx.ASGITransport` or a fault-injecting transport). Failures of the layer below become
`ordersync.agent.errors` here and nowhere else.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import random
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from contextvars import ContextVar
from dataclasses import dataclass
from decimal import Decimal
from typing import Any

import httpx
import orjson
import structlog

from ordersync.agent.budget import Budget
from ordersync.agent.errors import (
    AuthError,
    ProtocolError,
    RateLimited,
    RequestRejected,
    RetriesExhausted,
)
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.retry import RetryPolicy, parse_http_date_ms, parse_retry_after
from ordersync.domain.timestamps import format_rfc3339, now_ms

Sleep = Callable[[float], Awaitable[None]]
# Set by the engine around a read-ahead fetch: set once that request's bytes are on the wire, so
# that the engine hands the current page to the sink only after the next request has left and
# the platform works on it meanwhile.
request_sent: ContextVar[asyncio.Event | None] = ContextVar("request_sent", default=None)
Params = Mapping[str, str | int] | Sequence[tuple[str, str | int]]
log = structlog.get_logger("ordersync.agent.api")


@dataclass(frozen=True)
class ApiResponse:
    body: Any  # a JSON object, or an array for dialects that answer with one (HubRise)
    status: int
    server_time_ms: int | None  # from the Date header; None when the server sends none
    headers: httpx.Headers | None = None


def auth_headers(scheme: str, token: str, connection_name: str | None = None) -> dict[str, str]:
    """The credentials header of each dialect: `bearer` (MasonHub, Tradecloud), `basic` with
    the connection's name as user (Tradecloud) and `access-token` (HubRise)."""
    if scheme == "bearer":
        return {"Authorization": f"Bearer {token}"}
    if scheme == "basic":
        if not connection_name:
            raise ValueError("Basic auth needs the connection's name")
        pair = base64.b64encode(f"{connection_name}:{token}".encode()).decode()
        return {"Authorization": f"Basic {pair}"}
    if scheme == "access-token":
        return {"X-Access-Token": token}
    raise ValueError(f"unknown auth scheme {scheme!r}; use bearer, basic or access-token")


class _Transient(Exception):
    """One failed attempt worth retrying, with the wait the server asked for, if any."""

    def __init__(self, reason: str, retry_after: float | None = None) -> None:
        super().__init__(reason)
        self.reason = reason
        self.retry_after = retry_after


class ApiClient:
    """Calls one platform's JSON API (bearer auth unless `auth` says otherwise), translating
    failures and retrying."""

    def __init__(
        self,
        http: httpx.AsyncClient,
        base_url: str,
        token: str,
        *,
        source: str = "masonhub",
        retry: RetryPolicy = RetryPolicy(),
        metrics: AgentMetrics | None = None,
        sleep: Sleep = asyncio.sleep,
        clock: Callable[[], int] = now_ms,
        perf: Callable[[], float] = time.perf_counter,
        rng: random.Random | None = None,
        auth: Mapping[str, str] | None = None,
        exact_numbers: bool = False,
        budget: Budget | None = None,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.source = source
        self.retry = retry
        self.metrics = metrics or AgentMetrics()
        self.sleep = sleep
        self.clock = clock
        self.perf = perf
        self.rng = rng or random.Random()
        self._headers = {
            **(auth if auth is not None else auth_headers("bearer", token)),
            "Accept": "application/json",
        }
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        # JSON numbers with a fraction become Decimal, never float (Tradecloud sends quantities
        # and prices as numbers); slower than orjson, so only for sources that need it.
        self._decode: Callable[[bytes], Any] = (
            functools.partial(json.loads, parse_float=Decimal) if exact_numbers else orjson.loads
        )
        self.budget = budget  # shared by the sources of one connection (agent/budget.py)
        self.calls = 0
        self.last_server_time_ms: int | None = None

    async def get_json(self, endpoint: str, params: Params) -> ApiResponse:
        return await self.request_json("GET", endpoint, params)

    async def post_json(self, endpoint: str, body: Any, params: Params = ()) -> ApiResponse:
        """A POST with a JSON body; only for requests that are safe to repeat (reads such as
        Tradecloud's poll, idempotent puts), since a lost answer is retried."""
        return await self.request_json("POST", endpoint, params, body)

    async def request_json(
        self, method: str, endpoint: str, params: Params = (), body: Any = None
    ) -> ApiResponse:
        failures = rate_limited = 0
        while True:
            try:
                return await self._attempt(
                    endpoint, params, failures + rate_limited + 1, method, body
                )
            except _Transient as transient:
                if transient.reason == "rate_limited":
                    rate_limited += 1
                    wait = self._rate_limit_wait(transient, rate_limited, endpoint)
                else:
                    failures += 1
                    wait = self._failure_wait(transient, failures, endpoint)
                self.metrics.retries.labels(self.source, transient.reason).inc()
                await self.sleep(wait)

    def _rate_limit_wait(self, transient: _Transient, count: int, endpoint: str) -> float:
        policy = self.retry
        if count > policy.rate_limit_waits:
            raise RateLimited(
                f"{self.source}: {endpoint} still rate limited after {count - 1} waits"
            ) from transient
        if transient.retry_after is None:
            return policy.backoff(count, self.rng)
        if self.budget is not None:
            # The budget holds the next attempt back until Retry-After has passed (or longer,
            # until the window reopens), and reports a long pause instead of giving up.
            return 0.0
        if transient.retry_after > policy.max_retry_after:
            raise RateLimited(
                f"{self.source}: {endpoint} asks to wait {transient.retry_after:.0f} s "
                f"(Retry-After), more than the policy's {policy.max_retry_after:.0f} s"
            ) from transient
        return transient.retry_after  # never less than the server asked

    def _failure_wait(self, transient: _Transient, count: int, endpoint: str) -> float:
        if count >= self.retry.attempts:
            raise RetriesExhausted(
                f"{self.source}: {endpoint} failed {count} times, last: {transient.reason}"
            ) from transient
        # A 503 with Retry-After names the earliest useful retry; jitter may only add to it.
        return max(self.retry.backoff(count, self.rng), transient.retry_after or 0.0)

    async def _attempt(
        self, endpoint: str, params: Params, attempt: int, method: str = "GET", body: Any = None
    ) -> ApiResponse:
        url = self.base_url + endpoint
        # Quota first, then the clock: request latency is the platform's, not our pacing.
        ticket = await self.budget.spend(method, url, self.source) if self.budget else None
        started = self.perf()
        self.calls += 1
        try:
            response = await self.http.request(
                method,
                url,
                params=_query(params),
                headers=self._headers if body is None else self._json_headers,
                content=None if body is None else orjson.dumps(body),
                extensions={"trace": _trace},
            )
        except httpx.TransportError as exc:
            if ticket is not None:
                ticket.settle(None, None)
            self._observe(
                endpoint,
                params,
                "transport_error",
                None,
                started,
                attempt,
                error=f"{type(exc).__name__}: {exc}",
            )
            raise _Transient(type(exc).__name__) from exc
        if ticket is not None:
            ticket.settle(response.status_code, response.headers)
        body = _json_body(response, self._decode)
        records = body.get("data") if isinstance(body, dict) else body
        count = len(records) if isinstance(records, list) else None
        self._observe(endpoint, params, str(response.status_code), count, started, attempt)
        self.last_server_time_ms = parse_http_date_ms(response.headers.get("date"))
        return self._interpret(response, body, endpoint)

    def _interpret(self, response: httpx.Response, body: Any, endpoint: str) -> ApiResponse:
        status = response.status_code
        if 200 <= status < 300:
            if not isinstance(body, dict | list):
                raise ProtocolError(
                    f"{self.source}: {endpoint} answered {status} without a JSON body"
                )
            return ApiResponse(body, status, self.last_server_time_ms, response.headers)
        message = _error_message(body, response)
        if status in (401, 403):
            raise AuthError(
                f"{self.source}: the platform refused the API token ({status}: {message}); "
                "check the token configured for this source"
            )
        retry_after = parse_retry_after(response.headers.get("retry-after"), self.clock())
        if status == 429:
            self.metrics.rate_limit_hits.labels(self.source).inc()
            raise _Transient("rate_limited", retry_after)
        if status >= 500 or status == 408:
            raise _Transient(f"http_{status}", retry_after)
        raise RequestRejected(f"{self.source}: {endpoint} rejected ({status}): {message}", status)

    def _observe(
        self,
        endpoint: str,
        params: Params,
        code: str,
        records: int | None,
        started: float,
        attempt: int,
        error: str | None = None,
    ) -> None:
        elapsed = self.perf() - started
        self.metrics.request_seconds.labels(self.source, endpoint).observe(elapsed)
        self.metrics.requests.labels(self.source, endpoint, code).inc()
        log.info(
            "api_call",
            timestamp=format_rfc3339(self.clock()),
            source=self.source,
            endpoint=endpoint,
            query_params=_loggable(params),
            response_code=code,
            records_returned=records,
            processing_time_ms=round(elapsed * 1000, 1),
            attempt=attempt,
            **({"error": error} if error else {}),
        )


async def _trace(event: str, info: Mapping[str, Any]) -> None:
    # httpcore's trace events; transports without them (ASGITransport) simply never call this.
    if event.endswith(".send_request_body.complete"):
        sent = request_sent.get()
        if sent is not None:
            sent.set()


def _json_body(response: httpx.Response, decode: Callable[[bytes], Any] = orjson.loads) -> Any:
    try:
        return decode(response.content) if response.content else None
    except ValueError:  # orjson.JSONDecodeError and json.JSONDecodeError both are
        return None


def _error_message(body: Any, response: httpx.Response) -> str:
    if isinstance(body, dict) and isinstance(body.get("message"), str):
        return str(body["message"])
    return response.reason_phrase or "no message"


def _query(params: Params) -> httpx.QueryParams:
    pairs = params.items() if isinstance(params, Mapping) else params
    return httpx.QueryParams([(key, str(value)) for key, value in pairs])


def _loggable(params: Params) -> dict[str, Any]:
    """Query parameters as a dict for the log line; a repeated key becomes a list."""
    pairs = params.items() if isinstance(params, Mapping) else params
    out: dict[str, Any] = {}
    for key, value in pairs:
        if key in out:
            previous = out[key]
            out[key] = [*previous, value] if isinstance(previous, list) else [previous, value]
        else:
            out[key] = value
    return out
