"""MasonHub asynchronous writes: order update and cancel requests, and their resolver.

A client's `POST /order_update_requests` or `/order_cancel_requests` is answered at once: each
accepted item becomes a `pending` request row, committed in the transaction that builds the
answer (a client is never told of a request that was not saved, nor left unaware of one that
was). A resolver, a background task of every hub worker, resolves the due ones later:

- update: applied as a new version of the order (full replacement of the mutable fields,
  through `Store.update_order`, so the event log, counters and monotonic `updated_at` apply)
  while the order is `open` or `atWarehouse` (`UPDATABLE`); once the warehouse has started on
  it (`inProcess`), packed it or shipped it, or it is canceled, the request fails with a reason.
- cancel: the order moves to `canceled` while the lifecycle allows it (`CANCELABLE`: until
  packed), else the request fails with the lifecycle's reason.

Each resolution, and the order's new version it may make, commit in one transaction, together
with an event-log row of its own kind (`entity_kind` "request", `event_type`
`orderUpdateResolution` / `orderCancelResolution`, `entity_id` the request id, version 1), so a
webhook deliverer following the log delivers every resolution exactly when it becomes final.

Several resolvers (workers, hosts) may run at once: on PostgreSQL each claims its batch with
`FOR UPDATE SKIP LOCKED`, so no request is resolved twice and none waits for another worker;
on SQLite writers are serialized (`BEGIN IMMEDIATE`) and a claimed row is no longer `pending`
for the next. A request goes from `pending` to `success` or `failed` in one transaction (a
crash mid-resolution leaves it `pending`); `processing`, MasonHub's intermediate status, is
accepted as a listing filter but never stored.
"""

from __future__ import annotations

import asyncio
import uuid
from collections.abc import Callable, Sequence
from dataclasses import dataclass
from typing import Any, TypeVar

import structlog
from sqlalchemy import Row, and_, insert, or_, select, update
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersync.domain import NewOrder, Order, OrderStatus, check_transition, format_rfc3339
from ordersync.domain.lifecycle import CANCELABLE
from ordersync.domain.orders import OrderLine
from ordersync.errors import InvalidTransition, NotFound
from ordersync.store.events import allocate_event_ids
from ordersync.store.idempotency import settle
from ordersync.store.store import Principal, Store, unknown_sku_errors, unknown_skus
from ordersync.store.tables import (
    accounts,
    changes,
    connections,
    order_cancel_requests,
    order_update_requests,
    orders,
)

log = structlog.get_logger("ordersync.hub")
T = TypeVar("T")

UPDATE = "update"
CANCEL = "cancel"
PENDING, PROCESSING, SUCCESS, FAILED = "pending", "processing", "success", "failed"
STATUSES = (PENDING, PROCESSING, SUCCESS, FAILED)
REQUEST_KIND = "request"  # `changes.entity_kind` of a resolution
RESOLUTION_EVENTS = {UPDATE: "orderUpdateResolution", CANCEL: "orderCancelResolution"}
# Statuses in which an order still takes an update: the warehouse has not started on it.
UPDATABLE = frozenset({OrderStatus.OPEN, OrderStatus.AT_WAREHOUSE})
DEFAULT_DELAY_MS = 3_000
RESOLVE_BATCH = 20

_TABLES = {UPDATE: order_update_requests, CANCEL: order_cancel_requests}


@dataclass(frozen=True)
class RequestItem:
    """One accepted or refused item of a request batch, in request order."""

    customer_identifier: str | None
    id: str | None = None  # the stored request's id when accepted
    errors: tuple[tuple[str, str], ...] = ()
    # More members of a refused item's result (DUPLICATE_CANCELLATION names the request).
    extra: tuple[tuple[str, str], ...] = ()

    @property
    def accepted(self) -> bool:
        return self.id is not None


@dataclass(frozen=True)
class RequestQuery:
    ids: tuple[str, ...] = ()
    statuses: tuple[str, ...] = ()
    resolved_after: int | None = None
    offset: int = 0
    limit: int = 30


def not_updatable_reason(status: OrderStatus) -> str | None:
    """Why an order in `status` no longer takes an update; None while it does."""
    if status in UPDATABLE:
        return None
    return (
        f"409: the order is {status} and can no longer be updated "
        f"(only {', '.join(sorted(UPDATABLE))} orders can)"
    )


def not_cancelable_reason(status: OrderStatus) -> str | None:
    try:
        check_transition(status, OrderStatus.CANCELED)
    except InvalidTransition as exc:
        return f"409: {exc}"
    return None


class RequestStore:
    """Update and cancel requests of a `Store`: submission, listing, resolution."""

    def __init__(self, store: Store, *, delay_ms: int = DEFAULT_DELAY_MS) -> None:
        self.store = store
        self.delay_ms = delay_ms

    # -- submission -----------------------------------------------------------------------

    async def submit_updates(
        self,
        principal: Principal,
        items: Sequence[NewOrder | RequestItem],
        answer: Callable[[list[RequestItem]], T],
    ) -> T:
        """Store a pending update request per valid item (`RequestItem`s are refusals made
        before the store, kept in place); `answer(results)` is built before the commit."""
        async with self.store.writing(None) as conn:
            results: list[RequestItem] = []
            for item in items:
                if isinstance(item, RequestItem):
                    results.append(item)
                    continue
                identifier = item.customer_identifier
                row = await _order_by_identifier(conn, principal.account_id, identifier)
                if row is None:
                    results.append(_missing(identifier))
                    continue
                reason = not_updatable_reason(OrderStatus(str(row.status)))
                if reason is not None:
                    results.append(RequestItem(identifier, errors=(("status", reason),)))
                    continue
                unknown = await unknown_skus(conn, principal.account_id, [item])
                if unknown:
                    results.append(
                        RequestItem(identifier, errors=tuple(unknown_sku_errors(item, unknown)))
                    )
                    continue
                request_id = str(uuid.uuid4())
                stamp = self.store.clock()
                await conn.execute(
                    insert(order_update_requests).values(
                        _row(request_id, principal, str(row.id), identifier, stamp)
                        | {"doc": item.model_dump_json()}
                    )
                )
                results.append(RequestItem(identifier, request_id))
            return await settle(conn, answer(results))

    async def submit_cancels(
        self,
        principal: Principal,
        items: Sequence[tuple[str | None, str | None] | RequestItem],
        answer: Callable[[list[RequestItem]], T],
    ) -> T:
        """Store a pending cancel request per item, given as (customer_identifier,
        order_cancel_request_id). The order row is locked first, so two concurrent cancels of
        one order queue and the second sees the first: it is refused as a duplicate naming
        the existing request (`DUPLICATE_CANCELLATION`) while that one is pending or
        succeeded; after a failed one, a new cancel is accepted (and resolved on its own)."""
        cancels = order_cancel_requests
        async with self.store.writing(None) as conn:
            results: list[RequestItem] = []
            for item in items:
                if isinstance(item, RequestItem):
                    results.append(item)
                    continue
                identifier, by_request = item
                if identifier is None and by_request is not None:
                    # By an earlier cancel request's id: cancel that request's order again.
                    identifier = await conn.scalar(
                        select(cancels.c.customer_identifier).where(
                            cancels.c.account_id == principal.account_id,
                            cancels.c.id == by_request,
                        )
                    )
                    if identifier is None:
                        results.append(
                            RequestItem(
                                None,
                                errors=(
                                    (
                                        "order_cancel_request_id",
                                        f"303: no order cancel request with id {by_request}",
                                    ),
                                ),
                            )
                        )
                        continue
                assert identifier is not None
                row = await _order_by_identifier(conn, principal.account_id, identifier, lock=True)
                if row is None:
                    results.append(_missing(identifier))
                    continue
                existing = (
                    await conn.execute(
                        select(cancels.c.id, cancels.c.status)
                        .where(
                            cancels.c.order_id == row.id,
                            cancels.c.status.in_((PENDING, PROCESSING, SUCCESS)),
                        )
                        .order_by(cancels.c.created_at)
                        .limit(1)
                    )
                ).first()
                if existing is not None:
                    results.append(
                        RequestItem(
                            identifier,
                            errors=(
                                (
                                    "customer_identifier",
                                    f"DUPLICATE_CANCELLATION: order {identifier!r} already has "
                                    f"cancel request {existing[0]} ({existing[1]}); "
                                    f"existing_request_id={existing[0]} "
                                    f"existing_status={existing[1]}",
                                ),
                            ),
                            extra=(
                                ("error_code", "DUPLICATE_CANCELLATION"),
                                ("existing_request_id", str(existing[0])),
                                ("existing_status", str(existing[1])),
                            ),
                        )
                    )
                    continue
                reason = not_cancelable_reason(OrderStatus(str(row.status)))
                if reason is not None:
                    results.append(RequestItem(identifier, errors=(("status", reason),)))
                    continue
                request_id = str(uuid.uuid4())
                await conn.execute(
                    insert(cancels).values(
                        _row(request_id, principal, str(row.id), identifier, self.store.clock())
                    )
                )
                results.append(RequestItem(identifier, request_id))
            return await settle(conn, answer(results))

    # -- listing --------------------------------------------------------------------------

    async def list(self, kind: str, account_id: int, query: RequestQuery) -> list[dict[str, Any]]:
        """The account's requests of `kind`, oldest first, as the listing renders them."""
        table = _TABLES[kind]
        c = table.c
        where = [c.account_id == account_id]
        if query.ids:
            where.append(c.id.in_(query.ids))
        if query.statuses:
            where.append(c.status.in_(query.statuses))
        if query.resolved_after is not None:
            where.append(c.resolved_at > query.resolved_after)
        statement = (
            select(
                c.id,
                c.order_id,
                c.customer_identifier,
                c.status,
                c.reason,
                c.created_at,
                c.updated_at,
                c.resolved_at,
            )
            .where(*where)
            .order_by(c.created_at, c.id)
            .offset(query.offset)
            .limit(query.limit)
        )
        async with self.store.reader.connect() as conn:
            rows = (await conn.execute(statement)).all()
        return [
            {
                "id": r[0],
                "order_id": r[1],
                "customer_identifier": r[2],
                "status": r[3],
                "reason": r[4],
                "created_at": r[5],
                "updated_at": r[6],
                "resolved_at": r[7],
            }
            for r in rows
        ]

    async def resolution(self, event_type: str, request_id: str) -> dict[str, Any] | None:
        """The `data` of a resolution event (a `changes` row of kind "request"), as MasonHub's
        `orderUpdateResolution` / `orderCancelResolution` callbacks carry it: `id`,
        `customer_order_id`, `status` success|failure, `reason` (updates), `created_at`,
        `updated_at`; plus `order_id` and `resolved_at`. None if the request is unknown. For the
        webhook deliverer: the log row says which request, this renders it."""
        kind = next((k for k, e in RESOLUTION_EVENTS.items() if e == event_type), None)
        if kind is None:
            return None
        c = _TABLES[kind].c
        async with self.store.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        c.id,
                        c.customer_identifier,
                        c.order_id,
                        c.status,
                        c.reason,
                        c.created_at,
                        c.updated_at,
                        c.resolved_at,
                    ).where(c.id == request_id)
                )
            ).first()
        if row is None:
            return None
        data: dict[str, Any] = {
            "id": row[0],
            "customer_order_id": row[1],
            "order_id": row[2],
            "status": "success" if row[3] == SUCCESS else "failure" if row[3] == FAILED else row[3],
            "created_at": format_rfc3339(int(row[5])),
            "updated_at": format_rfc3339(int(row[6])),
            "resolved_at": None if row[7] is None else format_rfc3339(int(row[7])),
        }
        if kind == UPDATE:
            data["reason"] = row[4]
        elif row[4] is not None:
            data["reason"] = row[4]  # an extension: why the cancel failed
        return data

    # -- resolution -----------------------------------------------------------------------

    async def resolve_due(self, *, everything: bool = False, account_id: int | None = None) -> int:
        """Resolve the pending requests older than the delay (all of them with
        `everything`, e.g. the sandbox trigger), batch by batch; how many were resolved."""
        resolved = 0
        for kind in (UPDATE, CANCEL):
            while True:
                n = await self._resolve_batch(kind, everything, account_id)
                resolved += n
                if n < RESOLVE_BATCH:
                    break
        return resolved

    async def _resolve_batch(self, kind: str, everything: bool, account_id: int | None) -> int:
        table = _TABLES[kind]
        c = table.c
        where = [c.status == PENDING]
        if not everything:
            where.append(c.created_at <= self.store.clock() - self.delay_ms)
        if account_id is not None:
            where.append(c.account_id == account_id)
        claim = (
            select(table)
            .where(*where)
            .order_by(c.created_at, c.id)
            .limit(RESOLVE_BATCH)
            .with_for_update(skip_locked=True)
        )
        async with self.store.writing(None) as conn:
            rows = (await conn.execute(claim)).all()
            for row in rows:
                await self._resolve(conn, kind, row)
        return len(rows)

    async def _resolve(self, conn: AsyncConnection, kind: str, request: Row[Any]) -> None:
        table = _TABLES[kind]
        await conn.execute(update(table).where(table.c.id == request.id).values(status=PROCESSING))
        principal = await _principal(conn, request)
        reason: str | None = None
        try:
            if kind == UPDATE:
                await _not_superseded(conn, request)
                replacement = NewOrder.model_validate_json(request.doc)
                # The catalogue may have changed since the request was accepted.
                if unknown := await unknown_skus(conn, int(request.account_id), [replacement]):
                    raise _NotUpdatable(
                        f"422: unknown SKU {', '.join(sorted(unknown))}: not in this"
                        " account's catalogue"
                    )
                await self.store.update_order(
                    principal,
                    int(request.account_id),
                    str(request.order_id),
                    lambda before: _replaced(before, replacement),
                    "order.updated",
                    conn=conn,
                )
            else:
                await self.store.transition_order(
                    principal,
                    int(request.account_id),
                    str(request.order_id),
                    OrderStatus.CANCELED,
                    conn=conn,
                )
        except _NotUpdatable as exc:
            reason = str(exc)
        except InvalidTransition as exc:
            reason = f"409: {exc}"
        except NotFound:
            reason = "303: the order does not exist"
        stamp = self.store.clock()
        status = SUCCESS if reason is None else FAILED
        await conn.execute(
            update(table)
            .where(table.c.id == request.id)
            .values(status=status, reason=reason, resolved_at=stamp, updated_at=stamp)
        )
        (event_id,) = await allocate_event_ids(conn, 1)
        await conn.execute(
            insert(changes).values(
                account_id=int(request.account_id),
                entity_kind=REQUEST_KIND,
                entity_id=str(request.id),
                version=1,
                event_type=RESOLUTION_EVENTS[kind],
                connection_id=None,  # the hub resolved it
                created_at=stamp,
                event_id=event_id,
            )
        )
        log.info(
            "request_resolved", kind=kind, request_id=str(request.id), status=status, reason=reason
        )


class _NotUpdatable(Exception):
    """Raised inside `update_order`'s change (or just before it), before anything is written."""


async def _not_superseded(conn: AsyncConnection, request: Row[Any]) -> None:
    """Refuse an update when a later update of the same order was already applied: two
    workers may resolve two updates of one order at once (SKIP LOCKED hands them one each),
    and the later replacement must win. The order row is locked first, so the other worker's
    resolution, if any, has committed (and is seen) before the check."""
    await conn.execute(select(orders.c.id).where(orders.c.id == request.order_id).with_for_update())
    t = order_update_requests.c
    newer = await conn.scalar(
        select(t.id)
        .where(
            t.order_id == request.order_id,
            t.status == SUCCESS,
            or_(
                t.created_at > request.created_at,
                and_(t.created_at == request.created_at, t.id > request.id),
            ),
        )
        .limit(1)
    )
    if newer is not None:
        raise _NotUpdatable(f"409: superseded by update request {newer}, applied before it")


def _replaced(before: Order, replacement: NewOrder) -> Order:
    """`before` with every mutable field replaced by `replacement`'s (identity, status and
    timestamps kept); a line equal to the old line of its number keeps its `updated_at`."""
    reason = not_updatable_reason(before.status)
    if reason is not None:
        raise _NotUpdatable(reason)
    old_lines = {line.line_number: line for line in before.line_items}
    lines = []
    for item in replacement.line_items:
        old = old_lines.get(item.line_number)
        line = OrderLine(**item.model_dump())
        if old is not None and old.model_copy(update={"updated_at": None}) == line:
            line = old
        lines.append(line)
    data = (
        before.model_dump()
        | replacement.model_dump(exclude={"customer_identifier", "line_items"})
        | {"line_items": [line.model_dump() for line in lines]}
    )
    return Order.model_validate(data)


def _row(
    request_id: str, principal: Principal, order_id: str, identifier: str, stamp: int
) -> dict[str, Any]:
    return {
        "id": request_id,
        "account_id": principal.account_id,
        "order_id": order_id,
        "customer_identifier": identifier,
        "connection_id": principal.connection_id,
        "status": PENDING,
        "reason": None,
        "created_at": stamp,
        "updated_at": stamp,
        "resolved_at": None,
    }


def _missing(identifier: str) -> RequestItem:
    return RequestItem(
        identifier,
        errors=(("customer_identifier", f"303: order {identifier!r} does not exist"),),
    )


async def _order_by_identifier(
    conn: AsyncConnection, account_id: int, identifier: str, *, lock: bool = False
) -> Any:  # the order's (id, status) row, or None
    statement = select(orders.c.id, orders.c.status).where(
        orders.c.account_id == account_id, orders.c.customer_identifier == identifier
    )
    if lock:
        statement = statement.with_for_update()
    return (await conn.execute(statement)).first()


async def _principal(conn: AsyncConnection, request: Row[Any]) -> Principal | None:
    """The requesting connection, so the order's new version names it (`updated_by`: echo
    detection); None when it is gone."""
    if request.connection_id is None:
        return None
    row = (
        await conn.execute(
            select(connections.c.id, connections.c.name, accounts.c.id, accounts.c.name)
            .join(accounts, accounts.c.id == connections.c.account_id)
            .where(connections.c.id == request.connection_id)
        )
    ).first()
    if row is None:
        return None
    return Principal(int(row[0]), str(row[1]), int(row[2]), str(row[3]))


async def resolve_forever(requests: RequestStore, interval_s: float) -> None:
    """The resolver task of a hub worker: resolve what is due, sleep, again. An error is
    logged and retried next round (the batch in flight rolled back, still pending)."""
    while True:
        try:
            await requests.resolve_due()
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next round retries; the worker keeps serving
            log.warning("request_resolution_failed", error=repr(exc))
        await asyncio.sleep(interval_s)


__all__ = [
    "CANCEL",
    "CANCELABLE",
    "STATUSES",
    "UPDATE",
    "RequestItem",
    "RequestQuery",
    "RequestStore",
    "resolve_forever",
]
