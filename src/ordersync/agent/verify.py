"""Compare a replica with the platform: which ids are missing, stale or extra.

The platform side comes from the summary listing (ids, versions and update times), walked with
the same `TiePager` as the sync so records moving during the walk are not skipped.

Only what the agent has committed is judged. A platform record changed after the stream's
stored position (its `(updated_at, id)` is past the cursor) is *in flight*: the next poll
brings it, so it is counted, not reported as drift. That makes verify usable against a live
platform, as a cron job or health check. The replica and its positions are read before the
platform: a record the platform serves at or below the position was then committed already,
and every id in the replica is on the platform (platforms do not delete), so neither a write
nor a poll landing during verification shows up as drift. A stream without a position (it was
empty when the agent drained it) owes nothing yet; but while no stream of the source has one,
the agent has never synced it, and every record counts as missing.

Records the sink holds in its quarantine (it could not store them; see `sinks.quarantine`) are
listed with why, and the replica is not in sync while any are there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ordersync import kinds
from ordersync.agent.paging import TiePager
from ordersync.agent.records import Cursor
from ordersync.agent.sinks.base import Sink
from ordersync.agent.sinks.quarantine import Quarantined
from ordersync.agent.sources import Source


@dataclass
class StreamReport:
    stream: str
    platform: int = 0
    replica: int = 0
    missing: list[str] = field(default_factory=list)  # on the platform, not in the replica
    stale: list[str] = field(default_factory=list)  # replica holds an older version
    extra: list[str] = field(default_factory=list)  # in the replica, not on the platform
    in_flight: list[str] = field(default_factory=list)  # changed past the position: next poll
    position: Cursor | None = None  # the stream's committed position when verified
    quarantined: list[Quarantined] = field(default_factory=list)  # the sink could not store

    @property
    def ok(self) -> bool:
        return not (self.missing or self.stale or self.extra or self.quarantined)


@dataclass
class VerifyReport:
    source: str
    streams: list[StreamReport]

    @property
    def ok(self) -> bool:
        return all(s.ok for s in self.streams)

    @property
    def quarantined(self) -> int:
        return sum(len(s.quarantined) for s in self.streams)


@dataclass(frozen=True)
class Seen:
    """An id's newest version on the platform, and when it changed."""

    version: int
    updated_at_ms: int


async def platform_versions(source: Source, stream: str, page_size: int = 100) -> dict[str, Seen]:
    pager = TiePager(0, min(page_size, source.max_page_size))
    versions: dict[str, Seen] = {}
    while not pager.done:
        request = pager.next_request()
        page = await source.fetch_page(
            stream, request.since_ms, request.offset, request.limit, summary=True
        )
        for record in pager.accept(request, page.records):
            known = versions.get(record.id)
            if known is None or record.version > known.version:
                versions[record.id] = Seen(record.version, record.updated_at_ms)
    return versions


def settled(seen: Seen, record_id: str, position: Cursor | None, never_synced: bool) -> bool:
    """Whether the agent must hold this version already: it is at or below the position."""
    if position is None:
        return never_synced
    return (seen.updated_at_ms, record_id) <= (position.updated_at_ms, position.last_id)


async def quarantined(sink: Sink, source: str) -> list[Quarantined]:
    """What the sink holds in its quarantine for `source` (none for sinks without one)."""
    load = getattr(sink, "load_quarantine", None)
    return [] if load is None else list(await load(source))


async def verify_replica(source: Source, sink: Sink, *, page_size: int = 100) -> VerifyReport:
    reports = []
    held = await quarantined(sink, source.name)
    # The replica first, then the platform (module docstring). Reading a position must not
    # retry the quarantine (a write): verifying changes nothing.
    retries = getattr(sink, "retries_quarantine", None)
    if retries is not None:
        sink.retries_quarantine = False  # type: ignore[attr-defined]
    try:
        positions = {s: await sink.load_cursor(source.name, s) for s in source.streams}
    finally:
        if retries is not None:
            sink.retries_quarantine = retries  # type: ignore[attr-defined]
    never_synced = all(position is None for position in positions.values())
    for stream in source.streams:
        position = positions[stream]
        replica = await sink.load_versions(source.name, kinds.by_stream(stream).name)
        platform = await platform_versions(source, stream, page_size)
        report = StreamReport(
            stream,
            len(platform),
            len(replica),
            extra=sorted(replica.keys() - platform.keys()),
            quarantined=[q for q in held if q.kind == kinds.by_stream(stream).name],
            position=position,
        )
        for record_id, seen in sorted(platform.items()):
            if replica.get(record_id, 0) >= seen.version:
                continue
            if not settled(seen, record_id, position, never_synced):
                report.in_flight.append(record_id)
            elif record_id in replica:
                report.stale.append(record_id)
            else:
                report.missing.append(record_id)
        reports.append(report)
    return VerifyReport(source.name, reports)
