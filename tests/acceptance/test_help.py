"""`--help` shows the help texts whole: brackets in them are text, not markup."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from ordersync.cli import app


@pytest.mark.parametrize(
    ("command", "shown"),
    [
        (["agent", "run", "--help"], "Agent TOML file ([[sources]] and [sink])."),
        (["demo", "--help"], "[default: 5, hubrise 0.5]"),
    ],
)
def test_help_keeps_bracketed_text(command: list[str], shown: str) -> None:
    """Help texts naming TOML tables or per-dialect defaults keep their brackets."""
    result = CliRunner().invoke(app, command, terminal_width=200)
    assert result.exit_code == 0, result.output
    assert shown in " ".join(result.output.split())
