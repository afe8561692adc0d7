"""The HubRise dialect under /v1 (seed 003), black box through real uvicorn on both backends."""

from __future__ import annotations

import asyncio
import contextlib
import random
import re
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ordersync.domain import NewOrder, OrderStatus
from ordersync.hub.app import create_app
from ordersync.hub.ratelimit import QuotaPolicy
from ordersync.hub.settings import HubSettings
from ordersync.store.hubrise import HubRiseStore
from ordersync.store.store import Store
from tests.support import fresh_pg_database, order_payload, serve_in_thread

SEEDED = 150
SEED_START = 1_700_000_000_000  # 2023-11-14T22:13:20Z: 23:13:20+01:00 in Paris
PARIS_TIME = re.compile(r"^2023-11-1\dT\d\d:\d\d:\d\d(\.\d{3})?\+01:00$")
MONEY = re.compile(r"^-?\d+\.\d{2} EUR$")


class Hub:
    def __init__(self, base: str, db_url: str, tokens: dict[str, str], seeded: list[str]) -> None:
        self.base, self.db_url, self.seeded = base, db_url, seeded
        self.clients = {
            name: httpx.Client(base_url=base, headers={"X-Access-Token": token}, timeout=30)
            for name, token in tokens.items()
        }
        self.tokens = tokens

    @property
    def erp(self) -> httpx.Client:
        return self.clients["erp"]

    @property
    def other(self) -> httpx.Client:
        return self.clients["other"]

    @property
    def watcher(self) -> httpx.Client:
        return self.clients["watcher"]


async def _seed(db_url: str) -> tuple[dict[str, str], list[str]]:
    store = await Store.open(db_url)
    await store.ensure_account("acme", timezone="Europe/Paris")
    tokens = {
        name: await store.create_token("acme", name)
        for name in ("erp", "other", "watcher", "acker")
    }
    principal = await store.authenticate(tokens["erp"])
    ticks = iter(range(SEED_START, SEED_START + 10_000_000, 1000))
    store.clock = lambda: next(ticks)
    results = await store.create_orders(
        principal,
        [
            NewOrder.model_validate(order_payload(f"PO-{i}", delivery_days=[1, 2, 3, 4, 5]))
            for i in range(SEEDED)
        ],
    )
    await store.close()
    return tokens, [r.order.id for r in results if r.order is not None]


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """One seeded hub per backend for the module (quotas off: these tests poll hard)."""
    with contextlib.ExitStack() as stack:
        if request.param == "sqlite":
            db_url = f"sqlite:///{tmp_path_factory.mktemp('hr')}/hub.db"
        else:
            admin = request.getfixturevalue("pg_admin_url")
            template = request.getfixturevalue("pg_hub_template")
            db_url = stack.enter_context(fresh_pg_database(admin, template=template))
        tokens, seeded = asyncio.run(_seed(db_url))
        app = create_app(HubSettings(db_url=db_url, quotas=QuotaPolicy()))
        base = stack.enter_context(serve_in_thread(app))
        hub = Hub(base, db_url, tokens, seeded)
        yield hub
        for client in hub.clients.values():
            client.close()


def hubrise_order(ref: str, **overrides: Any) -> dict[str, Any]:
    body: dict[str, Any] = {
        "ref": ref,
        "status": "new",
        "service_type": "delivery",
        "service_type_ref": "ground",
        "shipping_provider": "UPS",
        "customer": {
            "first_name": "Ada",
            "last_name": "Lovelace",
            "address_1": "12 Analytical Row",
            "city": "London",
            "postal_code": "EC1A 1BB",
            "country": "GB",
        },
        "items": [
            {"product_name": "Widget", "sku_ref": "SKU-1", "price": "9.99 EUR", "quantity": "2"}
        ],
        "delivery_days": "12345--",
    }
    body.update(overrides)
    return body


def walk(client: httpx.Client, **params: Any) -> list[list[dict[str, Any]]]:
    pages, cursor = [], None
    while True:
        response = client.get(
            "/v1/location/orders", params={**params, **({"cursor": cursor} if cursor else {})}
        )
        assert response.status_code == 200, response.text
        pages.append(response.json())
        cursor = response.headers.get("X-Cursor-Next")
        if cursor is None:
            return pages


# -- listing and paging -------------------------------------------------------------------------


def test_a_150_order_walk_returns_100_then_50_and_no_further_cursor(hub: Hub) -> None:
    """The default page is 100; the last page carries no X-Cursor-Next."""
    pages = walk(hub.erp, before="2024-01-01T00:00:00Z")
    assert [len(p) for p in pages] == [100, 50]
    ids = [o["id"] for page in pages for o in page]
    assert sorted(ids) == sorted(hub.seeded)


def test_orders_come_newest_first(hub: Hub) -> None:
    """created_at descending, as HubRise lists them."""
    page = hub.erp.get("/v1/location/orders", params={"count": 30, "before": "2024-01-01"}).json()
    assert [o["id"] for o in page] == list(reversed(hub.seeded))[:30]


def test_the_cursor_walk_is_stable_while_orders_change(hub: Hub) -> None:
    """Orders created or updated during a walk neither hide nor repeat one of the original set."""
    original = set(hub.seeded)
    seen: list[str] = []
    cursor, step = None, 0
    while True:
        params: dict[str, Any] = {"count": 40}
        if cursor:
            params["cursor"] = cursor
        response = hub.erp.get("/v1/location/orders", params=params)
        assert response.status_code == 200
        seen += [o["id"] for o in response.json()]
        cursor = response.headers.get("X-Cursor-Next")
        if cursor is None:
            break
        step += 1
        created = hub.other.post("/v1/location/orders", json=hubrise_order(f"WALK-{step}"))
        assert created.status_code == 201, created.text
        ahead = hub.seeded[step * 7]  # an old order the walk has not reached yet
        moved = hub.other.patch(f"/v1/location/orders/{ahead}", json={"status": "received"})
        assert moved.status_code in (200, 422)
    assert [i for i in seen if i in original] and len(seen) == len(set(seen))
    assert original <= set(seen)


@pytest.mark.parametrize(
    "params,field",
    [
        ({"count": 0}, "count"),
        ({"count": 101}, "count"),
        ({"count": "abc"}, "count"),
        ({"cursor": "not-a-cursor"}, "cursor"),
        ({"cursor": "WzE3MDAwMDAwMDAwMDAsImFiYyJdqg-61B"}, "cursor"),  # last bits changed
        ({"cursor": "WzE4MDAwMDAwMDAwMDAsImFiYyJdqg-61A"}, "cursor"),  # position changed
        ({"after": "yesterday"}, "after"),
        ({"before": "2024-13-01T00:00:00Z"}, "before"),
        ({"status": "lost"}, "status"),
        ({"private_ref": "a\x00b"}, "private_ref"),
    ],
)
def test_bad_listing_parameters_are_a_400_naming_the_field(
    hub: Hub, params: dict[str, Any], field: str
) -> None:
    """Each parameter is bound; a value outside it is refused, not clamped."""
    response = hub.erp.get("/v1/location/orders", params=params)
    assert response.status_code == 400
    assert field in [e["field"] for e in response.json()["errors"]]


def test_count_bounds_1_and_100_are_served(hub: Hub) -> None:
    """count=1 returns one order and a cursor; count=100 returns 100."""
    one = hub.erp.get("/v1/location/orders", params={"count": 1})
    assert len(one.json()) == 1 and one.headers.get("X-Cursor-Next")
    assert len(hub.erp.get("/v1/location/orders", params={"count": 100}).json()) == 100


def test_after_and_before_filter_on_creation_time(hub: Hub) -> None:
    """`after` is inclusive, `before` exclusive; a time without offset is the location's."""
    page = hub.erp.get(
        "/v1/location/orders",
        params={"after": "2023-11-14T23:13:30", "before": "2023-11-14T23:13:35+01:00"},
    ).json()
    assert [o["ref"] for o in page] == [f"PO-{i}" for i in (14, 13, 12, 11, 10)]


def test_status_filter_takes_hubrise_statuses(hub: Hub) -> None:
    """status=new lists open orders; a HubRise status we have no equivalent for lists none."""
    new = hub.erp.get("/v1/location/orders", params={"status": "new", "count": 5}).json()
    assert new and {o["status"] for o in new} == {"new"}
    assert hub.erp.get("/v1/location/orders", params={"status": "accepted"}).json() == []


# -- shapes -------------------------------------------------------------------------------------


def test_an_order_has_hubrise_types(hub: Hub) -> None:
    """Money "19.98 EUR", decimals as strings, times in the location's zone, DOW days."""
    order = hub.erp.get(f"/v1/location/orders/{hub.seeded[0]}").json()
    assert order["status"] == "new" and order["ref"] == "PO-0"
    assert PARIS_TIME.match(order["created_at"]) and PARIS_TIME.match(order["updated_at"])
    assert order["delivery_days"] == "12345--"
    first, second = order["items"]
    assert (first["price"], first["quantity"], first["subtotal"]) == ("9.99 EUR", "2", "19.98 EUR")
    assert (second["price"], second["quantity"]) == ("0.10 EUR", "1")
    assert order["total"] == "20.08 EUR" and MONEY.match(order["total"])
    assert order["customer"]["first_name"] == "Ada" and order["customer"]["address_1"]
    assert order["version"] == 1 and order["private_ref"] is None


def test_an_unknown_order_is_404_not_found(hub: Hub) -> None:
    """Any id that names no order, even one no database could store, is a 404."""
    for order_id in ("nope", "a%00b", "x" * 200):
        response = hub.erp.get(f"/v1/location/orders/{order_id}")
        assert response.status_code == 404 and response.json()["error_type"] == "not_found"


def test_an_unknown_route_is_a_routing_error(hub: Hub) -> None:
    response = hub.erp.get("/v1/location/nothing-here")
    assert response.status_code == 404 and response.json()["error_type"] == "routing_error"


# -- auth and headers ---------------------------------------------------------------------------


@pytest.mark.parametrize(
    "headers", [{}, {"X-Access-Token": "wrong"}, {"Authorization": "Bearer wrong"}]
)
def test_without_a_valid_access_token_the_answer_is_exactly_unauthorized(
    hub: Hub, headers: dict[str, str]
) -> None:
    """Missing or unknown X-Access-Token -> 401 {"error_type": "unauthorized"}, nothing else."""
    response = httpx.get(f"{hub.base}/v1/location/orders", headers=headers)
    assert response.status_code == 401 and response.json() == {"error_type": "unauthorized"}


def test_if_none_match_with_the_current_etag_is_a_304(hub: Hub) -> None:
    """Single order and listing carry a weak ETag; a still-matching If-None-Match gets 304."""
    for path in (f"/v1/location/orders/{hub.seeded[3]}", "/v1/location/orders?count=5"):
        first = hub.watcher.get(path)
        etag = first.headers["ETag"]
        assert etag.startswith('W/"')
        again = hub.watcher.get(path, headers={"If-None-Match": etag})
        assert again.status_code == 304 and again.content == b""
        stale = hub.watcher.get(path, headers={"If-None-Match": 'W/"other"'})
        assert stale.status_code == 200


def test_the_etag_changes_when_the_order_does(hub: Hub) -> None:
    """After a change, the old ETag no longer matches."""
    order_id = hub.seeded[5]
    etag = hub.erp.get(f"/v1/location/orders/{order_id}").headers["ETag"]
    hub.other.patch(f"/v1/location/orders/{order_id}", json={"status": "cancelled"})
    after = hub.erp.get(f"/v1/location/orders/{order_id}", headers={"If-None-Match": etag})
    assert after.status_code == 200 and after.json()["status"] == "cancelled"


def test_a_post_with_method_override_patch_acts_as_patch(hub: Hub) -> None:
    """POST /location/orders/:id with X-Http-Method-Override: PATCH updates the order."""
    order_id = hub.seeded[6]
    response = hub.erp.post(
        f"/v1/location/orders/{order_id}",
        json={"private_ref": "OVR-1"},
        headers={"X-Http-Method-Override": "PATCH"},
    )
    assert response.status_code == 200 and response.json()["private_ref"] == "OVR-1"


def test_method_override_is_refused_on_a_get(hub: Hub) -> None:
    """A GET must not change anything: the header earns a 400."""
    response = hub.erp.get("/v1/location/orders", headers={"X-Http-Method-Override": "DELETE"})
    assert response.status_code == 400
    assert response.json()["errors"][0]["field"] == "X-Http-Method-Override"


def test_a_body_that_is_not_json_is_a_415(hub: Hub) -> None:
    """Content-Type other than application/json -> 415 unsupported_media_type."""
    response = hub.erp.post(
        "/v1/location/orders",
        content=b"ref=1",
        headers={"Content-Type": "application/x-www-form-urlencoded"},
    )
    assert response.status_code == 415
    assert response.json()["error_type"] == "unsupported_media_type"


# -- create and update --------------------------------------------------------------------------


def test_create_maps_a_hubrise_body_to_an_order(hub: Hub) -> None:
    """POST /location/orders creates the order and answers it in HubRise shape, private ref set."""
    response = hub.erp.post(
        "/v1/location/orders", json=hubrise_order("HR-1", private_ref="ERP-HR-1", total="19.98 EUR")
    )
    assert response.status_code == 201, response.text
    order = response.json()
    assert (order["ref"], order["status"], order["private_ref"]) == ("HR-1", "new", "ERP-HR-1")
    assert order["items"][0]["subtotal"] == "19.98 EUR" and order["delivery_days"] == "12345--"
    assert hub.other.get(f"/v1/location/orders/{order['id']}").json()["private_ref"] is None


def test_validation_errors_are_a_422_with_a_field_breakdown(hub: Hub) -> None:
    """Every field at fault is named, in HubRise's names, with message "Validation failed"."""
    body = hubrise_order(
        "HR-BAD",
        delivery_days="1234567x",
        customer={
            "first_name": "Ada",
            "address_1": "x",
            "city": "London",
            "postal_code": "1",
            "country": "gb",
        },
    )
    body["items"] = [
        {"sku_ref": "S", "price": "abc", "quantity": "1.5.2"},
        {"sku_ref": "T", "price": "1.00 USD", "quantity": "1"},
    ]
    response = hub.erp.post("/v1/location/orders", json=body)
    assert response.status_code == 422
    payload = response.json()
    assert payload["error_type"] == "unprocessable_entity"
    assert payload["message"] == "Validation failed"
    fields = {e["field"] for e in payload["errors"]}
    assert {
        "delivery_days",
        "items.0.price",
        "items.0.quantity",
        "items.1.price",
        "customer.country",
    } <= fields
    assert any("'abc' is not a valid monetary amount" in e["message"] for e in payload["errors"])


def test_a_duplicate_ref_is_a_422_on_ref(hub: Hub) -> None:
    response = hub.erp.post("/v1/location/orders", json=hubrise_order("PO-1"))
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "ref"


def test_patch_status_follows_the_lifecycle(hub: Hub) -> None:
    """new -> received is allowed (version +1); a forbidden move is a 422 on status."""
    order_id = hub.seeded[20]
    moved = hub.erp.patch(f"/v1/location/orders/{order_id}", json={"status": "received"})
    assert moved.status_code == 200 and moved.json()["status"] == "received"
    assert moved.json()["version"] == 2
    refused = hub.erp.patch(f"/v1/location/orders/{order_id}", json={"status": "completed"})
    assert refused.status_code == 422
    error = refused.json()["errors"][0]
    assert error["field"] == "status" and "can only move to inProcess" in error["message"]
    unknown = hub.erp.patch(f"/v1/location/orders/{order_id}", json={"status": "accepted"})
    assert unknown.status_code == 422


def test_patch_of_an_unknown_field_is_a_422(hub: Hub) -> None:
    response = hub.erp.patch(f"/v1/location/orders/{hub.seeded[21]}", json={"total": "1.00 EUR"})
    assert response.status_code == 422 and response.json()["errors"][0]["field"] == "total"


# -- private refs -------------------------------------------------------------------------------


def test_private_refs_are_private_to_each_connection(hub: Hub) -> None:
    """Each connection sees only its own ref, can look orders up by it, and setting one does
    not change the order for anyone else (no version bump)."""
    order_id = hub.seeded[30]
    a = hub.erp.patch(f"/v1/location/orders/{order_id}", json={"private_ref": "A-30"})
    assert a.status_code == 200 and a.json()["private_ref"] == "A-30"
    assert a.json()["version"] == 1
    assert hub.other.get(f"/v1/location/orders/{order_id}").json()["private_ref"] is None
    b = hub.other.patch(f"/v1/location/orders/{order_id}", json={"private_ref": "B-30"})
    assert b.json()["private_ref"] == "B-30"
    assert hub.erp.get(f"/v1/location/orders/{order_id}").json()["private_ref"] == "A-30"
    found = hub.erp.get("/v1/location/orders", params={"private_ref": "A-30"}).json()
    assert [o["id"] for o in found] == [order_id]
    assert hub.other.get("/v1/location/orders", params={"private_ref": "A-30"}).json() == []


def test_a_private_ref_already_used_on_another_order_is_a_422(hub: Hub) -> None:
    hub.erp.patch(f"/v1/location/orders/{hub.seeded[31]}", json={"private_ref": "DUP"})
    response = hub.erp.patch(f"/v1/location/orders/{hub.seeded[32]}", json={"private_ref": "DUP"})
    assert response.status_code == 422
    assert response.json()["errors"][0]["field"] == "private_ref"


# -- callbacks ----------------------------------------------------------------------------------


def test_callback_events_list_other_connections_changes_only(hub: Hub) -> None:
    """Changes by others are listed oldest first with the order's new state; own changes are
    not; acknowledging an event removes it; an unknown event is a 404."""
    created = hub.watcher.post("/v1/callback", json={"events": {"order": ["create", "update"]}})
    assert created.status_code == 200 and created.json()["url"] is None
    assert hub.watcher.get("/v1/callback").json()["events"] == {"order": ["create", "update"]}
    assert hub.watcher.get("/v1/callback/events").json() == []
    order_id = hub.seeded[40]
    hub.erp.patch(f"/v1/location/orders/{order_id}", json={"status": "received"})
    hub.watcher.patch(f"/v1/location/orders/{hub.seeded[41]}", json={"status": "received"})
    new = hub.other.post("/v1/location/orders", json=hubrise_order("CB-1")).json()
    events = hub.watcher.get("/v1/callback/events").json()
    assert [(e["event_type"], e["order_id"]) for e in events] == [
        ("update", order_id),
        ("create", new["id"]),
    ]
    first = events[0]
    assert first["resource_type"] == "order" and first["version"] == 2
    assert first["new_state"]["status"] == "received" and first["location_id"] == "acme"
    assert hub.watcher.delete(f"/v1/callback/events/{first['id']}").status_code == 200
    assert [e["id"] for e in hub.watcher.get("/v1/callback/events").json()] == [events[1]["id"]]
    assert hub.watcher.delete(f"/v1/callback/events/{first['id']}").status_code == 404
    assert hub.watcher.delete("/v1/callback/events/999999999").status_code == 404


def test_callback_listing_stays_right_after_many_out_of_order_acks(hub: Hub) -> None:
    """Acks in random order leave exactly the unacknowledged events listed; the store then
    folds acknowledged runs into its watermark and drops their ack rows."""
    acker = hub.clients["acker"]
    assert acker.post("/v1/callback", json={"events": {"order": ["update"]}}).status_code == 200
    for order_id in hub.seeded[60:100]:
        hub.erp.patch(f"/v1/location/orders/{order_id}", json={"status": "cancelled"})
    events = acker.get("/v1/callback/events").json()
    assert len(events) == 40 and all(e["event_type"] == "update" for e in events)
    ids = [e["id"] for e in events]
    order = random.Random(7).sample(ids, len(ids))
    acked: set[str] = set()
    for n, event_id in enumerate(order[:30], start=1):
        assert acker.delete(f"/v1/callback/events/{event_id}").status_code == 200
        acked.add(event_id)
        if n % 10 == 0:
            listed = [e["id"] for e in acker.get("/v1/callback/events").json()]
            assert listed == [i for i in ids if i not in acked]

    async def settle() -> tuple[int, list[str]]:
        store = await Store.open(hub.db_url, migrate=False)
        queries = HubRiseStore(store)
        principal = await store.authenticate(hub.tokens["acker"])
        for event_id in order[30:]:
            await queries.acknowledge(principal, int(event_id))
        rows, left = await queries.ack_rows(principal), await queries.pending_events(principal)
        await store.close()
        return rows, [str(e.seq) for e in left]

    rows, left = asyncio.run(settle())
    assert left == [] and rows == 0
    assert acker.get("/v1/callback/events").json() == []


def test_a_callback_can_be_deleted_and_events_need_one(hub: Hub) -> None:
    """DELETE /callback removes it; without a callback, the events listing is a 404."""
    client = hub.other
    client.post("/v1/callback", json={"events": {"order": ["create"]}})
    assert client.delete("/v1/callback").status_code == 200
    assert client.get("/v1/callback").json() == {"url": None, "events": {}}
    assert client.get("/v1/callback/events").status_code == 404


@pytest.mark.parametrize(
    "body,field",
    [
        ({"events": {"order": ["delete"]}}, "events.order"),
        ({"events": {"catalog": ["update"]}}, "events.catalog"),
        ({"url": "ftp://example.com/cb", "events": {"order": ["create"]}}, "url"),
    ],
)
def test_bad_callback_bodies_are_a_422(hub: Hub, body: dict[str, Any], field: str) -> None:
    response = hub.other.post("/v1/callback", json=body)
    assert response.status_code == 422
    assert field in [e["field"] for e in response.json()["errors"]]


def test_the_simulators_writes_are_events_too(hub: Hub) -> None:
    """A change with no connection (the hub itself) is listed to every callback."""
    client = hub.clients["watcher"]
    client.post("/v1/callback", json={"events": {"order": ["create", "update"]}})
    for event in client.get("/v1/callback/events").json():
        client.delete(f"/v1/callback/events/{event['id']}")
    order_id = hub.seeded[120]

    async def warehouse_moves() -> None:
        store = await Store.open(hub.db_url, migrate=False)
        account = await store.ensure_account("acme")
        await store.transition_order(None, account, order_id, OrderStatus.AT_WAREHOUSE)
        await store.close()

    asyncio.run(warehouse_moves())
    events = client.get("/v1/callback/events").json()
    assert [(e["order_id"], e["new_state"]["status"]) for e in events] == [(order_id, "received")]
