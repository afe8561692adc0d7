"""The engine's cursor rule and counts, with an in-memory source and sink (pure asyncio)."""

from __future__ import annotations

import asyncio
from collections.abc import Sequence

import pytest
from prometheus_client import CollectorRegistry

from ordersync.agent.engine import EngineSettings, SyncEngine
from ordersync.agent.errors import SourceError
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.records import ApplyResult, Cursor, FetchedPage, Kind, Record


class ListSource:
    name = "mem"
    streams = ("orders",)
    max_page_size = 100

    def __init__(self, records: list[Record], server_time_ms: int) -> None:
        self.records = records
        self.server_time_ms = server_time_ms
        self.calls = 0

    @property
    def api_calls(self) -> int:
        return self.calls

    async def fetch_page(
        self,
        stream: str,
        since_ms: int,
        offset: int,
        limit: int,
        *,
        summary: bool = False,
        after_id: str | None = None,
    ) -> FetchedPage:
        self.calls += 1
        chosen = sorted(
            (r for r in self.records if r.updated_at_ms >= since_ms),
            key=lambda r: (r.updated_at_ms, r.id),
        )
        return FetchedPage(chosen[offset : offset + limit], self.server_time_ms)


class MemorySink:
    def __init__(self) -> None:
        self.held: dict[str, int] = {}
        self.cursor: Cursor | None = None

    async def load_cursor(self, source: str, stream: str) -> Cursor | None:
        return self.cursor

    async def apply_page(
        self, source: str, stream: str, records: Sequence[Record], new_cursor: Cursor
    ) -> ApplyResult:
        newer = [r for r in records if r.version > self.held.get(r.id, 0)]
        self.held |= {r.id: r.version for r in newer}
        self.cursor = new_cursor
        return ApplyResult(len(newer), len(records) - len(newer))

    async def load_versions(self, source: str, kind: Kind) -> dict[str, int]:
        return dict(self.held)

    async def close(self) -> None:
        pass


def rec(ts: int, rid: str, version: int = 1) -> Record:
    return Record("order", rid, version, ts, {})


async def test_the_cursor_never_passes_server_time_minus_lookback() -> None:
    """Records newer than (Date - lookback) are applied, but the cursor stops at that line."""
    source = ListSource([rec(1_000, "a"), rec(9_500, "b")], server_time_ms=10_000)
    sink = MemorySink()
    await SyncEngine(source, sink, settings=EngineSettings(lookback_ms=2_000)).run_cycle()
    assert sink.held == {"a": 1, "b": 1}
    assert sink.cursor == Cursor(8_000, "")


async def test_the_cursor_is_the_last_drained_record_when_below_the_cap() -> None:
    """Far from the head the cursor is (updated_at, id) of the last record applied."""
    source = ListSource([rec(1_000, "a"), rec(2_000, "b")], server_time_ms=1_000_000)
    sink = MemorySink()
    await SyncEngine(source, sink).run_cycle()
    assert sink.cursor == Cursor(2_000, "b")


async def test_the_lookback_window_is_reread_and_counted_as_duplicates() -> None:
    """A second cycle re-reads from cursor - lookback: no applies, only duplicates."""
    source = ListSource([rec(1_000 + i, f"r{i:03d}") for i in range(150)], 500_000)
    sink = MemorySink()
    registry = CollectorRegistry()
    engine = SyncEngine(
        source, sink, settings=EngineSettings(lookback_ms=100), metrics=AgentMetrics(registry)
    )
    first = await engine.run_cycle()
    second = await engine.run_cycle()
    assert (first.applied, first.pages, first.api_calls) == (150, 2, 2)
    assert (second.applied, second.duplicates) == (0, 101)  # 1049..1149 inclusive
    assert (
        registry.get_sample_value(
            "ordersync_agent_records_applied_total", {"source": "mem", "stream": "orders"}
        )
        == 150
    )
    assert (
        registry.get_sample_value(
            "ordersync_agent_duplicates_dropped_total", {"source": "mem", "stream": "orders"}
        )
        == 101
    )


async def test_run_stops_when_asked() -> None:
    """`run` cycles until the stop event is set."""
    engine = SyncEngine(ListSource([rec(1, "a")], 10_000), MemorySink())
    stop = asyncio.Event()
    task = asyncio.create_task(engine.run(0.01, stop))
    await asyncio.sleep(0.05)
    stop.set()
    await asyncio.wait_for(task, 1)
    assert engine.status()[0].caught_up


class WireSource(ListSource):
    """Each fetch notes when its request leaves, then waits for the answer."""

    def __init__(
        self, records: list[Record], server_time_ms: int, events: list[str], held: float = 0.0
    ) -> None:
        super().__init__(records, server_time_ms)
        self.events = events
        self.held = held  # seconds a request waits before it is sent (a quota budget's pacing)

    async def fetch_page(
        self,
        stream: str,
        since_ms: int,
        offset: int,
        limit: int,
        *,
        summary: bool = False,
        after_id: str | None = None,
    ) -> FetchedPage:
        number = self.calls + 1
        if number > 1:
            await asyncio.sleep(self.held)
        self.events.append(f"sent {number}")
        await asyncio.sleep(0.005)  # the platform works on it
        return await super().fetch_page(stream, since_ms, offset, limit, summary=summary)


class WritingSink(MemorySink):
    """Notes when each page's write starts and ends; the write awaits its database."""

    def __init__(self, events: list[str]) -> None:
        super().__init__()
        self.events = events
        self.pages = 0

    async def apply_page(
        self, source: str, stream: str, records: Sequence[Record], new_cursor: Cursor
    ) -> ApplyResult:
        self.pages += 1
        page = self.pages
        self.events.append(f"write {page}")
        await asyncio.sleep(0.01)
        self.events.append(f"written {page}")
        return await super().apply_page(source, stream, records, new_cursor)


async def test_the_next_request_travels_while_a_page_is_written() -> None:
    """Read-ahead: request k+1 leaves before page k's write ends, so the platform prepares the
    next page while the sink writes this one."""
    events: list[str] = []
    records = [rec(1_000 + i, f"r{i:03}") for i in range(25)]
    engine = SyncEngine(
        WireSource(records, server_time_ms=100_000, events=events),
        WritingSink(events),
        settings=EngineSettings(lookback_ms=0, page_size=10),
        metrics=AgentMetrics(CollectorRegistry()),
    )
    await engine.run_cycle()
    for page in (1, 2):
        assert events.index(f"sent {page + 1}") < events.index(f"written {page}"), events
    assert events.index("sent 3") > events.index("write 2"), "no request is sent two ahead"


async def test_a_page_is_not_held_back_while_the_next_request_waits_for_quota() -> None:
    """A read-ahead request that the budget holds back for a second does not delay committing
    the page already read."""
    events: list[str] = []
    records = [rec(1_000 + i, f"r{i:03}") for i in range(15)]
    engine = SyncEngine(
        WireSource(records, server_time_ms=100_000, events=events, held=1.0),
        WritingSink(events),
        settings=EngineSettings(lookback_ms=0, page_size=10),
        metrics=AgentMetrics(CollectorRegistry()),
    )
    await engine.run_cycle()
    assert events[:4] == ["sent 1", "write 1", "written 1", "sent 2"], events


class PipelinedMemorySink(MemorySink):
    """Takes the next page before the last one committed, each committing a moment later."""

    def __init__(self) -> None:
        super().__init__()
        self.sent = 0
        self.ended = 0

    async def submit_page(
        self,
        source: str,
        stream: str,
        records: Sequence[Record],
        new_cursor: Cursor,
        base: Cursor | None,
    ) -> asyncio.Task[ApplyResult]:
        self.sent += 1
        number = self.sent

        async def commit() -> ApplyResult:
            await asyncio.sleep(0.02 * number)  # page k+1 ends well after page k
            self.ended += 1
            return await self.apply_page(source, stream, records, new_cursor)

        return asyncio.ensure_future(commit())


async def test_a_failure_after_a_commit_leaves_no_page_in_flight() -> None:
    """When a step fails after page k's commit while page k+1 is already with the sink, the
    engine waits for page k+1 to end before it raises: a restarted agent never reads a cursor
    that a page still in flight moves afterwards."""

    class Crash(Exception):
        pass

    def crash_at_first_commit(step: str, stream: str) -> None:
        if step == "after_commit":
            raise Crash

    records = [rec(1_000 + i, f"r{i:03}") for i in range(50)]
    sink = PipelinedMemorySink()
    engine = SyncEngine(
        ListSource(records, server_time_ms=100_000),
        sink,
        settings=EngineSettings(lookback_ms=0, page_size=10),
        metrics=AgentMetrics(CollectorRegistry()),
        hook=crash_at_first_commit,
    )
    try:
        await engine.run_cycle()
    except Crash:
        pass
    else:
        raise AssertionError("the hook did not fire")
    assert sink.sent == 2
    assert sink.ended == sink.sent, "a page sent to the sink was still in flight"


async def test_a_page_committed_while_leaving_on_an_error_is_counted() -> None:
    """The next page's request fails while the page before it is still committing: that page
    commits, and the stream's applied count says so (it is what `agent status` and the demo's
    proof compare with the replica's ledger)."""

    class FailingSecondFetch(ListSource):
        async def fetch_page(
            self,
            stream: str,
            since_ms: int,
            offset: int,
            limit: int,
            *,
            summary: bool = False,
            after_id: str | None = None,
        ) -> FetchedPage:
            if self.calls >= 1:
                self.calls += 1
                raise SourceError("the platform is down")
            return await super().fetch_page(stream, since_ms, offset, limit, summary=summary)

    records = [rec(1_000 + i, f"r{i:03}") for i in range(25)]
    sink = PipelinedMemorySink()
    engine = SyncEngine(
        FailingSecondFetch(records, server_time_ms=100_000),
        sink,
        settings=EngineSettings(lookback_ms=0, page_size=10),
        metrics=AgentMetrics(CollectorRegistry()),
    )
    with pytest.raises(SourceError):
        await engine.run_cycle()
    assert len(sink.held) == 10, "the first page was committed"
    assert engine.status()[0].totals.applied == 10
