"""The demo's ERP side: orders of its own, an update and cancels, written to the hub through the
push library call (`ordersync.agent.push`: the outbox in the replica's database, idempotency
keys, each request followed to its resolution), while the agent mirrors the hub.

Two pushes, MasonHub only (its update and cancel requests are asynchronous, resolved by the hub
a few seconds later, and their resolutions come back as callbacks):

1. once the simulator has registered its catalogue (its first stock receipt; an order naming a
   SKU outside it is refused): creates `ERP-0001` .. `ERP-0006` (catalogue SKUs; `ERP-0005`
   asks for more units of one SKU than the warehouse holds, so it ships split and short), an
   update of `ERP-0002` (a full replacement, one more unit) and a cancel of `ERP-0003`;
2. halfway through the run: creates `ERP-0007` and `ERP-0008`, a cancel of `ERP-0001` (by then
   often in process or packed: it may fail, with the hub's reason) and an update of `ERP-0003`
   (canceled by the first push: it fails with the reason).

After the run, `settle` pushes every line again: answered lines are not sent again, accepted
requests are polled until resolved (the resume path of a push after a crash).
"""

from __future__ import annotations

import asyncio
import contextlib
import random
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any

import orjson

from ordersync.agent.config import SourceConfig
from ordersync.agent.outbox import ACCEPTED, FAILED, PENDING, RESOLVED
from ordersync.agent.push import LineResult, PushLine, parse_lines, push
from ordersync.domain import format_rfc3339, now_ms
from ordersync.errors import OrdersyncError
from ordersync.hub.simulator import SKUS

PUSH_DIALECTS = ("masonhub",)
PREFIX = "ERP-"  # the customer identifiers of the ERP's own orders
FIRST_CREATES = 6
LARGE = 5  # the order that asks for more than the stock: shipped what there is, shorts recorded
LARGE_QUANTITY = 250
WAIT_S = 20.0  # how long one push follows its open requests
POLL_INTERVAL_S = 1.0
CATALOGUE_WAIT_S = 10.0
STATES = (RESOLVED, ACCEPTED, FAILED, PENDING)


def identifier(number: int) -> str:
    return f"{PREFIX}{number:04d}"


def order_body(number: int, seed: int, extra_units: int = 0) -> dict[str, Any]:
    """A MasonHub order of the ERP's, on catalogue SKUs; `extra_units` more on its first line
    (the update's full replacement)."""
    rng = random.Random(f"{seed}:erp:{number}")
    address = {
        "name": f"ERP customer {number}",
        "address1": f"{rng.randint(1, 999)} Market St",
        "city": "Denver",
        "state": "CO",
        "postal_code": "80202",
        "country": "US",
    }
    skus = rng.sample(SKUS, rng.randint(1, 3))
    quantities = [rng.randint(1, 3) for _ in skus]
    if number == LARGE:
        quantities[0] = LARGE_QUANTITY
    quantities[0] += extra_units
    lines = [
        {
            "sku_customer_identifier": sku,
            "quantity": str(quantity),
            "unit_price": f"{rng.randint(199, 9999) / 100:.2f}",
        }
        for sku, quantity in zip(skus, quantities, strict=True)
    ]
    return {
        "customer_identifier": identifier(number),
        "order_type": "customer",
        "priority": 1,
        "shipping_provider": "UPS",
        "shipper_service_level": "ground",
        "shipping_address": address,
        "billing_address": address,
        "submitted_at": format_rfc3339(now_ms()),
        "line_items": lines,
        "order_policy": "allow_splits",
    }


def first_push(seed: int) -> list[dict[str, Any]]:
    creates = [{"op": "create", "order": order_body(n, seed)} for n in range(1, FIRST_CREATES + 1)]
    return [
        *creates,
        {"op": "update", "order": order_body(2, seed, extra_units=1)},
        {"op": "cancel", "customer_identifier": identifier(3)},
    ]


def second_push(seed: int) -> list[dict[str, Any]]:
    return [
        {"op": "create", "order": order_body(FIRST_CREATES + 1, seed)},
        {"op": "create", "order": order_body(FIRST_CREATES + 2, seed)},
        {"op": "cancel", "customer_identifier": identifier(1)},
        {"op": "update", "order": order_body(3, seed, extra_units=2)},
    ]


@dataclass
class ErpPushes:
    """The ERP's pushes of one demo run, and where each line stands (for the display)."""

    source: SourceConfig
    token: str
    replica_url: str
    seed: int
    catalogue_ready: Callable[[], Awaitable[bool]]
    lines: list[PushLine] = field(default_factory=list)
    results: dict[str, LineResult] = field(default_factory=dict)  # key -> latest
    errors: list[str] = field(default_factory=list)
    pushes: int = 0

    @property
    def enabled(self) -> bool:
        return self.source.dialect in PUSH_DIALECTS

    async def run(self, ending: asyncio.Event, second_after_s: float) -> None:
        """The two pushes; the second skipped when the run ends first."""
        if not self.enabled:
            return
        loop = asyncio.get_running_loop()
        started = loop.time()
        if not await self._await_catalogue(ending):
            self.errors.append("the hub registered no catalogue: nothing pushed")
            return
        await self._push(first_push(self.seed))
        left = second_after_s - (loop.time() - started)
        if left > 0:
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ending.wait(), left)
        if not ending.is_set():
            await self._push(second_push(self.seed))

    async def settle(self) -> None:
        """Push every line again: what was answered is not sent again, open requests are
        followed to their resolution."""
        if self.lines and any(r.state not in (RESOLVED, FAILED) for r in self.results.values()):
            await self._send(self.lines)

    async def _await_catalogue(self, ending: asyncio.Event) -> bool:
        loop = asyncio.get_running_loop()
        deadline = loop.time() + CATALOGUE_WAIT_S
        while loop.time() < deadline:
            if await self.catalogue_ready():
                return True
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ending.wait(), 0.2)
        return False

    async def _push(self, documents: Sequence[dict[str, Any]]) -> None:
        text = [orjson.dumps(d).decode() for d in documents]
        lines = parse_lines(self.source.dialect, self.source.name, text)
        offset = len(self.lines)
        lines = [
            PushLine(offset + line.number, line.op, line.ref, line.document, line.key)
            for line in lines
        ]
        self.lines.extend(lines)
        for line in lines:
            self.results[line.key] = LineResult(line.number, line.op, line.ref, line.key, PENDING)
        await self._send(lines)

    async def _send(self, lines: Sequence[PushLine]) -> None:
        self.pushes += 1
        try:
            report = await push(
                self.source,
                self.token,
                self.replica_url,
                lines,
                wait_s=WAIT_S,
                poll_interval_s=POLL_INTERVAL_S,
            )
        except OrdersyncError as exc:
            self.errors.append(f"push {self.pushes}: {exc}")
            return
        numbers = {line.key: line.number for line in lines}
        for result in report.results:
            result.line = numbers.get(result.key, result.line)
            self.results[result.key] = result

    def counts(self) -> dict[str, int]:
        counted = dict.fromkeys(STATES, 0)
        for result in self.results.values():
            counted[result.state] = counted.get(result.state, 0) + 1
        return counted

    def summary(self) -> str:
        if not self.enabled:
            return f"ERP pushes: none ({self.source.dialect}: the demo pushes on MasonHub)"
        counted = self.counts()
        ops = {op: sum(1 for r in self.results.values() if r.op == op) for op in OPS}
        return (
            f"ERP pushes: {len(self.results)} lines ({ops['create']} creates, "
            f"{ops['update']} updates, {ops['cancel']} cancels): "
            + ", ".join(f"{counted[state]} {state}" for state in STATES)
        )

    def outcomes(self) -> list[str]:
        """One line per pushed update or cancel, and per failed line, in push order."""
        shown = []
        for result in sorted(self.results.values(), key=lambda r: r.line):
            if result.op == "create" and result.state != FAILED:
                continue
            reason = f": {result.reason}" if result.reason else ""
            shown.append(f"  {result.op} {result.ref}: {result.state}{reason}")
        return shown + [f"  {error}" for error in self.errors]


OPS = ("create", "update", "cancel")
