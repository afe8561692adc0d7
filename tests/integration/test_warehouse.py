"""The warehouse worker on SQLite and PostgreSQL: orders created through the API are allocated
against the stored stock, split and shorted by their policy, shipped and delivered; shorts and
failures show in every dialect; bad pick_from rules are refused at create."""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import dataclass
from datetime import date
from typing import Any

import httpx
import orjson
import pytest
from sqlalchemy import select

from ordersync.domain import OrderStatus, ShipmentStatus
from ordersync.domain.inventory import StockUnit
from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.hub.simulator import Warehouse
from ordersync.hub.warehouse import WarehouseWorker
from ordersync.store.inventory import InventoryStore
from ordersync.store.store import Principal, Store
from ordersync.store.tables import changes
from tests.support import order_payload

START_MS = 1_893_456_000_000  # 2030-01-01T00:00:00Z
WAIT_MS = 60_000


class Clock:
    def __init__(self) -> None:
        self.now = START_MS

    def __call__(self) -> int:
        return self.now


@dataclass
class Hub:
    api: httpx.AsyncClient
    store: Store
    clock: Clock
    principal: Principal
    token: str
    worker: WarehouseWorker
    inventory: InventoryStore

    async def create(self, identifier: str, **changes: Any) -> str:
        """An order created through MasonHub's API; its id."""
        response = await self.api.post(
            "/api/v1/orders", json=[order_payload(identifier, **changes)]
        )
        assert response.status_code == 201, response.text
        return str(response.json()["data"][0]["id"])

    async def stock(self, *units: StockUnit) -> None:
        await self.inventory.set_stock(None, self.principal.account_id, list(units))

    async def order(self, order_id: str) -> dict[str, Any]:
        response = await self.api.get(f"/api/v1/orders/{order_id}")
        assert response.status_code == 200, response.text
        body: dict[str, Any] = response.json()
        return body

    async def shipments(self, order_id: str) -> list[dict[str, Any]]:
        response = await self.api.get("/api/v1/shipments", params={"limit": 100})
        assert response.status_code == 200, response.text
        listed = [s for s in response.json()["data"] if s["order_id"] == order_id]
        return sorted(listed, key=lambda s: s["location"])

    async def through(self, order_id: str) -> None:
        """Every step of the warehouse, in order, for one order."""
        worker = self.worker
        await worker.admit([order_id])
        await worker.allocate([order_id])
        await worker.pack([order_id], lambda order, location: f"1Z-{location}")
        await worker.ship([order_id])


@pytest.fixture
async def hub(hub_db_url: str) -> AsyncIterator[Hub]:
    clock = Clock()
    store = await Store.open(hub_db_url, clock=clock)
    app = create_app(HubSettings(db_url=hub_db_url), store)
    token = await store.create_token("acme", "erp")
    principal = await store.authenticate(token)
    worker = WarehouseWorker(store, principal, single_shipment_wait_ms=WAIT_MS)
    api = httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app),
        base_url="http://hub",
        headers={"Authorization": f"Bearer {token}"},
    )
    async with api:
        yield Hub(api, store, clock, principal, token, worker, InventoryStore(store))
    await store.close()


def unit(sku: str, location: str, available: int, lot: str | None = None) -> StockUnit:
    return StockUnit(sku=sku, location=location, lot_number=lot, available=available)


def lines(*pairs: tuple[str, int]) -> list[dict[str, str]]:
    return [
        {"sku_customer_identifier": sku, "quantity": str(quantity), "unit_price": "1.00"}
        for sku, quantity in pairs
    ]


async def counts(hub: Hub, sku: str) -> dict[tuple[str, str], int]:
    async with hub.store.reader.connect() as conn:
        stock = await hub.inventory.read_stock(conn, hub.principal.account_id, [sku])
    return {
        (u.location, status): n
        for u in stock.for_sku(sku)
        for status, n in (("available", u.available), ("allocated", u.allocated))
    }


async def test_an_order_created_through_the_api_is_shipped_and_delivered(hub: Hub) -> None:
    """API order -> atWarehouse -> inProcess (stock allocated) -> packed (manifested shipment
    with lines, tracking and the order's value-added services) -> fulfilled (shipped, units
    gone) -> delivered once its shipment is."""
    await hub.stock(unit("SKU-1", "WH-A", 5), unit("SKU-2", "WH-A", 5))
    wrap = {"service": "gift_wrap", "details": {"paper": "red"}}
    order_id = await hub.create("API-1", value_added_services=[wrap])
    await hub.worker.admit([order_id])
    assert (await hub.order(order_id))["status"] == "atWarehouse"
    assert (await hub.worker.allocate([order_id])).allocated == [order_id]
    assert (await counts(hub, "SKU-1"))[("WH-A", "allocated")] == 2
    await hub.worker.pack([order_id], lambda order, location: "1ZTRACK")
    (manifested,) = await hub.shipments(order_id)
    assert manifested["status"] == "manifested" and manifested["shipped_at"] is None
    assert manifested["tracking_number"] == "1ZTRACK"
    assert manifested["value_added_services"] == [wrap]
    assert [(x["sku_customer_identifier"], x["quantity"]) for x in manifested["lines"]] == [
        ("SKU-1", "2"),
        ("SKU-2", "1"),
    ]
    assert [s.order_id for s in await hub.worker.ship([order_id])] == [order_id]
    assert (await hub.order(order_id))["status"] == "fulfilled"
    assert (await counts(hub, "SKU-1")) == {("WH-A", "available"): 3, ("WH-A", "allocated"): 0}
    (shipped,) = await hub.shipments(order_id)
    assert shipped["status"] == "shipped" and shipped["shipped_at"]
    await hub.worker.move_shipments([shipped["id"]], ShipmentStatus.IN_TRANSIT)
    assert (await hub.order(order_id))["status"] == "fulfilled"
    await hub.worker.move_shipments([shipped["id"]], ShipmentStatus.DELIVERED)
    assert (await hub.order(order_id))["status"] == "delivered"


async def test_allow_splits_ships_from_each_location_and_minimize_splits_from_fewest(
    hub: Hub,
) -> None:
    """Stock of SKU-1 spread 2 + 2 + 4: allow_splits for 4 units may use any; minimize_splits
    takes the one location that holds 4. One shipment per location, delivered separately; the
    order is delivered only when both are."""
    await hub.stock(unit("SKU-1", "WH-A", 2), unit("SKU-1", "WH-B", 2), unit("SKU-2", "WH-A", 1))
    split = await hub.create("SPLIT", line_items=lines(("SKU-1", 3), ("SKU-2", 1)))
    await hub.through(split)
    shipments = await hub.shipments(split)
    assert [s["location"] for s in shipments] == ["WH-A", "WH-B"]
    assert sum(int(x["quantity"]) for s in shipments for x in s["lines"]) == 4
    assert (await hub.order(split))["shorts"] == []
    for shipment in shipments:
        await hub.worker.move_shipments([shipment["id"]], ShipmentStatus.IN_TRANSIT)
    await hub.worker.move_shipments([shipments[0]["id"]], ShipmentStatus.DELIVERED)
    assert (await hub.order(split))["status"] == "fulfilled"
    await hub.worker.move_shipments([shipments[1]["id"]], ShipmentStatus.DELIVERED)
    assert (await hub.order(split))["status"] == "delivered"

    await hub.stock(unit("SKU-3", "WH-A", 2), unit("SKU-3", "WH-B", 2), unit("SKU-3", "WH-C", 4))
    fewest = await hub.create(
        "FEWEST", line_items=lines(("SKU-3", 4)), order_policy="minimize_splits"
    )
    await hub.through(fewest)
    assert [s["location"] for s in await hub.shipments(fewest)] == ["WH-C"]


async def test_shorts_are_recorded_and_shown_in_every_dialect(hub: Hub) -> None:
    """5 ordered, 3 in stock: 3 ship, 2 are short (insufficient_stock) on the MasonHub
    document, in Tradecloud's rendering and in HubRise's."""
    await hub.stock(unit("SKU-1", "WH-A", 3), unit("SKU-2", "WH-A", 1))
    order_id = await hub.create("SHORT", line_items=lines(("SKU-1", 5), ("SKU-2", 1)))
    await hub.worker.admit([order_id])
    await hub.worker.allocate([order_id])
    masonhub = await hub.order(order_id)
    assert masonhub["status"] == "inProcess"
    assert masonhub["shorts"] == [
        {
            "line_number": 1,
            "sku_customer_id": "SKU-1",
            "quantity": "2",
            "reason": "insufficient_stock",
        }
    ]
    tradecloud = (await hub.api.get(f"/v2/order/{order_id}")).json()
    assert tradecloud["shorts"] == [
        {
            "position": "0001",
            "item": {"number": "SKU-1"},
            "quantity": "2",
            "reason": "insufficient_stock",
        }
    ]
    hubrise = await hub.api.get(
        f"/v1/location/orders/{order_id}", headers={"X-Access-Token": hub.token}
    )
    assert hubrise.status_code == 200, hubrise.text
    assert hubrise.json()["shorts"] == [
        {"line_number": 1, "sku_ref": "SKU-1", "quantity": "2", "reason": "insufficient_stock"}
    ]


async def test_a_hard_pick_from_on_a_missing_lot_fails_the_order_with_the_reason(hub: Hub) -> None:
    """No unit of lot L-404 exists: the order is given up (canceled) with a failure naming the
    rule, and no stock moves."""
    await hub.stock(unit("SKU-1", "WH-A", 9, lot="L-1"), unit("SKU-2", "WH-A", 9))
    order_id = await hub.create(
        "HARD",
        pick_from=[{"attribute": "lot_number", "value": "L-404", "match": "hard"}],
    )
    await hub.worker.admit([order_id])
    report = await hub.worker.allocate([order_id])
    assert report.failed == {order_id: "pick_from_unmatched"}
    order = await hub.order(order_id)
    assert order["status"] == "canceled"
    assert order["failure"]["reason"] == "pick_from_unmatched"
    assert "L-404" in order["failure"]["detail"]
    assert (await counts(hub, "SKU-1"))[("WH-A", "available")] == 9
    tradecloud = (await hub.api.get(f"/v2/order/{order_id}")).json()
    assert tradecloud["failure"]["reason"] == "pick_from_unmatched"


async def test_single_shipment_waits_for_one_location_then_fails_after_the_configured_time(
    hub: Hub,
) -> None:
    """Lines held by two different locations: a single_shipment order waits (stays atWarehouse,
    nothing reserved); once it has waited WAIT_MS on the hub's clock it fails with
    single_shipment_timeout. A receipt before the deadline would have let it ship."""
    await hub.stock(unit("SKU-1", "WH-A", 5), unit("SKU-2", "WH-B", 5))
    waits = await hub.create("WAITS", order_policy="single_shipment")
    saved = await hub.create("SAVED", order_policy="single_shipment")
    hub.clock.now += 1_000  # they reach atWarehouse at this instant (their updated_at)
    await hub.worker.admit([waits, saved])
    report = await hub.worker.allocate([waits, saved])
    assert report.waiting == {waits: "no_single_location", saved: "no_single_location"}
    assert (await counts(hub, "SKU-1"))[("WH-A", "allocated")] == 0

    hub.clock.now += WAIT_MS - 1
    assert set((await hub.worker.allocate([waits])).waiting) == {waits}
    await hub.stock(unit("SKU-2", "WH-A", 1))  # enough at WH-A for one order
    assert (await hub.worker.allocate([saved])).allocated == [saved]
    hub.clock.now += 1
    assert (await hub.worker.allocate([waits])).failed == {waits: "single_shipment_timeout"}
    order = await hub.order(waits)
    assert order["status"] == "canceled" and "60 s" in order["failure"]["detail"]


async def test_an_order_canceled_in_process_gives_its_units_back(hub: Hub) -> None:
    """Allocated, then canceled by the client: the release step moves the units back to
    available and the order keeps no allocation."""
    await hub.stock(unit("SKU-1", "WH-A", 2), unit("SKU-2", "WH-A", 1))
    order_id = await hub.create("CANCEL")
    await hub.worker.admit([order_id])
    await hub.worker.allocate([order_id])
    assert (await counts(hub, "SKU-1"))[("WH-A", "available")] == 0
    await hub.store.transition_order(
        hub.principal, hub.principal.account_id, order_id, OrderStatus.CANCELED
    )
    assert await hub.worker.release_canceled([order_id]) == [order_id]
    assert (await counts(hub, "SKU-1")) == {("WH-A", "available"): 2, ("WH-A", "allocated"): 0}
    assert (await hub.order(order_id))["allocations"] == []
    assert await hub.worker.release_canceled([order_id]) == []


@pytest.mark.parametrize(
    ("pick_from", "field", "message"),
    [
        ({"attribute": "colour", "value": "red"}, "pick_from", "'colour' is not one of"),
        (
            {"attribute": "expiration_date", "value": "soon"},
            "pick_from",
            "'soon' is not a date",
        ),
    ],
)
async def test_a_pick_from_that_cannot_be_parsed_is_refused_at_create_naming_the_field(
    hub: Hub, pick_from: dict[str, str], field: str, message: str
) -> None:
    """MasonHub: the item's errors name the field; HubRise: 422 in its envelope, the same."""
    body = [order_payload("BAD", pick_from=[pick_from])]
    masonhub = await hub.api.post("/api/v1/orders", json=body)
    assert masonhub.status_code == 422
    text = orjson.dumps(masonhub.json()).decode()
    assert f'"{field}' in text and message in text
    hubrise_body = {
        "ref": "BAD-HR",
        "service_type_ref": "ground",
        "shipping_provider": "UPS",
        "customer": {
            "first_name": "Ada",
            "address_1": "1 Row",
            "city": "London",
            "postal_code": "EC1",
            "country": "GB",
        },
        "items": [{"product_name": "W", "sku_ref": "SKU-1", "price": "1.00 EUR", "quantity": "1"}],
        "pick_from": [pick_from],
    }
    hubrise = await hub.api.post(
        "/v1/location/orders", json=hubrise_body, headers={"X-Access-Token": hub.token}
    )
    assert hubrise.status_code == 422, hubrise.text
    assert field in hubrise.text and message in hubrise.text


async def test_an_unparsable_order_policy_is_refused_naming_the_field(hub: Hub) -> None:
    response = await hub.api.post(
        "/api/v1/orders", json=[order_payload("POLICY", order_policy="split_whenever")]
    )
    assert response.status_code == 422
    assert "order_policy" in response.text


class Monotonic:
    def __init__(self) -> None:
        self.now = 1000.0

    def __call__(self) -> float:
        return self.now


async def test_the_scheduler_takes_api_orders_through_to_delivery(hub: Hub) -> None:
    """The warehouse alone (rate 0: it creates nothing) finds an order created through the API
    and moves it, step by step, to delivered; every change is one version with its event."""
    await hub.stock(unit("SKU-1", "WH-A", 5), unit("SKU-2", "WH-B", 5))
    order_id = await hub.create("SCHEDULED")
    clock = Monotonic()
    warehouse = Warehouse(hub.store, hub.principal, rate=0, seed=3, monotonic=clock)
    for _ in range(120):
        clock.now += 1
        hub.clock.now += 1000
        await warehouse._advance_due()
    order = await hub.order(order_id)
    assert order["status"] == "delivered" and order["version"] == 6
    shipments = await hub.shipments(order_id)
    assert [(s["location"], s["status"]) for s in shipments] == [
        ("WH-A", "delivered"),
        ("WH-B", "delivered"),
    ]
    async with hub.store.reader.connect() as conn:
        events = [
            (str(r[0]), int(r[1]))
            for r in await conn.execute(
                select(changes.c.event_type, changes.c.version)
                .where(changes.c.entity_id == order_id)
                .order_by(changes.c.event_id)
            )
        ]
    assert events == [
        ("order.created", 1),
        ("order.atWarehouse", 2),
        ("order.inProcess", 3),
        ("order.packed", 4),
        ("order.fulfilled", 5),
        ("order.delivered", 6),
    ]


def test_day_of_the_store_clock_is_utc() -> None:
    """The expiry check uses the hub clock's UTC day (a lot expiring today still ships)."""
    from ordersync.hub.warehouse import _day

    assert _day(START_MS) == date(2030, 1, 1)
