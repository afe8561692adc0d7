"""Alembic environment: a sync engine on the same URL; PostgreSQL migrations hold a lock."""

from __future__ import annotations

from alembic import context
from sqlalchemy import create_engine, text

from ordersync.store.tables import metadata

# Several hub workers may start together; only one may migrate at a time.
_MIGRATION_LOCK = 7_201_946_310


def run_migrations_online() -> None:
    url = context.config.get_main_option("sqlalchemy.url")
    assert url is not None
    engine = create_engine(url)
    with engine.connect() as connection:
        if connection.dialect.name == "postgresql":
            connection.execute(text(f"SELECT pg_advisory_lock({_MIGRATION_LOCK})"))
            connection.commit()
        try:
            context.configure(
                connection=connection,
                target_metadata=metadata,
                render_as_batch=connection.dialect.name == "sqlite",
            )
            with context.begin_transaction():
                context.run_migrations()
            connection.commit()
        finally:
            if connection.dialect.name == "postgresql":
                connection.execute(text(f"SELECT pg_advisory_unlock({_MIGRATION_LOCK})"))
                connection.commit()
    engine.dispose()


run_migrations_online()
