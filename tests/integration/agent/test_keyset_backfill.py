"""With the hub's keyset continuation, a backfill costs one call per full page, no more."""

from __future__ import annotations

import math
from pathlib import Path

import httpx

from ordersync.agent.config import SourceConfig
from ordersync.agent.factory import open_engine
from ordersync.domain import NewOrder
from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.store.store import Principal, Store
from tests.support import order_payload


async def test_backfill_makes_one_call_per_full_page_plus_the_end(
    store: Store, principal: Principal, tmp_path: Path
) -> None:
    """1,050 orders in tie groups of 7 across page boundaries, pages of 10: exactly
    ceil((N + 1) / 10) calls (the re-checked slot of the offset scheme would need ~11 % more),
    every order applied once."""
    stamps = iter(1_700_000_000_000 + i // 7 for i in range(10_000))  # ties of 7
    store.clock = lambda: next(stamps)
    n = 1_050
    for start in range(0, n, 150):
        await store.create_orders(
            principal,
            [NewOrder.model_validate(order_payload(f"B-{i}")) for i in range(start, start + 150)],
        )
    token = await store.create_token("acme", "agent")
    transport = httpx.ASGITransport(app=create_app(HubSettings(), store))
    source = SourceConfig(
        name="masonhub",
        base_url="http://hub/api/v1",
        token_env="TOKEN",
        streams=["orders"],
        page_size=10,
    )
    async with await open_engine(
        source, token, f"sqlite:///{tmp_path}/replica.db", transport=transport
    ) as agent:
        counts = await agent.engine.run_cycle()
        replica = await agent.sink.load_versions("masonhub", "order")
    assert counts.applied == n and len(replica) == n
    assert counts.api_calls == math.ceil((n + 1) / 10), counts
