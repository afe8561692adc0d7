"""`agent reset`: move a source's stored positions back on purpose, so the next run reads
again from a time (or from the beginning). Applying is version-checked, so what is read again
is counted as repeats, never applied twice.

The sync itself never moves a position backwards (`records.may_replace`); this is the one
deliberate exception, and it takes the replica's lease for the source first: with an agent
running it is refused (`ReplicaInUse`), instead of racing that agent's commits.
"""

from __future__ import annotations

from pathlib import Path

from sqlalchemy import delete, insert

from ordersync.agent.lease import acquire
from ordersync.agent.records import Cursor
from ordersync.agent.sinks.base import Sink
from ordersync.agent.sinks.checkpoint_file import CheckpointFile
from ordersync.domain.timestamps import now_ms
from ordersync.errors import ConfigurationError


async def rewind(sink: Sink, source: str, streams: list[str], to: Cursor | None) -> None:
    """Set every position of `source` to `to` (None: delete them)."""
    from ordersync.agent.sinks.sql import SqlSink, checkpoints

    if isinstance(sink, SqlSink):
        c = checkpoints.c
        async with sink.engine.begin() as conn:
            await conn.execute(delete(checkpoints).where(c.source == source))
            if to is not None:
                await conn.execute(
                    insert(checkpoints),
                    [
                        {
                            "source": source,
                            "stream": stream,
                            "updated_at_ms": to.updated_at_ms,
                            "last_id": to.last_id,
                            "committed_at_ms": now_ms(),
                        }
                        for stream in streams
                    ],
                )
        return
    file = getattr(sink, "checkpoints", None)
    if not isinstance(file, CheckpointFile):
        raise ConfigurationError(f"this sink keeps no positions to reset ({type(sink).__name__})")
    for stream in streams:  # streams never stored get one too
        if to is not None and file.load(source, stream) is None:
            file.save(source, stream, to)
    file.rewind(source, to)


async def reset_source(
    sink: Sink,
    sink_url: str,
    source: str,
    streams: list[str],
    to: Cursor | None,
    state_path: Path,
) -> None:
    """Rewind under the source's lease; `ReplicaInUse` while an agent holds it."""
    lease = await acquire(sink_url, [source], standby=False, state_path=state_path)
    assert lease is not None  # without standby, acquire raises or returns the lease
    try:
        await rewind(sink, source, streams, to)
    finally:
        await lease.release()
