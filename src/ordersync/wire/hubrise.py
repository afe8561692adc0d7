"""HubRise (seed 003), both directions.

Render: the hub's stored (MasonHub-shaped) documents -> HubRise orders, shipments and callback
events, in the location's time zone and currency. Where HubRise has a field, ours maps onto it
(`ref` is our `customer_identifier`, `customer` our shipping address, `service_type_ref` our
shipper service level, `items` our lines); where it has none, our own field is kept under its
own name (`billing_address`, `shipping_provider`, `delivery_days` as DOW, `version`,
`updated_at`, ...), so nothing the domain holds is lost.

Parse: a HubRise order or shipment as received -> its typed snapshot, with the same money,
decimal and time functions the hub reads request bodies with (`hubrise_values`), so both ends
refuse the same text. Times must carry their offset (a client does not know the location's
zone); an item without `line_number` is numbered by its position.
"""

from __future__ import annotations

from collections.abc import Callable
from decimal import Decimal
from typing import Any, Protocol, TypeVar

import orjson

from ordersync.domain.snapshots import LineSnapshot, OrderSnapshot, ShipmentSnapshot
from ordersync.domain.timestamps import parse_rfc3339_ms
from ordersync.domain.weekdays import format_dow
from ordersync.wire.fields import (
    Head,
    WireError,
    array,
    integer,
    mapping,
    member,
    optional_text,
    read_head,
    text,
)
from ordersync.wire.hubrise_values import (
    EXACT,
    format_decimal,
    format_money,
    format_time,
    parse_decimal,
    parse_money,
    parse_time,
    zone,
)
from ordersync.wire.hubrise_values import subtotal as line_subtotal

T = TypeVar("T")


class Place(Protocol):
    """A location as HubRise renders for it: its name, time zone and currency."""

    @property
    def name(self) -> str: ...
    @property
    def timezone(self) -> str: ...
    @property
    def currency(self) -> str: ...


class StoredEvent(Protocol):
    """A change of the hub's event log, with the entity's stored document (None: gone)."""

    @property
    def seq(self) -> int: ...
    @property
    def kind(self) -> str: ...
    @property
    def entity_id(self) -> str: ...
    @property
    def version(self) -> int: ...
    @property
    def event_type(self) -> str: ...
    @property
    def created_at(self) -> int: ...
    @property
    def doc(self) -> str | None: ...
    @property
    def private_ref(self) -> str | None: ...


STATUS_OUT = {
    "open": "new",
    "atWarehouse": "received",
    "inProcess": "in_preparation",
    "packed": "awaiting_shipment",
    "fulfilled": "in_delivery",
    "delivered": "completed",
    "canceled": "cancelled",
}


def render_order(doc: dict[str, Any], location: Place, private_ref: str | None) -> dict[str, Any]:
    tz, currency = zone(location.timezone), location.currency

    def at(text: str) -> str:
        return format_time(parse_rfc3339_ms(text), tz)

    items, total = [], Decimal(0)
    for line in doc["line_items"]:
        price, quantity = Decimal(line["unit_price"]), Decimal(line["quantity"])
        subtotal = Decimal(line_subtotal(price, quantity, currency).partition(" ")[0])
        total = EXACT.add(total, subtotal)
        items.append(
            {
                "line_number": line["line_number"],
                "product_name": line["sku_customer_identifier"],
                "sku_ref": line["sku_customer_identifier"],
                "price": format_money(price, currency),
                "quantity": format_decimal(quantity),
                "subtotal": format_money(subtotal, currency),
            }
        )
    days = doc.get("delivery_days")
    return {
        "id": doc["id"],
        "location_id": location.name,
        "private_ref": private_ref,
        "ref": doc["customer_identifier"],
        "status": STATUS_OUT[doc["status"]],
        "service_type": "delivery",
        "service_type_ref": doc["shipper_service_level"],
        "created_at": at(doc["created_at"]),
        "customer_notes": None,
        "items": items,
        "total": format_money(total, currency),
        "customer": _render_address(doc["shipping_address"]),
        # Ours, where HubRise has no field.
        "billing_address": _render_address(doc["billing_address"]),
        "delivery_days": None if days is None else format_dow(days),
        "shipping_provider": doc["shipping_provider"],
        "order_type": doc["order_type"],
        "priority": doc["priority"],
        "order_policy": doc["order_policy"],
        "pick_from": doc["pick_from"],
        "value_added_services": doc["value_added_services"],
        "shorts": [
            {
                "line_number": short["line_number"],
                "sku_ref": short["sku_customer_id"],
                "quantity": format_decimal(Decimal(short["quantity"])),
                "reason": short["reason"],
            }
            for short in doc.get("shorts", ())
        ],
        "failure": doc.get("failure"),
        "submitted_at": at(doc["submitted_at"]),
        "version": doc["version"],
        "updated_at": at(doc["updated_at"]),
    }


def _render_address(address: dict[str, Any]) -> dict[str, Any]:
    first, _, last = address["name"].partition(" ")
    return {
        "first_name": first,
        "last_name": last or None,
        "address_1": address["address1"],
        "address_2": address.get("address2"),
        "city": address["city"],
        "state": address["state"] or None,
        "postal_code": address["postal_code"],
        "country": address["country"],
    }


def render_shipment(doc: dict[str, Any], location: Place) -> dict[str, Any]:
    tz = zone(location.timezone)
    return {
        "id": doc["id"],
        "location_id": location.name,
        "order_id": doc["order_id"],
        "ref": doc["customer_identifier"],
        "status": doc["status"],
        "carrier": doc["carrier"],
        "service_level": doc["service_level"],
        "tracking_number": doc["tracking_number"],
        "shipped_at": None
        if doc.get("shipped_at") is None
        else format_time(parse_rfc3339_ms(doc["shipped_at"]), tz),
        "items": [
            {
                "line_number": line["line_number"],
                "sku_ref": line["sku_customer_identifier"],
                "quantity": format_decimal(Decimal(line["quantity"])),
                "lot_number": line.get("lot_number"),
            }
            for line in doc["lines"]
        ],
        "warehouse_location": doc.get("location"),
        "value_added_services": doc.get("value_added_services", []),
        "version": doc["version"],
        "created_at": format_time(parse_rfc3339_ms(doc["created_at"]), tz),
        "updated_at": format_time(parse_rfc3339_ms(doc["updated_at"]), tz),
    }


def render_event(event: StoredEvent, location: Place) -> dict[str, Any]:
    state: dict[str, Any] | None = None
    order_id = event.entity_id
    if event.doc is not None:
        doc = orjson.loads(event.doc)
        if event.kind == "order":
            state = render_order(doc, location, event.private_ref)
        else:
            state, order_id = render_shipment(doc, location), doc["order_id"]
    return {
        "id": str(event.seq),
        "created_at": format_time(event.created_at, zone(location.timezone)),
        "resource_type": event.kind,
        "event_type": event.event_type,
        "resource_id": event.entity_id,
        "order_id": order_id,
        "location_id": location.name,
        "version": event.version,
        "new_state": state,
    }


def head(document: Any) -> Head:
    return read_head(document, "updated_at", instant)


def instant(value: Any, path: str) -> int:
    """UTC milliseconds of a HubRise time, which must carry its offset."""
    try:
        return parse_time(value, None)
    except ValueError as exc:
        raise WireError(path, str(exc)) from None


def parse_order(document: Any) -> OrderSnapshot:
    top = head(document)
    doc: dict[str, Any] = document
    items = array(doc.get("items"), "items")
    return OrderSnapshot(
        *top,
        text(member(doc, "status"), "status"),
        optional_text(doc.get("ref"), "ref"),
        tuple(_item(item, i) for i, item in enumerate(items)),
    )


def _item(value: Any, index: int) -> LineSnapshot:
    path = f"items[{index}]"
    item = mapping(value, path)
    number = item.get("line_number")
    price = _optional(parse_money, item.get("price"), path, ".price")
    return LineSnapshot(
        index + 1 if number is None else integer(number, path, ".line_number"),
        optional_text(item.get("sku_ref"), path, ".sku_ref"),
        _optional(parse_decimal, item.get("quantity"), path, ".quantity"),
        None if price is None else price[0],
        None if price is None else price[1],
    )


def _optional(parse: Callable[[Any], T], value: Any, path: str, key: str) -> T | None:
    if value is None:
        return None
    try:
        return parse(value)
    except ValueError as exc:
        raise WireError(path + key, str(exc)) from None


def parse_shipment(document: Any) -> ShipmentSnapshot:
    top = head(document)
    doc: dict[str, Any] = document
    return ShipmentSnapshot(
        *top,
        optional_text(doc.get("order_id"), "order_id"),
        text(member(doc, "status"), "status"),
        optional_text(doc.get("tracking_number"), "tracking_number"),
    )
