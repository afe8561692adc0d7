"""What differs between dialects: exact decimals end to end, Tradecloud's echo of our own
changes, and HubRise's callback (created before the backfill, acknowledged after the commit)."""

from __future__ import annotations

from decimal import Decimal

import httpx
import orjson
import pytest
from sqlalchemy import select

from ordersync.agent.sinks.sql import SqlSink, order_lines, orders
from ordersync.domain import NewOrder
from tests.integration.agent.conftest import SinkFactory
from tests.integration.agent.harness import (
    Hub,
    Intercept,
    applied_changes,
    assert_applied_at_most_once,
    assert_replica_equals_hub,
    build_engine,
)
from tests.support import order_payload

EXACT_LINES = [
    {"sku_customer_identifier": "SKU-A", "quantity": "0.1", "unit_price": "0.10"},
    {"sku_customer_identifier": "SKU-B", "quantity": "0.1", "unit_price": "0.10"},
    {"sku_customer_identifier": "SKU-C", "quantity": "0.1", "unit_price": "0.10"},
    {"sku_customer_identifier": "SKU-D", "quantity": "1.000000001", "unit_price": "0.10"},
]


@pytest.mark.parametrize("sink_factory", ["sqlite", "postgresql"], indirect=True)
async def test_decimals_stay_exact_from_the_wire_to_the_sink(
    hub: Hub, sink_factory: SinkFactory, dialect: str
) -> None:
    """ "0.1" x 3 sums to exactly 0.3 in the replica and "1.000000001" round-trips: no float."""
    payload = order_payload("EXACT-1", line_items=EXACT_LINES)
    await hub.store.create_orders(hub.principal, [NewOrder.model_validate(payload)])
    sink = await sink_factory()
    assert isinstance(sink, SqlSink)
    await build_engine(hub, sink, dialect=dialect).run_cycle()
    async with sink.engine.connect() as conn:
        rows = (
            await conn.execute(
                select(order_lines.c.quantity, order_lines.c.unit_price)
                .where(order_lines.c.source == dialect)
                .order_by(order_lines.c.line_number)
            )
        ).all()
    quantities = [row[0] for row in rows]
    assert all(isinstance(q, Decimal) for q in quantities)
    assert sum(quantities[:3], Decimal(0)) == Decimal("0.3")
    assert str(sum(quantities[:3], Decimal(0))).rstrip("0") == "0.3"
    assert quantities[3] == Decimal("1.000000001")
    assert format(quantities[3], "f").rstrip("0") == "1.000000001"
    assert {row[1] for row in rows} == {Decimal("0.10")}
    await assert_replica_equals_hub(hub, sink, dialect)


@pytest.mark.parametrize("echo", ["skip", "apply"])
async def test_tradecloud_recognises_the_echo_of_its_own_changes(
    hub: Hub, tmp_path: object, echo: str
) -> None:
    """Changes made by the agent's own connection are applied (the replica stays equal) but
    marked and counted as echoes with echo = "skip"; with "apply" they are foreign changes."""
    sink = await SqlSink.open(f"sqlite:///{tmp_path}/replica.db")
    try:
        own = await hub.store.authenticate(hub.token)
        foreign = await hub.create_orders(3)
        mine = await hub.store.create_orders(
            own, [NewOrder.model_validate(order_payload(f"OWN-{i}")) for i in range(2)]
        )
        hub.clock.advance(5)
        engine = build_engine(hub, sink, dialect="tradecloud", echo=echo)  # type: ignore[arg-type]
        counts = await engine.run_cycle()
        assert counts.applied == 5
        await assert_replica_equals_hub(hub, sink, "tradecloud")
        async with sink.engine.connect() as conn:
            docs = {
                str(r[0]): orjson.loads(r[1])
                for r in await conn.execute(select(orders.c.id, orders.c.data))
            }
        echoed = {i for i, doc in docs.items() if doc.get("echo")}
        own_ids = {r.order.id for r in mine if r.order is not None}
        if echo == "skip":
            assert echoed == own_ids
            assert engine.source.echoes_recognised == 2
        else:
            assert echoed == set()
        assert {o.id for o in foreign}.isdisjoint(echoed)
    finally:
        await sink.close()


async def test_hubrise_creates_its_callback_before_reading_any_order(
    hub: Hub, tmp_path: object
) -> None:
    """The callback exists before the first listing call, so nothing created meanwhile is lost."""
    await hub.create_orders(5)
    transport = Intercept(httpx.ASGITransport(app=hub.app))
    sink = await SqlSink.open(f"sqlite:///{tmp_path}/replica.db")
    try:
        await build_engine(hub, sink, transport=transport, dialect="hubrise").run_cycle()
        calls = [(r.method, r.url.path) for r in transport.requests]
        assert calls[0] == ("POST", "/v1/callback")
        assert calls[1] == ("GET", "/v1/location/orders")
        assert calls[-1] == ("GET", "/v1/callback/events")
        await assert_replica_equals_hub(hub, sink, "hubrise")
    finally:
        await sink.close()


class Crash(Exception):
    """The process dying at this point."""


@pytest.mark.parametrize("sink_factory", ["sqlite", "postgresql"], indirect=True)
async def test_hubrise_crash_between_commit_and_ack_repeats_events_harmlessly(
    hub: Hub, sink_factory: SinkFactory
) -> None:
    """Events committed but not acknowledged are listed again after a restart: duplicates,
    dropped by version; nothing is acknowledged before it is durable."""
    orders_ = await hub.create_orders(30)
    sink = await sink_factory()
    await build_engine(hub, sink, dialect="hubrise").run_cycle()
    hub.clock.advance(10)
    for order in orders_[:12]:
        await hub.advance_order(order.id)
    await hub.ship(orders_[0])

    def crash_after_events_commit(step: str, stream: str) -> None:
        if (step, stream) == ("after_commit", "events"):
            raise Crash

    crashing = build_engine(hub, sink, dialect="hubrise", hook=crash_after_events_commit)
    pending = len(await crashing.source.pending_events())
    assert pending >= 13
    with pytest.raises(Crash):
        await crashing.run_cycle()
    await assert_replica_equals_hub(hub, sink, "hubrise")  # committed before the crash
    assert len(await crashing.source.pending_events()) == pending  # none acknowledged
    hub.clock.advance(10)
    await hub.advance_order(orders_[20].id)
    restarted = build_engine(hub, sink, dialect="hubrise")
    counts = await restarted.run_cycle()
    assert counts.applied == 1  # the new change; the repeats are dropped by version
    assert counts.duplicates == pending
    assert await restarted.source.pending_events() == []
    await assert_replica_equals_hub(hub, sink, "hubrise")
    await assert_applied_at_most_once(sink)
    assert sum(kind == "shipment" for kind, _, _ in await applied_changes(sink)) == 1
