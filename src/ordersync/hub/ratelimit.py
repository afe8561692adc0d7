"""Request quotas per connection, per dialect and per endpoint class (seed 003, section 3).

A `QuotaPolicy` is a list of `Quota`s: a dialect's path prefix, an endpoint class and the
`Window`s that limit it. Every quota that matches a request applies at once; HubRise's default
is 500/minute, 2,500/hour and 10,000/day on everything under /v1/, plus 10/minute on its
high-load listings. Windows are fixed and clock-aligned: a connection that used its hourly
quota by 10:35 is refused until 11:00.

`RateLimiter` (ASGI middleware) counts each authenticated request against every window that
applies, refuses it with 429 and `Retry-After` when one is full, and tells the client where it
stands on every response with the IETF `RateLimit-Policy` and `RateLimit` fields
(draft-ietf-httpapi-ratelimit-headers, structured-field syntax):

    RateLimit-Policy: "minute";q=500;w=60, "hour";q=2500;w=3600, "day";q=10000;w=86400
    RateLimit: "hour";r=1200;t=1500

Counters live in `ordersync.store.rate_counters`: in memory (one process) or in the hub
database, where every worker process sees them.
"""

from __future__ import annotations

import math
import re
import time
from collections.abc import Callable, Sequence
from dataclasses import dataclass, replace
from datetime import UTC, datetime
from typing import TYPE_CHECKING, Any

from starlette.types import ASGIApp, Message, Receive, Scope, Send

from ordersync.errors import ConfigurationError
from ordersync.hub.errors import ApiError, error_response
from ordersync.store.rate_counters import (
    MemoryRateCounters,
    RateCounters,
    Slot,
    SqlRateCounters,
)
from ordersync.store.store import hash_token

if TYPE_CHECKING:
    from fastapi import FastAPI

    from ordersync.hub.settings import HubSettings

Clock = Callable[[], float]
UNITS = {"second": 1, "minute": 60, "hour": 3600, "day": 86_400}
_NAME = re.compile(r"[a-z0-9][a-z0-9_-]*")


@dataclass(frozen=True)
class Window:
    """A fixed window of `seconds`, aligned on the Unix epoch, allowing `limit` requests."""

    name: str
    seconds: int
    limit: int

    def __post_init__(self) -> None:
        if not _NAME.fullmatch(self.name) or self.seconds < 1 or self.limit < 1:
            raise ConfigurationError(f"not a usable quota window: {self}")

    def start(self, now: float) -> int:
        # The epoch is a midnight UTC and POSIX time has no leap seconds, so multiples of 60,
        # 3600 and 86400 are the round minutes, hours and days (UTC) of seed 003.
        return math.floor(now / self.seconds) * self.seconds

    def end(self, now: float) -> int:
        return self.start(now) + self.seconds

    def seconds_left(self, now: float) -> int:
        """Whole seconds until the window ends, rounded up: never an invitation to come back
        while it is still closed (so at least 1)."""
        return max(1, math.ceil(self.end(now) - now))


@dataclass(frozen=True)
class EndpointClass:
    """Requests named by method and full-path pattern; no routes means every request."""

    name: str
    routes: tuple[tuple[str, str], ...] = ()

    def matches(self, method: str, path: str) -> bool:
        if not self.routes:
            return True
        return any(m == method and re.fullmatch(p, path) for m, p in self.routes)


ALL = EndpointClass("all")
# Seed 003's "high load queries", plus the other dialects' listings so that an operator can put
# the same kind of quota on them (none is configured there by default).
HEAVY = EndpointClass(
    "heavy",
    (
        ("GET", r"/v1/location/orders/?"),
        ("GET", r"/v1/locations/[^/]+/orders/?"),
        ("GET", r"/v1/orders/?"),
        ("GET", r"/v1/catalogs/[^/]+/?"),
        ("GET", r"/v1/customer_lists/[^/]+/customers/?"),
        ("GET", r"/api/v1/orders/?"),
        ("GET", r"/api/v1/shipments/?"),
        ("POST", r"/v2/order-search/(search|poll)/?"),
        ("POST", r"/v2/shipment/poll/?"),
    ),
)
ENDPOINT_CLASSES = {c.name: c for c in (ALL, HEAVY)}


def request_method(scope: Scope) -> str:
    """The method the request means: HubRise lets a POST say PUT, PATCH or DELETE instead."""
    method = str(scope["method"]).upper()
    override = dict(scope["headers"]).get(b"x-http-method-override", b"")
    wanted = str(override.decode("latin-1")).strip().upper()
    return wanted if method == "POST" and wanted in ("PUT", "PATCH", "DELETE") else method


def endpoint_class(method: str, path: str) -> str:
    """'heavy' for the high-load listings, 'all' for every other request."""
    return HEAVY.name if HEAVY.matches(method, path) else ALL.name


@dataclass(frozen=True)
class Quota:
    prefix: str  # the dialect's paths, e.g. "/v1/"
    endpoints: EndpointClass
    windows: tuple[Window, ...]

    @property
    def key(self) -> str:
        return f"{self.prefix}@{self.endpoints.name}"

    def applies_to(self, method: str, path: str) -> bool:
        return path.startswith(self.prefix) and self.endpoints.matches(method, path)

    def spec(self) -> str:
        windows = ",".join(f"{w.limit}/{_unit(w.seconds)}" for w in self.windows)
        return f"{self.key}={windows}"


@dataclass(frozen=True)
class Limit:
    """One window of one quota, as a request meets it."""

    bucket: str
    window: Window

    def slot(self, now: float) -> Slot:
        w = self.window
        return Slot(self.bucket, w.start(now), w.seconds, w.limit)


@dataclass(frozen=True)
class QuotaPolicy:
    quotas: tuple[Quota, ...] = ()

    @classmethod
    def hubrise_default(cls) -> QuotaPolicy:
        """Seed 003: 500/minute, 2,500/hour, 10,000/day per connection, 10/minute on the
        high-load listings; nothing on the MasonHub (/api/v1) or Tradecloud (/v2) dialects."""
        return cls.from_specs("/v1/@all=500/minute,2500/hour,10000/day; /v1/@heavy=10/minute")

    @classmethod
    def from_specs(cls, specs: str, base: QuotaPolicy | None = None) -> QuotaPolicy:
        """`base` (default: none) changed by `PREFIX[@CLASS]=LIMIT/UNIT,...` specs separated by
        ';'; UNIT is second, minute, hour, day or a number of seconds; `=off` removes a quota."""
        policy = base or cls()
        for spec in filter(None, (s.strip() for s in specs.split(";"))):
            policy = policy._with_spec(spec)
        return policy

    def _with_spec(self, spec: str) -> QuotaPolicy:
        target, sep, windows = (part.strip() for part in spec.partition("="))
        prefix, _, class_name = target.partition("@")
        endpoints = ENDPOINT_CLASSES.get(class_name or "all")
        if not sep or not prefix.startswith("/") or endpoints is None:
            raise ConfigurationError(
                f"quota {spec!r}: expected PREFIX[@CLASS]=LIMIT/UNIT,... with CLASS one of "
                f"{', '.join(ENDPOINT_CLASSES)}"
            )
        kept = tuple(q for q in self.quotas if (q.prefix, q.endpoints) != (prefix, endpoints))
        if windows == "off":
            return replace(self, quotas=kept)
        parsed = tuple(_parse_window(w, endpoints, spec) for w in windows.split(","))
        return replace(self, quotas=(*kept, Quota(prefix, endpoints, parsed)))

    def limits_for(self, method: str, path: str) -> tuple[Limit, ...]:
        return tuple(
            Limit(f"{quota.key}:{window.name}", window)
            for quota in self.quotas
            if quota.applies_to(method, path)
            for window in quota.windows
        )

    @property
    def longest_window(self) -> int:
        return max((w.seconds for q in self.quotas for w in q.windows), default=1)

    def describe(self) -> str:
        return "; ".join(q.spec() for q in self.quotas) or "none"


def _parse_window(text: str, endpoints: EndpointClass, spec: str) -> Window:
    limit, _, unit = (part.strip() for part in text.partition("/"))
    unit = unit.removesuffix("s")  # "minutes", "3600s"
    seconds = int(unit) if unit.isdigit() else UNITS.get(unit)
    if not limit.isdigit() or not seconds:
        raise ConfigurationError(f"quota {spec!r}: {text!r} is not LIMIT/UNIT, e.g. 500/minute")
    name = _unit(seconds) if endpoints is ALL else f"{endpoints.name}-{_unit(seconds)}"
    return Window(name, seconds, int(limit))


def _unit(seconds: int) -> str:
    named = {v: k for k, v in UNITS.items()}
    return named.get(seconds, str(seconds))


# -- the middleware ---------------------------------------------------------------------------


def connection_key(scope: Scope) -> str | None:
    """Who is asking, without a database round trip: the SHA-256 of the token (the same hash
    the `connections` table keeps), or of the whole credential for other schemes. Requests
    without credentials are not counted: authentication refuses them anyway."""
    headers = dict(scope["headers"])
    token = headers.get(b"x-access-token", b"").decode("latin-1").strip()
    if not token:
        credential = headers.get(b"authorization", b"").decode("latin-1").strip()
        scheme, _, rest = credential.partition(" ")
        token = rest.strip() if scheme.lower() == "bearer" else credential
    return hash_token(token) if token else None


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
        policy = ", ".join(
            f'"{lim.window.name}";q={lim.window.limit};w={lim.window.seconds}'
            for lim in self.limits
        )
        name, remaining, reset = self._tightest()
        return {"RateLimit-Policy": policy, "RateLimit": f'"{name}";r={remaining};t={reset}'}

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
            f"{_unit(window.seconds)} ({window.name!r} window); come back in {retry} s, at "
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
        counters: Callable[[Any], RateCounters],
        clock: Clock = time.time,
    ) -> None:
        self.app = app
        self.policy = policy
        self.make_counters = counters
        self.counters: RateCounters | None = None
        self.clock = clock

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        limits = self._limits(scope)
        key = connection_key(scope) if limits else None
        if not limits or key is None:
            await self.app(scope, receive, send)
            return
        now = self.clock()
        counts = await self._counters(scope).take(key, [lim.slot(now) for lim in limits])
        verdict = Verdict(limits, counts, now)
        if verdict.blocking:
            await error_response(verdict.refusal())(scope, receive, send)
            return
        await self.app(scope, receive, _with_headers(send, verdict.headers()))

    def _limits(self, scope: Scope) -> tuple[Limit, ...]:
        if scope["type"] != "http":
            return ()
        return self.policy.limits_for(request_method(scope), scope["path"])

    def _counters(self, scope: Scope) -> RateCounters:
        # Built on first use: the store only exists once the app's lifespan has opened it.
        if self.counters is None:
            self.counters = self.make_counters(getattr(scope["app"].state, "store", None))
        return self.counters


def _with_headers(send: Send, headers: dict[str, str]) -> Send:
    extra = [(k.lower().encode("latin-1"), v.encode("latin-1")) for k, v in headers.items()]

    async def sending(message: Message) -> None:
        if message["type"] == "http.response.start":
            message = {**message, "headers": [*message.get("headers", []), *extra]}
        await send(message)

    return sending


def counters_factory(choice: str, longest_window: int) -> Callable[[Any], RateCounters]:
    """'memory', 'sql', or 'auto': SQL on PostgreSQL (several workers share it), memory on
    SQLite (one process; a database write per request would serialise them all)."""
    if choice not in ("auto", "memory", "sql"):
        raise ConfigurationError(f"quota store must be auto, memory or sql, not {choice!r}")

    def build(store: Any) -> RateCounters:
        backend = store.url.backend if store is not None else None
        if choice == "sql" or (choice == "auto" and backend == "postgresql"):
            if store is None:
                raise ConfigurationError("the sql quota store needs the hub's store")
            return SqlRateCounters(store.writer, longest_window=longest_window)
        return MemoryRateCounters(longest_window=longest_window)

    return build


def install_rate_limits(app: FastAPI, settings: HubSettings) -> None:
    """Enforce `settings.quotas` on `app` (nothing to do when the policy is empty)."""
    policy = settings.quotas
    if not policy.quotas:
        return
    counters = counters_factory(settings.quota_store, policy.longest_window)
    app.add_middleware(RateLimiter, policy=policy, counters=counters, clock=settings.quota_clock)
