"""Inventory (the `inventory` kind), both directions, for MasonHub and HubRise.

The hub stores each SKU's stock as an `InventoryItem` (`ordersync.domain.inventory_item`).

MasonHub renders it as a `sku_snapshot` (OpenAPI shape): `customer_identifier` (the SKU code),
`sku_id`, `total_available_to_sell`, `total_units` and `status_counts[]` of
`{inventory_location_id, inventory_status, quantity}`, quantities as JSON integers (MasonHub's
counts are whole units), absolute ("never deltas"), every status of every location that has
stock rows, zeros included. ordersync extension fields: `version`, `updated_at` (RFC 3339) and
`lots[]` (the per-lot rows: lot number, expiry, receipt, purchase order, counts).

HubRise renders one entry per (SKU, location) of a catalog's location inventory:
`{sku_ref, stock, expires_at}`, `stock` the available units as a decimal string, `expires_at`
null (HubRise's `expires_at` is when a stock value lapses; ordersync's stock does not lapse).
ordersync extension fields: `sku_id`, `version`, `updated_at` of the SKU's inventory version.
"""

from __future__ import annotations

from decimal import Decimal
from typing import TYPE_CHECKING, Any

from ordersync.domain.snapshots import InventorySnapshot, StockQuantity
from ordersync.wire.fields import (
    Head,
    WireError,
    array,
    identifier,
    integer,
    mapping,
    member,
    optional_text,
    rfc3339_ms,
    text,
)
from ordersync.wire.hubrise_values import format_decimal, parse_decimal

if TYPE_CHECKING:
    from ordersync.domain.inventory_item import InventoryItem


# -- MasonHub ----------------------------------------------------------------------------------


def render_sku_snapshot(item: InventoryItem) -> dict[str, Any]:
    return {
        "customer_identifier": item.sku,
        "sku_id": item.id,
        "total_available_to_sell": item.available_to_sell(),
        "total_units": item.total_units(),
        "status_counts": [
            {"inventory_location_id": location, "inventory_status": str(status), "quantity": n}
            for (location, status), n in item.counts().items()
        ],
        "version": item.version,
        "updated_at": item.updated_at,
        "lots": [line.model_dump(mode="json") for line in item.stock],
    }


def sku_snapshot_head(document: Any) -> Head:
    doc = mapping(document, "document")
    return Head(
        identifier(member(doc, "sku_id"), "sku_id"),
        integer(member(doc, "version"), "version"),
        rfc3339_ms(member(doc, "updated_at"), "updated_at"),
    )


def parse_sku_snapshot(document: Any) -> InventorySnapshot:
    top = sku_snapshot_head(document)
    doc: dict[str, Any] = document
    counts = array(member(doc, "status_counts"), "status_counts")
    return InventorySnapshot(
        *top,
        text(member(doc, "customer_identifier"), "customer_identifier"),
        tuple(_status_count(c, f"status_counts[{i}]") for i, c in enumerate(counts)),
    )


def _status_count(value: Any, path: str) -> StockQuantity:
    count = mapping(value, path)
    return StockQuantity(
        text(member(count, "inventory_location_id", path), path, ".inventory_location_id"),
        text(member(count, "inventory_status", path), path, ".inventory_status"),
        Decimal(_count(member(count, "quantity", path), path, ".quantity")),
    )


def _count(value: Any, path: str, key: str) -> int:
    number = integer(value, path, key)
    if number < 0:
        raise WireError(path + key, f"{number} is negative")
    return number


# -- HubRise -----------------------------------------------------------------------------------


def render_hubrise_inventory(item: InventoryItem, location: str) -> dict[str, Any]:
    return {
        "sku_ref": item.sku,
        "stock": format_decimal(Decimal(item.available_to_sell(location))),
        "expires_at": None,
        "sku_id": item.id,
        "version": item.version,
        "updated_at": item.updated_at,
    }


def parse_hubrise_inventory(document: Any, location: str) -> InventorySnapshot:
    """One entry of a location's inventory -> the snapshot of that location's `available`
    units (the only status HubRise knows)."""
    doc = mapping(document, "document")
    top = Head(
        identifier(member(doc, "sku_id"), "sku_id"),
        integer(member(doc, "version"), "version"),
        rfc3339_ms(member(doc, "updated_at"), "updated_at"),
    )
    try:
        stock = parse_decimal(member(doc, "stock"))
    except ValueError as exc:
        raise WireError("stock", str(exc)) from None
    optional_text(doc.get("expires_at"), "expires_at")
    return InventorySnapshot(
        *top,
        text(member(doc, "sku_ref"), "sku_ref"),
        (StockQuantity(location, "available", stock),),
    )
