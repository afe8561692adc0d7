"""The shapes between sources, the engine and sinks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any

from ordersync.domain.snapshots import Snapshot
from ordersync.kinds import by_name
from ordersync.wire import WireError

Kind = str  # the name of a kind registered in `ordersync.kinds`: "order", "shipment"


@dataclass(frozen=True, slots=True)
class Record:
    """One version of one entity, as a source served it.

    `data` is the platform's document exactly as received (its own field names; numbers as
    they were sent): sinks store it, nothing reinterprets it. `snapshot` is what the dialect's
    codec read from it, and what sinks index. A document whose id, version and updated time
    are readable but whose body the codec refuses has no snapshot and a `problem` saying what
    is wrong (field and value): the sink must not store it as if it were fine. `echo` marks a
    change the agent's own connection made (Tradecloud's `lastUpdatedBy`)."""

    kind: Kind
    id: str
    version: int
    updated_at_ms: int
    data: dict[str, Any]
    snapshot: Snapshot | None = None
    problem: str | None = None
    echo: bool = False
    dialect: str = ""  # the codec that read it (`ordersync.kinds`), to read it again

    @property
    def key(self) -> str:
        """The idempotency key of this change: `id:version`."""
        return f"{self.id}:{self.version}"

    @property
    def document(self) -> dict[str, Any]:
        """What sinks keep of the change: the document as received, with `"echo": true` beside
        the platform's own fields when the agent recognised the change as its own."""
        return {**self.data, "echo": True} if self.echo else self.data


def decode_record(
    kind: Kind,
    dialect: str,
    document: Any,
    *,
    data: dict[str, Any] | None = None,
    echo: bool = False,
    summary: bool = False,
) -> Record:
    """A record of `document` read with the dialect's codec for `kind` (`ordersync.kinds`).
    `data` replaces the document as kept (e.g. with exact numbers); `summary` listings carry
    ids and versions only, so only the head is read. WireError when not even the head (id,
    version, updated time) is readable: the caller cannot place the record at all."""
    codec = by_name(kind).codecs[dialect]
    kept = document if data is None else data
    if summary:
        head = codec.head(document)
        return Record(
            kind, head.id, head.version, head.updated_at_ms, kept, echo=echo, dialect=dialect
        )
    try:
        snapshot = codec.parse(document)
    except WireError as exc:
        head = codec.head(document)
        problem = f"{kind} {head.id}: {exc}"
        return Record(
            kind, head.id, head.version, head.updated_at_ms, kept, None, problem, echo, dialect
        )
    return Record(
        kind,
        snapshot.id,
        snapshot.version,
        snapshot.updated_at_ms,
        kept,
        snapshot,
        echo=echo,
        dialect=dialect,
    )


@dataclass(frozen=True, slots=True)
class FetchedPage:
    """One listing page, ascending by (updated_at, id), with the server's clock when known."""

    records: list[Record]
    server_time_ms: int | None
    keyset: bool = False  # the server continues listings with `after_id` (see paging.py)


@dataclass(frozen=True, slots=True)
class Cursor:
    """How far a stream is drained: (updated_at, id) of the last record whose page committed,
    capped so that late commits inside the lookback are re-read (see engine)."""

    updated_at_ms: int
    last_id: str = ""


# HubRise's backfill walks newest first: its position descends to (0, "") at the end.
DESCENDING_SUFFIX = "-backfill"


def descends(stream: str) -> bool:
    """True for a stream whose position moves down (a newest-first backfill walk)."""
    return stream.endswith(DESCENDING_SUFFIX)


def may_replace(stream: str, stored: Cursor | None, new: Cursor) -> bool:
    """Whether `new` may replace `stored`: equal or further along the stream's direction. No
    feed yields a position that may not, and no sink stores one."""
    if stored is None:
        return True
    new_at, stored_at = (new.updated_at_ms, new.last_id), (stored.updated_at_ms, stored.last_id)
    return new_at <= stored_at if descends(stream) else new_at >= stored_at


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int
    duplicates: int
    quarantined: int = 0  # records of the page the sink could not store (see sinks/quarantine)
