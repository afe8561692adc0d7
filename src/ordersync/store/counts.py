"""Exact `total` for listings filtered by `updated_since`, at a cost independent of history.

Counting the rows with `updated_at >= X` walks every one of them, and every page of a walk
would pay it (bench/README.md). Instead rows are counted in time buckets at four spans
(second, minute, hour, day) in `update_counts`. A count is then the exact rows of X's own
second, plus the rest of X's minute by seconds, plus the rest of X's hour by minutes, plus the
rest of X's day by hours, plus every later day: at most 59 + 59 + 23 bucket rows and the later
days per status, whatever the table's size.

Three rules keep that cost flat as write history grows and writers from blocking each other:

- **Writers never update a shared row.** A write appends its moves to `update_count_deltas`
  (+1 for the entity's new (status, updated_at), -1 for its old one) in its own transaction:
  insert-only, so the writers of one account no longer queue on its hot bucket rows (issue 12:
  35 % of backend samples waited on those row locks). A count adds the not yet compacted
  deltas to the buckets.
- **One compactor folds the deltas into the buckets** (`compact`, run by `CountCompactor` in
  every hub worker): one transaction deletes a batch of deltas with `RETURNING`, adds them to
  the buckets in key order and deletes buckets that fell to zero. A crash anywhere rolls all
  of it back, so a count sees each delta exactly once, as a delta or in a bucket. On
  PostgreSQL `pg_try_advisory_xact_lock` lets one compactor run at a time (the others skip the
  round; even without the lock a second `DELETE` would just find the rows gone); SQLite
  serializes writers anyway.
- **Second buckets are kept for an hour only** (`SECONDS_KEPT`). The compactor moves the
  horizon `update_count_state.seconds_from` and deletes older second buckets in the same
  transaction, and stops folding deltas into seconds below it. A count for an `updated_since`
  older than the horizon counts the rest of its minute from the rows instead (one minute of
  rows, by the `(account_id, updated_at, id)` index). The horizon is read in the count's own
  statement, so exactness never depends on how the hosts' clocks agree: a clock far ahead only
  makes counts take the minute path sooner.

The bucket key leads with `(span, bucket)`, then `status`, so a bucket range is one index range
with or without a status filter; zero buckets (everything moved on) are deleted.

The count is one prebuilt statement per shape (`bucket_total_query`) with the bucket bounds as
bound parameters (`bucket_params`): nothing is built per request.
"""

from __future__ import annotations

import asyncio
import contextlib
import functools
from collections import Counter
from collections.abc import Callable
from typing import Any

import structlog
from sqlalchemy import (
    and_,
    bindparam,
    case,
    delete,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ordersync.store.tables import (
    accounts,
    orders,
    shipments,
    update_count_deltas,
    update_count_state,
    update_counts,
)

log = structlog.get_logger("ordersync.counts")

SECOND, MINUTE, HOUR, DAY = 1_000, 60_000, 3_600_000, 86_400_000
SPANS = (SECOND, MINUTE, HOUR, DAY)
KINDS = ("order", "shipment")
# Second buckets older than this (by the compactor's clock) are pruned.
SECONDS_KEPT = HOUR
# Deltas folded per compaction transaction.
COMPACT_BATCH = 10_000
# pg_try_advisory_xact_lock key of the compactor ("osdcnt").
COMPACTOR_LOCK = 0x6F7364636E74
# Parameter names of each span's bounds in `bucket_total_query`.
_SPAN_NAMES = {SECOND: "second", MINUTE: "minute", HOUR: "hour", DAY: "day"}

DeltaKey = tuple[int, str, str, int]  # account, kind, status, updated_at
BucketKey = tuple[int, str, int, int, str]  # account, kind, span, bucket, status


class CountDeltas:
    """The count moves of one transaction, appended together at its end."""

    def __init__(self) -> None:
        self._deltas: Counter[DeltaKey] = Counter()

    def add(self, account_id: int, kind: str, status: str, updated_at: int, n: int) -> None:
        self._deltas[(account_id, kind, str(status), updated_at)] += n

    def move(
        self, account_id: int, kind: str, before: tuple[str, int], after: tuple[str, int]
    ) -> None:
        self.add(account_id, kind, before[0], before[1], -1)
        self.add(account_id, kind, after[0], after[1], +1)

    async def apply(self, conn: AsyncConnection) -> None:
        rows = [
            {"account_id": a, "entity_kind": k, "status": s, "updated_at": t, "n": n}
            for (a, k, s, t), n in sorted(self._deltas.items())
            if n != 0
        ]
        self._deltas.clear()
        if rows:
            await conn.execute(insert(update_count_deltas), rows)


# -- counting ---------------------------------------------------------------------------------


def exact_until(since: int) -> int:
    """The end of `since`'s second: rows in [since, exact_until) are counted one by one, the
    rest come from the buckets (or, before the second horizon, the rest of the minute too)."""
    return (since // SECOND + 1) * SECOND


def bucket_params(since: int) -> dict[str, int]:
    """The bound values of `bucket_total_query` for `since`.

    For each span but the longest: the buckets after since's own, up to the end of the next
    span's bucket (`after_minute`, `stop_minute`: the minutes after since's minute, to the end
    of its hour). For the longest span (days): every bucket after since's. `exact_until` and
    `minute_end` bound the part that seconds (or rows) cover.
    """
    params: dict[str, int] = {
        "exact_until": exact_until(since),
        "minute_end": (since // MINUTE + 1) * MINUTE,
    }
    for span, parent in zip(SPANS, (*SPANS[1:], None), strict=True):
        name = _SPAN_NAMES[span]
        params[f"after_{name}"] = since // span
        if parent is not None:
            params[f"stop_{name}"] = (since // parent + 1) * (parent // span)
    return params


def _span_range(span: int) -> Any:
    c = update_counts.c
    name = _SPAN_NAMES[span]
    bounds = [c.span == span, c.bucket > bindparam(f"after_{name}")]
    if span != DAY:
        bounds.append(c.bucket < bindparam(f"stop_{name}"))
    return and_(*bounds)


@functools.cache
def bucket_total_query(kind: str, has_statuses: bool) -> Any:
    """The number of rows in [exact_until(since), +infinity), as a scalar SQL expression. Built
    once per shape; binds `account_id`, `statuses` (a list, when `has_statuses`) and the names
    of `bucket_params`.

    [exact_until, minute_end) comes from second buckets and deltas when since's second is at or
    after the horizon, otherwise from the rows themselves; [minute_end, +infinity) from minute,
    hour and day buckets plus the deltas not yet compacted.
    """
    c, d = update_counts.c, update_count_deltas.c
    table = orders if kind == "order" else shipments

    def where(columns: Any, by_kind: bool = True) -> list[Any]:
        found = [columns.account_id == bindparam("account_id")]
        if by_kind:
            found.append(columns.entity_kind == kind)
        if has_statuses:
            found.append(columns.status.in_(bindparam("statuses", expanding=True)))
        return found

    def buckets(*spans: int) -> Any:
        ranges = [_span_range(span) for span in spans]
        return (
            select(func.coalesce(func.sum(c.n), 0))
            .where(*where(c), ranges[0] if len(ranges) == 1 else or_(*ranges))
            .scalar_subquery()
        )

    def deltas(*bounds: Any) -> Any:
        return select(func.coalesce(func.sum(d.n), 0)).where(*where(d), *bounds).scalar_subquery()

    rest_of_minute_from_seconds = buckets(SECOND) + deltas(
        d.updated_at >= bindparam("exact_until"), d.updated_at < bindparam("minute_end")
    )
    rest_of_minute_from_rows = (
        select(func.count())
        .select_from(table)
        .where(
            *where(table.c, by_kind=False),
            table.c.updated_at >= bindparam("exact_until"),
            table.c.updated_at < bindparam("minute_end"),
        )
        .scalar_subquery()
    )
    horizon = (
        select(update_count_state.c.seconds_from)
        .where(update_count_state.c.id == 1)
        .scalar_subquery()
    )
    # No state row (NULL) takes the rows' path: exact, only slower.
    rest_of_minute = case(
        (bindparam("after_second") >= horizon, rest_of_minute_from_seconds),
        else_=rest_of_minute_from_rows,
    )
    later = buckets(MINUTE, HOUR, DAY) + deltas(d.updated_at >= bindparam("minute_end"))
    return rest_of_minute + later


# -- compaction -------------------------------------------------------------------------------


async def compact(
    engine: AsyncEngine,
    now: int,
    *,
    batch: int = COMPACT_BATCH,
    seconds_kept: int = SECONDS_KEPT,
) -> int | None:
    """Fold up to `batch` deltas into the buckets and prune second buckets older than
    `now - seconds_kept`, in one transaction. How many deltas were folded; None when another
    compactor holds the lock (PostgreSQL)."""
    async with engine.begin() as conn:
        if conn.dialect.name == "postgresql":
            locked = await conn.scalar(select(func.pg_try_advisory_xact_lock(COMPACTOR_LOCK)))
            if not locked:
                return None
        horizon = await _advance_horizon(conn, now, seconds_kept)
        d = update_count_deltas.c
        taken = select(d.id).order_by(d.id).limit(batch).scalar_subquery()
        rows = (
            await conn.execute(
                delete(update_count_deltas)
                .where(d.id.in_(taken))
                .returning(d.account_id, d.entity_kind, d.status, d.updated_at, d.n)
            )
        ).all()
        await _fold(conn, rows, horizon)
    return len(rows)


async def _advance_horizon(conn: AsyncConnection, now: int, seconds_kept: int) -> int:
    """Move `seconds_from` forward (in whole minutes, never back) and delete the second
    buckets before it; the horizon in force, in seconds."""
    state = update_count_state.c
    current = await conn.scalar(select(state.seconds_from).where(state.id == 1))
    target = (now - seconds_kept) // MINUTE * (MINUTE // SECOND)
    if current is None:  # the migration inserts the row; recreate it if someone deleted it
        await conn.execute(insert(update_count_state).values(id=1, seconds_from=target))
    elif target > current:
        await conn.execute(
            update(update_count_state).where(state.id == 1).values(seconds_from=target)
        )
    else:
        return int(current)
    # The key leads with the account: prune each account's range (an index range each).
    account_ids = (await conn.scalars(select(accounts.c.id).order_by(accounts.c.id))).all()
    if account_ids:
        c = update_counts.c
        await conn.execute(
            delete(update_counts).where(
                c.account_id == bindparam("p_account"),
                c.entity_kind == bindparam("p_kind"),
                c.span == SECOND,
                c.bucket < target,
            ),
            [{"p_account": a, "p_kind": k} for a in account_ids for k in KINDS],
        )
    return target


async def _fold(conn: AsyncConnection, rows: Any, horizon: int) -> None:
    moves: Counter[BucketKey] = Counter()
    for account_id, kind, status, updated_at, n in rows:
        for span in SPANS:
            bucket = updated_at // span
            if span == SECOND and bucket < horizon:
                continue  # pruned: counts before the horizon never read second buckets
            moves[(account_id, kind, span, bucket, status)] += n
    keys = sorted(key for key, n in moves.items() if n != 0)
    if not keys:
        return
    insert_ = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
    statement = insert_(update_counts)
    statement = statement.on_conflict_do_update(
        index_elements=["account_id", "entity_kind", "span", "bucket", "status"],
        set_={"n": update_counts.c.n + statement.excluded.n},
    )
    # Key order: two compactors (were the lock ever bypassed) would queue, not deadlock.
    await conn.execute(
        statement,
        [
            {
                "account_id": a,
                "entity_kind": k,
                "span": sp,
                "bucket": b,
                "status": s,
                "n": moves[key],
            }
            for key in keys
            for a, k, sp, b, s in (key,)
        ],
    )
    c = update_counts.c
    await conn.execute(
        delete(update_counts).where(
            c.account_id == bindparam("z_account"),
            c.entity_kind == bindparam("z_kind"),
            c.span == bindparam("z_span"),
            c.bucket == bindparam("z_bucket"),
            c.status == bindparam("z_status"),
            c.n == 0,
        ),
        [
            {"z_account": a, "z_kind": k, "z_span": sp, "z_bucket": b, "z_status": s}
            for a, k, sp, b, s in keys
        ],
    )


class CountCompactor:
    """Runs `compact` every `interval` seconds until stopped: a background task of each hub
    worker. Several workers (and hosts) may run one each; only one folds at a time."""

    def __init__(
        self, engine: AsyncEngine, clock: Callable[[], int], *, interval: float = 1.0
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.interval = interval
        self._task: asyncio.Task[None] | None = None

    async def run_once(self) -> int:
        """Fold the whole backlog (batch after batch); how many deltas were folded."""
        folded = 0
        while True:
            n = await compact(self.engine, self.clock())
            if n is None:
                return folded
            folded += n
            if n < COMPACT_BATCH:
                return folded

    def start(self) -> None:
        self._task = asyncio.create_task(self._run(), name="counts-compactor")

    async def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await self._task
            self._task = None

    async def _run(self) -> None:
        while True:
            try:
                await self.run_once()
            except Exception as exc:  # the next round retries; totals stay exact meanwhile
                log.warning("counts compaction failed", error=repr(exc))
            await asyncio.sleep(self.interval)
