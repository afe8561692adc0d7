"""The `ordersync` command: wiring only. Each command builds settings and hands them over."""

from __future__ import annotations

import asyncio
import os
from dataclasses import replace
from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ordersync.agent.commands import agent_app
from ordersync.errors import OrdersyncError
from ordersync.hub import DEFAULT_DB_URL

# Help texts are plain text: with rich markup, "[[sources]]" or "[default: 5]" would vanish.
app = typer.Typer(
    help="ordersync: an order platform (hub) and the ERP-side agent that mirrors it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
hub_app = typer.Typer(
    help="The order platform server.", no_args_is_help=True, rich_markup_mode=None
)
token_app = typer.Typer(help="Connection tokens.", no_args_is_help=True, rich_markup_mode=None)
hub_app.add_typer(token_app, name="token")
app.add_typer(hub_app, name="hub")
app.add_typer(agent_app, name="agent")

err = Console(stderr=True)

DbOption = Annotated[
    str,
    typer.Option(
        "--db",
        envvar="ORDERSYNC_HUB_DB",
        help="Hub database URL: sqlite:///FILE or postgresql://USER@HOST/DB.",
    ),
]


def _run(coro: object) -> object:
    try:
        return asyncio.run(coro)  # type: ignore[arg-type]
    except OrdersyncError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None


@token_app.command("create")
def token_create(
    account: Annotated[str, typer.Option(help="Account name; created if it does not exist.")],
    name: Annotated[str, typer.Option(help="Connection name (who uses the token).")],
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Create a connection token, printed once alone on the last line; only its hash is kept."""
    from ordersync.store.store import Store

    async def create() -> str:
        store = await Store.open(db)
        try:
            return await store.create_token(account, name)
        finally:
            await store.close()

    token = _run(create())
    err.print(f"token for connection {name!r} of account {account!r} (shown once):")
    print(token)


@token_app.command("revoke")
def token_revoke(
    account: Annotated[str, typer.Option(help="Account name.")],
    name: Annotated[str, typer.Option(help="Connection name whose tokens are revoked.")],
    db: DbOption = DEFAULT_DB_URL,
) -> None:
    """Revoke a connection's tokens: refused from the next request on, by every hub worker."""
    from ordersync.store.store import Store

    async def revoke() -> int:
        store = await Store.open(db)
        try:
            return await store.revoke_connection(account, name)
        finally:
            await store.close()

    revoked = _run(revoke())
    if not revoked:
        err.print(f"[red]error:[/red] no live token for connection {name!r} of account {account!r}")
        raise typer.Exit(1)
    err.print(f"revoked {revoked} token(s) of connection {name!r} of account {account!r}")


@hub_app.command("migrate")
def hub_migrate(db: DbOption = DEFAULT_DB_URL) -> None:
    """Create or upgrade the hub's tables (serve does this too)."""
    from ordersync.store.engine import parse_database_url
    from ordersync.store.migrate import upgrade

    _run(upgrade(parse_database_url(db)))
    err.print("database is at the latest schema")


@hub_app.command("serve")
def hub_serve(
    db: DbOption = DEFAULT_DB_URL,
    host: Annotated[str, typer.Option(help="Interface to bind.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="TCP port.")] = 8080,
    simulate: Annotated[
        float, typer.Option(help="Warehouse simulator: new orders per second (0 = off).")
    ] = 0.0,
    seed: Annotated[int | None, typer.Option(help="Simulator random seed (deterministic).")] = None,
    account: Annotated[str, typer.Option(help="Account the simulator writes to.")] = "demo",
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
) -> None:
    """Serve the hub's API (MasonHub dialect under /api/v1; OpenAPI at /openapi.json).

    Quotas: windows start at the round minute, hour and day (UTC); over quota, 429 + Retry-After.
    """
    from ordersync.hub.serve import serve
    from ordersync.hub.settings import HubSettings
    from ordersync.quotas import QuotaPolicy

    quota_specs = ";".join([os.environ.get("ORDERSYNC_HUB_QUOTAS", ""), *(quota or [])])
    try:
        quotas = QuotaPolicy.from_specs(quota_specs, QuotaPolicy.hubrise_default())
        settings = HubSettings.from_env(
            db_url=db,
            host=host,
            port=port,
            simulate_rate=simulate,
            simulate_seed=seed,
            simulate_account=account,
            max_body_bytes=max_body_bytes,
            quotas=quotas,
        )
    except OrdersyncError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    if workers > 1 and simulate:
        err.print("[red]error:[/red] run the simulator in a single-worker hub")
        raise typer.Exit(2)
    err.print(
        f"hub serving {settings.db_url} on http://{host}:{port}/api/v1"
        + (f" (simulating {simulate} orders/s for account {account!r})" if simulate else "")
    )
    if workers > 1:
        from ordersync.store.engine import parse_database_url
        from ordersync.store.migrate import upgrade

        database = parse_database_url(settings.db_url)
        if database.backend == "sqlite":
            # Migrate once here: SQLite has no migration lock for workers starting together.
            _run(upgrade(database))
            # Memory quota counters would be per process: share them through the database.
            if settings.quota_store == "auto":
                settings = replace(settings, quota_store="sql")
    serve(settings, workers)


@app.command("demo")
def demo(
    duration: Annotated[float, typer.Option(help="Seconds to run before the proof.")] = 60.0,
    rate: Annotated[
        float | None,
        typer.Option(
            help="Simulated new orders per second [default: 5, hubrise 0.5].", show_default=False
        ),
    ] = None,
    port: Annotated[int, typer.Option(help="Hub port on 127.0.0.1.")] = 8080,
    data_dir: Annotated[Path, typer.Option(help="Where the SQLite files go.")] = Path("demo-data"),
    seed: Annotated[int, typer.Option(help="Simulator seed.")] = 42,
    faults: Annotated[
        bool, typer.Option(help="Inject errors, 429s, latency, resets and late commits.")
    ] = False,
    dialect: Annotated[
        str,
        typer.Option(
            help="The wire dialect the agent syncs through: masonhub (/api/v1),"
            " tradecloud (/v2) or hubrise (/v1)."
        ),
    ] = "masonhub",
) -> None:
    """Hub + warehouse simulator + agent on embedded SQLite, then the proof that the replica
    equals the hub: every (id, version) present, none applied twice."""
    from ordersync.agent.platforms import PLATFORMS
    from ordersync.demo import DemoSettings, main_exit_code

    if dialect not in PLATFORMS:
        raise typer.BadParameter(f"use one of {', '.join(PLATFORMS)}", param_hint="--dialect")
    settings = DemoSettings(
        data_dir=data_dir,
        port=port,
        rate=rate,
        duration=duration,
        seed=seed,
        faults=faults,
        dialect=dialect,
    )
    try:
        code = main_exit_code(settings)
    except OrdersyncError as exc:
        err.print(f"[red]error:[/red] {escape(str(exc))}")
        raise typer.Exit(2) from None
    raise typer.Exit(code)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
