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


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
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
