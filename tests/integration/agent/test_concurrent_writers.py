"""Two writers on one replica at once (a second agent, a lease lost mid-page): the version that
wins the row also owns its lines and its ledger row, and no stored cursor moves backwards."""

from __future__ import annotations

import asyncio
import threading
import time
from pathlib import Path

import psycopg
from sqlalchemy import select

from ordersync.agent.records import Cursor, Record
from ordersync.agent.sinks.sql import SqlSink, applied_versions, order_lines, orders
from ordersync.agent.sources.masonhub import parse_record
from ordersync.domain.timestamps import format_rfc3339
from tests.integration.agent.conftest import SinkFactory
from tests.support import order_payload


def order(version: int, skus: tuple[str, ...], oid: str = "o-1") -> Record:
    data = order_payload(
        "C-1",
        line_items=[
            {"line_number": n, "sku_customer_identifier": sku, "quantity": "1", "unit_price": "1"}
            for n, sku in enumerate(skus, 1)
        ],
    )
    stamp = format_rfc3339(1_000 + version)
    data |= {"id": oid, "version": version, "status": "open", "updated_at": stamp}
    return parse_record("order", data)


V1, V2, V3 = order(1, ("v1",)), order(2, ("v2-a", "v2-b")), order(3, ("v3",))
C1, C2, C3 = Cursor(1_001, "o-1"), Cursor(1_002, "o-1"), Cursor(1_003, "o-1")


def _psycopg_url(url: str) -> str:
    return url.replace("postgresql+psycopg://", "postgresql://")


def _wait_until_blocked_on_a_lock(url: str, deadline_s: float = 60) -> None:
    """Until some backend of this database waits on a row lock (the other writer's upsert)."""
    end = time.monotonic() + deadline_s
    with psycopg.connect(_psycopg_url(url), autocommit=True) as conn:
        while time.monotonic() < end:
            row = conn.execute(
                "SELECT count(*) FROM pg_stat_activity "
                "WHERE datname = current_database() AND wait_event_type = 'Lock'"
            ).fetchone()
            if row and row[0]:
                return
            time.sleep(0.02)
    raise AssertionError("writer A never reached the row lock held by writer B")


class _WriterA(threading.Thread):
    """Applies one version (v2) with its cursor through its own SqlSink on its own loop."""

    def __init__(self, url: str, record: Record = V2, cursor: Cursor = C2) -> None:
        super().__init__(daemon=True)
        self.url, self.record, self.cursor = url, record, cursor
        self.result: object = None

    def run(self) -> None:
        async def apply() -> object:
            sink = await SqlSink.open(self.url)
            try:
                return await sink.apply_page("s", "orders", [self.record], self.cursor)
            finally:
                await sink.close()

        try:
            self.result = asyncio.run(apply())
        except BaseException as exc:  # reported by the test
            self.result = exc


async def test_forced_interleaving_keeps_the_winning_version_whole_on_postgresql(
    pg_url: str,
) -> None:
    """A reads held versions (v1), B writes v3 and commits, then A's upsert of v2 runs: the row
    stays at v3 with v3's lines, the ledger has no v2, and the cursor stays at B's C3."""
    setup = await SqlSink.open(pg_url)
    await setup.apply_page("s", "orders", [V1], C1)
    await setup.close()
    writer_a = _WriterA(pg_url)

    def b_holds_v3_uncommitted(step: str) -> None:
        # B has upserted v3 and holds the row's lock; A reads v1 as held and blocks on the
        # lock in its upsert. B then commits, and A's statement runs after B's commit.
        if step == "before_cursor" and not writer_a.is_alive() and writer_a.result is None:
            writer_a.start()
            _wait_until_blocked_on_a_lock(pg_url)

    writer_b = await SqlSink.open(pg_url, fault_hook=b_holds_v3_uncommitted)
    b_result = await writer_b.apply_page("s", "orders", [V3], C3)
    await asyncio.to_thread(writer_a.join, 60)
    assert not isinstance(writer_a.result, BaseException), writer_a.result
    assert b_result.applied == 1
    assert writer_a.result is not None and writer_a.result.applied == 0  # type: ignore[attr-defined]
    async with writer_b.engine.connect() as conn:
        version = (await conn.execute(select(orders.c.version))).scalar_one()
        skus = [
            r[0]
            for r in await conn.execute(
                select(order_lines.c.sku).order_by(order_lines.c.line_number)
            )
        ]
        ledger = sorted(r[0] for r in await conn.execute(select(applied_versions.c.version)))
    cursor = await writer_b.load_cursor("s", "orders")
    await writer_b.close()
    assert version == 3
    assert skus == ["v3"], "the lines must be those of the version the row holds"
    assert ledger == [1, 3], "a version that lost the row must not enter the ledger"
    assert cursor == C3, "the stored cursor moved backwards"


async def test_a_row_another_writer_inserted_after_the_held_read_gets_only_the_winners_lines(
    pg_url: str,
) -> None:
    """B inserts v1 (with its line) and holds it uncommitted; A's held read finds nothing, its
    upsert of v2 waits, then updates B's row: B's lines go, only v2's remain, ledger 1 and 2."""
    writer_a = _WriterA(pg_url, V2, C2)

    def b_holds_v1_uncommitted(step: str) -> None:
        if step == "before_cursor" and not writer_a.is_alive() and writer_a.result is None:
            writer_a.start()
            _wait_until_blocked_on_a_lock(pg_url)

    writer_b = await SqlSink.open(pg_url, fault_hook=b_holds_v1_uncommitted)
    await writer_b.apply_page("s", "orders", [V1], C1)
    await asyncio.to_thread(writer_a.join, 60)
    assert not isinstance(writer_a.result, BaseException), writer_a.result
    async with writer_b.engine.connect() as conn:
        version = (await conn.execute(select(orders.c.version))).scalar_one()
        skus = [r[0] for r in await conn.execute(select(order_lines.c.sku))]
        ledger = sorted(r[0] for r in await conn.execute(select(applied_versions.c.version)))
    cursor = await writer_b.load_cursor("s", "orders")
    await writer_b.close()
    assert (version, sorted(skus), ledger, cursor) == (2, ["v2-a", "v2-b"], [1, 2], C2)


async def test_a_page_behind_the_stored_cursor_never_moves_it_back(
    sink_factory: SinkFactory,
) -> None:
    """A writer that committed C3 first, then one with an older page (C2): the cursor stays C3,
    and the older page's version is a duplicate, not a write."""
    first = await sink_factory()
    await first.apply_page("s", "orders", [V3], C3)
    second = await sink_factory()
    result = await second.apply_page("s", "orders", [V2], C2)
    assert (result.applied, result.duplicates) == (0, 1)
    assert await second.load_cursor("s", "orders") == C3
    assert await first.load_cursor("s", "orders") == C3
    assert await second.load_versions("s", "order") == {"o-1": 3}


async def test_a_backfill_stream_walks_down_and_never_back_up(sink_factory: SinkFactory) -> None:
    """HubRise's backfill position descends (newest first, (0, "") at the end): a later
    position is lower, and a stale writer's higher position does not undo the walk."""
    sink = await sink_factory()
    await sink.apply_page("s", "orders-backfill", [V3], Cursor(5_000, "b"))
    await sink.apply_page("s", "orders-backfill", [V2], Cursor(4_000, "a"))
    assert await sink.load_cursor("s", "orders-backfill") == Cursor(4_000, "a")
    await sink.apply_page("s", "orders-backfill", [V1], Cursor(5_000, "b"))
    assert await sink.load_cursor("s", "orders-backfill") == Cursor(4_000, "a")
    await sink.apply_page("s", "orders-backfill", [], Cursor(0, ""))
    assert await sink.load_cursor("s", "orders-backfill") == Cursor(0, "")


async def test_two_checkpoint_files_of_one_sink_never_move_a_cursor_back(tmp_path: Path) -> None:
    """The JSONL/HTTP checkpoint file: a second writer holding an older view of the file does
    not overwrite a cursor stored meanwhile with an older one."""
    from ordersync.agent.sinks.checkpoint_file import CheckpointFile

    path = tmp_path / "state.json"
    stale, fresh = CheckpointFile(path), CheckpointFile(path)
    fresh.save("s", "orders", C3)
    stale.save("s", "orders", C2)
    assert CheckpointFile(path).load("s", "orders") == C3
    assert stale.load("s", "orders") == C3
