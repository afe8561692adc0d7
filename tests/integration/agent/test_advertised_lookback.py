"""Against ordersync's hub, the agent's default lookback is the commit lag the hub advertises
(X-Ordersync-Commit-Lag-Ms on its listings), not the generic 120 s; a lookback the user set,
in the file or the environment, wins."""

from __future__ import annotations

from pathlib import Path
from typing import Any

import httpx
import pytest

from ordersync.agent.config import parse_config
from ordersync.agent.feeds.listing import ListingFeed
from ordersync.agent.runner import open_runtime, preflight
from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.store.store import Store

BASES = {"masonhub": "http://hub/api/v1", "tradecloud": "http://hub/v2"}


async def lookbacks(
    tmp_path: Path, dialect: str, write_timeout_ms: int, environ: dict[str, str], **source: Any
) -> set[int]:
    db = f"sqlite:///{tmp_path}/hub.db"
    store = await Store.open(db, write_timeout_ms=write_timeout_ms)
    token = await store.create_token("acme", "erp")
    app = create_app(HubSettings(db_url=db), store)
    raw = {
        "sources": [
            {
                "name": "hub",
                "dialect": dialect,
                "base_url": BASES[dialect],
                "token_env": "HUB_TOKEN",
                "connection_name": "erp",
                **source,
            }
        ],
        "sink": {"url": f"sqlite:///{tmp_path}/replica.db"},
    }
    runtime = await open_runtime(
        parse_config(raw, environ),
        {"HUB_TOKEN": token},
        transport=httpx.ASGITransport(app=app),
        state_dir=tmp_path,
    )
    try:
        await preflight(runtime)
        return {
            feed.lookback_ms
            for engine in runtime.engines.values()
            for feed in engine.feeds
            if isinstance(feed, ListingFeed)
        }
    finally:
        await runtime.close()
        await store.close()


@pytest.mark.parametrize("dialect", ["masonhub", "tradecloud"])
async def test_an_unset_lookback_is_the_hubs_advertised_commit_lag(
    tmp_path: Path, dialect: str
) -> None:
    # write deadline 2 s: the hub advertises 2 * 2,000 + 1,000 ms
    assert await lookbacks(tmp_path, dialect, 2_000, {}) == {5_000}


async def test_a_configured_lookback_wins(tmp_path: Path) -> None:
    assert await lookbacks(tmp_path, "masonhub", 2_000, {}, lookback=30) == {30_000}
    env = {"ORDERSYNC_SOURCE_HUB_LOOKBACK": "7"}
    assert await lookbacks(tmp_path, "masonhub", 2_000, env) == {7_000}
