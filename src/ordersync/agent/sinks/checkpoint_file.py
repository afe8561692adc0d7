"""Cursors in a sidecar JSON file, replaced atomically: write a temporary file, fsync it,
rename it over the old one, fsync the directory. A crash leaves the old file or the new one."""

from __future__ import annotations

import os
from pathlib import Path

import orjson

from ordersync.agent.records import Cursor


class CheckpointFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._cursors: dict[str, dict[str, object]] = (
            orjson.loads(path.read_bytes()) if path.exists() else {}
        )

    def load(self, source: str, stream: str) -> Cursor | None:
        entry = self._cursors.get(f"{source}/{stream}")
        if entry is None:
            return None
        return Cursor(int(entry["updated_at_ms"]), str(entry["last_id"]))  # type: ignore[call-overload]

    def save(self, source: str, stream: str, cursor: Cursor) -> None:
        cursors = {
            **self._cursors,
            f"{source}/{stream}": {
                "updated_at_ms": cursor.updated_at_ms,
                "last_id": cursor.last_id,
            },
        }
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as handle:
            handle.write(orjson.dumps(cursors, option=orjson.OPT_INDENT_2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        _fsync_directory(self.path.parent)
        self._cursors = cursors


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
