"""The store contract, run against SQLite and PostgreSQL alike (the `store` fixture does both).

What an integration relies on: every write bumps `version` by one, never moves `updated_at`
back, appends exactly one `changes` row and keeps the `update_counts` buckets exact, all in one
transaction; listings ascend by (updated_at, id) and their `total` equals a plain count.
"""

from __future__ import annotations

import asyncio
import random
from collections.abc import Callable
from typing import Any

import pytest
from sqlalchemy import func, inspect, select

from ordersync.domain import CANCELABLE, NewOrder, NewShipment, Order, OrderStatus, ShipmentStatus
from ordersync.errors import InvalidTransition, NotFound
from ordersync.store import counts
from ordersync.store.counts import DAY, HOUR, MINUTE
from ordersync.store.store import ListQuery, Principal, Store
from ordersync.store.tables import changes, orders, shipments, update_counts

NewOrderFactory = Callable[..., NewOrder]
# A Monday at midnight UTC: bucket boundaries of every span line up with it.
EPOCH = 1_704_067_200_000
HAPPY_PATH = [
    OrderStatus.AT_WAREHOUSE,
    OrderStatus.IN_PROCESS,
    OrderStatus.PACKED,
    OrderStatus.FULFILLED,
    OrderStatus.DELIVERED,
]


class FakeClock:
    """The hub clock, moved by hand so that tests choose every `updated_at`."""

    def __init__(self, now: int = EPOCH) -> None:
        self.now = now

    def __call__(self) -> int:
        return self.now


class Boom(RuntimeError):
    pass


@pytest.fixture
def clock(store: Store) -> FakeClock:
    fake = FakeClock()
    store.clock = fake
    return fake


async def fetch(store: Store, statement: Any) -> list[Any]:
    async with store.reader.connect() as conn:
        return list((await conn.execute(statement)).all())


async def change_rows(store: Store, entity_id: str | None = None) -> list[Any]:
    statement = select(changes).order_by(changes.c.seq)
    if entity_id is not None:
        statement = statement.where(changes.c.entity_id == entity_id)
    return await fetch(store, statement)


async def counters(store: Store) -> set[tuple[Any, ...]]:
    """Every non-zero counter row: equal snapshots mean no write reached the buckets."""
    rows = await fetch(store, select(update_counts).where(update_counts.c.n != 0))
    return {tuple(row) for row in rows}


async def snapshot(store: Store) -> tuple[Any, ...]:
    """Everything a write may touch, to prove that a refused or crashed one touched nothing."""
    return (
        await fetch(store, select(orders).order_by(orders.c.id)),
        await fetch(store, select(shipments).order_by(shipments.c.id)),
        await change_rows(store),
        await counters(store),
    )


async def create_one(store: Store, principal: Principal, order: NewOrder) -> Order:
    [result] = await store.create_orders(principal, [order])
    assert result.order is not None, result.errors
    return result.order


# -- versions, timestamps and the change feed -------------------------------------------------


async def test_create_starts_at_version_one_with_one_change_row(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """A new order is open, version 1, stamped by the hub clock, with one order.created change."""
    order = await create_one(store, principal, new_order("C-1"))
    assert (order.status, order.version) == (OrderStatus.OPEN, 1)
    assert order.updated_at == order.created_at == "2024-01-01T00:00:00.000Z"
    [change] = await change_rows(store)
    assert change.entity_kind == "order"
    assert (change.entity_id, change.version, change.event_type) == (order.id, 1, "order.created")
    assert (change.account_id, change.connection_id) == (
        principal.account_id,
        principal.connection_id,
    )
    assert change.created_at == EPOCH


async def test_each_transition_bumps_version_by_one_and_never_moves_updated_at_back(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """Each status move adds exactly 1 to version; a clock that steps back cannot age a record."""
    order = await create_one(store, principal, new_order("C-1"))
    stamps = [EPOCH]
    for step, target in enumerate(HAPPY_PATH, start=2):
        # Alternate forward and backward clock jumps: the stored stamp must only grow.
        clock.now += 90_000 if step % 2 else -45_000
        moved = await store.transition_order(principal, principal.account_id, order.id, target)
        stored = await store.get_order(principal.account_id, order.id)
        assert (moved.version, stored.version, stored.status) == (step, step, target)
        [row] = await fetch(store, select(orders.c.updated_at).where(orders.c.id == order.id))
        assert row.updated_at >= stamps[-1]
        stamps.append(row.updated_at)
    feed = await change_rows(store, order.id)
    assert [c.version for c in feed] == [1, 2, 3, 4, 5, 6]
    assert [c.event_type for c in feed] == ["order.created"] + [f"order.{s}" for s in HAPPY_PATH]
    assert [c.created_at for c in feed] == stamps


async def test_a_write_without_a_connection_records_none_as_its_origin(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """A hub-internal move (the warehouse) is recorded with no originating connection."""
    order = await create_one(store, principal, new_order("C-1"))
    await store.transition_order(None, principal.account_id, order.id, OrderStatus.AT_WAREHOUSE)
    feed = await change_rows(store, order.id)
    assert [c.connection_id for c in feed] == [principal.connection_id, None]


@pytest.mark.parametrize(
    "path,refused",
    [
        ([], OrderStatus.PACKED),
        (HAPPY_PATH[:3], OrderStatus.CANCELED),
        (HAPPY_PATH, OrderStatus.FULFILLED),
    ],
    ids=["open-to-packed", "cancel-packed", "leave-delivered"],
)
async def test_a_refused_transition_changes_nothing(
    store: Store,
    principal: Principal,
    new_order: NewOrderFactory,
    clock: FakeClock,
    path: list[OrderStatus],
    refused: OrderStatus,
) -> None:
    """A move the lifecycle forbids leaves version, document, change feed and counts alone."""
    order = await create_one(store, principal, new_order("C-1"))
    for target in path:
        clock.now += MINUTE
        await store.transition_order(principal, principal.account_id, order.id, target)
    before = await snapshot(store)
    clock.now += DAY
    with pytest.raises(InvalidTransition):
        await store.transition_order(principal, principal.account_id, order.id, refused)
    assert await snapshot(store) == before


async def test_cancel_of_an_open_order_is_one_more_version(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """Canceling an open order is an ordinary write: version 2, event order.canceled."""
    order = await create_one(store, principal, new_order("C-1"))
    canceled = await store.transition_order(
        principal, principal.account_id, order.id, OrderStatus.CANCELED
    )
    assert (canceled.status, canceled.version) == (OrderStatus.CANCELED, 2)
    assert (await change_rows(store))[-1].event_type == "order.canceled"


async def test_an_unknown_order_is_not_found_and_nothing_is_written(
    store: Store, principal: Principal, clock: FakeClock
) -> None:
    """Moving an order that does not exist raises NotFound and writes nothing."""
    before = await snapshot(store)
    with pytest.raises(NotFound):
        await store.transition_order(
            principal,
            principal.account_id,
            "00000000-0000-0000-0000-000000000000",
            OrderStatus.AT_WAREHOUSE,
        )
    assert await snapshot(store) == before


# -- batches -------------------------------------------------------------------------------------


async def test_a_duplicate_customer_identifier_is_refused_alone(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """In one batch, an identifier already stored or repeated is refused; the others are created."""
    await create_one(store, principal, new_order("TAKEN"))
    batch = [new_order("A"), new_order("TAKEN"), new_order("B"), new_order("A")]
    results = await store.create_orders(principal, batch)
    assert [r.created for r in results] == [True, False, True, False]
    assert all(r.errors[0][0] == "customer_identifier" for r in results if not r.created)
    stored = await fetch(store, select(orders.c.customer_identifier))
    assert sorted(r.customer_identifier for r in stored) == ["A", "B", "TAKEN"]
    assert len(await change_rows(store)) == 3
    page = await store.list_orders(principal.account_id, ListQuery(since=0))
    assert page.total == 3


async def test_customer_identifiers_are_unique_per_account_only(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """Two accounts may each use the same customer_identifier."""
    other = await store.authenticate(await store.create_token("globex", "erp"))
    await create_one(store, principal, new_order("SAME"))
    await create_one(store, other, new_order("SAME"))


async def test_concurrent_batches_with_one_identifier_create_it_once(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """Racing batches that share an identifier: exactly one creates it, the rest refuse it."""
    batches = [[new_order("RACE"), new_order(f"OWN-{i}")] for i in range(6)]
    results = await asyncio.gather(*(store.create_orders(principal, b) for b in batches))
    assert sum(r[0].created for r in results) == 1
    assert all(r[1].created for r in results)
    page = await store.list_orders(principal.account_id, ListQuery(since=0))
    assert page.total == 7


async def test_concurrent_moves_keep_versions_feed_and_totals_exact(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """Many writers at once (PostgreSQL really interleaves them) lose no version or count."""
    made = [await create_one(store, principal, new_order(f"C-{i}")) for i in range(8)]

    async def walk_happy_path(order: Order) -> None:
        for target in HAPPY_PATH[:3]:
            await store.transition_order(principal, principal.account_id, order.id, target)

    clock.now += MINUTE
    await asyncio.gather(*(walk_happy_path(order) for order in made))
    feed = await change_rows(store)
    assert len(feed) == 8 * 4
    page = await store.list_orders(principal.account_id, ListQuery(since=0), summary=True)
    assert page.total == 8
    assert {(item["status"], item["version"]) for item in page.items} == {("packed", 4)}
    # The clock stands still: each version is stamped 1 ms after the previous one (the third
    # move of each order at EPOCH + MINUTE + 2).
    for since in (EPOCH, EPOCH + 1, EPOCH + MINUTE, EPOCH + MINUTE + 2, EPOCH + MINUTE + 3):
        query = ListQuery(since=since, statuses=("packed",))
        expected = 8 if since <= EPOCH + MINUTE + 2 else 0
        assert (await store.list_orders(principal.account_id, query)).total == expected


# -- listings and their total --------------------------------------------------------------------


async def build_spread(
    store: Store,
    principal: Principal,
    new_order: NewOrderFactory,
    clock: FakeClock,
    rng: random.Random,
    n: int = 50,
) -> None:
    """Orders stamped across minutes, hours and days, with many exact ties, then moved on."""
    offsets = [0, 1, 59_999, MINUTE, HOUR - 1, HOUR, DAY - 1, DAY, 3 * DAY + 7]
    made: list[Order] = []
    for i in range(n):
        # Reuse earlier stamps often so that several records share one updated_at.
        clock.now = EPOCH + (rng.choice(offsets) if rng.random() < 0.4 else rng.randrange(4 * DAY))
        made.append(await create_one(store, principal, new_order(f"C-{i}")))
    for order in rng.sample(made, n // 2):
        status = order.status
        for _ in range(rng.randint(1, 4)):
            cancel = status in CANCELABLE and rng.random() < 0.15
            target = OrderStatus.CANCELED if cancel else next_on_happy_path(status)
            clock.now = EPOCH + rng.randrange(5 * DAY)
            await store.transition_order(principal, principal.account_id, order.id, target)
            status = target
            if status in (OrderStatus.CANCELED, OrderStatus.DELIVERED):
                break


def next_on_happy_path(status: OrderStatus) -> OrderStatus:
    return HAPPY_PATH[[OrderStatus.OPEN, *HAPPY_PATH].index(status)]


def probe_times(stamps: list[int], rng: random.Random, k: int = 40) -> list[int | None]:
    """`since` values that hit bucket edges: stored stamps and their neighbours, span
    boundaries and random instants; a seeded sample of `k` keeps the test fast."""
    near = [s + d for s in stamps for d in (-1, 0, 1)]
    edges = [
        EPOCH + n * span + d for span in (MINUTE, HOUR, DAY) for n in range(4) for d in (-1, 0, 1)
    ]
    anywhere = [EPOCH - DAY + rng.randrange(7 * DAY) for _ in range(10)]
    picked = rng.sample(near, k // 2) + rng.sample(edges, k // 3) + anywhere
    return [None, 0, *sorted(set(picked))]


STATUS_FILTERS: list[tuple[str, ...]] = [
    (),
    ("open",),
    ("canceled", "delivered"),
    ("atWarehouse", "packed", "inProcess"),
    ("fulfilled",),
]


async def test_listing_total_equals_a_brute_force_count_for_any_since_and_status(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """`total` (from bucket counters) equals a plain count, and pages ascend by (updated_at, id)."""
    rng = random.Random(20240101)
    await build_spread(store, principal, new_order, clock, rng)
    truth = await fetch(store, select(orders.c.id, orders.c.status, orders.c.updated_at))
    assert len({row.updated_at for row in truth}) < len(truth), "the data must contain ties"
    for since in probe_times([row.updated_at for row in truth], rng):
        for statuses in STATUS_FILTERS:
            expected = sorted(
                (row.updated_at, row.id)
                for row in truth
                if (since is None or row.updated_at >= since)
                and (not statuses or row.status in statuses)
            )
            query = ListQuery(since=since, statuses=statuses, limit=100)
            page = await store.list_orders(principal.account_id, query, summary=True)
            assert page.total == len(expected), (since, statuses)
            assert [item["id"] for item in page.items] == [i for _, i in expected[:100]]


async def test_pages_split_a_sorted_listing_without_overlap(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """offset/limit pages of one listing concatenate to the full ascending listing."""
    rng = random.Random(7)
    await build_spread(store, principal, new_order, clock, rng, n=40)
    full = await store.list_orders(principal.account_id, ListQuery(since=EPOCH, limit=100))
    pages = [
        await store.list_orders(principal.account_id, ListQuery(since=EPOCH, offset=o, limit=7))
        for o in range(0, full.total, 7)
    ]
    assert [doc for page in pages for doc in page.items] == full.items
    assert {page.total for page in pages} == {full.total}
    docs = [Order.model_validate_json(doc) for doc in full.items]
    assert [(d.updated_at, d.id) for d in docs] == sorted((d.updated_at, d.id) for d in docs)


async def test_listing_by_ids_returns_only_those_orders(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """An `ids` filter returns those orders, counted exactly, whatever else exists."""
    made = [await create_one(store, principal, new_order(f"C-{i}")) for i in range(5)]
    wanted = (made[3].id, made[1].id)
    page = await store.list_orders(principal.account_id, ListQuery(ids=wanted), summary=True)
    assert page.total == 2
    assert {item["id"] for item in page.items} == set(wanted)


async def test_another_account_sees_none_of_these_orders(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """Listings, totals and reads by id are confined to the caller's account."""
    order = await create_one(store, principal, new_order("C-1"))
    other = await store.authenticate(await store.create_token("globex", "erp"))
    for query in (ListQuery(), ListQuery(since=0), ListQuery(ids=(order.id,))):
        page = await store.list_orders(other.account_id, query)
        assert (page.items, page.total) == ([], 0)
    with pytest.raises(NotFound):
        await store.get_order_doc(other.account_id, order.id)
    with pytest.raises(NotFound):
        await store.transition_order(other, other.account_id, order.id, OrderStatus.CANCELED)


# -- shipments -----------------------------------------------------------------------------------


def shipment_for(order: Order) -> NewShipment:
    return NewShipment.model_validate(
        {
            "order_id": order.id,
            "carrier": "UPS",
            "service_level": "ground",
            "tracking_number": f"1Z{order.customer_identifier}",
            "lines": [{"line_number": 1, "sku_customer_identifier": "SKU-1", "quantity": "2"}],
        }
    )


async def test_shipments_follow_the_same_version_feed_and_total_rules(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """Shipments: version 1 then +1, one change per write, exact totals, confined to the account."""
    rng = random.Random(3)
    made = []
    for i in range(8):
        order = await create_one(store, principal, new_order(f"C-{i}"))
        clock.now = EPOCH + rng.choice([0, MINUTE, HOUR, DAY]) + rng.randrange(3)
        made.append(
            await store.create_shipment(principal, principal.account_id, shipment_for(order))
        )
    for shipment in made[::2]:
        clock.now = EPOCH + rng.randrange(2 * DAY)
        moved = await store.transition_shipment(
            None, principal.account_id, shipment.id, ShipmentStatus.IN_TRANSIT
        )
        assert moved.version == 2
    feed = [c for c in await change_rows(store) if c.entity_kind == "shipment"]
    assert len(feed) == len(made) + len(made[::2])
    truth = await fetch(store, select(shipments.c.id, shipments.c.status, shipments.c.updated_at))
    for since in probe_times([row.updated_at for row in truth], rng, k=24):
        for statuses in [(), ("shipped",), ("in_transit", "delivered")]:
            expected = sorted(
                (r.updated_at, r.id)
                for r in truth
                if (since is None or r.updated_at >= since)
                and (not statuses or r.status in statuses)
            )
            page = await store.list_shipments(
                principal.account_id,
                ListQuery(since=since, statuses=statuses, limit=100),
                summary=True,
            )
            assert page.total == len(expected), (since, statuses)
            assert [item["id"] for item in page.items] == [i for _, i in expected]
    other = await store.authenticate(await store.create_token("globex", "erp"))
    assert (await store.list_shipments(other.account_id, ListQuery(since=0))).total == 0
    with pytest.raises(NotFound):
        await store.get_shipment_doc(other.account_id, made[0].id)


# -- crashes -------------------------------------------------------------------------------------


async def test_a_crash_inside_the_change_callback_writes_nothing(
    store: Store, principal: Principal, new_order: NewOrderFactory, clock: FakeClock
) -> None:
    """An exception while computing the new order rolls the whole write back."""
    order = await create_one(store, principal, new_order("C-1"))
    before = await snapshot(store)

    def explode(_: Order) -> Order:
        raise Boom("crash while changing the order")

    clock.now += HOUR
    with pytest.raises(Boom):
        await store.update_order(principal, principal.account_id, order.id, explode, "order.x")
    assert await snapshot(store) == before


@pytest.fixture
def crash_after_counters(monkeypatch: pytest.MonkeyPatch) -> None:
    """Make every write fail as its last statement (the counters) has run, before the commit."""
    apply = counts.CountDeltas.apply

    async def apply_then_crash(self: counts.CountDeltas, conn: Any) -> None:
        await apply(self, conn)
        raise Boom("crash before commit")

    monkeypatch.setattr(counts.CountDeltas, "apply", apply_then_crash)


async def test_a_crash_before_commit_leaves_nothing_half_written(
    store: Store,
    principal: Principal,
    new_order: NewOrderFactory,
    clock: FakeClock,
    request: pytest.FixtureRequest,
) -> None:
    """A write that dies after its last statement leaves no row, change or counter behind."""
    order = await create_one(store, principal, new_order("C-1"))
    before = await snapshot(store)
    request.getfixturevalue("crash_after_counters")
    clock.now += HOUR
    with pytest.raises(Boom):
        await store.transition_order(
            principal, principal.account_id, order.id, OrderStatus.AT_WAREHOUSE
        )
    with pytest.raises(Boom):
        await store.create_orders(principal, [new_order("C-2"), new_order("C-3")])
    with pytest.raises(Boom):
        await store.create_shipment(principal, principal.account_id, shipment_for(order))
    assert await snapshot(store) == before


# -- schema --------------------------------------------------------------------------------------


async def test_indexes_serve_polling_by_updated_at_and_by_status(store: Store) -> None:
    """The listing orders are index scans: (account, updated_at, id) and (account, status, ...)."""

    def index_columns(sync_conn: Any, table: str) -> set[tuple[str, ...]]:
        return {tuple(ix["column_names"]) for ix in inspect(sync_conn).get_indexes(table)}

    async with store.reader.connect() as conn:
        for table in ("orders", "shipments"):
            found = await conn.run_sync(index_columns, table)
            assert ("account_id", "updated_at", "id") in found
            assert ("account_id", "status", "updated_at", "id") in found
        assert await conn.scalar(select(func.count()).select_from(update_counts)) == 0
