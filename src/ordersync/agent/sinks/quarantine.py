"""Records a SQL replica cannot store, kept exactly beside it so that their stream moves on.

A record the replica refuses (a line amount that is no decimal, a NUL character on
PostgreSQL, a value longer than its column, any other per-record database error) would otherwise
refuse its whole page, and the cursor would never pass it. Instead it goes to the `quarantine`
table, in the same transaction as the rest of its page and the cursor: its wire document as
received, kind, id, version, source, stream, why, first and last attempt, attempts. One row per
entity: the newest version held back.

Nothing is skipped silently: each held-back record is logged; the engine reads the cursor at
the start of every cycle, and that is where the stream's quarantined records are re-applied
(version-checked, like any page) so they land once the replica or the platform is fixed; a
newer version of the entity applied normally supersedes the quarantined one (logged too).

Both write paths use this module (SQLAlchemy in `sql.py`, plain `sqlite3` in the writer
process), through `Execute`; it imports nothing heavy.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from decimal import Decimal
from typing import Any, Protocol

import structlog

from ordersync.agent.errors import SinkError
from ordersync.agent.records import Kind, Record, decode_record
from ordersync.agent.sinks.base import latest_per_id
from ordersync.agent.sinks.rows import (
    ENTITY_COLUMNS,
    ENTITY_TABLES,
    LINE_TABLES,
    Prepared,
    document_json,
    prepare,
)
from ordersync.wire.fields import exact_json

log = structlog.get_logger("ordersync.agent.sinks.quarantine")

# Plain SQL both SQLite and PostgreSQL accept; ids are TEXT here (an id too long for the entity
# table must still fit).
CREATE_TABLE = """
CREATE TABLE IF NOT EXISTS quarantine (
    source VARCHAR(50) NOT NULL,
    kind VARCHAR(20) NOT NULL,
    id TEXT NOT NULL,
    dialect VARCHAR(20) NOT NULL,
    version BIGINT NOT NULL,
    stream VARCHAR(30) NOT NULL,
    updated_at_ms BIGINT NOT NULL,
    document TEXT NOT NULL,
    reason TEXT NOT NULL,
    first_attempt_ms BIGINT NOT NULL,
    last_attempt_ms BIGINT NOT NULL,
    attempts INTEGER NOT NULL,
    PRIMARY KEY (source, kind, id)
)
"""
# A version held back again counts an attempt; a newer one replaces the older (attempts anew).
_KEEP = """
INSERT INTO quarantine (source, kind, id, dialect, version, stream, updated_at_ms, document,
                        reason, first_attempt_ms, last_attempt_ms, attempts)
VALUES (:source, :kind, :id, :dialect, :version, :stream, :updated_at_ms, :document, :reason,
        :stamp, :stamp, 1)
ON CONFLICT (source, kind, id) DO UPDATE SET
    attempts = CASE WHEN quarantine.version = excluded.version
                    THEN quarantine.attempts + 1 ELSE 1 END,
    first_attempt_ms = CASE WHEN quarantine.version = excluded.version
                            THEN quarantine.first_attempt_ms ELSE excluded.first_attempt_ms END,
    version = excluded.version, stream = excluded.stream, dialect = excluded.dialect,
    updated_at_ms = excluded.updated_at_ms, document = excluded.document,
    reason = excluded.reason, last_attempt_ms = excluded.last_attempt_ms
WHERE excluded.version >= quarantine.version
"""
_ROW_COLUMNS = (
    "source, kind, id, dialect, version, stream, updated_at_ms, document, reason, "
    "first_attempt_ms, last_attempt_ms, attempts"
)


class Execute(Protocol):
    """Runs one statement with `:name` parameters in the page's transaction: a dict runs it
    once and returns its rows, a list runs it once per dict (no rows)."""

    def __call__(
        self, sql: str, params: Mapping[str, Any] | list[dict[str, Any]]
    ) -> list[tuple[Any, ...]]: ...


@dataclass(frozen=True, slots=True)
class HeldBack:
    """One record the replica cannot store, and why."""

    kind: Kind
    id: str
    dialect: str
    version: int
    updated_at_ms: int
    document: str  # the wire document as received, as JSON text
    reason: str


@dataclass(frozen=True, slots=True)
class Quarantined:
    """A row of the quarantine table."""

    source: str
    kind: Kind
    id: str
    dialect: str
    version: int
    stream: str
    updated_at_ms: int
    document: str
    reason: str
    first_attempt_ms: int
    last_attempt_ms: int
    attempts: int

    def record(self) -> Record:
        """The record as it arrived, read again by its dialect's codec (which may take it now),
        to apply again."""
        document = from_json(self.document)
        if self.dialect:
            return decode_record(self.kind, self.dialect, document, data=exact_json(document))
        return Record(self.kind, self.id, self.version, self.updated_at_ms, exact_json(document))


to_json = document_json


def from_json(text: str) -> Any:
    """Exact for whatever `to_json` wrote: JSON numbers come back as Decimal, as sources read
    them (`exact_json` writes them back as the same text)."""
    return json.loads(text, parse_float=Decimal)


def held_back(record: Record, reason: str) -> HeldBack:
    return HeldBack(
        record.kind,
        record.id,
        record.dialect,
        record.version,
        record.updated_at_ms,
        to_json(record.document),
        reason,
    )


def screen_prepared(
    source: str, records: Sequence[Record], *, refuses_nul: bool = False
) -> tuple[list[Prepared], list[HeldBack]]:
    """The latest version of each entity as the writer takes it, and those held back.
    `refuses_nul`: the database cannot store a NUL character in text (PostgreSQL). What else
    a column refuses (a value longer than it, an integer past it) the database itself says,
    and the page runs again one record at a time: the live schema decides, so a column widened
    by the operator takes the record at its next retry."""
    storable: list[Prepared] = []
    held: list[HeldBack] = []
    for record in latest_per_id(records).values():
        try:
            row = prepare(source, record)
        except (SinkError, TypeError, ValueError, OverflowError) as exc:
            held.append(held_back(record, _reason(record, exc)))
            continue
        problem = _row_problem(row, refuses_nul)
        if problem is None:
            storable.append(row)
        else:
            held.append(held_back(record, f"{record.kind} {record.id}: {problem}"))
    return storable, held


def screen(
    source: str, records: Sequence[Record], *, refuses_nul: bool = False
) -> tuple[list[Record], list[HeldBack]]:
    """The latest version of each entity the replica can store, and those held back."""
    prepared, held = screen_prepared(source, records, refuses_nul=refuses_nul)
    kept = {(row[0], row[1]) for row in prepared}
    return [r for key, r in latest_per_id(records).items() if key in kept], held


def _reason(record: Record, exc: Exception) -> str:
    if isinstance(exc, SinkError):
        return str(exc)
    return f"{record.kind} {record.id}: its document cannot be stored ({exc})"


_INT64 = range(-(2**63), 2**63)


def _row_problem(row: Prepared, refuses_nul: bool) -> str | None:
    """Why a column of the record's rows cannot take its value, if one cannot. Every page
    passes here: a quick pass over all values first, the column named only on a problem."""
    texts = []
    for values in (row[3], *row[4]):
        for value in values:
            kind_of = type(value)
            if kind_of is str:
                texts.append(value)
            elif kind_of is int:
                if value not in _INT64:
                    return _column_problem(row, refuses_nul)
            elif not (value is None or kind_of is float or kind_of is bool):
                return _column_problem(row, refuses_nul)
    text = "".join(texts)
    if (refuses_nul and "\x00" in text) or not (text.isascii() or _encodes(text)):
        return _column_problem(row, refuses_nul)
    return None


def _encodes(text: str) -> bool:
    try:
        text.encode()
    except UnicodeEncodeError:
        return False
    return True


def _column_problem(row: Prepared, refuses_nul: bool) -> str | None:
    kind = row[0]
    checks = [(ENTITY_TABLES[kind], ENTITY_COLUMNS[kind][1:], row[3])]
    lines = LINE_TABLES.get(kind)
    if lines is not None:
        checks += [(lines.name, lines.columns[1:], line) for line in row[4]]
    for table, columns, values in checks:
        for column, value in zip(columns, values, strict=True):
            problem = _value_problem(value, refuses_nul)
            if problem is not None:
                return f"{table}.{column} {problem}"
    return None


def _value_problem(value: Any, refuses_nul: bool) -> str | None:
    if value is None or isinstance(value, float):
        return None
    if isinstance(value, int):
        return None if value in _INT64 else f"is {value}, past a 64-bit integer"
    if not isinstance(value, str):
        return f"is a {type(value).__name__}, not a single value"
    if refuses_nul and "\x00" in value:
        return "contains a NUL character, which PostgreSQL cannot store"
    if not (value.isascii() or _encodes(value)):
        return "contains a lone surrogate, which is no text a database stores"
    return None


def from_prepared(row: Prepared, reason: str) -> HeldBack:
    """A record the writer process could not store (it has the prepared row, not the Record):
    the entity row ends with the document, and its fourth value is updated_at_ms."""
    entity = row[3]
    return HeldBack(row[0], row[1], row[5], row[2], int(entity[3]), str(entity[-1]), reason)


def _printable(text: str) -> str:
    # PostgreSQL's text cannot hold NUL; an id or a reason quoting one keeps it escaped.
    return text.replace("\x00", "\\u0000")


def settle(
    execute: Execute,
    source: str,
    stream: str,
    page: Mapping[Kind, Sequence[str]],
    held: Sequence[HeldBack],
    stamp: int,
) -> tuple[int, int]:
    """In a page's transaction, after its storable records were applied: keep the held-back
    records newer than what the replica holds, release the quarantined versions the replica now
    holds or passed (`page`: kind -> ids of the page). Returns (records of the page kept in the
    quarantine, records of `source` in it). One cheap read when the quarantine is empty and
    nothing is held back."""
    if not held and not execute(
        "SELECT 1 FROM quarantine WHERE source = :source LIMIT 1", {"source": source}
    ):
        return 0, 0
    kept = _keep(execute, source, stream, held, stamp) if held else 0
    _release(execute, source, page)
    return kept, count(execute, source)


def _keep(execute: Execute, source: str, stream: str, held: Sequence[HeldBack], stamp: int) -> int:
    by_kind: dict[Kind, list[HeldBack]] = {}
    for item in held:
        by_kind.setdefault(item.kind, []).append(item)
    rows = []
    for kind, items in by_kind.items():
        ids = [_printable(i.id) for i in items]
        replica = _versions(execute, ENTITY_TABLES[kind], source, ids)
        before = _quarantined_versions(execute, source, kind, ids)
        for item in items:
            key = _printable(item.id)
            if item.version <= replica.get(key, 0):
                continue  # the replica holds this version or a newer one: a duplicate
            older = before.get(key)
            if older == item.version:
                log.info(
                    "quarantined_record_still_refused", source=source, kind=kind, id=key,
                    version=item.version, reason=item.reason,
                )  # fmt: skip
            else:
                if older is not None and older < item.version:
                    log.warning(
                        "quarantine_superseded", source=source, kind=kind, id=key,
                        version=older, by_version=item.version,
                    )  # fmt: skip
                log.warning(
                    "record_quarantined", source=source, stream=stream, kind=kind, id=key,
                    version=item.version, reason=item.reason,
                )  # fmt: skip
            rows.append(
                {
                    "source": source, "kind": kind, "id": _printable(item.id),
                    "dialect": item.dialect,
                    "version": item.version, "stream": stream,
                    "updated_at_ms": item.updated_at_ms, "document": item.document,
                    "reason": _printable(item.reason), "stamp": stamp,
                }
            )  # fmt: skip
    if rows:
        execute(_KEEP, rows)
    return len(rows)


def _release(execute: Execute, source: str, page: Mapping[Kind, Sequence[str]]) -> None:
    """Drop quarantined versions of the page's entities that the replica holds or passed."""
    for kind, ids in page.items():
        quarantined = _quarantined_versions(execute, source, kind, [_printable(i) for i in ids])
        if not quarantined:
            continue
        replica = _versions(execute, ENTITY_TABLES[kind], source, list(quarantined))
        released = []
        for i, version in quarantined.items():
            held_now = replica.get(i, 0)
            if held_now < version:
                continue
            log.warning(
                "quarantine_released" if held_now == version else "quarantine_superseded",
                source=source, kind=kind, id=i, version=version, replica_version=held_now,
            )  # fmt: skip
            released.append({"source": source, "kind": kind, "id": i, "version": version})
        if released:
            execute(
                "DELETE FROM quarantine WHERE source = :source AND kind = :kind AND id = :id"
                " AND version = :version",
                released,
            )


def _in(ids: Sequence[str]) -> tuple[str, dict[str, Any]]:
    names = [f"i{n}" for n in range(len(ids))]
    return ", ".join(f":{n}" for n in names), dict(zip(names, ids, strict=True))


def _versions(execute: Execute, table: str, source: str, ids: Sequence[str]) -> dict[str, int]:
    marks, params = _in(ids)
    rows = execute(
        f"SELECT id, version FROM {table} WHERE source = :source AND id IN ({marks})",
        {"source": source, **params},
    )
    return {str(i): int(v) for i, v in rows}


def _quarantined_versions(
    execute: Execute, source: str, kind: Kind, ids: Sequence[str]
) -> dict[str, int]:
    marks, params = _in(ids)
    rows = execute(
        f"SELECT id, version FROM quarantine WHERE source = :source AND kind = :kind"
        f" AND id IN ({marks})",
        {"source": source, "kind": kind, **params},
    )
    return {str(i): int(v) for i, v in rows}


def load(execute: Execute, source: str, stream: str | None = None) -> list[Quarantined]:
    """The quarantined records of `source` (of one stream when given), oldest first."""
    params = {"source": source} if stream is None else {"source": source, "stream": stream}
    where = " AND ".join(f"{name} = :{name}" for name in params)
    rows = execute(
        f"SELECT {_ROW_COLUMNS} FROM quarantine WHERE {where} ORDER BY first_attempt_ms, id",
        params,
    )
    return [Quarantined(*row) for row in rows]


def count(execute: Execute, source: str) -> int:
    ((n,),) = execute("SELECT count(*) FROM quarantine WHERE source = :source", {"source": source})
    return int(n)


def is_ledger_conflict(message: str) -> bool:
    """A second application of a version (the at-most-once ledger's key): never a record's
    fault, so it fails the page instead of quarantining anything."""
    return "applied_versions" in message
