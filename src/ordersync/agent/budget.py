"""Client-side rate-limit budgets: known quotas are spent here first, so that a steady sync
never sees a 429 (seed 003, section 3).

A `Budget` holds one connection's quota windows. Windows are fixed and clock-aligned, like the
platform's (a window of `w` seconds starts at `floor(now / w) * w`), and apply per endpoint
class: every request spends from the general windows, a high-load listing ("heavy") also from
the heavy ones. Before each request `spend()` waits until every window of its class has room,
then counts it; the answer's `RateLimit-Policy` and `RateLimit` fields (IETF draft syntax)
teach windows the configuration did not name and correct the counts when another client spends
the same quota: when the server says fewer remain than we think, the server is right.

A 429 anyway holds the class back for at least its `Retry-After` and marks the named window
full. A wait longer than `BudgetSettings.report_pause_over` (a spent hourly or daily quota) is
logged once with the time it ends, shown by `agent status` and the metrics, and ends by itself.

Sources that use one connection (same host, same token) share one budget: the platform counts
per connection, not per source. `BudgetBook` builds and keeps them.

Config entries read `[CLASS:]LIMIT/PERIOD`: `"500/minute"`, `"heavy:10/minute"`, `"40/10s"`
(the grammar, the window math, the heavy routes and the header syntax are `ordersync.quotas`',
shared with the hub).
"""

from __future__ import annotations

import asyncio
import hashlib
import math
import time
from collections.abc import Awaitable, Callable, Iterable, Mapping
from dataclasses import dataclass, field
from urllib.parse import urlsplit

import structlog

from ordersync.agent.errors import RequestAborted
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.retry import parse_retry_after
from ordersync.domain.timestamps import format_rfc3339
from ordersync.quotas import (
    ALL,
    ENDPOINT_CLASSES,
    HEAVY,
    parse_spec,
    parse_structured_list,
    suffix_endpoint_class,
    window_name,
    window_start,
)

__all__ = [
    "ALL",
    "HEAVY",
    "Budget",
    "BudgetBook",
    "BudgetClosed",
    "BudgetSettings",
    "Pause",
    "Quota",
    "endpoint_class",
    "parse_quotas",
    "parse_structured_list",
    "window_name",
]

Clock = Callable[[], float]  # seconds since the epoch
Sleep = Callable[[float], Awaitable[None]]
log = structlog.get_logger("ordersync.agent.budget")

CLASSES = ENDPOINT_CLASSES


class BudgetClosed(RequestAborted):
    """The agent is stopping while a request waited for quota; nothing was sent."""


def endpoint_class(method: str, url: str) -> str:
    """'heavy' for the high-load listings, 'all' for every other request."""
    return suffix_endpoint_class(method, urlsplit(url).path)


@dataclass(frozen=True)
class Quota:
    """`limit` requests per clock-aligned window of `seconds`, for one endpoint class."""

    endpoint_class: str
    limit: int
    seconds: int

    @property
    def name(self) -> str:
        return window_name(self.endpoint_class, self.seconds)

    @classmethod
    def parse(cls, text: str) -> Quota:
        """One window of `ordersync.quotas`' grammar, without a path prefix:
        `[CLASS:]LIMIT/PERIOD`. ValueError (a `QuotaSpecError`) names what is wrong."""
        spec = parse_spec(text)
        if spec.prefix is not None or spec.windows is None or len(spec.windows) != 1:
            raise ValueError(
                f"quota {text!r} is not [heavy:]LIMIT/PERIOD, e.g. '500/minute', "
                "'heavy:10/minute' or '40/10s' (PERIOD: second, minute, hour, day or N seconds)"
            )
        (window,) = spec.windows
        return cls(spec.endpoint_class, window.limit, window.seconds)


def parse_quotas(texts: Iterable[str]) -> tuple[Quota, ...]:
    return tuple(Quota.parse(text) for text in texts)


@dataclass(frozen=True)
class BudgetSettings:
    """`skew_allowance`: seconds waited past a window's end before spending in the next, in
    case our clock runs ahead of the platform's; at most 1% of the window, so scaled-down test
    windows keep their proportions. `report_pause_over`: a wait longer than this is a spent
    quota (logged once, shown in status and metrics), not pacing."""

    skew_allowance: float = 0.5
    report_pause_over: float = 300.0

    def margin(self, seconds: int) -> float:
        return min(self.skew_allowance, seconds / 100)


@dataclass(frozen=True)
class Pause:
    """A spent quota: `window` is full until `until` (epoch seconds)."""

    window: str
    until: float

    @property
    def until_rfc3339(self) -> str:
        return format_rfc3339(math.ceil(self.until * 1000))


@dataclass
class _Window:
    """One quota window as we believe the platform counts it, in the window starting `start`."""

    name: str
    seconds: int
    limit: int
    start: float = -math.inf
    used: int = 0  # the platform's count, ours included, as best we know
    spent: int = 0  # our own requests counted in this window
    configured: int | None = None  # the config's limit: a reserve it keeps is kept

    def roll(self, now: float) -> None:
        start = window_start(self.seconds, now)
        if start != self.start:
            self.start, self.used, self.spent = start, 0, 0

    @property
    def end(self) -> float:
        return self.start + self.seconds

    @property
    def remaining(self) -> int:
        return max(0, self.limit - self.used)


@dataclass
class Ticket:
    """One request's spend: which window (start) it was counted in, and how many of our own
    requests that window had counted by then."""

    budget: Budget
    endpoint_class: str
    marks: dict[str, tuple[float, int]] = field(default_factory=dict)

    def settle(self, status: int | None, headers: Mapping[str, str] | None) -> None:
        """Tell the budget how the request ended (None: no answer, e.g. a reset). `headers`:
        `httpx.Headers`, or a mapping with lower-case names."""
        self.budget.settle(self, status, headers or {})


class Budget:
    """The quota windows of one connection, spent before each request."""

    def __init__(
        self,
        name: str,
        quotas: Iterable[Quota] = (),
        *,
        settings: BudgetSettings = BudgetSettings(),
        metrics: AgentMetrics | None = None,
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.name = name
        self.settings = settings
        self.metrics = metrics or AgentMetrics()
        self.clock = clock
        self.sleep = sleep
        self.windows: dict[str, _Window] = {}
        self.members: dict[str, set[str]] = {c: set() for c in CLASSES}
        self.not_before: dict[str, float] = {}  # per class, from Retry-After
        self.pause: Pause | None = None
        self._closed = asyncio.Event()
        self.add_quotas(quotas)

    def add_quotas(self, quotas: Iterable[Quota]) -> None:
        """Configured windows; where two sources configure one window, the smaller limit wins."""
        for quota in quotas:
            window = self.windows.get(quota.name)
            if window is None:
                window = self.windows[quota.name] = _Window(quota.name, quota.seconds, quota.limit)
            window.configured = min(window.configured or quota.limit, quota.limit)
            window.limit = min(window.limit, window.configured)
            for cls in CLASSES if quota.endpoint_class == ALL else (quota.endpoint_class,):
                self.members[cls].add(quota.name)

    # -- before a request ---------------------------------------------------------------------

    async def spend(self, method: str, url: str, source: str = "") -> Ticket:
        """Wait until every window of the request's class has room, then count the request."""
        cls = endpoint_class(method, url)
        while True:
            now = self.clock()
            delay, blocker = self.delay(cls, now)
            if delay <= 0:
                break
            await self._wait(delay, blocker, source, now)
        self._resume(now)
        ticket = Ticket(self, cls)
        for window in self._windows_of(cls):
            window.used += 1
            window.spent += 1
            ticket.marks[window.name] = (window.start, window.spent)
            self._gauge(window)
        return ticket

    def delay(self, endpoint_cls: str, now: float) -> tuple[float, str]:
        """Seconds until a request of this class may go, and the window that holds it back."""
        waits = [(self.not_before.get(endpoint_cls, 0.0) - now, "retry-after")]
        for window in self._windows_of(endpoint_cls):
            window.roll(now)
            if window.used >= window.limit:
                margin = self.settings.margin(window.seconds)
                waits.append((window.end + margin - now, window.name))
        return max(waits)

    def _windows_of(self, endpoint_cls: str) -> list[_Window]:
        return [self.windows[name] for name in sorted(self.members[endpoint_cls])]

    async def _wait(self, delay: float, blocker: str, source: str, now: float) -> None:
        if delay > self.settings.report_pause_over:
            self._report_pause(Pause(blocker, now + delay), delay)
        started = self.clock()
        try:
            await self._sleep_unless_closed(delay)
        finally:
            self.metrics.budget_waits.labels(source, blocker).inc()
            self.metrics.budget_wait_seconds.labels(source, blocker).inc(
                max(0.0, self.clock() - started)
            )

    async def _sleep_unless_closed(self, delay: float) -> None:
        if self._closed.is_set():
            raise BudgetClosed(f"{self.name}: stopped while waiting for quota")
        sleeping = asyncio.ensure_future(self.sleep(delay))
        closing = asyncio.ensure_future(self._closed.wait())
        try:
            await asyncio.wait({sleeping, closing}, return_when=asyncio.FIRST_COMPLETED)
        finally:
            for task in (sleeping, closing):
                task.cancel()
            await asyncio.gather(sleeping, closing, return_exceptions=True)
        if self._closed.is_set():
            raise BudgetClosed(f"{self.name}: stopped while waiting for quota")

    def _report_pause(self, pause: Pause, delay: float) -> None:
        # Every waiter of a connection computes the same pause: only the first one logs it.
        if pause == self.pause:
            return
        self.pause = pause
        self.metrics.quota_exhausted_until.labels(self.name).set(pause.until)
        log.warning(
            "quota_exhausted",
            budget=self.name,
            window=pause.window,
            resume_at=pause.until_rfc3339,
            wait_seconds=round(delay, 3),
        )

    def _resume(self, now: float) -> None:
        if self.pause is not None and now >= self.pause.until:
            log.info("quota_resumed", budget=self.name, window=self.pause.window)
            self.pause = None
            self.metrics.quota_exhausted_until.labels(self.name).set(0)

    def exhausted(self) -> Pause | None:
        """The spent quota this connection waits for, if any (for `agent status`)."""
        pause = self.pause
        return pause if pause is not None and pause.until > self.clock() else None

    def close(self) -> None:
        """Wake every waiter with `BudgetClosed`, and refuse to wait until `reopen()`: the
        agent is stopping."""
        self._closed.set()

    def reopen(self) -> None:
        self._closed.clear()

    # -- after a request ----------------------------------------------------------------------

    def settle(self, ticket: Ticket, status: int | None, headers: Mapping[str, str]) -> None:
        now = self.clock()
        for name, (start, _) in ticket.marks.items():
            window = self.windows[name]
            window.roll(now)
            if window.start != start:
                # Sent in one window, answered in the next: the platform may have counted it
                # in either, so count it in this one too.
                window.used += 1
        self._learn_policy(ticket.endpoint_class, headers.get("ratelimit-policy"))
        self._learn_standing(ticket, headers.get("ratelimit"), now)
        wait = parse_retry_after(headers.get("retry-after"), int(now * 1000))
        if status == 429 and wait is not None:
            # A refused general request means a general window is full, and those windows
            # count the heavy listings too; a refused listing holds back listings only.
            held = CLASSES if ticket.endpoint_class == ALL else (ticket.endpoint_class,)
            for cls in held:
                self.not_before[cls] = max(self.not_before.get(cls, 0.0), now + wait)
        for name in self.members[ticket.endpoint_class]:
            self._gauge(self.windows[name])

    def _learn_policy(self, cls: str, value: str | None) -> None:
        """Windows the platform says apply to this class; its numbers replace ours, except
        that a smaller configured limit stays (a reserve for other clients)."""
        for name, params in parse_structured_list(value):
            q, w = params.get("q"), params.get("w")
            if q is None or w is None or q < 1 or w < 1:
                continue
            window = self.windows.get(name) or self._same_window(cls, w, q)
            if window is None:
                window = self.windows[name] = _Window(name, w, q)
            window.limit, window.seconds = min(q, window.configured or q), w
            self.members[cls].add(window.name)

    def _same_window(self, cls: str, seconds: int, limit: int) -> _Window | None:
        for name in self.members[cls]:
            window = self.windows[name]
            if (window.seconds, window.limit) == (seconds, limit):
                return window
        return None

    def _learn_standing(self, ticket: Ticket, value: str | None, now: float) -> None:
        """`RateLimit: "name";r=R;t=T`: after this request, R remain in that window."""
        for name, params in parse_structured_list(value):
            remaining, window = params.get("r"), self.windows.get(name)
            if remaining is None or window is None:
                continue
            window.roll(now)
            start, spent_at = ticket.marks.get(name, (window.start, window.spent))
            if start != window.start:
                continue  # it speaks of a window that is over
            # Our requests sent after this one may not have reached the platform yet.
            ours_later = window.spent - spent_at
            window.used = max(window.used, window.limit - remaining + ours_later)

    def _gauge(self, window: _Window) -> None:
        self.metrics.quota_remaining.labels(self.name, window.name).set(window.remaining)

    def remaining(self) -> dict[str, int]:
        """What is left of each window now, as far as we know."""
        now = self.clock()
        for window in self.windows.values():
            window.roll(now)
        return {name: window.remaining for name, window in sorted(self.windows.items())}


class BudgetBook:
    """The budgets of one agent: one per connection, i.e. per platform host and token."""

    def __init__(
        self,
        metrics: AgentMetrics | None = None,
        *,
        settings: BudgetSettings = BudgetSettings(),
        clock: Clock = time.time,
        sleep: Sleep = asyncio.sleep,
    ) -> None:
        self.metrics = metrics or AgentMetrics()
        self.settings = settings
        self.clock = clock
        self.sleep = sleep
        self.by_connection: dict[tuple[str, str], Budget] = {}
        self.by_source: dict[str, Budget] = {}

    def for_source(
        self, source: str, base_url: str, token: str, quotas: Iterable[Quota] = ()
    ) -> Budget:
        """The budget of `source`'s connection, shared with the sources already on it."""
        parts = urlsplit(base_url)
        host = f"{parts.scheme}://{parts.netloc}".lower()
        key = (host, hashlib.sha256(token.encode()).hexdigest())
        budget = self.by_connection.get(key)
        if budget is None:
            budget = Budget(
                source,
                settings=self.settings,
                metrics=self.metrics,
                clock=self.clock,
                sleep=self.sleep,
            )
            self.by_connection[key] = budget
        budget.add_quotas(quotas)
        self.by_source[source] = budget
        return budget

    def exhausted(self, source: str) -> Pause | None:
        budget = self.by_source.get(source)
        return budget.exhausted() if budget is not None else None

    def close(self) -> None:
        for budget in self.by_connection.values():
            budget.close()

    def reopen(self) -> None:
        for budget in self.by_connection.values():
            budget.reopen()
