"""uvicorn inside a program that owns its signals (the agent, the demo)."""

from __future__ import annotations

import asyncio
import contextlib
import socket
from collections.abc import AsyncIterator, Generator
from typing import Any

import uvicorn

from ordersync.errors import ConfigurationError, PortInUse


class EmbeddedServer(uvicorn.Server):
    """A uvicorn server that leaves SIGINT/SIGTERM alone. The stock one installs its own
    handlers and re-raises the signal after shutting down, which would turn the host
    program's graceful stop into an abrupt one."""

    @contextlib.contextmanager
    def capture_signals(self) -> Generator[None, None, None]:
        yield


@contextlib.asynccontextmanager
async def serving(app: Any, host: str, port: int) -> AsyncIterator[EmbeddedServer]:
    """Serve `app` on host:port for the duration of the block. A port that cannot be bound is a
    ConfigurationError naming it: uvicorn itself would end the whole process (SystemExit 3,
    with nothing said at log level "critical")."""
    try:
        sock = socket.create_server((host, port))
    except OSError as exc:
        raise PortInUse(
            f"cannot listen on {host}:{port}: {exc.strerror or exc}; another program (or "
            f"another agent) uses port {port}: choose a free one"
        ) from None
    server = EmbeddedServer(
        uvicorn.Config(app, host=host, port=port, log_level="critical", access_log=False)
    )
    task = asyncio.create_task(_serve(server, sock))
    try:
        while not server.started:
            if task.done():
                task.result()  # its ConfigurationError
                raise ConfigurationError(f"cannot serve on {host}:{port}")
            await asyncio.sleep(0.02)
        yield server
    finally:
        server.should_exit = True
        with contextlib.suppress(ConfigurationError):
            await task
        sock.close()


async def _serve(server: EmbeddedServer, sock: socket.socket) -> None:
    try:
        await server.serve(sockets=[sock])
    except SystemExit as exc:  # uvicorn's way to report a failed startup: not ours to exit
        raise ConfigurationError(f"the embedded server failed to start (exit {exc.code})") from None
