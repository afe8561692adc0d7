"""Hybrid sync: webhooks from the hub's outbox keep the replica fresh, polling is the truth.

The hub's dispatcher delivers to the agent's receiver (its port's app, in-process) with 10 % of
deliveries lost on the way (`FaultSettings.webhook_drop_rate`: the hub records them delivered
and never sends them). Rounds are driven by the test, one change at a time, so that every
version gets its own delivery (none coalesced); then one poll reconciles. Nothing here counts
time."""

from __future__ import annotations

import random
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from ordersync.agent.config import parse_config
from ordersync.agent.runner import AgentRuntime, observability_app, open_runtime
from ordersync.hub.faults import FaultSettings
from ordersync.hub.webhooks import Dispatcher
from ordersync.store.store import Store
from ordersync.store.tables import webhook_attempts
from ordersync.store.webhooks import WebhookStore
from tests.integration.agent.harness import (
    BASE_URLS,
    CONNECTION,
    Hub,
    Intercept,
    applied_changes,
    assert_replica_equals_hub,
)

AGENT_URL = "http://agent.test"
DROPPED = "injected fault: dropped on the way"


@asynccontextmanager
async def subscribed_agent(
    tmp_path: Path, hub: Hub, sink_url: str, transport: httpx.AsyncBaseTransport | None = None
) -> AsyncIterator[tuple[AgentRuntime, httpx.AsyncClient]]:
    """The agent subscribed on the hub (a MasonHub orderEvent callback to its receiver), and
    an HTTP client whose requests reach the agent's port app in-process. `transport`: the
    agent's way to the hub (default: the hub's app in-process)."""
    async with httpx.AsyncClient(
        transport=httpx.ASGITransport(app=hub.app), base_url=BASE_URLS["masonhub"]
    ) as client:
        answer = await client.post(
            "/callbacks",
            json=[{"url": f"{AGENT_URL}/webhooks/masonhub", "message_type": "orderEvent"}],
            headers={"Authorization": f"Bearer {hub.token}"},
        )
    assert answer.status_code == 200, answer.text
    body = answer.json()
    (created,) = body["data"] if isinstance(body, dict) else body
    raw = {
        "sources": [
            {
                "name": "masonhub",
                "dialect": "masonhub",
                "base_url": BASE_URLS["masonhub"],
                "token_env": "HUB_TOKEN",
                "connection_name": CONNECTION,
                "interval": 3600,
                "webhook_secrets": [created["secret"]],
            }
        ],
        "sink": {"url": sink_url},
        "port": 0,
    }
    runtime = await open_runtime(
        parse_config(raw, {}),
        {"HUB_TOKEN": hub.token},
        transport=transport or httpx.ASGITransport(app=hub.app),
        state_dir=tmp_path,
    )
    assert runtime.receiver is not None
    runtime.receiver.clock = lambda: hub.clock() / 1000  # the hub signs with its (fake) clock
    to_agent = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=observability_app(runtime)), base_url=AGENT_URL
    )
    try:
        yield runtime, to_agent
    finally:
        await to_agent.aclose()
        await runtime.close()


async def dropped_deliveries(store: Store) -> int:
    a = webhook_attempts.c
    async with store.reader.connect() as conn:
        rows = await conn.execute(select(a.id).where(a.error == DROPPED))
        return len(rows.all())


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_dropped_webhooks_are_reconciled_by_polling_each_version_applied_once(
    tmp_path: Path, hub: Hub, request: pytest.FixtureRequest, backend: str
) -> None:
    """60 versions of 15 orders, each delivered by webhook with 10 % lost: the webhooks
    stream applies what arrives, the replica lacks what was lost, one poll brings the rest,
    and the replica ends equal to the hub with every (id, version) applied once."""
    sink_url = (
        request.getfixturevalue("pg_url")
        if backend == "postgresql"
        else f"sqlite:///{tmp_path}/replica.db"
    )
    async with subscribed_agent(tmp_path, hub, sink_url) as (runtime, to_agent):
        engine, feed = runtime.engines["masonhub"], runtime.inbox_feeds["masonhub"]
        dispatcher = Dispatcher(
            hub.store,
            WebhookStore(hub.store, schedule_s=(0.0,) * 7),
            http=to_agent,
            faults=FaultSettings(webhook_drop_rate=0.1, seed=13),
        )

        async def deliver() -> None:
            """Rounds until the queue is empty, the inbox drained after each."""
            while await dispatcher.run_once():
                await engine.sync_feed(feed)

        orders = []
        for _ in range(15):
            hub.clock.advance(10)
            orders += await hub.create_orders(1)
            await deliver()
        rng = random.Random(5)
        for _ in range(45):
            hub.clock.advance(10)
            moved = await hub.advance_order(rng.choice(orders).id)
            assert moved is not None  # 15 orders x 5 moves each: none runs out
            await deliver()

        dropped = await dropped_deliveries(hub.store)
        assert 1 <= dropped < 60  # some lost, most delivered
        by_webhook = len(await applied_changes(runtime.sink))
        assert by_webhook == 60 - dropped  # every delivery that arrived was applied
        hub_versions = await hub.versions("order")
        held = await runtime.sink.load_versions("masonhub", "order")
        assert held != hub_versions  # what was lost is missing until polling reconciles

        polled = await engine.run_cycle()

        await assert_replica_equals_hub(hub, runtime.sink)
        ledger = await applied_changes(runtime.sink)
        assert len(ledger) == len(set(ledger)), "a version was applied twice"
        assert polled.applied == len(set(ledger)) - by_webhook
        webhooks_row = next(s for s in engine.status() if s.stream == "webhooks")
        assert webhooks_row.totals.applied == by_webhook
        # A late delivery of a version polling already applied is a duplicate, not a second
        # apply: deliver everything again (replay) and drain.
        webhooks = WebhookStore(hub.store)
        (sub,) = await webhooks.active()
        dispatcher.drop_rate = 0.0
        caller = await hub.store.authenticate(hub.token)
        assert await webhooks.replay(caller, sub.id, since_ms=0) == 60
        await deliver()
        assert await applied_changes(runtime.sink) == ledger


async def test_a_delivery_carrying_the_order_is_applied_without_fetching_it(
    tmp_path: Path, hub: Hub
) -> None:
    """The hub's orderEvent carries the order at its version (`data.order`): the agent applies
    that document, version-checked, and makes no `GET /orders/{id}`; of two deliveries of one
    order in a batch, the later one's document is applied."""
    to_hub = Intercept(httpx.ASGITransport(app=hub.app))
    async with subscribed_agent(tmp_path, hub, f"sqlite:///{tmp_path}/r.db", to_hub) as (
        runtime,
        to_agent,
    ):
        engine, feed = runtime.engines["masonhub"], runtime.inbox_feeds["masonhub"]
        dispatcher = Dispatcher(hub.store, WebhookStore(hub.store), http=to_agent)
        (order,) = await hub.create_orders(1)
        for _ in range(2):
            hub.clock.advance(10)
            await hub.advance_order(order.id)
            assert await dispatcher.run_once() == 1
        # Both deliveries wait in the inbox; the first carries version 2, the second 3.
        counts = await engine.sync_feed(feed)
        assert (counts.applied, counts.duplicates) == (1, 0)
        assert (await runtime.sink.load_versions("masonhub", "order")) == {order.id: 3}
        fetches = [r for r in to_hub.requests if r.url.path.endswith(f"/orders/{order.id}")]
        assert fetches == []
        assert await applied_changes(runtime.sink) == [("order", order.id, 3)]
