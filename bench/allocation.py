"""Allocations per second: N orders (default 10,000) over 1,000 SKUs in 5 locations, through the
warehouse worker's `allocate` step (claim FOR UPDATE SKIP LOCKED, lock the SKUs, allocate, write
stock + orders + event-log rows in one transaction per batch), on SQLite and PostgreSQL.

    ORDERSYNC_TEST_PG=postgresql://postgres@127.0.0.1:5432/test \
        PYTHONPATH=src:. python bench/allocation.py [--orders N] [--batch B]
        [--backend sqlite|postgresql|both] [--pg-workers 1,2] [--no-save]

Prints, per backend (and PostgreSQL worker count): orders decided per second (allocated,
waiting or failed: each is one allocation decision written or, for a wait, looked at), the
outcome counts, shipments planned and short units; and the in-memory floor (the pure
`domain.allocation.allocate` over the same orders and stock, no database). Saves
`bench/results/allocation-<UTC>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import random
import tempfile
import time
from datetime import UTC, datetime
from pathlib import Path
from typing import Any

from tests.support import fresh_pg_database, order_payload

from ordersync.domain import NewOrder, Order
from ordersync.domain.allocation import Allocated, allocate, demand_from_order
from ordersync.domain.inventory import Stock, StockUnit
from ordersync.hub.warehouse import WarehouseWorker
from ordersync.store.inventory import InventoryStore
from ordersync.store.store import Store

ADMIN = os.environ.get("ORDERSYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
SKUS = [f"SKU-{n:04d}" for n in range(1000)]
LOCATIONS = ["WH-1", "WH-2", "WH-3", "WH-4", "WH-5"]
POLICIES = ["allow_splits", "allow_splits", "minimize_splits", "single_shipment"]
RESULTS = Path(__file__).parent / "results"


def stock_units(seed: int) -> list[StockUnit]:
    """Each SKU in 2-5 locations, 0-12 units each: ~24,000 units for ~30,000 wanted, so that
    most orders ship, many split and some come up short."""
    rng = random.Random(seed)
    return [
        StockUnit(sku=sku, location=loc, available=rng.randint(0, 12))
        for sku in SKUS
        for loc in rng.sample(LOCATIONS, rng.randint(2, 5))
    ]


def drafts(n: int, seed: int) -> list[NewOrder]:
    rng = random.Random(seed + 1)
    return [
        NewOrder.model_validate(
            order_payload(
                f"BENCH-{i:06d}",
                priority=rng.choice([0, 0, 0, 1, 5]),
                order_policy=rng.choice(POLICIES),
                line_items=[
                    {
                        "sku_customer_identifier": sku,
                        "quantity": str(rng.randint(1, 3)),
                        "unit_price": "1.00",
                    }
                    for sku in rng.sample(SKUS, rng.randint(1, 3))
                ],
            )
        )
        for i in range(n)
    ]


async def prepare(url: str, n: int, seed: int) -> tuple[str, list[str]]:
    """Stock, N orders created and admitted (atWarehouse). The token and the order ids."""
    store = await Store.open(url)
    try:
        token = await store.create_token("bench", "warehouse")
        principal = await store.authenticate(token)
        await InventoryStore(store).set_stock(None, principal.account_id, stock_units(seed))
        ids: list[str] = []
        orders = drafts(n, seed)
        for first in range(0, n, 1000):
            created = await store.create_orders(principal, orders[first : first + 1000])
            ids += [r.order.id for r in created if r.order is not None]
        worker = WarehouseWorker(store, principal)
        for first in range(0, len(ids), 500):
            await worker.admit(ids[first : first + 500])
        return token, ids
    finally:
        await store.close()


async def run_workers(
    url: str, token: str, ids: list[str], workers: int, batch: int
) -> dict[str, Any]:
    """`workers` workers, each with its own engine, over interleaved slices of the ids."""
    stores = [await Store.open(url, migrate=False) for _ in range(workers)]
    try:
        counts = {"allocated": 0, "waiting": 0, "failed": 0}

        async def work(store: Store, mine: list[str]) -> None:
            worker = WarehouseWorker(store, await store.authenticate(token))
            for first in range(0, len(mine), batch):
                report = await worker.allocate(mine[first : first + batch])
                counts["allocated"] += len(report.allocated)
                counts["waiting"] += len(report.waiting)
                counts["failed"] += len(report.failed)

        # Contiguous batches dealt round-robin: every worker sees every priority and SKU.
        slices: list[list[str]] = [[] for _ in range(workers)]
        for k, first in enumerate(range(0, len(ids), batch)):
            slices[k % workers] += ids[first : first + batch]
        started = time.perf_counter()
        await asyncio.gather(*(work(s, part) for s, part in zip(stores, slices, strict=True)))
        seconds = time.perf_counter() - started
        decided = sum(counts.values())
        summary = await outcome_summary(stores[0])
        return {
            "workers": workers,
            "seconds": seconds,
            "decided": decided,
            **counts,
            **summary,
            "per_second": decided / seconds,
        }
    finally:
        for store in stores:
            await store.close()


async def outcome_summary(store: Store) -> dict[str, int]:
    from sqlalchemy import select

    from ordersync.store.tables import orders

    async with store.reader.connect() as conn:
        docs = [Order.model_validate_json(r[0]) for r in await conn.execute(select(orders.c.doc))]
    return {
        "shipments_planned": sum(len(d.allocations) for d in docs),
        "split_orders": sum(1 for d in docs if len(d.allocations) > 1),
        "short_units": sum(int(s.quantity) for d in docs for s in d.shorts),
    }


def floor(n: int, seed: int) -> dict[str, Any]:
    """The pure allocation over the same orders and stock, in memory, in one run."""
    orders = [
        Order(**d.model_dump(), id=f"o-{i}", created_at=d.submitted_at, updated_at=d.submitted_at)
        for i, d in enumerate(drafts(n, seed))
    ]
    demands = [demand_from_order(o) for o in orders]
    stock = Stock.of(stock_units(seed))
    started = time.perf_counter()
    run = allocate(demands, stock)
    seconds = time.perf_counter() - started
    allocated = sum(1 for o in run.outcomes if isinstance(o, Allocated))
    return {"seconds": seconds, "allocated": allocated, "per_second": n / seconds}


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--orders", type=int, default=10_000)
    parser.add_argument("--batch", type=int, default=100)
    parser.add_argument("--backend", default="both", choices=["sqlite", "postgresql", "both"])
    parser.add_argument("--pg-workers", default="1,2")
    parser.add_argument("--seed", type=int, default=15)
    parser.add_argument("--no-save", action="store_true")
    args = parser.parse_args()
    rows: list[dict[str, Any]] = []
    memory = floor(args.orders, args.seed)
    print(f"in-memory floor: {memory['per_second']:,.0f} orders/s ({memory['seconds']:.2f} s)")
    if args.backend in ("sqlite", "both"):
        with tempfile.TemporaryDirectory() as tmp:
            url = f"sqlite:///{tmp}/hub.db"
            token, ids = asyncio.run(prepare(url, args.orders, args.seed))
            rows.append(
                {"backend": "sqlite"} | asyncio.run(run_workers(url, token, ids, 1, args.batch))
            )
    if args.backend in ("postgresql", "both"):
        for workers in (int(w) for w in args.pg_workers.split(",")):
            with fresh_pg_database(ADMIN) as url:
                token, ids = asyncio.run(prepare(url, args.orders, args.seed))
                rows.append(
                    {"backend": "postgresql"}
                    | asyncio.run(run_workers(url, token, ids, workers, args.batch))
                )
    print(
        f"{'backend':<11} {'workers':>7} {'orders':>7} {'seconds':>8} {'orders/s':>9} "
        f"{'allocated':>9} {'waiting':>7} {'failed':>6} {'shipments':>9} {'splits':>6} {'short':>6}"
    )
    for r in rows:
        print(
            f"{r['backend']:<11} {r['workers']:>7} {r['decided']:>7} {r['seconds']:>8.2f} "
            f"{r['per_second']:>9,.0f} {r['allocated']:>9} {r['waiting']:>7} {r['failed']:>6} "
            f"{r['shipments_planned']:>9} {r['split_orders']:>6} {r['short_units']:>6}"
        )
    if not args.no_save:
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
        out = RESULTS / f"allocation-{stamp}.json"
        out.write_text(json.dumps({"args": vars(args), "floor": memory, "runs": rows}, indent=2))
        print(f"saved {out}")


if __name__ == "__main__":
    main()
