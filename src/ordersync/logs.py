"""Logging setup for the commands: one JSON object per line, or lines for a person.

`auto` picks the console view when the stream is a terminal and JSON otherwise (a service
manager, a pipe, a log shipper). Events meant for a person carry a `summary` (a whole
sentence): the console view prints just that sentence, JSON keeps it beside the fields. On the
console, the agent's line per API call (`api_call`) shows only at `--log-level debug`: at a
few calls per second it would bury everything else.
"""

from __future__ import annotations

import logging
import sys
from datetime import datetime
from typing import Any, Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]
LOG_FORMATS = ("auto", "json", "console")
LOG_LEVELS = ("debug", "info", "warning", "error")
CHATTY = frozenset({"api_call"})  # per-call events: debug-only on the console


def resolve_format(value: str, stream: TextIO | None = None) -> LogFormat:
    """`auto` -> console on a terminal, else json. ValueError for anything else unknown."""
    if value == "auto":
        return "console" if (stream or sys.stderr).isatty() else "json"
    if value in ("json", "console"):
        return "json" if value == "json" else "console"
    raise ValueError(f"use one of {', '.join(LOG_FORMATS)}")


def configure_logging(
    fmt: LogFormat = "json", level: str = "INFO", file: TextIO | None = None
) -> None:
    """Log through structlog to `file` (default stderr)."""
    threshold = logging.getLevelName(level.upper())
    processors: list[structlog.typing.Processor] = [
        structlog.processors.add_log_level,
        structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
        structlog.processors.format_exc_info,
    ]
    if fmt == "json":
        processors.append(structlog.processors.JSONRenderer())
    else:
        if threshold > logging.DEBUG:
            processors.insert(0, _drop_chatty)
        processors.append(_console_line)
    # One logger for the process (its file and lock), not a new one per call: the agent writes a
    # line per API call. configure() again replaces it, so tests and the demo can redirect.
    printer = structlog.PrintLogger(file=file or sys.stderr)
    structlog.configure(
        processors=processors,
        wrapper_class=structlog.make_filtering_bound_logger(threshold),
        logger_factory=lambda *args: printer,
        cache_logger_on_first_use=False,
    )


def _drop_chatty(_: Any, __: str, event: structlog.typing.EventDict) -> Any:
    if event.get("event") in CHATTY:
        raise structlog.DropEvent
    return event


def _console_line(_: Any, __: str, event: structlog.typing.EventDict) -> str:
    """`HH:MM:SS sentence` for events with a summary, else `HH:MM:SS level event k=v ...`."""
    stamp = _local_time(str(event.pop("timestamp", "")))
    level = str(event.pop("level", "info"))
    name = str(event.pop("event", ""))
    summary = event.pop("summary", None)
    mark = "" if level == "info" else f"{level.upper()} "
    if summary is not None:
        return f"{stamp} {mark}{summary}"
    exc = event.pop("exception", None)
    fields = " ".join(f"{key}={value}" for key, value in event.items())
    return f"{stamp} {mark}{name} {fields}".rstrip() + (f"\n{exc}" if exc else "")


def _local_time(iso: str) -> str:
    try:
        return datetime.fromisoformat(iso).astimezone().strftime("%H:%M:%S")
    except ValueError:
        return iso
