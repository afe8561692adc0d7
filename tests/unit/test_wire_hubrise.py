"""The HubRise codec: what the hub renders parses back to the domain's snapshot, and the hub
and the agent read money and decimals with one strictness."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import ROUND_HALF_UP, Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given, settings
from pydantic import ValidationError

from ordersync.domain import Order, Shipment, parse_rfc3339_ms
from ordersync.domain.snapshots import LineSnapshot, OrderSnapshot, ShipmentSnapshot
from ordersync.hub.dialects.hubrise_shapes import OrderIn, new_order
from ordersync.hub.errors import ApiError
from ordersync.store.hubrise import Location
from ordersync.wire import WireError, hubrise, masonhub
from ordersync.wire.hubrise_values import format_time, parse_time, zone
from tests.unit.wire_strategies import Place, orders, places, shipments

# Our statuses in HubRise's words (seed 003).
ORDER_STATUS = {
    "open": "new",
    "atWarehouse": "received",
    "inProcess": "in_preparation",
    "packed": "awaiting_shipment",
    "fulfilled": "in_delivery",
    "delivered": "completed",
    "canceled": "cancelled",
}
CENT = Decimal("0.01")


def over_the_wire(document: dict[str, Any]) -> Any:
    return orjson.loads(orjson.dumps(document))


@settings(max_examples=150, deadline=None)
@given(orders(), places)
def test_an_order_round_trips(order: Order, place: Place) -> None:
    """The hub's rendering in the location's zone and currency, parsed: the domain order's
    snapshot, prices to the cent (HubRise has no sub-cent money), quantities exact."""
    rendered = hubrise.render_order(masonhub.render_order(order), place, None)
    assert hubrise.parse_order(over_the_wire(rendered)) == OrderSnapshot(
        order.id,
        order.version,
        parse_rfc3339_ms(order.updated_at),
        ORDER_STATUS[order.status.value],
        order.customer_identifier,
        tuple(
            LineSnapshot(
                li.line_number or 0,
                li.sku_customer_identifier,
                li.quantity,
                li.unit_price.quantize(CENT, rounding=ROUND_HALF_UP),
                place.currency,
            )
            for li in order.line_items
        ),
    )


def shipment_snapshot(shipment: Shipment) -> ShipmentSnapshot:
    return ShipmentSnapshot(
        shipment.id,
        shipment.version,
        parse_rfc3339_ms(shipment.updated_at),
        shipment.order_id,
        shipment.status.value,
        shipment.tracking_number,
    )


@settings(max_examples=100, deadline=None)
@given(shipments(), places)
def test_a_shipment_round_trips(shipment: Shipment, place: Place) -> None:
    """The hub's rendering of the stored shipment, parsed: the domain shipment's snapshot."""
    rendered = hubrise.render_shipment(masonhub.render_shipment(shipment), place)
    assert hubrise.parse_shipment(over_the_wire(rendered)) == shipment_snapshot(shipment)


@dataclass(frozen=True)
class StoredEvent:
    seq: int
    kind: str
    entity_id: str
    version: int
    event_type: str
    created_at: int
    doc: str | None
    private_ref: str | None


@settings(max_examples=50, deadline=None)
@given(shipments(), places)
def test_a_callback_event_carries_the_state_the_codec_reads(
    shipment: Shipment, place: Place
) -> None:
    """An event's `new_state` is the entity's rendering; a gone entity has none."""
    event = StoredEvent(
        7, "shipment", shipment.id, shipment.version, "update", 1, shipment.model_dump_json(), None
    )
    rendered = over_the_wire(hubrise.render_event(event, place))
    assert (rendered["resource_type"], rendered["order_id"]) == ("shipment", shipment.order_id)
    assert hubrise.parse_shipment(rendered["new_state"]) == shipment_snapshot(shipment)
    gone = over_the_wire(
        hubrise.render_event(StoredEvent(*[*vars(event).values()][:6], None, None), place)
    )
    assert gone["new_state"] is None


LOCATION = Location(account_id=1, name="loc", timezone="Europe/Paris", currency="EUR")


def hub_refusal(price: Any, quantity: Any) -> list[str]:
    """The fields the hub names when it refuses this item in a `POST /location/orders` body;
    none when it takes it."""
    body = {
        "ref": "R-1",
        "service_type_ref": "ground",
        "shipping_provider": "UPS",
        "customer": {
            "first_name": "Ada",
            "address_1": "1 Rue",
            "city": "Paris",
            "postal_code": "75001",
            "country": "FR",
        },
        "items": [{"sku_ref": "S", "price": price, "quantity": quantity}],
    }
    try:
        new_order(OrderIn.model_validate(body), LOCATION, 0)
    except ApiError as exc:
        return [field for field, _ in exc.errors]
    except ValidationError as exc:
        return [".".join(str(p) for p in e["loc"]) for e in exc.errors()]
    return []


def agent_refusal(price: Any, quantity: Any) -> str | None:
    """The field the agent names when it cannot read this item in an order it receives."""
    document = {
        "id": "h-1",
        "version": 1,
        "updated_at": "2024-01-01T01:00:00+01:00",
        "status": "new",
        "items": [{"line_number": 1, "sku_ref": "S", "price": price, "quantity": quantity}],
    }
    try:
        hubrise.parse_order(document)
    except WireError as exc:
        return exc.field
    return None


def refused_at(fields: list[str], field: str) -> bool:
    """The hub named this field (pydantic may add the union member it tried after it)."""
    return bool(fields) and all(f == field or f.startswith(f"{field}.") for f in fields)


REFUSED_MONEY = ["8.9 EUR", "8.90 eur", "8.900 EUR", "8.90EUR", "+1.00 EUR", "1e3 EUR", 1e3, 8.9]
REFUSED_DECIMALS = ["1e3", "1E+2", " 1", ".5", "1.5.2", "abc", "", 1.5, True]


@pytest.mark.parametrize("price", REFUSED_MONEY)
def test_money_the_hub_refuses_the_agent_refuses(price: Any) -> None:
    """Money HubRise would not write ("8.9 EUR", lower-case currency, a JSON number, ...) is
    refused on input by the hub and on parse by the agent alike (one function)."""
    assert refused_at(hub_refusal(price, "1"), "items.0.price")
    assert agent_refusal(price, "1") == "items[0].price"


@pytest.mark.parametrize("quantity", REFUSED_DECIMALS)
def test_decimals_the_hub_refuses_the_agent_refuses(quantity: Any) -> None:
    """Decimal text other than -?digits[.digits] (or a JSON integer) is refused by both ends."""
    assert refused_at(hub_refusal("1.00 EUR", quantity), "items.0.quantity")
    assert agent_refusal("1.00 EUR", quantity) == "items[0].quantity"


@pytest.mark.parametrize(
    "price,quantity",
    [("8.90 EUR", "1"), ("0.00 EUR", "2.5"), ("1.00 EUR", 2), ("3.10 EUR", "0.001")],
)
def test_what_the_hub_takes_the_agent_reads(price: Any, quantity: Any) -> None:
    """Valid HubRise money and decimals are read by both ends."""
    assert (hub_refusal(price, quantity), agent_refusal(price, quantity)) == ([], None)


def test_a_refused_price_names_its_item() -> None:
    """The agent's error names the item and field, and quotes the value."""
    document = {
        "id": "h-1",
        "version": 1,
        "updated_at": "2024-01-01T01:00:00+01:00",
        "status": "new",
        "items": [{"sku_ref": "S", "price": "8.90 EUR"}, {"sku_ref": "T", "price": "8.9 EUR"}],
    }
    with pytest.raises(WireError, match=r"^items\[1\]\.price: '8\.9 EUR' is not a valid monetary"):
        hubrise.parse_order(document)


def test_a_time_without_offset_is_refused_by_the_agent() -> None:
    """The agent does not know the location's zone: a HubRise time must carry its offset."""
    with pytest.raises(WireError, match=r"^updated_at: .* has no UTC offset"):
        hubrise.head({"id": "h-1", "version": 1, "updated_at": "2024-01-01T01:00:00"})


def test_a_time_keeps_its_millisecond_through_format_and_parse() -> None:
    """16:38:58.853 is 1081442338853 ms, not ...852: the float timestamp (x 1000) is not
    truncated (found by the order round-trip)."""
    stamp = 1_081_442_338_853
    text = format_time(stamp, zone("Europe/Paris"))
    assert text == "2004-04-08T18:38:58.853+02:00"
    assert parse_time(text, None) == stamp
    assert hubrise.head({"id": "h", "version": 1, "updated_at": text}).updated_at_ms == stamp
