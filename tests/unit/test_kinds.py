"""Entity kinds as data: sources, rows and verification find each kind in one registry."""

from __future__ import annotations

import dataclasses
from collections.abc import Iterator
from typing import Any

import pytest

from ordersync import kinds
from ordersync.agent.records import decode_record
from ordersync.agent.sinks.rows import ENTITY_COLUMNS, ENTITY_TABLES
from ordersync.domain.snapshots import ShipmentSnapshot
from ordersync.kinds import Codec, EntityKind
from ordersync.wire import Head, WireError


def test_each_dialect_reads_orders_and_shipments() -> None:
    """Every dialect has a codec for both kinds, and their streams are the ones sources serve;
    MasonHub and HubRise serve inventory too, Tradecloud has none (README)."""
    for dialect in ("masonhub", "hubrise"):
        assert kinds.streams(dialect) == ("orders", "shipments", "inventory")
    assert kinds.streams("tradecloud") == ("orders", "shipments")
    assert kinds.by_stream("orders").name == "order"
    assert kinds.by_name("shipment").stream == "shipments"
    with pytest.raises(KeyError):
        kinds.by_stream("invoices")


def test_replica_columns_are_the_snapshot_fields_the_kind_names() -> None:
    """A kind's replica row holds the snapshot fields it names, between the head and `data`."""
    for kind in kinds.KINDS.values():
        fields = {f.name for f in dataclasses.fields(kind.snapshot)}
        assert set(kind.columns) <= fields, kind.name
        assert ENTITY_TABLES[kind.name] == kind.table
        assert ENTITY_COLUMNS[kind.name][5:-1] == kind.columns


def test_a_kind_or_stream_is_registered_once() -> None:
    """A second registration of a name or a stream is refused, not silently replacing one."""
    with pytest.raises(ValueError, match="registered already"):
        kinds.register(dataclasses.replace(kinds.SHIPMENT, name="parcel"))


def _count_head(doc: Any) -> Head:
    return Head(str(doc["sku"]), int(doc["version"]), int(doc["at"]))


def _count(doc: Any) -> ShipmentSnapshot:
    if not isinstance(doc.get("on_hand"), int):
        raise WireError("on_hand", f"{doc.get('on_hand')!r} is not an integer")
    return ShipmentSnapshot(doc["sku"], doc["version"], doc["at"], None, "counted", None)


@pytest.fixture
def stock_count() -> Iterator[EntityKind]:
    kind = kinds.register(
        EntityKind(
            name="count",
            stream="counts",
            snapshot=ShipmentSnapshot,  # any snapshot type serves the test
            table="counts",
            columns=("status",),
            codecs={"masonhub": Codec(_count_head, _count)},
        )
    )
    yield kind
    del kinds.KINDS[kind.name]


def test_a_new_kind_is_one_registration(stock_count: EntityKind) -> None:
    """Registered once, a kind is found by stream and read by the agent's record decoding with
    its own codec: no source or record code names it."""
    assert kinds.streams("masonhub") == ("orders", "shipments", "inventory", "counts")
    assert kinds.streams("tradecloud") == ("orders", "shipments")
    name = kinds.by_stream("counts").name
    record = decode_record(name, "masonhub", {"sku": "S-1", "version": 4, "at": 9, "on_hand": 3})
    assert (record.kind, record.id, record.version, record.updated_at_ms) == (
        "count",
        "S-1",
        4,
        9,
    )
    assert record.snapshot == ShipmentSnapshot("S-1", 4, 9, None, "counted", None)
    refused = decode_record(name, "masonhub", {"sku": "S-2", "version": 1, "at": 9, "on_hand": "3"})
    assert refused.snapshot is None
    assert refused.problem == "count S-2: on_hand: '3' is not an integer"
