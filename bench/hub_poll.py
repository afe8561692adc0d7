"""Hub polling benchmark: `GET /api/v1/orders?updated_since=...&limit=100` (detail list).

    .venv/bin/python bench/hub_poll.py [--orders N] [--backend sqlite|postgresql|both]
                                       [--clients 1,8] [--pages P]

1. Seeds N orders through the real store (`Store.create_orders`, batches of 1000, an injected
   clock spreading `updated_at` 0-6 ms apart, ~15 % ties). SQLite seeds are cached by N in
   bench/.cache/ and copied to a temp dir for each run; PostgreSQL gets a fresh database that is
   dropped at the end.
2. Starts the hub on real uvicorn (uvloop + httptools) in its own process
   (`ordersync hub serve`), waits for /healthz.
3. From a separate load process: C concurrent keep-alive clients (raw asyncio HTTP/1.1 on uvloop,
   see README for why not httpx), each walking its own slice of the timeline with
   re-anchoring (next `updated_since` = last order's `updated_at`, `offset` = orders of the
   page sharing it). Measures pages/s and per-request p50/p99.
4. The in-process floor: the route's own code path without HTTP (`Store.list_orders` +
   `masonhub._envelope`) on the same walk and concurrency, same run.
5. Prints a table and writes bench/results/hub_poll-<date>.json.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import math
import multiprocessing as mp
import os
import queue
import random
import resource
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
import uuid
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from datetime import UTC, datetime
from pathlib import Path
from typing import Any
from urllib.parse import quote

import orjson

BENCH = Path(__file__).resolve().parent
ROOT = BENCH.parent
CACHE = Path(os.environ.get("HUB_POLL_CACHE", BENCH / ".cache"))  # seeded SQLite files
RESULTS = BENCH / "results"
VENV_BIN = Path(sys.executable).parent
SEED_VERSION = 1  # bump when the seeded data changes shape: old cache files are then ignored
EPOCH_START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00Z
LIMIT = 100
BATCH = 1000
ACCOUNT = "bench"
ANALYZE_AT = {5_000, 20_000, 100_000, 500_000}
DEFAULT_PG_ADMIN = "postgresql://postgres@127.0.0.1:5432/test"


# -- seeding ----------------------------------------------------------------------------------


def _address(i: int) -> dict[str, str]:
    return {
        "name": f"Customer {i}",
        "address1": f"{i} Analytical Row",
        "city": "London",
        "state": "LND",
        "postal_code": "EC1A 1BB",
        "country": "GB",
    }


def _templates() -> list[Any]:
    """A few valid order shapes (1-5 lines); each seeded order is a copy with its own id."""
    from ordersync.domain import NewOrder

    shapes = []
    for k in range(10):
        lines = [
            {
                "sku_customer_identifier": f"SKU-{k}-{n}",
                "quantity": str(1 + (k + n) % 4),
                "unit_price": f"{3 + k + n}.{(k * 7 + n) % 100:02d}",
            }
            for n in range(1 + k % 5)
        ]
        shapes.append(
            NewOrder.model_validate(
                {
                    "customer_identifier": f"TEMPLATE-{k}",
                    "order_type": "customer",
                    "priority": k % 3,
                    "shipping_provider": "UPS",
                    "shipper_service_level": "ground",
                    "shipping_address": _address(k),
                    "billing_address": _address(k),
                    "submitted_at": "2024-01-01T10:30:00Z",
                    "line_items": lines,
                }
            )
        )
    return shapes


def seed_clock(seed: int = 1) -> Callable[[], int]:
    """Realistic `updated_at` spread: 0-6 ms apart, a tie (0 ms) about 15 % of the time."""
    rng = random.Random(seed)
    steps = (0,) * 3 + (1, 1, 2, 2, 3, 3, 4, 5, 6) * 2
    now = [EPOCH_START_MS]

    def clock() -> int:
        now[0] += rng.choice(steps)
        return now[0]

    return clock


async def seed(url: str, n: int, log: Callable[[str], None]) -> float:
    """Create `n` orders through `Store.create_orders`; returns the seconds it took."""
    from ordersync.store.store import Store

    store = await Store.open(url)
    try:
        store.clock = seed_clock()
        token = await store.create_token(ACCOUNT, "seeder")
        principal = await store.authenticate(token)
        shapes = _templates()
        started = time.perf_counter()
        last_report = started
        for first in range(0, n, BATCH):
            items = [
                shapes[i % len(shapes)].model_copy(update={"customer_identifier": f"B-{i:08d}"})
                for i in range(first, min(n, first + BATCH))
            ]
            results = await store.create_orders(principal, items)
            assert all(r.created for r in results), "seeding refused an order"
            done = first + len(items)
            if store.url.backend == "postgresql" and done in ANALYZE_AT:
                # What autovacuum does during a real load (when it keeps up: on this busy box
                # it did not). Without it the duplicate check of `create_orders` keeps a plan
                # made for an empty table, a sequential scan, and seeding goes quadratic.
                async with store.writer.begin() as conn:
                    await conn.exec_driver_sql("ANALYZE orders")
                    await conn.exec_driver_sql("ANALYZE update_counts")
            now = time.perf_counter()
            if now - last_report > 15:
                rate = done / (now - started)
                log(
                    f"  seeded {done:,}/{n:,} ({rate:,.0f} orders/s, "
                    f"~{(n - done) / rate:,.0f} s left)"
                )
                last_report = now
        return time.perf_counter() - started
    finally:
        await store.close()


async def new_token(url: str) -> str:
    from ordersync.store.store import Store

    store = await Store.open(url)
    try:
        return await store.create_token(ACCOUNT, f"poller-{uuid.uuid4().hex[:6]}")
    finally:
        await store.close()


async def time_range(url: str) -> tuple[int, int, int]:
    """(min updated_at, max updated_at, count) of the seeded orders."""
    from sqlalchemy import func, select

    from ordersync.store.store import Store
    from ordersync.store.tables import orders

    store = await Store.open(url, migrate=False)
    try:
        async with store.reader.connect() as conn:
            row = (
                await conn.execute(
                    select(
                        func.min(orders.c.updated_at), func.max(orders.c.updated_at), func.count()
                    )
                )
            ).one()
        return int(row[0]), int(row[1]), int(row[2])
    finally:
        await store.close()


def sqlite_checkpoint(path: Path) -> None:
    import sqlite3

    with contextlib.closing(sqlite3.connect(path)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")


@contextlib.contextmanager
def sqlite_database(
    n: int, workdir: Path, log: Callable[[str], None], info: dict[str, Any]
) -> Iterator[str]:
    """A private copy of the cached seeded SQLite file (seeding it first if not cached)."""
    CACHE.mkdir(exist_ok=True)
    cached = CACHE / f"hub_poll-sqlite-{n}-v{SEED_VERSION}.db"
    if cached.exists():
        log(f"sqlite: using cached seed {cached} (delete it to reseed)")
        info["seed_seconds"] = None
        info["seed_cached"] = True
    else:
        building = cached.with_suffix(".building")
        for suffix in ("", "-wal", "-shm"):
            Path(f"{building}{suffix}").unlink(missing_ok=True)
        log(f"sqlite: seeding {n:,} orders into {building} ...")
        seconds = asyncio.run(seed(f"sqlite:///{building}", n, log))
        sqlite_checkpoint(building)
        for suffix in ("-wal", "-shm"):
            Path(f"{building}{suffix}").unlink(missing_ok=True)
        building.rename(cached)
        log(f"sqlite: seeded {n:,} orders in {seconds:,.1f} s ({n / seconds:,.0f} orders/s)")
        info["seed_seconds"] = round(seconds, 1)
        info["seed_cached"] = False
    copy = workdir / "hub.db"
    shutil.copyfile(cached, copy)
    # The cache keeps the schema it was seeded with (so that older code can still be measured
    # on it); the copy is brought to the current one, e.g. 0004's backfill of the 1-second
    # buckets.
    started = time.perf_counter()
    asyncio.run(migrate(f"sqlite:///{copy}"))
    info["migrate_seconds"] = round(time.perf_counter() - started, 1)
    log(f"sqlite: copy migrated to the current schema in {info['migrate_seconds']} s")
    info["db_bytes"] = copy.stat().st_size
    yield f"sqlite:///{copy}"


async def migrate(url: str) -> None:
    from ordersync.store.engine import parse_database_url
    from ordersync.store.migrate import upgrade

    await upgrade(parse_database_url(url))


@contextlib.contextmanager
def postgresql_database(
    n: int, admin_url: str, log: Callable[[str], None], info: dict[str, Any]
) -> Iterator[str]:
    """A fresh database on the local server, seeded, VACUUM ANALYZEd, dropped at the end."""
    import psycopg

    name = f"ordersync_bench_{uuid.uuid4().hex[:10]}"
    base = admin_url.rpartition("/")[0]
    url = f"{base}/{name}"
    with psycopg.connect(admin_url, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    try:
        log(f"postgresql: seeding {n:,} orders into database {name} ...")
        seconds = asyncio.run(seed(url, n, log))
        log(f"postgresql: seeded {n:,} orders in {seconds:,.1f} s ({n / seconds:,.0f} orders/s)")
        started = time.perf_counter()
        # What autovacuum would do shortly after a bulk load; without statistics the planner
        # is guessing, which is not the steady state of a real hub.
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
            size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
        log(f"postgresql: VACUUM ANALYZE in {time.perf_counter() - started:,.1f} s")
        info["seed_seconds"] = round(seconds, 1)
        info["seed_cached"] = False
        info["db_bytes"] = int(size[0]) if size else None
        yield url
    finally:
        with psycopg.connect(admin_url, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]
        log(f"postgresql: dropped database {name}")


# -- the walk ---------------------------------------------------------------------------------


def rfc3339(ms: int) -> str:
    from ordersync.domain import format_rfc3339

    return format_rfc3339(ms)


def slices(lo: int, hi: int, clients: int) -> list[tuple[str, int | None]]:
    """Each client's start (`updated_since`) and stop (an `updated_at` it stops at or past)."""
    step = (hi - lo + 1) / clients
    bounds = [lo + int(step * i) for i in range(clients)]
    return [
        (rfc3339(bounds[i]), bounds[i + 1] if i + 1 < clients else None) for i in range(clients)
    ]


def reanchor(docs: list[dict[str, Any]], since: str, offset: int) -> tuple[str, int]:
    """The next request's (updated_since, offset): the last order's `updated_at`, and how many
    orders of this page share it (plus the previous offset when the whole page shared it)."""
    last = docs[-1]["updated_at"]
    ties = 0
    for doc in reversed(docs):
        if doc["updated_at"] != last:
            break
        ties += 1
    if ties == len(docs) and last == since:
        ties += offset
    return last, ties


def parse_ms(text: str) -> int:
    from ordersync.domain import parse_rfc3339_ms

    return parse_rfc3339_ms(text)


@dataclass
class WalkResult:
    pages: int = 0
    orders: int = 0
    latencies: list[float] = field(default_factory=list)
    errors: int = 0


# -- HTTP load (runs in its own process) -------------------------------------------------------


class HttpConnection:
    """A minimal HTTP/1.1 keep-alive client: enough for GET with a Content-Length or chunked
    reply, and nothing else, so that the client's cost per request stays far below the
    server's (httpx spends ~0.3-0.5 ms of CPU per request on this box)."""

    def __init__(self, host: str, port: int, token: str) -> None:
        self.host, self.port = host, port
        self.head = (
            f"Host: {host}:{port}\r\nAuthorization: Bearer {token}\r\n"
            "Accept: application/json\r\nConnection: keep-alive\r\n\r\n"
        ).encode()
        self.reader: asyncio.StreamReader | None = None
        self.writer: asyncio.StreamWriter | None = None
        self.reconnects = 0

    async def connect(self) -> None:
        self.reader, self.writer = await asyncio.open_connection(
            self.host, self.port, limit=1 << 20
        )
        sock = self.writer.get_extra_info("socket")
        if sock is not None:
            sock.setsockopt(socket.IPPROTO_TCP, socket.TCP_NODELAY, 1)

    async def get(self, target: str) -> tuple[int, bytes]:
        assert self.reader is not None and self.writer is not None
        request = b"GET " + target.encode() + b" HTTP/1.1\r\n" + self.head
        self.writer.write(request)
        try:
            head = await self.reader.readuntil(b"\r\n\r\n")
        except (asyncio.IncompleteReadError, ConnectionError):
            # The server closed a keep-alive connection that sat idle (uvicorn: 5 s), e.g.
            # while the other clients finished their warm-up. Reconnect once, as clients do.
            self.close()
            await self.connect()
            self.reconnects += 1
            assert self.reader is not None and self.writer is not None
            self.writer.write(request)
            head = await self.reader.readuntil(b"\r\n\r\n")
        lines = head.split(b"\r\n")
        status = int(lines[0].split(b" ", 2)[1])
        length, chunked = -1, False
        for line in lines[1:]:
            name, _, value = line.partition(b":")
            lname = name.strip().lower()
            if lname == b"content-length":
                length = int(value)
            elif lname == b"transfer-encoding" and b"chunked" in value.lower():
                chunked = True
        if length >= 0:
            return status, await self.reader.readexactly(length)
        if not chunked:
            raise RuntimeError("response without Content-Length or chunked encoding")
        parts = []
        while True:
            size = int((await self.reader.readuntil(b"\r\n")).split(b";")[0], 16)
            if size == 0:
                await self.reader.readuntil(b"\r\n")
                return status, b"".join(parts)
            parts.append(await self.reader.readexactly(size))
            await self.reader.readexactly(2)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()


async def http_walk(
    conn: HttpConnection, since: str, stop: int | None, pages: int, result: WalkResult
) -> None:
    offset = 0
    clock = time.perf_counter
    for _ in range(pages):
        target = f"/api/v1/orders?updated_since={quote(since)}&offset={offset}&limit={LIMIT}"
        started = clock()
        status, body = await conn.get(target)
        result.latencies.append(clock() - started)
        if status != 200:
            result.errors += 1
            raise RuntimeError(f"GET {target} -> {status}: {body[:300]!r}")
        docs = orjson.loads(body)["data"]
        result.pages += 1
        result.orders += len(docs)
        if len(docs) < LIMIT:
            return
        since, offset = reanchor(docs, since, offset)
        if stop is not None and parse_ms(since) >= stop:
            return


async def http_load(
    hub_pid: int,
    port: int,
    token: str,
    plan: list[tuple[str, int | None]],
    pages: int,
    warmup_pages: int,
) -> dict[str, Any]:
    conns = [HttpConnection("127.0.0.1", port, token) for _ in plan]
    for conn in conns:
        await conn.connect()
    try:
        warm = [WalkResult() for _ in plan]
        await asyncio.gather(
            *(
                http_walk(c, since, None, warmup_pages, w)
                for c, (since, _), w in zip(conns, plan, warm, strict=True)
            )
        )
        results = [WalkResult() for _ in plan]
        hub0 = proc_cpu_seconds(hub_pid)
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                http_walk(c, since, stop, pages, r)
                for c, (since, stop), r in zip(conns, plan, results, strict=True)
            )
        )
        elapsed = time.perf_counter() - started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
        hub_cpu = proc_cpu_seconds(hub_pid) - hub0
    finally:
        for conn in conns:
            conn.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "elapsed": elapsed,
        "client_cpu": cpu,
        "hub_cpu": hub_cpu,
        "reconnects": sum(c.reconnects for c in conns),
        "pages": [r.pages for r in results],
        "orders": [r.orders for r in results],
        "latencies": [x for r in results for x in r.latencies],
    }


def load_process(
    hub_pid: int,
    port: int,
    token: str,
    plan: list[tuple[str, int | None]],
    pages: int,
    warmup_pages: int,
    out: Any,
) -> None:
    """Entry point of the load process (multiprocessing, spawn)."""
    import uvloop

    try:
        result = uvloop.run(http_load(hub_pid, port, token, plan, pages, warmup_pages))
        out.put(("ok", result))
    except BaseException as exc:  # report to the parent instead of dying silently
        out.put(("error", repr(exc)))


def run_http_load(
    hub_pid: int,
    port: int,
    token: str,
    plan: list[tuple[str, int | None]],
    pages: int,
    warmup_pages: int,
    timeout: float,
) -> dict[str, Any]:
    ctx = mp.get_context("spawn")
    out = ctx.Queue()
    proc = ctx.Process(
        target=load_process,
        args=(hub_pid, port, token, plan, pages, warmup_pages, out),
        daemon=True,
    )
    proc.start()
    deadline = time.monotonic() + timeout
    try:
        while True:
            try:
                kind, payload = out.get(timeout=1)
                break
            except queue.Empty:
                if not proc.is_alive():
                    raise RuntimeError(f"load process died ({proc.exitcode})") from None
                if time.monotonic() > deadline:
                    raise RuntimeError(f"load process took more than {timeout} s") from None
    finally:
        proc.join(timeout=10)
        if proc.is_alive():
            proc.terminate()
    if kind != "ok":
        raise RuntimeError(f"load process failed: {payload}")
    return dict(payload)


# -- the in-process floor -----------------------------------------------------------------------


async def floor_walk(
    store: Any, account_id: int, since: str, stop: int | None, pages: int, result: WalkResult
) -> None:
    """What the route does per page, minus HTTP: parse `updated_since`, `list_orders`,
    `_envelope`. Re-anchoring parses only the trailing documents (the client's job)."""
    from ordersync.hub.dialects.masonhub import _envelope
    from ordersync.store.store import ListQuery

    offset = 0
    clock = time.perf_counter
    for _ in range(pages):
        started = clock()
        query = ListQuery(since=parse_ms(since), offset=offset, limit=LIMIT)
        page = await store.list_orders(account_id, query, summary=False)
        body = _envelope(page, query, False)
        result.latencies.append(clock() - started)
        assert body[:9] == b'{"data":['
        result.pages += 1
        result.orders += len(page.items)
        if len(page.items) < LIMIT:
            return
        tail: list[dict[str, Any]] = []
        for raw in reversed(page.items):
            doc = orjson.loads(raw)
            if tail and doc["updated_at"] != tail[0]["updated_at"]:
                break
            tail.insert(0, doc)
        if len(tail) == len(page.items):
            since, offset = reanchor(tail, since, offset)
        else:
            since, offset = tail[-1]["updated_at"], len(tail)
        if stop is not None and parse_ms(since) >= stop:
            return


async def floor_load(
    url: str, token: str, plan: list[tuple[str, int | None]], pages: int, warmup_pages: int
) -> dict[str, Any]:
    from ordersync.store.store import Store

    store = await Store.open(url, migrate=False)
    try:
        principal = await store.authenticate(token)
        warm = [WalkResult() for _ in plan]
        await asyncio.gather(
            *(
                floor_walk(store, principal.account_id, since, None, warmup_pages, w)
                for (since, _), w in zip(plan, warm, strict=True)
            )
        )
        results = [WalkResult() for _ in plan]
        cpu0 = resource.getrusage(resource.RUSAGE_SELF)
        started = time.perf_counter()
        await asyncio.gather(
            *(
                floor_walk(store, principal.account_id, since, stop, pages, r)
                for (since, stop), r in zip(plan, results, strict=True)
            )
        )
        elapsed = time.perf_counter() - started
        cpu1 = resource.getrusage(resource.RUSAGE_SELF)
    finally:
        await store.close()
    cpu = (cpu1.ru_utime - cpu0.ru_utime) + (cpu1.ru_stime - cpu0.ru_stime)
    return {
        "elapsed": elapsed,
        "cpu": cpu,
        "pages": [r.pages for r in results],
        "orders": [r.orders for r in results],
        "latencies": [x for r in results for x in r.latencies],
    }


def run_floor(
    url: str, token: str, plan: list[tuple[str, int | None]], pages: int, warmup_pages: int
) -> dict[str, Any]:
    import uvloop

    return uvloop.run(floor_load(url, token, plan, pages, warmup_pages))


# -- the hub process ------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def proc_cpu_seconds(pid: int) -> float:
    """utime + stime of a process (all its threads) and of its live descendants (the worker
    processes of `hub serve --workers N`), from /proc."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    own = (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")
    children: list[int] = []
    with contextlib.suppress(OSError):
        for task in Path(f"/proc/{pid}/task").iterdir():
            children += [int(c) for c in (task / "children").read_text().split()]
    total = own
    for child in children:
        with contextlib.suppress(OSError, ValueError):
            total += proc_cpu_seconds(child)
    return total


@contextlib.contextmanager
def hub_server(
    url: str, workdir: Path, log: Callable[[str], None], workers: int = 1
) -> Iterator[tuple[int, int]]:
    """`ordersync hub serve` in its own process; yields (port, pid) once /healthz answers."""
    port = free_port()
    logfile = (workdir / f"hub-{port}.log").open("wb")
    cmd = [
        str(VENV_BIN / "ordersync"),
        "hub",
        "serve",
        "--db",
        url,
        "--port",
        str(port),
        "--workers",
        str(workers),
    ]
    proc = subprocess.Popen(cmd, stdout=logfile, stderr=subprocess.STDOUT, cwd=workdir)
    try:
        deadline = time.monotonic() + 60
        while True:
            if proc.poll() is not None:
                raise RuntimeError(
                    f"hub exited with {proc.returncode}; see {logfile.name}:\n"
                    + (workdir / f"hub-{port}.log").read_text()[-2000:]
                )
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{port}/healthz", timeout=1) as r:
                    if r.status == 200:
                        break
            except OSError:
                pass
            if time.monotonic() > deadline:
                raise RuntimeError("hub did not answer /healthz within 60 s")
            time.sleep(0.1)
        log(
            f"hub: pid {proc.pid} serving on port {port} (uvicorn, uvloop + httptools, "
            f"{workers} worker{'s' if workers > 1 else ''})"
        )
        yield port, proc.pid
    finally:
        proc.send_signal(signal.SIGINT)
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        logfile.close()


def start_profiler(
    pid: int, out_dir: Path, backend: str, clients: int, workers: int = 1
) -> tuple[Any, Path]:
    """py-spy on the hub process (all threads, GIL-holding samples only), collapsed format."""
    spy = shutil.which("py-spy", path=str(VENV_BIN)) or shutil.which("py-spy")
    if spy is None:
        raise RuntimeError("--profile needs py-spy: .venv/bin/pip install py-spy")
    out_dir.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    out = out_dir / f"hub_poll-{stamp}-{backend}-c{clients}.pyspy.txt"
    proc = subprocess.Popen(
        [
            spy,
            "record",
            "-p",
            str(pid),
            "-o",
            str(out),
            "-f",
            "raw",
            "-r",
            "250",
            "--threads",
            "--gil",
            "--nonblocking",
            *(["--subprocesses"] if workers > 1 else []),
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.DEVNULL,
    )
    time.sleep(1.0)  # py-spy attaches before the load starts
    return proc, out


def stop_profiler(spy: tuple[Any, Path], log: Callable[[str], None], top: int = 15) -> None:
    proc, out = spy
    proc.send_signal(signal.SIGINT)
    try:
        proc.wait(timeout=30)
    except subprocess.TimeoutExpired:
        proc.kill()
    if not out.exists():
        log("profile: py-spy wrote nothing (ptrace not permitted?)")
        return
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    for line in out.read_text().splitlines():
        stack, _, count = line.rpartition(" ")
        if not count.isdigit():
            continue
        n = int(count)
        total += n
        frames = stack.split(";")[1:]  # drop the thread name
        if frames:
            own[frames[-1]] = own.get(frames[-1], 0) + n
        for frame in set(frames):
            inclusive[frame] = inclusive.get(frame, 0) + n
    log(f"profile: {total} samples holding the GIL -> {out.relative_to(ROOT)}")
    for title, table in (("self", own), ("inclusive", inclusive)):
        print(f"  top {title}:", file=sys.stderr)
        for frame, n in sorted(table.items(), key=lambda kv: -kv[1])[:top]:
            print(f"    {100 * n / max(total, 1):5.1f}%  {frame[:120]}", file=sys.stderr)


# -- reporting ----------------------------------------------------------------------------


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    if not ordered:
        return math.nan
    k = max(0, min(len(ordered) - 1, math.ceil(q * len(ordered)) - 1))
    return ordered[k]


@dataclass
class Row:
    backend: str
    orders: int
    clients: int
    pages: int
    pages_per_s: float
    p50_ms: float
    p99_ms: float
    floor_pages: int
    floor_pages_per_s: float
    floor_p50_ms: float
    floor_p99_ms: float
    ratio: float  # HTTP time per page / floor time per page
    server_cpu_pct: float  # of one core, hub process (all threads), during the HTTP run
    client_cpu_pct: float  # of one core, load process, during the HTTP run
    hub_cpu_ms_per_page: float  # hub process CPU (all threads) per page: robust to noise
    reconnects: int  # keep-alive connections the hub closed while idle (client reconnected)
    floor_cpu_ms_per_page: float  # bench process CPU per page in the floor run
    orders_seen: int
    hub_workers: int = 1  # `hub serve --workers`; hub CPU sums every worker process


def print_table(rows: list[Row]) -> None:
    header = (
        f"{'backend':<11}{'orders':>10}{'clients':>8}{'pages/s':>10}{'p50 ms':>9}"
        f"{'p99 ms':>9}{'floor p/s':>11}{'ratio':>7}{'hub cpu':>9}{'load cpu':>10}"
        f"{'hub cpu ms/pg':>15}{'floor cpu ms/pg':>17}"
    )
    print(header)
    print("-" * len(header))
    for r in rows:
        backend = r.backend if r.hub_workers == 1 else f"{r.backend} x{r.hub_workers}"
        print(
            f"{backend:<11}{r.orders:>10,}{r.clients:>8}{r.pages_per_s:>10,.0f}"
            f"{r.p50_ms:>9.2f}{r.p99_ms:>9.2f}{r.floor_pages_per_s:>11,.0f}{r.ratio:>7.2f}"
            f"{r.server_cpu_pct:>8.0f}%{r.client_cpu_pct:>9.0f}%"
            f"{r.hub_cpu_ms_per_page:>15.2f}{r.floor_cpu_ms_per_page:>17.2f}"
        )


def targets(rows: list[Row]) -> list[str]:
    lines = []
    for r in rows:
        if r.backend == "sqlite" and r.clients == 8:
            ok = r.pages_per_s >= 1000 and r.p99_ms <= 50 and r.ratio <= 2
            lines.append(
                f"target sqlite@8 clients (>= 1,000 pages/s, p99 <= 50 ms, ratio <= 2): "
                f"{'MET' if ok else 'MISSED'} ({r.pages_per_s:,.0f} pages/s, "
                f"p99 {r.p99_ms:.1f} ms, ratio {r.ratio:.2f})"
            )
    return lines


# -- main ---------------------------------------------------------------------------------


def bench_backend(
    backend: str,
    url: str,
    n: int,
    clients: list[int],
    pages: int | None,
    warmup: int,
    workdir: Path,
    log: Callable[[str], None],
    profile_dir: Path | None = None,
    hub_workers: int = 1,
) -> list[Row]:
    lo, hi, count = asyncio.run(time_range(url))
    if count != n:
        raise RuntimeError(f"{backend}: expected {n} orders, found {count}")
    token = asyncio.run(new_token(url))
    rows = []
    with hub_server(url, workdir, log, hub_workers) as (port, pid):
        for c in clients:
            plan = slices(lo, hi, c)
            per_client = pages if pages is not None else math.ceil(n / LIMIT / c) + 1
            log(f"{backend}: {c} client(s), up to {per_client:,} pages each: floor ...")
            floor = run_floor(url, token, plan, per_client, warmup)
            log(f"{backend}: {c} client(s): HTTP ...")
            spy = start_profiler(pid, profile_dir, backend, c, hub_workers) if profile_dir else None
            http = run_http_load(pid, port, token, plan, per_client, warmup, timeout=3600)
            server_cpu = http["hub_cpu"]  # read by the load process around the measured walk
            if spy is not None:
                stop_profiler(spy, log)
            http_pages, floor_pages = sum(http["pages"]), sum(floor["pages"])
            http_pps = http_pages / http["elapsed"]
            floor_pps = floor_pages / floor["elapsed"]
            if c == 1 and pages is None and sum(http["orders"]) != n:
                raise RuntimeError(f"the full walk saw {sum(http['orders'])} orders, not {n}")
            row = Row(
                backend=backend,
                orders=n,
                clients=c,
                pages=http_pages,
                pages_per_s=round(http_pps, 1),
                p50_ms=round(percentile(http["latencies"], 0.50) * 1000, 3),
                p99_ms=round(percentile(http["latencies"], 0.99) * 1000, 3),
                floor_pages=floor_pages,
                floor_pages_per_s=round(floor_pps, 1),
                floor_p50_ms=round(percentile(floor["latencies"], 0.50) * 1000, 3),
                floor_p99_ms=round(percentile(floor["latencies"], 0.99) * 1000, 3),
                ratio=round(floor_pps / http_pps, 3),
                server_cpu_pct=round(100 * server_cpu / http["elapsed"], 1),
                client_cpu_pct=round(100 * http["client_cpu"] / http["elapsed"], 1),
                hub_cpu_ms_per_page=round(1000 * server_cpu / http_pages, 3),
                reconnects=http["reconnects"],
                floor_cpu_ms_per_page=round(1000 * floor["cpu"] / floor_pages, 3),
                orders_seen=sum(http["orders"]),
                hub_workers=hub_workers,
            )
            log(
                f"{backend}: {c} client(s): {http_pps:,.0f} pages/s over HTTP "
                f"(p50 {row.p50_ms:.2f} ms, p99 {row.p99_ms:.2f} ms), floor {floor_pps:,.0f} "
                f"pages/s, hub cpu {row.server_cpu_pct:.0f}%, load cpu {row.client_cpu_pct:.0f}%"
            )
            rows.append(row)
    return rows


# -- history mode (issue 12): listing cost with 30 days of write history ----------------------

# Each history order's versions: (status, ms after its creation). One in 16 is canceled.
HISTORY_PATH = [
    ("open", 0),
    ("atWarehouse", 2_000),
    ("inProcess", 5_000),
    ("packed", 9_000),
    ("fulfilled", 12_000),
    ("delivered", 20_000),
]
HISTORY_CANCELED = [("open", 0), ("canceled", 2_000)]
COUNT_SPANS = (1_000, 60_000, 3_600_000, 86_400_000)


def schema_revision(url: str) -> str:
    import psycopg

    with psycopg.connect(url) as conn:
        row = conn.execute("SELECT version_num FROM alembic_version").fetchone()
    return str(row[0]) if row else ""


async def compact_all(url: str) -> int | None:
    """Fold every count delta (code with a compactor only); None on older code."""
    try:
        from ordersync.store.counts import CountCompactor
    except ImportError:
        return None
    from ordersync.store.store import Store

    store = await Store.open(url, migrate=False)
    try:
        return await CountCompactor(store.writer, store.clock).run_once()
    finally:
        await store.close()


async def seed_recent(url: str, n: int, start: int) -> None:
    """`n` orders through `Store.create_orders` (batches of 1,000), stamped from `start` on with
    the seed clock's 0-6 ms steps."""
    from ordersync.store.store import Store

    store = await Store.open(url)
    try:
        rng = random.Random(7)
        now = [start]

        def clock() -> int:
            now[0] += rng.choice((0, 0, 0, 1, 1, 2, 2, 3, 3, 4, 5, 6))
            return now[0]

        store.clock = clock
        principal = await store.authenticate(await store.create_token(ACCOUNT, "seeder"))
        shapes = _templates()
        for first in range(0, n, BATCH):
            items = [
                shapes[i % len(shapes)].model_copy(update={"customer_identifier": f"R-{i:08d}"})
                for i in range(first, min(n, first + BATCH))
            ]
            results = await store.create_orders(principal, items)
            assert all(r.created for r in results)
    finally:
        await store.close()


def seed_history(url: str, first: int, last: int, interval: int, log: Callable[[str], None]) -> int:
    """Bulk SQL: one order every `interval` ms in [first, last), each taken through its whole
    lifecycle (`HISTORY_PATH`), as the write path would leave it: the order's last version in
    `orders`, and the counters of every version. For the 0004 layout: bucket rows of every span,
    zero rows included (that code never deleted them). For 0005: the non-zero buckets; the real
    compactor then prunes the second buckets past its horizon. How many orders."""
    import psycopg

    revision = schema_revision(url)
    m = (last - first) // interval
    steps = (
        ", ".join(f"({k}, '{s}', {off}, false)" for k, (s, off) in enumerate(HISTORY_PATH))
        + ", "
        + ", ".join(f"({k}, '{s}', {off}, true)" for k, (s, off) in enumerate(HISTORY_CANCELED))
    )
    versions = f"""
        WITH o AS (
            SELECT i, {first}::bigint + i::bigint * {interval} AS t0, (i % 16 = 0) AS canceled
            FROM generate_series(0, {m - 1}) AS i
        ), steps(k, status, off, canceled) AS (VALUES {steps})
        SELECT o.i, s.k, s.status, o.t0 + s.off AS at, o.t0,
               lag(s.status) OVER w AS prev_status, lag(o.t0 + s.off) OVER w AS prev_at,
               lead(s.k) OVER w IS NULL AS last
        FROM o JOIN steps s ON s.canceled = o.canceled
        WINDOW w AS (PARTITION BY o.i ORDER BY s.k)
    """
    with psycopg.connect(url, autocommit=True) as conn:
        account = conn.execute("SELECT id FROM accounts WHERE name = %s", (ACCOUNT,)).fetchone()
        assert account is not None
        account_id = int(account[0])
        doc = conn.execute(
            "SELECT doc FROM orders WHERE account_id = %s LIMIT 1", (account_id,)
        ).fetchone()
        assert doc is not None
        template = orjson.loads(doc[0])
        template.update(
            id="@ID@",
            customer_identifier="@CI@",
            status="@ST@",
            version=987654321,
            created_at="@CA@",
            updated_at="@UA@",
        )
        text = orjson.dumps(template).decode().replace("'", "''")

        def rfc(col: str) -> str:
            return (
                f"to_char(to_timestamp({col} / 1000.0) AT TIME ZONE 'UTC', "
                '\'YYYY-MM-DD"T"HH24:MI:SS.MS"Z"\')'
            )

        started = time.perf_counter()
        conn.execute("CREATE TEMP TABLE hv AS " + versions)
        log(f"history: {m:,} orders' versions built in {time.perf_counter() - started:.1f} s")
        conn.execute(
            f"""
            INSERT INTO orders (id, account_id, customer_identifier, status, version,
                                created_at, updated_at, updated_by, doc)
            SELECT 'h-' || lpad(i::text, 12, '0'), {account_id}, 'H-' || i, status, k + 1,
                   t0, at, NULL,
                   replace(replace(replace(replace(replace(replace('{text}',
                     '@ID@', 'h-' || lpad(i::text, 12, '0')), '@CI@', 'H-' || i),
                     '@ST@', status), '987654321', (k + 1)::text),
                     '@CA@', {rfc("t0")}), '@UA@', {rfc("at")})
            FROM hv WHERE last
            """
        )
        log(f"history: orders inserted ({time.perf_counter() - started:.1f} s)")
        deltas = (
            "SELECT status, at, 1 AS n FROM hv UNION ALL "
            "SELECT prev_status, prev_at, -1 FROM hv WHERE prev_status IS NOT NULL"
        )
        spans = ", ".join(f"({s})" for s in COUNT_SPANS)
        having = "" if revision == "0004" else "HAVING sum(d.n) <> 0"
        conn.execute(
            f"""
            INSERT INTO update_counts (account_id, entity_kind, status, span, bucket, n)
            SELECT {account_id}, 'order', d.status, sp.span, d.at / sp.span, sum(d.n)
            FROM ({deltas}) AS d CROSS JOIN (VALUES {spans}) AS sp(span)
            GROUP BY d.status, sp.span, d.at / sp.span {having}
            ON CONFLICT ON CONSTRAINT update_counts_pkey
            DO UPDATE SET n = update_counts.n + excluded.n
            """
        )
        log(f"history: counters inserted ({time.perf_counter() - started:.1f} s)")
    return m


def db_stats(url: str) -> dict[str, Any]:
    import psycopg

    with psycopg.connect(url, autocommit=True) as conn:
        conn.execute("VACUUM ANALYZE")
        counts = {}
        for table in ("orders", "update_counts", "update_count_deltas"):
            try:
                row = conn.execute(f"SELECT count(*) FROM {table}").fetchone()  # type: ignore[arg-type]
                counts[table] = int(row[0]) if row else 0
            except psycopg.errors.UndefinedTable:
                pass
        seconds = conn.execute("SELECT count(*) FROM update_counts WHERE span = 1000").fetchone()
        size = conn.execute("SELECT pg_database_size(current_database())").fetchone()
    return {
        "rows": counts,
        "second_buckets": int(seconds[0]) if seconds else 0,
        "db_bytes": int(size[0]) if size else 0,
    }


async def time_listings(url: str, probes: dict[str, int], repeat: int) -> dict[str, dict[str, Any]]:
    """For each probe (`updated_since`): p50/p90 of `Store.list_orders` (the route's store call,
    limit 100) over `repeat` calls, the SQL execution time of its page statement (EXPLAIN
    ANALYZE, median of 5), and whether `total` equals a plain count."""
    from sqlalchemy import func, select

    from ordersync.store.store import ListQuery, Store, _list_params, _list_statements
    from ordersync.store.tables import orders

    store = await Store.open(url, migrate=False)
    out: dict[str, dict[str, Any]] = {}
    try:
        async with store.reader.connect() as conn:
            account_id = int(await conn.scalar(select(func.min(orders.c.account_id))))
        for name, since in probes.items():
            query = ListQuery(since=since, limit=LIMIT)
            page = await store.list_orders(account_id, query)
            async with store.reader.connect() as conn:
                plain = await conn.scalar(
                    select(func.count())
                    .select_from(orders)
                    .where(orders.c.account_id == account_id, orders.c.updated_at >= since)
                )
            timings = []
            for _ in range(repeat):
                started = time.perf_counter()
                await store.list_orders(account_id, query)
                timings.append(time.perf_counter() - started)
            statement = _list_statements(orders, "order", False, False, True, False).page
            sql_ms = []
            async with store.reader.connect() as conn:
                compiled = statement.compile(dialect=conn.dialect)
                bound = compiled.construct_params(_list_params(account_id, query))
                for _ in range(5):
                    plan = await conn.exec_driver_sql(
                        "EXPLAIN (ANALYZE, FORMAT JSON) " + compiled.string, bound
                    )
                    explained = plan.scalar()[0]  # type: ignore[index]
                    sql_ms.append(float(explained["Execution Time"]))
            scans = sorted(set(plan_scans(explained["Plan"])))
            out[name] = {
                "since": since,
                "total": page.total,
                "exact": page.total == plain,
                "items": len(page.items),
                "p50_ms": round(percentile(timings, 0.5) * 1000, 3),
                "p90_ms": round(percentile(timings, 0.9) * 1000, 3),
                "sql_ms": round(sorted(sql_ms)[2], 3),
                "scans": scans,
            }
    finally:
        await store.close()
    return out


def plan_scans(node: dict[str, Any]) -> list[str]:
    """'<node type> <relation> [<index>]' of every scan in an EXPLAIN (FORMAT JSON) plan."""
    found = []
    if "Relation Name" in node or "Index Name" in node:
        index = f" [{node['Index Name']}]" if "Index Name" in node else ""
        found.append(f"{node['Node Type']} {node.get('Relation Name', '')}{index}")
    for child in node.get("Plans", []):
        found += plan_scans(child)
    return found


def run_history(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """Two databases with the same recent orders, one with `--history-days` of older write
    history for the same account; the tip poll and backfill pages timed on both."""
    import psycopg

    from ordersync.domain import now_ms

    admin = args.pg_admin
    base = admin.rpartition("/")[0]
    tag = uuid.uuid4().hex[:8]
    plain_db, hist_db = f"ordersync_bench_{tag}_plain", f"ordersync_bench_{tag}_hist"
    urls = {"without": f"{base}/{plain_db}", "with": f"{base}/{hist_db}"}
    n = args.recent_orders
    recent_start = now_ms() - n * 3 - 60_000
    try:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {plain_db}")  # type: ignore[arg-type]
        log(f"history: seeding {n:,} recent orders through the store ...")
        asyncio.run(seed_recent(urls["without"], n, recent_start))
        asyncio.run(compact_all(urls["without"]))
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"CREATE DATABASE {hist_db} TEMPLATE {plain_db}")  # type: ignore[arg-type]
        days = args.history_days
        first = recent_start - days * 86_400_000
        m = seed_history(urls["with"], first, recent_start - 60_000, args.history_interval, log)
        if schema_revision(urls["with"]) != "0004":
            # As the compactor leaves them: second buckets past the horizon pruned (the history
            # was seeded with all of them; let the real compactor move its horizon from 0).
            with psycopg.connect(urls["with"], autocommit=True) as conn:
                conn.execute("UPDATE update_count_state SET seconds_from = 0")
            asyncio.run(compact_all(urls["with"]))
        stats = {k: db_stats(u) for k, u in urls.items()}
        log(f"history: {m:,} history orders; {stats}")
        _, hi, _ = asyncio.run(time_range(urls["without"]))
        probes = {
            "tip poll (last 2 s)": hi - 2_000,
            "backfill page (start of recent orders)": recent_start,
            "backfill page (middle of recent orders)": (recent_start + hi) // 2,
        }
        results = {k: asyncio.run(time_listings(u, probes, args.repeat)) for k, u in urls.items()}
        deep = asyncio.run(
            time_listings(urls["with"], {"backfill page (30 days back)": first}, args.repeat)
        )
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            for name in (hist_db, plain_db):
                conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]
    print()
    print(
        f"{'listing (limit 100)':<42}{'without':>10}{'with':>10}{'ratio':>7}"
        f"{'sql w/o':>10}{'sql with':>10}{'ratio':>7}  exact"
    )
    rows = []
    for name in probes:
        a, b = results["without"][name], results["with"][name]
        ratio, sql_ratio = b["p50_ms"] / a["p50_ms"], b["sql_ms"] / max(a["sql_ms"], 1e-3)
        rows.append(
            {
                "probe": name,
                "without": a,
                "with": b,
                "ratio": round(ratio, 3),
                "sql_ratio": round(sql_ratio, 3),
            }
        )
        print(
            f"{name:<42}{a['p50_ms']:>8.2f}ms{b['p50_ms']:>8.2f}ms{ratio:>7.2f}"
            f"{a['sql_ms']:>8.2f}ms{b['sql_ms']:>8.2f}ms{sql_ratio:>7.2f}"
            f"  {a['exact'] and b['exact']}"
        )
    for name in probes:
        print(f"  scans with history, {name}: {'; '.join(results['with'][name]['scans'])}")
    for name, d in deep.items():
        print(
            f"{name:<42}{'':>10}{d['p50_ms']:>8.2f}ms{'':>17}{d['sql_ms']:>8.2f}ms{'':>7}"
            f"  {d['exact']}"
        )
    worst = max(r["ratio"] for r in rows)
    print(
        "target (with history within 1.5x of without, store call p50): "
        f"{'MET' if worst <= 1.5 else 'MISSED'} (worst {worst:.2f}x)"
    )
    return {
        "mode": "history",
        "recent_orders": n,
        "history_days": days,
        "history_interval_ms": args.history_interval,
        "history_orders": m,
        "db": stats,
        "rows": rows,
        "deep": deep,
    }


# -- write-contention mode (issue 12): one account, 16 concurrent writers ----------------------


async def _write_for(
    url: str, writers: int, seconds: float, warmup: float, proc: int
) -> dict[str, Any]:
    from ordersync.store.store import Store

    store = await Store.open(url, migrate=False)
    compactor = None
    try:
        from ordersync.store.counts import CountCompactor

        compactor = CountCompactor(store.writer, store.clock)  # as each hub worker runs one
        compactor.start()
    except ImportError:
        pass
    try:
        token = await store.create_token(ACCOUNT, f"writer-{proc}")
        principal = await store.authenticate(token)
        shape = _templates()[3]
        counted = [0] * writers
        t0 = time.perf_counter()

        cpu: list[float] = []

        async def writer(w: int) -> None:
            i = 0
            while time.perf_counter() - t0 < warmup + seconds:
                item = shape.model_copy(update={"customer_identifier": f"P{proc}-W{w}-{i}"})
                [result] = await store.create_orders(principal, [item])
                assert result.created
                i += 1
                if time.perf_counter() - t0 >= warmup:
                    if not cpu:
                        cpu.append(time.process_time())
                    counted[w] += 1

        await asyncio.gather(*(writer(w) for w in range(writers)))
        return {"transactions": sum(counted), "cpu": time.process_time() - cpu[0]}
    finally:
        if compactor is not None:
            await compactor.stop()
        await store.close()


async def _lean_write(url: str, writers: int, seconds: float, warmup: float) -> dict[str, Any]:
    """The database side of the same creates without the store's Python: per transaction the
    duplicate check, the order and change rows and the counter writes of the schema in place
    (0004: four bucket upserts; later: one delta row), on raw psycopg connections. On newer
    code the real compactor runs alongside."""
    import psycopg

    revision = schema_revision(url)
    compactor, store = None, None
    if revision != "0004":
        from ordersync.store.counts import CountCompactor
        from ordersync.store.store import Store

        store = await Store.open(url, migrate=False)
        compactor = CountCompactor(store.writer, store.clock)
        compactor.start()
    doc = orjson.dumps(_templates()[3].model_dump(mode="json")).decode()
    conns = [await psycopg.AsyncConnection.connect(url) for _ in range(writers)]
    with psycopg.connect(url) as c:
        found = c.execute("SELECT min(id) FROM accounts").fetchone()
    account_id = int(found[0]) if found else 0
    counted = [0] * writers
    t0 = time.perf_counter()
    cpu: list[float] = []

    async def writer(w: int, conn: Any) -> None:
        i = 0
        while time.perf_counter() - t0 < warmup + seconds:
            ident, oid, now = f"L{w}-{i}", str(uuid.uuid4()), int(time.time() * 1000)
            async with conn.transaction():
                await conn.execute(
                    "SELECT customer_identifier FROM orders WHERE account_id = %s "
                    "AND customer_identifier = ANY(%s)",
                    (account_id, [ident]),
                )
                await conn.execute(
                    "INSERT INTO orders (id, account_id, customer_identifier, status, version, "
                    "created_at, updated_at, doc) VALUES (%s, %s, %s, 'open', 1, %s, %s, %s)",
                    (oid, account_id, ident, now, now, doc),
                )
                await conn.execute(
                    "INSERT INTO changes (account_id, entity_kind, entity_id, version, "
                    "event_type, created_at) VALUES (%s, 'order', %s, 1, 'order.created', %s)",
                    (account_id, oid, now),
                )
                if revision == "0004":
                    values = ", ".join(
                        f"({account_id}, 'order', 'open', {sp}, {now // sp}, 1)"
                        for sp in COUNT_SPANS
                    )
                    await conn.execute(
                        "INSERT INTO update_counts (account_id, entity_kind, status, span, "
                        f"bucket, n) VALUES {values} ON CONFLICT (account_id, entity_kind, "
                        "status, span, bucket) DO UPDATE SET n = update_counts.n + excluded.n"
                    )
                else:
                    await conn.execute(
                        "INSERT INTO update_count_deltas (account_id, entity_kind, status, "
                        "updated_at, n) VALUES (%s, 'order', 'open', %s, 1)",
                        (account_id, now),
                    )
            i += 1
            if time.perf_counter() - t0 >= warmup:
                if not cpu:
                    cpu.append(time.process_time())
                counted[w] += 1

    try:
        await asyncio.gather(*(writer(w, c) for w, c in enumerate(conns)))
    finally:
        for c in conns:
            await c.close()
        if compactor is not None:
            await compactor.stop()
        if store is not None:
            await store.close()
    return {"transactions": sum(counted), "cpu": time.process_time() - cpu[0]}


def contention_process(
    url: str, writers: int, seconds: float, warmup: float, proc: int, out: Any, lean: bool
) -> None:
    if lean:
        out.put(asyncio.run(_lean_write(url, writers, seconds, warmup)))
    else:
        out.put(asyncio.run(_write_for(url, writers, seconds, warmup, proc)))


def run_contention(args: argparse.Namespace, log: Callable[[str], None]) -> dict[str, Any]:
    """`--writers` concurrent creates (one order per transaction) in one account, spread over
    `--writer-procs` processes (each a store with its pool and, on new code, a compactor, as a
    hub worker has); `pg_stat_activity` sampled every 10 ms for active backends and lock waits."""
    import threading

    import psycopg

    admin = args.pg_admin
    name = f"ordersync_bench_{uuid.uuid4().hex[:8]}_writes"
    url = f"{admin.rpartition('/')[0]}/{name}"
    procs_n = args.writer_procs
    per_proc = args.writers // procs_n
    with psycopg.connect(admin, autocommit=True) as conn:
        conn.execute(f"CREATE DATABASE {name}")  # type: ignore[arg-type]
    try:
        asyncio.run(migrate(url))
        asyncio.run(seed_recent(url, 1000, int(time.time() * 1000) - 600_000))  # stats, index
        with psycopg.connect(url, autocommit=True) as conn:
            conn.execute("VACUUM ANALYZE")
        ctx = mp.get_context("spawn")
        out = ctx.Queue()
        samples: dict[str, int] = {}
        active = [0, 0]  # samples, active backends summed
        stop = threading.Event()

        def sample() -> None:
            with psycopg.connect(url, autocommit=True) as conn:
                time.sleep(args.warmup_seconds)
                while not stop.is_set():
                    rows = conn.execute(
                        "SELECT coalesce(wait_event_type, 'CPU'), coalesce(wait_event, '') "
                        "FROM pg_stat_activity WHERE datname = current_database() "
                        "AND state = 'active' AND pid <> pg_backend_pid()"
                    ).fetchall()
                    active[0] += 1
                    for kind, event in rows:
                        active[1] += 1
                        key = f"{kind}:{event}" if event else kind
                        samples[key] = samples.get(key, 0) + 1
                    time.sleep(0.01)

        procs = [
            ctx.Process(
                target=contention_process,
                args=(url, per_proc, args.seconds, args.warmup_seconds, p, out, args.lean),
            )
            for p in range(procs_n)
        ]
        log(
            f"contention: {per_proc * procs_n} writers in {procs_n} processes, {args.seconds} s ..."
        )
        for p in procs:
            p.start()
        sampler = threading.Thread(target=sample, daemon=True)
        sampler.start()
        results = [out.get(timeout=600) for _ in procs]
        stop.set()
        sampler.join()
        for p in procs:
            p.join()
        with psycopg.connect(url, autocommit=True) as conn:
            backlog = None
            with contextlib.suppress(psycopg.errors.UndefinedTable):
                row = conn.execute("SELECT count(*) FROM update_count_deltas").fetchone()
                backlog = int(row[0]) if row else None
    finally:
        with psycopg.connect(admin, autocommit=True) as conn:
            conn.execute(f"DROP DATABASE IF EXISTS {name} WITH (FORCE)")  # type: ignore[arg-type]
    tx = sum(r["transactions"] for r in results)
    tps = tx / args.seconds
    # The writers' own CPU per transaction: when it is about (cores available) / tx/s, the
    # writing processes, not the database, set the pace.
    client_ms = 1000 * sum(r["cpu"] for r in results) / max(tx, 1)
    backend_samples = active[1]
    lock = sum(n for k, n in samples.items() if k.startswith("Lock"))
    share = lock / backend_samples if backend_samples else 0.0
    top = sorted(samples.items(), key=lambda kv: -kv[1])[:6]
    print()
    print(
        f"writers {per_proc * procs_n} ({procs_n} processes), {args.seconds} s measured: "
        f"{tx:,} transactions, {tps:,.1f} tx/s"
    )
    print(
        f"active backend samples: {backend_samples:,} ({active[0]:,} snapshots); lock waits "
        f"{100 * share:.1f} %; top: "
        + ", ".join(f"{k} {100 * n / max(backend_samples, 1):.0f}%" for k, n in top)
    )
    print(
        f"writer processes' CPU: {client_ms:.2f} ms per transaction; database sessions active "
        f"on average: {backend_samples / max(active[0], 1):.2f} of {per_proc * procs_n}"
    )
    if backlog is not None:
        print(f"count deltas left uncompacted at the end: {backlog:,}")
    return {
        "mode": "contention",
        "lean": args.lean,
        "writers": per_proc * procs_n,
        "writer_procs": procs_n,
        "seconds": args.seconds,
        "transactions": tx,
        "tx_per_s": round(tps, 1),
        "backend_samples": backend_samples,
        "snapshots": active[0],
        "lock_wait_share": round(share, 4),
        "writer_cpu_ms_per_tx": round(client_ms, 3),
        "mean_active_backends": round(backend_samples / max(active[0], 1), 2),
        "wait_events": dict(top),
        "deltas_left": backlog,
    }


def save_mode_result(payload: dict[str, Any], args: argparse.Namespace, load: list[float]) -> None:
    if args.no_save:
        return
    RESULTS.mkdir(exist_ok=True)
    stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
    label = f"-{args.label}" if args.label else ""
    path = RESULTS / f"hub_poll-{payload['mode']}-{stamp}{label}.json"
    payload = {
        "bench": "hub_poll",
        "when": datetime.now(UTC).isoformat(timespec="seconds"),
        "argv": sys.argv[1:],
        "code": code_identity(),
        "machine": {
            "cpus": os.cpu_count(),
            "loadavg_at_start": load,
            "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
        },
        **payload,
    }
    path.write_text(json.dumps(payload, indent=2) + "\n")
    print(f"results: {path.relative_to(ROOT)}")


def code_identity() -> dict[str, Any]:
    """Which tree's `ordersync` ran (PYTHONPATH may point at another checkout) and its commit."""
    import ordersync

    src = Path(ordersync.__file__).resolve().parent
    try:
        commit = subprocess.run(
            ["git", "-C", str(src), "rev-parse", "--short", "HEAD"],
            capture_output=True,
            text=True,
            check=True,
        ).stdout.strip()
    except (OSError, subprocess.CalledProcessError):
        commit = None
    return {"ordersync": str(src), "commit": commit}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument(
        "--mode",
        choices=("poll", "history", "contention"),
        default="poll",
        help="poll: the HTTP polling bench (default); history: listing times with and "
        "without write history (PostgreSQL); contention: concurrent writers in one account",
    )
    parser.add_argument("--orders", type=int, default=1_000_000, help="orders to seed")
    parser.add_argument("--backend", choices=("sqlite", "postgresql", "both"), default="both")
    parser.add_argument("--clients", default="1,8", help="comma-separated client counts")
    parser.add_argument(
        "--pages",
        type=int,
        default=None,
        help="pages per client (default: each client walks its 1/C slice of "
        "the whole set, so every run reads all N orders once)",
    )
    parser.add_argument(
        "--warmup",
        type=int,
        default=50,
        help="pages per client walked before measuring (default 50)",
    )
    parser.add_argument(
        "--pg-orders",
        type=int,
        default=None,
        help="orders to seed on PostgreSQL (default: --orders)",
    )
    parser.add_argument(
        "--pg-admin",
        default=os.environ.get("ORDERSYNC_TEST_PG", DEFAULT_PG_ADMIN),
        help="admin URL of the PostgreSQL server (a database is created there)",
    )
    parser.add_argument(
        "--hub-workers",
        type=int,
        default=1,
        help="hub worker processes (`hub serve --workers`, default 1)",
    )
    parser.add_argument("--no-save", action="store_true", help="do not write bench/results")
    parser.add_argument("--label", default="", help="suffix of the results file name")
    history = parser.add_argument_group("history mode")
    history.add_argument("--recent-orders", type=int, default=20_000)
    history.add_argument("--history-days", type=int, default=30)
    history.add_argument(
        "--history-interval", type=int, default=10_000, help="ms between history orders"
    )
    history.add_argument("--repeat", type=int, default=200, help="calls timed per listing")
    contention = parser.add_argument_group("contention mode")
    contention.add_argument("--writers", type=int, default=16)
    contention.add_argument("--writer-procs", type=int, default=2)
    contention.add_argument("--seconds", type=float, default=20.0)
    contention.add_argument("--warmup-seconds", type=float, default=3.0)
    contention.add_argument(
        "--lean",
        action="store_true",
        help="write the same rows with raw SQL (no store, one process): the database's side",
    )
    parser.add_argument(
        "--profile",
        action="store_true",
        help="sample the hub with py-spy during each HTTP run (pip install "
        "py-spy into the venv); collapsed stacks go to bench/results/",
    )
    parser.add_argument(
        "--seed-only",
        action="store_true",
        help="only build the SQLite seed cache for --orders, then exit",
    )
    args = parser.parse_args()
    clients = [int(c) for c in args.clients.split(",") if c.strip()]
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]

    def log(message: str) -> None:
        print(f"[{time.strftime('%H:%M:%S')}] {message}", file=sys.stderr, flush=True)

    load_at_start = [round(x, 2) for x in os.getloadavg()]
    log(f"load average at start: {load_at_start} on {os.cpu_count()} cpus")
    if args.mode != "poll":
        run = run_history if args.mode == "history" else run_contention
        save_mode_result(run(args, log), args, load_at_start)
        return
    if args.seed_only:
        with (
            tempfile.TemporaryDirectory(prefix="hub_poll-") as tmp,
            sqlite_database(args.orders, Path(tmp), log, {}),
        ):
            return
    rows: list[Row] = []
    infos: dict[str, Any] = {}
    with tempfile.TemporaryDirectory(prefix="hub_poll-") as tmp:
        workdir = Path(tmp)
        for backend in backends:
            info: dict[str, Any] = {}
            if backend == "sqlite":
                n = args.orders
                db = sqlite_database(n, workdir, log, info)
            else:
                n = args.pg_orders or args.orders
                db = postgresql_database(n, args.pg_admin, log, info)
            with db as url:
                info["orders"] = n
                rows += bench_backend(
                    backend,
                    url,
                    n,
                    clients,
                    args.pages,
                    args.warmup,
                    workdir,
                    log,
                    RESULTS if args.profile else None,
                    args.hub_workers,
                )
            infos[backend] = info
            if backend == "sqlite":
                (workdir / "hub.db").unlink(missing_ok=True)

    print()
    print_table(rows)
    print(
        "ratio = HTTP time per page / in-process floor time per page (same concurrency); "
        "cpu ms/pg = CPU seconds per page (all threads), robust to a noisy box"
    )
    for backend, info in infos.items():
        secs = info.get("seed_seconds")
        seeded = (
            "cached" if secs is None else f"{secs:,.1f} s ({info['orders'] / secs:,.0f} orders/s)"
        )
        print(
            f"seed {backend}: {info['orders']:,} orders, {seeded}, "
            f"db {info.get('db_bytes', 0) / 1e6:,.0f} MB"
        )
    for line in targets(rows):
        print(line)
    if not args.no_save:
        RESULTS.mkdir(exist_ok=True)
        stamp = datetime.now(UTC).strftime("%Y-%m-%dT%H%M%SZ")
        path = RESULTS / f"hub_poll-{stamp}.json"
        payload = {
            "bench": "hub_poll",
            "when": datetime.now(UTC).isoformat(timespec="seconds"),
            "argv": sys.argv[1:],
            "machine": {
                "cpus": os.cpu_count(),
                "python": sys.version.split()[0],
                "loadavg_at_start": load_at_start,
                "loadavg_at_end": [round(x, 2) for x in os.getloadavg()],
            },
            "limit": LIMIT,
            "seed": infos,
            "rows": [asdict(r) for r in rows],
        }
        tmp_path = path.with_suffix(".json.tmp")
        tmp_path.write_text(json.dumps(payload, indent=2) + "\n")
        tmp_path.rename(path)
        print(f"results: {path.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
