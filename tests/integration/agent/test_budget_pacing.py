"""The agent's rate-limit budget against the hub's quotas (issue 5), through `agent run`'s wiring.

The hub (in-process, `httpx.ASGITransport`) enforces clock-aligned quotas scaled down to seconds:
HubRise's shape (general windows plus the heavy-listing limit, a minute become a second) on /v1,
and the same heavy limit on MasonHub's listings. The agent is built by `open_runtime` from a
config with `quota = [...]`, exactly as `ordersync agent run` builds it.

Every test runs on one fake clock shared by the hub's quota windows and the agent's budget
(time moves only when the budget sleeps), so the timings asserted are exact, not wall-clock.

- Pacing: a backfill against the heavy limit receives no 429 and ends within 1.1x of the
  minimum time the quota allows (the N-th listing can go no earlier than the start of window
  ceil(N / limit), counted from a window's start).
- Another client spends half of each window: the agent adapts, loses nothing.
- A spent daily quota: logged once with the resume time, shown by `/status` and the metrics
  while it lasts, and the sync resumes by itself at midnight.
"""

from __future__ import annotations

import asyncio
import math
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

import httpx
import pytest
import structlog

from ordersync.agent.budget import BudgetBook, endpoint_class, window_name
from ordersync.agent.config import parse_config
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.runner import AgentRuntime, open_runtime, run_sources, status_payload
from ordersync.hub.app import create_app
from ordersync.hub.ratelimit import QuotaPolicy
from ordersync.hub.settings import HubSettings
from tests.integration.agent.harness import (
    BASE_URL,
    BASE_URLS,
    SOURCE,
    Hub,
    Intercept,
    assert_applied_at_most_once,
    assert_replica_equals_hub,
    open_hub,
)

HEAVY_LIMIT, WINDOW = 4, 2  # 4 listings per clock-aligned 2 s: slack for a loaded CI box


@dataclass(frozen=True)
class Dialect:
    base_url: str
    hub_quotas: str  # QuotaPolicy specs
    quota: list[str]  # the agent's config
    listing: str  # a one-record listing, as another client would send it
    auth: str  # header name

    def auth_value(self, token: str) -> str:
        return token if self.auth == "X-Access-Token" else f"Bearer {token}"


DIALECTS = {
    "masonhub": Dialect(
        BASE_URL,
        f"/api/v1/@heavy={HEAVY_LIMIT}/{WINDOW}s; /api/v1/@all=100/{WINDOW}s",
        [f"heavy:{HEAVY_LIMIT}/{WINDOW}s", f"100/{WINDOW}s"],
        "/orders?limit=1",
        "Authorization",
    ),
    "hubrise": Dialect(  # seed 003's windows, the minute scaled down to a second
        BASE_URLS["hubrise"],
        f"/v1/@all=50/{WINDOW}s,2500/hour,10000/day; /v1/@heavy={HEAVY_LIMIT}/{WINDOW}s",
        [f"50/{WINDOW}s", "2500/hour", "10000/day", f"heavy:{HEAVY_LIMIT}/{WINDOW}s"],
        "/location/orders?count=1",
        "X-Access-Token",
    ),
}


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    opened = await open_hub(f"sqlite:///{tmp_path}/hub.db")
    yield opened
    await opened.store.close()


def with_quotas(hub: Hub, specs: str, clock: Callable[[], float]) -> None:
    """Serve the hub with `specs` (QuotaPolicy syntax) on the given quota clock."""
    settings = HubSettings(quotas=QuotaPolicy.from_specs(specs), quota_clock=clock)
    hub.app = create_app(settings, hub.store)


@dataclass
class Agent:
    runtime: AgentRuntime
    transport: Intercept

    def sample(self, name: str, **labels: str) -> float | None:
        return self.runtime.metrics.registry.get_sample_value(name, labels)

    def rate_limit_hits(self, source: str = SOURCE) -> float:
        return self.sample("ordersync_agent_rate_limit_hits_total", source=source) or 0.0

    @property
    def listings(self) -> int:
        """Requests of the heavy class (the listings) the agent sent."""
        return sum(
            1 for r in self.transport.requests if endpoint_class(r.method, str(r.url)) == "heavy"
        )


async def open_agent(
    hub: Hub,
    tmp_path: Path,
    quota: list[str],
    budgets: Callable[[AgentMetrics], BudgetBook] = BudgetBook,
    dialect: str = "masonhub",
    **source: Any,
) -> Agent:
    raw = {
        "sources": [
            {
                "name": dialect,
                "dialect": dialect,
                "base_url": DIALECTS[dialect].base_url,
                "token_env": "HUB_TOKEN",
                "lookback": 2,
                "quota": quota,
                **source,
            }
        ],
        "sink": {"url": f"sqlite:///{tmp_path}/replica.db"},
    }
    transport = Intercept(httpx.ASGITransport(app=hub.app))
    runtime = await open_runtime(
        parse_config(raw, {}),
        {"HUB_TOKEN": hub.token},
        transport=transport,
        state_dir=tmp_path,
        budgets=budgets,
    )
    return Agent(runtime, transport)


class FakeTime:
    """Epoch seconds that move only when the budget sleeps (concurrent sleepers each wake at
    their own deadline)."""

    def __init__(self, now: float) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        deadline = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, deadline)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


# Just after a clock-aligned window start (and the start of the 10:00 hour).
WINDOW_START = at("2024-03-05T10:00:00") + 0.002


def paced_by(clock: FakeTime, sleep: Callable[[float], Any] | None = None) -> Any:
    """The agent's budgets on the fake clock."""
    return lambda metrics: BudgetBook(metrics, clock=clock, sleep=sleep or clock.sleep)


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_a_paced_backfill_gets_no_429_and_ends_within_1_1x_of_the_quota_minimum(
    hub: Hub, tmp_path: Path, dialect: str
) -> None:
    """The heavy-listing limit (4 per window) in force, known from the config: ~20 listings
    go without one 429, in at most 1.1x the time the quota forces."""
    await hub.create_orders(180)
    clock = FakeTime(WINDOW_START)
    with_quotas(hub, DIALECTS[dialect].hub_quotas, clock)
    agent = await open_agent(
        hub,
        tmp_path,
        DIALECTS[dialect].quota,
        dialect=dialect,
        page_size=10,
        budgets=paced_by(clock),
    )
    try:
        await run_sources(agent.runtime, asyncio.Event(), once=True)
        elapsed = clock.now - WINDOW_START
        n = agent.listings
        minimum = (math.ceil(n / HEAVY_LIMIT) - 1) * WINDOW
        print(
            f"\n{dialect} paced backfill: {n} listings at {HEAVY_LIMIT}/{WINDOW}s in "
            f"{elapsed:.2f} s; quota minimum {minimum} s; ratio {elapsed / minimum:.3f}"
        )
        assert n >= 18 and agent.rate_limit_hits(dialect) == 0
        assert minimum <= elapsed <= 1.1 * minimum
        await assert_replica_equals_hub(hub, agent.runtime.sink, dialect)
        await assert_applied_at_most_once(agent.runtime.sink, 180)
        waits = agent.sample(
            "ordersync_agent_budget_waits_total",
            source=dialect,
            window=window_name("heavy", WINDOW),
        )
        assert waits is not None and waits >= math.ceil(n / HEAVY_LIMIT) - 1
    finally:
        await agent.runtime.close()


class HalfSpender:
    """Another client on the same connection, a batch job: HEAVY_LIMIT / 2 listings at the
    start of every window of the fake clock, before anything else happens in that window."""

    def __init__(self, hub: Hub, dialect: Dialect, clock: FakeTime) -> None:
        self.hub, self.dialect, self.clock = hub, dialect, clock
        self.codes: list[int] = []
        self.window: float | None = None
        self.lock = asyncio.Lock()

    async def spend_if_new_window(self) -> None:
        async with self.lock:  # the agent's other stream waits until this window's spend is done
            window = self.clock.now // WINDOW
            if window == self.window:
                return
            self.window = window
            transport = httpx.ASGITransport(app=self.hub.app)
            async with httpx.AsyncClient(transport=transport) as client:
                auth = {self.dialect.auth: self.dialect.auth_value(self.hub.token)}
                url = self.dialect.base_url + self.dialect.listing
                for _ in range(HEAVY_LIMIT // 2):
                    self.codes.append((await client.get(url, headers=auth)).status_code)

    async def sleep(self, seconds: float) -> None:
        """The agent's budget sleep: time passes, then the other client spends first."""
        await self.clock.sleep(seconds)
        await self.spend_if_new_window()


@pytest.mark.parametrize("dialect", DIALECTS)
async def test_with_another_client_spending_half_the_quota_the_agent_adapts(
    hub: Hub, tmp_path: Path, dialect: str
) -> None:
    """The agent learns the other client's spending from RateLimit answers (and at worst a
    429, waited out for its Retry-After): every record arrives, once, in about the time half
    the quota allows."""
    await hub.create_orders(80)
    clock = FakeTime(WINDOW_START)
    with_quotas(hub, DIALECTS[dialect].hub_quotas, clock)
    other = HalfSpender(hub, DIALECTS[dialect], clock)
    agent = await open_agent(
        hub,
        tmp_path,
        DIALECTS[dialect].quota,
        dialect=dialect,
        page_size=10,
        budgets=paced_by(clock, other.sleep),
    )
    try:
        await other.spend_if_new_window()
        await run_sources(agent.runtime, asyncio.Event(), once=True)
        elapsed = clock.now - WINDOW_START
        n = agent.listings
        half_quota_minimum = (math.ceil(n / (HEAVY_LIMIT // 2)) - 1) * WINDOW
        hits = agent.rate_limit_hits(dialect)
        print(
            f"\n{dialect} shared quota: {n} agent listings ({hits:.0f} refused) and "
            f"{len(other.codes)} others' ({other.codes.count(429)} refused) in {elapsed:.2f} s; "
            f"half-quota minimum {half_quota_minimum} s"
        )
        await assert_replica_equals_hub(hub, agent.runtime.sink, dialect)
        await assert_applied_at_most_once(agent.runtime.sink, 80)
        assert 429 not in other.codes  # the agent never took the other client's share
        # Each 429 (the other client spent after our last answer) costs at most a window.
        assert elapsed <= 1.1 * half_quota_minimum + hits * WINDOW
    finally:
        await agent.runtime.close()


async def test_a_429_after_another_clients_spending_is_waited_out_for_its_retry_after(
    hub: Hub, tmp_path: Path
) -> None:
    """The other client spends its half just before our third listing of each window, after
    our last answer said two remained: that listing gets a 429. The next one goes no sooner
    than Retry-After later; nothing is lost."""
    await hub.create_orders(60)
    clock = FakeTime(WINDOW_START)
    with_quotas(hub, DIALECTS["masonhub"].hub_quotas, clock)
    other = httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.app))
    sent: list[tuple[float, int]] = []  # (when, the listing's ordinal in its window)

    async def other_spends_first(request: httpx.Request, n: int) -> httpx.Response | None:
        if endpoint_class(request.method, str(request.url)) != "heavy":
            return None
        now = clock.now
        ordinal = 1 + sum(1 for t, _ in sent if t // WINDOW == now // WINDOW)
        sent.append((now, ordinal))
        if ordinal == 3:
            for _ in range(HEAVY_LIMIT // 2):
                await other.get(
                    f"{BASE_URL}/orders?limit=1", headers={"Authorization": f"Bearer {hub.token}"}
                )
        return None

    agent = await open_agent(
        hub, tmp_path, DIALECTS["masonhub"].quota, page_size=10, budgets=paced_by(clock)
    )
    agent.transport.before = other_spends_first
    try:
        await run_sources(agent.runtime, asyncio.Event(), once=True)
        refused = [t for t, ordinal in sent if ordinal == 3]
        hits = agent.rate_limit_hits()
        print(f"\nretry-after: {len(sent)} listings, {hits:.0f} refused")
        assert hits == len(refused) >= 2
        for when in refused:
            retried = min(t for t, _ in sent if t > when)
            assert retried - when >= 1.0  # Retry-After is at least 1 s, never less
        await assert_replica_equals_hub(hub, agent.runtime.sink)
        await assert_applied_at_most_once(agent.runtime.sink, 60)
    finally:
        await other.aclose()
        await agent.runtime.close()


@pytest.mark.parametrize("case", ["configured", "learned", "spent-by-another-client"])
async def test_a_spent_daily_quota_is_logged_once_shown_and_resumes_at_midnight(
    hub: Hub, tmp_path: Path, case: str
) -> None:
    """6 requests a day on the hub, 8 listings to make, at 23:00 (fake clock): the agent knows
    the quota from its config, or learns it from the first answer (no 429 either way), or
    meets it spent by another client (one 429, Retry-After an hour). Each time: one
    `quota_exhausted` line with the resume time, the pause in /status and the metrics while it
    lasts, and the sync completes after midnight by itself."""
    clock = FakeTime(at("2024-03-05T23:00:00"))
    # 8 listings (7 pages of orders, 1 of shipments); 6 when another client spent today's 6,
    # so that tomorrow's quota is enough.
    await hub.create_orders(40 if case == "spent-by-another-client" else 60)
    with_quotas(hub, "/api/v1/=6/day", clock)
    if case == "spent-by-another-client":
        async with httpx.AsyncClient(transport=httpx.ASGITransport(app=hub.app)) as other:
            auth = {"Authorization": f"Bearer {hub.token}"}
            for _ in range(6):
                await other.get(f"{BASE_URL}/orders?limit=1", headers=auth)
    seen: list[tuple[list[dict[str, Any]], float | None]] = []

    async def sleep_and_look(seconds: float) -> None:
        seen.append(
            (
                status_payload(agent.runtime),
                agent.sample("ordersync_agent_quota_exhausted_until_seconds", budget=SOURCE),
            )
        )
        await clock.sleep(seconds)

    agent = await open_agent(
        hub,
        tmp_path,
        ["6/day"] if case == "configured" else [],
        page_size=10,
        budgets=lambda metrics: BudgetBook(metrics, clock=clock, sleep=sleep_and_look),
    )
    try:
        with structlog.testing.capture_logs() as logs:
            await run_sources(agent.runtime, asyncio.Event(), once=True)
        midnight = at("2024-03-06T00:00:00")
        exhausted = [e for e in logs if e["event"] == "quota_exhausted"]
        assert len(exhausted) == 1, exhausted
        assert exhausted[0]["window"] == "day"
        assert exhausted[0]["resume_at"].startswith("2024-03-06T00:00:0")
        rows, gauge = seen[0]
        assert rows[0]["quota_exhausted_window"] == "day"
        assert rows[0]["quota_exhausted_until"].startswith("2024-03-06T00:00:0")
        assert gauge is not None and midnight <= gauge <= midnight + 1
        assert clock.now >= midnight
        assert agent.rate_limit_hits() == (1 if case == "spent-by-another-client" else 0)
        assert [e["event"] for e in logs].count("quota_resumed") == 1
        assert status_payload(agent.runtime)[0]["quota_exhausted_until"] is None
        await assert_replica_equals_hub(hub, agent.runtime.sink)
        await assert_applied_at_most_once(agent.runtime.sink, hub.created)
    finally:
        await agent.runtime.close()
