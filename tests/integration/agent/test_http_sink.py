"""The HTTP sink: pages POSTed to an ERP with idempotency keys; the cursor moves after a 2xx."""

from __future__ import annotations

from pathlib import Path

import httpx
import orjson
import pytest

from ordersync.agent.errors import SinkRejected
from ordersync.agent.sinks.http import HttpSink
from tests.integration.agent.harness import FakeSleep, Hub, build_engine

ERP_URL = "http://erp.test/ingest"


class FakeErp:
    """Stores changes by `id:version`, as an ERP honouring the idempotency keys would."""

    def __init__(self) -> None:
        self.posts: list[tuple[str, list[dict[str, object]]]] = []
        self.fail_next: list[int] = []

    async def handle(self, request: httpx.Request) -> httpx.Response:
        if self.fail_next:
            return httpx.Response(self.fail_next.pop(0))
        body = orjson.loads(request.content)
        self.posts.append((request.headers["idempotency-key"], body["changes"]))
        return httpx.Response(202)

    def versions(self, kind: str) -> dict[str, int]:
        held: dict[str, int] = {}
        for _, changes in self.posts:
            for change in changes:
                if change["kind"] == kind:
                    held[str(change["id"])] = max(
                        held.get(str(change["id"]), 0), int(change["version"])
                    )  # type: ignore[call-overload]
        return held


class SimulatedCrash(Exception):
    pass


async def open_http_sink(erp: FakeErp, tmp_path: Path, **options: object) -> HttpSink:
    http = httpx.AsyncClient(transport=httpx.MockTransport(erp.handle))
    return await HttpSink.open(
        ERP_URL, http, tmp_path / "erp-state.json", sleep=FakeSleep(), **options
    )


async def test_pages_reach_the_erp_and_a_crash_after_delivery_resends_the_same_key(
    hub: Hub, tmp_path: Path
) -> None:
    """Delivered but not recorded: the restart re-POSTs that page under the same key."""
    await hub.create_orders(120, tie=True)
    erp = FakeErp()
    erp.fail_next = [503]

    def crash(step: str) -> None:
        if step == "mid_apply" and len(erp.posts) == 2:
            raise SimulatedCrash

    sink = await open_http_sink(erp, tmp_path, fault_hook=crash)
    with pytest.raises(SimulatedCrash):
        await build_engine(hub, sink, page_size=50).run_cycle()
    restarted = await open_http_sink(erp, tmp_path)
    await build_engine(hub, restarted, page_size=50).run_cycle()
    keys = [key for key, _ in erp.posts]
    assert keys[1] == keys[2], "the re-sent page must carry the same Idempotency-Key"
    assert erp.versions("order") == await hub.versions("order")
    all_changes = [c["idempotency_key"] for _, changes in erp.posts[2:] for c in changes]
    assert len(all_changes) == len(set(all_changes))


async def test_an_erp_refusal_is_a_sink_error_and_the_cursor_stays(
    hub: Hub, tmp_path: Path
) -> None:
    """A 4xx from the ERP stops the cycle; nothing is recorded as delivered."""
    await hub.create_orders(5)
    erp = FakeErp()
    erp.fail_next = [422]
    sink = await open_http_sink(erp, tmp_path)
    with pytest.raises(SinkRejected):
        await build_engine(hub, sink).run_cycle()
    assert await sink.load_cursor("masonhub", "orders") is None
    await build_engine(hub, sink).run_cycle()
    assert erp.versions("order") == await hub.versions("order")
