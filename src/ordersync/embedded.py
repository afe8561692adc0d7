"""uvicorn inside a program that owns its signals (the agent, the demo)."""

from __future__ import annotations

import asyncio
import contextlib
from collections.abc import AsyncIterator, Generator
from typing import Any

import uvicorn

from ordersync.errors import ConfigurationError


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT/SIGTERM alone. The stock one installs its own
    handlers and re-raises the signal after shutting down, which would turn the host
    program's graceful stop into an abrupt one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: Any, host: str, port: int) -> AsyncIterator[EmbeddedServer]:
    """Serve `app` on host:port for the duration of the block; fail clearly if it can't bind."""
    server = EmbeddedServer(
        uvicorn.Config(app, host=host, port=port, log_level="critical", access_log=False)
    )
    task = asyncio.create_task(server.serve())
    while not server.started:
        if task.done():
            raise ConfigurationError(f"cannot serve on {host}:{port} (port in use?)")
        await asyncio.sleep(0.02)
    try:
        yield server
    finally:
        server.should_exit = True
        await task
