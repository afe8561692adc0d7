"""Sinks: where the agent applies changes. `open_sink(url)` picks one by URL scheme:
`sqlite:///FILE` and `postgresql://...` (SQL, exactly-once effect), `jsonl:///PATH` (a file
of changes), `http(s)://ERP/...` (POST per page with an Idempotency-Key)."""

from __future__ import annotations

from pathlib import Path
from typing import TYPE_CHECKING

from ordersync.agent.sinks.base import FaultHook, Sink
from ordersync.errors import ConfigurationError

if TYPE_CHECKING:  # the SQLite writer process imports this package: keep it light
    import httpx


async def open_sink(
    url: str,
    *,
    fault_hook: FaultHook | None = None,
    http: httpx.AsyncClient | None = None,
    state_path: str | Path | None = None,
) -> Sink:
    scheme = url.partition("://")[0].split("+")[0].lower()
    if scheme in ("sqlite", "postgresql", "postgres"):
        from ordersync.agent.sinks.sql import SqlSink

        return await SqlSink.open(url, fault_hook=fault_hook)
    if scheme == "jsonl":
        from ordersync.agent.sinks.jsonl import JsonlSink

        path = url.partition("://")[2]
        if not path:
            raise ConfigurationError("a JSONL sink needs a path: jsonl:///var/erp/changes.jsonl")
        return await JsonlSink.open(path, fault_hook=fault_hook)
    if scheme in ("http", "https"):
        from ordersync.agent.sinks.http import HttpSink

        if http is None or state_path is None:
            raise ConfigurationError("an HTTP sink needs an http client and a state_path")
        return await HttpSink.open(url, http, Path(state_path), fault_hook=fault_hook)
    raise ConfigurationError(
        f"unknown sink {url!r}: use sqlite:///FILE, postgresql://..., jsonl:///PATH or http(s)://"
    )
