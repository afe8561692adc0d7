"""The hub behind PgBouncer in transaction pooling (`?pgbouncer=true` on the database URL).

There, consecutive transactions of one client connection run on whichever server connection is
free, so a statement psycopg prepared on one server connection is missing on the next
("prepared statement "_pg3_0" does not exist"). With the flag the hub prepares nothing on the
server; migrations run through PgBouncer too (one transaction, a transaction-level lock).

Needs the `pgbouncer` program (`apt-get install pgbouncer`): skipped without it, except under
CI=true, where its absence fails the run.
"""

from __future__ import annotations

import contextlib
import os
import pwd
import shutil
import socket
import subprocess
import tempfile
import threading
import time
from collections import Counter
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest
from sqlalchemy import make_url

from ordersync.errors import ConfigurationError
from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.store.engine import parse_database_url
from tests.integration.test_api_hubrise import hubrise_order
from tests.support import (
    ORDERSYNC_CLI,
    _wait_healthy,
    cli_token,
    free_port,
    fresh_pg_database,
    order_payload,
)

CLIENTS = 4
BATCHES = 4
BATCH = 20
POLLS = 12  # well past psycopg's default prepare_threshold (5) per statement


def pgbouncer_or_skip() -> str:
    found = shutil.which("pgbouncer") or shutil.which("pgbouncer", path="/usr/sbin:/usr/bin")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and pgbouncer is not installed (.ci/run installs it)")
        pytest.skip("pgbouncer is not installed (apt-get install pgbouncer)")
    return found


@contextlib.contextmanager
def pgbouncer(program: str, upstream_host: str, upstream_port: int) -> Iterator[int]:
    """PgBouncer on a free port in transaction pooling, every database of the upstream server
    reachable as user postgres, any client credentials accepted; yields its port."""
    port = free_port()
    directory = Path(tempfile.mkdtemp(prefix="ordersync-pgbouncer-"))
    directory.chmod(0o777)  # PgBouncer refuses to run as root: it may run as postgres
    config = directory / "pgbouncer.ini"
    config.write_text(
        "[databases]\n"
        f"* = host={upstream_host} port={upstream_port} user=postgres\n"
        "[pgbouncer]\n"
        f"listen_addr = 127.0.0.1\nlisten_port = {port}\nunix_socket_dir =\n"
        "auth_type = any\npool_mode = transaction\n"
        # Few server connections for many clients: transactions hop between them.
        "default_pool_size = 3\nmax_client_conn = 200\n"
        "ignore_startup_parameters = extra_float_digits\n"
        f"logfile = {directory}/pgbouncer.log\n"
    )
    config.chmod(0o644)
    command = [program, str(config)]
    if os.geteuid() == 0:
        command[1:1] = ["-u", _unprivileged_user()]
    process = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    try:
        _wait_listening(port, process)
        yield port
    finally:
        process.terminate()
        process.wait(timeout=30)
        shutil.rmtree(directory, ignore_errors=True)


def _unprivileged_user() -> str:
    for name in ("postgres", "nobody"):
        with contextlib.suppress(KeyError):
            pwd.getpwnam(name)
            return name
    pytest.fail("running as root, and neither user postgres nor nobody exists for pgbouncer")


def _wait_listening(port: int, process: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if process.poll() is not None:
            stderr = process.stderr.read().decode() if process.stderr else ""
            raise RuntimeError(f"pgbouncer exited: {stderr}")
        with contextlib.suppress(OSError), socket.create_connection(("127.0.0.1", port), 1):
            return
        time.sleep(0.05)
    raise RuntimeError("pgbouncer did not start listening")


@contextlib.contextmanager
def hub(db_url: str, log: Path) -> Iterator[str]:
    """`ordersync hub serve` with two workers, its stderr kept in `log`."""
    port = free_port()
    serve = ["hub", "serve", "--db", db_url, "--port", str(port), "--workers", "2"]
    with log.open("wb") as stderr:
        server = subprocess.Popen(
            [*ORDERSYNC_CLI, *serve],
            stdout=subprocess.DEVNULL,
            stderr=stderr,
        )
        try:
            _wait_healthy(f"http://127.0.0.1:{port}", server)
            yield f"http://127.0.0.1:{port}"
        finally:
            server.terminate()
            server.wait(timeout=30)


@pytest.mark.postgres
@pytest.mark.slow
def test_the_hub_serves_through_pgbouncer_in_transaction_pooling(
    pg_admin_url: str, tmp_path: Path
) -> None:
    program = pgbouncer_or_skip()
    with fresh_pg_database(pg_admin_url) as direct_url:
        upstream = make_url(direct_url)
        with pgbouncer(program, upstream.host or "127.0.0.1", upstream.port or 5432) as port:
            pooled = f"postgresql://postgres@127.0.0.1:{port}/{upstream.database}?pgbouncer=true"
            token = cli_token(pooled)  # migrates the new database through PgBouncer
            log = tmp_path / "hub.log"
            with hub(pooled, log) as url:
                outcomes, failures = _workload(url, token)
                stored = _all_orders(url, token)
    stderr = log.read_text(errors="replace")
    assert "prepared statement" not in stderr, stderr[-3000:]
    assert failures == [], failures[:5]
    assert all(status < 500 for status, _ in outcomes), [o for o in outcomes if o[0] >= 500][:3]

    created = Counter(i for status, items in outcomes if status in (201, 207) for i in items)
    assert created == Counter(dict.fromkeys(created, 1))
    # Each client's batches: 4 x 20 of its own identifiers plus a shared one per batch.
    assert len(created) == CLIENTS * BATCHES * (BATCH - 1) + BATCHES
    assert set(stored) == set(created)
    moved = [o for o in stored.values() if o["status"] == "atWarehouse"]
    assert len(moved) == CLIENTS * BATCHES  # each client moved one order per batch
    assert all(o["version"] == 2 for o in moved)


def _workload(base: str, token: str) -> tuple[list[tuple[int, list[str]]], list[str]]:
    """Each client: batches of creates (one identifier shared by every client), a HubRise
    status PATCH per batch, then repeated MasonHub and HubRise listings."""
    outcomes: list[tuple[int, list[str]]] = []
    failures: list[str] = []
    lock = threading.Lock()

    def record(status: int, created: list[str]) -> None:
        with lock:
            outcomes.append((status, created))

    def client(n: int) -> None:
        masonhub = httpx.Client(
            base_url=base, headers={"Authorization": f"Bearer {token}"}, timeout=60
        )
        hubrise = httpx.Client(base_url=base, headers={"X-Access-Token": token}, timeout=60)
        try:
            for b in range(BATCHES):
                batch = [f"C{n}-B{b}-{i:02d}" for i in range(BATCH - 1)] + [f"SHARED-{b}"]
                response = masonhub.post("/api/v1/orders", json=[order_payload(i) for i in batch])
                body = response.json()
                made = [d for d in body.get("data", []) if d.get("status") == "created"]
                record(response.status_code, [d["customer_identifier"] for d in made])
                patch = hubrise.patch(
                    f"/v1/location/orders/{made[0]['id']}", json={"status": "received"}
                )
                record(patch.status_code, [])
            for _ in range(POLLS):
                record(masonhub.get("/api/v1/orders", params={"limit": 50}).status_code, [])
                record(hubrise.get("/v1/location/orders", params={"count": 20}).status_code, [])
                created = hubrise.post("/v1/location/orders", json=hubrise_order("dup"))
                record(created.status_code, [])  # 201 once, then 422 duplicate
        except (httpx.TransportError, ValueError, KeyError, IndexError) as exc:
            with lock:
                failures.append(f"client {n}: {exc!r}")
        finally:
            masonhub.close()
            hubrise.close()

    threads = [threading.Thread(target=client, args=(n,)) for n in range(CLIENTS)]
    for thread in threads:
        thread.start()
    for thread in threads:
        thread.join()
    return outcomes, failures


def _all_orders(base: str, token: str) -> dict[str, Any]:
    """Every order made through MasonHub, by customer identifier (paged by offset)."""
    orders: dict[str, Any] = {}
    with httpx.Client(base_url=base, headers={"Authorization": f"Bearer {token}"}) as http:
        offset = 0
        while True:
            page = http.get("/api/v1/orders", params={"limit": 100, "offset": offset}).json()
            for order in page["data"]:
                orders[order["customer_identifier"]] = order
            offset += len(page["data"])
            if not page["data"] or offset >= page["total"]:
                break
    orders.pop("dup", None)  # the HubRise create
    return orders


async def test_pool_settings_reach_each_workers_engine(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("ORDERSYNC_HUB_DB_POOL_SIZE", "3")
    monkeypatch.setenv("ORDERSYNC_HUB_DB_MAX_OVERFLOW", "1")
    url = "postgresql://postgres@127.0.0.1:6432/hub?pgbouncer=true"
    settings = HubSettings.from_env(db_url=url)
    store = create_app(settings).state.store  # no I/O until first use
    try:
        pool: Any = store.writer.pool
        assert (pool.size(), pool._max_overflow) == (3, 1)
        assert store.url.pgbouncer and "pgbouncer" not in store.url.async_url
        assert store.url.connect_args() == {"prepare_threshold": None}
    finally:
        await store.close()
    assert not parse_database_url(url.replace("?pgbouncer=true", "")).connect_args()


@pytest.mark.parametrize(
    ("variable", "value", "says"),
    [
        ("ORDERSYNC_HUB_DB_POOL_SIZE", "0", "at least 1"),
        ("ORDERSYNC_HUB_DB_POOL_SIZE", "many", "whole number"),
        ("ORDERSYNC_HUB_DB_MAX_OVERFLOW", "-1", "at least 0"),
    ],
)
def test_bad_pool_settings_are_a_configuration_error(
    monkeypatch: pytest.MonkeyPatch, variable: str, value: str, says: str
) -> None:
    monkeypatch.setenv(variable, value)
    with pytest.raises(ConfigurationError, match=says) as caught:
        HubSettings.from_env()
    assert variable in str(caught.value)


def test_a_bad_pgbouncer_flag_is_a_configuration_error() -> None:
    with pytest.raises(ConfigurationError, match="pgbouncer= in a database URL"):
        parse_database_url("postgresql://h/db?pgbouncer=maybe")


def test_hub_serve_refuses_a_bad_pool_size_without_a_traceback(tmp_path: Path) -> None:
    result = subprocess.run(
        [*ORDERSYNC_CLI, "hub", "serve", "--db", f"sqlite:///{tmp_path}/hub.db"],
        env={**os.environ, "ORDERSYNC_HUB_DB_POOL_SIZE": "0"},
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert result.returncode == 2
    assert "ORDERSYNC_HUB_DB_POOL_SIZE" in result.stderr and "Traceback" not in result.stderr
