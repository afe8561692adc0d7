"""The agent's HTTP endpoints without a network: /readyz says what it waits for, the status
page and /status agree, and the console log renders sentences."""

from __future__ import annotations

import io
from types import SimpleNamespace
from typing import Any, cast

import httpx

from ordersync.agent.budget import BudgetBook
from ordersync.agent.engine import StreamStatus
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.records import Cursor
from ordersync.agent.runner import observability_app
from ordersync.logs import configure_logging


def runtime(*states: StreamStatus, stopped: dict[str, str] | None = None) -> Any:
    metrics = AgentMetrics()
    return SimpleNamespace(
        sink=object(),
        status=lambda: list(states),
        stopped=stopped or {},
        budgets=BudgetBook(metrics),
        metrics=metrics,
        rounds=[],
        config=SimpleNamespace(sink=SimpleNamespace(url="sqlite:///replica.db")),
    )


async def get(rt: Any, path: str) -> httpx.Response:
    transport = httpx.ASGITransport(app=observability_app(cast(Any, rt)))
    async with httpx.AsyncClient(transport=transport, base_url="http://agent") as client:
        return await client.get(path)


async def test_readyz_waits_for_every_stream_to_drain_once() -> None:
    """503 naming the stream until its first drain, then 200; a stopped source is not ready."""
    drained = StreamStatus("masonhub", "orders", Cursor(1_700_000_000_000), last_success_at_ms=1)
    fresh = StreamStatus("masonhub", "shipments")
    waiting = await get(runtime(drained, fresh), "/readyz")
    assert waiting.status_code == 503
    assert waiting.json()["waiting"] == ["masonhub/shipments: not drained yet"]
    assert (await get(runtime(drained), "/readyz")).status_code == 200
    stopped = await get(runtime(drained, stopped={"masonhub": "token refused"}), "/readyz")
    assert stopped.json()["waiting"] == ["masonhub/orders: stopped"]
    assert (await get(runtime(fresh), "/healthz")).json() == {"status": "ok"}


async def test_the_page_escapes_what_it_shows() -> None:
    """An error text from a platform is shown as text, never as markup."""
    state = StreamStatus("masonhub", "orders", last_error="<script>alert(1)</script>")
    page = await get(runtime(state), "/")
    assert page.headers["content-type"].startswith("text/html")
    assert "&lt;script&gt;" in page.text and "<script>" not in page.text


def test_console_logs_print_the_summary_and_hide_api_calls() -> None:
    """On a console: the sentence; the per-call line only at debug."""
    import structlog

    out = io.StringIO()
    configure_logging("console", file=out)
    log = structlog.get_logger("t")
    log.info("poll_round", applied=3, summary="masonhub: 3 applied")
    log.info("api_call", endpoint="/orders")
    log.warning("sync_cycle_failed", source="masonhub", error="boom")
    lines = out.getvalue().splitlines()
    assert [line.split(" ", 1)[1] for line in lines] == [
        "masonhub: 3 applied",
        "WARNING sync_cycle_failed source=masonhub error=boom",
    ]
    configure_logging("json")
