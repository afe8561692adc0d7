"""`agent verify` as a health check against a live platform (--watch, its metric) and
`agent reset` rewinding a source on purpose, refused while an agent runs."""

from __future__ import annotations

import json
import os
import signal
import subprocess
from pathlib import Path

import httpx

from tests.acceptance.test_agent_talks import hub, run_once  # noqa: F401  (fixture)
from tests.acceptance.test_demo_and_agent_cli import ORDERSYNC, _wait_for_status, write_config
from tests.support import free_port


def cli(*args: str, token: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ORDERSYNC, *args],
        capture_output=True,
        text=True,
        timeout=120,
        env=os.environ | {"MASONHUB_TOKEN": token, "COLUMNS": "250"},
        check=False,
    )


def test_verify_watch_exports_the_verify_metric_against_a_live_platform(
    tmp_path: Path,
    hub: tuple[str, str],  # noqa: F811
) -> None:
    """While the simulator writes, each round is "in sync" with records in flight, and
    /metrics carries ordersync_agent_verify_records by state."""
    base_url, token = hub
    config = write_config(tmp_path / "agent.toml", base_url)
    assert run_once(config, token).returncode == 0
    port = free_port()
    watching = subprocess.Popen(
        [*ORDERSYNC, "agent", "verify", "--config", str(config), "--watch", "0.5",
         "--port", str(port)],
        stderr=subprocess.PIPE,
        text=True,
        env=os.environ | {"MASONHUB_TOKEN": token},
    )  # fmt: skip
    rounds: list[str] = []
    try:
        assert watching.stderr is not None
        for line in watching.stderr:  # one line per round
            rounds.append(line)
            if len(rounds) == 2:
                break
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        watching.send_signal(signal.SIGINT)
        _, said = watching.communicate(timeout=60)
    finally:
        watching.kill()
    assert watching.returncode == 0, said
    assert (
        'ordersync_agent_verify_records{source="masonhub",state="missing",stream="orders"} 0.0'
        in metrics
    )
    assert all(" in sync: masonhub orders: " in line for line in rounds), rounds
    assert "Traceback" not in said
    # The position trails the simulator by at least the lookback: some are in flight.
    assert any(" 0 in flight" not in line.split("orders:")[1].split(";")[0] for line in rounds)


def test_reset_rewinds_a_source_and_is_refused_while_an_agent_runs(
    tmp_path: Path,
    hub: tuple[str, str],  # noqa: F811
) -> None:
    """`agent status` of a running agent shows its figures; reset with an agent running: exit
    4, one line. Stopped: positions move back to --since, and
    the next run reads those records again as repeats."""
    base_url, token = hub
    port = free_port()
    config = write_config(tmp_path / "agent.toml", base_url, port=port)
    running = subprocess.Popen(
        [*ORDERSYNC, "agent", "run", "--config", str(config)],
        stderr=subprocess.DEVNULL,
        env=os.environ | {"MASONHUB_TOKEN": token},
    )
    try:
        _wait_for_status(port)
        live = cli("agent", "status", "--config", str(config), token=token)
        refused = cli("agent", "reset", "--config", str(config), "--source", "masonhub",
                      token=token)  # fmt: skip
    finally:
        running.send_signal(signal.SIGTERM)
        running.wait(timeout=60)
    # agent status, the agent running: the position as a time, lag, applied, repeats.
    assert "lag: now minus the position's time" in live.stdout
    header = [c.strip() for c in live.stdout.splitlines()[1].split("┃")[1:-1]]
    orders = next(line for line in live.stdout.splitlines() if "│ orders " in line)
    cells = dict(zip(header, [c.strip() for c in orders.split("│")[1:-1]], strict=True))
    assert cells["position"].startswith("20") and cells["position"].endswith("Z")
    assert int(cells["applied"]) > 0 and int(cells["repeats"]) >= 0
    assert cells["lag"].endswith(" s") and cells["last error"] == "-"
    assert refused.returncode == 4, refused.stderr
    (line,) = refused.stderr.strip().splitlines()
    assert line.startswith("error: replica ") and "in use by agent pid" in line

    done = cli("agent", "reset", "--config", str(config), "--source", "masonhub", "--since",
               "2020-01-01T00:00:00Z", token=token)  # fmt: skip
    assert done.returncode == 0, done.stderr
    assert "reads again from 2020-01-01T00:00:00.000Z" in done.stderr
    status = cli("agent", "status", "--config", str(config), token=token)
    assert status.stdout.count("2020-01-01T00:00:00.000Z") == 2, status.stdout
    again = run_once(config, token)
    rounds = [json.loads(x) for x in again.stderr.splitlines() if '"poll_round"' in x]
    assert rounds and rounds[0]["duplicates"] > 0
