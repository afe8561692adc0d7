"""Per-connection quotas through the hub app (seed 003, section 3), with an injected clock.

HubRise's routes are not served yet, but its quotas already apply to everything under /v1/: a
request there is counted and answered (404 routing_error) or refused (429). Configured quotas on
/api/v1 exercise served requests and the SQL counters on SQLite and PostgreSQL; two real worker
processes on PostgreSQL must together serve no more than the quota.
"""

from __future__ import annotations

import asyncio
import os
import subprocess
import sys
import time
from collections.abc import AsyncIterator, Iterator
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
HUBRISE = {"X-Access-Token": "hubrise-token"}


class Clock:
    """The limiter's clock, moved by hand."""

    def __init__(self, now: float = TEN_AM) -> None:
        self.now = now

    def __call__(self) -> float:
        return self.now

    def at(self, hh_mm_ss: str, day: int = 5) -> None:
        h, m, s = (float(part) for part in hh_mm_ss.split(":"))
        self.now = datetime(2024, 3, day, tzinfo=UTC).timestamp() + h * 3600 + m * 60 + s


@pytest.fixture
def clock() -> Clock:
    return Clock()


def client_for(app: Any) -> httpx.AsyncClient:
    return httpx.AsyncClient(transport=httpx.ASGITransport(app=app), base_url="http://hub")


@pytest.fixture
def app(clock: Clock, tmp_path: object) -> Any:
    """The hub with its default quotas (HubRise's on /v1/), counters in memory."""
    return create_app(HubSettings(db_url=f"sqlite:///{tmp_path}/hub.db", quota_clock=clock))


@pytest.fixture
async def hubrise(app: Any) -> AsyncIterator[httpx.AsyncClient]:
    async with client_for(app) as client:
        yield client


async def spend(app: Any, n: int, path: str = "/v1/location") -> list[int]:
    """The status codes of n GETs sent straight to the app's ASGI callable: the same
    middleware stack as through httpx, at a third of the cost (thousands are sent here)."""
    return [await _asgi_get(app, path) for _ in range(n)]


async def _asgi_get(app: Any, path: str) -> int:
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
        "headers": [(b"x-access-token", HUBRISE["X-Access-Token"].encode())],
        "client": ("127.0.0.1", 1),
        "server": ("hub", 80),
    }
    statuses: list[int] = []

    async def receive() -> dict[str, Any]:
        return {"type": "http.request", "body": b"", "more_body": False}

    async def send(message: dict[str, Any]) -> None:
        if message["type"] == "http.response.start":
            statuses.append(message["status"])

    await app(scope, receive, send)
    return statuses[0]


async def test_the_501st_request_in_a_minute_is_refused_and_the_next_minute_serves(
    app: Any, hubrise: httpx.AsyncClient, clock: Clock
) -> None:
    """HubRise's 500/minute: exactly 500 pass, the 501st gets 429 until the round minute."""
    clock.at("10:00:20")
    assert 429 not in await spend(app, 500)
    refused = await hubrise.get("/v1/location", headers=HUBRISE)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "40"
    assert refused.json()["error_type"] == "too_many_requests"
    clock.at("10:00:59.999")
    assert (await hubrise.get("/v1/location", headers=HUBRISE)).status_code == 429
    clock.at("10:01:00")
    served = await hubrise.get("/v1/location", headers=HUBRISE)
    assert served.status_code == 404  # served: HubRise's routes are not there yet
    assert served.headers["RateLimit"] == '"minute";r=499;t=60'


async def test_hourly_quota_used_by_1035_is_refused_until_1100(
    app: Any, hubrise: httpx.AsyncClient, clock: Clock
) -> None:
    """HubRise's 2,500/hour across minutes: refused at 10:35 with Retry-After 1500, then 11:00
    serves again."""
    for minute in range(5):
        clock.at(f"10:{minute:02}:00")
        assert 429 not in await spend(app, 500)
    clock.at("10:35:00")
    refused = await hubrise.get("/v1/location", headers=HUBRISE)
    assert refused.status_code == 429
    assert refused.headers["Retry-After"] == "1500"
    assert refused.headers["RateLimit"] == '"hour";r=0;t=1500'
    assert "come back in 1500 s, at 2024-03-05T11:00:00Z" in refused.json()["message"]
    clock.at("10:59:59.5")
    assert (await hubrise.get("/v1/location", headers=HUBRISE)).headers["Retry-After"] == "1"
    clock.at("11:00:00")
    assert (await hubrise.get("/v1/location", headers=HUBRISE)).status_code == 404


async def test_daily_quota_is_refused_until_midnight_utc(clock: Clock, tmp_path: object) -> None:
    """A day window (configured small here) holds across hours and reopens at 00:00 UTC."""
    quotas = QuotaPolicy.from_specs("/v1/=5/minute,8/hour,12/day")
    settings = HubSettings(db_url=f"sqlite:///{tmp_path}/hub.db", quotas=quotas, quota_clock=clock)
    app = create_app(settings)
    async with client_for(app) as client:
        for hour in ("09:00:00", "13:00:00"):
            clock.at(hour)
            assert await spend(app, 6) == [404] * 5 + [429]  # the minute refuses the 6th
        clock.at("13:01:00")
        assert await spend(app, 3) == [404, 404, 429]  # 12 served today
        refused = await client.get("/v1/x", headers=HUBRISE)
        assert refused.headers["RateLimit"] == '"day";r=0;t=39540'  # 10 h 59 min to midnight
        clock.at("23:59:59")
        assert (await client.get("/v1/x", headers=HUBRISE)).headers["Retry-After"] == "1"
        clock.at("00:00:00", day=6)
        assert (await client.get("/v1/x", headers=HUBRISE)).status_code == 404


async def test_heavy_listings_allow_10_per_minute_without_spending_the_rest(
    app: Any, hubrise: httpx.AsyncClient, clock: Clock
) -> None:
    """The 11th GET /v1/location/orders in a minute is refused; other routes still serve, and
    the refused listing did not count against the general quota."""
    clock.at("10:00:30")
    assert 429 not in await spend(app, 10, "/v1/location/orders")
    refused = await hubrise.get("/v1/location/orders", headers=HUBRISE)
    assert refused.status_code == 429 and refused.headers["Retry-After"] == "30"
    assert refused.headers["RateLimit"] == '"heavy-minute";r=0;t=30'
    other = await hubrise.get("/v1/location/orders/sd89mm", headers=HUBRISE)
    assert other.status_code == 404
    assert other.headers["RateLimit"] == '"minute";r=489;t=30'  # 10 listings + this one
    clock.at("10:01:00")
    assert (await hubrise.get("/v1/location/orders", headers=HUBRISE)).status_code == 404


async def test_every_limited_response_carries_the_ratelimit_headers(
    hubrise: httpx.AsyncClient, clock: Clock
) -> None:
    """Clients can budget ahead: policy and current standing on each /v1 response; other
    dialects (no quota by default) and requests without credentials are neither limited nor
    counted."""
    clock.at("10:35:00")
    served = await hubrise.get("/v1/location/orders", headers=HUBRISE)
    assert served.headers["RateLimit-Policy"] == (
        '"minute";q=500;w=60, "hour";q=2500;w=3600, "day";q=10000;w=86400, "heavy-minute";q=10;w=60'
    )
    assert served.headers["RateLimit"] == '"heavy-minute";r=9;t=60'
    anonymous = await hubrise.get("/v1/location/orders")
    assert "RateLimit" not in anonymous.headers
    masonhub = await hubrise.get("/api/v1/nope", headers={"Authorization": "Bearer x"})
    assert masonhub.status_code == 404 and "RateLimit" not in masonhub.headers
    again = await hubrise.get("/v1/location/orders", headers=HUBRISE)
    assert again.headers["RateLimit"] == '"heavy-minute";r=8;t=60'


@pytest.mark.parametrize("quota_store", ["memory", "sql"])
async def test_concurrent_requests_never_exceed_the_quota(
    quota_store: str, store: Store, clock: Clock
) -> None:
    """Memory and SQL counters (SQLite and PostgreSQL): 40 concurrent requests against
    12/minute serve exactly 12, with real answers from the store; the next minute serves."""
    token = await store.create_token("acme", "erp")
    settings = HubSettings(
        db_url=str(store.url.given),
        quotas=QuotaPolicy.from_specs("/api/v1/=12/minute,1000/hour"),
        quota_store=quota_store,
        quota_clock=clock,
    )
    auth = {"Authorization": f"Bearer {token}"}
    async with client_for(create_app(settings, store)) as client:
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
