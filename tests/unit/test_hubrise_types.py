"""HubRise's common data types (seed 003, section 5): money, decimals, times, DOW, cursors."""

from __future__ import annotations

from decimal import Decimal

import pytest
from pydantic import ValidationError

from ordersync.domain import NewOrder, format_dow, parse_dow
from ordersync.hub.dialects.hubrise_types import decode_cursor, encode_cursor
from ordersync.wire.hubrise_values import (
    format_decimal,
    format_money,
    format_time,
    parse_decimal,
    parse_money,
    parse_time,
    zone,
)
from tests.support import order_payload

AUG_20_0442_UTC = 1_597_898_566_000  # 2020-08-20T04:42:46Z


@pytest.mark.parametrize(
    "amount,currency,text",
    [
        ("8.9", "EUR", "8.90 EUR"),
        ("-0.05", "GBP", "-0.05 GBP"),
        ("0.005", "EUR", "0.01 EUR"),
        ("-0.001", "EUR", "0.00 EUR"),
        ("1234567.125", "USD", "1234567.13 USD"),
    ],
)
def test_money_has_two_decimals_and_the_currency(amount: str, currency: str, text: str) -> None:
    """Rounded half up to the cent, never "-0.00"."""
    assert format_money(Decimal(amount), currency) == text


@pytest.mark.parametrize("text", ["8.90 EUR", "-0.05 GBP", "0.00 USD"])
def test_money_round_trips(text: str) -> None:
    amount, currency = parse_money(text)
    assert format_money(amount, currency) == text


@pytest.mark.parametrize(
    "text",
    [
        "abc",
        "8.9 EUR",
        "8.900 EUR",
        "8.90EUR",
        "8.90 eur",
        "8.90 EURO",
        "+1.00 EUR",
        "1,00 EUR",
        " 8.90 EUR",
        8.9,
        None,
    ],
)
def test_anything_else_is_not_money(text: object) -> None:
    with pytest.raises(ValueError, match="is not a valid monetary amount"):
        parse_money(text)


@pytest.mark.parametrize(
    "value,text",
    [
        ("1", "1"),
        ("-2.5", "-2.5"),
        ("2.000", "2"),
        ("1E+2", "100"),
        ("-0.0", "0"),
        ("0.000000000001", "0.000000000001"),
        ("10.50", "10.5"),
    ],
)
def test_decimals_are_the_shortest_exact_string(value: str, text: str) -> None:
    assert format_decimal(Decimal(value)) == text


def test_decimal_strings_and_integers_parse_exactly() -> None:
    """Strings keep every digit; a JSON integer is taken as HubRise's examples send them."""
    assert parse_decimal("0.1") == Decimal("0.1")
    assert parse_decimal("-2.5") == Decimal("-2.5")
    assert parse_decimal(2) == Decimal(2)


@pytest.mark.parametrize("value", ["1.5.2", "abc", "1e3", "", " 1", ".5", 1.5, True, None])
def test_other_decimal_values_are_refused(value: object) -> None:
    with pytest.raises(ValueError, match="is not a decimal value"):
        parse_decimal(value)


@pytest.mark.parametrize(
    "tz,text",
    [
        ("Europe/Paris", "2020-08-20T06:42:46+02:00"),
        ("UTC", "2020-08-20T04:42:46+00:00"),
        ("America/New_York", "2020-08-20T00:42:46-04:00"),
        ("Asia/Kolkata", "2020-08-20T10:12:46+05:30"),
    ],
)
def test_times_are_iso_8601_in_the_location_zone(tz: str, text: str) -> None:
    assert format_time(AUG_20_0442_UTC, zone(tz)) == text
    assert parse_time(text, zone("UTC")) == AUG_20_0442_UTC


def test_times_keep_their_milliseconds_and_follow_daylight_saving() -> None:
    """Winter in Paris is +01:00; milliseconds are written when the instant has them."""
    january = 1_579_500_000_123  # 2020-01-20T06:00:00.123Z
    assert format_time(january, zone("Europe/Paris")) == "2020-01-20T07:00:00.123+01:00"


def test_a_time_without_offset_is_read_in_the_location_zone() -> None:
    """As HubRise renders times there; a plain date is its midnight."""
    paris = zone("Europe/Paris")
    assert parse_time("2020-08-20T06:42:46", paris) == AUG_20_0442_UTC
    assert parse_time("2020-08-20", paris) == AUG_20_0442_UTC - (6 * 3600 + 42 * 60 + 46) * 1000


@pytest.mark.parametrize("text", ["yesterday", "2020-13-01T00:00:00Z", "", "2020-08-20T25:00"])
def test_bad_times_are_refused(text: str) -> None:
    with pytest.raises(ValueError, match="is not an ISO 8601 time"):
        parse_time(text, zone("UTC"))


def test_an_unknown_zone_falls_back_to_utc() -> None:
    assert zone("Mars/Olympus_Mons").key == "UTC"


@pytest.mark.parametrize(
    "text,days",
    [
        ("1234567", (1, 2, 3, 4, 5, 6, 7)),
        ("12----7", (1, 2, 7)),
        ("12345--", (1, 2, 3, 4, 5)),
        ("-------", ()),
    ],
)
def test_dow_round_trips(text: str, days: tuple[int, ...]) -> None:
    assert parse_dow(text) == days
    assert format_dow(days) == text


@pytest.mark.parametrize(
    "text", ["123456", "12345678", "21-----", "1234567 ", "x234567", "1-3-5-8", "ABCDEFG"]
)
def test_dow_is_strict(text: str) -> None:
    """Exactly 7 characters; position i is digit i or '-'."""
    with pytest.raises(ValueError, match="is not a DOW value"):
        parse_dow(text)


def test_delivery_days_are_sorted_iso_weekdays_on_the_order() -> None:
    """The domain keeps a sorted set of 1..7; none at all means any day, an empty set is
    refused."""
    order = NewOrder.model_validate(order_payload("PO-1", delivery_days=[5, 1, 3, 1]))
    assert order.delivery_days == (1, 3, 5)
    assert NewOrder.model_validate(order_payload("PO-2")).delivery_days is None
    for bad in ([], [0], [8]):
        with pytest.raises(ValidationError):
            NewOrder.model_validate(order_payload("PO-3", delivery_days=bad))


def test_a_cursor_round_trips_and_refuses_tampering() -> None:
    """Opaque, URL-safe, and any edit is detected."""
    token = encode_cursor(1_700_000_000_123, "3f2a")
    assert decode_cursor(token) == (1_700_000_000_123, "3f2a")
    assert set(token) <= set("ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789-_")
    for i in range(len(token)):
        edited = token[:i] + ("A" if token[i] != "A" else "B") + token[i + 1 :]
        with pytest.raises(ValueError):
            decode_cursor(edited)
    for junk in ("", "abc", "!!!!", token + "A"):
        with pytest.raises(ValueError):
            decode_cursor(junk)
