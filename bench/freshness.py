"""Freshness: how long after a change commits on the hub the agent's replica holds it, by
webhook versus by polling every 5 s; and webhook delivery throughput per worker on PostgreSQL.

    ORDERSYNC_TEST_PG=postgresql://postgres@127.0.0.1:5432/test \
        PYTHONPATH=src:. .venv/bin/python bench/freshness.py \
        [--backend sqlite|postgresql|both] [--seconds 30] [--rate 50] [--poll-interval 5]
        [--throughput 1000] [--baseline results/freshness-....json] [--no-save]

For each backend and each path:

1. a fresh hub database, `ordersync hub serve` as its own process (webhook delivery on, the
   HubRise quota off so that the writer is never throttled);
2. the agent in this process, as `agent run` builds it, with its HTTP port served (the
   receiver): path `webhooks` subscribes it on the hub (a MasonHub `orderEvent` callback) and
   polls only every 60 s (so what is applied sooner came by webhook; the stream that applied
   each version is counted); path `poll` has no subscription and polls every `--poll-interval`;
3. a writer in its own process: `--rate` changes per second for `--seconds`, one in five a new
   order (MasonHub `POST /orders`), the others a status move of an earlier order (HubRise
   `PATCH /location/orders/{id}`), each order moved again only after its previous change
   answered;
4. once the writer stops, the agent runs until the replica holds every version (or 60 s).

Commit time: the change's stamp in the hub's `changes` table (taken inside the write
transaction, so a little before its commit: the figures err long). Applied time: when the
agent's commit of the batch holding that version (or a later one of the entity) returned,
on the same machine's wall clock. Latency per (id, version) is the difference; a version
superseded before the agent saw it counts as applied when a later one was.

Throughput (PostgreSQL): `--throughput` orders made at once, then delivered to a receiver on
127.0.0.1 by 1, then 2 delivery workers (bench/webhook_delivery.py): deliveries/s and per
worker.

Prints the figures side by side (and, with `--baseline`, the baseline run's beside them) and
keeps them in `bench/results/freshness-<UTC time>.json`.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import datetime as dt
import json
import multiprocessing
import os
import statistics
import subprocess
import sys
import tempfile
import time
from collections.abc import Iterator
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any

import httpx

BENCH_DIR = Path(__file__).resolve().parent
RESULTS_DIR = BENCH_DIR / "results"
ADMIN = os.environ.get("ORDERSYNC_TEST_PG", "postgresql://postgres@127.0.0.1:5432/test")
ACCOUNT = "bench"
AGENT = "erp-agent"
WRITER = "warehouse"
HUBRISE_MOVES = ("received", "in_preparation", "awaiting_shipment", "in_delivery", "completed")
TARGET_P99_MS = 250.0
WEBHOOK_POLL_S = 60.0  # the webhook path's reconciliation poll: slower than the run


@dataclass
class PathRun:
    backend: str
    path: str  # webhooks | poll
    seconds: float
    changes: int  # versions the writer made
    rate: float  # achieved changes/s
    applied_by_webhook: int
    applied_by_poll: int
    missing: int  # versions never applied (0 expected)
    p50_ms: float
    p90_ms: float
    p99_ms: float
    max_ms: float
    agent_cpu_s: float
    load_avg: list[float] = field(default_factory=list)
    # The webhook path split at the receiver: hub commit -> stored in the agent's inbox, and
    # stored -> applied (p50, p99 ms).
    hub_p50_ms: float = float("nan")
    hub_p99_ms: float = float("nan")
    agent_p50_ms: float = float("nan")
    agent_p99_ms: float = float("nan")
    hub_cpu_s: float = float("nan")  # the hub process, over the run (writes, deliveries, reads)


@dataclass
class Throughput:
    workers: int
    deliveries: int
    distinct: int
    seconds: float

    @property
    def rate(self) -> float:
        return self.deliveries / self.seconds

    @property
    def per_worker(self) -> float:
        return self.rate / self.workers


# -- the writer (its own process) ------------------------------------------------------------


def _writer_main(base: str, token: str, rate: float, seconds: float, out: Any) -> None:
    try:
        out.put(asyncio.run(_write(base, token, rate, seconds)))
    except BaseException as exc:
        out.put(repr(exc))
        raise


async def _write(base: str, token: str, rate: float, seconds: float) -> tuple[int, float]:
    """`rate` changes/s for `seconds`: creates (1 in 5) and status moves; (changes, seconds)."""
    from tests.support import order_payload

    ready: list[tuple[str, int]] = []  # (order id, next move) not being written
    inflight: set[asyncio.Task[None]] = set()
    made = 0
    async with httpx.AsyncClient(base_url=base, timeout=30) as http:
        mason = {"Authorization": f"Bearer {token}"}
        hubrise = {"X-Access-Token": token}

        async def create(n: int) -> None:
            nonlocal made
            answer = await http.post(
                "/api/v1/orders", json=[order_payload(f"F-{n}")], headers=mason
            )
            answer.raise_for_status()
            made += 1
            ready.append((str(answer.json()["data"][0]["id"]), 0))

        async def move(order_id: str, step: int) -> None:
            nonlocal made
            answer = await http.patch(
                f"/v1/location/orders/{order_id}",
                json={"status": HUBRISE_MOVES[step]},
                headers=hubrise,
            )
            answer.raise_for_status()
            made += 1
            if step + 1 < len(HUBRISE_MOVES):
                ready.append((order_id, step + 1))

        started = time.monotonic()
        tick = 0
        while (now := time.monotonic() - started) < seconds:
            due = tick / rate
            if due > now:
                await asyncio.sleep(due - now)
            job = create(tick) if tick % 5 == 0 or not ready else move(*ready.pop(0))
            task = asyncio.ensure_future(job)
            inflight.add(task)
            task.add_done_callback(inflight.discard)
            tick += 1
        if inflight:
            await asyncio.gather(*inflight)
        return made, time.monotonic() - started


# -- one path on one backend -----------------------------------------------------------------


@contextlib.contextmanager
def _hub_database(backend: str) -> Iterator[str]:
    if backend == "postgresql":
        from tests.support import fresh_pg_database

        with fresh_pg_database(ADMIN) as url:
            yield url
    else:
        with tempfile.TemporaryDirectory(prefix="freshness-") as tmp:
            yield f"sqlite:///{tmp}/hub.db"


async def _tokens(db: str) -> tuple[str, str, int]:
    from ordersync.store.store import Store

    store = await Store.open(db)
    try:
        agent = await store.create_token(ACCOUNT, AGENT)
        writer = await store.create_token(ACCOUNT, WRITER)
        account_id = (await store.authenticate(agent)).account_id
        return agent, writer, account_id
    finally:
        await store.close()


async def _changes(db: str, account_id: int) -> dict[tuple[str, str, int], int]:
    """Every version on the hub: (kind, id, version) -> its stamp (ms)."""
    from sqlalchemy import select

    from ordersync.store.store import Store
    from ordersync.store.tables import changes

    store = await Store.open(db, migrate=False)
    try:
        c = changes.c
        async with store.reader.connect() as conn:
            rows = await conn.execute(
                select(c.entity_kind, c.entity_id, c.version, c.created_at).where(
                    c.account_id == account_id
                )
            )
            return {(str(k), str(i), int(v)): int(at) for k, i, v, at in rows}
    finally:
        await store.close()


@contextlib.contextmanager
def _hub(db: str) -> Iterator[tuple[str, int]]:
    """`ordersync hub serve` on a free port (the HubRise quota off, quiet log): its base URL
    and process id."""
    from tests.support import ORDERSYNC_CLI, _wait_healthy, free_port

    port = free_port()
    quota = ("--quota", "/v1/@all=off", "--quota", "/v1/@heavy=off")
    server = subprocess.Popen(
        [
            *ORDERSYNC_CLI,
            "hub",
            "serve",
            "--db",
            db,
            "--port",
            str(port),
            "--log-level",
            "warning",
            *quota,
        ],
        stdout=subprocess.DEVNULL,
        stderr=subprocess.PIPE,
    )
    base = f"http://127.0.0.1:{port}"
    try:
        _wait_healthy(base, server)
        yield base, server.pid
    finally:
        server.terminate()
        server.wait(timeout=30)


def _cpu_seconds(pid: int) -> float:
    """User + system CPU of a process so far (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def run_path(backend: str, path: str, args: argparse.Namespace) -> PathRun:
    from tests.support import free_port

    with _hub_database(backend) as db:
        agent_token, writer_token, account_id = asyncio.run(_tokens(db))
        with _hub(db) as (base, pid):
            cpu0 = _cpu_seconds(pid)
            result = asyncio.run(
                _measure(
                    backend,
                    path,
                    args,
                    base,
                    db,
                    account_id,
                    agent_token,
                    writer_token,
                    free_port(),
                )
            )
            result.hub_cpu_s = round(_cpu_seconds(pid) - cpu0, 1)
    return result


async def _measure(
    backend: str,
    path: str,
    args: argparse.Namespace,
    base: str,
    db: str,
    account_id: int,
    agent_token: str,
    writer_token: str,
    port: int,
) -> PathRun:
    from ordersync.agent.config import parse_config
    from ordersync.agent.runner import open_runtime, run_sources, serving_observability

    source: dict[str, Any] = {
        "name": "masonhub",
        "dialect": "masonhub",
        "base_url": f"{base}/api/v1",
        "token_env": "HUB_TOKEN",
        "connection_name": AGENT,
        "interval": args.poll_interval if path == "poll" else WEBHOOK_POLL_S,
    }
    if path == "webhooks":
        async with httpx.AsyncClient(base_url=base, timeout=30) as http:
            answer = await http.post(
                "/api/v1/callbacks",
                json=[
                    {
                        "url": f"http://127.0.0.1:{port}/webhooks/masonhub",
                        "message_type": "orderEvent",
                    }
                ],
                headers={"Authorization": f"Bearer {agent_token}"},
            )
            answer.raise_for_status()
            created = answer.json()
            created = created["data"] if isinstance(created, dict) else created
            source["webhook_secrets"] = [created[0]["secret"]]
    with tempfile.TemporaryDirectory(prefix="freshness-agent-") as tmp:
        config = parse_config(
            {"sources": [source], "sink": {"url": f"sqlite:///{tmp}/replica.db"}, "port": port},
            {},
        )
        runtime = await open_runtime(config, {"HUB_TOKEN": agent_token}, state_dir=Path(tmp))
        applied: dict[tuple[str, str], list[tuple[int, float, str]]] = {}
        for engine in runtime.engines.values():
            _record_applies(engine, applied)
        timings: dict[str, list[float]] = {}
        if args.verbose and runtime.receiver is not None:
            inbox = runtime.receiver.inbox
            feed = runtime.inbox_feeds["masonhub"]
            _timed(inbox, "store", timings)
            _timed(inbox, "pending", timings)
            _timed(feed, "_fetch", timings)
            _timed(feed, "_settled", timings)
            _timed(runtime.sink, "submit_page", timings)
            _timed(runtime.receiver, "endpoint", timings)
        stop = asyncio.Event()
        cpu0 = time.process_time()
        try:
            async with serving_observability(runtime, port):
                running = asyncio.ensure_future(run_sources(runtime, stop))
                await asyncio.sleep(1.0)  # the first (empty) poll is behind us
                context = multiprocessing.get_context("spawn")
                out = context.Queue()
                writer = context.Process(
                    target=_writer_main,
                    args=(base, writer_token, args.rate, args.seconds, out),
                )
                writer.start()
                answer = await asyncio.to_thread(out.get)
                if isinstance(answer, str):
                    raise RuntimeError(f"the writer failed: {answer}")
                made, wrote_s = answer
                writer.join()
                hub = await _changes(db, account_id)
                deadline = time.monotonic() + 60 + args.poll_interval
                while time.monotonic() < deadline and _missing(hub, applied):  # noqa: ASYNC110
                    await asyncio.sleep(0.2)
                if args.verbose:
                    for name, took in timings.items():
                        took.sort()
                        print(
                            f"{name}: n={len(took)} p50 {took[len(took) // 2]:.1f} "
                            f"p99 {took[int(len(took) * 0.99)]:.1f} ms"
                        )
                    await _hub_breakdown(db)
                    gone = [k for k in hub if _first_holding(applied, *k) is None][:5]
                    print(f"missing e.g. {gone}; applied e.g. {list(applied.items())[:3]}")
                stop.set()
                await running
                received = await _received(runtime)
        finally:
            await runtime.close()
        cpu = time.process_time() - cpu0
    return _summary(backend, path, hub, applied, made, wrote_s, cpu, received)


async def _hub_breakdown(db: str) -> None:
    """Where the hub's part goes: change -> queued (materialised) -> delivered, and the
    POST's own latency (p50 / p99 ms)."""
    from sqlalchemy import select

    from ordersync.store.store import Store
    from ordersync.store.tables import webhook_attempts, webhook_deliveries

    store = await Store.open(db, migrate=False)
    try:
        d, a = webhook_deliveries.c, webhook_attempts.c
        async with store.reader.connect() as conn:
            rows = (
                await conn.execute(select(d.event_created_at, d.created_at, d.delivered_at))
            ).all()
            posts = sorted(int(r[0]) for r in await conn.execute(select(a.latency_ms)))
    finally:
        await store.close()

    def p(values: list[int]) -> str:
        values = sorted(values)
        return f"{values[len(values) // 2]} / {values[int(len(values) * 0.99)]}" if values else "-"

    print(
        f"hub: change->queued {p([r[1] - r[0] for r in rows])}, queued->delivered "
        f"{p([r[2] - r[1] for r in rows if r[2]])}, POST {p(posts)} ms (p50 / p99)"
    )


async def _received(runtime: Any) -> dict[tuple[str, str, int], int]:
    """When the receiver stored each delivery: (kind, id, version) -> ms (webhook path)."""
    import orjson
    from sqlalchemy import select

    from ordersync.agent.inbox import webhook_inbox

    if runtime.receiver is None:
        return {}
    c = webhook_inbox.c
    found: dict[tuple[str, str, int], int] = {}
    async with runtime.sink.engine.connect() as conn:
        for body, at in await conn.execute(select(c.body, c.received_at_ms)):
            data = orjson.loads(body)["data"]
            found[("order", str(data["order_id"]), int(data["version"]))] = int(at)
    return found


def _timed(owner: Any, name: str, timings: dict[str, list[float]]) -> None:
    original = getattr(owner, name)

    async def timed(*args: Any, **kwargs: Any) -> Any:
        started = time.perf_counter()
        try:
            return await original(*args, **kwargs)
        finally:
            timings.setdefault(name, []).append((time.perf_counter() - started) * 1000)

    setattr(owner, name, timed)


def _record_applies(
    engine: Any, applied: dict[tuple[str, str], list[tuple[int, float, str]]]
) -> None:
    """Note when each batch's commit returned, per entity: (version, wall time, stream)."""
    original = engine._committed

    async def committed(stream: str, state: Any, counts: Any, page: Any) -> None:
        await page.outcome
        at = time.time()
        for record in page.batch.records:
            applied.setdefault((record.kind, record.id), []).append((record.version, at, stream))
        await original(stream, state, counts, page)

    engine._committed = committed


def _first_holding(
    applied: dict[tuple[str, str], list[tuple[int, float, str]]],
    kind: str,
    ident: str,
    version: int,
) -> tuple[float, str] | None:
    found = [(at, stream) for v, at, stream in applied.get((kind, ident), []) if v >= version]
    return min(found) if found else None


def _missing(hub: dict[tuple[str, str, int], int], applied: Any) -> int:
    return sum(1 for k, i, v in hub if _first_holding(applied, k, i, v) is None)


def _summary(
    backend: str,
    path: str,
    hub: dict[tuple[str, str, int], int],
    applied: dict[tuple[str, str], list[tuple[int, float, str]]],
    made: int,
    wrote_s: float,
    cpu: float,
    received: dict[tuple[str, str, int], int],
) -> PathRun:
    latencies, by_stream, missing = [], {"webhooks": 0, "orders": 0}, 0
    to_receiver, after_receipt = [], []
    for (kind, ident, version), stamp in hub.items():
        first = _first_holding(applied, kind, ident, version)
        if first is None:
            missing += 1
            continue
        at, stream = first
        latencies.append(max(0.0, at * 1000 - stamp))
        if (kind, ident, version) in received:
            got = received[(kind, ident, version)]
            to_receiver.append(got - stamp)
            after_receipt.append(at * 1000 - got)
        by_stream[stream if stream == "webhooks" else "orders"] += 1
    latencies.sort()

    def pct(p: float, values: list[float] = latencies) -> float:
        values = sorted(values)
        if not values:
            return float("nan")
        return round(values[min(len(values) - 1, int(p / 100 * len(values)))], 1)

    return PathRun(
        backend,
        path,
        round(wrote_s, 1),
        len(hub),
        round(made / wrote_s, 1),
        by_stream["webhooks"],
        by_stream["orders"],
        missing,
        round(statistics.median(latencies), 1) if latencies else float("nan"),
        round(pct(90), 1),
        round(pct(99), 1),
        round(latencies[-1], 1) if latencies else float("nan"),
        round(cpu, 1),
        [round(x, 2) for x in os.getloadavg()],
        pct(50, to_receiver),
        pct(99, to_receiver),
        pct(50, after_receipt),
        pct(99, after_receipt),
    )


# -- throughput per worker (PostgreSQL) ------------------------------------------------------


def throughput(n: int) -> list[Throughput]:
    from bench.webhook_delivery import run

    return [Throughput(w, *run(n, w)) for w in (1, 2)]


# -- output ----------------------------------------------------------------------------------


def _row(run: dict[str, Any], tag: str = "") -> str:
    return (
        f"{run['backend']:<11}{run['path']:<9}{run['changes']:>8,}{run['rate']:>8.1f}"
        f"{run['p50_ms']:>9.0f}{run['p90_ms']:>9.0f}{run['p99_ms']:>9.0f}{run['max_ms']:>9.0f}"
        f"{run['applied_by_webhook']:>10,}{run['applied_by_poll']:>8,}{run['missing']:>8,}"
        f"{run['agent_cpu_s']:>8.1f}{run.get('hub_cpu_s', float('nan')):>8.1f}"
        f"{run['hub_p50_ms']:>7.0f} /{run['hub_p99_ms']:>5.0f}"
        f"{run['agent_p50_ms']:>7.0f} /{run['agent_p99_ms']:>5.0f}  {tag}"
    )


def report(result: dict[str, Any], baseline: dict[str, Any] | None) -> None:
    print()
    print(
        f"{'backend':<11}{'path':<9}{'changes':>8}{'ch/s':>8}{'p50 ms':>9}{'p90 ms':>9}"
        f"{'p99 ms':>9}{'max ms':>9}{'by hook':>10}{'by poll':>8}{'missing':>8}{'cpu s':>8}"
        f"{'hub cpu':>8}"
        f"{'to inbox':>14}{'to apply':>14}"
    )
    runs = result["runs"]
    old = {(r["backend"], r["path"]): r for r in (baseline or {}).get("runs", [])}
    for run in runs:
        print(_row(run))
        if (run["backend"], run["path"]) in old:
            print(_row(old[(run["backend"], run["path"])], "(baseline)"))
    by = {(r["backend"], r["path"]): r for r in runs}
    for backend in dict.fromkeys(r["backend"] for r in runs):
        hook, poll = by.get((backend, "webhooks")), by.get((backend, "poll"))
        if hook and poll and hook["p99_ms"]:
            print(
                f"{backend}: polling / webhooks: p50 {poll['p50_ms'] / hook['p50_ms']:.0f}x, "
                f"p99 {poll['p99_ms'] / hook['p99_ms']:.0f}x"
            )
        if hook:
            verdict = "MET" if hook["p99_ms"] <= TARGET_P99_MS else "MISSED"
            print(f"{backend}: webhook p99 {hook['p99_ms']:.0f} ms, target <= 250 ms: {verdict}")
            base = old.get((backend, "webhooks"))
            if base and base["p99_ms"]:
                print(
                    f"{backend}: webhook p99 vs baseline: {hook['p99_ms']:.0f} / "
                    f"{base['p99_ms']:.0f} ms = {hook['p99_ms'] / base['p99_ms']:.2f}"
                )
    if result["throughput"]:
        print()
        print(
            f"{'workers':>8}{'delivered':>11}{'distinct':>10}{'seconds':>9}{'per s':>8}"
            f"{'per worker':>12}"
        )
        for t in result["throughput"]:
            print(
                f"{t['workers']:>8}{t['deliveries']:>11,}{t['distinct']:>10,}{t['seconds']:>9.1f}"
                f"{t['rate']:>8.0f}{t['per_worker']:>12.0f}"
            )
        for t in (baseline or {}).get("throughput", []):
            print(
                f"{t['workers']:>8}{t['deliveries']:>11,}{t['distinct']:>10,}{t['seconds']:>9.1f}"
                f"{t['rate']:>8.0f}{t['per_worker']:>12.0f}  (baseline)"
            )


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--backend", default="both", choices=["sqlite", "postgresql", "both"])
    parser.add_argument("--paths", default="webhooks,poll")
    parser.add_argument("--seconds", type=float, default=30.0)
    parser.add_argument("--rate", type=float, default=50.0)
    parser.add_argument("--poll-interval", type=float, default=5.0)
    parser.add_argument("--throughput", type=int, default=1000, help="orders; 0: skip")
    parser.add_argument("--baseline", type=Path, help="an earlier results file to print beside")
    parser.add_argument("--tag", default="", help="appended to the results file's name")
    parser.add_argument("--no-save", action="store_true")
    parser.add_argument("--verbose", action="store_true")
    args = parser.parse_args()
    from ordersync.logs import configure_logging

    configure_logging("console", "WARNING")
    backends = ["sqlite", "postgresql"] if args.backend == "both" else [args.backend]
    started = dt.datetime.now(dt.UTC)
    runs = []
    for backend in backends:
        for path in args.paths.split(","):
            run = run_path(backend, path, args)
            print(_row(asdict(run)), flush=True)
            runs.append(asdict(run))
    flows = []
    if args.throughput and "postgresql" in backends:
        flows = [
            asdict(t) | {"rate": t.rate, "per_worker": t.per_worker}
            for t in throughput(args.throughput)
        ]
    result = {
        "started": started.isoformat(),
        "args": {k: str(v) for k, v in vars(args).items()},
        "runs": runs,
        "throughput": flows,
        "commit": os.popen("git rev-parse --short HEAD").read().strip(),
    }
    baseline = json.loads(args.baseline.read_text()) if args.baseline else None
    report(result, baseline)
    if not args.no_save:
        RESULTS_DIR.mkdir(exist_ok=True)
        name = f"freshness-{started.strftime('%Y-%m-%dT%H%M%SZ')}{args.tag}.json"
        (RESULTS_DIR / name).write_text(json.dumps(result, indent=2))
        print(f"\nresults: {RESULTS_DIR / name}")


if __name__ == "__main__":
    sys.exit(main())
