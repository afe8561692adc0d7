"""The SQLite sink's writer process: pipelined pages never apply past a failed one, a writer
killed mid-page loses nothing and is replaced, and it never outlives the agent."""

from __future__ import annotations

import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import pytest

from ordersync.agent.errors import SinkError
from ordersync.agent.records import Cursor, Record
from ordersync.agent.sinks.sql import SqlSink
from ordersync.agent.sources.masonhub import parse_record
from ordersync.domain import format_rfc3339
from tests.integration.agent.harness import (
    SOURCE,
    Hub,
    assert_applied_at_most_once,
    assert_replica_equals_hub,
    build_engine,
)
from tests.integration.agent.test_crashes import seed
from tests.support import order_payload

ROOT = Path(__file__).resolve().parents[3]


def order(oid: str, ms: int) -> Record:
    data = order_payload(oid.upper())
    data |= {"id": oid, "version": 1, "status": "open", "updated_at": format_rfc3339(ms)}
    for number, line in enumerate(data["line_items"], 1):
        line["line_number"] = number
    return parse_record("order", data)


def page(*ids: str, start: int) -> list[Record]:
    return [order(oid, start + n) for n, oid in enumerate(ids)]


async def test_a_page_sent_behind_a_failed_one_is_refused_not_applied_past_the_gap(
    tmp_path: Path,
) -> None:
    """Pages 2 and 3 are both on their way when page 2 fails inside SQLite (its cursor write is
    refused: a record refused alone would go to the quarantine instead): page 3 continues
    from page 2's cursor, which was never stored, so it is refused and the cursor stays at
    page 1 (applying page 3 would have moved the cursor past page 2's orders for good)."""
    path = tmp_path / "replica.db"
    sink = await SqlSink.open(f"sqlite:///{path}")
    first, second, third = (
        page("a1", "a2", start=1_000), page("b1", "bad", start=2_000), page("c1", start=3_000)
    )  # fmt: skip
    cursors = [Cursor(p[-1].updated_at_ms, p[-1].id) for p in (first, second, third)]
    outcome = await sink.submit_page("s", "orders", first, cursors[0], None)
    assert (await outcome).applied == 2
    with sqlite3.connect(path) as db:
        db.execute(
            "CREATE TRIGGER refuse_bad BEFORE INSERT ON checkpoints WHEN NEW.last_id = 'bad' "
            "BEGIN SELECT RAISE(ABORT, 'the disk said no'); END"
        )
    failing = await sink.submit_page("s", "orders", second, cursors[1], cursors[0])
    behind = await sink.submit_page("s", "orders", third, cursors[2], cursors[1])
    with pytest.raises(SinkError, match="the disk said no"):
        await failing
    with pytest.raises(SinkError, match="stored cursor of s/orders"):
        await behind
    assert await sink.load_versions("s", "order") == {"a1": 1, "a2": 1}
    assert await sink.load_cursor("s", "orders") == cursors[0]
    # The same writer goes on from the stored cursor once the cause is gone.
    with sqlite3.connect(path) as db:
        db.execute("DROP TRIGGER refuse_bad")
    outcome = await sink.submit_page("s", "orders", second, cursors[1], cursors[0])
    assert (await outcome).applied == 2
    await sink.close()


async def test_a_writer_killed_mid_page_fails_that_page_and_a_new_writer_converges(
    hub: Hub, tmp_path: Path
) -> None:
    """SIGKILL to the writer inside a page's transaction: the cycle fails with a clear error,
    nothing of that page is kept, and the next cycle (same sink) starts a new writer and ends
    equal to the hub, every version applied once."""
    await seed(hub)
    killed: list[int] = []

    def kill_writer(step: str) -> None:
        if step == "mid_apply" and not killed and sink._writer is not None:
            killed.append(sink._writer.pid)
            os.kill(sink._writer.pid, signal.SIGKILL)

    sink = await SqlSink.open(f"sqlite:///{tmp_path}/replica.db", fault_hook=kill_writer)
    with pytest.raises(SinkError, match="writer process stopped"):
        await build_engine(hub, sink, page_size=50).run_cycle()
    assert await sink.load_versions(SOURCE, "order") == {}  # the first page died whole
    await build_engine(hub, sink, page_size=50).run_cycle()
    assert sink._writer is not None and sink._writer.pid != killed[0]
    await assert_replica_equals_hub(hub, sink)
    await assert_applied_at_most_once(sink)
    await sink.close()


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
async def test_the_writer_lets_the_agent_handle_ctrl_c_and_stop_signals(tmp_path: Path) -> None:
    """Ctrl-C and a service stop signal the whole process group; the agent then finishes its
    pages and closes the writer, so the writer itself must not die of those signals."""
    sink = await SqlSink.open(f"sqlite:///{tmp_path}/replica.db")
    await sink.apply_page("s", "orders", page("a1", start=1_000), Cursor(1_000, "a1"))
    assert sink._writer is not None
    pid = sink._writer.pid
    os.kill(pid, signal.SIGINT)
    os.kill(pid, signal.SIGTERM)
    await sink.apply_page("s", "orders", page("b1", start=2_000), Cursor(2_000, "b1"))
    assert sink._writer.pid == pid
    assert await sink.load_versions("s", "order") == {"a1": 1, "b1": 1}
    await sink.close()


AGENT_SCRIPT = """
import asyncio, sys
from ordersync.agent.records import Cursor
from ordersync.agent.sinks.sql import SqlSink
from ordersync.agent.sources.masonhub import parse_record

async def main():
    sink = await SqlSink.open(sys.argv[1])
    data = {"id": "o-1", "version": 1, "status": "open", "updated_at": "2024-01-01T00:00:00Z"}
    await sink.apply_page("s", "orders", [parse_record("order", data)], Cursor(1, "o-1"))
    print(sink._writer.pid, flush=True)
    await asyncio.sleep(60)

asyncio.run(main())
"""


@pytest.mark.skipif(sys.platform == "win32", reason="POSIX signals")
def test_the_writer_does_not_outlive_an_agent_killed_with_sigkill(tmp_path: Path) -> None:
    """No orphan writer could commit a page after a restarted agent read the cursor."""
    env = {**os.environ, "PYTHONPATH": str(ROOT / "src")}
    agent = subprocess.Popen(
        [sys.executable, "-c", AGENT_SCRIPT, f"sqlite:///{tmp_path}/replica.db"],
        stdout=subprocess.PIPE,
        env=env,
    )
    try:
        assert agent.stdout is not None
        writer_pid = int(agent.stdout.readline())
        assert _alive(writer_pid)
        agent.kill()
        agent.wait(10)
        deadline = time.monotonic() + 10
        while _alive(writer_pid) and time.monotonic() < deadline:
            time.sleep(0.05)
        assert not _alive(writer_pid), "the writer outlived its agent"
    finally:
        if agent.poll() is None:
            agent.kill()
            agent.wait()


def _alive(pid: int) -> bool:
    """True while `pid` runs (a zombie, killed and not yet reaped by init, counts as gone)."""
    try:
        with open(f"/proc/{pid}/stat") as stat:
            return stat.read().rpartition(")")[2].split()[0] != "Z"
    except FileNotFoundError:
        return False
    except OSError:  # no /proc: ask the kernel
        try:
            os.kill(pid, 0)
        except ProcessLookupError:
            return False
        return True
