"""The `ordersync` command: wiring only. Each command builds settings and hands them over."""

from __future__ import annotations

from pathlib import Path
from typing import Annotated

import typer
from rich.console import Console
from rich.markup import escape

from ordersync import __version__
from ordersync.agent.commands import agent_app
from ordersync.errors import OrdersyncError
from ordersync.hub.commands import hub_app

# Help texts are plain text: with rich markup, "[[sources]]" or "[default: 5]" would vanish.
app = typer.Typer(
    help="ordersync: an order platform (hub) and the ERP-side agent that mirrors it.",
    no_args_is_help=True,
    pretty_exceptions_enable=False,
    rich_markup_mode=None,
)
app.add_typer(hub_app, name="hub")
app.add_typer(agent_app, name="agent")

err = Console(stderr=True)


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
