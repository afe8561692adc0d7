"""MasonHub (seeds 000 and 001): the hub's own document shape, both directions.

Render: the hub stores each order and shipment as its domain model's JSON
(`Order.model_dump_json()` in `store/store.py`) and the MasonHub routes serve those documents
as stored; `render_order` / `render_shipment` name that shape. Parse: a document as a client
receives it -> its typed snapshot; amounts are decimal text (an exact JSON number is taken,
a float refused).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Any

from ordersync.domain.snapshots import LineSnapshot, OrderSnapshot, ShipmentSnapshot
from ordersync.wire.fields import (
    Head,
    array,
    exact_decimal,
    integer,
    mapping,
    member,
    optional_text,
    read_head,
    rfc3339_ms,
    text,
)

if TYPE_CHECKING:  # the models only: parsing needs no pydantic
    from ordersync.domain import Order, Shipment


def render_order(order: Order) -> dict[str, Any]:
    return order.model_dump(mode="json")


def render_shipment(shipment: Shipment) -> dict[str, Any]:
    return shipment.model_dump(mode="json")


def head(document: Any) -> Head:
    return read_head(document, "updated_at", rfc3339_ms)


def parse_order(document: Any) -> OrderSnapshot:
    top = head(document)
    doc: dict[str, Any] = document
    items = array(doc.get("line_items"), "line_items")
    return OrderSnapshot(
        *top,
        text(member(doc, "status"), "status"),
        optional_text(doc.get("customer_identifier"), "customer_identifier"),
        tuple([_line(item, f"line_items[{i}]") for i, item in enumerate(items)]),
    )


def _line(value: Any, path: str) -> LineSnapshot:
    line = mapping(value, path)
    return LineSnapshot(
        integer(member(line, "line_number", path), path, ".line_number"),
        optional_text(line.get("sku_customer_identifier"), path, ".sku_customer_identifier"),
        exact_decimal(line.get("quantity"), path, ".quantity"),
        exact_decimal(line.get("unit_price"), path, ".unit_price"),
    )


def parse_shipment(document: Any) -> ShipmentSnapshot:
    top = head(document)
    doc: dict[str, Any] = document
    return ShipmentSnapshot(
        *top,
        optional_text(doc.get("order_id"), "order_id"),
        text(member(doc, "status"), "status"),
        optional_text(doc.get("tracking_number"), "tracking_number"),
    )
