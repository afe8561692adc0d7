"""Request counters for the hub's quotas: one count per (connection, quota window, window start).

`take` is all or nothing: it adds this request to every window it is given, unless one of them
would go over its limit, in which case no window is charged at all. A refused request therefore
never eats into the quota of another window, and a client that backs off is not punished twice.

Two implementations: `MemoryRateCounters` (exact within one process) and `SqlRateCounters`
(exact across every process sharing the database; on PostgreSQL that is several hub workers).
"""

from __future__ import annotations

import threading
from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any, Protocol

from sqlalchemy import delete
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ordersync.store.tables import rate_counters

# Expired windows are deleted at most this often (seconds of the limiter's clock).
PURGE_INTERVAL = 60


@dataclass(frozen=True)
class Slot:
    """One window of one quota, at the moment of a request."""

    bucket: str  # names the quota window, e.g. "/v1/@all:hour"
    start: int  # epoch seconds at which this window began
    seconds: int
    limit: int


class RateCounters(Protocol):
    async def take(self, connection_key: str, slots: Sequence[Slot]) -> list[int]:
        """Each slot's count including this request, in the order given. If any count is over
        its slot's limit, nothing was recorded."""
        ...


def _within(counts: Sequence[int], slots: Sequence[Slot]) -> bool:
    return all(n <= slot.limit for n, slot in zip(counts, slots, strict=True))


class MemoryRateCounters:
    """Exact for one process: the read-check-write below never awaits, so no other request of
    the event loop can run in between; the lock covers callers on other threads."""

    def __init__(self, *, longest_window: int = 86_400) -> None:
        self._counts: dict[tuple[str, str], tuple[int, int]] = {}  # -> (window start, n)
        self._lock = threading.Lock()
        self.longest_window = longest_window
        self._purged_at = 0

    async def take(self, connection_key: str, slots: Sequence[Slot]) -> list[int]:
        with self._lock:
            counts = [self._current(connection_key, slot) + 1 for slot in slots]
            if _within(counts, slots):
                for slot, n in zip(slots, counts, strict=True):
                    self._counts[(connection_key, slot.bucket)] = (slot.start, n)
            self._purge(max((slot.start for slot in slots), default=0))
            return counts

    def _current(self, connection_key: str, slot: Slot) -> int:
        start, n = self._counts.get((connection_key, slot.bucket), (slot.start, 0))
        return n if start == slot.start else 0

    def _purge(self, now: int) -> None:
        # Each key holds only its latest window, so this only matters for keys seen once
        # (say, a stream of made-up tokens): drop the ones whose window is long over.
        if now - self._purged_at < PURGE_INTERVAL:
            return
        self._purged_at = now
        cutoff = now - self.longest_window
        stale = [key for key, (start, _) in self._counts.items() if start < cutoff]
        for key in stale:
            del self._counts[key]


class SqlRateCounters:
    """Counters in the `rate_counters` table, shared by every process on the database.

    All windows are incremented by one `INSERT ... ON CONFLICT DO UPDATE SET n = n + 1
    RETURNING n` statement inside a transaction that commits only if every count is within its
    limit, and rolls back otherwise. The statement locks the counter rows until then, so
    concurrent requests of one connection queue on them and each sees the others' committed
    counts: no two requests can both take the last unit of a window.
    """

    def __init__(self, engine: AsyncEngine, *, longest_window: int = 86_400) -> None:
        self.engine = engine
        self.longest_window = longest_window
        self._purged_at = 0

    async def take(self, connection_key: str, slots: Sequence[Slot]) -> list[int]:
        # A fixed lock order (by bucket) keeps two requests from deadlocking on each other.
        ordered = sorted(slots, key=lambda slot: slot.bucket)
        async with self.engine.connect() as conn:
            transaction = await conn.begin()
            by_bucket = await self._increment(conn, connection_key, ordered)
            counts = [by_bucket[slot.bucket] for slot in slots]
            if _within(counts, slots):
                await transaction.commit()
            else:
                await transaction.rollback()
        await self._purge(max((slot.start for slot in slots), default=0))
        return counts

    async def _increment(
        self, conn: AsyncConnection, connection_key: str, slots: Sequence[Slot]
    ) -> dict[str, int]:
        insert: Any = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        rows = [
            {
                "connection_key": connection_key,
                "bucket_key": s.bucket,
                "window_start": s.start,
                "n": 1,
            }
            for s in slots
        ]
        statement = insert(rate_counters).values(rows)
        statement = statement.on_conflict_do_update(
            index_elements=["connection_key", "bucket_key", "window_start"],
            set_={"n": rate_counters.c.n + 1},
        ).returning(rate_counters.c.bucket_key, rate_counters.c.n)
        result = await conn.execute(statement)
        return {bucket: int(n) for bucket, n in result.all()}

    async def _purge(self, now: int) -> None:
        """Delete windows that ended long ago, at most once per PURGE_INTERVAL per process."""
        if now - self._purged_at < PURGE_INTERVAL:
            return
        self._purged_at = now
        cutoff = now - self.longest_window
        async with self.engine.begin() as conn:
            await conn.execute(delete(rate_counters).where(rate_counters.c.window_start < cutoff))
