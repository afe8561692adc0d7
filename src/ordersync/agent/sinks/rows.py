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
from ordersync.domain.snapshots import Snapshot
from ordersync.kinds import KINDS, LineTable, by_name

# Table names and their columns in order, from the kinds registry: a kind's row holds the
# snapshot fields it names (`EntityKind.columns`); `sql.py` defines the tables and checks them.
ENTITY_TABLES: dict[Kind, str] = {kind.name: kind.table for kind in KINDS.values()}
ENTITY_COLUMNS: dict[Kind, tuple[str, ...]] = {
    kind.name: ("seq", "source", "id", "version", "updated_at_ms", *kind.columns, "data")
    for kind in KINDS.values()
}
# Each line table's columns (the first: its entity row's seq), by kind.
LINE_TABLES: dict[Kind, LineTable] = {
    kind.name: kind.line_table for kind in KINDS.values() if kind.line_table is not None
}
LINE_COLUMNS = LINE_TABLES["order"].columns
APPLIED_COLUMNS = ("kind", "entity_seq", "version", "source", "id", "applied_at_ms")
CURSOR_COLUMNS = ("source", "stream", "updated_at_ms", "last_id", "committed_at_ms")
TABLE_COLUMNS: dict[str, tuple[str, ...]] = {
    **{ENTITY_TABLES[kind]: columns for kind, columns in ENTITY_COLUMNS.items()},
    **{line.name: line.columns for line in LINE_TABLES.values()},
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


def snapshot(r: Record) -> Snapshot:
    """The record's snapshot; SinkError (the record cannot be stored: see `quarantine`) for a
    record whose document its codec refused (`Record.problem`, naming kind, id, field, value)."""
    if r.problem is not None:
        raise SinkError(r.problem)
    kind = by_name(r.kind)
    if not isinstance(r.snapshot, kind.snapshot):
        raise SinkError(f"{r.kind} {r.id}: no {kind.snapshot.__name__} was read from it")
    return r.snapshot


def entity_values(seq: int | None, source: str, r: Record) -> Values:
    """One entity row (ENTITY_COLUMNS[r.kind]); seq None: not yet given."""
    held = snapshot(r)
    fields = tuple(getattr(held, column) for column in by_name(r.kind).columns)
    document = document_json(r.document)
    return (seq, source, r.id, r.version, r.updated_at_ms, *fields, document)


def line_values(seq: int, source: str, r: Record, line: Any) -> Values:
    """One row of the kind's line table (`LINE_TABLES[r.kind].columns`), amounts as exact
    Decimals."""
    return (seq, *LINE_TABLES[r.kind].values(source, r.id, line))


def applied_values(kind: Kind, seq: int, source: str, r: Record, stamp: int) -> Values:
    """One `applied_versions` row (APPLIED_COLUMNS): this version of this entity, applied."""
    return (kind, seq, r.version, source, r.id, stamp)


# A record as the SQLite writer process takes it: (kind, id, version, the entity row after its
# seq, the order's line rows after their order_seq, the dialect whose codec read it), amounts
# as text (sqlite3 binds no Decimal).
# The agent builds it, and so checks the page's data, before the page leaves for the writer.
Prepared = tuple[Kind, str, int, Values, list[Values], str]


def prepare(source: str, r: Record) -> Prepared:
    lines = []
    if r.kind in LINE_TABLES:
        for line in line_items(r):
            row = line_values(0, source, r, line)[1:]
            lines.append(tuple(str(v) if isinstance(v, Decimal) else v for v in row))
    return (r.kind, r.id, r.version, entity_values(None, source, r)[1:], lines, r.dialect)


def by_kind(records: Sequence[Record]) -> dict[Kind, list[Record]]:
    groups: dict[Kind, list[Record]] = {}
    for record in records:
        groups.setdefault(record.kind, []).append(record)
    return groups


def line_items(record: Record) -> tuple[Any, ...]:
    """The items of a record whose kind has a line table (`EntityKind.line_table`)."""
    table = LINE_TABLES.get(record.kind)
    if table is None:
        return ()
    items: tuple[Any, ...] = getattr(snapshot(record), table.field, ())
    return items
