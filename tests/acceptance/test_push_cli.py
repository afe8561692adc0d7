"""`ordersync agent push` as a user runs it: its help, a push to a hub process that ends with
every line resolved, one result per line on stdout, a summary on stderr and the README's exit
codes (0 resolved, 1 a line failed, 2 a bad line, nothing sent); `agent status` then counts
the outbox's lines per state."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import orjson
import pytest
from typer.testing import CliRunner

from ordersync.cli import app
from tests.support import ORDERSYNC_CLI, cli_token, hub_process, order_payload


def test_push_help_names_the_line_shape_and_the_exit_codes() -> None:
    """--help says what a line holds, how a crash is resumed and what the exit codes mean."""
    result = CliRunner().invoke(app, ["agent", "push", "--help"], terminal_width=200)
    assert result.exit_code == 0, result.output
    text = " ".join(result.output.split())
    assert '{"op": "create"|"update"|"cancel", ...}' in text
    assert "pushing the same file again" in text
    assert "Exit 0 all resolved, 1 some failed, 8 some still open" in text


def test_a_push_to_a_running_hub_resolves_each_line(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Create, update and cancel through the CLI: exit 0, each line `resolved` in JSON lines;
    a refused line exits 1 with its reason; a malformed file exits 2 before sending."""
    monkeypatch.setenv("ORDERSYNC_HUB_REQUEST_RESOLVE_DELAY_MS", "1")
    monkeypatch.setenv("ORDERSYNC_HUB_REQUEST_RESOLVE_INTERVAL_S", "0.05")
    db = f"sqlite:///{tmp_path}/hub.db"
    token = cli_token(db)
    with hub_process(db) as base:
        (tmp_path / "agent.toml").write_text(
            f'[[sources]]\nname = "masonhub"\nbase_url = "{base}/api/v1"\n'
            f'token_env = "HUB_TOKEN"\n[sink]\nurl = "sqlite:///{tmp_path}/replica.db"\n'
        )

        def push(*changes: object) -> subprocess.CompletedProcess[str]:
            lines = "\n".join(orjson.dumps(c).decode() for c in changes)
            (tmp_path / "changes.jsonl").write_text(lines + "\n")
            return subprocess.run(
                [
                    *ORDERSYNC_CLI,
                    "agent",
                    "push",
                    "--source",
                    "masonhub",
                    "changes.jsonl",
                    "--poll-interval",
                    "0.1",
                ],
                cwd=tmp_path,
                env=os.environ | {"HUB_TOKEN": token},
                capture_output=True,
                text=True,
                timeout=120,
            )

        done = push(
            {"op": "create", "order": order_payload("CLI-1")},
            {"op": "update", "order": order_payload("CLI-1", shipping_provider="DHL")},
            {"op": "cancel", "customer_identifier": "CLI-1"},
        )
        assert done.returncode == 0, done.stderr
        results = [orjson.loads(line) for line in done.stdout.splitlines()]
        assert [(r["line"], r["op"], r["state"]) for r in results] == [
            (1, "create", "resolved"),
            (2, "update", "resolved"),
            (3, "cancel", "resolved"),
        ]
        assert "3 lines: 3 resolved, 0 accepted, 0 failed, 0 pending" in done.stderr

        refused = push({"op": "cancel", "customer_identifier": "NOT-THERE"})
        assert refused.returncode == 1, refused.stderr
        assert "303" in orjson.loads(refused.stdout)["reason"]

        malformed = push({"op": "create", "order": order_payload("CLI-2")}, {"op": "delete"})
        assert malformed.returncode == 2
        assert malformed.stderr.strip().splitlines() == [
            "error: line 2: op must be one of create, update, cancel, not 'delete'"
        ]

        status = subprocess.run(
            [*ORDERSYNC_CLI, "agent", "status"],
            cwd=tmp_path,
            env=os.environ | {"HUB_TOKEN": token},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert status.returncode == 0, status.stderr
        assert "push masonhub: 0 pending, 0 accepted, 3 resolved, 1 failed" in status.stdout


def test_push_needs_a_sql_replica_and_a_known_source(tmp_path: Path) -> None:
    """A JSONL sink has no outbox to keep, an unknown --source is named: one line, exit 2."""
    (tmp_path / "changes.jsonl").write_text('{"op": "cancel", "customer_identifier": "A"}\n')
    (tmp_path / "agent.toml").write_text(
        '[[sources]]\nname = "masonhub"\nbase_url = "http://127.0.0.1:9/api/v1"\n'
        f'token_env = "HUB_TOKEN"\n[sink]\nurl = "jsonl://{tmp_path}/changes-out.jsonl"\n'
    )
    for source, expected in (
        ("masonhub", "error: push keeps its outbox in the SQL replica"),
        ("nope", "error: --source 'nope' is not in agent.toml (sources: masonhub)"),
    ):
        result = subprocess.run(
            [*ORDERSYNC_CLI, "agent", "push", "--source", source, "changes.jsonl"],
            cwd=tmp_path,
            env=os.environ | {"HUB_TOKEN": "x"},
            capture_output=True,
            text=True,
            timeout=60,
        )
        assert result.returncode == 2
        (line,) = result.stderr.strip().splitlines()
        assert line.startswith(expected), line
