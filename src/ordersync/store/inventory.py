"""The catalogue and the stock: SKUs per account, stock per (sku, location, lot) per status.

Tables `skus` and `stock` (`ordersync.store.tables`). A SKU's row is also the `inventory`
entity of the change feed: every write that changes one of its stock rows bumps its `version`,
stamps `updated_at` (strictly after the previous version's), rewrites its `doc` (an
`InventoryItem`: all its stock rows) and appends a `changes` row of kind "inventory", in the
write's transaction, exactly as an order write does (`ordersync.store.store`). A SKU whose
counts did not change keeps its version.

Locking protocol (what makes two writers, or two hub workers allocating, never oversell): a
writer first inserts the SKUs it names that are missing (`ON CONFLICT DO NOTHING`, in sku
order), then locks the SKUs' rows `FOR UPDATE` in sku order, and only then reads their stock.
Every writer takes the locks in that one order, so they queue instead of deadlocking; the
stock rows of a SKU are only written under its SKU row's lock, so a reader holding the locks
(`read_stock(..., for_update=True)`) sees counts no one else can change before it commits.
On SQLite the writer transaction is `BEGIN IMMEDIATE`: writers are serialized anyway.

Every method that writes takes an optional `conn`: given, it runs inside the caller's
transaction (the warehouse reads, allocates and applies in one); None, in a transaction of its
own. Counts are absolute ("never deltas", as MasonHub's sku_snapshots), except for
`receive_stock`, which adds what arrived to what is there.

No count deltas are appended for inventory (`update_count_deltas` serves the order and
shipment listings' totals); a catalogue's size is counted directly.
"""

from __future__ import annotations

import uuid
from collections.abc import Collection, Iterable, Sequence
from dataclasses import dataclass, replace
from typing import Any

from sqlalchemy import func, insert, or_, select, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersync.domain import format_rfc3339
from ordersync.domain.inventory import InventoryStatus, Stock, StockKey, StockUnit
from ordersync.domain.inventory_item import InventoryItem, StockLine
from ordersync.errors import NotFound, ValidationFailed
from ordersync.store.events import allocate_event_ids
from ordersync.store.store import Principal, Store
from ordersync.store.tables import accounts, changes, skus, stock

INVENTORY_KIND = "inventory"  # `changes.entity_kind` of an inventory version
MAX_CODE_LENGTH = 100  # sku, location, lot number and purchase order columns
MAX_COUNT = 2**31 - 1  # a count column's largest value

_COUNTS = tuple(status.value.replace("-", "_") for status in InventoryStatus)


@dataclass(frozen=True)
class SkuEntry:
    """A SKU to register in the catalogue."""

    sku: str
    name: str | None = None


@dataclass(frozen=True)
class ItemPage:
    items: list[str]  # stored `InventoryItem` JSON documents, in (updated_at, id) order
    event_ids: list[int | None]  # the event id of each item's version
    total: int


class InventoryStore:
    """Reads and writes of the catalogue and the stock of a `Store`'s database."""

    def __init__(self, store: Store) -> None:
        self.store = store

    async def account_id(self, name: str) -> int:
        """The id of the account named `name`; NotFound when there is none."""
        async with self.store.reader.connect() as conn:
            found = await conn.scalar(select(accounts.c.id).where(accounts.c.name == name))
        if found is None:
            raise NotFound(f"no account {name!r}")
        return int(found)

    # -- the catalogue ---------------------------------------------------------------------

    async def register_skus(
        self,
        principal: Principal | None,
        account_id: int,
        entries: Sequence[SkuEntry],
        *,
        conn: AsyncConnection | None = None,
    ) -> list[InventoryItem]:
        """Add SKUs to the account's catalogue (version 1, no stock, an `inventory.created`
        change each); SKUs already there are left alone, name included. The items of every
        entry."""
        check_codes([("sku", e.sku) for e in entries])
        async with self.store.writing(conn) as conn:
            names = {e.sku: e.name for e in entries}
            await self._ensure(conn, account_id, names)
            locked = await _lock(conn, account_id, names)
            await self._bump(conn, principal, account_id, locked, {}, "inventory.created", names)
            return await _items(conn, account_id, names)

    async def has_catalogue(self, account_id: int, *, conn: AsyncConnection | None = None) -> bool:
        """Whether any SKU is registered for the account (orders are then checked against it)."""
        statement = select(skus.c.id).where(skus.c.account_id == account_id).limit(1)
        if conn is not None:
            return (await conn.execute(statement)).first() is not None
        async with self.store.reader.connect() as reader:
            return (await reader.execute(statement)).first() is not None

    async def unknown_skus(
        self, account_id: int, codes: Iterable[str], *, conn: AsyncConnection | None = None
    ) -> set[str]:
        """The codes not in the account's catalogue; none at all when the account has no
        catalogue (then every SKU is accepted, as before inventory existed)."""
        wanted = set(codes)
        if not wanted:
            return set()
        if conn is None:
            async with self.store.reader.connect() as reader:
                return await self.unknown_skus(account_id, wanted, conn=reader)
        if not await self.has_catalogue(account_id, conn=conn):
            return set()
        found = await conn.execute(
            select(skus.c.sku).where(skus.c.account_id == account_id, skus.c.sku.in_(wanted))
        )
        return wanted - {str(r[0]) for r in found}

    # -- counts ----------------------------------------------------------------------------

    async def set_stock(
        self,
        principal: Principal | None,
        account_id: int,
        units: Sequence[StockUnit],
        *,
        conn: AsyncConnection | None = None,
        event_type: str = "inventory.adjusted",
    ) -> list[InventoryItem]:
        """Set the absolute counts (and lot attributes) of each unit's (sku, location, lot),
        registering SKUs not yet in the catalogue. Rows not named are left alone. The items of
        the SKUs named, after the write."""
        return await self._write(principal, account_id, units, conn, event_type, add=False)

    async def receive_stock(
        self,
        principal: Principal | None,
        account_id: int,
        units: Sequence[StockUnit],
        *,
        conn: AsyncConnection | None = None,
    ) -> list[InventoryItem]:
        """Add each unit's counts to the stored ones of its (sku, location, lot) (a receipt);
        lot attributes given replace the stored ones, those left None are kept."""
        return await self._write(principal, account_id, units, conn, "inventory.received", add=True)

    async def ensure_skus(
        self, conn: AsyncConnection, account_id: int, codes: Collection[str]
    ) -> None:
        """Insert the SKUs of `codes` not yet in the catalogue, inside the caller's transaction,
        before it locks anything (see the module docstring); a `set_stock` naming them in the
        same transaction gives them version 1, and a transaction that ends without one rolls
        back. For writers that must read locked stock before they know what to write."""
        check_codes([("sku", code) for code in codes])
        await self._ensure(conn, account_id, dict.fromkeys(codes))

    async def read_stock(
        self,
        conn: AsyncConnection,
        account_id: int,
        codes: Collection[str] | None = None,
        *,
        for_update: bool = False,
    ) -> Stock:
        """The stock of the account (or of the SKUs `codes`) as the caller's transaction sees
        it. With `for_update`, the SKUs' rows are locked first, in sku order (see the module
        docstring): until the transaction ends no other writer can change these counts."""
        if for_update:
            await _lock(conn, account_id, codes)
        return Stock.of(await _stock_units(conn, account_id, codes))

    async def apply_stock(
        self,
        conn: AsyncConnection,
        principal: Principal | None,
        account_id: int,
        units: Iterable[StockUnit],
        *,
        event_type: str = "inventory.allocated",
    ) -> list[InventoryItem]:
        """Store the absolute counts of `units` (e.g. `AllocationRun.stock` after `allocate`)
        inside the caller's transaction: only the SKUs whose counts changed get a new version
        and a `changes` row. The SKUs must exist; call `read_stock(..., for_update=True)` in
        the same transaction before allocating, or the counts may have moved meanwhile. The
        items of the SKUs whose counts changed."""
        units = list(units)
        known = await _lock(conn, account_id, {u.sku for u in units})
        missing = sorted({u.sku for u in units} - set(known))
        if missing:
            raise NotFound(f"no SKU {missing[0]!r} in the catalogue")
        changed = await self._store_units(conn, account_id, known, units, add=False)
        return await self._bump(conn, principal, account_id, known, changed, event_type, {})

    async def items(
        self, conn: AsyncConnection, account_id: int, codes: Collection[str]
    ) -> list[InventoryItem]:
        """The current items of the SKU codes, as the caller's transaction sees them."""
        return await _items(conn, account_id, codes)

    # -- reads -----------------------------------------------------------------------------

    async def get_item(self, account_id: int, sku_id: str) -> InventoryItem:
        return InventoryItem.model_validate_json(await self.get_item_doc(account_id, sku_id))

    async def get_item_doc(self, account_id: int, sku_id: str) -> str:
        async with self.store.reader.connect() as conn:
            doc = await conn.scalar(
                select(skus.c.doc).where(skus.c.account_id == account_id, skus.c.id == sku_id)
            )
        if doc is None:
            raise NotFound(f"no SKU with id {sku_id}")
        return str(doc)

    async def list_items(
        self,
        account_id: int,
        *,
        codes: Collection[str] | None = None,
        updated_since_ms: int | None = None,
        after_id: str | None = None,
        offset: int = 0,
        limit: int = 100,
    ) -> ItemPage:
        """Inventory documents ordered by (updated_at, id), optionally of some SKU codes
        and/or updated at or after `updated_since_ms`; with `after_id` (and a since), only
        those after (updated_since_ms, after_id) in that order (the keyset continuation).
        `total` counts the matching rows without the keyset."""
        where = [skus.c.account_id == account_id, skus.c.version > 0]
        if codes is not None:
            where.append(skus.c.sku.in_(sorted(codes)))
        if updated_since_ms is not None:
            where.append(skus.c.updated_at >= updated_since_ms)
        page_where = list(where)
        if after_id is not None and updated_since_ms is not None:
            page_where.append(or_(skus.c.updated_at > updated_since_ms, skus.c.id > after_id))
        async with self.store.reader.connect() as conn:
            total = int(
                await conn.scalar(select(func.count()).select_from(skus).where(*where)) or 0
            )
            rows = (
                await conn.execute(
                    select(skus.c.doc, skus.c.event_id)
                    .where(*page_where)
                    .order_by(skus.c.updated_at, skus.c.id)
                    .offset(offset)
                    .limit(limit)
                )
            ).all()
        return ItemPage(
            [str(r[0]) for r in rows], [None if r[1] is None else int(r[1]) for r in rows], total
        )

    # -- the write path --------------------------------------------------------------------

    async def _write(
        self,
        principal: Principal | None,
        account_id: int,
        units: Sequence[StockUnit],
        conn: AsyncConnection | None,
        event_type: str,
        *,
        add: bool,
    ) -> list[InventoryItem]:
        check_units(units)
        async with self.store.writing(conn) as conn:
            names: dict[str, str | None] = {u.sku: None for u in units}
            await self._ensure(conn, account_id, names)
            locked = await _lock(conn, account_id, names)
            changed = await self._store_units(conn, account_id, locked, units, add=add)
            await self._bump(conn, principal, account_id, locked, changed, event_type, names)
            return await _items(conn, account_id, names)

    async def _ensure(
        self, conn: AsyncConnection, account_id: int, names: dict[str, str | None]
    ) -> None:
        """Insert the SKUs not in the catalogue, in sku order, at version 0: `_bump` gives them
        version 1 (`inventory.created`) before the transaction commits, so no other reader
        ever sees a version 0."""
        if not names:
            return
        now = self.store.clock()
        rows = [
            {
                "id": str(uuid.uuid4()),
                "account_id": account_id,
                "sku": sku,
                "name": name,
                "version": 0,
                "created_at": now,
                "updated_at": 0,
                "doc": "{}",
            }
            for sku, name in sorted(names.items())
        ]
        await conn.execute(
            _dialect_insert(conn, skus).on_conflict_do_nothing(
                index_elements=["account_id", "sku"]
            ),
            rows,
        )

    async def _store_units(
        self,
        conn: AsyncConnection,
        account_id: int,
        locked: dict[str, Any],
        units: Sequence[StockUnit],
        *,
        add: bool,
    ) -> set[str]:
        """Write the stock rows whose counts or attributes change; the SKUs they belong to."""
        stored = {u.key: u for u in await _stock_units(conn, account_id, set(locked))}
        now = self.store.clock()
        rows: dict[StockKey, dict[str, Any]] = {}
        too_many = []
        for index, unit in enumerate(units):
            before = stored.get(unit.key)
            after = _received(before, unit) if add else unit
            too_many += [
                (f"[{index}].{name}", f"{unit.sku} at {unit.location} would hold more than "
                 f"{MAX_COUNT} units")
                for name in _COUNTS
                if getattr(after, name) > MAX_COUNT
            ]  # fmt: skip
            if after == before:
                continue
            if before is None and after == StockUnit(after.sku, after.location, after.lot_number):
                continue  # an empty row says nothing a missing one does not
            stored[unit.key] = after
            rows[unit.key] = _stock_row(account_id, str(locked[unit.sku].id), after, now)
        if too_many:  # the count columns are 32-bit integers
            raise ValidationFailed("the stock cannot be stored", too_many)
        if rows:
            statement = _dialect_insert(conn, stock)
            columns = {c: statement.excluded[c] for c in ("sku_id", "updated_at", *_ATTRIBUTES)}
            await conn.execute(
                statement.on_conflict_do_update(
                    index_elements=["account_id", "sku", "location", "lot_number"], set_=columns
                ),
                [rows[key] for key in sorted(rows, key=_key_order)],
            )
        return {key.sku for key in rows}

    async def _bump(
        self,
        conn: AsyncConnection,
        principal: Principal | None,
        account_id: int,
        locked: dict[str, Any],
        changed: Collection[str],
        event_type: str,
        named: Collection[str],
    ) -> list[InventoryItem]:
        """A new version of each SKU whose stock changed or that `_ensure` just inserted;
        those versions, in SKU order."""
        due = sorted(s for s in locked if s in changed or (s in named and locked[s].version == 0))
        if not due:
            return []
        lines = await _stock_lines(conn, account_id, due)
        event_ids = await allocate_event_ids(conn, len(due))
        change_rows, items = [], []
        for sku, event_id in zip(due, event_ids, strict=True):
            row = locked[sku]
            version = int(row.version) + 1
            stamp = max(self.store.clock(), int(row.updated_at) + 1)
            item = InventoryItem(
                id=str(row.id),
                sku=sku,
                name=row.name,
                version=version,
                created_at=format_rfc3339(int(row.created_at)),
                updated_at=format_rfc3339(stamp),
                stock=tuple(lines.get(sku, ())),
            )
            items.append(item)
            await conn.execute(
                update(skus)
                .where(skus.c.id == row.id)
                .values(
                    version=version,
                    updated_at=stamp,
                    updated_by=principal.connection_id if principal else None,
                    doc=item.model_dump_json(),
                    event_id=event_id,
                )
            )
            change_rows.append(
                {
                    "account_id": account_id,
                    "entity_kind": INVENTORY_KIND,
                    "entity_id": str(row.id),
                    "version": version,
                    "event_type": "inventory.created" if version == 1 else event_type,
                    "connection_id": principal.connection_id if principal else None,
                    "created_at": stamp,
                    "event_id": event_id,
                }
            )
        await conn.execute(insert(changes), change_rows)
        return items


def check_codes(fields: Iterable[tuple[str, str | None]]) -> None:
    """`ValidationFailed` naming each code that cannot be stored (empty, too long, NUL)."""
    errors = []
    for name, value in fields:
        if value is None:
            continue
        if not value.strip():
            errors.append((name, "must not be empty"))
        elif len(value) > MAX_CODE_LENGTH:
            errors.append((name, f"must be at most {MAX_CODE_LENGTH} characters"))
        elif "\x00" in value:
            errors.append((name, "must not contain NUL (\\u0000) characters"))
    if errors:
        raise ValidationFailed("the stock cannot be stored", errors)


def check_units(units: Sequence[StockUnit]) -> None:
    """`ValidationFailed` naming the field of each unit that cannot be stored, or a key given
    twice (its counts would be ambiguous)."""
    fields: list[tuple[str, str | None]] = []
    seen: set[StockKey] = set()
    duplicates = []
    for index, unit in enumerate(units):
        fields += [
            (f"[{index}].sku", unit.sku),
            (f"[{index}].location", unit.location),
            (f"[{index}].lot_number", unit.lot_number),
            (f"[{index}].purchase_order", unit.purchase_order),
        ]
        if unit.key in seen:
            duplicates.append((f"[{index}]", f"{unit.key} is listed twice"))
        seen.add(unit.key)
    try:
        check_codes(fields)
    except ValidationFailed as exc:
        raise ValidationFailed(str(exc), exc.errors + duplicates) from None
    if duplicates:
        raise ValidationFailed("the stock cannot be stored", duplicates)


_ATTRIBUTES = ("expires_on", "received_on", "purchase_order", *_COUNTS)


def _dialect_insert(conn: AsyncConnection, table: Any) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


async def _lock(
    conn: AsyncConnection, account_id: int, codes: Collection[str] | None
) -> dict[str, Any]:
    """The SKU rows of `codes` (every SKU of the account when None), locked `FOR UPDATE` in
    sku order, by sku."""
    statement = select(skus).where(skus.c.account_id == account_id)
    if codes is not None:
        if not codes:
            return {}
        statement = statement.where(skus.c.sku.in_(sorted(codes)))
    rows = await conn.execute(statement.order_by(skus.c.sku).with_for_update())
    return {str(r.sku): r for r in rows}


async def _stock_rows(
    conn: AsyncConnection, account_id: int, codes: Collection[str] | None
) -> list[Any]:
    statement = select(stock).where(stock.c.account_id == account_id)
    if codes is not None:
        if not codes:
            return []
        statement = statement.where(stock.c.sku.in_(sorted(codes)))
    order = (stock.c.sku, stock.c.location, stock.c.lot_number)
    return list(await conn.execute(statement.order_by(*order)))


async def _stock_units(
    conn: AsyncConnection, account_id: int, codes: Collection[str] | None
) -> list[StockUnit]:
    return [_unit(r) for r in await _stock_rows(conn, account_id, codes)]


async def _stock_lines(
    conn: AsyncConnection, account_id: int, codes: Collection[str]
) -> dict[str, list[StockLine]]:
    lines: dict[str, list[StockLine]] = {}
    for row in await _stock_rows(conn, account_id, codes):
        lines.setdefault(str(row.sku), []).append(StockLine.of(_unit(row)))
    return lines


async def _items(
    conn: AsyncConnection, account_id: int, codes: Collection[str]
) -> list[InventoryItem]:
    if not codes:
        return []
    rows = await conn.execute(
        select(skus.c.doc)
        .where(skus.c.account_id == account_id, skus.c.sku.in_(sorted(codes)))
        .order_by(skus.c.sku)
    )
    return [InventoryItem.model_validate_json(str(r[0])) for r in rows]


def _unit(row: Any) -> StockUnit:
    return StockUnit(
        sku=str(row.sku),
        location=str(row.location),
        lot_number=str(row.lot_number) or None,
        expires_on=row.expires_on,
        received_on=row.received_on,
        purchase_order=row.purchase_order,
        **{name: int(getattr(row, name)) for name in _COUNTS},
    )


def _stock_row(account_id: int, sku_id: str, unit: StockUnit, now: int) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "sku": unit.sku,
        "location": unit.location,
        "lot_number": unit.lot_number or "",
        "sku_id": sku_id,
        "updated_at": now,
        **{name: getattr(unit, name) for name in _ATTRIBUTES},
    }


def _received(before: StockUnit | None, receipt: StockUnit) -> StockUnit:
    if before is None:
        return receipt
    return replace(
        before,
        expires_on=receipt.expires_on or before.expires_on,
        received_on=receipt.received_on or before.received_on,
        purchase_order=receipt.purchase_order or before.purchase_order,
        **{name: getattr(before, name) + getattr(receipt, name) for name in _COUNTS},
    )


def _key_order(key: StockKey) -> tuple[str, str, str]:
    return (key.sku, key.location, key.lot_number or "")
