"""Wiring for `ordersync agent run`: config -> sink, sources and engines, run until stopped.

Several sources sync concurrently on one event loop and share one sink (its checkpoints are
keyed by source and stream). A refused token stops its own source with a clear message; the
others keep going. The status page (`/`), `/status` (JSON), `/metrics` (Prometheus), `/healthz`
and `/readyz` are served on the agent's port, and `POST /webhooks/{source}` for sources with
webhook secrets (`webhooks.py`; their inbox feeds run beside the poll loops, `inbox.py`).
"""

from __future__ import annotations

import asyncio
import contextlib
from collections import deque
from collections.abc import AsyncIterator, Callable, Coroutine, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import orjson
import stamina
import structlog
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest
from starlette.applications import Starlette
from starlette.requests import Request
from starlette.responses import HTMLResponse, JSONResponse, Response
from starlette.routing import Route

from ordersync.agent import status_page, talk
from ordersync.agent.budget import Budget, BudgetBook, Pause
from ordersync.agent.client import ApiClient, auth_headers
from ordersync.agent.config import AgentConfig, SourceConfig
from ordersync.agent.engine import CycleCounts, StreamStatus, SyncEngine, run_every
from ordersync.agent.errors import AuthError, RequestAborted, SinkError, Unreachable
from ordersync.agent.feeds.listing import ListingFeed
from ordersync.agent.inbox import STREAM as INBOX_STREAM
from ordersync.agent.inbox import Inbox, InboxFeed, run_inbox
from ordersync.agent.lease import POLL_SECONDS, Lease, acquire, shown
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.outbox import Outbox
from ordersync.agent.platforms import PLATFORMS, advertised_lookback_ms
from ordersync.agent.sinks import open_sink
from ordersync.agent.sinks.base import Sink
from ordersync.agent.sinks.sql import SqlSink
from ordersync.agent.status_page import Round
from ordersync.agent.webhooks import Receiver, SourceWebhooks, decode_secret
from ordersync.domain.timestamps import format_rfc3339, now_ms
from ordersync.embedded import serving
from ordersync.errors import ConfigurationError, ReplicaUnavailable
from ordersync.store.engine import parse_database_url

log = structlog.get_logger("ordersync.agent")

REQUEST_TIMEOUT = httpx.Timeout(30.0, connect=10.0)
HTTP_STATE = "ordersync-http-sink-state.json"  # an HTTP sink's cursors, in the state directory
ROUNDS_KEPT = 200  # poll rounds the status page's sparklines show
PROGRESS_SECONDS = 10.0  # a drain running longer reports its progress this often


@dataclass
class AgentRuntime:
    """Everything one `agent run` holds open; `close()` releases it."""

    config: AgentConfig
    sink: Sink
    metrics: AgentMetrics
    engines: dict[str, SyncEngine] = field(default_factory=dict)
    clients: list[httpx.AsyncClient] = field(default_factory=list)
    stopped: dict[str, str] = field(default_factory=dict)  # source -> why it stopped
    draining: dict[str, int] = field(default_factory=dict)  # source -> drain started (ms)
    rounds: deque[Round] = field(default_factory=lambda: deque(maxlen=ROUNDS_KEPT))
    budgets: BudgetBook = field(default_factory=BudgetBook)  # rate-limit budgets by connection
    receiver: Receiver | None = None  # sources with webhook secrets
    inbox_feeds: dict[str, InboxFeed] = field(default_factory=dict)

    async def close(self) -> None:
        for client in self.clients:
            await client.aclose()
        await self.sink.close()

    def status(self) -> list[StreamStatus]:
        return [state for engine in self.engines.values() for state in engine.status()]


async def open_runtime(
    config: AgentConfig,
    environ: Mapping[str, str],
    *,
    transport: httpx.AsyncBaseTransport | None = None,
    state_dir: Path | None = None,
    budgets: Callable[[AgentMetrics], BudgetBook] = BudgetBook,
) -> AgentRuntime:
    """Open the sink and build one engine per source. Tokens are checked here, before any I/O."""
    tokens = {source.name: source.token(environ) for source in config.sources}
    # The agent counts retries in its own metrics and logs every attempt; stamina's line would
    # report the zero wait the retrier hands it (agent/retry.py sleeps the policy's wait).
    stamina.instrumentation.set_on_retry_hooks(())
    metrics = AgentMetrics()
    sink_http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT)
    state = state_dir or config.state_dir or Path(".")
    check_replica(config.sink.url, create=True)
    try:
        sink = await open_sink(config.sink.url, http=sink_http, state_path=state / HTTP_STATE)
    except SinkError as exc:  # one line: SQLAlchemy's messages add a "Background" link line
        await sink_http.aclose()
        raise ReplicaUnavailable(str(exc).splitlines()[0]) from None
    runtime = AgentRuntime(config, sink, metrics, clients=[sink_http], budgets=budgets(metrics))
    metrics.watch_quarantine(lambda: getattr(sink, "quarantine_counts", {}))
    for source_config in config.sources:
        http = httpx.AsyncClient(timeout=REQUEST_TIMEOUT, transport=transport)
        runtime.clients.append(http)
        token = tokens[source_config.name]
        budget = runtime.budgets.for_source(
            source_config.name, source_config.base_url, token, source_config.quotas
        )
        runtime.engines[source_config.name] = build_engine(
            source_config, token, http, sink, metrics, budget=budget
        )
    try:
        await open_webhooks(runtime)
    except SinkError as exc:
        await runtime.close()
        raise ReplicaUnavailable(str(exc)) from None
    return runtime


async def open_webhooks(runtime: AgentRuntime) -> None:
    """The receiver and one inbox feed per source with webhook secrets (config.py allows them
    on SQL replicas only)."""
    config = runtime.config
    takers = [s for s in config.sources if s.webhook_secrets]
    if not takers or not isinstance(runtime.sink, SqlSink):
        return
    inbox = await Inbox.open(runtime.sink.engine)
    # MasonHub's resolution callbacks settle what `agent push` follows (agent/push.py).
    outbox = await Outbox.open(runtime.sink.engine)
    desks = {
        s.name: SourceWebhooks(s.name, s.dialect, [decode_secret(k) for k in s.webhook_secrets])
        for s in takers
    }
    runtime.receiver = Receiver(
        desks,
        inbox,
        runtime.metrics,
        tolerance_s=config.webhook_tolerance,
        max_body=config.webhook_max_body,
    )
    for s in takers:
        runtime.inbox_feeds[s.name] = InboxFeed(
            runtime.engines[s.name].source,
            s.dialect,
            inbox,
            poll_wake=desks[s.name].poll_wake,
            metrics=runtime.metrics,
            outbox=outbox if s.dialect == "masonhub" else None,
        )


def replica_file(url: str) -> Path | None:
    """The file a SQLite or JSONL replica lives in (None for other sinks)."""
    scheme = url.partition("://")[0].split("+")[0].lower()
    if scheme == "sqlite":
        path = parse_database_url(url).sync_url.removeprefix("sqlite:///")
        return None if path in ("", ":memory:") else Path(path)
    if scheme == "jsonl":
        return Path(url.partition("://")[2])
    return None


def check_replica(url: str, *, create: bool) -> None:
    """Fail with one line before opening a replica that cannot be: its directory is missing
    (the sink would not create it), or, when not to `create` it (`agent status`, `agent
    reset`), the file itself is."""
    path = replica_file(url)
    if path is None:
        return
    if not path.parent.is_dir():
        raise ReplicaUnavailable(
            f"the replica's directory {path.parent} does not exist ([sink] url = {url!r}): "
            "create it, or point url elsewhere"
        )
    if not create and not path.exists():
        raise ReplicaUnavailable(
            f"there is no replica at {path} yet ([sink] url = {url!r}): `ordersync agent run` "
            "creates it; check the config's [sink] url and the directory you run in"
        )


def build_engine(
    source_config: SourceConfig,
    token: str,
    http: httpx.AsyncClient,
    sink: Sink,
    metrics: AgentMetrics,
    budget: Budget | None = None,
) -> SyncEngine:
    """The sync of one source: its platform's feeds driving the one engine."""
    c = source_config
    platform = PLATFORMS[c.dialect]
    client = ApiClient(
        http,
        c.base_url,
        token,
        source=c.name,
        metrics=metrics,
        auth=auth_headers(c.auth_scheme, token, c.connection_name),
        exact_numbers=platform.exact_numbers,
        budget=budget,
    )
    source, feeds = platform.build(client, c, now_ms)
    return SyncEngine(source, sink, feeds=feeds, metrics=metrics)


async def preflight(runtime: AgentRuntime) -> None:
    """One cheap call per source, so that a wrong URL or token fails at start, clearly,
    instead of as retries in the log."""
    for name, engine in runtime.engines.items():
        client = api_client(engine)
        platform = PLATFORMS[next(s.dialect for s in runtime.config.sources if s.name == name)]
        check = platform.preflight
        try:
            status, headers = await client.probe_response(
                check.method, check.path, check.params, check.body
            )
        except Unreachable as exc:
            raise ConfigurationError(
                f"source {name!r}: cannot reach {client.base_url} ({exc.__cause__}); "
                "check base_url and that the platform is up"
            ) from None
        if status in (401, 403):
            raise ConfigurationError(
                f"source {name!r}: the platform refused the token ({status}); "
                f"check the variable {_token_env(runtime.config, name)}"
            )
        if status == 404:
            raise ConfigurationError(
                f"source {name!r}: {client.base_url + check.path} does not exist (404); "
                "base_url should end with the API root, e.g. "
                f"http://127.0.0.1:8080{platform.api_root}"
            )
        source = next(s for s in runtime.config.sources if s.name == name)
        lookback = advertised_lookback_ms(source, headers)
        if lookback is not None:
            for feed in engine.feeds:
                if isinstance(feed, ListingFeed):
                    feed.lookback_ms = lookback


def api_client(engine: SyncEngine) -> ApiClient:
    """The platform client of an engine's source (every platform's source has one)."""
    client = getattr(engine.source, "client", None)
    if not isinstance(client, ApiClient):
        raise TypeError(f"source {engine.source.name!r} has no platform client")
    return client


@contextlib.asynccontextmanager
async def stopping_on(runtime: AgentRuntime, stop: asyncio.Event) -> AsyncIterator[None]:
    """While inside, `stop` ends every wait on the network at once: requests in flight and
    retry backoffs (`RequestAborted`), quota waits (`BudgetClosed`). A page whose request is
    dropped is simply not applied; its stream's stored cursor has not moved past it."""

    async def release_waits() -> None:
        await stop.wait()
        runtime.budgets.close()  # a spent daily quota can hold a request back for hours
        for client in _api_clients(runtime):
            client.abort()

    releasing = asyncio.ensure_future(release_waits())
    try:
        yield
    finally:
        releasing.cancel()
        # The runtime may run again (the demo drains after its loop).
        runtime.budgets.reopen()
        for client in _api_clients(runtime):
            client.resume()


def _api_clients(runtime: AgentRuntime) -> list[ApiClient]:
    """The platform clients of the runtime's engines (an engine without one has none)."""
    clients = (
        getattr(getattr(e, "source", None), "client", None) for e in runtime.engines.values()
    )
    return [client for client in clients if isinstance(client, ApiClient)]


def _token_env(config: AgentConfig, name: str) -> str:
    return next(s.token_env for s in config.sources if s.name == name)


async def run_sources(runtime: AgentRuntime, stop: asyncio.Event, *, once: bool = False) -> None:
    """Run every source until `stop` (or one drain each with `once`)."""

    async def run_one(name: str, engine: SyncEngine) -> None:
        interval = next(s.interval for s in runtime.config.sources if s.name == name)

        async def cycle(*, stop_event: asyncio.Event) -> CycleCounts:
            runtime.draining[name] = now_ms()
            try:
                counts = await engine.run_cycle(stop_event=stop_event)
            finally:
                runtime.draining.pop(name, None)
            states, now = engine.status(), now_ms()
            talk.poll_round(name, counts, states, now, None if once else interval)
            lags = [lag for st in states if (lag := talk.lag_seconds(st, now)) is not None]
            runtime.rounds.append(Round(now, name, max(lags, default=None), counts.applied))
            return counts

        # (Stand-in runtimes of unit tests have no webhook parts.)
        receiver = getattr(runtime, "receiver", None)
        desk = receiver.sources.get(name) if receiver is not None else None
        feed = getattr(runtime, "inbox_feeds", {}).get(name)
        try:
            if once:
                await cycle(stop_event=stop)
                if feed is not None:
                    await engine.sync_feed(feed, stop_event=stop)
            elif desk is not None and feed is not None:
                await _together(
                    run_every(name, cycle, interval, stop, wake=desk.poll_wake),
                    run_inbox(engine, feed, desk.inbox_wake, stop, idle_s=min(interval, 30.0)),
                )
            else:
                await run_every(name, cycle, interval, stop)
        except AuthError as exc:
            runtime.stopped[name] = str(exc)
            log.error("source_stopped", source=name, reason=str(exc))
        except RequestAborted:  # also BudgetClosed
            pass  # stopped while waiting: that page was not applied, its cursor did not move

    ticker = asyncio.ensure_future(_report_long_drains(runtime, stop))
    try:
        async with stopping_on(runtime, stop):
            await asyncio.gather(*(run_one(n, e) for n, e in runtime.engines.items()))
    finally:
        ticker.cancel()


async def _together(*loops: Coroutine[Any, Any, None]) -> None:
    """Run a source's loops until all end; the first to fail ends the others (a refused token
    stops the source's inbox drain as well as its polling)."""
    tasks = [asyncio.ensure_future(loop) for loop in loops]
    try:
        await asyncio.gather(*tasks)
    finally:
        for task in tasks:
            task.cancel()
        await asyncio.gather(*tasks, return_exceptions=True)


async def _report_long_drains(
    runtime: AgentRuntime, stop: asyncio.Event, every_s: float = PROGRESS_SECONDS
) -> None:
    """A drain that runs longer than `every_s` (a backfill) says how far it got, every `every_s`
    seconds: the poll round's line comes only at its end."""
    while not stop.is_set():
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), every_s)
        for name, since in list(runtime.draining.items()):
            if now_ms() - since >= every_s * 1000 and not stop.is_set():
                applied = _applied_so_far(runtime, name)
                talk.progress(name, applied, runtime.engines[name].status())


def _applied_so_far(runtime: AgentRuntime, source: str) -> int:
    """Records applied for `source` since start, commits of the running drain included (the
    engine adds a drain's counts to its status only at the drain's end)."""
    return int(
        sum(
            sample.value
            for metric in runtime.metrics.registry.collect()
            if metric.name == "ordersync_agent_records_applied"
            for sample in metric.samples
            if sample.name.endswith("_total") and sample.labels.get("source") == source
        )
    )


def status_payload(runtime: AgentRuntime, now: int | None = None) -> list[dict[str, Any]]:
    """Each stream's figures (`/status`), lags as of `now` (default: now)."""
    quarantined = getattr(runtime.sink, "quarantine_counts", {})
    now = now_ms() if now is None else now
    return [
        status_row(
            state,
            runtime.stopped.get(state.source),
            runtime.budgets.exhausted(state.source),
            now=now,
        )
        | {"quarantined": quarantined.get(state.source, 0)}
        | (_inbox_figures(runtime, state.source) if state.stream == INBOX_STREAM else {})
        for state in runtime.status()
    ]


def _inbox_figures(runtime: AgentRuntime, source: str) -> dict[str, Any]:
    """The webhook stream's row also says what the receiver saw (from the metrics)."""
    figures: dict[str, Any] = {"inbox_depth": 0, "webhooks_received": 0, "webhooks_rejected": {}}
    for metric in runtime.metrics.registry.collect():
        for sample in metric.samples:
            if sample.labels.get("source") != source:
                continue
            if sample.name == "ordersync_agent_webhook_inbox_depth":
                figures["inbox_depth"] = int(sample.value)
            elif sample.name == "ordersync_agent_webhooks_received_total":
                figures["webhooks_received"] = int(sample.value)
            elif sample.name == "ordersync_agent_webhooks_rejected_total":
                figures["webhooks_rejected"][sample.labels["reason"]] = int(sample.value)
    return figures


def status_row(
    state: StreamStatus,
    stopped_reason: str | None = None,
    quota_pause: Pause | None = None,
    *,
    now: int | None = None,
) -> dict[str, Any]:
    cursor = state.cursor
    lag = talk.lag_seconds(state, now_ms() if now is None else now)
    return {
        "source": state.source,
        "stream": state.stream,
        "cursor": None if cursor is None else format_rfc3339(cursor.updated_at_ms),
        "cursor_id": None if cursor is None else cursor.last_id,
        "caught_up": state.caught_up,
        "lag_seconds": None if lag is None else round(lag, 3),
        "last_success_at": None
        if state.last_success_at_ms is None
        else format_rfc3339(state.last_success_at_ms),
        "last_error": stopped_reason or state.last_error,
        "stopped": state.stopped or stopped_reason is not None,
        "applied": state.totals.applied,
        "duplicates": state.totals.duplicates,
        "echoes": state.echoes,
        "api_calls": state.totals.api_calls,
        "quota_exhausted_window": None if quota_pause is None else quota_pause.window,
        "quota_exhausted_until": None if quota_pause is None else quota_pause.until_rfc3339,
    }


def observability_app(runtime: AgentRuntime) -> Starlette:
    """`/` (the status page), `/status` (JSON), `/metrics` (Prometheus), `/healthz` (the
    process answers) and `/readyz` (every stream drained at least once, no source stopped)."""

    async def metrics(_: Request) -> Response:
        return Response(generate_latest(runtime.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    async def status(_: Request) -> Response:
        return Response(orjson.dumps(status_payload(runtime)), media_type="application/json")

    async def page(_: Request) -> Response:
        now = now_ms()  # one instant: the page's lags are its "as of" minus the positions
        body = status_page.render(
            status_payload(runtime, now),
            list(runtime.rounds),
            generated_at_ms=now,
            sink=shown(runtime.config.sink.url),
            waits=_budget_waits(runtime),
        )
        return HTMLResponse(body, headers={"Cache-Control": "no-store"})

    async def webhooks(request: Request) -> Response:
        if runtime.receiver is None:
            return JSONResponse(
                {"error_type": "unknown_source", "field": "source", "detail": "no webhooks here"},
                status_code=404,
            )
        return await runtime.receiver.endpoint(request)

    async def healthz(_: Request) -> Response:
        return JSONResponse({"status": "ok"})

    async def readyz(_: Request) -> Response:
        waiting = [
            f"{row['source']}/{row['stream']}: "
            + ("stopped" if row["stopped"] else "not drained yet")
            for row in status_payload(runtime)
            if row["stopped"] or row["last_success_at"] is None
        ]
        if waiting:
            return JSONResponse({"status": "not ready", "waiting": waiting}, status_code=503)
        return JSONResponse({"status": "ready"})

    return Starlette(
        routes=[
            Route("/", page),
            Route("/metrics", metrics),
            Route("/status", status),
            Route("/healthz", healthz),
            Route("/readyz", readyz),
            Route("/webhooks/{source}", webhooks, methods=["POST"]),
        ]
    )


def _budget_waits(runtime: AgentRuntime) -> dict[str, tuple[int, float]]:
    """Per source: how many requests waited for the rate-limit budget, and how long in all."""
    waits: dict[str, list[float]] = {}
    for metric in runtime.metrics.registry.collect():
        if metric.name in ("ordersync_agent_budget_waits", "ordersync_agent_budget_wait_seconds"):
            slot = 0 if metric.name.endswith("waits") else 1
            for sample in metric.samples:
                if sample.name.endswith("_total"):
                    waits.setdefault(sample.labels["source"], [0.0, 0.0])[slot] += sample.value
    return {source: (int(n), seconds) for source, (n, seconds) in waits.items()}


def status_url(config: AgentConfig) -> str | None:
    if config.port is None:
        return None
    host = f"[{config.bind}]" if ":" in config.bind else config.bind
    return f"http://{host}:{config.port}/"


@contextlib.asynccontextmanager
async def serving_observability(
    runtime: AgentRuntime, port: int | None, bind: str = "127.0.0.1"
) -> AsyncIterator[None]:
    """Serve the status page, /status, /metrics, /healthz and /readyz on bind:port while the
    agent runs (no port: nothing)."""
    if port is None:
        yield
        return
    async with serving(observability_app(runtime), bind, port):
        yield


async def run_owning_replica(
    runtime: AgentRuntime,
    stop: asyncio.Event,
    *,
    once: bool = False,
    announce: Callable[[str], None] = print,
    state_dir: Path | None = None,
    poll_seconds: float = POLL_SECONDS,
) -> None:
    """Take the replica's lease (`lease.py`; as standby, wait for it), then serve /metrics and
    /status and run every source until `stop`. A lease lost meanwhile (its database session
    ended) stops the sources and goes back to taking it: the agent resumes if the lease is
    free, or waits behind the agent that took it."""
    config = runtime.config

    async def nap(seconds: float) -> None:
        with contextlib.suppress(TimeoutError):
            await asyncio.wait_for(stop.wait(), seconds)

    while not stop.is_set():
        lease = await acquire(
            config.sink.url,
            [source.name for source in config.sources],
            standby=config.standby,
            state_path=(state_dir or config.state_dir or Path(".")) / HTTP_STATE,
            stop=stop,
            announce=announce,
            sleep=nap,
            poll_seconds=poll_seconds,
        )
        if lease is None:
            return
        try:
            lost = await _run_while_held(runtime, lease, stop, once, poll_seconds)
        finally:
            await lease.release()
        if not lost or once:
            return
        announce(f"replica {shown(config.sink.url)}: lease lost; sync stopped, taking it again")


async def _run_while_held(
    runtime: AgentRuntime, lease: Lease, stop: asyncio.Event, once: bool, poll_seconds: float
) -> bool:
    """Run the sources until `stop` or the lease is lost; True if it was lost."""
    ending = asyncio.Event()
    lost = False

    async def watch() -> None:
        nonlocal lost
        while not ending.is_set():
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(ending.wait(), poll_seconds)
            if not ending.is_set() and not await lease.held():
                lost = True
                log.error("replica_lease_lost", replica=shown(lease.url))
                ending.set()

    async def forward_stop() -> None:
        await stop.wait()
        ending.set()

    helpers = [asyncio.ensure_future(watch()), asyncio.ensure_future(forward_stop())]
    try:
        async with serving_observability(runtime, runtime.config.port, runtime.config.bind):
            talk.started(runtime.config, status_url(runtime.config))
            await run_sources(runtime, ending, once=once)
    finally:
        ending.set()
        for helper in helpers:
            helper.cancel()
        await asyncio.gather(*helpers, return_exceptions=True)
    return lost
