"""The replica lease in one process, on real locks (PostgreSQL advisory locks, lock files):
who holds it, a standby that waits and takes over, a refusal, a lease that is lost."""

from __future__ import annotations

import asyncio
import os
import socket
from collections.abc import Awaitable, Callable
from pathlib import Path

import httpx
import psycopg
import pytest
from structlog.testing import capture_logs

from ordersync.agent.config import parse_config
from ordersync.agent.errors import SinkError
from ordersync.agent.lease import (
    POLL_SECONDS,
    Lease,
    ReplicaInUse,
    acquire,
    shown,
)
from ordersync.agent.runner import open_runtime, run_owning_replica
from ordersync.agent.sinks.base import Sink
from tests.integration.agent.harness import (
    BASE_URL,
    SOURCE,
    Hub,
    assert_applied_at_most_once,
    assert_replica_equals_hub,
)
from tests.integration.agent.test_sink_errors import terminate_backends

ME = f"agent pid {os.getpid()} on host {socket.gethostname()}"


@pytest.fixture(params=["sqlite", "jsonl", "http", "postgresql"])
def replica(request: pytest.FixtureRequest, tmp_path: Path) -> tuple[str, Path]:
    """A sink URL and the HTTP sink's state path (used by the HTTP sink only)."""
    url = {
        "sqlite": f"sqlite:///{tmp_path}/replica.db",
        "jsonl": f"jsonl://{tmp_path}/changes.jsonl",
        "http": "http://erp.test/changes",
    }.get(request.param) or request.getfixturevalue("pg_url")
    return url, tmp_path / "state.json"


async def take(replica: tuple[str, Path], *sources: str, **options: object) -> Lease | None:
    url, state = replica
    return await acquire(url, sources or ("masonhub",), state_path=state, **options)  # type: ignore[arg-type]


class Polls:
    """An injected sleep: counts polls and runs `on_poll(n)` at each instead of waiting."""

    def __init__(self, on_poll: object = None) -> None:
        self.waits: list[float] = []
        self.on_poll = on_poll

    async def __call__(self, seconds: float) -> None:
        self.waits.append(seconds)
        if self.on_poll is not None:
            await self.on_poll(len(self.waits))  # type: ignore[operator]


async def test_a_second_agent_waits_as_standby_then_takes_over(
    replica: tuple[str, Path],
) -> None:
    """B finds the replica held: one line naming the holder's pid and host, then it polls,
    and takes the lease at the first poll after A let it go."""
    first = await take(replica, standby=True)
    assert first is not None

    async def release_at_third_poll(n: int) -> None:
        if n == 3:
            await first.release()

    lines: list[str] = []
    polls = Polls(release_at_third_poll)
    second = await take(replica, standby=True, announce=lines.append, sleep=polls)
    assert second is not None
    assert lines == [f"replica {shown(replica[0])} in use by {ME}; waiting as standby"]
    assert polls.waits == [POLL_SECONDS] * 3
    assert await second.held()
    await second.release()


async def test_a_second_agent_configured_not_to_wait_is_refused_naming_the_holder(
    replica: tuple[str, Path],
) -> None:
    """standby = false: ReplicaInUse with the one line, and no poll at all."""
    first = await take(replica, standby=True)
    assert first is not None
    polls = Polls()
    with pytest.raises(ReplicaInUse) as refused:
        await take(replica, standby=False, sleep=polls)
    assert str(refused.value) == (
        f"replica {shown(replica[0])} in use by {ME}; refused (standby = false in the config)"
    )
    assert polls.waits == []
    await first.release()
    again = await take(replica, standby=False)
    assert again is not None
    await again.release()


async def test_a_standby_told_to_stop_lets_go_of_what_it_took(tmp_path: Path) -> None:
    """Sources are taken in name order: B takes "a", waits for "b" that A holds, is stopped,
    and "a" is free again for anyone."""
    replica = (f"sqlite:///{tmp_path}/replica.db", tmp_path / "state.json")
    holder_of_b = await take(replica, "b", standby=True)
    stop = asyncio.Event()

    async def stop_now(n: int) -> None:
        stop.set()

    assert await take(replica, "b", "a", standby=True, stop=stop, sleep=Polls(stop_now)) is None
    third = await take(replica, "a", standby=False)
    assert third is not None
    await third.release()
    assert holder_of_b is not None
    await holder_of_b.release()


async def test_a_lock_file_replaced_under_the_holder_counts_as_lost(tmp_path: Path) -> None:
    """Someone deletes the lock file: a new agent could lock a new file, so the holder's
    check says lost (the runner then stops syncing and takes the lease again)."""
    replica = (f"sqlite:///{tmp_path}/replica.db", tmp_path / "state.json")
    lease = await take(replica, standby=False)
    assert lease is not None and await lease.held()
    (tmp_path / "replica.db.lease-masonhub").unlink()
    assert not await lease.held()
    await lease.release()


async def test_a_postgresql_lease_whose_session_ended_counts_as_lost(pg_url: str) -> None:
    """The advisory lock lives with its session: once the server ends that session (restart,
    failover, pg_terminate_backend) the lease is lost, and another agent may take it."""
    lease = await take((pg_url, Path("unused")), standby=False)
    assert lease is not None and await lease.held()
    name = pg_url.rpartition("/")[2]
    with psycopg.connect(pg_url.rpartition("/")[0] + "/postgres", autocommit=True) as conn:
        conn.execute(
            "SELECT pg_terminate_backend(pid) FROM pg_stat_activity "
            "WHERE datname = %s AND application_name LIKE 'ordersync-agent%%'",
            (name,),
        )
    assert not await lease.held()
    assert not await lease.held(), "a lost lease stays lost"
    other = await take((pg_url, Path("unused")), standby=False)
    assert other is not None
    await other.release()
    await lease.release()


async def test_an_agent_whose_replica_server_ends_every_session_retakes_the_lease_and_recovers(
    hub: Hub, pg_url: str, tmp_path: Path
) -> None:
    """`run_owning_replica` on a PostgreSQL replica whose server ends every session mid-run,
    the lease's too: one line says the lease was lost, the agent takes it again (nobody else
    holds it), syncs what came meanwhile, and nothing escapes the run."""
    await hub.create_orders(30)
    raw = {
        "sources": [
            {
                "name": SOURCE,
                "base_url": BASE_URL,
                "token_env": "HUB_TOKEN",
                "interval": 0.05,
                "lookback": 2,
            }
        ],
        "sink": {"url": pg_url},
    }
    runtime = await open_runtime(
        parse_config(raw, {}),
        {"HUB_TOKEN": hub.token},
        transport=httpx.ASGITransport(app=hub.app),
        state_dir=tmp_path,
    )
    stop = asyncio.Event()
    lines: list[str] = []
    with capture_logs() as logs:
        running = asyncio.create_task(
            run_owning_replica(
                runtime, stop, announce=lines.append, state_dir=tmp_path, poll_seconds=0.05
            )
        )
        await until(lambda: holds(runtime.sink, 30), running)
        terminate_backends(pg_url)
        await hub.create_orders(10)
        await until(lambda: holds(runtime.sink, 40), running)
        stop.set()
        await running
    await assert_replica_equals_hub(hub, runtime.sink)
    await assert_applied_at_most_once(runtime.sink)
    await runtime.close()
    assert lines == [f"replica {shown(pg_url)}: lease lost; sync stopped, taking it again"]
    assert any(e["event"] == "replica_lease_lost" for e in logs)


async def holds(sink: Sink, orders: int) -> bool:
    try:
        return len(await sink.load_versions(SOURCE, "order")) == orders
    except SinkError:  # the sink's own pool meets the ended sessions too
        return False


async def until(condition: Callable[[], Awaitable[bool]], running: asyncio.Task[None]) -> None:
    for _ in range(2_400):  # a hang guard (2 min), not a speed requirement
        if running.done():
            running.result()
            raise AssertionError("the agent stopped")
        if await condition():
            return
        await asyncio.sleep(0.05)
    raise AssertionError("never happened")
