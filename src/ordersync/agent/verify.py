"""Compare a replica with the platform: which ids are missing, stale or extra.

The platform side comes from the summary listing (ids and versions only), walked with the same
`TiePager` as the sync so records moving during the walk are not skipped. Writes landing while
verification runs can show up as stale; run it again (or after a poll) before acting on those.
Records the sink holds in its quarantine (it could not store them; see `sinks.quarantine`) are
listed with why, and the replica is not in sync while any are there.
"""

from __future__ import annotations

from dataclasses import dataclass, field

from ordersync import kinds
from ordersync.agent.paging import TiePager
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


async def platform_versions(source: Source, stream: str, page_size: int = 100) -> dict[str, int]:
    pager = TiePager(0, min(page_size, source.max_page_size))
    versions: dict[str, int] = {}
    while not pager.done:
        request = pager.next_request()
        page = await source.fetch_page(
            stream, request.since_ms, request.offset, request.limit, summary=True
        )
        for record in pager.accept(request, page.records):
            versions[record.id] = max(versions.get(record.id, 0), record.version)
    return versions


async def quarantined(sink: Sink, source: str) -> list[Quarantined]:
    """What the sink holds in its quarantine for `source` (none for sinks without one)."""
    load = getattr(sink, "load_quarantine", None)
    return [] if load is None else list(await load(source))


async def verify_replica(source: Source, sink: Sink, *, page_size: int = 100) -> VerifyReport:
    reports = []
    held = await quarantined(sink, source.name)
    for stream in source.streams:
        platform = await platform_versions(source, stream, page_size)
        replica = await sink.load_versions(source.name, kinds.by_stream(stream).name)
        reports.append(
            StreamReport(
                stream,
                len(platform),
                len(replica),
                missing=sorted(platform.keys() - replica.keys()),
                stale=sorted(
                    i for i in platform.keys() & replica.keys() if replica[i] < platform[i]
                ),
                extra=sorted(replica.keys() - platform.keys()),
                quarantined=[q for q in held if q.kind == kinds.by_stream(stream).name],
            )
        )
    return VerifyReport(source.name, reports)
