"""The JSONL sink: one line per applied change, for ERPs that import files.

    {"kind": "order", "id": "...", "version": 3, "updated_at": "...", "source": "...", "data": {}}

At-least-once with an idempotency key (`id:version`): lines are flushed and fsynced before the
cursor (a sidecar file, `<path>.checkpoint.json`) moves. Versions already written are
remembered (rebuilt from the file at open), so a page re-read after a crash between the two
writes adds no line twice.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any, BinaryIO

import orjson

from ordersync.agent.errors import SinkError
from ordersync.agent.records import ApplyResult, Cursor, Record
from ordersync.agent.sinks.base import FaultHook, HeldVersions, fire
from ordersync.agent.sinks.checkpoint_file import CheckpointFile
from ordersync.agent.sinks.rows import document_json
from ordersync.domain.timestamps import format_rfc3339

HeldKey = tuple[str, str, str]  # (source, kind, id)


class JsonlSink(HeldVersions):
    def __init__(self, path: Path, *, fault_hook: FaultHook | None = None) -> None:
        self.path = path
        self.fault_hook = fault_hook
        self.checkpoints = CheckpointFile(path.with_name(path.name + ".checkpoint.json"))
        self._held: dict[HeldKey, int] = {}
        self._handle: BinaryIO | None = None

    @classmethod
    async def open(cls, path: str | Path, *, fault_hook: FaultHook | None = None) -> JsonlSink:
        try:
            sink = cls(Path(path), fault_hook=fault_hook)
            sink._recover()
        except (OSError, ValueError) as exc:  # ValueError: a line or checkpoint is not JSON
            raise SinkError(f"cannot open {path}: {exc}") from exc
        return sink

    def _recover(self) -> None:
        """Drop a torn last line (a crash mid-write), learn which versions are written, and
        open the file for appending."""
        self.path.parent.mkdir(parents=True, exist_ok=True)
        self.path.touch()
        # Unbuffered: a page's lines go to the OS in one write, so nothing lingers in a Python
        # buffer that a later flush could append after a restart has re-written it.
        self._handle = open(self.path, "ab", buffering=0)  # noqa: SIM115 - held while open
        content = self.path.read_bytes()
        complete = content[: content.rfind(b"\n") + 1]
        if len(complete) != len(content):
            self._handle.truncate(len(complete))
        for line in complete.splitlines():
            change = _parse(line)
            key = (change["source"], change["kind"], change["id"])
            self._held[key] = max(self._held.get(key, 0), int(change["version"]))

    async def close(self) -> None:
        if self._handle is not None:
            handle, self._handle = self._handle, None
            try:
                handle.close()
            except OSError as exc:
                raise SinkError(f"cannot close {self.path}: {exc}") from exc

    async def apply_page(
        self, source: str, stream: str, records: Sequence[Record], new_cursor: Cursor
    ) -> ApplyResult:
        newer = self.newer_than_held(source, records)
        try:
            self._append(source, newer)
            fire(self.fault_hook, "before_cursor")
            self.checkpoints.save(source, stream, new_cursor)
            fire(self.fault_hook, "after_cursor")
        except OSError as exc:
            raise SinkError(f"cannot write {self.path}: {exc}") from exc
        return ApplyResult(len(newer), len(records) - len(newer))

    def _append(self, source: str, newer: list[Record]) -> None:
        if not newer:
            return
        assert self._handle is not None, "open the sink with JsonlSink.open"
        pending = memoryview(b"".join(_line(source, r) for r in newer))
        while pending:  # an unbuffered write may be short
            pending = pending[self._handle.write(pending) or 0 :]
        # The lines are in the file from here on, whatever happens next: remember them now.
        for record in newer:
            self._held[(source, record.kind, record.id)] = record.version
        fire(self.fault_hook, "mid_apply")
        os.fsync(self._handle.fileno())


def _line(source: str, record: Record) -> bytes:
    # Any parsed document can be written (see `document_json`), so no record of a page is
    # refused here: this sink needs no quarantine.
    change = {
        "kind": record.kind,
        "id": record.id,
        "version": record.version,
        "updated_at": format_rfc3339(record.updated_at_ms),
        "source": source,
        "data": record.document,
    }
    return document_json(change).encode() + b"\n"


def _parse(line: bytes) -> Any:
    try:
        return orjson.loads(line)
    except orjson.JSONDecodeError:  # what only the standard library writes and reads
        return json.loads(line)
