"""Configuration without side effects: `create_app` builds its collaborators up front, and
`hub serve --workers` hands the settings to each worker explicitly (never via os.environ)."""

from __future__ import annotations

import asyncio
import os
import pickle
import time
from pathlib import Path
from typing import Any

import httpx
import pytest
from typer.testing import CliRunner

from ordersync.hub.app import create_app
from ordersync.hub.faults import FaultSettings
from ordersync.hub.serve import uvicorn_config
from ordersync.hub.settings import HubSettings
from ordersync.hub.simulator import Simulation
from ordersync.quotas import QuotaPolicy
from ordersync.store.hubrise import HubRiseStore
from ordersync.store.store import Store
from tests.support import cli_token, hub_process

LATE = FaultSettings(late_commit_rate=1.0, late_commit_ms=5_000, seed=1)


async def test_an_injected_stores_clock_is_never_swapped(sqlite_url: str) -> None:
    """With late-commit faults configured, the app's startup leaves the given store's clock
    alone: the caller owns the store."""
    store = await Store.open(sqlite_url)
    clock = store.clock
    try:
        app = create_app(HubSettings(faults=LATE), store)
        async with app.router.lifespan_context(app):
            assert store.clock is clock
        assert store.clock is clock
    finally:
        await store.close()


async def test_collaborators_exist_before_the_app_serves(sqlite_url: str) -> None:
    """Store, HubRise queries and simulator are built by `create_app`, not on first use; the
    simulator's warehouse runs only while the lifespan does."""
    store = await Store.open(sqlite_url)
    try:
        app = create_app(HubSettings(simulate_rate=0.001, simulate_seed=1), store)
        assert app.state.store is store
        assert isinstance(app.state.hubrise_store, HubRiseStore)
        assert app.state.hubrise_store.store is store
        simulation = app.state.warehouse
        assert isinstance(simulation, Simulation) and simulation.warehouse is None
        async with app.router.lifespan_context(app):
            assert simulation.warehouse is not None
        assert app.state.warehouse is simulation
    finally:
        await store.close()


async def test_an_owned_store_is_built_up_front_migrated_by_the_lifespan_and_closed(
    sqlite_url: str,
) -> None:
    """Without a store, the app builds one on settings.db_url (late-commit clock included),
    migrates it when it starts and serves from it."""
    app = create_app(HubSettings(db_url=sqlite_url, faults=LATE))
    store = app.state.store
    assert isinstance(store, Store) and store.url.given == sqlite_url
    async with app.router.lifespan_context(app):
        stamps = [store.clock() for _ in range(5)]
        token = await store.create_token("acme", "erp")
        transport = httpx.ASGITransport(app=app)
        async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
            answer = await client.get(
                "/api/v1/orders", headers={"Authorization": f"Bearer {token}"}
            )
        assert answer.status_code == 200
    # The late-commit clock answers from the past, by up to late_commit_ms.
    now = time.time() * 1000
    assert all(now - 5_000 - 60_000 <= stamp < now for stamp in stamps)


def test_worker_settings_travel_pickled_with_the_server_config() -> None:
    """What uvicorn pickles to each worker builds the app from exactly these settings."""
    settings = HubSettings(
        db_url="sqlite:///x.db", quotas=QuotaPolicy.from_specs("/api/v1/=7/day"), quota_store="sql"
    )
    factory = pickle.loads(pickle.dumps(uvicorn_config(settings, workers=2).app))
    assert factory.args == (settings,)


def test_serve_writes_nothing_to_the_environment(
    monkeypatch: pytest.MonkeyPatch, tmp_path: Path
) -> None:
    """`hub serve --workers 2` hands serve() the settings (SQLite: SQL quota counters) and
    leaves os.environ as it found it."""
    from ordersync.cli import app

    for name in [n for n in os.environ if n.startswith("ORDERSYNC_HUB_")]:
        monkeypatch.delenv(name)
    served: list[tuple[HubSettings, int]] = []
    monkeypatch.setattr(
        "ordersync.hub.serve.serve",
        lambda settings, workers, **_: served.append((settings, workers)),
    )
    before = dict(os.environ)
    db = f"sqlite:///{tmp_path}/hub.db"
    args = ["hub", "serve", "--db", db, "--workers", "2", "--quota", "/api/v1/=5/day"]
    result = CliRunner().invoke(app, args)
    assert result.exit_code == 0, result.output
    assert dict(os.environ) == before
    ((settings, workers),) = served
    assert workers == 2 and settings.db_url == db and settings.quota_store == "sql"
    assert "/api/v1/@all=5/day" in settings.quotas.describe()


@pytest.mark.slow
def test_two_workers_serve_with_the_settings_they_were_given(tmp_path: Path) -> None:
    """`hub serve --workers 2 --quota /api/v1/=5/day` on SQLite: the workers share one quota
    (5 of 12 requests served) with no ORDERSYNC_HUB_* variable set."""
    db = f"sqlite:///{tmp_path}/hub.db"
    token = cli_token(db)
    with hub_process(db, "--workers", "2", "--quota", "/api/v1/=5/day") as base:

        async def hammer() -> list[int]:
            async with httpx.AsyncClient(timeout=30) as client:
                auth: dict[str, Any] = {"Authorization": f"Bearer {token}"}
                answers = await asyncio.gather(
                    *(client.get(f"{base}/api/v1/orders", headers=auth) for _ in range(12))
                )
                return [a.status_code for a in answers]

        assert sorted(asyncio.run(hammer())) == [200] * 5 + [429] * 7
