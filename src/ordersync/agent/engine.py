"""The sync engine (ARCHITECTURE.md, "The sync algorithm"): the one writer of a replica.

A source offers one `ChangeFeed` per stream (`agent.feeds`): the listing walk of MasonHub and
Tradecloud, HubRise's backfill and callback events. Per stream the sink holds a position; the
engine loads it, walks the feed from it, and hands each batch to the sink, which applies every
record *if newer* by (id, version) and stores the batch's position in the same transaction.
Only then does a batch's after-commit step run (acknowledging events) and the stream's status
move.

Batches without an after-commit step are pipelined: the engine sends batch k+1 to a sink that
can take it (`sinks.base.PipelinedSink`) before it awaits batch k's commit, and every batch
names the position it continues from, so none is applied past one that failed.
"""

from __future__ import annotations

import asyncio
import contextlib
import inspect
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from typing import Protocol, cast

import structlog

from ordersync.agent.errors import AgentError, AuthError, RequestAborted
from ordersync.agent.feeds import Batch, ChangeFeed
from ordersync.agent.feeds.listing import ListingFeed, ListingSettings
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.records import ApplyResult, Cursor
from ordersync.agent.sinks.base import Sink, settled
from ordersync.agent.sources import Source
from ordersync.domain.timestamps import now_ms

log = structlog.get_logger("ordersync.agent.engine")
# Tests crash the engine at "after_fetch" (batch read, nothing applied), "after_commit" (batch
# and position committed, engine state not yet updated) and "after_ack" (a batch's after-commit
# step done).
EngineHook = Callable[[str, str], Awaitable[None] | None]
# Kept under its old name: the listing walk's settings are the engine's settings.
EngineSettings = ListingSettings


class SourceInfo(Protocol):
    """What the engine needs of a source besides its feeds."""

    name: str

    @property
    def api_calls(self) -> int:
        """HTTP calls made so far, retries included."""
        ...


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
    wake: asyncio.Event | None = None,
) -> None:
    """Call `cycle(stop_event=...)` every `interval` seconds until `stop_event`, or sooner when
    `wake` is set (a webhook that names nothing to fetch). A refused token ends the loop with
    `AuthError`, a request dropped by the stop with `RequestAborted`; any other failure is
    logged and retried next cycle from the stored positions."""
    while not stop_event.is_set():
        if wake is not None:
            wake.clear()  # before the cycle: a wake during it means one more cycle
        try:
            await cycle(stop_event=stop_event)
        except (AuthError, RequestAborted):
            raise  # fatal for the source, or the clean stop of a request the stop dropped
        except AgentError as exc:
            log.warning("sync_cycle_failed", source=source, error=str(exc))
        await wait_first(stop_event, wake, interval)


async def wait_first(stop_event: asyncio.Event, wake: asyncio.Event | None, seconds: float) -> None:
    """Wait until `stop_event` or `wake` is set, at most `seconds`."""
    events = [stop_event] if wake is None else [stop_event, wake]
    waiting = [asyncio.ensure_future(event.wait()) for event in events]
    try:
        await asyncio.wait(waiting, timeout=seconds, return_when=asyncio.FIRST_COMPLETED)
    finally:
        for task in waiting:
            task.cancel()


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
    # The source's changes recognised as our own connection's (`agent push`): echoes.
    echoes: int = 0


@dataclass(frozen=True)
class Committing:
    """A batch handed to the sink, and its outcome to await."""

    batch: Batch
    outcome: Awaitable[ApplyResult]


def listing_feeds(
    source: Source, settings: EngineSettings, clock: Callable[[], int] = now_ms
) -> list[ChangeFeed]:
    """One listing walk per stream of `source`."""
    return [ListingFeed(source, stream, settings, clock=clock) for stream in source.streams]


class SyncEngine:
    """Syncs every feed of one source into one sink. Without `feeds`, the source's streams are
    walked as listings (`ListingFeed`) with `settings`."""

    def __init__(
        self,
        source: SourceInfo,
        sink: Sink,
        *,
        feeds: Sequence[ChangeFeed] | None = None,
        settings: EngineSettings = EngineSettings(),
        metrics: AgentMetrics | None = None,
        clock: Callable[[], int] = now_ms,
        hook: EngineHook | None = None,
    ) -> None:
        self.source = source
        self.sink = sink
        self.metrics = metrics or AgentMetrics()
        self.clock = clock
        self.hook = hook
        self.feeds: list[ChangeFeed] = (
            list(feeds)
            if feeds is not None
            else listing_feeds(cast(Source, source), settings, clock)
        )
        self._status = {f.stream: StreamStatus(source.name, f.stream) for f in self.feeds}

    @property
    def streams(self) -> list[str]:
        return [feed.stream for feed in self.feeds]

    def status(self) -> list[StreamStatus]:
        states = with_lags(self._status.values(), self.clock())
        for state in states:
            state.echoes = int(getattr(self.source, "echoes_recognised", 0))
        return states

    async def run(self, interval: float, stop_event: asyncio.Event) -> None:
        """Cycle every `interval` seconds until `stop_event` (see `run_every`)."""
        await run_every(self.source.name, self.run_cycle, interval, stop_event)

    async def run_cycle(
        self, *, max_pages: int | None = None, stop_event: asyncio.Event | None = None
    ) -> CycleCounts:
        """Drain every feed until caught up (or `max_pages` fetches each, or a stop request
        between fetches). A failing feed does not hold the others back; the first failure is
        raised once all were tried. A refused token stops the source at once."""
        total, failure = CycleCounts(), None
        for feed in self.feeds:
            if stop_event is not None and stop_event.is_set():
                break
            try:
                total.add(await self.sync_feed(feed, max_pages=max_pages, stop_event=stop_event))
            except AuthError:
                for state in self._status.values():
                    state.stopped = True
                raise
            except RequestAborted:
                raise  # stopping: the other feeds' requests are dropped too
            except AgentError as exc:
                failure = failure or exc
        if failure is not None:
            raise failure
        return total

    async def sync_stream(
        self, stream: str, *, max_pages: int | None = None, stop_event: asyncio.Event | None = None
    ) -> CycleCounts:
        feed = next(f for f in self.feeds if f.stream == stream)
        return await self.sync_feed(feed, max_pages=max_pages, stop_event=stop_event)

    async def sync_feed(
        self,
        feed: ChangeFeed,
        *,
        max_pages: int | None = None,
        stop_event: asyncio.Event | None = None,
    ) -> CycleCounts:
        # A feed run beside the cycle (the webhook inbox, agent/inbox.py) gets its row here.
        state = self._status.setdefault(feed.stream, StreamStatus(self.source.name, feed.stream))
        counts = CycleCounts()
        calls_before = self.source.api_calls
        try:
            await self._drain(feed, state, counts, max_pages, stop_event)
        except AgentError as exc:
            state.last_error = str(exc)
            self.metrics.cycle_failures.labels(self.source.name, feed.stream).inc()
            raise
        finally:
            counts.api_calls = self.source.api_calls - calls_before
            state.totals.add(counts)
        return counts

    async def _drain(
        self,
        feed: ChangeFeed,
        state: StreamStatus,
        counts: CycleCounts,
        max_pages: int | None,
        stop_event: asyncio.Event | None,
    ) -> None:
        stream = feed.stream
        position = await self.sink.load_cursor(self.source.name, stream)
        state.cursor, state.caught_up = position, False

        def may_fetch(fetches: int) -> bool:
            return not (
                (max_pages is not None and fetches >= max_pages)
                or (stop_event is not None and stop_event.is_set())
            )

        last: Batch | None = None
        # Batches sent to the sink and not yet known committed, oldest first: at most one
        # while the next is read, none past a batch with an after-commit step.
        pending: list[Committing] = []
        walk = feed.walk(position, may_fetch)
        try:
            async for batch in walk:
                last = batch
                counts.pages += 1
                counts.fetched += batch.fetched
                await self._fire("after_fetch", stream)
                if batch.records or batch.position != position:
                    pending.append(Committing(batch, await self._send(stream, batch, position)))
                    position = batch.position
                    while len(pending) > 1 or (pending and pending[0].batch.after_commit):
                        await self._committed(stream, state, counts, pending.pop(0))
                if stop_event is not None and stop_event.is_set():
                    break
            while pending:
                await self._committed(stream, state, counts, pending.pop(0))
        finally:
            await walk.aclose()  # type: ignore[attr-defined]
            for page in pending:  # leaving on an error: each batch sent still ends, whole
                with contextlib.suppress(Exception):
                    result = await page.outcome
                    # Committed: counted, or `applied` says less than the replica took.
                    counts.applied += result.applied
                    counts.duplicates += result.duplicates
                    self.metrics.records_applied.labels(self.source.name, stream).inc(
                        result.applied
                    )
                    self.metrics.duplicates_dropped.labels(self.source.name, stream).inc(
                        result.duplicates
                    )
        if last is not None and last.caught_up:
            self._caught_up(stream, state, last.view_as_of_ms)

    async def _send(self, stream: str, batch: Batch, base: Cursor | None) -> Awaitable[ApplyResult]:
        """Hand the batch to the sink: pipelined when it can (`sinks.base.PipelinedSink`),
        else applied now."""
        assert batch.position is not None, "a batch to commit has a position"
        submit = getattr(self.sink, "submit_page", None)
        if submit is not None:
            return await submit(self.source.name, stream, batch.records, batch.position, base)  # type: ignore[no-any-return]
        return settled(
            await self.sink.apply_page(self.source.name, stream, batch.records, batch.position)
        )

    async def _committed(
        self, stream: str, state: StreamStatus, counts: CycleCounts, page: Committing
    ) -> None:
        """Wait for a batch's commit, count it, move the stream's visible position, then run
        the batch's after-commit step."""
        result = await page.outcome
        counts.applied += result.applied
        counts.duplicates += result.duplicates
        self.metrics.records_applied.labels(self.source.name, stream).inc(result.applied)
        self.metrics.duplicates_dropped.labels(self.source.name, stream).inc(result.duplicates)
        state.cursor = page.batch.position
        await self._fire("after_commit", stream)
        if page.batch.after_commit is not None:
            await page.batch.after_commit()
            await self._fire("after_ack", stream)

    def _caught_up(self, stream: str, state: StreamStatus, view_as_of_ms: int | None) -> None:
        now = self.clock()
        state.caught_up, state.last_error, state.last_success_at_ms = True, None, now
        state.view_as_of_ms = view_as_of_ms if view_as_of_ms is not None else now
        state.lag_ms = max(0, now - state.view_as_of_ms)
        self.metrics.freshness_lag.labels(self.source.name, stream).set(state.lag_ms / 1000)
        self.metrics.last_success.labels(self.source.name, stream).set(now / 1000)

    async def _fire(self, step: str, stream: str) -> None:
        if self.hook is None:
            return
        outcome = self.hook(step, stream)
        if inspect.isawaitable(outcome):
            await outcome
