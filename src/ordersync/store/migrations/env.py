"""Alembic environment: a sync engine on the same URL; PostgreSQL migrations hold a lock."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from ordersync.store.tables import metadata

# Several hub workers may start together; only one may migrate at a time.
_MIGRATION_LOCK = 7_201_946_310


def run_migrations_online() -> None:
    """Every pending migration in one transaction. On PostgreSQL that transaction first takes
    a transaction-level advisory lock: workers starting together migrate one after the other,
    the next finding the schema current. Transaction-level, not session-level, so that it also
    holds behind PgBouncer in transaction pooling, where a session lock and its unlock could
    run on different server connections and leave the lock held for good."""
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_engine(url, connect_args=context.config.attributes.get("connect_args", {}))
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            # Begun here, the transaction is the caller's to Alembic: all of it is one.
            connection.begin()
            connection.execute(text(f"SELECT pg_advisory_xact_lock({_MIGRATION_LOCK})"))
        context.configure(
            connection=connection,
            target_metadata=metadata,
            render_as_batch=connection.dialect.name == "sqlite",
        )
        with context.begin_transaction():
            context.run_migrations()
        connection.commit()
    engine.dispose()


run_migrations_online()
