"""The stock store (`ordersync.store.inventory`) on SQLite and PostgreSQL: catalogue, absolute
and received counts, one version and one `changes` row per changed SKU, the warehouse's
read-lock-allocate-apply in one transaction without overselling."""

from __future__ import annotations

import asyncio
from datetime import date

import pytest
from sqlalchemy import select

from ordersync.domain.allocation import Allocated, DemandLine, OrderDemand, allocate
from ordersync.domain.inventory import StockKey, StockUnit
from ordersync.domain.timestamps import parse_rfc3339_ms
from ordersync.errors import NotFound, ValidationFailed
from ordersync.store.inventory import INVENTORY_KIND, InventoryStore, SkuEntry
from ordersync.store.store import Principal, Store
from ordersync.store.tables import changes


async def _changes(store: Store) -> list[tuple[str, int, str]]:
    async with store.reader.connect() as conn:
        rows = await conn.execute(
            select(changes.c.entity_id, changes.c.version, changes.c.event_type)
            .where(changes.c.entity_kind == INVENTORY_KIND)
            .order_by(changes.c.event_id)
        )
        return [(str(r[0]), int(r[1]), str(r[2])) for r in rows]


async def test_registering_a_sku_creates_version_1_once(store: Store, principal: Principal) -> None:
    """A SKU registered twice is one catalogue entry at version 1 with one created change."""
    inventory = InventoryStore(store)
    assert not await inventory.has_catalogue(principal.account_id)
    (item,) = await inventory.register_skus(principal, principal.account_id, [SkuEntry("A", "Aa")])
    again = await inventory.register_skus(principal, principal.account_id, [SkuEntry("A")])
    assert again == [item]
    assert (item.version, item.name, item.stock) == (1, "Aa", ())
    assert await _changes(store) == [(item.id, 1, "inventory.created")]
    assert await inventory.has_catalogue(principal.account_id)
    assert await inventory.unknown_skus(principal.account_id, ["A", "B"]) == {"B"}


async def test_an_account_without_catalogue_knows_every_sku(
    store: Store, principal: Principal
) -> None:
    """Without any SKU registered, no code is unknown (orders keep taking any SKU)."""
    assert await InventoryStore(store).unknown_skus(principal.account_id, ["X"]) == set()


async def test_set_and_receive_move_counts_and_versions(store: Store, principal: Principal) -> None:
    """Absolute counts replace, receipts add; each write that changes a SKU's counts is one new
    version with a later updated_at and one change row; a write changing nothing is none."""
    inventory = InventoryStore(store)
    account = principal.account_id
    lot = StockUnit("A", "L1", "LOT1", expires_on=date(2030, 1, 1), available=5, damaged=1)
    (v1,) = await inventory.set_stock(principal, account, [lot])
    assert (v1.version, v1.stock[0].available, v1.stock[0].expires_on) == (1, 5, date(2030, 1, 1))
    (v2,) = await inventory.receive_stock(
        principal, account, [StockUnit("A", "L1", "LOT1", available=3)]
    )
    assert (v2.version, v2.stock[0].available, v2.stock[0].damaged) == (2, 8, 1)
    assert v2.stock[0].expires_on == date(2030, 1, 1)  # kept: the receipt did not say
    assert parse_rfc3339_ms(v2.updated_at) > parse_rfc3339_ms(v1.updated_at)
    (same,) = await inventory.set_stock(
        principal,
        account,
        [StockUnit("A", "L1", "LOT1", expires_on=date(2030, 1, 1), available=8, damaged=1)],
    )
    assert same.version == 2
    assert await _changes(store) == [
        (v1.id, 1, "inventory.created"),
        (v1.id, 2, "inventory.received"),
    ]
    async with store.writer.connect() as conn:
        stock = await inventory.read_stock(conn, account)
    assert stock.get(StockKey("A", "L1", "LOT1")) == StockUnit(
        "A", "L1", "LOT1", expires_on=date(2030, 1, 1), available=8, damaged=1
    )


async def test_bad_codes_are_refused_naming_the_field(store: Store, principal: Principal) -> None:
    """A location over 100 characters or a key given twice is a ValidationFailed naming it."""
    inventory = InventoryStore(store)
    with pytest.raises(ValidationFailed) as caught:
        await inventory.set_stock(
            principal,
            principal.account_id,
            [StockUnit("A", "L" * 101), StockUnit("B", "L"), StockUnit("B", "L")],
        )
    assert [field for field, _ in caught.value.errors] == ["[0].location", "[2]"]
    assert not await inventory.has_catalogue(principal.account_id)


async def test_apply_stock_versions_only_changed_skus(store: Store, principal: Principal) -> None:
    """The warehouse's read (locked), allocate, apply in one transaction: counts move from
    available to allocated and only the SKU allocated from gets a new version."""
    inventory = InventoryStore(store)
    account = principal.account_id
    await inventory.set_stock(
        principal, account, [StockUnit("A", "L1", available=4), StockUnit("B", "L1", available=2)]
    )
    async with store.writing(None) as conn:
        stock = await inventory.read_stock(conn, account, for_update=True)
        run = allocate([OrderDemand("o1", (DemandLine(1, "A", 3),))], stock)
        changed = await inventory.apply_stock(conn, principal, account, run.stock)
    assert [(i.sku, i.version, i.stock[0].available, i.stock[0].allocated) for i in changed] == [
        ("A", 2, 1, 3)
    ]
    assert [c[2] for c in await _changes(store)][-1] == "inventory.allocated"
    with pytest.raises(NotFound):
        async with store.writing(None) as conn:
            await inventory.apply_stock(conn, principal, account, [StockUnit("Z", "L1")])


@pytest.mark.parametrize("hub_db_url", ["postgresql"], indirect=True)
async def test_concurrent_allocations_never_oversell(hub_db_url: str) -> None:
    """Eight transactions on PostgreSQL each lock, allocate 1 unit of the same 5 and apply:
    exactly 5 succeed in allocating, the stock ends at 0 available and 5 allocated."""
    stores = [await Store.open(hub_db_url) for _ in range(2)]
    try:
        principal = await stores[0].authenticate(await stores[0].create_token("acme", "wh"))
        account = principal.account_id
        await InventoryStore(stores[0]).set_stock(
            principal, account, [StockUnit("A", "L1", available=5)]
        )

        async def one(n: int) -> bool:
            store = stores[n % 2]
            inventory = InventoryStore(store)
            async with store.writing(None) as conn:
                stock = await inventory.read_stock(conn, account, ["A"], for_update=True)
                await asyncio.sleep(0.01)  # widen the window a lost update would need
                run = allocate([OrderDemand(f"o{n}", (DemandLine(1, "A", 1),))], stock)
                await inventory.apply_stock(conn, principal, account, run.stock)
                return isinstance(run.outcome(f"o{n}"), Allocated)

        results = await asyncio.gather(*(one(n) for n in range(8)))
        async with stores[0].writer.connect() as conn:
            final = await InventoryStore(stores[0]).read_stock(conn, account)
        (unit,) = final.units
        assert (sum(results), unit.available, unit.allocated) == (5, 0, 5)
        # Each version once. (Their event ids are commit-ordered, not version-ordered: a
        # transaction gets its id when it first asks for the row lock, and waiters are not
        # granted it in that order. ARCHITECTURE.md, "The hub".)
        versions = [c[1] for c in await _changes(stores[0])]
        assert sorted(versions) == list(range(1, 7))
    finally:
        for store in stores:
            await store.close()
