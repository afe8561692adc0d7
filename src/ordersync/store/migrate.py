"""Run Alembic migrations programmatically: `Store.open` and `ordersync hub migrate` call this."""

from __future__ import annotations

import asyncio
from pathlib import Path

from alembic import command
from alembic.config import Config

from ordersync.store.engine import DatabaseURL

MIGRATIONS = Path(__file__).parent / "migrations"


def alembic_config(url: DatabaseURL) -> Config:
    config = Config()
    config.set_main_option("script_location", str(MIGRATIONS))
    config.set_main_option("sqlalchemy.url", url.sync_url.replace("%", "%%"))
    config.attributes["backend"] = url.backend
    config.attributes["connect_args"] = url.connect_args()
    return config


async def upgrade(url: DatabaseURL, revision: str = "head") -> None:
    await asyncio.to_thread(command.upgrade, alembic_config(url), revision)
