"""`create_app(settings, store)` builds the hub: one store behind the dialect routers."""

from __future__ import annotations

from collections.abc import AsyncIterator
from contextlib import asynccontextmanager

from fastapi import FastAPI
from starlette.responses import Response

from ordersync import __version__
from ordersync.domain import now_ms
from ordersync.hub.body_limit import BodySizeLimit
from ordersync.hub.dialects import hubrise, masonhub, tradecloud
from ordersync.hub.errors import install_error_handlers
from ordersync.hub.faults import FaultInjector, late_commit_clock
from ordersync.hub.nul_guard import NulGuard
from ordersync.hub.offsets import offset_cap
from ordersync.hub.openapi import install_openapi
from ordersync.hub.ratelimit import install_rate_limits
from ordersync.hub.settings import HubSettings
from ordersync.hub.simulator import Simulation
from ordersync.store.hubrise import HubRiseStore
from ordersync.store.store import Store

API_PREFIXES = ("/api/", "/v2/", "/v1/")


def create_app(settings: HubSettings, store: Store | None = None) -> FastAPI:
    """The hub as an ASGI app over `store`, every collaborator built here, before serving.

    Without `store`, the app owns one on `settings.db_url` (with the fault settings' clock):
    its lifespan migrates it first and closes it last. An injected store is used as given and
    left open: the caller owns it (its clock included).
    """
    owned = store is None
    hub_store = (
        Store.connect(settings.db_url, clock=late_commit_clock(now_ms, settings.faults))
        if store is None
        else store
    )

    simulation = Simulation(hub_store, settings) if settings.simulate_rate > 0 else None

    @asynccontextmanager
    async def lifespan(app: FastAPI) -> AsyncIterator[None]:
        try:
            if owned:
                await hub_store.migrate()
            if simulation is not None:
                await simulation.start()
            yield
        finally:
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
    app.state.warehouse = simulation  # runs while the lifespan does
    install_error_handlers(app)
    install_openapi(app)
    app.include_router(masonhub.router)
    app.include_router(tradecloud.router)
    hubrise.install(app)  # router under /v1 and its X-Http-Method-Override middleware

    @app.get("/healthz", include_in_schema=False)
    async def healthz() -> Response:
        return Response(b'{"status":"ok"}', media_type="application/json")

    app.add_middleware(NulGuard)
    if settings.faults.any_http:
        app.add_middleware(FaultInjector, settings=settings.faults, prefixes=API_PREFIXES)
    install_rate_limits(app, settings, hub_store)
    app.add_middleware(BodySizeLimit, max_bytes=settings.max_body_bytes)
    return app
