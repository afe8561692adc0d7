"""The sync loop (DESIGN.md, "The agent's sync algorithm"), one stream at a time.

Per stream the sink holds a cursor. A cycle asks for `updated_at >= cursor - lookback`, walks
the listing with `TiePager` (re-anchored per page, never an offset across the moving set),
applies each page through the sink's version-checked upsert, and commits the page with the
new cursor. The cursor is the largest `updated_at` drained, capped at the server's clock at the
start of the drain minus the lookback: a commit that becomes visible late, stamped up to
`lookback` in the past, is then still above the next cycle's lower bound.
"""

from __future__ import annotations

import asyncio
import contextlib
import contextvars
import inspect
from collections.abc import Awaitable, Callable, Iterable
from dataclasses import dataclass, field
from typing import Any

import structlog

from ordersync.agent.client import request_sent
from ordersync.agent.errors import AgentError, AuthError
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.paging import PageRequest, TiePager
from ordersync.agent.records import ApplyResult, Cursor, FetchedPage, Record
from ordersync.agent.sinks.base import Sink, settled
from ordersync.agent.sources import Source
from ordersync.domain.timestamps import now_ms

log = structlog.get_logger("ordersync.agent.engine")
# Tests crash the engine at "after_fetch" (page read, nothing applied) and "after_commit"
# (page and cursor committed, engine state not yet updated).
EngineHook = Callable[[str, str], Awaitable[None] | None]


def with_lags(states: Iterable[StreamStatus], now_ms: int) -> list[StreamStatus]:
    """The streams' states with `lag_ms` brought up to `now_ms`."""
    result = list(states)
    for state in result:
        if state.view_as_of_ms is not None:
            state.lag_ms = max(0, now_ms - state.view_as_of_ms)
    return result


async def run_every(
    source: str,
    cycle: Callable[..., Awaitable[object]],
    interval: float,
    stop_event: asyncio.Event,
) -> None:
    """Call `cycle(stop_event=...)` every `interval` seconds until `stop_event`. A refused
    token ends the loop with `AuthError`; any other failure is logged and retried next cycle
    from the stored cursors."""
    while not stop_event.is_set():
        try:
            await cycle(stop_event=stop_event)
        except AuthError:
            raise
        except AgentError as exc:
            log.warning("sync_cycle_failed", source=source, error=str(exc))
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop_event.wait(), interval)


@dataclass(frozen=True)
class Committing:
    """A page handed to the sink: the cursor it stores, and its outcome to await."""

    cursor: Cursor
    outcome: Awaitable[ApplyResult]


@dataclass(frozen=True)
class EngineSettings:
    lookback_ms: int = 120_000
    page_size: int = 100

    def __post_init__(self) -> None:
        if self.page_size < 2:
            raise ValueError("page_size must be at least 2")
        if self.lookback_ms < 0:
            raise ValueError("lookback_ms must not be negative")


@dataclass
class CycleCounts:
    fetched: int = 0
    applied: int = 0
    duplicates: int = 0
    pages: int = 0
    api_calls: int = 0

    def add(self, other: CycleCounts) -> None:
        for name in ("fetched", "applied", "duplicates", "pages", "api_calls"):
            setattr(self, name, getattr(self, name) + getattr(other, name))


@dataclass
class StreamStatus:
    """What `ordersync agent status` shows per stream."""

    source: str
    stream: str
    cursor: Cursor | None = None
    caught_up: bool = False
    view_as_of_ms: int | None = None  # server time at the start of the last complete drain
    lag_ms: int | None = None  # age of that complete view
    last_error: str | None = None
    last_success_at_ms: int | None = None
    stopped: bool = False  # a fatal error (refused token) stopped the source
    totals: CycleCounts = field(default_factory=CycleCounts)


class StreamEngine:
    """What both sync engines (this module's and `hubrise_sync.HubRiseSync`) share: per-stream
    status, the cycle loop and the test hooks. Subclasses set the attributes and `run_cycle`."""

    source: Any  # has .name
    clock: Callable[[], int]
    hook: EngineHook | None
    _status: dict[str, StreamStatus]
    run_cycle: Callable[..., Awaitable[CycleCounts]]

    def status(self) -> list[StreamStatus]:
        return with_lags(self._status.values(), self.clock())

    async def run(self, interval: float, stop_event: asyncio.Event) -> None:
        """Cycle every `interval` seconds until `stop_event` (see `run_every`)."""
        await run_every(self.source.name, self.run_cycle, interval, stop_event)

    async def _fire(self, step: str, stream: str) -> None:
        if self.hook is None:
            return
        outcome = self.hook(step, stream)
        if inspect.isawaitable(outcome):
            await outcome


class SyncEngine(StreamEngine):
    def __init__(
        self,
        source: Source,
        sink: Sink,
        *,
        settings: EngineSettings = EngineSettings(),
        metrics: AgentMetrics | None = None,
        clock: Callable[[], int] = now_ms,
        hook: EngineHook | None = None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.settings = settings
        self.metrics = metrics or AgentMetrics()
        self.clock = clock
        self.hook = hook
        self.page_size = min(settings.page_size, source.max_page_size)
        self._status = {s: StreamStatus(source.name, s) for s in source.streams}

    async def run_cycle(
        self, *, max_pages: int | None = None, stop_event: asyncio.Event | None = None
    ) -> CycleCounts:
        """Drain every stream until caught up (or `max_pages` pages each, or a stop request
        between pages). A failing stream does not hold the others back; the first failure is
        raised once all were tried."""
        total, failure = CycleCounts(), None
        for stream in self.source.streams:
            try:
                total.add(
                    await self.sync_stream(stream, max_pages=max_pages, stop_event=stop_event)
                )
            except AuthError:
                for state in self._status.values():
                    state.stopped = True
                raise
            except AgentError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return total

    async def sync_stream(
        self,
        stream: str,
        *,
        max_pages: int | None = None,
        stop_event: asyncio.Event | None = None,
    ) -> CycleCounts:
        state = self._status[stream]
        counts = CycleCounts()
        calls_before = self.source.api_calls
        try:
            await self._drain(stream, state, counts, max_pages, stop_event)
        except AgentError as exc:
            state.last_error = str(exc)
            self.metrics.cycle_failures.labels(self.source.name, stream).inc()
            raise
        finally:
            counts.api_calls = self.source.api_calls - calls_before
            state.totals.add(counts)
        return counts

    async def _drain(
        self,
        stream: str,
        state: StreamStatus,
        counts: CycleCounts,
        max_pages: int | None,
        stop_event: asyncio.Event | None,
    ) -> None:
        cursor = await self.sink.load_cursor(self.source.name, stream)
        state.cursor, state.caught_up = cursor, False
        start = 0 if cursor is None else cursor.updated_at_ms - self.settings.lookback_ms
        pager = TiePager(start, self.page_size)
        drain_start: int | None = None

        def may_fetch() -> bool:
            return not pager.done and not (
                (max_pages is not None and counts.pages >= max_pages)
                or (stop_event is not None and stop_event.is_set())
            )

        ahead = self._fetch_ahead(stream, pager) if may_fetch() else None
        # The page sent to the sink and not yet known committed: the engine sends the next page
        # before it awaits this one, so a pipelined sink writes while the engine reads on.
        committing: Committing | None = None
        try:
            while ahead is not None:
                request, fetching, _ = ahead
                page = await fetching
                pager.keyset = pager.keyset or page.keyset
                if drain_start is None:
                    drain_start = page.server_time_ms or self.clock()
                counts.pages += 1
                counts.fetched += len(page.records)
                fresh = pager.accept(request, page.records)
                await self._fire("after_fetch", stream)
                # Read ahead: the next request depends only on the pager, so it can travel
                # while this page is written. A crash or stop discards it unapplied.
                ahead = self._fetch_ahead(stream, pager) if may_fetch() else None
                if ahead is not None:
                    await _until_sent(*ahead[1:])
                if fresh:
                    new_cursor = self.next_cursor(cursor, fresh[-1], drain_start)
                    sent = await self._send_page(stream, fresh, new_cursor, cursor)
                    cursor = new_cursor
                    if committing is not None:
                        await self._committed(stream, state, counts, committing)
                    committing = Committing(new_cursor, sent)
                if stop_event is not None and stop_event.is_set():
                    break
            if committing is not None:
                last, committing = committing, None
                await self._committed(stream, state, counts, last)
        finally:
            if ahead is not None:
                await _discard(ahead[1])
            if committing is not None:  # leaving on an error: the page still ends, whole
                with contextlib.suppress(Exception):
                    await committing.outcome
        if pager.done:
            self._caught_up(stream, state, drain_start)

    def _fetch_ahead(
        self, stream: str, pager: TiePager
    ) -> tuple[PageRequest, asyncio.Task[FetchedPage], asyncio.Event]:
        request = pager.next_request()
        sent = asyncio.Event()
        context = contextvars.copy_context()
        context.run(request_sent.set, sent)
        fetching = asyncio.get_running_loop().create_task(
            self.source.fetch_page(
                stream, request.since_ms, request.offset, request.limit, after_id=request.after_id
            ),
            context=context,
        )
        return request, fetching, sent

    async def _send_page(
        self, stream: str, fresh: list[Record], new_cursor: Cursor, base: Cursor | None
    ) -> Awaitable[ApplyResult]:
        """Hand the page to the sink: pipelined when it can (`sinks.base.PipelinedSink`), else
        applied now."""
        submit = getattr(self.sink, "submit_page", None)
        if submit is not None:
            return await submit(self.source.name, stream, fresh, new_cursor, base)  # type: ignore[no-any-return]
        return settled(await self.sink.apply_page(self.source.name, stream, fresh, new_cursor))

    async def _committed(
        self, stream: str, state: StreamStatus, counts: CycleCounts, page: Committing
    ) -> None:
        """Wait for a page's commit, then count it and move the stream's visible cursor."""
        result = await page.outcome
        counts.applied += result.applied
        counts.duplicates += result.duplicates
        self.metrics.records_applied.labels(self.source.name, stream).inc(result.applied)
        self.metrics.duplicates_dropped.labels(self.source.name, stream).inc(result.duplicates)
        state.cursor = page.cursor
        await self._fire("after_commit", stream)

    def next_cursor(self, cursor: Cursor | None, last: Record, drain_start: int) -> Cursor:
        """The largest updated_at drained, never past (server time - lookback), never back."""
        ceiling = drain_start - self.settings.lookback_ms
        candidate = (
            Cursor(last.updated_at_ms, last.id)
            if last.updated_at_ms <= ceiling
            else Cursor(ceiling, "")
        )
        if cursor is not None and cursor.updated_at_ms >= candidate.updated_at_ms:
            return cursor
        return candidate

    def _caught_up(self, stream: str, state: StreamStatus, drain_start: int | None) -> None:
        now = self.clock()
        state.caught_up, state.last_error, state.last_success_at_ms = True, None, now
        state.view_as_of_ms = drain_start if drain_start is not None else now
        state.lag_ms = max(0, now - state.view_as_of_ms)
        self.metrics.freshness_lag.labels(self.source.name, stream).set(state.lag_ms / 1000)
        self.metrics.last_success.labels(self.source.name, stream).set(now / 1000)


# How long a page's write waits for the read-ahead request to leave. Sending takes microseconds;
# a request held back longer is paced by the quota budget or waiting out a retry's backoff, and
# the page already read must not wait for that.
READ_AHEAD_SEND_WAIT = 0.05


async def _until_sent(fetching: asyncio.Task[FetchedPage], sent: asyncio.Event) -> None:
    """Until the read-ahead request is on the wire, answered or failed, or briefly held back."""
    waiting = asyncio.ensure_future(sent.wait())
    await asyncio.wait(
        [waiting, fetching], timeout=READ_AHEAD_SEND_WAIT, return_when=asyncio.FIRST_COMPLETED
    )
    waiting.cancel()


async def _discard(task: asyncio.Task[FetchedPage]) -> None:
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not warn about it
