"""`ordersync demo`: the hub with its warehouse simulator and the agent mirroring it, on
embedded SQLite, in one process; then the proof that the mirror equals the source.

Timeline: subscribe the agent's webhook receiver on the hub (MasonHub: `orderEvent`, both
resolutions and `skuInventoryChange`; Tradecloud: its order webhook; HubRise keeps its callback
feed); serve the hub and start the simulator (the warehouse: stock receipts, allocation, splits
and shorts); run the agent against it (orders, shipments and, where the dialect has it,
inventory; its receiver on `agent_port`) with a live progress display for `duration` seconds
(or until Ctrl-C): webhooks keep the replica fresh, polling every `interval` seconds
reconciles what they missed, and the display counts what each applied. Meanwhile the ERP side
(`demo_erp.py`, MasonHub) pushes orders of its own, an update and cancels through the push
library call; they come back as echoes. Then pause the simulator; let the pushes settle and the
agent drain; and compare every (id, version) of orders, shipments and inventory on both sides,
the splits and shorts the hub made with those the replica holds, and the update and cancel
requests the hub resolved with the outbox rows the replica resolved.
"""

from __future__ import annotations

import asyncio
import contextlib
import socket
import sys
import time
from dataclasses import dataclass, replace
from pathlib import Path
from typing import Any

import orjson
from rich.console import Console, Group
from rich.live import Live
from rich.markup import escape
from rich.table import Table
from rich.text import Text
from sqlalchemy import func, select

from ordersync import kinds, loops
from ordersync.agent.config import AgentConfig, SinkConfig, SourceConfig
from ordersync.agent.errors import AgentError
from ordersync.agent.inbox import STREAM as WEBHOOK_STREAM
from ordersync.agent.inbox import webhook_inbox
from ordersync.agent.outbox import FAILED, FINAL, RESOLVED, push_outbox
from ordersync.agent.platforms import PLATFORMS
from ordersync.agent.runner import (
    AgentRuntime,
    open_runtime,
    run_sources,
    serving_observability,
)
from ordersync.demo_erp import ErpPushes
from ordersync.domain import now_ms
from ordersync.embedded import serving
from ordersync.errors import ConfigurationError, PortInUse, WouldOverwrite
from ordersync.hub.app import create_app
from ordersync.hub.faults import FaultSettings, late_commit_clock
from ordersync.hub.settings import HubSettings
from ordersync.logs import configure_logging
from ordersync.store.inventory import InventoryStore
from ordersync.store.store import Principal, Store
from ordersync.store.tables import (
    changes,
    order_cancel_requests,
    order_update_requests,
    orders,
    shipments,
    skus,
)
from ordersync.store.webhooks import WebhookStore

TOKEN_ENV = "ORDERSYNC_DEMO_TOKEN"
CONNECTION = "erp-agent"
# HubRise acknowledges each callback event with one call under a 500/minute quota (seed 003):
# a location producing more than ~6 events per second cannot be followed within it.
MARKER = ".ordersync-demo"  # in a data directory the demo made
DEFAULT_RATE = {"masonhub": 5.0, "tradecloud": 5.0, "hubrise": 0.5}
# What the demo subscribes the agent's receiver to, per dialect. HubRise keeps one callback
# per connection, and the agent's HubRise source already follows it (passive events): no
# active callback there.
WEBHOOK_TYPES = {
    "masonhub": (
        "orderEvent",
        "orderUpdateResolution",
        "orderCancelResolution",
        "skuInventoryChange",
    ),
    "tradecloud": ("orderEvent",),
}
RESOLUTION_TYPES = ("orderUpdateResolution", "orderCancelResolution")


@dataclass(frozen=True)
class DemoSettings:
    data_dir: Path = Path("demo-data")
    port: int = 8080
    rate: float | None = None  # orders/s; default per dialect (DEFAULT_RATE)
    duration: float = 60.0
    seed: int = 42
    faults: bool = False
    force: bool = False  # delete hub.db and erp-replica.db in data_dir even if not a demo's
    interval: float = 5.0  # polling: the reconciliation beside the webhooks
    lookback: float = 5.0
    dialect: str = "masonhub"  # masonhub | tradecloud | hubrise
    webhooks: bool = True  # the agent's receiver subscribed on the hub (not on hubrise)
    agent_port: int | None = None  # the receiver's port; default port + 1

    @property
    def takes_webhooks(self) -> bool:
        return self.webhooks and self.dialect in WEBHOOK_TYPES

    @property
    def receiver_port(self) -> int:
        return self.agent_port or self.port + 1

    @property
    def interval_s(self) -> float:
        """Polling every `interval`; without webhooks, every second as before."""
        return self.interval if self.takes_webhooks else min(self.interval, 1.0)


@dataclass(frozen=True)
class Fulfillment:
    """Orders shipped in several shipments (splits) and orders with shorts, on one side."""

    split: int = 0
    short: int = 0


@dataclass(frozen=True)
class Requests:
    """The ERP's update and cancel requests: resolved on the hub, and in the replica's outbox."""

    hub_resolved: int = 0  # success or failed on the hub
    hub_failed: int = 0  # of hub_resolved
    hub_open: int = 0  # still pending on the hub
    outbox_resolved: int = 0  # outbox rows of a request, resolved or failed
    unsettled: int = 0  # resolved on the hub, the outbox not (or not the same way)

    @property
    def hold(self) -> bool:
        return self.hub_open == 0 and self.unsettled == 0


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
    by_webhook: int = 0  # of `applied`: by the webhooks stream (the rest by polling)
    hub_resolutions: int = 0  # update and cancel requests the hub resolved
    resolutions_received: int = 0  # their callbacks in the agent's inbox
    resolutions_lost: int = 0  # callbacks the hub dropped on purpose (--faults)
    callbacks: bool = True  # resolution callbacks subscribed (not with --no-webhooks)
    hub_inventory: int | None = None  # SKUs; None: the dialect has no inventory stream
    replica_inventory: int = 0
    hub_fulfillment: Fulfillment = Fulfillment()
    replica_fulfillment: Fulfillment = Fulfillment()
    echoes: int = 0  # versions of our own pushes recognised when they came back
    requests: Requests | None = None  # None: the demo pushed nothing (not MasonHub)

    @property
    def resolutions_hold(self) -> bool:
        # A callback lost on the way is not redelivered: the push polls the request's status
        # instead (`requests`). The lost ones are named, not counted.
        if not self.callbacks:  # nothing to receive: the push polled them (`requests`)
            return True
        return self.resolutions_received + self.resolutions_lost >= self.hub_resolutions

    @property
    def holds(self) -> bool:
        return (
            self.missed == 0
            and self.extra == 0
            and self.applied_twice == 0
            and self.resolutions_hold
            and (self.requests is None or self.requests.hold)
            and self.hub_fulfillment == self.replica_fulfillment
        )

    def line(self) -> str:
        verdict = "versions equal" if self.holds else "MISMATCH"
        has_inventory = self.hub_inventory is not None
        hub_inventory = f" / {self.hub_inventory} inventory" if has_inventory else ""
        replica_inventory = f" / {self.replica_inventory}" if has_inventory else ""
        hub, replica, r = self.hub_fulfillment, self.replica_fulfillment, self.requests
        return (
            f"proof: hub {self.hub_orders} orders / {self.hub_shipments} shipments"
            f"{hub_inventory}; replica {self.replica_orders} / {self.replica_shipments}"
            f"{replica_inventory}; {verdict}; "
            f"missed {self.missed}; applied twice {self.applied_twice} "
            f"({self.applied} versions applied: {self.by_webhook} by webhook, "
            f"{self.applied - self.by_webhook} by polling; {self.duplicates_dropped} repeats "
            f"dropped); resolutions: hub {self.hub_resolutions}, "
            + (
                f"received {self.resolutions_received}"
                if self.callbacks
                else "no callbacks subscribed"
                + (" (polled by the push)" if self.hub_resolutions else "")
            )
            + (f", lost on the way {self.resolutions_lost}" if self.resolutions_lost else "")
            + f"\nfulfillment: orders split over several shipments: hub {hub.split}, replica "
            f"{replica.split}; orders with shorts: hub {hub.short}, replica {replica.short}"
            + (
                "\nrequests: none pushed"
                if r is None
                else f"\nrequests: hub resolved {r.hub_resolved} ({r.hub_failed} failed), open "
                f"{r.hub_open}; outbox resolved {r.outbox_resolved}, unsettled {r.unsettled}"
            )
            + f"; echoes {self.echoes}"
        )


async def run_demo(settings: DemoSettings, console: Console) -> int:
    if settings.rate is None:
        settings = replace(settings, rate=DEFAULT_RATE.get(settings.dialect, 5.0))
    _ports_free(settings)  # before any file is deleted
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
    agent_port = settings.receiver_port
    secrets: list[str] = []
    if settings.takes_webhooks:
        secrets = await _subscribe(
            app.state.webhooks,
            await store.authenticate(token),
            settings.dialect,
            f"http://127.0.0.1:{agent_port}/webhooks/{settings.dialect}",
        )
    config = AgentConfig(
        sources=[
            SourceConfig(
                name=settings.dialect,
                dialect=settings.dialect,
                base_url=base_url,
                token_env=TOKEN_ENV,
                connection_name=CONNECTION,  # our own pushes come back marked as echoes
                streams=list(kinds.streams(settings.dialect)),  # inventory where it exists
                interval=settings.interval_s,
                lookback=settings.lookback,
                webhook_secrets=secrets,
            )
        ],
        sink=SinkConfig(url=f"sqlite:///{replica_db}"),
        port=agent_port if secrets else None,
    )
    stock = InventoryStore(store)
    erp = ErpPushes(
        config.sources[0],
        token,
        config.sink.url,
        settings.seed,
        lambda: stock.has_catalogue(account_id),
    )
    try:
        async with serving(app, "127.0.0.1", settings.port):
            _introduce(console, settings, base_url, token, hub_db, replica_db, agent_port)
            runtime = await open_runtime(config, {TOKEN_ENV: token})
            try:
                async with serving_observability(runtime, config.port):
                    await _mirror_live(runtime, app.state.warehouse, settings, console, erp)
                    app.state.warehouse.pause()
                    await app.state.warehouse.settled()  # a receipt may be committing
                    console.print(
                        "\nsimulator paused; settling the ERP's pushes and draining the agent ..."
                    )
                    await erp.settle()
                    await _drain(runtime, console)
                    await _await_resolutions(store, account_id, runtime)
                proof = await _prove(store, account_id, runtime, settings, erp)
            finally:
                await runtime.close()
    finally:
        await store.close()
    console.print(erp.summary(), soft_wrap=True)
    for outcome in erp.outcomes():
        console.print(escape(outcome), soft_wrap=True)
    console.print(proof.line(), style="bold green" if proof.holds else "bold red", soft_wrap=True)
    return 0 if proof.holds else 1


async def _subscribe(
    webhooks: WebhookStore, principal: Principal, dialect: str, url: str
) -> list[str]:
    """Subscribe `url` on the hub to what the demo's dialect sends; the signing secrets (the
    agent accepts a delivery signed with any of them)."""
    secrets = []
    for message_type in WEBHOOK_TYPES[dialect]:
        _, secret = await webhooks.create(principal, dialect, url, message_type)
        secrets.append(secret)
    return secrets


def _ports_free(settings: DemoSettings) -> None:
    _port_free(settings.port)
    if settings.takes_webhooks:
        _port_free(settings.receiver_port, "--agent-port")


def _port_free(port: int, option: str = "--port") -> None:
    try:
        socket.create_server(("127.0.0.1", port)).close()
    except OSError as exc:
        raise PortInUse(
            f"cannot listen on 127.0.0.1:{port}: {exc.strerror or exc}; another program uses "
            f"port {port}: choose a free one with {option} (nothing was deleted)"
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
    agent_port: int,
) -> None:
    faults = " with injected faults (errors, 429s, latency, resets, late commits, lost webhooks)"
    console.print(
        f"[bold]hub[/bold] {base_url} on {hub_db}, simulating {settings.rate:g} "
        f"orders/s{faults if settings.faults else ''}",
        soft_wrap=True,
    )
    if settings.takes_webhooks:
        console.print(
            f"[bold]agent[/bold] mirroring it into {replica_db}: webhooks to "
            f"http://127.0.0.1:{agent_port}/webhooks/{settings.dialect} keep it fresh, "
            f"polling every {settings.interval_s:g} s reconciles (lookback "
            f"{settings.lookback:g} s)",
            soft_wrap=True,
        )
    else:
        console.print(
            f"[bold]agent[/bold] mirroring it into {replica_db} every "
            f"{settings.interval_s:g} s (lookback {settings.lookback:g} s)",
            soft_wrap=True,
        )
    curl = PLATFORMS[settings.dialect].curl.format(
        token=token, base_url=base_url, connection=CONNECTION
    )
    console.print(f"poll it yourself: {escape(curl)}", soft_wrap=True)


async def _mirror_live(
    runtime: AgentRuntime,
    warehouse: object,
    settings: DemoSettings,
    console: Console,
    erp: ErpPushes,
) -> None:
    """The agent and the ERP's pushes run while the display shows them, until `duration` or
    Ctrl-C; then the pushes under way finish (the second one is skipped if not started)."""
    stop_demo, stop_agent, ending = asyncio.Event(), asyncio.Event(), asyncio.Event()
    loop = asyncio.get_running_loop()
    restore_signals = loops.on_stop_signals(loop, stop_demo.set)
    agent = asyncio.create_task(run_sources(runtime, stop_agent))
    pushes = asyncio.create_task(erp.run(ending, settings.duration / 2))
    started = time.monotonic()
    try:
        with Live(
            _progress(runtime, warehouse, 0.0, erp),
            console=console,
            refresh_per_second=4,
            transient=False,
        ) as live:
            last_plain = 0.0
            while not stop_demo.is_set() and time.monotonic() - started < settings.duration:
                with contextlib.suppress(TimeoutError):
                    await asyncio.wait_for(stop_demo.wait(), 0.25)
                elapsed = time.monotonic() - started
                live.update(_progress(runtime, warehouse, elapsed, erp))
                if not console.is_terminal and elapsed - last_plain >= 10:
                    last_plain = elapsed
                    console.print(_plain_progress(runtime, warehouse, elapsed, erp))
            ending.set()
            await pushes  # the push under way follows its requests to their resolutions
            live.update(_progress(runtime, warehouse, time.monotonic() - started, erp))
    finally:
        ending.set()
        restore_signals()
        if not pushes.done():
            pushes.cancel()
        await asyncio.gather(pushes, return_exceptions=True)  # its failure, if any, is raised
        stop_agent.set()
        await agent


def _counters(runtime: AgentRuntime) -> dict[str, float]:
    totals = {"applied": 0.0, "duplicates": 0.0, "calls": 0.0, "by_webhook": 0.0, "echoes": 0.0}
    lag = 0.0
    for state in runtime.status():
        totals["echoes"] = max(totals["echoes"], float(state.echoes))  # one count per source
        totals["applied"] += state.totals.applied
        totals["duplicates"] += state.totals.duplicates
        if state.stream == WEBHOOK_STREAM:
            totals["by_webhook"] += state.totals.applied
        lag = max(lag, (state.lag_ms or 0) / 1000)
    totals["calls"] = sum(engine.source.api_calls for engine in runtime.engines.values())
    totals["lag"] = lag
    totals["retries"] = _sum_samples(runtime, "ordersync_agent_retries")
    totals["throttled"] = _sum_samples(runtime, "ordersync_agent_rate_limit_hits")
    totals["received"] = _sum_samples(runtime, "ordersync_agent_webhooks_received")
    return totals


def _sum_samples(runtime: AgentRuntime, name: str) -> float:
    return sum(
        sample.value
        for metric in runtime.metrics.registry.collect()
        if metric.name == name
        for sample in metric.samples
        if sample.name.endswith("_total")
    )


def _progress(runtime: AgentRuntime, warehouse: object, elapsed: float, erp: ErpPushes) -> Group:
    c = _counters(runtime)
    table = Table(title=f"ordersync demo - {elapsed:4.0f} s", title_justify="left")
    for column in (
        "orders created",
        "moves",
        "versions applied",
        "by webhook",
        "by poll",
        "webhooks",
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
        f"{c['by_webhook']:.0f}",
        f"{c['applied'] - c['by_webhook']:.0f}",
        f"{c['received']:.0f}",
        f"{c['duplicates']:.0f}",
        f"{c['lag']:.1f}",
        f"{c['calls']:.0f}",
        f"{c['retries']:.0f}",
        f"{c['throttled']:.0f}",
    )
    pushed = f"{erp.summary()}; echoes {c['echoes']:.0f}"
    return Group(table, Text(pushed), *(Text(o) for o in erp.outcomes()))


def _plain_progress(
    runtime: AgentRuntime, warehouse: object, elapsed: float, erp: ErpPushes
) -> str:
    c = _counters(runtime)
    return (
        f"{elapsed:4.0f} s: {getattr(warehouse, 'created', 0)} orders created, "
        f"{c['applied']:.0f} versions applied ({c['by_webhook']:.0f} by webhook, "
        f"{c['applied'] - c['by_webhook']:.0f} by poll), lag {c['lag']:.1f} s, {c['calls']:.0f} "
        f"calls, {c['retries']:.0f} retries, {c['throttled']:.0f} 429s; {erp.summary()}; "
        f"echoes {c['echoes']:.0f}"
    )


async def _drain(runtime: AgentRuntime, console: Console, attempts: int = 10) -> None:
    """Cycle until a full cycle applies nothing new; a cycle that fails (faults) is retried."""
    quiet = 0
    for _ in range(attempts * 3):
        try:
            applied = 0
            for name, engine in runtime.engines.items():
                applied += (await engine.run_cycle()).applied
                if (feed := runtime.inbox_feeds.get(name)) is not None:
                    applied += (await engine.sync_feed(feed)).applied
        except AgentError as exc:
            console.print(f"drain cycle failed, retrying: {escape(str(exc))}", style="yellow")
            continue
        quiet = quiet + 1 if applied == 0 else 0
        if quiet >= 2:
            return


async def _hub_resolutions(store: Store, account_id: int) -> int:
    """Update and cancel requests the hub resolved for the account (each a `request` event)."""
    async with store.reader.connect() as conn:
        count = await conn.scalar(
            select(func.count())
            .select_from(changes)
            .where(changes.c.account_id == account_id, changes.c.entity_kind == "request")
        )
    return int(count or 0)


async def _resolutions_received(runtime: AgentRuntime) -> int:
    """Resolution callbacks in the agent's webhook inbox (bodies are kept a day)."""
    from ordersync.agent.sinks.sql import SqlSink

    if runtime.receiver is None or not isinstance(runtime.sink, SqlSink):
        return 0
    async with runtime.sink.engine.connect() as conn:
        bodies = (await conn.execute(select(webhook_inbox.c.body))).scalars()
        return sum(1 for body in bodies if _message_type(body) in RESOLUTION_TYPES)


def _message_type(body: str) -> str | None:
    try:
        document = orjson.loads(body)
    except orjson.JSONDecodeError:
        return None
    return document.get("message_type") if isinstance(document, dict) else None


async def _resolutions_lost(store: Store) -> int:
    """Resolution callbacks the hub dropped on purpose (`--faults`: `webhook_drop_rate`)."""
    from ordersync.store.tables import webhook_attempts, webhook_deliveries

    a, d = webhook_attempts.c, webhook_deliveries.c
    async with store.reader.connect() as conn:
        bodies = (
            await conn.execute(
                select(d.body)
                .join(webhook_attempts, a.delivery_id == d.id)
                .where(a.error.like("injected fault%"))
            )
        ).scalars()
        return sum(1 for body in bodies if _message_type(body) in RESOLUTION_TYPES)


async def _await_resolutions(
    store: Store, account_id: int, runtime: AgentRuntime, seconds: float = 10.0
) -> None:
    """Give the hub's delivery a few seconds to bring the last resolutions' callbacks."""
    if runtime.receiver is None:
        return
    deadline = time.monotonic() + seconds
    while time.monotonic() < deadline:
        wanted = await _hub_resolutions(store, account_id) - await _resolutions_lost(store)
        if await _resolutions_received(runtime) >= wanted:
            return
        await asyncio.sleep(0.25)


async def _prove(
    store: Store,
    account_id: int,
    runtime: AgentRuntime,
    settings: DemoSettings,
    erp: ErpPushes,
) -> Proof:
    from ordersync.agent.sinks.sql import SqlSink, applied_versions

    source = settings.dialect
    sink = runtime.sink
    assert isinstance(sink, SqlSink)
    names = [kinds.by_stream(stream).name for stream in config_streams(runtime)]
    hub = {kind: await _hub_versions(store, account_id, kind) for kind in names}
    replica = {kind: await sink.load_versions(source, kind) for kind in names}
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
    has_inventory = "inventory" in hub
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
        by_webhook=int(c["by_webhook"]),
        hub_resolutions=await _hub_resolutions(store, account_id),
        resolutions_received=await _resolutions_received(runtime),
        resolutions_lost=await _resolutions_lost(store),
        callbacks=runtime.receiver is not None and source in WEBHOOK_TYPES,
        hub_inventory=len(hub["inventory"]) if has_inventory else None,
        replica_inventory=len(replica["inventory"]) if has_inventory else 0,
        hub_fulfillment=await _hub_fulfillment(store, account_id),
        replica_fulfillment=await _replica_fulfillment(sink, source),
        echoes=int(c["echoes"]),
        requests=await _requests(store, account_id, sink, source) if erp.enabled else None,
    )


def config_streams(runtime: AgentRuntime) -> list[str]:
    return [stream for s in runtime.config.sources for stream in s.streams]


async def _hub_versions(store: Store, account_id: int, kind: str) -> dict[str, int]:
    """Every id of `kind` in the account with its version (inventory: each SKU's)."""
    if kind != "inventory":
        return await store.versions(account_id, kind)
    async with store.reader.connect() as conn:
        rows = await conn.execute(
            select(skus.c.id, skus.c.version).where(skus.c.account_id == account_id)
        )
        return {str(r[0]): int(r[1]) for r in rows}


async def _hub_fulfillment(store: Store, account_id: int) -> Fulfillment:
    """The hub's orders with several shipments, and with shorts (its stored documents are
    compact JSON: a non-empty list reads `[{`)."""
    async with store.reader.connect() as conn:
        per_order = (
            select(shipments.c.order_id)
            .where(shipments.c.account_id == account_id)
            .group_by(shipments.c.order_id)
            .having(func.count() > 1)
            .subquery()
        )
        split = await conn.scalar(select(func.count()).select_from(per_order))
        short = await conn.scalar(
            select(func.count())
            .select_from(orders)
            .where(orders.c.account_id == account_id, orders.c.doc.contains('"shorts":[{'))
        )
    return Fulfillment(int(split or 0), int(short or 0))


async def _replica_fulfillment(sink: Any, source: str) -> Fulfillment:
    """The same, read from the replica: its shipments grouped by order id, and the `shorts`
    of its orders' documents as received."""
    from ordersync.agent.sinks.sql import orders as replica_orders
    from ordersync.agent.sinks.sql import shipments as replica_shipments

    s, o = replica_shipments.c, replica_orders.c
    async with sink.engine.connect() as conn:
        per_order = (
            select(s.order_id)
            .where(s.source == source)
            .group_by(s.order_id)
            .having(func.count() > 1)
            .subquery()
        )
        split = await conn.scalar(select(func.count()).select_from(per_order))
        documents = (await conn.execute(select(o.data).where(o.source == source))).scalars()
        short = sum(1 for data in documents if _has_shorts(data))
    return Fulfillment(int(split or 0), short)


def _has_shorts(data: str) -> bool:
    try:
        document = orjson.loads(data)
    except orjson.JSONDecodeError:
        return False
    return isinstance(document, dict) and bool(document.get("shorts"))


async def _requests(store: Store, account_id: int, sink: Any, source: str) -> Requests:
    """The update and cancel requests the hub resolved, against the push outbox's rows of
    them in the replica: each resolved the same way (success = resolved, failed = failed)."""
    hub: dict[str, str] = {}
    async with store.reader.connect() as conn:
        for table in (order_update_requests, order_cancel_requests):
            rows = await conn.execute(
                select(table.c.id, table.c.status).where(table.c.account_id == account_id)
            )
            hub.update({str(i): str(status) for i, status in rows})
    c = push_outbox.c
    async with sink.engine.connect() as conn:
        rows = await conn.execute(
            select(c.request_id, c.state).where(c.source == source, c.request_id.is_not(None))
        )
        outbox = {str(i): str(state) for i, state in rows}
    resolved = {i: status for i, status in hub.items() if status in ("success", "failed")}
    expected = {"success": RESOLVED, "failed": FAILED}
    return Requests(
        hub_resolved=len(resolved),
        hub_failed=sum(1 for status in resolved.values() if status == "failed"),
        hub_open=len(hub) - len(resolved),
        outbox_resolved=sum(1 for state in outbox.values() if state in FINAL),
        unsettled=sum(1 for i, status in resolved.items() if outbox.get(i) != expected[status]),
    )


def main_exit_code(settings: DemoSettings) -> int:
    """Run the demo with its JSON log (one line per API call) in `data_dir/demo.log`."""
    console = Console() if sys.stdout.isatty() else Console(width=120)
    _ports_free(settings)
    _fresh_files(settings.data_dir, force=settings.force)  # refuses before the log is opened
    log_path = settings.data_dir / "demo.log"
    with log_path.open("w") as log_file:
        configure_logging("json", file=log_file)
        code = loops.run(run_demo(settings, console))
    console.print(f"agent log (one JSON line per API call): {log_path}")
    return code
