"""Database URLs and engines: SQLite (embedded default) and PostgreSQL, selected by URL."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from sqlalchemy import event
from sqlalchemy.engine import make_url
from sqlalchemy.ext.asyncio import AsyncEngine, create_async_engine

from ordersync.errors import ConfigurationError

SQLITE_BUSY_TIMEOUT_MS = 10_000


@dataclass(frozen=True)
class DatabaseURL:
    """One database named three ways: as given, for the async engine, for Alembic's sync one."""

    given: str
    async_url: str
    sync_url: str
    backend: str  # "sqlite" | "postgresql"


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
        psycopg = parsed.set(drivername="postgresql+psycopg").render_as_string(hide_password=False)
        return DatabaseURL(url, psycopg, psycopg, "postgresql")
    raise ConfigurationError(
        f"unsupported database {backend!r} in {url!r}: use sqlite:///FILE or postgresql://..."
    )


def _sqlite_pragmas(dbapi_connection: Any, immediate: bool) -> None:
    # The driver's own transaction handling is switched off so that we can BEGIN IMMEDIATE:
    # a writer that takes the lock up front waits on busy_timeout instead of failing with
    # "database is locked" when it upgrades from a read lock mid-transaction.
    dbapi_connection.isolation_level = None
    cursor = dbapi_connection.cursor()
    cursor.execute("PRAGMA journal_mode=WAL")
    cursor.execute("PRAGMA synchronous=NORMAL")
    cursor.execute(f"PRAGMA busy_timeout={SQLITE_BUSY_TIMEOUT_MS}")
    cursor.execute("PRAGMA foreign_keys=ON")
    cursor.close()


def create_engines(url: DatabaseURL, *, pool_size: int = 8) -> tuple[AsyncEngine, AsyncEngine]:
    """A (reader, writer) pair. On PostgreSQL both are the same engine."""
    if url.backend == "postgresql":
        engine = create_async_engine(url.async_url, pool_size=pool_size, max_overflow=pool_size)
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
