"""HubRise's feeds: the creation-time backfill walked once, then the callback's events.

HubRise has no "changed since" listing of orders. Instead:

1. The connection's passive callback is made to exist before anything is read (`Subscription`):
   from that moment the platform keeps an event for every change, so whatever is created or
   changed while the backfill walks (newest first) is caught by the events, never lost between
   the two.
2. `BackfillFeed` walks `GET /location/orders` page by page (`X-Cursor-Next`). Its position (stream
   `orders-backfill`) is the creation instant and id of the page's last order. The opaque cursor
   itself is not stored (it may expire, and it can be longer than a checkpoint id); a restart
   resumes with `before` = that instant + 1 ms, re-reading at most that instant's orders
   (duplicates, dropped by version). The end of the walk is stored as position `BACKFILL_DONE`.
3. `EventFeed` lists the pending events (oldest first); their `new_state`s are applied through
   the same version-checked page apply, and only once committed is each event acknowledged
   (`DELETE`). A crash between the commit and the acks means the events are listed again: their
   states are then duplicates, dropped by version. Nothing is acknowledged that is not durable.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable

from ordersync.agent.feeds import Batch, ChangeFeed, MayFetch
from ordersync.agent.feeds.listing import ListingFeed, ListingSettings
from ordersync.agent.records import Cursor, may_replace
from ordersync.agent.sources.hubrise import INVENTORY, Event, HubRiseSource
from ordersync.domain.timestamps import now_ms

BACKFILL = "orders-backfill"
EVENTS = "events"
BACKFILL_DONE = Cursor(0, "")  # the walk reached the oldest order


class Subscription:
    """The connection's passive callback, created once per agent before either feed reads."""

    def __init__(self, source: HubRiseSource) -> None:
        self.source = source
        self.ready = False

    async def ensure(self) -> None:
        if not self.ready:
            await self.source.ensure_callback()
            self.ready = True


class BackfillFeed:
    stream = BACKFILL

    def __init__(self, source: HubRiseSource, subscription: Subscription, page_size: int) -> None:
        self.source = source
        self.subscription = subscription
        self.page_size = min(page_size, source.max_page_size)

    async def walk(self, position: Cursor | None, may_fetch: MayFetch) -> AsyncIterator[Batch]:
        await self.subscription.ensure()
        if position == BACKFILL_DONE:
            yield Batch([], position, 0, caught_up=True)
            return
        token: str | None = None
        fetches = 0
        while may_fetch(fetches):
            page = await self.source.list_orders(
                cursor=token,
                before_ms=None if position is None else position.updated_at_ms + 1,
                count=self.page_size,
            )
            fetches += 1
            token = page.next_cursor
            if token is None or not page.records:
                reached = BACKFILL_DONE
            else:
                reached = Cursor(page.created_at_ms[-1], page.records[-1].id)
            # A resumed walk re-reads the instant it stopped at: never back up the stream.
            if may_replace(self.stream, position, reached):
                position = reached
            done = reached == BACKFILL_DONE
            yield Batch(page.records, position, len(page.records), caught_up=done)
            if done:
                return


class EventFeed:
    stream = EVENTS

    def __init__(self, source: HubRiseSource, subscription: Subscription) -> None:
        self.source = source
        self.subscription = subscription

    async def walk(self, position: Cursor | None, may_fetch: MayFetch) -> AsyncIterator[Batch]:
        await self.subscription.ensure()
        fetches = 0
        while may_fetch(fetches):
            events = await self.source.pending_events()
            fetches += 1
            if not events:
                yield Batch([], position, 0, caught_up=True)
                return
            records = [e.record for e in events if e.record is not None]
            position = Cursor(max(e.created_at_ms for e in events), events[-1].id)
            yield Batch(records, position, len(records), after_commit=self._acknowledger(events))

    def _acknowledger(self, events: list[Event]) -> Callable[[], Awaitable[None]]:
        async def acknowledge() -> None:
            for event in events:
                await self.source.acknowledge(event.id)

        return acknowledge


def hubrise_feeds(
    source: HubRiseSource,
    page_size: int = 100,
    *,
    listing: ListingSettings | None = None,
    clock: Callable[[], int] = now_ms,
) -> list[ChangeFeed]:
    """The backfill (when orders are subscribed) and the event feed, sharing one callback;
    with inventory subscribed, its listing walk (as MasonHub's)."""
    subscription = Subscription(source)
    feeds: list[ChangeFeed] = []
    if "orders" in source.subscribed:
        feeds.append(BackfillFeed(source, subscription, page_size))
    feeds.append(EventFeed(source, subscription))
    if INVENTORY in source.subscribed:
        settings = listing or ListingSettings(page_size=max(2, min(page_size, 100)))
        feeds.append(ListingFeed(source, INVENTORY, settings, clock=clock))
    return feeds
