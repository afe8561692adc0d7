"""Each mistake of issue 14 on the agent and demo side: one line on stderr, the exit code
README.md's "Exit codes" table gives it, no traceback; nothing deleted or created by it."""

from __future__ import annotations

import os
import socket
import subprocess
from pathlib import Path

from ordersync.agent.records import Cursor
from ordersync.agent.sinks.checkpoint_file import CheckpointFile
from tests.acceptance.test_demo_and_agent_cli import ORDERSYNC
from tests.support import free_port

SOURCE = """
[[sources]]
name = "masonhub"
base_url = "http://127.0.0.1:9/api/v1"
token_env = "MASONHUB_TOKEN"
"""


def ordersync(*args: str, cwd: Path | None = None, **env: str) -> tuple[int, str]:
    """Run the CLI in a process of its own; its exit code and its one error line."""
    result = subprocess.run(
        [*ORDERSYNC, *args],
        capture_output=True,
        text=True,
        timeout=120,
        cwd=cwd,
        env=os.environ | {"MASONHUB_TOKEN": "x", "COLUMNS": "80"} | env,
        check=False,
    )
    assert "Traceback" not in result.stderr, result.stderr
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("error: "), result.stderr
    return result.returncode, lines[0]


def config(tmp_path: Path, sink: str | None = 'url = "sqlite:///{dir}/replica.db"') -> Path:
    path = tmp_path / "agent.toml"
    table = "" if sink is None else "[sink]\n" + sink.format(dir=tmp_path) + "\n"
    path.write_text(SOURCE + table)
    return path


def test_a_missing_sink_directory(tmp_path: Path) -> None:
    """Was: two thread tracebacks, then the error. Now exit 6 naming the directory."""
    agent_toml = config(tmp_path, f'url = "sqlite:///{tmp_path}/nowhere/replica.db"')
    code, line = ordersync("agent", "run", "--config", str(agent_toml), "--once")
    assert code == 6 and f"{tmp_path}/nowhere does not exist" in line


def test_an_environment_override_error_names_the_variable(tmp_path: Path) -> None:
    """Was: `agent.toml: sources.interval: ...`, blaming a file that says nothing of it."""
    agent_toml = config(tmp_path)
    code, line = ordersync(
        "agent", "run", "--config", str(agent_toml), ORDERSYNC_SOURCE_MASONHUB_INTERVAL="abc"
    )
    assert code == 2
    assert line.startswith("error: ORDERSYNC_SOURCE_MASONHUB_INTERVAL='abc' (environment")
    assert "interval" in line


def test_a_config_without_a_sink_is_refused(tmp_path: Path) -> None:
    """Was: a silent ./erp-replica.db wherever the agent was started. Now [sink] is required."""
    agent_toml = config(tmp_path, sink=None)
    code, line = ordersync("agent", "run", "--config", str(agent_toml), "--once", cwd=tmp_path)
    assert code == 2 and "[sink] is missing" in line
    assert not (tmp_path / "erp-replica.db").exists()


def test_status_creates_no_replica(tmp_path: Path) -> None:
    """Was: `agent status` created an empty replica file. Now exit 6 saying there is none."""
    agent_toml = config(tmp_path)
    code, line = ordersync("agent", "status", "--config", str(agent_toml))
    assert code == 6 and "no replica at" in line
    assert not (tmp_path / "replica.db").exists()


def test_the_http_sink_state_lives_beside_the_config(tmp_path: Path) -> None:
    """Was: ./ordersync-http-sink-state.json in the working directory (under systemd, /). Now
    beside the config file, whatever the working directory."""
    (tmp_path / "etc").mkdir()
    (tmp_path / "elsewhere").mkdir()
    agent_toml = config(tmp_path / "etc", sink='url = "https://erp.example/changes"')
    CheckpointFile(tmp_path / "etc" / "ordersync-http-sink-state.json").save(
        "masonhub", "orders", Cursor(1_700_000_000_000, "x")
    )
    shown = subprocess.run(
        [*ORDERSYNC, "agent", "status", "--config", str(agent_toml)],
        capture_output=True,
        text=True,
        cwd=tmp_path / "elsewhere",
        env=os.environ | {"COLUMNS": "250"},
        check=False,
    )
    assert shown.returncode == 0, shown.stderr
    assert "2023-11-14T22:13:20.000Z" in shown.stdout
    assert not list((tmp_path / "elsewhere").iterdir())


def test_demo_on_a_busy_port_deletes_nothing(tmp_path: Path) -> None:
    """Was: a 64-line traceback, after deleting the demo's databases. Now exit 5 first."""
    data = tmp_path / "demo-data"
    data.mkdir()
    (data / ".ordersync-demo").write_text("")
    (data / "hub.db").write_text("an earlier demo's hub")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, line = ordersync("demo", "--port", str(port), "--data-dir", str(data))
    assert code == 5 and f"127.0.0.1:{port}" in line and "nothing was deleted" in line
    assert (data / "hub.db").read_text() == "an earlier demo's hub"


def test_demo_with_its_receiver_port_busy_deletes_nothing(tmp_path: Path) -> None:
    """The agent's webhook receiver needs a port too (--agent-port, default --port + 1): a
    busy one is named before anything is deleted."""
    data = tmp_path / "demo-data"
    data.mkdir()
    (data / ".ordersync-demo").write_text("")
    (data / "hub.db").write_text("an earlier demo's hub")
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        code, line = ordersync(
            "demo", "--port", str(free_port()), "--agent-port", str(port), "--data-dir", str(data)
        )
    assert code == 5 and f"127.0.0.1:{port}" in line and "--agent-port" in line
    assert (data / "hub.db").read_text() == "an earlier demo's hub"


def test_demo_refuses_to_delete_databases_it_did_not_make(tmp_path: Path) -> None:
    """Was: `demo --data-dir .` silently deleted an existing hub.db and erp-replica.db."""
    (tmp_path / "hub.db").write_text("production")
    (tmp_path / "erp-replica.db").write_text("the ERP's")
    code, line = ordersync("demo", "--data-dir", ".", "--duration", "1", cwd=tmp_path)
    assert code == 7 and "--force" in line
    assert (tmp_path / "hub.db").read_text() == "production"
    assert (tmp_path / "erp-replica.db").read_text() == "the ERP's"


def test_demo_with_a_negative_duration(tmp_path: Path) -> None:
    """Was: a green proof of nothing. Now exit 2 naming the option."""
    code, line = ordersync("demo", "--duration", "-5", "--data-dir", str(tmp_path / "d"))
    assert code == 2 and "--duration -5" in line
    assert not (tmp_path / "d").exists()
