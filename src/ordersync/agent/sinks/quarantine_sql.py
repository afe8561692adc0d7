"""The quarantine (see `quarantine`) on the SQLAlchemy write path: the table at open, the page's
bookkeeping in its transaction, and the per-record fallback.

Screening before the transaction catches what is known not to fit (`quarantine.screen`).
Anything else the database refuses for one record (a DataError or IntegrityError other than
the applied ledger's key) fails the page's transaction; the page then runs again with one
SAVEPOINT per record, so only the records that fail go to the quarantine and the rest of the
page commits with its cursor.
"""

from __future__ import annotations

from collections.abc import Awaitable, Callable, Mapping, Sequence
from typing import Any

from sqlalchemy import text
from sqlalchemy.engine import Connection
from sqlalchemy.exc import DataError, IntegrityError, SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection

from ordersync.agent.records import Kind, Record
from ordersync.agent.sinks import quarantine
from ordersync.agent.sinks.quarantine import Execute, HeldBack, Quarantined

PER_RECORD_ERRORS = (DataError, IntegrityError)


def executor(conn: Connection) -> Execute:
    def execute(
        sql: str, params: Mapping[str, Any] | list[dict[str, Any]]
    ) -> list[tuple[Any, ...]]:
        result = conn.execute(text(sql), params)
        return [tuple(row) for row in result] if result.returns_rows else []

    return execute


def create_table(conn: Connection) -> None:
    conn.execute(text(quarantine.CREATE_TABLE))


def is_per_record(exc: SQLAlchemyError) -> bool:
    """A refusal that may be one record's fault (worth the per-record run)."""
    return isinstance(exc, PER_RECORD_ERRORS) and not quarantine.is_ledger_conflict(str(exc))


async def apply_each(
    conn: AsyncConnection,
    records: Sequence[Record],
    apply: Callable[[list[Record]], Awaitable[int]],
) -> tuple[int, list[HeldBack]]:
    """Apply records one by one, each in a SAVEPOINT: (applied, those the database refused)."""
    applied, refused = 0, []
    for record in records:
        try:
            async with conn.begin_nested():
                applied += await apply([record])
        except PER_RECORD_ERRORS as exc:
            if quarantine.is_ledger_conflict(str(exc)):
                raise
            reason = f"{record.kind} {record.id}: the replica refused it ({exc.orig})"
            refused.append(quarantine.held_back(record, reason))
    return applied, refused


async def settle(
    conn: AsyncConnection,
    source: str,
    stream: str,
    records: Sequence[Record],
    held: Sequence[HeldBack],
    stamp: int,
) -> tuple[int, int]:
    """`quarantine.settle` in the page's transaction."""
    page: dict[Kind, list[str]] = {}
    for record in records:
        page.setdefault(record.kind, []).append(record.id)
    return await conn.run_sync(
        lambda sync: quarantine.settle(executor(sync), source, stream, page, held, stamp)
    )


async def load(conn: AsyncConnection, source: str, stream: str | None = None) -> list[Quarantined]:
    return await conn.run_sync(lambda sync: quarantine.load(executor(sync), source, stream))


async def count(conn: AsyncConnection, source: str) -> int:
    return await conn.run_sync(lambda sync: quarantine.count(executor(sync), source))
