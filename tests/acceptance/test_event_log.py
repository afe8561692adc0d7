"""The event log under load (issue 12): two `hub serve` processes on one PostgreSQL database,
their clocks 50 ms apart, 8 concurrent writers creating and moving orders through the HTTP
API on both, while one client follows the event log and another the MasonHub
`(updated_at, id)` keyset. At the end, the event-log follower has seen every committed version
exactly once, and each order's `updated_at` strictly increases from version to version."""

from __future__ import annotations

import asyncio
import collections
import contextlib
import itertools
import random
import time
from collections.abc import Iterator
from typing import Any

import httpx
import psycopg
import pytest

from ordersync.domain import parse_rfc3339_ms
from tests.support import cli_token, fresh_pg_database, hub_process, order_payload

pytestmark = [pytest.mark.postgres, pytest.mark.slow]

WRITERS = 8
ROUNDS = 6  # per writer: one create of 3 orders, then moves of earlier orders
MOVES = ["received", "in_preparation", "awaiting_shipment", "in_delivery", "completed"]
SKEW_MS = 50


@contextlib.contextmanager
def two_skewed_hubs(db: str, monkeypatch: pytest.MonkeyPatch) -> Iterator[tuple[str, str]]:
    with contextlib.ExitStack() as stack:
        bases = []
        for skew in (0, SKEW_MS):
            monkeypatch.setenv("ORDERSYNC_HUB_CLOCK_SKEW_MS", str(skew))
            bases.append(stack.enter_context(hub_process(db, "--quota", "/v1/@all=off")))
        monkeypatch.delenv("ORDERSYNC_HUB_CLOCK_SKEW_MS")
        yield bases[0], bases[1]


VISIBLE_AFTER_MS: list[float] = []


def test_the_event_log_follower_sees_every_committed_version_once_across_skewed_hubs(
    pg_admin_url: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    with fresh_pg_database(pg_admin_url) as db:
        token = cli_token(db)  # migrates the database
        with two_skewed_hubs(db, monkeypatch) as hubs:
            seen, keyset_seen, stats = asyncio.run(_run(hubs, token, db))
        committed = _committed_versions(db)

    counts = collections.Counter(seen)
    duplicates = {key: n for key, n in counts.items() if n > 1}
    missed = set(committed) - set(counts)
    lags = sorted(VISIBLE_AFTER_MS)
    print(
        f"\nversions committed {len(committed)}, event log follower saw {len(seen)} "
        f"(missed {len(missed)}, duplicates {len(duplicates)}); keyset follower saw "
        f"{len(set(keyset_seen))} distinct; writes {stats}; seen by the event log follower "
        f"after its stamp: p50 {lags[len(lags) // 2]:.0f} ms, p99 "
        f"{lags[len(lags) * 99 // 100]:.0f} ms, max {lags[-1]:.0f} ms (one hub 50 ms ahead)"
    )
    assert stats["ok"] > WRITERS * ROUNDS  # the load really ran
    assert missed == set() and duplicates == {}
    assert set(counts) == set(committed)  # nothing that was never committed

    # Per-order time strictly increases across versions, whichever hub wrote each one.
    by_entity: dict[str, list[tuple[int, int]]] = collections.defaultdict(list)
    for (entity_id, version), stamp in committed.items():
        by_entity[entity_id].append((version, stamp))
    multi = 0
    for versions in by_entity.values():
        versions.sort()
        stamps = [stamp for _, stamp in versions]
        assert all(a < b for a, b in itertools.pairwise(stamps)), versions
        multi += len(versions) > 1
    assert multi >= WRITERS  # many orders had several versions, written on both hubs


def _last_event_id(db: str) -> int:
    with psycopg.connect(db) as conn:
        row = conn.execute("SELECT coalesce(max(event_id), 0) FROM changes").fetchone()
    return int(row[0]) if row else 0


def _committed_versions(db: str) -> dict[tuple[str, int], int]:
    """(order id, version) -> updated_at of every committed version, from the change feed."""
    with psycopg.connect(db) as conn:
        rows = conn.execute(
            "SELECT entity_id, version, created_at FROM changes WHERE entity_kind = 'order'"
        ).fetchall()
    return {(str(r[0]), int(r[1])): int(r[2]) for r in rows}


async def _run(
    hubs: tuple[str, str], token: str, db: str
) -> tuple[list[Any], list[Any], dict[str, int]]:
    headers = {"Authorization": f"Bearer {token}"}
    limits = httpx.Limits(max_connections=40)
    async with httpx.AsyncClient(headers=headers, timeout=30, limits=limits) as http:
        done = asyncio.Event()
        stats: collections.Counter[str] = collections.Counter()
        writers = [
            asyncio.ensure_future(_writer(http, hubs, token, n, stats)) for n in range(WRITERS)
        ]
        event_follower = asyncio.ensure_future(_follow_events(http, hubs, done, db))
        keyset_follower = asyncio.ensure_future(_follow_keyset(http, hubs, done))
        await asyncio.gather(*writers)
        done.set()
        seen = await event_follower
        keyset_seen = await keyset_follower
    return seen, keyset_seen, dict(stats)


async def _writer(
    http: httpx.AsyncClient,
    hubs: tuple[str, str],
    token: str,
    n: int,
    stats: collections.Counter[str],
) -> None:
    rng = random.Random(n)
    mine: list[list[Any]] = []  # [order id, index of its next move]
    for round_ in range(ROUNDS):
        base = hubs[(n + round_) % 2]
        body = [order_payload(f"W{n}-{round_}-{i}") for i in range(3)]
        response = await http.post(f"{base}/api/v1/orders", json=body)
        assert response.status_code == 201, response.text
        stats["ok"] += 1
        mine += [[item["id"], 0] for item in response.json()["data"]]
        for _ in range(4):
            movable = [m for m in mine if m[1] < len(MOVES)]
            if not movable:
                break
            order = rng.choice(movable)
            base = hubs[rng.randrange(2)]  # successive versions land on either hub
            response = await http.patch(
                f"{base}/v1/location/orders/{order[0]}",
                json={"status": MOVES[order[1]]},
                headers={"X-Access-Token": token},
            )
            assert response.status_code == 200, response.text
            order[1] += 1
            stats["ok"] += 1


async def _follow_events(
    http: httpx.AsyncClient, hubs: tuple[str, str], done: asyncio.Event, db: str
) -> list[tuple[str, int]]:
    """Follow GET /api/v1/events, alternating hubs, until the writers are done and the
    follower has passed the last event they committed. (The log serves an event once every
    older transaction of the cluster has ended: another test's open transaction may hold the
    last ones back for a moment, never for good.)"""
    seen: list[tuple[str, int]] = []
    after, turn = 0, 0
    last: int | None = None
    deadline = time.monotonic() + 120
    while True:
        if last is None and done.is_set():
            last = await asyncio.to_thread(_last_event_id, db)
        response = await http.get(
            f"{hubs[turn % 2]}/api/v1/events", params={"after": after, "limit": 100}
        )
        turn += 1
        assert response.status_code == 200, response.text
        page = response.json()
        for event in page["data"]:
            assert event["event_id"] > after
            if event["entity"] is not None:
                assert event["entity"]["version"] == event["version"]
                assert event["entity"]["event_id"] == event["event_id"]
            if event["kind"] == "order":
                seen.append((event["entity_id"], event["version"]))
                # How long after its stamp the follower got it (a figure, not an assertion).
                VISIBLE_AFTER_MS.append(time.time() * 1000 - parse_rfc3339_ms(event["created_at"]))
        after = page["next_after"]
        if last is not None and after >= last:
            return seen
        assert time.monotonic() < deadline, f"the log never passed event {last}: at {after}"
        if not page["data"]:
            await asyncio.sleep(0.02)


async def _follow_keyset(
    http: httpx.AsyncClient, hubs: tuple[str, str], done: asyncio.Event
) -> list[tuple[str, int]]:
    """The MasonHub keyset walk (`updated_since` + `after_id`), alternating hubs, as load and
    as a check that the extension fields do not disturb it."""
    seen: list[tuple[str, int]] = []
    since, after_id, turn = "2000-01-01T00:00:00.000Z", None, 0
    while not done.is_set():
        params: dict[str, Any] = {"updated_since": since, "limit": 100}
        if after_id is not None:
            params["after_id"] = after_id
        response = await http.get(f"{hubs[turn % 2]}/api/v1/orders", params=params)
        turn += 1
        assert response.status_code == 200, response.text
        assert response.headers["X-Ordersync-Events"] == "/api/v1/events"
        data = response.json()["data"]
        for doc in data:
            assert isinstance(doc["event_id"], int)
            seen.append((doc["id"], doc["version"]))
        if data:
            since, after_id = data[-1]["updated_at"], data[-1]["id"]
        else:
            await asyncio.sleep(0.02)
    return seen
