"""The lease: one agent owns a replica per source; a second one waits as hot standby or is
refused (`standby` in agent.toml).

A PostgreSQL replica is leased with session-level advisory locks (`pg_try_advisory_lock`, a
key derived from the database and the source), held on a connection of their own for the
agent's life: the server frees them the moment that connection ends, a SIGKILL included. Every
other sink (SQLite, JSONL, the HTTP sink's state) is leased with a lock file beside the replica
or state file (`flock`), which the kernel frees when the process ends; the holder writes its
pid and host into it, so that a second agent can say whom it waits for. A standby polls every
`poll_seconds` and takes over within that time once the holder is gone.

The lease is what keeps two agents from polling one platform twice; the apply itself stays
correct without it (sinks/sql.py), so a lease lost mid-page cannot corrupt the replica.
"""

from __future__ import annotations

import asyncio
import contextlib
import fcntl
import hashlib
import os
import socket
from collections.abc import Awaitable, Callable, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Protocol

import structlog
from sqlalchemy import text
from sqlalchemy.engine import make_url
from sqlalchemy.exc import SQLAlchemyError
from sqlalchemy.ext.asyncio import AsyncConnection, create_async_engine
from sqlalchemy.pool import NullPool

from ordersync.agent.errors import AgentError
from ordersync.store.engine import parse_database_url

log = structlog.get_logger("ordersync.agent.lease")

POLL_SECONDS = 1.0
Sleep = Callable[[float], Awaitable[None]]


class ReplicaInUse(AgentError):
    """Another agent holds the replica and this one was configured not to wait."""

    exit_code = 4


class LeaseError(AgentError):
    """The lease could not be taken or checked (the lock file or the database failed)."""


@dataclass(frozen=True)
class Holder:
    pid: int | None
    host: str | None

    def __str__(self) -> str:
        if self.pid is None:
            return "another agent"
        return f"agent pid {self.pid} on host {self.host or '?'}"

    @classmethod
    def me(cls) -> Holder:
        return cls(os.getpid(), socket.gethostname())

    def tag(self) -> str:
        return f"ordersync-agent pid={self.pid} host={self.host}"

    @classmethod
    def parse(cls, tag: str | None) -> Holder:
        fields = dict(
            part.split("=", 1) for part in (tag or "").split() if "=" in part
        )  # "ordersync-agent pid=N host=H"
        pid = fields.get("pid", "")
        return cls(int(pid) if pid.isdigit() else None, fields.get("host"))


class Locks(Protocol):
    """The locks of one replica, one per source."""

    async def try_take(self, source: str) -> bool: ...
    async def holder(self, source: str) -> Holder: ...
    async def held(self) -> bool:
        """Whether every lock taken is still ours."""
        ...

    async def release(self) -> None: ...


class FileLocks:
    """`<replica>.lease-<source>` files held with `flock` (SQLite, JSONL, HTTP state)."""

    def __init__(self, beside: Path) -> None:
        self._beside = beside
        self._held: dict[str, int] = {}  # source -> open descriptor

    def path(self, source: str) -> Path:
        return self._beside.with_name(f"{self._beside.name}.lease-{source}")

    async def try_take(self, source: str) -> bool:
        path = self.path(source)
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except OSError as exc:
            raise LeaseError(f"cannot open the lease file {path}: {exc}") from exc
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            os.close(fd)
            return False
        if not _same_file(fd, path):  # replaced between open and flock: try the new one later
            os.close(fd)
            return False
        os.ftruncate(fd, 0)
        os.pwrite(fd, (Holder.me().tag() + "\n").encode(), 0)
        self._held[source] = fd
        return True

    async def holder(self, source: str) -> Holder:
        try:
            return Holder.parse(self.path(source).read_text(errors="replace"))
        except OSError:
            return Holder(None, None)

    async def held(self) -> bool:
        return all(_same_file(fd, self.path(source)) for source, fd in self._held.items())

    async def release(self) -> None:
        # The files stay: deleting one would let a third agent lock a new file while a second
        # still holds the old one.
        for fd in self._held.values():
            os.close(fd)
        self._held.clear()


def _same_file(fd: int, path: Path) -> bool:
    try:
        return os.fstat(fd).st_ino == os.stat(path).st_ino
    except OSError:
        return False


class PostgresLocks:
    """Session-level advisory locks on a connection of their own."""

    def __init__(self, url: str) -> None:
        parsed = parse_database_url(url)
        self._database = make_url(parsed.sync_url).database or ""
        self._engine = create_async_engine(
            parsed.async_url,
            poolclass=NullPool,
            connect_args={"application_name": Holder.me().tag()[:63]},
        )
        self._conn: AsyncConnection | None = None
        self._keys: list[int] = []
        self._lost = False  # a session that held locks ended: they are gone for good

    def key(self, source: str) -> int:
        digest = hashlib.sha256(f"ordersync lease {self._database}/{source}".encode()).digest()
        return int.from_bytes(digest[:8], "big", signed=True)

    async def try_take(self, source: str) -> bool:
        key = self.key(source)
        try:
            conn = await self._connection()
            taken = bool(
                (await conn.execute(text("SELECT pg_try_advisory_lock(:k)"), {"k": key})).scalar()
            )
            await conn.commit()  # the lock is the session's: it outlives this transaction
        except SQLAlchemyError as exc:
            await self._drop_connection()
            raise LeaseError(f"cannot take the lease on {self._database}: {exc}") from exc
        if taken:
            self._keys.append(key)
        return taken

    async def holder(self, source: str) -> Holder:
        key = self.key(source) & 0xFFFF_FFFF_FFFF_FFFF
        try:
            conn = await self._connection()
            tag = (
                await conn.execute(
                    text(
                        "SELECT a.application_name FROM pg_locks l "
                        "JOIN pg_stat_activity a ON a.pid = l.pid "
                        "WHERE l.locktype = 'advisory' AND l.granted AND l.objsubid = 1 "
                        "AND l.database = (SELECT oid FROM pg_database "
                        "                  WHERE datname = current_database()) "
                        "AND l.classid = CAST(:high AS oid) AND l.objid = CAST(:low AS oid)"
                    ),
                    {"high": key >> 32, "low": key & 0xFFFF_FFFF},
                )
            ).scalar()
            await conn.commit()
        except SQLAlchemyError:
            await self._drop_connection()
            return Holder(None, None)
        return Holder.parse(tag)

    async def held(self) -> bool:
        if self._lost or self._conn is None:
            return not self._lost and not self._keys
        try:
            count = (
                await self._conn.execute(
                    text(
                        "SELECT count(*) FROM pg_locks WHERE pid = pg_backend_pid() "
                        "AND locktype = 'advisory' AND granted"
                    )
                )
            ).scalar()
            await self._conn.commit()
        except SQLAlchemyError:
            await self._drop_connection()
            return False
        return count == len(self._keys)

    async def release(self) -> None:
        # Unlock first: closing the connection ends the session, but the server lets go of
        # its locks a moment later, and a standby polling then would still find them held.
        if self._conn is not None:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await self._conn.execute(text("SELECT pg_advisory_unlock_all()"))
        await self._drop_connection()  # ending the session frees its advisory locks
        await self._engine.dispose()

    async def _connection(self) -> AsyncConnection:
        if self._conn is None:
            self._conn = await self._engine.connect()
        return self._conn

    async def _drop_connection(self) -> None:
        conn, self._conn = self._conn, None
        self._lost = self._lost or bool(self._keys)
        self._keys.clear()  # an ended session took its locks with it
        if conn is not None:
            with contextlib.suppress(SQLAlchemyError, OSError):
                await conn.close()


def locks_for(url: str, state_path: Path) -> Locks:
    """The replica's locks: advisory locks on PostgreSQL, lock files beside every other
    replica (the SQLite file, the JSONL file) or, for an HTTP sink, beside its state file."""
    scheme = url.partition("://")[0].split("+")[0].lower()
    if scheme in ("postgresql", "postgres"):
        return PostgresLocks(url)
    if scheme == "sqlite":
        return FileLocks(Path(parse_database_url(url).sync_url.removeprefix("sqlite:///")))
    if scheme == "jsonl":
        return FileLocks(Path(url.partition("://")[2]))
    return FileLocks(state_path)


def shown(url: str) -> str:
    """The URL as messages show it: without a password."""
    with contextlib.suppress(Exception):
        return make_url(url).render_as_string(hide_password=True)
    return url


class Lease:
    """The locks of every source of one agent, taken; `release()` frees them."""

    def __init__(self, url: str, locks: Locks) -> None:
        self.url = url
        self.locks = locks

    async def held(self) -> bool:
        try:
            return await self.locks.held()
        except Exception:  # a check that cannot answer counts as lost
            return False

    async def release(self) -> None:
        await self.locks.release()


async def acquire(
    url: str,
    sources: Sequence[str],
    *,
    standby: bool,
    state_path: Path,
    stop: asyncio.Event | None = None,
    announce: Callable[[str], None] = print,
    sleep: Sleep = asyncio.sleep,
    poll_seconds: float = POLL_SECONDS,
    locks: Locks | None = None,
) -> Lease | None:
    """Take the replica for `sources`. If another agent holds it: `ReplicaInUse` when not
    `standby`, else announce one line and poll until it is free (None if `stop` is set first).
    Sources are taken in name order, each kept while waiting for the next, so two agents
    sharing some sources cannot each hold what the other waits for."""
    held_by = locks if locks is not None else locks_for(url, state_path)
    waiting: Holder | None = None
    try:
        for source in sorted(sources):
            while not await held_by.try_take(source):
                holder = await held_by.holder(source)
                line = f"replica {shown(url)} in use by {holder}"
                if not standby:
                    raise ReplicaInUse(f"{line}; refused (standby = false in the config)")
                if waiting is None:
                    announce(f"{line}; waiting as standby")
                waiting = holder
                if stop is not None and stop.is_set():
                    await held_by.release()
                    return None
                await sleep(poll_seconds)
    except BaseException:
        await held_by.release()
        raise
    if waiting is not None:
        log.warning("replica_lease_taken_over", replica=shown(url), previous=str(waiting))
    return Lease(url, held_by)
