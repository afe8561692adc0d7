"""Webhook subscriptions and their delivery queue: the event log is the outbox.

A subscription (a MasonHub callback, a HubRise active callback, a Tradecloud webhook) has a
`cursor`: the last event id of the log it has been *materialised* up to. Materialising reads
the account's events after the cursor, below the log's frontier (`ordersync.store.events`: no
later commit can ever appear below it, so the cursor never passes an event that is still to
come), renders each event the subscriber wants into its dialect's body and inserts one
`webhook_deliveries` row per event, moving the cursor in the same transaction (compare and set:
a second worker materialising the same subscription at the same time inserts nothing).

Delivery rows are claimed per (subscription, entity) in event id order: a row may be attempted
only when no pending row of the same entity has a smaller event id. A later version of an order
is then never sent before an earlier one, and one stuck order blocks only itself. A claim
commits a lease (a token and a deadline, `next_attempt_at`) before the HTTP request goes out;
on PostgreSQL `FOR UPDATE SKIP LOCKED` lets several workers claim at once without ever taking
the same row. A worker that dies mid-request leaves the lease to expire and another worker
sends the event again (at-least-once: receivers dedupe by `webhook-id`, the event id). Every
outcome is committed with its attempt row before the next claim of that entity.

Events superseded before they were materialised (the log keeps only each entity's current
document) are coalesced: the later event of the same entity carries the newer state. Inventory
goes further, since its counts are absolute: queuing a newer inventory event of a SKU marks the
older pending (not in-flight) ones `superseded`, never to be sent.
"""

from __future__ import annotations

import base64
import ipaddress
import random
import secrets as _secrets
import uuid
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from typing import Any
from urllib.parse import urlsplit

import orjson
from sqlalchemy import delete, exists, insert, or_, select, update
from sqlalchemy.orm import aliased

from ordersync.errors import NotFound, ValidationFailed
from ordersync.store.events import EventLog, LogEvent, PositionPruned
from ordersync.store.store import Principal, Store
from ordersync.store.tables import (
    connections,
    webhook_attempts,
    webhook_deliveries,
    webhook_secrets,
    webhook_subscriptions,
)

DAY_MS = 86_400_000
# Standard Webhooks / Svix: the waits before retries 1..7 (seconds), then the event has failed.
DEFAULT_SCHEDULE_S: tuple[float, ...] = (5, 300, 1800, 7200, 18000, 36000, 36000)
JITTER = 0.2  # each wait is drawn from +-20 % of the schedule's
DISABLE_AFTER_MS = 5 * DAY_MS  # an endpoint failing for this long is disabled
ROTATION_GRACE_MS = DAY_MS  # the previous secret keeps signing this long after a rotation
LEASE_MS = 60_000  # a claim's deadline: well above the HTTP timeout
MATERIALISE_PAGE = 100
DIALECTS = ("masonhub", "hubrise", "tradecloud")
INVENTORY_KEY = "inventory:"  # the entity_key prefix of inventory deliveries
SUPERSEDED = "superseded"  # a delivery status: a newer inventory event replaced it unsent


def new_secret() -> str:
    """A Standard Webhooks secret: `whsec_` and 24 random bytes in base64."""
    return "whsec_" + base64.b64encode(_secrets.token_bytes(24)).decode()


def secret_key(secret: str) -> bytes:
    """The HMAC key of a `whsec_` secret: its base64 part decoded."""
    return base64.b64decode(secret.removeprefix("whsec_"))


def url_problem(url: str) -> str | None:
    """Why `url` cannot be called back, or None: http(s) only, with a host, no credentials."""
    if len(url) > 2000:
        return "at most 2000 characters"
    try:
        parts = urlsplit(url)
        parts.port  # noqa: B018  (raises on a bad port)
    except ValueError as exc:
        return f"not a URL: {exc}"
    if parts.scheme not in ("http", "https"):
        return "an http:// or https:// URL"
    if not parts.hostname:
        return "a URL with a host"
    if parts.username or parts.password:
        return "a URL without credentials (use the auth field)"
    try:
        ipaddress.ip_address(parts.hostname)
    except ValueError:
        if any(c.isspace() for c in parts.hostname):
            return "a URL with a valid host"
    return None


@dataclass(frozen=True)
class Subscription:
    id: str
    account_id: int
    connection_id: int
    connection_name: str
    dialect: str
    url: str
    message_type: str
    api_version: str | None
    auth: dict[str, Any] | None
    events: dict[str, list[str]] | None
    cursor: int
    status: str
    disabled_reason: str | None
    failing_since: int | None
    created_at: int


@dataclass(frozen=True)
class Claim:
    """One delivery leased to this worker: what to send where, and with which secrets."""

    delivery_id: int
    lease: str
    event_id: int
    body: bytes
    attempts: int  # including this one
    subscription: Subscription
    secrets: list[str]  # newest first


@dataclass(frozen=True)
class Attempt:
    delivery_id: int
    event_id: int
    at: int
    status_code: int | None
    latency_ms: int
    outcome: str
    error: str | None


@dataclass(frozen=True)
class Result:
    """What one HTTP attempt of a claimed delivery came to (see `WebhookStore.settle_many`)."""

    claim: Claim
    outcome: str  # delivered | retry | failed | gone
    status_code: int | None
    latency_ms: int
    error: str | None = None
    retry_after_s: float | None = None


# A renderer: the body for one event, or None when the subscriber does not get that event.
Render = Callable[[Subscription, LogEvent], Awaitable[bytes | None]]


def _subscription_query() -> Any:
    s = webhook_subscriptions.c
    return select(
        s.id,
        s.account_id,
        s.connection_id,
        connections.c.name,
        s.dialect,
        s.url,
        s.message_type,
        s.api_version,
        s.auth,
        s.events,
        s.cursor,
        s.status,
        s.disabled_reason,
        s.failing_since,
        s.created_at,
    ).select_from(webhook_subscriptions.join(connections, connections.c.id == s.connection_id))


def _subscription(row: Any) -> Subscription:
    return Subscription(
        str(row[0]),
        int(row[1]),
        int(row[2]),
        str(row[3]),
        str(row[4]),
        str(row[5]),
        str(row[6]),
        row[7],
        None if row[8] is None else orjson.loads(row[8]),
        None if row[9] is None else orjson.loads(row[9]),
        int(row[10]),
        str(row[11]),
        row[12],
        row[13],
        int(row[14]),
    )


class WebhookStore:
    """Subscriptions, the delivery queue and its attempts, over a `Store`'s engines."""

    def __init__(
        self,
        store: Store,
        *,
        schedule_s: Sequence[float] = DEFAULT_SCHEDULE_S,
        disable_after_ms: int = DISABLE_AFTER_MS,
        lease_ms: int = LEASE_MS,
        rng: random.Random | None = None,
    ) -> None:
        self.store = store
        self.events = EventLog(store)
        self.schedule_s = tuple(schedule_s)
        self.disable_after_ms = disable_after_ms
        self.lease_ms = lease_ms
        self.rng = rng or random.Random()

    # -- subscriptions ---------------------------------------------------------------------

    async def create(
        self,
        principal: Principal,
        dialect: str,
        url: str,
        message_type: str,
        *,
        api_version: str | None = None,
        auth: dict[str, Any] | None = None,
        events: dict[str, list[str]] | None = None,
        replace: bool = False,
    ) -> tuple[Subscription, str]:
        """A new subscription and its secret (shown once). It gets the changes committed
        after now. `replace`: the connection's other subscriptions of this dialect go (HubRise
        keeps one callback per connection)."""
        problem = url_problem(url)
        if problem is not None:
            raise ValidationFailed("the callback url is invalid", [("url", problem)])
        head = await self.events.head()
        now = self.store.clock()
        sub_id = str(uuid.uuid4())
        secret = new_secret()
        async with self.store.writing(None) as conn:
            if replace:
                old = select(webhook_subscriptions.c.id).where(
                    webhook_subscriptions.c.connection_id == principal.connection_id,
                    webhook_subscriptions.c.dialect == dialect,
                )
                ids = [str(r[0]) for r in (await conn.execute(old)).all()]
                await _delete_subscriptions(conn, ids)
            await conn.execute(
                insert(webhook_subscriptions).values(
                    id=sub_id,
                    account_id=principal.account_id,
                    connection_id=principal.connection_id,
                    dialect=dialect,
                    url=url,
                    message_type=message_type,
                    api_version=api_version,
                    auth=None if auth is None else orjson.dumps(auth).decode(),
                    events=None if events is None else orjson.dumps(events).decode(),
                    cursor=head,
                    status="active",
                    created_at=now,
                    updated_at=now,
                )
            )
            await conn.execute(
                insert(webhook_secrets).values(
                    subscription_id=sub_id, secret=secret, created_at=now
                )
            )
        return await self.get(principal, sub_id), secret

    async def get(self, principal: Principal, sub_id: str) -> Subscription:
        statement = _subscription_query().where(
            webhook_subscriptions.c.id == sub_id,
            webhook_subscriptions.c.connection_id == principal.connection_id,
        )
        async with self.store.reader.connect() as conn:
            row = (await conn.execute(statement)).first()
        if row is None:
            raise NotFound(f"no webhook subscription with id {sub_id}")
        return _subscription(row)

    async def subscriptions(
        self, principal: Principal, dialect: str, message_type: str | None = None
    ) -> list[Subscription]:
        s = webhook_subscriptions.c
        statement = _subscription_query().where(
            s.connection_id == principal.connection_id, s.dialect == dialect
        )
        if message_type is not None:
            statement = statement.where(s.message_type == message_type)
        async with self.store.reader.connect() as conn:
            rows = (await conn.execute(statement.order_by(s.created_at, s.id))).all()
        return [_subscription(r) for r in rows]

    async def delete(self, principal: Principal, dialect: str, ids: Sequence[str] | None) -> int:
        """Delete the connection's subscriptions of `dialect` (those of `ids`, or all) with
        their queue; how many."""
        s = webhook_subscriptions.c
        statement = select(s.id).where(
            s.connection_id == principal.connection_id, s.dialect == dialect
        )
        if ids is not None:
            statement = statement.where(s.id.in_(list(ids)))
        async with self.store.writing(None) as conn:
            found = [str(r[0]) for r in (await conn.execute(statement)).all()]
            await _delete_subscriptions(conn, found)
        return len(found)

    async def rotate(
        self, principal: Principal, sub_id: str, grace_ms: int = ROTATION_GRACE_MS
    ) -> str:
        """A new secret; the current ones keep signing for `grace_ms` (both listed)."""
        await self.get(principal, sub_id)
        now = self.store.clock()
        secret = new_secret()
        sec = webhook_secrets.c
        async with self.store.writing(None) as conn:
            await conn.execute(
                update(webhook_secrets)
                .where(
                    sec.subscription_id == sub_id,
                    or_(sec.expires_at.is_(None), sec.expires_at > now + grace_ms),
                )
                .values(expires_at=now + grace_ms)
            )
            await conn.execute(
                insert(webhook_secrets).values(
                    subscription_id=sub_id, secret=secret, created_at=now
                )
            )
        return secret

    async def set_events(
        self, principal: Principal, sub_id: str, events: dict[str, list[str]]
    ) -> Subscription:
        """A HubRise callback's event filter, for the events materialised from now on."""
        await self.get(principal, sub_id)
        async with self.store.writing(None) as conn:
            await conn.execute(
                update(webhook_subscriptions)
                .where(webhook_subscriptions.c.id == sub_id)
                .values(events=orjson.dumps(events).decode(), updated_at=self.store.clock())
            )
        return await self.get(principal, sub_id)

    async def enable(self, principal: Principal, sub_id: str) -> Subscription:
        """Enable a disabled subscription again: its queued events go out."""
        await self.get(principal, sub_id)
        async with self.store.writing(None) as conn:
            await conn.execute(
                update(webhook_subscriptions)
                .where(webhook_subscriptions.c.id == sub_id)
                .values(
                    status="active",
                    disabled_reason=None,
                    failing_since=None,
                    updated_at=self.store.clock(),
                )
            )
        return await self.get(principal, sub_id)

    async def attempts(self, principal: Principal, sub_id: str, limit: int = 100) -> list[Attempt]:
        """The newest attempts of a subscription, newest first."""
        await self.get(principal, sub_id)
        a = webhook_attempts.c
        statement = (
            select(a.delivery_id, a.event_id, a.at, a.status_code, a.latency_ms, a.outcome, a.error)
            .where(a.subscription_id == sub_id)
            .order_by(a.id.desc())
            .limit(limit)
        )
        async with self.store.reader.connect() as conn:
            rows = (await conn.execute(statement)).all()
        return [
            Attempt(int(r[0]), int(r[1]), int(r[2]), r[3], int(r[4]), str(r[5]), r[6]) for r in rows
        ]

    async def replay(
        self,
        principal: Principal,
        sub_id: str,
        *,
        event_id: int | None = None,
        since_ms: int | None = None,
        until_ms: int | None = None,
    ) -> int:
        """Queue already delivered (or failed) events again: one event, or those whose change
        was made in [since_ms, until_ms). How many were queued. Order per entity holds: a
        replayed row sorts by its event id among the entity's pending ones."""
        await self.get(principal, sub_id)
        d = webhook_deliveries.c
        where = [d.subscription_id == sub_id, d.status != "pending"]
        if event_id is not None:
            where.append(d.event_id == event_id)
        if since_ms is not None:
            where.append(d.event_created_at >= since_ms)
        if until_ms is not None:
            where.append(d.event_created_at < until_ms)
        async with self.store.writing(None) as conn:
            result = await conn.execute(
                update(webhook_deliveries)
                .where(*where)
                .values(
                    status="pending",
                    attempts=0,
                    lease=None,
                    next_attempt_at=self.store.clock(),
                )
            )
        count = int(result.rowcount)
        if event_id is not None and count == 0:
            raise NotFound(f"no delivered or failed event {event_id} for this subscription")
        return count

    # -- materialising the log into the queue ----------------------------------------------

    async def active(self) -> list[Subscription]:
        statement = _subscription_query().where(webhook_subscriptions.c.status == "active")
        async with self.store.reader.connect() as conn:
            rows = (await conn.execute(statement)).all()
        return [_subscription(r) for r in rows]

    async def materialise(self, render: Render) -> int:
        """One page of events per active subscription into the queue; rows inserted."""
        inserted = 0
        for sub in await self.active():
            inserted += await self.materialise_one(sub, render)
        return inserted

    async def materialise_one(self, sub: Subscription, render: Render) -> int:
        try:
            page = await self.events.read(
                sub.account_id, sub.cursor, MATERIALISE_PAGE, every_kind=True
            )
        except PositionPruned as exc:
            # Events up to the pruned horizon are gone (the subscriber resyncs by polling):
            # go on from there, so that nothing after it is skipped.
            await self._move_cursor(sub, exc.pruned_through, [])
            return 0
        rows = []
        now = self.store.clock()
        for event in page.events:
            if event.connection == sub.connection_name:
                continue  # never back to the connection that made the change
            if event.superseded and event.kind != "request":
                continue  # coalesced: a later event of this entity carries the newer state
            body = await render(sub, event)
            if body is None:
                continue
            rows.append(
                {
                    "subscription_id": sub.id,
                    "entity_key": f"{event.kind}:{event.entity_id}",
                    "event_id": event.event_id,
                    "body": body.decode(),
                    "status": "pending",
                    "attempts": 0,
                    "next_attempt_at": now,
                    "created_at": now,
                    "event_created_at": event.created_at,
                }
            )
        if not page.events:
            # Nothing new: leave the cursor (no write per idle round; a cursor that falls
            # behind retention this way has missed nothing and moves on above).
            return 0
        return await self._move_cursor(sub, page.next_after, rows)

    async def _move_cursor(self, sub: Subscription, to: int, rows: list[dict[str, Any]]) -> int:
        s = webhook_subscriptions.c
        async with self.store.writing(None) as conn:
            moved = await conn.execute(
                update(webhook_subscriptions)
                .where(s.id == sub.id, s.cursor == sub.cursor)
                .values(cursor=to)
            )
            if moved.rowcount != 1:
                return 0  # another worker materialised this page (or it was deleted)
            if rows:
                rows = _newest_inventory(rows)
                await conn.execute(insert(webhook_deliveries), rows)
                await _supersede_inventory(conn, sub.id, rows)
        return len(rows)

    # -- claiming and settling deliveries --------------------------------------------------

    async def any_due(self) -> bool:
        """Whether some delivery is due (a read: no write transaction when there is none)."""
        d = webhook_deliveries.c
        s = webhook_subscriptions.c
        probe = (
            select(d.id)
            .select_from(webhook_deliveries.join(webhook_subscriptions, s.id == d.subscription_id))
            .where(
                d.status == "pending", d.next_attempt_at <= self.store.clock(), s.status == "active"
            )
            .limit(1)
        )
        async with self.store.reader.connect() as conn:
            return (await conn.execute(probe)).first() is not None

    async def claim(self, limit: int) -> list[Claim]:
        """Lease up to `limit` due deliveries, each the oldest pending one of its entity."""
        d = webhook_deliveries
        earlier = aliased(webhook_deliveries)
        s = webhook_subscriptions.c
        now = self.store.clock()
        due = (
            select(d.c.id, d.c.subscription_id, d.c.event_id, d.c.body, d.c.attempts)
            .select_from(d.join(webhook_subscriptions, s.id == d.c.subscription_id))
            .where(
                d.c.status == "pending",
                d.c.next_attempt_at <= now,
                s.status == "active",
                ~exists().where(
                    earlier.c.subscription_id == d.c.subscription_id,
                    earlier.c.entity_key == d.c.entity_key,
                    earlier.c.status == "pending",
                    earlier.c.event_id < d.c.event_id,
                ),
            )
            .order_by(d.c.next_attempt_at, d.c.event_id)
            .limit(limit)
            .with_for_update(skip_locked=True, of=d)
        )
        lease = str(uuid.uuid4())
        async with self.store.writing(None) as conn:
            rows = (await conn.execute(due)).all()
            if not rows:
                return []
            await conn.execute(
                update(d)
                .where(d.c.id.in_([r[0] for r in rows]))
                .values(lease=lease, next_attempt_at=now + self.lease_ms, attempts=d.c.attempts + 1)
            )
            sub_ids = sorted({str(r[1]) for r in rows})
            subs = {
                sub.id: sub
                for sub in map(
                    _subscription,
                    (
                        await conn.execute(
                            _subscription_query().where(webhook_subscriptions.c.id.in_(sub_ids))
                        )
                    ).all(),
                )
            }
            sec = webhook_secrets.c
            secret_rows = (
                await conn.execute(
                    select(sec.subscription_id, sec.secret)
                    .where(
                        sec.subscription_id.in_(sub_ids),
                        or_(sec.expires_at.is_(None), sec.expires_at > now),
                    )
                    .order_by(sec.id.desc())
                )
            ).all()
        keys: dict[str, list[str]] = {}
        for sub_id, secret in secret_rows:
            keys.setdefault(str(sub_id), []).append(str(secret))
        return [
            Claim(
                int(r[0]),
                lease,
                int(r[2]),
                str(r[3]).encode(),
                int(r[4]) + 1,
                subs[str(r[1])],
                keys.get(str(r[1]), []),
            )
            for r in rows
        ]

    async def settle(
        self,
        claim: Claim,
        *,
        outcome: str,
        status_code: int | None,
        latency_ms: int,
        error: str | None = None,
        retry_after_s: float | None = None,
    ) -> str:
        """`settle_many` of one attempt."""
        (final,) = await self.settle_many(
            [Result(claim, outcome, status_code, latency_ms, error, retry_after_s)]
        )
        return final

    async def settle_many(self, results: Sequence[Result]) -> list[str]:
        """Record attempts' outcomes (`delivered`, `retry`, `failed`: given up on this event,
        `gone`: the endpoint answered 410) and their attempt rows, in one transaction; the
        resulting outcomes (`retry` becomes `failed` past the schedule, any failure
        `disabled` once the endpoint has been failing for `disable_after_ms`, `stale` when
        the lease had expired and another worker took the row). Rows are written in
        (subscription, delivery) order, so that two workers lock subscriptions in the same
        order."""
        now = self.store.clock()
        finals: dict[int, str] = {}
        ordered = sorted(results, key=lambda r: (r.claim.subscription.id, r.claim.delivery_id))
        async with self.store.writing(None) as conn:
            for result in ordered:
                finals[result.claim.delivery_id] = await self._settle(conn, result, now)
        return [finals[r.claim.delivery_id] for r in results]

    async def _settle(self, conn: Any, result: Result, now: int) -> str:
        claim, outcome = result.claim, result.outcome
        d = webhook_deliveries.c
        s = webhook_subscriptions.c
        values: dict[str, Any] = {"lease": None}
        sub_values: dict[str, Any] = {}
        first_failure: int | None = None
        final = outcome
        if outcome == "delivered":
            values |= {"status": "delivered", "delivered_at": now}
            if claim.subscription.failing_since is not None:
                sub_values = {"failing_since": None}
        elif outcome == "gone":
            values |= {"status": "pending", "next_attempt_at": now, "attempts": claim.attempts - 1}
            sub_values = {"status": "disabled", "disabled_reason": "the endpoint answered 410 Gone"}
            final = "disabled"
        else:
            failing_since = claim.subscription.failing_since or now
            if outcome == "retry" and claim.attempts <= len(self.schedule_s):
                wait = self.schedule_s[claim.attempts - 1]
                wait *= 1 + self.rng.uniform(-JITTER, JITTER)
                if result.retry_after_s is not None:
                    wait = max(wait, result.retry_after_s)
                values |= {"next_attempt_at": now + int(wait * 1000)}
            else:
                values |= {"status": "failed"}
                final = "failed"
            first_failure = failing_since
            if now - failing_since >= self.disable_after_ms:
                sub_values = {
                    "status": "disabled",
                    "disabled_reason": "the endpoint has been failing for "
                    f"{self.disable_after_ms // DAY_MS} days",
                }
                if final == "failed":
                    values |= {"status": "pending", "next_attempt_at": now}  # kept queued
                final = "disabled"
        updated = await conn.execute(
            update(webhook_deliveries)
            .where(d.id == claim.delivery_id, d.lease == claim.lease)
            .values(**values)
        )
        if updated.rowcount != 1:
            final = "stale"  # the lease expired and another worker took the row
        await conn.execute(
            insert(webhook_attempts).values(
                subscription_id=claim.subscription.id,
                delivery_id=claim.delivery_id,
                event_id=claim.event_id,
                at=now,
                status_code=result.status_code,
                latency_ms=result.latency_ms,
                outcome=final,
                error=result.error,
            )
        )
        if final == "stale":
            return final
        if first_failure is not None:
            # The first failure's time is kept when it is already set.
            await conn.execute(
                update(webhook_subscriptions)
                .where(s.id == claim.subscription.id, s.failing_since.is_(None))
                .values(failing_since=first_failure, updated_at=now)
            )
        if sub_values:
            await conn.execute(
                update(webhook_subscriptions)
                .where(s.id == claim.subscription.id)
                .values(**sub_values, updated_at=now)
            )
        return final

    async def prune(self, retention_ms: int) -> int:
        """Delete settled queue rows and attempts older than `retention_ms` (the event log's
        retention: a replay can reach back as far as the log does); how many rows."""
        cutoff = self.store.clock() - retention_ms
        d = webhook_deliveries.c
        a = webhook_attempts.c
        async with self.store.writing(None) as conn:
            gone = await conn.execute(
                delete(webhook_deliveries).where(
                    d.status.in_(("delivered", "failed", SUPERSEDED)), d.created_at < cutoff
                )
            )
            old = await conn.execute(delete(webhook_attempts).where(a.at < cutoff))
        return int(gone.rowcount) + int(old.rowcount)

    async def deliveries(self, sub_id: str) -> list[tuple[int, str, int]]:
        """(event id, status, attempts) of a subscription's queue, in event id order (tests)."""
        d = webhook_deliveries.c
        async with self.store.reader.connect() as conn:
            rows = (
                await conn.execute(
                    select(d.event_id, d.status, d.attempts)
                    .where(d.subscription_id == sub_id)
                    .order_by(d.event_id)
                )
            ).all()
        return [(int(r[0]), str(r[1]), int(r[2])) for r in rows]


def _newest_inventory(rows: list[dict[str, Any]]) -> list[dict[str, Any]]:
    """The rows to queue, keeping of each inventory entity only its newest event: counts are
    absolute, so the newest carries everything an older one would tell."""
    newest: dict[str, int] = {}
    for row in rows:
        if row["entity_key"].startswith(INVENTORY_KEY):
            newest[row["entity_key"]] = max(newest.get(row["entity_key"], 0), row["event_id"])
    return [
        r
        for r in rows
        if not r["entity_key"].startswith(INVENTORY_KEY) or newest[r["entity_key"]] == r["event_id"]
    ]


async def _supersede_inventory(conn: Any, sub_id: str, rows: list[dict[str, Any]]) -> None:
    """ "Newer inventory counts may supersede undelivered older ones": the pending, not
    in-flight (no lease) deliveries of an inventory entity older than the one just queued
    are marked `superseded` and never sent. One in flight is left to finish: the entity's
    order of delivery holds either way."""
    d = webhook_deliveries.c
    for row in rows:
        if not row["entity_key"].startswith(INVENTORY_KEY):
            continue
        await conn.execute(
            update(webhook_deliveries)
            .where(
                d.subscription_id == sub_id,
                d.entity_key == row["entity_key"],
                d.status == "pending",
                d.lease.is_(None),
                d.event_id < row["event_id"],
            )
            .values(status=SUPERSEDED)
        )


async def _delete_subscriptions(conn: Any, ids: list[str]) -> None:
    if not ids:
        return
    for table in (webhook_attempts, webhook_deliveries, webhook_secrets):
        await conn.execute(delete(table).where(table.c.subscription_id.in_(ids)))
    await conn.execute(delete(webhook_subscriptions).where(webhook_subscriptions.c.id.in_(ids)))
