"""The MasonHub dialect, black box: real uvicorn on 127.0.0.1, httpx, SQLite and PostgreSQL.

One hub per backend serves the whole module (starting uvicorn per test would triple the run
time); each test gets accounts of its own, so no test sees another's orders.
"""

from __future__ import annotations

import asyncio
import contextlib
import json
import time
import uuid
from collections.abc import Awaitable, Callable, Iterator
from dataclasses import dataclass
from typing import Any, TypeVar

import httpx
import pytest
from fastapi import FastAPI

from ordersync.domain import NewOrder, NewShipment, Order, OrderStatus, Shipment, ShipmentStatus
from ordersync.hub.app import create_app
from ordersync.hub.errors import install_error_handlers
from ordersync.hub.offsets import MAX_OFFSET
from ordersync.hub.settings import HubSettings
from ordersync.store.store import Store
from tests.support import fresh_pg_database, order_payload, serve_in_thread

MAX_BODY = 64_000
EPOCH = 1_704_067_200_000  # 2024-01-01T00:00:00Z
T = TypeVar("T")


@dataclass(frozen=True)
class Hub:
    base_url: str
    db_url: str


@dataclass(frozen=True)
class Tenant:
    """An account of its own on the shared hub, with a client that carries its token."""

    hub: Hub
    api: httpx.Client
    name: str
    other_token: str  # a second account's token, for isolation checks


def run_on_store(db_url: str, work: Callable[[Store], Awaitable[T]], *, migrate: bool = False) -> T:
    """Run `work` on the hub database through a store of our own, as a second process would."""

    async def main() -> T:
        store = await Store.open(db_url, migrate=migrate)
        try:
            return await work(store)
        finally:
            await store.close()

    return asyncio.run(main())


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    """A hub on real uvicorn; it opens (and migrates) its own store in its lifespan."""
    databases: contextlib.AbstractContextManager[str]
    if request.param == "sqlite":
        databases = contextlib.nullcontext(f"sqlite:///{tmp_path_factory.mktemp('hub')}/hub.db")
    else:
        admin = request.getfixturevalue("pg_admin_url")
        databases = fresh_pg_database(admin, template=request.getfixturevalue("pg_hub_template"))
    with databases as db_url:
        run_on_store(db_url, lambda s: s.ensure_account("bootstrap"), migrate=True)
        app = create_app(HubSettings(db_url=db_url, max_body_bytes=MAX_BODY))
        with serve_in_thread(app) as base_url:
            yield Hub(base_url, db_url)


@pytest.fixture
def tenant(hub: Hub) -> Iterator[Tenant]:
    name = f"acct-{uuid.uuid4().hex[:8]}"

    async def tokens(store: Store) -> tuple[str, str]:
        return await store.create_token(name, "erp"), await store.create_token(f"{name}-b", "erp")

    mine, other = run_on_store(hub.db_url, tokens)
    headers = {"Authorization": f"Bearer {mine}"}
    with httpx.Client(base_url=hub.base_url, headers=headers, timeout=10) as api:
        yield Tenant(hub, api, name, other)


def post_orders(tenant: Tenant, items: Any) -> httpx.Response:
    return tenant.api.post("/api/v1/orders", json=items)


def create_orders(tenant: Tenant, *identifiers: str) -> list[dict[str, Any]]:
    response = post_orders(tenant, [order_payload(i) for i in identifiers])
    assert response.status_code == 201, response.text
    return [item["order"] for item in response.json()["data"]]


def assert_error(response: httpx.Response, status: int, error_type: str | None = None) -> Any:
    """The one error shape: JSON with error_type and message, and the expected status."""
    assert response.status_code == status, response.text
    assert response.headers["content-type"].startswith("application/json")
    body = response.json()
    assert isinstance(body["error_type"], str) and isinstance(body["message"], str)
    if error_type is not None:
        assert body["error_type"] == error_type
    return body


def error_fields(body: dict[str, Any]) -> list[str]:
    return [error["field"] for error in body.get("errors", [])]


# -- authentication ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    "authorization",
    [None, "Bearer osk_not-a-real-token", "Basic dXNlcjpwYXNz", "osk_bare", "Bearer"],
    ids=["missing", "unknown", "basic", "no-scheme", "scheme-only"],
)
def test_a_missing_or_wrong_token_is_401_json(tenant: Tenant, authorization: str | None) -> None:
    """Every route answers 401 with error_type unauthorized unless a valid Bearer token is sent."""
    headers = {} if authorization is None else {"Authorization": authorization}
    order_id = str(uuid.uuid4())
    with httpx.Client(base_url=tenant.hub.base_url, headers=headers, timeout=10) as anonymous:
        for method, path in [
            ("GET", "/api/v1/orders"),
            ("GET", f"/api/v1/orders/{order_id}"),
            ("POST", "/api/v1/orders"),
            ("GET", "/api/v1/shipments"),
            ("GET", f"/api/v1/shipments/{order_id}"),
        ]:
            response = anonymous.request(method, path, json=[order_payload("X")])
            assert_error(response, 401, "unauthorized")
            assert response.headers["www-authenticate"] == "Bearer"


# -- query validation ----------------------------------------------------------------------------

MANY_IDS = "&".join(f"id={uuid.uuid4()}" for _ in range(31))


@pytest.mark.parametrize(
    "query,field",
    [
        ("limit=0", "limit"),
        ("limit=101", "limit"),
        ("limit=ten", "limit"),
        ("offset=-1", "offset"),
        (MANY_IDS, "id"),
        ("id=not-a-uuid", "id"),
        ("status=lost", "status"),
        ("status=open&status=lost", "status"),
        ("list_type=full", "list_type"),
        ("sdt=yesterday", "sdt"),
        ("updated_since=2024-01-01", "updated_since"),
        ("updated_since=2024-01-01T10:30:00", "updated_since"),
        ("updated_since=2024-13-01T10:30:00Z", "updated_since"),
        ("sdt=0001-01-01T00:00:00%2B01:00", "sdt"),
    ],
)
@pytest.mark.parametrize("resource", ["orders", "shipments"])
def test_a_bad_query_parameter_is_400_naming_the_field(
    tenant: Tenant, resource: str, query: str, field: str
) -> None:
    """Out-of-range or malformed listing parameters are refused with 400 and the field's name."""
    if resource == "shipments" and field == "status":
        query = query.replace("open", "shipped")
    body = assert_error(tenant.api.get(f"/api/v1/{resource}?{query}"), 400)
    assert any(f == field or f.startswith(f"{field}.") for f in error_fields(body)), body


def test_limits_at_the_edges_are_accepted(tenant: Tenant) -> None:
    """limit 1 and 100, offset 0 up to MAX_OFFSET and 30 ids are all valid."""
    ids = "&".join(f"id={uuid.uuid4()}" for _ in range(30))
    for query in ("limit=1", "limit=100&offset=0", ids, f"offset={MAX_OFFSET}"):
        response = tenant.api.get(f"/api/v1/orders?{query}")
        assert response.status_code == 200, response.text
        assert response.json()["data"] == []


def test_an_order_id_that_is_not_a_uuid_is_refused(tenant: Tenant) -> None:
    """GET /orders/{id} with a malformed id is a client error naming order_id, never a 500."""
    body = assert_error(tenant.api.get("/api/v1/orders/12345"), 400)
    assert error_fields(body) == ["order_id"]


# -- creating orders -----------------------------------------------------------------------------


def test_a_body_that_is_not_json_is_400(tenant: Tenant) -> None:
    """A POST body that does not parse as JSON is refused with 400 bad_request."""
    response = tenant.api.post(
        "/api/v1/orders", content=b"{not json", headers={"Content-Type": "application/json"}
    )
    assert_error(response, 400, "bad_request")


@pytest.mark.parametrize("body", [{"customer_identifier": "A"}, "orders", 42, []])
def test_a_body_that_is_not_a_non_empty_array_is_422(tenant: Tenant, body: Any) -> None:
    """The batch must be a JSON array of 1..100 orders; anything else is 422 on field body."""
    response = post_orders(tenant, body)
    assert error_fields(assert_error(response, 422, "unprocessable_entity")) == ["body"]


def test_an_order_without_billing_address_is_refused_and_not_stored(tenant: Tenant) -> None:
    """A missing billing_address refuses that order, naming the field, and stores nothing."""
    payload = order_payload("NO-BILL")
    del payload["billing_address"]
    body = assert_error(post_orders(tenant, [payload]), 422, "unprocessable_entity")
    [item] = body["data"]
    assert (item["status"], item["customer_identifier"]) == ("refused", "NO-BILL")
    assert [e["field"] for e in item["errors"]] == ["billing_address"]
    assert error_fields(body) == ["[0].billing_address"]
    listing = tenant.api.get("/api/v1/orders").json()
    assert (listing["data"], listing["total"]) == ([], 0)


def test_a_batch_is_201_207_or_422_by_how_many_items_were_created(tenant: Tenant) -> None:
    """All created -> 201; some refused (duplicate identifier) -> 207; none created -> 422."""
    created = post_orders(tenant, [order_payload("A"), order_payload("B")])
    assert created.status_code == 201
    assert [i["status"] for i in created.json()["data"]] == ["created", "created"]
    mixed = post_orders(tenant, [order_payload("C"), order_payload("A"), {"junk": 1}])
    assert mixed.status_code == 207
    statuses = [(i["status"], i["customer_identifier"]) for i in mixed.json()["data"]]
    assert statuses == [("created", "C"), ("refused", "A"), ("refused", None)]
    assert mixed.json()["data"][1]["errors"][0]["field"] == "customer_identifier"
    none = post_orders(tenant, [order_payload("B")])
    assert_error(none, 422, "unprocessable_entity")
    assert tenant.api.get("/api/v1/orders").json()["total"] == 3


def test_a_body_over_the_limit_is_413(tenant: Tenant) -> None:
    """A body larger than max_body_bytes is refused with 413 JSON, declared or chunked."""
    big = json.dumps([order_payload(f"BIG-{i}") for i in range(150)]).encode()
    assert len(big) > MAX_BODY
    declared = tenant.api.post(
        "/api/v1/orders", content=big, headers={"Content-Type": "application/json"}
    )
    assert_error(declared, 413, "payload_too_large")
    chunked = tenant.api.post(
        "/api/v1/orders",
        content=iter([big[:40_000], big[40_000:]]),
        headers={"Content-Type": "application/json"},
    )
    assert_error(chunked, 413, "payload_too_large")
    assert tenant.api.get("/api/v1/orders").json()["total"] == 0


# -- reading -------------------------------------------------------------------------------------


def test_another_accounts_order_is_404(tenant: Tenant) -> None:
    """An order of another account is indistinguishable from one that does not exist."""
    [order] = create_orders(tenant, "MINE")
    assert tenant.api.get(f"/api/v1/orders/{order['id']}").status_code == 200
    with httpx.Client(
        base_url=tenant.hub.base_url,
        timeout=10,
        headers={"Authorization": f"Bearer {tenant.other_token}"},
    ) as other:
        assert_error(other.get(f"/api/v1/orders/{order['id']}"), 404, "not_found")
        listing = other.get("/api/v1/orders", params={"id": order["id"]}).json()
        assert (listing["data"], listing["total"]) == ([], 0)
    assert_error(tenant.api.get(f"/api/v1/orders/{uuid.uuid4()}"), 404, "not_found")


@pytest.mark.parametrize(
    "method,path", [("GET", "/api/v1/nothing"), ("GET", "/nowhere"), ("POST", "/api/v2/orders")]
)
def test_an_unknown_route_is_404_json(tenant: Tenant, method: str, path: str) -> None:
    """A path the hub does not serve is 404 with a JSON error body."""
    assert_error(tenant.api.request(method, path), 404)


def test_a_method_the_route_does_not_take_is_405_json(tenant: Tenant) -> None:
    """DELETE on the orders collection is 405 with a JSON error body, not an HTML page."""
    assert_error(tenant.api.delete("/api/v1/orders"), 405, "method_not_allowed")


SUMMARY_FIELDS = {"id", "customer_identifier", "status", "version", "updated_at"}
DETAIL_FIELDS = {
    "id",
    "customer_identifier",
    "order_type",
    "priority",
    "shipping_provider",
    "shipper_service_level",
    "shipping_address",
    "billing_address",
    "submitted_at",
    "line_items",
    "pick_from",
    "order_policy",
    "value_added_services",
    "status",
    "version",
    "created_at",
    "updated_at",
}


def test_a_summary_listing_carries_identity_status_version_and_time(tenant: Tenant) -> None:
    """list_type=summary returns id, customer_identifier, status, version and updated_at."""
    [order] = create_orders(tenant, "S-1")
    body = tenant.api.get("/api/v1/orders", params={"list_type": "summary"}).json()
    [item] = body["data"]
    assert set(item) >= SUMMARY_FIELDS
    assert "line_items" not in item
    assert (item["id"], item["customer_identifier"], item["status"], item["version"]) == (
        order["id"],
        "S-1",
        "open",
        1,
    )
    assert item["updated_at"] == order["updated_at"]
    assert (body["total"], body["offset"], body["limit"]) == (1, 0, 30)


def test_a_detail_listing_carries_every_field_with_exact_decimals(tenant: Tenant) -> None:
    """Detail orders carry addresses, lines (decimals as exact strings), policies and times."""
    payload = order_payload(
        "D-1",
        pick_from=[{"attribute": "lot_number", "value": "L-7", "match": "soft"}],
        order_policy="single_shipment",
        value_added_services=[{"service": "gift_message", "details": {"text": "Hi"}}],
    )
    assert post_orders(tenant, [payload]).status_code == 201
    [listed] = tenant.api.get("/api/v1/orders").json()["data"]
    single = tenant.api.get(f"/api/v1/orders/{listed['id']}").json()
    for order in (listed, single):
        assert set(order) >= DETAIL_FIELDS
        assert order["shipping_address"]["postal_code"] == "EC1A 1BB"
        assert order["billing_address"]["country"] == "GB"
        lines = order["line_items"]
        exact = [(li["line_number"], li["quantity"], li["unit_price"]) for li in lines]
        assert exact == [(1, "2", "9.99"), (2, "1", "0.10")]
        assert order["pick_from"] == payload["pick_from"]
        assert order["order_policy"] == "single_shipment"
        assert order["value_added_services"] == payload["value_added_services"]
        assert (order["status"], order["version"]) == ("open", 1)
        assert order["submitted_at"] == "2024-01-01T10:30:00.000Z"
        assert order["created_at"] == order["updated_at"]
        assert order["updated_at"].endswith("Z")


def test_decimals_sent_as_json_numbers_come_back_exact(tenant: Tenant) -> None:
    """0.1 and 1.000000001 sent as JSON numbers are stored and served without float drift."""
    payload = order_payload(
        "NUM",
        line_items=[
            {"sku_customer_identifier": "SKU-1", "quantity": "__Q__", "unit_price": "__P__"}
        ],
    )
    raw = json.dumps([payload]).replace('"__Q__"', "1.000000001").replace('"__P__"', "0.1")
    response = tenant.api.post(
        "/api/v1/orders", content=raw, headers={"Content-Type": "application/json"}
    )
    assert response.status_code == 201, response.text
    order_id = response.json()["data"][0]["id"]
    [line] = tenant.api.get(f"/api/v1/orders/{order_id}").json()["line_items"]
    assert (line["quantity"], line["unit_price"]) == ("1.000000001", "0.1")


# -- polling -------------------------------------------------------------------------------------


def seed_orders_with_ties(tenant: Tenant, group_sizes: list[int]) -> list[Order]:
    """Orders stamped by a hand-moved clock: group k holds group_sizes[k] orders of one stamp."""

    async def work(store: Store) -> list[Order]:
        principal = await store.authenticate(await store.create_token(tenant.name, "seeder"))
        made: list[Order] = []
        for k, size in enumerate(group_sizes):
            store.clock = lambda k=k: EPOCH + k * 1_000  # type: ignore[misc]
            batch = [NewOrder.model_validate(order_payload(f"T-{k}-{j}")) for j in range(size)]
            made += [r.order for r in await store.create_orders(principal, batch) if r.order]
        return made

    return run_on_store(tenant.hub.db_url, work)


def walk(tenant: Tenant, path: str, since: str, limit: int) -> tuple[list[dict[str, Any]], int]:
    """Poll every record from `since` with re-anchoring: each page restarts at the last
    updated_at seen, skipping (by offset) only the records of that exact instant already read."""
    seen: list[dict[str, Any]] = []
    offset, requests = 0, 0
    while True:
        params = {"updated_since": since, "offset": offset, "limit": limit}
        body = tenant.api.get(path, params=params).json()
        requests += 1
        page = body["data"]
        assert body["total"] == offset + len(page) or len(page) == limit
        seen += page
        if len(page) < limit:
            return seen, requests
        last = page[-1]["updated_at"]
        at_last = sum(1 for item in page if item["updated_at"] == last)
        # A whole page of one instant means the anchor did not move: keep counting into it.
        offset = offset + at_last if last == since else at_last
        since = last


@pytest.mark.parametrize("limit", [1, 5, 100])
def test_walking_with_updated_since_and_reanchoring_returns_each_order_once(
    tenant: Tenant, limit: int
) -> None:
    """Ties of one updated_at across page boundaries are neither lost nor repeated."""
    made = seed_orders_with_ties(tenant, [1, 4, 2, 7, 1, 3, 6, 1])
    seen, requests = walk(tenant, "/api/v1/orders", "2024-01-01T00:00:00Z", limit)
    ids = [item["id"] for item in seen]
    assert sorted(ids) == sorted(o.id for o in made)
    assert len(ids) == len(set(ids))
    assert [(i["updated_at"], i["id"]) for i in seen] == sorted(
        (i["updated_at"], i["id"]) for i in seen
    )
    assert requests <= len(made) // limit + 2


def test_updated_since_is_inclusive_and_sdt_is_the_same_filter(tenant: Tenant) -> None:
    """updated_since=T includes records stamped exactly T; sdt=T answers the same page."""
    seed_orders_with_ties(tenant, [2, 3, 1])
    since = "2024-01-01T00:00:01Z"
    by_updated_since = tenant.api.get("/api/v1/orders", params={"updated_since": since}).json()
    by_sdt = tenant.api.get("/api/v1/orders", params={"sdt": since}).json()
    assert by_sdt == by_updated_since
    assert by_sdt["total"] == 4
    stamps = [o["updated_at"] for o in by_sdt["data"]]
    assert stamps == ["2024-01-01T00:00:01.000Z"] * 3 + ["2024-01-01T00:00:02.000Z"]
    offset_form = tenant.api.get(
        "/api/v1/orders", params={"sdt": "2024-01-01T01:00:01+01:00"}
    ).json()
    assert offset_form == by_sdt


def test_status_and_id_filters_narrow_the_listing_and_its_total(tenant: Tenant) -> None:
    """status (repeatable) and id (repeatable) filter the data and the total alike."""
    orders = create_orders(tenant, "F-1", "F-2", "F-3")

    async def cancel(store: Store) -> None:
        await store.transition_order(
            None, await account_id(store, tenant), orders[1]["id"], OrderStatus.CANCELED
        )

    run_on_store(tenant.hub.db_url, cancel)
    canceled = tenant.api.get("/api/v1/orders", params={"status": "canceled"}).json()
    assert ([o["id"] for o in canceled["data"]], canceled["total"]) == ([orders[1]["id"]], 1)
    both = tenant.api.get("/api/v1/orders", params={"status": ["open", "canceled"]}).json()
    assert both["total"] == 3
    picked = tenant.api.get(
        "/api/v1/orders", params={"id": [orders[0]["id"], orders[2]["id"]], "list_type": "summary"}
    ).json()
    assert {o["id"] for o in picked["data"]} == {orders[0]["id"], orders[2]["id"]}
    assert picked["total"] == 2


async def account_id(store: Store, tenant: Tenant) -> int:
    return await store.ensure_account(tenant.name)


# -- shipments -----------------------------------------------------------------------------------


def ship(tenant: Tenant, order: dict[str, Any], *, deliver: bool = False) -> Shipment:
    async def work(store: Store) -> Shipment:
        acct = await account_id(store, tenant)
        shipment = await store.create_shipment(
            None,
            acct,
            NewShipment.model_validate(
                {
                    "order_id": order["id"],
                    "carrier": "UPS",
                    "service_level": "ground",
                    "tracking_number": f"1Z{order['customer_identifier']}",
                    "lines": [
                        {"line_number": 1, "sku_customer_identifier": "SKU-1", "quantity": "2"}
                    ],
                }
            ),
        )
        if deliver:
            shipment = await store.transition_shipment(
                None, acct, shipment.id, ShipmentStatus.IN_TRANSIT
            )
        return shipment

    return run_on_store(tenant.hub.db_url, work)


def test_shipments_are_listed_polled_and_read_like_orders(tenant: Tenant) -> None:
    """GET /shipments polls like /orders; /shipments/{id} reads one; other accounts get 404."""
    orders = create_orders(tenant, "SH-1", "SH-2")
    first, second = ship(tenant, orders[0]), ship(tenant, orders[1], deliver=True)
    listing = tenant.api.get(
        "/api/v1/shipments", params={"updated_since": "2024-01-01T00:00:00Z"}
    ).json()
    assert [s["id"] for s in listing["data"]] == [first.id, second.id]
    assert listing["total"] == 2
    assert listing["data"][1]["version"] == 2
    moving = tenant.api.get(
        "/api/v1/shipments", params={"status": "in_transit", "list_type": "summary"}
    ).json()
    [summary] = moving["data"]
    assert (summary["id"], summary["order_id"], summary["status"]) == (
        second.id,
        orders[1]["id"],
        "in_transit",
    )
    one = tenant.api.get(f"/api/v1/shipments/{first.id}").json()
    assert (one["tracking_number"], one["lines"][0]["quantity"]) == ("1ZSH-1", "2")
    with httpx.Client(
        base_url=tenant.hub.base_url,
        timeout=10,
        headers={"Authorization": f"Bearer {tenant.other_token}"},
    ) as other:
        assert_error(other.get(f"/api/v1/shipments/{first.id}"), 404, "not_found")
        assert other.get("/api/v1/shipments").json()["total"] == 0


# -- the contract as a whole ---------------------------------------------------------------------


def test_openapi_lists_the_masonhub_routes(tenant: Tenant) -> None:
    """/openapi.json documents every MasonHub route and its polling parameters."""
    spec = httpx.get(f"{tenant.hub.base_url}/openapi.json", timeout=10).json()
    paths = spec["paths"]
    assert {"get", "post"} <= set(paths["/api/v1/orders"])
    for path in (
        "/api/v1/orders/{order_id}",
        "/api/v1/shipments",
        "/api/v1/shipments/{shipment_id}",
    ):
        assert "get" in paths[path]
    names = {p["name"] for p in paths["/api/v1/orders"]["get"]["parameters"]}
    assert {"id", "offset", "limit", "list_type", "sdt", "updated_since", "status"} <= names


GARBAGE_QUERIES = [
    "offset=99999999999999999999999",
    "offset=9223372036854775808",
    "limit=1e2",
    "limit=%00",
    "sdt=%00",
    "sdt=9999-12-31T23:59:59-23:59",
    "sdt=0000-01-01T00:00:00Z",
    "updated_since=2024-01-01T10:30:00%2B99:00",
    "sdt=" + "9" * 5000,
    "id=&id=",
    "status=",
    "list_type=",
    "offset=",
    "id=" + "%ff" * 20,
    "sdt=2024-02-30T00:00:00Z",
    "sdt=2024-01-01T10:30:00.123456789Z",
    "updated_since=-1",
    "limit=-0",
    "a[b]=c&&&=",
]
GARBAGE_BODIES = [
    b"",
    b"null",
    b"[null]",
    b"[[]]",
    b"[1, 2]",
    b'[{"customer_identifier": {"x": 1}}]',
    b"[" * 5000 + b"]" * 5000,
    b'[{"line_items": "NaN"}]',
    b"\xff\xfe",
    b"[1e999999]",
    b'["\\ud800"]',
    b"[" + b"1" * 5000 + b"]",
    b"[NaN, Infinity]",
]


def garbage_orders() -> list[Any]:
    """Orders that pass JSON parsing but carry values a database or a clock may choke on."""
    nul = order_payload("NUL\u0000ID")
    far = order_payload("FAR", submitted_at="0001-01-01T00:00:00+01:00")
    late = order_payload("LATE", submitted_at="9999-12-31T23:59:59-01:00")
    huge = order_payload("HUGE", priority=10**30)
    lines = order_payload(
        "LINES",
        line_items=[{"sku_customer_identifier": "S", "quantity": "1e-50", "unit_price": "-0"}],
    )
    return [[nul], [far], [late], [huge], [lines], [order_payload("x" * 101)]]


def test_no_garbage_input_is_ever_a_500(tenant: Tenant) -> None:
    """Odd query strings and bodies get a 2xx or 4xx JSON answer, never a 500."""
    responses = [tenant.api.get(f"/api/v1/orders?{q}") for q in GARBAGE_QUERIES]
    responses += [tenant.api.get(f"/api/v1/shipments?{q}") for q in GARBAGE_QUERIES]
    responses += [
        tenant.api.post(
            "/api/v1/orders", content=body, headers={"Content-Type": "application/json"}
        )
        for body in GARBAGE_BODIES
    ]
    responses += [post_orders(tenant, items) for items in garbage_orders()]
    for response in responses:
        assert response.status_code < 500, (response.request.url, response.text[:300])
        if response.status_code >= 400:
            assert_error(response, response.status_code)
    # No half-accepted garbage: nothing with a NUL or a far-off timestamp was stored.
    identifiers = {
        o["customer_identifier"]
        for o in tenant.api.get("/api/v1/orders", params={"limit": 100}).json()["data"]
    }
    assert "NUL\u0000ID" not in identifiers


def test_an_unexpected_error_is_a_prompt_json_500_with_a_reference() -> None:
    """If a bug slips through, the client still gets a JSON 500 quoting a log reference, fast."""
    app = FastAPI()
    install_error_handlers(app)

    @app.post("/boom")
    async def boom() -> None:
        raise RecursionError("a bug deep down")

    with serve_in_thread(app) as base_url:
        started = time.monotonic()
        response = httpx.post(f"{base_url}/boom", json=[[[]]] * 5_000, timeout=10)
        elapsed = time.monotonic() - started
    body = assert_error(response, 500, "internal_error")
    assert "reference" in body["message"]
    # Rendering the traceback with its locals (structlog's default) took seconds here.
    assert elapsed < 2, elapsed
