"""Cursors in a sidecar JSON file, replaced atomically: write a temporary file, fsync it,
rename it over the old one, fsync the directory. A crash leaves the old file or the new one.

A stored cursor never moves backwards, whoever writes it (a second agent, a writer that lost
its lease mid-page): every sink stores a page's cursor only if it is at or past the stored one
(`records.may_replace`). Here the file is re-read under an exclusive lock before each save, so
a writer holding an old view of it cannot overwrite a newer cursor.
"""

from __future__ import annotations

import fcntl
import os
from pathlib import Path

import orjson

from ordersync.agent.records import Cursor, may_replace


class CheckpointFile:
    def __init__(self, path: Path) -> None:
        self.path = path
        self._cursors = self._read()

    def load(self, source: str, stream: str) -> Cursor | None:
        return _cursor(self._cursors.get(f"{source}/{stream}"))

    def save(self, source: str, stream: str, cursor: Cursor) -> None:
        """Store `cursor`, unless the file holds one further along (then keep that one)."""
        key = f"{source}/{stream}"
        with open(self.path.with_name(self.path.name + ".lock"), "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)  # released when the file closes
            stored = self._read()
            if not may_replace(stream, _cursor(stored.get(key)), cursor):
                self._cursors = stored
                return
            cursors = {
                **stored,
                key: {"updated_at_ms": cursor.updated_at_ms, "last_id": cursor.last_id},
            }
            self._write(cursors)
        self._cursors = cursors

    def rewind(self, source: str, to: Cursor | None) -> None:
        """Move every stream of `source` back to `to` (None: forget them, start from the
        beginning): `agent reset`, with no agent running, never the sync itself."""
        with open(self.path.with_name(self.path.name + ".lock"), "a+b") as lock:
            fcntl.flock(lock.fileno(), fcntl.LOCK_EX)
            stored = self._read()
            cursors = {k: v for k, v in stored.items() if not k.startswith(f"{source}/")}
            if to is not None:
                for key in stored.keys() - cursors.keys():
                    cursors[key] = {"updated_at_ms": to.updated_at_ms, "last_id": to.last_id}
            self._write(cursors)
        self._cursors = cursors

    def _read(self) -> dict[str, dict[str, object]]:
        try:
            return orjson.loads(self.path.read_bytes())  # type: ignore[no-any-return]
        except FileNotFoundError:
            return {}

    def _write(self, cursors: dict[str, dict[str, object]]) -> None:
        tmp = self.path.with_name(self.path.name + ".tmp")
        with open(tmp, "wb") as handle:
            handle.write(orjson.dumps(cursors, option=orjson.OPT_INDENT_2))
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp, self.path)
        _fsync_directory(self.path.parent)


def _cursor(entry: dict[str, object] | None) -> Cursor | None:
    if entry is None:
        return None
    return Cursor(int(entry["updated_at_ms"]), str(entry["last_id"]))  # type: ignore[call-overload]


def _fsync_directory(directory: Path) -> None:
    # The rename is durable only once the directory entry is.
    fd = os.open(directory, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)
