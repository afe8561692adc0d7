"""The SQL sink's write path on SQLite: one plain `sqlite3` transaction per page.

Through aiosqlite every statement, every fetch, the BEGIN and the COMMIT each cross to the
driver's thread and back, and SQLAlchemy processes the parameters of every row: a page of 100
orders cost ~16 ms of CPU, four times what SQLite itself needs. Here the same Core statements
are compiled once to SQL text, and a whole page (read held versions, upsert, lines, applied
log, cursor) runs as one plain `sqlite3` transaction, called on the event loop.
The semantics are those of `SqlSink.apply_page`, statement for statement; the fault hooks fire
at the same steps.
"""

from __future__ import annotations

import operator
import sqlite3
import threading
from collections.abc import Sequence
from typing import Any

from sqlalchemy import insert
from sqlalchemy.dialects import sqlite
from sqlalchemy.sql.dml import Insert

from ordersync.agent.records import ApplyResult, Cursor, Kind, Record
from ordersync.agent.sinks.base import FaultHook, fire, latest_per_id
from ordersync.agent.sinks.sql import (
    TABLES,
    ExactDecimal,
    _by_kind,
    _row,
    applied_rows,
    applied_versions,
    checkpoints,
    line_rows,
    order_lines,
    upsert_if_newer,
)
from ordersync.domain.timestamps import now_ms
from ordersync.store.engine import SQLITE_BUSY_TIMEOUT_MS

_DIALECT = sqlite.dialect()


class CompiledStatement:
    """A Core insert as SQLite text, and its rows as the positional tuples `sqlite3` binds."""

    def __init__(self, statement: Insert) -> None:
        # Every column but the local sequence number, which SQLite assigns.
        columns = [c.name for c in statement.table.c if c.name != "seq"]
        compiled = statement.compile(dialect=_DIALECT, column_keys=columns)
        self.sql = str(compiled)
        keys = list(getattr(compiled, "positiontup", None) or ())
        self._pick = operator.itemgetter(*keys)
        # ExactDecimal stores the decimal's string on SQLite; sqlite3 cannot bind Decimal.
        self._exact = [
            i for i, key in enumerate(keys)
            if isinstance(statement.table.c[key].type, ExactDecimal)
        ]
        if len(keys) < 2:
            raise ValueError("a compiled insert binds at least two columns")

    def rows(self, values: Sequence[dict[str, Any]]) -> list[tuple[Any, ...]]:
        pick = self._pick
        if not self._exact:
            return [pick(row) for row in values]
        rows = []
        for row in values:
            bound = list(pick(row))
            for i in self._exact:
                if bound[i] is not None:
                    bound[i] = str(bound[i])
            rows.append(tuple(bound))
        return rows


class SqliteWriter:
    """Applies pages to a SQLite replica file. Thread-safe: one page at a time."""

    def __init__(self, path: str) -> None:
        self._db = sqlite3.connect(
            path,
            isolation_level=None,
            check_same_thread=False,
            timeout=SQLITE_BUSY_TIMEOUT_MS / 1000,
        )
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._lock = threading.Lock()
        self._upserts = {
            kind: CompiledStatement(upsert_if_newer(t, "sqlite")) for kind, t in TABLES.items()
        }
        self._lines = CompiledStatement(insert(order_lines))
        self._applied = CompiledStatement(insert(applied_versions))
        cursor = sqlite.insert(checkpoints)
        self._cursor = CompiledStatement(
            cursor.on_conflict_do_update(
                index_elements=[checkpoints.c.source, checkpoints.c.stream],
                set_={
                    c: cursor.excluded[c] for c in ("updated_at_ms", "last_id", "committed_at_ms")
                },
            )
        )

    def close(self) -> None:
        with self._lock:
            self._db.close()

    async def apply_page(
        self,
        source: str,
        stream: str,
        records: Sequence[Record],
        new_cursor: Cursor,
        hook: FaultHook | None,
    ) -> ApplyResult:
        # On the event loop, not in a thread: a page is ~3 ms, mostly SQLite's own C code, and a
        # worker thread cost more in GIL handoffs with the loop than it overlapped (bench/README).
        # The engine has put the next page's request on the wire before calling this.
        applied = self._apply(source, stream, records, new_cursor, hook)
        return ApplyResult(applied, len(records) - applied)

    def _apply(
        self,
        source: str,
        stream: str,
        records: Sequence[Record],
        cursor: Cursor,
        hook: FaultHook | None,
    ) -> int:
        with self._lock:
            db = self._db
            db.execute("BEGIN IMMEDIATE")
            try:
                applied = 0
                for kind, group in _by_kind(records).items():
                    applied += self._apply_kind(db, source, kind, group, hook)
                fire(hook, "before_cursor")
                db.execute(
                    self._cursor.sql,
                    self._cursor.rows(
                        [
                            {
                                "source": source,
                                "stream": stream,
                                "updated_at_ms": cursor.updated_at_ms,
                                "last_id": cursor.last_id,
                                "committed_at_ms": now_ms(),
                            }
                        ]
                    )[0],
                )
                fire(hook, "after_cursor")
                db.execute("COMMIT")
            except BaseException:
                db.execute("ROLLBACK")
                raise
            return applied

    def _apply_kind(
        self,
        db: sqlite3.Connection,
        source: str,
        kind: Kind,
        records: list[Record],
        hook: FaultHook | None,
    ) -> int:
        table = TABLES[kind].name
        latest = list(latest_per_id(records).values())
        held = _held(db, table, source, [r.id for r in latest])
        newer = [r for r in latest if r.version > held.get(r.id, (0, 0))[0]]
        if not newer:
            return 0
        upsert = self._upserts[kind]
        db.executemany(upsert.sql, upsert.rows([_row(source, r) for r in newer]))
        seqs = {i: seq for i, (_, seq) in held.items()}
        first_seen = [r.id for r in newer if r.id not in seqs]
        if first_seen:
            seqs |= {i: seq for i, (_, seq) in _held(db, table, source, first_seen).items()}
        if kind == "order":
            replaced = [seqs[r.id] for r in newer if r.id in held]
            if replaced:
                db.execute(
                    f"DELETE FROM order_lines WHERE order_seq IN ({','.join('?' * len(replaced))})",
                    replaced,
                )
            db.executemany(self._lines.sql, self._lines.rows(line_rows(source, newer, seqs)))
        fire(hook, "mid_apply")
        stamp = now_ms()
        db.executemany(
            self._applied.sql,
            self._applied.rows(applied_rows(source, kind, newer, seqs, stamp)),
        )
        return len(newer)


def _held(
    db: sqlite3.Connection, table: str, source: str, ids: list[str]
) -> dict[str, tuple[int, int]]:
    """id -> (version, seq) of the rows the replica holds among `ids`."""
    marks = ",".join("?" * len(ids))
    rows = db.execute(
        f"SELECT id, version, seq FROM {table} WHERE source = ? AND id IN ({marks})",
        [source, *ids],
    )
    return {i: (version, seq) for i, version, seq in rows}
