"""What the engine needs from a sink: an atomic page apply that also moves the cursor."""

from __future__ import annotations

import asyncio
from collections.abc import Awaitable, Callable, Sequence
from typing import TYPE_CHECKING, Protocol

from ordersync.agent.records import ApplyResult, Cursor, Kind, Record

if TYPE_CHECKING:
    from ordersync.agent.sinks.checkpoint_file import CheckpointFile

# Tests crash a sink at named points of a page apply: "mid_apply" (entities written, the
# at-most-once ledger not yet), "before_cursor" and "after_cursor" (inside the page's
# transaction, or around the checkpoint file for file-backed sinks).
FaultHook = Callable[[str], None]


class Sink(Protocol):
    async def load_cursor(self, source: str, stream: str) -> Cursor | None:
        """The cursor committed with the last applied page; None before the first."""
        ...

    async def apply_page(
        self, source: str, stream: str, records: Sequence[Record], new_cursor: Cursor
    ) -> ApplyResult:
        """Apply each record if newer than what the sink holds, then store `new_cursor`; all
        or nothing for SQL sinks, cursor strictly after the writes are durable for others."""
        ...

    async def load_versions(self, source: str, kind: Kind) -> dict[str, int]:
        """id -> version of every entity the sink holds (for verification)."""
        ...

    async def close(self) -> None: ...


class PipelinedSink(Sink, Protocol):
    """A sink that can take the next page before the last one committed (SQLite's writer
    process). The engine uses `submit_page` when a sink has it, and `apply_page` otherwise."""

    async def submit_page(
        self,
        source: str,
        stream: str,
        records: Sequence[Record],
        new_cursor: Cursor,
        base: Cursor | None,
    ) -> Awaitable[ApplyResult]:
        """Send the page on its way; await the result for its commit. Pages apply in the order
        sent, and each only if the stored cursor is still `base` (None: none yet): a page sent
        behind one that failed is refused, never applied past the gap."""
        ...


def settled(result: ApplyResult) -> Awaitable[ApplyResult]:
    """The outcome of a page already applied, for `PipelinedSink.submit_page`'s callers."""
    future: asyncio.Future[ApplyResult] = asyncio.get_running_loop().create_future()
    future.set_result(result)
    return future


def latest_per_id(records: Sequence[Record]) -> dict[tuple[str, str], Record]:
    """The highest version of each (kind, id) in a page (a page may repeat an entity)."""
    latest: dict[tuple[str, str], Record] = {}
    for record in records:
        key = (record.kind, record.id)
        held = latest.get(key)
        if held is None or record.version > held.version:
            latest[key] = record
    return latest


def fire(hook: FaultHook | None, step: str) -> None:
    if hook is not None:
        hook(step)


class HeldVersions:
    """For sinks that remember, per (source, kind, id), the newest version they delivered and
    keep their cursors in a checkpoint file (JSONL, HTTP): the shared bookkeeping."""

    checkpoints: CheckpointFile
    _held: dict[tuple[str, str, str], int]

    async def load_cursor(self, source: str, stream: str) -> Cursor | None:
        return self.checkpoints.load(source, stream)

    async def load_versions(self, source: str, kind: Kind) -> dict[str, int]:
        return {i: v for (s, k, i), v in self._held.items() if s == source and k == kind}

    def newer_than_held(self, source: str, records: Sequence[Record]) -> list[Record]:
        """The latest version of each entity of the page, when newer than what was delivered."""
        return [
            r
            for r in latest_per_id(records).values()
            if r.version > self._held.get((source, r.kind, r.id), 0)
        ]
