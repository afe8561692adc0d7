"""Stock: how many units of a SKU sit in a warehouse location, per lot and per status.

A `StockUnit` is the stock of one (sku, location, lot): its lot attributes (expiry, receipt,
purchase order) and a count per status, MasonHub's `status_counts[]` (`available`, `allocated`,
`backordered`, `damaged`, `quality-control`). Counts are absolute, never deltas, as MasonHub's
`sku_snapshots` are. Only `available` units can be allocated; allocation moves them to
`allocated` (see allocation.py).

Counts are whole units (`int`). The order line quantity is a `Decimal` (seed 001 prices and
quantities are decimals, HubRise sends `stock` as a decimal string), so every quantity crosses
into stock through `whole_units`, which takes `3`, `3.000` and `"3.0"` and refuses `1.5` with a
message naming the value: half a unit cannot be picked.

Plain frozen dataclasses rather than pydantic models: allocation copies units in its inner loop
and the shapes are checked once, here, in `__post_init__`.
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator
from dataclasses import dataclass, field, replace
from datetime import date
from decimal import Decimal, InvalidOperation
from enum import StrEnum


class InventoryStatus(StrEnum):
    """MasonHub's inventory statuses that ordersync keeps (it documents 16; these five are the
    ones allocation reads or writes, and the ones the issue names)."""

    AVAILABLE = "available"
    ALLOCATED = "allocated"
    BACKORDERED = "backordered"
    DAMAGED = "damaged"
    QUALITY_CONTROL = "quality-control"


def whole_units(value: Decimal | int | str) -> int:
    """A quantity of units as an `int`: `Decimal("3.000")` -> 3; `1.5`, `-1`, `NaN` and text that
    is not a number raise ValueError naming the value."""
    if isinstance(value, bool):
        raise ValueError(f"quantity {value!r} is not a number of units")
    if isinstance(value, int):
        number = Decimal(value)
    else:
        try:
            number = Decimal(value.strip() if isinstance(value, str) else value)
        except InvalidOperation:
            raise ValueError(f"quantity {value!r} is not a number") from None
    if not number.is_finite():
        raise ValueError(f"quantity {value!r} is not a finite number")
    if number != number.to_integral_value():
        raise ValueError(f"quantity {value} is not a whole number of units")
    if number < 0:
        raise ValueError(f"quantity {value} is negative")
    return int(number)


@dataclass(frozen=True, slots=True)
class StockKey:
    """Where a unit of stock is: a SKU in a location, in a lot (`None`: not lot-tracked)."""

    sku: str
    location: str
    lot_number: str | None = None


@dataclass(frozen=True, slots=True)
class StockUnit:
    """The stock of one (sku, location, lot), with a count per status."""

    sku: str
    location: str
    lot_number: str | None = None
    expires_on: date | None = None
    received_on: date | None = None
    purchase_order: str | None = None
    available: int = 0
    allocated: int = 0
    backordered: int = 0
    damaged: int = 0
    quality_control: int = 0

    def __post_init__(self) -> None:
        if not self.sku or not self.location:
            raise ValueError("a stock unit needs a sku and a location")
        if self.lot_number == "":
            raise ValueError("lot_number must be None (not lot-tracked) or non-empty")
        for status in InventoryStatus:
            count = getattr(self, _FIELDS[status])
            if isinstance(count, bool) or not isinstance(count, int) or count < 0:
                raise ValueError(
                    f"{status.value} count of {self.sku} at {self.location} must be a "
                    f"non-negative whole number, got {count!r}"
                )

    @property
    def key(self) -> StockKey:
        return StockKey(self.sku, self.location, self.lot_number)

    def count(self, status: InventoryStatus) -> int:
        return int(getattr(self, _FIELDS[status]))

    def status_counts(self) -> dict[InventoryStatus, int]:
        return {status: self.count(status) for status in InventoryStatus}

    def usable_on(self, today: date | None) -> bool:
        """Whether the units may still be picked: not expired (a lot expiring today still
        ships today). Without a date, expiry is not checked."""
        return today is None or self.expires_on is None or self.expires_on >= today

    def allocate(self, quantity: int) -> StockUnit:
        """`quantity` units move from available to allocated."""
        if quantity < 0 or quantity > self.available:
            raise ValueError(
                f"cannot allocate {quantity} of {self.available} available {self.sku} "
                f"at {self.location} lot {self.lot_number}"
            )
        return replace(
            self, available=self.available - quantity, allocated=self.allocated + quantity
        )


_FIELDS = {status: status.value.replace("-", "_") for status in InventoryStatus}


@dataclass(frozen=True)
class Stock:
    """All stock units of an account, by key, with an index per SKU. Immutable: allocation
    returns a new `Stock`."""

    units: tuple[StockUnit, ...] = ()
    _by_key: dict[StockKey, StockUnit] = field(init=False, repr=False, compare=False)
    _by_sku: dict[str, tuple[StockUnit, ...]] = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        by_key: dict[StockKey, StockUnit] = {}
        by_sku: dict[str, list[StockUnit]] = {}
        for unit in self.units:
            if unit.key in by_key:
                raise ValueError(f"stock lists {unit.key} twice")
            by_key[unit.key] = unit
            by_sku.setdefault(unit.sku, []).append(unit)
        object.__setattr__(self, "_by_key", by_key)
        object.__setattr__(self, "_by_sku", {sku: tuple(us) for sku, us in by_sku.items()})

    @classmethod
    def of(cls, units: Iterable[StockUnit]) -> Stock:
        return cls(tuple(sorted(units, key=lambda unit: _sort_key(unit.key))))

    def __iter__(self) -> Iterator[StockUnit]:
        return iter(self.units)

    def __len__(self) -> int:
        return len(self.units)

    def get(self, key: StockKey) -> StockUnit | None:
        return self._by_key.get(key)

    def for_sku(self, sku: str) -> tuple[StockUnit, ...]:
        return self._by_sku.get(sku, ())

    def skus(self) -> tuple[str, ...]:
        return tuple(sorted(self._by_sku))

    def replacing(self, changed: Iterable[StockUnit]) -> Stock:
        """This stock with some units replaced (same keys) or added."""
        by_key = dict(self._by_key)
        for unit in changed:
            by_key[unit.key] = unit
        return Stock.of(by_key.values())

    def counts(self, sku: str) -> dict[tuple[str, InventoryStatus], int]:
        """Absolute counts per (location, status) for one SKU, summed over lots: the shape of
        MasonHub's `status_counts[]` in a `sku_snapshot`."""
        totals: dict[tuple[str, InventoryStatus], int] = {}
        for unit in self.for_sku(sku):
            for status, count in unit.status_counts().items():
                key = (unit.location, status)
                totals[key] = totals.get(key, 0) + count
        return totals

    def available_to_sell(self, sku: str) -> int:
        """MasonHub's `total_available_to_sell`: available units of the SKU in every location."""
        return sum(unit.available for unit in self.for_sku(sku))


def _sort_key(key: StockKey) -> tuple[str, str, str]:
    # None sorts before every lot: "not lot-tracked" first, then lots by name.
    return (key.sku, key.location, "" if key.lot_number is None else "\x00" + key.lot_number)
