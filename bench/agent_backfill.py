"""Full backfill of N hub orders into a SQLite replica: the ordersync agent against dlt.

    .venv/bin/python bench/agent_backfill.py                      # N = 1,000,000 for both tools
    .venv/bin/python bench/agent_backfill.py --orders 100000,1000000 --dlt-orders 100000
    .venv/bin/python bench/agent_backfill.py --orders 20000 --dlt-orders 0   # agent only

For each N: a hub database seeded through the real store (cached under bench/.cache/), the hub
started as its own process (`ordersync hub serve`), then each tool in its own process, timed
from spawn to exit, its peak RSS taken from the kernel (`wait4` rusage, plus /proc sampling).
API calls are counted inside the hub by a bench-only ASGI counter (see `_hub_worker`), so both
tools are counted the same way. After each run the replica is compared with the hub row by row
on (id, version): missing, extra, stale and duplicated records are reported.

dlt runs its own `rest_api` source the way its documentation configures it: Bearer auth, the
`updated_since` param bound to an incremental on `updated_at`, an offset paginator with
`total_path`, `data_selector: data`, merge on `id`, into dlt's `sqlalchemy` destination on a
SQLite file. It is a bench-only dependency: `pip install -r bench/requirements.txt`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import glob
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_DIR = BENCH_DIR / "results"
PAGE_SIZE = 100
ACCOUNT = "bench"
SEED_SCHEME = "v1"  # bump when the seeded data changes shape: cached hub files are keyed by it
SEED_BATCH = 1000
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00.000Z
DIALECTS = ("masonhub", "tradecloud", "hubrise")
IMPLEMENTED_DIALECTS = ("masonhub",)
TARGET_SPEEDUP = 10.0
TARGET_CALLS_FACTOR = 1.01
TARGET_RSS_MB = 200.0


# -- seeding -------------------------------------------------------------------------------


class SpreadClock:
    """The hub clock while seeding: a few ms between orders, a quarter of them tied."""

    def __init__(self, start_ms: int, seed: int = 42) -> None:
        self.now = start_ms
        self._rng = random.Random(seed)

    def __call__(self) -> int:
        stamp = self.now
        self.now += self._rng.choices((0, 1, 2, 3, 5), weights=(25, 25, 25, 15, 10))[0]
        return stamp


def seed_payload(i: int) -> dict[str, Any]:
    address = {
        "name": f"Customer {i}",
        "address1": f"{i % 997 + 1} Analytical Row",
        "city": "London",
        "state": "LND",
        "postal_code": "EC1A 1BB",
        "country": "GB",
    }
    return {
        "customer_identifier": f"BENCH-{i:08d}",
        "order_type": "customer",
        "priority": i % 5,
        "shipping_provider": "UPS",
        "shipper_service_level": "ground",
        "shipping_address": address,
        "billing_address": address,
        "submitted_at": "2024-01-01T10:30:00Z",
        "line_items": [
            {
                "sku_customer_identifier": f"SKU-{(i + k) % 500}",
                "quantity": str(1 + (i + k) % 4),
                "unit_price": f"{(i * 7 + k) % 10_000 / 100 + 1:.2f}",
            }
            for k in range(1 + i % 3)
        ],
    }


def hub_db_path(n: int, dialect: str) -> Path:
    return CACHE_DIR / f"hub-{dialect}-{SEED_SCHEME}-{n}.db"


async def _seed(path: Path, n: int) -> None:
    from ordersync.domain import NewOrder
    from ordersync.store.store import Store

    store = await Store.open(f"sqlite:///{path}")
    try:
        principal = await store.authenticate(await store.create_token(ACCOUNT, "seeder"))
        store.clock = SpreadClock(START_MS)
        started = time.monotonic()
        for first in range(0, n, SEED_BATCH):
            batch = [
                NewOrder.model_validate(seed_payload(i))
                for i in range(first, min(n, first + SEED_BATCH))
            ]
            results = await store.create_orders(principal, batch)
            refused = [r for r in results if not r.created]
            if refused:
                raise RuntimeError(f"seeding refused {len(refused)} orders: {refused[0].errors}")
            done = first + len(batch)
            if done % 50_000 == 0 or done == n:
                rate = done / (time.monotonic() - started)
                log(f"  seeded {done:,}/{n:,} orders ({rate:,.0f}/s)")
    finally:
        await store.close()


def ensure_hub_db(n: int, dialect: str) -> Path:
    """The cached hub database with `n` orders, seeded through `Store.create_orders` if absent."""
    path = hub_db_path(n, dialect)
    if path.exists():
        log(f"hub database {path.relative_to(BENCH_DIR.parent)} (cached)")
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    for leftover in glob.glob(f"{partial}*"):
        os.unlink(leftover)
    log(f"seeding {n:,} orders into {path.relative_to(BENCH_DIR.parent)} ...")
    asyncio.run(_seed(partial, n))
    with contextlib.closing(sqlite3.connect(partial)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    # The last connection closed: SQLite folded the WAL into the file, which now stands alone.
    os.replace(partial, path)
    return path


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)
