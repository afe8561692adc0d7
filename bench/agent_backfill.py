"""Full backfill of N hub orders into a SQLite replica: the ordersync agent against dlt.

    .venv/bin/python bench/agent_backfill.py                      # N = 1,000,000 for both tools
    .venv/bin/python bench/agent_backfill.py --orders 100000,1000000 --dlt-orders 100000
    .venv/bin/python bench/agent_backfill.py --orders 20000 --dlt-orders 0   # agent only

For each N: a hub database seeded through the real store (cached under bench/.cache/), the hub
started as its own process (`ordersync hub serve`), then each tool in its own process, timed
from spawn to exit, its peak RSS taken from the kernel (`wait4` rusage, plus /proc sampling).
API calls are counted inside the hub by a bench-only ASGI counter (see `_hub_worker`), so both
tools are counted the same way. After each run the replica is compared with the hub row by row
on (id, version): missing, extra, stale and duplicated records are reported.

dlt runs its own `rest_api` source the way its documentation configures it: Bearer auth, the
`updated_since` param bound to an incremental on `updated_at`, an offset paginator with
`total_path`, `data_selector: data`, merge on `id`, into dlt's `sqlalchemy` destination on a
SQLite file. It is a bench-only dependency: `pip install -r bench/requirements.txt`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import glob
import json
import math
import os
import platform
import random
import shutil
import signal
import socket
import sqlite3
import subprocess
import sys
import tempfile
import threading
import time
import urllib.request
from collections.abc import Callable, Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

BENCH_DIR = Path(__file__).resolve().parent
CACHE_DIR = BENCH_DIR / ".cache"
RESULTS_DIR = BENCH_DIR / "results"
PAGE_SIZE = 100
ACCOUNT = "bench"
SEED_SCHEME = "v1"  # bump when the seeded data changes shape: cached hub files are keyed by it
SEED_BATCH = 1000
START_MS = 1_704_067_200_000  # 2024-01-01T00:00:00.000Z
DIALECTS = ("masonhub", "tradecloud", "hubrise")
API_ROOTS = {"masonhub": "/api/v1", "tradecloud": "/v2", "hubrise": "/v1"}
# dlt's rest_api source is configured for the MasonHub listing only.
DLT_DIALECTS = ("masonhub",)
TARGET_SPEEDUP = 10.0
TARGET_CALLS_FACTOR = 1.01
TARGET_RSS_MB = 200.0


# -- seeding -------------------------------------------------------------------------------


class SpreadClock:
    """The hub clock while seeding: a few ms between orders, a quarter of them tied."""

    def __init__(self, start_ms: int, seed: int = 42) -> None:
        self.now = start_ms
        self._rng = random.Random(seed)

    def __call__(self) -> int:
        stamp = self.now
        self.now += self._rng.choices((0, 1, 2, 3, 5), weights=(25, 25, 25, 15, 10))[0]
        return stamp


def seed_payload(i: int) -> dict[str, Any]:
    address = {
        "name": f"Customer {i}",
        "address1": f"{i % 997 + 1} Analytical Row",
        "city": "London",
        "state": "LND",
        "postal_code": "EC1A 1BB",
        "country": "GB",
    }
    return {
        "customer_identifier": f"BENCH-{i:08d}",
        "order_type": "customer",
        "priority": i % 5,
        "shipping_provider": "UPS",
        "shipper_service_level": "ground",
        "shipping_address": address,
        "billing_address": address,
        "submitted_at": "2024-01-01T10:30:00Z",
        "line_items": [
            {
                "sku_customer_identifier": f"SKU-{(i + k) % 500}",
                "quantity": str(1 + (i + k) % 4),
                "unit_price": f"{(i * 7 + k) % 10_000 / 100 + 1:.2f}",
            }
            for k in range(1 + i % 3)
        ],
    }


def hub_db_path(n: int, dialect: str) -> Path:
    return CACHE_DIR / f"hub-{dialect}-{SEED_SCHEME}-{n}.db"


async def _seed(path: Path, n: int) -> None:
    from ordersync.domain import NewOrder
    from ordersync.store.store import Store

    store = await Store.open(f"sqlite:///{path}")
    try:
        principal = await store.authenticate(await store.create_token(ACCOUNT, "seeder"))
        store.clock = SpreadClock(START_MS)
        started = time.monotonic()
        for first in range(0, n, SEED_BATCH):
            batch = [
                NewOrder.model_validate(seed_payload(i))
                for i in range(first, min(n, first + SEED_BATCH))
            ]
            results = await store.create_orders(principal, batch)
            refused = [r for r in results if not r.created]
            if refused:
                raise RuntimeError(f"seeding refused {len(refused)} orders: {refused[0].errors}")
            done = first + len(batch)
            if done % 50_000 == 0 or done == n:
                rate = done / (time.monotonic() - started)
                log(f"  seeded {done:,}/{n:,} orders ({rate:,.0f}/s)")
    finally:
        await store.close()


def ensure_hub_db(n: int, dialect: str) -> Path:
    """The cached hub database with `n` orders, seeded through `Store.create_orders` if absent."""
    path = hub_db_path(n, dialect)
    if path.exists():
        log(f"hub database {path.relative_to(BENCH_DIR.parent)} (cached)")
        return path
    CACHE_DIR.mkdir(parents=True, exist_ok=True)
    partial = path.with_name(path.name + ".partial")
    for leftover in glob.glob(f"{partial}*"):
        os.unlink(leftover)
    log(f"seeding {n:,} orders into {path.relative_to(BENCH_DIR.parent)} ...")
    asyncio.run(_seed(partial, n))
    with contextlib.closing(sqlite3.connect(partial)) as conn:
        conn.execute("PRAGMA wal_checkpoint(TRUNCATE)")
    # The last connection closed: SQLite folded the WAL into the file, which now stands alone.
    os.replace(partial, path)
    return path


def log(message: str) -> None:
    print(message, file=sys.stderr, flush=True)


async def _create_tokens(path: Path, names: list[str]) -> tuple[int, dict[str, str]]:
    """New tokens (only hashes are stored, so each run makes its own) and the account id."""
    from ordersync.store.store import Store

    store = await Store.open(f"sqlite:///{path}")
    try:
        tokens = {name: await store.create_token(ACCOUNT, f"bench-{name}") for name in names}
        account_id = await store.ensure_account(ACCOUNT)
    finally:
        await store.close()
    return account_id, tokens


# -- the hub, with a request counter -------------------------------------------------------


class CallCounter:
    """ASGI middleware: counts API requests by method, path and status; GET /__bench/calls
    returns the counts. A dict increment per request: nothing a client could notice."""

    def __init__(self, app: Any) -> None:
        self.app = app
        self.counts: dict[str, int] = {}

    async def __call__(self, scope: Any, receive: Any, send: Any) -> None:
        if scope["type"] != "http" or not scope["path"].startswith(("/api/", "/v1/", "/v2/")):
            if scope["type"] == "http" and scope["path"] == "/__bench/calls":
                await send(
                    {
                        "type": "http.response.start",
                        "status": 200,
                        "headers": [(b"content-type", b"application/json")],
                    }
                )
                await send({"type": "http.response.body", "body": json.dumps(self.counts).encode()})
                return
            await self.app(scope, receive, send)
            return
        route = f"{scope['method']} {scope['path']}"

        async def counting_send(message: Any) -> None:
            if message["type"] == "http.response.start":
                key = f"{route} {message['status']}"
                self.counts[key] = self.counts.get(key, 0) + 1
            await send(message)

        await self.app(scope, receive, counting_send)


def _hub_worker(argv: list[str]) -> None:
    """`ordersync hub serve ARGV`, its app wrapped in `CallCounter` (the hub logs no access)."""
    from ordersync.cli import app
    from ordersync.hub import serve

    build = serve.create_app

    def counted_app(*args: Any, **kwargs: Any) -> Any:
        return CallCounter(build(*args, **kwargs))

    serve.create_app = counted_app  # type: ignore[assignment]  # one worker: nothing pickled
    app(["hub", "serve", *argv], prog_name="ordersync")


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


def healthy(url: str) -> bool:
    try:
        with urllib.request.urlopen(url, timeout=2) as response:
            return bool(response.status == 200)
    except OSError:
        return False


def http_json(url: str, timeout: float = 5.0) -> Any:
    with urllib.request.urlopen(url, timeout=timeout) as response:
        return json.loads(response.read())


@dataclass
class Hub:
    url: str
    process: subprocess.Popen[bytes]
    sampler: RssSampler
    dialect: str = "masonhub"

    @property
    def api(self) -> str:
        return self.url + API_ROOTS[self.dialect]

    def calls(self) -> dict[str, int]:
        return dict(http_json(f"{self.url}/__bench/calls"))

    def cpu_seconds(self) -> float:
        """User + system CPU the hub process has used so far (from /proc/PID/stat)."""
        with open(f"/proc/{self.process.pid}/stat") as stat:
            fields = stat.read().rpartition(")")[2].split()
        return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")

    def snapshot(self) -> tuple[dict[str, int], float]:
        return self.calls(), self.cpu_seconds()


@contextlib.contextmanager
def running_hub(db: Path, workdir: Path, dialect: str = "masonhub") -> Iterator[Hub]:
    port = free_port()
    command = [sys.executable, __file__, "_hub", "--db", f"sqlite:///{db}", "--port", str(port)]
    # HubRise's quotas (10 listing pages a minute) would measure the quota, not the agent.
    command += ["--quota", "/v1/@heavy=off", "--quota", "/v1/@all=off"]
    # dlt's baseline pages by plain offset through the whole backlog: lift the hub's offset
    # cap (10,000 by default) past any N measured here.
    env = os.environ | {"ORDERSYNC_HUB_MAX_OFFSET": str(2**62)}
    with open(workdir / "hub.log", "wb") as hub_log:
        process = subprocess.Popen(
            command, stdout=hub_log, stderr=subprocess.STDOUT, start_new_session=True, env=env
        )
    url = f"http://127.0.0.1:{port}"
    sampler = RssSampler(process.pid)
    sampler.start()
    try:
        deadline = time.monotonic() + 60
        while True:
            if process.poll() is not None:
                raise RuntimeError(f"hub exited: {(workdir / 'hub.log').read_text()[-2000:]}")
            if healthy(f"{url}/healthz"):
                break
            if time.monotonic() > deadline:
                raise RuntimeError("hub did not answer /healthz within 60 s")
            time.sleep(0.1)
        yield Hub(url, process, sampler, dialect)
    finally:
        sampler.stop()
        if process.poll() is None:
            process.send_signal(signal.SIGINT)
            try:
                process.wait(timeout=20)
            except subprocess.TimeoutExpired:
                process.kill()
                process.wait()


# -- measuring a process -------------------------------------------------------------------


class RssSampler(threading.Thread):
    """Samples the resident set (VmRSS) of a process and all its descendants, summed, from /proc
    a few times per second: the agent's SQLite writer is a child process, and counts."""

    def __init__(self, pid: int, interval: float = 0.25) -> None:
        super().__init__(daemon=True)
        self.pid = pid
        self.interval = interval
        self.started_at = time.monotonic()
        self.samples: list[tuple[float, float]] = []  # (seconds since start, MB)
        self._stop_event = threading.Event()

    def run(self) -> None:
        while not self._stop_event.is_set():
            rss = tree_rss_mb(self.pid)
            if rss is not None:
                self.samples.append((time.monotonic() - self.started_at, rss))
            self._stop_event.wait(self.interval)

    def stop(self) -> None:
        self._stop_event.set()
        self.join(timeout=5)

    @property
    def peak_mb(self) -> float:
        return max((mb for _, mb in self.samples), default=0.0)

    def timeline(self, points: int = 11) -> list[list[float]]:
        """The RSS at evenly spaced moments of the run: [seconds, MB] pairs, for flatness."""
        if not self.samples:
            return []
        step = max(1, len(self.samples) // (points - 1))
        picked = self.samples[::step]
        if picked[-1] != self.samples[-1]:
            picked.append(self.samples[-1])
        return [[round(t, 1), round(mb, 1)] for t, mb in picked]


def descendants(pid: int) -> list[int]:
    found, queue = [], [pid]
    while queue:
        parent = queue.pop()
        for children in glob.glob(f"/proc/{parent}/task/*/children"):
            with contextlib.suppress(OSError), open(children) as listing:
                for child in listing.read().split():
                    found.append(int(child))
                    queue.append(int(child))
    return found


def tree_rss_mb(pid: int) -> float | None:
    """The RSS of `pid` and its descendants, summed; None once `pid` is gone."""
    own = read_rss_mb(pid)
    if own is None:
        return None
    return own + sum(read_rss_mb(child) or 0.0 for child in descendants(pid))


def read_rss_mb(pid: int) -> float | None:
    try:
        with open(f"/proc/{pid}/status") as status:
            for line in status:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except (FileNotFoundError, ProcessLookupError):
        return None
    return None


@dataclass
class Measured:
    returncode: int
    seconds: float
    peak_rss_mb: float  # the kernel's high-water mark of its largest process (wait4 ru_maxrss)
    cpu_seconds: float  # user + system, from the same rusage
    sampled_peak_rss_mb: float  # the process and its descendants, summed
    rss_timeline: list[list[float]]
    stdout: str
    log_tail: str
    log_path: str


PY_SPY: str | None = None  # --py-spy: profile each tool and the hub while it serves it


def start_py_spy(pid: int, output: Path) -> subprocess.Popen[bytes] | None:
    if PY_SPY is None:
        return None
    command = [
        PY_SPY,
        "record",
        "--pid",
        str(pid),
        "--rate",
        "50",
        "--nonblocking",
        "--format",
        "raw",
        "--output",
        str(output),
    ]
    return subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)


def stop_py_spy(profiler: subprocess.Popen[bytes] | None) -> None:
    if profiler is None:
        return
    if profiler.poll() is None:
        profiler.send_signal(signal.SIGINT)  # py-spy writes its output on SIGINT
    try:
        profiler.wait(timeout=30)
    except subprocess.TimeoutExpired:
        profiler.kill()


def summarize_profile(path: Path, top: int = 15) -> dict[str, list[list[Any]]]:
    """The hottest frames of py-spy's collapsed stacks: share of samples, self and inclusive."""
    own: dict[str, int] = {}
    inclusive: dict[str, int] = {}
    total = 0
    with contextlib.suppress(FileNotFoundError):
        for line in path.read_text().splitlines():
            stack, _, count = line.rpartition(" ")
            if not stack or not count.isdigit():
                continue
            samples, frames = int(count), stack.split(";")
            total += samples
            own[frames[-1]] = own.get(frames[-1], 0) + samples
            for frame in set(frames):
                inclusive[frame] = inclusive.get(frame, 0) + samples

    def ranked(counts: dict[str, int], keep: Callable[[str], bool]) -> list[list[Any]]:
        best = sorted(((n, f) for f, n in counts.items() if keep(f)), reverse=True)[:top]
        return [[round(n / total, 3), f] for n, f in best]

    if not total:
        return {}
    return {
        "self": ranked(own, lambda f: True),
        "inclusive_ordersync": ranked(inclusive, lambda f: "ordersync/" in f),
    }


def run_measured(
    command: list[str],
    *,
    env: dict[str, str],
    cwd: Path,
    log_path: Path,
    timeout: float,
    hub_pid: int | None = None,
) -> Measured:
    """Run one tool in its own process; its wall time and its own peak RSS (not the hub's)."""
    stdout_path = log_path.with_suffix(".stdout")
    with open(stdout_path, "wb") as out, open(log_path, "wb") as err:
        started = time.monotonic()
        process = subprocess.Popen(
            command, stdout=out, stderr=err, env=env, cwd=cwd, start_new_session=True
        )
    profilers = [start_py_spy(process.pid, log_path.with_suffix(".pyspy"))]
    if hub_pid is not None:
        profilers.append(start_py_spy(hub_pid, log_path.with_suffix(".hub.pyspy")))
    sampler = RssSampler(process.pid)
    sampler.start()
    timer = threading.Timer(timeout, lambda: os.killpg(process.pid, signal.SIGKILL))
    timer.start()
    try:
        # wait4, not Popen.wait: it hands back this child's own rusage, whose ru_maxrss is
        # the kernel's exact peak for the process (RUSAGE_CHILDREN would mix in the hub).
        _, status, usage = os.wait4(process.pid, 0)
    finally:
        timer.cancel()
        seconds = time.monotonic() - started
        sampler.stop()
    for profiler in profilers:
        stop_py_spy(profiler)
    process.returncode = os.waitstatus_to_exitcode(status)
    log_tail = log_path.read_text(errors="replace")[-3000:]
    return Measured(
        process.returncode,
        seconds,
        usage.ru_maxrss / 1024,
        usage.ru_utime + usage.ru_stime,
        sampler.peak_mb,
        sampler.timeline(),
        stdout_path.read_text(errors="replace"),
        log_tail,
        str(log_path),
    )


# -- dlt -----------------------------------------------------------------------------------


DLT_MISSING = (
    "dlt is not installed: it is a bench-only dependency, not one of ordersync's.\n"
    "  .venv/bin/pip install -r bench/requirements.txt\n"
    "or skip the comparison with --dlt-orders 0."
)


def dlt_version() -> str | None:
    try:
        from importlib.metadata import version

        return version("dlt")
    except Exception:
        return None


def dlt_source_config(api_base: str, token: str) -> dict[str, Any]:
    """The rest_api source as dlt's documentation writes it for an offset-paged, `updated_since`
    filtered endpoint: nothing tuned for this bench."""
    return {
        "client": {
            "base_url": api_base + "/",
            "auth": {"type": "bearer", "token": token},
            "paginator": {
                "type": "offset",
                "limit": PAGE_SIZE,
                "offset_param": "offset",
                "limit_param": "limit",
                "total_path": "total",
            },
        },
        "resource_defaults": {"primary_key": "id", "write_disposition": "merge"},
        "resources": [
            {
                "name": "orders",
                "endpoint": {
                    "path": "orders",
                    "data_selector": "data",
                    "params": {
                        "updated_since": {
                            "type": "incremental",
                            "cursor_path": "updated_at",
                            "initial_value": "1970-01-01T00:00:00.000Z",
                        },
                    },
                },
            }
        ],
    }


# SQLite takes one writer at a time. With dlt's default of 20 parallel load jobs, its load of
# 1,000,000 orders failed twice here with "database is locked" (results ...T230834Z and
# ...T233244Z); one load worker is the setting a dlt user would reach for.
DLT_LOAD_WORKERS = "1"


def _dlt_worker(argv: list[str]) -> None:
    """One dlt pipeline run, in its own process; prints a JSON summary on its last line."""
    parser = argparse.ArgumentParser(prog="agent_backfill.py _dlt")
    parser.add_argument("--api", required=True)
    parser.add_argument("--token", required=True)
    parser.add_argument("--dest", required=True, type=Path)
    args = parser.parse_args(argv)
    os.environ.setdefault("LOAD__WORKERS", DLT_LOAD_WORKERS)
    started = time.monotonic()
    import dlt
    from dlt.sources.rest_api import rest_api_source

    imported = time.monotonic()
    pipeline = dlt.pipeline(
        pipeline_name="bench_orders",
        destination=dlt.destinations.sqlalchemy(f"sqlite:///{args.dest}"),
        dataset_name="replica",
        pipelines_dir=str(args.dest.parent / "dlt-pipelines"),
    )
    pipeline.run(rest_api_source(dlt_source_config(args.api, args.token)))
    steps = {
        step.step: round((step.finished_at - step.started_at).total_seconds(), 2)
        for step in pipeline.last_trace.steps
        if step.finished_at is not None
    }
    print(
        json.dumps(
            {
                "import_seconds": round(imported - started, 2),
                "run_seconds": round(time.monotonic() - imported, 2),
                "steps": steps,
            }
        )
    )


def find_dlt_table(dest_dir: Path) -> tuple[Path, str]:
    """dlt's sqlalchemy destination on SQLite keeps each dataset in its own file,
    `<db>__<dataset>.db` (and a `_staging` one for merges): find the final `orders`."""
    candidates = [p for p in sorted(dest_dir.glob("*.db")) if "_staging" not in p.name]
    for candidate in candidates:
        with contextlib.closing(sqlite3.connect(f"file:{candidate}?mode=ro", uri=True)) as conn:
            found = conn.execute(
                "SELECT name FROM sqlite_master WHERE type = 'table' AND name = 'orders'"
            ).fetchone()
        if found:
            return candidate, "orders"
    raise FileNotFoundError(f"no table `orders` in any SQLite file under {dest_dir}")


# -- verification --------------------------------------------------------------------------


@dataclass
class Verdict:
    expected: int
    rows: int
    distinct_ids: int
    missing: int
    extra: int
    stale: int

    @property
    def correct(self) -> bool:
        return (
            self.rows == self.distinct_ids == self.expected
            and self.missing == self.extra == self.stale == 0
        )

    def describe(self) -> str:
        if self.correct:
            return "yes"
        problems = [f"{self.rows:,} rows / {self.distinct_ids:,} ids for {self.expected:,}"]
        problems += [
            f"{v:,} {k}"
            for k, v in (("missing", self.missing), ("extra", self.extra), ("stale", self.stale))
            if v
        ]
        duplicated = self.rows - self.distinct_ids
        if duplicated:
            problems.append(f"{duplicated:,} duplicated")
        return "NO: " + ", ".join(problems)


def verify_replica(
    hub_db: Path,
    account_id: int,
    replica_db: Path,
    table: str,
    id_column: str = "id",
    version_column: str = "version",
) -> Verdict:
    """Compare the replica with the hub on (id, version), in SQL: set differences, no dicts."""
    with contextlib.closing(sqlite3.connect(f"file:{hub_db}?mode=ro", uri=True)) as conn:
        conn.execute("ATTACH DATABASE ? AS replica", (f"file:{replica_db}?mode=ro",))
        hub = f"SELECT id, version FROM main.orders WHERE account_id = {int(account_id)}"
        mirror = f'SELECT "{id_column}", "{version_column}" FROM replica."{table}"'
        hub_ids = f"SELECT id FROM main.orders WHERE account_id = {int(account_id)}"
        mirror_ids = f'SELECT "{id_column}" FROM replica."{table}"'

        def count(sql: str) -> int:
            return int(conn.execute(f"SELECT count(*) FROM ({sql})").fetchone()[0])

        expected = count(hub_ids)
        rows = count(mirror_ids)
        distinct_ids = count(f"SELECT DISTINCT {mirror_ids[7:]}")
        missing = count(f"{hub_ids} EXCEPT {mirror_ids}")
        extra = count(f"{mirror_ids} EXCEPT {hub_ids}")
        stale = count(f"{hub} EXCEPT {mirror}") - missing
    return Verdict(expected, rows, distinct_ids, missing, extra, stale)


# -- one tool, one size --------------------------------------------------------------------


@dataclass
class Result:
    tool: str
    n: int
    seconds: float
    records_per_s: float
    api_calls: int
    calls_per_page: float  # API calls / ceil(N / 100)
    peak_rss_mb: float
    cpu_seconds: float  # the tool's own user + system CPU
    hub_cpu_seconds: float  # the hub's, during this tool's run
    correct: bool
    verdict: str
    calls_by_route: dict[str, int] = field(default_factory=dict)
    rss_timeline: list[list[float]] = field(default_factory=list)
    hub_peak_rss_mb: float = 0.0
    details: dict[str, Any] = field(default_factory=dict)


def tool_env(workdir: Path) -> dict[str, str]:
    env = dict(os.environ)
    env.update(
        {
            "PYTHONUNBUFFERED": "1",
            # dlt: no telemetry call home, no config picked up from the repository
            "RUNTIME__DLTHUB_TELEMETRY": "false",
            "RUNTIME__LOG_LEVEL": "WARNING",
            "DLT_DATA_DIR": str(workdir / "dlt-data"),
        }
    )
    return env


def diff_calls(before: dict[str, int], after: dict[str, int]) -> dict[str, int]:
    return {
        k: after.get(k, 0) - before.get(k, 0)
        for k in sorted(after)
        if after.get(k, 0) != before.get(k, 0)
    }


def finish(
    tool: str,
    n: int,
    hub: Hub,
    before: tuple[dict[str, int], float],
    measured: Measured,
    verdict: Verdict | None,
    details: dict[str, Any],
) -> Result:
    calls = diff_calls(before[0], hub.calls())
    hub_cpu = hub.cpu_seconds() - before[1]
    api_calls = sum(calls.values())
    result = Result(
        tool=tool,
        n=n,
        seconds=round(measured.seconds, 2),
        records_per_s=round(n / measured.seconds, 1) if measured.returncode == 0 else 0.0,
        api_calls=api_calls,
        calls_per_page=round(api_calls / math.ceil(n / PAGE_SIZE), 4),
        # The larger of the sampled sum over the tool's processes (the agent and its writer) and
        # the kernel's exact peak of its largest process (which a 0.25 s sample could miss).
        peak_rss_mb=round(max(measured.peak_rss_mb, measured.sampled_peak_rss_mb), 1),
        cpu_seconds=round(measured.cpu_seconds, 1),
        hub_cpu_seconds=round(hub_cpu, 1),
        correct=verdict is not None and verdict.correct,
        verdict=verdict.describe() if verdict else f"FAILED (exit {measured.returncode})",
        calls_by_route=calls,
        rss_timeline=measured.rss_timeline,
        hub_peak_rss_mb=round(hub.sampler.peak_mb, 1),
        details={
            "sampled_peak_rss_mb": round(measured.sampled_peak_rss_mb, 1),
            "largest_process_peak_rss_mb": round(measured.peak_rss_mb, 1),
            "exit_code": measured.returncode,
            **details,
        },
    )
    if verdict is not None:
        result.details["verify"] = asdict(verdict)
    if PY_SPY is not None:
        result.details["profiled_with_py_spy"] = True  # slower than an unprofiled run
        tool_log = Path(measured.log_path)
        result.details["profile"] = summarize_profile(tool_log.with_suffix(".pyspy"))
        result.details["hub_profile"] = summarize_profile(tool_log.with_suffix(".hub.pyspy"))
    if measured.returncode != 0:
        log(f"  {tool} exited {measured.returncode}; last log lines:\n{measured.log_tail}")
    return result


def run_dlt(
    n: int, hub: Hub, token: str, hub_db: Path, account_id: int, workdir: Path, timeout: float
) -> Result:
    dest_dir = workdir / "dlt"
    dest_dir.mkdir()
    before = hub.snapshot()
    log(f"  dlt rest_api backfill of {n:,} orders ...")
    measured = run_measured(
        [
            sys.executable,
            __file__,
            "_dlt",
            "--api",
            hub.api,
            "--token",
            token,
            "--dest",
            str(dest_dir / "replica.db"),
        ],
        env=tool_env(workdir),
        cwd=dest_dir,
        log_path=workdir / "dlt.log",
        timeout=timeout,
        hub_pid=hub.process.pid,
    )
    details: dict[str, Any] = {
        "dlt_version": dlt_version(),
        "destination": "sqlalchemy (sqlite)",
        "load_workers": os.environ.get("LOAD__WORKERS", DLT_LOAD_WORKERS),
    }
    lines = measured.stdout.strip().splitlines()
    with contextlib.suppress(ValueError, IndexError):
        details.update(json.loads(lines[-1]))
    verdict = None
    if measured.returncode == 0:
        replica, table = find_dlt_table(dest_dir)
        verdict = verify_replica(hub_db, account_id, replica, table)
        details["replica_bytes"] = sum(p.stat().st_size for p in dest_dir.glob("*.db"))
    return finish("dlt rest_api", n, hub, before, measured, verdict, details)


# -- the ordersync agent -------------------------------------------------------------------


AGENT_CONFIG = """\
# Written by bench/agent_backfill.py: one source, orders only, into a fresh SQLite replica.
[[sources]]
name = "bench"
dialect = "{dialect}"
base_url = "{api}"
token_env = "BENCH_AGENT_TOKEN"
connection_name = "bench-agent"
page_size = {page_size}
streams = ["orders"]

[sink]
url = "sqlite:///{replica}"
"""


def agent_command(driver: str, config: Path, api: str, dialect: str, replica: Path) -> list[str]:
    if driver == "cli":
        ordersync = Path(sys.executable).with_name("ordersync")
        return [str(ordersync), "agent", "run", "--config", str(config), "--once"]
    return [
        sys.executable,
        __file__,
        "_agent",
        "--api",
        api,
        "--dialect",
        dialect,
        "--replica",
        str(replica),
    ]


def run_agent(
    n: int,
    hub: Hub,
    token: str,
    hub_db: Path,
    account_id: int,
    workdir: Path,
    timeout: float,
    dialect: str,
    driver: str,
) -> Result:
    replica = workdir / "agent-replica.db"
    config = workdir / "agent.toml"
    config.write_text(
        AGENT_CONFIG.format(dialect=dialect, api=hub.api, page_size=PAGE_SIZE, replica=replica)
    )
    before = hub.snapshot()
    log(f"  ordersync agent backfill of {n:,} orders ({driver}) ...")
    measured = run_measured(
        agent_command(driver, config, hub.api, dialect, replica),
        env=tool_env(workdir) | {"BENCH_AGENT_TOKEN": token},
        cwd=workdir,
        log_path=workdir / "agent.log",
        timeout=timeout,
        hub_pid=hub.process.pid,
    )
    details: dict[str, Any] = {
        "driver": "ordersync agent run --once"
        if driver == "cli"
        else "runner.build_engine(...).run_cycle() (Python API)",
    }
    lines = measured.stdout.strip().splitlines()
    with contextlib.suppress(ValueError, IndexError):
        details.update(json.loads(lines[-1]))
    details.update(agent_log_counts(Path(measured.log_path)))
    verdict = None
    if measured.returncode == 0:
        verdict = verify_replica(hub_db, account_id, replica, "orders")
        details["replica_bytes"] = replica.stat().st_size
    return finish("ordersync agent", n, hub, before, measured, verdict, details)


def agent_log_counts(path: Path) -> dict[str, Any]:
    """What the agent's own JSON log says: API calls (one line each) and records returned."""
    calls = records = 0
    events: dict[str, int] = {}
    with contextlib.suppress(FileNotFoundError), open(path, "rb") as lines:
        for line in lines:
            if not line.startswith(b"{"):
                continue
            with contextlib.suppress(ValueError):
                entry = json.loads(line)
                event = str(entry.get("event"))
                events[event] = events.get(event, 0) + 1
                if event == "api_call":
                    calls += 1
                    records += int(entry.get("records_returned") or 0)
    if not events:
        return {}
    return {"logged_api_calls": calls, "logged_records_returned": records, "log_events": events}


def _agent_worker(argv: list[str]) -> None:
    """One full drain of the orders stream into a fresh SQLite replica, in its own process:
    the engine, source, client and SQL sink wired the way `ordersync agent run` wires them."""
    parser = argparse.ArgumentParser(prog="agent_backfill.py _agent")
    parser.add_argument("--api", required=True)
    parser.add_argument("--dialect", default="masonhub")
    parser.add_argument("--replica", required=True, type=Path)
    args = parser.parse_args(argv)
    asyncio.run(
        _agent_backfill(args.api, os.environ["BENCH_AGENT_TOKEN"], args.replica, args.dialect)
    )


async def _agent_backfill(api: str, token: str, replica: Path, dialect: str) -> None:
    import httpx

    from ordersync.agent.config import SourceConfig
    from ordersync.agent.metrics import AgentMetrics
    from ordersync.agent.runner import build_engine
    from ordersync.agent.sinks.sql import SqlSink
    from ordersync.logs import configure_logging

    configure_logging("json")  # as `ordersync agent run` does: one JSON line per API call
    started = time.monotonic()
    sink = await SqlSink.open(f"sqlite:///{replica}")
    config = SourceConfig(
        name="bench",
        dialect=dialect,  # type: ignore[arg-type]
        base_url=api,
        token_env="BENCH_AGENT_TOKEN",
        connection_name="bench-agent",
        page_size=PAGE_SIZE,
        streams=["orders"],
    )
    async with httpx.AsyncClient(timeout=30.0) as http:
        engine = build_engine(config, token, http, sink, AgentMetrics())
        try:
            counts = await engine.run_cycle()
        finally:
            await sink.close()
    summary = {"run_seconds": round(time.monotonic() - started, 2), **asdict(counts)}
    print(json.dumps(summary))


# -- report --------------------------------------------------------------------------------


COLUMNS = (
    "tool",
    "N",
    "seconds",
    "records/s",
    "API calls",
    "calls/ceil(N/100)",
    "peak RSS MB",
    "correct?",
    "CPU s tool+hub",
)


def table_rows(results: list[Result]) -> list[tuple[str, ...]]:
    return [
        (
            r.tool,
            f"{r.n:,}",
            f"{r.seconds:,.1f}",
            f"{r.records_per_s:,.0f}",
            f"{r.api_calls:,}",
            f"{r.calls_per_page:.4f}",
            f"{r.peak_rss_mb:,.1f}",
            r.verdict,
            f"{r.cpu_seconds:,.1f}+{r.hub_cpu_seconds:,.1f}",
        )
        for r in results
    ]


def render_table(results: list[Result]) -> str:
    rows = [COLUMNS, *table_rows(results)]
    widths = [max(len(row[i]) for row in rows) for i in range(len(COLUMNS))]
    lines = [" | ".join(cell.ljust(w) for cell, w in zip(row, widths, strict=True)) for row in rows]
    lines.insert(1, "-+-".join("-" * w for w in widths))
    return "\n".join(lines)


def assess(results: list[Result]) -> dict[str, Any]:
    """The issue's targets, checked against what ran."""
    agents = {r.n: r for r in results if r.tool.startswith("ordersync")}
    dlts = {r.n: r for r in results if r.tool.startswith("dlt")}
    out: dict[str, Any] = {"ratios": []}
    for n, agent in sorted(agents.items()):
        # Same N when dlt ran it; otherwise dlt's largest N (its rate only falls as N grows,
        # so comparing with a smaller dlt run favours dlt).
        peer = dlts.get(n) or (dlts[max(dlts)] if dlts else None)
        if peer is None or not peer.records_per_s:
            continue
        out["ratios"].append(
            {
                "agent_n": n,
                "dlt_n": peer.n,
                "ratio": round(agent.records_per_s / peer.records_per_s, 2),
                # Contention-proof: records per CPU second of tool + hub, wall time aside.
                "cpu_ratio": round(
                    (agent.n / max(agent.cpu_seconds + agent.hub_cpu_seconds, 1e-9))
                    / (peer.n / max(peer.cpu_seconds + peer.hub_cpu_seconds, 1e-9)),
                    2,
                ),
            }
        )
    checks: dict[str, bool] = {}
    for x in out["ratios"]:  # one verdict per agent N: the N is 1,000,000
        n = f"{x['agent_n']:,}" + ("" if x["dlt_n"] == x["agent_n"] else f" (dlt {x['dlt_n']:,})")
        checks[f"records/s >= {TARGET_SPEEDUP:g}x dlt at N={n}"] = x["ratio"] >= TARGET_SPEEDUP
    if agents:
        checks[f"API calls <= {TARGET_CALLS_FACTOR} x ceil(N/100)"] = all(
            a.calls_per_page <= TARGET_CALLS_FACTOR for a in agents.values()
        )
        checks[f"peak RSS <= {TARGET_RSS_MB:g} MB"] = all(
            0 < a.peak_rss_mb <= TARGET_RSS_MB for a in agents.values()
        )
        checks["replica == hub"] = all(a.correct for a in agents.values())
        if len(agents) > 1:
            low, high = agents[min(agents)], agents[max(agents)]
            growth = high.peak_rss_mb / low.peak_rss_mb if low.peak_rss_mb else float("inf")
            out["rss_growth"] = {"from_n": low.n, "to_n": high.n, "factor": round(growth, 3)}
            # "Flat": 10x or more the orders for at most +25 % of resident memory.
            checks["peak RSS flat as N grows (<= 1.25x)"] = growth <= 1.25
    out["checks"] = checks
    return out


def save_results(payload: dict[str, Any], stamp: str) -> Path:
    RESULTS_DIR.mkdir(parents=True, exist_ok=True)
    path = RESULTS_DIR / f"agent_backfill-{stamp}.json"
    partial = path.with_suffix(".json.tmp")
    partial.write_text(json.dumps(payload, indent=2) + "\n")
    os.replace(partial, path)
    return path


def environment() -> dict[str, Any]:
    from importlib.metadata import version

    return {
        "python": platform.python_version(),
        "platform": platform.platform(),
        "cpus": os.cpu_count(),
        "ordersync": version("ordersync"),
        "dlt": dlt_version(),
        "sqlite": sqlite3.sqlite_version,
        "loadavg_at_start": os.getloadavg(),
    }


# -- main ----------------------------------------------------------------------------------


def sizes(text: str) -> list[int]:
    values = [int(float(part.replace("_", ""))) for part in text.split(",") if part.strip()]
    if any(v < 0 for v in values):
        raise argparse.ArgumentTypeError("sizes are non-negative integers")
    return [v for v in values if v > 0]


def parse_args(argv: list[str]) -> argparse.Namespace:
    parser = argparse.ArgumentParser(
        description="Full backfill of N hub orders into SQLite: the ordersync agent vs dlt."
    )
    parser.add_argument(
        "--orders",
        type=sizes,
        default=[1_000_000],
        metavar="N[,N...]",
        help="orders on the hub for the agent runs (default 1000000); "
        "several sizes show whether peak RSS stays flat",
    )
    parser.add_argument(
        "--dlt-orders",
        type=sizes,
        default=None,
        metavar="N[,N...]",
        help="sizes for the dlt runs (default: same as --orders; 0 = skip). "
        "dlt is slow: a smaller N keeps the run short",
    )
    parser.add_argument(
        "--dialect",
        choices=DIALECTS,
        default="masonhub",
        help="the hub dialect the agent reads: masonhub (/api/v1), tradecloud (/v2) or "
        "hubrise (/v1, backfill + callback; the hub's quotas are turned off); dlt runs on "
        "masonhub only",
    )
    parser.add_argument(
        "--timeout",
        type=float,
        default=3600.0,
        help="seconds before one tool's run is killed (default 3600)",
    )
    parser.add_argument(
        "--keep",
        action="store_true",
        help="keep the replicas and logs (printed path) instead of deleting",
    )
    parser.add_argument(
        "--agent-driver",
        choices=("cli", "api"),
        default="cli",
        help="cli: `ordersync agent run --config FILE --once` (default); api: the same engine, "
        "source and SQL sink built in a small Python driver",
    )
    parser.add_argument(
        "--py-spy",
        metavar="PATH",
        help="profile each tool and the hub with this py-spy binary (slows the runs: use it "
        "for a separate profiling run, not for the numbers); with --keep the raw stacks stay",
    )
    args = parser.parse_args(argv)
    if args.dlt_orders is None:
        args.dlt_orders = list(args.orders) if args.dialect in DLT_DIALECTS else []
    if args.dlt_orders and args.dialect not in DLT_DIALECTS:
        parser.error(f"--dialect {args.dialect}: dlt runs on masonhub only; add --dlt-orders 0")
    return args


def main(argv: list[str]) -> int:
    args = parse_args(argv)
    global PY_SPY
    PY_SPY = args.py_spy
    if args.dlt_orders and dlt_version() is None:
        log(DLT_MISSING)
        return 2
    stamp = dt.datetime.now(dt.UTC).strftime("%Y-%m-%dT%H%M%SZ")
    payload: dict[str, Any] = {
        "bench": "agent_backfill",
        "started": stamp,
        "args": {k: v for k, v in vars(args).items()},
        "environment": environment(),
        "results": [],
    }
    results: list[Result] = []
    workroot = Path(tempfile.mkdtemp(prefix="agent_backfill-"))
    try:
        for n in sorted(set(args.orders) | set(args.dlt_orders)):
            hub_db = ensure_hub_db(n, args.dialect)
            account_id, tokens = asyncio.run(_create_tokens(hub_db, ["agent", "dlt"]))
            workdir = workroot / f"n{n}"
            workdir.mkdir()
            with running_hub(hub_db, workdir, args.dialect) as hub:
                log(f"N = {n:,}: hub at {hub.url} (pid {hub.process.pid})")
                for tool in ("agent", "dlt"):
                    if n not in (args.orders if tool == "agent" else args.dlt_orders):
                        continue
                    if tool == "agent":
                        result = run_agent(
                            n,
                            hub,
                            tokens["agent"],
                            hub_db,
                            account_id,
                            workdir,
                            args.timeout,
                            args.dialect,
                            args.agent_driver,
                        )
                    else:
                        result = run_dlt(
                            n, hub, tokens["dlt"], hub_db, account_id, workdir, args.timeout
                        )
                    results.append(result)
                    log(render_table([result]).splitlines()[-1])
                    payload["results"] = [asdict(r) for r in results]
                    save_results(payload, stamp)
    finally:
        if args.keep:
            log(f"replicas and logs kept in {workroot}")
        else:
            shutil.rmtree(workroot, ignore_errors=True)
    payload["assessment"] = assess(results)
    path = save_results(payload, stamp)
    print(render_table(results))
    for ratio in payload["assessment"]["ratios"]:
        note = "" if ratio["agent_n"] == ratio["dlt_n"] else f" (dlt at N={ratio['dlt_n']:,})"
        print(
            f"agent/dlt records/s at N={ratio['agent_n']:,}: {ratio['ratio']:.1f}x{note}; "
            f"records per CPU second (tool + hub): {ratio['cpu_ratio']:.1f}x"
        )
    if "rss_growth" in payload["assessment"]:
        g = payload["assessment"]["rss_growth"]
        print(f"agent peak RSS N={g['from_n']:,} -> N={g['to_n']:,}: x{g['factor']:.2f}")
    for check, ok in payload["assessment"]["checks"].items():
        print(f"[{'PASS' if ok else 'FAIL'}] {check}")
    print(f"results: {path.relative_to(BENCH_DIR.parent)}")
    return 0 if all(payload["assessment"]["checks"].values()) else 1


if __name__ == "__main__":
    workers = {"_hub": _hub_worker, "_dlt": _dlt_worker, "_agent": _agent_worker}
    if len(sys.argv) > 1 and sys.argv[1] in workers:
        workers[sys.argv[1]](sys.argv[2:])
    else:
        sys.exit(main(sys.argv[1:]))
