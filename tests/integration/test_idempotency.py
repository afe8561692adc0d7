"""Idempotency-Key on the hub's writing routes, every dialect, SQLite and PostgreSQL.

Before keys, the same create sent twice (a client retrying after a lost answer) answered 201
and then 422 "already exists": the client could not tell whether its order was saved.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest
from sqlalchemy import func, select

from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.store.idempotency import HOUR_MS
from ordersync.store.store import ListQuery, Store
from ordersync.store.tables import idempotency_keys
from tests.integration.test_api_hubrise import hubrise_order
from tests.support import fresh_pg_database, order_payload

KEY = "Idempotency-Key"
REPLAYED = "Idempotent-Replayed"
START = 1_800_000_000_000


class Hub:
    """One app over `store`, a client per dialect for two connections of one account."""

    def __init__(self, store: Store, tokens: dict[str, str]) -> None:
        self.store = store
        self.app = create_app(HubSettings(db_url=store.url.given), store)
        self.tokens = tokens

    def client(self, dialect: str, connection: str = "erp") -> httpx.AsyncClient:
        token = self.tokens[connection]
        headers = (
            {"X-Access-Token": token}
            if dialect == "hubrise"
            else {"Authorization": f"Bearer {token}"}
        )
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
            base_url="http://hub",
            headers=headers,
        )

    async def order_count(self) -> int:
        principal = await self.store.authenticate(self.tokens["erp"])
        return (await self.store.list_orders(principal.account_id, ListQuery())).total

    async def key_count(self) -> int:
        async with self.store.reader.connect() as conn:
            return int(await conn.scalar(select(func.count()).select_from(idempotency_keys)) or 0)


async def _hub(store: Store) -> Hub:
    tokens = {name: await store.create_token("acme", name) for name in ("erp", "other")}
    return Hub(store, tokens)


@pytest.fixture
async def hub(store: Store) -> Hub:
    return await _hub(store)


def _reused(answer: httpx.Response) -> None:
    assert answer.status_code == 422, answer.text
    body = answer.json()
    assert body["error_type"] == "idempotency_key_reused"
    assert [e["field"] for e in body["errors"]] == [KEY]


# -- MasonHub ------------------------------------------------------------------------------------


async def test_masonhub_batch_create_is_replayed_and_a_reused_key_refused(hub: Hub) -> None:
    async with hub.client("masonhub") as http:
        first = await http.post("/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: "k1"})
        again = await http.post("/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: "k1"})
        other_body = await http.post(
            "/api/v1/orders", json=[order_payload("PO-2")], headers={KEY: "k1"}
        )
        unkeyed = await http.post("/api/v1/orders", json=[order_payload("PO-1")])
    assert first.status_code == 201, first.text
    assert REPLAYED not in first.headers
    # The retry is told what the first request did, byte for byte, and nothing is done again.
    assert again.status_code == 201, again.text
    assert again.content == first.content
    assert again.headers[REPLAYED] == "true"
    assert again.headers["content-type"] == first.headers["content-type"]
    _reused(other_body)
    # Without a key, the same body is a new request: refused as a duplicate.
    assert unkeyed.status_code == 422
    assert await hub.order_count() == 1


async def test_keys_are_per_connection(hub: Hub) -> None:
    async with hub.client("masonhub") as erp, hub.client("masonhub", "other") as other:
        first = await erp.post("/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: "k"})
        theirs = await other.post(
            "/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: "k"}
        )
    assert first.status_code == 201
    # Another connection's key "k" is its own: its request runs (and meets the duplicate).
    assert theirs.status_code == 422
    assert REPLAYED not in theirs.headers
    assert theirs.json()["data"][0]["status"] == "refused"


async def test_a_refused_batch_is_kept_and_replayed_too(hub: Hub) -> None:
    """The answer of a request that reached its write is kept whatever it was (as Stripe):
    a batch whose every item was refused is replayed as that 422."""
    async with hub.client("masonhub") as http:
        assert (await http.post("/api/v1/orders", json=[order_payload("PO-1")])).status_code == 201
        refused = await http.post(
            "/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: "dup"}
        )
        again = await http.post(
            "/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: "dup"}
        )
    assert refused.status_code == 422
    assert again.status_code == 422 and again.content == refused.content
    assert again.headers[REPLAYED] == "true"


async def test_a_request_refused_before_its_write_keeps_no_key(hub: Hub) -> None:
    """A malformed request stores nothing: corrected, it goes through with the same key."""
    async with hub.client("masonhub") as http:
        bad = await http.post("/api/v1/orders", json={"not": "an array"}, headers={KEY: "fix"})
        fixed = await http.post(
            "/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: "fix"}
        )
    assert bad.status_code == 422
    assert fixed.status_code == 201 and REPLAYED not in fixed.headers


@pytest.mark.parametrize(
    "key",
    ["x" * 256, b"cl\xc3\xa9", ""],
    ids=["too-long", "not-ascii", "empty"],
)
async def test_a_malformed_key_is_refused_with_400(hub: Hub, key: str | bytes) -> None:
    async with hub.client("masonhub") as mason, hub.client("hubrise") as hubrise:
        a = await mason.post("/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: key})
        b = await hubrise.post(
            "/v1/location/orders", json=hubrise_order("HR-1"), headers={KEY: key}
        )
    for answer in (a, b):
        assert answer.status_code == 400, answer.text
        assert [e["field"] for e in answer.json()["errors"]] == [KEY]
    assert await hub.order_count() == 0


# -- HubRise -------------------------------------------------------------------------------------


async def test_hubrise_create_and_patch_are_replayed_and_a_reused_key_refused(hub: Hub) -> None:
    async with hub.client("hubrise") as http:
        created = await http.post(
            "/v1/location/orders", json=hubrise_order("HR-1"), headers={KEY: "c1"}
        )
        again = await http.post(
            "/v1/location/orders", json=hubrise_order("HR-1"), headers={KEY: "c1"}
        )
        reused = await http.post(
            "/v1/location/orders", json=hubrise_order("HR-2"), headers={KEY: "c1"}
        )
        assert created.status_code == 201, created.text
        assert again.status_code == 201 and again.content == created.content
        assert again.headers[REPLAYED] == "true"
        _reused(reused)
        order = f"/v1/location/orders/{created.json()['id']}"

        patched = await http.patch(order, json={"status": "received"}, headers={KEY: "p1"})
        later = await http.patch(order, json={"status": "in_preparation"}, headers={KEY: "p2"})
        # A late retry of the first PATCH gets its own answer and does not move the order back.
        retried = await http.patch(order, json={"status": "received"}, headers={KEY: "p1"})
        # The same key and body on another path (another order) is another request: refused.
        second = await http.post("/v1/location/orders", json=hubrise_order("HR-2"))
        other_order = f"/v1/location/orders/{second.json()['id']}"
        elsewhere = await http.post(
            other_order,
            json={"status": "received"},
            headers={KEY: "p1", "X-Http-Method-Override": "PATCH"},
        )
        now = (await http.get(order)).json()
        untouched = (await http.get(other_order)).json()
    assert patched.status_code == 200 and later.status_code == 200
    assert retried.status_code == 200 and retried.content == patched.content
    assert retried.json()["status"] == "received"
    _reused(elsewhere)
    assert now["status"] == "in_preparation"
    assert untouched["status"] == "new"
    assert await hub.order_count() == 2


async def test_hubrise_callback_and_event_ack_are_replayed(hub: Hub) -> None:
    subscription = {"events": {"order": ["create", "update"]}}
    async with hub.client("hubrise") as watcher, hub.client("hubrise", "other") as writer:
        put = await watcher.post("/v1/callback", json=subscription, headers={KEY: "cb"})
        put_again = await watcher.post("/v1/callback", json=subscription, headers={KEY: "cb"})
        assert put.status_code == 200 and put_again.content == put.content
        assert put_again.headers[REPLAYED] == "true"

        assert (await writer.post("/v1/location/orders", json=hubrise_order("HR-1"))).is_success
        (event,) = (await watcher.get("/v1/callback/events")).json()
        path = f"/v1/callback/events/{event['id']}"
        acked = await watcher.delete(path, headers={KEY: "ack"})
        # Unkeyed, a second ack of the event is a 404; with the key, the client learns it
        # acknowledged the event (its first answer).
        acked_again = await watcher.delete(path, headers={KEY: "ack"})
        unkeyed = await watcher.delete(path)
        assert acked.status_code == 200, acked.text
        assert acked_again.status_code == 200 and acked_again.content == acked.content
        assert acked_again.headers[REPLAYED] == "true"
        assert unkeyed.status_code == 404

        deleted = await watcher.delete("/v1/callback", headers={KEY: "del"})
        reused = await watcher.post("/v1/callback", json=subscription, headers={KEY: "del"})
        assert deleted.status_code == 200
        _reused(reused)
        assert (await watcher.get("/v1/callback")).json()["events"] == {}


# -- Tradecloud ----------------------------------------------------------------------------------


async def test_tradecloud_polls_are_reads_and_ignore_the_key(hub: Hub) -> None:
    """Polls are POSTs that change nothing: a key neither replays a stale page nor is kept."""
    poll = {"filters": {}, "offset": 0, "limit": 100}
    async with hub.client("tradecloud") as trade, hub.client("masonhub") as mason:
        before = await trade.post("/v2/order-search/poll", json=poll, headers={KEY: "poll"})
        assert (await mason.post("/api/v1/orders", json=[order_payload("PO-1")])).is_success
        after = await trade.post("/v2/order-search/poll", json=poll, headers={KEY: "poll"})
    assert before.json()["total"] == 0
    assert after.json()["total"] == 1 and REPLAYED not in after.headers
    assert await hub.key_count() == 0


# -- data safety ---------------------------------------------------------------------------------


async def test_an_answer_that_fails_leaves_neither_the_order_nor_the_key(
    hub: Hub, monkeypatch: pytest.MonkeyPatch
) -> None:
    """A crash between the write and the answer (the answer cannot be built) rolls both back:
    the retry with the same key runs the write for real, once."""
    from ordersync.hub.dialects import hubrise as hubrise_dialect
    from ordersync.hub.dialects import masonhub as masonhub_dialect

    def broken(*_: Any) -> Any:
        raise RuntimeError("the answer could not be built")

    async with hub.client("masonhub") as mason, hub.client("hubrise") as hubrise:
        with monkeypatch.context() as patch:
            patch.setattr(masonhub_dialect, "_batch_answer", broken)
            patch.setattr(hubrise_dialect, "render_row", broken)
            failed = await mason.post(
                "/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: "m"}
            )
            failed_hr = await hubrise.post(
                "/v1/location/orders", json=hubrise_order("HR-1"), headers={KEY: "h"}
            )
        assert failed.status_code == 500 and failed_hr.status_code == 500
        assert await hub.order_count() == 0
        assert await hub.key_count() == 0
        retried = await mason.post(
            "/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: "m"}
        )
        retried_hr = await hubrise.post(
            "/v1/location/orders", json=hubrise_order("HR-1"), headers={KEY: "h"}
        )
    assert retried.status_code == 201 and REPLAYED not in retried.headers
    assert retried_hr.status_code == 201 and REPLAYED not in retried_hr.headers
    assert await hub.order_count() == 2
    assert await hub.key_count() == 2


async def test_keys_are_kept_24_hours_then_pruned(hub: Hub) -> None:
    now = [START]
    hub.store.clock = lambda: now[0]
    pruner = hub.app.state.key_pruner
    async with hub.client("masonhub") as http:
        first = await http.post("/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: "r"})
        assert first.status_code == 201
        now[0] = START + 24 * HOUR_MS - 1
        assert await pruner.prune() == 0
        kept = await http.post("/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: "r"})
        assert kept.status_code == 201 and kept.headers[REPLAYED] == "true"
        now[0] = START + 24 * HOUR_MS + 1
        assert await pruner.prune() == 1
        # Forgotten: the same request now runs again, and meets the order it created.
        late = await http.post("/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: "r"})
    assert late.status_code == 422 and REPLAYED not in late.headers
    assert await hub.order_count() == 1


async def test_the_hub_prunes_old_keys_in_the_background(store: Store) -> None:
    hub = await _hub(store)
    now = [START]
    store.clock = lambda: now[0]
    async with hub.client("masonhub") as http:
        sent = await http.post("/api/v1/orders", json=[order_payload("PO-1")], headers={KEY: "b"})
    assert sent.status_code == 201 and await hub.key_count() == 1
    now[0] = START + 25 * HOUR_MS
    app = create_app(HubSettings(db_url=store.url.given, event_prune_interval_s=0.01), store)
    async with app.router.lifespan_context(app):
        for _ in range(500):  # a condition, not a duration: the task's first rounds
            if await hub.key_count() == 0:
                break
            await asyncio.sleep(0.01)
    assert await hub.key_count() == 0


def test_the_retention_is_a_setting(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSYNC_HUB_IDEMPOTENCY_HOURS", "48")
    assert HubSettings.from_env().idempotency_hours == 48
    assert HubSettings().idempotency_hours == 24


# -- concurrency (PostgreSQL: writers really run at once) ----------------------------------------


@pytest.fixture
async def pg_store(pg_admin_url: str, pg_hub_template: str) -> AsyncIterator[Store]:
    with fresh_pg_database(pg_admin_url, template=pg_hub_template) as url:
        store = await Store.open(url, migrate=False)
        try:
            yield store
        finally:
            await store.close()


@pytest.mark.postgres
@pytest.mark.parametrize("dialect", ["masonhub", "hubrise"])
async def test_concurrent_requests_with_one_key_create_one_order(
    pg_store: Store, dialect: str
) -> None:
    hub = await _hub(pg_store)
    path, body = (
        ("/api/v1/orders", [order_payload("PO-1")])
        if dialect == "masonhub"
        else ("/v1/location/orders", hubrise_order("HR-1"))
    )
    async with hub.client(dialect) as http:
        answers = await asyncio.gather(
            *(http.post(path, json=body, headers={KEY: "same"}) for _ in range(12))
        )
    assert [a.status_code for a in answers] == [201] * 12, [a.text for a in answers]
    assert len({a.content for a in answers}) == 1
    assert sum(1 for a in answers if REPLAYED not in a.headers) == 1
    assert await hub.order_count() == 1
    assert await hub.key_count() == 1


# -- the description -----------------------------------------------------------------------------


async def test_openapi_declares_the_key_on_every_writing_operation(hub: Hub) -> None:
    async with hub.client("masonhub") as http:
        spec = (await http.get("/openapi.json")).json()
    keyed = {
        (path, method)
        for path, operations in spec["paths"].items()
        for method, operation in operations.items()
        if any(p.get("name") == KEY for p in operation.get("parameters", []))
    }
    assert keyed == {
        ("/api/v1/orders", "post"),
        ("/api/v1/order_update_requests", "post"),
        ("/api/v1/order_cancel_requests", "post"),
        ("/v1/location/orders", "post"),
        ("/v1/location/orders/{order_id}", "patch"),
        ("/v1/callback", "post"),
        ("/v1/callback", "delete"),
        ("/v1/callback/events/{event_id}", "delete"),
        ("/api/v1/stock_receipts", "post"),
        ("/v1/catalogs/{catalog_id}/locations/{location_id}/inventory", "put"),
        ("/v1/catalogs/{catalog_id}/locations/{location_id}/inventory", "patch"),
    }
    for path, method in keyed:
        responses = spec["paths"][path][method]["responses"]
        assert {"409", "422"} <= set(responses)
        assert "Retry-After" in responses["409"]["headers"]


async def test_masonhub_update_and_cancel_requests_are_replayed_not_submitted_twice(
    hub: Hub,
) -> None:
    """A retried asynchronous update or cancel with its key gets the first answer (the same
    request id) and leaves one request, not two; another body under the key is refused."""
    from ordersync.store.tables import order_cancel_requests, order_update_requests

    async with hub.client("masonhub") as client:
        created = await client.post("/api/v1/orders", json=[order_payload("U-1")])
        assert created.status_code == 201
        update = [order_payload("U-1", priority=7)]
        first = await client.post("/api/v1/order_update_requests", json=update, headers={KEY: "u"})
        again = await client.post("/api/v1/order_update_requests", json=update, headers={KEY: "u"})
        cancel = [{"customer_identifier": "U-1"}]
        first_cancel = await client.post(
            "/api/v1/order_cancel_requests", json=cancel, headers={KEY: "c"}
        )
        again_cancel = await client.post(
            "/api/v1/order_cancel_requests", json=cancel, headers={KEY: "c"}
        )
        reused = await client.post(
            "/api/v1/order_cancel_requests", json=cancel + cancel, headers={KEY: "c"}
        )
    assert first.status_code == again.status_code == 200
    assert again.content == first.content and again.headers[REPLAYED] == "true"
    assert first.json()["results"][0]["status"] == "success"
    assert again_cancel.content == first_cancel.content
    assert first_cancel.json()["results"][0]["status"] == "success"
    _reused(reused)
    async with hub.store.reader.connect() as conn:
        for table in (order_update_requests, order_cancel_requests):
            assert await conn.scalar(select(func.count()).select_from(table)) == 1
