"""`agent run` talks back: a start line, a line per poll round, a stop summary; sentences on a
console, JSON for machines."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.acceptance.test_demo_and_agent_cli import ORDERSYNC, write_config
from tests.support import cli_token, hub_process


@pytest.fixture
def hub(tmp_path: Path) -> Iterator[tuple[str, str]]:
    db = f"sqlite:///{tmp_path}/hub.db"
    token = cli_token(db, account="demo")
    with hub_process(db, "--simulate", "10", "--seed", "3") as base:
        yield f"{base}/api/v1", token


def run_once(config: Path, token: str, *args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ORDERSYNC, "agent", "run", "--config", str(config), "--once", *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"MASONHUB_TOKEN": token},
        check=False,
    )


def test_console_lines_say_what_the_agent_does(tmp_path: Path, hub: tuple[str, str]) -> None:
    """On the console: what syncs into what, one line for the round, a stop summary; the
    per-call lines only at debug level."""
    base_url, token = hub
    config = write_config(tmp_path / "agent.toml", base_url)
    result = run_once(config, token, "--log-format", "console")
    assert result.returncode == 0, result.stderr
    lines = result.stderr.splitlines()
    assert any(
        f"syncing masonhub (masonhub {base_url}, every 1 s) into sqlite:///" in line
        and "replica lease held" in line
        for line in lines
    ), lines
    assert any(
        "masonhub: " in line and " applied, " in line and " calls" in line for line in lines
    ), lines
    assert any("stopped after " in line and "orders at 20" in line for line in lines), lines
    assert "api_call" not in result.stderr and "{" not in result.stderr
    debug = run_once(config, token, "--log-format", "console", "--log-level", "debug")
    assert "api_call" in debug.stderr and "endpoint=/orders" in debug.stderr


def test_json_when_not_a_terminal(tmp_path: Path, hub: tuple[str, str]) -> None:
    """Piped (a service manager, a log shipper), every line is a JSON object; the summaries
    ride along as fields."""
    base_url, token = hub
    result = run_once(write_config(tmp_path / "agent.toml", base_url), token)
    assert result.returncode == 0, result.stderr
    events = [json.loads(line) for line in result.stderr.splitlines()]
    names = [event["event"] for event in events]
    assert names[0] == "agent_started" and names[-1] == "agent_stopped", names
    round_ = next(event for event in events if event["event"] == "poll_round")
    assert round_["applied"] > 0 and round_["api_calls"] >= 2 and round_["lag_seconds"] >= 0
    quiet = run_once(
        write_config(tmp_path / "agent.toml", base_url), token, "--log-level", "warning"
    )
    assert quiet.returncode == 0 and quiet.stderr == ""


def test_ctrl_c_says_it_stops_and_sums_up(tmp_path: Path, hub: tuple[str, str]) -> None:
    """Ctrl-C: a line that the agent is stopping, then the summary, then exit 0."""
    base_url, token = hub
    config = write_config(tmp_path / "agent.toml", base_url)
    process = subprocess.Popen(
        [*ORDERSYNC, "agent", "run", "--config", str(config), "--log-format", "console"],
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"MASONHUB_TOKEN": token},
        start_new_session=True,
    )
    try:
        assert process.stderr is not None
        for line in process.stderr:
            if " applied, " in line:
                break
        os.killpg(process.pid, signal.SIGINT)
        rest = process.stderr.read()
        process.wait(timeout=60)
    finally:
        process.kill()
    assert process.returncode == 0, rest
    assert "stopping (SIGINT)" in rest and "stopped after " in rest and "Traceback" not in rest
