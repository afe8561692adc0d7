"""Hypothesis strategies for the wire round-trips: domain orders and shipments as the hub stores
them, with many-digit decimal amounts, unicode SKUs and names, and optional fields left out."""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal
from typing import Any

from hypothesis import strategies as st

from ordersync.domain import (
    Order,
    OrderPolicy,
    OrderStatus,
    Shipment,
    ShipmentStatus,
    format_rfc3339,
)

YEAR_2000_MS = 946_684_800_000
YEAR_2100_MS = 4_102_444_800_000

# Printable text of any script (no surrogates, no control characters: JSON would escape those
# and the domain strips surrounding whitespace).
_CHARS = st.characters(codec="utf-8", categories=("L", "M", "N", "P", "S", "Zs"))


def words(max_size: int) -> st.SearchStrategy[str]:
    return st.text(_CHARS, min_size=1, max_size=max_size).filter(
        lambda s: s.strip() == s and bool(s)
    )


instants = st.integers(YEAR_2000_MS, YEAR_2100_MS)


@st.composite
def amounts(draw: st.DrawFn, *, positive: bool) -> Decimal:
    """Up to 18 significant digits and 12 decimal places, as the domain allows."""
    digits = draw(st.integers(1 if positive else 0, 10**18 - 1))
    places = draw(st.integers(0, 12))
    return Decimal(digits).scaleb(-places)


@st.composite
def addresses(draw: st.DrawFn) -> dict[str, Any]:
    return {
        "name": draw(words(40)),
        "address1": draw(words(40)),
        "address2": draw(st.none() | words(40)),
        "city": draw(words(30)),
        "state": draw(st.just("") | words(20)),
        "postal_code": draw(words(10)),
        "country": draw(st.sampled_from(["GB", "FR", "DE", "US", "JP", "IN"])),
    }


@st.composite
def orders(draw: st.DrawFn) -> Order:
    created = draw(instants)
    updated = draw(st.integers(created, YEAR_2100_MS))
    count = draw(st.integers(1, 5))
    numbers = draw(st.lists(st.integers(1, 10_000), min_size=count, max_size=count, unique=True))
    lines = [
        {
            "line_number": number,
            "sku_customer_identifier": draw(words(60)),
            "quantity": draw(amounts(positive=True)),
            "unit_price": draw(amounts(positive=False)),
            "updated_at": draw(st.none() | st.just(format_rfc3339(updated))),
        }
        for number in numbers
    ]
    return Order.model_validate(
        {
            "id": draw(st.uuids()).hex,
            "version": draw(st.integers(1, 2**31 - 1)),
            "status": draw(st.sampled_from(OrderStatus)),
            "created_at": format_rfc3339(created),
            "updated_at": format_rfc3339(updated),
            "updated_by": draw(st.none() | words(20)),
            "customer_identifier": draw(words(100)),
            "order_type": draw(st.sampled_from(["customer", "wholesale"])),
            "priority": draw(st.integers(0, 1000)),
            "shipping_provider": draw(words(20)),
            "shipper_service_level": draw(words(20)),
            "shipping_address": draw(addresses()),
            "billing_address": draw(addresses()),
            "submitted_at": format_rfc3339(draw(instants)),
            "line_items": lines,
            "order_policy": draw(st.sampled_from(OrderPolicy)),
            "delivery_days": draw(
                st.none() | st.lists(st.integers(1, 7), min_size=1, max_size=7, unique=True)
            ),
        }
    )


@st.composite
def shipments(draw: st.DrawFn) -> Shipment:
    created = draw(instants)
    updated = draw(st.integers(created, YEAR_2100_MS))
    return Shipment.model_validate(
        {
            "id": draw(st.uuids()).hex,
            "order_id": draw(st.uuids()).hex,
            "customer_identifier": draw(words(100)),
            "carrier": draw(words(20)),
            "service_level": draw(words(20)),
            "tracking_number": draw(words(60)),
            "status": draw(st.sampled_from(ShipmentStatus)),
            "shipped_at": format_rfc3339(draw(instants)),
            "version": draw(st.integers(1, 2**31 - 1)),
            "created_at": format_rfc3339(created),
            "updated_at": format_rfc3339(updated),
            "lines": [
                {
                    "line_number": n,
                    "sku_customer_identifier": draw(words(60)),
                    "quantity": draw(amounts(positive=True)),
                }
                for n in range(1, draw(st.integers(1, 3)) + 1)
            ],
        }
    )


@dataclass(frozen=True)
class Place:
    """A HubRise location as the codec needs it."""

    name: str
    timezone: str
    currency: str


places = st.builds(
    Place,
    name=words(20),
    timezone=st.sampled_from(
        ["UTC", "Europe/Paris", "America/New_York", "Asia/Kolkata", "America/St_Johns"]
    ),
    currency=st.sampled_from(["EUR", "GBP", "USD", "JPY"]),
)
