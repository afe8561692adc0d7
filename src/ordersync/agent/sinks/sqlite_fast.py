"""The SQL sink's write path on SQLite: one plain `sqlite3` transaction per page.

Through aiosqlite every statement, every fetch, the BEGIN and the COMMIT each cross to the
driver's thread and back, and SQLAlchemy processes the parameters of every row: a page costs
several times what SQLite itself needs (bench/README.md). Here a whole page (read held
versions, insert or update, lines, applied ledger, cursor) runs as one plain `sqlite3`
transaction, with rows built as tuples straight from the records (`rows.py`). It runs in a
process of its own (`writer_process.py`), so the agent parses the next page while SQLite
writes this one. The tables are `sql.py`'s; the semantics are those of `SqlSink.apply_page`,
and the fault hooks fire at the same steps.

The page's transaction starts with BEGIN IMMEDIATE, so this connection is the replica's only
writer until COMMIT: an entity the held-versions read did not find cannot appear before the
insert, and new rows take their `seq` from `max(seq) + 1` onwards without a read-back.
"""

from __future__ import annotations

import sqlite3
import threading
from collections.abc import Mapping, Sequence
from typing import Any

import structlog

from ordersync.agent.records import Cursor, Kind, descends
from ordersync.agent.sinks import quarantine
from ordersync.agent.sinks.base import FaultHook, fire
from ordersync.agent.sinks.quarantine import HeldBack
from ordersync.agent.sinks.replica_file import ReplicaFault, ReplicaFile
from ordersync.agent.sinks.rows import (
    ENTITY_COLUMNS,
    ENTITY_TABLES,
    LINE_TABLES,
    TABLE_COLUMNS,
    Prepared,
)

log = structlog.get_logger("ordersync.agent.sinks")


class Unchecked:
    """The `base` of a page applied whatever the stored cursor is."""


UNCHECKED = Unchecked()
# What SQLite raises for one record it cannot store (a constraint); see `quarantine`.
PER_RECORD_ERRORS = (sqlite3.IntegrityError, sqlite3.DataError)


class CursorMoved(Exception):
    """The stored cursor is not the one the page continues from: the page was not applied."""


def _insert(table: str) -> str:
    columns = TABLE_COLUMNS[table]
    marks = ", ".join("?" * len(columns))
    return f"INSERT INTO {table} ({', '.join(columns)}) VALUES ({marks})"


# Checkpoints: the writer only appends commits to the WAL; a thread of its own copies them back
# into the database file (and fsyncs it), so a page's COMMIT never waits for that. It gathers a
# second of commits first: a page's commit dirties ~100 random leaves of the id index and the
# same tail pages of the other tables, and a page dirtied by several commits is copied once.
# In a 1M-order backfill that halved the checkpoint thread's CPU per gathered 0.05 -> 0.5 s and
# halved it again at 1 s (bench/README.md). Past FALLBACK pages (~160 MB; a second of backfill
# writes ~130 MB) the writer checkpoints itself as SQLite normally would, so the WAL stays
# bounded even if the thread falls behind. The wait changes no guarantee: a page and its cursor
# are in the WAL at COMMIT, whenever they are copied.
FALLBACK_AUTOCHECKPOINT_PAGES = 40_000
CHECKPOINT_GATHER_SECONDS = 1.0  # commits to gather before a checkpoint runs


class Checkpointer(threading.Thread):
    """Runs `PRAGMA wal_checkpoint(PASSIVE)` on its own connection after commits."""

    def __init__(self, path: str, busy_timeout_ms: int, file: ReplicaFile) -> None:
        super().__init__(name="ordersync-sqlite-checkpoint", daemon=True)
        self._path = path
        self._file = file
        self._busy_timeout_ms = busy_timeout_ms
        self._committed = threading.Event()
        self._closing = threading.Event()

    def committed(self) -> None:
        self._committed.set()

    def close(self) -> None:
        """Stop at once, even mid-gather: the writer's own close checkpoints the rest."""
        self._closing.set()
        self._committed.set()
        self.join()

    def run(self) -> None:
        db = sqlite3.connect(self._path, isolation_level=None, timeout=self._busy_timeout_ms / 1000)
        try:
            # close() sets `_closing` before it wakes the thread, and the flag is read after
            # every wait and every checkpoint: a wake-up cleared meanwhile cannot be missed.
            while not self._closing.is_set():
                self._committed.wait()
                if self._closing.wait(CHECKPOINT_GATHER_SECONDS):  # gather, unless closing
                    return
                self._committed.clear()
                try:
                    self._file.check()  # see `SqliteWriter.close`
                    db.execute("PRAGMA wal_checkpoint(PASSIVE)").fetchall()
                except ReplicaFault as exc:
                    log.warning("replica_checkpoint_skipped", path=self._path, error=str(exc))
                except sqlite3.Error as exc:
                    # The writer's fallback checkpoint still bounds the WAL; say why this failed.
                    log.warning("replica_checkpoint_failed", path=self._path, error=str(exc))
        finally:
            db.close()


class SqliteWriter:
    """Applies pages to a SQLite replica file, one transaction per page. It runs in the writer
    process (`writer_process`), which owns it alone."""

    def __init__(self, path: str, busy_timeout_ms: int) -> None:
        self.file = ReplicaFile(path)  # before connecting: a missing file is not created
        self._db = sqlite3.connect(path, isolation_level=None, timeout=busy_timeout_ms / 1000)
        self._db.execute("PRAGMA journal_mode=WAL")
        self._db.execute("PRAGMA synchronous=NORMAL")
        self._db.execute(f"PRAGMA wal_autocheckpoint={FALLBACK_AUTOCHECKPOINT_PAGES}")
        self._checkpointer = Checkpointer(path, busy_timeout_ms, self.file)
        self._inserts: dict[Kind, str] = {}
        self._updates: dict[Kind, str] = {}
        for kind, table in ENTITY_TABLES.items():
            self._inserts[kind] = _insert(table)
            # The insert's values: seq (?1) picks the row, version (?4) never moves it back.
            assigned = ", ".join(
                f"{c} = ?{i}" for i, c in enumerate(ENTITY_COLUMNS[kind], 1) if c != "seq"
            )
            self._updates[kind] = f"UPDATE {table} SET {assigned} WHERE seq = ?1 AND version < ?4"
        self._lines = {kind: _insert(table.name) for kind, table in LINE_TABLES.items()}
        self._applied = _insert("applied_versions")
        # The cursor never moves back (see records.may_replace): forward streams keep
        # a stored cursor ahead of the page's, descending ones a stored cursor below it.
        self._cursor, self._descending_cursor = (
            _insert("checkpoints")
            + " ON CONFLICT (source, stream) DO UPDATE SET updated_at_ms = excluded.updated_at_ms,"
            " last_id = excluded.last_id, committed_at_ms = excluded.committed_at_ms"
            f" WHERE (excluded.updated_at_ms, excluded.last_id) {op}"
            " (checkpoints.updated_at_ms, checkpoints.last_id)"
            for op in (">=", "<=")
        )
        self._checkpointer.start()

    def close(self) -> None:
        self._checkpointer.close()
        try:
            self.file.check()
        except ReplicaFault as exc:
            # Closing the last connection checkpoints, writing the WAL index (-shm), which is
            # mapped in memory: on a file that no longer takes writes that is SIGBUS, not an
            # error. The connection is left to the process's exit; the WAL keeps every commit.
            log.error("replica_left_open", path=self.file.path, error=str(exc))
            return
        self._db.close()  # the last connection to close checkpoints the rest

    def apply(
        self,
        source: str,
        stream: str,
        records: Sequence[Prepared],
        cursor: Cursor,
        stamp: int,
        hook: FaultHook | None = None,
        *,
        base: Cursor | Unchecked | None = UNCHECKED,
        held: Sequence[HeldBack] = (),
    ) -> tuple[int, int, int]:
        """Apply the page and store `cursor` in one transaction: (records applied, records of
        the page quarantined, records of `source` in the quarantine). `records` holds one
        version per entity (the agent keeps the latest); `held` those the agent found it cannot
        store. `stamp` (ms) is the applied and committed time the rows record. With `base`, the
        page applies only if the stored cursor is still `base` (None: none stored), else
        `CursorMoved`: the page was sent after one that failed, or another agent writes here.
        A record SQLite refuses sends the page through again, one SAVEPOINT per record, and
        only the refused ones go to the quarantine."""
        self.file.check()
        page = (source, stream, records, cursor, stamp, hook, base, held)
        try:
            return self._transaction(*page, one_by_one=False)
        except PER_RECORD_ERRORS as exc:
            if quarantine.is_ledger_conflict(str(exc)):
                raise
        return self._transaction(*page, one_by_one=True)

    def _transaction(
        self,
        source: str,
        stream: str,
        records: Sequence[Prepared],
        cursor: Cursor,
        stamp: int,
        hook: FaultHook | None,
        base: Cursor | Unchecked | None,
        held: Sequence[HeldBack],
        *,
        one_by_one: bool,
    ) -> tuple[int, int, int]:
        db = self._db
        db.execute("BEGIN IMMEDIATE")
        try:
            if not isinstance(base, Unchecked):
                self._check_base(db, source, stream, base)
            applied, held = 0, list(held)
            groups: dict[Kind, list[Prepared]] = {}
            for record in records:
                groups.setdefault(record[0], []).append(record)
            for kind, group in groups.items():
                if one_by_one:
                    done, refused = self._apply_each(db, source, kind, group, stamp, hook)
                    applied, held = applied + done, held + refused
                else:
                    applied += self._apply_kind(db, source, kind, group, stamp, hook)
            ids: dict[Kind, list[str]] = {}
            for kind, entity_id in [(r[0], r[1]) for r in records] + [(h.kind, h.id) for h in held]:
                ids.setdefault(kind, []).append(entity_id)
            kept, total = quarantine.settle(_executor(db), source, stream, ids, held, stamp)
            fire(hook, "before_cursor")
            store_cursor = self._descending_cursor if descends(stream) else self._cursor
            db.execute(store_cursor, (source, stream, cursor.updated_at_ms, cursor.last_id, stamp))
            fire(hook, "after_cursor")
            db.execute("COMMIT")
            self._checkpointer.committed()
        except BaseException:
            # SQLite ends the transaction itself on some errors (a full disk): a ROLLBACK then
            # would fail and hide the cause.
            if db.in_transaction:
                db.execute("ROLLBACK")
            raise
        return applied, kept, total

    def _apply_each(
        self,
        db: sqlite3.Connection,
        source: str,
        kind: Kind,
        records: list[Prepared],
        stamp: int,
        hook: FaultHook | None,
    ) -> tuple[int, list[HeldBack]]:
        applied, refused = 0, []
        for record in records:
            db.execute("SAVEPOINT record")
            try:
                applied += self._apply_kind(db, source, kind, [record], stamp, hook)
            except PER_RECORD_ERRORS as exc:
                if quarantine.is_ledger_conflict(str(exc)):
                    raise
                db.execute("ROLLBACK TO record")
                reason = f"{kind} {record[1]}: the replica refused it ({exc})"
                refused.append(quarantine.from_prepared(record, reason))
            db.execute("RELEASE record")
        return applied, refused

    @staticmethod
    def _check_base(db: sqlite3.Connection, source: str, stream: str, base: Cursor | None) -> None:
        row = db.execute(
            "SELECT updated_at_ms, last_id FROM checkpoints WHERE source = ? AND stream = ?",
            (source, stream),
        ).fetchone()
        stored = None if row is None else Cursor(int(row[0]), str(row[1]))
        if stored != base:
            raise CursorMoved(
                f"the stored cursor of {source}/{stream} is {stored}, not {base} that the page "
                "continues from (an earlier page failed, or another agent writes this replica)"
            )

    def _apply_kind(
        self,
        db: sqlite3.Connection,
        source: str,
        kind: Kind,
        records: list[Prepared],
        stamp: int,
        hook: FaultHook | None,
    ) -> int:
        table = ENTITY_TABLES[kind]
        held = _held(db, table, source, [r[1] for r in records])
        newer = [r for r in records if r[2] > held.get(r[1], (0, 0))[0]]
        if not newer:
            return 0
        seqs = {i: seq for i, (_, seq) in held.items()}
        first_seen = [r for r in newer if r[1] not in held]
        if first_seen:
            (top,) = db.execute(f"SELECT coalesce(max(seq), 0) FROM {table}").fetchone()
            seqs |= {r[1]: top + n for n, r in enumerate(first_seen, 1)}
            db.executemany(self._inserts[kind], [(seqs[r[1]], *r[3]) for r in first_seen])
        replaced = [r for r in newer if r[1] in held]
        if replaced:
            db.executemany(self._updates[kind], [(seqs[r[1]], *r[3]) for r in replaced])
        lines = LINE_TABLES.get(kind)
        if lines is not None:
            if replaced:
                marks = ",".join("?" * len(replaced))
                db.execute(
                    f"DELETE FROM {lines.name} WHERE {lines.columns[0]} IN ({marks})",
                    [seqs[r[1]] for r in replaced],
                )
            db.executemany(self._lines[kind], [(seqs[r[1]], *line) for r in newer for line in r[4]])
        fire(hook, "mid_apply")
        db.executemany(
            self._applied,
            [(kind, seqs[r[1]], r[2], source, r[1], stamp) for r in newer],
        )
        return len(newer)


def _executor(db: sqlite3.Connection) -> quarantine.Execute:
    def execute(
        sql: str, params: Mapping[str, Any] | list[dict[str, Any]]
    ) -> list[tuple[Any, ...]]:
        if isinstance(params, list):
            db.executemany(sql, params)
            return []
        return db.execute(sql, params).fetchall()

    return execute


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
