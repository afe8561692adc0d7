"""Fixtures for every tier. PostgreSQL tests read ORDERSYNC_TEST_PG; under CI=true an
unreachable server fails the run instead of skipping."""

from __future__ import annotations

from collections.abc import AsyncIterator, Callable, Iterator

import psycopg
import pytest

from ordersync.domain import NewOrder
from ordersync.store.engine import parse_database_url
from ordersync.store.migrate import alembic_config
from ordersync.store.store import Principal, Store
from tests.support import fresh_pg_database, order_payload, pg_available_or_skip


@pytest.fixture(scope="session")
def pg_admin_url() -> str:
    return pg_available_or_skip()


@pytest.fixture(scope="session")
def pg_hub_template(pg_admin_url: str) -> Iterator[str]:
    """A database migrated once; each test clones it (CREATE DATABASE ... TEMPLATE)."""
    from alembic import command

    with fresh_pg_database(pg_admin_url) as url:
        command.upgrade(alembic_config(parse_database_url(url)), "head")
        name = url.rpartition("/")[2]
        with psycopg.connect(pg_admin_url, autocommit=True) as conn:
            conn.execute(  # no connection may stay open on a template
                "SELECT pg_terminate_backend(pid) FROM pg_stat_activity WHERE datname = %s",
                (name,),
            )
        yield name


@pytest.fixture
def pg_url(pg_admin_url: str) -> Iterator[str]:
    """An empty PostgreSQL database of its own."""
    with fresh_pg_database(pg_admin_url) as url:
        yield url


@pytest.fixture
def sqlite_url(tmp_path: object) -> str:
    return f"sqlite:///{tmp_path}/hub.db"


@pytest.fixture(params=["sqlite", "postgresql"])
def hub_db_url(request: pytest.FixtureRequest, tmp_path: object) -> Iterator[str]:
    """A hub database, once on SQLite and once on PostgreSQL (already migrated there)."""
    if request.param == "sqlite":
        yield f"sqlite:///{tmp_path}/hub.db"
        return
    admin = request.getfixturevalue("pg_admin_url")
    template = request.getfixturevalue("pg_hub_template")
    with fresh_pg_database(admin, template=template) as url:
        yield url


@pytest.fixture
async def store(hub_db_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(hub_db_url)
    yield opened
    await opened.close()


@pytest.fixture
async def principal(store: Store) -> Principal:
    return await store.authenticate(await store.create_token("acme", "erp"))


@pytest.fixture
def new_order() -> Callable[..., NewOrder]:
    def build(customer_identifier: str, **overrides: object) -> NewOrder:
        return NewOrder.model_validate(order_payload(customer_identifier, **overrides))

    return build
