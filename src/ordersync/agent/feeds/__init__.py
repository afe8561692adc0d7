"""Change feeds: where the one sync engine (`agent.engine.SyncEngine`) gets its records.

A feed walks one stream of a platform from a stored position and yields `Batch`es: the records
one fetch brought, the position the stream reaches once they are committed, and an optional
step that may run only after that commit (acknowledging HubRise's callback events). The engine
is the only writer of the replica: it applies each batch version-checked with its position in
one sink transaction, so every feed gets the same guarantees.

- `listing.ListingFeed`: the `updated_at >= cursor - lookback` walk of MasonHub and Tradecloud
  (re-anchored pages or the hub's `after_id` keyset; it reads the next page ahead).
- `hubrise.BackfillFeed` and `hubrise.EventFeed`: HubRise's creation-time listing walked once,
  then its callback events, acknowledged after commit.
"""

from __future__ import annotations

from collections.abc import AsyncIterator, Awaitable, Callable
from dataclasses import dataclass, field
from typing import Protocol

from ordersync.agent.records import Cursor, Record

# Whether a feed may fetch once more, given how many fetches it made in this walk (the engine
# bounds a cycle's pages and stops between pages on request).
MayFetch = Callable[[int], bool]


@dataclass(frozen=True, slots=True)
class Batch:
    """What one fetch brought. `position` is where the stream stands once `records` are
    committed (equal to the stored one when there is nothing to commit). `caught_up` says the
    feed reached the platform's present with this fetch; `view_as_of_ms` is the server time
    that present is as of (None: now)."""

    records: list[Record]
    position: Cursor | None
    fetched: int
    caught_up: bool = False
    view_as_of_ms: int | None = None
    # Runs once the batch and its position are durable (never before: see EventFeed).
    after_commit: Callable[[], Awaitable[None]] | None = field(default=None, compare=False)


class ChangeFeed(Protocol):
    """One stream of one source, walked from a stored position."""

    @property
    def stream(self) -> str:
        """The stream's name, under which the sink keeps its position."""
        ...

    def walk(self, position: Cursor | None, may_fetch: MayFetch) -> AsyncIterator[Batch]:
        """Fetch while `may_fetch` allows and the platform has more, one `Batch` per fetch.
        Closing the iterator early discards anything read ahead, unapplied."""
        ...
