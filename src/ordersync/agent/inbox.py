"""The webhook inbox: events received (`webhooks.py`) and not yet applied, in the replica.

Receiving and applying are split so that a delivery is answered at once and survives a crash:
the receiver inserts one row per event id (`webhook_inbox`, unique per source and id: a replay
is not stored twice) and wakes the source's `InboxFeed`. The feed is one more stream of the
source's `SyncEngine`, named `webhooks`: it reads the rows past its position, fetches each
entity they name from the platform (webhooks are hints; the platform's current state is what
gets applied) and hands them to the sink's version-checked apply as a batch whose position is
the last row's. That position is the inbox's "done" mark, committed in the apply's transaction:
a crash before that commit leaves the rows pending, applied again after the restart, where the
apply finds those versions held (duplicates, counted, never applied twice).

Rows are stamped `received_at_ms` (never decreasing, under one lock with the insert, so that
`seq` order is commit order too: the feed never skips a row that commits late). The position
is `Cursor(received_at_ms, seq)`: its time is what the stream's lag is read from; when nothing
is pending it moves to now, "drained as of". Done rows are kept `retention_ms` (a day, far
beyond the timestamp tolerance) so a replayed id is recognised, then pruned.

Only SQL replicas have an inbox: a JSONL file or an HTTP ERP has no transaction to share with
it, so configuring webhooks there is refused (`config.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import quote

import orjson
import structlog
from sqlalchemy import (
    BigInteger,
    Column,
    Integer,
    MetaData,
    String,
    Table,
    Text,
    UniqueConstraint,
    delete,
    func,
    select,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.ext.asyncio import AsyncEngine

from ordersync.agent.client import ApiClient
from ordersync.agent.engine import SyncEngine, wait_first
from ordersync.agent.errors import (
    AgentError,
    AuthError,
    RequestAborted,
    RequestRejected,
    SinkError,
    replica_errors,
)
from ordersync.agent.feeds import Batch, MayFetch
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.outbox import FAILED, RESOLVED, Outbox
from ordersync.agent.records import Cursor, Record
from ordersync.agent.sources.hubrise import HubRiseSource
from ordersync.agent.sources.masonhub import MasonHubSource, parse_record
from ordersync.agent.sources.tradecloud import TradecloudSource
from ordersync.domain.timestamps import now_ms

log = structlog.get_logger("ordersync.agent.inbox")

STREAM = "webhooks"  # the inbox feed's stream: its position is the inbox's done mark
RETENTION_MS = 24 * 3600 * 1000
BATCH = 50  # rows per batch: their entities are fetched concurrently
# A drained inbox moves its position's time to now ("drained as of") only when the time is
# older than this, and done rows are pruned at most this often: each is a write transaction
# on the replica, where the receiver's inserts wait for the write lock.
QUIET_MS = 1000
PRUNE_EVERY_MS = 60_000
Entity = tuple[str, str]  # (kind, id)
RESOLUTION_MESSAGES = ("orderUpdateResolution", "orderCancelResolution")

_SEQ = BigInteger().with_variant(Integer, "sqlite")
metadata = MetaData()
webhook_inbox = Table(
    "webhook_inbox",
    metadata,
    Column("seq", _SEQ, primary_key=True, autoincrement=True),
    Column("source", String(50), nullable=False),
    Column("event_id", String(200), nullable=False),
    Column("received_at_ms", BigInteger, nullable=False),
    Column("entities", Text, nullable=False),  # JSON [[kind, id], ...]
    Column("body", Text, nullable=False),
    UniqueConstraint("source", "event_id", name="uq_webhook_inbox_event"),
    sqlite_autoincrement=True,  # a pruned last row's seq is never handed out again
)


@dataclass(frozen=True)
class InboxRow:
    seq: int
    event_id: str
    received_at_ms: int
    entities: list[Entity]
    body: bytes

    @property
    def position(self) -> Cursor:
        return Cursor(self.received_at_ms, _seq_id(self.seq))


def _seq_id(seq: int) -> str:
    return f"{seq:019d}"  # zero-padded: positions compare (time, id) as strings


def seq_of(position: Cursor | None) -> int:
    """The last inbox row a position covers (0: none)."""
    return int(position.last_id) if position is not None and position.last_id.isdigit() else 0


class Inbox:
    """The `webhook_inbox` table of one replica (the SQL sink's engine)."""

    def __init__(
        self,
        engine: AsyncEngine,
        *,
        clock: Callable[[], int] = now_ms,
        retention_ms: int = RETENTION_MS,
    ) -> None:
        self.engine = engine
        self.clock = clock
        self.retention_ms = retention_ms
        self._lock = asyncio.Lock()
        self._last_stamp: int | None = None

    @classmethod
    async def open(cls, engine: AsyncEngine, **kwargs: Any) -> Inbox:
        inbox = cls(engine, **kwargs)
        with replica_errors("cannot create the webhook inbox"):
            async with engine.begin() as conn:
                await conn.run_sync(metadata.create_all)
        return inbox

    async def store(
        self, source: str, event_id: str, entities: Sequence[Entity], body: bytes
    ) -> bool:
        """Insert the event; False if the source already has that id (a replay)."""
        c = webhook_inbox.c
        async with self._lock:
            with replica_errors(f"cannot store a webhook of {source} in the inbox"):
                async with self.engine.begin() as conn:
                    if self._last_stamp is None:
                        stamped = await conn.execute(select(func.max(c.received_at_ms)))
                        self._last_stamp = int(stamped.scalar() or 0)
                    stamp = max(self.clock(), self._last_stamp)
                    dialect = postgresql if self.engine.dialect.name == "postgresql" else sqlite
                    statement = (
                        dialect.insert(webhook_inbox)
                        .values(
                            source=source,
                            event_id=event_id,
                            received_at_ms=stamp,
                            entities=orjson.dumps([list(e) for e in entities]).decode(),
                            body=body.decode("utf-8", "replace"),
                        )
                        .on_conflict_do_nothing(index_elements=[c.source, c.event_id])
                        .returning(c.seq)
                    )
                    inserted = (await conn.execute(statement)).first()
            if inserted is not None:
                self._last_stamp = stamp
            return inserted is not None

    async def pending(self, source: str, after_seq: int, limit: int = BATCH) -> list[InboxRow]:
        c = webhook_inbox.c
        with replica_errors(f"cannot read the webhook inbox of {source}"):
            async with self.engine.connect() as conn:
                rows = await conn.execute(
                    select(c.seq, c.event_id, c.received_at_ms, c.entities, c.body)
                    .where(c.source == source, c.seq > after_seq)
                    .order_by(c.seq)
                    .limit(limit)
                )
                return [
                    InboxRow(
                        int(r[0]),
                        str(r[1]),
                        int(r[2]),
                        [(str(k), str(i)) for k, i in orjson.loads(r[3])],
                        str(r[4]).encode(),
                    )
                    for r in rows
                ]

    async def depth(self, source: str, after_seq: int) -> int:
        """Events received and not yet applied."""
        c = webhook_inbox.c
        with replica_errors(f"cannot count the webhook inbox of {source}"):
            async with self.engine.connect() as conn:
                count = await conn.execute(
                    select(func.count()).where(c.source == source, c.seq > after_seq)
                )
                return int(count.scalar() or 0)

    async def prune(self, source: str, done_seq: int) -> None:
        """Forget applied events older than the retention (their ids may be reused then)."""
        c = webhook_inbox.c
        with replica_errors(f"cannot prune the webhook inbox of {source}"):
            async with self.engine.begin() as conn:
                await conn.execute(
                    delete(webhook_inbox).where(
                        c.source == source,
                        c.seq <= done_seq,
                        c.received_at_ms < self.clock() - self.retention_ms,
                    )
                )


async def fetch_entity(
    source: Any, dialect: str, kind: str, entity_id: str, body: bytes
) -> Record | None:
    """The entity's current state from the platform (None: it cannot be fetched by id, or is
    gone; polling brings whatever there is). HubRise has no shipment by id: the signed event's
    `new_state` stands in for it, applied only if newer like everything else."""
    client: ApiClient = source.client
    quoted = quote(entity_id, safe="")  # an id is one path segment, whatever it holds
    path = {
        ("masonhub", "order"): f"/orders/{quoted}",
        ("masonhub", "shipment"): f"/shipments/{quoted}",
        ("masonhub", "inventory"): f"/sku_snapshots/{quoted}",
        ("tradecloud", "order"): f"/order/{quoted}",
        ("hubrise", "order"): f"/location/orders/{quoted}",
    }.get((dialect, kind))
    if path is None:
        if dialect == "hubrise" and isinstance(source, HubRiseSource):
            state = orjson.loads(body).get("new_state")
            return None if not isinstance(state, dict) else source.record(kind, state)
        return None
    try:
        answer = await client.get_json(path, ())
    except RequestRejected as exc:
        if exc.status in (400, 404, 410, 422):  # gone, or an id the platform does not know
            return None
        raise
    if isinstance(source, MasonHubSource):
        return source.record(kind, answer.body)  # echo marking included
    if dialect == "masonhub":
        return parse_record(kind, answer.body)
    if isinstance(source, TradecloudSource):
        return source._record(kind, answer.body)  # echo marking included
    if isinstance(source, HubRiseSource):
        return source.record(kind, answer.body)
    return None


def carried_document(
    source: Any, dialect: str, kind: str, entity_id: str, body: bytes
) -> Record | None:
    """The entity as the delivery carries it whole, or None (then it is fetched): the
    ordersync hub's MasonHub `orderEvent` has the order at its version in `data.order` and a
    shipment's event the shipment in `data.shipments`. MasonHub's own callbacks carry neither.
    A document that is not the named entity, or not readable, is not used."""
    if dialect != "masonhub":
        return None
    data = orjson.loads(body).get("data")
    if not isinstance(data, dict):
        return None
    candidates = [data.get("order")] if kind == "order" else data.get("shipments")
    for document in candidates if isinstance(candidates, list) else ():
        if not isinstance(document, dict) or str(document.get("id")) != entity_id:
            continue
        if "version" not in document or "updated_at" not in document:
            return None
        try:
            if isinstance(source, MasonHubSource):
                return source.record(kind, document)  # echo marking included
            return parse_record(kind, document)
        except AgentError:
            return None
    return None


class InboxFeed:
    """The `webhooks` stream of one source: pending inbox rows, their entities fetched."""

    stream = STREAM

    def __init__(
        self,
        source: Any,
        dialect: str,
        inbox: Inbox,
        *,
        poll_wake: asyncio.Event,
        metrics: AgentMetrics,
        clock: Callable[[], int] = now_ms,
        batch: int = BATCH,
        outbox: Outbox | None = None,
    ) -> None:
        self.outbox = outbox  # where `agent push` follows its requests (resolution callbacks)
        self.source = source
        self.dialect = dialect
        self.inbox = inbox
        self.poll_wake = poll_wake
        self.metrics = metrics
        self.clock = clock
        self.batch = batch
        self._pruned_at: int | None = None

    @property
    def name(self) -> str:
        return str(self.source.name)

    async def walk(self, position: Cursor | None, may_fetch: MayFetch) -> AsyncIterator[Batch]:
        fetches = 0
        while may_fetch(fetches):
            rows = await self.inbox.pending(self.name, seq_of(position), self.batch)
            fetches += 1
            if not rows:
                self.metrics.inbox_depth.labels(self.name).set(0)
                since = 0 if position is None else position.updated_at_ms
                # Nothing pending: drained as of now (the lag's base), same rows done; a
                # position moved less than QUIET_MS ago stays (no commit for it).
                if position is None or self.clock() - since >= QUIET_MS:
                    position = Cursor(max(self.clock(), since), _seq_id(seq_of(position)))
                yield Batch([], position, 0, caught_up=True)
                return
            records = await self._fetch(rows)
            # The time never goes back (the sink keeps a position only if it moves on): the
            # lag's base; the seq is what says which rows are done.
            since = 0 if position is None else position.updated_at_ms
            position = Cursor(max(rows[-1].received_at_ms, since), rows[-1].position.last_id)
            done = len(rows) < self.batch

            async def settled(rows: list[InboxRow] = rows, last: Cursor = position) -> None:
                await self._settled(rows, last)

            yield Batch(records, position, len(rows), caught_up=done, after_commit=settled)
            if done:
                return

    async def _fetch(self, rows: list[InboxRow]) -> list[Record]:
        if self.outbox is not None:
            for row in rows:
                await self._resolution(self.outbox, row.body)
        named = {entity: row.body for row in rows for entity in row.entities}
        if any(not row.entities for row in rows):
            self.poll_wake.set()  # a delivery naming nothing we can fetch: poll instead
        fetched = await asyncio.gather(
            *(
                self._entity(
                    kind,
                    ident,
                    body,
                    carried_document(self.source, self.dialect, kind, ident, body),
                )
                for (kind, ident), body in named.items()
            )
        )
        if any(record is None for record in fetched):
            self.poll_wake.set()
        return [record for record in fetched if record is not None]

    async def _resolution(self, outbox: Outbox, body: bytes) -> None:
        """A MasonHub resolution callback of a request `agent push` sent: its outbox row takes
        the outcome now (a hint like any webhook: the push's own polling stays the truth)."""
        try:
            document = orjson.loads(body)
        except orjson.JSONDecodeError:
            return
        data = document.get("data") if isinstance(document, dict) else None
        if (
            self.dialect != "masonhub"
            or document.get("message_type") not in RESOLUTION_MESSAGES
            or not isinstance(data, dict)
            or not isinstance(data.get("id"), str)
            or data.get("status") not in ("success", "failure", "failed")
        ):
            return
        state = RESOLVED if data["status"] == "success" else FAILED
        reason = data.get("reason") if isinstance(data.get("reason"), str) else None
        with contextlib.suppress(SinkError):  # polling brings the same outcome
            await outbox.resolve_request(
                self.name, data["id"], state, reason or (None if state == RESOLVED else "failed")
            )

    async def _entity(
        self, kind: str, ident: str, body: bytes, carried: Record | None
    ) -> Record | None:
        """The delivered document when the (signed) delivery carries the whole entity at a
        version, else the platform's current state, fetched. Either way only a newer version
        than the replica holds is applied."""
        if carried is not None:
            self.metrics.webhooks_carried.labels(self.name).inc()
            return carried
        return await fetch_entity(self.source, self.dialect, kind, ident, body)

    async def _settled(self, rows: list[InboxRow], last: Cursor) -> None:
        """After the batch's commit: its events are applied (or were duplicates)."""
        now = self.clock()
        for row in rows:
            self.metrics.webhook_apply_seconds.labels(self.name).observe(
                max(0, now - row.received_at_ms) / 1000
            )
        with contextlib.suppress(SinkError):  # figures only: the next drain tries again
            self.metrics.inbox_depth.labels(self.name).set(
                await self.inbox.depth(self.name, seq_of(last))
            )
            if self._pruned_at is None or now - self._pruned_at >= PRUNE_EVERY_MS:
                self._pruned_at = now
                await self.inbox.prune(self.name, seq_of(last))


async def run_inbox(
    engine: SyncEngine,
    feed: InboxFeed,
    wake: asyncio.Event,
    stop: asyncio.Event,
    *,
    idle_s: float = 30.0,
    retry_s: float = 1.0,
) -> None:
    """Drain the inbox at start, on every wake and every `idle_s` until `stop`. A failed drain
    (the platform or the replica unavailable) leaves the rows pending for the next one."""
    while not stop.is_set():
        wake.clear()  # before draining: a wake during the drain means one more drain
        try:
            await engine.sync_feed(feed, stop_event=stop)
        except (AuthError, RequestAborted):
            raise
        except AgentError as exc:
            log.warning("inbox_drain_failed", source=feed.name, error=str(exc))
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(stop.wait(), retry_s)
        await wait_first(stop, wake, idle_s)
