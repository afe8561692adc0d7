"""`ordersync agent ...`: run, status, verify. Wiring only; the work is in runner and engine."""

from __future__ import annotations

import asyncio
import contextlib
import functools
import gc
import os
import signal
import sys
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING, Annotated, Any, cast

import httpx
import typer
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from ordersync import loops
from ordersync.agent.config import AgentConfig, load_config
from ordersync.agent.verify import VerifyReport
from ordersync.errors import ConfigurationError, OrdersyncError, exit_code
from ordersync.logs import LOG_LEVELS, configure_logging, resolve_format

if TYPE_CHECKING:
    from ordersync.agent.runner import AgentRuntime

agent_app = typer.Typer(
    help="The ERP-side sync agent.", no_args_is_help=True, rich_markup_mode=None
)
err = Console(stderr=True)

ConfigOption = Annotated[
    Path,
    typer.Option(
        "--config",
        "-c",
        envvar="ORDERSYNC_AGENT_CONFIG",
        help="Agent TOML file ([[sources]] and [sink]). ORDERSYNC_SINK_URL, "
        "ORDERSYNC_AGENT_PORT and ORDERSYNC_SOURCE_<NAME>_<KEY> override it.",
    ),
]


def _fail(exc: BaseException) -> typer.Exit:
    """One line on stderr, and the error's exit code (README.md, "Exit codes")."""
    _say(f"error: {exc}")
    return typer.Exit(exit_code(exc))


LogFormatOption = Annotated[
    str,
    typer.Option(
        envvar="ORDERSYNC_LOG_FORMAT",
        help="auto (console lines on a terminal, else JSON), json or console.",
    ),
]
LogLevelOption = Annotated[
    str,
    typer.Option(
        envvar="ORDERSYNC_LOG_LEVEL",
        help="debug (also one line per API call on the console), info, warning or error.",
    ),
]


@agent_app.command("run")
def run(
    config: ConfigOption = Path("agent.toml"),
    once: Annotated[bool, typer.Option(help="Drain every source once, then exit.")] = False,
    log_format: LogFormatOption = "auto",
    log_level: LogLevelOption = "info",
    bind: Annotated[
        str | None,
        typer.Option(
            help="Address the status page, /status and /metrics listen on (default"
            " 127.0.0.1; 0.0.0.0 for every interface). Overrides bind in the config and"
            " ORDERSYNC_AGENT_BIND."
        ),
    ] = None,
) -> None:
    """Sync every configured source into the sink until SIGINT/SIGTERM."""
    from ordersync.agent import talk
    from ordersync.agent.errors import RequestAborted
    from ordersync.agent.runner import open_runtime, preflight, run_owning_replica, stopping_on
    from ordersync.domain.timestamps import now_ms

    setup_logging(log_format, log_level)
    started = time.monotonic()

    async def main() -> int:
        settings = load_config(config)
        if bind is not None:
            settings = settings.model_copy(update={"bind": bind})
        runtime = await open_runtime(settings, os.environ)
        try:
            # Before the first request: a signal during the preflight stops the agent too.
            stop = asyncio.Event()
            _stop_on_signals(stop, talk.stopping)
            try:
                async with stopping_on(runtime, stop):
                    await preflight(runtime)
            except RequestAborted:
                return 0
            # What exists now (modules, config, engines) lives as long as the process. Frozen,
            # the garbage collector's full passes stop re-scanning it while pages stream
            # through (bench/README.md).
            gc.freeze()
            await run_owning_replica(runtime, stop, once=once, announce=_say)
        finally:
            await runtime.close()
        talk.stopped(runtime.engines, time.monotonic() - started, now_ms())
        for name, reason in runtime.stopped.items():
            _say(f"error: source {name} stopped: {reason}")
        return 3 if runtime.stopped else 0

    try:
        code = loops.run(main())
    except OrdersyncError as exc:
        raise _fail(exc) from None
    raise typer.Exit(code)


def _stop_on_signals(stop: asyncio.Event, stopping: Callable[[str], None]) -> None:
    """SIGINT (Ctrl-C) and SIGTERM set `stop`, and the first one says so."""
    loop = asyncio.get_running_loop()

    def on_signal(sig: signal.Signals) -> None:
        if not stop.is_set():
            if sys.stderr.isatty():
                print(file=sys.stderr)  # past the terminal's own "^C"
            stopping(sig.name)
        stop.set()

    for sig in (signal.SIGINT, signal.SIGTERM):
        loops.on_stop_signals(loop, functools.partial(on_signal, sig), (sig,))


def setup_logging(log_format: str, log_level: str) -> None:
    """The commands' logging, from their --log-format and --log-level."""
    try:
        fmt = resolve_format(log_format.lower())
    except ValueError as exc:
        raise typer.BadParameter(str(exc), param_hint="--log-format") from None
    if log_level.lower() not in LOG_LEVELS:
        raise typer.BadParameter(f"use one of {', '.join(LOG_LEVELS)}", param_hint="--log-level")
    configure_logging(fmt, level=log_level)


def _say(line: str) -> None:
    """One plain line on stderr (not wrapped to the terminal's width, unlike rich)."""
    print(line, file=sys.stderr, flush=True)


@agent_app.command("status")
def status(config: ConfigOption = Path("agent.toml")) -> None:
    """Each stream's position (as a time), lag (now minus the position's time), records applied
    and repeats dropped, last error: from the running agent's port when it is up, else from
    the positions stored in the replica (which must exist: status creates nothing)."""
    try:
        settings = load_config(config)
        rows = _live_status(settings) or loops.run(_stored_status(settings))
    except OrdersyncError as exc:
        raise _fail(exc) from None
    table = Table(
        caption="position: how far the replica is committed; lag: now minus the position's time"
    )
    for column in (
        "source", "stream", "position", "lag", "applied", "repeats", "last success",
        "last error", "quota", "echoes (source)", "quarantined (source)",
    ):  # fmt: skip
        table.add_column(column, overflow="fold")  # wrapped on a narrow terminal, never cut
    for row in rows:
        table.add_row(
            row["source"],
            row["stream"],
            row["cursor"] or "-",
            "-" if row.get("lag_seconds") is None else f"{row['lag_seconds']:.1f} s",
            str(row.get("applied", "-")),
            str(row.get("duplicates", "-")),
            row.get("last_success_at") or "-",
            escape(row.get("last_error") or "-"),
            _quota_cell(row),
            str(row.get("echoes", "-")),
            str(row.get("quarantined", "-")),
        )
    _out().print(table)
    _print_push_outbox(settings)


def _print_push_outbox(settings: AgentConfig) -> None:
    """One line per source `agent push` wrote through: its outbox's lines per state."""
    from ordersync.agent.outbox import STATES, stored_counts

    for source, counts in sorted(loops.run(stored_counts(settings.sink.url)).items()):
        figures = ", ".join(f"{counts.get(state, 0)} {state}" for state in STATES)
        print(f"push {source}: {figures}")


def _out() -> Console:
    """stdout; when it is not a terminal (a pipe, a file, a test), wide enough for a table."""
    return Console() if sys.stdout.isatty() else Console(width=240)


def _quota_cell(row: dict[str, Any]) -> str:
    """A spent quota the source waits for ("-" when none, or when the agent is not running)."""
    until = row.get("quota_exhausted_until")
    return f"{row.get('quota_exhausted_window')} spent, resumes {until}" if until else "-"


def _live_status(settings: AgentConfig) -> list[dict[str, Any]] | None:
    if settings.port is None:
        return None
    host = "127.0.0.1" if settings.bind in ("0.0.0.0", "::") else settings.bind
    host = f"[{host}]" if ":" in host else host
    try:
        response = httpx.get(f"http://{host}:{settings.port}/status", timeout=2)
    except httpx.TransportError:
        return None
    return response.json() if response.status_code == 200 else None


async def _stored_status(settings: AgentConfig) -> list[dict[str, Any]]:
    from ordersync.agent.errors import SinkError
    from ordersync.agent.runner import HTTP_STATE, check_replica
    from ordersync.agent.sinks import open_sink
    from ordersync.agent.verify import quarantined
    from ordersync.domain.timestamps import format_rfc3339, now_ms
    from ordersync.errors import ReplicaUnavailable

    check_replica(settings.sink.url, create=False)
    try:
        sink = await open_sink(
            settings.sink.url,
            http=httpx.AsyncClient(),
            state_path=(settings.state_dir or Path(".")) / HTTP_STATE,
        )
    except SinkError as exc:
        raise ReplicaUnavailable(str(exc).splitlines()[0]) from None
    if hasattr(sink, "retries_quarantine"):
        sink.retries_quarantine = False  # showing the status writes nothing
    rows = []
    try:
        for source in settings.sources:
            held = len(await quarantined(sink, source.name))
            for stream in source.streams:
                cursor = await sink.load_cursor(source.name, stream)
                rows.append(
                    {
                        "source": source.name,
                        "stream": stream,
                        "cursor": None if cursor is None else format_rfc3339(cursor.updated_at_ms),
                        "lag_seconds": None
                        if cursor is None
                        else (now_ms() - cursor.updated_at_ms) / 1000,
                        "last_error": "agent not running (stored position)",
                        "quarantined": held,
                    }
                )
    finally:
        await sink.close()
    return rows


@agent_app.command("verify")
def verify(
    config: ConfigOption = Path("agent.toml"),
    show: Annotated[int, typer.Option(help="How many ids to list per problem.")] = 5,
    watch: Annotated[
        float | None,
        typer.Option(
            metavar="SECONDS",
            help="Verify again every SECONDS until Ctrl-C, one line per round.",
        ),
    ] = None,
    port: Annotated[
        int | None,
        typer.Option(
            help="With --watch: serve /metrics (ordersync_agent_verify_records by source,"
            " stream and state) on 127.0.0.1:PORT."
        ),
    ] = None,
) -> None:
    """Compare the replica with the platform (ids and versions from the summary listing) up to
    each stream's committed position: missing, stale and extra records there are drift (exit
    1); records changed since are in flight (the next poll brings them), so it can run
    against a live platform as a health check."""
    from ordersync.agent.runner import open_runtime, preflight
    from ordersync.embedded import serving

    configure_logging("json", level="WARNING")
    if watch is not None and not watch > 0:
        raise _fail(ConfigurationError(f"--watch {watch:g}: give the seconds between rounds"))

    unverified: list[str] = []

    async def main() -> list[VerifyReport]:
        runtime = await open_runtime(load_config(config), os.environ)
        try:
            await preflight(runtime)
            if watch is None:
                return await _verify_all(runtime, unverified)
            stop = asyncio.Event()
            loop = asyncio.get_running_loop()
            loops.on_stop_signals(loop, stop.set)
            async with contextlib.AsyncExitStack() as stack:
                if port is not None:
                    app = observability_app(runtime)
                    await stack.enter_async_context(serving(app, "127.0.0.1", port))
                reports: list[VerifyReport] = []
                while not stop.is_set():
                    reports = await _verify_all(runtime, unverified)
                    _say(_verify_line(reports))
                    with contextlib.suppress(TimeoutError):
                        await asyncio.wait_for(stop.wait(), watch)
                return reports
        finally:
            await runtime.close()

    from ordersync.agent.runner import observability_app

    try:
        reports = loops.run(main())
    except OrdersyncError as exc:
        raise _fail(exc) from None
    for name in sorted(set(unverified)):
        err.print(
            f"[yellow]source {name} not verified:[/yellow] its platform (HubRise) offers "
            "no listing of ids and versions to compare with"
        )
    if not reports:
        raise typer.Exit(2)
    if watch is None:
        _print_verify(reports, show)
    raise typer.Exit(0 if all(report.ok for report in reports) else 1)


async def _verify_all(runtime: AgentRuntime, unverified: list[str]) -> list[VerifyReport]:
    """One round: every verifiable source, its figures also set in the verify metric."""
    from ordersync.agent.platforms import PLATFORMS
    from ordersync.agent.sources import Source
    from ordersync.agent.verify import verify_replica

    reports = []
    for source in runtime.config.sources:
        engine = runtime.engines[source.name]
        if PLATFORMS[source.dialect].verifiable:
            report = await verify_replica(cast(Source, engine.source), runtime.sink)
            runtime.metrics.record_verify(report)
            reports.append(report)
        else:  # HubRise lists by creation time only: no versions listing to compare
            unverified.append(source.name)
    return reports


def _verify_line(reports: list[VerifyReport]) -> str:
    """A watch round in one line: the verdict, then each stream's figures."""
    from datetime import datetime

    verdict = "in sync" if all(r.ok for r in reports) else "DRIFT"
    streams = "; ".join(
        f"{r.source} {s.stream}: {len(s.missing)} missing, {len(s.stale)} stale, "
        f"{len(s.extra)} extra, {len(s.quarantined)} quarantined, {len(s.in_flight)} in flight"
        for r in reports
        for s in r.streams
    )
    return f"{datetime.now().strftime('%H:%M:%S')} {verdict}: {streams}"


@agent_app.command("reset")
def reset(
    source: Annotated[str, typer.Option(help="The source whose positions move back.")],
    config: ConfigOption = Path("agent.toml"),
    since: Annotated[
        str | None,
        typer.Option(
            metavar="TIME",
            help="RFC 3339 time to read again from (e.g. 2024-05-01T00:00:00Z); default: the"
            " beginning. Not for hubrise sources (their backfill is not by change time).",
        ),
    ] = None,
) -> None:
    """Move a source's stored positions back, so the next `agent run` reads again from TIME.
    Records read again are repeats (version-checked), never applied twice. Refused (exit 4)
    while an agent holds the replica."""
    from ordersync.agent.errors import SinkError
    from ordersync.agent.records import Cursor
    from ordersync.agent.reset import reset_source
    from ordersync.agent.runner import HTTP_STATE, check_replica
    from ordersync.agent.sinks import open_sink
    from ordersync.domain.timestamps import format_rfc3339, parse_rfc3339_ms
    from ordersync.errors import ReplicaUnavailable

    async def main() -> str:
        settings = load_config(config)
        chosen = next((s for s in settings.sources if s.name == source), None)
        if chosen is None:
            names = ", ".join(s.name for s in settings.sources)
            raise ConfigurationError(f"--source {source!r} is not in {config} (sources: {names})")
        to = None
        if since is not None:
            if chosen.dialect == "hubrise":
                raise ConfigurationError(
                    "--since: a hubrise source's backfill is not by change time; reset it "
                    "without --since to run the backfill again"
                )
            try:
                to = Cursor(parse_rfc3339_ms(since), "")
            except ValueError:
                raise ConfigurationError(
                    f"--since {since!r}: use an RFC 3339 time, e.g. 2024-05-01T00:00:00Z"
                ) from None
        check_replica(settings.sink.url, create=False)
        state = (settings.state_dir or Path(".")) / HTTP_STATE
        async with httpx.AsyncClient() as http:
            try:
                sink = await open_sink(settings.sink.url, http=http, state_path=state)
            except SinkError as exc:
                raise ReplicaUnavailable(str(exc).splitlines()[0]) from None
            try:
                await reset_source(sink, settings.sink.url, source, list(chosen.streams), to,
                                   state)  # fmt: skip
            finally:
                await sink.close()
        return "the beginning" if to is None else format_rfc3339(to.updated_at_ms)

    try:
        where = loops.run(main())
    except OrdersyncError as exc:
        raise _fail(exc) from None
    _say(f"source {source}: positions reset; the next run reads again from {where}")


@agent_app.command("push")
def push(
    file: Annotated[
        Path,
        typer.Argument(
            metavar="FILE.jsonl",
            help='One change per line: {"op": "create"|"update"|"cancel", ...} (README,'
            ' "Pushing orders"); - reads stdin.',
        ),
    ],
    source: Annotated[str, typer.Option(help="The source ([[sources]] name) to write to.")],
    config: ConfigOption = Path("agent.toml"),
    wait: Annotated[
        float,
        typer.Option(
            metavar="SECONDS",
            help="How long to follow asynchronous requests (MasonHub updates and cancels) to"
            " their resolution; 0: look once. Lines still open exit 8: push the same file"
            " again to go on.",
        ),
    ] = 60.0,
    poll_interval: Annotated[
        float, typer.Option(metavar="SECONDS", help="Between two looks at open requests.")
    ] = 1.0,
    log_format: LogFormatOption = "auto",
    log_level: LogLevelOption = "warning",
    kill_at: Annotated[
        str | None,
        typer.Option(
            envvar="ORDERSYNC_PUSH_KILL_AT", hidden=True, help="Testing: SIGKILL at STEP[:N]."
        ),
    ] = None,
) -> None:
    """Create, update and cancel orders on a platform from FILE.jsonl, each with an
    idempotency key, through an outbox in the replica: a line is recorded before it is sent,
    its answer before the next step, so pushing the same file again (after a crash, or to
    follow open requests) sends only what was never answered. Prints one result per line
    (a table on a terminal, else JSON lines): resolved, accepted (resolution still open),
    failed with the platform's reason, or pending (not answered: run again). Exit 0 all
    resolved, 1 some failed, 8 some still open."""
    from ordersync.agent.push import parse_lines
    from ordersync.agent.push import push as push_lines

    setup_logging(log_format, log_level)
    if wait < 0 or not poll_interval > 0:
        raise _fail(ConfigurationError("--wait must be >= 0 and --poll-interval > 0"))
    hook = _kill_switch(kill_at)

    async def main() -> Any:
        settings = load_config(config)
        chosen = next((s for s in settings.sources if s.name == source), None)
        if chosen is None:
            names = ", ".join(s.name for s in settings.sources)
            raise ConfigurationError(f"--source {source!r} is not in {config} (sources: {names})")
        token = chosen.token(os.environ)
        lines = parse_lines(chosen.dialect, chosen.name, _read_push_file(file))
        from ordersync.agent.runner import check_replica

        check_replica(settings.sink.url, create=True)
        return await push_lines(
            chosen,
            token,
            settings.sink.url,
            lines,
            wait_s=wait,
            poll_interval_s=poll_interval,
            hook=hook,
        )

    try:
        report = loops.run(main())
    except OrdersyncError as exc:
        raise _fail(exc) from None
    as_json = log_format.lower() == "json" or not sys.stdout.isatty()
    _print_push(report, as_json)
    _say(
        f"{report.source}: {len(report.results)} lines: {report.count('resolved')} resolved, "
        f"{report.count('accepted')} accepted, {report.count('failed')} failed, "
        f"{report.count('pending')} pending"
        + ("" if report.complete else "; push the same file again to go on")
    )
    raise typer.Exit(report.exit_code)


def _read_push_file(file: Path) -> list[str]:
    if str(file) == "-":
        return sys.stdin.read().splitlines()
    try:
        return file.read_text(encoding="utf-8").splitlines()
    except (OSError, UnicodeDecodeError) as exc:
        raise ConfigurationError(f"cannot read {file}: {exc}") from None


def _kill_switch(spec: str | None) -> Callable[[str], None] | None:
    """ORDERSYNC_PUSH_KILL_AT=STEP[:N]: the process kills itself (SIGKILL) the N-th time (default
    1) it reaches STEP, for crash tests."""
    from ordersync.agent.push import STEPS

    if not spec:
        return None
    step, _, nth = spec.partition(":")
    if step not in STEPS or (nth and not nth.isdigit()):
        raise _fail(ConfigurationError(f"ORDERSYNC_PUSH_KILL_AT={spec!r}: use STEP[:N], STEP one"
                                       f" of {', '.join(STEPS)}"))  # fmt: skip
    seen = {"n": 0}

    def hook(name: str) -> None:
        if name == step:
            seen["n"] += 1
            if seen["n"] == int(nth or 1):
                os.kill(os.getpid(), signal.SIGKILL)

    return hook


def _print_push(report: Any, as_json: bool) -> None:
    import orjson

    if as_json:
        for result in report.results:
            sys.stdout.write(orjson.dumps(result.as_json()).decode() + "\n")
        sys.stdout.flush()
        return
    table = Table("line", "op", "order", "state", "platform id", "request", "reason")
    colour = {"resolved": "green", "failed": "red", "accepted": "yellow", "pending": "yellow"}
    for r in report.results:
        table.add_row(
            str(r.line),
            r.op,
            escape(r.ref),
            f"[{colour.get(r.state, 'white')}]{r.state}[/]",
            r.order_id or "-",
            r.request_id or "-",
            escape(r.reason or "-"),
        )
    _out().print(table)


def _print_verify(reports: list[VerifyReport], show: int) -> None:
    from ordersync.domain.timestamps import format_rfc3339

    out = _out()
    table = Table(
        "source", "stream", "position", "platform", "replica", "missing", "stale", "extra",
        "in flight", "quarantined",
    )  # fmt: skip
    for report in reports:
        for s in report.streams:
            table.add_row(
                report.source,
                s.stream,
                "-" if s.position is None else format_rfc3339(s.position.updated_at_ms),
                str(s.platform),
                str(s.replica),
                _ids(s.missing, show),
                _ids(s.stale, show),
                _ids(s.extra, show),
                str(len(s.in_flight)),
                _ids([q.id for q in s.quarantined], show),
            )
    out.print(table)
    held = [(r.source, q) for r in reports for s in r.streams for q in s.quarantined]
    for source, q in held[:show]:
        out.print(f"quarantined {source} {q.kind} {q.id} v{q.version}: {escape(q.reason)}")
    drift = not all(report.ok for report in reports)
    in_flight = sum(len(s.in_flight) for r in reports for s in r.streams)
    out.print(
        f"[red]not in sync: {len(held)} quarantined (the replica could not store them; they "
        "are retried every cycle)[/red]"
        if held
        else "[red]drift: the replica differs from the platform up to the agent's position[/red]"
        if drift
        else "[green]in sync up to the agent's position: every id at the platform's version"
        f"[/green] ({in_flight} changed since, in flight: the next poll brings them)",
        soft_wrap=True,
    )


def _ids(ids: list[str], show: int) -> str:
    if not ids:
        return "0"
    more = f" (+{len(ids) - show} more)" if len(ids) > show else ""
    return f"{len(ids)}: " + ", ".join(i[:8] for i in ids[:show]) + more
