"""The `ordersync` command: wiring only. Each command builds settings and hands them over."""

from __future__ import annotations

import sys
from pathlib import Path
from typing import Annotated

import typer

from ordersync import __version__
from ordersync.agent.commands import agent_app
from ordersync.errors import OrdersyncError, exit_code
from ordersync.hub.commands import hub_app
from ordersync.hub.stock_commands import stock_app

# Help texts are plain text: with rich markup, "[[sources]]" or "[default: 5]" would vanish.
app = typer.Typer(
    help="ordersync: an order platform (hub) and the ERP-side agent that mirrors it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
hub_app.add_typer(stock_app, name="stock")
app.add_typer(hub_app, name="hub")
app.add_typer(agent_app, name="agent")


def _show_version(value: bool) -> None:
    if value:
        print(f"ordersync {__version__}")
        raise typer.Exit()


@app.callback()
def _options(
    version: Annotated[
        bool,
        typer.Option(
            "--version", callback=_show_version, is_eager=True, help="Print the version and exit."
        ),
    ] = False,
) -> None:
    """ordersync: an order platform (hub) and the ERP-side agent that mirrors it."""


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
        bool,
        typer.Option(help="Inject errors, 429s, latency, resets, late commits and lost webhooks."),
    ] = False,
    webhooks: Annotated[
        bool,
        typer.Option(
            help="Subscribe the agent's webhook receiver on the hub (polling reconciles);"
            " --no-webhooks: polling only, every second. Not for hubrise (its callback feed)."
        ),
    ] = True,
    agent_port: Annotated[
        int | None,
        typer.Option(help="The agent's port (webhook receiver, /status) [default: --port + 1]."),
    ] = None,
    dialect: Annotated[
        str,
        typer.Option(
            help="The wire dialect the agent syncs through: masonhub (/api/v1),"
            " tradecloud (/v2) or hubrise (/v1)."
        ),
    ] = "masonhub",
    force: Annotated[
        bool,
        typer.Option(
            help="Delete hub.db and erp-replica.db in --data-dir even if no demo made them."
        ),
    ] = False,
) -> None:
    """Hub + warehouse simulator + agent on embedded SQLite, the ERP pushing orders, an update
    and cancels (MasonHub), then the proof that the replica equals the hub: every (id, version)
    of orders, shipments and inventory present, none applied twice, the splits and shorts in
    the replica, every update and cancel resolution in the ERP's outbox."""
    from ordersync.agent.platforms import PLATFORMS
    from ordersync.demo import DemoSettings, main_exit_code

    problem = (
        f"--dialect {dialect!r}: use one of {', '.join(PLATFORMS)}"
        if dialect not in PLATFORMS
        else f"--duration {duration:g}: give the seconds to run, more than 0"
        if not duration > 0
        else f"--rate {rate:g}: give orders per second, more than 0"
        if rate is not None and not rate > 0
        else None
    )
    if problem:
        _error_line(problem)
        raise typer.Exit(2)
    settings = DemoSettings(
        data_dir=data_dir,
        port=port,
        rate=rate,
        duration=duration,
        seed=seed,
        faults=faults,
        dialect=dialect,
        force=force,
        webhooks=webhooks,
        agent_port=agent_port,
    )
    try:
        code = main_exit_code(settings)
    except OrdersyncError as exc:
        _error_line(str(exc))
        raise typer.Exit(exit_code(exc)) from None
    raise typer.Exit(code)


def _error_line(message: str) -> None:
    """One unwrapped line on stderr (rich would wrap it to the terminal's width)."""
    print(f"error: {message}", file=sys.stderr, flush=True)


def main() -> None:
    app()


if __name__ == "__main__":
    main()
