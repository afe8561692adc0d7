"""The event log: every `changes` row under a commit-ordered event id, followed by position.

A follower asks for "events after id X" and gets them in id order, together with the next
position to ask from. It can never miss an event, because it is only ever served events below
the log's *frontier*: an id below which no event can appear any more.

PostgreSQL (any number of hub processes on any number of hosts, one cluster). A change's id is
`xid * 2^20 + ordinal`: `xid` is the writing transaction's id (`pg_current_xact_id()`), the
ordinal numbers its changes (fewer than 2^20 per transaction). The frontier is
`xmin * 2^20`, with `xmin = pg_snapshot_xmin(pg_current_snapshot())`. Proof that the set of
events below the frontier is final:

1. Every transaction with an xid below `xmin` had ended (committed or aborted) when the snapshot
   was taken: that is the definition of a snapshot's xmin. Its committed rows are visible to
   this snapshot and to every later one; its aborted rows never will be.
2. A transaction that commits later was either running when the snapshot was taken (so its
   xid is at least `xmin`), or took its xid after (xids are handed out in increasing order from
   one counter per cluster, so its xid is at least the snapshot's xmax >= xmin).
3. Its events therefore have ids >= `xmin * 2^20`, the frontier. Nothing ever appears below it.
4. A later snapshot has an xmin >= this one (every xid below this xmin has ended; new xids are
   larger), so the frontier never moves back.

The frontier is read first, then the events below it (any later snapshot sees all of them), so
a page is complete; the next position is the page's last id, or `frontier - 1` when the page
was not full (a quiet account's position still moves, and never falls behind retention).
The xid is the top-level one even inside a savepoint (`pg_current_xact_id`). `xmin` is
cluster-wide: any transaction holding an xid stalls the frontier while it runs. The hub bounds
its own (`statement_timeout`, `idle_in_transaction_session_timeout`, the write deadline in
`Store`); other clients of the same cluster should not keep transactions open either. Ids stay
below 2^63 for xids below 2^43 (at 10,000 transactions/s, 27 years).

SQLite. Writers are serialized (`BEGIN IMMEDIATE`): a write transaction takes ids above every
id committed before it started (and above the pruned horizon), and every transaction that
commits later started later. The frontier is the largest id committed (or pruned) plus one.

Retention deletes a prefix of the log (events older than the retention, in id order, below the
frontier) and records its last id as `event_log.pruned_through`. A follower positioned below it
gets `PositionPruned`: events it has not seen are gone, it must resync (list everything) and
follow from the head. The check runs after the events are read, so a prune that commits in
between can only make the answer a (safe) 410, never a page with a hole.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable
from dataclasses import dataclass
from typing import Any, Protocol

import structlog
from sqlalchemy import and_, bindparam, delete, func, select, text, update
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ordersync.store.tables import changes, connections, event_log, orders, shipments, skus


class Store(Protocol):
    """What the log needs of `ordersync.store.store.Store` (which imports this module)."""

    reader: AsyncEngine
    writer: AsyncEngine
    clock: Callable[[], int]


log = structlog.get_logger("ordersync.hub")

ORDINAL_BITS = 20
MAX_EVENTS_PER_TRANSACTION = 1 << ORDINAL_BITS
DAY_MS = 86_400_000
PRUNE_BATCH = 5_000
# The `changes` kinds the polling event log serves (`EventLog.read`).
FEED_KINDS = ("order", "shipment")

# The next free id of this transaction: xid * 2^20, past any id it already took (a write
# method may run as one step of a larger transaction that records several changes).
_PG_NEXT = text(
    f"WITH base AS (SELECT pg_current_xact_id()::text::bigint << {ORDINAL_BITS} AS id) "
    "SELECT coalesce(max(changes.event_id) + 1, (SELECT id FROM base)) FROM changes, base "
    f"WHERE changes.event_id >= base.id AND changes.event_id < base.id + {1 << ORDINAL_BITS}"
)
_PG_FRONTIER = text(
    f"SELECT pg_snapshot_xmin(pg_current_snapshot())::text::bigint << {ORDINAL_BITS}"
)
_SQLITE_NEXT = text(
    "SELECT max(coalesce((SELECT max(event_id) FROM changes), 0), "
    "coalesce((SELECT pruned_through FROM event_log WHERE id = 1), 0)) + 1"
)


async def allocate_event_ids(conn: AsyncConnection, n: int) -> list[int]:
    """`n` event ids for the changes of the write transaction `conn` is in, after any this
    transaction already wrote (so it may be called more than once per transaction, as long as
    each call's rows are inserted before the next call)."""
    if n >= MAX_EVENTS_PER_TRANSACTION:
        raise ValueError(f"at most {MAX_EVENTS_PER_TRANSACTION - 1} changes per transaction")
    if conn.dialect.name == "postgresql":
        base = int(await conn.scalar(_PG_NEXT) or 0)
        if (base + n - 1) >> ORDINAL_BITS != base >> ORDINAL_BITS:
            raise ValueError(f"at most {MAX_EVENTS_PER_TRANSACTION - 1} changes per transaction")
    else:
        base = int(await conn.scalar(_SQLITE_NEXT) or 1)
    return [base + i for i in range(n)]


async def frontier(conn: AsyncConnection) -> int:
    """The exclusive upper bound of final event ids: no event below it can appear any more."""
    if conn.dialect.name == "postgresql":
        return int(await conn.scalar(_PG_FRONTIER) or 0)
    return int(await conn.scalar(_SQLITE_NEXT) or 1)


@dataclass(frozen=True)
class LogEvent:
    event_id: int
    kind: str  # "order" | "shipment" | "inventory" | "request"
    entity_id: str
    version: int
    event_type: str  # e.g. "order.created", "order.packed", "shipment.delivered"
    connection: str | None  # the originating connection's name; None: the hub itself
    created_at: int  # the version's updated_at (epoch ms)
    doc: str | None  # the entity's stored document at this version; None when superseded
    current_version: int | None  # the entity's version now (None: it no longer exists)

    @property
    def superseded(self) -> bool:
        return self.doc is None


@dataclass(frozen=True)
class EventPage:
    events: list[LogEvent]
    next_after: int  # where to continue: `after` of the next request
    head: int  # frontier - 1: every event up to it is final


class PositionPruned(Exception):
    """The follower's position is below the pruned horizon: events after it are gone."""

    def __init__(self, after: int, pruned_through: int, head: int) -> None:
        super().__init__(
            f"events after {after} have been pruned (retention keeps events after "
            f"{pruned_through}); resync: note head {head}, list every order and shipment, "
            f"then follow the event log from after={head}"
        )
        self.after = after
        self.pruned_through = pruned_through
        self.head = head


def _events_statement(kinds: tuple[str, ...] | None = FEED_KINDS) -> Any:
    c = changes.c
    joined = (
        changes.outerjoin(connections, connections.c.id == c.connection_id)
        .outerjoin(orders, and_(c.entity_kind == "order", orders.c.id == c.entity_id))
        .outerjoin(shipments, and_(c.entity_kind == "shipment", shipments.c.id == c.entity_id))
        .outerjoin(skus, and_(c.entity_kind == "inventory", skus.c.id == c.entity_id))
    )
    return (
        select(
            c.event_id,
            c.entity_kind,
            c.entity_id,
            c.version,
            c.event_type,
            connections.c.name,
            c.created_at,
            func.coalesce(orders.c.version, shipments.c.version, skus.c.version),
            func.coalesce(orders.c.doc, shipments.c.doc, skus.c.doc),
        )
        .select_from(joined)
        .where(
            c.account_id == bindparam("account_id"),
            # The polling feed serves entity versions only: request resolutions ("request"
            # rows, see `ordersync.store.requests`) are for webhooks (`kinds=None`).
            c.entity_kind.in_(kinds) if kinds is not None else c.entity_kind.is_not(None),
            c.event_id > bindparam("after"),
            c.event_id < bindparam("frontier"),
        )
        .order_by(c.event_id)
        .limit(bindparam("limit"))
    )


_EVENTS = _events_statement()
_ALL_EVENTS = _events_statement(None)
_PRUNED_THROUGH = select(event_log.c.pruned_through).where(event_log.c.id == 1)


class EventLog:
    """Reads and prunes the event log of a `Store`."""

    def __init__(self, store: Store, *, retention_ms: int = 30 * DAY_MS) -> None:
        self.store = store
        self.retention_ms = retention_ms

    async def read(
        self, account_id: int, after: int, limit: int, *, every_kind: bool = False
    ) -> EventPage:
        """Up to `limit` events of the account after `after`, in id order; `PositionPruned`
        when `after` is below the pruned horizon. Orders and shipments only, unless
        `every_kind` (request resolutions too: the webhook outbox)."""
        async with self.store.reader.connect() as conn:
            if conn.dialect.name == "postgresql":
                await conn.execution_options(isolation_level="AUTOCOMMIT")
            edge = await frontier(conn)
            rows = (
                await conn.execute(
                    _ALL_EVENTS if every_kind else _EVENTS,
                    {"account_id": account_id, "after": after, "frontier": edge, "limit": limit},
                )
            ).all()
            # After the events, never before: see the module docstring (on SQLite the three
            # reads share one read transaction, one snapshot).
            pruned_through = int(await conn.scalar(_PRUNED_THROUGH) or 0)
        head = edge - 1
        if after < pruned_through:
            raise PositionPruned(after, pruned_through, head)
        events = [
            LogEvent(
                int(r[0]),
                str(r[1]),
                str(r[2]),
                int(r[3]),
                str(r[4]),
                None if r[5] is None else str(r[5]),
                int(r[6]),
                str(r[8]) if r[7] is not None and int(r[7]) == int(r[3]) else None,
                None if r[7] is None else int(r[7]),
            )
            for r in rows
        ]
        next_after = events[-1].event_id if len(events) == limit else max(after, head)
        return EventPage(events, next_after, head)

    async def head(self) -> int:
        """The newest final position: following from it sees every later event."""
        async with self.store.reader.connect() as conn:
            return await frontier(conn) - 1

    async def prune(self, *, batch: int = PRUNE_BATCH) -> int:
        """Delete the events older than the retention, oldest id first, one short transaction
        per batch (a long one would hold the frontier back); how many were deleted. Several
        workers may run it at once: the state row's lock queues them."""
        cutoff = self.store.clock() - self.retention_ms
        deleted = 0
        while True:
            async with self.store.writer.begin() as conn:
                pruned_through = int(await conn.scalar(_PRUNED_THROUGH.with_for_update()) or 0)
                edge = await frontier(conn)
                rows = (
                    await conn.execute(
                        select(changes.c.event_id, changes.c.created_at)
                        .where(changes.c.event_id > pruned_through, changes.c.event_id < edge)
                        .order_by(changes.c.event_id)
                        .limit(batch)
                    )
                ).all()
                old = 0
                for row in rows:
                    if int(row[1]) >= cutoff:
                        break
                    old += 1
                if old == 0:
                    return deleted
                through = int(rows[old - 1][0])
                result = await conn.execute(
                    delete(changes).where(
                        changes.c.event_id > pruned_through, changes.c.event_id <= through
                    )
                )
                await conn.execute(
                    update(event_log).where(event_log.c.id == 1).values(pruned_through=through)
                )
                deleted += int(result.rowcount)
            if old < len(rows) or len(rows) < batch:
                return deleted


async def prune_forever(events: EventLog, interval_s: float) -> None:
    """The retention task of a hub worker: prune, sleep, again. Each batch commits on its own,
    so a crash loses at most the batch in flight; an error is logged and retried next time."""
    while True:
        try:
            deleted = await events.prune()
            if deleted:
                log.info("event_log_pruned", deleted=deleted)
        except asyncio.CancelledError:
            raise
        except Exception as exc:  # the next round retries; the worker keeps serving
            log.warning("event_log_prune_failed", error=repr(exc))
        await asyncio.sleep(interval_s)
