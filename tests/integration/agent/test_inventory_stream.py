"""The `inventory` stream (MasonHub `sku_snapshots`; HubRise through ordersync's
`/v1/location/inventory` listing): a SKU's absolute quantities per location and status
mirrored into every sink with the guarantees of orders (applied if newer, at most once,
position committed with the data), `agent verify` over it, and skuInventoryChange deliveries
naming the SKU to fetch."""

from __future__ import annotations

from datetime import date
from decimal import Decimal
from pathlib import Path

import orjson
import pytest
from sqlalchemy import select

from ordersync.agent.inbox import fetch_entity
from ordersync.agent.sinks.sql import SqlSink, inventory_quantities
from ordersync.agent.verify import verify_replica
from ordersync.agent.webhooks import entities_named
from ordersync.domain.allocation import DemandLine, OrderDemand, allocate
from ordersync.domain.inventory import StockUnit
from ordersync.domain.inventory_item import InventoryItem
from ordersync.store.inventory import InventoryStore
from tests.integration.agent.conftest import SinkFactory
from tests.integration.agent.harness import (
    SOURCE,
    Hub,
    assert_applied_at_most_once,
    build_engine,
)

STREAMS = ("orders", "shipments", "inventory")


async def hub_inventory(hub: Hub) -> dict[str, int]:
    page = await InventoryStore(hub.store).list_items(hub.principal.account_id, limit=1000)
    items = [InventoryItem.model_validate_json(doc) for doc in page.items]
    return {item.id: item.version for item in items}


async def stock(hub: Hub) -> list[InventoryItem]:
    hub.clock.advance()
    return await InventoryStore(hub.store).set_stock(
        hub.principal,
        hub.principal.account_id,
        [
            StockUnit("A", "EAST", "L1", expires_on=date(2030, 1, 1), available=5),
            StockUnit("A", "EAST", "L2", available=2, damaged=1),
            StockUnit("A", "WEST", available=3),
            StockUnit("B", "WEST", available=1, quality_control=4),
        ],
    )


async def allocate_from(hub: Hub, sku: str, quantity: int) -> None:
    """What the warehouse does: lock, allocate, apply, in one transaction."""
    hub.clock.advance()
    inventory = InventoryStore(hub.store)
    async with hub.store.writing(None) as conn:
        held = await inventory.read_stock(conn, hub.principal.account_id, [sku], for_update=True)
        run = allocate([OrderDemand("o", (DemandLine(1, sku, quantity),))], held)
        await inventory.apply_stock(conn, hub.principal, hub.principal.account_id, run.stock)


async def quantities(sink: SqlSink) -> dict[tuple[str, str, str], Decimal]:
    c = inventory_quantities.c
    async with sink.engine.connect() as conn:
        rows = await conn.execute(select(c.sku_id, c.location, c.status, c.quantity))
        return {(str(r[0]), str(r[1]), str(r[2])): r[3] for r in rows}


async def test_inventory_is_mirrored_into_every_sink_once_per_version(
    hub: Hub, sink_factory: SinkFactory
) -> None:
    """Every SKU's newest version reaches the replica; an allocation's new counts replace the
    old ones; a cycle with nothing new applies nothing, and no version is applied twice."""
    a, b = await stock(hub)
    sink = await sink_factory()
    engine = build_engine(hub, sink, streams=STREAMS)
    await engine.run_cycle()
    assert await sink.load_versions(SOURCE, "inventory") == await hub_inventory(hub)
    await allocate_from(hub, "A", 4)
    hub.clock.advance(5_000)  # past the lookback: the next cycle's position moves over it
    await engine.run_cycle()
    held = await sink.load_versions(SOURCE, "inventory")
    assert held == await hub_inventory(hub) == {a.id: 2, b.id: 1}
    again = await engine.run_cycle()
    assert again.applied == 0
    await assert_applied_at_most_once(sink)


@pytest.mark.parametrize("sink_factory", ["sqlite", "sqlite-inline", "postgresql"], indirect=True)
async def test_the_sql_replica_holds_quantities_per_location_and_status(
    hub: Hub, sink_factory: SinkFactory
) -> None:
    """inventory_quantities: one row per (SKU, location, status), summed over lots, exact;
    a newer version replaces the SKU's rows (an allocation moves available to allocated)."""
    a, b = await stock(hub)
    sink = await sink_factory()
    assert isinstance(sink, SqlSink)
    engine = build_engine(hub, sink, streams=STREAMS)
    await engine.run_cycle()
    held = await quantities(sink)
    assert held[(a.id, "EAST", "available")] == Decimal(7)
    assert held[(a.id, "EAST", "damaged")] == Decimal(1)
    assert held[(a.id, "WEST", "available")] == Decimal(3)
    assert held[(b.id, "WEST", "quality-control")] == Decimal(4)
    assert len(held) == 3 * 5  # three (sku, location) pairs, five statuses each
    await allocate_from(hub, "A", 8)
    await engine.run_cycle()
    after = await quantities(sink)
    assert sum(q for (i, _, s), q in after.items() if i == a.id and s == "available") == 2
    assert sum(q for (i, _, s), q in after.items() if i == a.id and s == "allocated") == 8
    assert len(after) == 15
    assert after[(b.id, "WEST", "quality-control")] == Decimal(4)


@pytest.mark.parametrize("sink_factory", ["sqlite", "jsonl"], indirect=True)
async def test_agent_verify_judges_the_inventory_stream(
    hub: Hub, sink_factory: SinkFactory
) -> None:
    """After a sync verify is ok over inventory too; a SKU changed after the position is in
    flight, not drift."""
    await stock(hub)
    sink = await sink_factory()
    engine = build_engine(hub, sink, streams=STREAMS)
    await engine.run_cycle()
    report = await verify_replica(engine.source, sink)
    (inventory,) = [s for s in report.streams if s.stream == "inventory"]
    assert report.ok and (inventory.platform, inventory.replica) == (2, 2)
    await allocate_from(hub, "B", 1)
    report = await verify_replica(engine.source, sink)
    (inventory,) = [s for s in report.streams if s.stream == "inventory"]
    assert report.ok and len(inventory.in_flight) == 1


@pytest.mark.parametrize("sink_factory", ["sqlite"], indirect=True)
async def test_a_sku_inventory_change_names_the_sku_to_fetch(
    hub: Hub, sink_factory: SinkFactory
) -> None:
    """A skuInventoryChange delivery names ("inventory", sku_id); fetching it by id gives the
    SKU's current version as a record the sinks apply."""
    a, _ = await stock(hub)
    body = orjson.dumps(
        {
            "callback_url": "http://erp.test/hook",
            "message_type": "skuInventoryChange",
            "message_id": "m-1",
            "data": {"sku_id": a.id, "customer_identifier": "A"},
        }
    )
    assert entities_named("masonhub", body) == [("inventory", a.id)]
    engine = build_engine(hub, await sink_factory(), streams=STREAMS)
    record = await fetch_entity(engine.source, "masonhub", "inventory", a.id, body)
    assert record is not None and (record.kind, record.id, record.version) == ("inventory", a.id, 1)


@pytest.mark.parametrize("sink_factory", ["sqlite", "postgresql", "jsonl"], indirect=True)
async def test_hubrise_inventory_is_polled_and_mirrored_as_available_units(
    hub: Hub, sink_factory: SinkFactory
) -> None:
    """Through HubRise the replica gets each SKU's version and its available units per
    location (HubRise's `stock`: the only status it knows); an allocation's new version
    replaces them, and nothing is applied twice."""
    a, b = await stock(hub)
    sink = await sink_factory()
    engine = build_engine(hub, sink, dialect="hubrise", streams=STREAMS)
    await engine.run_cycle()
    assert await sink.load_versions("hubrise", "inventory") == await hub_inventory(hub)
    await allocate_from(hub, "A", 8)
    hub.clock.advance(5_000)
    await engine.run_cycle()
    assert await sink.load_versions("hubrise", "inventory") == {a.id: 2, b.id: 1}
    if isinstance(sink, SqlSink):
        held = await quantities(sink)
        assert held == {
            (a.id, "EAST", "available"): Decimal(0),
            (a.id, "WEST", "available"): Decimal(2),
            (b.id, "WEST", "available"): Decimal(1),
        }
    await assert_applied_at_most_once(sink)


async def test_the_http_sink_posts_inventory_keyed_by_sku_id_and_version(
    hub: Hub, tmp_path: Path
) -> None:
    """Each SKU version reaches the ERP once, its idempotency key `sku_id:version`."""
    from tests.integration.agent.test_http_sink import FakeErp, open_http_sink

    a, b = await stock(hub)
    erp = FakeErp()
    engine = build_engine(hub, await open_http_sink(erp, tmp_path), streams=STREAMS)
    await engine.run_cycle()
    await allocate_from(hub, "A", 1)
    hub.clock.advance(5_000)
    await engine.run_cycle()
    await engine.run_cycle()
    assert erp.versions("inventory") == await hub_inventory(hub) == {a.id: 2, b.id: 1}
    keys = [
        c["idempotency_key"]
        for _, changes in erp.posts
        for c in changes
        if c["kind"] == "inventory"
    ]
    assert sorted(keys) == sorted([f"{a.id}:1", f"{a.id}:2", f"{b.id}:1"])


@pytest.mark.parametrize("step", ["mid_apply", "before_cursor", "after_cursor"])
@pytest.mark.parametrize("sink_factory", ["sqlite", "sqlite-inline", "postgresql"], indirect=True)
async def test_a_crash_mid_inventory_page_then_restart_converges(
    hub: Hub, sink_factory: SinkFactory, step: str
) -> None:
    """A crash at each step of the second inventory page's commit; a restarted agent ends with
    every SKU's newest version and its quantities, none applied twice."""
    from tests.integration.agent.test_crashes import SimulatedCrash, crash_on

    inventory = InventoryStore(hub.store)
    for n in range(12):  # 12 SKUs, 1 ms apart: three pages of 5
        hub.clock.advance()
        await inventory.set_stock(
            hub.principal, hub.principal.account_id, [StockUnit(f"S{n:02d}", "EAST", available=n)]
        )
    sink = await sink_factory(fault_hook=crash_on(step, 2))
    with pytest.raises(SimulatedCrash):
        await build_engine(hub, sink, page_size=5, streams=("inventory",)).run_cycle()
    await allocate_from(hub, "S11", 3)  # a change while the agent is down
    restarted = await sink_factory()
    assert isinstance(restarted, SqlSink)
    await build_engine(hub, restarted, page_size=5, streams=("inventory",)).run_cycle()
    assert await restarted.load_versions(SOURCE, "inventory") == await hub_inventory(hub)
    held = await quantities(restarted)
    assert sum(q for (_, _, s), q in held.items() if s == "available") == sum(range(12)) - 3
    assert sum(q for (_, _, s), q in held.items() if s == "allocated") == 3
    await assert_applied_at_most_once(restarted)


@pytest.mark.parametrize("dialect", ["masonhub", "hubrise"])
async def test_agent_run_wiring_builds_the_inventory_stream_from_the_config(
    hub: Hub, tmp_path: Path, dialect: str
) -> None:
    """`streams = [..., "inventory"]` in a source's configuration: the engine `agent run`
    builds (platforms) syncs the SKUs next to the orders."""
    import httpx

    from ordersync.agent.config import SourceConfig
    from ordersync.agent.factory import open_engine
    from tests.integration.agent.harness import BASE_URLS

    await hub.create_orders(3)  # before the catalogue exists: their SKUs are not in it
    await stock(hub)
    source = SourceConfig(
        name=dialect,
        dialect=dialect,
        base_url=BASE_URLS[dialect],
        token_env="T",
        lookback=2,
        streams=["orders", "shipments", "inventory"],
    )
    async with await open_engine(
        source,
        hub.token,
        f"sqlite:///{tmp_path}/replica.db",
        transport=httpx.ASGITransport(app=hub.app),
    ) as agent:
        assert "inventory" in agent.engine.streams
        await agent.engine.run_cycle()
        assert await agent.sink.load_versions(dialect, "inventory") == await hub_inventory(hub)
        assert len(await agent.sink.load_versions(dialect, "order")) == 3
