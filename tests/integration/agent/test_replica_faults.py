"""A SQLite replica that is deleted, turns read-only or fills its disk mid-run: the cycle fails
with one line naming the fault (never SIGBUS, never "cannot rollback"), nothing is lost, and
the agent recovers by itself once the fault is gone (the deleted file excepted)."""

from __future__ import annotations

import contextlib
import os
import sqlite3
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from ordersync.agent.errors import SinkError
from ordersync.agent.records import Cursor
from ordersync.agent.sinks import replica_file
from ordersync.agent.sinks.sql import SqlSink
from ordersync.agent.sinks.sqlite_fast import SqliteWriter
from tests.integration.agent.harness import (
    SOURCE,
    Hub,
    assert_applied_at_most_once,
    assert_replica_equals_hub,
    build_engine,
)


async def test_a_replica_deleted_mid_run_is_named_at_the_next_page(
    hub: Hub, tmp_path: Path
) -> None:
    """The next page after the file is deleted fails naming it (not 60 s of writes into the
    unlinked file), and so does every cycle after: nothing is written anywhere."""
    path = tmp_path / "replica.db"
    sink = await SqlSink.open(f"sqlite:///{path}")
    try:
        engine = build_engine(hub, sink, page_size=50)
        await hub.create_orders(60)
        await engine.run_cycle()
        path.unlink()
        await hub.create_orders(60)
        for _ in range(2):  # it keeps trying, and keeps saying why
            with pytest.raises(SinkError, match=f"replica {path} was deleted while the agent ran"):
                await engine.run_cycle()
        assert not path.exists()  # nothing recreated an empty replica there
    finally:
        await sink.close()


@contextlib.contextmanager
def immutable(*paths: Path) -> Iterator[None]:
    """The files refuse writes, root's too (`chattr +i`): what a read-only replica is to SQLite."""
    names = [str(p) for p in paths if p.exists()]
    if subprocess.run(["chattr", "+i", *names], capture_output=True).returncode != 0:
        pytest.skip("chattr +i is not available here (not root, or the file system lacks it)")
    try:
        yield
    finally:
        subprocess.run(["chattr", "-i", *names], check=True)


async def test_a_replica_turned_read_only_mid_run_is_named_and_the_agent_recovers(
    hub: Hub, tmp_path: Path
) -> None:
    """Files made immutable under a running agent: on main, the next read of the WAL index
    (mapped in memory) killed the agent by SIGBUS with no log line. Now each cycle fails
    naming the read-only replica, the cursor stays, and once writable the agent catches up."""
    path = tmp_path / "replica.db"
    sink = await SqlSink.open(f"sqlite:///{path}")
    try:
        engine = build_engine(hub, sink, page_size=50)
        await hub.create_orders(60)
        await engine.run_cycle()
        await hub.create_orders(60)
        wal_files = (path, Path(f"{path}-wal"), Path(f"{path}-shm"))
        with immutable(*wal_files):
            for _ in range(2):
                with pytest.raises(SinkError, match=f"replica {path} is read-only"):
                    await engine.run_cycle()
        await engine.run_cycle()
        await assert_replica_equals_hub(hub, sink, SOURCE)
        await assert_applied_at_most_once(sink)
    finally:
        await sink.close()


@pytest.fixture
def small_disk(tmp_path: Path) -> Iterator[Path]:
    """A 4 MB tmpfs (root only; skipped elsewhere)."""
    mount = tmp_path / "disk"
    mount.mkdir()
    if (
        subprocess.run(
            ["mount", "-t", "tmpfs", "-o", "size=4m", "tmpfs", str(mount)], capture_output=True
        ).returncode
        != 0
    ):
        pytest.skip("cannot mount a tmpfs here (not root)")
    try:
        yield mount
    finally:
        subprocess.run(["umount", "-l", str(mount)], check=True)


def fill(disk: Path) -> Path:
    filler = disk / "filler"
    with contextlib.suppress(OSError), open(filler, "wb", buffering=0) as handle:
        while True:
            handle.write(b"\0" * 65536)
    return filler


async def test_a_full_disk_is_named_and_the_agent_recovers_once_space_is_freed(
    hub: Hub, small_disk: Path
) -> None:
    """On main a full disk was reported as "cannot rollback - no transaction is active" (SQLite
    had ended the transaction itself). Now: "the disk holding ... is full", the cursor stays,
    and once space is freed the next cycle catches up."""
    path = small_disk / "replica.db"
    sink = await SqlSink.open(f"sqlite:///{path}")
    try:
        engine = build_engine(hub, sink, page_size=100)
        await hub.create_orders(50)
        await engine.run_cycle()
        before = await sink.load_cursor(SOURCE, "orders")
        await hub.create_orders(300)
        filler = fill(small_disk)
        with pytest.raises(SinkError, match=f"the disk holding the replica {path} is full") as err:
            await engine.run_cycle()
        assert "cannot rollback" not in str(err.value)
        assert await sink.load_cursor(SOURCE, "orders") == before
        filler.unlink()
        await engine.run_cycle()
        await assert_replica_equals_hub(hub, sink, SOURCE)
        await assert_applied_at_most_once(sink)
    finally:
        await sink.close()


def test_sqlite_result_codes_of_the_file_are_named(tmp_path: Path) -> None:
    """Where no read-only file system can be made: a connection that may not write (PRAGMA
    query_only) fails the page with SQLITE_READONLY, which is named as a read-only replica;
    the writer stays usable once writes are allowed again."""
    path = tmp_path / "r.db"
    sqlite3.connect(path).close()
    # The tables, as SqlSink.open creates them.
    import asyncio

    asyncio.run(_create(path))
    writer = SqliteWriter(str(path), 1_000)
    try:
        writer._db.execute("PRAGMA query_only = 1")
        with pytest.raises(sqlite3.Error) as refused:
            writer.apply("s", "orders", [], Cursor(1, "a"), 0)
        fault = replica_file.named(str(path), refused.value)
        assert fault is not None and str(fault) == (
            f"the replica {path} is read-only (its file or file system no longer takes writes)"
        )
        writer._db.execute("PRAGMA query_only = 0")
        assert writer.apply("s", "orders", [], Cursor(1, "a"), 0) == (0, 0, 0)
    finally:
        writer.close()
    assert not os.path.exists(f"{path}-wal")  # closed cleanly: checkpointed


async def _create(path: Path) -> None:
    sink = await SqlSink.open(f"sqlite:///{path}")
    await sink.close()
