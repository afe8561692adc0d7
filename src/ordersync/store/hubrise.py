"""Queries of the HubRise dialect: orders by creation time (keyset), private refs, passive
callbacks and their events. It reads and writes through the `Store`'s engines and never
changes an order: private refs and callback bookkeeping are not changes (no version bump, no
`changes` row), so other connections see nothing of them.

A callback's events are the `changes` rows of its account with `event_id > watermark`, made by
another connection (or by the hub itself, `connection_id` NULL), of a subscribed kind and type,
and not acknowledged; an event's id is its event-log id (`ordersync.store.events`), the same
id the listings and the event log show for that change. An acknowledgement is a row in
`callback_acks`; the watermark then moves over the run of acknowledged events above it and the
ack rows below it are deleted, so the anti-join of the listing stays as small as the client's
out-of-order acks.

Events are listed as soon as they are visible, but the watermark only moves below the event
log's frontier: an event below it is final, so no event the watermark passes can still appear
(on PostgreSQL a transaction with a smaller id may commit after a larger one was acknowledged;
it is then above the frontier, and the watermark waits for it).
"""

from __future__ import annotations

import enum
import time
from collections.abc import Awaitable, Callable, Mapping, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import orjson
from sqlalchemy import and_, delete, exists, func, insert, literal, or_, select, tuple_, update
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import IntegrityError
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from ordersync.domain import NewOrder, OrderStatus
from ordersync.errors import Conflict, NotFound
from ordersync.store.events import frontier
from ordersync.store.idempotency import settle
from ordersync.store.store import CreateResult, Principal, Store
from ordersync.store.tables import (
    accounts,
    callback_acks,
    callbacks,
    changes,
    orders,
    private_refs,
    shipments,
)

T = TypeVar("T")
EVENTS_PAGE = 100
EVENT_KINDS = ("order", "shipment")
EVENT_TYPES = ("create", "update")
_LOCATION_CACHE_SECONDS = 10.0


class PrivateRefTaken(Conflict):
    """This connection already uses the ref on another entity of the same kind."""


class Unset(enum.Enum):
    """A PATCH that leaves a field alone (where None would clear it)."""

    UNSET = "unset"


UNSET = Unset.UNSET


@dataclass(frozen=True)
class Location:
    """The account as HubRise renders it: times in its zone, money in its currency."""

    account_id: int
    name: str
    timezone: str
    currency: str


@dataclass(frozen=True)
class OrderQuery:
    """One page of orders, newest first. `before_key` is the exclusive keyset position
    (created_at, id) the page starts after; created_from is inclusive, created_before not."""

    count: int = 100
    before_key: tuple[int, str] | None = None
    statuses: tuple[str, ...] | None = None
    private_ref: str | None = None
    created_from: int | None = None
    created_before: int | None = None


@dataclass(frozen=True)
class OrderRow:
    id: str
    created_at: int
    doc: str
    private_ref: str | None
    event_id: int | None = None  # the change that made this version (event log id)


@dataclass(frozen=True)
class Callback:
    events: dict[str, list[str]]
    watermark: int
    created_at: int


@dataclass(frozen=True)
class Event:
    seq: int  # the change's event id (`changes.event_id`)
    kind: str
    entity_id: str
    version: int
    event_type: str  # "create" | "update"
    created_at: int
    doc: str | None  # the entity now; None if it no longer exists
    private_ref: str | None


class HubRiseStore:
    def __init__(self, store: Store) -> None:
        self.store = store
        self._locations: dict[int, tuple[float, Location]] = {}

    # -- accounts --------------------------------------------------------------------------

    async def location(self, account_id: int) -> Location:
        cached = self._locations.get(account_id)
        if cached is not None and cached[0] > time.monotonic():
            return cached[1]
        async with self.store.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(accounts.c.name, accounts.c.timezone, accounts.c.currency).where(
                        accounts.c.id == account_id
                    )
                )
            ).first()
        if row is None:
            raise NotFound(f"no account with id {account_id}")
        location = Location(account_id, str(row[0]), str(row[1]), str(row[2]))
        self._locations[account_id] = (time.monotonic() + _LOCATION_CACHE_SECONDS, location)
        return location

    # -- orders ----------------------------------------------------------------------------

    async def list_orders(self, principal: Principal, query: OrderQuery) -> list[OrderRow]:
        """Up to `query.count + 1` rows: one more than the page tells that more exist."""
        c = orders.c
        where: list[ColumnElement[bool]] = [c.account_id == principal.account_id]
        if query.before_key is not None:
            where.append(tuple_(c.created_at, c.id) < tuple_(*query.before_key))
        if query.statuses is not None:
            where.append(c.status.in_(query.statuses))
        if query.created_from is not None:
            where.append(c.created_at >= query.created_from)
        if query.created_before is not None:
            where.append(c.created_at < query.created_before)
        refs = _refs_of(principal.connection_id, "order")
        if query.private_ref is not None:
            joined = orders.join(
                refs, and_(refs.c.entity_id == c.id, refs.c.ref == query.private_ref)
            )
        else:
            joined = orders.outerjoin(refs, refs.c.entity_id == c.id)
        statement = (
            select(c.id, c.created_at, c.doc, refs.c.ref, c.event_id)
            .select_from(joined)
            .where(*where)
            .order_by(c.created_at.desc(), c.id.desc())
            .limit(query.count + 1)
        )
        async with self.store.reader.connect() as conn:
            rows = (await conn.execute(statement)).all()
        return [OrderRow(str(r[0]), int(r[1]), str(r[2]), r[3], r[4]) for r in rows]

    async def get_order(self, principal: Principal, order_id: str) -> OrderRow:
        async with self.store.reader.connect() as conn:
            return await _order_row(conn, principal, order_id)

    async def create_order(
        self,
        principal: Principal,
        new: NewOrder,
        ref: str | None,
        answer: Callable[[OrderRow], T],
    ) -> tuple[CreateResult, T | None]:
        """Create one order with this connection's `ref` on it, in one transaction, and build
        the client's answer from the stored row before the commit. Either both the order and
        its ref are saved and answered, or nothing is saved: a ref taken meanwhile by another
        request of the connection (`PrivateRefTaken`), a duplicate identifier (the result's
        errors, answer None) or an answer that cannot be built leave no order behind."""
        async with self.store.writing(None) as conn:
            (result,) = await self.store.insert_orders(conn, principal, [new])
            if result.order is None:
                return result, None
            if ref is not None:
                await _write_ref(conn, principal, "order", result.order.id, ref)
            row = await _order_row(conn, principal, result.order.id)
            return result, await settle(conn, answer(row))

    async def patch_order(
        self,
        principal: Principal,
        order_id: str,
        target: OrderStatus | None,
        ref: str | Unset | None,
        answer: Callable[[OrderRow], T],
    ) -> T:
        """Move the order to `target` (unless it is there already) and set or remove `ref`
        (unless UNSET), all in one transaction with the order row locked, the answer built
        before the commit: a refused part (`InvalidTransition`, `PrivateRefTaken`) leaves the
        other undone, and two identical PATCHes at once both succeed, as one after the other
        would (the second finds the status already reached)."""
        async with self.store.writing(None) as conn:
            current = await conn.scalar(
                select(orders.c.status)
                .where(orders.c.account_id == principal.account_id, orders.c.id == order_id)
                .with_for_update()
            )
            if current is None:
                raise NotFound(f"no order with id {order_id}")
            if target is not None and target != current:
                await self.store.transition_order(
                    principal, principal.account_id, order_id, target, conn=conn
                )
            if not isinstance(ref, Unset):
                await _write_ref(conn, principal, "order", order_id, ref)
            return await settle(conn, answer(await _order_row(conn, principal, order_id)))

    # -- private refs ----------------------------------------------------------------------

    async def ref_holder(self, principal: Principal, kind: str, ref: str) -> str | None:
        """The id of the entity on which this connection uses `ref`, if any."""
        p = private_refs.c
        async with self.store.reader.connect() as conn:
            found = await conn.scalar(
                select(p.entity_id).where(
                    p.connection_id == principal.connection_id, p.entity_kind == kind, p.ref == ref
                )
            )
        return None if found is None else str(found)

    async def set_private_ref(
        self, principal: Principal, kind: str, entity_id: str, ref: str | None
    ) -> None:
        """Set (or with None, remove) this connection's ref on an entity of its account."""
        table = orders if kind == "order" else shipments
        async with self.store.writer.begin() as conn:
            owned = await conn.scalar(
                select(table.c.id).where(
                    table.c.account_id == principal.account_id, table.c.id == entity_id
                )
            )
            if owned is None:
                raise NotFound(f"no {kind} with id {entity_id}")
            await _write_ref(conn, principal, kind, entity_id, ref)

    # -- callbacks -------------------------------------------------------------------------

    async def get_callback(self, principal: Principal) -> Callback | None:
        async with self.store.reader.connect() as conn:
            return await _callback(conn, principal.connection_id)

    async def put_callback(
        self, principal: Principal, events: Mapping[str, Sequence[str]]
    ) -> Callback:
        """Create the connection's callback, events kept from now on; replacing one changes
        its subscription only, so events not yet acknowledged survive a client's restart."""
        return await self.put_callback_answered(principal, events, lambda callback: callback)

    async def put_callback_answered(
        self,
        principal: Principal,
        events: Mapping[str, Sequence[str]],
        answer: Callable[[Callback], T],
        *,
        before: Callable[[AsyncConnection], Awaitable[Any]] | None = None,
    ) -> T:
        """`put_callback`, the client's answer `answer(callback)` built before the commit (and
        kept with an idempotency key, if the request has one). `before(conn)`: a step of the
        same transaction, first (the active subscription's change)."""
        subscription = orjson.dumps({k: sorted(set(v)) for k, v in sorted(events.items())})
        stamp = self.store.clock()
        async with self.store.writer.begin() as conn:
            if before is not None:
                await before(conn)
            # Events are kept from now on: the watermark is the frontier (every event below it
            # is final), and the events already visible above it are acknowledged up front. A
            # transaction with a smaller id that commits later is neither, so it is delivered.
            latest = await frontier(conn) - 1
            # Insert-or-nothing: two concurrent first POSTs cannot both insert, and a
            # replacement keeps the watermark (and so the pending events) of the one it replaces.
            created = await conn.execute(
                _upsert(conn, callbacks)
                .values(
                    connection_id=principal.connection_id,
                    account_id=principal.account_id,
                    events=subscription.decode(),
                    watermark=latest,
                    created_at=stamp,
                    updated_at=stamp,
                )
                .on_conflict_do_nothing(index_elements=["connection_id"])
            )
            if created.rowcount:
                visible = select(literal(principal.connection_id), changes.c.event_id).where(
                    changes.c.account_id == principal.account_id, changes.c.event_id > latest
                )
                await conn.execute(
                    insert(callback_acks).from_select(["connection_id", "seq"], visible)
                )
            else:
                await conn.execute(
                    update(callbacks)
                    .where(callbacks.c.connection_id == principal.connection_id)
                    .values(events=subscription.decode(), updated_at=stamp)
                )
            callback = await _callback(conn, principal.connection_id)
            assert callback is not None
            return await settle(conn, answer(callback))

    async def delete_callback(self, principal: Principal) -> bool:
        return await self.delete_callback_answered(principal, lambda deleted: deleted)

    async def delete_callback_answered(
        self,
        principal: Principal,
        answer: Callable[[bool], T],
        *,
        before: Callable[[AsyncConnection], Awaitable[Any]] | None = None,
    ) -> T:
        """`delete_callback`, the answer `answer(deleted)` built before the commit; `before(conn)`
        a first step of the same transaction."""
        async with self.store.writer.begin() as conn:
            if before is not None:
                await before(conn)
            # The callback row first: deleting it waits for an acknowledgement in flight (which
            # holds that row's lock), so the ack rows deleted next include the one it added.
            result = await conn.execute(
                delete(callbacks).where(callbacks.c.connection_id == principal.connection_id)
            )
            await conn.execute(
                delete(callback_acks).where(
                    callback_acks.c.connection_id == principal.connection_id
                )
            )
            return await settle(conn, answer(bool(result.rowcount)))

    async def pending_events(self, principal: Principal, limit: int = EVENTS_PAGE) -> list[Event]:
        """Unacknowledged events, oldest first; NotFound when the connection has no callback."""
        async with self.store.reader.connect() as conn:
            callback = await _callback(conn, principal.connection_id)
            if callback is None:
                raise NotFound("this connection has no callback; POST /v1/callback first")
            rows = (
                await conn.execute(
                    _event_columns()
                    .where(*_pending(principal, callback))
                    .order_by(changes.c.event_id)
                    .limit(limit)
                )
            ).all()
            return await _with_states(conn, principal, rows)

    async def get_event(self, principal: Principal, seq: int) -> Event:
        async with self.store.reader.connect() as conn:
            callback = await _callback(conn, principal.connection_id)
            if callback is None:
                raise NotFound("this connection has no callback; POST /v1/callback first")
            rows = (
                await conn.execute(
                    _event_columns().where(
                        *_pending(principal, callback), changes.c.event_id == seq
                    )
                )
            ).all()
            if not rows:
                raise NotFound(f"no pending event with id {seq}")
            return (await _with_states(conn, principal, rows))[0]

    async def acknowledge(self, principal: Principal, seq: int) -> Event:
        """Acknowledge one pending event (NotFound if it is not one) and return it."""
        return await self.acknowledge_answered(principal, seq, lambda event: event)

    async def acknowledge_answered(
        self, principal: Principal, seq: int, answer: Callable[[Event], T]
    ) -> T:
        """Acknowledge one pending event (NotFound if it is not one); the client's answer,
        `answer(event)`, is built before the commit, so an event is never acknowledged
        without the client getting it."""
        event = await self.get_event(principal, seq)
        me = principal.connection_id
        async with self.store.writer.begin() as conn:
            # Locking the callback row queues concurrent acks of one callback on PostgreSQL
            # (SQLite writers are serialized anyway), so the watermark moves one step at a time.
            callback = await _callback(conn, me, lock=True)
            if callback is None or seq <= callback.watermark:
                raise NotFound(f"no pending event with id {seq}")
            taken = await conn.scalar(
                select(callback_acks.c.seq).where(
                    callback_acks.c.connection_id == me, callback_acks.c.seq == seq
                )
            )
            if taken is not None:
                raise NotFound(f"no pending event with id {seq}")
            await conn.execute(insert(callback_acks).values(connection_id=me, seq=seq))
            await self._advance_watermark(conn, principal, callback)
            return await settle(conn, answer(event))

    async def _advance_watermark(
        self, conn: AsyncConnection, principal: Principal, callback: Callback
    ) -> None:
        # Every event below the frontier is final; below the first pending one, each is either
        # acknowledged or not this callback's. The watermark may pass all of those.
        first_open = await conn.scalar(
            select(func.min(changes.c.event_id)).where(*_pending(principal, callback))
        )
        edge = await frontier(conn)
        target = (edge if first_open is None else min(edge, int(first_open))) - 1
        if target <= callback.watermark:
            return
        me = principal.connection_id
        await conn.execute(
            update(callbacks).where(callbacks.c.connection_id == me).values(watermark=int(target))
        )
        await conn.execute(
            delete(callback_acks).where(
                callback_acks.c.connection_id == me, callback_acks.c.seq <= int(target)
            )
        )

    async def ack_rows(self, principal: Principal) -> int:
        """How many ack rows the callback keeps (for monitoring and tests)."""
        async with self.store.reader.connect() as conn:
            n = await conn.scalar(
                select(func.count())
                .select_from(callback_acks)
                .where(callback_acks.c.connection_id == principal.connection_id)
            )
        return int(n or 0)


async def _order_row(conn: AsyncConnection, principal: Principal, order_id: str) -> OrderRow:
    c = orders.c
    refs = _refs_of(principal.connection_id, "order")
    row = (
        await conn.execute(
            select(c.id, c.created_at, c.doc, refs.c.ref, c.event_id)
            .select_from(orders.outerjoin(refs, refs.c.entity_id == c.id))
            .where(c.account_id == principal.account_id, c.id == order_id)
        )
    ).first()
    if row is None:
        raise NotFound(f"no order with id {order_id}")
    return OrderRow(str(row[0]), int(row[1]), str(row[2]), row[3], row[4])


async def _write_ref(
    conn: AsyncConnection, principal: Principal, kind: str, entity_id: str, ref: str | None
) -> None:
    """Set (None: remove) the connection's ref on the entity, in the caller's transaction.

    No check-then-write: the unique constraint decides which of two concurrent requests gets
    a ref, and the loser's `PrivateRefTaken` rolls back its whole transaction.
    """
    p = private_refs.c
    key = and_(
        p.connection_id == principal.connection_id,
        p.entity_kind == kind,
        p.entity_id == entity_id,
    )
    if ref is None:
        await conn.execute(delete(private_refs).where(key))
        return
    try:
        await conn.execute(
            _upsert(conn, private_refs)
            .values(
                connection_id=principal.connection_id,
                entity_kind=kind,
                entity_id=entity_id,
                ref=ref,
            )
            .on_conflict_do_update(
                index_elements=["connection_id", "entity_kind", "entity_id"],
                set_={"ref": ref},
            )
        )
    except IntegrityError:
        raise PrivateRefTaken(
            f"this connection already uses private_ref {ref!r} on another {kind}"
        ) from None


def _refs_of(connection_id: int, kind: str) -> Any:
    p = private_refs
    return (
        select(p.c.entity_id, p.c.ref)
        .where(p.c.connection_id == connection_id, p.c.entity_kind == kind)
        .subquery("refs")
    )


def _upsert(conn: AsyncConnection, table: Any) -> Any:
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


async def _callback(
    conn: AsyncConnection, connection_id: int, *, lock: bool = False
) -> Callback | None:
    statement = select(callbacks.c.events, callbacks.c.watermark, callbacks.c.created_at).where(
        callbacks.c.connection_id == connection_id
    )
    row = (await conn.execute(statement.with_for_update() if lock else statement)).first()
    if row is None:
        return None
    return Callback(orjson.loads(row[0]), int(row[1]), int(row[2]))


def _event_columns() -> Any:
    c = changes.c
    return select(c.event_id, c.entity_kind, c.entity_id, c.version, c.event_type, c.created_at)


def _pending(principal: Principal, callback: Callback) -> list[ColumnElement[bool]]:
    c = changes.c
    me = principal.connection_id
    subscribed = []
    for kind, types in callback.events.items():
        created = f"{kind}.created"
        condition = c.entity_kind == kind
        if set(types) == {"create"}:
            condition = and_(condition, c.event_type == created)
        elif set(types) == {"update"}:
            condition = and_(condition, c.event_type != created)
        subscribed.append(condition)
    acked = exists().where(callback_acks.c.connection_id == me, callback_acks.c.seq == c.event_id)
    return [
        c.account_id == principal.account_id,
        c.event_id > callback.watermark,
        or_(c.connection_id.is_(None), c.connection_id != me),
        or_(*subscribed),
        ~acked,
    ]


async def _with_states(
    conn: AsyncConnection, principal: Principal, rows: Sequence[Any]
) -> list[Event]:
    ids = {kind: {str(r[2]) for r in rows if r[1] == kind} for kind in EVENT_KINDS}
    docs: dict[tuple[str, str], tuple[str, str | None]] = {}
    if ids["order"]:
        refs = _refs_of(principal.connection_id, "order")
        found = await conn.execute(
            select(orders.c.id, orders.c.doc, refs.c.ref)
            .select_from(orders.outerjoin(refs, refs.c.entity_id == orders.c.id))
            .where(orders.c.account_id == principal.account_id, orders.c.id.in_(ids["order"]))
        )
        docs |= {("order", str(r[0])): (str(r[1]), r[2]) for r in found}
    if ids["shipment"]:
        found = await conn.execute(
            select(shipments.c.id, shipments.c.doc).where(
                shipments.c.account_id == principal.account_id, shipments.c.id.in_(ids["shipment"])
            )
        )
        docs |= {("shipment", str(r[0])): (str(r[1]), None) for r in found}
    events = []
    for seq, kind, entity_id, version, event_type, created_at in rows:
        doc, ref = docs.get((kind, entity_id), (None, None))
        events.append(
            Event(
                int(seq),
                str(kind),
                str(entity_id),
                int(version),
                "create" if event_type == f"{kind}.created" else "update",
                int(created_at),
                doc,
                ref,
            )
        )
    return events
