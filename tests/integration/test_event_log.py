"""The event log extension, black box over real uvicorn (SQLite and PostgreSQL): one change
carries one event id in every dialect's listing, in the log and in HubRise callback events;
retention answers a pruned position with 410 and the head to follow from; a write past its
deadline is rolled back with 503; on PostgreSQL a commit with a smaller id that lands late is
held back, never skipped."""

from __future__ import annotations

import asyncio
import contextlib
import itertools
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import psycopg
import pytest

from ordersync.domain import NewOrder, OrderStatus
from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.store.events import DAY_MS, EventLog, PositionPruned
from ordersync.store.store import Store
from tests.support import order_payload, serve_in_thread

T = TypeVar("T")
EPOCH = 1_704_067_200_000  # 2024-01-01T00:00:00Z


def on_store(db_url: str, work: Callable[[Store], Awaitable[T]], clock: Any = None) -> T:
    async def main() -> T:
        store = await Store.open(db_url, clock=clock) if clock else await Store.open(db_url)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


@dataclass
class Hub:
    base_url: str
    db_url: str
    store: Store  # the app's own (injected) store


@pytest.fixture
def hub(hub_db_url: str) -> Iterator[Hub]:
    on_store(hub_db_url, lambda s: s.ensure_account("bootstrap"))  # migrates
    store = Store.connect(hub_db_url)
    # The tests write with clocks of their own, years back: the hub's own pruning (real clock)
    # must not race them, so its retention is longer than that; tests prune explicitly.
    settings = HubSettings(db_url=hub_db_url, event_retention_days=36_500)
    with serve_in_thread(create_app(settings, store)) as base_url:
        yield Hub(base_url, hub_db_url, store)


@contextlib.contextmanager
def client(hub: Hub, token: str, **headers: str) -> Iterator[httpx.Client]:
    with httpx.Client(base_url=hub.base_url, headers=headers, timeout=30) as http:
        yield http


def settled_log(http: httpx.Client, count: int, **params: Any) -> dict[str, Any]:
    """The event log from `after=0` once it holds `count` events. On PostgreSQL a committed
    event is served once every transaction with a smaller id has ended (any transaction of the
    cluster, autovacuum's included): usually at once, sometimes a moment later."""
    for _ in range(200):
        page: dict[str, Any] = http.get("/api/v1/events", params={"after": 0, **params}).json()
        if len(page["data"]) >= count:
            return page
        time.sleep(0.05)
    raise AssertionError(f"the event log never reached {count} events: {page}")


def tokens(hub: Hub, *names: str) -> list[str]:
    account = f"acct-{uuid.uuid4().hex[:8]}"

    async def make(store: Store) -> list[str]:
        return [await store.create_token(account, name) for name in names]

    return on_store(hub.db_url, make)


def test_one_change_carries_one_event_id_in_every_dialect(hub: Hub) -> None:
    erp, watcher = tokens(hub, "erp", "watcher")
    with (
        client(hub, erp, Authorization=f"Bearer {erp}") as mason,
        client(hub, erp, **{"X-Access-Token": erp}) as hubrise,
        client(hub, watcher, **{"X-Access-Token": watcher}) as watching,
    ):
        assert watching.post("/v1/callback", json={"events": {"order": ["create", "update"]}})
        created = mason.post("/api/v1/orders", json=[order_payload("E-1"), order_payload("E-2")])
        assert created.status_code == 201
        first, second = (item["id"] for item in created.json()["data"])
        moved = hubrise.patch(f"/v1/location/orders/{first}", json={"status": "received"})
        assert moved.status_code == 200

        log = settled_log(mason, 3)
        events = log["data"]
        assert [(e["entity_id"], e["version"], e["event_type"]) for e in events] == [
            (first, 1, "order.created"),
            (second, 1, "order.created"),
            (first, 2, "order.atWarehouse"),
        ]
        ids = [e["event_id"] for e in events]
        assert ids == sorted(ids) and len(set(ids)) == 3
        assert {e["connection"] for e in events} == {"erp"}
        # The entity at the event's version, or null once a later version superseded it.
        assert events[0]["entity"] is None and events[0]["current_version"] == 2
        assert events[0]["entity_url"] == f"/api/v1/orders/{first}"
        assert events[2]["entity"]["status"] == "atWarehouse"
        assert events[2]["entity"]["event_id"] == ids[2]
        assert log["next_after"] == log["head"] >= ids[2]
        latest = {first: ids[2], second: ids[1]}

        listing = mason.get("/api/v1/orders", params={"updated_since": "2000-01-01T00:00:00Z"})
        assert {d["id"]: d["event_id"] for d in listing.json()["data"]} == latest
        assert listing.headers["X-Ordersync-Events"] == "/api/v1/events"
        assert int(listing.headers["X-Ordersync-Commit-Lag-Ms"]) == 2 * 5_000 + 1_000
        summary = mason.get("/api/v1/orders", params={"list_type": "summary"}).json()["data"]
        assert {d["id"]: d["event_id"] for d in summary} == latest

        polled = mason.post(
            "/v2/order-search/poll",
            json={"filters": {}},
            headers={"Authorization": httpx.BasicAuth("erp", erp)._auth_header},
        )
        assert polled.status_code == 200, polled.text
        assert {d["id"]: d["eventId"] for d in polled.json()["data"]} == latest
        assert polled.headers["X-Ordersync-Events"] == "/v2/event/poll"
        tc_log = mason.post(
            "/v2/event/poll",
            json={"afterEventId": 0, "limit": 2},
            headers={"Authorization": httpx.BasicAuth("erp", erp)._auth_header},
        ).json()
        assert [e["eventId"] for e in tc_log["data"]] == ids[:2]
        assert tc_log["nextAfterEventId"] == ids[1]  # a full page: continue after its last
        assert tc_log["data"][1]["entity"]["eventId"] == ids[1]

        listed = hubrise.get("/v1/location/orders").json()
        assert {o["id"]: o["event_id"] for o in listed} == {k: str(v) for k, v in latest.items()}
        hr_log = hubrise.get("/v1/location/events", params={"after": ids[0]}).json()
        assert [e["id"] for e in hr_log["events"]] == [str(ids[1]), str(ids[2])]
        assert hr_log["events"][1]["ordersync_event_type"] == "order.atWarehouse"

        callback_events = watching.get("/v1/callback/events").json()
        assert [e["id"] for e in callback_events] == [str(i) for i in ids]


def test_following_pages_through_every_event_once(hub: Hub) -> None:
    (erp,) = tokens(hub, "erp")
    with client(hub, erp, Authorization=f"Bearer {erp}") as mason:
        for batch in range(5):
            body = [order_payload(f"P-{batch}-{i}") for i in range(7)]
            assert mason.post("/api/v1/orders", json=body).status_code == 201
        settled_log(mason, 35)
        seen, after = [], 0
        for _ in range(20):
            page = mason.get("/api/v1/events", params={"after": after, "limit": 4}).json()
            seen += [e["event_id"] for e in page["data"]]
            after = page["next_after"]
            if len(page["data"]) < 4:
                break
        assert len(seen) == 35 == len(set(seen)) and seen == sorted(seen)
        bad = mason.get("/api/v1/events", params={"after": -1})
        assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "after"


class Clock:
    def __init__(self, now: int) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


def test_a_pruned_position_is_410_with_the_head_to_follow_from(hub: Hub) -> None:
    """Events older than the retention are pruned; a follower positioned before them is told
    to resync and where to follow from; one positioned after them goes on as before."""
    (erp,) = tokens(hub, "erp")
    clock = Clock(EPOCH)

    async def history(store: Store) -> tuple[int, int]:
        principal = await store.authenticate(erp)
        old = [NewOrder.model_validate(order_payload(f"OLD-{i}")) for i in range(5)]
        await store.create_orders(principal, old)
        clock.now += 10 * DAY_MS
        young = [NewOrder.model_validate(order_payload(f"NEW-{i}")) for i in range(3)]
        await store.create_orders(principal, young)
        clock.now += 21 * DAY_MS  # the old ones are 31 days old, the young ones 21
        log = EventLog(store, retention_ms=30 * DAY_MS)
        # Several short transactions. Only events below the frontier are pruned: a transaction
        # open elsewhere on the cluster may hold some back for a moment (see settled_log).
        deleted = 0
        for _ in range(200):
            deleted += await log.prune(batch=2)
            if deleted >= 5:
                break
            await asyncio.sleep(0.05)
        return deleted, await log.prune()

    deleted, again = on_store(hub.db_url, history, clock)
    assert (deleted, again) == (5, 0)
    with client(hub, erp, Authorization=f"Bearer {erp}") as mason:
        gone = mason.get("/api/v1/events", params={"after": 0})
        assert gone.status_code == 410, gone.text
        body = gone.json()
        assert body["error_type"] == "position_pruned"
        assert "resync" in body["message"] and str(body["head"]) in body["message"]
        horizon = body["pruned_through"]
        kept = settled_log(mason, 3, after=horizon)["data"]
        assert [e["entity"]["customer_identifier"] for e in kept] == [f"NEW-{i}" for i in range(3)]
        following = mason.get("/api/v1/events", params={"after": body["head"]})
        assert following.status_code == 200 and following.json()["data"] == []

        basic = httpx.BasicAuth("erp", erp)._auth_header
        tc = mason.post("/v2/event/poll", json={}, headers={"Authorization": basic})
        assert tc.status_code == 410 and tc.json()["error_type"] == "position_pruned"
    with client(hub, erp, **{"X-Access-Token": erp}) as hubrise:
        hr = hubrise.get("/v1/location/events", params={"after": 1})
        # HubRise ids are strings; the head only moves forward (other transactions end).
        assert hr.status_code == 410 and int(hr.json()["head"]) >= body["head"]


def test_concurrent_prunes_delete_each_event_once(hub_db_url: str) -> None:
    """Several workers pruning at once (PostgreSQL interleaves them) delete exactly the old
    events and agree on the horizon."""
    clock = Clock(EPOCH)

    async def run(store: Store) -> tuple[list[int], int]:
        principal_token = await store.create_token("acct", "erp")
        principal = await store.authenticate(principal_token)
        for batch in range(4):
            items = [NewOrder.model_validate(order_payload(f"C-{batch}-{i}")) for i in range(10)]
            await store.create_orders(principal, items)
        clock.now += 31 * DAY_MS
        logs = [EventLog(store, retention_ms=30 * DAY_MS) for _ in range(3)]
        deleted = await asyncio.gather(*(log.prune(batch=3) for log in logs))
        head = await logs[0].head()
        with pytest.raises(PositionPruned):
            await logs[0].read(principal.account_id, 0, 10)
        page = await logs[0].read(principal.account_id, head, 10)
        assert page.events == [] and page.next_after >= head
        return list(deleted), head

    deleted, _ = on_store(hub_db_url, run, clock)
    assert sum(deleted) == 40


def test_a_write_past_its_deadline_is_rolled_back_with_503(hub: Hub) -> None:
    (erp,) = tokens(hub, "erp")
    ticks = itertools.count(step=6_000)  # each look at the elapsed time: 6 s later
    hub.store.elapsed_ms = lambda: float(next(ticks))
    try:
        with client(hub, erp, Authorization=f"Bearer {erp}") as mason:
            late = mason.post("/api/v1/orders", json=[order_payload("LATE-1")])
            assert late.status_code == 503, late.text
            assert late.json()["error_type"] == "write_timeout"
            assert late.headers["Retry-After"] == "1"
            listing = mason.get("/api/v1/orders").json()
            assert listing["data"] == [] and listing["total"] == 0  # nothing committed
            hub.store.elapsed_ms = lambda: 0.0
            assert mason.post("/api/v1/orders", json=[order_payload("LATE-1")]).status_code == 201
            assert len(settled_log(mason, 1)["data"]) == 1  # only the retry's event
    finally:
        hub.store.elapsed_ms = lambda: 0.0


@pytest.mark.postgres
def test_a_smaller_id_committing_late_is_held_back_not_skipped(pg_url: str) -> None:
    """A transaction takes its id, another commits after it with a larger id: the follower is
    not shown the larger one until the smaller one has ended, so it misses neither."""

    async def run(store: Store) -> list[list[str]]:
        principal = await store.authenticate(await store.create_token("acct", "erp"))
        (made,) = await store.create_orders(
            principal, [NewOrder.model_validate(order_payload("S-1"))]
        )
        assert made.order is not None
        log = EventLog(store)
        start = (await log.read(principal.account_id, 0, 100)).next_after
        with psycopg.connect(pg_url) as slow:
            # A writer that took its transaction id (and so its event id) first ...
            slow.execute(
                "INSERT INTO changes (account_id, entity_kind, entity_id, version, event_type, "
                "connection_id, created_at, event_id) VALUES (%s, 'order', %s, 99, "
                "'order.slow', NULL, 0, pg_current_xact_id()::text::bigint << 20)",
                (principal.account_id, made.order.id),
            )
            # ... and one that commits before it, with a larger id.
            await store.transition_order(
                principal, principal.account_id, made.order.id, OrderStatus.AT_WAREHOUSE
            )
            held = await log.read(principal.account_id, start, 100)
            slow.commit()
        for _ in range(200):  # both, once every transaction below them has ended
            after = await log.read(principal.account_id, held.next_after, 100)
            if len(after.events) >= 2:
                break
            await asyncio.sleep(0.05)
        return [[e.event_type for e in held.events], [e.event_type for e in after.events]]

    held, after = on_store(pg_url, run)
    assert held == []  # the later commit waits for the earlier id
    assert after == ["order.slow", "order.atWarehouse"]  # both, smaller id first
