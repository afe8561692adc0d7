"""`ordersync demo`: a hub with its warehouse simulator on embedded SQLite, in one command."""

from __future__ import annotations

import asyncio
import contextlib
import signal
from dataclasses import dataclass
from pathlib import Path

import uvicorn
from rich.console import Console

from ordersync.hub.app import create_app
from ordersync.hub.faults import FaultSettings
from ordersync.hub.settings import HubSettings
from ordersync.store.store import Store


@dataclass(frozen=True)
class DemoSettings:
    data_dir: Path = Path("demo-data")
    port: int = 8080
    rate: float = 5.0
    duration: float = 60.0
    seed: int = 42
    faults: bool = False


async def run_demo(settings: DemoSettings, console: Console) -> int:
    settings.data_dir.mkdir(parents=True, exist_ok=True)
    hub_db = f"sqlite:///{settings.data_dir / 'hub.db'}"
    store = await Store.open(hub_db)
    token = await store.create_token("demo", "erp-agent")
    hub_settings = HubSettings(
        db_url=hub_db,
        port=settings.port,
        simulate_rate=settings.rate,
        simulate_seed=settings.seed,
        simulate_account="demo",
        faults=FaultSettings.demo(settings.seed) if settings.faults else FaultSettings(),
    )
    server = uvicorn.Server(
        uvicorn.Config(
            create_app(hub_settings, store),
            host="127.0.0.1",
            port=settings.port,
            log_level="critical",
            access_log=False,
        )
    )
    serving = asyncio.create_task(server.serve())
    while not server.started:
        if serving.done():
            await store.close()
            console.print(f"[red]error:[/red] could not serve on 127.0.0.1:{settings.port}")
            return 2
        await asyncio.sleep(0.05)
    base = f"http://127.0.0.1:{settings.port}/api/v1"
    console.print(
        f"[bold]hub[/bold] on {base}, simulating {settings.rate} orders/s (database {hub_db})"
    )
    console.print(
        "poll it:\n  curl -H 'Authorization: Bearer " + token + "' \\\n"
        f"    '{base}/orders?updated_since=2020-01-01T00:00:00Z&limit=100'",
        soft_wrap=True,
    )
    stop = asyncio.Event()
    loop = asyncio.get_running_loop()
    for sig in (signal.SIGINT, signal.SIGTERM):
        loop.add_signal_handler(sig, stop.set)
    with contextlib.suppress(TimeoutError):
        await asyncio.wait_for(stop.wait(), settings.duration)
    server.should_exit = True
    await serving
    await store.close()
    return 0
