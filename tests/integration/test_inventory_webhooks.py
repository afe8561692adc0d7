"""skuInventoryChange callbacks from the outbox (real hub and receiver on 127.0.0.1, SQLite
and PostgreSQL): the SKU's snapshot at each version, and newer counts superseding older ones
that were not delivered yet."""

from __future__ import annotations

import asyncio

from ordersync.hub.webhooks import Dispatcher
from ordersync.store.store import Store
from ordersync.store.webhooks import WebhookStore
from tests.integration.test_webhooks import (
    FAST,
    Hub,
    _materialise,
    drive,
    hub,
    mason,
    receiver,
    tokens,
)

__all__ = ["hub"]  # the fixture, shared with test_webhooks


def _one_round(hub: Hub) -> int:
    async def main() -> int:
        store = await Store.open(hub.db_url)
        try:
            return await Dispatcher(store, WebhookStore(store, schedule_s=FAST)).run_once()
        finally:
            await store.close()

    return asyncio.run(main())


def _deliveries(hub: Hub, sub_id: str) -> list[tuple[int, str, int]]:
    async def main() -> list[tuple[int, str, int]]:
        store = await Store.open(hub.db_url)
        try:
            return await WebhookStore(store).deliveries(sub_id)
        finally:
            await store.close()

    return asyncio.run(main())


def test_a_stock_change_is_a_sku_inventory_change_callback(hub: Hub) -> None:
    """A subscriber of skuInventoryChange gets the SKU's absolute counts at the new version;
    an orderEvent subscriber gets nothing for it."""
    erp, watcher = tokens(hub, "erp", "watcher")
    with receiver() as stock_hook, receiver() as order_hook, mason(hub, watcher) as w:
        made = w.post(
            "/api/v1/callbacks",
            json=[
                {"url": stock_hook.url, "message_type": "skuInventoryChange"},
                {"url": order_hook.url, "message_type": "orderEvent"},
            ],
        )
        assert made.status_code in (200, 201), made.text
        with mason(hub, erp) as m:
            received = m.post(
                "/api/v1/stock_receipts", json=[{"sku": "A", "location": "EAST", "quantity": 7}]
            )
            assert received.status_code == 200, received.text
        drive(hub, lambda: len(stock_hook.delivered()) >= 1)
        (got,) = stock_hook.delivered()
        assert got.json["message_type"] == "skuInventoryChange"
        data = got.json["data"]
        assert (data["customer_identifier"], data["version"]) == ("A", 1)
        assert data["total_available_to_sell"] == 7
        assert {
            "inventory_location_id": "EAST",
            "inventory_status": "available",
            "quantity": 7,
        } in data["status_counts"]
        assert order_hook.delivered() == []


def test_newer_counts_supersede_an_undelivered_older_callback(hub: Hub) -> None:
    """Version 1 fails once; versions 2 and 3 are queued meanwhile: only version 3 is ever
    delivered, versions 1 and 2 are marked superseded."""
    erp, watcher = tokens(hub, "erp", "watcher")
    with receiver(500) as endpoint, mason(hub, watcher) as w, mason(hub, erp) as m:
        made = w.post(
            "/api/v1/callbacks",
            json=[{"url": endpoint.url, "message_type": "skuInventoryChange"}],
        )
        sub_id = made.json()[0]["id"]

        def receive() -> None:
            answer = m.post(
                "/api/v1/stock_receipts", json=[{"sku": "A", "location": "EAST", "quantity": 1}]
            )
            assert answer.status_code == 200, answer.text
            _materialise(hub)

        receive()
        assert _one_round(hub) == 1  # version 1: answered 500, to be retried
        receive()
        receive()
        drive(hub, lambda: len(endpoint.delivered()) >= 1)
        assert [r.json["data"]["version"] for r in endpoint.delivered()] == [3]
        statuses = [status for _, status, _ in _deliveries(hub, sub_id)]
        assert statuses == ["superseded", "superseded", "delivered"]
