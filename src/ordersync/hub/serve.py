"""Running the hub under uvicorn, in one process or in several worker processes.

Settings reach the workers as an argument, never through the environment: uvicorn's worker
supervisor starts each worker with `multiprocessing`'s spawn and pickles its `Config`, whose
app is `create_app` bound to the `HubSettings` object (`factory=True`). Each worker unpickles
the same settings and builds its own app (its own store and database connections) from them.

`ordersync.hub.asgi:app_factory` stays the entry point for running the hub under another ASGI
server, configured by `ORDERSYNC_HUB_*` variables (`HubSettings.from_env()`).
"""

from __future__ import annotations

import functools

import uvicorn
from uvicorn.supervisors import Multiprocess

from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings


def uvicorn_config(settings: HubSettings, workers: int = 1) -> uvicorn.Config:
    """The server's config; its app is a picklable factory carrying `settings`."""
    return uvicorn.Config(
        functools.partial(create_app, settings),
        factory=True,
        host=settings.host,
        port=settings.port,
        workers=workers,
        log_level="warning",
        access_log=False,
    )


def serve(settings: HubSettings, workers: int = 1) -> None:
    """Serve until interrupted; with `workers` > 1, one socket shared by that many processes."""
    config = uvicorn_config(settings, workers)
    if workers > 1:
        # What `uvicorn.run` does for workers, minus its rule that the app be an import string:
        # the factory above pickles, so each worker gets these settings and nothing else.
        Multiprocess(config, sockets=[config.bind_socket()]).run()
        return
    uvicorn.Server(config).run()
