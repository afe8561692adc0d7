"""Wiring for `ordersync agent run`: config -> sink, sources and engines, run until stopped.

Several sources sync concurrently on one event loop and share one sink (its checkpoints are
keyed by source and stream). A refused token stops its own source with a clear message; the
others keep going. `/metrics` (Prometheus) and `/status` (JSON) are served on the agent's port.
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Mapping
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

from ordersync.agent.client import ApiClient
from ordersync.agent.config import AgentConfig, SourceConfig
from ordersync.agent.engine import EngineSettings, StreamStatus, SyncEngine
from ordersync.agent.errors import AuthError
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.sinks import open_sink
from ordersync.agent.sinks.base import Sink
from ordersync.agent.sources.masonhub import MasonHubSource
from ordersync.domain.timestamps import format_rfc3339
from ordersync.embedded import serving
from ordersync.errors import ConfigurationError

log = structlog.get_logger("ordersync.agent")

REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=10.0)


@dataclass
class AgentRuntime:
    """Everything one `agent run` holds open; `close()` releases it."""

    config: AgentConfig
    sink: Sink
    metrics: AgentMetrics
    engines: dict[str, SyncEngine] = field(default_factory=dict)
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    stopped: dict[str, str] = field(default_factory=dict)  # source -> why it stopped

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
) -> AgentRuntime:
    """Open the sink and build one engine per source. Tokens are checked here, before any I/O."""
    tokens = {source.name: source.token(environ) for source in config.sources}
    metrics = AgentMetrics()
    sink_http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT)
    sink = await open_sink(config.sink.url, http=sink_http,
                           state_path=state_dir / "ordersync-http-sink-state.json")
    runtime = AgentRuntime(config, sink, metrics, clients=[sink_http])
    for source_config in config.sources:
        http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT, transport=transport)
        runtime.clients.append(http)
        runtime.engines[source_config.name] = build_engine(
            source_config, tokens[source_config.name], http, sink, metrics)
    return runtime


def build_engine(source_config: SourceConfig, token: str, http: httpx.AsyncClient, sink: Sink,
                 metrics: AgentMetrics) -> SyncEngine:
    client = ApiClient(http, source_config.base_url, token, source=source_config.name,
                       metrics=metrics)
    source = MasonHubSource(client, name=source_config.name,
                            streams=tuple(source_config.streams),
                            statuses=tuple(source_config.statuses))
    settings = EngineSettings(lookback_ms=int(source_config.lookback * 1000),
                              page_size=source_config.page_size)
    return SyncEngine(source, sink, settings=settings, metrics=metrics)


async def preflight(runtime: AgentRuntime) -> None:
    """One cheap call per source, so that a wrong URL or token fails at start, clearly,
    instead of as retries in the log."""
    for name, engine in runtime.engines.items():
        source = engine.source
        assert isinstance(source, MasonHubSource)
        client = source.client
        url = f"{client.base_url}/{source.streams[0]}"
        try:
            response = await client.http.get(url, params={"limit": 1, "list_type": "summary"},
                                             headers=client._headers)
        except httpx.TransportError as exc:
            raise ConfigurationError(
                f"source {name!r}: cannot reach {client.base_url} ({exc.__class__.__name__}: "
                f"{exc}); check base_url and that the platform is up") from None
        if response.status_code in (401, 403):
            raise ConfigurationError(
                f"source {name!r}: the platform refused the token ({response.status_code}); "
                f"check the variable {_token_env(runtime.config, name)}")
        if response.status_code == 404:
            raise ConfigurationError(
                f"source {name!r}: {url} does not exist (404); base_url should end with the "
                "API root, e.g. http://127.0.0.1:8080/api/v1")


def _token_env(config: AgentConfig, name: str) -> str:
    return next(s.token_env for s in config.sources if s.name == name)


async def run_sources(runtime: AgentRuntime, stop: asyncio.Event, *, once: bool = False) -> None:
    """Run every source until `stop` (or one drain each with `once`)."""

    async def run_one(name: str, engine: SyncEngine) -> None:
        interval = next(s.interval for s in runtime.config.sources if s.name == name)
        try:
            if once:
                await engine.run_cycle(stop_event=stop)
            else:
                await engine.run(interval, stop)
        except AuthError as exc:
            runtime.stopped[name] = str(exc)
            log.error("source_stopped", source=name, reason=str(exc))

    await asyncio.gather(*(run_one(n, e) for n, e in runtime.engines.items()))


def status_payload(runtime: AgentRuntime) -> list[dict[str, Any]]:
    return [status_row(state, runtime.stopped.get(state.source)) for state in runtime.status()]


def status_row(state: StreamStatus, stopped_reason: str | None = None) -> dict[str, Any]:
    cursor = state.cursor
    return {
        "source": state.source,
        "stream": state.stream,
        "cursor": None if cursor is None else format_rfc3339(cursor.updated_at_ms),
        "cursor_id": None if cursor is None else cursor.last_id,
        "caught_up": state.caught_up,
        "lag_seconds": None if state.lag_ms is None else round(state.lag_ms / 1000, 3),
        "last_success_at": None if state.last_success_at_ms is None
        else format_rfc3339(state.last_success_at_ms),
        "last_error": stopped_reason or state.last_error,
        "stopped": state.stopped or stopped_reason is not None,
        "applied": state.totals.applied,
        "duplicates": state.totals.duplicates,
        "api_calls": state.totals.api_calls,
    }


def observability_app(runtime: AgentRuntime) -> Starlette:
    async def metrics(_: Request) -> Response:
        return Response(generate_latest(runtime.metrics.registry),
                        media_type=CONTENT_TYPE_LATEST)

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
