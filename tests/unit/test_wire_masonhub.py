"""The MasonHub codec: the hub's stored documents parse back to the domain's snapshot, strictly."""

from __future__ import annotations

from typing import Any

import orjson
import pytest
from hypothesis import given, settings

from ordersync.domain import Order, Shipment, parse_rfc3339_ms
from ordersync.domain.snapshots import LineSnapshot, OrderSnapshot, ShipmentSnapshot
from ordersync.wire import WireError, masonhub
from tests.unit.wire_strategies import orders, shipments


def order_snapshot(order: Order) -> OrderSnapshot:
    return OrderSnapshot(
        order.id,
        order.version,
        parse_rfc3339_ms(order.updated_at),
        order.status.value,
        order.customer_identifier,
        tuple(
            LineSnapshot(
                li.line_number or 0, li.sku_customer_identifier, li.quantity, li.unit_price
            )
            for li in order.line_items
        ),
    )


@settings(max_examples=150, deadline=None)
@given(orders())
def test_an_order_round_trips(order: Order) -> None:
    """Rendered as the store keeps it, sent as JSON and parsed: the domain order's snapshot."""
    document = masonhub.render_order(order)
    assert document == orjson.loads(order.model_dump_json())  # the store's shape
    assert masonhub.parse_order(orjson.loads(orjson.dumps(document))) == order_snapshot(order)


@settings(max_examples=100, deadline=None)
@given(shipments())
def test_a_shipment_round_trips(shipment: Shipment) -> None:
    """Rendered, sent as JSON and parsed: the domain shipment's snapshot."""
    received = orjson.loads(orjson.dumps(masonhub.render_shipment(shipment)))
    assert masonhub.parse_shipment(received) == ShipmentSnapshot(
        shipment.id,
        shipment.version,
        parse_rfc3339_ms(shipment.updated_at),
        shipment.order_id,
        shipment.status.value,
        shipment.tracking_number,
    )


def document(line_changes: dict[str, Any] | None = None, **changes: Any) -> dict[str, Any]:
    line = {"line_number": 1, "sku_customer_identifier": "S", "quantity": "2", "unit_price": "1"}
    line |= line_changes or {}
    doc: dict[str, Any] = {
        "id": "o-1",
        "version": 2,
        "updated_at": "2024-01-01T00:00:00.000Z",
        "status": "open",
        "customer_identifier": "C",
        "line_items": [line],
    }
    return doc | changes


@pytest.mark.parametrize(
    "changes,field",
    [
        ({"version": "2"}, "version"),
        ({"version": True}, "version"),
        ({"updated_at": "yesterday"}, "updated_at"),
        ({"status": None}, "status"),
        ({"customer_identifier": 7}, "customer_identifier"),
        ({"line_items": {"1": {}}}, "line_items"),
        ({"line_changes": {"quantity": 0.1}}, "line_items[0].quantity"),
        ({"line_changes": {"quantity": "NaN"}}, "line_items[0].quantity"),
        ({"line_changes": {"unit_price": "Infinity"}}, "line_items[0].unit_price"),
        ({"line_changes": {"unit_price": "1,5"}}, "line_items[0].unit_price"),
        ({"line_changes": {"line_number": "1"}}, "line_items[0].line_number"),
        (
            {"line_changes": {"sku_customer_identifier": ["S"]}},
            "line_items[0].sku_customer_identifier",
        ),
    ],
)
def test_a_malformed_order_names_its_field(changes: dict[str, Any], field: str) -> None:
    """Anything that is not the documented type is refused, naming the field at fault."""
    with pytest.raises(WireError) as refused:
        masonhub.parse_order(document(**changes))
    assert refused.value.field == field
    assert str(refused.value).startswith(f"{field}: ")


def test_a_missing_field_is_named() -> None:
    """An absent required field is named too (a null optional one is fine)."""
    doc = document(customer_identifier=None)
    del doc["line_items"][0]["line_number"]
    with pytest.raises(WireError, match=r"^line_items\[0\]\.line_number: is missing$"):
        masonhub.parse_order(doc)
