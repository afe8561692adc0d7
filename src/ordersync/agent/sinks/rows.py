"""The replica's rows as plain tuples, one definition for both write paths.

The SQLite writer (its own process, see `writer_process`) binds these tuples as they are, amounts
as text; `sql.SqlSink` zips them into dicts for SQLAlchemy. Nothing here imports SQLAlchemy, so
the writer process starts in a fraction of the agent's import time; `sql.py` checks these
columns against its tables when it loads.
"""

from __future__ import annotations

import json
from collections.abc import Sequence
from decimal import Decimal
from typing import Any

import orjson

from ordersync.agent.errors import SinkError
from ordersync.agent.records import Kind, Record

# Table names and their columns in order; `sql.py` defines the tables and checks it against these.
ENTITY_TABLES: dict[Kind, str] = {"order": "orders", "shipment": "shipments"}
ENTITY_COLUMNS: dict[Kind, tuple[str, ...]] = {
    "order": (
        "seq",
        "source",
        "id",
        "version",
        "updated_at_ms",
        "status",
        "customer_identifier",
        "data",
    ),
    "shipment": (
        "seq",
        "source",
        "id",
        "version",
        "updated_at_ms",
        "order_id",
        "status",
        "tracking_number",
        "data",
    ),
}
LINE_COLUMNS = ("order_seq", "line_number", "source", "order_id", "sku", "quantity", "unit_price")
APPLIED_COLUMNS = ("kind", "entity_seq", "version", "source", "id", "applied_at_ms")
CURSOR_COLUMNS = ("source", "stream", "updated_at_ms", "last_id", "committed_at_ms")
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    **{ENTITY_TABLES[kind]: columns for kind, columns in ENTITY_COLUMNS.items()},
    "order_lines": LINE_COLUMNS,
    "applied_versions": APPLIED_COLUMNS,
    "checkpoints": CURSOR_COLUMNS,
}
Values = tuple[Any, ...]


def document_json(document: Any) -> str:
    """A wire document as JSON text, exactly: orjson where it can, else the standard library,
    which also writes what orjson refuses and a JSON parser may hand over (integers past 64
    bits, lone surrogates, escaped as \\udXXXX). So any parsed document can be stored."""
    try:
        return orjson.dumps(document).decode()
    except TypeError:
        return json.dumps(document, ensure_ascii=True)


def entity_values(seq: int | None, source: str, r: Record) -> Values:
    """One `orders` or `shipments` row (ENTITY_COLUMNS[r.kind]); seq None: not yet given."""
    data = r.data
    document = document_json(data)
    if r.kind == "order":
        return (
            seq,
            source,
            r.id,
            r.version,
            r.updated_at_ms,
            data.get("status"),
            data.get("customer_identifier"),
            document,
        )
    return (
        seq,
        source,
        r.id,
        r.version,
        r.updated_at_ms,
        data.get("order_id"),
        data.get("status"),
        data.get("tracking_number"),
        document,
    )


def line_values(seq: int, source: str, r: Record, item: dict[str, Any]) -> Values:
    """One `order_lines` row (LINE_COLUMNS), amounts as exact Decimals."""
    return (
        seq,
        line_number(item, r.id),
        source,
        r.id,
        item.get("sku_customer_identifier"),
        exact_decimal(item.get("quantity"), r.id, "quantity"),
        exact_decimal(item.get("unit_price"), r.id, "unit_price"),
    )


def applied_values(kind: Kind, seq: int, source: str, r: Record, stamp: int) -> Values:
    """One `applied_versions` row (APPLIED_COLUMNS): this version of this entity, applied."""
    return (kind, seq, r.version, source, r.id, stamp)


# A record as the SQLite writer process takes it: (kind, id, version, the entity row after its
# seq, the order's line rows after their order_seq), amounts as text (sqlite3 binds no Decimal).
# The agent builds it, and so checks the page's data, before the page leaves for the writer.
Prepared = tuple[Kind, str, int, Values, list[Values]]


def prepare(source: str, r: Record) -> Prepared:
    lines = []
    if r.kind == "order":
        for item in line_items(r):
            row = line_values(0, source, r, item)
            quantity, price = row[5], row[6]
            lines.append(
                (*row[1:5], None if quantity is None else str(quantity),
                 None if price is None else str(price))
            )  # fmt: skip
    return (r.kind, r.id, r.version, entity_values(None, source, r)[1:], lines)


def by_kind(records: Sequence[Record]) -> dict[Kind, list[Record]]:
    groups: dict[Kind, list[Record]] = {}
    for record in records:
        groups.setdefault(record.kind, []).append(record)
    return groups


def line_items(record: Record) -> list[dict[str, Any]]:
    """An order's lines; SinkError (the record cannot be stored) if they are not a list of
    objects."""
    items = record.data.get("line_items") or []
    if not isinstance(items, list) or not all(isinstance(i, dict) for i in items):
        raise SinkError(f"order {record.id}: line_items is not a list of lines")
    return items


def line_number(item: dict[str, Any], order_id: str) -> int:
    try:
        return int(item["line_number"])
    except (KeyError, TypeError, ValueError):
        raise SinkError(
            f"order {order_id}: a line without a valid line_number ({item.get('line_number')!r})"
        ) from None


def exact_decimal(value: Any, order_id: str, field: str) -> Decimal | None:
    """A line amount as an exact Decimal; SinkError (the record cannot be stored) for anything
    that is not a finite decimal number."""
    # Decimals arrive as JSON strings; a JSON number would already be a float, so str() of it
    # is the shortest repr that round-trips, never the binary expansion.
    if value is None:
        return None
    try:
        amount = Decimal(str(value))
    except ArithmeticError:  # decimal.InvalidOperation
        amount = None
    if amount is None or not amount.is_finite():
        raise SinkError(f"order {order_id}: line {field} {value!r} is not a decimal amount")
    return amount
