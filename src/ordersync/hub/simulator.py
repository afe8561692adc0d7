"""The warehouse simulator: new orders at a steady rate, stock receipts, and the pacing of the
warehouse worker (`hub/warehouse.py`) over EVERY order of the account, the API's included.

The scheduler finds the account's orders and shipments in each status (every
`DISCOVERY_SECONDS`, and at once after each step it takes), gives each a dwell drawn at random,
and when it is due asks the worker to take the step (admit, allocate, pack, ship, in transit,
deliver). The worker claims what it moves under lock, so several schedulers (hub workers) can
run at once: whichever is due first moves an order, the others find it moved on.

With a seed, every draw (an order's contents, each dwell, whether and when one of its own
orders is canceled, tracking numbers, receipts) comes from a generator keyed by the seed and
the order's customer identifier, so a given seed tells the same story; only wall-clock timing
varies.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import itertools
import random
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime, timedelta
from decimal import Decimal

import structlog
from sqlalchemy import select

from ordersync.domain import NewOrder, Order, OrderStatus, ShipmentStatus, format_rfc3339, now_ms
from ordersync.domain.inventory import StockUnit
from ordersync.domain.lifecycle import CANCELABLE
from ordersync.errors import OrdersyncError
from ordersync.hub.settings import HubSettings
from ordersync.hub.warehouse import WarehouseWorker
from ordersync.store.store import ListQuery, Principal, Store
from ordersync.store.tables import orders

log = structlog.get_logger("ordersync.simulator")

# Mean seconds an order spends in each status before the warehouse moves it on.
STAGE_SECONDS = {
    OrderStatus.OPEN: 2.0,
    OrderStatus.AT_WAREHOUSE: 3.0,
    OrderStatus.IN_PROCESS: 4.0,
    OrderStatus.PACKED: 3.0,
    OrderStatus.FULFILLED: 8.0,
}
# Mean seconds a shipment spends shipped (before in transit) and in transit (before delivered).
SHIPMENT_SECONDS = {ShipmentStatus.SHIPPED: 3.0, ShipmentStatus.IN_TRANSIT: 5.0}
CANCEL_PROBABILITY = 0.06
VALUE_ADDED_PROBABILITY = 0.1
SOFT_PICK_PROBABILITY = 0.05
HARD_PICK_PROBABILITY = 0.01
SIMULATOR_CONNECTION = "warehouse-simulator"
WORKER_CONNECTION = "warehouse-worker"
SIMULATED_PREFIX = "SIM-"  # the customer identifiers of the simulator's own orders
SKUS = [f"SKU-{n:04d}" for n in range(1, 201)]
LOCATIONS = ["WH-CENTRAL", "WH-EAST", "WH-WEST", "WH-NORTH", "WH-SOUTH"]
RECEIPT_SECONDS = 10.0  # a stock receipt every so often
WAIT_RETRY_SECONDS = 2.0  # an order that could not be allocated is tried again after this
DISCOVERY_SECONDS = 5.0
BATCH = 100
CITIES = [
    ("Austin", "TX", "78701"),
    ("Denver", "CO", "80202"),
    ("Boston", "MA", "02108"),
    ("Portland", "OR", "97201"),
    ("Chicago", "IL", "60601"),
    ("Miami", "FL", "33101"),
]
CARRIERS = [("UPS", "ground"), ("FedEx", "express"), ("USPS", "priority"), ("DHL", "express")]
# What each step is called in the schedule, by the status it moves an order out of.
ORDER_STEPS = {
    OrderStatus.OPEN: "admit",
    OrderStatus.AT_WAREHOUSE: "allocate",
    OrderStatus.IN_PROCESS: "pack",
    OrderStatus.PACKED: "ship",
}
SHIPMENT_STEPS = {ShipmentStatus.SHIPPED: "in_transit", ShipmentStatus.IN_TRANSIT: "deliver"}


@dataclass(order=True)
class _Step:
    due: float
    seq: int  # ties go in planning order
    kind: str = field(compare=False)
    entity_id: str = field(compare=False)


class Warehouse:
    """Runs as a background task inside the hub. `await Warehouse.start(store, settings)`.
    `rate` 0: no new orders, only the warehouse's work on the account's orders."""

    def __init__(
        self,
        store: Store,
        principal: Principal,
        rate: float,
        seed: int | None,
        monotonic: Callable[[], float] = time.monotonic,
        *,
        single_shipment_wait_ms: int | None = None,
    ) -> None:
        self.store = store
        self.principal = principal
        self.rate = rate
        self.seed = seed
        self.rng = random.Random(seed)
        self.monotonic = monotonic
        self.worker = (
            WarehouseWorker(store, principal)
            if single_shipment_wait_ms is None
            else WarehouseWorker(store, principal, single_shipment_wait_ms=single_shipment_wait_ms)
        )
        self.created = 0
        self.moves = 0
        self.receipts = 0
        self._schedule: list[_Step] = []
        self._planned: dict[str, str] = {}  # entity id -> the step planned for it
        self._identifiers: dict[str, str] = {}  # order id -> customer_identifier, while open
        self._seq = itertools.count()
        self._next_receipt: float | None = None
        self._next_discovery = 0.0
        self._task: asyncio.Task[None] | None = None
        self._paused = asyncio.Event()
        self._idle = asyncio.Event()  # clear while a tick's work (a receipt, steps) runs
        self._idle.set()

    @classmethod
    async def start(cls, store: Store, settings: HubSettings) -> Warehouse:
        # The simulator writes through the store, never over HTTP: the token it needs only to
        # name its connection. The previous start's token is revoked, so that restarts do not
        # leave live tokens behind.
        if settings.simulate_rate > 0:
            await store.revoke_connection(settings.simulate_account, SIMULATOR_CONNECTION)
            token = await store.create_token(settings.simulate_account, SIMULATOR_CONNECTION)
            principal = await store.authenticate(token)
        else:  # the worker alone, maybe in several processes: a principal of its own each
            principal = await store.internal_principal(settings.simulate_account, WORKER_CONNECTION)
        warehouse = cls(
            store,
            principal,
            settings.simulate_rate,
            settings.simulate_seed,
            single_shipment_wait_ms=settings.single_shipment_wait_ms,
        )
        existing = await store.list_orders(warehouse.principal.account_id, ListQuery(limit=1))
        warehouse.created = existing.total
        warehouse._task = asyncio.create_task(warehouse._run(), name="warehouse-simulator")
        return warehouse

    def pause(self) -> None:
        """Stop creating and moving orders (the demo's drain phase); `stop()` ends the task."""
        self._paused.set()

    async def settled(self) -> None:
        """Once paused: wait for the tick under way (a stock receipt may be committing) to end,
        so that nothing is written after this returns."""
        await self._idle.wait()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _run(self) -> None:
        started, tick = self.monotonic(), 0.05
        while True:
            await asyncio.sleep(tick)
            if self._paused.is_set():
                continue
            self._idle.clear()
            try:
                due_creations = int((self.monotonic() - started) * self.rate) - self._created_here
                if due_creations > 0:
                    await self._create(min(due_creations, 100))
                await self._advance_due()
            except OrdersyncError as exc:
                log.warning("simulator_step_failed", error=str(exc))
            except Exception as exc:  # a busy database must not kill the simulator
                log.warning("simulator_step_failed", error=repr(exc))
            finally:
                self._idle.set()

    _created_here = 0

    async def _create(self, count: int) -> None:
        drafts = [self._draft(self.created + i + 1) for i in range(count)]
        results = await self.store.create_orders(self.principal, drafts)
        self.created += count
        self._created_here += count
        now = self.monotonic()
        for result in results:
            if result.order is not None:
                self._plan_order(result.order.id, result.customer_identifier, OrderStatus.OPEN, now)

    # -- the schedule ------------------------------------------------------------------------

    def _rng(self, *key: object) -> random.Random:
        return (
            self.rng if self.seed is None else random.Random(":".join(map(str, (self.seed, *key))))
        )

    def _push(self, due: float, kind: str, entity_id: str) -> None:
        self._planned[entity_id] = kind
        heapq.heappush(self._schedule, _Step(due, next(self._seq), kind, entity_id))

    def _plan_order(self, order_id: str, identifier: str, status: OrderStatus, now: float) -> None:
        if status not in ORDER_STEPS:
            self._identifiers.pop(order_id, None)
            return
        self._identifiers[order_id] = identifier
        due = now + self._rng(identifier, status).expovariate(1 / STAGE_SECONDS[status])
        if identifier.startswith(SIMULATED_PREFIX):  # its customer may cancel it
            fate = self._rng(identifier, "cancel")
            if fate.random() < CANCEL_PROBABILITY and fate.choice(sorted(CANCELABLE)) == status:
                self._push(due, "cancel", order_id)
                return
        self._push(due, ORDER_STEPS[status], order_id)

    def _plan_shipment(
        self, shipment_id: str, key: str, status: ShipmentStatus, now: float
    ) -> None:
        due = now + self._rng(key, status).expovariate(1 / SHIPMENT_SECONDS[status])
        self._push(due, SHIPMENT_STEPS[status], shipment_id)

    async def _discover(self, now: float) -> None:
        """Plan every order and shipment of the account not planned for its current status:
        the API's orders, and those another worker moved or a restart left mid-way."""
        for status, step in ORDER_STEPS.items():
            for order_id, identifier in await self.worker.orders_in(status):
                if self._planned.get(order_id) not in (step, "cancel"):
                    self._plan_order(order_id, identifier, status, now)
        for shipment_status, step in SHIPMENT_STEPS.items():
            for shipment in await self.worker.shipments_in(shipment_status):
                if self._planned.get(shipment.id) != step:
                    key = f"{shipment.customer_identifier}:{shipment.location}"
                    self._plan_shipment(shipment.id, key, shipment_status, now)
        for order_id in await self._canceled_holding_stock():
            self._push(now, "release", order_id)

    async def _canceled_holding_stock(self) -> list[str]:
        # Canceled after allocation (a client may cancel an order in process): its units go
        # back. The stored document is compact JSON, so a non-empty list reads `[{`.
        async with self.store.reader.connect() as conn:
            rows = await conn.execute(
                select(orders.c.id)
                .where(
                    orders.c.account_id == self.principal.account_id,
                    orders.c.status == str(OrderStatus.CANCELED),
                    orders.c.doc.contains('"allocations":[{'),
                )
                .limit(BATCH)
            )
            return [str(r[0]) for r in rows]

    async def _advance_due(self) -> None:
        now = self.monotonic()
        await self._receive_if_due(now)
        if now >= self._next_discovery:
            self._next_discovery = now + DISCOVERY_SECONDS
            await self._discover(now)
        due: dict[str, list[str]] = {}
        while self._schedule and self._schedule[0].due <= now:
            step = heapq.heappop(self._schedule)
            if self._planned.get(step.entity_id) == step.kind:
                del self._planned[step.entity_id]
                due.setdefault(step.kind, []).append(step.entity_id)
        kinds = ("cancel", "release", "admit", "allocate", "pack", "ship", "in_transit", "deliver")
        for kind in kinds:
            ids = due.get(kind, [])
            for start in range(0, len(ids), BATCH):
                # A pause (the demo's drain) stops the next transaction, not only the next
                # tick; what is left unplanned is planned again by a later discovery.
                if self._paused.is_set():
                    return
                await self._take(kind, ids[start : start + BATCH], now)

    async def _take(self, kind: str, ids: list[str], now: float) -> None:
        worker = self.worker
        if kind == "cancel":
            for order_id in ids:
                with contextlib.suppress(OrdersyncError):  # moved on meanwhile: not cancelable
                    await self.store.transition_order(
                        self.principal, self.principal.account_id, order_id, OrderStatus.CANCELED
                    )
                    self.moves += 1
        elif kind == "release":
            await worker.release_canceled(ids)
        elif kind == "admit":
            await self._moved(await worker.admit(ids), OrderStatus.AT_WAREHOUSE, now)
        elif kind == "allocate":
            report = await worker.allocate(ids)
            await self._moved(report.allocated, OrderStatus.IN_PROCESS, now)
            self.moves += len(report.failed)
            for order_id in report.failed:
                self._identifiers.pop(order_id, None)
            for order_id in report.waiting:
                self._push(now + WAIT_RETRY_SECONDS, "allocate", order_id)
        elif kind == "pack":
            shipments = await worker.pack(ids, self._tracking)
            await self._moved(sorted({s.order_id for s in shipments}), OrderStatus.PACKED, now)
        elif kind == "ship":
            shipped = await worker.ship(ids)
            await self._moved(sorted({s.order_id for s in shipped}), OrderStatus.FULFILLED, now)
            for shipment in shipped:
                key = f"{shipment.customer_identifier}:{shipment.location}"
                self._plan_shipment(shipment.id, key, ShipmentStatus.SHIPPED, now)
        elif kind == "in_transit":
            for shipment in await worker.move_shipments(ids, ShipmentStatus.IN_TRANSIT):
                key = f"{shipment.customer_identifier}:{shipment.location}"
                self._plan_shipment(shipment.id, key, ShipmentStatus.IN_TRANSIT, now)
        else:
            await worker.move_shipments(ids, ShipmentStatus.DELIVERED)

    async def _moved(self, order_ids: list[str], status: OrderStatus, now: float) -> None:
        """Plan the next step of orders a step just moved to `status`."""
        self.moves += len(order_ids)
        for order_id in order_ids:
            identifier = self._identifiers.get(order_id)
            if identifier is not None:
                self._plan_order(order_id, identifier, status, now)

    def _tracking(self, order: Order, location: str) -> str:
        rng = self._rng(order.customer_identifier, location, "tracking")
        return "1Z" + "".join(rng.choices(string.ascii_uppercase + string.digits, k=16))

    # -- stock -------------------------------------------------------------------------------

    async def _receive_if_due(self, now: float) -> None:
        """A receipt now and then, sized to the order rate, into random locations: the first
        one larger, and nearly every SKU in WH-CENTRAL, so that most orders can ship from one
        place (single_shipment ones too), some split and some come up short."""
        if self.rate <= 0 or (self._next_receipt is not None and now < self._next_receipt):
            return  # the worker alone receives nothing: its stock is set through the API
        first = self._next_receipt is None
        self._next_receipt = now + RECEIPT_SECONDS
        rng = self._rng("receipt", self.receipts)
        self.receipts += 1
        per_sku = max(3, round(self.rate * RECEIPT_SECONDS * 7.5 / len(SKUS)))
        today = datetime.fromtimestamp(self.store.clock() / 1000, UTC).date()
        units = []
        for sku in SKUS:
            where = rng.sample(LOCATIONS[1:], 2)
            if rng.random() < (0.95 if first else 0.6):
                where.append(LOCATIONS[0])
            for location in where:
                quantity = rng.randint(0, per_sku * (4 if first else 1))
                if quantity:
                    units.append(
                        StockUnit(
                            sku=sku,
                            location=location,
                            lot_number=f"L{today:%Y%m%d}",
                            expires_on=today + timedelta(days=180),
                            received_on=today,
                            available=quantity,
                        )
                    )
        await self.worker.inventory.receive_stock(self.principal, self.principal.account_id, units)

    def _draft(self, number: int) -> NewOrder:
        rng = self.rng
        city, state, postal = rng.choice(CITIES)
        address = {
            "name": f"Customer {number}",
            "address1": f"{rng.randint(1, 999)} Main St",
            "city": city,
            "state": state,
            "postal_code": postal,
            "country": "US",
        }
        provider, level = rng.choice(CARRIERS)
        lines = [
            {
                "sku_customer_identifier": rng.choice(SKUS),
                "quantity": str(rng.randint(1, 5)),
                "unit_price": str(Decimal(rng.randint(99, 19999)) / 100),
            }
            for _ in range(rng.randint(1, 4))
        ]
        services = (
            [{"service": "gift_wrap", "details": {"paper": "red"}}]
            if rng.random() < VALUE_ADDED_PROBABILITY
            else []
        )
        # A few customers constrain the units: a soft preference for one location, and,
        # rarer, a hard lot no receipt ever brings (the warehouse fails those orders).
        draw = rng.random()
        rules = (
            [{"attribute": "location", "value": "WH-EAST", "match": "soft"}]
            if draw < SOFT_PICK_PROBABILITY
            else [{"attribute": "lot_number", "value": "L19990101", "match": "hard"}]
            if draw > 1 - HARD_PICK_PROBABILITY
            else []
        )
        return NewOrder.model_validate(
            {
                "value_added_services": services,
                "pick_from": rules,
                "customer_identifier": f"SIM-{number:08d}",
                "order_type": rng.choice(["customer", "customer", "wholesale"]),
                "priority": rng.choice([0, 0, 0, 1, 5]),
                "shipping_provider": provider,
                "shipper_service_level": level,
                "shipping_address": address,
                "billing_address": address,
                "submitted_at": format_rfc3339(now_ms()),
                "line_items": lines,
                "order_policy": rng.choice(["allow_splits", "single_shipment", "minimize_splits"]),
            }
        )


class Simulation:
    """The simulator as the hub app holds it: built by `create_app` with everything else, its
    warehouse started and stopped by the app's lifespan (it needs the running event loop)."""

    def __init__(self, store: Store, settings: HubSettings) -> None:
        self.store = store
        self.settings = settings
        self.warehouse: Warehouse | None = None

    async def start(self) -> None:
        self.warehouse = await Warehouse.start(self.store, self.settings)

    async def stop(self) -> None:
        if self.warehouse is not None:
            await self.warehouse.stop()

    def pause(self) -> None:
        if self.warehouse is not None:
            self.warehouse.pause()

    async def settled(self) -> None:
        """After `pause`: nothing is written once this returns (Warehouse.settled)."""
        if self.warehouse is not None:
            await self.warehouse.settled()

    @property
    def created(self) -> int:
        return self.warehouse.created if self.warehouse is not None else 0

    @property
    def moves(self) -> int:
        return self.warehouse.moves if self.warehouse is not None else 0
