"""The agent as a library: one source's engine, with the HTTP client and sink it owns.

    source = SourceConfig(name="masonhub", base_url="http://127.0.0.1:8080/api/v1",
                          token_env="MASONHUB_TOKEN")
    async with await open_engine(source, token, "sqlite:///replica.db") as agent:
        await agent.engine.run_cycle()
        agent.engine.status()

The engine is built exactly as `ordersync agent run` builds it (`platforms.PLATFORMS`).
"""

from __future__ import annotations

from dataclasses import dataclass
from pathlib import Path
from types import TracebackType
from typing import Any

import httpx

from ordersync.agent.client import ApiClient, auth_headers
from ordersync.agent.config import SourceConfig
from ordersync.agent.engine import EngineHook, SyncEngine
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.platforms import PLATFORMS
from ordersync.agent.retry import RetryPolicy
from ordersync.agent.sinks import open_sink
from ordersync.agent.sinks.base import Sink
from ordersync.domain.timestamps import now_ms


@dataclass
class OpenedEngine:
    """An engine with the HTTP client and sink it owns; close it (or use `async with`)."""

    engine: SyncEngine
    source: Any  # the platform's source (e.g. `MasonHubSource`)
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


async def open_engine(
    source: SourceConfig,
    token: str,
    sink_url: str,
    *,
    metrics: AgentMetrics | None = None,
    retry: RetryPolicy = RetryPolicy(),
    timeout_s: float = 30.0,
    state_path: str | Path | None = None,
    hook: EngineHook | None = None,
    transport: httpx.AsyncBaseTransport | None = None,
) -> OpenedEngine:
    """`state_path` is needed for an http(s) sink only (its cursor and delivery ledger)."""
    metrics = metrics or AgentMetrics()
    platform = PLATFORMS[source.dialect]
    http = httpx.AsyncClient(timeout=timeout_s, transport=transport)
    try:
        client = ApiClient(
            http,
            source.base_url,
            token,
            source=source.name,
            retry=retry,
            metrics=metrics,
            auth=auth_headers(source.auth_scheme, token, source.connection_name),
            exact_numbers=platform.exact_numbers,
        )
        sink = await open_sink(sink_url, http=http, state_path=state_path)
    except BaseException:
        await http.aclose()
        raise
    built, feeds = platform.build(client, source, now_ms)
    engine = SyncEngine(built, sink, feeds=feeds, metrics=metrics, hook=hook)
    return OpenedEngine(engine, built, sink, http)
