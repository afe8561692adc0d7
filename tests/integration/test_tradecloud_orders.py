"""Tradecloud's buyer order writes (`POST /v2/api-connector/order`), SQLite and PostgreSQL:
create, update by line position, cancel by indicators, refusals with their reasons, and the
change visible in the polls and the event log under one event id."""

from __future__ import annotations

import asyncio
import base64
from collections.abc import AsyncIterator
from typing import Any

import httpx
import pytest

from ordersync.domain.inventory import StockUnit
from ordersync.domain.lifecycle import OrderStatus
from ordersync.domain.orders import OrderShort
from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.store.inventory import InventoryStore
from ordersync.store.store import Store
from tests.support import fresh_pg_database

PATH = "/v2/api-connector/order"


def line(position: str, sku: str, *quantities: str, price: str = "9.99") -> dict[str, Any]:
    return {
        "position": position,
        "item": {"number": sku, "name": "ignored by the hub"},
        "deliverySchedule": [
            {"position": f"{i + 1:04d}", "date": "2026-12-24", "quantity": q}
            for i, q in enumerate(quantities)
        ],
        "prices": {"netPrice": {"priceInTransactionCurrency": {"value": price}}},
    }


def message(number: str, *lines: dict[str, Any], **order: Any) -> dict[str, Any]:
    return {
        "order": {
            "purchaseOrderNumber": number,
            "destination": {
                "code": "001",
                "names": ["Main warehouse"],
                "addressLines": ["Street 123", "Dock 4"],
                "postalCode": "1234 AB",
                "city": "Rotterdam",
                "countryCodeIso2": "NL",
            },
            "description": "documented by Tradecloud, not kept by the hub",
        }
        | order,
        "lines": list(lines),
        "erpIssueDateTime": "2026-12-01T10:11:12",
    }


class Hub:
    def __init__(self, store: Store, token: str) -> None:
        self.store = store
        self.app = create_app(HubSettings(db_url=store.url.given), store)
        self.token = token

    def client(self, **headers: str) -> httpx.AsyncClient:
        return httpx.AsyncClient(
            transport=httpx.ASGITransport(app=self.app, raise_app_exceptions=False),
            base_url="http://hub",
            headers=headers or {"Authorization": f"Bearer {self.token}"},
        )


@pytest.fixture
async def hub(store: Store) -> Hub:
    return Hub(store, await store.create_token("acme", "erp"))


async def _poll(http: httpx.AsyncClient) -> list[dict[str, Any]]:
    answer = await http.post("/v2/order-search/poll", json={"filters": {}})
    assert answer.status_code == 200, answer.text
    data: list[dict[str, Any]] = answer.json()["data"]
    return data


async def _events(http: httpx.AsyncClient, count: int) -> list[dict[str, Any]]:
    """The log's first `count` events. On PostgreSQL the log serves an event once every
    transaction below it has ended, anywhere on the cluster: bounded rounds, not a duration."""
    data: list[dict[str, Any]] = []
    for _ in range(200):
        data = (await http.post("/v2/event/poll", json={})).json()["data"]
        if len(data) >= count:
            return data
        await asyncio.sleep(0.05)
    raise AssertionError(f"the event log never served {count} events: {data}")


def _lines(order: dict[str, Any]) -> list[tuple[str, str, str]]:
    return [
        (
            line["buyerLine"]["position"],
            line["buyerLine"]["item"]["number"],
            line["buyerLine"]["quantity"],
        )
        for line in order["lines"]
    ]


async def test_a_new_number_creates_the_order_seen_in_the_polls_under_one_event_id(
    hub: Hub,
) -> None:
    async with hub.client() as http:
        sent = await http.post(PATH, json=message("PO-1", line("0001", "SKU-1", "2", "3")))
        assert sent.status_code == 200, sent.text
        body = sent.json()
        assert body["outcome"] == "created"
        order = body["order"]
        assert order["buyerOrder"]["purchaseOrderNumber"] == "PO-1"
        assert order["buyerOrder"]["issuedAt"] == "2026-12-01T10:11:12.000Z"
        assert order["buyerOrder"]["deliveryAddress"]["address2"] == "Dock 4"
        # The line's quantity is its delivery schedule's total.
        assert _lines(order) == [("0001", "SKU-1", "5")]
        (polled,) = await _poll(http)
        assert polled["id"] == order["id"] and polled["eventId"] == body["eventId"]
        assert polled["lastUpdatedBy"] == "erp"
        (event,) = await _events(http, 1)
        assert (event["eventId"], event["eventType"]) == (body["eventId"], "order.created")


async def test_an_update_replaces_the_lines_it_sends_and_keeps_the_others(hub: Hub) -> None:
    async with hub.client() as http:
        first = message("PO-2", line("0001", "SKU-1", "1"), line("0002", "SKU-2", "1"))
        assert (await http.post(PATH, json=first)).json()["outcome"] == "created"
        # Tradecloud: send only the lines that are new or changed.
        changed = message("PO-2", line("0002", "SKU-2", "7"), line("0003", "SKU-3", "1"))
        sent = await http.post(PATH, json=changed)
        assert sent.status_code == 200, sent.text
        assert sent.json()["outcome"] == "updated"
        order = sent.json()["order"]
        assert order["version"] == 2
        assert _lines(order) == [
            ("0001", "SKU-1", "1"),
            ("0002", "SKU-2", "7"),
            ("0003", "SKU-3", "1"),
        ]
        (polled,) = await _poll(http)
        assert polled["version"] == 2 and polled["eventId"] == sent.json()["eventId"]
        # Line 1 did not change: its lastUpdatedAt stays that of version 1.
        stamps = {ln["buyerLine"]["position"]: ln["lastUpdatedAt"] for ln in polled["lines"]}
        assert stamps["0001"] < stamps["0002"] == polled["lastUpdatedAt"]
        events = await _events(http, 2)
        assert [e["eventType"] for e in events][-1] == "order.updated"
        assert events[-1]["eventId"] == sent.json()["eventId"]

        # The same message again changes nothing: no new version, no event.
        again = await http.post(PATH, json=changed)
        assert again.json()["outcome"] == "unchanged"
        assert again.json()["order"]["version"] == 2
        assert len(await _events(http, 2)) == 2

        # cancelLineWhenMissing: the message is the whole set of lines.
        whole = message(
            "PO-2", line("0003", "SKU-3", "4"), indicators={"cancelLineWhenMissing": True}
        )
        replaced = (await http.post(PATH, json=whole)).json()
        assert _lines(replaced["order"]) == [("0003", "SKU-3", "4")]


async def test_cancelled_indicators_cancel_lines_and_orders(hub: Hub) -> None:
    async with hub.client() as http:
        two = message("PO-3", line("0001", "SKU-1", "1"), line("0002", "SKU-2", "1"))
        await http.post(PATH, json=two)
        # A line cancelled (Tradecloud's short form: position and indicator only) leaves.
        one_line = {
            "order": {"purchaseOrderNumber": "PO-3"},
            "lines": [{"position": "0002", "indicators": {"cancelled": True}}],
        }
        sent = (await http.post(PATH, json=one_line)).json()
        assert sent["outcome"] == "updated"
        assert _lines(sent["order"]) == [("0001", "SKU-1", "1")]
        # Cancelled on the order with no line sent: the whole order.
        whole = {"order": {"purchaseOrderNumber": "PO-3", "indicators": {"cancelled": True}}}
        cancelled = await http.post(PATH, json=whole)
        assert cancelled.status_code == 200, cancelled.text
        assert cancelled.json()["outcome"] == "cancelled"
        assert cancelled.json()["order"]["status"]["processStatus"] == "Cancelled"
        (polled,) = await _poll(http)
        assert polled["status"]["logisticsStatus"] == "Cancelled"
        assert (await _events(http, 3))[-1]["eventType"] == "order.canceled"
        # Again: nothing left to do.
        assert (await http.post(PATH, json=whole)).json()["outcome"] == "unchanged"
        # Cancelling every line cancels the order too.
        await http.post(PATH, json=message("PO-4", line("0001", "SKU-1", "1")))
        every = {
            "order": {"purchaseOrderNumber": "PO-4"},
            "lines": [{"position": "0001", "indicators": {"cancelled": True}}],
        }
        assert (await http.post(PATH, json=every)).json()["outcome"] == "cancelled"


async def test_updates_and_cancels_are_refused_once_the_order_is_packed(hub: Hub) -> None:
    async with hub.client() as http:
        created = (await http.post(PATH, json=message("PO-5", line("0001", "SKU-1", "1")))).json()
        order_id = created["order"]["id"]
        account_id = (await hub.store.authenticate(hub.token)).account_id
        # The warehouse has started: still open to the buyer's updates.
        for status in (OrderStatus.AT_WAREHOUSE, OrderStatus.IN_PROCESS):
            await hub.store.transition_order(None, account_id, order_id, status)
        in_process = await http.post(PATH, json=message("PO-5", line("0001", "SKU-1", "2")))
        assert in_process.json()["outcome"] == "updated", in_process.text
        await hub.store.transition_order(None, account_id, order_id, OrderStatus.PACKED)
        refused = await http.post(PATH, json=message("PO-5", line("0001", "SKU-1", "3")))
        assert refused.status_code == 422, refused.text
        body = refused.json()
        assert "packed" in body["message"] and "can no longer be updated" in body["message"]
        assert [e["field"] for e in body["errors"]] == ["status"]
        cancel = {"order": {"purchaseOrderNumber": "PO-5", "indicators": {"cancelled": True}}}
        not_cancelable = await http.post(PATH, json=cancel)
        assert not_cancelable.status_code == 422
        assert "can no longer be canceled" in not_cancelable.json()["message"]
        (polled,) = await _poll(http)
        assert polled["version"] == 5 and _lines(polled) == [("0001", "SKU-1", "2")]


async def test_bad_messages_get_422_naming_each_field(hub: Hub) -> None:
    async with hub.client() as http:
        incomplete = message("PO-6", {"position": "0001", "item": {"number": "SKU-1"}})
        del incomplete["order"]["destination"]
        answer = await http.post(PATH, json=incomplete)
        assert answer.status_code == 422, answer.text
        assert answer.json()["error_type"] == "unprocessable_entity"
        fields = {e["field"] for e in answer.json()["errors"]}
        assert fields == {
            "order.destination",
            "lines.0.deliverySchedule",
            "lines.0.prices.netPrice.priceInTransactionCurrency.value",
        }
        typo = message("PO-6", line("0001", "SKU-1", "1"))
        typo["lines"][0]["quantty"] = 1
        assert [e["field"] for e in (await http.post(PATH, json=typo)).json()["errors"]] == [
            "lines.0.quantty"
        ]
        bad_country = message("PO-6", line("A1", "SKU-1", "1"))
        bad_country["order"]["destination"]["countryCodeIso2"] = "nl"
        fields = [e["field"] for e in (await http.post(PATH, json=bad_country)).json()["errors"]]
        assert fields == ["lines.0.position"]
        bad_country["lines"][0]["position"] = "0001"
        fields = [e["field"] for e in (await http.post(PATH, json=bad_country)).json()["errors"]]
        assert fields == ["order.destination.countryCodeIso2"]
        nothing = {"order": {"purchaseOrderNumber": "PO-X", "indicators": {"cancelled": True}}}
        unknown = await http.post(PATH, json=nothing)
        assert unknown.status_code == 422
        assert unknown.json()["errors"][0]["field"] == "order.purchaseOrderNumber"
        assert await _poll(http) == []


async def test_once_the_account_has_a_catalogue_an_unknown_item_is_refused_by_its_name(
    hub: Hub, store: Store
) -> None:
    caller = await store.authenticate(hub.token)
    assert caller is not None
    await InventoryStore(store).set_stock(
        caller, caller.account_id, [StockUnit("SKU-1", "WH-EAST", available=5)]
    )
    async with hub.client() as http:
        answer = await http.post(PATH, json=message("PO-C", line("0001", "NOPE", "1")))
        assert answer.status_code == 422, answer.text
        assert [e["field"] for e in answer.json()["errors"]] == ["lines.0.item.number"]
        assert await _poll(http) == []
        created = await http.post(PATH, json=message("PO-C", line("0001", "SKU-1", "1")))
        assert created.json()["outcome"] == "created"


async def test_an_order_the_warehouse_has_worked_on_still_takes_updates(
    hub: Hub, store: Store
) -> None:
    """The stored order carries the warehouse's shorts and allocations; a message is compared
    with the order the client sent, not with those."""
    async with hub.client() as http:
        created = await http.post(PATH, json=message("PO-W", line("0001", "SKU-1", "2")))
        caller = await store.authenticate(hub.token)
        assert caller is not None
        await store.update_order(
            caller,
            caller.account_id,
            created.json()["order"]["id"],
            lambda o: o.model_copy(
                update={
                    "shorts": [
                        OrderShort(
                            line_number=1,
                            sku_customer_id="SKU-1",
                            quantity=1,
                            reason="insufficient_stock",
                        )
                    ]
                }
            ),
            "order.updated",
        )
        same = await http.post(PATH, json=message("PO-W", line("0001", "SKU-1", "2")))
        assert same.status_code == 200, same.text
        assert same.json()["outcome"] == "unchanged"
        more = await http.post(PATH, json=message("PO-W", line("0001", "SKU-1", "3")))
        assert more.json()["outcome"] == "updated"


async def test_basic_authentication_as_the_other_tradecloud_routes(hub: Hub) -> None:
    basic = "Basic " + base64.b64encode(f"erp:{hub.token}".encode()).decode()
    async with hub.client(Authorization=basic) as http:
        sent = await http.post(PATH, json=message("PO-7", line("0001", "SKU-1", "1")))
        assert sent.status_code == 200, sent.text
        assert sent.json()["order"]["lastUpdatedBy"] == "erp"
    async with hub.client(Authorization="Bearer nope") as http:
        assert (await http.post(PATH, json=message("PO-8", line("1", "S", "1")))).status_code == 401


@pytest.fixture
async def pg_store(pg_admin_url: str, pg_hub_template: str) -> AsyncIterator[Store]:
    with fresh_pg_database(pg_admin_url, template=pg_hub_template) as url:
        store = await Store.open(url, migrate=False)
        try:
            yield store
        finally:
            await store.close()


@pytest.mark.postgres
async def test_concurrent_messages_for_a_new_number_make_one_order(pg_store: Store) -> None:
    """Eight messages for one new purchaseOrderNumber at once (each with another line): one
    creates the order, the others update it; none is lost, none creates a second order."""
    hub = Hub(pg_store, await pg_store.create_token("acme", "erp"))
    async with hub.client() as http:
        answers = await asyncio.gather(
            *(
                http.post(PATH, json=message("PO-9", line(f"{i + 1:04d}", f"SKU-{i}", "1")))
                for i in range(8)
            )
        )
        assert [a.status_code for a in answers] == [200] * 8, [a.text for a in answers]
        outcomes = sorted(a.json()["outcome"] for a in answers)
        assert outcomes == ["created"] + ["updated"] * 7
        (polled,) = await _poll(http)
    assert polled["version"] == 8 and len(polled["lines"]) == 8
