"""Wiring for one source: base_url + token + sink URL -> a ready `SyncEngine`.

async with await open_masonhub_engine(base_url, token, "sqlite:///replica.db") as agent:
    await agent.engine.run_cycle()
    agent.engine.status()
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType

import httpx

from ordersync.agent.client import ApiClient
from ordersync.agent.engine import EngineHook, EngineSettings, SyncEngine
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.retry import RetryPolicy
from ordersync.agent.sinks import open_sink
from ordersync.agent.sinks.base import Sink
from ordersync.agent.sources.masonhub import MasonHubSource


@dataclass
class OpenedEngine:
    """An engine with the HTTP client and sink it owns; close it (or use `async with`)."""

    engine: SyncEngine
    source: MasonHubSource
    sink: Sink
    http: httpx.AsyncClient

    async def aclose(self) -> None:
        await self.sink.close()
        await self.http.aclose()

    async def __aenter__(self) -> OpenedEngine:
        return self

    async def __aexit__(
        self, kind: type[BaseException] | None, exc: BaseException | None, tb: TracebackType | None
    ) -> None:
        await self.aclose()


async def open_masonhub_engine(
    base_url: str,
    token: str,
    sink_url: str,
    *,
    name: str = "masonhub",
    lookback_s: float = 120,
    page_size: int = 100,
    statuses: tuple[str, ...] = (),
    streams: tuple[str, ...] = ("orders", "shipments"),
    metrics: AgentMetrics | None = None,
    retry: RetryPolicy = RetryPolicy(),
    timeout_s: float = 30.0,
    state_path: str | Path | None = None,
    hook: EngineHook | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> OpenedEngine:
    """`state_path` is needed for an http(s) sink only (its cursor and delivery ledger)."""
    metrics = metrics or AgentMetrics()
    http = httpx.AsyncClient(timeout=timeout_s, transport=transport)
    try:
        client = ApiClient(http, base_url, token, source=name, retry=retry, metrics=metrics)
        source = MasonHubSource(client, name=name, streams=streams, statuses=statuses)
        sink = await open_sink(sink_url, http=http, state_path=state_path)
    except BaseException:
        await http.aclose()
        raise
    settings = EngineSettings(lookback_ms=int(lookback_s * 1000), page_size=page_size)
    engine = SyncEngine(source, sink, settings=settings, metrics=metrics, hook=hook)
    return OpenedEngine(engine, source, sink, http)
