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
The ordersync extension listing of a location's catalogue changes (`GET /v1/location/inventory`)
has one entry per SKU: `stock` summed over locations and `locations[]` of
`{location_id, stock}`, so that one document is one version of the SKU.
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


def inventory_head(document: Any) -> Head:
    """`sku_id`, `version` and `updated_at`: the head of every inventory document."""
    doc = mapping(document, "document")
    return Head(
        identifier(member(doc, "sku_id"), "sku_id"),
        integer(member(doc, "version"), "version"),
        rfc3339_ms(member(doc, "updated_at"), "updated_at"),
    )


def parse_sku_snapshot(document: Any) -> InventorySnapshot:
    top = inventory_head(document)
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


def render_hubrise_inventory(item: InventoryItem, location: str | None) -> dict[str, Any]:
    """The entry of `item` at `location` (None: every location's units summed)."""
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
    top = inventory_head(document)
    doc: dict[str, Any] = document
    optional_text(doc.get("expires_at"), "expires_at")
    return InventorySnapshot(
        *top,
        text(member(doc, "sku_ref"), "sku_ref"),
        (StockQuantity(location, "available", _stock(member(doc, "stock"), "stock")),),
    )


def render_hubrise_catalog_entry(item: InventoryItem) -> dict[str, Any]:
    return render_hubrise_inventory(item, None) | {
        "locations": [
            {
                "location_id": location,
                "stock": format_decimal(Decimal(item.available_to_sell(location))),
            }
            for location in item.locations()
        ]
    }


def parse_hubrise_catalog_entry(document: Any) -> InventorySnapshot:
    """A catalogue entry -> the snapshot of the SKU's `available` units per location."""
    top = inventory_head(document)
    doc: dict[str, Any] = document
    locations = array(member(doc, "locations"), "locations")
    return InventorySnapshot(
        *top,
        text(member(doc, "sku_ref"), "sku_ref"),
        tuple(_location_stock(entry, f"locations[{i}]") for i, entry in enumerate(locations)),
    )


def _location_stock(value: Any, path: str) -> StockQuantity:
    entry = mapping(value, path)
    return StockQuantity(
        text(member(entry, "location_id", path), path, ".location_id"),
        "available",
        _stock(member(entry, "stock", path), path + ".stock"),
    )


def _stock(value: Any, path: str) -> Decimal:
    try:
        return parse_decimal(value)
    except ValueError as exc:
        raise WireError(path, str(exc)) from None
