"""Stock units: whole-unit quantities, per-status counts, and the per-location view of a SKU."""

from __future__ import annotations

from datetime import date
from decimal import Decimal

import pytest

from ordersync.domain.inventory import InventoryStatus, Stock, StockKey, StockUnit, whole_units


@pytest.mark.parametrize(
    "value,units", [(Decimal("3"), 3), (Decimal("3.000"), 3), ("12.0", 12), (7, 7), ("1E+2", 100)]
)
def test_whole_units_accepts_integral_decimals_and_hubrise_stock_strings(
    value: Decimal | int | str, units: int
) -> None:
    """A line quantity `3.000` or a HubRise `stock` of "12.0" is a whole number of units."""
    assert whole_units(value) == units


@pytest.mark.parametrize(
    "value,message",
    [
        (Decimal("1.5"), "1.5 is not a whole number of units"),
        ("0.001", "0.001 is not a whole number of units"),
        (Decimal("-2"), "-2 is negative"),
        ("NaN", "is not a finite number"),
        ("ten", "'ten' is not a number"),
        (True, "is not a number of units"),
    ],
)
def test_whole_units_refuses_fractions_and_non_numbers_naming_the_value(
    value: Decimal | int | str, message: str
) -> None:
    """Half a unit cannot be picked: the error says which value was refused and why."""
    with pytest.raises(ValueError, match=message):
        whole_units(value)


def test_a_stock_unit_refuses_a_negative_or_fractional_count() -> None:
    with pytest.raises(ValueError, match="damaged count of A at W1 must be a non-negative"):
        StockUnit("A", "W1", damaged=-1)
    with pytest.raises(ValueError, match="available count"):
        StockUnit("A", "W1", available=1.5)  # type: ignore[arg-type]


def test_a_stock_unit_needs_a_sku_a_location_and_a_real_lot() -> None:
    with pytest.raises(ValueError, match="needs a sku and a location"):
        StockUnit("", "W1")
    with pytest.raises(ValueError, match="lot_number must be None"):
        StockUnit("A", "W1", lot_number="")


def test_allocating_moves_units_from_available_to_allocated() -> None:
    unit = StockUnit("A", "W1", "L1", available=5, allocated=1, damaged=2)
    after = unit.allocate(3)
    assert (after.available, after.allocated, after.damaged) == (2, 4, 2)
    with pytest.raises(ValueError, match="cannot allocate 3 of 2 available A"):
        after.allocate(3)


def test_a_lot_expiring_today_is_usable_today_but_not_tomorrow() -> None:
    unit = StockUnit("A", "W1", "L1", expires_on=date(2025, 3, 1), available=1)
    assert unit.usable_on(date(2025, 3, 1))
    assert not unit.usable_on(date(2025, 3, 2))
    assert unit.usable_on(None)
    assert StockUnit("A", "W1", available=1).usable_on(date(2999, 1, 1))


def test_stock_refuses_the_same_sku_location_and_lot_twice() -> None:
    with pytest.raises(ValueError, match="twice"):
        Stock.of([StockUnit("A", "W1", "L1"), StockUnit("A", "W1", "L1", available=2)])


def test_counts_sum_lots_per_location_and_status_as_in_a_sku_snapshot() -> None:
    """MasonHub's status_counts[] are per location and status, whatever the lots."""
    stock = Stock.of(
        [
            StockUnit("A", "W1", "L1", available=2, damaged=1),
            StockUnit("A", "W1", "L2", available=3, quality_control=4),
            StockUnit("A", "W2", None, available=1, allocated=6),
            StockUnit("B", "W1", None, available=9),
        ]
    )
    counts = stock.counts("A")
    assert counts[("W1", InventoryStatus.AVAILABLE)] == 5
    assert counts[("W1", InventoryStatus.DAMAGED)] == 1
    assert counts[("W1", InventoryStatus.QUALITY_CONTROL)] == 4
    assert counts[("W2", InventoryStatus.ALLOCATED)] == 6
    assert stock.available_to_sell("A") == 6
    assert stock.available_to_sell("missing") == 0
    assert InventoryStatus.QUALITY_CONTROL.value == "quality-control"


def test_replacing_a_unit_keeps_the_others_and_finds_it_by_key() -> None:
    stock = Stock.of([StockUnit("A", "W1", "L1", available=2), StockUnit("B", "W1", available=1)])
    after = stock.replacing([StockUnit("A", "W1", "L1", available=0, allocated=2)])
    changed = after.get(StockKey("A", "W1", "L1"))
    assert changed is not None and changed.allocated == 2
    assert after.get(StockKey("B", "W1")) == stock.get(StockKey("B", "W1"))
    assert len(after) == 2 and after.skus() == ("A", "B")
