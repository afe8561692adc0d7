"""Listing totals from count buckets and deltas: exact whatever compaction, pruning, crashes and
concurrency did, and writers of one account never wait on each other's counters.

Run on SQLite and PostgreSQL (the `store` / `hub_db_url` fixtures). Clocks are injected: the
writers' clock and each compactor's clock are chosen by the test.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, select, text

from ordersync.domain import CANCELABLE, NewOrder, NewShipment, Order, OrderStatus, ShipmentStatus
from ordersync.store import counts
from ordersync.store.counts import DAY, HOUR, MINUTE, SECOND, CountCompactor, compact
from ordersync.store.store import ListQuery, Principal, Store
from ordersync.store.tables import (
    orders,
    shipments,
    update_count_deltas,
    update_count_state,
    update_counts,
)

NewOrderFactory = Callable[..., NewOrder]
EPOCH = 1_704_067_200_000  # a Monday, 00:00 UTC
HAPPY_PATH = [
    OrderStatus.OPEN,
    OrderStatus.AT_WAREHOUSE,
    OrderStatus.IN_PROCESS,
    OrderStatus.PACKED,
    OrderStatus.FULFILLED,
    OrderStatus.DELIVERED,
]
STATUS_FILTERS: list[tuple[str, ...]] = [
    (),
    ("open",),
    ("canceled", "delivered"),
    ("atWarehouse", "packed", "inProcess"),
]


class Clock:
    def __init__(self, now: int = EPOCH) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


async def fetch(store: Store, statement: Any) -> list[Any]:
    async with store.reader.connect() as conn:
        return list((await conn.execute(statement)).all())


async def truth(store: Store, table: Any = orders) -> list[Any]:
    return await fetch(store, select(table.c.status, table.c.updated_at))


def brute_count(rows: list[Any], since: int | None, statuses: tuple[str, ...]) -> int:
    return sum(
        1
        for r in rows
        if (since is None or r.updated_at >= since) and (not statuses or r.status in statuses)
    )


async def assert_totals_exact(
    store: Store, principal: Principal, probes: list[int | None], kind: str = "order"
) -> None:
    table = orders if kind == "order" else shipments
    rows = await truth(store, table)
    listing = store.list_orders if kind == "order" else store.list_shipments
    for since in probes:
        for statuses in STATUS_FILTERS if kind == "order" else [()]:
            page = await listing(
                principal.account_id, ListQuery(since=since, statuses=statuses, limit=1)
            )
            assert page.total == brute_count(rows, since, statuses), (since, statuses)


def next_status(status: OrderStatus, rng: random.Random) -> OrderStatus | None:
    if status in (OrderStatus.CANCELED, OrderStatus.DELIVERED):
        return None
    if status in CANCELABLE and rng.random() < 0.15:
        return OrderStatus.CANCELED
    return HAPPY_PATH[HAPPY_PATH.index(status) + 1]


def probes_for(stamps: list[int], rng: random.Random, lo: int, hi: int) -> list[int | None]:
    near = [s + d for s in rng.sample(stamps, min(15, len(stamps))) for d in (-1, 0, 1)]
    edges = [
        s // span * span + d
        for s in rng.sample(stamps, min(5, len(stamps)))
        for span in (SECOND, MINUTE, HOUR)
        for d in (-1, 0, 1)
    ]
    anywhere = [rng.randrange(lo - HOUR, hi + HOUR) for _ in range(8)]
    return [None, 0, *sorted(set(near + rng.sample(edges, 8) + anywhere))]


# -- exactness under compaction and pruning --------------------------------------------------


@pytest.mark.parametrize("seed", [1, 2, 3])
async def test_totals_equal_a_plain_count_through_compaction_and_pruning(
    store: Store, principal: Principal, new_order: NewOrderFactory, seed: int
) -> None:
    """Random creates and moves over ~5 hours, compacted at random points with the horizon
    moving on: for any `since` (inside the second horizon, before it, on bucket edges) and any
    status filter, `total` equals a plain count."""
    rng = random.Random(seed)
    clock = Clock(EPOCH + rng.randrange(DAY))
    store.clock = clock
    start = clock.now
    live: list[Order] = []
    stamps: list[int] = []
    for step in range(160):
        clock.now += rng.choice([0, 0, 1, 999, 1_000, 1_001, 30_000, MINUTE, 7 * MINUTE])
        if not live or rng.random() < 0.45:
            batch = [new_order(f"C-{seed}-{step}-{k}") for k in range(rng.randint(1, 3))]
            created = await store.create_orders(principal, batch)
            live += [r.order for r in created if r.order is not None]
        else:
            # Often an old order: its move decrements a bucket that may be past the horizon.
            order = rng.choice(live[: max(1, len(live) // 3)] if rng.random() < 0.5 else live)
            target = next_status(order.status, rng)
            if target is None:
                continue
            moved = await store.transition_order(principal, principal.account_id, order.id, target)
            live[live.index(order)] = moved
        stamps.append(clock.now)
        if rng.random() < 0.12:
            # The compactor's clock: usually the writers', sometimes far ahead or behind.
            skew = rng.choice([0, 0, -2 * HOUR, 30 * MINUTE, 3 * HOUR])
            await compact(store.writer, clock.now + skew, batch=rng.choice([1, 3, 1000]))
        if rng.random() < 0.08:
            await assert_totals_exact(store, principal, probes_for(stamps, rng, start, clock.now))
    horizon = await seconds_from(store)
    assert horizon > start // SECOND, "the test must prune second buckets"
    await assert_totals_exact(store, principal, probes_for(stamps, rng, start, clock.now))
    await CountCompactor(store.writer, clock).run_once()
    assert await delta_rows(store) == 0
    await assert_totals_exact(store, principal, probes_for(stamps, rng, start, clock.now))
    old = [s for s in stamps if s < horizon * SECOND]
    assert old, "some `since` probes must be older than the horizon"


async def seconds_from(store: Store) -> int:
    [row] = await fetch(store, select(update_count_state.c.seconds_from))
    return int(row[0])


async def delta_rows(store: Store) -> int:
    [row] = await fetch(store, select(func.count()).select_from(update_count_deltas))
    return int(row[0])


async def test_second_buckets_are_pruned_and_zero_buckets_deleted(
    store: Store, principal: Principal, new_order: NewOrderFactory
) -> None:
    """A day of writes, one a minute, every order moved on: after compaction only the last
    hour's second buckets remain and no bucket holds zero; totals stay exact."""
    clock = Clock()
    store.clock = clock
    for i in range(0, 24 * 60, 10):
        clock.now = EPOCH + i * MINUTE
        [made] = await store.create_orders(principal, [new_order(f"C-{i}")])
        assert made.order is not None
        clock.now += 5 * SECOND
        await store.transition_order(
            principal, principal.account_id, made.order.id, OrderStatus.AT_WAREHOUSE
        )
    await CountCompactor(store.writer, clock).run_once()
    seconds = await fetch(
        store, select(update_counts.c.bucket).where(update_counts.c.span == SECOND)
    )
    assert seconds and min(r.bucket for r in seconds) >= (clock.now - HOUR - MINUTE) // SECOND
    zero = await fetch(store, select(update_counts).where(update_counts.c.n == 0))
    assert zero == []
    opened = await fetch(
        store, select(update_counts).where(update_counts.c.status == OrderStatus.OPEN)
    )
    assert opened == [], "every order moved on: no bucket of `open` is left"
    await assert_totals_exact(
        store, principal, [None, EPOCH, EPOCH + 5 * HOUR + 1, clock.now - 3, clock.now]
    )


async def test_shipment_totals_are_exact_after_compaction(
    store: Store, principal: Principal, new_order: NewOrderFactory
) -> None:
    clock = Clock()
    store.clock = clock
    [made] = await store.create_orders(principal, [new_order("C-1")])
    assert made.order is not None
    ids = []
    for k in range(6):
        clock.now += 17 * MINUTE + k
        new = NewShipment.model_validate(
            {
                "order_id": made.order.id,
                "carrier": "UPS",
                "service_level": "ground",
                "tracking_number": f"1Z{k}",
                "lines": [{"line_number": 1, "sku_customer_identifier": "SKU-1", "quantity": "1"}],
            }
        )
        ids.append((await store.create_shipment(principal, principal.account_id, new)).id)
        await compact(store.writer, clock.now)
    clock.now += 2 * HOUR
    await store.transition_shipment(
        principal, principal.account_id, ids[0], ShipmentStatus.IN_TRANSIT
    )
    await compact(store.writer, clock.now)
    stamps = [EPOCH + 17 * MINUTE * k for k in range(8)]
    await assert_totals_exact(store, principal, [None, *stamps], kind="shipment")


# -- crash safety ------------------------------------------------------------------------------


class Boom(RuntimeError):
    pass


@pytest.mark.parametrize("where", ["_advance_horizon", "_fold"])
async def test_a_compaction_that_dies_changes_no_total(
    store: Store,
    principal: Principal,
    new_order: NewOrderFactory,
    monkeypatch: pytest.MonkeyPatch,
    where: str,
) -> None:
    """A compactor killed after pruning or after folding (before its commit) leaves every
    delta and bucket as it was; the next compaction folds them."""
    clock = Clock()
    store.clock = clock
    await store.create_orders(principal, [new_order("C-0")])
    await compact(store.writer, clock.now)
    for i in range(1, 8):
        clock.now += 25 * MINUTE
        await store.create_orders(principal, [new_order(f"C-{i}")])
    buckets_before = await fetch(store, select(update_counts).order_by(*update_counts.c))
    deltas_before = await delta_rows(store)
    real = getattr(counts, where)

    async def then_die(*args: Any) -> Any:
        await real(*args)
        raise Boom(f"killed after {where}")

    monkeypatch.setattr(counts, where, then_die)
    with pytest.raises(Boom):
        await compact(store.writer, clock.now + 3 * HOUR)
    assert await fetch(store, select(update_counts).order_by(*update_counts.c)) == buckets_before
    assert await delta_rows(store) == deltas_before
    probes: list[int | None] = [None, EPOCH + 1, EPOCH + 30 * MINUTE, clock.now]
    await assert_totals_exact(store, principal, probes)
    monkeypatch.setattr(counts, where, real)
    await compact(store.writer, clock.now + 3 * HOUR)
    assert await delta_rows(store) == 0
    await assert_totals_exact(store, principal, probes)


# -- concurrency -------------------------------------------------------------------------------


async def test_two_compactors_racing_with_writers_keep_totals_exact(
    hub_db_url: str, new_order: NewOrderFactory
) -> None:
    """Two hub workers' compactors (clocks two hours apart) fold while four writers create
    and move orders and a reader checks totals: every total read equals a plain count taken
    in the same snapshot, and so does the final one."""
    writer_store = await Store.open(hub_db_url)
    other = await Store.open(hub_db_url, migrate=False)
    try:
        clock = Clock()
        writer_store.clock = clock
        principal = await writer_store.authenticate(await writer_store.create_token("acme", "erp"))
        compactors = [
            CountCompactor(writer_store.writer, lambda: clock.now + 2 * HOUR, interval=0),
            CountCompactor(other.writer, clock, interval=0),
        ]
        stop = asyncio.Event()

        async def writer(w: int) -> None:
            rng = random.Random(w)
            mine: list[Order] = []
            for i in range(25):
                clock.now += rng.choice([0, 1, 1_000, 40_000, 20 * MINUTE])
                if not mine or rng.random() < 0.5:
                    [r] = await writer_store.create_orders(principal, [new_order(f"W{w}-{i}")])
                    assert r.order is not None
                    mine.append(r.order)
                else:
                    k = rng.randrange(len(mine))
                    target = next_status(mine[k].status, rng)
                    if target is not None:
                        mine[k] = await writer_store.transition_order(
                            principal, principal.account_id, mine[k].id, target
                        )

        async def compactor(c: CountCompactor) -> None:
            while not stop.is_set():
                await c.run_once()
                await asyncio.sleep(0)

        async def reader() -> int:
            checks = 0
            while not stop.is_set():
                since = clock.now - random.choice([0, 3_000, 30 * MINUTE, 3 * HOUR])
                checks += await consistent_total(other, principal.account_id, since)
                await asyncio.sleep(0)
            return checks

        racing = [asyncio.create_task(compactor(c)) for c in compactors]
        checking = asyncio.create_task(reader())
        await asyncio.gather(*(writer(w) for w in range(4)))
        stop.set()
        await asyncio.gather(*racing)
        assert await checking > 0
        await compactors[1].run_once()
        assert await delta_rows(writer_store) == 0
        stamps = [r.updated_at for r in await truth(writer_store)]
        await assert_totals_exact(
            writer_store, principal, probes_for(stamps, random.Random(0), EPOCH, clock.now)
        )
    finally:
        await other.close()
        await writer_store.close()


async def consistent_total(store: Store, account_id: int, since: int) -> int:
    """Compare the listing's total statement and a plain count in one snapshot (PostgreSQL:
    REPEATABLE READ; SQLite: one read transaction). 1 when compared."""
    from ordersync.store.store import _list_params, _list_statements

    statements = _list_statements(orders, "order", True, False, True, False)
    params = _list_params(account_id, ListQuery(since=since))
    plain = (
        select(func.count())
        .select_from(orders)
        .where(orders.c.account_id == account_id, orders.c.updated_at >= since)
    )
    async with store.reader.connect() as conn:
        if conn.dialect.name == "postgresql":
            await conn.execution_options(isolation_level="REPEATABLE READ")
        async with conn.begin():
            total = await conn.scalar(statements.total, params)
            expected = await conn.scalar(plain)
    assert int(total) == int(expected), since
    return 1


async def test_writers_of_one_account_do_not_wait_on_each_others_counters(
    pg_hub_db: str, new_order: NewOrderFactory, monkeypatch: pytest.MonkeyPatch
) -> None:
    """PostgreSQL: while one create in an account holds its transaction open after writing its
    counts, another create in the same account at the same millisecond commits (before: it
    queued on the shared bucket rows until the first committed)."""
    store = await Store.open(pg_hub_db)
    try:
        store.clock = Clock()
        principal = await store.authenticate(await store.create_token("acme", "erp"))
        holding, release = asyncio.Event(), asyncio.Event()
        apply = counts.CountDeltas.apply
        calls = 0

        async def first_one_holds(self: counts.CountDeltas, conn: Any) -> None:
            nonlocal calls
            calls += 1
            await apply(self, conn)
            if calls == 1:
                holding.set()
                await release.wait()

        monkeypatch.setattr(counts.CountDeltas, "apply", first_one_holds)
        first = asyncio.create_task(store.create_orders(principal, [new_order("A")]))
        await holding.wait()
        try:
            # Generous: this only fails when the second create waits for the first one.
            [second] = await asyncio.wait_for(
                store.create_orders(principal, [new_order("B")]), timeout=60
            )
        finally:
            release.set()
        assert second.created
        assert (await first)[0].created
        page = await store.list_orders(principal.account_id, ListQuery(since=0))
        assert page.total == 2
    finally:
        await store.close()


@pytest.fixture
def pg_hub_db(pg_admin_url: str, pg_hub_template: str) -> Any:
    from tests.support import fresh_pg_database

    with fresh_pg_database(pg_admin_url, template=pg_hub_template) as url:
        yield url


# -- migration ---------------------------------------------------------------------------------


async def test_0005_keeps_existing_counts_and_matches_the_tables(hub_db_url: str) -> None:
    """A database written by the 0004 layout (bucket rows, zero rows included) upgrades to
    head with every total unchanged, and its schema is what `tables.py` declares."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from ordersync.store.engine import parse_database_url
    from ordersync.store.migrate import upgrade
    from ordersync.store.tables import metadata

    url = parse_database_url(hub_db_url)
    if url.backend == "postgresql":  # the fixture's database is already at head: start over
        sync = create_engine(url.sync_url)
        with sync.begin() as conn:
            conn.execute(text("DROP SCHEMA public CASCADE"))
            conn.execute(text("CREATE SCHEMA public"))
        sync.dispose()
    await upgrade(url, "0004")
    rng = random.Random(5)
    stamps = sorted(EPOCH + rng.randrange(3 * DAY) for _ in range(120))
    sync = create_engine(url.sync_url)
    with sync.begin() as conn:
        conn.execute(text("INSERT INTO accounts (id, name, created_at) VALUES (1, 'acme', 0)"))
        rows = []
        for i, at in enumerate(stamps):
            status = rng.choice(["open", "packed", "delivered"])
            rows.append({"id": f"o-{i:04d}", "st": status, "at": at})
        conn.execute(
            text(
                "INSERT INTO orders (id, account_id, customer_identifier, status, version, "
                "created_at, updated_at, doc) VALUES (:id, 1, :id, :st, 1, :at, :at, '{}')"
            ),
            rows,
        )
        # What 0004's write path leaves: every span from the rows, plus zero rows of moves.
        for span in counts.SPANS:
            conn.execute(
                text(
                    "INSERT INTO update_counts (account_id, entity_kind, status, span, bucket, n) "
                    f"SELECT account_id, 'order', status, {span}, updated_at / {span}, count(*) "
                    f"FROM orders GROUP BY account_id, status, updated_at / {span}"
                )
            )
            conn.execute(
                text(
                    "INSERT INTO update_counts (account_id, entity_kind, status, span, bucket, n) "
                    f"VALUES (1, 'order', 'inProcess', {span}, {EPOCH // span}, 0)"
                )
            )
    await upgrade(url)
    with sync.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
        zero = conn.scalar(text("SELECT count(*) FROM update_counts WHERE n = 0"))
    sync.dispose()
    assert [d for d in diffs if "update_count" in repr(d)] == []
    assert zero == 0
    store = await Store.open(hub_db_url, migrate=False)
    try:
        principal = Principal(0, "erp", 1, "acme")
        probes: list[int | None] = [None, *(s + d for s in stamps[::7] for d in (-1, 0, 1))]
        await assert_totals_exact(store, principal, probes)
        # The compactor prunes the migrated second buckets; totals stay exact.
        await compact(store.writer, stamps[-1] + 2 * HOUR)
        await assert_totals_exact(store, principal, probes)
    finally:
        await store.close()


# -- the hub runs the compactor --------------------------------------------------------------


async def test_a_running_hub_folds_the_count_deltas(
    store: Store, principal: Principal, new_order: NewOrderFactory
) -> None:
    """While the hub's lifespan runs, its compactor folds what writers append (the deltas
    drain), and stops with it."""
    from ordersync.hub.app import create_app
    from ordersync.hub.settings import HubSettings

    await store.create_orders(principal, [new_order(f"C-{i}") for i in range(5)])
    assert await delta_rows(store) > 0
    app = create_app(HubSettings(), store)
    async with app.router.lifespan_context(app):
        for _ in range(600):  # a liveness wait (the compactor runs every second), not a timing
            if await delta_rows(store) == 0:
                break
            await asyncio.sleep(0.1)
        assert await delta_rows(store) == 0
    page = await store.list_orders(principal.account_id, ListQuery(since=0))
    assert page.total == 5
