"""Quota windows, policies and the 429 arithmetic, without a server (seed 003, section 3)."""

from __future__ import annotations

from datetime import UTC, datetime

import pytest

from ordersync.errors import ConfigurationError
from ordersync.hub.ratelimit import Limit, Verdict, endpoint_class, request_method
from ordersync.quotas import HEAVY, QuotaPolicy, Window
from ordersync.store.rate_counters import MemoryRateCounters, Slot

MINUTE, HOUR, DAY = Window("minute", 60, 500), Window("hour", 3600, 2500), Window("day", 86_400, 10)


def at(text: str) -> float:
    return datetime.fromisoformat(text).replace(tzinfo=UTC).timestamp()


def test_windows_start_at_the_round_minute_hour_and_day_utc() -> None:
    """10:35:12.4 is in the minute of 10:35, the hour of 10:00 and the day of 00:00 (UTC)."""
    now = at("2024-03-05T10:35:12.400")
    assert MINUTE.start(now) == at("2024-03-05T10:35:00")
    assert HOUR.start(now) == at("2024-03-05T10:00:00")
    assert HOUR.end(now) == at("2024-03-05T11:00:00")
    assert DAY.start(now) == at("2024-03-05T00:00:00")
    assert DAY.end(now) == at("2024-03-06T00:00:00")


def test_the_round_hour_itself_opens_the_next_window() -> None:
    """At 11:00:00.000 exactly the hour of 10:00 is over."""
    assert HOUR.start(at("2024-03-05T11:00:00")) == at("2024-03-05T11:00:00")
    assert HOUR.start(at("2024-03-05T10:59:59.999")) == at("2024-03-05T10:00:00")


@pytest.mark.parametrize(
    ("now", "retry_after"),
    [
        ("2024-03-05T10:35:00", 1500),  # the seed's example: throttled until 11:00
        ("2024-03-05T10:35:00.500", 1500),  # rounded up: never back while still closed
        ("2024-03-05T10:59:59", 1),
        ("2024-03-05T10:59:59.999", 1),
        ("2024-03-05T10:00:00", 3600),
    ],
)
def test_retry_after_counts_to_the_end_of_the_blocking_window(now: str, retry_after: int) -> None:
    """A connection that used its hourly quota by 10:35 is told to come back at 11:00."""
    verdict = Verdict([Limit("h", HOUR)], [HOUR.limit + 1], at(now))
    assert verdict.retry_after() == retry_after
    assert verdict.refusal().headers == {
        "RateLimit-Policy": '"hour";q=2500;w=3600',
        "RateLimit": f'"hour";r=0;t={retry_after}',
        "Retry-After": str(retry_after),
    }


def test_when_two_windows_are_full_retry_after_waits_for_the_later_one() -> None:
    """Minute and hour both spent: coming back after the minute would still be refused."""
    now = at("2024-03-05T10:35:30")
    verdict = Verdict([Limit("m", MINUTE), Limit("h", HOUR)], [501, 2501], now)
    assert verdict.retry_after() == 1470
    assert verdict.headers()["RateLimit"] == '"hour";r=0;t=1470'


def test_ratelimit_header_names_the_window_with_the_least_left() -> None:
    """Every window is in RateLimit-Policy; RateLimit shows the one closest to refusing."""
    now = at("2024-03-05T10:35:00")
    limits = [Limit("m", MINUTE), Limit("h", HOUR), Limit("d", DAY)]
    headers = Verdict(limits, [3, 1300, 2], now).headers()
    assert headers["RateLimit-Policy"] == (
        '"minute";q=500;w=60, "hour";q=2500;w=3600, "day";q=10;w=86400'
    )
    assert headers["RateLimit"] == '"day";r=8;t=48300'


def test_the_429_message_says_when_to_come_back() -> None:
    error = Verdict([Limit("h", HOUR)], [2501], at("2024-03-05T10:35:00")).refusal()
    assert error.status == 429 and error.error_type == "too_many_requests"
    assert "come back in 1500 s, at 2024-03-05T11:00:00Z" in error.message


def test_hubrise_defaults_are_exactly_the_seeds() -> None:
    """500/minute, 2,500/hour, 10,000/day on /v1/, plus 10/minute on the high-load listings."""
    policy = QuotaPolicy.hubrise_default()
    everything = policy.windows_for("GET", "/v1/location/orders/abc")
    assert [(window.seconds, window.limit) for _, window in everything] == [
        (60, 500),
        (3600, 2500),
        (86_400, 10_000),
    ]
    heavy = policy.windows_for("GET", "/v1/location/orders")
    assert [(window.name, window.limit) for _, window in heavy][-1] == ("heavy-minute", 10)
    assert len(heavy) == 4
    assert policy.windows_for("GET", "/api/v1/orders") == ()  # MasonHub: no quota by default
    assert policy.windows_for("POST", "/v2/order-search/search") == ()


@pytest.mark.parametrize(
    ("method", "path", "expected"),
    [
        ("GET", "/v1/location/orders", "heavy"),
        ("GET", "/v1/location/orders/", "heavy"),
        ("GET", "/v1/locations/3r4s3-1/orders", "heavy"),
        ("GET", "/v1/orders", "heavy"),
        ("GET", "/v1/catalogs/87yu4", "heavy"),
        ("GET", "/v1/customer_lists/ab12/customers", "heavy"),
        ("GET", "/v1/location/orders/sd89mm", "all"),
        ("POST", "/v1/location/orders", "all"),
        ("PATCH", "/v1/catalogs/87yu4", "all"),
        ("GET", "/v1/catalogs/87yu4/products", "all"),
        ("GET", "/v1/customer_lists/ab12/customers/zz9", "all"),
        ("GET", "/v1/location", "all"),
    ],
)
def test_high_load_listings_are_classified_by_method_and_path(
    method: str, path: str, expected: str
) -> None:
    """Only the seed's listings (GET) are 'heavy'; their single items and writes are not."""
    assert endpoint_class(method, path) == expected


def test_a_method_override_is_classified_as_the_method_it_means() -> None:
    headers = [(b"x-http-method-override", b"patch")]
    assert request_method({"method": "POST", "headers": headers}) == "PATCH"
    assert request_method({"method": "GET", "headers": headers}) == "GET"
    sneaky = [(b"x-http-method-override", b"GET")]  # the dialect refuses it; still a POST here
    assert request_method({"method": "POST", "headers": sneaky}) == "POST"


def test_specs_change_one_quota_each_and_off_removes_one() -> None:
    policy = QuotaPolicy.from_specs(
        "/api/v1/=5/minute,100/3600s; /v1/@heavy=off", QuotaPolicy.hubrise_default()
    )
    assert policy.describe() == (
        "/v1/@all=500/minute,2500/hour,10000/day; /api/v1/@all=5/minute,100/hour"
    )
    assert not any(q.endpoint_class == HEAVY for q in policy.quotas)


@pytest.mark.parametrize(
    "spec", ["/v1/=500", "v1/=5/minute", "/v1/@nope=5/minute", "/v1/=x/minute", "/v1/=5/week"]
)
def test_a_malformed_quota_spec_is_a_configuration_error(spec: str) -> None:
    with pytest.raises(ConfigurationError):
        QuotaPolicy.from_specs(spec)


async def test_a_request_refused_by_one_window_is_not_charged_to_the_others() -> None:
    """All or nothing: the heavy minute refuses, and the general minute keeps its count."""
    counters = MemoryRateCounters()
    general, heavy = Slot("all", 0, 60, 100), Slot("heavy", 0, 60, 2)
    assert await counters.take("c", [general, heavy]) == [1, 1]
    assert await counters.take("c", [general, heavy]) == [2, 2]
    assert await counters.take("c", [general, heavy]) == [3, 3]  # refused: 3 > 2
    assert await counters.take("c", [general]) == [3]
    assert await counters.take("other", [general, heavy]) == [1, 1]
    assert await counters.take("c", [Slot("heavy", 60, 60, 2)]) == [1]  # next minute


def test_workers_read_quota_changes_from_the_environment(monkeypatch: pytest.MonkeyPatch) -> None:
    """ORDERSYNC_HUB_QUOTAS changes the defaults (for hub.asgi:app_factory under any server)."""
    from ordersync.hub.settings import HubSettings

    monkeypatch.setenv("ORDERSYNC_HUB_QUOTAS", "/api/v1/=40/day")
    monkeypatch.setenv("ORDERSYNC_HUB_QUOTA_STORE", "sql")
    settings = HubSettings.from_env()
    assert settings.quotas.describe() == (
        "/v1/@all=500/minute,2500/hour,10000/day; /v1/@heavy=10/minute; /api/v1/@all=40/day"
    )
    assert settings.quota_store == "sql"


def test_serve_help_shows_the_default_quotas_and_a_bad_quota_is_a_clear_error() -> None:
    """`ordersync hub serve --help` names --quota and HubRise's numbers; a typo exits 2."""
    from typer.testing import CliRunner

    from ordersync.cli import app

    shown = CliRunner().invoke(app, ["hub", "serve", "--help"], terminal_width=200)
    assert shown.exit_code == 0
    for text in ("--quota", "500/minute,2500/hour,10000/day", "/v1/@heavy=10/minute"):
        assert text in shown.output
    refused = CliRunner().invoke(app, ["hub", "serve", "--quota", "/api/v1/=5/fortnight"])
    assert refused.exit_code == 2 and "Traceback" not in refused.output
