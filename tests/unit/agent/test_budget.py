"""The client-side rate-limit budget on a fake clock: window math, pacing, learning, pauses."""

from __future__ import annotations

import asyncio
from datetime import UTC, datetime

import pytest
import structlog

from ordersync.agent.budget import (
    Budget,
    BudgetBook,
    BudgetClosed,
    BudgetSettings,
    Quota,
    endpoint_class,
    parse_quotas,
    parse_structured_list,
)
from ordersync.agent.metrics import AgentMetrics

ORDERS = "http://hub/v1/location/orders"  # heavy
ONE_ORDER = "http://hub/v1/location/orders/sd89mm"  # not heavy


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


class Time:
    """A clock in epoch seconds, and a sleep that moves it (concurrent sleepers each wake at
    their own deadline, as on a real clock)."""

    def __init__(self, now: float) -> None:
        self.now = now
        self.sleeps: list[float] = []

    def __call__(self) -> float:
        return self.now

    async def sleep(self, seconds: float) -> None:
        self.sleeps.append(seconds)
        deadline = self.now + seconds
        await asyncio.sleep(0)
        self.now = max(self.now, deadline)


def budget(
    specs: list[str], time: Time, report_pause_over: float = 300.0, name: str = "hubrise"
) -> Budget:
    settings = BudgetSettings(report_pause_over=report_pause_over)
    return Budget(
        name,
        parse_quotas(specs),
        settings=settings,
        clock=time,
        sleep=time.sleep,
        metrics=AgentMetrics(),
    )


@pytest.mark.parametrize(
    ("text", "expected", "name"),
    [
        ("500/minute", Quota("all", 500, 60), "minute"),
        ("2500/hours", Quota("all", 2500, 3600), "hour"),
        ("10000/day", Quota("all", 10000, 86_400), "day"),
        ("heavy:10/minute", Quota("heavy", 10, 60), "heavy-minute"),
        ("heavy:5/2s", Quota("heavy", 5, 2), "heavy-2"),
        ("40/10", Quota("all", 40, 10), "10"),
    ],
)
def test_quota_entries_parse_and_are_named_as_the_platform_names_them(
    text: str, expected: Quota, name: str
) -> None:
    """`[heavy:]LIMIT/PERIOD`; names match the hub's RateLimit-Policy names."""
    quota = Quota.parse(text)
    assert quota == expected and quota.name == name


@pytest.mark.parametrize("text", ["500", "500/week", "light:5/minute", "0/minute", "x/minute"])
def test_a_malformed_quota_entry_is_refused_with_an_example(text: str) -> None:
    with pytest.raises(ValueError, match=r"e\.g\. '500/minute'"):
        Quota.parse(text)


@pytest.mark.parametrize(
    ("method", "url", "expected"),
    [
        ("GET", ORDERS, "heavy"),
        ("GET", ONE_ORDER, "all"),
        ("GET", "http://hub/api/v1/orders?limit=100", "heavy"),
        ("GET", "http://hub/api/v1/shipments", "heavy"),
        ("POST", "http://hub/v2/order-search/poll", "heavy"),
        ("POST", ORDERS, "all"),
        ("GET", "http://hub/v1/callback/events", "all"),
    ],
)
def test_listings_are_heavy_single_records_and_writes_are_not(
    method: str, url: str, expected: str
) -> None:
    assert endpoint_class(method, url) == expected


def test_structured_field_lists_are_read_leniently() -> None:
    """The IETF draft syntax; unreadable parameters are skipped, never an error."""
    value = '"minute";q=500;w=60, "heavy-minute";q=10;w=60, junk;q=x, hour;r=3'
    assert parse_structured_list(value) == [
        ("minute", {"q": 500, "w": 60}),
        ("heavy-minute", {"q": 10, "w": 60}),
        ("junk", {}),
        ("hour", {"r": 3}),
    ]
    assert parse_structured_list(None) == []


async def test_a_full_window_waits_for_the_round_minute_plus_the_skew_allowance() -> None:
    """3/minute: three go at 10:00:20, the fourth waits until 10:01:00.5 (0.5 s allowance)."""
    time = Time(at("2024-03-05T10:00:20"))
    b = budget(["3/minute"], time)
    for _ in range(3):
        await b.spend("GET", ONE_ORDER)
    assert time.sleeps == []
    await b.spend("GET", ONE_ORDER)
    assert time.sleeps == [40.5]
    assert b.remaining() == {"minute": 2}


async def test_the_skew_allowance_is_at_most_one_percent_of_the_window() -> None:
    """Scaled-down windows keep their proportions: 2 s windows wait 0.02 s past their end."""
    time = Time(at("2024-03-05T10:00:00"))
    b = budget(["1/2s"], time)
    await b.spend("GET", ONE_ORDER)
    await b.spend("GET", ONE_ORDER)
    assert time.sleeps == [pytest.approx(2.02)]


async def test_a_heavy_listing_spends_from_the_general_and_the_heavy_windows() -> None:
    """heavy:2/minute holds the third listing back; other requests still go, and the
    general window counted the listings."""
    time = Time(at("2024-03-05T10:00:30"))
    b = budget(["5/minute", "heavy:2/minute"], time)
    await b.spend("GET", ORDERS)
    await b.spend("GET", ORDERS)
    assert b.remaining() == {"heavy-minute": 0, "minute": 3}
    await b.spend("GET", ONE_ORDER)
    assert time.sleeps == []
    await b.spend("GET", ORDERS)
    assert time.sleeps == [30.5]
    assert b.remaining() == {"heavy-minute": 1, "minute": 4}


async def test_concurrent_requests_never_exceed_any_window() -> None:
    """25 concurrent listings at 10/minute: 10 per minute, in three minutes."""
    time = Time(at("2024-03-05T10:00:00"))
    b = budget(["heavy:10/minute", "500/minute"], time)
    sent: list[float] = []

    async def one() -> None:
        await b.spend("GET", ORDERS)
        sent.append(time.now)

    await asyncio.gather(*(one() for _ in range(25)))
    minutes = [int((t - at("2024-03-05T10:00:00")) // 60) for t in sent]
    assert [minutes.count(m) for m in (0, 1, 2)] == [10, 10, 5]


async def test_policy_headers_teach_windows_the_config_did_not_name() -> None:
    """No config at all: the first answer's RateLimit-Policy and RateLimit set the budget."""
    time = Time(at("2024-03-05T10:00:10"))
    b = budget([], time)
    ticket = await b.spend("GET", ORDERS)
    ticket.settle(
        200,
        {
            "ratelimit-policy": '"minute";q=500;w=60, "heavy-minute";q=3;w=60',
            "ratelimit": '"heavy-minute";r=2;t=50',
        },
    )
    assert b.remaining() == {"heavy-minute": 2, "minute": 500}
    for _ in range(2):
        await b.spend("GET", ORDERS)
    assert time.sleeps == []
    await b.spend("GET", ORDERS)
    assert time.sleeps == [50.5]


async def test_when_the_server_says_fewer_remain_the_server_is_right() -> None:
    """Another client spends the same quota: r lower than ours wins; a higher r does not."""
    time = Time(at("2024-03-05T10:00:00"))
    b = budget(["heavy:10/minute"], time)
    first = await b.spend("GET", ORDERS)
    first.settle(200, {"ratelimit": '"heavy-minute";r=5;t=60'})
    assert b.remaining()["heavy-minute"] == 5
    second = await b.spend("GET", ORDERS)
    second.settle(200, {"ratelimit": '"heavy-minute";r=8;t=60'})
    assert b.remaining()["heavy-minute"] == 4


async def test_our_requests_still_in_flight_are_not_forgotten_by_a_correction() -> None:
    """Two listings sent; the first answer says r=7 (it counted 3, the other client's 2 and
    ours): the second, still travelling, must stay counted."""
    time = Time(at("2024-03-05T10:00:00"))
    b = budget(["heavy:10/minute"], time)
    first = await b.spend("GET", ORDERS)
    await b.spend("GET", ORDERS)
    first.settle(200, {"ratelimit": '"heavy-minute";r=7;t=60'})
    assert b.remaining()["heavy-minute"] == 6


async def test_an_answer_from_the_next_window_counts_there_too() -> None:
    """Sent at 10:00:59.9, answered at 10:01:00.1: the platform may have counted it in either
    minute; the new one counts it, and the old minute's standing is not applied to it."""
    time = Time(at("2024-03-05T10:00:59.9"))
    b = budget(["heavy:10/minute"], time)
    ticket = await b.spend("GET", ORDERS)
    time.now = at("2024-03-05T10:01:00.1")
    ticket.settle(200, {"ratelimit": '"heavy-minute";r=0;t=1'})
    assert b.remaining()["heavy-minute"] == 9


async def test_a_429_holds_the_class_back_for_at_least_retry_after() -> None:
    """Retry-After longer than the budget's own estimate wins; other classes still go."""
    time = Time(at("2024-03-05T10:00:00"))
    b = budget(["heavy:10/minute"], time)
    ticket = await b.spend("GET", ORDERS)
    ticket.settle(429, {"retry-after": "75"})
    await b.spend("GET", ONE_ORDER)
    assert time.sleeps == []
    await b.spend("GET", ORDERS)
    assert time.sleeps == [75.0]


async def test_a_429_naming_a_window_waits_for_its_end_when_that_is_later() -> None:
    """`RateLimit: "heavy-minute";r=0`: full until the round minute, even if Retry-After is
    shorter (it is rounded to seconds, and counted by someone else's clock)."""
    time = Time(at("2024-03-05T10:00:20"))
    b = budget(["heavy:10/minute"], time)
    ticket = await b.spend("GET", ORDERS)
    ticket.settle(429, {"retry-after": "30", "ratelimit": '"heavy-minute";r=0;t=30'})
    await b.spend("GET", ORDERS)
    assert time.sleeps == [40.5]


async def test_a_spent_daily_quota_is_logged_once_shown_and_resumes_by_itself() -> None:
    """Two waiters for the same midnight: one log line with the resume time, the pause and
    the metric while it lasts, then both go and the pause is cleared."""
    time = Time(at("2024-03-05T22:00:00"))
    b = budget(["2/day"], time)
    await b.spend("GET", ONE_ORDER)
    await b.spend("GET", ONE_ORDER)
    seen = []

    async def sleep(seconds: float) -> None:
        seen.append(
            (
                b.exhausted(),
                b.metrics.registry.get_sample_value(
                    "ordersync_agent_quota_exhausted_until_seconds", {"budget": "hubrise"}
                ),
            )
        )
        await time.sleep(seconds)

    b.sleep = sleep
    with structlog.testing.capture_logs() as logs:
        await asyncio.gather(b.spend("GET", ONE_ORDER), b.spend("GET", ONE_ORDER))
    midnight = at("2024-03-06T00:00:00")
    exhausted = [entry for entry in logs if entry["event"] == "quota_exhausted"]
    assert len(exhausted) == 1
    assert exhausted[0]["resume_at"] == "2024-03-06T00:00:00.500Z"
    assert exhausted[0]["window"] == "day"
    pause, gauge = seen[0]
    assert pause is not None and pause.until == midnight + 0.5 and gauge == midnight + 0.5
    assert [entry["event"] for entry in logs].count("quota_resumed") == 1
    assert b.exhausted() is None
    assert (
        b.metrics.registry.get_sample_value(
            "ordersync_agent_quota_exhausted_until_seconds", {"budget": "hubrise"}
        )
        == 0
    )


async def test_waits_and_remaining_budget_are_metrics() -> None:
    time = Time(at("2024-03-05T10:00:59"))
    b = budget(["heavy:1/minute"], time)
    await b.spend("GET", ORDERS, source="hr")
    await b.spend("GET", ORDERS, source="hr")
    sample = b.metrics.registry.get_sample_value
    labels = {"source": "hr", "window": "heavy-minute"}
    assert sample("ordersync_agent_budget_waits_total", labels) == 1
    assert sample("ordersync_agent_budget_wait_seconds_total", labels) == pytest.approx(1.5)
    remaining = {"budget": "hubrise", "window": "heavy-minute"}
    assert sample("ordersync_agent_quota_remaining", remaining) == 0


async def test_closing_the_budget_wakes_a_waiter_with_budget_closed() -> None:
    """A stopping agent does not sit out a daily quota: the waiting request is never sent."""
    b = Budget("hubrise", parse_quotas(["1/day"]), metrics=AgentMetrics())
    await b.spend("GET", ONE_ORDER)
    waiting = asyncio.ensure_future(b.spend("GET", ONE_ORDER))
    await asyncio.sleep(0.01)
    assert not waiting.done()
    b.close()
    with pytest.raises(BudgetClosed):
        await asyncio.wait_for(waiting, 1)


async def test_sources_on_one_connection_share_one_budget() -> None:
    """Same host and token: one budget (limits merged, the smaller wins); another token or
    host: another budget."""
    book = BudgetBook(AgentMetrics())
    a = book.for_source("a", "https://api.hubrise.com/v1", "tok", parse_quotas(["500/minute"]))
    b = book.for_source("b", "https://API.hubrise.com/v1/", "tok", parse_quotas(["400/minute"]))
    c = book.for_source("c", "https://api.hubrise.com/v1", "other")
    d = book.for_source("d", "https://eu.hubrise.com/v1", "tok")
    assert a is b and a.windows["minute"].limit == 400
    assert len({id(a), id(c), id(d)}) == 3
    assert book.exhausted("a") is None and book.exhausted("nope") is None


async def test_a_refused_general_request_holds_the_listings_back_too() -> None:
    """The general windows count the listings as well: a 429 on any request blocks both."""
    time = Time(at("2024-03-05T10:00:00"))
    b = budget(["heavy:10/minute"], time)
    ticket = await b.spend("GET", ONE_ORDER)
    ticket.settle(429, {"retry-after": "20"})
    await b.spend("GET", ORDERS)
    assert time.sleeps == [20.0]


async def test_the_client_leaves_a_long_retry_after_to_its_budget_and_goes_on() -> None:
    """Without a budget a Retry-After past the policy's maximum raises RateLimited; with one,
    the next attempt waits in the budget (a reported pause) and the call succeeds."""
    import httpx

    from ordersync.agent.client import ApiClient
    from ordersync.agent.retry import RetryPolicy

    time = Time(at("2024-03-05T10:00:00"))
    b = budget([], time)
    answers = iter(
        [
            httpx.Response(429, headers={"Retry-After": "3600"}, json={"message": "spent"}),
            httpx.Response(200, json={"data": []}),
        ]
    )
    client_waits: list[float] = []

    async def client_sleep(seconds: float) -> None:
        client_waits.append(seconds)

    client = ApiClient(
        httpx.AsyncClient(transport=httpx.MockTransport(lambda r: next(answers))),
        "http://hub/api/v1",
        "tok",
        retry=RetryPolicy(max_retry_after=600),
        budget=b,
        sleep=client_sleep,
        clock=lambda: int(time.now * 1000),
    )
    with structlog.testing.capture_logs() as logs:
        response = await client.get_json("/orders", {})
    assert response.status == 200 and client.calls == 2
    assert client_waits == [0.0] and time.sleeps == [3600.0]
    assert [e["event"] for e in logs if e["event"].startswith("quota_")] == [
        "quota_exhausted",
        "quota_resumed",
    ]


def test_status_shows_a_spent_quota_per_source() -> None:
    """`/status` rows carry the pause; `agent status` renders it in its quota column."""
    from ordersync.agent.budget import Pause
    from ordersync.agent.commands import _quota_cell
    from ordersync.agent.engine import StreamStatus
    from ordersync.agent.runner import status_row

    pause = Pause("day", at("2024-03-06T00:00:00"))
    row = status_row(StreamStatus("hubrise", "orders"), None, pause)
    assert row["quota_exhausted_window"] == "day"
    assert row["quota_exhausted_until"] == "2024-03-06T00:00:00.000Z"
    assert _quota_cell(row) == "day spent, resumes 2024-03-06T00:00:00.000Z"
    assert _quota_cell(status_row(StreamStatus("hubrise", "orders"))) == "-"


async def test_stopping_run_sources_releases_a_quota_wait_and_reopens_after() -> None:
    """A source waiting for tomorrow's quota lets the agent stop at once; the budgets then
    take requests again, for a later run of the same runtime."""
    from types import SimpleNamespace
    from typing import Any, cast

    from ordersync.agent.runner import run_sources

    book = BudgetBook(AgentMetrics())
    b = book.for_source("hubrise", "https://api.hubrise.com/v1", "tok", parse_quotas(["1/day"]))
    await b.spend("GET", ONE_ORDER)

    class Waiting:
        async def run_cycle(self, *, stop_event: asyncio.Event) -> None:
            await b.spend("GET", ONE_ORDER)

    config = SimpleNamespace(sources=[SimpleNamespace(name="hubrise", interval=1.0)])
    runtime: Any = SimpleNamespace(
        config=config,
        engines={"hubrise": Waiting()},
        stopped={},
        budgets=book,
        draining={},
        rounds=[],
    )
    stop = asyncio.Event()
    running = asyncio.ensure_future(run_sources(cast(Any, runtime), stop))
    await asyncio.sleep(0.01)
    stop.set()
    await asyncio.wait_for(running, 1)
    assert runtime.stopped == {} and not b._closed.is_set()


async def test_the_platforms_numbers_win_unless_the_config_keeps_a_reserve() -> None:
    """Config 600/minute, platform 500: 500. Config 400 (leaving 100 to others): 400."""
    time = Time(at("2024-03-05T10:00:00"))
    policy = {"ratelimit-policy": '"minute";q=500;w=60'}
    for configured, expected in ((600, 500), (400, 400)):
        b = budget([f"{configured}/minute"], time)
        (await b.spend("GET", ONE_ORDER)).settle(200, policy)
        assert b.windows["minute"].limit == expected
