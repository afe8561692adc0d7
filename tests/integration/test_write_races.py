"""Check-then-act races on the hub's write paths, and answers that must match what committed.

The races run as many concurrent tasks on PostgreSQL (where writers really run at once;
SQLite serializes them with BEGIN IMMEDIATE). Each test failed on the code before its fix.
"""

from __future__ import annotations

import asyncio
from collections import Counter
from collections.abc import AsyncIterator, Callable
from typing import Any

import httpx
import pytest

from ordersync.domain import NewOrder, OrderStatus
from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.store.hubrise import HubRiseStore
from ordersync.store.store import ListQuery, Principal, Store
from tests.integration.test_api_hubrise import hubrise_order
from tests.support import fresh_pg_database, order_payload

TASKS = 12


@pytest.fixture
async def pg_store(pg_admin_url: str, pg_hub_template: str) -> AsyncIterator[Store]:
    with fresh_pg_database(pg_admin_url, template=pg_hub_template) as url:
        store = await Store.open(url, migrate=False)
        try:
            yield store
        finally:
            await store.close()


async def _client(store: Store, token: str, header: str = "X-Access-Token") -> httpx.AsyncClient:
    app = create_app(HubSettings(db_url=store.url.given), store)
    value = token if header == "X-Access-Token" else f"Bearer {token}"
    return httpx.AsyncClient(
        transport=httpx.ASGITransport(app=app, raise_app_exceptions=False),
        base_url="http://hub",
        headers={header: value},
    )


# -- accounts and tokens -------------------------------------------------------------------------


@pytest.mark.postgres
async def test_first_use_of_an_account_by_many_at_once_makes_one_account(pg_store: Store) -> None:
    tokens = await asyncio.gather(
        *(pg_store.create_token("fresh", f"conn-{n}") for n in range(TASKS))
    )
    principals = [await pg_store.authenticate(t) for t in tokens]
    assert len({p.account_id for p in principals}) == 1
    assert len({p.connection_id for p in principals}) == TASKS
    ids = await asyncio.gather(*(pg_store.ensure_account("other") for _ in range(TASKS)))
    assert len(set(ids)) == 1


# -- HubRise private refs and PATCH --------------------------------------------------------------


@pytest.mark.postgres
async def test_concurrent_creates_with_one_private_ref_save_only_the_answered_order(
    pg_store: Store,
) -> None:
    """Before: each request checked the ref was free, created its order, then set the ref;
    the losers answered 422 with their orders already saved."""
    token = await pg_store.create_token("acme", "erp")
    async with await _client(pg_store, token) as http:
        answers = await asyncio.gather(
            *(
                http.post("/v1/location/orders", json=hubrise_order(f"HR-{n}", private_ref="P-1"))
                for n in range(TASKS)
            )
        )
    statuses = Counter(a.status_code for a in answers)
    assert statuses == {201: 1, 422: TASKS - 1}, statuses
    for answer in answers:
        if answer.status_code == 422:
            assert answer.json()["errors"][0]["field"] == "private_ref"
    principal = await pg_store.authenticate(token)
    page = await pg_store.list_orders(principal.account_id, ListQuery(limit=100))
    (winner,) = [a.json() for a in answers if a.status_code == 201]
    assert page.total == 1 and winner["private_ref"] == "P-1"


@pytest.mark.postgres
async def test_identical_concurrent_patches_all_succeed(pg_store: Store) -> None:
    """Before: each PATCH saw the old status, and all but the first then failed the
    transition (422), where one after the other they all answer 200."""
    token = await pg_store.create_token("acme", "erp")
    async with await _client(pg_store, token) as http:
        created = await http.post("/v1/location/orders", json=hubrise_order("HR-1"))
        order_id = created.json()["id"]
        answers = await asyncio.gather(
            *(
                http.patch(f"/v1/location/orders/{order_id}", json={"status": "received"})
                for _ in range(TASKS)
            )
        )
    assert [a.status_code for a in answers] == [200] * TASKS, [a.text for a in answers]
    order = await pg_store.get_order((await pg_store.authenticate(token)).account_id, order_id)
    assert (order.status, order.version) == (OrderStatus.AT_WAREHOUSE, 2)


@pytest.mark.postgres
async def test_a_patch_refused_for_its_ref_leaves_the_status_alone(pg_store: Store) -> None:
    """Two PATCHes race for one ref, one of them also moving its order's status. Before: both
    passed the ref check, the status moved, then the ref write failed: 422, status changed."""
    token = await pg_store.create_token("acme", "erp")
    principal = await pg_store.authenticate(token)
    async with await _client(pg_store, token) as http:
        for round_ in range(8):
            a = (await http.post("/v1/location/orders", json=hubrise_order(f"A-{round_}"))).json()
            b = (await http.post("/v1/location/orders", json=hubrise_order(f"B-{round_}"))).json()
            ref = f"R-{round_}"
            moving, plain = await asyncio.gather(
                http.patch(
                    f"/v1/location/orders/{a['id']}",
                    json={"status": "received", "private_ref": ref},
                ),
                http.patch(f"/v1/location/orders/{b['id']}", json={"private_ref": ref}),
            )
            assert sorted([moving.status_code, plain.status_code]) == [200, 422]
            order = await pg_store.get_order(principal.account_id, a["id"])
            if moving.status_code == 422:
                assert (order.status, order.version) == (OrderStatus.OPEN, 1)
            else:
                assert (order.status, order.version) == (OrderStatus.AT_WAREHOUSE, 2)


# -- HubRise callbacks ---------------------------------------------------------------------------


@pytest.mark.postgres
async def test_an_ack_racing_the_callback_delete_leaves_no_ack_behind(
    pg_store: Store, new_order: Callable[..., NewOrder], monkeypatch: pytest.MonkeyPatch
) -> None:
    """Forced interleaving: an ack has written its row and holds the callback's lock when the
    connection deletes its callback. Before: the delete removed the ack rows first (the new
    one not yet visible), then waited for the callback row, and the ack row outlived the
    callback."""
    queries = HubRiseStore(pg_store)
    writer = await pg_store.authenticate(await pg_store.create_token("acme", "erp"))
    reader = await pg_store.authenticate(await pg_store.create_token("acme", "reader"))
    await queries.put_callback(reader, {"order": ["create"]})
    await pg_store.create_orders(writer, [new_order("CB-1"), new_order("CB-2")])
    # The second event is acknowledged, the first is not: the watermark cannot pass the first,
    # so the ack stays a row of its own.
    _, event = await queries.pending_events(reader)

    acked, release = asyncio.Event(), asyncio.Event()
    advance = queries._advance_watermark

    async def paused(*args: Any) -> None:
        await advance(*args)
        acked.set()  # the ack row is written, the callback row locked, nothing committed
        await release.wait()

    monkeypatch.setattr(queries, "_advance_watermark", paused)
    ack = asyncio.create_task(queries.acknowledge(reader, event.seq))
    await acked.wait()
    delete = asyncio.create_task(queries.delete_callback(reader))
    await _until_a_statement_waits_for_a_lock(pg_store)
    release.set()
    await ack
    assert await delete
    assert await queries.ack_rows(reader) == 0


async def _until_a_statement_waits_for_a_lock(store: Store) -> None:
    from sqlalchemy import text

    waiting = text(
        "SELECT count(*) FROM pg_stat_activity"
        " WHERE datname = current_database() AND wait_event_type = 'Lock'"
    )
    for _ in range(2_000):
        async with store.reader.connect() as conn:
            if await conn.scalar(waiting):
                return
        await asyncio.sleep(0.01)
    raise AssertionError("the callback delete never waited for the ack's lock")


# -- answers that match what committed -----------------------------------------------------------


async def test_a_batch_answer_that_cannot_be_built_saves_nothing(
    store: Store, principal: Principal, new_order: Callable[..., NewOrder]
) -> None:
    def failing(_: Any) -> None:
        raise RuntimeError("rendering failed")

    with pytest.raises(RuntimeError):
        await store.create_orders_answered(principal, [new_order("R-1")], failing)
    assert (await store.list_orders(principal.account_id, ListQuery())).total == 0
    (again,) = await store.create_orders(principal, [new_order("R-1")])
    assert again.created  # not refused as a duplicate of an order nobody was told about


async def test_a_created_order_is_answered_with_what_was_saved(store: Store) -> None:
    """A line number beyond 64 bits passed validation and was saved, then the answer failed
    to render (500): the client never learned the order's id, and its retry was refused as a
    duplicate. Now the answer is built before the commit from the stored document: either
    saved and answered, or refused and not saved."""
    token = await store.create_token("acme", "erp")
    body = order_payload("BIG-1")
    body["line_items"][0]["line_number"] = 2**70
    async with await _client(store, token, header="Authorization") as http:
        answer = await http.post("/api/v1/orders", json=[body])
        listed = (await http.get("/api/v1/orders")).json()
    assert answer.status_code < 500, answer.text
    saved = [o["id"] for o in listed["data"]]
    if answer.status_code == 201:
        item = answer.json()["data"][0]
        assert saved == [item["id"]]
        assert item["order"]["line_items"][0]["line_number"] == 2**70
    else:
        assert answer.status_code == 422 and saved == []


async def test_a_hubrise_create_whose_answer_fails_saves_nothing(
    store: Store, monkeypatch: pytest.MonkeyPatch
) -> None:
    from ordersync.hub.dialects import hubrise as dialect

    token = await store.create_token("acme", "erp")

    def broken(*_: Any) -> Any:
        raise RuntimeError("rendering failed")

    monkeypatch.setattr(dialect, "render_row", broken)
    async with await _client(store, token) as http:
        answer = await http.post("/v1/location/orders", json=hubrise_order("HR-9"))
    assert answer.status_code == 500
    principal = await store.authenticate(token)
    assert (await store.list_orders(principal.account_id, ListQuery())).total == 0
