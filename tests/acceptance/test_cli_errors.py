"""A configuration mistake is one line naming the key, with its brackets, and exit code 2."""

from __future__ import annotations

from pathlib import Path

from typer.testing import CliRunner

from ordersync.cli import app

CONFIG = """
[[sources]]
name = "masonhub"
base_url = "http://127.0.0.1:9/api/v1"
token_env = "MASONHUB_TOKEN"
page_size = 1
"""


def test_a_config_error_names_the_source_in_brackets(tmp_path: Path) -> None:
    """`sources[masonhub].page_size` stays whole (rich markup used to eat `[masonhub]`)."""
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG)
    result = CliRunner().invoke(
        app,
        ["agent", "run", "--config", str(config), "--once"],
        env={"MASONHUB_TOKEN": "x", "COLUMNS": "200"},
    )
    assert result.exit_code == 2
    assert "sources[masonhub].page_size" in result.output
    assert "Traceback" not in result.output
