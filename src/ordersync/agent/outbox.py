"""The push outbox: what the ERP asked the agent to write to a platform, and how far it got.

One row per pushed line (`push.py`), in the replica's database beside the replica tables
(created like them, on first use), unique per (source, idempotency key). A row moves:

    pending  --answer-->  resolved                  (a create, a HubRise PATCH: the answer is final)
             --answer-->  accepted --resolution-->  resolved | failed   (MasonHub update/cancel)
             --refusal->  failed

A row is committed `pending` before its request is sent with the row's `Idempotency-Key`, and
each answer is committed before the next step: a crash between sending and recording leaves the
row `pending`, and sending it again with the same key is answered by the platform with its
first answer (replayed), never a second write. `accepted` rows keep the platform's request id
and are polled until resolved. The answered (order id, version) is kept too: the echo of the
change when the sync reads it back (README, "Pushing orders").
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    func,
    inspect,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersync.agent.errors import replica_errors
from ordersync.domain.timestamps import now_ms

PENDING, ACCEPTED, RESOLVED, FAILED = "pending", "accepted", "resolved", "failed"
STATES = (PENDING, ACCEPTED, RESOLVED, FAILED)
FINAL = frozenset({RESOLVED, FAILED})

_SEQ = BigInteger().with_variant(Integer, "sqlite")
metadata = MetaData()
push_outbox = Table(
    "push_outbox",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("source", String(50), nullable=False),
    Column("key", String(255), nullable=False),  # the Idempotency-Key sent with the request
    Column("op", String(10), nullable=False),  # create | update | cancel
    Column("ref", String(200), nullable=False),  # the order as the ERP names it
    Column("line", Text, nullable=False),  # the pushed line, JSON
    Column("state", String(10), nullable=False),
    Column("request_id", String(100)),  # an asynchronous request's id (MasonHub)
    Column("order_id", String(64)),  # the platform's order id, once known
    Column("version", Integer),  # the order's version the answer named (echo)
    Column("reason", Text),  # why it failed
    Column("attempts", Integer, nullable=False),  # requests sent for it (resends replay)
    Column("created_at_ms", BigInteger, nullable=False),
    Column("updated_at_ms", BigInteger, nullable=False),
    UniqueConstraint("source", "key", name="uq_push_outbox_key"),
)


@dataclass(frozen=True)
class OutboxRow:
    seq: int
    source: str
    key: str
    op: str
    ref: str
    line: str
    state: str
    request_id: str | None
    order_id: str | None
    version: int | None
    reason: str | None
    attempts: int


@dataclass(frozen=True)
class NewRow:
    key: str
    op: str
    ref: str
    line: str  # JSON


class Outbox:
    """The `push_outbox` table of one replica (its SQLAlchemy engine)."""

    def __init__(self, engine: AsyncEngine, *, clock: Callable[[], int] = now_ms) -> None:
        self.engine = engine
        self.clock = clock

    @classmethod
    async def open(cls, engine: AsyncEngine, **kwargs: Any) -> Outbox:
        outbox = cls(engine, **kwargs)
        with replica_errors("cannot create the push outbox"):
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        return outbox

    async def record(self, source: str, rows: Sequence[NewRow]) -> list[OutboxRow]:
        """Insert the rows not there yet (`pending`), in one transaction; every row of `rows`
        as it now stands, in the given order (a key seen before keeps its state)."""
        c = push_outbox.c
        stamp = self.clock()
        dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
        with replica_errors(f"cannot record the push of {source} in the outbox"):
            async with self.engine.begin() as conn:
                if rows:
                    await conn.execute(
                        dialect.insert(push_outbox).on_conflict_do_nothing(
                            index_elements=[c.source, c.key]
                        ),
                        [
                            {
                                "source": source,
                                "key": r.key,
                                "op": r.op,
                                "ref": r.ref,
                                "line": r.line,
                                "state": PENDING,
                                "attempts": 0,
                                "created_at_ms": stamp,
                                "updated_at_ms": stamp,
                            }
                            for r in rows
                        ],
                    )
        return await self.rows(source, [r.key for r in rows])

    async def rows(self, source: str, keys: Sequence[str]) -> list[OutboxRow]:
        """The rows of these keys, in the order of `keys`."""
        c = push_outbox.c
        found: dict[str, OutboxRow] = {}
        with replica_errors(f"cannot read the push outbox of {source}"):
            async with self.engine.connect() as conn:
                for start in range(0, len(keys), 500):
                    chunk = list(keys[start : start + 500])
                    result = await conn.execute(
                        select(push_outbox).where(c.source == source, c.key.in_(chunk))
                    )
                    for row in result:
                        found[str(row.key)] = _row(row)
        return [found[k] for k in keys if k in found]

    async def sent(self, row: OutboxRow) -> None:
        """One more request is going out for this row (counted before it is sent)."""
        await self._update(row, attempts=push_outbox.c.attempts + 1)

    async def answered(
        self,
        row: OutboxRow,
        state: str,
        *,
        request_id: str | None = None,
        order_id: str | None = None,
        version: int | None = None,
        reason: str | None = None,
    ) -> None:
        """Record an answer or a resolution. A row already final stays as it is (a second
        copy of the push, or a replayed answer, recorded it first)."""
        values: dict[str, Any] = {"state": state}
        for name, value in (
            ("request_id", request_id),
            ("order_id", order_id),
            ("version", version),
            ("reason", reason),
        ):
            if value is not None:
                values[name] = value
        await self._update(row, only_open=True, **values)

    async def resolve_request(
        self, source: str, request_id: str, state: str, reason: str | None = None
    ) -> int:
        """A resolution that came by callback (the agent's webhook inbox): the accepted rows
        of that request take it. How many did (0: not ours, or recorded already)."""
        c = push_outbox.c
        values: dict[str, Any] = {"state": state, "updated_at_ms": self.clock()}
        if reason is not None:
            values["reason"] = reason
        with replica_errors(f"cannot update the push outbox of {source}"):
            async with self.engine.begin() as conn:
                result = await conn.execute(
                    update(push_outbox)
                    .where(c.source == source, c.request_id == request_id, c.state == ACCEPTED)
                    .values(**values)
                )
                return int(result.rowcount or 0)

    async def _update(self, row: OutboxRow, *, only_open: bool = False, **values: Any) -> None:
        c = push_outbox.c
        statement = update(push_outbox).where(c.seq == row.seq)
        if only_open:
            statement = statement.where(c.state.not_in(FINAL))
        with replica_errors(f"cannot update the push outbox of {row.source}"):
            async with self.engine.begin() as conn:
                await conn.execute(statement.values(updated_at_ms=self.clock(), **values))

    async def counts(self, source: str) -> dict[str, int]:
        """Rows per state of one source (for `agent status`)."""
        c = push_outbox.c
        with replica_errors(f"cannot count the push outbox of {source}"):
            async with self.engine.connect() as conn:
                result = await conn.execute(
                    select(c.state, func.count()).where(c.source == source).group_by(c.state)
                )
                return {str(state): int(n) for state, n in result}

    async def answered_versions(self, source: str) -> set[tuple[str, int]]:
        """(order id, version) of every change the platform answered to a push of `source`."""
        c = push_outbox.c
        with replica_errors(f"cannot read the push outbox of {source}"):
            async with self.engine.connect() as conn:
                result = await conn.execute(
                    select(c.order_id, c.version).where(
                        c.source == source, c.order_id.is_not(None), c.version.is_not(None)
                    )
                )
                return {(str(i), int(v)) for i, v in result}


def _row(row: Any) -> OutboxRow:
    return OutboxRow(
        int(row.seq),
        str(row.source),
        str(row.key),
        str(row.op),
        str(row.ref),
        str(row.line),
        str(row.state),
        row.request_id,
        row.order_id,
        None if row.version is None else int(row.version),
        row.reason,
        int(row.attempts),
    )


async def stored_counts(url: str) -> dict[str, dict[str, int]]:
    """source -> rows per state of the push outbox of the SQL replica at `url`, creating
    nothing (`agent status`); empty when there is no outbox (nothing was ever pushed)."""
    from ordersync.store.engine import create_engines, parse_database_url

    if not url.partition("://")[0].split("+")[0].lower().startswith(("sqlite", "postgres")):
        return {}
    parsed = parse_database_url(url)
    if parsed.backend == "sqlite" and not _file_exists(parsed.sync_url.removeprefix("sqlite:///")):
        return {}  # connecting would create the file
    reader, writer = create_engines(parsed, pool_size=1)
    c = push_outbox.c
    counts: dict[str, dict[str, int]] = {}
    try:
        async with reader.connect() as conn:
            has = await conn.run_sync(lambda sync: inspect(sync).has_table(push_outbox.name))
            if has:
                rows = await conn.execute(
                    select(c.source, c.state, func.count()).group_by(c.source, c.state)
                )
                for source, state, n in rows:
                    counts.setdefault(str(source), {})[str(state)] = int(n)
    except (SQLAlchemyError, OSError):
        return {}  # the figures are extras of `agent status`; the positions said the rest
    finally:
        await reader.dispose()
        if writer is not reader:
            await writer.dispose()
    return counts


def _file_exists(path: str) -> bool:
    return Path(path).exists()
