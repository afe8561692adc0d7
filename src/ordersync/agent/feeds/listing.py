"""The listing walk: `updated_at >= cursor - lookback`, ascending, for MasonHub and Tradecloud.

The walk asks for `updated_at >= cursor - lookback` and pages with `paging.TiePager`
(re-anchored per page, never an offset across the moving set, or the hub's `after_id` keyset).
The position after a page is the largest `updated_at` drained, capped at the server's clock at
the start of the drain minus the lookback: a commit that becomes visible late, stamped up to
`lookback` in the past, is then still above the next cycle's lower bound.

The next page's request depends only on the pager, so it is sent before the current page is
yielded: it travels while the engine writes, and closing the walk discards it unapplied.
"""

from __future__ import annotations

import asyncio
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass

from ordersync.agent.feeds import Batch, MayFetch
from ordersync.agent.paging import PageRequest, TiePager
from ordersync.agent.records import Cursor, FetchedPage, Record
from ordersync.agent.sources import Source
from ordersync.domain.timestamps import now_ms


@dataclass(frozen=True)
class ListingSettings:
    lookback_ms: int = 120_000
    page_size: int = 100

    def __post_init__(self) -> None:
        if self.page_size < 2:
            raise ValueError("page_size must be at least 2")
        if self.lookback_ms < 0:
            raise ValueError("lookback_ms must not be negative")


class ListingFeed:
    """One stream of a `Source` (orders, shipments) walked by `updated_at`."""

    def __init__(
        self,
        source: Source,
        stream: str,
        settings: ListingSettings = ListingSettings(),
        *,
        clock: Callable[[], int] = now_ms,
    ) -> None:
        self.source = source
        self.stream = stream
        self.lookback_ms = settings.lookback_ms
        self.page_size = min(settings.page_size, source.max_page_size)
        self.clock = clock

    async def walk(self, position: Cursor | None, may_fetch: MayFetch) -> AsyncIterator[Batch]:
        start = 0 if position is None else position.updated_at_ms - self.lookback_ms
        pager = TiePager(start, self.page_size)
        drain_start: int | None = None
        fetches = 0
        ahead = self._fetch(pager) if may_fetch(fetches) else None
        try:
            while ahead is not None:
                request, fetching = ahead
                page = await fetching
                fetches += 1
                pager.keyset = pager.keyset or page.keyset
                if drain_start is None:
                    drain_start = page.server_time_ms or self.clock()
                fresh = pager.accept(request, page.records)
                ahead = self._fetch(pager) if not pager.done and may_fetch(fetches) else None
                if fresh:
                    position = self.next_cursor(position, fresh[-1], drain_start)
                yield Batch(fresh, position, len(page.records), pager.done, drain_start)
        finally:
            if ahead is not None:
                await _discard(ahead[1])

    def _fetch(self, pager: TiePager) -> tuple[PageRequest, asyncio.Task[FetchedPage]]:
        request = pager.next_request()
        fetching = asyncio.ensure_future(
            self.source.fetch_page(
                self.stream,
                request.since_ms,
                request.offset,
                request.limit,
                after_id=request.after_id,
            )
        )
        return request, fetching

    def next_cursor(self, cursor: Cursor | None, last: Record, drain_start: int) -> Cursor:
        """The largest updated_at drained, never past (server time - lookback), never back."""
        ceiling = drain_start - self.lookback_ms
        candidate = (
            Cursor(last.updated_at_ms, last.id)
            if last.updated_at_ms <= ceiling
            else Cursor(ceiling, "")
        )
        if cursor is not None and cursor.updated_at_ms >= candidate.updated_at_ms:
            return cursor
        return candidate


async def _discard(task: asyncio.Task[FetchedPage]) -> None:
    task.cancel()
    await asyncio.wait([task])
    if not task.cancelled():
        task.exception()  # retrieved, so asyncio does not warn about it
