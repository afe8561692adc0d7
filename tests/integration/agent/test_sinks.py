"""Sink contracts on real databases and files: exact decimals, upsert-if-newer, atomic pages."""

from __future__ import annotations

import asyncio
import sqlite3
import time
from decimal import Decimal
from pathlib import Path
from typing import Any

import pytest
from sqlalchemy import insert, select, text
from sqlalchemy.exc import IntegrityError

from ordersync.agent.errors import SinkError
from ordersync.agent.records import Cursor, Record
from ordersync.agent.sinks.jsonl import JsonlSink
from ordersync.agent.sinks.sql import SqlSink, applied_versions, order_lines, orders
from ordersync.agent.sources.masonhub import parse_record
from ordersync.domain import format_rfc3339
from tests.integration.agent.conftest import SinkFactory
from tests.support import order_payload

# SQLite through its writer process, SQLite through the SQLAlchemy apply, PostgreSQL.
SQL_BACKENDS = ["sqlite", "sqlite-inline", "postgresql"]


async def open_sql(backend: str, tmp_path: Path, request: pytest.FixtureRequest) -> SqlSink:
    if backend == "postgresql":
        return await SqlSink.open(request.getfixturevalue("pg_url"))
    writer = "inline" if backend == "sqlite-inline" else "process"
    return await SqlSink.open(f"sqlite:///{tmp_path}/r.db", writer=writer)


def order(
    version: int,
    *,
    price: str = "9.99",
    qty: str = "2",
    oid: str = "o-1",
    lines: list[Any] | None = None,
) -> Record:
    """A MasonHub order document as a source reads it (snapshot and document)."""
    data = order_payload(
        "C-1",
        line_items=[
            {
                "line_number": 1,
                "sku_customer_identifier": "SKU-1",
                "quantity": qty,
                "unit_price": price,
            }
        ]
        if lines is None
        else lines,
    )
    data |= {
        "id": oid,
        "version": version,
        "status": "open",
        "updated_at": format_rfc3339(1_000 + version),
    }
    return parse_record("order", data)


async def test_older_and_repeated_versions_are_duplicates_not_writes(
    sink_factory: SinkFactory,
) -> None:
    """Upsert if newer: v2 then v1 then v2 again leave v2, counted as duplicates."""
    sink = await sink_factory()
    first = await sink.apply_page("s", "orders", [order(2)], Cursor(1_002, "o-1"))
    again = await sink.apply_page("s", "orders", [order(1), order(2)], Cursor(1_002, "o-1"))
    assert (first.applied, first.duplicates) == (1, 0)
    assert (again.applied, again.duplicates) == (0, 2)
    assert await sink.load_versions("s", "order") == {"o-1": 2}
    assert await sink.load_cursor("s", "orders") == Cursor(1_002, "o-1")


@pytest.mark.parametrize("backend", SQL_BACKENDS)
async def test_decimals_are_stored_exactly_never_as_float(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """TEXT on SQLite, NUMERIC on PostgreSQL: 0.1 and 30 significant digits survive."""
    sink = await open_sql(backend, tmp_path, request)
    price, qty = "0.10", "123456789012345678.000000000001"
    await sink.apply_page("s", "orders", [order(1, price=price, qty=qty)], Cursor(1, ""))
    async with sink.engine.connect() as conn:
        row = (await conn.execute(select(order_lines.c.unit_price, order_lines.c.quantity))).one()
        kind = (
            await conn.execute(
                text(
                    "SELECT typeof(unit_price) FROM order_lines"
                    if sink.backend == "sqlite"
                    else "SELECT pg_typeof(unit_price)::text FROM order_lines"
                )
            )
        ).scalar_one()
    await sink.close()
    assert row == (Decimal(price), Decimal(qty))
    assert kind == ("numeric" if backend == "postgresql" else "text")


async def test_a_failure_inside_a_page_keeps_neither_its_writes_nor_its_cursor(
    tmp_path: Path, pg_url: str
) -> None:
    """SQL sinks: entities, ledger and cursor commit together or not at all (every backend
    and SQLite write path)."""
    for url, writer in (
        (f"sqlite:///{tmp_path}/r.db", "process"),
        (f"sqlite:///{tmp_path}/inline.db", "inline"),
        (pg_url, "process"),
    ):

        def boom(step: str) -> None:
            if step == "after_cursor":
                raise RuntimeError("crash")

        sink = await SqlSink.open(url, fault_hook=boom, writer=writer)  # type: ignore[arg-type]
        with pytest.raises(RuntimeError):
            await sink.apply_page("s", "orders", [order(1)], Cursor(1_001, "o-1"))
        assert await sink.load_versions("s", "order") == {}
        assert await sink.load_cursor("s", "orders") is None
        await sink.close()


def two_line_order(version: int, oid: str, skus: tuple[str, ...]) -> Record:
    lines = [
        {"line_number": n, "sku_customer_identifier": sku, "quantity": "1", "unit_price": "2.50"}
        for n, sku in enumerate(skus, start=1)
    ]
    return order(version, oid=oid, lines=lines)


@pytest.mark.parametrize("backend", SQL_BACKENDS)
async def test_a_newer_version_replaces_the_lines_of_its_order_only(
    backend: str, tmp_path: Path, request: pytest.FixtureRequest
) -> None:
    """Lines hang off their order by `order_seq`; an update swaps that order's lines, and a
    second application of a version is refused by the ledger's key, not only by the check."""
    sink = await open_sql(backend, tmp_path, request)
    await sink.apply_page(
        "s",
        "orders",
        [two_line_order(1, "o-1", ("A", "B")), two_line_order(1, "o-2", ("C", "D"))],
        Cursor(1, ""),
    )
    await sink.apply_page("s", "orders", [two_line_order(2, "o-1", ("E",))], Cursor(2, ""))
    join = (
        select(orders.c.id, order_lines.c.sku)
        .join(order_lines, order_lines.c.order_seq == orders.c.seq)
        .order_by(orders.c.id, order_lines.c.line_number)
    )
    async with sink.engine.connect() as conn:
        lines = [tuple(r) for r in await conn.execute(join)]
    assert lines == [("o-1", "E"), ("o-2", "C"), ("o-2", "D")]
    async with sink.engine.connect() as conn:
        ledger = (await conn.execute(select(applied_versions))).mappings().first()
        assert ledger is not None
        with pytest.raises(IntegrityError):
            await conn.execute(insert(applied_versions).values(**ledger))
    await sink.close()


async def test_a_replica_of_the_older_layout_is_refused_with_what_to_do(tmp_path: Path) -> None:
    """A replica written before lines and the ledger were keyed by `seq`: a clear error naming
    the way out, nothing written to it."""
    path = tmp_path / "old.db"
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TABLE orders (source VARCHAR(50), id VARCHAR(64), version INTEGER, "
            "updated_at_ms BIGINT, status VARCHAR(30), customer_identifier VARCHAR(100), "
            "data TEXT, PRIMARY KEY (source, id))"
        )
    with pytest.raises(SinkError, match=r"older ordersync.*new replica"):
        await SqlSink.open(f"sqlite:///{path}")
    with sqlite3.connect(path) as db:
        tables = {r[0] for r in db.execute("SELECT name FROM sqlite_master WHERE type='table'")}
    assert tables == {"orders"}


async def test_jsonl_drops_a_torn_last_line_and_remembers_written_versions(
    tmp_path: Path,
) -> None:
    """A crash mid-line leaves a fragment: it is cut, complete lines still count as applied."""
    path = tmp_path / "changes.jsonl"
    sink = await JsonlSink.open(path)
    await sink.apply_page("s", "orders", [order(1)], Cursor(1_001, "o-1"))
    await sink.close()
    path.write_bytes(path.read_bytes() + b'{"kind":"order","id":"o-1","vers')
    reopened = await JsonlSink.open(path)
    assert await reopened.load_versions("s", "order") == {"o-1": 1}
    result = await reopened.apply_page("s", "orders", [order(1), order(2)], Cursor(1_002, "o-1"))
    assert (result.applied, result.duplicates) == (1, 1)
    await reopened.close()
    assert len(path.read_bytes().splitlines()) == 2


async def test_sqlite_commits_reach_the_database_file_without_the_writer_checkpointing(
    tmp_path: Path,
) -> None:
    """The writer only appends to the WAL (its own checkpoint waits for ~40 MB); a thread copies
    commits into the database file meanwhile, so a page's COMMIT never waits for that."""
    path = tmp_path / "r.db"
    sink = await SqlSink.open(f"sqlite:///{path}")
    before = path.stat().st_size
    for v in range(1, 6):
        records = [order(v, oid=f"o-{i}") for i in range(50)]
        await sink.apply_page("s", "orders", records, Cursor(1_000 + v, "o-49"))

    def file_grows() -> int:
        deadline = time.monotonic() + 10
        while path.stat().st_size <= before and time.monotonic() < deadline:
            time.sleep(0.02)
        return path.stat().st_size

    grown = await asyncio.to_thread(file_grows)
    await sink.close()
    assert grown > before
    with sqlite3.connect(path) as db:
        assert db.execute("SELECT count(*), min(version) FROM orders").fetchone() == (50, 5)
