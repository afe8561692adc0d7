"""The warehouse worker: every order of an account, from `open` to `delivered`, against the stock.

Each step is ONE transaction through the store's write path (so every change gets its version
and its event-log row) over orders it *claims*: `SELECT ... FOR UPDATE SKIP LOCKED` on
PostgreSQL (SQLite serializes writers with `BEGIN IMMEDIATE`), re-checking the status under the
lock. A second worker (another hub process) skips what this one holds and finds the rest moved
on, so nothing is processed twice. Locks are always taken orders first, then shipments, then
SKUs (sku order, `InventoryStore.read_stock(..., for_update=True)`), so workers queue instead of
deadlocking.

Steps (what moves an order; the pacing, when each step is due, is the caller's: the simulator's
scheduler in `hub/simulator.py`, or a test):

- `admit`: `open` -> `atWarehouse`.
- `allocate`: `atWarehouse` orders, highest priority first (`domain/allocation.py`), against the
  stock of their SKUs, read and written under lock: allocated units move `available` ->
  `allocated`, the order moves to `inProcess` with its `allocations` (one group per location)
  and its `shorts`. A hard `pick_from` nothing matches fails the order (`canceled`, with
  `failure`). An order that cannot be allocated now stays `atWarehouse` and is tried again;
  `single_shipment` orders fail (`single_shipment_timeout`) once they have waited
  `single_shipment_wait_ms` since they reached `atWarehouse` (their `updated_at`).
- `pack`: `inProcess` -> `packed`: one `manifested` shipment per location group, with its lines
  (and lots), a tracking number and the order's value-added services.
- `ship`: `packed` -> `fulfilled`: all its shipments `shipped`; their units leave the stock
  (`allocated` down).
- `move_shipments`: `shipped` -> `in_transit` -> `delivered`; the order becomes `delivered` in
  the transaction that delivers its last shipment.
- `release_canceled`: an order canceled after allocation gives its units back (`allocated` ->
  `available`) and drops its allocations.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass, field, replace
from datetime import UTC, date, datetime
from decimal import Decimal

from sqlalchemy import select
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersync.domain import (
    NewShipment,
    Order,
    OrderStatus,
    Shipment,
    ShipmentLine,
    ShipmentStatus,
    check_transition,
    parse_rfc3339_ms,
)
from ordersync.domain.allocation import (
    Allocated,
    Failed,
    Unallocatable,
    Waiting,
    allocate,
    demand_from_order,
)
from ordersync.domain.inventory import Stock, StockKey, StockUnit
from ordersync.domain.orders import (
    AllocatedLine,
    LocationAllocation,
    OrderFailure,
    OrderPolicy,
    OrderShort,
)
from ordersync.store.inventory import InventoryStore
from ordersync.store.store import Principal, Store
from ordersync.store.tables import orders, shipments

DEFAULT_SINGLE_SHIPMENT_WAIT_MS = 10 * 60 * 1000
SINGLE_SHIPMENT_TIMEOUT = "single_shipment_timeout"
# Picks the tracking number of a shipment: (order, location) -> number.
Tracking = Callable[[Order, str], str]
# One order write of a step: (order id, change, event type), see `Store.update_orders`.
Edit = tuple[str, Callable[[Order], Order], str]


@dataclass
class AllocationReport:
    """What one `allocate` call did, by order id."""

    allocated: list[str] = field(default_factory=list)
    waiting: dict[str, str] = field(default_factory=dict)  # id -> reason
    failed: dict[str, str] = field(default_factory=dict)  # id -> failure reason


class WarehouseWorker:
    """The warehouse's steps over the orders of `principal`'s account (module docstring)."""

    def __init__(
        self,
        store: Store,
        principal: Principal,
        *,
        single_shipment_wait_ms: int = DEFAULT_SINGLE_SHIPMENT_WAIT_MS,
    ) -> None:
        self.store = store
        self.principal = principal
        self.account_id = principal.account_id
        self.inventory = InventoryStore(store)
        self.single_shipment_wait_ms = single_shipment_wait_ms

    # -- work queues -------------------------------------------------------------------------

    async def orders_in(self, status: OrderStatus, *, limit: int = 10_000) -> list[tuple[str, str]]:
        """(id, customer_identifier) of the account's orders in `status`, oldest change first."""
        query = (
            select(orders.c.id, orders.c.customer_identifier)
            .where(orders.c.account_id == self.account_id, orders.c.status == str(status))
            .order_by(orders.c.updated_at, orders.c.id)
            .limit(limit)
        )
        async with self.store.reader.connect() as conn:
            return [(str(r[0]), str(r[1])) for r in await conn.execute(query)]

    async def shipments_in(self, status: ShipmentStatus, *, limit: int = 10_000) -> list[Shipment]:
        query = (
            select(shipments.c.doc)
            .where(shipments.c.account_id == self.account_id, shipments.c.status == str(status))
            .order_by(shipments.c.updated_at, shipments.c.id)
            .limit(limit)
        )
        async with self.store.reader.connect() as conn:
            return [Shipment.model_validate_json(r[0]) for r in await conn.execute(query)]

    # -- steps -------------------------------------------------------------------------------

    async def admit(self, order_ids: Sequence[str]) -> list[str]:
        """`open` -> `atWarehouse`; the ids moved."""
        return await self._move(order_ids, OrderStatus.OPEN, OrderStatus.AT_WAREHOUSE)

    async def pack(self, order_ids: Sequence[str], tracking: Tracking) -> list[Shipment]:
        """`inProcess` -> `packed`, with one manifested shipment per location group."""
        created: list[Shipment] = []
        packed: list[str] = []
        async with self.store.writing(None) as conn:
            for order in await self._claim(conn, order_ids, OrderStatus.IN_PROCESS):
                for group in order.allocations:
                    created.append(
                        await self.store.create_shipment(
                            self.principal,
                            self.account_id,
                            _shipment_of(order, group, tracking(order, group.location)),
                            status=ShipmentStatus.MANIFESTED,
                            conn=conn,
                        )
                    )
                packed.append(order.id)
            await self._transition(conn, packed, OrderStatus.PACKED)
        return created

    async def ship(self, order_ids: Sequence[str]) -> list[Shipment]:
        """`packed` -> `fulfilled`: its manifested shipments ship, their units leave the stock.
        The shipments shipped."""
        shipped: list[Shipment] = []
        async with self.store.writing(None) as conn:
            claimed = await self._claim(conn, order_ids, OrderStatus.PACKED)
            if not claimed:
                return shipped
            manifested = await self._shipments_of(conn, [o.id for o in claimed])
            leaving = [line for s in manifested for line in _unit_lines(s)]
            await self._take_out(conn, leaving, "inventory.shipped")
            for shipment in manifested:
                shipped.append(
                    await self.store.transition_shipment(
                        self.principal,
                        self.account_id,
                        shipment.id,
                        ShipmentStatus.SHIPPED,
                        conn=conn,
                    )
                )
            await self._transition(conn, [order.id for order in claimed], OrderStatus.FULFILLED)
        return shipped

    async def move_shipments(
        self, shipment_ids: Sequence[str], target: ShipmentStatus
    ) -> list[Shipment]:
        """`shipped` -> `in_transit` or `in_transit` -> `delivered`; an order whose shipments
        are then all delivered becomes `delivered` in the same transaction."""
        before = {
            ShipmentStatus.IN_TRANSIT: ShipmentStatus.SHIPPED,
            ShipmentStatus.DELIVERED: ShipmentStatus.IN_TRANSIT,
        }[target]
        moved: list[Shipment] = []
        async with self.store.writing(None) as conn:
            if target is ShipmentStatus.DELIVERED:
                # Orders before shipments, as in every step: lock the orders these belong to.
                owners = await conn.scalars(
                    select(shipments.c.order_id)
                    .where(
                        shipments.c.account_id == self.account_id,
                        shipments.c.id.in_(list(shipment_ids)),
                    )
                    .distinct()
                )
                await conn.execute(
                    select(orders.c.id)
                    .where(
                        orders.c.account_id == self.account_id,
                        orders.c.id.in_(sorted(str(o) for o in owners)),
                    )
                    .order_by(orders.c.id)
                    .with_for_update()
                )
            rows = await conn.execute(
                select(shipments.c.id, shipments.c.order_id)
                .where(
                    shipments.c.account_id == self.account_id,
                    shipments.c.id.in_(list(shipment_ids)),
                    shipments.c.status == str(before),
                )
                .order_by(shipments.c.id)
                .with_for_update(skip_locked=True)
            )
            claimed = [(str(r[0]), str(r[1])) for r in rows]
            for shipment_id, _ in claimed:
                moved.append(
                    await self.store.transition_shipment(
                        self.principal, self.account_id, shipment_id, target, conn=conn
                    )
                )
            if target is ShipmentStatus.DELIVERED:
                for order_id in sorted({order_id for _, order_id in claimed}):
                    await self._deliver_if_complete(conn, order_id)
        return moved

    async def allocate(self, order_ids: Sequence[str]) -> AllocationReport:
        """Allocate the `atWarehouse` orders among `order_ids` (module docstring)."""
        report = AllocationReport()
        async with self.store.writing(None) as conn:
            claimed = await self._claim(conn, order_ids, OrderStatus.AT_WAREHOUSE)
            if not claimed:
                return report
            now = self.store.clock()
            by_identifier, demands = {}, []
            edits: list[Edit] = []
            for order in claimed:
                try:
                    demand = demand_from_order(order)
                except Unallocatable as exc:
                    failure = OrderFailure(reason=str(exc.reason), detail=str(exc))
                    edits.append(_failed(order.id, failure))
                    report.failed[order.id] = failure.reason
                    continue
                # Ties on priority and submission time go by customer_identifier, not by the
                # random id: the same orders allocate the same way every time.
                by_identifier[order.customer_identifier] = order
                demands.append(replace(demand, id=order.customer_identifier))
            codes = sorted({line.sku for d in demands for line in d.lines})
            stock = await self.inventory.read_stock(conn, self.account_id, codes, for_update=True)
            run = allocate(demands, stock, today=_day(now))
            changed = _changed_units(stock, run.stock)
            if changed:
                await self.inventory.apply_stock(
                    conn, self.principal, self.account_id, changed, event_type="inventory.allocated"
                )
            for outcome in run.outcomes:
                order = by_identifier[outcome.order_id]
                if isinstance(outcome, Allocated):
                    edits.append(_allocated(order.id, outcome))
                    report.allocated.append(order.id)
                elif isinstance(outcome, Failed):
                    failure = OrderFailure(reason=str(outcome.reason), detail=outcome.detail)
                    edits.append(_failed(order.id, failure))
                    report.failed[order.id] = failure.reason
                elif self._waited_too_long(order, outcome, now):
                    failure = OrderFailure(
                        reason=SINGLE_SHIPMENT_TIMEOUT,
                        detail=f"no single location could fill the order within "
                        f"{self.single_shipment_wait_ms / 1000:g} s ({outcome.detail})",
                    )
                    edits.append(_failed(order.id, failure))
                    report.failed[order.id] = failure.reason
                else:
                    report.waiting[order.id] = str(outcome.reason)
            await self.store.update_orders(self.principal, self.account_id, edits, conn=conn)
        return report

    async def release_canceled(self, order_ids: Sequence[str]) -> list[str]:
        """Canceled orders that still hold allocations give their units back."""
        async with self.store.writing(None) as conn:
            claimed = [
                o for o in await self._claim(conn, order_ids, OrderStatus.CANCELED) if o.allocations
            ]
            if not claimed:
                return []
            back = [
                (line.sku_customer_identifier, group.location, line.lot_number, line.quantity)
                for order in claimed
                for group in order.allocations
                for line in group.lines
            ]
            await self._take_out(conn, back, "inventory.released", release=True)
            released = [order.id for order in claimed]
            await self.store.update_orders(
                self.principal,
                self.account_id,
                [(i, _without_allocations, "order.allocation_released") for i in released],
                conn=conn,
            )
        return released

    # -- inside a step's transaction ---------------------------------------------------------

    async def _move(
        self, order_ids: Sequence[str], current: OrderStatus, target: OrderStatus
    ) -> list[str]:
        async with self.store.writing(None) as conn:
            moved = [order.id for order in await self._claim(conn, order_ids, current)]
            await self._transition(conn, moved, target)
        return moved

    async def _claim(
        self,
        conn: AsyncConnection,
        order_ids: Sequence[str],
        status: OrderStatus,
        *,
        wait: bool = False,
    ) -> list[Order]:
        """The orders among `order_ids` still in `status`, locked; those another transaction
        holds are skipped (another worker is moving them), or waited for with `wait`."""
        if not order_ids:
            return []
        rows = await conn.execute(
            select(orders.c.doc)
            .where(
                orders.c.account_id == self.account_id,
                orders.c.id.in_(list(order_ids)),
                orders.c.status == str(status),
            )
            .order_by(orders.c.id)
            .with_for_update(skip_locked=not wait)
        )
        return [Order.model_validate_json(r[0]) for r in rows]

    async def _shipments_of(self, conn: AsyncConnection, order_ids: list[str]) -> list[Shipment]:
        rows = await conn.execute(
            select(shipments.c.doc)
            .where(
                shipments.c.account_id == self.account_id,
                shipments.c.order_id.in_(order_ids),
                shipments.c.status == str(ShipmentStatus.MANIFESTED),
            )
            .order_by(shipments.c.id)
            .with_for_update()
        )
        return [Shipment.model_validate_json(r[0]) for r in rows]

    async def _transition(
        self, conn: AsyncConnection, order_ids: Sequence[str], target: OrderStatus
    ) -> None:
        edits = [(order_id, _to(target), f"order.{target}") for order_id in order_ids]
        await self.store.update_orders(self.principal, self.account_id, edits, conn=conn)

    def _waited_too_long(self, order: Order, outcome: Waiting, now: int) -> bool:
        """A `single_shipment` order waits for a location that can fill it up to the configured
        time since it reached `atWarehouse` (its last change); other orders wait for stock."""
        if order.order_policy is not OrderPolicy.SINGLE_SHIPMENT:
            return False
        return now - parse_rfc3339_ms(order.updated_at) >= self.single_shipment_wait_ms

    async def _deliver_if_complete(self, conn: AsyncConnection, order_id: str) -> None:
        statuses = [
            str(s)
            for s in await conn.scalars(
                select(shipments.c.status).where(
                    shipments.c.account_id == self.account_id, shipments.c.order_id == order_id
                )
            )
        ]
        if statuses and all(s == ShipmentStatus.DELIVERED for s in statuses):
            # Already locked by `move_shipments` (not skipped: this is the last chance to).
            claimed = await self._claim(conn, [order_id], OrderStatus.FULFILLED, wait=True)
            if claimed:
                await self._transition(conn, [order_id], OrderStatus.DELIVERED)

    async def _take_out(
        self,
        conn: AsyncConnection,
        lines: Sequence[tuple[str, str, str | None, Decimal]],
        event_type: str,
        *,
        release: bool = False,
    ) -> None:
        """Units of (sku, location, lot, quantity) leave `allocated`: out of the warehouse
        (shipped), or back to `available` (`release`). A count adjusted meanwhile below what
        leaves stops at 0."""
        if not lines:
            return
        codes = sorted({line[0] for line in lines})
        stock = await self.inventory.read_stock(conn, self.account_id, codes, for_update=True)
        units: dict[StockKey, StockUnit] = {}
        for sku, location, lot, quantity in lines:
            key = StockKey(sku, location, lot)
            unit = units.get(key) or stock.get(key)
            if unit is None:
                continue
            taken = min(unit.allocated, int(quantity))
            units[key] = replace(
                unit,
                allocated=unit.allocated - taken,
                available=unit.available + (taken if release else 0),
            )
        if units:
            await self.inventory.apply_stock(
                conn, self.principal, self.account_id, list(units.values()), event_type=event_type
            )


def _to(target: OrderStatus) -> Callable[[Order], Order]:
    def change(order: Order) -> Order:
        check_transition(order.status, target)
        return order.model_copy(update={"status": target})

    return change


def _allocated(order_id: str, outcome: Allocated) -> Edit:
    """The order's move to `inProcess` with its location groups and its shorts."""
    groups = [
        LocationAllocation(
            location=shipment.location,
            lines=[
                AllocatedLine(
                    line_number=pick.line_number,
                    sku_customer_identifier=pick.sku,
                    lot_number=pick.lot_number,
                    quantity=Decimal(pick.quantity),
                )
                for pick in shipment.picks
            ],
        )
        for shipment in outcome.shipments
    ]
    shorts = [
        OrderShort(
            line_number=short.line_number,
            sku_customer_id=short.sku,
            quantity=Decimal(short.quantity),
            reason=str(short.reason),
        )
        for short in outcome.shorts
    ]

    def change(order: Order) -> Order:
        check_transition(order.status, OrderStatus.IN_PROCESS)
        update = {"status": OrderStatus.IN_PROCESS, "allocations": groups, "shorts": shorts}
        return order.model_copy(update=update)

    return order_id, change, f"order.{OrderStatus.IN_PROCESS}"


def _failed(order_id: str, failure: OrderFailure) -> Edit:
    """The warehouse gives the order up: `canceled`, with the reason."""

    def change(order: Order) -> Order:
        check_transition(order.status, OrderStatus.CANCELED)
        return order.model_copy(update={"status": OrderStatus.CANCELED, "failure": failure})

    return order_id, change, f"order.{OrderStatus.CANCELED}"


def _without_allocations(order: Order) -> Order:
    return order.model_copy(update={"allocations": []})


def _shipment_of(order: Order, group: LocationAllocation, tracking_number: str) -> NewShipment:
    return NewShipment(
        order_id=order.id,
        carrier=order.shipping_provider,
        service_level=order.shipper_service_level,
        tracking_number=tracking_number,
        lines=[
            ShipmentLine(
                line_number=line.line_number,
                sku_customer_identifier=line.sku_customer_identifier,
                quantity=line.quantity,
                lot_number=line.lot_number,
            )
            for line in group.lines
        ],
        location=group.location,
        value_added_services=order.value_added_services,
    )


def _unit_lines(shipment: Shipment) -> list[tuple[str, str, str | None, Decimal]]:
    return [
        (line.sku_customer_identifier, shipment.location or "", line.lot_number, line.quantity)
        for line in shipment.lines
    ]


def _changed_units(before: Stock, after: Stock) -> list[StockUnit]:
    return [unit for unit in after if before.get(unit.key) != unit]


def _day(ms: int) -> date:
    return datetime.fromtimestamp(ms / 1000, UTC).date()
