"""The hub's request quotas, per authenticated connection (seed 003, section 3).

The policy, its windows, its spec syntax and the `RateLimit` header format are
`ordersync.quotas`' (shared with the agent); this module enforces them. `RateLimiter` (ASGI
middleware) finds the caller with the dialect's own credential parser (`hub.auth`, the same
call the route makes: one check per request), counts the request against every window that
applies under that connection's id, refuses it with 429 and `Retry-After` when one is full, and
tells the client where it stands on every response with `RateLimit-Policy` and `RateLimit`.
A request whose credentials are refused is not counted; its route answers 400 or 401.

Counters live in `ordersync.store.rate_counters`: in memory (one process) or in the hub
database, where every worker process sees them.
"""

from __future__ import annotations

import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import TYPE_CHECKING

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ordersync.errors import ConfigurationError
from ordersync.hub.auth import parser_for, principal_of
from ordersync.hub.errors import ApiError, error_response
from ordersync.quotas import (
    QuotaPolicy,
    Window,
    format_policy,
    format_standing,
    hub_endpoint_class,
    unit_name,
)
from ordersync.store.rate_counters import (
    MemoryRateCounters,
    RateCounters,
    Slot,
    SqlRateCounters,
)
from ordersync.store.store import Store

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ordersync.hub.settings import HubSettings

__all__ = ["Limit", "QuotaPolicy", "RateLimiter", "Verdict", "install_rate_limits"]

Clock = Callable[[], float]


def request_method(scope: Scope) -> str:
    """The method the request means: HubRise lets a POST say PUT, PATCH or DELETE instead."""
    method = str(scope["method"]).upper()
    override = dict(scope["headers"]).get(b"x-http-method-override", b"")
    wanted = str(override.decode("latin-1")).strip().upper()
    return wanted if method == "POST" and wanted in ("PUT", "PATCH", "DELETE") else method


def endpoint_class(method: str, path: str) -> str:
    """'heavy' for the high-load listings, 'all' for every other request."""
    return hub_endpoint_class(method, path)


@dataclass(frozen=True)
class Limit:
    """One window of one quota, as a request meets it."""

    bucket: str
    window: Window

    def slot(self, now: float) -> Slot:
        w = self.window
        return Slot(self.bucket, w.start(now), w.seconds, w.limit)


def limits_for(policy: QuotaPolicy, method: str, path: str) -> tuple[Limit, ...]:
    return tuple(Limit(bucket, window) for bucket, window in policy.windows_for(method, path))


def connection_key(connection_id: int) -> str:
    """The counters' key of a connection: its id, whatever header text named it."""
    return f"connection:{connection_id}"


@dataclass(frozen=True)
class Verdict:
    """What the counters said about one request: its limits and their counts including it."""

    limits: Sequence[Limit]
    counts: Sequence[int]
    now: float

    @property
    def blocking(self) -> list[Limit]:
        return [
            lim for lim, n in zip(self.limits, self.counts, strict=True) if n > lim.window.limit
        ]

    def last_to_reopen(self) -> Window:
        """Of the full windows, the one that ends last: until then the request is refused."""
        return max(self.blocking, key=lambda lim: lim.window.end(self.now)).window

    def retry_after(self) -> int:
        return self.last_to_reopen().seconds_left(self.now)

    def headers(self) -> dict[str, str]:
        name, remaining, reset = self._tightest()
        return {
            "RateLimit-Policy": format_policy(lim.window for lim in self.limits),
            "RateLimit": format_standing(name, remaining, reset),
        }

    def _tightest(self) -> tuple[str, int, int]:
        """The window with the least left (the later reset among equals)."""
        if self.blocking:
            return self.last_to_reopen().name, 0, self.retry_after()
        left = [
            (lim.window.limit - n, -lim.window.seconds_left(self.now), lim.window.name)
            for lim, n in zip(self.limits, self.counts, strict=True)
        ]
        remaining, minus_reset, name = min(left)
        return name, remaining, -minus_reset

    def refusal(self) -> ApiError:
        window, retry = self.last_to_reopen(), self.retry_after()
        back = datetime.fromtimestamp(window.end(self.now), UTC)
        message = (
            f"too many requests: this connection has used its {window.limit} requests per "
            f"{unit_name(window.seconds)} ({window.name!r} window); come back in {retry} s, at "
            f"{back.isoformat().replace('+00:00', 'Z')}"
        )
        headers = {**self.headers(), "Retry-After": str(retry)}
        return ApiError(429, message, error_type="too_many_requests", headers=headers)


class RateLimiter:
    """ASGI middleware enforcing a `QuotaPolicy` on authenticated requests."""

    def __init__(
        self,
        app: ASGIApp,
        policy: QuotaPolicy,
        counters: RateCounters,
        store: Store,
        clock: Clock = time.time,
    ) -> None:
        self.app = app
        self.policy = policy
        self.counters = counters
        self.store = store
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self._limits(scope)
        key = await self._connection(scope) if limits else None
        if not limits or key is None:
            await self.app(scope, receive, send)
            return
        now = self.clock()
        counts = await self.counters.take(key, [lim.slot(now) for lim in limits])
        verdict = Verdict(limits, counts, now)
        if verdict.blocking:
            await error_response(verdict.refusal())(scope, receive, send)
            return
        await self.app(scope, receive, _with_headers(send, verdict.headers()))

    def _limits(self, scope: Scope) -> tuple[Limit, ...]:
        if scope["type"] != "http":
            return ()
        return limits_for(self.policy, request_method(scope), scope["path"])

    async def _connection(self, scope: Scope) -> str | None:
        """The caller's counter key; None when its credentials are refused (the route then
        answers with the same refusal, in its dialect's shape) or the path has no dialect."""
        parser = parser_for(scope["path"])
        if parser is None:
            return None
        try:
            principal = await principal_of(scope, self.store, parser)
        except ApiError:
            return None
        return connection_key(principal.connection_id)


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


def build_counters(choice: str, longest_window: int, store: Store) -> RateCounters:
    """'memory', 'sql', or 'auto': SQL on PostgreSQL (several workers share it), memory on
    SQLite (one process; a database write per request would serialise them all)."""
    if choice not in ("auto", "memory", "sql"):
        raise ConfigurationError(f"quota store must be auto, memory or sql, not {choice!r}")
    if choice == "sql" or (choice == "auto" and store.url.backend == "postgresql"):
        return SqlRateCounters(store.writer, longest_window=longest_window)
    return MemoryRateCounters(longest_window=longest_window)


def install_rate_limits(app: FastAPI, settings: HubSettings, store: Store) -> None:
    """Enforce `settings.quotas` on `app` (nothing to do when the policy is empty)."""
    policy = settings.quotas
    if not policy.quotas:
        return
    counters = build_counters(settings.quota_store, policy.longest_window, store)
    app.add_middleware(
        RateLimiter, policy=policy, counters=counters, store=store, clock=settings.quota_clock
    )
