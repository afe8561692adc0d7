"""The inventory codecs (`ordersync.wire.inventory`): what the hub renders, the agent reads back
to the same quantities, for MasonHub sku_snapshots and HubRise entries; and what it cannot read
is a WireError naming the field."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from typing import Any

import orjson
import pytest
from hypothesis import given
from hypothesis import strategies as st

from ordersync.domain.inventory import StockUnit
from ordersync.domain.inventory_item import InventoryItem, StockLine
from ordersync.domain.timestamps import parse_rfc3339_ms
from ordersync.wire import WireError
from ordersync.wire.inventory import (
    parse_hubrise_catalog_entry,
    parse_hubrise_inventory,
    parse_sku_snapshot,
    render_hubrise_catalog_entry,
    render_hubrise_inventory,
    render_sku_snapshot,
)

codes = st.text(st.characters(codec="utf-8", exclude_characters="\x00"), min_size=1, max_size=8)
counts = st.integers(0, 10**9)
lines = st.builds(
    StockLine,
    location=st.sampled_from(["EAST", "WEST", "NORTH"]),
    lot_number=st.none() | st.sampled_from(["L1", "L2"]),
    expires_on=st.none() | st.dates(date(2020, 1, 1), date(2040, 1, 1)),
    available=counts,
    allocated=counts,
    backordered=counts,
    damaged=counts,
    quality_control=counts,
)


@st.composite
def items(draw: st.DrawFn) -> InventoryItem:
    stock = draw(st.lists(lines, max_size=6, unique_by=lambda x: (x.location, x.lot_number)))
    return InventoryItem(
        id=draw(st.uuids()).hex,
        sku=draw(codes),
        version=draw(st.integers(1, 10**6)),
        created_at="2026-01-01T00:00:00.000Z",
        updated_at="2026-01-02T03:04:05.678Z",
        stock=tuple(stock),
    )


def _over_the_wire(document: dict[str, Any]) -> Any:
    return orjson.loads(orjson.dumps(document))


@given(items())
def test_a_sku_snapshot_reads_back_as_the_items_counts(item: InventoryItem) -> None:
    """Every (location, status) count of the item, summed over lots, comes back exactly, with
    the item's id, version and updated_at."""
    rendered = render_sku_snapshot(item)
    snapshot = parse_sku_snapshot(_over_the_wire(rendered))
    assert (snapshot.id, snapshot.version, snapshot.sku) == (item.id, item.version, item.sku)
    assert snapshot.updated_at_ms == parse_rfc3339_ms(item.updated_at)
    got = {(q.location, q.status): q.quantity for q in snapshot.quantities}
    assert got == {(loc, str(status)): Decimal(n) for (loc, status), n in item.counts().items()}
    assert rendered["total_available_to_sell"] == sum(line.available for line in item.stock)


@given(items())
def test_a_hubrise_catalog_entry_reads_back_as_available_units_per_location(
    item: InventoryItem,
) -> None:
    """HubRise's `stock` is the available units, per location in the extension listing and
    summed in the entry; both are decimal strings that read back exactly."""
    rendered = render_hubrise_catalog_entry(item)
    assert isinstance(rendered["stock"], str)
    snapshot = parse_hubrise_catalog_entry(_over_the_wire(rendered))
    assert {q.location: q.quantity for q in snapshot.quantities} == {
        loc: Decimal(item.available_to_sell(loc)) for loc in item.locations()
    }
    assert {q.status for q in snapshot.quantities} <= {"available"}
    for location in item.locations():
        entry = parse_hubrise_inventory(
            _over_the_wire(render_hubrise_inventory(item, location)), location
        )
        assert entry.quantities[0].quantity == Decimal(item.available_to_sell(location))


def test_stock_lines_and_units_convert_both_ways() -> None:
    """A StockLine of a unit gives the unit back (the doc the hub stores is lossless)."""
    unit = StockUnit("A", "EAST", "L1", expires_on=date(2030, 1, 1), available=3, damaged=1)
    assert StockLine.of(unit).unit("A") == unit


ITEM = InventoryItem(
    id="s-1",
    sku="A",
    version=2,
    created_at="2026-01-01T00:00:00.000Z",
    updated_at="2026-01-01T00:00:01.000Z",
    stock=(StockLine(location="EAST", available=3),),
)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["status_counts"][0].update(quantity=-1), "status_counts[0].quantity"),
        (lambda d: d["status_counts"][0].update(quantity="3"), "status_counts[0].quantity"),
        (lambda d: d["status_counts"][0].pop("inventory_location_id"), "status_counts[0]"),
        (lambda d: d.update(status_counts="none"), "status_counts"),
        (lambda d: d.update(customer_identifier=7), "customer_identifier"),
    ],
)
def test_an_unreadable_sku_snapshot_names_the_field(change: Any, field: str) -> None:
    document = _over_the_wire(render_sku_snapshot(ITEM))
    change(document)
    with pytest.raises(WireError) as caught:
        parse_sku_snapshot(document)
    assert caught.value.field.startswith(field)


@pytest.mark.parametrize(
    ("change", "field"),
    [
        (lambda d: d["locations"][0].update(stock=1.5), "locations[0].stock"),
        (lambda d: d["locations"][0].update(stock="many"), "locations[0].stock"),
        (lambda d: d.update(version="2"), "version"),
        (lambda d: d.pop("sku_id"), "sku_id"),
    ],
)
def test_an_unreadable_hubrise_entry_names_the_field(change: Any, field: str) -> None:
    document = _over_the_wire(render_hubrise_catalog_entry(ITEM))
    change(document)
    with pytest.raises(WireError) as caught:
        parse_hubrise_catalog_entry(document)
    assert caught.value.field.startswith(field)
