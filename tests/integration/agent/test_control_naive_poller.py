"""The control: seed 000's example poller loses updates in the very scenarios the agent passes.

It asks once with `limit=100` (optionally walking `offset` like seed 000's pagination example)
and saves `utcnow()` as its last poll time. If these assertions ever stop holding, the scenarios
have lost their teeth.
"""

from __future__ import annotations

import httpx

from ordersync.domain.timestamps import format_rfc3339
from tests.integration.agent.harness import BASE_URL, Hub, Intercept, build_engine


class SeedExamplePoller:
    def __init__(
        self, hub: Hub, transport: httpx.AsyncBaseTransport | None = None, paginate: bool = False
    ) -> None:
        self.hub = hub
        self.http = httpx.AsyncClient(transport=transport or httpx.ASGITransport(app=hub.app))
        self.paginate = paginate
        self.last_poll = 0
        self.replica: dict[str, int] = {}

    async def process_order_updates(self) -> None:
        offset = 0
        while True:
            response = await self.http.get(
                f"{BASE_URL}/orders",
                params={
                    "updated_since": format_rfc3339(self.last_poll),
                    "limit": 100,
                    "offset": offset,
                },
                headers={"Authorization": f"Bearer {self.hub.token}"},
            )
            response.raise_for_status()
            orders = response.json()["data"]
            for order in orders:
                self.replica[order["id"]] = order["version"]  # update_erp_order
            if not self.paginate or len(orders) < 100:
                break
            offset += 100
        self.last_poll = self.hub.clock()  # save_last_poll_time(datetime.utcnow())

    async def lost(self) -> int:
        hub = await self.hub.versions("order")
        return sum(1 for i, v in hub.items() if self.replica.get(i) != v)


async def test_control_a_single_page_loses_a_250_record_tie(hub: Hub) -> None:
    """limit=100 without paging: 150 of 250 tied orders never arrive."""
    await hub.create_orders(250, tie=True)
    poller = SeedExamplePoller(hub)
    for _ in range(3):
        hub.clock.advance(1_000)
        await poller.process_order_updates()
    assert await poller.lost() == 150


async def test_control_offset_paging_over_a_moving_set_skips_records(hub: Hub) -> None:
    """Offsets across a set that moves while paging skip the records that slid back."""
    await hub.create_orders(250, tie=True)
    positions = await hub.order_ids_by_position()

    async def move_seen(request: httpx.Request, n: int) -> None:
        if n == 2:
            hub.clock.advance(10)
            for order_id in positions[:10]:
                await hub.advance_order(order_id)

    poller = SeedExamplePoller(
        hub, Intercept(httpx.ASGITransport(app=hub.app), move_seen), paginate=True
    )
    for _ in range(3):
        await poller.process_order_updates()
        hub.clock.advance(1_000)
    assert await poller.lost() == 10


async def test_control_saving_now_misses_a_commit_visible_late(hub: Hub) -> None:
    """A write stamped before the saved poll time is never asked for again."""
    orders = await hub.create_orders(20)
    poller = SeedExamplePoller(hub)
    await poller.process_order_updates()
    hub.clock.advance(5_000)
    await hub.create_orders(5)
    await poller.process_order_updates()
    await hub.advance_order(orders[3].id, stamp=hub.clock.now - 1_500)
    hub.clock.advance(300)
    for _ in range(3):
        await poller.process_order_updates()
        hub.clock.advance(1_000)
    assert await poller.lost() == 1


async def test_the_agent_passes_all_three_control_scenarios_together(hub: Hub, tmp_path) -> None:  # type: ignore[no-untyped-def]
    """Same three traps, one agent: nothing lost."""
    from ordersync.agent.sinks.sql import SqlSink
    from tests.integration.agent.harness import assert_replica_equals_hub

    orders = await hub.create_orders(250, tie=True)
    positions = await hub.order_ids_by_position()

    async def move_seen(request: httpx.Request, n: int) -> None:
        if n == 2:
            hub.clock.advance(10)
            for order_id in positions[:10]:
                await hub.advance_order(order_id)

    sink = await SqlSink.open(f"sqlite:///{tmp_path}/replica.db")
    engine = build_engine(
        hub, sink, transport=Intercept(httpx.ASGITransport(app=hub.app), move_seen)
    )
    await engine.run_cycle()
    hub.clock.advance(5_000)
    await hub.create_orders(5)
    await engine.run_cycle()
    await hub.advance_order(orders[100].id, stamp=hub.clock.now - 1_500)
    hub.clock.advance(300)
    await engine.run_cycle()
    await assert_replica_equals_hub(hub, sink)
    await sink.close()
