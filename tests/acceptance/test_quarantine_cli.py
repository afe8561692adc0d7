"""A record the replica cannot store, end to end through the CLI: `agent run --once` succeeds
and mirrors the rest, `agent verify` and `agent status` name the quarantined record."""

from __future__ import annotations

import asyncio
import os
import subprocess
from pathlib import Path

from ordersync.domain import NewOrder
from ordersync.store.store import Store
from tests.acceptance.test_demo_and_agent_cli import ORDERSYNC, agent, write_config
from tests.support import cli_token, hub_process, order_payload


def test_a_nul_sku_on_postgresql_no_longer_stalls_the_agent(tmp_path: Path, pg_url: str) -> None:
    """On main `agent run --once` exited 2 every time (PostgreSQL refused the page with the NUL
    SKU, the cursor never moved). Now it exits 0 with the other orders mirrored; verify says
    "not in sync: 1 quarantined" (exit 1) and status shows the count."""
    db = f"sqlite:///{tmp_path}/hub.db"
    token = cli_token(db)
    # The hub refuses a NUL at its API (a 422); another platform may still serve one, so the
    # record is written straight into the hub's store.
    asyncio.run(_seed_with_a_nul_sku(db, token))
    with hub_process(db) as base:
        config = write_config(tmp_path / "agent.toml", f"{base}/api/v1")
        env = {
            **os.environ, "MASONHUB_TOKEN": token, "ORDERSYNC_SINK_URL": pg_url, "COLUMNS": "250"
        }  # fmt: skip

        def cli(*args: str) -> subprocess.CompletedProcess[str]:
            return subprocess.run(
                [*ORDERSYNC, "agent", *args, "--config", str(config)],
                capture_output=True, text=True, env=env, timeout=120, check=False,
            )  # fmt: skip

        os.environ["ORDERSYNC_SINK_URL"] = pg_url  # `agent()` passes os.environ on
        try:
            ran = agent(config, "--once", token=token)
        finally:
            del os.environ["ORDERSYNC_SINK_URL"]
        assert ran.returncode == 0, ran.stderr
        assert "record_quarantined" in ran.stdout + ran.stderr
        verified = cli("verify")
        assert verified.returncode == 1, verified.stdout
        assert "not in sync: 1 quarantined" in verified.stdout
        assert "contains a NUL character" in verified.stdout
        status = cli("status")
        assert status.returncode == 0, status.stderr
        assert "quarantined (source)" in status.stdout
        rows = [line for line in status.stdout.splitlines() if "masonhub" in line]
        assert len(rows) == 2 and all(row.rstrip(" │").endswith("1") for row in rows)


async def _seed_with_a_nul_sku(db: str, token: str) -> None:
    store = await Store.open(db)
    try:
        orders = [order_payload(f"Q-{i}") for i in range(3)]
        orders[1]["line_items"][0]["sku_customer_identifier"] = "SKU\u0000X"
        principal = await store.authenticate(token)
        await store.create_orders(principal, [NewOrder.model_validate(o) for o in orders])
    finally:
        await store.close()
