"""MasonHub asynchronous writes: update and cancel requests, their resolution, the sandbox.

The app runs in-process (ASGI transport) over a store whose clock the test moves: resolution
waits for the configured delay, and the tests call the resolver directly instead of waiting.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from dataclasses import dataclass
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from ordersync.domain import OrderStatus, format_rfc3339
from ordersync.domain.inventory import StockUnit
from ordersync.domain.lifecycle import next_status
from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.store.hubrise import HubRiseStore
from ordersync.store.inventory import InventoryStore
from ordersync.store.requests import RequestStore
from ordersync.store.store import Store
from ordersync.store.tables import changes
from tests.support import order_payload

EPOCH = 1_704_067_200_000  # 2024-01-01T00:00:00Z
DELAY_MS = 3_000


class Clock:
    """The hub's clock: 1 ms per reading (so requests made one after the other are ordered),
    moved on by the test to pass the resolution delay."""

    def __init__(self) -> None:
        self.now = EPOCH

    def __call__(self) -> int:
        self.now += 1
        return self.now


@dataclass
class Hub:
    api: httpx.AsyncClient
    store: Store
    clock: Clock
    requests: RequestStore
    account_id: int

    async def create(self, *identifiers: str) -> list[dict[str, Any]]:
        response = await self.api.post(
            "/api/v1/orders", json=[order_payload(i) for i in identifiers]
        )
        assert response.status_code == 201, response.text
        return [item["order"] for item in response.json()["data"]]

    async def order(self, order_id: str) -> dict[str, Any]:
        response = await self.api.get(f"/api/v1/orders/{order_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def move_to(self, order_id: str, target: OrderStatus) -> None:
        """The warehouse moves the order on, step by step, up to `target`."""
        status = (await self.store.get_order(self.account_id, order_id)).status
        while status is not target:
            step = next_status(status)
            assert step is not None
            status = (
                await self.store.transition_order(None, self.account_id, order_id, step)
            ).status

    async def resolve(self) -> int:
        """What a hub worker's resolver does once the delay has passed."""
        self.clock.now += DELAY_MS
        return await self.requests.resolve_due()

    async def listing(self, path: str, **params: Any) -> list[dict[str, Any]]:
        response = await self.api.get(f"/api/v1/{path}", params=params)
        assert response.status_code == 200, response.text
        body: list[dict[str, Any]] = response.json()
        return body


async def open_hub(url: str, *, sandbox: bool = False) -> tuple[Hub, Store]:
    clock = Clock()
    store = await Store.open(url, clock=clock)
    settings = HubSettings(db_url=url, request_resolve_delay_ms=DELAY_MS, sandbox=sandbox)
    app = create_app(settings, store)
    token = await store.create_token("acme", "erp")
    account_id = (await store.authenticate(token)).account_id
    api = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://hub",
        headers={"Authorization": f"Bearer {token}"},
    )
    return Hub(api, store, clock, app.state.requests, account_id), store


@pytest.fixture
async def hub(hub_db_url: str) -> AsyncIterator[Hub]:
    opened, store = await open_hub(hub_db_url)
    async with opened.api:
        yield opened
    await store.close()


@pytest.fixture
async def sandbox(hub_db_url: str) -> AsyncIterator[Hub]:
    opened, store = await open_hub(hub_db_url, sandbox=True)
    async with opened.api:
        yield opened
    await store.close()


def replacement(identifier: str, **changes: Any) -> dict[str, Any]:
    return order_payload(identifier, **changes)


async def resolution_events(store: Store, request_id: str) -> list[str]:
    async with store.reader.connect() as conn:
        rows = await conn.execute(
            select(changes.c.event_type).where(
                changes.c.entity_kind == "request", changes.c.entity_id == request_id
            )
        )
        return [str(r[0]) for r in rows]


# -- updates ---------------------------------------------------------------------------------


async def test_an_update_is_accepted_at_once_and_applied_when_resolved(hub: Hub) -> None:
    (order,) = await hub.create("u-1")
    body = replacement(
        "u-1",
        shipping_provider="FedEx",
        line_items=[{"sku_customer_identifier": "SKU-9", "quantity": "5", "unit_price": "1.00"}],
    )
    response = await hub.api.post("/api/v1/order_update_requests", json=[body])
    assert response.status_code == 200, response.text
    answer = response.json()
    assert answer["records_submitted"] == answer["records_succeeded"] == 1
    assert answer["records_failed"] == 0
    (result,) = answer["results"]
    assert result["status"] == "success" and result["messages"] == []
    request_id = result["id"]
    assert result["url"] == f"/api/v1/order_update_requests?id={request_id}"

    # Not applied yet: pending, and the order untouched until the delay has passed.
    (listed,) = await hub.listing("order_update_requests", id=request_id)
    assert listed["status"] == "pending" and listed["resolved_at"] is None
    assert await hub.requests.resolve_due() == 0
    assert (await hub.order(order["id"]))["version"] == 1

    assert await hub.resolve() == 1
    updated = await hub.order(order["id"])
    assert updated["version"] == 2
    assert updated["shipping_provider"] == "FedEx"
    assert [(li["sku_customer_identifier"], li["quantity"]) for li in updated["line_items"]] == [
        ("SKU-9", "5")
    ]
    assert updated["updated_by"] == "erp"  # the requesting connection (echo detection)
    assert updated["status"] == "open" and updated["id"] == order["id"]
    (listed,) = await hub.listing("order_update_requests", id=request_id)
    assert listed["status"] == "success" and listed["reason"] is None
    assert listed["resolved_at"] is not None
    # The resolution is an event of its own in the log; the order's new version too.
    assert await resolution_events(hub.store, request_id) == ["orderUpdateResolution"]
    async with hub.store.reader.connect() as conn:
        logged = (await conn.execute(select(changes.c.entity_kind, changes.c.event_type))).all()
    assert sorted(map(tuple, logged)) == [
        ("order", "order.created"),
        ("order", "order.updated"),
        ("request", "orderUpdateResolution"),
    ]
    if hub.store.url.backend == "sqlite":
        # The polling feed serves entity versions only. (On PostgreSQL its frontier is the
        # cluster's oldest running transaction: other tests' could hold it back here.)
        feed = (await hub.api.get("/api/v1/events")).json()["data"]
        assert [e["event_type"] for e in feed] == ["order.created", "order.updated"]
    # A second resolver round finds nothing left to do.
    assert await hub.resolve() == 0


async def test_an_update_of_an_order_packed_meanwhile_fails_with_the_reason(hub: Hub) -> None:
    (order,) = await hub.create("u-2")
    response = await hub.api.post(
        "/api/v1/order_update_requests", json=[replacement("u-2", shipping_provider="DHL")]
    )
    request_id = response.json()["results"][0]["id"]
    await hub.move_to(order["id"], OrderStatus.PACKED)

    assert await hub.resolve() == 1
    (listed,) = await hub.listing("order_update_requests", id=request_id)
    assert listed["status"] == "failed"
    assert "packed" in listed["reason"] and listed["reason"].startswith("409")
    after = await hub.order(order["id"])
    assert after["shipping_provider"] == "UPS" and after["status"] == "packed"
    assert await resolution_events(hub.store, request_id) == ["orderUpdateResolution"]
    # What a webhook of that event carries (MasonHub's orderUpdateResolution data).
    data = await hub.requests.resolution("orderUpdateResolution", request_id)
    assert data is not None
    assert (data["id"], data["customer_order_id"], data["status"]) == (
        request_id,
        "u-2",
        "failure",
    )
    assert "packed" in data["reason"] and data["order_id"] == order["id"]


async def test_update_records_are_refused_one_by_one(hub: Hub) -> None:
    (_, in_process) = await hub.create("u-3", "u-4")
    await hub.move_to(in_process["id"], OrderStatus.IN_PROCESS)
    response = await hub.api.post(
        "/api/v1/order_update_requests",
        json=[
            replacement("u-3", priority=5),
            replacement("nobody"),
            replacement("u-4"),
            {"customer_identifier": "u-3"},  # not a full order
        ],
    )
    assert response.status_code == 200, response.text
    answer = response.json()
    assert (answer["records_submitted"], answer["records_succeeded"]) == (4, 1)
    assert answer["records_failed"] == 3
    ok, missing, busy, partial = answer["results"]
    assert ok["status"] == "success"
    assert missing["status"] == "failure" and missing["id"] is None
    assert missing["messages"][0]["field_name"] == "customer_identifier"
    assert missing["messages"][0]["errors"][0].startswith("303")
    assert busy["messages"][0]["errors"][0].startswith("409")
    assert "inProcess" in busy["messages"][0]["errors"][0]
    assert partial["status"] == "failure"
    assert {m["field_name"] for m in partial["messages"]} >= {"order_type", "line_items"}
    # Only the accepted record is stored.
    assert len(await hub.listing("order_update_requests")) == 1


async def test_an_update_naming_a_sku_outside_the_catalogue_is_refused_or_fails(
    hub: Hub,
) -> None:
    """Once the account has a catalogue, an update naming another SKU is refused in its
    record's result (the field named); one accepted before the catalogue existed fails at
    resolution with the reason, the order untouched."""
    (order,) = await hub.create("u-9")
    early = await hub.api.post(
        "/api/v1/order_update_requests", json=[replacement("u-9", shipping_provider="DHL")]
    )
    early_id = early.json()["results"][0]["id"]
    await InventoryStore(hub.store).set_stock(
        None, hub.account_id, [StockUnit("SKU-1", "WH-EAST", available=5)]
    )
    late = await hub.api.post("/api/v1/order_update_requests", json=[replacement("u-9")])
    (refused,) = late.json()["results"]
    assert refused["status"] == "failure" and refused["id"] is None
    assert [m["field_name"] for m in refused["messages"]] == [
        "line_items.1.sku_customer_identifier"
    ]
    assert "SKU-2" in refused["messages"][0]["errors"][0]

    assert await hub.resolve() == 1
    (listed,) = await hub.listing("order_update_requests", id=early_id)
    assert listed["status"] == "failed"
    assert listed["reason"].startswith("422") and "SKU-2" in listed["reason"]
    assert (await hub.order(order["id"]))["shipping_provider"] == "UPS"


@pytest.mark.parametrize("body", [{}, [], [{"customer_identifier": "x"}] * 31])
async def test_a_request_batch_must_be_1_to_30_records(hub: Hub, body: Any) -> None:
    for path in ("order_update_requests", "order_cancel_requests"):
        response = await hub.api.post(f"/api/v1/{path}", json=body)
        assert response.status_code == 422, response.text
        assert response.json()["error_type"] == "unprocessable_entity"


# -- cancels ---------------------------------------------------------------------------------


async def test_a_cancel_succeeds_until_packed_and_fails_after(hub: Hub) -> None:
    early, late = await hub.create("c-1", "c-2")
    await hub.move_to(early["id"], OrderStatus.IN_PROCESS)  # still cancelable
    response = await hub.api.post(
        "/api/v1/order_cancel_requests",
        json=[{"customer_identifier": "c-1"}, {"customer_identifier": "c-2"}],
    )
    assert response.status_code == 200, response.text
    first, second = (r["id"] for r in response.json()["results"])
    await hub.move_to(late["id"], OrderStatus.PACKED)

    assert await hub.resolve() == 2
    assert (await hub.order(early["id"]))["status"] == "canceled"
    assert (await hub.order(late["id"]))["status"] == "packed"
    by_id = {r["id"]: r for r in await hub.listing("order_cancel_requests")}
    assert by_id[first]["status"] == "success"
    assert by_id[first]["order_cancel_request_id"] == first
    assert by_id[second]["status"] == "failed"
    assert "packed" in by_id[second]["reason"]
    assert await resolution_events(hub.store, first) == ["orderCancelResolution"]
    assert await resolution_events(hub.store, second) == ["orderCancelResolution"]


async def test_a_second_cancel_names_the_existing_request(hub: Hub) -> None:
    await hub.create("c-3")
    url = "/api/v1/order_cancel_requests"
    first = (await hub.api.post(url, json=[{"customer_identifier": "c-3"}])).json()
    existing = first["results"][0]["id"]

    for expected_status in ("pending", "success"):
        again = (await hub.api.post(url, json=[{"customer_identifier": "c-3"}])).json()
        (result,) = again["results"]
        assert result["status"] == "failure" and result["id"] is None
        assert result["error_code"] == "DUPLICATE_CANCELLATION"
        assert result["existing_request_id"] == existing
        assert result["existing_status"] == expected_status
        assert existing in result["messages"][0]["errors"][0]
        await hub.resolve()
    # By the earlier request's id: the same order, the same duplicate.
    by_id = (await hub.api.post(url, json=[{"order_cancel_request_id": existing}])).json()
    assert by_id["results"][0]["error_code"] == "DUPLICATE_CANCELLATION"
    assert len(await hub.listing("order_cancel_requests")) == 1


async def test_a_cancel_record_needs_exactly_one_key(hub: Hub) -> None:
    response = await hub.api.post(
        "/api/v1/order_cancel_requests",
        json=[
            {},
            {"customer_identifier": "a", "order_cancel_request_id": str(EPOCH)},
            {"order_cancel_request_id": "00000000-0000-4000-8000-000000000000"},
        ],
    )
    assert response.status_code == 200, response.text
    results = response.json()["results"]
    assert [r["status"] for r in results] == ["failure"] * 3
    assert results[2]["messages"][0]["errors"][0].startswith("303")


# -- listings --------------------------------------------------------------------------------


async def test_listings_filter_by_id_status_and_resolved_after(hub: Hub) -> None:
    orders = await hub.create("l-1", "l-2", "l-3")
    url = "/api/v1/order_update_requests"
    first = (await hub.api.post(url, json=[replacement("l-1")])).json()["results"][0]["id"]
    await hub.move_to(orders[1]["id"], OrderStatus.AT_WAREHOUSE)
    second = (await hub.api.post(url, json=[replacement("l-2")])).json()["results"][0]["id"]
    await hub.move_to(orders[1]["id"], OrderStatus.IN_PROCESS)  # l-2's update will fail
    assert await hub.resolve() == 2
    resolved_at = hub.clock.now
    third = (await hub.api.post(url, json=[replacement("l-3")])).json()["results"][0]["id"]

    def ids(rows: list[dict[str, Any]]) -> list[str]:
        return [r["id"] for r in rows]

    path = "order_update_requests"
    assert ids(await hub.listing(path)) == [first, second, third]
    assert ids(await hub.listing(path, status="success")) == [first]
    assert ids(await hub.listing(path, status=["failed", "pending"])) == [second, third]
    assert ids(await hub.listing(path, id=[third, first])) == [first, third]
    assert ids(await hub.listing(path, limit=1, offset=1)) == [second]
    before = "2024-01-01T00:00:00Z"
    assert ids(await hub.listing(path, resolved_after=before)) == [first, second]
    assert await hub.resolve() == 1
    after = format_rfc3339(resolved_at)
    assert ids(await hub.listing(path, resolved_after=after)) == [third]
    bad = await hub.api.get(f"/api/v1/{path}", params={"resolved_after": "yesterday"})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "resolved_after"
    assert (await hub.api.get(f"/api/v1/{path}", params={"limit": 101})).status_code == 400
    assert (await hub.api.get(f"/api/v1/{path}", params={"status": "nope"})).status_code == 400


# -- concurrency -----------------------------------------------------------------------------


async def test_two_resolvers_racing_resolve_each_request_exactly_once(
    hub: Hub, hub_db_url: str
) -> None:
    updated = [f"r-{n:02d}" for n in range(30)]
    canceled = [f"k-{n:02d}" for n in range(30)]
    created = await hub.create(*updated) + await hub.create(*canceled)
    response = await hub.api.post(
        "/api/v1/order_update_requests", json=[replacement(i, priority=7) for i in updated]
    )
    assert response.json()["records_succeeded"] == 30
    cancels = await hub.api.post(
        "/api/v1/order_cancel_requests", json=[{"customer_identifier": i} for i in canceled]
    )
    assert cancels.json()["records_succeeded"] == 30
    hub.clock.now += DELAY_MS
    # A second hub worker: its own store (its own connections), the same database and clock.
    other = await Store.open(hub_db_url, clock=hub.clock, migrate=False)
    try:
        resolvers = [hub.requests, RequestStore(other, delay_ms=DELAY_MS)]
        counts = await asyncio.gather(*(r.resolve_due() for r in resolvers * 2))
    finally:
        await other.close()
    assert sum(counts) == 60
    async with hub.store.reader.connect() as conn:
        per_request = (
            await conn.execute(
                select(changes.c.entity_id, func.count())
                .where(changes.c.entity_kind == "request")
                .group_by(changes.c.entity_id)
            )
        ).all()
    assert len(per_request) == 60 and {int(n) for _, n in per_request} == {1}
    for order in created:
        final = await hub.order(order["id"])
        # Applied once each: version 2, and as asked.
        expected = ("open", 7) if order["customer_identifier"] in updated else ("canceled", 1)
        assert (final["version"], final["status"], final["priority"]) == (2, *expected)


# -- sandbox ---------------------------------------------------------------------------------


async def test_the_sandbox_is_off_unless_enabled(hub: Hub) -> None:
    (order,) = await hub.create("s-0")
    for path in ("sandbox/resolve_requests", f"sandbox/orders/{order['id']}/ship"):
        response = await hub.api.post(f"/api/v1/{path}")
        assert response.status_code == 404, response.text
        assert response.json()["error_type"] == "sandbox_disabled"


async def test_the_sandbox_resolves_now_and_ships_orders(sandbox: Hub) -> None:
    hub = sandbox
    first, second = await hub.create("s-1", "s-2")
    response = await hub.api.post(
        "/api/v1/order_cancel_requests", json=[{"customer_identifier": "s-1"}]
    )
    request_id = response.json()["results"][0]["id"]
    resolved = await hub.api.post("/api/v1/sandbox/resolve_requests")  # no waiting
    assert resolved.json() == {"resolved": 1}
    (listed,) = await hub.listing("order_cancel_requests", id=request_id)
    assert listed["status"] == "success"

    shipped = await hub.api.post(
        f"/api/v1/sandbox/orders/{second['id']}/ship", json={"number_of_shipments": 2}
    )
    assert shipped.status_code == 200, shipped.text
    assert shipped.json()["status"] == "fulfilled"
    shipments = (await hub.api.get("/api/v1/shipments")).json()["data"]
    assert len(shipments) == 2 and {s["order_id"] for s in shipments} == {second["id"]}
    again = await hub.api.post(f"/api/v1/sandbox/orders/{first['id']}/ship")
    assert again.status_code == 409 and "canceled" in again.json()["message"]


async def test_hubrise_callbacks_carry_the_order_versions_not_the_resolutions(hub: Hub) -> None:
    """A resolution row in the log is for webhooks; a HubRise callback (another connection of
    the account, subscribed to every order event) gets the order's versions only, and its
    watermark passes the resolution."""
    watcher = await hub.store.authenticate(await hub.store.create_token("acme", "pos"))
    callbacks = HubRiseStore(hub.store)
    await callbacks.put_callback(watcher, {"order": ["create", "update"]})
    await hub.create("h-1")
    await hub.api.post("/api/v1/order_update_requests", json=[replacement("h-1", priority=3)])
    assert await hub.resolve() == 1
    pending = await callbacks.pending_events(watcher)
    assert [(e.kind, e.version) for e in pending] == [("order", 1), ("order", 2)]
    for event in pending:
        await callbacks.acknowledge(watcher, event.seq)
    assert await callbacks.pending_events(watcher) == []


def test_the_sandbox_is_on_with_the_simulator_or_when_asked(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    assert not HubSettings().sandbox_enabled
    assert HubSettings(simulate_rate=5).sandbox_enabled  # hub serve --simulate
    assert not HubSettings(simulate_rate=5, sandbox=False).sandbox_enabled
    monkeypatch.setenv("ORDERSYNC_HUB_SANDBOX", "1")
    monkeypatch.setenv("ORDERSYNC_HUB_REQUEST_RESOLVE_DELAY_MS", "250")
    settings = HubSettings.from_env()
    assert settings.sandbox_enabled and settings.request_resolve_delay_ms == 250
