"""Running the hub under uvicorn, in one process or in several worker processes.

Settings reach the workers as an argument, never through the environment: uvicorn's worker
supervisor starts each worker with `multiprocessing`'s spawn and pickles its `Config`, whose
app is `worker_app` bound to the `HubSettings` object (`factory=True`). Each worker unpickles
the same settings, configures its logging and builds its own app (its own store and database
connections) from them.

The socket is bound here, before uvicorn starts: a port that is taken is one line from the CLI
(`bind_socket` raises `OSError`), and "serving" is said only once the app has started on it.

`ordersync.hub.asgi:app_factory` stays the entry point for running the hub under another ASGI
server, configured by `ORDERSYNC_HUB_*` variables (`HubSettings.from_env()`).
"""

from __future__ import annotations

import functools
import os
import shutil
import socket
import tempfile
from collections.abc import Callable

import uvicorn
from fastapi import FastAPI
from uvicorn.supervisors import Multiprocess

from ordersync.hub.app import create_app
from ordersync.hub.metrics import MULTIPROC_ENV
from ordersync.hub.settings import HubSettings
from ordersync.logs import configure_logging
from ordersync.loops import loop_name


def worker_app(settings: HubSettings) -> FastAPI:
    """A worker's app: its logging first (a spawned worker inherits none), then the hub."""
    configure_logging("console" if settings.log_format == "console" else "json", settings.log_level)
    return create_app(settings)


def uvicorn_config(settings: HubSettings, workers: int = 1) -> uvicorn.Config:
    """The server's config; its app is a picklable factory carrying `settings`."""
    return uvicorn.Config(
        functools.partial(worker_app, settings),
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        loop=loop_name(),  # ORDERSYNC_LOOP: uvloop where available, else asyncio's loop
        # uvicorn's own lines: errors only; requests are logged by hub/access_log.py.
        log_level="error",
        access_log=False,
    )


def bind_socket(host: str, port: int) -> socket.socket:
    """A listening socket on host:port, as uvicorn would bind it; `OSError` if it cannot."""
    family = socket.AF_INET6 if ":" in host else socket.AF_INET
    sock = socket.socket(family=family)
    try:
        sock.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        sock.bind((host, port))
        sock.listen(2048)  # connections queue from now on, even before a worker takes them
    except OSError:
        sock.close()
        raise
    sock.set_inheritable(True)
    return sock


class _AnnouncingServer(uvicorn.Server):
    """Calls `on_ready` once the app has started and listens: not a moment before."""

    def __init__(self, config: uvicorn.Config, on_ready: Callable[[], None]) -> None:
        super().__init__(config)
        self.on_ready = on_ready

    async def startup(self, sockets: list[socket.socket] | None = None) -> None:
        await super().startup(sockets)
        if self.started and not self.should_exit:
            self.on_ready()


def serve(
    settings: HubSettings,
    workers: int = 1,
    *,
    sock: socket.socket | None = None,
    on_ready: Callable[[], None] = lambda: None,
) -> None:
    """Serve until interrupted; with `workers` > 1, one socket shared by that many processes.

    Several workers count metrics in prometheus-client's multiprocess mode: a fresh directory
    of their own (named by `PROMETHEUS_MULTIPROC_DIR`, the one variable prometheus-client
    reads, set before any worker starts) that every worker writes and `/metrics` sums.
    """
    config = uvicorn_config(settings, workers)
    sock = sock or bind_socket(settings.host, settings.port)
    if workers == 1:
        _AnnouncingServer(config, on_ready).run(sockets=[sock])
        return
    metrics_dir = tempfile.mkdtemp(prefix="ordersync-hub-metrics-")
    os.environ[MULTIPROC_ENV] = metrics_dir
    try:
        # What `uvicorn.run` does for workers, minus its rule that the app be an import string:
        # the factory above pickles, so each worker gets these settings and nothing else.
        supervisor = Multiprocess(config, sockets=[sock])
        on_ready()  # the socket is listening: connections queue until a worker takes them
        supervisor.run()
    finally:
        os.environ.pop(MULTIPROC_ENV, None)
        shutil.rmtree(metrics_dir, ignore_errors=True)
