"""Typed snapshots: one version of one entity as a client of a platform sees it.

A wire codec (`ordersync.wire`) parses a dialect's document into a snapshot; the agent's sinks
read snapshots, never a dialect's field names. Amounts are exact `Decimal`s.

`status` is the platform's own word for the status ("open" on MasonHub, "Issued/Open" -
processStatus/logisticsStatus - on Tradecloud, "new" on HubRise), not our `OrderStatus`: the
replica has always kept the platform's vocabulary, and a real platform has statuses our
lifecycle lacks (HubRise's "accepted", "rejected", ...). Mapping them would either lose that
distinction or make a record unstorable for a word we did not foresee.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal


@dataclass(frozen=True, slots=True)
class LineSnapshot:
    line_number: int
    sku: str | None
    quantity: Decimal | None
    unit_price: Decimal | None
    currency: str | None = None  # when the dialect states it beside the price (HubRise)


@dataclass(frozen=True, slots=True)
class OrderSnapshot:
    id: str
    version: int
    updated_at_ms: int
    status: str
    customer_identifier: str | None
    lines: tuple[LineSnapshot, ...] = ()


@dataclass(frozen=True, slots=True)
class ShipmentSnapshot:
    id: str
    version: int
    updated_at_ms: int
    order_id: str | None
    status: str
    tracking_number: str | None


@dataclass(frozen=True, slots=True)
class StockQuantity:
    location: str
    status: str  # the platform's inventory status word ("available", "quality-control", ...)
    quantity: Decimal


@dataclass(frozen=True, slots=True)
class InventorySnapshot:
    """One version of a SKU's stock: absolute quantities per (location, status)."""

    id: str
    version: int
    updated_at_ms: int
    sku: str
    quantities: tuple[StockQuantity, ...] = ()


Snapshot = OrderSnapshot | ShipmentSnapshot | InventorySnapshot
