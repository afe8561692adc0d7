"""The Tradecloud codec: what the hub renders parses back to the domain's snapshot; decimals
are exact whatever their digits, and never go through float."""

from __future__ import annotations

import json
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from ordersync.domain import Order, Shipment, parse_rfc3339_ms
from ordersync.domain.snapshots import LineSnapshot, OrderSnapshot, ShipmentSnapshot
from ordersync.wire import WireError, masonhub, tradecloud
from tests.unit.wire_strategies import amounts, orders, shipments

# processStatus/logisticsStatus of each of our statuses, as seeds 002 and 004 name them.
ORDER_STATUS = {
    "open": "Issued/Open",
    "atWarehouse": "InProgress/Open",
    "inProcess": "Confirmed/Produced",
    "packed": "Confirmed/ReadyToShip",
    "fulfilled": "Confirmed/Shipped",
    "delivered": "Completed/Delivered",
    "canceled": "Cancelled/Cancelled",
}
SHIPMENT_STATUS = {
    "manifested": "ReadyToShip",
    "shipped": "Shipped",
    "in_transit": "InTransit",
    "delivered": "Delivered",
}


def received(document: dict[str, Any]) -> Any:
    """The document as the agent's client decodes Tradecloud: numbers with a fraction as
    Decimal (`exact_numbers`)."""
    return json.loads(orjson.dumps(document), parse_float=Decimal)


@settings(max_examples=150, deadline=None)
@given(orders())
def test_an_order_round_trips(order: Order) -> None:
    """The hub's rendering of the stored order, parsed: the domain order's snapshot."""
    rendered = tradecloud.render_order(masonhub.render_order(order))
    assert tradecloud.parse_order(received(rendered)) == OrderSnapshot(
        order.id,
        order.version,
        parse_rfc3339_ms(order.updated_at),
        ORDER_STATUS[order.status.value],
        order.customer_identifier,
        tuple(
            LineSnapshot(
                li.line_number or 0, li.sku_customer_identifier, li.quantity, li.unit_price
            )
            for li in order.line_items
        ),
    )


@settings(max_examples=100, deadline=None)
@given(shipments())
def test_a_shipment_round_trips(shipment: Shipment) -> None:
    """The hub's rendering of the stored shipment, parsed: the domain shipment's snapshot."""
    rendered = tradecloud.render_shipment(masonhub.render_shipment(shipment))
    assert tradecloud.parse_shipment(received(rendered)) == ShipmentSnapshot(
        shipment.id,
        shipment.version,
        parse_rfc3339_ms(shipment.updated_at),
        shipment.order_id,
        SHIPMENT_STATUS[shipment.status.value],
        shipment.tracking_number,
    )


def order_text(quantity: str, price: str) -> bytes:
    """An order as real Tradecloud sends it: amounts as JSON numbers."""
    return (
        b'{"id": "o-1", "version": 1, "lastUpdatedAt": "2024-01-01T00:00:00.000Z",'
        b' "status": {"processStatus": "Issued", "logisticsStatus": "Open"},'
        b' "lines": [{"buyerLine": {"position": "0001", "item": {"number": "S"},'
        b' "quantity": ' + quantity.encode() + b', "netPrice": ' + price.encode() + b"}}]}"
    )


@settings(max_examples=200, deadline=None)
@given(amounts(positive=True), amounts(positive=False), st.booleans())
def test_json_numbers_stay_exact_decimals(
    quantity: Decimal, price: Decimal, exponent: bool
) -> None:
    """Amounts sent as JSON numbers of any length (or in exponent form) reach the snapshot as
    the exact Decimal, and the kept document writes the same number back."""
    texts = [f"{a:e}" if exponent else f"{a:f}" for a in (quantity, price)]
    document = json.loads(order_text(*texts), parse_float=Decimal)
    (line,) = tradecloud.parse_order(document).lines
    assert (line.quantity, line.unit_price) == (quantity, price)
    assert type(line.quantity) is Decimal and type(line.unit_price) is Decimal
    kept = json.loads(orjson.dumps(tradecloud.as_received(document)), parse_float=Decimal)
    assert kept["lines"][0]["buyerLine"]["quantity"] == quantity


def test_a_float_decoded_amount_is_refused_never_rounded() -> None:
    """A document decoded with floats (`orjson.loads`) has lost exactness: refused, naming the
    field, instead of turning 0.1 into 0.1000000000000000055511151231257827."""
    with pytest.raises(WireError, match="float") as refused:
        tradecloud.parse_order(orjson.loads(order_text("0.1", "1")))
    assert refused.value.field == "lines[0].buyerLine.quantity"


@pytest.mark.parametrize(
    "path,value,field",
    [
        (("status",), None, "status"),
        (("status", "processStatus"), 3, "status.processStatus"),
        (("lines", 0, "buyerLine", "position"), "first", "lines[0].buyerLine.position"),
        (("lines", 0, "buyerLine", "netPrice"), "NaN", "lines[0].buyerLine.netPrice"),
        (("lines", 0, "buyerLine", "netPrice"), True, "lines[0].buyerLine.netPrice"),
        (("lines", 0, "buyerLine", "item"), "S", "lines[0].buyerLine.item"),
        (("lastUpdatedAt",), 1_704_067_200_000, "lastUpdatedAt"),
    ],
)
def test_a_malformed_order_names_its_field(
    path: tuple[str | int, ...], value: Any, field: str
) -> None:
    """Anything that is not the documented type is refused, naming the field at fault."""
    document = json.loads(order_text("1", "2"), parse_float=Decimal)
    parent = document
    for step in path[:-1]:
        parent = parent[step]
    parent[path[-1]] = value
    with pytest.raises(WireError) as refused:
        tradecloud.parse_order(document)
    assert refused.value.field == field
