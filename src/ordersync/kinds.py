"""Entity kinds as data: each kind's name, stream, snapshot type, replica table and codecs.

The agent's sources, sinks and verification look kinds up here instead of branching on their
names, so a new kind (inventory, update requests) is one `register` call plus its snapshot type
and codec functions. The hub's store keeps its own tables (`store/tables.py`).

A replica row of a kind holds, between `updated_at_ms` and `data`, the snapshot fields named in
`columns`, each in a column of the same name; a kind with a `line_table` keeps the items of one
snapshot field in that table too (an order's `lines`; a SKU's quantities per location and
status), replaced whole with each newer version.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ordersync.domain.snapshots import (
    InventorySnapshot,
    OrderSnapshot,
    ShipmentSnapshot,
    Snapshot,
)
from ordersync.wire import hubrise, inventory, masonhub, tradecloud
from ordersync.wire.fields import Head


@dataclass(frozen=True, slots=True)
class Codec:
    """How one dialect's documents of one kind are read: the head (id, version, updated
    time), readable even when the rest is not, and the whole snapshot."""

    head: Callable[[Any], Head]
    parse: Callable[[Any], Snapshot]


@dataclass(frozen=True, slots=True)
class LineTable:
    """Where a kind keeps the items of one snapshot field: the table, its columns (the first
    is the entity row's `seq`), the field, and the values of one item's row after the seq
    from (source, entity id, item)."""

    name: str
    columns: tuple[str, ...]
    field: str
    values: Callable[[str, str, Any], tuple[Any, ...]]


@dataclass(frozen=True, slots=True)
class EntityKind:
    name: str  # as records, ledgers and HubRise events name it: "order"
    stream: str  # the stream that carries it on every dialect: "orders"
    snapshot: type[Snapshot]
    table: str  # the replica's table
    columns: tuple[str, ...]  # snapshot fields the replica row holds
    codecs: Mapping[str, Codec]  # dialect -> codec
    line_table: LineTable | None = None  # where the snapshot's items go, for kinds with them


KINDS: dict[str, EntityKind] = {}


def register(kind: EntityKind) -> EntityKind:
    if kind.name in KINDS or any(k.stream == kind.stream for k in KINDS.values()):
        raise ValueError(f"kind {kind.name!r} or stream {kind.stream!r} is registered already")
    KINDS[kind.name] = kind
    return kind


def by_name(name: str) -> EntityKind:
    """KeyError for a kind nobody registered."""
    return KINDS[name]


def by_stream(stream: str) -> EntityKind:
    """KeyError for a stream no kind is carried on."""
    for kind in KINDS.values():
        if kind.stream == stream:
            return kind
    raise KeyError(stream)


def streams(dialect: str) -> tuple[str, ...]:
    """The streams of every kind the dialect has a codec for, in registration order."""
    return tuple(k.stream for k in KINDS.values() if dialect in k.codecs)


ORDER = register(
    EntityKind(
        name="order",
        stream="orders",
        snapshot=OrderSnapshot,
        table="orders",
        columns=("status", "customer_identifier"),
        codecs={
            "masonhub": Codec(masonhub.head, masonhub.parse_order),
            "tradecloud": Codec(tradecloud.head, tradecloud.parse_order),
            "hubrise": Codec(hubrise.head, hubrise.parse_order),
        },
        line_table=LineTable(
            "order_lines",
            ("order_seq", "line_number", "source", "order_id", "sku", "quantity", "unit_price"),
            "lines",
            lambda source, entity_id, line: (
                line.line_number,
                source,
                entity_id,
                line.sku,
                line.quantity,
                line.unit_price,
            ),
        ),
    )
)
SHIPMENT = register(
    EntityKind(
        name="shipment",
        stream="shipments",
        snapshot=ShipmentSnapshot,
        table="shipments",
        columns=("order_id", "status", "tracking_number"),
        codecs={
            "masonhub": Codec(masonhub.head, masonhub.parse_shipment),
            "tradecloud": Codec(tradecloud.head, tradecloud.parse_shipment),
            "hubrise": Codec(hubrise.head, hubrise.parse_shipment),
        },
    )
)
# A SKU's stock (MasonHub `sku_snapshots`): its absolute quantity per (location, status), one
# `inventory_quantities` row each, replaced whole by each newer version.
INVENTORY = register(
    EntityKind(
        name="inventory",
        stream="inventory",
        snapshot=InventorySnapshot,
        table="inventory",
        columns=("sku",),
        codecs={
            "masonhub": Codec(inventory.inventory_head, inventory.parse_sku_snapshot),
            "hubrise": Codec(inventory.inventory_head, inventory.parse_hubrise_catalog_entry),
        },
        line_table=LineTable(
            "inventory_quantities",
            ("inventory_seq", "location", "status", "source", "sku_id", "quantity"),
            "quantities",
            lambda source, entity_id, q: (q.location, q.status, source, entity_id, q.quantity),
        ),
    )
)
