"""The hub's operator page in a real headless Chromium: it loads without internet, shows the
figures `/status.json` has, and a screenshot of it is kept in docs/hub-status.png."""

from __future__ import annotations

import asyncio
import os
import re
import shutil
import subprocess
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import httpx
import pytest

from ordersync.domain import NewOrder
from ordersync.hub.app import create_app
from ordersync.hub.settings import HubSettings
from ordersync.store.store import Store
from tests.support import order_payload, serve_in_thread

DOCS = Path(__file__).resolve().parents[2] / "docs"


def chromium() -> str:
    """The browser's path; a skip without one, except under CI=true where it must be there."""
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("CI=true and no chromium on PATH (apt-get install -y chromium)")
        pytest.skip("no chromium on PATH (apt-get install -y chromium)")
    return found


def browse(browser: str, url: str, *args: str) -> str:
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars", *args, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )
    return result.stdout


async def _seed(db: str) -> None:
    store = await Store.open(db)
    try:
        principal = await store.authenticate(await store.create_token("acme", "erp"))
        await store.create_orders(
            principal, [NewOrder.model_validate(order_payload(f"S-{i}")) for i in range(7)]
        )
        await store.create_token("acme", "wms")
        await store.revoke_connection("acme", "wms")
        await store.create_token("bistro", "pos")
        await store.set_account("bistro", timezone="Europe/Paris", currency="EUR")
    finally:
        await store.close()


@pytest.fixture
def hub_url(tmp_path: Path) -> Iterator[str]:
    db = f"sqlite:///{tmp_path}/hub.db"
    asyncio.run(_seed(db))
    with serve_in_thread(create_app(HubSettings(db_url=db))) as base:
        yield base


def _lookup(status: dict[str, Any], path: str) -> Any:
    """`accounts.1.orders` in /status.json; `accounts.length`, and `live_connections`."""
    if path == "live_connections":
        return sum(c["live"] for c in status["connections"])
    node: Any = status
    for part in path.split("."):
        node = len(node) if part == "length" else node[int(part) if part.isdigit() else part]
    return node


def test_the_status_page_shows_what_status_json_says(hub_url: str) -> None:
    browser = chromium()
    dom = browse(browser, f"{hub_url}/status", "--dump-dom")
    status = httpx.get(f"{hub_url}/status.json").json()
    figures = dict(re.findall(r'data-figure="([^"]+)"[^>]*>([^<]*)<', dom))
    assert figures["event_log_head"] == str(status["event_log_head"]) == "7"
    assert figures["accounts.length"] == "2"
    assert figures["live_connections"] == "2"
    for path, shown in figures.items():
        if path.startswith("requests."):
            continue  # the browser's own request moves these between the two reads
        expected = _lookup(status, path)
        if isinstance(expected, bool):
            expected = "live" if expected else "revoked"
        assert shown == str(expected), path
    assert figures["accounts.0.orders"] == "7" and figures["accounts.1.timezone"] == "Europe/Paris"


def test_a_screenshot_of_the_status_page_is_kept_in_docs(hub_url: str, tmp_path: Path) -> None:
    browser = chromium()
    shot = tmp_path / "hub-status.png"
    browse(browser, f"{hub_url}/status", f"--screenshot={shot}", "--window-size=1100,820")
    data = shot.read_bytes()
    assert data[:8] == b"\x89PNG\r\n\x1a\n" and len(data) > 10_000  # a page, not a blank
    kept = DOCS / "hub-status.png"
    if not kept.exists() or os.environ.get("ORDERSYNC_UPDATE_SCREENSHOTS") == "1":
        DOCS.mkdir(exist_ok=True)  # kept once; refreshed on demand, not on every run
        shutil.copyfile(shot, kept)
