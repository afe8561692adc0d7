"""Entry point for several uvicorn workers: each builds the hub from `ORDERSYNC_HUB_*`."""

from __future__ import annotations

from fastapi import FastAPI

from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings


def app_factory() -> FastAPI:
    return create_app(HubSettings.from_env())
