"""The hub's background delivery loop (`Dispatcher.run_forever`): woken by its own commits,
and not held back by a slow receiver.

The loop runs with an idle interval of an hour: a delivery that arrives at all came by the
wake, not by the interval. The waits below are deadlines against a hang, not measurements."""

from __future__ import annotations

import asyncio
import threading
from collections.abc import AsyncIterator
from contextlib import asynccontextmanager
from dataclasses import dataclass, field
from typing import Any

import orjson
import pytest

from ordersync.domain import NewOrder, OrderStatus
from ordersync.errors import InvalidTransition
from ordersync.hub.webhooks import Dispatcher
from ordersync.store.store import Principal, Store
from ordersync.store.webhooks import WebhookStore
from tests.support import order_payload, serve_in_thread

HOUR = 3600.0


@dataclass
class GatedReceiver:
    """Records each delivery's (order id, version); a request for an order in `held` waits
    until `release` is set before it is answered."""

    held: set[str] = field(default_factory=set)
    release: threading.Event = field(default_factory=threading.Event)
    got: list[tuple[str, int]] = field(default_factory=list)
    arrived: list[str] = field(default_factory=list)  # order ids, before any wait
    lock: threading.Lock = field(default_factory=threading.Lock)

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] == "lifespan":
            while True:
                message = await receive()
                if message["type"] == "lifespan.startup":
                    await send({"type": "lifespan.startup.complete"})
                else:
                    await send({"type": "lifespan.shutdown.complete"})
                    return
        body = b""
        while True:
            message = await receive()
            body += message.get("body", b"")
            if not message.get("more_body"):
                break
        data = orjson.loads(body)["data"]
        with self.lock:
            self.arrived.append(data["order_id"])
        if data["order_id"] in self.held:
            await asyncio.to_thread(self.release.wait, 60)
        with self.lock:
            self.got.append((data["order_id"], data["version"]))
        await send({"type": "http.response.start", "status": 204, "headers": []})
        await send({"type": "http.response.body", "body": b""})

    def received(self) -> list[tuple[str, int]]:
        with self.lock:
            return list(self.got)


async def until(check: Any, what: str) -> None:
    try:
        async with asyncio.timeout(60):
            while not check():  # noqa: ASYNC110  (the receiver is another thread's)
                await asyncio.sleep(0.01)
    except TimeoutError:
        raise AssertionError(f"never happened: {what}") from None


@asynccontextmanager
async def delivering(
    hub_db_url: str, endpoint: GatedReceiver
) -> AsyncIterator[tuple[Store, Principal]]:
    """A store with a warehouse connection, a subscriber to `endpoint`, and the loop running
    on the same store (the hub process's own writes)."""
    store = await Store.open(hub_db_url)
    warehouse = await store.authenticate(await store.create_token("acme", "warehouse"))
    watcher = await store.authenticate(await store.create_token("acme", "erp"))
    webhooks = WebhookStore(store)
    with serve_in_thread(endpoint) as base:
        await webhooks.create(watcher, "masonhub", f"{base}/hook", "orderEvent")
        loop = asyncio.ensure_future(Dispatcher(store, webhooks).run_forever(HOUR, min_idle_s=HOUR))
        try:
            await asyncio.sleep(0)  # the loop's first (idle) round starts its nap
            yield store, warehouse
        finally:
            endpoint.release.set()
            loop.cancel()
            await asyncio.gather(loop, return_exceptions=True)
            await store.close()


async def create(store: Store, warehouse: Principal, name: str) -> str:
    (result,) = await store.create_orders(warehouse, [NewOrder.model_validate(order_payload(name))])
    assert result.order is not None
    return result.order.id


async def test_a_commit_wakes_the_idle_loop(hub_db_url: str) -> None:
    """With an idle nap of an hour, an order made through the same store is delivered at
    once: its commit ends the nap."""
    endpoint = GatedReceiver()
    async with delivering(hub_db_url, endpoint) as (store, warehouse):
        await asyncio.sleep(0.1)  # well into the nap
        order_id = await create(store, warehouse, "W-1")
        await until(lambda: endpoint.received() == [(order_id, 1)], "the woken delivery")


async def test_a_slow_receiver_does_not_hold_back_other_orders(hub_db_url: str) -> None:
    """While one order's delivery waits on the receiver, orders committed after it are
    delivered; the held order's next version waits for its first (order per entity)."""
    endpoint = GatedReceiver()
    async with delivering(hub_db_url, endpoint) as (store, warehouse):
        slow = await create(store, warehouse, "S-1")
        endpoint.held.add(slow)  # before this task awaits again: before the loop can send
        await until(lambda: slow in endpoint.arrived, "the slow order's delivery, held")
        await store.transition_order(
            warehouse, warehouse.account_id, slow, OrderStatus.AT_WAREHOUSE
        )
        quick = [await create(store, warehouse, f"Q-{i}") for i in range(3)]
        await until(lambda: {o for o, _ in endpoint.received()} == set(quick), "the other orders")
        assert all(o != slow for o, _ in endpoint.received())
        endpoint.held.clear()
        endpoint.release.set()
        await until(lambda: len(endpoint.received()) == 5, "the held order's versions")
        assert [v for o, v in endpoint.received() if o == slow] == [1, 2]


async def test_commit_listeners_hear_commits_only_and_cannot_fail_a_write(
    hub_db_url: str,
) -> None:
    """`Store.on_commit`: called once per committed write, not for one rolled back; a listener
    that raises does not turn a committed write into an error; once forgotten, not called."""
    store = await Store.open(hub_db_url)
    try:
        warehouse = await store.authenticate(await store.create_token("acme", "warehouse"))
        heard: list[int] = []
        forget = store.on_commit(lambda: heard.append(1))
        store.on_commit(lambda: 1 / 0)
        order_id = await create(store, warehouse, "L-1")
        assert heard == [1]
        with pytest.raises(InvalidTransition):  # fulfilled straight from open: refused
            await store.transition_order(
                warehouse, warehouse.account_id, order_id, OrderStatus.FULFILLED
            )
        assert heard == [1]
        forget()
        await create(store, warehouse, "L-2")
        assert heard == [1]
    finally:
        await store.close()
