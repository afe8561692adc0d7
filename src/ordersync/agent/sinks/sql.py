"""The SQL sink: an ERP replica in SQLite (default, WAL) or PostgreSQL, chosen by URL.

Exactly-once effect: the page's upserts, its `applied_versions` rows and the new cursor commit
in one transaction. `applied_versions` has (source, kind, id, version) as primary key, so a
version applied twice would abort the transaction instead of silently happening.
Decimals are exact: TEXT on SQLite, NUMERIC on PostgreSQL, never float.
A record the replica cannot store goes to the `quarantine` table in that same transaction
(`quarantine.py`), so one record never holds its stream back.

Safe beside a second writer (another agent, one whose lease just lapsed): the conditional upsert
decides under the row's lock which versions win, and its RETURNING names them; only those get
their lines and ledger rows. The cursor is stored only at or past the stored one
(`records.may_replace`). On SQLite, `writer="process"` (default) applies pages through
`sqlite_fast` in a writer process; `writer="inline"` runs this module's apply, the reference.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections.abc import Awaitable, Iterator, Sequence
from decimal import Decimal
from typing import Any, Literal

import structlog
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    Numeric,
    String,
    Table,
    Text,
    TypeDecorator,
    UniqueConstraint,
    delete,
    insert,
    inspect,
    literal_column,
    select,
    tuple_,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.engine import Connection, Dialect, make_url
from sqlalchemy.exc import DBAPIError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersync.agent.errors import SinkError
from ordersync.agent.records import ApplyResult, Cursor, Kind, Record, descends
from ordersync.agent.sinks import quarantine_sql
from ordersync.agent.sinks.base import FaultHook, fire, latest_per_id, settled
from ordersync.agent.sinks.quarantine import HeldBack, Quarantined, screen
from ordersync.agent.sinks.replica_file import ReplicaFault, ReplicaFile
from ordersync.agent.sinks.rows import (
    APPLIED_COLUMNS,
    ENTITY_COLUMNS,
    LINE_TABLES,
    TABLE_COLUMNS,
    applied_values,
    by_kind,
    entity_values,
    line_items,
    line_values,
)
from ordersync.agent.sinks.sqlite_fast import UNCHECKED, Unchecked
from ordersync.agent.sinks.writer_process import WriterProcess
from ordersync.domain.timestamps import now_ms
from ordersync.errors import ConfigurationError
from ordersync.kinds import KINDS, by_name
from ordersync.store.engine import SQLITE_BUSY_TIMEOUT_MS, create_engines, parse_database_url

log = structlog.get_logger("ordersync.agent.sinks")
Writer = Literal["process", "inline"]


class ExactDecimal(TypeDecorator[Decimal]):
    """NUMERIC where the database has an exact one; TEXT (the decimal's string) on SQLite."""

    impl = Text
    cache_ok = True

    def load_dialect_impl(self, dialect: Dialect) -> Any:
        if dialect.name == "postgresql":
            return dialect.type_descriptor(Numeric(asdecimal=True))
        return dialect.type_descriptor(Text())

    def process_bind_param(self, value: Decimal | None, dialect: Dialect) -> Any:
        if value is None or dialect.name == "postgresql":
            return value
        return str(value)

    def process_result_value(self, value: Any, dialect: Dialect) -> Decimal | None:
        return None if value is None else Decimal(str(value))


metadata = MetaData()
_ID = 64
# Each entity row gets a local sequence number (SQLite's rowid, so INTEGER there) at its first
# insert. Lines and the applied ledger are keyed by it instead of the platform's random UUIDs:
# a backfill then appends to their B-trees instead of dirtying one random page per record and
# index, which made a page's commit write ~1.6 MB of WAL for 100 orders (bench/README.md).
_SEQ = BigInteger().with_variant(Integer, "sqlite")
# The layout version, kept in `replica_meta`; a replica written with another layout is refused
# with a clear message instead of failing on a missing column mid-sync.
LAYOUT = 2
orders = Table(
    "orders",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("source", String(50), nullable=False),
    Column("id", String(_ID), nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("status", String(30)),
    Column("customer_identifier", String(100)),
    Column("data", Text, nullable=False),
    UniqueConstraint("source", "id", name="uq_orders_source_id"),
)
order_lines = Table(
    "order_lines",
    metadata,
    Column("order_seq", _SEQ, primary_key=True),  # orders.seq: join lines to their order on it
    Column("line_number", Integer, primary_key=True),
    Column("source", String(50), nullable=False),
    Column("order_id", String(_ID), nullable=False),
    Column("sku", String(200)),
    Column("quantity", ExactDecimal()),
    Column("unit_price", ExactDecimal()),
    sqlite_with_rowid=False,
)
shipments = Table(
    "shipments",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("source", String(50), nullable=False),
    Column("id", String(_ID), nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("order_id", String(_ID)),
    Column("status", String(30)),
    Column("tracking_number", String(200)),
    Column("data", Text, nullable=False),
    UniqueConstraint("source", "id", name="uq_shipments_source_id"),
)
# A SKU's stock (kind "inventory"), and its quantity per (location, status) at that version.
inventory = Table(
    "inventory",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("source", String(50), nullable=False),
    Column("id", String(_ID), nullable=False),
    Column("version", Integer, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("sku", String(200)),
    Column("data", Text, nullable=False),
    UniqueConstraint("source", "id", name="uq_inventory_source_id"),
)
inventory_quantities = Table(
    "inventory_quantities",
    metadata,
    Column("inventory_seq", _SEQ, primary_key=True),  # inventory.seq
    Column("location", String(200), primary_key=True),
    Column("status", String(50), primary_key=True),
    Column("source", String(50), nullable=False),
    Column("sku_id", String(_ID), nullable=False),
    Column("quantity", ExactDecimal()),
)

# The at-most-once ledger: one row per (entity, version) applied. Its primary key makes a
# second application of a version abort the page's transaction.
applied_versions = Table(
    "applied_versions",
    metadata,
    Column("kind", String(20), primary_key=True),
    Column("entity_seq", _SEQ, primary_key=True),  # orders.seq or shipments.seq
    Column("version", Integer, primary_key=True),
    Column("source", String(50), nullable=False),
    Column("id", String(_ID), nullable=False),
    Column("applied_at_ms", BigInteger, nullable=False),
    sqlite_with_rowid=False,
)
checkpoints = Table(
    "checkpoints",
    metadata,
    Column("source", String(50), primary_key=True),
    Column("stream", String(30), primary_key=True),
    Column("updated_at_ms", BigInteger, nullable=False),
    Column("last_id", String(_ID), nullable=False),
    Column("committed_at_ms", BigInteger, nullable=False),
)
replica_meta = Table(
    "replica_meta",
    metadata,
    Column("name", String(50), primary_key=True),
    Column("value", String(200), nullable=False),
)
TABLES: dict[Kind, Table] = {k.name: metadata.tables[k.table] for k in KINDS.values()}
for _name, _columns in TABLE_COLUMNS.items():  # rows.py's tuples must match the tables
    if tuple(metadata.tables[_name].columns.keys()) != _columns:
        raise RuntimeError(f"{_name}: columns {metadata.tables[_name].columns.keys()} differ")


class SqlSink:
    """Build with `await SqlSink.open("sqlite:///replica.db")` or a postgresql:// URL."""

    def __init__(self, url: str, engines: Any, *, fault_hook: FaultHook | None = None) -> None:
        self.url = url
        self._reader, self.engine = engines
        self.backend = self.engine.dialect.name
        self.fault_hook = fault_hook
        # SQLite: pages go to a writer process (writer_process.py), started at the first page
        # and again after one died; reading commands never start one.
        self._sqlite_path: str | None = None
        self._file: ReplicaFile | None = None
        self._writer: WriterProcess | None = None
        self._writer_lock = asyncio.Lock()
        self.quarantine_counts: dict[str, int] = {}  # source -> records quarantined
        self.retries_quarantine = True  # False: reading the cursor writes nothing (status)
        self._streams_read: dict[str, set[str]] = {}  # source -> streams whose cursor was read

    @classmethod
    async def open(
        cls, url: str, *, fault_hook: FaultHook | None = None, writer: Writer = "process"
    ) -> SqlSink:
        """On SQLite, `writer` picks the write path: "process" (`sqlite_fast` in a writer
        process, the default) or "inline" (the SQLAlchemy apply every backend shares, the
        reference contract). PostgreSQL always writes inline."""
        if writer not in ("process", "inline"):
            raise ConfigurationError(f"writer must be 'process' or 'inline', not {writer!r}")
        sink = cls(url, create_engines(parse_database_url(url), pool_size=2), fault_hook=fault_hook)
        try:
            async with sink.engine.begin() as conn:
                await conn.run_sync(_prepare_layout, url)
        except SinkError:
            await sink.close()
            raise
        except (SQLAlchemyError, OSError) as exc:
            await sink.close()
            raise SinkError(f"cannot open the replica at {sink.safe_url}: {exc}") from exc
        if sink.backend == "sqlite":
            path = parse_database_url(url).sync_url.removeprefix("sqlite:///")
            sink._file = ReplicaFile(path)
            if writer == "process":
                sink._sqlite_path = path
        return sink

    def _check_file(self) -> None:
        """On SQLite, a ReplicaFault before any connection touches a file that no longer takes
        writes: a connection writing the WAL index (-shm, mapped in memory; readers write it
        too) of such a file dies of SIGBUS instead of failing."""
        if self._file is not None:
            self._file.check()

    async def close(self) -> None:
        with self._translated("cannot close the connections"):
            async with self._writer_lock:
                if self._writer is not None:
                    await self._writer.close()
                    self._writer = None
            try:
                self._check_file()
            except ReplicaFault as exc:  # closing the last connection would checkpoint into it
                log.error("replica_left_open", error=str(exc))
                return
            await self.engine.dispose()
            if self._reader is not self.engine:
                await self._reader.dispose()

    async def load_cursor(self, source: str, stream: str) -> Cursor | None:
        """The stored cursor. The engine reads it at the start of every cycle, so this is
        where the stream's quarantined records are applied again (see `retry_quarantine`)."""
        cursor = await self._stored_cursor(source, stream)
        if self.retries_quarantine:
            self._streams_read.setdefault(source, set()).add(stream)
            await self.retry_quarantine(source, stream)
        return cursor

    async def _stored_cursor(self, source: str, stream: str) -> Cursor | None:
        self._check_file()
        c = checkpoints.c
        with self._translated(f"cannot read the cursor of {source}/{stream}"):
            async with self.engine.connect() as conn:
                row = (
                    await conn.execute(
                        select(c.updated_at_ms, c.last_id).where(
                            c.source == source, c.stream == stream
                        )
                    )
                ).first()
        return None if row is None else Cursor(int(row[0]), str(row[1]))

    async def retry_quarantine(self, source: str, stream: str) -> None:
        """Apply the quarantined records of `stream` again, as a page that keeps the stream's
        cursor (also those of streams whose cursor is never read: HubRise's events): those now
        storable (or superseded) leave the quarantine, the others count one more attempt. A
        failure is logged: the cycle's own pages meet the same replica next."""
        try:
            by_stream: dict[str, list[Record]] = {}
            for q in await self.load_quarantine(source):
                if q.stream == stream or q.stream not in self._streams_read.get(source, ()):
                    by_stream.setdefault(q.stream, []).append(q.record())
            for held_stream, records in by_stream.items():
                cursor = await self._stored_cursor(source, held_stream)
                if cursor is not None:
                    await self.apply_page(source, held_stream, records, cursor)
        except SinkError as exc:
            log.warning("quarantine_retry_failed", source=source, stream=stream, error=str(exc))

    async def load_quarantine(self, source: str, stream: str | None = None) -> list[Quarantined]:
        """The records of `source` (one stream when given) held in the quarantine."""
        self._check_file()
        try:
            async with self.engine.connect() as conn:
                held = await quarantine_sql.load(conn, source, stream)
        except SQLAlchemyError as exc:
            raise SinkError(
                f"cannot read the quarantine of the replica at {self.url}: {exc}"
            ) from exc
        if stream is None:
            self.quarantine_counts[source] = len(held)
        return held

    async def load_versions(self, source: str, kind: Kind) -> dict[str, int]:
        table = TABLES[kind]
        self._check_file()
        with self._translated(f"cannot read the {kind} versions of {source}"):
            async with self.engine.connect() as conn:
                rows = await conn.execute(
                    select(table.c.id, table.c.version).where(table.c.source == source)
                )
                return {str(r[0]): int(r[1]) for r in rows}

    @contextlib.contextmanager
    def _translated(self, what: str) -> Iterator[None]:
        """Driver and OS errors become SinkError: the engine fails the cycle, not the agent."""
        try:
            yield
        except (SQLAlchemyError, OSError) as exc:
            # The driver's own message: SQLAlchemy's adds the statement and a link.
            detail = str(exc.orig if isinstance(exc, DBAPIError) else exc).strip()
            raise SinkError(f"{what} from the replica at {self.safe_url}: {detail}") from exc

    @property
    def safe_url(self) -> str:
        """The replica's URL without its password, for messages."""
        return make_url(self.url).render_as_string(hide_password=True)

    async def apply_page(
        self, source: str, stream: str, records: Sequence[Record], new_cursor: Cursor
    ) -> ApplyResult:
        if self._sqlite_path is not None:
            outcome = await self.submit_page(source, stream, records, new_cursor, UNCHECKED)
            return await outcome
        storable, held = screen(source, records, refuses_nul=self.backend == "postgresql")
        try:
            try:
                applied, quarantined = await self._apply(
                    source, stream, records, storable, held, new_cursor
                )
            except SQLAlchemyError as exc:
                if not quarantine_sql.is_per_record(exc):
                    raise
                applied, quarantined = await self._apply(
                    source, stream, records, storable, held, new_cursor, one_by_one=True
                )
        except (SQLAlchemyError, OSError) as exc:
            raise SinkError(f"the replica refused a page of {source}/{stream}: {exc}") from exc
        return ApplyResult(applied, len(records) - applied - quarantined, quarantined)

    async def _apply(
        self,
        source: str,
        stream: str,
        records: Sequence[Record],
        storable: list[Record],
        held: list[HeldBack],
        new_cursor: Cursor,
        *,
        one_by_one: bool = False,
    ) -> tuple[int, int]:
        """The page's transaction: (records applied, records quarantined)."""
        async with self.engine.begin() as conn:
            applied, held = 0, list(held)
            for kind, group in by_kind(storable).items():
                if one_by_one:  # a record was refused: find which, each in a SAVEPOINT
                    done, refused = await quarantine_sql.apply_each(
                        conn, group, functools.partial(self._apply_kind, conn, source, kind)
                    )
                    applied, held = applied + done, held + refused
                else:
                    applied += await self._apply_kind(conn, source, kind, group)
            kept, total = await quarantine_sql.settle(conn, source, stream, records, held, now_ms())
            fire(self.fault_hook, "before_cursor")
            await self._save_cursor(conn, source, stream, new_cursor)
            fire(self.fault_hook, "after_cursor")
        self.quarantine_counts[source] = total
        return applied, kept

    async def submit_page(
        self,
        source: str,
        stream: str,
        records: Sequence[Record],
        new_cursor: Cursor,
        base: Cursor | Unchecked | None,
    ) -> Awaitable[ApplyResult]:
        """On SQLite: send the page to the writer process and return at once (see `Sink`).
        Elsewhere: apply it now."""
        if self._sqlite_path is None:
            return settled(await self.apply_page(source, stream, records, new_cursor))
        with self._translated("cannot start the writer process"):
            writer = await self._sqlite_writer(self._sqlite_path)
        return await writer.submit(
            source, stream, records, new_cursor, now_ms(), base=base, hook=self.fault_hook
        )

    async def _sqlite_writer(self, path: str) -> WriterProcess:
        async with self._writer_lock:
            if self._writer is not None and self._writer.failed is not None:
                await self._writer.close()
                self._writer = None
            if self._writer is None:
                self._writer = await WriterProcess.start(
                    path, SQLITE_BUSY_TIMEOUT_MS, self.quarantine_counts
                )
            return self._writer

    async def _apply_kind(
        self, conn: AsyncConnection, source: str, kind: Kind, records: list[Record]
    ) -> int:
        table = TABLES[kind]
        latest = latest_per_id(records)
        # Only a shortcut: a version this read finds held is not newer, whatever happens next.
        held = await self._held(conn, table, source, [r.id for r in latest.values()])
        # In id order, so that two writers lock shared rows in the same order.
        candidates = sorted(
            (r for r in latest.values() if r.version > held.get(r.id, 0)), key=lambda r: r.id
        )
        if not candidates:
            return 0
        won, updated = await self._upsert_winners(conn, table, kind, source, candidates, held)
        newer = [r for r in candidates if r.id in won]
        if not newer:
            return 0
        if by_name(kind).line_table is not None:
            await self._replace_lines(conn, kind, source, newer, won, updated)
        fire(self.fault_hook, "mid_apply")
        stamp = now_ms()
        await conn.execute(
            insert(applied_versions),
            [
                dict(
                    zip(
                        APPLIED_COLUMNS,
                        applied_values(kind, won[r.id], source, r, stamp),
                        strict=True,
                    )
                )
                for r in newer
            ],
        )
        return len(newer)

    async def _upsert_winners(
        self,
        conn: AsyncConnection,
        table: Table,
        kind: Kind,
        source: str,
        records: list[Record],
        held: dict[str, int],
    ) -> tuple[dict[str, int], set[str]]:
        """Upsert if newer: (id -> seq of the rows this statement wrote, the ids among them it
        updated rather than inserted). The statement decides under the row's lock: a version
        another writer committed after the held read loses, and is left out here (no lines,
        no ledger row for it)."""
        columns = ENTITY_COLUMNS[kind][1:]  # seq is given by the database
        statement = upsert_if_newer(table, self.backend).returning(table.c.id, table.c.seq)
        if self.backend == "postgresql":
            # xmax is 0 on a row version this statement inserted; an updated one carries ours.
            statement = statement.returning(literal_column("xmax::text <> '0'"))
        rows = (
            await conn.execute(
                statement,
                [
                    dict(zip(columns, entity_values(None, source, r)[1:], strict=True))
                    for r in records
                ],
            )
        ).all()
        won = {str(row[0]): int(row[1]) for row in rows}
        if self.backend == "postgresql":
            return won, {str(row[0]) for row in rows if row[2]}
        # SQLite: BEGIN IMMEDIATE, nobody wrote since the held read, which saw every row.
        return won, won.keys() & held.keys()

    @staticmethod
    async def _held(
        conn: AsyncConnection, table: Table, source: str, ids: list[str]
    ) -> dict[str, int]:
        """id -> version of the rows the replica holds among `ids`."""
        c = table.c
        rows = await conn.execute(select(c.id, c.version).where(c.source == source, c.id.in_(ids)))
        return {str(r[0]): int(r[1]) for r in rows}

    @staticmethod
    async def _replace_lines(
        conn: AsyncConnection,
        kind: Kind,
        source: str,
        newer: list[Record],
        seqs: dict[str, int],
        updated: set[str],
    ) -> None:
        # The old lines of every row the upsert updated go, even of a row the held read did
        # not see: another writer may have inserted it, with its lines, since. A row it
        # inserted has none (and skipping that DELETE keeps a backfill's plans cheap).
        layout = LINE_TABLES[kind]
        table = metadata.tables[layout.name]
        owner = table.c[layout.columns[0]]
        if updated:
            replaced = [seqs[i] for i in updated]
            await conn.execute(delete(table).where(owner.in_(replaced)))
        lines = [
            dict(zip(layout.columns, line_values(seqs[r.id], source, r, item), strict=True))
            for r in newer
            for item in line_items(r)
        ]
        if lines:
            await conn.execute(insert(table), lines)

    async def _save_cursor(
        self, conn: AsyncConnection, source: str, stream: str, cursor: Cursor
    ) -> None:
        """Store `cursor` unless the stored one is ahead of it (`records.descends`)."""
        dialect_insert = postgresql.insert if self.backend == "postgresql" else sqlite.insert
        values = {
            "source": source,
            "stream": stream,
            "updated_at_ms": cursor.updated_at_ms,
            "last_id": cursor.last_id,
            "committed_at_ms": now_ms(),
        }
        statement = dialect_insert(checkpoints).values(values)
        stored = self._position(checkpoints.c.updated_at_ms, checkpoints.c.last_id)
        incoming = self._position(statement.excluded.updated_at_ms, statement.excluded.last_id)
        await conn.execute(
            statement.on_conflict_do_update(
                index_elements=[checkpoints.c.source, checkpoints.c.stream],
                set_={k: v for k, v in values.items() if k not in ("source", "stream")},
                where=incoming <= stored if descends(stream) else incoming >= stored,
            )
        )

    def _position(self, updated_at_ms: Any, last_id: Any) -> Any:
        # Ids compare byte by byte, as in Python and SQLite, not by the server's locale.
        return tuple_(
            updated_at_ms, last_id.collate("C") if self.backend == "postgresql" else last_id
        )


def _prepare_layout(conn: Connection, url: str) -> None:
    """Create the replica's tables, or check that existing ones have this layout."""
    tables = set(inspect(conn).get_table_names())
    if "orders" in tables and "replica_meta" not in tables:
        raise SinkError(
            f"the replica at {url} was written by an older ordersync (its orders table has no "
            "seq column); sync into a new replica (a full backfill rebuilds it), or drop its "
            "tables orders, order_lines, shipments, applied_versions and checkpoints first"
        )
    metadata.create_all(conn)
    quarantine_sql.create_table(conn)
    c = replica_meta.c
    layout = conn.execute(select(c.value).where(c.name == "layout")).scalar()
    if layout is None:
        conn.execute(insert(replica_meta).values(name="layout", value=str(LAYOUT)))
    elif layout != str(LAYOUT):
        raise SinkError(
            f"the replica at {url} has layout {layout}; this ordersync writes layout {LAYOUT}"
        )


def upsert_if_newer(table: Table, backend: str) -> Any:
    """INSERT, or UPDATE the held row only when the incoming version is newer."""
    dialect_insert = postgresql.insert if backend == "postgresql" else sqlite.insert
    statement = dialect_insert(table)
    updated = {
        c.name: statement.excluded[c.name]
        for c in table.columns
        if c.name not in ("seq", "source", "id")
    }
    return statement.on_conflict_do_update(
        index_elements=[table.c.source, table.c.id],
        set_=updated,
        where=statement.excluded.version > table.c.version,
    )
