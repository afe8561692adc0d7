"""`ordersync demo`: the hub with its warehouse simulator and the agent mirroring it, on
embedded SQLite, in one process; then the proof that the mirror equals the source.

Timeline: serve the hub and start the simulator; run the agent against it with a live progress
display for `duration` seconds (or until Ctrl-C); pause the simulator; let the agent drain; and
compare every (id, version) on both sides.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path

from rich.console import Console
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from sqlalchemy import func, select

from ordersync import loops
from ordersync.agent.config import AgentConfig, SinkConfig, SourceConfig
from ordersync.agent.errors import AgentError
from ordersync.agent.platforms import PLATFORMS
from ordersync.agent.runner import AgentRuntime, open_runtime, run_sources
from ordersync.domain import now_ms
from ordersync.embedded import serving
from ordersync.errors import ConfigurationError, PortInUse, WouldOverwrite
from ordersync.hub.app import create_app
from ordersync.hub.faults import FaultSettings, late_commit_clock
from ordersync.hub.settings import HubSettings
from ordersync.logs import configure_logging
from ordersync.store.store import Store

TOKEN_ENV = "ORDERSYNC_DEMO_TOKEN"
CONNECTION = "erp-agent"
# HubRise acknowledges each callback event with one call under a 500/minute quota (seed 003):
# a location producing more than ~6 events per second cannot be followed within it.
MARKER = ".ordersync-demo"  # in a data directory the demo made
DEFAULT_RATE = {"masonhub": 5.0, "tradecloud": 5.0, "hubrise": 0.5}


@dataclass(frozen=True)
class DemoSettings:
    data_dir: Path = Path("demo-data")
    port: int = 8080
    rate: float | None = None  # orders/s; default per dialect (DEFAULT_RATE)
    duration: float = 60.0
    seed: int = 42
    faults: bool = False
    force: bool = False  # delete hub.db and erp-replica.db in data_dir even if not a demo's
    interval: float = 1.0
    lookback: float = 5.0
    dialect: str = "masonhub"  # masonhub | tradecloud | hubrise


@dataclass(frozen=True)
class Proof:
    hub_orders: int
    hub_shipments: int
    replica_orders: int
    replica_shipments: int
    missed: int  # on the hub, absent or older in the replica
    extra: int  # in the replica, not on the hub (or newer than the hub)
    applied: int  # versions the agent applied
    applied_twice: int  # applied versions beyond the distinct (id, version) pairs
    duplicates_dropped: int

    @property
    def holds(self) -> bool:
        return self.missed == 0 and self.extra == 0 and self.applied_twice == 0

    def line(self) -> str:
        verdict = "versions equal" if self.holds else "MISMATCH"
        return (
            f"proof: hub {self.hub_orders} orders / {self.hub_shipments} shipments; replica "
            f"{self.replica_orders} / {self.replica_shipments}; {verdict}; "
            f"missed {self.missed}; applied twice {self.applied_twice} "
            f"({self.applied} versions applied, {self.duplicates_dropped} repeats dropped)"
        )


async def run_demo(settings: DemoSettings, console: Console) -> int:
    if settings.rate is None:
        settings = replace(settings, rate=DEFAULT_RATE.get(settings.dialect, 5.0))
    _port_free(settings.port)  # before any file is deleted
    hub_db, replica_db = _fresh_files(settings.data_dir, force=settings.force)
    faults = FaultSettings.demo(settings.seed) if settings.faults else FaultSettings()
    # The hub app uses the store it is given as is: late commits come from the store's clock.
    store = await Store.open(f"sqlite:///{hub_db}", clock=late_commit_clock(now_ms, faults))
    token = await store.create_token("demo", CONNECTION)
    account_id = (await store.authenticate(token)).account_id
    hub_settings = HubSettings(
        db_url=f"sqlite:///{hub_db}",
        port=settings.port,
        simulate_rate=settings.rate or 0.0,
        simulate_seed=settings.seed,
        simulate_account="demo",
        faults=faults,
        sandbox=True,
    )
    app = create_app(hub_settings, store)
    if settings.dialect not in PLATFORMS:
        raise ConfigurationError(
            f"unknown dialect {settings.dialect!r}; use {', '.join(PLATFORMS)}"
        )
    base_url = f"http://127.0.0.1:{settings.port}{PLATFORMS[settings.dialect].api_root}"
    config = AgentConfig(
        sources=[
            SourceConfig(
                name=settings.dialect,
                dialect=settings.dialect,
                base_url=base_url,
                token_env=TOKEN_ENV,
                connection_name=CONNECTION,
                interval=settings.interval,
                lookback=settings.lookback,
            )
        ],
        sink=SinkConfig(url=f"sqlite:///{replica_db}"),
    )
    try:
        async with serving(app, "127.0.0.1", settings.port):
            _introduce(console, settings, base_url, token, hub_db, replica_db)
            runtime = await open_runtime(config, {TOKEN_ENV: token})
            try:
                await _mirror_live(runtime, app.state.warehouse, settings, console)
                app.state.warehouse.pause()
                console.print("\nsimulator paused; draining the agent ...")
                await _drain(runtime, console)
                proof = await _prove(store, account_id, runtime, settings.dialect)
            finally:
                await runtime.close()
    finally:
        await store.close()
    console.print(proof.line(), style="bold green" if proof.holds else "bold red", soft_wrap=True)
    return 0 if proof.holds else 1


def _port_free(port: int) -> None:
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError as exc:
        raise PortInUse(
            f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; another program uses "
            f"port {port}: choose a free one with --port (nothing was deleted)"
        ) from None


def _fresh_files(data_dir: Path, *, force: bool = False) -> tuple[Path, Path]:
    """Each demo starts from empty databases, so its proof speaks of this run only. Only
    databases an earlier demo made (its directory holds `MARKER`, or the `demo.log` demos
    before the marker left) are deleted without --force:
    `--data-dir .` must not take a real hub.db or erp-replica.db with it."""
    paths = data_dir / "hub.db", data_dir / "erp-replica.db"
    found = [path for path in paths if path.exists()]
    made_by_demo = (data_dir / MARKER).exists() or (data_dir / "demo.log").exists()
    if found and not force and not made_by_demo:
        raise WouldOverwrite(
            f"{' and '.join(str(p) for p in found)} exist and were not made by a demo: "
            "choose another --data-dir (the demo makes it), or --force to delete them"
        )
    data_dir.mkdir(parents=True, exist_ok=True)
    (data_dir / MARKER).write_text("ordersync demo databases: the next demo replaces them\n")
    for path in paths:
        for suffix in ("", "-wal", "-shm"):
            Path(f"{path}{suffix}").unlink(missing_ok=True)
    return paths


def _introduce(
    console: Console,
    settings: DemoSettings,
    base_url: str,
    token: str,
    hub_db: Path,
    replica_db: Path,
) -> None:
    faults = " with injected faults (errors, 429s, latency, resets, late commits)"
    console.print(
        f"[bold]hub[/bold] {base_url} on {hub_db}, simulating {settings.rate:g} "
        f"orders/s{faults if settings.faults else ''}",
        soft_wrap=True,
    )
    console.print(
        f"[bold]agent[/bold] mirroring it into {replica_db} every "
        f"{settings.interval:g} s (lookback {settings.lookback:g} s)",
        soft_wrap=True,
    )
    curl = PLATFORMS[settings.dialect].curl.format(
        token=token, base_url=base_url, connection=CONNECTION
    )
    console.print(f"poll it yourself: {escape(curl)}", soft_wrap=True)


async def _mirror_live(
    runtime: AgentRuntime, warehouse: object, settings: DemoSettings, console: Console
) -> None:
    stop_demo, stop_agent = asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    restore_signals = loops.on_stop_signals(loop, stop_demo.set)
    agent = asyncio.create_task(run_sources(runtime, stop_agent))
    started = time.monotonic()
    try:
        with Live(
            _progress(runtime, warehouse, 0.0),
            console=console,
            refresh_per_second=4,
            transient=False,
        ) as live:
            last_plain = 0.0
            while not stop_demo.is_set() and time.monotonic() - started < settings.duration:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_demo.wait(), 0.25)
                elapsed = time.monotonic() - started
                live.update(_progress(runtime, warehouse, elapsed))
                if not console.is_terminal and elapsed - last_plain >= 10:
                    last_plain = elapsed
                    console.print(_plain_progress(runtime, warehouse, elapsed))
    finally:
        restore_signals()
        stop_agent.set()
        await agent


def _counters(runtime: AgentRuntime) -> dict[str, float]:
    totals = {"applied": 0.0, "duplicates": 0.0, "calls": 0.0}
    lag = 0.0
    for state in runtime.status():
        totals["applied"] += state.totals.applied
        totals["duplicates"] += state.totals.duplicates
        lag = max(lag, (state.lag_ms or 0) / 1000)
    totals["calls"] = sum(engine.source.api_calls for engine in runtime.engines.values())
    totals["lag"] = lag
    totals["retries"] = _sum_samples(runtime, "ordersync_agent_retries")
    totals["throttled"] = _sum_samples(runtime, "ordersync_agent_rate_limit_hits")
    return totals


def _sum_samples(runtime: AgentRuntime, name: str) -> float:
    return sum(
        sample.value
        for metric in runtime.metrics.registry.collect()
        if metric.name == name
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def _progress(runtime: AgentRuntime, warehouse: object, elapsed: float) -> Table:
    c = _counters(runtime)
    table = Table(title=f"ordersync demo - {elapsed:4.0f} s", title_justify="left")
    for column in (
        "orders created",
        "moves",
        "versions applied",
        "repeats dropped",
        "lag (s)",
        "API calls",
        "retries",
        "429s",
    ):
        table.add_column(column, justify="right")
    table.add_row(
        str(getattr(warehouse, "created", 0)),
        str(getattr(warehouse, "moves", 0)),
        f"{c['applied']:.0f}",
        f"{c['duplicates']:.0f}",
        f"{c['lag']:.1f}",
        f"{c['calls']:.0f}",
        f"{c['retries']:.0f}",
        f"{c['throttled']:.0f}",
    )
    return table


def _plain_progress(runtime: AgentRuntime, warehouse: object, elapsed: float) -> str:
    c = _counters(runtime)
    return (
        f"{elapsed:4.0f} s: {getattr(warehouse, 'created', 0)} orders created, "
        f"{c['applied']:.0f} versions applied, lag {c['lag']:.1f} s, {c['calls']:.0f} "
        f"calls, {c['retries']:.0f} retries, {c['throttled']:.0f} 429s"
    )


async def _drain(runtime: AgentRuntime, console: Console, attempts: int = 10) -> None:
    """Cycle until a full cycle applies nothing new; a cycle that fails (faults) is retried."""
    quiet = 0
    for _ in range(attempts * 3):
        try:
            applied = 0
            for engine in runtime.engines.values():
                applied += (await engine.run_cycle()).applied
        except AgentError as exc:
            console.print(f"drain cycle failed, retrying: {escape(str(exc))}", style="yellow")
            continue
        quiet = quiet + 1 if applied == 0 else 0
        if quiet >= 2:
            return


async def _prove(store: Store, account_id: int, runtime: AgentRuntime, source: str) -> Proof:
    from ordersync.agent.sinks.sql import SqlSink, applied_versions

    sink = runtime.sink
    assert isinstance(sink, SqlSink)
    hub = {kind: await store.versions(account_id, kind) for kind in ("order", "shipment")}
    replica = {kind: await sink.load_versions(source, kind) for kind in ("order", "shipment")}
    missed = sum(1 for kind in hub for i, v in hub[kind].items() if replica[kind].get(i, 0) < v)
    extra = sum(1 for kind in hub for i, v in replica[kind].items() if hub[kind].get(i, 0) < v)
    async with sink.engine.connect() as conn:
        distinct = int(
            await conn.scalar(
                select(func.count())
                .select_from(applied_versions)
                .where(applied_versions.c.source == source)
            )
            or 0
        )
    c = _counters(runtime)
    return Proof(
        len(hub["order"]),
        len(hub["shipment"]),
        len(replica["order"]),
        len(replica["shipment"]),
        missed,
        extra,
        int(c["applied"]),
        int(c["applied"]) - distinct,
        int(c["duplicates"]),
    )


def main_exit_code(settings: DemoSettings) -> int:
    """Run the demo with its JSON log (one line per API call) in `data_dir/demo.log`."""
    console = Console() if sys.stdout.isatty() else Console(width=120)
    _port_free(settings.port)
    _fresh_files(settings.data_dir, force=settings.force)  # refuses before the log is opened
    log_path = settings.data_dir / "demo.log"
    with log_path.open("w") as log_file:
        configure_logging("json", file=log_file)
        code = loops.run(run_demo(settings, console))
    console.print(f"agent log (one JSON line per API call): {log_path}")
    return code
