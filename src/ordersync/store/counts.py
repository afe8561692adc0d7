"""Cheap exact `total` for listings filtered by `updated_since`.

Counting the rows with `updated_at >= X` walks every one of them: 30-70 ms for a million rows on
SQLite, paid by every page of a walk. Instead, each write moves one unit between time buckets at
three spans (minute, hour, day) in `update_counts`, in the write's own transaction. A count is
then the exact rows of X's own minute, plus the rest of X's hour by minutes, plus the rest of
X's day by hours, plus every later day: a bounded number of rows whatever the table's size.
"""

from __future__ import annotations

from collections import Counter
from collections.abc import Iterable

from sqlalchemy import and_, func, or_, select
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncConnection
from sqlalchemy.sql.elements import ColumnElement

from ordersync.store.tables import update_counts

MINUTE, HOUR, DAY = 60_000, 3_600_000, 86_400_000
SPANS = (MINUTE, HOUR, DAY)

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


def buckets_after(since: int) -> ColumnElement[bool]:
    """The counter rows that together cover [end of since's minute, +infinity) exactly once."""
    minute, hour, day = since // MINUTE, since // HOUR, since // DAY
    c = update_counts.c
    return or_(
        and_(c.span == MINUTE, c.bucket > minute, c.bucket < (hour + 1) * 60),
        and_(c.span == HOUR, c.bucket > hour, c.bucket < (day + 1) * 24),
        and_(c.span == DAY, c.bucket > day),
    )


def bucket_total_query(
    account_id: int, kind: str, since: int, statuses: Iterable[str] | None
) -> ColumnElement[int]:
    c = update_counts.c
    where = [c.account_id == account_id, c.entity_kind == kind, buckets_after(since)]
    if statuses is not None:
        where.append(c.status.in_(list(statuses)))
    return select(func.coalesce(func.sum(c.n), 0)).where(*where).scalar_subquery()
