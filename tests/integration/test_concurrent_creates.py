"""Batch creates under concurrency: overlapping identifiers from several clients and hub worker
processes at once are each created exactly once, every other copy is refused per item as a
duplicate, and no request fails (no 5xx, no reset connection, no deadlock)."""

from __future__ import annotations

import random
import threading
from collections import Counter
from collections.abc import Callable
from typing import Any

import httpx
import psycopg
import pytest

from ordersync.domain import NewOrder
from ordersync.store.store import Principal, Store
from tests.support import cli_token, fresh_pg_database, hub_process, order_payload

CLIENTS = 6
ROUNDS = 8
BATCH = 50
POOL = 90  # identifiers per round: six batches of 50 out of 90 overlap heavily


def duplicate_message(identifier: str) -> str:
    return f"an order with customer_identifier {identifier!r} already exists"


@pytest.mark.postgres
@pytest.mark.slow
def test_six_clients_posting_overlapping_batches_to_hub_workers(pg_admin_url: str) -> None:
    with fresh_pg_database(pg_admin_url) as db_url:
        token = cli_token(db_url)
        with hub_process(db_url, "--workers", "3") as base:
            answers, failures = _post_rounds(base, token)
        with psycopg.connect(db_url) as conn:
            stored = Counter(
                row[0] for row in conn.execute("SELECT customer_identifier FROM orders")
            )
            deadlocks = conn.execute(
                "SELECT deadlocks FROM pg_stat_database WHERE datname = current_database()"
            ).fetchone()

    assert failures == [], failures[:5]  # no connection reset, no timeout
    statuses = Counter(status for status, _, _ in answers)
    assert set(statuses) <= {201, 207, 422}, statuses
    assert len(answers) == CLIENTS * ROUNDS

    created: Counter[str] = Counter()
    sent: set[str] = set()
    for _, batch, body in answers:
        assert [item["customer_identifier"] for item in body["data"]] == batch  # request order
        for identifier, item in zip(batch, body["data"], strict=True):
            sent.add(identifier)
            if item["status"] == "created":
                created[identifier] += 1
                assert item["order"]["customer_identifier"] == identifier
            else:
                assert item["errors"] == [
                    {"field": "customer_identifier", "message": duplicate_message(identifier)}
                ]
    assert created == Counter(dict.fromkeys(sent, 1))  # each identifier created exactly once
    assert stored == created  # ... and stored exactly once
    assert deadlocks is not None and deadlocks[0] == 0


def _post_rounds(base: str, token: str) -> tuple[list[tuple[int, list[str], Any]], list[str]]:
    """Each round, every client posts a batch of 50 of the round's 90 identifiers, in its own
    random order (plus, for one client, a repeat within the batch), all clients released at
    once."""
    barrier = threading.Barrier(CLIENTS)
    answers: list[tuple[int, list[str], Any]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def client(n: int) -> None:
        rng = random.Random(n)
        with httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=30
        ) as http:
            for round_ in range(ROUNDS):
                pool = [f"R{round_}-C{i:03d}" for i in range(POOL)]
                batch = rng.sample(pool, BATCH)
                if n == 0:
                    batch[-1] = batch[0]  # a duplicate within the batch
                try:
                    barrier.wait(timeout=60)
                    response = http.post("/api/v1/orders", json=[order_payload(i) for i in batch])
                    answer = (response.status_code, batch, response.json())
                except (httpx.TransportError, threading.BrokenBarrierError, ValueError) as exc:
                    with lock:
                        failures.append(f"client {n} round {round_}: {exc!r}")
                    barrier.abort()  # the others stop waiting for this client
                    return
                with lock:
                    answers.append(answer)

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return answers, failures


async def test_duplicates_are_refused_per_item_in_request_order(
    store: Store, principal: Principal, new_order: Callable[..., NewOrder]
) -> None:
    (first,) = await store.create_orders(principal, [new_order("OLD-1")])
    assert first.created
    # Unsorted on purpose: rows are inserted sorted by identifier, results stay in this order.
    wanted = ["Z-9", "OLD-1", "A-1", "Z-9", "M-5", "A-1"]
    results = await store.create_orders(principal, [new_order(i) for i in wanted])

    assert [r.customer_identifier for r in results] == wanted
    assert [r.created for r in results] == [True, False, True, False, True, False]
    for result in results:
        if not result.created:
            assert result.errors == [
                ("customer_identifier", duplicate_message(result.customer_identifier))
            ]
    stored = await store.list_orders(principal.account_id, _all())
    assert sorted(doc_id(d) for d in stored.items) == sorted(
        [first.order.id if first.order else ""]
        + [r.order.id for r in results if r.order is not None]
    )
    assert stored.total == 4


async def test_concurrent_batches_on_one_store_never_fail(
    store: Store, principal: Principal, new_order: Callable[..., NewOrder]
) -> None:
    """Many concurrent tasks on one process's pool (both backends): every batch is answered,
    each identifier created once."""
    import asyncio

    rng = random.Random(7)
    pool = [f"T-{i:03d}" for i in range(60)]
    batches = [rng.sample(pool, 40) for _ in range(12)]
    all_results = await asyncio.gather(
        *(store.create_orders(principal, [new_order(i) for i in batch]) for batch in batches)
    )
    created = Counter(r.customer_identifier for rs in all_results for r in rs if r.created)
    assert created == Counter(dict.fromkeys({i for b in batches for i in b}, 1))


def _all() -> Any:
    from ordersync.store.store import ListQuery

    return ListQuery(limit=100)


def doc_id(doc: str) -> str:
    import orjson

    return str(orjson.loads(doc)["id"])
