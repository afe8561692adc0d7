"""Inventory on the wire, black box (real uvicorn, SQLite and PostgreSQL): MasonHub
`sku_snapshots` and stock receipts, HubRise location inventory with PUT/PATCH, 422s naming the
field, and orders refused for an unknown SKU once the account has a catalogue."""

from __future__ import annotations

import contextlib
import uuid
from collections.abc import Iterator
from typing import Any

import httpx
import pytest

from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.store.store import Store
from tests.integration.test_api_masonhub import Hub, run_on_store
from tests.support import fresh_pg_database, order_payload, serve_in_thread


@pytest.fixture(scope="module", params=["sqlite", "postgresql"])
def hub(request: pytest.FixtureRequest, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Hub]:
    databases: contextlib.AbstractContextManager[str]
    if request.param == "sqlite":
        databases = contextlib.nullcontext(f"sqlite:///{tmp_path_factory.mktemp('hub')}/hub.db")
    else:
        admin = request.getfixturevalue("pg_admin_url")
        databases = fresh_pg_database(admin, template=request.getfixturevalue("pg_hub_template"))
    with databases as db_url:
        run_on_store(db_url, lambda s: s.ensure_account("bootstrap"), migrate=True)
        with serve_in_thread(create_app(HubSettings(db_url=db_url))) as base_url:
            yield Hub(base_url, db_url)


@pytest.fixture
def account(hub: Hub) -> Iterator[tuple[str, httpx.Client, httpx.Client]]:
    """A fresh account: its name, a MasonHub client and a HubRise client."""
    name = f"acct-{uuid.uuid4().hex[:8]}"

    async def token(store: Store) -> str:
        return await store.create_token(name, "erp")

    secret = run_on_store(hub.db_url, token)
    with (
        httpx.Client(
            base_url=hub.base_url, headers={"Authorization": f"Bearer {secret}"}, timeout=10
        ) as masonhub,
        httpx.Client(
            base_url=hub.base_url, headers={"X-Access-Token": secret}, timeout=10
        ) as hubrise,
    ):
        yield name, masonhub, hubrise


def receive(api: httpx.Client, *receipts: dict[str, Any]) -> httpx.Response:
    return api.post("/api/v1/stock_receipts", json=list(receipts))


def counts(snapshot: dict[str, Any]) -> dict[tuple[str, str], int]:
    return {
        (c["inventory_location_id"], c["inventory_status"]): c["quantity"]
        for c in snapshot["status_counts"]
    }


def test_received_stock_is_listed_as_absolute_sku_snapshots(account: Any) -> None:
    """Receipts add up per location and status; sku_snapshots show absolute counts, totals,
    the version and event id, filtered by cid and by updated_since."""
    _, api, _ = account
    first = receive(
        api,
        {"sku": "A", "location": "EAST", "quantity": 5, "lot_number": "L1"},
        {"sku": "A", "location": "EAST", "quantity": 2, "inventory_status": "damaged"},
        {"sku": "B", "location": "WEST", "quantity": 1},
    )
    assert first.status_code == 200, first.text
    assert receive(api, {"sku": "A", "location": "WEST", "quantity": 3}).status_code == 200
    page = api.get("/api/v1/sku_snapshots", params={"cid": "A"}).json()
    (a,) = page["data"]
    assert (page["total"], a["customer_identifier"], a["version"]) == (1, "A", 2)
    assert (a["total_available_to_sell"], a["total_units"]) == (8, 10)
    assert counts(a)[("EAST", "available")] == 5
    assert counts(a)[("EAST", "damaged")] == 2
    assert counts(a)[("WEST", "available")] == 3
    assert isinstance(a["event_id"], int)
    everything = api.get("/api/v1/sku_snapshots").json()
    assert [s["customer_identifier"] for s in everything["data"]] == ["B", "A"]  # by updated_at
    later = api.get("/api/v1/sku_snapshots", params={"updated_since": a["updated_at"]}).json()
    assert [s["customer_identifier"] for s in later["data"]] == ["A"]
    one = api.get(f"/api/v1/sku_snapshots/{a['sku_id']}").json()
    assert counts(one) == counts(a)


@pytest.mark.parametrize(
    ("receipt", "field"),
    [
        ({"sku": "A", "location": "EAST", "quantity": 0}, "[0].quantity"),
        ({"sku": "A", "location": "EAST", "quantity": "2"}, "[0].quantity"),
        ({"sku": "", "location": "EAST", "quantity": 1}, "[0].sku"),
        ({"sku": "A", "location": "E" * 101, "quantity": 1}, "[0].location"),
        (
            {"sku": "A", "location": "E", "quantity": 1, "expiration_date": "soon"},
            "[0].expiration_date",
        ),
        (
            {"sku": "A", "location": "E", "quantity": 1, "inventory_status": "lost"},
            "[0].inventory_status",
        ),
        ({"sku": "A", "location": "E", "quantity": 1, "colour": "red"}, "[0].colour"),
    ],
)
def test_a_bad_receipt_is_a_422_naming_the_field(account: Any, receipt: Any, field: str) -> None:
    """Each malformed receipt is refused with 422 and the field's path; nothing is stored."""
    _, api, _ = account
    response = receive(api, receipt)
    assert response.status_code == 422, response.text
    assert field in [e["field"] for e in response.json()["errors"]]
    assert api.get("/api/v1/sku_snapshots").json()["total"] == 0


def test_sku_snapshot_query_errors_are_400_naming_the_parameter(account: Any) -> None:
    """A bad updated_since, or after_id without it, is a 400 naming the parameter."""
    _, api, _ = account
    bad = api.get("/api/v1/sku_snapshots", params={"updated_since": "yesterday"})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "updated_since"
    alone = api.get("/api/v1/sku_snapshots", params={"after_id": str(uuid.uuid4())})
    assert alone.status_code == 400 and alone.json()["errors"][0]["field"] == "after_id"


def test_hubrise_put_overwrites_and_patch_changes_a_location(account: Any) -> None:
    """PUT sets the location's listed SKUs and zeroes the others there; PATCH changes only
    what it lists; `stock` is a decimal string; other locations are untouched."""
    name, masonhub, hubrise = account
    receive(masonhub, {"sku": "C", "location": "EAST", "quantity": 4})
    receive(masonhub, {"sku": "C", "location": "WEST", "quantity": 9})
    path = f"/v1/catalogs/{name}/locations/EAST/inventory"
    put = hubrise.put(
        path, json=[{"sku_ref": "A", "stock": "12"}, {"sku_ref": "B", "stock": "3.000"}]
    )
    assert put.status_code == 200, put.text
    assert {e["sku_ref"]: e["stock"] for e in put.json()} == {"A": "12", "B": "3", "C": "0"}
    patched = hubrise.patch(path, json=[{"sku_ref": "B", "stock": "1"}])
    assert {e["sku_ref"]: e["stock"] for e in patched.json()} == {"A": "12", "B": "1", "C": "0"}
    assert hubrise.get(path).json() == patched.json()
    west = hubrise.get(f"/v1/catalogs/{name}/locations/WEST/inventory").json()
    assert [(e["sku_ref"], e["stock"]) for e in west] == [("C", "9")]
    snapshots = masonhub.get("/api/v1/sku_snapshots", params={"cid": "C"}).json()["data"]
    assert counts(snapshots[0])[("WEST", "available")] == 9


@pytest.mark.parametrize(
    ("body", "field"),
    [
        ([{"sku_ref": "A", "stock": "1.5"}], "[0].stock"),
        ([{"sku_ref": "A", "stock": "-1"}], "[0].stock"),
        ([{"sku_ref": "A", "stock": "abc"}], "[0].stock"),
        ([{"sku_ref": "A", "stock": True}], "[0].stock"),
        ([{"sku_ref": "A"}], "[0].stock"),
        ([{"sku_ref": "A", "stock": "1", "expires_at": "2030-01-01T00:00:00Z"}], "[0].expires_at"),
        ([{"sku_ref": "A", "stock": "1"}, {"sku_ref": "A", "stock": "2"}], "[1].sku_ref"),
        ({"sku_ref": "A", "stock": "1"}, "base"),
    ],
)
def test_a_bad_hubrise_inventory_write_is_a_422_naming_the_field(
    account: Any, body: Any, field: str
) -> None:
    """HubRise's 422 shape ("Validation failed", errors by field); nothing is stored."""
    name, _, hubrise = account
    response = hubrise.put(f"/v1/catalogs/{name}/locations/EAST/inventory", json=body)
    assert response.status_code == 422, response.text
    assert response.json()["message"] == "Validation failed"
    assert field in [e["field"] for e in response.json()["errors"]]
    assert hubrise.get(f"/v1/catalogs/{name}/locations/EAST/inventory").json() == []


def test_another_accounts_catalog_is_404(account: Any) -> None:
    """The catalog id is the account's name; any other is not found."""
    _, _, hubrise = account
    assert hubrise.get("/v1/catalogs/bootstrap/locations/EAST/inventory").status_code == 404


def test_unknown_skus_are_refused_only_once_there_is_a_catalogue(account: Any) -> None:
    """Before any SKU is registered, orders take any SKU; after, an unknown one is refused
    naming the line's field, and a known one is accepted."""
    _, api, _ = account
    assert api.post("/api/v1/orders", json=[order_payload("before")]).status_code == 201
    skus = [line["sku_customer_identifier"] for line in order_payload("x")["line_items"]]
    receive(api, {"sku": skus[0], "location": "EAST", "quantity": 1})
    refused = api.post("/api/v1/orders", json=[order_payload("after")])
    assert refused.status_code == 422, refused.text
    fields = [e["field"] for e in refused.json()["data"][0]["errors"]]
    assert fields == [f"line_items.{i}.sku_customer_identifier" for i in range(1, len(skus))]
    for sku in skus[1:]:
        receive(api, {"sku": sku, "location": "EAST", "quantity": 1})
    assert api.post("/api/v1/orders", json=[order_payload("known")]).status_code == 201


def test_hubrise_catalogue_listing_pages_changes_by_updated_at(account: Any) -> None:
    """/v1/location/inventory (extension): one entry per SKU with stock per location, oldest
    change first; updated_since + after_id continue after an entry; bad parameters are 400s
    naming them."""
    _, masonhub, hubrise = account
    receive(masonhub, {"sku": "A", "location": "EAST", "quantity": 2})
    receive(masonhub, {"sku": "B", "location": "WEST", "quantity": 5})
    receive(masonhub, {"sku": "A", "location": "WEST", "quantity": 1})
    listed = hubrise.get("/v1/location/inventory")
    assert listed.headers["X-Ordersync-Keyset"] == "after_id"
    entries = listed.json()
    assert [(e["sku_ref"], e["stock"], e["version"]) for e in entries] == [
        ("B", "5", 1),
        ("A", "3", 2),
    ]
    assert entries[1]["locations"] == [
        {"location_id": "EAST", "stock": "2"},
        {"location_id": "WEST", "stock": "1"},
    ]
    first = entries[0]
    after = hubrise.get(
        "/v1/location/inventory",
        params={"updated_since": first["updated_at"], "after_id": first["sku_id"]},
    ).json()
    assert [e["sku_ref"] for e in after] == ["A"]
    bad = hubrise.get("/v1/location/inventory", params={"updated_since": "soon"})
    assert bad.status_code == 400 and bad.json()["errors"][0]["field"] == "updated_since"


def test_hubrise_order_with_an_unknown_sku_names_its_item(account: Any) -> None:
    """HubRise's create names the item's own field (items.0.sku_ref) for an unknown SKU."""
    from ordersync.hub.openapi_shapes import HUBRISE_ORDER_EXAMPLE

    _, masonhub, hubrise = account
    receive(masonhub, {"sku": "SOMETHING-ELSE", "location": "EAST", "quantity": 1})
    refused = hubrise.post("/v1/location/orders", json=HUBRISE_ORDER_EXAMPLE)
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["items.0.sku_ref"]


def test_a_retried_receipt_with_its_idempotency_key_is_received_once(account: Any) -> None:
    """Receipts add up, so the same request again under its Idempotency-Key is answered with
    the first answer (Idempotent-Replayed) and the stock counts it once."""
    _, api, _ = account
    body = [{"sku": "A", "location": "EAST", "quantity": 4}]
    headers = {"Idempotency-Key": "receipt-1"}
    first = api.post("/api/v1/stock_receipts", json=body, headers=headers)
    again = api.post("/api/v1/stock_receipts", json=body, headers=headers)
    assert first.status_code == again.status_code == 200
    assert again.headers.get("Idempotent-Replayed") == "true"
    assert again.content == first.content
    (snapshot,) = api.get("/api/v1/sku_snapshots").json()["data"]
    assert snapshot["total_available_to_sell"] == 4


def test_receipts_past_a_count_column_are_a_422_not_a_500(account: Any) -> None:
    """Three receipts of 10^9 units would pass 2^31 - 1: the third is refused naming it."""
    _, api, _ = account
    receipt = {"sku": "A", "location": "EAST", "quantity": 1_000_000_000}
    assert receive(api, receipt).status_code == 200
    assert receive(api, receipt).status_code == 200
    refused = receive(api, receipt)
    assert refused.status_code == 422, refused.text
    assert [e["field"] for e in refused.json()["errors"]] == ["[0].available"]
