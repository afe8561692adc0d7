"""Paging through ties and a moving set, and late commits inside the lookback, through each
dialect: MasonHub and Tradecloud re-anchor their updated_at listing; HubRise backfills by
creation time and catches what moves meanwhile through its callback events."""

from __future__ import annotations

import httpx

from ordersync.agent.records import FetchedPage
from tests.integration.agent.conftest import SinkFactory
from tests.integration.agent.harness import (
    Hub,
    Intercept,
    assert_applied_at_most_once,
    assert_replica_equals_hub,
    build_engine,
    is_order_listing,
)


async def test_250_records_sharing_one_updated_at_cross_page_boundaries(
    hub: Hub, sink_factory: SinkFactory, dialect: str
) -> None:
    """250 orders stamped at one instant arrive whole through pages of 100."""
    await hub.create_orders(250, tie=True)
    sink = await sink_factory()
    counts = await build_engine(hub, sink, dialect=dialect).run_cycle()
    assert counts.applied == 250
    assert counts.duplicates == 0
    await assert_replica_equals_hub(hub, sink, dialect)
    await assert_applied_at_most_once(sink, counts.applied)


async def test_records_updated_while_paging_through_their_tie_are_neither_lost_nor_doubled(
    hub: Hub, sink_factory: SinkFactory, dialect: str
) -> None:
    """Orders of the page already read move ahead mid-walk; the tie's offset is not trusted."""
    await hub.create_orders(250, tie=True)
    positions = await hub.order_ids_by_position()
    total_applied = 0

    async def move_some(request: httpx.Request, n: int) -> None:
        if is_order_listing(request) and n in (2, 3):
            hub.clock.advance(10)
            # Seen ones (they shift the tie's offset) and unseen ones (they jump ahead).
            for order_id in positions[(n - 2) * 10 : (n - 2) * 10 + 10] + positions[200:203]:
                await hub.advance_order(order_id)
        return None

    sink = await sink_factory()
    transport = Intercept(httpx.ASGITransport(app=hub.app), move_some)
    engine = build_engine(hub, sink, transport=transport, dialect=dialect)
    counts = await engine.run_cycle()
    total_applied += counts.applied
    await assert_replica_equals_hub(hub, sink, dialect)
    await assert_applied_at_most_once(sink, total_applied)


async def test_a_commit_visible_late_inside_the_lookback_is_seen(
    hub: Hub, sink_factory: SinkFactory, dialect: str
) -> None:
    """A write stamped 1.5 s in the past, after newer records were served, is still read."""
    orders = await hub.create_orders(20)
    sink = await sink_factory()
    engine = build_engine(hub, sink, lookback_ms=2_000, dialect=dialect)
    applied = (await engine.run_cycle()).applied
    hub.clock.advance(5_000)
    await hub.create_orders(5)
    applied += (await engine.run_cycle()).applied
    late = await hub.advance_order(orders[3].id, stamp=hub.clock.now - 1_500)
    assert late is not None
    hub.clock.advance(300)
    counts = await engine.run_cycle()
    applied += counts.applied
    assert counts.applied == 1
    await assert_replica_equals_hub(hub, sink, dialect)
    await assert_applied_at_most_once(sink, applied)


async def test_a_caught_up_stream_reports_cursor_and_freshness(
    hub: Hub, sink_factory: SinkFactory, dialect: str
) -> None:
    """Status names the cursor, a small lag and no error once a stream is drained."""
    await hub.create_orders(3)
    sink = await sink_factory()
    engine = build_engine(hub, sink, dialect=dialect)
    await engine.run_cycle()
    states = {s.stream: s for s in engine.status()}
    orders = states["orders-backfill" if dialect == "hubrise" else "orders"]
    assert orders.caught_up and orders.last_error is None
    assert orders.cursor is not None
    assert orders.lag_ms == 0
    assert isinstance(FetchedPage([], None).records, list)
