"""Test support shared by every tier: PostgreSQL databases, a hub on real uvicorn, sample orders."""

from __future__ import annotations

import contextlib
import os
import socket
import subprocess
import sys
import threading
import time
import uuid
from collections.abc import Iterator
from typing import Any

import psycopg
import pytest
import uvicorn

DEFAULT_TEST_PG = "postgresql://postgres@127.0.0.1:5432/test"


def test_pg_url() -> str:
    return os.environ.get("ORDERSYNC_TEST_PG", DEFAULT_TEST_PG)


def pg_available_or_skip() -> str:
    """The admin URL of the test server; a skip, or under CI=true a failure, when unreachable."""
    url = test_pg_url()
    try:
        with psycopg.connect(url, connect_timeout=3):
            pass
    except psycopg.OperationalError as exc:
        if os.environ.get("CI") == "true":
            pytest.fail(f"CI=true and PostgreSQL at {url} is unreachable: {exc}")
        pytest.skip(f"PostgreSQL at {url} is unreachable: {exc}")
    return url


def _with_database(url: str, name: str) -> str:
    base, _, _ = url.rpartition("/")
    return f"{base}/{name}"


@contextlib.contextmanager
def fresh_pg_database(admin_url: str, template: str | None = None) -> Iterator[str]:
    """CREATE DATABASE (optionally from a template), yield its URL, DROP it afterwards."""
    name = f"ordersync_t_{uuid.uuid4().hex[:12]}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        suffix = f" TEMPLATE {template}" if template else ""
        conn.execute(f"CREATE DATABASE {name}{suffix}")  # type: ignore[arg-type]
    try:
        yield _with_database(admin_url, name)
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


@contextlib.contextmanager
def serve_in_thread(app: Any, *, port: int | None = None) -> Iterator[str]:
    """Run an ASGI app on real uvicorn at 127.0.0.1:<free port>; yield its base URL."""
    port = port or free_port()
    config = uvicorn.Config(
        app, host="127.0.0.1", port=port, log_level="warning", access_log=False, lifespan="on"
    )
    server = uvicorn.Server(config)
    thread = threading.Thread(target=server.run, daemon=True)
    thread.start()
    deadline = time.monotonic() + 20
    while not server.started:
        if not thread.is_alive() or time.monotonic() > deadline:
            raise RuntimeError("uvicorn did not start")
        time.sleep(0.02)
    try:
        yield f"http://127.0.0.1:{port}"
    finally:
        server.should_exit = True
        thread.join(timeout=20)


ADDRESS = {
    "name": "Ada Lovelace",
    "address1": "12 Analytical Row",
    "city": "London",
    "state": "LND",
    "postal_code": "EC1A 1BB",
    "country": "GB",
}


def order_payload(customer_identifier: str, **overrides: Any) -> dict[str, Any]:
    """A complete, valid MasonHub order body."""
    body: dict[str, Any] = {
        "customer_identifier": customer_identifier,
        "order_type": "customer",
        "priority": 1,
        "shipping_provider": "UPS",
        "shipper_service_level": "ground",
        "shipping_address": dict(ADDRESS),
        "billing_address": dict(ADDRESS),
        "submitted_at": "2024-01-01T10:30:00Z",
        "line_items": [
            {"sku_customer_identifier": "SKU-1", "quantity": "2", "unit_price": "9.99"},
            {"sku_customer_identifier": "SKU-2", "quantity": "1", "unit_price": "0.10"},
        ],
    }
    body.update(overrides)
    return body


ORDERSYNC_CLI = [sys.executable, "-m", "ordersync.cli"]


def cli_token(db_url: str, account: str = "acme", name: str = "erp") -> str:
    """`ordersync hub token create` through the real CLI; the token is its last line."""
    result = subprocess.run(
        [
            *ORDERSYNC_CLI,
            "hub",
            "token",
            "create",
            "--db",
            db_url,
            "--account",
            account,
            "--name",
            name,
        ],
        capture_output=True,
        text=True,
        check=True,
        timeout=120,
    )
    return result.stdout.strip().splitlines()[-1]


@contextlib.contextmanager
def hub_process(db_url: str, *serve_args: str) -> Iterator[str]:
    """`ordersync hub serve` as a separate process on a free port; yields its base URL and
    terminates it afterwards."""
    port = free_port()
    server = subprocess.Popen(
        [*ORDERSYNC_CLI, "hub", "serve", "--db", db_url, "--port", str(port), *serve_args],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, server)
        yield base
    finally:
        server.terminate()
        server.wait(timeout=30)


def _wait_healthy(base: str, server: subprocess.Popen[bytes], seconds: float = 120) -> None:
    import httpx

    deadline = time.monotonic() + seconds  # generous: shared machines can be very busy
    while time.monotonic() < deadline:
        if server.poll() is not None:
            stderr = server.stderr.read().decode() if server.stderr else ""
            raise RuntimeError(f"hub exited early: {stderr}")
        try:
            if httpx.get(f"{base}/healthz", timeout=1).status_code == 200:
                return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError("hub did not become healthy")
