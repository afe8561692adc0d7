"""Idempotency keys: a write's answer kept with the write, in the write's own transaction.

A request that carries `Idempotency-Key` arms a `Pending` for its task (`armed`); the store
method that builds the client's answer inside its write transaction hands that answer to
`settle(conn, answer)` before the commit, which inserts the key's row (the request's
fingerprint and the answer's status, content type and body) on the same connection. So the
row commits exactly when the write does: a crash or a rollback (an answer that cannot be
built, a write past its deadline) leaves neither the write nor the key, and a committed write
always has its key.

Two requests with one key at once: the insert is `ON CONFLICT DO NOTHING`, so on PostgreSQL
the second waits for the first's transaction on the key's unique index; when the first
committed, the second's insert does nothing and `KeyTaken` rolls the second's whole
transaction back (its write included); the hub then replays the first's answer. On SQLite the
writers are serialized, with the same outcome. Never are two writes of one key committed.

This module knows nothing of HTTP: the hub gives `Pending.render`, which turns its answer
object into a `StoredAnswer`.
"""

from __future__ import annotations

import asyncio
import contextvars
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from dataclasses import dataclass, field
from typing import Any, TypeVar

import structlog
from sqlalchemy import delete, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ordersync.store.tables import idempotency_keys

log = structlog.get_logger("ordersync.hub")

T = TypeVar("T")
HOUR_MS = 3_600_000
DEFAULT_RETENTION_HOURS = 24.0


@dataclass(frozen=True)
class StoredAnswer:
    """What a replay sends back: the first answer's status, content type and exact body."""

    status: int
    content_type: str | None
    body: bytes


@dataclass(frozen=True)
class KeyRecord:
    request: str  # "POST /api/v1/orders": named in a conflict's message
    fingerprint: str
    answer: StoredAnswer


@dataclass
class Pending:
    """One keyed request in flight: what `settle` writes, and whether it did."""

    connection_id: int
    key: str
    request: str
    fingerprint: str
    render: Callable[[Any], StoredAnswer | None]  # None: an answer not to keep (a 5xx)
    clock: Callable[[], int]
    settled: bool = field(default=False)


class KeyTaken(Exception):
    """Another request committed this key first; this transaction must roll back."""


_PENDING: contextvars.ContextVar[Pending | None] = contextvars.ContextVar(
    "ordersync_idempotency", default=None
)


@contextmanager
def armed(pending: Pending) -> Iterator[Pending]:
    """Make `pending` the current request's key while the route runs."""
    token = _PENDING.set(pending)
    try:
        yield pending
    finally:
        _PENDING.reset(token)


async def settle(conn: AsyncConnection, answer: T) -> T:
    """Call with the answer inside the write's transaction, just before it commits: with a
    key armed, its row goes in on `conn` (or `KeyTaken` rolls the transaction back). Without
    one, a no-op. Every store method that builds an answer inside its transaction calls it."""
    pending = _PENDING.get()
    if pending is None or pending.settled:
        return answer
    stored = pending.render(answer)
    if stored is None:
        return answer
    insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    claimed = await conn.scalar(
        insert(idempotency_keys)
        .values(
            connection_id=pending.connection_id,
            key=pending.key,
            request=pending.request,
            fingerprint=pending.fingerprint,
            status=stored.status,
            content_type=stored.content_type,
            body=stored.body,
            created_at=pending.clock(),
        )
        .on_conflict_do_nothing(index_elements=["connection_id", "key"])
        .returning(idempotency_keys.c.created_at)
    )
    if claimed is None:
        raise KeyTaken(pending.key)
    pending.settled = True
    return answer


async def find(engine: AsyncEngine, connection_id: int, key: str) -> KeyRecord | None:
    """The committed record of `key` for this connection, if any."""
    k = idempotency_keys.c
    async with engine.connect() as conn:
        row = (
            await conn.execute(
                select(k.request, k.fingerprint, k.status, k.content_type, k.body).where(
                    k.connection_id == connection_id, k.key == key
                )
            )
        ).first()
    if row is None:
        return None
    answer = StoredAnswer(int(row[2]), None if row[3] is None else str(row[3]), bytes(row[4]))
    return KeyRecord(str(row[0]), str(row[1]), answer)


class KeyPruner:
    """Deletes the keys older than the retention (at least 24 hours by default). One DELETE
    per round, in its own transaction: a crash loses nothing but that round, and a key is
    only ever deleted whole (its row is all there is of it)."""

    def __init__(
        self, engine: AsyncEngine, clock: Callable[[], int], retention_hours: float
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.retention_ms = int(retention_hours * HOUR_MS)

    async def prune(self) -> int:
        cutoff = self.clock() - self.retention_ms
        async with self.engine.begin() as conn:
            result = await conn.execute(
                delete(idempotency_keys).where(idempotency_keys.c.created_at < cutoff)
            )
        return int(result.rowcount or 0)


async def prune_keys_forever(pruner: KeyPruner, interval_s: float) -> None:
    """A hub worker's key retention task: prune, sleep, again; an error is logged and the
    next round retries (the worker keeps serving)."""
    while True:
        try:
            deleted = await pruner.prune()
            if deleted:
                log.info("idempotency_keys_pruned", deleted=deleted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:
            log.warning("idempotency_prune_failed", error=repr(exc))
        await asyncio.sleep(interval_s)
