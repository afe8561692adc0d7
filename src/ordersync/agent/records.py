"""The neutral shapes between sources, the engine and sinks."""

from __future__ import annotations

from dataclasses import dataclass
from typing import Any, Literal

Kind = Literal["order", "shipment"]


@dataclass(frozen=True, slots=True)
class Record:
    """One version of one entity, as a source served it. `data` is the wire document as
    received (decimals stay JSON strings): sinks store it, nothing reinterprets it."""

    kind: Kind
    id: str
    version: int
    updated_at_ms: int
    data: dict[str, Any]

    @property
    def key(self) -> str:
        """The idempotency key of this change: `id:version`."""
        return f"{self.id}:{self.version}"


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


@dataclass(frozen=True, slots=True)
class ApplyResult:
    applied: int
    duplicates: int
    quarantined: int = 0  # records of the page the sink could not store (see sinks/quarantine)


# The entity kind each stream carries, across dialects.
STREAM_KINDS: dict[str, Kind] = {"orders": "order", "shipments": "shipment"}
