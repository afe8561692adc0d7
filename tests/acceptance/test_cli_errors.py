"""A configuration mistake is one line naming the key, with its brackets, and exit code 2."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

from tests.acceptance.test_demo_and_agent_cli import ORDERSYNC

CONFIG = """
[[sources]]
name = "masonhub"
base_url = "http://127.0.0.1:9/api/v1"
token_env = "MASONHUB_TOKEN"
page_size = 1

[sink]
url = "sqlite:///replica.db"
"""


def test_a_config_error_names_the_source_in_brackets(tmp_path: Path) -> None:
    """`sources[masonhub].page_size` stays whole (rich markup used to eat `[masonhub]`)."""
    config = tmp_path / "agent.toml"
    config.write_text(CONFIG)
    # A process of its own: `agent run` configures logging for the whole process.
    result = subprocess.run(
        [*ORDERSYNC, "agent", "run", "--config", str(config), "--once"],
        env=os.environ | {"MASONHUB_TOKEN": "x", "COLUMNS": "200"},
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode == 2, result.stderr
    assert "sources[masonhub].page_size" in result.stderr
    assert "Traceback" not in result.stderr
