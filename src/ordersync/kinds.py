"""Entity kinds as data: each kind's name, stream, snapshot type, replica table and codecs.

The agent's sources, sinks and verification look kinds up here instead of branching on their
names, so a new kind (inventory, update requests) is one `register` call plus its snapshot type
and codec functions. The hub's store keeps its own tables (`store/tables.py`).

A replica row of a kind holds, between `updated_at_ms` and `data`, the snapshot fields named in
`columns`, each in a column of the same name; a kind with `line_table` keeps its snapshot's
`lines` in that table too.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any

from ordersync.domain.snapshots import OrderSnapshot, ShipmentSnapshot, Snapshot
from ordersync.wire import hubrise, masonhub, tradecloud
from ordersync.wire.fields import Head


@dataclass(frozen=True, slots=True)
class Codec:
    """How one dialect's documents of one kind are read: the head (id, version, updated
    time), readable even when the rest is not, and the whole snapshot."""

    head: Callable[[Any], Head]
    parse: Callable[[Any], Snapshot]


@dataclass(frozen=True, slots=True)
class EntityKind:
    name: str  # as records, ledgers and HubRise events name it: "order"
    stream: str  # the stream that carries it on every dialect: "orders"
    snapshot: type[Snapshot]
    table: str  # the replica's table
    columns: tuple[str, ...]  # snapshot fields the replica row holds
    codecs: Mapping[str, Codec]  # dialect -> codec
    line_table: str | None = None  # where the snapshot's `lines` go, for kinds that have them


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
        line_table="order_lines",
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
