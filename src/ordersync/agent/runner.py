"""Wiring for `ordersync agent run`: config -> sink, sources and engines, run until stopped.

Several sources sync concurrently on one event loop and share one sink (its checkpoints are
keyed by source and stream). A refused token stops its own source with a clear message; the
others keep going. `/metrics` (Prometheus) and `/status` (JSON) are served on the agent's port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import Response
from starlette.routing import Route

from ordersync.agent.budget import Budget, BudgetBook, BudgetClosed, Pause
from ordersync.agent.client import ApiClient, auth_headers
from ordersync.agent.config import AgentConfig, SourceConfig
from ordersync.agent.engine import EngineSettings, StreamStatus, SyncEngine
from ordersync.agent.errors import AuthError
from ordersync.agent.hubrise_sync import HubRiseSync
from ordersync.agent.lease import POLL_SECONDS, Lease, acquire, shown
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.sinks import open_sink
from ordersync.agent.sinks.base import Sink
from ordersync.agent.sources.hubrise import HubRiseSource
from ordersync.agent.sources.masonhub import MasonHubSource
from ordersync.agent.sources.tradecloud import TradecloudSource
from ordersync.domain.timestamps import format_rfc3339
from ordersync.embedded import serving
from ordersync.errors import ConfigurationError

log = structlog.get_logger("ordersync.agent")

REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
HTTP_STATE = "ordersync-http-sink-state.json"  # an HTTP sink's cursors, in the state directory


@dataclass
class AgentRuntime:
    """Everything one `agent run` holds open; `close()` releases it."""

    config: AgentConfig
    sink: Sink
    metrics: AgentMetrics
    engines: dict[str, SyncEngine | HubRiseSync] = field(default_factory=dict)
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    stopped: dict[str, str] = field(default_factory=dict)  # source -> why it stopped
    budgets: BudgetBook = field(default_factory=BudgetBook)  # rate-limit budgets by connection

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()
        await self.sink.close()

    def status(self) -> list[StreamStatus]:
        return [state for engine in self.engines.values() for state in engine.status()]


async def open_runtime(
    config: AgentConfig,
    environ: Mapping[str, str],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    state_dir: Path = Path("."),
    budgets: Callable[[AgentMetrics], BudgetBook] = BudgetBook,
) -> AgentRuntime:
    """Open the sink and build one engine per source. Tokens are checked here, before any I/O."""
    tokens = {source.name: source.token(environ) for source in config.sources}
    metrics = AgentMetrics()
    sink_http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT)
    sink = await open_sink(config.sink.url, http=sink_http, state_path=state_dir / HTTP_STATE)
    runtime = AgentRuntime(config, sink, metrics, clients=[sink_http], budgets=budgets(metrics))
    for source_config in config.sources:
        http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT, transport=transport)
        runtime.clients.append(http)
        token = tokens[source_config.name]
        budget = runtime.budgets.for_source(
            source_config.name, source_config.base_url, token, source_config.quotas
        )
        runtime.engines[source_config.name] = build_engine(
            source_config, token, http, sink, metrics, budget=budget
        )
    return runtime


def build_engine(
    source_config: SourceConfig,
    token: str,
    http: httpx.AsyncClient,
    sink: Sink,
    metrics: AgentMetrics,
    budget: Budget | None = None,
) -> SyncEngine | HubRiseSync:
    """The sync of one source, by dialect: the updated_at engine for MasonHub and Tradecloud,
    backfill + callback events for HubRise (it has no "changed since" listing)."""
    c = source_config
    client = ApiClient(
        http,
        c.base_url,
        token,
        source=c.name,
        metrics=metrics,
        auth=auth_headers(c.auth_scheme, token, c.connection_name),
        exact_numbers=c.dialect == "tradecloud",
        budget=budget,
    )
    streams = tuple(c.streams)
    if c.dialect == "hubrise":
        return HubRiseSync(
            HubRiseSource(client, name=c.name, streams=streams),
            sink,
            page_size=c.page_size,
            metrics=metrics,
        )
    source: MasonHubSource | TradecloudSource = (
        TradecloudSource(
            client, name=c.name, streams=streams, connection_name=c.connection_name, echo=c.echo
        )
        if c.dialect == "tradecloud"
        else MasonHubSource(client, name=c.name, streams=streams, statuses=tuple(c.statuses))
    )
    settings = EngineSettings(lookback_ms=int(c.lookback * 1000), page_size=c.page_size)
    return SyncEngine(source, sink, settings=settings, metrics=metrics)


# One cheap read per dialect: (method, path under base_url, query, JSON body).
_PREFLIGHT: dict[str, tuple[str, str, dict[str, Any], Any]] = {
    "masonhub": ("GET", "/orders", {"limit": 1, "list_type": "summary"}, None),
    "tradecloud": ("POST", "/order-search/poll", {}, {"filters": {}, "limit": 1}),
    "hubrise": ("GET", "/callback", {}, None),
}
_API_ROOT = {"masonhub": "/api/v1", "tradecloud": "/v2", "hubrise": "/v1"}


async def preflight(runtime: AgentRuntime) -> None:
    """One cheap call per source, so that a wrong URL or token fails at start, clearly,
    instead of as retries in the log."""
    for name, engine in runtime.engines.items():
        source = engine.source
        assert isinstance(source, MasonHubSource | TradecloudSource | HubRiseSource)
        client = source.client
        dialect = next(s.dialect for s in runtime.config.sources if s.name == name)
        method, path, params, body = _PREFLIGHT[dialect]
        url = client.base_url + path
        try:
            response = await client.http.request(
                method,
                url,
                params=params,
                json=body,
                headers=client._headers if body is None else client._json_headers,
            )
        except httpx.TransportError as exc:
            raise ConfigurationError(
                f"source {name!r}: cannot reach {client.base_url} ({exc.__class__.__name__}: "
                f"{exc}); check base_url and that the platform is up"
            ) from None
        if response.status_code in (401, 403):
            raise ConfigurationError(
                f"source {name!r}: the platform refused the token ({response.status_code}); "
                f"check the variable {_token_env(runtime.config, name)}"
            )
        if response.status_code == 404:
            raise ConfigurationError(
                f"source {name!r}: {url} does not exist (404); base_url should end with the "
                f"API root, e.g. http://127.0.0.1:8080{_API_ROOT[dialect]}"
            )


def _token_env(config: AgentConfig, name: str) -> str:
    return next(s.token_env for s in config.sources if s.name == name)


async def run_sources(runtime: AgentRuntime, stop: asyncio.Event, *, once: bool = False) -> None:
    """Run every source until `stop` (or one drain each with `once`)."""

    async def run_one(name: str, engine: SyncEngine | HubRiseSync) -> None:
        interval = next(s.interval for s in runtime.config.sources if s.name == name)
        try:
            if once:
                await engine.run_cycle(stop_event=stop)
            else:
                await engine.run(interval, stop)
        except AuthError as exc:
            runtime.stopped[name] = str(exc)
            log.error("source_stopped", source=name, reason=str(exc))
        except BudgetClosed:
            pass  # stopped while waiting for quota: nothing was sent, nothing is lost

    async def release_quota_waits() -> None:
        # A spent daily quota can hold a request back for hours: stopping must not wait.
        await stop.wait()
        runtime.budgets.close()

    releasing = asyncio.ensure_future(release_quota_waits())
    try:
        await asyncio.gather(*(run_one(n, e) for n, e in runtime.engines.items()))
    finally:
        releasing.cancel()
        runtime.budgets.reopen()  # the runtime may run again (the demo drains after its loop)


def status_payload(runtime: AgentRuntime) -> list[dict[str, Any]]:
    return [
        status_row(
            state, runtime.stopped.get(state.source), runtime.budgets.exhausted(state.source)
        )
        for state in runtime.status()
    ]


def status_row(
    state: StreamStatus, stopped_reason: str | None = None, quota_pause: Pause | None = None
) -> dict[str, Any]:
    cursor = state.cursor
    return {
        "source": state.source,
        "stream": state.stream,
        "cursor": None if cursor is None else format_rfc3339(cursor.updated_at_ms),
        "cursor_id": None if cursor is None else cursor.last_id,
        "caught_up": state.caught_up,
        "lag_seconds": None if state.lag_ms is None else round(state.lag_ms / 1000, 3),
        "last_success_at": None
        if state.last_success_at_ms is None
        else format_rfc3339(state.last_success_at_ms),
        "last_error": stopped_reason or state.last_error,
        "stopped": state.stopped or stopped_reason is not None,
        "applied": state.totals.applied,
        "duplicates": state.totals.duplicates,
        "api_calls": state.totals.api_calls,
        "quota_exhausted_window": None if quota_pause is None else quota_pause.window,
        "quota_exhausted_until": None if quota_pause is None else quota_pause.until_rfc3339,
    }


def observability_app(runtime: AgentRuntime) -> Starlette:
    async def metrics(_: Request) -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def status(_: Request) -> Response:
        return Response(orjson.dumps(status_payload(runtime)), media_type="application/json")

    return Starlette(routes=[Route("/metrics", metrics), Route("/status", status)])


@contextlib.asynccontextmanager
async def serving_observability(runtime: AgentRuntime, port: int | None) -> AsyncIterator[None]:
    """Serve /metrics and /status on 127.0.0.1:port while the agent runs (no port: nothing)."""
    if port is None:
        yield
        return
    async with serving(observability_app(runtime), "127.0.0.1", port):
        yield


async def run_owning_replica(
    runtime: AgentRuntime,
    stop: asyncio.Event,
    *,
    once: bool = False,
    announce: Callable[[str], None] = print,
    state_dir: Path = Path("."),
    poll_seconds: float = POLL_SECONDS,
) -> None:
    """Take the replica's lease (`lease.py`; as standby, wait for it), then serve /metrics and
    /status and run every source until `stop`. A lease lost meanwhile (its database session
    ended) stops the sources and goes back to taking it: the agent resumes if the lease is
    free, or waits behind the agent that took it."""
    config = runtime.config

    async def nap(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    while not stop.is_set():
        lease = await acquire(
            config.sink.url,
            [source.name for source in config.sources],
            standby=config.standby,
            state_path=state_dir / HTTP_STATE,
            stop=stop,
            announce=announce,
            sleep=nap,
            poll_seconds=poll_seconds,
        )
        if lease is None:
            return
        try:
            lost = await _run_while_held(runtime, lease, stop, once, poll_seconds)
        finally:
            await lease.release()
        if not lost or once:
            return
        announce(f"replica {shown(config.sink.url)}: lease lost; sync stopped, taking it again")


async def _run_while_held(
    runtime: AgentRuntime, lease: Lease, stop: asyncio.Event, once: bool, poll_seconds: float
) -> bool:
    """Run the sources until `stop` or the lease is lost; True if it was lost."""
    ending = asyncio.Event()
    lost = False

    async def watch() -> None:
        nonlocal lost
        while not ending.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ending.wait(), poll_seconds)
            if not ending.is_set() and not await lease.held():
                lost = True
                log.error("replica_lease_lost", replica=shown(lease.url))
                ending.set()

    async def forward_stop() -> None:
        await stop.wait()
        ending.set()

    helpers = [asyncio.ensure_future(watch()), asyncio.ensure_future(forward_stop())]
    try:
        async with serving_observability(runtime, runtime.config.port):
            await run_sources(runtime, ending, once=once)
    finally:
        ending.set()
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    return lost
