"""The HTTP sink: POST each page's changes to an ERP endpoint.

At-least-once: the cursor moves only after a 2xx. Each POST carries an `Idempotency-Key` derived
from the page content (the same page re-sent after a crash carries the same key) and each
change its own key `id:version`, so the ERP can drop repeats. Delivered versions are kept in a
local ledger (`<state>.delivered`, fsynced before the cursor file moves) so a restart re-sends
as little as possible.
"""

from __future__ import annotations

import asyncio
import hashlib
import os
from collections.abc import Awaitable, Callable, Sequence
from pathlib import Path
from typing import Any

import httpx

from ordersync.agent.errors import SinkError, SinkRejected
from ordersync.agent.records import ApplyResult, Cursor, Record
from ordersync.agent.retry import Retrier, RetriesSpent, RetryPolicy, Transient, parse_retry_after
from ordersync.agent.sinks.base import FaultHook, HeldVersions, fire
from ordersync.agent.sinks.checkpoint_file import CheckpointFile
from ordersync.agent.sinks.rows import document_json
from ordersync.domain.timestamps import format_rfc3339, now_ms


def idempotency_key(source: str, stream: str, records: Sequence[Record]) -> str:
    digest = hashlib.sha256(f"{source}|{stream}|".encode())
    digest.update(",".join(f"{r.kind}:{r.key}" for r in records).encode())
    return digest.hexdigest()


class HttpSink(HeldVersions):
    def __init__(
        self,
        url: str,
        http: httpx.AsyncClient,
        state_path: Path,
        *,
        retry: RetryPolicy = RetryPolicy(),
        fault_hook: FaultHook | None = None,
        sleep: Callable[[float], Awaitable[None]] = asyncio.sleep,
        deadline: float = 60.0,
    ) -> None:
        self.url = url
        self.http = http
        self.retrier = Retrier(retry, sleep=sleep)
        self.deadline = deadline  # per POST, answer included: an ERP that stalls is retried
        self.fault_hook = fault_hook
        self.checkpoints = CheckpointFile(state_path)
        self.ledger_path = state_path.with_name(state_path.name + ".delivered")
        self._held: dict[tuple[str, str, str], int] = {}

    @classmethod
    async def open(
        cls, url: str, http: httpx.AsyncClient, state_path: Path, **options: Any
    ) -> HttpSink:
        try:
            sink = cls(url, http, state_path, **options)
            sink._read_ledger()
        except (OSError, ValueError) as exc:  # ValueError: a state file that is not JSON
            raise SinkError(f"cannot read the HTTP sink's state at {state_path}: {exc}") from exc
        return sink

    def _read_ledger(self) -> None:
        if self.ledger_path.exists():
            for line in self.ledger_path.read_bytes().splitlines():
                parts = line.decode(errors="replace").split(" ")
                if len(parts) != 4 or not parts[3].isdigit():
                    continue  # a line torn by a crash: that page is re-sent, keyed the same
                source, kind, entity_id, version = parts
                key = (source, kind, entity_id)
                self._held[key] = max(self._held.get(key, 0), int(version))

    async def close(self) -> None:
        """The http client belongs to the caller."""

    async def apply_page(
        self, source: str, stream: str, records: Sequence[Record], new_cursor: Cursor
    ) -> ApplyResult:
        newer = self.newer_than_held(source, records)
        try:
            if newer:
                await self._deliver(source, stream, newer)
                fire(self.fault_hook, "mid_apply")
                self._remember(source, newer)
            fire(self.fault_hook, "before_cursor")
            self.checkpoints.save(source, stream, new_cursor)
            fire(self.fault_hook, "after_cursor")
        except (OSError, httpx.HTTPError) as exc:
            # The ledger or the cursor file could not be written, or the request could not be
            # built or read: the page fails this cycle, and is re-sent (same key) the next.
            raise SinkError(f"a page of {source}/{stream} for {self.url} failed: {exc}") from exc
        return ApplyResult(len(newer), len(records) - len(newer))

    async def _deliver(self, source: str, stream: str, newer: list[Record]) -> None:
        body = document_json(
            {
                "source": source,
                "stream": stream,
                "changes": [
                    {
                        "kind": r.kind,
                        "id": r.id,
                        "version": r.version,
                        "idempotency_key": r.key,
                        "updated_at": format_rfc3339(r.updated_at_ms),
                        "data": r.document,
                    }
                    for r in newer
                ],
            }
        ).encode()
        headers = {
            "Idempotency-Key": idempotency_key(source, stream, newer),
            "Content-Type": "application/json",
        }
        try:
            await self.retrier.call(lambda attempt: self._post_once(body, headers))
        except RetriesSpent as spent:
            raise SinkError(f"the ERP at {self.url} did not take a page: {spent.why}") from spent

    async def _post_once(self, body: bytes, headers: dict[str, str]) -> None:
        """Returns once delivered; `Transient` for a failure worth retrying."""
        try:
            async with asyncio.timeout(self.deadline):
                response = await self.http.post(self.url, content=body, headers=headers)
        except TimeoutError as exc:
            raise Transient("deadline") from exc
        except httpx.TransportError as exc:
            raise Transient(type(exc).__name__) from exc
        if response.is_success:
            return
        retry_after = parse_retry_after(response.headers.get("retry-after"), now_ms())
        if response.status_code == 429 or response.status_code >= 500:
            rate_limited = response.status_code == 429
            raise Transient(f"http_{response.status_code}", retry_after, rate_limited=rate_limited)
        raise SinkRejected(
            f"the ERP at {self.url} refused a page ({response.status_code}): {response.text[:200]}",
            response.status_code,
        )

    def _remember(self, source: str, newer: list[Record]) -> None:
        lines = "".join(f"{source} {r.kind} {r.id} {r.version}\n" for r in newer).encode()
        with open(self.ledger_path, "ab") as ledger:
            ledger.write(lines)
            ledger.flush()
            os.fsync(ledger.fileno())
        for record in newer:
            self._held[(source, record.kind, record.id)] = record.version
