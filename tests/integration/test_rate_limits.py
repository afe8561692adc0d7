"""Per-connection quotas through the hub app (seed 003, section 3), with an injected clock.

HubRise's quotas apply to everything under /v1/, served or not: bulk requests go to /v1/location
(no such route: a cheap 404 that is still counted), the heavy listing to GET /v1/location/orders.
Configured quotas on /api/v1 exercise the SQL counters on SQLite and PostgreSQL; two real worker
processes on PostgreSQL must together serve no more than the quota.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass
from datetime import UTC, datetime
from typing import Any

import httpx
import psycopg
import pytest

from ordersync.hub.app import create_app
from ordersync.hub.ratelimit import QuotaPolicy
from ordersync.hub.settings import HubSettings
from ordersync.store.store import Store
from tests.support import free_port

TEN_AM = datetime(2024, 3, 5, 10, 0, tzinfo=UTC).timestamp()


class Clock:
    """The limiter's clock, moved by hand."""

    def __init__(self, now: float = TEN_AM) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def at(self, hh_mm_ss: str, day: int = 5) -> None:
        h, m, s = (float(part) for part in hh_mm_ss.split(":"))
        self.now = datetime(2024, 3, day, tzinfo=UTC).timestamp() + h * 3600 + m * 60 + s


@dataclass
class Hub:
    """The hub app in-process, and one HubRise connection's token."""

    app: Any
    client: httpx.AsyncClient
    token: str

    async def get(self, path: str, **headers: str) -> httpx.Response:
        return await self.client.get(path, headers={"X-Access-Token": self.token, **headers})

    async def spend(self, n: int, path: str = "/v1/location") -> list[int]:
        """The status codes of n GETs sent straight to the app's ASGI callable: the same
        middleware stack as through httpx at a third of the cost (thousands are sent here)."""
        return [await self._asgi_get(path) for _ in range(n)]

    async def _asgi_get(self, path: str) -> int:
        scope = {
            "type": "http",
            "asgi": {"version": "3.0"},
            "http_version": "1.1",
            "method": "GET",
            "scheme": "http",
            "path": path,
            "raw_path": path.encode(),
            "query_string": b"",
            "root_path": "",
            "headers": [(b"x-access-token", self.token.encode())],
            "client": ("127.0.0.1", 1),
            "server": ("hub", 80),
        }
        statuses: list[int] = []

        async def receive() -> dict[str, Any]:
            return {"type": "http.request", "body": b"", "more_body": False}

        async def send(message: dict[str, Any]) -> None:
            if message["type"] == "http.response.start":
                statuses.append(message["status"])

        await self.app(scope, receive, send)
        return statuses[0]


@pytest.fixture
def clock() -> Clock:
    return Clock()


@pytest.fixture
async def sqlite_store(sqlite_url: str) -> AsyncIterator[Store]:
    opened = await Store.open(sqlite_url)
    yield opened
    await opened.close()


async def open_hub(store: Store, **settings: Any) -> Hub:
    app = create_app(HubSettings(db_url=store.url.given, **settings), store)
    client = httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub")
    return Hub(app, client, await store.create_token("acme", "erp"))


@pytest.fixture
async def hub(sqlite_store: Store, clock: Clock) -> AsyncIterator[Hub]:
    """The hub with its default quotas (HubRise's on /v1/), counters in memory."""
    opened = await open_hub(sqlite_store, quota_clock=clock)
    async with opened.client:
        yield opened


async def test_the_501st_request_in_a_minute_is_refused_and_the_next_minute_serves(
    hub: Hub, clock: Clock
) -> None:
    """HubRise's 500/minute: exactly 500 pass, the 501st gets 429 until the round minute."""
    clock.at("10:00:20")
    assert 429 not in await hub.spend(500)
    refused = await hub.get("/v1/location")
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "40"
    assert refused.json()["error_type"] == "too_many_requests"
    clock.at("10:00:59.999")
    assert (await hub.get("/v1/location")).status_code == 429
    clock.at("10:01:00")
    served = await hub.get("/v1/location")
    assert served.status_code == 404  # served: there is no such route
    assert served.headers["RateLimit"] == '"minute";r=499;t=60'


async def test_hourly_quota_used_by_1035_is_refused_until_1100(hub: Hub, clock: Clock) -> None:
    """HubRise's 2,500/hour across minutes: refused at 10:35 with Retry-After 1500, then 11:00
    serves again."""
    for minute in range(5):
        clock.at(f"10:{minute:02}:00")
        assert 429 not in await hub.spend(500)
    clock.at("10:35:00")
    refused = await hub.get("/v1/location")
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1500"
    assert refused.headers["RateLimit"] == '"hour";r=0;t=1500'
    assert "come back in 1500 s, at 2024-03-05T11:00:00Z" in refused.json()["message"]
    clock.at("10:59:59.5")
    assert (await hub.get("/v1/location")).headers["Retry-After"] == "1"
    clock.at("11:00:00")
    assert (await hub.get("/v1/location")).status_code == 404


async def test_daily_quota_is_refused_until_midnight_utc(sqlite_store: Store, clock: Clock) -> None:
    """A day window (configured small here) holds across hours and reopens at 00:00 UTC."""
    quotas = QuotaPolicy.from_specs("/v1/=5/minute,8/hour,12/day")
    hub = await open_hub(sqlite_store, quotas=quotas, quota_clock=clock)
    async with hub.client:
        for hour in ("09:00:00", "13:00:00"):
            clock.at(hour)
            assert await hub.spend(6) == [404] * 5 + [429]  # the minute refuses the 6th
        clock.at("13:01:00")
        assert await hub.spend(3) == [404, 404, 429]  # 12 served today
        refused = await hub.get("/v1/location")
        assert refused.headers["RateLimit"] == '"day";r=0;t=39540'  # 10 h 59 min to midnight
        clock.at("23:59:59")
        assert (await hub.get("/v1/location")).headers["Retry-After"] == "1"
        clock.at("00:00:00", day=6)
        assert (await hub.get("/v1/location")).status_code == 404


async def test_heavy_listings_allow_10_per_minute_without_spending_the_rest(
    hub: Hub, clock: Clock
) -> None:
    """The 11th GET /v1/location/orders in a minute is refused; other routes still serve, and
    the refused listing did not count against the general quota."""
    clock.at("10:00:30")
    assert await hub.spend(10, "/v1/location/orders") == [200] * 10
    refused = await hub.get("/v1/location/orders")
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
    assert refused.headers["RateLimit"] == '"heavy-minute";r=0;t=30'
    other = await hub.get("/v1/location/orders/sd89mm")
    assert other.status_code == 404  # served: no such order
    assert other.headers["RateLimit"] == '"minute";r=489;t=30'  # 10 listings + this one
    clock.at("10:01:00")
    assert (await hub.get("/v1/location/orders")).status_code == 200


async def test_every_limited_response_carries_the_ratelimit_headers(hub: Hub, clock: Clock) -> None:
    """Clients can budget ahead: policy and current standing on each /v1 response; other
    dialects (no quota by default) and requests without credentials are neither limited nor
    counted."""
    clock.at("10:35:00")
    served = await hub.get("/v1/location/orders")
    assert served.status_code == 200
    assert served.headers["RateLimit-Policy"] == (
        '"minute";q=500;w=60, "hour";q=2500;w=3600, "day";q=10000;w=86400, "heavy-minute";q=10;w=60'
    )
    assert served.headers["RateLimit"] == '"heavy-minute";r=9;t=60'
    anonymous = await hub.client.get("/v1/location/orders")
    assert anonymous.status_code == 401 and "RateLimit" not in anonymous.headers
    masonhub = await hub.client.get(
        "/api/v1/orders", headers={"Authorization": f"Bearer {hub.token}"}
    )
    assert masonhub.status_code == 200 and "RateLimit" not in masonhub.headers
    again = await hub.get("/v1/location/orders")
    assert again.headers["RateLimit"] == '"heavy-minute";r=8;t=60'


@pytest.mark.parametrize("quota_store", ["memory", "sql"])
async def test_concurrent_requests_never_exceed_the_quota(
    quota_store: str, store: Store, clock: Clock
) -> None:
    """Memory and SQL counters (SQLite and PostgreSQL): 40 concurrent requests against
    12/minute serve exactly 12, with real answers from the store; the next minute serves."""
    quotas = QuotaPolicy.from_specs("/api/v1/=12/minute,1000/hour")
    hub = await open_hub(store, quotas=quotas, quota_store=quota_store, quota_clock=clock)
    auth = {"Authorization": f"Bearer {hub.token}"}
    async with hub.client as client:
        clock.at("10:00:00")
        answers = await asyncio.gather(
            *(client.get("/api/v1/orders", headers=auth) for _ in range(40))
        )
        codes = sorted(r.status_code for r in answers)
        assert codes == [200] * 12 + [429] * 28
        clock.at("10:01:00")
        served = await client.get("/api/v1/orders", headers=auth)
        assert served.status_code == 200
        assert served.headers["RateLimit"] == '"minute";r=11;t=60'


async def test_the_migration_creates_the_rate_counters_table(hub_db_url: str) -> None:
    """The table the SQL counters use is what `tables.py` declares, on both backends."""
    from alembic.autogenerate import compare_metadata
    from alembic.migration import MigrationContext
    from sqlalchemy import create_engine

    from ordersync.store.engine import parse_database_url
    from ordersync.store.migrate import upgrade
    from ordersync.store.tables import metadata

    url = parse_database_url(hub_db_url)
    await upgrade(url)
    engine = create_engine(url.sync_url)
    with engine.connect() as conn:
        diffs = compare_metadata(MigrationContext.configure(conn), metadata)
    engine.dispose()
    assert [d for d in diffs if "rate_counters" in repr(d)] == []


# -- several worker processes ---------------------------------------------------------------


def _wait_until_clear_of_a_day_boundary() -> None:
    """The workers run on the real clock: do not let the test straddle midnight UTC."""
    to_midnight = 86_400 - time.time() % 86_400
    if to_midnight < 30:
        time.sleep(to_midnight + 1)


@pytest.fixture
def two_workers(pg_url: str) -> Iterator[tuple[list[str], str]]:
    """Two hub processes on one PostgreSQL database with 40 requests/day on /api/v1."""

    async def prepare() -> str:
        store = await Store.open(pg_url)
        try:
            return await store.create_token("acme", "erp")
        finally:
            await store.close()

    env = {**os.environ, "ORDERSYNC_HUB_DB": pg_url, "ORDERSYNC_HUB_QUOTAS": "/api/v1/=40/day"}
    ports = [free_port(), free_port()]
    workers = [
        subprocess.Popen(
            [
                sys.executable,
                "-m",
                "uvicorn",
                "--factory",
                "ordersync.hub.asgi:app_factory",
                "--port",
                str(port),
                "--log-level",
                "warning",
            ],
            env=env,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
        )
        for port in ports
    ]
    urls = [f"http://127.0.0.1:{port}" for port in ports]
    try:
        token = asyncio.run(prepare())  # while the workers start (migrations take a lock)
        for url, worker in zip(urls, workers, strict=True):
            _wait_for(url, worker)
        yield urls, token
    finally:
        for worker in workers:
            worker.terminate()
        for worker in workers:
            worker.wait(timeout=20)


def _wait_for(url: str, worker: subprocess.Popen[bytes]) -> None:
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if worker.poll() is not None:
            raise RuntimeError(f"hub worker exited: {worker.stderr.read()!r}")  # type: ignore[union-attr]
        try:
            httpx.get(f"{url}/healthz", timeout=1)
            return
        except httpx.TransportError:
            time.sleep(0.1)
    raise RuntimeError(f"hub worker at {url} did not start")


@pytest.mark.slow
def test_two_worker_processes_on_postgresql_never_serve_more_than_the_quota(
    two_workers: tuple[list[str], str], pg_url: str
) -> None:
    """100 concurrent requests spread over two processes: exactly 40 served, and the shared
    counter says 40."""
    urls, token = two_workers
    _wait_until_clear_of_a_day_boundary()

    async def hammer() -> list[int]:
        limits = httpx.Limits(max_connections=100)
        async with httpx.AsyncClient(limits=limits, timeout=30) as client:
            auth = {"Authorization": f"Bearer {token}"}
            requests = [
                client.get(f"{urls[i % 2]}/api/v1/orders", headers=auth) for i in range(100)
            ]
            return [r.status_code for r in await asyncio.gather(*requests)]

    codes = asyncio.run(hammer())
    assert sorted(codes) == [200] * 40 + [429] * 60
    with psycopg.connect(pg_url) as conn:
        counted = conn.execute("SELECT sum(n) FROM rate_counters").fetchone()
    assert counted == (40,)
