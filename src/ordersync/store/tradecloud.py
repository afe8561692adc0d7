"""Tradecloud's buyer order writes (`POST /v2/api-connector/order`): one transaction each.

The message names its order by `purchaseOrderNumber` (the hub's `customer_identifier`). In
one write transaction the order is read under a row lock, the message planned against it
(`ordersync.wire.tradecloud_buyer.plan`: create, update, cancel or nothing) and written
through the store's one write path (a new version, an event in the log, the counters), and
the client's answer built and, with an `Idempotency-Key`, stored (`settle`).

Two messages for a new purchaseOrderNumber at once: both find no order; the insert's
`ON CONFLICT DO NOTHING` lets one create it, and the other (on PostgreSQL it waited for the
first's commit) then locks the order the first created and applies itself as an update. So
a message is never lost to a race, and no order is created twice.
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, TypeVar

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersync.domain.lifecycle import OrderStatus
from ordersync.domain.orders import NewOrder, Order
from ordersync.errors import ValidationFailed
from ordersync.store.idempotency import settle
from ordersync.store.store import Principal, Store
from ordersync.store.tables import orders
from ordersync.wire.tradecloud_buyer import OrderMessage, message_field, plan

T = TypeVar("T")


@dataclass(frozen=True)
class Outcome:
    """What a message did: `created`, `updated`, `cancelled` or `unchanged`, and the order as
    it now stands with the event id of its current version."""

    action: str
    order: Order
    event_id: int | None


class TradecloudStore:
    def __init__(self, store: Store) -> None:
        self.store = store

    async def send_order(
        self, principal: Principal, message: OrderMessage, answer: Callable[[Outcome], T]
    ) -> T:
        async with self.store.writing(None) as conn:
            outcome = await self._apply(conn, principal, message)
            return await settle(conn, answer(outcome))

    async def _apply(
        self, conn: AsyncConnection, principal: Principal, message: OrderMessage
    ) -> Outcome:
        number = message.order.purchaseOrderNumber
        before = await _locked_order(conn, principal.account_id, number)
        if before is None:
            first = plan(None, message, self.store.clock())
            assert first.order is not None
            (result,) = await self.store.insert_orders(conn, principal, [first.order])
            if result.order is not None:
                return await _outcome(conn, "created", result.order)
            before = await _locked_order(conn, principal.account_id, number)
            if before is None:  # refused for another reason than a concurrent create
                raise ValidationFailed("the order cannot be created", _named(result.errors))
        return await self._change(conn, principal, before, message)

    async def _change(
        self, conn: AsyncConnection, principal: Principal, before: Order, message: OrderMessage
    ) -> Outcome:
        step = plan(before, message, self.store.clock())
        account_id = principal.account_id
        if step.action == "unchanged":
            return await _outcome(conn, "unchanged", before)
        if step.action == "cancel":
            after = await self.store.transition_order(
                principal, account_id, before.id, OrderStatus.CANCELED, conn=conn
            )
            return await _outcome(conn, "cancelled", after)
        replacement = step.order
        assert replacement is not None
        after = await self.store.update_order(
            principal,
            account_id,
            before.id,
            lambda current: _replaced(current, replacement),
            "order.updated",
            conn=conn,
        )
        return await _outcome(conn, "updated", after)


def _replaced(before: Order, replacement: NewOrder) -> Order:
    """`before` with the replacement's fields (identity, status and stamps kept); a line equal
    to its old self keeps its `updated_at`."""
    old = {line.line_number: line for line in before.line_items}
    lines = []
    for item in replacement.line_items:
        kept = old.get(item.line_number)
        fresh = item.model_dump()
        if kept is not None and kept.model_dump(exclude={"updated_at"}) == fresh:
            lines.append(kept.model_dump())
        else:
            lines.append(fresh)
    data = (
        before.model_dump()
        | replacement.model_dump(exclude={"customer_identifier", "line_items"})
        | {"line_items": lines}
    )
    return Order.model_validate(data)


async def _locked_order(conn: AsyncConnection, account_id: int, number: str) -> Order | None:
    doc = await conn.scalar(
        select(orders.c.doc)
        .where(orders.c.account_id == account_id, orders.c.customer_identifier == number)
        .with_for_update()
    )
    return None if doc is None else Order.model_validate_json(doc)


async def _outcome(conn: AsyncConnection, action: str, order: Order) -> Outcome:
    event_id = await conn.scalar(select(orders.c.event_id).where(orders.c.id == order.id))
    return Outcome(action, order, None if event_id is None else int(event_id))


def _named(errors: Any) -> list[tuple[str, str]]:
    return [(message_field(f), m) for f, m in errors]
