"""A record the replica cannot store goes to the quarantine with the rest of its page: the page
and cursor commit, the stream moves on, the record is kept exactly and retried every cycle."""

from __future__ import annotations

import json
import sqlite3
from collections.abc import AsyncIterator, Callable
from pathlib import Path
from typing import Any

import psycopg
import pytest
from prometheus_client import generate_latest
from sqlalchemy import select

from ordersync.agent.errors import SinkError
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.records import Cursor, Record
from ordersync.agent.sinks.jsonl import JsonlSink
from ordersync.agent.sinks.sql import SqlSink, orders
from ordersync.agent.sources.masonhub import parse_record
from ordersync.agent.verify import verify_replica
from ordersync.domain import NewOrder
from ordersync.domain.timestamps import format_rfc3339
from tests.integration.agent.harness import (
    SOURCE,
    Hub,
    assert_applied_at_most_once,
    build_engine,
)
from tests.integration.agent.test_crashes import SimulatedCrash, crash_on
from tests.support import order_payload

# "sqlite": the writer process; "sqlite-reference": the SQLAlchemy path on SQLite.
BACKENDS = ["sqlite", "sqlite-reference", "postgresql"]


GOOD_LINE = {
    "line_number": 1,
    "sku_customer_identifier": "SKU-1",
    "quantity": "2",
    "unit_price": "9",
}


def order(oid: str, version: int = 1, lines: list[Any] | None = None, **line: Any) -> Record:
    """A MasonHub order document as the source reads it (its codec's snapshot or problem)."""
    data = order_payload(f"C-{oid}")
    data["line_items"] = [GOOD_LINE | line] if lines is None else lines
    data |= {
        "id": oid,
        "version": version,
        "status": "open",
        "updated_at": format_rfc3339(1_000 + version),
    }
    return parse_record("order", data)


@pytest.fixture
async def open_replica(
    tmp_path: Path, request: pytest.FixtureRequest
) -> AsyncIterator[Callable[..., Any]]:
    """Opens (and reopens, as a restarted agent would) one replica of the given backend."""
    opened: list[SqlSink] = []

    async def open_(backend: str, **kwargs: Any) -> SqlSink:
        url = (
            request.getfixturevalue("pg_url")
            if backend == "postgresql"
            else f"sqlite:///{tmp_path}/replica.db"
        )
        sink = await SqlSink.open(url, **kwargs)
        if backend == "sqlite-reference":
            sink._sqlite_path = None  # apply through SQLAlchemy, as on PostgreSQL
        opened.append(sink)
        return sink

    yield open_
    for sink in opened:
        await sink.close()


@pytest.mark.parametrize("backend", BACKENDS)
@pytest.mark.parametrize(
    ("line", "named"),
    [
        ({"quantity": "abc"}, "line_items[0].quantity: 'abc' is not a decimal amount"),
        ({"unit_price": "NaN"}, "line_items[0].unit_price: 'NaN' is not a decimal amount"),
        ({"line_number": None}, "line_items[0].line_number: None"),
        ({"line_number": "1"}, "line_items[0].line_number: '1'"),
        ("not a line", "line_items[0]: 'not a line'"),
        ("two lines numbered 1", "the replica refused it"),  # found by the database itself
        ({"sku_customer_identifier": "\udc80"}, "order_lines.sku contains a lone surrogate"),
    ],
)
async def test_a_record_the_replica_cannot_store_is_quarantined_and_the_page_commits(
    backend: str, line: object, named: str, open_replica: Any
) -> None:
    """A malformed line no longer refuses the page: the other records and the cursor commit,
    the record is kept exactly in the quarantine (document, version, stream, reason, attempt)."""
    sink = await open_replica(backend)
    if line == "two lines numbered 1":
        bad = order("o-1", lines=[GOOD_LINE, GOOD_LINE | {"sku_customer_identifier": "SKU-2"}])
    else:
        bad = order("o-1", lines=[GOOD_LINE | line if isinstance(line, dict) else line])
    result = await sink.apply_page("s", "orders", [bad, order("o-2")], Cursor(1_002, "o-2"))
    assert (result.applied, result.duplicates, result.quarantined) == (1, 0, 1)
    assert await sink.load_versions("s", "order") == {"o-2": 1}
    assert await sink.load_cursor("s", "orders") == Cursor(1_002, "o-2")
    (held,) = await sink.load_quarantine("s")
    assert (held.kind, held.id, held.version, held.stream) == ("order", "o-1", 1, "orders")
    assert named in held.reason and held.reason.startswith("order o-1: ")
    assert json.loads(held.document) == bad.data
    assert held.record() == bad
    assert sink.quarantine_counts == {"s": 1}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_quarantined_records_are_retried_and_land_once_the_replica_takes_them(
    backend: str, open_replica: Any
) -> None:
    """A trigger refuses order 'bad'; each cycle (each cursor read) retries it, counting the
    attempts; once the trigger is gone it lands and leaves the quarantine."""
    sink = await open_replica(backend)
    await sink.apply_page("s", "orders", [order("o-0")], Cursor(1_001, "o-0"))
    await _refuse_order(sink, "bad")
    result = await sink.apply_page("s", "orders", [order("bad"), order("ok")], Cursor(1_001, "ok"))
    assert (result.applied, result.quarantined) == (1, 1)
    await sink.load_cursor("s", "orders")
    (held,) = await sink.load_quarantine("s")
    assert held.attempts == 2 and "refused by a trigger" in held.reason
    await _refuse_order(sink, None)
    assert await sink.load_cursor("s", "orders") == Cursor(1_001, "ok")
    assert await sink.load_quarantine("s") == []
    assert await sink.load_versions("s", "order") == {"o-0": 1, "bad": 1, "ok": 1}
    assert sink.quarantine_counts == {"s": 0}
    await assert_applied_at_most_once(sink)


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_newer_version_supersedes_the_quarantined_one(
    backend: str, open_replica: Any
) -> None:
    """A newer bad version replaces the older in the quarantine (attempts anew); a newer clean
    version lands normally and takes the quarantined one out."""
    sink = await open_replica(backend)
    await sink.apply_page("s", "orders", [order("o-1", 1, quantity="x")], Cursor(1_001, "o-1"))
    await sink.apply_page("s", "orders", [order("o-1", 1, quantity="x")], Cursor(1_001, "o-1"))
    (held,) = await sink.load_quarantine("s")
    assert (held.version, held.attempts) == (1, 2)
    await sink.apply_page("s", "orders", [order("o-1", 2, quantity="y")], Cursor(1_002, "o-1"))
    (held,) = await sink.load_quarantine("s")
    assert (held.version, held.attempts) == (2, 1) and "'y'" in held.reason
    result = await sink.apply_page("s", "orders", [order("o-1", 3)], Cursor(1_003, "o-1"))
    assert (result.applied, result.quarantined) == (1, 0)
    assert await sink.load_quarantine("s") == []
    assert await sink.load_versions("s", "order") == {"o-1": 3}


@pytest.mark.parametrize("backend", BACKENDS)
async def test_a_record_older_than_the_replica_is_a_duplicate_not_quarantined(
    backend: str, open_replica: Any
) -> None:
    """An old malformed version of an entity the replica holds newer is dropped as a duplicate,
    like any old version."""
    sink = await open_replica(backend)
    await sink.apply_page("s", "orders", [order("o-1", 2)], Cursor(1_002, "o-1"))
    result = await sink.apply_page(
        "s", "orders", [order("o-1", 1, quantity="x")], Cursor(1_002, "o-1")
    )
    assert (result.applied, result.duplicates, result.quarantined) == (0, 1, 0)
    assert await sink.load_quarantine("s") == []


@pytest.mark.parametrize("backend", ["sqlite", "sqlite-reference"])
async def test_a_version_applied_twice_fails_the_page_instead_of_quarantining(
    backend: str, open_replica: Any, tmp_path: Path
) -> None:
    """The applied ledger's key is the at-most-once guard: its conflict is never a record's
    fault, so the page fails whole and nothing goes to the quarantine."""
    sink = await open_replica(backend)
    with sqlite3.connect(tmp_path / "replica.db") as db:
        db.execute("INSERT INTO applied_versions VALUES ('order', 1, 1, 's', 'o-1', 0)")
    with pytest.raises(SinkError, match="applied_versions"):
        await sink.apply_page("s", "orders", [order("o-1")], Cursor(1_001, "o-1"))
    assert await sink.load_cursor("s", "orders") is None
    assert await sink.load_quarantine("s") == []


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
@pytest.mark.parametrize("step", ["before_cursor", "after_cursor"])
async def test_a_crash_between_quarantine_and_cursor_keeps_nothing_of_the_page(
    backend: str, step: str, open_replica: Any
) -> None:
    """The quarantine row is in the page's transaction: a crash before the commit leaves no
    row, no record, no cursor; the page applied again ends the same as without the crash."""
    crashing = await open_replica(backend, fault_hook=crash_on(step, 1))
    page = [order("o-1", quantity="x"), order("o-2")]
    with pytest.raises(SimulatedCrash):
        await crashing.apply_page("s", "orders", page, Cursor(1_001, "o-2"))
    restarted = await open_replica(backend)
    assert await restarted.load_quarantine("s") == []
    assert await restarted.load_versions("s", "order") == {}
    assert await restarted.load_cursor("s", "orders") is None
    result = await restarted.apply_page("s", "orders", page, Cursor(1_001, "o-2"))
    assert (result.applied, result.quarantined) == (1, 1)
    assert [q.id for q in await restarted.load_quarantine("s")] == ["o-1"]


@pytest.mark.parametrize(
    ("change", "named"),
    [
        ({"customer_identifier": "C" * 101}, "value too long"),
        ({"version": 2**31}, "out of range"),
    ],
)
async def test_postgresql_refusals_found_by_the_database_quarantine_one_record(
    change: dict[str, Any], named: str, open_replica: Any
) -> None:
    """A value longer than its column or an integer past it: PostgreSQL refuses the page, which
    runs again one SAVEPOINT per record; only that record is quarantined."""
    sink = await open_replica("postgresql")
    bad = order("o-1")
    bad = parse_record("order", bad.data | change)
    result = await sink.apply_page("s", "orders", [bad, order("o-2")], Cursor(1_002, "o-2"))
    assert (result.applied, result.quarantined) == (1, 1)
    (held,) = await sink.load_quarantine("s")
    assert held.id == "o-1" and named in held.reason
    assert held.record() == bad


async def test_a_nul_in_a_sku_is_quarantined_on_postgresql_and_the_stream_moves_on(
    hub: Hub, pg_url: str
) -> None:
    """The hub accepts a NUL in a SKU; PostgreSQL cannot store it. The agent mirrors everything
    else, keeps that order in the quarantine (metric, verify), retries it every cycle, and a
    later clean version of the order lands and empties the quarantine."""
    await hub.create_orders(2)
    nul = NewOrder.model_validate(
        order_payload(
            "C-NUL",
            line_items=[
                {"sku_customer_identifier": "SKU\x00X", "quantity": "1", "unit_price": "2"}
            ],
        )
    )
    (created,) = await hub.store.create_orders(hub.principal, [nul])
    assert created.order is not None
    nul_id = created.order.id
    hub.clock.advance()
    sink = await SqlSink.open(pg_url)
    try:
        engine = build_engine(hub, sink)
        engine.metrics.watch_quarantine(lambda: sink.quarantine_counts)
        await engine.run_cycle()  # no SinkError: the page committed
        assert set(await sink.load_versions(SOURCE, "order")) == (
            set(await hub.versions("order")) - {nul_id}
        )
        (held,) = await sink.load_quarantine(SOURCE)
        assert held.id == nul_id and "NUL" in held.reason and held.attempts == 1
        assert "SKU\\u0000X" in held.document  # the document as received, escaped as JSON
        assert _gauge(engine.metrics) == 1.0
        report = await verify_replica(engine.source, sink)
        assert not report.ok and report.quarantined == 1
        assert [q.id for q in report.streams[0].quarantined] == [nul_id]

        later = await hub.create_orders(3)  # later records are mirrored
        hub.clock.advance()
        await engine.run_cycle()
        assert {o.id for o in later} <= set(await sink.load_versions(SOURCE, "order"))
        (held,) = await sink.load_quarantine(SOURCE)
        # Tried again at the start of this cycle, and once more as the lookback re-read it.
        assert held.attempts == 3

        def clean(o: Any) -> Any:
            lines = [
                li.model_copy(update={"sku_customer_identifier": "SKU-X"}) for li in o.line_items
            ]
            return o.model_copy(update={"line_items": lines})

        hub.clock.advance()
        fixed = await hub.store.update_order(
            hub.principal, hub.principal.account_id, nul_id, clean, "order.updated"
        )
        hub.clock.advance()
        await engine.run_cycle()
        assert (await sink.load_versions(SOURCE, "order"))[nul_id] == fixed.version
        assert await sink.load_quarantine(SOURCE) == []
        assert _gauge(engine.metrics) == 0.0
        assert (await verify_replica(engine.source, sink)).ok
        with psycopg.connect(pg_url) as db:
            (sku,) = db.execute(
                "SELECT sku FROM order_lines WHERE order_id = %s", (nul_id,)
            ).fetchone()  # type: ignore[misc]
        assert sku == "SKU-X"
    finally:
        await sink.close()


def _gauge(metrics: AgentMetrics) -> float:
    value = metrics.registry.get_sample_value(
        "ordersync_agent_quarantined_records", {"source": SOURCE}
    )
    assert "ordersync_agent_quarantined_records" in generate_latest(metrics.registry).decode()
    return -1.0 if value is None else value


async def _refuse_order(sink: SqlSink, order_id: str | None) -> None:
    """A trigger refusing to store `order_id` (None: drop it), as a replica's own rule would."""
    from sqlalchemy import text

    postgres = sink.backend == "postgresql"
    async with sink.engine.begin() as conn:
        if order_id is None:
            await conn.execute(
                text("DROP TRIGGER refuse ON orders" if postgres else "DROP TRIGGER refuse")
            )
            return
        if postgres:
            await conn.execute(
                text(
                    "CREATE FUNCTION refuse() RETURNS trigger LANGUAGE plpgsql AS $$ BEGIN "
                    f"IF NEW.id = '{order_id}' THEN RAISE EXCEPTION USING ERRCODE = '23514', "
                    "MESSAGE = 'refused by a trigger'; END IF; RETURN NEW; END $$"
                )
            )
            await conn.execute(
                text(
                    "CREATE TRIGGER refuse BEFORE INSERT OR UPDATE ON orders "
                    "FOR EACH ROW EXECUTE FUNCTION refuse()"
                )
            )
        else:
            await conn.execute(
                text(
                    f"CREATE TRIGGER refuse BEFORE INSERT ON orders WHEN NEW.id = '{order_id}' "
                    "BEGIN SELECT RAISE(ABORT, 'refused by a trigger'); END"
                )
            )


async def test_quarantined_records_of_a_stream_whose_cursor_is_never_read_are_retried(
    open_replica: Any,
) -> None:
    """HubRise reads only its backfill cursor each cycle; records held back from its events
    pages are retried there too, each with their own stream's cursor kept."""
    sink = await open_replica("sqlite")
    await sink.apply_page("s", "backfill", [order("o-0")], Cursor(1_001, "o-0"))
    await sink.apply_page("s", "events", [order("o-1", quantity="x")], Cursor(5, "e-1"))
    await sink.load_cursor("s", "backfill")
    (held,) = await sink.load_quarantine("s")
    assert (held.stream, held.attempts) == ("events", 2)
    assert await sink.load_cursor("s", "events") == Cursor(5, "e-1")


@pytest.mark.parametrize("backend", [*BACKENDS, "jsonl"])
async def test_documents_only_the_standard_library_can_write_are_stored_exactly(
    backend: str, open_replica: Any, tmp_path: Path
) -> None:
    """A JSON parser may hand over integers past 64 bits and lone surrogates (the Tradecloud
    source parses with the standard library), which orjson refuses to write: every sink
    stores them exactly instead of refusing the page (so the JSONL and HTTP sinks, which
    write only documents, need no quarantine)."""
    record = order("o-1")
    record.data["note"] = "\ud800 lone"
    record.data["big"] = 2**70
    if backend == "jsonl":
        path = tmp_path / "changes.jsonl"
        sink = await JsonlSink.open(path)
        await sink.apply_page("s", "orders", [record], Cursor(1_001, "o-1"))
        await sink.close()
        reopened = await JsonlSink.open(path)  # reads its own file back
        assert await reopened.load_versions("s", "order") == {"o-1": 1}
        await reopened.close()
        assert json.loads(path.read_bytes())["data"] == record.data
        return
    sink = await open_replica(backend)
    result = await sink.apply_page("s", "orders", [record], Cursor(1_001, "o-1"))
    assert (result.applied, result.quarantined) == (1, 0)
    async with sink.engine.connect() as conn:
        (document,) = (await conn.execute(select(orders.c.data))).one()
    assert json.loads(document) == record.data


@pytest.mark.parametrize("backend", ["sqlite", "postgresql"])
async def test_a_crash_inside_the_one_record_at_a_time_pass_keeps_nothing_of_the_page(
    backend: str, open_replica: Any
) -> None:
    """A record the database refuses sends the page through again, one SAVEPOINT per record;
    a crash in that pass (at the first record's mid_apply) rolls the whole page back."""
    setup = await open_replica(backend)
    await _refuse_order(setup, "bad")
    crashing = await open_replica(backend, fault_hook=crash_on("mid_apply", 1))
    page = [order("bad"), order("ok")]
    with pytest.raises(SimulatedCrash):
        await crashing.apply_page("s", "orders", page, Cursor(1_001, "ok"))
    restarted = await open_replica(backend)
    assert await restarted.load_versions("s", "order") == {}
    assert await restarted.load_quarantine("s") == []
    assert await restarted.load_cursor("s", "orders") is None
    result = await restarted.apply_page("s", "orders", page, Cursor(1_001, "ok"))
    assert (result.applied, result.quarantined) == (1, 1)
    await assert_applied_at_most_once(restarted)
