"""The hand-compiled SQLite read pool answers exactly as the SQLAlchemy path it speeds up.

On SQLite, listings and token checks run through `SqliteReadPool` (statements compiled once,
parameters bound by hand, plain `sqlite3`); on PostgreSQL, and on SQLite without the pool,
through SQLAlchemy. For every listing shape the store builds (ids, since, statuses, keyset
continuation, offsets past the end, summary and detail, orders and shipments) and for token
checks (live, unknown, revoked), both paths give the same result.
"""

from __future__ import annotations

from collections.abc import AsyncIterator
from dataclasses import replace

import pytest

from ordersync.domain import NewOrder, NewShipment, OrderStatus, ShipmentLine
from ordersync.errors import AuthenticationFailed
from ordersync.store.store import ListQuery, Page, Store
from tests.support import order_payload


@pytest.fixture
async def stores(sqlite_url: str) -> AsyncIterator[tuple[Store, Store]]:
    """(pooled, plain): two stores on one SQLite file, the second without its read pool."""
    pooled = await Store.open(sqlite_url)
    plain = await Store.open(sqlite_url, migrate=False)
    reads, plain._sqlite_reads = plain._sqlite_reads, None
    assert reads is not None and pooled._sqlite_reads is not None
    await reads.close()
    ticks = iter(range(1_700_000_000_000, 1_800_000_000_000, 400))  # ties: 3 per second
    pooled.clock = lambda: next(ticks)
    yield pooled, plain
    await pooled.close()
    await plain.close()


async def seed(store: Store) -> tuple[list[str], list[str], int]:
    principal = await store.authenticate(await store.create_token("acme", "erp"))
    orders = [
        r.order
        for r in await store.create_orders(
            principal, [NewOrder.model_validate(order_payload(f"PO-{i}")) for i in range(25)]
        )
        if r.order is not None
    ]
    account = principal.account_id
    for order in orders[:8]:
        await store.transition_order(principal, account, order.id, OrderStatus.AT_WAREHOUSE)
    for order in orders[:3]:
        await store.transition_order(principal, account, order.id, OrderStatus.IN_PROCESS)
        await store.transition_order(principal, account, order.id, OrderStatus.PACKED)
        await store.transition_order(principal, account, order.id, OrderStatus.FULFILLED)
    shipments = []
    for order in orders[:3]:
        line = ShipmentLine(line_number=1, sku_customer_identifier="SKU-1", quantity=1)
        new = NewShipment(
            order_id=order.id,
            carrier="UPS",
            service_level="ground",
            tracking_number=f"1Z{order.id[:8]}",
            lines=[line],
        )
        shipments.append((await store.create_shipment(principal, account, new)).id)
    return [o.id for o in orders], shipments, account


def queries(order_ids: list[str], stamps: list[int]) -> list[ListQuery]:
    base = [
        ListQuery(),
        ListQuery(limit=1),
        ListQuery(limit=100),
        ListQuery(offset=7, limit=5),
        ListQuery(offset=10_000),
        ListQuery(offset=2_000, limit=3),  # past the inline bound: a reader thread
        ListQuery(ids=tuple(order_ids[:4])),
        ListQuery(ids=(order_ids[0], "00000000-0000-0000-0000-000000000000")),
        ListQuery(statuses=("open",)),
        ListQuery(statuses=("atWarehouse", "fulfilled"), limit=2, offset=1),
        ListQuery(statuses=("delivered",)),
    ]
    for stamp in stamps:
        base += [
            ListQuery(since=stamp),
            ListQuery(since=stamp, limit=2, offset=1),
            ListQuery(since=stamp, statuses=("open",)),
            ListQuery(since=stamp, after_id=order_ids[5]),
            ListQuery(since=stamp, after_id="ffffffff-ffff-ffff-ffff-ffffffffffff", limit=3),
            ListQuery(since=stamp, ids=tuple(order_ids[:6])),
        ]
    return base


def as_compared(page: Page) -> tuple[list[object], int]:
    return list(page.items), page.total


async def test_every_listing_shape_reads_the_same_through_both_paths(
    stores: tuple[Store, Store],
) -> None:
    """Orders and shipments, detail and summary, every filter combination: same pages."""
    pooled, plain = stores
    order_ids, _, account = await seed(pooled)
    stamps = [1_700_000_000_000, 1_700_000_002_000, 1_700_000_004_400, 1_800_000_000_000]
    compared = 0
    for query in queries(order_ids, stamps):
        for summary in (False, True):
            a = await pooled.list_orders(account, query, summary=summary)
            b = await plain.list_orders(account, query, summary=summary)
            assert as_compared(a) == as_compared(b), (query, summary)
            shipments = replace(query, ids=(), statuses=(), after_id=None)
            a = await pooled.list_shipments(account, shipments, summary=summary)
            b = await plain.list_shipments(account, shipments, summary=summary)
            assert as_compared(a) == as_compared(b), (shipments, summary)
            compared += 2
    assert compared > 100


async def test_token_checks_agree_through_both_paths(stores: tuple[Store, Store]) -> None:
    """A live token names the same principal both ways; unknown and revoked ones fail both."""
    pooled, plain = stores
    token = await pooled.create_token("acme", "erp")
    assert await pooled.authenticate(token) == await plain.authenticate(token)
    for store in stores:
        with pytest.raises(AuthenticationFailed):
            await store.authenticate("osk_unknown")
    await pooled.revoke_connection("acme", "erp")
    for store in stores:
        with pytest.raises(AuthenticationFailed):
            await store.authenticate(token)
