"""Two `ordersync agent run` processes on one replica, as an operator starts them: the second
waits as hot standby (or is refused), takes over after the first is SIGKILLed, and the replica
ends equal to the hub with nothing missed, nothing applied twice and no doubled polling. Also:
a metrics port already taken is one clear line and exit 2."""

from __future__ import annotations

import asyncio
import contextlib
import os
import signal
import socket
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest
from sqlalchemy import select

from ordersync.agent.sinks.sql import SqlSink, applied_versions
from ordersync.domain.timestamps import now_ms, parse_rfc3339_ms
from ordersync.store.store import Store
from tests.support import _wait_healthy, cli_token, free_port

ORDERSYNC = [sys.executable, "-m", "ordersync.cli"]
GUARD_S = 120  # hang guards only: shared machines can be very busy


@contextlib.contextmanager
def hub_on(db_url: str, port: int, *serve_args: str) -> Iterator[str]:
    """`ordersync hub serve` on a given port (so a restarted hub keeps the agents' URL)."""
    server = subprocess.Popen(
        [*ORDERSYNC, "hub", "serve", "--db", db_url, "--port", str(port), *serve_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, server)
        yield f"{base}/api/v1"
    finally:
        server.terminate()
        server.wait(timeout=30)


def write_config(path: Path, base_url: str, sink_url: str, port: int, standby: bool) -> Path:
    path.write_text(
        "\n".join(
            [
                f"port = {port}",
                f"standby = {'true' if standby else 'false'}",
                "[[sources]]",
                'name = "masonhub"',
                f'base_url = "{base_url}"',
                'token_env = "MASONHUB_TOKEN"',
                "interval = 0.5",
                "lookback = 5",
                "[sink]",
                f'url = "{sink_url}"',
            ]
        )
    )
    return path


def start_agent(config: Path, log: Path, token: str, *args: str) -> subprocess.Popen[bytes]:
    return subprocess.Popen(
        [*ORDERSYNC, "agent", "run", "--config", str(config), *args],
        stdout=subprocess.DEVNULL,
        stderr=log.open("wb"),
        env={**os.environ, "MASONHUB_TOKEN": token},
    )


def wait_for(what: str, condition: object) -> None:
    deadline = time.monotonic() + GUARD_S
    while time.monotonic() < deadline:
        if condition():  # type: ignore[operator]
            return
        time.sleep(0.2)
    raise AssertionError(f"never happened: {what}")


def status(port: int) -> list[dict[str, object]]:
    try:
        return list(httpx.get(f"http://127.0.0.1:{port}/status", timeout=1).json())
    except (httpx.TransportError, ValueError):
        return []


def synced_since(port: int, since_ms: int) -> bool:
    rows = status(port)
    return bool(rows) and all(
        row["last_success_at"] and parse_rfc3339_ms(str(row["last_success_at"])) >= since_ms
        for row in rows
    )


def api_calls(log: Path) -> int:
    return log.read_text(errors="replace").count('"api_call"')


@pytest.mark.slow
@pytest.mark.parametrize("replica", ["postgresql", "sqlite"])
def test_a_standby_agent_takes_over_after_sigkill_missing_nothing_applying_nothing_twice(
    tmp_path: Path, replica: str, request: pytest.FixtureRequest
) -> None:
    """A syncs a hub that keeps changing; B, same config, says it waits for A's pid and polls
    nothing; a third agent with standby = false is refused (exit 2). A is SIGKILLed; B takes
    over within seconds. Once the hub is quiet and B caught up, the replica holds every hub
    version, and the ledger has each applied version once."""
    hub_db = f"sqlite:///{tmp_path}/hub.db"
    token = cli_token(hub_db, account="demo")
    sink_url = (
        request.getfixturevalue("pg_url")
        if replica == "postgresql"
        else f"sqlite:///{tmp_path}/replica.db"
    )
    hub_port, port = free_port(), free_port()
    base_url = f"http://127.0.0.1:{hub_port}/api/v1"
    config = write_config(tmp_path / "agent.toml", base_url, sink_url, port, standby=True)
    refusing = write_config(tmp_path / "refuse.toml", base_url, sink_url, port, standby=False)
    a_log, b_log = tmp_path / "a.log", tmp_path / "b.log"
    agents: list[subprocess.Popen[bytes]] = []
    try:
        with hub_on(hub_db, hub_port, "--simulate", "20", "--seed", "7"):
            a = start_agent(config, a_log, token)
            agents.append(a)
            wait_for("A reports a cursor", lambda: any(row["cursor"] for row in status(port)))
            b = start_agent(config, b_log, token)
            agents.append(b)
            wait_for("B says it waits", lambda: "waiting as standby" in b_log.read_text())
            refused = subprocess.run(
                [*ORDERSYNC, "agent", "run", "--config", str(refusing), "--once"],
                capture_output=True,
                text=True,
                timeout=GUARD_S,
                env={**os.environ, "MASONHUB_TOKEN": token},
                check=False,
            )
            wait_for("A syncs on", lambda: api_calls(a_log) >= 20)
            b_calls_while_a_ran = api_calls(b_log)
            a.send_signal(signal.SIGKILL)
            a.wait(30)
            wait_for("B takes over", lambda: api_calls(b_log) > 0)
            wait_for("B serves /status", lambda: bool(status(port)))
        quiet_since = now_ms()
        with hub_on(hub_db, hub_port):
            # A cycle that ends after `quiet_since` may have read its pages before the last
            # writes committed; the one after it began once the hub was quiet.
            wait_for("B syncs on the quiet hub", lambda: synced_since(port, quiet_since))
            caught_up_since = now_ms()
            wait_for("B catches up on the quiet hub", lambda: synced_since(port, caught_up_since))
            b.send_signal(signal.SIGTERM)
            b.wait(60)
    finally:
        for agent in agents:
            if agent.poll() is None:
                agent.kill()
                agent.wait()
    b_said = b_log.read_text(errors="replace")
    assert (
        f"replica {_shown(sink_url)} in use by agent pid {a.pid} on host "
        f"{socket.gethostname()}; waiting as standby"
    ) in b_said
    assert b_calls_while_a_ran == 0, "the standby polled the platform while A ran"
    assert refused.returncode == 4, refused.stderr  # README.md, "Exit codes"
    assert f"in use by agent pid {a.pid}" in refused.stderr and "refused" in refused.stderr
    assert "Traceback" not in b_said and b.returncode == 0, b_said[-2000:]
    hub, replica_versions, ledger = asyncio.run(_compare(hub_db, token, sink_url))
    for kind in ("order", "shipment"):
        missed = {i for i, v in hub[kind].items() if replica_versions[kind].get(i) != v}
        extra = replica_versions[kind].keys() - hub[kind].keys()
        assert not missed and not extra, f"{kind}: {len(missed)} missed, {len(extra)} extra"
    assert len(hub["order"]) >= 20
    assert len(ledger) == len(set(ledger)), "a version was applied twice"
    latest = {(kind, i): v for kind, i, v in sorted(ledger, key=lambda row: row[2])}
    assert latest == {(k, i): v for k in hub for i, v in hub[k].items()}


def _shown(url: str) -> str:
    from ordersync.agent.lease import shown

    return shown(url)


async def _compare(
    hub_db: str, token: str, sink_url: str
) -> tuple[dict[str, dict[str, int]], dict[str, dict[str, int]], list[tuple[str, str, int]]]:
    store = await Store.open(hub_db)
    account = (await store.authenticate(token)).account_id
    hub = {kind: await store.versions(account, kind) for kind in ("order", "shipment")}
    await store.close()
    sink = await SqlSink.open(sink_url)
    replica = {kind: await sink.load_versions("masonhub", kind) for kind in ("order", "shipment")}
    c = applied_versions.c
    async with sink.engine.connect() as conn:
        ledger = [
            (str(r[0]), str(r[1]), int(r[2]))
            for r in await conn.execute(select(c.kind, c.id, c.version))
        ]
    await sink.close()
    return hub, replica, ledger  # type: ignore[return-value]


def test_a_metrics_port_in_use_is_one_clear_line_and_exit_5(tmp_path: Path) -> None:
    """The agent's port is taken (by another program, or another agent's): exit 5 (port in
    use) with one line naming the port, instead of a silent exit 3."""
    hub_db = f"sqlite:///{tmp_path}/hub.db"
    token = cli_token(hub_db, account="demo")
    hub_port = free_port()
    with socket.socket() as taken, hub_on(hub_db, hub_port) as base_url:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        config = write_config(
            tmp_path / "agent.toml", base_url, f"sqlite:///{tmp_path}/r.db", port, standby=False
        )
        result = subprocess.run(
            [*ORDERSYNC, "agent", "run", "--config", str(config), "--once"],
            capture_output=True,
            text=True,
            timeout=GUARD_S,
            env={**os.environ, "MASONHUB_TOKEN": token},
            check=False,
        )
    assert result.returncode == 5, result.stderr
    (line,) = [line for line in result.stderr.splitlines() if line.startswith("error:")]
    assert f"127.0.0.1:{port}" in line and "Traceback" not in result.stderr
