"""The warehouse simulator: new orders at a steady rate, each moved through the lifecycle.

Every order's fate (its contents, the delay before each step, whether and when it is canceled,
its tracking number) is drawn from one seeded random generator when the order is created, so a
given seed produces the same orders and the same story; only wall-clock timing varies.
"""

from __future__ import annotations

import asyncio
import contextlib
import heapq
import random
import string
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from decimal import Decimal

import structlog

from ordersync.domain import (
    NewOrder,
    NewShipment,
    OrderStatus,
    ShipmentLine,
    ShipmentStatus,
    format_rfc3339,
    now_ms,
)
from ordersync.domain.lifecycle import CANCELABLE, next_status
from ordersync.errors import OrdersyncError
from ordersync.hub.settings import HubSettings
from ordersync.store.store import ListQuery, Principal, Store

log = structlog.get_logger("ordersync.simulator")

# Mean seconds an order spends in each status before the warehouse moves it on.
STAGE_SECONDS = {
    OrderStatus.OPEN: 2.0,
    OrderStatus.AT_WAREHOUSE: 3.0,
    OrderStatus.IN_PROCESS: 4.0,
    OrderStatus.PACKED: 3.0,
    OrderStatus.FULFILLED: 8.0,
}
CANCEL_PROBABILITY = 0.06
SIMULATOR_CONNECTION = "warehouse-simulator"
SKUS = [f"SKU-{n:04d}" for n in range(1, 201)]
CITIES = [
    ("Austin", "TX", "78701"),
    ("Denver", "CO", "80202"),
    ("Boston", "MA", "02108"),
    ("Portland", "OR", "97201"),
    ("Chicago", "IL", "60601"),
    ("Miami", "FL", "33101"),
]
CARRIERS = [("UPS", "ground"), ("FedEx", "express"), ("USPS", "priority"), ("DHL", "express")]


@dataclass(order=True)
class _Step:
    due: float
    order_id: str = field(compare=False)
    target: OrderStatus = field(compare=False)


class Warehouse:
    """Runs as a background task inside the hub. `await Warehouse.start(store, settings)`."""

    def __init__(
        self,
        store: Store,
        principal: Principal,
        rate: float,
        seed: int | None,
        monotonic: Callable[[], float] = time.monotonic,
    ) -> None:
        self.store = store
        self.principal = principal
        self.rate = rate
        self.rng = random.Random(seed)
        self.monotonic = monotonic
        self.created = 0
        self.moves = 0
        self._schedule: list[_Step] = []
        self._plans: dict[str, list[tuple[float, OrderStatus]]] = {}
        self._tracking: dict[str, str] = {}
        self._shipments: dict[str, str] = {}
        self._task: asyncio.Task[None] | None = None
        self._paused = asyncio.Event()

    @classmethod
    async def start(cls, store: Store, settings: HubSettings) -> Warehouse:
        # The simulator writes through the store, never over HTTP: the token it needs only to
        # name its connection. The previous start's token is revoked, so that restarts do not
        # leave live tokens behind.
        await store.revoke_connection(settings.simulate_account, SIMULATOR_CONNECTION)
        token = await store.create_token(settings.simulate_account, SIMULATOR_CONNECTION)
        warehouse = cls(
            store, await store.authenticate(token), settings.simulate_rate, settings.simulate_seed
        )
        existing = await store.list_orders(warehouse.principal.account_id, ListQuery(limit=1))
        warehouse.created = existing.total
        await warehouse._resume_unfinished()
        warehouse._task = asyncio.create_task(warehouse._run(), name="warehouse-simulator")
        return warehouse

    def pause(self) -> None:
        """Stop creating and moving orders (the demo's drain phase); `stop()` ends the task."""
        self._paused.set()

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task

    async def _resume_unfinished(self) -> None:
        # Orders left mid-lifecycle by a previous run get fresh plans, or they would stay
        # stuck in their status forever.
        for status in STAGE_SECONDS:
            ids = await self.store.ids_in_status(self.principal.account_id, status, limit=10_000)
            for order_id in ids:
                self._plan(order_id, status, self.monotonic())

    async def _run(self) -> None:
        started, tick = self.monotonic(), 0.05
        while True:
            await asyncio.sleep(tick)
            if self._paused.is_set():
                continue
            try:
                due_creations = int((self.monotonic() - started) * self.rate) - self._created_here
                if due_creations > 0:
                    await self._create(min(due_creations, 100))
                await self._advance_due()
            except OrdersyncError as exc:
                log.warning("simulator_step_failed", error=str(exc))
            except Exception as exc:  # a busy database must not kill the simulator
                log.warning("simulator_step_failed", error=repr(exc))

    _created_here = 0

    async def _create(self, count: int) -> None:
        drafts = [self._draft(self.created + i + 1) for i in range(count)]
        results = await self.store.create_orders(self.principal, drafts)
        self.created += count
        self._created_here += count
        now = self.monotonic()
        for result in results:
            if result.order is not None:
                self._plan(result.order.id, OrderStatus.OPEN, now)

    def _plan(self, order_id: str, status: OrderStatus, now: float) -> None:
        cancel_at = None
        if self.rng.random() < CANCEL_PROBABILITY:
            cancel_at = self.rng.choice(sorted(CANCELABLE))
        due = now
        current: OrderStatus | None = status
        while current is not None and current in STAGE_SECONDS:
            due += self.rng.expovariate(1 / STAGE_SECONDS[current])
            if cancel_at is not None and current == cancel_at:
                heapq.heappush(self._schedule, _Step(due, order_id, OrderStatus.CANCELED))
                return
            target = next_status(current)
            assert target is not None
            heapq.heappush(self._schedule, _Step(due, order_id, target))
            current = target
        self._tracking[order_id] = "1Z" + "".join(
            self.rng.choices(string.ascii_uppercase + string.digits, k=16)
        )

    async def _advance_due(self) -> None:
        now = self.monotonic()
        while self._schedule and self._schedule[0].due <= now:
            step = heapq.heappop(self._schedule)
            await self._move(step.order_id, step.target)
            self.moves += 1

    async def _move(self, order_id: str, target: OrderStatus) -> None:
        account = self.principal.account_id
        order = await self.store.transition_order(self.principal, account, order_id, target)
        if target is OrderStatus.PACKED:
            shipment = await self.store.create_shipment(
                self.principal,
                account,
                NewShipment(
                    order_id=order_id,
                    carrier=order.shipping_provider,
                    service_level=order.shipper_service_level,
                    tracking_number=self._tracking.pop(order_id, f"1Z{order_id[:16].upper()}"),
                    lines=[
                        ShipmentLine(
                            line_number=item.line_number or 1,
                            sku_customer_identifier=item.sku_customer_identifier,
                            quantity=item.quantity,
                        )
                        for item in order.line_items
                    ],
                ),
            )
            self._shipments[order_id] = shipment.id
        elif target is OrderStatus.FULFILLED and order_id in self._shipments:
            await self.store.transition_shipment(
                self.principal, account, self._shipments[order_id], ShipmentStatus.IN_TRANSIT
            )
        elif target is OrderStatus.DELIVERED and order_id in self._shipments:
            await self.store.transition_shipment(
                self.principal, account, self._shipments.pop(order_id), ShipmentStatus.DELIVERED
            )

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
        return NewOrder.model_validate(
            {
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

    @property
    def created(self) -> int:
        return self.warehouse.created if self.warehouse is not None else 0

    @property
    def moves(self) -> int:
        return self.warehouse.moves if self.warehouse is not None else 0
