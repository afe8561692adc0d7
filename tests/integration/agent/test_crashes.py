"""A crash after each step of a cycle, then a restart from stored state: nothing lost or doubled,
through each dialect (for HubRise the steps are those of its backfill)."""

from __future__ import annotations

import pytest

from ordersync.agent.sinks.base import Sink
from tests.integration.agent.conftest import SinkFactory
from tests.integration.agent.harness import (
    Hub,
    assert_applied_at_most_once,
    assert_replica_equals_hub,
    build_engine,
)


class SimulatedCrash(Exception):
    """Stands for the process dying at this point: nothing after it runs."""


def crash_on(step: str, occurrence: int):  # type: ignore[no-untyped-def]
    seen = {"n": 0}

    def hook(name: str, *_: object) -> None:
        if name == step:
            seen["n"] += 1
            if seen["n"] == occurrence:
                raise SimulatedCrash(step)

    return hook


async def seed(hub: Hub) -> None:
    orders = await hub.create_orders(120, tie=True)
    await hub.create_orders(60)
    for order in orders[:30]:
        hub.clock.advance()
        await hub.advance_order(order.id)
    for order in orders[:25]:
        hub.clock.advance()
        await hub.ship(order)


ENGINE_STEPS = ("after_fetch", "after_commit")
SINK_STEPS = ("mid_apply", "before_cursor", "after_cursor")


@pytest.mark.parametrize("step", ENGINE_STEPS + SINK_STEPS)
async def test_crash_at_each_step_then_restart_converges(
    hub: Hub, sink_factory: SinkFactory, step: str, dialect: str
) -> None:
    """Crash on the second page at `step`; a restarted agent ends equal to the hub."""
    await seed(hub)
    hook = crash_on(step, 2)
    sink: Sink = await (sink_factory(fault_hook=hook) if step in SINK_STEPS else sink_factory())
    engine = build_engine(
        hub, sink, page_size=50, hook=hook if step in ENGINE_STEPS else None, dialect=dialect
    )
    with pytest.raises(SimulatedCrash):
        await engine.run_cycle()
    # More writes land while the agent is down.
    hub.clock.advance(50)
    await hub.create_orders(10, tie=True)
    restarted_sink = await sink_factory()
    await build_engine(hub, restarted_sink, page_size=50, dialect=dialect).run_cycle()
    await assert_replica_equals_hub(hub, restarted_sink, dialect)
    await assert_applied_at_most_once(restarted_sink)


async def test_a_stop_request_between_pages_keeps_committed_pages_and_resumes(
    hub: Hub, sink_factory: SinkFactory, dialect: str
) -> None:
    """Stopping mid-drain leaves whole pages only; the next run picks up from the cursor. The
    stop comes once the first page committed; the page already sent after it (the engine sends
    page k+1 before it awaits page k's commit) still ends whole, and nothing after it is sent."""
    import asyncio

    await seed(hub)  # 180 orders (four pages of 50) and 25 shipments
    stop = asyncio.Event()
    sink = await sink_factory()

    def stop_after_first(name: str, stream: str) -> None:
        if name == "after_commit":
            stop.set()

    first = await build_engine(
        hub, sink, page_size=50, hook=stop_after_first, dialect=dialect
    ).run_cycle(stop_event=stop)
    assert first.pages in (1, 2)
    assert 50 <= first.applied <= first.fetched <= 100
    second = await build_engine(hub, sink, page_size=50, dialect=dialect).run_cycle()
    await assert_replica_equals_hub(hub, sink, dialect)
    await assert_applied_at_most_once(sink, first.applied + second.applied)
