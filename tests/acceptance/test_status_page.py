"""The agent's status page in a real headless Chromium: it loads, is screenshotted
(docs/agent-status.png) and shows the figures `/status` gives; the agent listens on `--bind`,
with `/healthz` and `/readyz` beside it."""

from __future__ import annotations

import os
import shutil
import signal
import subprocess
import time
from html.parser import HTMLParser
from pathlib import Path

import httpx
import pytest

from ordersync.domain.timestamps import parse_rfc3339_ms
from tests.acceptance.test_demo_and_agent_cli import ORDERSYNC, write_config
from tests.support import cli_token, free_port, hub_process, order_payload

ROOT = Path(__file__).resolve().parents[2]
BIND = "127.0.0.2"  # a loopback address other than the default: --bind is obeyed


def chromium() -> str:
    found = shutil.which("chromium") or shutil.which("chromium-browser")
    if found is None:
        if os.environ.get("CI") == "true":
            pytest.fail("chromium is required under CI (apt-get install -y chromium)")
        pytest.skip("chromium is not installed")
    return found


def browse(browser: str, url: str, *args: str) -> str:
    """Chromium, headless: load `url`, then do what `args` say; its stdout."""
    result = subprocess.run(
        [browser, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
         "--window-size=1200,560", *args, url],
        capture_output=True,
        text=True,
        timeout=120,
        check=True,
    )  # fmt: skip
    return result.stdout


class Figures(HTMLParser):
    """The page's figures: {stream: {field: text}} from its data-field cells."""

    def __init__(self) -> None:
        super().__init__()
        self.streams: dict[str, dict[str, str]] = {}
        self.generated_at = ""
        self._stream: str | None = None
        self._field: str | None = None

    def handle_starttag(self, tag: str, attrs: list[tuple[str, str | None]]) -> None:
        a = dict(attrs)
        if tag == "tr" and a.get("data-stream"):
            self._stream = a["data-stream"]
            self.streams[str(self._stream)] = {}
        self._field = a.get("data-field") or self._field

    def handle_endtag(self, tag: str) -> None:
        if tag in ("td", "time"):
            self._field = None
        if tag == "tr":
            self._stream = None

    def handle_data(self, data: str) -> None:
        if self._field == "generated_at":
            self.generated_at += data
        elif self._field and self._stream:
            self.streams[self._stream][self._field] = data.strip()


def test_the_status_page_in_chromium_shows_what_status_says(tmp_path: Path) -> None:
    """Load in Chromium, screenshot, and read the visible figures: the same sources, streams,
    positions, applied counts and errors as /status, repeats and calls no further along than
    /status read just after, and each lag equal to the page's time minus its position."""
    browser = chromium()
    db = f"sqlite:///{tmp_path}/hub.db"
    token = cli_token(db, account="demo")
    with hub_process(db) as base:
        created = httpx.post(
            f"{base}/api/v1/orders",
            headers={"Authorization": f"Bearer {token}"},
            json=[order_payload(f"P-{i}") for i in range(25)],
        )
        assert created.status_code == 201
        port = free_port()
        config = write_config(tmp_path / "agent.toml", f"{base}/api/v1", port=port)
        agent = subprocess.Popen(
            [*ORDERSYNC, "agent", "run", "--config", str(config), "--bind", BIND],
            stderr=subprocess.DEVNULL,
            env=os.environ | {"MASONHUB_TOKEN": token},
            start_new_session=True,
        )
        url = f"http://{BIND}:{port}"
        try:
            _wait_for(f"{url}/", lambda body: body.count("<polyline") == 2)  # 2 rounds drawn
            assert httpx.get(f"{url}/healthz").status_code == 200
            assert httpx.get(f"{url}/readyz").json() == {"status": "ready"}
            with pytest.raises(httpx.ConnectError):
                httpx.get(f"http://127.0.0.1:{port}/healthz")
            shot = tmp_path / "agent-status.png"
            browse(browser, f"{url}/", f"--screenshot={shot}")
            dom = browse(browser, f"{url}/", "--dump-dom")
            status = httpx.get(f"{url}/status").json()
        finally:
            os.killpg(agent.pid, signal.SIGTERM)
            agent.wait(timeout=60)
    assert shot.stat().st_size > 10_000
    kept = ROOT / "docs" / "agent-status.png"
    if not kept.exists() or os.environ.get("ORDERSYNC_UPDATE_SCREENSHOTS") == "1":
        kept.parent.mkdir(exist_ok=True)  # kept once; refreshed on demand, not on every run
        shutil.copyfile(shot, kept)
    page = Figures()
    page.feed(dom)
    assert set(page.streams) == {row["stream"] for row in status} == {"orders", "shipments"}
    as_of = parse_rfc3339_ms(page.generated_at.strip())
    for row in status:
        shown = page.streams[row["stream"]]
        # The position may move between the page and /status read just after (it follows the
        # server's clock minus the lookback): the page's is never ahead of it.
        if row["cursor"]:
            assert shown["cursor"] <= row["cursor"]
        else:
            assert shown["cursor"] == "-"
        assert int(shown["applied"]) == row["applied"]
        assert shown["last_error"] == (row["last_error"] or "-")
        assert int(shown["quarantined"]) == row["quarantined"]
        assert int(shown["duplicates"]) <= row["duplicates"]
        assert int(shown["api_calls"]) <= row["api_calls"]
        if row["cursor"]:
            lag = (as_of - parse_rfc3339_ms(shown["cursor"])) / 1000
            assert shown["lag_seconds"] == f"{lag:.1f}"
    assert page.streams["orders"]["applied"] == "25"


def _wait_for(url: str, ready: object) -> None:
    deadline = time.monotonic() + 120  # generous: shared machines can be very busy
    while time.monotonic() < deadline:
        try:
            if ready(httpx.get(url, timeout=1).text):  # type: ignore[operator]
                return
        except httpx.TransportError:
            pass
        time.sleep(0.3)
    raise AssertionError(f"{url} never got ready")
