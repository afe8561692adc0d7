"""The hub for an ASGI server other than `ordersync hub serve`, configured by the environment.

    uvicorn --factory ordersync.hub.asgi:app_factory --workers 4

The one place the hub reads its settings from `ORDERSYNC_HUB_*` variables (`HubSettings.from_env`);
nothing in the hub writes them. `hub serve --workers` does not come through here: it hands its
settings object to each worker (`hub/serve.py`).
"""

from __future__ import annotations

from fastapi import FastAPI

from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings


def app_factory() -> FastAPI:
    """A new hub app from the environment's settings."""
    return create_app(HubSettings.from_env())
