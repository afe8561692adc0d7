"""Webhook delivery throughput on PostgreSQL: N orders made by one connection, delivered to one
subscriber's receiver (127.0.0.1, same process) by 1 and then 2 delivery workers.

    ORDERSYNC_TEST_PG=postgresql://postgres@127.0.0.1:5432/test \
        PYTHONPATH=src:. python bench/webhook_delivery.py [N]

Prints, per worker count, the deliveries, how many distinct webhook-ids (no double delivery:
equal to N) and the rate. The receiver shares the process (and its GIL) with the workers.
"""

from __future__ import annotations

import asyncio
import os
import sys
import time

import httpx
from tests.integration.test_webhooks import receiver
from tests.support import fresh_pg_database, order_payload, serve_in_thread

from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.hub.webhooks import Dispatcher
from ordersync.store.store import Store
from ordersync.store.webhooks import WebhookStore

ADMIN = os.environ.get("ORDERSYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")


def run(n: int, workers: int) -> tuple[int, int, float]:
    """Deliver n orders with `workers` workers; (deliveries, distinct webhook-ids, seconds)."""
    with fresh_pg_database(ADMIN) as db:

        async def make_tokens() -> list[str]:
            store = await Store.open(db)
            try:
                return [await store.create_token("bench", name) for name in ("erp", "watcher")]
            finally:
                await store.close()

        erp, watcher = asyncio.run(make_tokens())
        app = create_app(HubSettings(db_url=db, webhook_delivery=False), Store.connect(db))
        with serve_in_thread(app) as base, receiver() as endpoint:
            auth = {"Authorization": f"Bearer {watcher}"}
            with httpx.Client(base_url=base, headers=auth) as w:
                callback = [{"url": endpoint.url, "message_type": "orderEvent"}]
                assert w.post("/api/v1/callbacks", json=callback).status_code == 200
            auth = {"Authorization": f"Bearer {erp}"}
            with httpx.Client(base_url=base, headers=auth, timeout=60) as m:
                for batch in range(0, n, 100):
                    orders = [order_payload(f"B-{batch + i}") for i in range(min(100, n - batch))]
                    assert m.post("/api/v1/orders", json=orders).status_code == 201

            async def deliver() -> float:
                stores = [await Store.open(db) for _ in range(workers)]

                async def loop(dispatcher: Dispatcher) -> None:
                    async with httpx.AsyncClient(timeout=15) as http:
                        dispatcher.http = http
                        while len(endpoint.delivered()) < n:
                            if await dispatcher.run_once() == 0:
                                await asyncio.sleep(0.01)

                started = time.perf_counter()
                try:
                    await asyncio.gather(*(loop(Dispatcher(s, WebhookStore(s))) for s in stores))
                finally:
                    for s in stores:
                        await s.close()
                return time.perf_counter() - started

            seconds = asyncio.run(deliver())
            ids = [r.headers["webhook-id"] for r in endpoint.delivered()]
            print(
                f"workers={workers} delivered={len(ids)} distinct={len(set(ids))} "
                f"seconds={seconds:.2f} rate={n / seconds:.0f}/s"
            )
            return len(ids), len(set(ids)), seconds


if __name__ == "__main__":
    count = int(sys.argv[1]) if len(sys.argv) > 1 else 1000
    for worker_count in (1, 2):
        run(count, worker_count)
