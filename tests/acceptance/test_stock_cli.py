"""`ordersync hub stock receive` and `hub stock list`: stock for the demo and the warehouse
from the command line, with one-line errors and exit codes."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ordersync.cli import app


def test_received_stock_is_listed_and_bad_input_exits_2(tmp_path: Path) -> None:
    """Two receipts add up in the listing; an unknown account exits 1, a bad date 2."""
    db = f"sqlite:///{tmp_path}/hub.db"
    runner = CliRunner()
    for quantity in ("5", "3"):
        done = runner.invoke(
            app,
            ["hub", "stock", "receive", "acme", "--sku", "A", "--location", "EAST",
             "--quantity", quantity, "--lot", "L1", "--expires", "2030-01-31", "--db", db],
        )  # fmt: skip
        assert done.exit_code == 0, done.output
    listed = runner.invoke(app, ["hub", "stock", "list", "acme", "--db", db])
    assert listed.exit_code == 0, listed.output
    (row,) = [line.split() for line in listed.stdout.splitlines() if line.startswith("A ")]
    assert row == ["A", "EAST", "L1", "2030-01-31", "8", "0", "0", "0", "0"]
    assert runner.invoke(app, ["hub", "stock", "list", "nobody", "--db", db]).exit_code == 1
    bad = runner.invoke(
        app,
        ["hub", "stock", "receive", "acme", "--sku", "A", "--location", "EAST",
         "--quantity", "1", "--expires", "soon", "--db", db],
    )  # fmt: skip
    assert bad.exit_code == 2
