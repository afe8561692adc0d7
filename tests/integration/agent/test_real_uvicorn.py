"""Against a hub on real uvicorn: the Date header, a SIGKILLed agent process, verification."""

from __future__ import annotations

import asyncio
import os
import signal
import sys
from collections.abc import AsyncIterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from ordersync.agent.config import SourceConfig
from ordersync.agent.factory import open_engine
from ordersync.agent.sinks.sql import SqlSink
from ordersync.agent.verify import verify_replica
from ordersync.domain import NewOrder, NewShipment, OrderStatus, ShipmentLine
from ordersync.hub.app import create_app
from ordersync.hub.ratelimit import QuotaPolicy
from ordersync.hub.settings import HubSettings
from ordersync.store.store import Principal, Store
from tests.integration.agent.harness import applied_changes
from tests.support import order_payload, serve_in_thread

pytestmark = pytest.mark.slow

CHILD = """
import asyncio, sys
import httpx
from ordersync.agent.config import SourceConfig
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.runner import build_engine
from ordersync.agent.sinks import open_sink

def progress(step, stream):
    if step == "after_commit":
        print("committed", stream, flush=True)

async def main(dialect, base_url, token, sink_url):
    config = SourceConfig(name=dialect, dialect=dialect, base_url=base_url, token_env="T",
                          connection_name="agent", page_size=25, lookback=2)
    sink = await open_sink(sink_url)
    async with httpx.AsyncClient() as http:
        engine = build_engine(config, token, http, sink, AgentMetrics())
        engine.hook = progress
        await engine.run_cycle()
    await sink.close()
    print("done", flush=True)

asyncio.run(main(*sys.argv[1:]))
"""
ROOTS = {"masonhub": "/api/v1", "tradecloud": "/v2", "hubrise": "/v1"}


@dataclass
class LiveHub:
    root: str  # http://127.0.0.1:PORT
    token: str
    store: Store  # a second store on the hub's database, as another hub worker would be
    principal: Principal

    async def versions(self, kind: str) -> dict[str, int]:
        from ordersync.store.store import ListQuery

        query, account = ListQuery(limit=1_000_000), self.principal.account_id
        page = (
            await self.store.list_orders(account, query, summary=True)
            if kind == "order"
            else await self.store.list_shipments(account, query, summary=True)
        )
        return {i["id"]: int(i["version"]) for i in page.items}


@pytest.fixture
async def live_hub(tmp_path: Path) -> AsyncIterator[LiveHub]:
    db_url = f"sqlite:///{tmp_path}/hub.db"
    store = await Store.open(db_url)
    token = await store.create_token("acme", "agent")
    # Writes come from another connection: HubRise shows a connection the others' changes.
    principal = await store.authenticate(await store.create_token("acme", "warehouse"))
    for batch in range(12):  # 1,200 orders, many sharing a millisecond
        await store.create_orders(
            principal,
            [NewOrder.model_validate(order_payload(f"L-{batch}-{i}")) for i in range(100)],
        )
    app = create_app(HubSettings(db_url=db_url, quotas=QuotaPolicy()))
    with serve_in_thread(app) as root:
        yield LiveHub(root, token, store, principal)
    await store.close()


async def move_some(hub: LiveHub, count: int) -> None:
    """Warehouse activity: advance some orders and ship a few."""
    ids = list(await hub.versions("order"))[:count]
    for order_id in ids:
        order = await hub.store.get_order(hub.principal.account_id, order_id)
        if order.status is OrderStatus.OPEN:
            await hub.store.transition_order(
                hub.principal, hub.principal.account_id, order_id, OrderStatus.AT_WAREHOUSE
            )
            await hub.store.create_shipment(
                hub.principal,
                hub.principal.account_id,
                NewShipment(
                    order_id=order_id,
                    carrier="UPS",
                    service_level="ground",
                    tracking_number=f"1Z{order_id[:6]}",
                    lines=[
                        ShipmentLine(line_number=1, sku_customer_identifier="SKU-1", quantity="1")
                    ],
                ),
            )


async def run_child(hub: LiveHub, sink_url: str, kill_after: int | None, dialect: str) -> str:
    """Run the agent in its own process; SIGKILL it after `kill_after` committed pages."""
    env = {**os.environ, "PYTHONUNBUFFERED": "1"}
    child = await asyncio.create_subprocess_exec(
        sys.executable,
        "-c",
        CHILD,
        dialect,
        hub.root + ROOTS[dialect],
        hub.token,
        sink_url,
        stdout=asyncio.subprocess.PIPE,
        stderr=asyncio.subprocess.DEVNULL,
        env=env,
    )
    assert child.stdout is not None
    committed = 0
    async with asyncio.timeout(120):
        while line := (await child.stdout.readline()).decode():
            committed += line.startswith("committed")
            if kill_after is not None and committed >= kill_after:
                child.send_signal(signal.SIGKILL)
                await child.wait()
                return "killed"
            if line.startswith("done"):
                break
        await child.wait()
    assert child.returncode == 0
    return "done"


@pytest.mark.parametrize("dialect", ["masonhub", "tradecloud", "hubrise"])
async def test_an_agent_killed_with_sigkill_mid_backfill_resumes_without_loss_or_repeat(
    live_hub: LiveHub, tmp_path: Path, dialect: str
) -> None:
    """kill -9 after 12 pages of a backfill, writes meanwhile, a rerun: replica == hub."""
    sink_url = f"sqlite:///{tmp_path}/replica.db"
    assert await run_child(live_hub, sink_url, 12, dialect) == "killed"
    await move_some(live_hub, 40)
    assert await run_child(live_hub, sink_url, None, dialect) == "done"

    sink = await SqlSink.open(sink_url)
    try:
        for kind in ("order", "shipment"):
            assert await sink.load_versions(dialect, kind) == await live_hub.versions(kind)
        changes = await applied_changes(sink)
        assert len(changes) == len(set(changes))
    finally:
        await sink.close()


async def test_in_process_agent_against_uvicorn_reads_the_date_header_and_verifies(
    live_hub: LiveHub, tmp_path: Path
) -> None:
    """Over real HTTP the engine takes server time from Date; verify finds nothing amiss, counts
    changes made after the agent's position as in flight (not drift), and reports a record
    missing or stale behind the position."""
    source = SourceConfig(
        name="masonhub", base_url=live_hub.root + "/api/v1", token_env="TOKEN", lookback=2
    )
    async with await open_engine(
        source, live_hub.token, f"sqlite:///{tmp_path}/replica.db"
    ) as agent:
        counts = await agent.engine.run_cycle()
        assert counts.applied == 1_200
        assert agent.source.client.last_server_time_ms is not None
        report = await verify_replica(agent.source, agent.sink)
        assert report.ok, report
        await move_some(live_hub, 5)
        report = await verify_replica(agent.source, agent.sink)
        assert report.ok, report  # a live platform is not drift
        orders = next(s for s in report.streams if s.stream == "orders")
        assert len(orders.in_flight) == 5 and not orders.stale and not orders.missing
        shipments = next(s for s in report.streams if s.stream == "shipments")
        assert len(shipments.in_flight) == 5 and not shipments.missing
        await agent.engine.run_cycle()
        assert (await verify_replica(agent.source, agent.sink)).ok
        assert isinstance(agent.sink, SqlSink)
        async with agent.sink.engine.begin() as conn:
            gone, older = [
                row[0]
                for row in (
                    await conn.exec_driver_sql(
                        "select id from orders order by updated_at_ms limit 2"
                    )
                ).all()
            ]
            await conn.exec_driver_sql("delete from orders where id = ?", (gone,))
            await conn.exec_driver_sql(
                "update orders set version = version - 1 where id = ?", (older,)
            )
            # Behind the position (it sits a lookback before the drain: move it past them).
            await conn.exec_driver_sql(
                "update checkpoints set updated_at_ms = updated_at_ms + 3600000"
            )
        report = await verify_replica(agent.source, agent.sink)
        orders = next(s for s in report.streams if s.stream == "orders")
        assert (orders.missing, orders.stale) == ([gone], [older]) and not report.ok
