"""The hub's store: every read and write of accounts, orders, shipments and the change feed.

Each write is one transaction that bumps `version`, stamps `updated_at` from the hub clock,
rewrites the entity's JSON document, appends to `changes` and appends the entity's count
moves to `update_count_deltas` (insert-only: writers share no counter row; see
`ordersync.store.counts`). A crash at any line leaves either all of that or none of it.

Time: each version's `updated_at` is strictly greater than the previous version's
(`max(clock, previous + 1)`), whatever the clock of the host that writes it. A write must
commit within `write_timeout_ms` of its start (so of its stamps): past that it is rolled back
(`WriteTimedOut`), and on PostgreSQL `statement_timeout` and
`idle_in_transaction_session_timeout` cut a statement or an idle transaction at the same bound.
A commit therefore becomes visible at most about `commit_lag_ms(write_timeout_ms)` after its
stamp; the hub advertises that bound (`X-Ordersync-Commit-Lag-Ms`).
"""

from __future__ import annotations

import contextlib
import functools
import hashlib
import secrets
import time
import uuid
from collections.abc import AsyncIterator, Callable, Sequence
from dataclasses import dataclass, field
from typing import Any, TypeVar

import orjson
from sqlalchemy import (
    BigInteger,
    Integer,
    Row,
    bindparam,
    event,
    func,
    insert,
    or_,
    select,
    update,
)
from sqlalchemy.dialects import postgresql, sqlite
from sqlalchemy.exc import DBAPIError
from sqlalchemy.ext.asyncio import AsyncConnection, AsyncEngine

from ordersync.domain import (
    NewOrder,
    NewShipment,
    Order,
    OrderStatus,
    Shipment,
    ShipmentStatus,
    check_transition,
    format_rfc3339,
    now_ms,
    stamp_change,
)
from ordersync.errors import AuthenticationFailed, NotFound, WriteTimedOut
from ordersync.store.counts import CountDeltas, bucket_params, bucket_total_query, exact_until
from ordersync.store.engine import (
    DB_MAX_OVERFLOW,
    DB_POOL_SIZE,
    DatabaseURL,
    SqliteReadPool,
    create_engines,
    parse_database_url,
)
from ordersync.store.events import allocate_event_ids, frontier
from ordersync.store.idempotency import settle
from ordersync.store.tables import accounts, changes, connections, orders, shipments, skus

Clock = Callable[[], int]
T = TypeVar("T")
TOKEN_PREFIX = "osk_"
# SQLite listings up to this offset and without a status filter run on the event loop's thread
# (see `_list`); larger ones in a reader thread.
_SQLITE_INLINE_MAX_OFFSET = 1_000
# How long a write transaction may take from its start (its stamps) to its commit.
DEFAULT_WRITE_TIMEOUT_MS = 5_000
# What host clocks may disagree by (NTP keeps them far closer); part of the advertised lag.
CLOCK_SKEW_ALLOWANCE_MS = 1_000


def commit_lag_ms(write_timeout_ms: int) -> int:
    """The longest a committed version can take to become visible after its `updated_at`:
    the write deadline, checked just before COMMIT, plus the COMMIT itself (cut by
    `statement_timeout` = the same bound), plus the clock-skew allowance between hosts."""
    return 2 * write_timeout_ms + CLOCK_SKEW_ALLOWANCE_MS


@dataclass(frozen=True)
class Principal:
    """Who is calling: a connection (one token) of one account."""

    connection_id: int
    connection_name: str
    account_id: int
    account_name: str


@dataclass(frozen=True)
class ListQuery:
    ids: tuple[str, ...] = ()
    since: int | None = None
    statuses: tuple[str, ...] = ()
    offset: int = 0
    limit: int = 30
    # Keyset continuation (an ordersync extension): with `since`, only rows after
    # (since, after_id) in the listing's (updated_at, id) order. `total` is unaffected.
    after_id: str | None = None


@dataclass(frozen=True)
class Page:
    """One listing page: `docs` are JSON documents (detail) or summary dicts, ascending."""

    items: list[Any]
    total: int
    # Each item's event id (the change that made its version; None if none was recorded),
    # for the dialects to render as an extension field.
    event_ids: list[int | None] = field(default_factory=list)


@dataclass(frozen=True)
class CreateResult:
    customer_identifier: str
    order: Order | None = None
    errors: list[tuple[str, str]] = field(default_factory=list)

    @property
    def created(self) -> bool:
        return self.order is not None


@dataclass(frozen=True)
class ConnectionInfo:
    """One issued token's row, as an operator sees it (never the token)."""

    id: int
    account: str
    name: str
    created_at: int
    revoked_at: int | None


@dataclass(frozen=True)
class AccountInfo:
    name: str
    timezone: str
    currency: str


def _opt_int(value: Any) -> int | None:
    return None if value is None else int(value)


def hash_token(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()


class Store:
    """Async access to the hub database. Build with `await Store.open(url)`."""

    def __init__(
        self,
        url: DatabaseURL,
        reader: AsyncEngine,
        writer: AsyncEngine,
        clock: Clock,
        *,
        write_timeout_ms: int = DEFAULT_WRITE_TIMEOUT_MS,
    ) -> None:
        self.url = url
        self.reader = reader
        self.writer = writer
        self.clock = clock
        self.write_timeout_ms = write_timeout_ms
        # Measures how long a write transaction took (the deadline); tests replace it. Not
        # `clock`: that one stamps versions and may be faked, skewed or made to lag on purpose.
        self.elapsed_ms: Callable[[], float] = lambda: time.monotonic() * 1000
        # Called after each write transaction of this process commits (`on_commit`): the
        # webhook dispatcher wakes on them instead of waiting for its next idle round.
        self._commit_listeners: list[Callable[[], None]] = []
        # SQLite: listings read through plain sqlite3 connections, at most one thread hop.
        self._sqlite_reads = (
            SqliteReadPool(url, reader.dialect) if url.backend == "sqlite" else None
        )

    @classmethod
    async def open(
        cls,
        url: str,
        *,
        clock: Clock = now_ms,
        migrate: bool = True,
        write_timeout_ms: int = DEFAULT_WRITE_TIMEOUT_MS,
        **pool: int,
    ) -> Store:
        store = cls.connect(url, clock=clock, write_timeout_ms=write_timeout_ms, **pool)
        if migrate:
            await store.migrate()
        return store

    @classmethod
    def connect(
        cls,
        url: str,
        *,
        clock: Clock = now_ms,
        write_timeout_ms: int = DEFAULT_WRITE_TIMEOUT_MS,
        pool_size: int = DB_POOL_SIZE,
        max_overflow: int = DB_MAX_OVERFLOW,
    ) -> Store:
        """The store of `url` without any I/O yet: connections open on first use, in the event
        loop that uses them. Call `migrate()` before serving from a new database. The pool
        sizes apply to PostgreSQL (see `create_engines`)."""
        parsed = parse_database_url(url)
        if parsed.backend == "sqlite":
            reader, writer = create_engines(parsed)
        else:
            reader, writer = create_engines(parsed, pool_size=pool_size, max_overflow=max_overflow)
        if parsed.backend == "postgresql":
            _bound_sessions(writer, write_timeout_ms)
        return cls(parsed, reader, writer, clock, write_timeout_ms=write_timeout_ms)

    @contextlib.asynccontextmanager
    async def _writing(self) -> AsyncIterator[AsyncConnection]:
        """A write transaction that commits within `write_timeout_ms` of its start or not at
        all: past the deadline (or on a statement/idle timeout) it is rolled back and
        `WriteTimedOut` raised, so that no version becomes visible later than the advertised
        commit lag after its stamp. Stamps are read after `started`, so none is older."""
        try:
            async with self.writer.begin() as conn:
                started = self.elapsed_ms()
                yield conn
                took = self.elapsed_ms() - started
                if took > self.write_timeout_ms:
                    raise WriteTimedOut(
                        f"the write took {took:.0f} ms, past the hub's {self.write_timeout_ms} ms "
                        "deadline, and was rolled back; retry it"
                    )
        except DBAPIError as exc:
            if _timed_out(exc):
                raise WriteTimedOut(
                    f"the write hit the database's {self.write_timeout_ms} ms timeout and was "
                    "rolled back; retry it"
                ) from None
            raise
        for listener in list(self._commit_listeners):
            # The write is committed: a failing listener must not turn it into an error
            # answer (the client would retry a write that was made).
            with contextlib.suppress(Exception):
                listener()

    def on_commit(self, listener: Callable[[], None]) -> Callable[[], None]:
        """Call `listener()` after every write transaction this store commits (in this
        process; other processes' writes are not seen); returns the function that stops it.
        A listener must not block: it runs on the writer's task, after its commit (what it
        raises is ignored)."""
        self._commit_listeners.append(listener)
        return lambda: self._commit_listeners.remove(listener)

    async def migrate(self) -> None:
        """Create or upgrade the tables."""
        from ordersync.store.migrate import upgrade

        await upgrade(self.url)

    async def close(self) -> None:
        if self._sqlite_reads is not None:
            await self._sqlite_reads.close()
        await self.reader.dispose()
        if self.writer is not self.reader:
            await self.writer.dispose()

    # -- accounts and tokens ---------------------------------------------------------------

    async def ensure_account(self, name: str, *, timezone: str = "UTC") -> int:
        async with self.writer.begin() as conn:
            return await self._ensure_account(conn, name, timezone)

    async def _ensure_account(self, conn: AsyncConnection, name: str, timezone: str) -> int:
        # Insert-or-nothing, then read: two first uses of a name at once (two `token create`
        # runs) both get the one account, where a check-then-insert failed one of them.
        inserted = await conn.scalar(
            _dialect_insert(conn, accounts)
            .values(name=name, timezone=timezone, created_at=self.clock())
            .on_conflict_do_nothing(index_elements=["name"])
            .returning(accounts.c.id)
        )
        if inserted is not None:
            return int(inserted)
        found = await conn.scalar(select(accounts.c.id).where(accounts.c.name == name))
        assert found is not None  # names are never deleted
        return int(found)

    async def create_token(self, account_name: str, connection_name: str) -> str:
        """Create the account if needed and a connection with a new token; only its hash is kept."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        async with self.writer.begin() as conn:
            account_id = await self._ensure_account(conn, account_name, "UTC")
            await conn.execute(
                insert(connections).values(
                    account_id=account_id,
                    name=connection_name,
                    token_hash=hash_token(token),
                    created_at=self.clock(),
                )
            )
        return token

    async def authenticate(self, token: str) -> Principal:
        """The live connection `token` names; `AuthenticationFailed` if none (unknown or
        revoked). Read from the database every time: no cache may outlive a revocation."""
        params = {"token_hash": hash_token(token)}
        reads = self._sqlite_reads
        if reads is not None:
            # One indexed lookup: cheaper on the event loop's thread than a hop to a thread.
            rows = await reads.run(
                lambda connection: reads.execute(connection, _AUTHENTICATE, params), inline=True
            )
        else:
            async with self.reader.connect() as conn:
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                rows = list((await conn.execute(_AUTHENTICATE, params)).all())
        if not rows:
            raise AuthenticationFailed("unknown or revoked token")
        row = rows[0]
        return Principal(int(row[0]), str(row[1]), int(row[2]), str(row[3]))

    async def internal_principal(self, account_name: str, connection_name: str) -> Principal:
        """A principal for the hub's own writes (a warehouse worker): a connection row of its
        own, created revoked and with no token anyone holds, so that each process gets one
        without touching another's and without leaving a live credential behind."""
        async with self.writer.begin() as conn:
            account_id = await self._ensure_account(conn, account_name, "UTC")
            now = self.clock()
            connection_id = await conn.scalar(
                insert(connections)
                .values(
                    account_id=account_id,
                    name=connection_name,
                    token_hash=hash_token(secrets.token_urlsafe(32)),
                    created_at=now,
                    revoked_at=now,
                )
                .returning(connections.c.id)
            )
        return Principal(int(connection_id), connection_name, account_id, account_name)

    async def revoke_connection(self, account_name: str, connection_name: str) -> int:
        """Revoke every live token of that connection; how many were revoked. Refused from the
        next request on, in every process (`authenticate` reads the database each time)."""
        account_ids = select(accounts.c.id).where(accounts.c.name == account_name)
        async with self.writer.begin() as conn:
            result = await conn.execute(
                update(connections)
                .where(
                    connections.c.account_id.in_(account_ids.scalar_subquery()),
                    connections.c.name == connection_name,
                    connections.c.revoked_at.is_(None),
                )
                .values(revoked_at=self.clock())
            )
        return int(result.rowcount)

    async def list_connections(self) -> list[ConnectionInfo]:
        """Every connection (one row per token ever issued), by account then creation; the
        token itself is never kept, so never listed."""
        query = (
            select(
                connections.c.id,
                accounts.c.name,
                connections.c.name,
                connections.c.created_at,
                connections.c.revoked_at,
            )
            .join(accounts, accounts.c.id == connections.c.account_id)
            .order_by(accounts.c.name, connections.c.created_at, connections.c.id)
        )
        async with self.reader.connect() as conn:
            rows = (await conn.execute(query)).all()
        return [
            ConnectionInfo(int(r[0]), str(r[1]), str(r[2]), int(r[3]), _opt_int(r[4])) for r in rows
        ]

    async def rotate_token(self, account_name: str, connection_name: str) -> str:
        """A new token for the connection's newest live row, its old token and any other live
        one of that connection revoked, in one transaction: no instant where both work or
        neither does. The row (its id) stays, so quotas, HubRise callbacks and private refs
        keep following the connection. `NotFound` if it has no live token."""
        token = TOKEN_PREFIX + secrets.token_urlsafe(32)
        live = (
            select(connections.c.id)
            .join(accounts, accounts.c.id == connections.c.account_id)
            .where(
                accounts.c.name == account_name,
                connections.c.name == connection_name,
                connections.c.revoked_at.is_(None),
            )
            .order_by(connections.c.created_at.desc(), connections.c.id.desc())
            .with_for_update(of=connections)
        )
        async with self.writer.begin() as conn:
            ids = [int(i) for i in (await conn.scalars(live)).all()]
            if not ids:
                raise NotFound(
                    f"no live token for connection {connection_name!r} of account {account_name!r}"
                )
            await conn.execute(
                update(connections)
                .where(connections.c.id == ids[0])
                .values(token_hash=hash_token(token))
            )
            if ids[1:]:
                await conn.execute(
                    update(connections)
                    .where(connections.c.id.in_(ids[1:]))
                    .values(revoked_at=self.clock())
                )
        return token

    async def set_account(
        self, name: str, *, timezone: str | None = None, currency: str | None = None
    ) -> AccountInfo:
        """Change an existing account's time zone and/or currency (validated by the caller);
        `NotFound` names the accounts there are. Returns the account as it now is."""
        values = {
            k: v for k, v in (("timezone", timezone), ("currency", currency)) if v is not None
        }
        async with self.writer.begin() as conn:
            if values:
                await conn.execute(update(accounts).where(accounts.c.name == name).values(values))
            row = (
                await conn.execute(
                    select(accounts.c.name, accounts.c.timezone, accounts.c.currency).where(
                        accounts.c.name == name
                    )
                )
            ).first()
            if row is None:
                known = (
                    await conn.scalars(select(accounts.c.name).order_by(accounts.c.name))
                ).all()
                listed = ", ".join(map(str, known)) or "none yet"
                raise NotFound(f"no account {name!r} (accounts: {listed})")
        return AccountInfo(str(row[0]), str(row[1]), str(row[2]))

    async def list_accounts(self) -> list[AccountInfo]:
        async with self.reader.connect() as conn:
            rows = (
                await conn.execute(
                    select(accounts.c.name, accounts.c.timezone, accounts.c.currency).order_by(
                        accounts.c.name
                    )
                )
            ).all()
        return [AccountInfo(str(r[0]), str(r[1]), str(r[2])) for r in rows]

    async def entity_counts(self) -> dict[str, dict[str, int]]:
        """Orders and shipments per account name: {"acme": {"orders": 3, "shipments": 1}}.
        Index-only counts (account_id leads an index of each table)."""
        counts: dict[str, dict[str, int]] = {}
        async with self.reader.connect() as conn:
            for kind, table in (("orders", orders), ("shipments", shipments)):
                rows = await conn.execute(
                    select(accounts.c.name, func.count())
                    .select_from(table.join(accounts, accounts.c.id == table.c.account_id))
                    .group_by(accounts.c.name)
                )
                for name, n in rows:
                    counts.setdefault(str(name), {"orders": 0, "shipments": 0})[kind] = int(n)
        return counts

    async def event_log_head(self) -> int:
        """The event log's head: every event id up to it is final (`events.frontier` - 1)."""
        async with self.reader.connect() as conn:
            return await frontier(conn) - 1

    # -- reads -----------------------------------------------------------------------------

    async def get_order_doc(self, account_id: int, order_id: str) -> str:
        return await self._get_doc(orders, account_id, order_id, "order")

    async def get_shipment_doc(self, account_id: int, shipment_id: str) -> str:
        return await self._get_doc(shipments, account_id, shipment_id, "shipment")

    async def get_order(self, account_id: int, order_id: str) -> Order:
        return Order.model_validate_json(await self.get_order_doc(account_id, order_id))

    async def _get_doc(self, table: Any, account_id: int, entity_id: str, kind: str) -> str:
        async with self.reader.connect() as conn:
            doc = await conn.scalar(
                select(table.c.doc).where(table.c.account_id == account_id, table.c.id == entity_id)
            )
        if doc is None:
            raise NotFound(f"no {kind} with id {entity_id}")
        return str(doc)

    async def list_orders(
        self, account_id: int, query: ListQuery, *, summary: bool = False
    ) -> Page:
        return await self._list(orders, "order", account_id, query, summary)

    async def list_shipments(
        self, account_id: int, query: ListQuery, *, summary: bool = False
    ) -> Page:
        return await self._list(shipments, "shipment", account_id, query, summary)

    async def _list(
        self, table: Any, kind: str, account_id: int, query: ListQuery, summary: bool
    ) -> Page:
        statements = _list_statements(
            table,
            kind,
            summary,
            bool(query.ids),
            query.since is not None,
            bool(query.statuses),
            query.since is not None and query.after_id is not None,
        )
        params = _list_params(account_id, query)
        # One round trip: `total` is the last column of every row. Only an empty page (past the
        # end, or nothing matches) needs the total on its own.
        reads = self._sqlite_reads
        if reads is not None:

            def read(connection: Any) -> tuple[list[Any], Any]:
                rows = reads.execute(connection, statements.page, params)
                if rows:
                    return rows, rows[0][-1]
                return rows, reads.execute(connection, statements.total, params)[0][0]

            # A polling read is small and bounded: at most offset + limit index entries, the
            # documents of one page, an exact count over one second of rows and a few dozen
            # counter rows; about 0.5 ms of SQLite on a warm cache. Running it right on the
            # event loop costs less than the hop to a reader thread and back (measured: 1.5-1.8
            # instead of 2.0-2.1 ms of hub CPU per 100-order page, 8 pollers) and avoids GIL
            # handoffs. A status filter (it may skip any number of rows of other statuses) or a
            # large offset can make a read long: those go to a reader thread, so that they
            # never stall the other requests.
            inline = not query.statuses and query.offset <= _SQLITE_INLINE_MAX_OFFSET
            rows, total = await reads.run(read, inline=inline)
        else:
            async with self.reader.connect() as conn:
                # Autocommit: the statement is its own transaction, without the BEGIN and the
                # ROLLBACK (when the pool takes the connection back) that cost a round trip each.
                await conn.execution_options(isolation_level="AUTOCOMMIT")
                rows = list((await conn.execute(statements.page, params)).all())
                total = rows[0][-1] if rows else await conn.scalar(statements.total, params)
        items = [_summary(kind, row) for row in rows] if summary else [row[0] for row in rows]
        return Page(items, int(total or 0), [row[-2] for row in rows])

    async def versions(self, account_id: int, kind: str) -> dict[str, int]:
        """Every id of `kind` ("order" or "shipment") in the account with its version: the
        platform's side of a sync proof."""
        table = orders if kind == "order" else shipments
        async with self.reader.connect() as conn:
            rows = await conn.execute(
                select(table.c.id, table.c.version).where(table.c.account_id == account_id)
            )
            return {str(r[0]): int(r[1]) for r in rows}

    async def ids_in_status(
        self, account_id: int, status: str, *, limit: int, updated_before: int | None = None
    ) -> list[str]:
        """Oldest-first ids of orders in `status` (the warehouse simulator's work queue)."""
        where = [orders.c.account_id == account_id, orders.c.status == status]
        if updated_before is not None:
            where.append(orders.c.updated_at < updated_before)
        async with self.reader.connect() as conn:
            rows = await conn.execute(
                select(orders.c.id).where(*where).order_by(orders.c.updated_at).limit(limit)
            )
            return [str(r[0]) for r in rows]

    # -- writes ----------------------------------------------------------------------------

    async def create_orders(
        self, principal: Principal, items: Sequence[NewOrder]
    ) -> list[CreateResult]:
        """Create each order or refuse it on its own; the created ones commit together."""
        async with self._writing() as conn:
            return await self.insert_orders(conn, principal, items)

    async def create_orders_answered(
        self,
        principal: Principal,
        items: Sequence[NewOrder],
        answer: Callable[[list[CreateResult]], T],
    ) -> T:
        """`create_orders`, the client's answer built by `answer(results)` before the commit:
        an answer that cannot be built (a rendering error) rolls the orders back, so a client
        never gets an error for orders that were saved."""
        async with self._writing() as conn:
            return await settle(conn, answer(await self.insert_orders(conn, principal, items)))

    @contextlib.asynccontextmanager
    async def writing(self, conn: AsyncConnection | None) -> AsyncIterator[AsyncConnection]:
        """The caller's transaction `conn`, or a new write transaction when None: a write
        method so called becomes one step of a larger transaction."""
        if conn is not None:
            yield conn
            return
        async with self._writing() as new:
            yield new

    async def insert_orders(
        self, conn: AsyncConnection, principal: Principal, items: Sequence[NewOrder]
    ) -> list[CreateResult]:
        """`create_orders` inside the caller's transaction `conn`; results in request order.

        No check-then-insert: one `INSERT ... ON CONFLICT (account_id, customer_identifier) DO
        NOTHING RETURNING` decides, so an identifier a concurrent writer takes (committed or
        still in flight: PostgreSQL waits for it) is refused here as a duplicate instead of
        failing the whole batch. Rows go in sorted by identifier: two batches sharing
        identifiers take their unique-index entries in the same order and queue rather than
        deadlock. Changes and counters are written for the inserted rows only. Once the
        account has a catalogue (`ordersync.store.inventory`), an order naming a SKU not in it
        is refused, naming the line's field.
        """
        account_id = principal.account_id
        results: list[CreateResult] = []
        candidates: dict[str, tuple[int, Order, int]] = {}  # identifier -> (index, order, stamp)
        unknown = await unknown_skus(conn, account_id, items)
        for index, item in enumerate(items):
            identifier = item.customer_identifier
            if not _storable(identifier):
                results.append(_unstorable(identifier))
                continue
            if unknown and (refused := unknown_sku_errors(item, unknown)):
                results.append(CreateResult(identifier, errors=refused))
                continue
            if identifier in candidates:  # the first of a batch wins, as if sent one by one
                results.append(_duplicate(identifier))
                continue
            stamp = self.clock()
            order = stamp_change(
                None,
                Order(
                    **item.model_dump(),
                    id=str(uuid.uuid4()),
                    created_at=format_rfc3339(stamp),
                    updated_at=format_rfc3339(stamp),
                ),
                format_rfc3339(stamp),
                principal.connection_name,
            )
            candidates[identifier] = (index, order, stamp)
            results.append(CreateResult(identifier, order))
        if not candidates:
            return results
        # Ids for every candidate, once per transaction; a refused duplicate leaves a gap.
        event_ids = await allocate_event_ids(conn, len(candidates))
        rows = {}
        for (identifier, (_, order, stamp)), event_id in zip(
            candidates.items(), event_ids, strict=True
        ):
            rows[identifier] = _order_row(order, account_id, stamp, stamp, principal)
            rows[identifier]["event_id"] = event_id
        ordered = sorted(rows.items())
        inserted = set(
            (
                await conn.execute(
                    _insert_orders_statement(conn.dialect.name), [r for _, r in ordered]
                )
            )
            .scalars()
            .all()
        )
        change_rows, deltas = [], CountDeltas()
        for identifier, (index, order, stamp) in candidates.items():  # in request order
            if identifier not in inserted:
                results[index] = _duplicate(identifier)
                continue
            change_row = _change_row(account_id, "order", order, "order.created", principal, stamp)
            change_row["event_id"] = rows[identifier]["event_id"]
            change_rows.append(change_row)
            deltas.add(account_id, "order", order.status, stamp, +1)
        if change_rows:
            await conn.execute(insert(changes), change_rows)
            await deltas.apply(conn)
        return results

    async def transition_order(
        self,
        principal: Principal | None,
        account_id: int,
        order_id: str,
        target: OrderStatus,
        *,
        conn: AsyncConnection | None = None,
    ) -> Order:
        """Move an order to `target`; `InvalidTransition` says why when the lifecycle forbids it."""

        def change(order: Order) -> Order:
            check_transition(order.status, target)
            return order.model_copy(update={"status": target})

        return await self.update_order(
            principal, account_id, order_id, change, f"order.{target}", conn=conn
        )

    async def update_order(
        self,
        principal: Principal | None,
        account_id: int,
        order_id: str,
        change: Callable[[Order], Order],
        event_type: str,
        *,
        conn: AsyncConnection | None = None,
    ) -> Order:
        async with self.writing(conn) as conn:
            row = await _locked_row(conn, orders, account_id, order_id, "order")
            before = Order.model_validate_json(row.doc)
            stamp = _next_stamp(self.clock(), row)
            after = stamp_change(
                before,
                change(before),
                format_rfc3339(stamp),
                principal.connection_name if principal else None,
            )
            (event_id,) = await allocate_event_ids(conn, 1)
            await conn.execute(
                update(orders)
                .where(orders.c.id == order_id)
                .values(
                    _order_row(after, account_id, int(row.created_at), stamp, principal)
                    | {"event_id": event_id}
                )
            )
            await _record_change(
                conn,
                "order",
                account_id,
                after,
                event_type,
                principal,
                stamp,
                (str(row.status), int(row.updated_at)),
                event_id,
            )
        return after

    async def update_orders(
        self,
        principal: Principal | None,
        account_id: int,
        edits: Sequence[tuple[str, Callable[[Order], Order], str]],
        *,
        conn: AsyncConnection | None = None,
    ) -> list[Order]:
        """`update_order` for many orders, `(order_id, change, event_type)` each, in one
        transaction and with one statement per part of the write (lock, update, change rows,
        count deltas) instead of one per order: the warehouse moves orders in batches. Rows are
        locked in id order; each order may appear once. The orders after, in `edits` order."""
        if not edits:
            return []
        ids = [order_id for order_id, _, _ in edits]
        if len(set(ids)) != len(ids):
            raise ValueError("each order may appear once in update_orders")
        async with self.writing(conn) as conn:
            found = await conn.execute(
                select(orders)
                .where(orders.c.account_id == account_id, orders.c.id.in_(sorted(ids)))
                .order_by(orders.c.id)
                .with_for_update()
            )
            rows = {str(row.id): row for row in found}
            missing = [order_id for order_id in ids if order_id not in rows]
            if missing:
                raise NotFound(f"no order with id {missing[0]}")
            event_ids = await allocate_event_ids(conn, len(edits))
            now = self.clock()
            by = principal.connection_name if principal else None
            updated, change_rows, deltas = [], [], CountDeltas()
            results = []
            for (order_id, change, event_type), event_id in zip(edits, event_ids, strict=True):
                row = rows[order_id]
                before = Order.model_validate_json(row.doc)
                stamp = _next_stamp(now, row)
                after = stamp_change(before, change(before), format_rfc3339(stamp), by)
                values = _order_row(after, account_id, int(row.created_at), stamp, principal)
                updated.append({f"b_{k}": v for k, v in (values | {"event_id": event_id}).items()})
                change_row = _change_row(account_id, "order", after, event_type, principal, stamp)
                change_rows.append(change_row | {"event_id": event_id})
                deltas.move(
                    account_id,
                    "order",
                    (str(row.status), int(row.updated_at)),
                    (after.status, stamp),
                )
                results.append(after)
            await conn.execute(_UPDATE_ORDERS, updated)
            await conn.execute(insert(changes), change_rows)
            await deltas.apply(conn)
        return results

    async def create_shipment(
        self,
        principal: Principal | None,
        account_id: int,
        new: NewShipment,
        *,
        status: ShipmentStatus = ShipmentStatus.SHIPPED,
        conn: AsyncConnection | None = None,
    ) -> Shipment:
        """A new shipment of an order, `shipped` (with `shipped_at`) or `manifested` (packed,
        its label printed: `shipped_at` comes with the move to `shipped`)."""
        async with self.writing(conn) as conn:
            order_row = await _locked_row(conn, orders, account_id, new.order_id, "order")
            stamp = self.clock()
            shipment = Shipment(
                **new.model_dump(),
                id=str(uuid.uuid4()),
                customer_identifier=str(order_row.customer_identifier),
                status=status,
                shipped_at=None if status is ShipmentStatus.MANIFESTED else format_rfc3339(stamp),
                created_at=format_rfc3339(stamp),
                updated_at=format_rfc3339(stamp),
            )
            (event_id,) = await allocate_event_ids(conn, 1)
            await conn.execute(
                insert(shipments).values(
                    _shipment_row(shipment, account_id, stamp, stamp, principal)
                    | {"event_id": event_id}
                )
            )
            await _record_change(
                conn,
                "shipment",
                account_id,
                shipment,
                "shipment.created",
                principal,
                stamp,
                None,
                event_id,
            )
        return shipment

    async def transition_shipment(
        self,
        principal: Principal | None,
        account_id: int,
        shipment_id: str,
        target: ShipmentStatus,
        *,
        conn: AsyncConnection | None = None,
    ) -> Shipment:
        async with self.writing(conn) as conn:
            row = await _locked_row(conn, shipments, account_id, shipment_id, "shipment")
            before = Shipment.model_validate_json(row.doc)
            stamp = _next_stamp(self.clock(), row)
            after = before.model_copy(
                update={
                    "status": target,
                    "version": before.version + 1,
                    "updated_at": format_rfc3339(stamp),
                    "shipped_at": before.shipped_at or format_rfc3339(stamp),
                }
            )
            (event_id,) = await allocate_event_ids(conn, 1)
            await conn.execute(
                update(shipments)
                .where(shipments.c.id == shipment_id)
                .values(
                    _shipment_row(after, account_id, int(row.created_at), stamp, principal)
                    | {"event_id": event_id}
                )
            )
            await _record_change(
                conn,
                "shipment",
                account_id,
                after,
                f"shipment.{target}",
                principal,
                stamp,
                (str(row.status), int(row.updated_at)),
                event_id,
            )
        return after


# One UPDATE run for many orders (executemany): parameters are named b_<column>.
_UPDATE_ORDERS = (
    update(orders)
    .where(orders.c.id == bindparam("b_id"))
    .values(
        {
            name: bindparam(f"b_{name}")
            for name in (
                "account_id",
                "customer_identifier",
                "status",
                "version",
                "created_at",
                "updated_at",
                "updated_by",
                "doc",
                "event_id",
            )
        }
    )
)

_AUTHENTICATE = (
    select(connections.c.id, connections.c.name, accounts.c.id, accounts.c.name)
    .join(accounts, accounts.c.id == connections.c.account_id)
    .where(
        connections.c.token_hash == bindparam("token_hash"),
        connections.c.revoked_at.is_(None),
    )
)


@dataclass(frozen=True)
class _ListStatements:
    page: Any  # the page's columns, then `total`
    total: Any  # `total` alone


@functools.cache
def _list_statements(
    table: Any,
    kind: str,
    summary: bool,
    has_ids: bool,
    has_since: bool,
    has_statuses: bool,
    has_after: bool = False,
) -> _ListStatements:
    """A listing's statements, built once per shape; `_list_params` gives their values.

    Building a statement and its cache key costs more Python than running it: per page, that
    was ~2.7 ms of the ~5 ms a page took. The shapes are few (table, columns, which filters).
    """
    c = table.c
    where = [c.account_id == bindparam("account_id")]
    if has_ids:
        where.append(c.id.in_(bindparam("ids", expanding=True)))
    if has_since:
        where.append(c.updated_at >= bindparam("since"))
    if has_statuses:
        where.append(c.status.in_(bindparam("statuses", expanding=True)))

    if has_ids:  # at most 30 rows: count them
        total = select(func.count()).select_from(table).where(*where).scalar_subquery()
    else:  # the rows of since's own second one by one, the rest from the bucket counters
        exact_part = (
            select(func.count())
            .select_from(table)
            .where(*where, c.updated_at < bindparam("exact_until"))
            .scalar_subquery()
        )
        total = exact_part + bucket_total_query(kind, has_statuses)

    columns = (
        [c.id, c.status, c.version, c.updated_at, c.doc]
        if summary and kind == "shipment"
        else [c.id, c.customer_identifier, c.status, c.version, c.updated_at]
        if summary
        else [c.doc]
    )
    columns.append(c.event_id)  # next to last: `Page.event_ids`
    # `total` is uncorrelated: SQLite and PostgreSQL evaluate it once per statement, not per row.
    page_where = list(where)
    if has_after:  # the keyset continuation skips the anchor's rows up to after_id
        page_where.append(or_(c.updated_at > bindparam("since"), c.id > bindparam("after_id")))
    page = (
        select(*columns, total.label("total"))
        .where(*page_where)
        .order_by(c.updated_at, c.id)
        .limit(bindparam("limit", type_=Integer))
        .offset(bindparam("offset", type_=BigInteger))
    )
    return _ListStatements(page, select(total))


def _list_params(account_id: int, query: ListQuery) -> dict[str, Any]:
    params: dict[str, Any] = {
        "account_id": account_id,
        "limit": query.limit,
        "offset": query.offset,
    }
    if query.ids:
        params["ids"] = list(query.ids)
    if query.since is not None:
        params["since"] = query.since
        if query.after_id is not None:
            params["after_id"] = query.after_id
    if query.statuses:
        params["statuses"] = list(query.statuses)
    if not query.ids:
        since = query.since or 0
        params["exact_until"] = exact_until(since)
        params.update(bucket_params(since))
    return params


@functools.cache
def _insert_orders_statement(dialect: str) -> Any:
    """The batch create's INSERT, built (and compiled) once per dialect: executed with a list of
    rows, SQLAlchemy sends them as one multi-row INSERT in the list's order ("insertmanyvalues")
    and returns the identifiers actually inserted."""
    return (
        (postgresql.insert if dialect == "postgresql" else sqlite.insert)(orders)
        .on_conflict_do_nothing(index_elements=["account_id", "customer_identifier"])
        .returning(orders.c.customer_identifier)
    )


def _dialect_insert(conn: AsyncConnection, table: Any) -> Any:
    """INSERT with the dialect's ON CONFLICT clause (both PostgreSQL and SQLite have one)."""
    return (postgresql.insert if conn.dialect.name == "postgresql" else sqlite.insert)(table)


async def unknown_skus(
    conn: AsyncConnection, account_id: int, items: Sequence[NewOrder]
) -> set[str]:
    """The SKUs of `items` not in the account's catalogue; none when it has no catalogue (an
    account that never registered a SKU takes any, as before inventory existed)."""
    wanted = {line.sku_customer_identifier for item in items for line in item.line_items}
    if not wanted:
        return set()
    has_catalogue = select(skus.c.id).where(skus.c.account_id == account_id).limit(1)
    if (await conn.execute(has_catalogue)).first() is None:
        return set()
    known = await conn.execute(
        select(skus.c.sku).where(skus.c.account_id == account_id, skus.c.sku.in_(wanted))
    )
    return wanted - {str(r[0]) for r in known}


def unknown_sku_errors(item: NewOrder, unknown: set[str]) -> list[tuple[str, str]]:
    return [
        (
            f"line_items.{i}.sku_customer_identifier",
            f"unknown SKU {line.sku_customer_identifier!r}: not in this account's catalogue",
        )
        for i, line in enumerate(item.line_items)
        if line.sku_customer_identifier in unknown
    ]


def _storable(customer_identifier: str) -> bool:
    # PostgreSQL text columns cannot hold NUL, not even as a query parameter; refusing it on
    # SQLite too keeps both backends answering alike. (Inside `doc` a NUL is JSON-escaped.)
    return "\x00" not in customer_identifier


def _unstorable(customer_identifier: str) -> CreateResult:
    return CreateResult(
        customer_identifier,
        errors=[("customer_identifier", "must not contain NUL (\\u0000) characters")],
    )


def _duplicate(customer_identifier: str) -> CreateResult:
    return CreateResult(
        customer_identifier,
        errors=[
            (
                "customer_identifier",
                f"an order with customer_identifier {customer_identifier!r} already exists",
            )
        ],
    )


def _summary(kind: str, row: Sequence[Any]) -> dict[str, Any]:
    if kind == "shipment":
        doc = orjson.loads(row[4])
        return {
            "id": row[0],
            "order_id": doc["order_id"],
            "status": row[1],
            "version": row[2],
            "tracking_number": doc["tracking_number"],
            "updated_at": format_rfc3339(row[3]),
        }
    return {
        "id": row[0],
        "customer_identifier": row[1],
        "status": row[2],
        "version": row[3],
        "updated_at": format_rfc3339(row[4]),
    }


async def _locked_row(
    conn: AsyncConnection, table: Any, account_id: int, entity_id: str, kind: str
) -> Row[Any]:
    row = (
        await conn.execute(
            select(table)
            .where(table.c.account_id == account_id, table.c.id == entity_id)
            .with_for_update()
        )
    ).first()
    if row is None:
        raise NotFound(f"no {kind} with id {entity_id}")
    return row


async def _record_change(
    conn: AsyncConnection,
    kind: str,
    account_id: int,
    entity: Order | Shipment,
    event_type: str,
    principal: Principal | None,
    stamp: int,
    before: tuple[str, int] | None,
    event_id: int,
) -> None:
    await conn.execute(
        insert(changes).values(
            _change_row(account_id, kind, entity, event_type, principal, stamp)
            | {"event_id": event_id}
        )
    )
    deltas = CountDeltas()
    if before is None:
        deltas.add(account_id, kind, entity.status, stamp, +1)
    else:
        deltas.move(account_id, kind, before, (entity.status, stamp))
    await deltas.apply(conn)


def _next_stamp(now: int, row: Row[Any]) -> int:
    """The next version's `updated_at`: strictly after the previous one's, even when the
    writing host's clock is behind the host that wrote it (or the clock did not move)."""
    return max(now, int(row.updated_at) + 1)


# query_canceled (statement_timeout) and idle_in_transaction_session_timeout
_TIMEOUT_SQLSTATES = frozenset({"57014", "25P03"})


def _timed_out(exc: DBAPIError) -> bool:
    return getattr(exc.orig, "sqlstate", None) in _TIMEOUT_SQLSTATES


def _bound_sessions(engine: AsyncEngine, timeout_ms: int) -> None:
    """Every PostgreSQL session of `engine` cuts a statement, and a transaction left idle, at
    `timeout_ms`: a commit can then never become visible long after its stamp, and no hub
    connection can hold the event log's frontier (the cluster's xmin) back for long."""

    @event.listens_for(engine.sync_engine, "connect")
    def _on_connect(dbapi_connection: Any, _record: Any) -> None:
        autocommit = dbapi_connection.autocommit
        dbapi_connection.autocommit = True
        cursor = dbapi_connection.cursor()
        cursor.execute(f"SET statement_timeout = {int(timeout_ms)}")
        cursor.execute(f"SET idle_in_transaction_session_timeout = {int(timeout_ms)}")
        cursor.close()
        dbapi_connection.autocommit = autocommit


def _order_row(
    order: Order, account_id: int, created: int, updated: int, principal: Principal | None
) -> dict[str, Any]:
    return {
        "id": order.id,
        "account_id": account_id,
        "customer_identifier": order.customer_identifier,
        "status": str(order.status),
        "version": order.version,
        "created_at": created,
        "updated_at": updated,
        "updated_by": principal.connection_id if principal else None,
        "doc": order.model_dump_json(),
    }


def _shipment_row(
    shipment: Shipment, account_id: int, created: int, updated: int, principal: Principal | None
) -> dict[str, Any]:
    return {
        "id": shipment.id,
        "account_id": account_id,
        "order_id": shipment.order_id,
        "status": str(shipment.status),
        "version": shipment.version,
        "created_at": created,
        "updated_at": updated,
        "updated_by": principal.connection_id if principal else None,
        "doc": shipment.model_dump_json(),
    }


def _change_row(
    account_id: int,
    kind: str,
    entity: Order | Shipment,
    event_type: str,
    principal: Principal | None,
    stamp: int,
) -> dict[str, Any]:
    return {
        "account_id": account_id,
        "entity_kind": kind,
        "entity_id": entity.id,
        "version": entity.version,
        "event_type": event_type,
        "connection_id": principal.connection_id if principal else None,
        "created_at": stamp,
    }
