"""`create_app(settings, store)` builds the hub: one store behind the dialect routers."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.responses import Response

from ordersync import __version__
from ordersync.domain import now_ms
from ordersync.hub.access_log import AccessLog
from ordersync.hub.body_limit import BodySizeLimit
from ordersync.hub.dialects import (
    hubrise,
    hubrise_inventory,
    masonhub,
    masonhub_inventory,
    masonhub_requests,
    tradecloud,
    tradecloud_orders,
    webhook_routes,
)
from ordersync.hub.errors import install_error_handlers
from ordersync.hub.faults import FaultInjector, late_commit_clock
from ordersync.hub.metrics import HubMetrics
from ordersync.hub.nul_guard import NulGuard
from ordersync.hub.offsets import offset_cap
from ordersync.hub.openapi import install_openapi
from ordersync.hub.ratelimit import install_rate_limits
from ordersync.hub.settings import HubSettings
from ordersync.hub.simulator import Simulation
from ordersync.hub.status_page import install_operator_pages
from ordersync.hub.webhooks import Dispatcher
from ordersync.store.counts import CountCompactor
from ordersync.store.events import DAY_MS, EventLog, prune_forever
from ordersync.store.hubrise import HubRiseStore
from ordersync.store.idempotency import KeyPruner, prune_keys_forever
from ordersync.store.inventory import InventoryStore
from ordersync.store.requests import RequestStore, resolve_forever
from ordersync.store.store import Store, commit_lag_ms
from ordersync.store.webhooks import WebhookStore

API_PREFIXES = ("/api/", "/v2/", "/v1/")


def create_app(settings: HubSettings, store: Store | None = None) -> FastAPI:
    """The hub as an ASGI app over `store`, every collaborator built here, before serving.

    Without `store`, the app owns one on `settings.db_url` (with the fault settings' clock):
    its lifespan migrates it first and closes it last. An injected store is used as given and
    left open: the caller owns it (its clock included).
    """
    owned = store is None
    hub_store = (
        Store.connect(
            settings.db_url,
            clock=late_commit_clock(_skewed(now_ms, settings.clock_skew_ms), settings.faults),
            write_timeout_ms=settings.write_timeout_ms,
            pool_size=settings.db_pool_size,
            max_overflow=settings.db_max_overflow,
        )
        if store is None
        else store
    )
    event_log = EventLog(hub_store, retention_ms=int(settings.event_retention_days * DAY_MS))
    requests = RequestStore(hub_store, delay_ms=settings.request_resolve_delay_ms)

    simulation = (
        Simulation(hub_store, settings)
        if settings.simulate_rate > 0 or settings.warehouse
        else None
    )
    # Folds the writers' count deltas into the listing-total buckets (one worker at a time).
    compactor = CountCompactor(hub_store.writer, lambda: hub_store.clock())
    # Deletes idempotency keys past their retention (at least 24 hours by default).
    key_pruner = KeyPruner(hub_store.writer, lambda: hub_store.clock(), settings.idempotency_hours)
    webhooks = WebhookStore(hub_store, schedule_s=settings.webhook_retry_schedule_s)
    dispatcher = Dispatcher(
        hub_store, webhooks, timeout_s=settings.webhook_timeout_s, faults=settings.faults
    )

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            if owned:
                await hub_store.migrate()
            compactor.start()
            if simulation is not None:
                await simulation.start()
            background = [
                asyncio.ensure_future(prune_forever(event_log, settings.event_prune_interval_s)),
                asyncio.ensure_future(
                    prune_keys_forever(key_pruner, settings.event_prune_interval_s)
                ),
                asyncio.ensure_future(
                    resolve_forever(requests, settings.request_resolve_interval_s)
                ),
            ]
            if settings.webhook_delivery:
                background.append(
                    asyncio.ensure_future(
                        dispatcher.run_forever(
                            settings.webhook_interval_s,
                            retention_ms=int(settings.event_retention_days * DAY_MS),
                            prune_every_s=settings.event_prune_interval_s,
                        )
                    )
                )
            try:
                yield
            finally:
                for task in background:
                    task.cancel()
                    with contextlib.suppress(asyncio.CancelledError):
                        await task
        finally:
            await compactor.stop()
            if simulation is not None:
                await simulation.stop()
            if owned:
                await hub_store.close()

    app = FastAPI(
        title="ordersync hub",
        version=__version__,
        lifespan=lifespan,
        # Served by install_openapi from local assets: FastAPI's pages load them from a CDN.
        docs_url=None,
        redoc_url=None,
        description=(
            "An order platform: MasonHub-style API under /api/v1, Tradecloud-style under /v2, "
            "HubRise-style under /v1."
        ),
    )
    app.state.store = hub_store
    app.state.max_offset = offset_cap(settings.max_offset)
    app.state.hubrise_store = HubRiseStore(hub_store)
    app.state.event_log = event_log
    app.state.key_pruner = key_pruner
    app.state.requests = requests  # MasonHub asynchronous writes and their resolver
    app.state.sandbox = settings.sandbox_enabled
    app.state.webhooks = webhooks
    app.state.inventory = InventoryStore(hub_store)  # catalogue and stock
    # Listings advertise it (X-Ordersync-Commit-Lag-Ms); the agent's default lookback.
    app.state.commit_lag_ms = commit_lag_ms(hub_store.write_timeout_ms)
    app.state.warehouse = simulation  # runs while the lifespan does
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(masonhub.router)
    app.include_router(masonhub_requests.router)
    app.include_router(tradecloud.router)
    app.include_router(tradecloud_orders.router)
    app.include_router(webhook_routes.masonhub_router)
    app.include_router(webhook_routes.tradecloud_router)
    app.include_router(webhook_routes.hubrise_router)
    hubrise.install(app)  # router under /v1 and its X-Http-Method-Override middleware
    app.include_router(masonhub_inventory.router)
    app.include_router(hubrise_inventory.router)
    metrics = HubMetrics()
    install_operator_pages(app, settings, metrics)  # /status, /status.json, /metrics

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    app.add_middleware(NulGuard)
    if settings.faults.any_http:
        app.add_middleware(FaultInjector, settings=settings.faults, prefixes=API_PREFIXES)
    install_rate_limits(app, settings, hub_store)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    # Outermost: it logs and measures what every layer above answered (413, 429, faults).
    app.add_middleware(
        AccessLog, metrics=metrics, routes=lambda: app.router.routes, log=settings.access_log
    )
    return app


def _skewed(clock: Callable[[], int], skew_ms: int) -> Callable[[], int]:
    """TEST ONLY (HubSettings.clock_skew_ms): this hub's clock, off by `skew_ms`."""
    if not skew_ms:
        return clock
    return lambda: clock() + skew_ms
