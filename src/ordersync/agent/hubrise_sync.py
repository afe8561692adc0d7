"""The HubRise sync: backfill through the creation-time listing, then follow callback events.

HubRise has no "changed since" listing, so the updated_at engine does not apply. Instead:

1. Ensure the connection's passive callback exists *before* anything is read: from that moment
   the platform keeps an event for every change, so whatever is created or changed while the
   backfill walks (newest first) is caught by the events, never lost between the two.
2. Backfill: walk `GET /location/orders` page by page (`X-Cursor-Next`). Each page commits with
   the walk's position in the sink's checkpoint table (stream `orders-backfill`: the creation
   instant and id of the page's last order) in the same transaction. The opaque cursor itself is
   not stored (it may expire, and it can be longer than a checkpoint id); a restart resumes with
   `before` = that instant + 1 ms, re-reading at most that instant's orders (duplicates, dropped
   by version). The end of the walk is stored as position (0, "").
3. Events: list the pending events (oldest first), apply every `new_state` with its `version`
   through the same version-checked page apply, commit, and only then acknowledge each event
   (`DELETE`). A crash between the commit and the acks means the events are listed again: their
   states are then duplicates, dropped by version. Nothing is acknowledged that is not durable.

It offers what the runner and the demo use of `SyncEngine`: `run_cycle`, `run`, `status()`,
`source` (with `api_calls` and `streams`), `sink` and `metrics`.
"""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable

import structlog

from ordersync.agent.engine import (
    CycleCounts,
    EngineHook,
    StreamEngine,
    StreamStatus,
)
from ordersync.agent.errors import AgentError, AuthError
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.records import Cursor, Record
from ordersync.agent.sinks.base import Sink
from ordersync.agent.sources.hubrise import HubRiseSource
from ordersync.domain.timestamps import now_ms

log = structlog.get_logger("ordersync.agent.hubrise")
BACKFILL = "orders-backfill"
EVENTS = "events"
BACKFILL_DONE = Cursor(0, "")  # the walk reached the oldest order
# One phase of a cycle: (its status, counts, max_pages, stop) -> whether it caught up.
Phase = Callable[[StreamStatus, CycleCounts, int | None, asyncio.Event | None], Awaitable[bool]]


class HubRiseSync(StreamEngine):
    def __init__(
        self,
        source: HubRiseSource,
        sink: Sink,
        *,
        page_size: int = 100,
        metrics: AgentMetrics | None = None,
        clock: Callable[[], int] = now_ms,
        hook: EngineHook | None = None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.page_size = min(page_size, source.max_page_size)
        self.metrics = metrics or AgentMetrics()
        self.clock = clock
        self.hook = hook
        self.callback_ready = False
        self._status = {s: StreamStatus(source.name, s) for s in source.streams}

    async def run_cycle(
        self, *, max_pages: int | None = None, stop_event: asyncio.Event | None = None
    ) -> CycleCounts:
        """Callback first, then the rest of the backfill, then the pending events; `max_pages`
        bounds the pages of each phase."""
        total = CycleCounts()
        try:
            if not self.callback_ready:
                await self.source.ensure_callback()
                self.callback_ready = True
            if "orders" in self.source.subscribed:
                total.add(await self._phase(BACKFILL, self._backfill, max_pages, stop_event))
            if not (stop_event is not None and stop_event.is_set()):
                total.add(await self._phase(EVENTS, self._follow_events, max_pages, stop_event))
        except AuthError:
            for state in self._status.values():
                state.stopped = True
            raise
        return total

    async def _phase(
        self,
        stream: str,
        work: Phase,
        max_pages: int | None,
        stop_event: asyncio.Event | None,
    ) -> CycleCounts:
        state, counts = self._status[stream], CycleCounts()
        calls_before = self.source.api_calls
        try:
            caught_up = await work(state, counts, max_pages, stop_event)
        except AgentError as exc:
            state.last_error = str(exc)
            self.metrics.cycle_failures.labels(self.source.name, stream).inc()
            raise
        finally:
            counts.api_calls = self.source.api_calls - calls_before
            state.totals.add(counts)
        if caught_up:
            now = self.clock()
            state.caught_up, state.last_error, state.last_success_at_ms = True, None, now
            state.view_as_of_ms, state.lag_ms = now, 0
            self.metrics.freshness_lag.labels(self.source.name, stream).set(0)
            self.metrics.last_success.labels(self.source.name, stream).set(now / 1000)
        return counts

    async def _backfill(
        self,
        state: StreamStatus,
        counts: CycleCounts,
        max_pages: int | None,
        stop_event: asyncio.Event | None,
    ) -> bool:
        position = await self.sink.load_cursor(self.source.name, BACKFILL)
        state.cursor = position
        if position == BACKFILL_DONE:
            return True
        state.caught_up = False
        token: str | None = None
        while _may_go_on(counts, max_pages, stop_event):
            page = await self.source.list_orders(
                cursor=token,
                before_ms=None if position is None else position.updated_at_ms + 1,
                count=self.page_size,
            )
            counts.pages += 1
            counts.fetched += len(page.records)
            await self._fire("after_fetch", BACKFILL)
            token = page.next_cursor
            if token is None or not page.records:
                position = BACKFILL_DONE
            else:
                position = Cursor(page.created_at_ms[-1], page.records[-1].id)
            await self._apply(BACKFILL, page.records, position, counts)
            state.cursor = position
            await self._fire("after_commit", BACKFILL)
            if position == BACKFILL_DONE:
                return True
        return False

    async def _follow_events(
        self,
        state: StreamStatus,
        counts: CycleCounts,
        max_pages: int | None,
        stop_event: asyncio.Event | None,
    ) -> bool:
        state.caught_up = False
        while _may_go_on(counts, max_pages, stop_event):
            events = await self.source.pending_events()
            counts.pages += 1
            await self._fire("after_fetch", EVENTS)
            if not events:
                return True
            records = [e.record for e in events if e.record is not None]
            counts.fetched += len(records)
            last = events[-1]
            mark = Cursor(max(e.created_at_ms for e in events), last.id)
            await self._apply(EVENTS, records, mark, counts)
            state.cursor = mark
            await self._fire("after_commit", EVENTS)
            # Durable first, acknowledged second: a crash here only repeats these events.
            for event in events:
                await self.source.acknowledge(event.id)
            await self._fire("after_ack", EVENTS)
        return False

    async def _apply(
        self, stream: str, records: list[Record], cursor: Cursor, counts: CycleCounts
    ) -> None:
        result = await self.sink.apply_page(self.source.name, stream, records, cursor)
        counts.applied += result.applied
        counts.duplicates += result.duplicates
        self.metrics.records_applied.labels(self.source.name, stream).inc(result.applied)
        self.metrics.duplicates_dropped.labels(self.source.name, stream).inc(result.duplicates)


def _may_go_on(counts: CycleCounts, max_pages: int | None, stop: asyncio.Event | None) -> bool:
    return not (
        (max_pages is not None and counts.pages >= max_pages)
        or (stop is not None and stop.is_set())
    )
