"""The hub as a new user meets it: the CLI, a served hub with its simulator, a wrong token."""

from __future__ import annotations

import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import cli_token, hub_process

ORDERSYNC = [sys.executable, "-m", "ordersync.cli"]


def run_cli(*args: str, **kwargs: object) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ORDERSYNC, *args], capture_output=True, text=True, timeout=60, check=False, **kwargs
    )  # type: ignore[call-overload]


def test_token_create_prints_the_token_alone_on_the_last_line(tmp_path: Path) -> None:
    """`hub token create` prints a new token once; it then authenticates against the hub."""
    db = f"sqlite:///{tmp_path}/hub.db"
    first = run_cli("hub", "token", "create", "--db", db, "--account", "acme", "--name", "erp")
    second = run_cli("hub", "token", "create", "--db", db, "--account", "acme", "--name", "wms")
    assert first.returncode == 0, first.stderr
    tokens = [p.stdout.strip().splitlines()[-1] for p in (first, second)]
    assert all(t.startswith("osk_") and len(t) > 30 for t in tokens)
    assert tokens[0] != tokens[1]
    assert tokens[0] not in (tmp_path / "hub.db").read_bytes().decode("latin-1")


def test_a_bad_database_url_is_a_clear_error_not_a_traceback(tmp_path: Path) -> None:
    """An unsupported URL exits 2 with one line saying what to use."""
    result = run_cli(
        "hub", "token", "create", "--db", "mysql://x/y", "--account", "a", "--name", "b"
    )
    assert result.returncode == 2
    assert "sqlite:///" in result.stderr and "Traceback" not in result.stderr


def test_serve_help_names_the_options_and_environment() -> None:
    result = run_cli("hub", "serve", "--help")
    assert result.returncode == 0
    for option in ("--db", "--port", "--simulate", "--seed", "ORDERSYNC_HUB_DB"):
        assert option in result.stdout


@pytest.fixture
def simulated_hub(tmp_path: Path) -> Iterator[tuple[str, str]]:
    db = f"sqlite:///{tmp_path}/hub.db"
    token = cli_token(db, account="demo")
    with hub_process(db, "--simulate", "20", "--seed", "3") as base:
        yield base, token


@pytest.mark.slow
def test_served_simulator_produces_orders_that_change_over_time(
    simulated_hub: tuple[str, str],
) -> None:
    """Polling `updated_since` on a simulating hub shows new orders and status changes."""
    base, token = simulated_hub
    headers = {"Authorization": f"Bearer {token}"}
    params = {"updated_since": "2020-01-01T00:00:00Z", "limit": "100", "list_type": "summary"}

    def snapshot() -> dict[str, tuple[str, int]]:
        response = httpx.get(f"{base}/api/v1/orders", params=params, headers=headers)
        assert response.status_code == 200
        return {o["id"]: (o["status"], o["version"]) for o in response.json()["data"]}

    time.sleep(3)
    first = snapshot()
    time.sleep(4)
    second = snapshot()
    assert len(second) > len(first) > 0
    moved = [i for i in first if i in second and second[i][1] > first[i][1]]
    assert moved, "no order changed status between two polls"
    assert any(status != "open" for status, _ in second.values())


def test_served_hub_refuses_a_wrong_token_with_json(simulated_hub: tuple[str, str]) -> None:
    """A wrong token gets 401 with a JSON body naming the problem."""
    base, _ = simulated_hub
    response = httpx.get(f"{base}/api/v1/orders", headers={"Authorization": "Bearer nope"})
    assert response.status_code == 401
    assert response.json()["error_type"] == "unauthorized"
