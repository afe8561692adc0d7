"""Cheap exact `total` for listings filtered by `updated_since`.

Counting the rows with `updated_at >= X` walks every one of them, and every page of a walk
would pay it (bench/README.md). Instead, each write moves one unit between time buckets at
four spans (second, minute, hour, day) in `update_counts`, in the write's own transaction. A
count is then the exact rows of X's own second, plus the rest of X's minute by seconds, plus the
rest of X's hour by minutes, plus the rest of X's day by hours, plus every later day: at most
59 + 59 + 23 counter rows and the later days per status, whatever the table's size, and an exact
count over at most one second of rows.

The count is one prebuilt statement per shape (`bucket_total_query`) with the bucket bounds as
bound parameters (`bucket_params`): nothing is built per request.
"""

from __future__ import annotations

import functools
from collections import Counter
from typing import Any

from sqlalchemy import and_, bindparam, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersync.store.tables import update_counts

SECOND, MINUTE, HOUR, DAY = 1_000, 60_000, 3_600_000, 86_400_000
SPANS = (SECOND, MINUTE, HOUR, DAY)
# Parameter names of each span's bounds in `bucket_total_query`.
_SPAN_NAMES = {SECOND: "second", MINUTE: "minute", HOUR: "hour", DAY: "day"}

CountKey = tuple[int, str, str, int, int]  # account, kind, status, span, bucket


class CountDeltas:
    """The bucket moves of one transaction, applied together at its end in key order.

    Key order matters on PostgreSQL: two transactions touching the same counter rows lock them
    in the same sequence, so they queue instead of deadlocking.
    """

    def __init__(self) -> None:
        self._deltas: Counter[CountKey] = Counter()

    def add(self, account_id: int, kind: str, status: str, updated_at: int, n: int) -> None:
        for span in SPANS:
            self._deltas[(account_id, kind, status, span, updated_at // span)] += n

    def move(
        self, account_id: int, kind: str, before: tuple[str, int], after: tuple[str, int]
    ) -> None:
        self.add(account_id, kind, before[0], before[1], -1)
        self.add(account_id, kind, after[0], after[1], +1)

    async def apply(self, conn: AsyncConnection) -> None:
        rows = [
            {"account_id": a, "entity_kind": k, "status": s, "span": sp, "bucket": b, "n": n}
            for (a, k, s, sp, b), n in sorted(self._deltas.items())
            if n != 0
        ]
        self._deltas.clear()
        if not rows:
            return
        insert = postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert
        statement = insert(update_counts)
        statement = statement.on_conflict_do_update(
            index_elements=["account_id", "entity_kind", "status", "span", "bucket"],
            set_={"n": update_counts.c.n + statement.excluded.n},
        )
        await conn.execute(statement, rows)


def exact_until(since: int) -> int:
    """The end of `since`'s second: rows in [since, exact_until) are counted one by one, the
    rest come from the buckets."""
    return (since // SECOND + 1) * SECOND


def bucket_params(since: int) -> dict[str, int]:
    """The bound values of `bucket_total_query` for `since`.

    For each span but the longest: the buckets after since's own, up to the end of the next
    span's bucket (`after_minute`, `stop_minute`: the minutes after since's minute, to the end
    of its hour). For the longest span (days): every bucket after since's.
    """
    params: dict[str, int] = {}
    for span, parent in zip(SPANS, (*SPANS[1:], None), strict=True):
        name = _SPAN_NAMES[span]
        params[f"after_{name}"] = since // span
        if parent is not None:
            params[f"stop_{name}"] = (since // parent + 1) * (parent // span)
    return params


@functools.cache
def bucket_total_query(kind: str, has_statuses: bool) -> Any:
    """The sum of the counter rows that together cover [exact_until(since), +infinity) exactly
    once, as a scalar subquery. Built once per shape; binds `account_id`, `statuses` (a list,
    when `has_statuses`) and the names of `bucket_params`."""
    c = update_counts.c
    spans = []
    for span, parent in zip(SPANS, (*SPANS[1:], None), strict=True):
        name = _SPAN_NAMES[span]
        bounds = [c.span == span, c.bucket > bindparam(f"after_{name}")]
        if parent is not None:
            bounds.append(c.bucket < bindparam(f"stop_{name}"))
        spans.append(and_(*bounds))
    where = [c.account_id == bindparam("account_id"), c.entity_kind == kind, or_(*spans)]
    if has_statuses:
        where.append(c.status.in_(bindparam("statuses", expanding=True)))
    return select(func.coalesce(func.sum(c.n), 0)).where(*where).scalar_subquery()
