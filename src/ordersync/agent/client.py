"""The platform API client: retries, rate limits, the server's clock, one log line per call.

It never touches sockets: an injected `httpx.AsyncClient` does (tests pass one built on
`httpx.ASGITransport` or a fault-injecting transport). Failures of the layer below become
`ordersync.agent.errors` here and nowhere else.

Whatever the platform does, a call ends: each attempt has an overall deadline (sending, waiting
and reading the whole body; httpx's own timeouts restart with every byte), a body larger than
`max_body_bytes` or not JSON is a `ProtocolError`, and `abort()` (the agent is stopping) ends
the calls in flight, and refuses new ones, with `RequestAborted`.
"""

from __future__ import annotations

import asyncio
import base64
import functools
import json
import random
import time
from collections.abc import Awaitable, Callable, Coroutine, Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, TypeVar

import httpx
import orjson
import structlog

from ordersync.agent.budget import Budget
from ordersync.agent.errors import (
    AuthError,
    ProtocolError,
    RateLimited,
    RequestAborted,
    RequestRejected,
    RetriesExhausted,
    Unreachable,
)
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.retry import (
    Retrier,
    RetriesSpent,
    RetryPolicy,
    Transient,
    parse_http_date_ms,
    parse_retry_after,
)
from ordersync.domain.timestamps import format_rfc3339, now_ms

Sleep = Callable[[float], Awaitable[None]]
Params = Mapping[str, str | int] | Sequence[tuple[str, str | int]]
T = TypeVar("T")
log = structlog.get_logger("ordersync.agent.api")

DEFAULT_DEADLINE = 60.0  # seconds per attempt, from sending to the last byte of the body
# A listing page is some hundred kilobytes; far more is a platform gone wrong, not data.
DEFAULT_MAX_BODY_BYTES = 32 * 1024 * 1024


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


class _NoAnswer(Exception):
    """No complete answer: the connection failed or the deadline passed. `reason` (the retry
    metric's label) is "deadline" or the transport error's name, e.g. "ReadError"."""

    def __init__(self, reason: str, detail: str) -> None:
        super().__init__(detail)
        self.reason = reason


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
        deadline: float = DEFAULT_DEADLINE,
        max_body_bytes: int = DEFAULT_MAX_BODY_BYTES,
    ) -> None:
        self.http = http
        self.base_url = base_url.rstrip("/")
        self.source = source
        self.metrics = metrics or AgentMetrics()
        self.clock = clock
        self.perf = perf
        self._headers = {
            **(auth if auth is not None else auth_headers("bearer", token)),
            "Accept": "application/json",
        }
        self._json_headers = {**self._headers, "Content-Type": "application/json"}
        # JSON numbers with a fraction become Decimal, never float (Tradecloud sends quantities
        # and prices as numbers); slower than orjson, so only for sources that need it.
        self._decode: Callable[[bytes], Any] = (
            functools.partial(json.loads, parse_float=Decimal, parse_constant=_not_json)
            if exact_numbers
            else orjson.loads
        )
        self.budget = budget  # shared by the sources of one connection (agent/budget.py)
        self.deadline = deadline
        self.max_body_bytes = max_body_bytes
        self.retrier = Retrier(
            retry,
            sleep=sleep,
            rng=rng,
            on_retry=self._count_retry,
            # The budget holds the next attempt back until Retry-After has passed (or longer,
            # until the window reopens), and reports a long pause instead of giving up.
            retry_after_kept_elsewhere=budget is not None,
        )
        self.calls = 0
        self.last_server_time_ms: int | None = None
        self._aborted = False
        self._in_flight: set[asyncio.Task[Any]] = set()

    async def get_json(self, endpoint: str, params: Params) -> ApiResponse:
        return await self.request_json("GET", endpoint, params)

    async def post_json(self, endpoint: str, body: Any, params: Params = ()) -> ApiResponse:
        """A POST with a JSON body; only for requests that are safe to repeat (reads such as
        Tradecloud's poll, idempotent puts), since a lost answer is retried."""
        return await self.request_json("POST", endpoint, params, body)

    async def request_json(
        self,
        method: str,
        endpoint: str,
        params: Params = (),
        body: Any = None,
        *,
        headers: Mapping[str, str] | None = None,
    ) -> ApiResponse:
        """`headers` are added to this request's (e.g. `Idempotency-Key`: a write is then safe
        to retry, the platform replaying its first answer)."""
        return await self._abortable(self._retried(method, endpoint, params, body, headers))

    async def probe(self, method: str, endpoint: str, params: Params = (), body: Any = None) -> int:
        """One attempt, no retries, no quota spent: the status the platform answers (preflight
        checks the URL and the token with it). `Unreachable` when nothing answers in time."""
        status, _ = await self.probe_response(method, endpoint, params, body)
        return status

    async def probe_response(
        self, method: str, endpoint: str, params: Params = (), body: Any = None
    ) -> tuple[int, httpx.Headers]:
        """`probe`, with the answer's headers (what the platform advertises, e.g. its lag)."""
        url = self.base_url + endpoint
        try:
            response, _ = await self._abortable(self._exchange(method, url, params, body))
        except _NoAnswer as exc:
            raise Unreachable(f"{self.source}: no answer from {url} ({exc})") from exc
        return response.status_code, response.headers

    def abort(self) -> None:
        """The agent is stopping: calls in flight end with `RequestAborted`, wherever they are
        (sending, waiting for an answer or for a retry), and so does every new call until
        `resume()`. Their pages are not applied; the stored cursors have not moved past them."""
        self._aborted = True
        for task in self._in_flight:
            task.cancel()

    def resume(self) -> None:
        self._aborted = False

    async def _abortable(self, call: Coroutine[Any, Any, T]) -> T:
        # The call runs as a task of its own so that `abort()` can cancel it without cancelling
        # the caller; the caller then sees an error it can handle, not a cancellation.
        if self._aborted:
            call.close()
            raise RequestAborted(f"{self.source}: stopping, no new request is sent")
        task = asyncio.ensure_future(call)
        self._in_flight.add(task)
        try:
            return await task
        except asyncio.CancelledError:
            caller = asyncio.current_task()
            if self._aborted and task.cancelled() and not (caller and caller.cancelling()):
                raise RequestAborted(
                    f"{self.source}: stopping, the request in flight was dropped"
                ) from None
            raise
        finally:
            self._in_flight.discard(task)

    async def _retried(
        self,
        method: str,
        endpoint: str,
        params: Params,
        body: Any,
        headers: Mapping[str, str] | None = None,
    ) -> ApiResponse:
        try:
            return await self.retrier.call(
                lambda attempt: self._attempt(endpoint, params, attempt, method, body, headers)
            )
        except RetriesSpent as spent:
            message = f"{self.source}: {endpoint} {spent.why}"
            if spent.rate_limited:
                raise RateLimited(message) from spent.last
            raise RetriesExhausted(message) from spent.last

    def _count_retry(self, transient: Transient) -> None:
        self.metrics.retries.labels(self.source, transient.reason).inc()

    async def _attempt(
        self,
        endpoint: str,
        params: Params,
        attempt: int,
        method: str = "GET",
        body: Any = None,
        headers: Mapping[str, str] | None = None,
    ) -> ApiResponse:
        url = self.base_url + endpoint
        # Quota first, then the clock: request latency is the platform's, not our pacing.
        ticket = await self.budget.spend(method, url, self.source) if self.budget else None
        started = self.perf()
        self.calls += 1
        try:
            response, content = await self._exchange(method, url, params, body, headers)
        except _NoAnswer as exc:
            if ticket is not None:
                ticket.settle(None, None)
            code = "deadline" if exc.reason == "deadline" else "transport_error"
            self._observe(endpoint, params, code, None, started, attempt, error=str(exc))
            raise Transient(exc.reason) from exc
        except ProtocolError as exc:  # an answer too large or unreadable to take in
            if ticket is not None:
                ticket.settle(None, None)
            self._observe(
                endpoint, params, "protocol_error", None, started, attempt, error=str(exc)
            )
            raise
        except BaseException:
            if ticket is not None:
                ticket.settle(None, None)
            raise
        if ticket is not None:
            ticket.settle(response.status_code, response.headers)
        decoded = _json_body(content, self._decode)
        records = decoded.get("data") if isinstance(decoded, dict) else decoded
        count = len(records) if isinstance(records, list) else None
        self._observe(endpoint, params, str(response.status_code), count, started, attempt)
        self.last_server_time_ms = parse_http_date_ms(response.headers.get("date"))
        return self._interpret(response, decoded, endpoint, content)

    async def _exchange(
        self,
        method: str,
        url: str,
        params: Params,
        body: Any,
        extra_headers: Mapping[str, str] | None = None,
    ) -> tuple[httpx.Response, bytes]:
        """One request and its whole body, within the deadline."""
        headers = self._headers if body is None else self._json_headers
        request = self.http.build_request(
            method,
            url,
            params=_query(params),
            headers={**headers, **extra_headers} if extra_headers else headers,
            content=None if body is None else orjson.dumps(body, default=exact_json),
        )
        try:
            async with asyncio.timeout(self.deadline):
                response = await self.http.send(request, stream=True)
                try:
                    content = await self._read_body(response, url)
                finally:
                    await response.aclose()
        except TimeoutError as exc:
            raise _NoAnswer(
                "deadline", f"no complete answer within the {self.deadline:g} s deadline"
            ) from exc
        except httpx.TransportError as exc:
            raise _NoAnswer(type(exc).__name__, f"{type(exc).__name__}: {exc}") from exc
        except httpx.RequestError as exc:  # e.g. a body that is not in its declared encoding
            raise ProtocolError(
                f"{self.source}: {url} answered unreadably ({type(exc).__name__}: {exc})"
            ) from exc
        return response, content

    async def _read_body(self, response: httpx.Response, url: str) -> bytes:
        declared = response.headers.get("content-length", "")
        if declared.isascii() and declared.isdigit() and int(declared) > self.max_body_bytes:
            raise self._too_large(url, response.status_code)
        chunks, size = [], 0
        async for chunk in response.aiter_bytes():
            size += len(chunk)
            if size > self.max_body_bytes:
                raise self._too_large(url, response.status_code)
            chunks.append(chunk)
        return b"".join(chunks)

    def _too_large(self, url: str, status: int) -> ProtocolError:
        return ProtocolError(
            f"{self.source}: {url} answered {status} with a body over "
            f"{self.max_body_bytes} bytes; not read further"
        )

    def _interpret(
        self, response: httpx.Response, body: Any, endpoint: str, content: bytes = b""
    ) -> ApiResponse:
        status = response.status_code
        if 200 <= status < 300:
            if not isinstance(body, dict | list):
                what = "a body that is not JSON" if body is _NOT_JSON else "no JSON document"
                raise ProtocolError(
                    f"{self.source}: {endpoint} answered {status} with {what} "
                    f"({len(content)} bytes: {content[:60]!r})"
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
            raise Transient("rate_limited", retry_after, rate_limited=True)
        if status >= 500 or status == 408:
            raise Transient(f"http_{status}", retry_after)
        raise RequestRejected(
            f"{self.source}: {endpoint} rejected ({status}): {message}",
            status,
            None if body is _NOT_JSON else body,
        )

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
            # A number, as seed 000 logs it; a failure without an answer says what happened.
            response_code=int(code) if code.isdigit() else code,
            records_returned=records,
            processing_time_ms=round(elapsed * 1000, 1),
            attempt=attempt,
            **({"error": error} if error else {}),
        )


_NOT_JSON: Any = object()  # a body that does not decode: its own value, so messages can say so


def exact_json(value: Any) -> Any:
    """orjson's `default`: a Decimal goes out as the JSON number it is, digit for digit."""
    if isinstance(value, Decimal):
        return orjson.Fragment(str(value))
    raise TypeError(f"{type(value).__name__} is not JSON serializable")


def _json_body(content: bytes, decode: Callable[[bytes], Any] = orjson.loads) -> Any:
    try:
        return decode(content) if content else None
    # ValueError: orjson's and json's decode errors, and bytes that are not UTF-8 text;
    # RecursionError: json (the exact-numbers decoder) on arrays nested thousands deep.
    except (ValueError, RecursionError):
        return _NOT_JSON


def _not_json(constant: str) -> Any:
    # json.loads takes NaN and Infinity by default; they are not JSON, and not a quantity.
    raise ValueError(f"{constant} is not a JSON number")


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
