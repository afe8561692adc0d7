"""Test harness for the agent: a hub in-process on a fake clock, transports that intercept or
break requests, and the replica-equals-hub check every scenario ends with."""

from __future__ import annotations

from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from typing import Any

import httpx

from ordersync.agent.client import ApiClient, auth_headers
from ordersync.agent.engine import EngineHook, EngineSettings, SyncEngine
from ordersync.agent.feeds.hubrise import hubrise_feeds
from ordersync.agent.feeds.listing import ListingSettings
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.retry import RetryPolicy
from ordersync.agent.sinks.base import Sink
from ordersync.agent.sources.hubrise import HubRiseSource
from ordersync.agent.sources.masonhub import MasonHubSource
from ordersync.agent.sources.tradecloud import EchoMode, TradecloudSource
from ordersync.domain import NewOrder, NewShipment, Order, OrderStatus, ShipmentLine
from ordersync.hub.app import create_app
from ordersync.hub.ratelimit import QuotaPolicy
from ordersync.hub.settings import HubSettings
from ordersync.store.store import ListQuery, Principal, Store
from tests.support import order_payload

EPOCH = 1_704_067_200_000  # 2024-01-01T00:00:00Z
SOURCE = "masonhub"
BASE_URL = "http://hub.test/api/v1"
DIALECTS = ("masonhub", "tradecloud", "hubrise")
BASE_URLS = {
    "masonhub": BASE_URL,
    "tradecloud": "http://hub.test/v2",
    "hubrise": "http://hub.test/v1",
}
AUTH = {"masonhub": "bearer", "tradecloud": "basic", "hubrise": "access-token"}
CONNECTION = "agent"  # the connection name of the agent's token (open_hub)
Engine = SyncEngine


class FakeClock:
    """Milliseconds that move only when told: ties and late commits on demand."""

    def __init__(self, start: int = EPOCH) -> None:
        self.now = start

    def __call__(self) -> int:
        return self.now

    def advance(self, ms: int = 1) -> int:
        self.now += ms
        return self.now


@dataclass
class FakeSleep:
    """Records every wait instead of waiting; advances the fake clock by it."""

    clock: FakeClock | None = None
    waits: list[float] = field(default_factory=list)

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.clock is not None:
            self.clock.advance(int(seconds * 1000))


@dataclass
class Hub:
    store: Store
    principal: Principal
    token: str
    clock: FakeClock
    app: Any
    created: int = 0
    shipments_before_callback: set[str] | None = None

    async def create_orders(self, n: int, *, tie: bool = False) -> list[Order]:
        """`n` orders, all stamped at one instant when `tie`, else 1 ms apart."""
        items = []
        for _ in range(n):
            self.created += 1
            items.append(NewOrder.model_validate(order_payload(f"C-{self.created:06d}")))
        # One transaction either way; without a tie the store's clock ticks per order.
        self.store.clock = self.clock if tie else self.clock.advance
        try:
            results = await self.store.create_orders(self.principal, items)
        finally:
            self.store.clock = self.clock
        return [r.order for r in results if r.order is not None]

    async def advance_order(self, order_id: str, *, stamp: int | None = None) -> Order | None:
        """Move an order one step on the happy path (or cancel it when final); None if it
        cannot move any more. `stamp` forces updated_at (a late commit when in the past)."""
        order = await self.store.get_order(self.principal.account_id, order_id)
        target = _next_status(order.status)
        if target is None:
            return None
        saved = self.clock.now
        if stamp is not None:
            self.clock.now = stamp
        try:
            return await self.store.transition_order(
                self.principal, self.principal.account_id, order_id, target
            )
        finally:
            self.clock.now = max(saved, self.clock.now) if stamp is None else saved

    async def ship(self, order: Order) -> Any:
        line = order.line_items[0]
        return await self.store.create_shipment(
            self.principal,
            self.principal.account_id,
            NewShipment(
                order_id=order.id,
                carrier="UPS",
                service_level="ground",
                tracking_number=f"1Z{order.id[:8]}",
                lines=[
                    ShipmentLine(
                        line_number=1,
                        sku_customer_identifier=line.sku_customer_identifier,
                        quantity=line.quantity,
                    )
                ],
            ),
        )

    async def versions(self, kind: str) -> dict[str, int]:
        query = ListQuery(limit=1_000_000)
        account = self.principal.account_id
        page = (
            await self.store.list_orders(account, query, summary=True)
            if kind == "order"
            else await self.store.list_shipments(account, query, summary=True)
        )
        return {item["id"]: int(item["version"]) for item in page.items}

    async def order_ids_by_position(self) -> list[str]:
        page = await self.store.list_orders(
            self.principal.account_id, ListQuery(limit=1_000_000), summary=True
        )
        return [item["id"] for item in page.items]


def _next_status(status: OrderStatus) -> OrderStatus | None:
    from ordersync.domain.lifecycle import next_status

    return next_status(status)


async def open_hub(db_url: str) -> Hub:
    clock = FakeClock()
    store = await Store.open(db_url, clock=clock)
    token = await store.create_token("acme", CONNECTION)
    # The platform's own writes come from another connection of the account (as a warehouse's
    # would): HubRise shows a connection the changes of the others only.
    principal = await store.authenticate(await store.create_token("acme", "warehouse"))
    # No quota: the guarantee tests are about correctness; the budget has its own tests.
    app = create_app(HubSettings(quotas=QuotaPolicy()), store)
    return Hub(store, principal, token, clock, app)


Before = Callable[[httpx.Request, int], Awaitable[httpx.Response | None]]


class Intercept(httpx.AsyncBaseTransport):
    """Wraps a transport: `before(request, n)` runs first (inject writes, raise a reset, or
    answer with a canned response); `n` counts requests from 1."""

    def __init__(self, inner: httpx.AsyncBaseTransport, before: Before | None = None) -> None:
        self.inner = inner
        self.before = before
        self.requests: list[httpx.Request] = []

    async def handle_async_request(self, request: httpx.Request) -> httpx.Response:
        self.requests.append(request)
        if self.before is not None:
            answer = await self.before(request, len(self.requests))
            if answer is not None:
                return answer
        return await self.inner.handle_async_request(request)


def build_engine(
    hub: Hub,
    sink: Sink,
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    lookback_ms: int = 2_000,
    page_size: int = 100,
    hook: EngineHook | None = None,
    sleep: FakeSleep | None = None,
    base_url: str = BASE_URL,
    token: str | None = None,
    clock: Callable[[], int] | None = None,
    dialect: str = "masonhub",
    echo: EchoMode = "apply",
    streams: tuple[str, ...] = ("orders", "shipments"),
) -> Any:
    """A `SyncEngine` named after its dialect (HubRise: its backfill and event feeds)."""
    http = httpx.AsyncClient(transport=transport or httpx.ASGITransport(app=hub.app))
    metrics = AgentMetrics()
    client = ApiClient(
        http,
        base_url if dialect == "masonhub" else BASE_URLS[dialect],
        token or hub.token,
        source=dialect,
        metrics=metrics,
        retry=RetryPolicy(attempts=5),
        sleep=sleep or FakeSleep(hub.clock),
        clock=clock or hub.clock,
        auth=auth_headers(AUTH[dialect], token or hub.token, CONNECTION),
        exact_numbers=dialect == "tradecloud",
    )
    if dialect == "hubrise":
        hubrise = HubRiseSource(client, name=dialect, streams=streams)
        ensure_callback = hubrise.ensure_callback

        async def noting_shipments_first() -> None:
            if hub.shipments_before_callback is None:
                hub.shipments_before_callback = set(await hub.versions("shipment"))
            await ensure_callback()

        hubrise.ensure_callback = noting_shipments_first  # type: ignore[method-assign]
        return SyncEngine(
            hubrise,
            sink,
            feeds=hubrise_feeds(
                hubrise,
                page_size,
                listing=ListingSettings(lookback_ms=lookback_ms, page_size=page_size),
                clock=clock or hub.clock,
            ),
            metrics=metrics,
            clock=clock or hub.clock,
            hook=hook,
        )
    source: MasonHubSource | TradecloudSource = (
        TradecloudSource(client, name=dialect, connection_name=CONNECTION, echo=echo)
        if dialect == "tradecloud"
        else MasonHubSource(client, name=SOURCE, streams=streams)
    )
    return SyncEngine(
        source,
        sink,
        clock=clock or hub.clock,
        metrics=metrics,
        settings=EngineSettings(lookback_ms=lookback_ms, page_size=page_size),
        hook=hook,
    )


def is_order_listing(request: httpx.Request) -> bool:
    """A request for a page of orders, in any dialect."""
    return request.url.path.endswith(("/orders", "/order-search/poll"))


async def assert_replica_equals_hub(hub: Hub, sink: Sink, source: str = SOURCE) -> None:
    # /v1 has no shipment listing: only events bring shipments, so those that existed before
    # the agent's callback cannot be mirrored through HubRise.
    unreachable = hub.shipments_before_callback or set() if source == "hubrise" else set()
    for kind in ("order", "shipment"):
        expected = await hub.versions(kind)
        if kind == "shipment":
            expected = {i: v for i, v in expected.items() if i not in unreachable}
        held = await sink.load_versions(source, kind)  # type: ignore[arg-type]
        missing = expected.keys() - held.keys()
        stale = {i for i in expected.keys() & held.keys() if held[i] != expected[i]}
        extra = held.keys() - expected.keys()
        assert not (missing or stale or extra), (
            f"{kind}: {len(missing)} missing, {len(stale)} stale, {len(extra)} extra; "
            f"stale (id: replica -> hub): {[(i, held[i], expected[i]) for i in sorted(stale)][:5]}"
        )


async def applied_changes(sink: Sink) -> list[tuple[str, str, int]]:
    """Every (kind, id, version) the sink ever applied, one entry per application."""
    from ordersync.agent.sinks.jsonl import JsonlSink
    from ordersync.agent.sinks.sql import SqlSink, applied_versions

    if isinstance(sink, JsonlSink):
        import orjson

        lines = sink.path.read_bytes().splitlines()
        return [(c["kind"], c["id"], c["version"]) for c in map(orjson.loads, lines)]
    if isinstance(sink, SqlSink):
        from sqlalchemy import select

        c = applied_versions.c
        async with sink.engine.connect() as conn:
            rows = await conn.execute(select(c.kind, c.id, c.version))
            return [(str(r[0]), str(r[1]), int(r[2])) for r in rows]
    raise TypeError(f"no ledger for {type(sink).__name__}")


async def assert_applied_at_most_once(sink: Sink, reported_applied: int | None = None) -> None:
    changes = await applied_changes(sink)
    assert len(changes) == len(set(changes)), "a version was applied twice"
    if reported_applied is not None:
        assert len(changes) == reported_applied
