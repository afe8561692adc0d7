"""The lifecycle and validation rules of seed 001, without any I/O."""

from __future__ import annotations

import itertools
import re

import pytest
from hypothesis import given
from hypothesis import strategies as st

from ordersync.domain import OrderStatus, check_transition, format_rfc3339, parse_rfc3339_ms
from ordersync.errors import InvalidTransition

HAPPY = ["open", "atWarehouse", "inProcess", "packed", "fulfilled", "delivered"]


@pytest.mark.parametrize("current,target", list(itertools.pairwise(HAPPY)))
def test_each_status_moves_to_the_next(current: str, target: str) -> None:
    """open -> atWarehouse -> inProcess -> packed -> fulfilled -> delivered is allowed."""
    check_transition(OrderStatus(current), OrderStatus(target))


@pytest.mark.parametrize("current", ["open", "atWarehouse", "inProcess"])
def test_early_orders_can_be_canceled(current: str) -> None:
    check_transition(OrderStatus(current), OrderStatus.CANCELED)


@pytest.mark.parametrize("current", ["packed", "fulfilled", "delivered", "canceled"])
def test_late_orders_cannot_be_canceled(current: str) -> None:
    with pytest.raises(InvalidTransition, match="can no longer be canceled"):
        check_transition(OrderStatus(current), OrderStatus.CANCELED)


def test_skipping_a_status_is_refused_with_the_expected_next_one() -> None:
    with pytest.raises(InvalidTransition, match="can only move to atWarehouse"):
        check_transition(OrderStatus.OPEN, OrderStatus.PACKED)


def test_rfc3339_round_trip_keeps_milliseconds_and_converts_offsets() -> None:
    ms = parse_rfc3339_ms("2024-01-01T12:30:00.123+02:00")
    assert format_rfc3339(ms) == "2024-01-01T10:30:00.123Z"


@given(st.integers(min_value=-30_610_224_000_000, max_value=253_402_300_799_999))  # 1000-9999
def test_the_canonical_form_parses_to_the_same_instant_as_the_general_path(ms: int) -> None:
    """`...T10:30:00.123Z` takes a cached per-second path; it must agree with the offset form."""
    canonical = format_rfc3339(ms)
    assert parse_rfc3339_ms(canonical) == ms
    assert parse_rfc3339_ms(canonical.replace("Z", "+00:00")) == ms


@pytest.mark.parametrize(
    "text", ["2024-13-01T00:00:00.000Z", "2024-02-30T00:00:00.000Z", "2024-01-01T24:00:00.000Z"]
)
def test_an_impossible_canonical_date_is_refused_naming_the_text(text: str) -> None:
    with pytest.raises(ValueError, match=re.escape(repr(text))):
        parse_rfc3339_ms(text)


@pytest.mark.parametrize("text", ["yesterday", "2024-01-01", "2024-01-01T10:30:00"])
def test_dates_without_time_or_offset_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339_ms(text)
