"""The demo and the agent CLI end to end, as a new user runs them."""

from __future__ import annotations

import os
import re
import signal
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import cli_token, free_port, hub_process, order_payload

ORDERSYNC = [sys.executable, "-m", "ordersync.cli"]
PROOF = re.compile(
    r"proof: hub (\d+) orders / (\d+) shipments / (\d+) inventory; replica (\d+) / (\d+) / "
    r"(\d+); versions equal; missed 0; applied twice 0"
)
FULFILLMENT = re.compile(
    r"orders split over several shipments: hub (\d+), replica (\d+); "
    r"orders with shorts: hub (\d+), replica (\d+)"
)
PUSHES = re.compile(
    r"ERP pushes: (\d+) lines \(8 creates, 2 updates, 2 cancels\): (\d+) resolved, "
    r"(\d+) accepted, (\d+) failed, (\d+) pending"
)
REQUESTS = re.compile(
    r"requests: hub resolved (\d+) \((\d+) failed\), open 0; outbox resolved (\d+), "
    r"unsettled 0; echoes (\d+)"
)


@pytest.mark.slow
@pytest.mark.parametrize("faults", [False, True], ids=["clean", "faults"])
def test_demo_ends_with_the_proof(tmp_path: Path, faults: bool) -> None:
    """`ordersync demo` mirrors a simulated warehouse (orders, shipments, inventory) while the
    ERP pushes orders, an update and cancels, and proves replica == hub, even with injected
    errors, 429s, resets, late commits and lost webhooks: webhooks apply most versions, polling
    reconciles; the splits and shorts the warehouse made are in the replica; every update and
    cancel request the hub resolved is resolved the same way in the ERP's outbox; the ERP's own
    orders come back marked as echoes."""
    args = [
        *ORDERSYNC,
        "demo",
        "--duration",
        "12",
        "--rate",
        "10",
        "--port",
        str(free_port()),
        "--data-dir",
        str(tmp_path),
    ] + (["--faults"] if faults else [])
    result = subprocess.run(args, capture_output=True, text=True, timeout=120, check=False)
    assert result.returncode == 0, result.stdout + result.stderr
    match = PROOF.search(result.stdout)
    assert match, result.stdout
    hub_orders, hub_shipments, hub_skus, replica_orders, replica_shipments, replica_skus = map(
        int, match.groups()
    )
    assert hub_orders >= 40 and hub_orders == replica_orders
    assert hub_shipments == replica_shipments
    assert hub_skus == replica_skus == 200  # the simulator's catalogue, mirrored
    assert '"endpoint": "/orders"' in (tmp_path / "demo.log").read_text()
    paths = re.search(r"(\d+) versions applied: (\d+) by webhook, (\d+) by polling", result.stdout)
    assert paths, result.stdout
    applied, by_webhook, by_polling = map(int, paths.groups())
    assert by_webhook > 0 and by_webhook + by_polling == applied
    split = FULFILLMENT.search(result.stdout)
    assert split, result.stdout
    hub_split, replica_split, hub_short, replica_short = map(int, split.groups())
    assert hub_split == replica_split and hub_short == replica_short
    assert hub_short >= 1  # ERP-0005 asks for more than the stock: it ships short
    pushes = PUSHES.findall(result.stdout)  # the progress shows them too: the last is final
    assert pushes, result.stdout
    lines, resolved, accepted, failed, pending = map(int, pushes[-1])
    assert lines == 12 and accepted == pending == 0 and resolved + failed == lines
    assert resolved >= 8  # every create, at least
    assert "update ERP-0002: resolved" in result.stdout
    assert "cancel ERP-0003: resolved" in result.stdout
    assert "update ERP-0003: failed: " in result.stdout  # canceled: refused, with the reason
    requests = REQUESTS.search(result.stdout)
    assert requests, result.stdout
    hub_resolved, _, outbox_resolved, echoes = map(int, requests.groups())
    assert hub_resolved >= 2 and outbox_resolved >= hub_resolved
    assert echoes >= 1  # the ERP's own orders, recognised when they came back


def write_config(path: Path, base_url: str, port: int | None = None, **extra: str) -> Path:
    """An agent.toml; `extra` keys go into the source table."""
    lines = [
        f"port = {port}" if port else "",
        "[[sources]]",
        'name = "masonhub"',
        'dialect = "masonhub"',
        f'base_url = "{base_url}"',
        'token_env = "MASONHUB_TOKEN"',
        "interval = 1",
        "lookback = 5",
        *[f"{k} = {v}" for k, v in extra.items()],
        "",
        "[sink]",
        f'url = "sqlite:///{path.parent}/replica.db"',
    ]
    path.write_text("\n".join(lines))
    return path


def agent(config: Path, *args: str, token: str | None = "x") -> subprocess.CompletedProcess[str]:
    env = {k: v for k, v in os.environ.items() if k != "MASONHUB_TOKEN"}
    if token is not None:
        env["MASONHUB_TOKEN"] = token
    return subprocess.run(
        [*ORDERSYNC, "agent", "run", "--config", str(config), *args],
        capture_output=True,
        text=True,
        timeout=60,
        env=env,
        check=False,
    )


def test_a_misspelled_config_key_is_named(tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.toml", "http://127.0.0.1:9/api/v1", intervall="5")
    result = agent(config)
    assert result.returncode == 2
    assert "intervall" in result.stderr and "Traceback" not in result.stderr


def test_a_missing_token_variable_says_which(tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.toml", "http://127.0.0.1:9/api/v1")
    result = agent(config, token=None)
    assert result.returncode == 2 and "MASONHUB_TOKEN" in result.stderr


def test_an_unreachable_platform_fails_at_start(tmp_path: Path) -> None:
    config = write_config(tmp_path / "agent.toml", f"http://127.0.0.1:{free_port()}/api/v1")
    result = agent(config, "--once")
    assert result.returncode == 2 and "cannot reach" in result.stderr
    assert "Traceback" not in result.stderr


@pytest.fixture
def served_hub(tmp_path: Path) -> Iterator[tuple[str, str]]:
    db = f"sqlite:///{tmp_path}/hub.db"
    token = cli_token(db, account="demo")
    with hub_process(db, "--simulate", "10", "--seed", "5") as base:
        yield f"{base}/api/v1", token


def test_a_refused_token_fails_at_start(tmp_path: Path, served_hub: tuple[str, str]) -> None:
    base_url, _ = served_hub
    result = agent(write_config(tmp_path / "agent.toml", base_url), "--once", token="wrong")
    assert result.returncode == 2 and "refused the token" in result.stderr


@pytest.mark.slow
@pytest.mark.parametrize("stop", [signal.SIGTERM, signal.SIGINT], ids=["SIGTERM", "SIGINT"])
def test_agent_runs_serves_status_and_stops_gracefully_on_a_signal(
    tmp_path: Path, served_hub: tuple[str, str], stop: signal.Signals
) -> None:
    """A running agent logs one JSON line per call, answers /status and /metrics, and exits
    0 on SIGTERM or Ctrl-C, sent to its whole process group as a service manager and a
    terminal do; `agent status` then shows the stored cursors."""
    base_url, token = served_hub
    port = free_port()
    config = write_config(tmp_path / "agent.toml", base_url, port=port)
    env = {**os.environ, "MASONHUB_TOKEN": token}
    process = subprocess.Popen(
        [*ORDERSYNC, "agent", "run", "--config", str(config)],
        stdout=subprocess.PIPE,
        stderr=subprocess.PIPE,
        text=True,
        env=env,
        start_new_session=True,
    )
    try:
        status = _wait_for_status(port)
        assert {row["stream"] for row in status} == {"orders", "shipments"}
        metrics = httpx.get(f"http://127.0.0.1:{port}/metrics").text
        assert "ordersync_agent_records_applied_total" in metrics
        os.killpg(process.pid, stop)
        _, stderr = process.communicate(timeout=30)
    finally:
        process.kill()
    assert process.returncode == 0, stderr
    assert "Traceback" not in stderr and "writer" not in stderr, stderr
    assert '"processing_time_ms"' in stderr and '"records_returned"' in stderr
    shown = subprocess.run(
        [*ORDERSYNC, "agent", "status", "--config", str(config)],
        capture_output=True,
        text=True,
        env=env,
        check=False,
    )
    assert shown.returncode == 0 and "orders" in shown.stdout and "20" in shown.stdout


def _wait_for_status(port: int) -> list[dict[str, object]]:
    deadline = time.monotonic() + 120  # generous: shared CI machines can be very busy
    while time.monotonic() < deadline:
        try:
            rows = httpx.get(f"http://127.0.0.1:{port}/status", timeout=1).json()
            if any(row["stream"] == "orders" and row["cursor"] for row in rows):
                return list(rows)
        except (httpx.TransportError, ValueError):
            pass
        time.sleep(0.3)
    raise AssertionError("agent never reported cursors on /status")


def test_verify_reports_drift_then_sync(tmp_path: Path) -> None:
    """`agent verify` exits 1 and names missing orders until a sync run, then exits 0."""
    db = f"sqlite:///{tmp_path}/hub.db"
    token = cli_token(db)
    with hub_process(db) as base:
        created = httpx.post(
            f"{base}/api/v1/orders",
            headers={"Authorization": f"Bearer {token}"},
            json=[order_payload(f"V-{i}") for i in range(3)],
        )
        assert created.status_code == 201
        config = write_config(tmp_path / "agent.toml", f"{base}/api/v1")
        env = {**os.environ, "MASONHUB_TOKEN": token}

        def verify() -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*ORDERSYNC, "agent", "verify", "--config", str(config)],
                capture_output=True,
                text=True,
                env=env,
                timeout=120,
                check=False,
            )

        before = verify()
        assert before.returncode == 1 and "drift" in before.stdout and "3:" in before.stdout
        assert agent(config, "--once", token=token).returncode == 0
        after = verify()
        assert after.returncode == 0 and "in sync" in after.stdout
