"""Logging setup for the commands: one JSON object per line (default) or a console view."""

from __future__ import annotations

import logging
import sys
from typing import Literal, TextIO

import structlog

LogFormat = Literal["json", "console"]


def configure_logging(
    fmt: LogFormat = "json", level: str = "INFO", file: TextIO | None = None
) -> None:
    """Log through structlog to `file` (default stderr)."""
    renderer: structlog.typing.Processor = (
        structlog.processors.JSONRenderer() if fmt == "json" else structlog.dev.ConsoleRenderer()
    )
    # One logger for the process (its file and lock), not a new one per call: the agent writes a
    # line per API call. configure() again replaces it, so tests and the demo can redirect.
    printer = structlog.PrintLogger(file=file or sys.stderr)
    structlog.configure(
        processors=[
            structlog.processors.add_log_level,
            structlog.processors.TimeStamper(fmt="iso", utc=True, key="timestamp"),
            structlog.processors.format_exc_info,
            renderer,
        ],
        wrapper_class=structlog.make_filtering_bound_logger(logging.getLevelName(level.upper())),
        logger_factory=lambda *args: printer,
        cache_logger_on_first_use=False,
    )
