"""Agent fixtures: a hub on SQLite with a fake clock, and sinks parametrized over backends."""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from pathlib import Path

import pytest

from ordersync.agent.sinks import open_sink
from ordersync.agent.sinks.base import Sink
from ordersync.agent.sinks.sql import SqlSink
from tests.integration.agent.harness import DIALECTS, Hub, open_hub


@pytest.fixture
async def hub(tmp_path: Path) -> AsyncIterator[Hub]:
    opened = await open_hub(f"sqlite:///{tmp_path}/hub.db")
    yield opened
    await opened.store.close()


SinkFactory = Callable[..., Awaitable[Sink]]


@pytest.fixture(params=DIALECTS)
def dialect(request: pytest.FixtureRequest) -> str:
    """The wire dialect the agent syncs through: MasonHub, Tradecloud or HubRise."""
    return str(request.param)


@pytest.fixture(params=["sqlite", "sqlite-inline", "postgresql", "jsonl"])
async def sink_factory(
    request: pytest.FixtureRequest, tmp_path: Path
) -> AsyncIterator[SinkFactory]:
    """Opens (and reopens, as a restarted agent would) one replica of the given backend:
    SQLite through its writer process, SQLite through the SQLAlchemy apply ("sqlite-inline",
    the reference every SQL write path must match), PostgreSQL, or a JSONL file."""
    if (
        request.param == "jsonl"
        and "dialect" in request.fixturenames
        and request.getfixturevalue("dialect") != "masonhub"
    ):
        pytest.skip("the JSONL sink is covered through the masonhub dialect")
    url = (
        request.getfixturevalue("pg_url")
        if request.param == "postgresql"
        else f"sqlite:///{tmp_path}/replica.db"
        if request.param.startswith("sqlite")
        else f"jsonl://{tmp_path}/replica.jsonl"
    )
    opened: list[Sink] = []

    async def factory(**kwargs: object) -> Sink:
        if request.param == "sqlite-inline":
            sink: Sink = await SqlSink.open(url, writer="inline", **kwargs)  # type: ignore[arg-type]
        else:
            sink = await open_sink(url, **kwargs)  # type: ignore[arg-type]
        opened.append(sink)
        return sink

    yield factory
    for sink in opened:
        await sink.close()
