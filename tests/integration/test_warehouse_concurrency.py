"""Two hub processes allocating the same scarce stock on PostgreSQL never oversell, and never
process one order twice: orders are claimed FOR UPDATE SKIP LOCKED, SKUs locked in sku order."""

from __future__ import annotations

import asyncio
import multiprocessing
import random
from collections import Counter
from collections.abc import Iterator
from concurrent.futures import ProcessPoolExecutor
from decimal import Decimal
from typing import Any

import pytest
from sqlalchemy import func, select

from ordersync.domain import NewOrder, Order, OrderStatus
from ordersync.domain.inventory import StockUnit
from ordersync.hub.warehouse import WarehouseWorker
from ordersync.store.inventory import InventoryStore
from ordersync.store.store import Store
from ordersync.store.tables import changes, orders
from tests.support import fresh_pg_database, order_payload

SKUS = [f"SKU-{n}" for n in range(8)]
LOCATIONS = ["WH-A", "WH-B"]
UNITS_PER_ROW = 3  # 8 SKUs x 2 locations x 3 = 48 units for orders wanting about 400
ORDERS = 120


@pytest.fixture
def pg_hub_url(pg_admin_url: str, pg_hub_template: str) -> Iterator[str]:
    with fresh_pg_database(pg_admin_url, template=pg_hub_template) as url:
        yield url


def allocate_everything(db_url: str, token: str, seed: int, ready: Any) -> list[str]:
    """One hub process: allocate every order it can claim, in its own shuffled batches, until
    none is left waiting. The ids this process allocated."""

    async def main() -> list[str]:
        store = await Store.open(db_url, migrate=False)
        try:
            worker = WarehouseWorker(store, await store.authenticate(token))
            rng = random.Random(seed)
            mine: list[str] = []
            await worker.orders_in(OrderStatus.AT_WAREHOUSE)  # connected, warm
            await asyncio.to_thread(ready.wait)  # both processes begin together
            for _ in range(20):
                pending = [i for i, _ in await worker.orders_in(OrderStatus.AT_WAREHOUSE)]
                if not pending:
                    break
                rng.shuffle(pending)
                for first in range(0, len(pending), 7):
                    report = await worker.allocate(pending[first : first + 7])
                    mine.extend(report.allocated)
            return mine
        finally:
            await store.close()

    return asyncio.run(main())


async def test_two_hub_processes_never_oversell_nor_allocate_an_order_twice(
    pg_hub_url: str,
) -> None:
    """120 allow_splits orders, each wanting 1-5 units of 1-3 SKUs, against 48 units: after two
    processes raced over them, every stock row holds available + allocated = what it had,
    allocated equals what the orders' allocations say, each allocated order moved to
    inProcess exactly once, and the two processes allocated disjoint sets of orders."""
    store = await Store.open(pg_hub_url, migrate=False)
    try:
        token = await store.create_token("acme", "warehouse")
        principal = await store.authenticate(token)
        account = principal.account_id
        inventory = InventoryStore(store)
        await inventory.set_stock(
            None,
            account,
            [
                StockUnit(sku=sku, location=loc, available=UNITS_PER_ROW)
                for sku in SKUS
                for loc in LOCATIONS
            ],
        )
        rng = random.Random(15)
        drafts = [
            NewOrder.model_validate(
                order_payload(
                    f"RACE-{n:03d}",
                    priority=rng.randint(0, 5),
                    line_items=[
                        {
                            "sku_customer_identifier": sku,
                            "quantity": str(rng.randint(1, 5)),
                            "unit_price": "1",
                        }
                        for sku in rng.sample(SKUS, rng.randint(1, 3))
                    ],
                )
            )
            for n in range(ORDERS)
        ]
        created = await store.create_orders(principal, drafts)
        ids = [r.order.id for r in created if r.order is not None]
        await WarehouseWorker(store, principal).admit(ids)

        spawn = multiprocessing.get_context("spawn")
        with spawn.Manager() as manager, ProcessPoolExecutor(2, mp_context=spawn) as pool:
            ready = manager.Barrier(2, timeout=120)
            futures = [
                pool.submit(allocate_everything, pg_hub_url, token, seed, ready) for seed in (1, 2)
            ]
            first, second = (f.result(timeout=300) for f in futures)

        assert first and second, "both processes allocated orders"
        assert not set(first) & set(second)
        async with store.reader.connect() as conn:
            stock = await inventory.read_stock(conn, account, SKUS)
            docs = [
                Order.model_validate_json(r[0])
                for r in await conn.execute(
                    select(orders.c.doc).where(orders.c.account_id == account)
                )
            ]
            moves = Counter(
                str(r[0])
                for r in await conn.execute(
                    select(changes.c.entity_id).where(
                        changes.c.entity_kind == "order", changes.c.event_type == "order.inProcess"
                    )
                )
            )
            inventory_changes = await conn.scalar(
                select(func.count())
                .select_from(changes)
                .where(changes.c.entity_kind == "inventory")
            )
        reserved: Counter[tuple[str, str]] = Counter()
        for doc in docs:
            for group in doc.allocations:
                for line in group.lines:
                    reserved[(line.sku_customer_identifier, group.location)] += int(line.quantity)
        for unit in stock:
            assert unit.available + unit.allocated == UNITS_PER_ROW, unit
            assert unit.allocated == reserved[(unit.sku, unit.location)], unit
        in_process = {d.id for d in docs if d.status is OrderStatus.IN_PROCESS}
        assert in_process == set(first) | set(second)
        assert all(moves[i] == 1 for i in in_process) and sum(moves.values()) == len(in_process)
        assert sum(reserved.values()) == len(SKUS) * len(LOCATIONS) * UNITS_PER_ROW  # sold out
        assert inventory_changes and inventory_changes > len(SKUS)  # each allocation logged
        assert sum(Decimal(s.quantity) for d in docs for s in d.shorts) > 0
    finally:
        await store.close()
