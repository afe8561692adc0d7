"""The lifecycle and validation rules of seed 001, without any I/O."""

from __future__ import annotations

import itertools

import pytest

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


@pytest.mark.parametrize("text", ["yesterday", "2024-01-01", "2024-01-01T10:30:00"])
def test_dates_without_time_or_offset_are_refused(text: str) -> None:
    with pytest.raises(ValueError):
        parse_rfc3339_ms(text)
