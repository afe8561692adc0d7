"""Errors below a sink (the database driver, the file system, the network) reach the engine as
SinkError: they fail one cycle, never the agent."""

from __future__ import annotations

import asyncio
from pathlib import Path

import httpx
import psycopg
import pytest
from structlog.testing import capture_logs

from ordersync.agent.errors import SinkError
from ordersync.agent.records import Cursor, Record
from ordersync.agent.sinks.http import HttpSink
from ordersync.agent.sinks.jsonl import JsonlSink
from ordersync.agent.sinks.sql import SqlSink
from ordersync.agent.sources.masonhub import parse_record
from ordersync.domain.timestamps import format_rfc3339
from tests.integration.agent.harness import Hub, assert_replica_equals_hub, build_engine
from tests.support import order_payload


def terminate_backends(url: str) -> int:
    """Drop every connection to the database of `url`, as a restart or failover would."""
    name = url.rpartition("/")[2]
    admin = url.rpartition("/")[0] + "/postgres"
    with psycopg.connect(admin, autocommit=True) as conn:
        rows = conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND pid <> pg_backend_pid()",
            (name,),
        ).fetchall()
    return len(rows)


def record(oid: str = "o-1") -> Record:
    data = order_payload("C-1") | {"id": oid, "version": 1, "status": "open"}
    data["updated_at"] = format_rfc3339(1_000)
    for number, line in enumerate(data["line_items"], 1):
        line["line_number"] = number
    return parse_record("order", data)


async def test_reads_of_a_replica_whose_connections_died_raise_sink_error(pg_url: str) -> None:
    """load_cursor and load_versions after the server dropped the pool's connections: a
    SinkError naming the replica (not a raw driver error), and the next call works again."""
    sink = await SqlSink.open(pg_url)
    await sink.apply_page("s", "orders", [record()], Cursor(1_000, "o-1"))
    assert terminate_backends(pg_url) >= 1
    with pytest.raises(SinkError, match="cannot read the cursor of s/orders") as raised:
        await sink.load_cursor("s", "orders")
    assert "postgresql" in str(raised.value)
    assert await sink.load_cursor("s", "orders") == Cursor(1_000, "o-1")
    terminate_backends(pg_url)
    with pytest.raises(SinkError, match="cannot read the order versions of s"):
        await sink.load_versions("s", "order")
    assert await sink.load_versions("s", "order") == {"o-1": 1}
    await sink.close()


async def test_a_replica_database_that_drops_its_connections_mid_run_costs_one_cycle(
    hub: Hub, pg_url: str
) -> None:
    """The running agent loop (`run`): the replica's connections are killed between the orders
    and the shipments of a cycle, so the next sink call is a read (load_cursor, a raw driver
    error before); that cycle is logged as failed, the next ones reconnect, and the replica
    ends equal to the hub."""
    orders = await hub.create_orders(40)  # one page: its commit ends the orders stream
    await hub.ship(orders[0])
    killed: list[int] = []
    stop = asyncio.Event()

    def kill_then_stop_once_recovered(step: str, stream: str) -> None:
        if step == "after_commit" and stream == "orders" and not killed:
            killed.append(terminate_backends(pg_url))
        elif step == "after_commit" and stream == "shipments" and killed:
            stop.set()  # the shipments page committed after the kill: the agent recovered

    sink = await SqlSink.open(pg_url)
    engine = build_engine(hub, sink, page_size=50, hook=kill_then_stop_once_recovered)
    with capture_logs() as logs:
        # The loop itself never raises; the timeout only guards against a hang.
        await asyncio.wait_for(engine.run(0.01, stop), 120)
    failures = [e for e in logs if e["event"] == "sync_cycle_failed"]
    assert killed and killed[0] >= 1
    assert failures and "replica" in failures[0]["error"]
    await assert_replica_equals_hub(hub, sink)
    await sink.close()


async def test_a_jsonl_checkpoint_that_is_not_json_is_a_sink_error(tmp_path: Path) -> None:
    """A corrupt checkpoint file is named in a SinkError at open, not a raw decode error."""
    path = tmp_path / "changes.jsonl"
    (tmp_path / "changes.jsonl.checkpoint.json").write_bytes(b"{not json")
    with pytest.raises(SinkError, match="cannot open"):
        await JsonlSink.open(path)


async def test_an_http_sink_whose_state_directory_is_gone_fails_the_page_not_the_agent(
    tmp_path: Path,
) -> None:
    """The HTTP sink's ledger and cursor file cannot be written (directory removed): the page
    fails with a SinkError (an OSError before)."""
    state = tmp_path / "state" / "http-sink.json"
    state.parent.mkdir()

    def accept(request: httpx.Request) -> httpx.Response:
        return httpx.Response(200)

    http = httpx.AsyncClient(transport=httpx.MockTransport(accept))
    sink = await HttpSink.open("http://erp.test/changes", http, state)
    state.parent.rmdir()
    with pytest.raises(SinkError, match="failed"):
        await sink.apply_page("s", "orders", [record()], Cursor(1_000, "o-1"))
    await http.aclose()
