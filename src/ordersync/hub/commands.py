"""`ordersync hub ...`: tokens, accounts, migrate, serve. Wiring only.

Every mistake is one line on stderr and an exit code of its own (README, "Hub exit codes"):

    0  done
    1  nothing matched: no such account, or no live token for that connection
    2  invalid input: an option, a database URL, a time zone, a currency, a fault spec
    3  the database cannot be opened or reached
    4  the hub cannot listen on --host/--port (taken, or not allowed)
"""

from __future__ import annotations

import difflib
import os
import re
import sys
from collections.abc import Coroutine
from dataclasses import replace
from datetime import UTC, datetime
from typing import Annotated, Any, NoReturn, TypeVar

import typer
from rich.console import Console
from rich.markup import escape

from ordersync.errors import NotFound, OrdersyncError
from ordersync.hub import DEFAULT_DB_URL

EXIT_NOT_FOUND = 1
EXIT_INVALID = 2
EXIT_DATABASE = 3
EXIT_BIND = 4

T = TypeVar("T")

hub_app = typer.Typer(
    help="The order platform server.", no_args_is_help=True, rich_markup_mode=None
)
token_app = typer.Typer(help="Connection tokens.", no_args_is_help=True, rich_markup_mode=None)
account_app = typer.Typer(
    help="Accounts (HubRise locations): time zone and currency.",
    no_args_is_help=True,
    rich_markup_mode=None,
)
hub_app.add_typer(token_app, name="token")
hub_app.add_typer(account_app, name="account")

err = Console(stderr=True, soft_wrap=True)  # one line per message, whatever the width

DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="ORDERSYNC_HUB_DB",
        help="Hub database URL: sqlite:///FILE or postgresql://USER@HOST/DB.",
    ),
]


def fail(message: str, code: int) -> NoReturn:
    """One line on stderr, then exit `code`; the message is shown as written (no markup)."""
    err.print(f"[red]error:[/red] {escape(message)}")
    raise typer.Exit(code)


def shown_url(db: str) -> str:
    """The database URL without its password, for printing."""
    from sqlalchemy.engine import make_url

    try:
        return make_url(db).render_as_string(hide_password=True)
    except Exception:  # not a URL at all: parse_database_url refuses it before this is shown
        return db


def database_problem(db: str, exc: BaseException) -> str:
    """The first line of a driver's complaint, with the likely cause for SQLite files."""
    from sqlalchemy.engine import make_url

    cause = getattr(exc, "orig", None) or exc
    first = (str(cause).strip().splitlines() or [type(cause).__name__])[0]
    hint = ""
    try:
        url = make_url(db)
        if url.get_backend_name() == "sqlite" and url.database:
            folder = os.path.dirname(os.path.abspath(url.database))
            if not os.path.isdir(folder):
                hint = f" (the directory {folder} does not exist)"
            elif not os.access(folder, os.W_OK):
                hint = f" (the directory {folder} is not writable)"
    except Exception:  # an unparsable URL never gets this far: parse_database_url refuses it
        pass
    return f"cannot open the hub database {shown_url(db)}: {first}{hint}"


def run_db(db: str, coro: Coroutine[Any, Any, T]) -> T:
    """Run `coro` against the hub database `db`, turning every expected failure into one line
    and its exit code."""
    import asyncio

    from sqlalchemy.exc import DBAPIError, InterfaceError, OperationalError

    try:
        return asyncio.run(coro)
    except NotFound as exc:
        fail(str(exc), EXIT_NOT_FOUND)
    except OrdersyncError as exc:
        fail(str(exc), EXIT_INVALID)
    except (OperationalError, InterfaceError, OSError) as exc:
        fail(database_problem(db, exc), EXIT_DATABASE)
    except DBAPIError as exc:  # e.g. a database without our tables that cannot be migrated
        fail(database_problem(db, exc), EXIT_DATABASE)


async def _with_store(db: str, work: Any) -> Any:
    from ordersync.store.store import Store

    store = await Store.open(db)
    try:
        return await work(store)
    finally:
        await store.close()


def _when(ms: int | None) -> str:
    if ms is None:
        return "-"
    return datetime.fromtimestamp(ms / 1000, UTC).strftime("%Y-%m-%d %H:%M:%SZ")


# -- tokens ------------------------------------------------------------------------------------


@token_app.command("create")
def token_create(
    account: Annotated[str, typer.Option(help="Account name; created if it does not exist.")],
    name: Annotated[str, typer.Option(help="Connection name (who uses the token).")],
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Create a connection token, printed once alone on the last line; only its hash is kept."""
    token: str = run_db(db, _with_store(db, lambda s: s.create_token(account, name)))
    err.print(f"token for connection {name!r} of account {account!r} (shown once):")
    print(token)


@token_app.command("revoke")
def token_revoke(
    account: Annotated[str, typer.Option(help="Account name.")],
    name: Annotated[str, typer.Option(help="Connection name whose tokens are revoked.")],
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Revoke a connection's tokens: refused from the next request on, by every hub worker."""
    revoked: int = run_db(db, _with_store(db, lambda s: s.revoke_connection(account, name)))
    if not revoked:
        fail(
            f"no live token for connection {name!r} of account {account!r}",
            EXIT_NOT_FOUND,
        )
    err.print(f"revoked {revoked} token(s) of connection {name!r} of account {account!r}")


@token_app.command("rotate")
def token_rotate(
    account: Annotated[str, typer.Option(help="Account name.")],
    name: Annotated[str, typer.Option(help="Connection name.")],
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Give a connection a new token and revoke its old one in the same transaction; the new
    token is printed once, alone on the last line. Quotas, HubRise callbacks and private refs
    stay with the connection."""
    token: str = run_db(db, _with_store(db, lambda s: s.rotate_token(account, name)))
    err.print(
        f"new token for connection {name!r} of account {account!r} (shown once; the old one"
        " is revoked):"
    )
    print(token)


@token_app.command("list")
def token_list(db: DbOption = DEFAULT_DB_URL) -> None:
    """Every issued token's connection: account, connection, created, revoked (never the
    token: only its hash is kept)."""
    rows = run_db(db, _with_store(db, lambda s: s.list_connections()))
    print(f"{'ACCOUNT':<20} {'CONNECTION':<20} {'ID':>5} {'CREATED':<20} {'REVOKED':<20}")
    for row in rows:
        print(
            f"{row.account:<20} {row.name:<20} {row.id:>5} {_when(row.created_at):<20}"
            f" {_when(row.revoked_at):<20}"
        )


# -- accounts ----------------------------------------------------------------------------------


def check_timezone(name: str) -> str:
    """An IANA time zone name as the hub's zoneinfo knows it; ConfigurationError otherwise,
    with the closest names."""
    from zoneinfo import available_timezones

    from ordersync.errors import ConfigurationError

    zones = available_timezones()
    if name in zones:
        return name
    close = difflib.get_close_matches(name, sorted(zones), n=3)
    suggestion = f"; did you mean {', '.join(close)}?" if close else " such as Europe/Paris"
    raise ConfigurationError(f"--timezone {name!r} is not an IANA time zone{suggestion}")


def check_currency(code: str) -> str:
    """An ISO 4217 alphabetic code: three letters, kept in upper case."""
    from ordersync.errors import ConfigurationError

    if not re.fullmatch(r"[A-Za-z]{3}", code):
        raise ConfigurationError(
            f"--currency {code!r} is not an ISO 4217 code: three letters, such as EUR or USD"
        )
    return code.upper()


@account_app.command("set")
def account_set(
    name: Annotated[str, typer.Argument(help="Account name.")],
    timezone: Annotated[
        str | None, typer.Option(help="IANA time zone, e.g. Europe/Paris (HubRise times).")
    ] = None,
    currency: Annotated[
        str | None, typer.Option(help="ISO 4217 code, e.g. EUR (HubRise amounts).")
    ] = None,
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Set an account's time zone and currency; a running hub uses them within 10 s."""
    from ordersync.errors import ConfigurationError

    try:
        zone = check_timezone(timezone) if timezone is not None else None
        money = check_currency(currency) if currency is not None else None
    except ConfigurationError as exc:
        fail(str(exc), EXIT_INVALID)
    if zone is None and money is None:
        fail("nothing to set: give --timezone and/or --currency", EXIT_INVALID)
    info = run_db(db, _with_store(db, lambda s: s.set_account(name, timezone=zone, currency=money)))
    err.print(f"account {info.name!r}: time zone {info.timezone}, currency {info.currency}")


@account_app.command("list")
def account_list(db: DbOption = DEFAULT_DB_URL) -> None:
    """Every account with its time zone and currency."""
    rows = run_db(db, _with_store(db, lambda s: s.list_accounts()))
    print(f"{'ACCOUNT':<20} {'TIMEZONE':<24} CURRENCY")
    for row in rows:
        print(f"{row.name:<20} {row.timezone:<24} {row.currency}")


# -- database and server -----------------------------------------------------------------------


@hub_app.command("migrate")
def hub_migrate(db: DbOption = DEFAULT_DB_URL) -> None:
    """Create or upgrade the hub's tables (serve does this too)."""
    from ordersync.store.engine import parse_database_url
    from ordersync.store.migrate import upgrade

    async def migrate() -> None:
        await upgrade(parse_database_url(db))

    run_db(db, migrate())
    err.print("database is at the latest schema")


LOG_LEVELS = ("debug", "info", "warning", "error")


@hub_app.command("serve")
def hub_serve(
    db: DbOption = DEFAULT_DB_URL,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    simulate: Annotated[
        float, typer.Option(help="Warehouse simulator: new orders per second (0 = off).")
    ] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Simulator random seed (deterministic).")] = None,
    account: Annotated[
        str, typer.Option(help="Account the simulator (or the warehouse worker) works on.")
    ] = "demo",
    warehouse: Annotated[
        bool,
        typer.Option(
            "--warehouse",
            help="Run the warehouse worker on the account's orders (admit, allocate against"
            " the stock, ship, deliver) in every worker process, without creating orders.",
        ),
    ] = False,
    single_shipment_wait: Annotated[
        float,
        typer.Option(
            help="Seconds a single_shipment order waits for one location that can fill it"
            " before the warehouse fails it.",
        ),
    ] = 600.0,
    max_body_bytes: Annotated[
        int, typer.Option(envvar="ORDERSYNC_HUB_MAX_BODY_BYTES", help="Larger bodies get 413.")
    ] = 1_048_576,
    workers: Annotated[
        int,
        typer.Option(
            help="Worker processes (without --simulate). On SQLite (WAL: readers in every"
            " process, one writer at a time), quotas are then counted in the database, not in"
            " each process's memory.",
        ),
    ] = 1,
    quota: Annotated[
        list[str] | None,
        typer.Option(
            metavar="SPEC",
            help="Per-connection request quota, PREFIX@CLASS=LIMIT/UNIT,... (CLASS all or heavy;"
            " UNIT second, minute, hour, day or seconds; =off removes one); repeatable, after"
            " ORDERSYNC_HUB_QUOTAS (';'-separated). Default, HubRise's (seed 003):"
            " /v1/@all=500/minute,2500/hour,10000/day and /v1/@heavy=10/minute;"
            " none on /api/v1 and /v2.",
        ),
    ] = None,
    faults: Annotated[
        str | None,
        typer.Option(
            metavar="PROFILE|SPEC",
            envvar="ORDERSYNC_HUB_FAULTS",
            help="Misbehave on purpose on the API paths: a profile (off, demo, errors,"
            " throttle, slow, resets, late) and/or KEY=VALUE items, comma-separated, later"
            " ones winning: error=RATE (503), throttle=RATE (429), retry-after=S, latency=MS"
            " (up to), reset=RATE (dropped mid-response), late=RATE, late-ms=MS (commits"
            " stamped in the past), webhook-drop=RATE (webhooks lost on the way), seed=N."
            " RATE is 0..1 or a percentage: demo,latency=0 or"
            " error=5%,throttle=10%.",
        ),
    ] = None,
    log_level: Annotated[
        str,
        typer.Option(
            envvar="ORDERSYNC_HUB_LOG_LEVEL",
            help="debug, info (one access log line per request), warning or error.",
        ),
    ] = "info",
    log_format: Annotated[
        str | None,
        typer.Option(help="json or console [default: console on a terminal, json otherwise]."),
    ] = None,
) -> None:
    """Serve the hub's API (MasonHub dialect under /api/v1, Tradecloud under /v2, HubRise
    under /v1; OpenAPI at /openapi.json; /metrics for Prometheus; /status for operators).

    Quotas: windows start at the round minute, hour and day (UTC); over quota, 429 + Retry-After.
    """
    from ordersync.hub.faults import FaultSettings
    from ordersync.hub.serve import bind_socket, serve
    from ordersync.hub.settings import HubSettings
    from ordersync.loops import loop_name
    from ordersync.quotas import QuotaPolicy
    from ordersync.store.engine import parse_database_url
    from ordersync.store.migrate import upgrade

    level = log_level.lower()
    if level not in LOG_LEVELS:
        fail(f"--log-level {log_level!r}: use one of {', '.join(LOG_LEVELS)}", EXIT_INVALID)
    fmt = log_format or ("console" if sys.stderr.isatty() else "json")
    if fmt not in ("json", "console"):
        fail(f"--log-format {log_format!r}: use json or console", EXIT_INVALID)
    if workers < 1:
        fail(f"--workers {workers}: at least 1", EXIT_INVALID)
    if workers > 1 and simulate:
        fail(
            "run the simulator in a single-worker hub (--workers 1); --warehouse runs the"
            " warehouse worker alone in every worker",
            EXIT_INVALID,
        )
    quota_specs = ";".join([os.environ.get("ORDERSYNC_HUB_QUOTAS", ""), *(quota or [])])
    try:
        quotas = QuotaPolicy.from_specs(quota_specs, QuotaPolicy.hubrise_default())
        fault_settings = FaultSettings.parse(faults) if faults else FaultSettings()
        settings = HubSettings.from_env(
            db_url=db,
            host=host,
            port=port,
            simulate_rate=simulate,
            simulate_seed=seed,
            simulate_account=account,
            warehouse=warehouse,
            single_shipment_wait_ms=int(single_shipment_wait * 1000),
            max_body_bytes=max_body_bytes,
            quotas=quotas,
            faults=fault_settings,
            access_log=True,
            log_level=level,
            log_format=fmt,
        )
        database = parse_database_url(settings.db_url)
        loop_name()  # ORDERSYNC_LOOP is checked here, not in a worker
    except (OrdersyncError, ValueError) as exc:
        fail(str(exc), EXIT_INVALID)

    # The database is checked (and migrated) before anything listens: a hub that cannot reach
    # it says so in one line here instead of a lifespan traceback under uvicorn. SQLite has no
    # migration lock for workers starting together, so this is also the one migration then.
    run_db(settings.db_url, upgrade(database))
    if workers > 1 and database.backend == "sqlite" and settings.quota_store == "auto":
        # Memory quota counters would be per process: share them through the database.
        settings = replace(settings, quota_store="sql")
    try:
        sock = bind_socket(settings.host, settings.port)
    except OSError as exc:
        fail(f"cannot listen on {host}:{port}: {exc.strerror or exc}", EXIT_BIND)

    def ready() -> None:
        err.print(
            f"hub serving {shown_url(database.given)} on http://{host}:{port}/api/v1"
            + (f" (simulating {simulate} orders/s for account {account!r})" if simulate else "")
            + (f" (warehouse worker for account {account!r})" if warehouse and not simulate else "")
            + (" with injected faults" if settings.faults.any else "")
            + (f", {workers} workers" if workers > 1 else "")
        )

    serve(settings, workers, sock=sock, on_ready=ready)
