"""Database URLs and engines: SQLite (embedded default) and PostgreSQL, selected by URL.

On SQLite, the hot listing reads also have a `SqliteReadPool`: plain `sqlite3` connections
that run a whole read in one thread hop, where aiosqlite hops to its thread and back for every
DBAPI call.

PostgreSQL connections: each process (each hub worker) keeps a pool of `pool_size` connections
and opens up to `max_overflow` more under load, so a hub of W workers may hold
W x (pool_size + max_overflow) server connections; keep that below the server's
`max_connections` minus its reserved and other clients' connections (README, "Connections and
PgBouncer"). Behind PgBouncer in transaction pooling, consecutive transactions of one client
connection may run on different server connections, so a statement prepared on one is missing
on the next ("prepared statement ... does not exist"): the URL flag `pgbouncer=true` turns
psycopg's server-side prepared statements off (`prepare_threshold=None`).
"""

from __future__ import annotations

import asyncio
import concurrent.futures
import sqlite3
import threading
from collections.abc import Callable, Mapping
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import event
from sqlalchemy.engine import Dialect, make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine
from sqlalchemy.sql.compiler import SQLCompiler

from ordersync.errors import ConfigurationError

SQLITE_BUSY_TIMEOUT_MS = 10_000
SQLITE_READ_THREADS = 4
# PostgreSQL connections per process: kept open, and opened on top under load (then closed).
DB_POOL_SIZE = 8
DB_MAX_OVERFLOW = 2
# The ordersync-only query flag of a PostgreSQL URL that says "behind PgBouncer in transaction
# pooling": removed from the URL given to the driver.
PGBOUNCER_FLAG = "pgbouncer"

T = TypeVar("T")


@dataclass(frozen=True)
class DatabaseURL:
    """One database named three ways: as given, for the async engine, for Alembic's sync one."""

    given: str
    async_url: str
    sync_url: str
    backend: str  # "sqlite" | "postgresql"
    # PostgreSQL behind PgBouncer in transaction pooling (`?pgbouncer=true`): no server-side
    # prepared statements.
    pgbouncer: bool = False

    def connect_args(self) -> dict[str, Any]:
        """The driver's connect arguments this URL asks for (the async and sync engines)."""
        return {"prepare_threshold": None} if self.pgbouncer else {}


def parse_database_url(url: str) -> DatabaseURL:
    try:
        parsed = make_url(url)
    except Exception as exc:
        raise ConfigurationError(f"not a database URL: {url!r} ({exc})") from None
    backend = parsed.get_backend_name()
    if backend == "sqlite":
        if not parsed.database or parsed.database == ":memory:":
            raise ConfigurationError(
                "an in-memory SQLite database cannot be shared; use a file: sqlite:///hub.db"
            )
        return DatabaseURL(
            url,
            parsed.set(drivername="sqlite+aiosqlite").render_as_string(hide_password=False),
            parsed.set(drivername="sqlite").render_as_string(hide_password=False),
            "sqlite",
        )
    if backend in ("postgresql", "postgres"):
        flag = parsed.query.get(PGBOUNCER_FLAG, "false")
        if not isinstance(flag, str) or flag.lower() not in ("true", "false", "1", "0"):
            raise ConfigurationError(
                f"{PGBOUNCER_FLAG}= in a database URL takes true or false, got {flag!r}"
            )
        psycopg = (
            parsed.difference_update_query([PGBOUNCER_FLAG])
            .set(drivername="postgresql+psycopg")
            .render_as_string(hide_password=False)
        )
        return DatabaseURL(url, psycopg, psycopg, "postgresql", flag.lower() in ("true", "1"))
    raise ConfigurationError(
        f"unsupported database {backend!r} in {url!r}: use sqlite:///FILE or postgresql://..."
    )


def _sqlite_pragmas(dbapi_connection: Any, immediate: bool) -> None:
    # The driver's own transaction handling is switched off so that we can BEGIN IMMEDIATE:
    # a writer that takes the lock up front waits on busy_timeout instead of failing with
    # "database is locked" when it upgrades from a read lock mid-transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    # busy_timeout first: switching a database to WAL takes a lock that a writer may hold.
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engines(
    url: DatabaseURL, *, pool_size: int = DB_POOL_SIZE, max_overflow: int = DB_MAX_OVERFLOW
) -> tuple[AsyncEngine, AsyncEngine]:
    """A (reader, writer) pair. On PostgreSQL both are the same engine, holding at most
    `pool_size + max_overflow` connections."""
    if url.backend == "postgresql":
        engine = create_async_engine(
            url.async_url,
            pool_size=pool_size,
            max_overflow=max_overflow,
            connect_args=url.connect_args(),
        )
        return engine, engine
    reader = create_async_engine(url.async_url, pool_size=pool_size, max_overflow=0)
    writer = create_async_engine(url.async_url, pool_size=2, max_overflow=0)
    for engine, begin in ((reader, "BEGIN"), (writer, "BEGIN IMMEDIATE")):
        _install_sqlite_hooks(engine, begin)
    return reader, writer


def _install_sqlite_hooks(engine: AsyncEngine, begin_statement: str) -> None:
    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        _sqlite_pragmas(dbapi_connection, immediate=begin_statement != "BEGIN")

    @event.listens_for(engine.sync_engine, "begin")
    def _on_begin(connection: Any) -> None:
        connection.exec_driver_sql(begin_statement)


class SqliteReadPool:
    """Read-only `sqlite3` connections, one per thread of a small executor of their own.

    `run(fn)` calls `fn(connection)` in one of the threads: a whole read (statements, fetches)
    costs one thread hop; `run(fn, inline=True)` skips even that hop, for small reads. Each
    connection is in autocommit mode (no BEGIN), so every statement is its own read transaction
    and sees every write committed before it started (WAL: readers neither wait for the writer
    nor block it). `query_only` makes the read-only use a guarantee.

    `execute` runs a SQLAlchemy Core statement: it is compiled once per statement object (the
    store caches its statements) and then only its parameters are bound. Bound values must be
    what `sqlite3` takes as is (int, str, None): no SQLAlchemy type processing happens here, and
    rows come back as plain tuples.
    """

    def __init__(self, url: DatabaseURL, dialect: Dialect, size: int = SQLITE_READ_THREADS):
        database = make_url(url.sync_url).database
        assert url.backend == "sqlite" and database
        self._database = database
        self._dialect = dialect
        self._local = threading.local()
        self._connections: list[sqlite3.Connection] = []
        self._lock = threading.Lock()
        self._compiled: dict[Any, _CompiledRead] = {}
        self._executor = concurrent.futures.ThreadPoolExecutor(
            max_workers=size, thread_name_prefix="ordersync-sqlite-read"
        )

    async def run(self, fn: Callable[[sqlite3.Connection], T], *, inline: bool = False) -> T:
        """`fn(connection)` in a reader thread; or, with `inline`, right here on the event
        loop's thread (its own connection), for reads known to be small: see `_list`."""
        if inline:
            return self._call(fn)
        loop = asyncio.get_running_loop()
        return await loop.run_in_executor(self._executor, self._call, fn)

    def execute(
        self, connection: sqlite3.Connection, statement: Any, params: Mapping[str, Any]
    ) -> list[Any]:
        """Run `statement` with `params` on `connection` (inside `run`), fetching every row."""
        compiled = self._compiled.get(statement)
        if compiled is None:
            compiled = self._compiled[statement] = _CompiledRead(statement, self._dialect)
        sql, args = compiled.bind(params)
        return connection.execute(sql, args).fetchall()

    async def close(self) -> None:
        """Wait for running reads, then close every connection."""
        await asyncio.to_thread(self._executor.shutdown, wait=True)
        with self._lock:
            connections, self._connections = self._connections, []
        for connection in connections:
            connection.close()

    def _call(self, fn: Callable[[sqlite3.Connection], T]) -> T:
        connection: sqlite3.Connection | None = getattr(self._local, "connection", None)
        if connection is None:
            connection = self._local.connection = self._connect()
        return fn(connection)

    def _connect(self) -> sqlite3.Connection:
        # isolation_level=None: autocommit, see the class docstring. check_same_thread=False
        # only so that `close` may close it from the event loop's thread once its own is done.
        connection = sqlite3.connect(self._database, isolation_level=None, check_same_thread=False)
        _sqlite_pragmas(connection, immediate=False)
        connection.execute("PRAGMA query_only=ON")
        with self._lock:
            self._connections.append(connection)
        return connection


class _CompiledRead:
    """A statement compiled once for `sqlite3`: its SQL and how to order its parameters."""

    def __init__(self, statement: Any, dialect: Dialect) -> None:
        compiled = statement.compile(dialect=dialect)
        assert isinstance(compiled, SQLCompiler) and compiled.positiontup is not None
        self._compiled = compiled
        self._sql = compiled.string
        self._names = tuple(compiled.positiontup)
        # Values fixed in the statement itself (literals SQLAlchemy binds as parameters).
        self._defaults = {
            name: value for name, value in compiled.params.items() if value is not None
        }
        # IN (...) lists are rendered per call, one placeholder per value.
        self._expanding = bool(compiled.post_compile_params)

    def bind(self, params: Mapping[str, Any]) -> tuple[str, list[Any]]:
        if self._expanding:
            state = self._compiled.construct_expanded_state(dict(params))
            return state.statement, list(state.positional_parameters)
        defaults = self._defaults
        return self._sql, [
            params[name] if name in params else defaults[name] for name in self._names
        ]
