"""A platform on a real socket that stalls: it accepts and never answers ("hang"), or sends its
answer one byte at a time ("drip"). Other requests get a canned JSON answer."""

from __future__ import annotations

import asyncio
import contextlib
import threading
from collections.abc import AsyncIterator, Iterator
from dataclasses import dataclass, field

import orjson

Mode = str  # "ok", "hang" or "drip"


@dataclass
class StallingPlatform:
    """`stalls` maps a path suffix (e.g. "/orders") to how that listing misbehaves; the
    preflight (`list_type=summary`) is answered unless `stall_preflight`."""

    stalls: dict[str, Mode]
    answers: dict[str, object] = field(default_factory=dict)  # path suffix -> JSON body
    stall_preflight: bool = False
    drip_interval: float = 1.0
    requests: list[str] = field(default_factory=list)
    stalled: list[str] = field(default_factory=list)
    closing: asyncio.Event = field(default_factory=asyncio.Event)  # ends the stalls

    def mode(self, path: str, query: str) -> Mode:
        if "list_type=summary" in query and not self.stall_preflight:
            return "ok"
        return next((m for suffix, m in self.stalls.items() if path.endswith(suffix)), "ok")

    async def handle(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        try:
            while True:
                head = await reader.readuntil(b"\r\n\r\n")
                target = head.split(b"\r\n", 1)[0].split(b" ")[1].decode()
                path, _, query = target.partition("?")
                self.requests.append(target)
                mode = self.mode(path, query)
                if mode != "ok":
                    self.stalled.append(target)
                    await self._stall(mode, writer)
                    return
                body = orjson.dumps(
                    next((a for s, a in self.answers.items() if path.endswith(s)), {"data": []})
                )
                writer.write(
                    b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n"
                    b"content-length: %d\r\n\r\n%s" % (len(body), body)
                )
                await writer.drain()
        except (asyncio.IncompleteReadError, ConnectionError, asyncio.LimitOverrunError):
            pass
        finally:
            writer.close()

    async def _stall(self, mode: Mode, writer: asyncio.StreamWriter) -> None:
        if mode == "hang":
            await self.closing.wait()
            return
        writer.write(b"HTTP/1.1 200 OK\r\ncontent-type: application/json\r\n")
        writer.write(b"content-length: 1000000\r\n\r\n{")
        while not self.closing.is_set():
            await writer.drain()
            with contextlib.suppress(TimeoutError):
                await asyncio.wait_for(self.closing.wait(), self.drip_interval)
            writer.write(b" ")


@contextlib.asynccontextmanager
async def serving(platform: StallingPlatform) -> AsyncIterator[str]:
    """Serve on 127.0.0.1 at a free port; yields the base URL; stops its connections at exit."""
    handlers: set[asyncio.Task[None]] = set()

    async def tracked(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        task = asyncio.current_task()
        assert task is not None
        handlers.add(task)
        try:
            await platform.handle(reader, writer)
        finally:
            handlers.discard(task)

    server = await asyncio.start_server(tracked, "127.0.0.1", 0)
    port = server.sockets[0].getsockname()[1]
    try:
        yield f"http://127.0.0.1:{port}/api/v1"
    finally:
        server.close()
        platform.closing.set()
        await asyncio.gather(*handlers, return_exceptions=True)


@contextlib.contextmanager
def serving_in_thread(platform: StallingPlatform) -> Iterator[str]:
    """The same, on an event loop of its own (for tests that run the agent as a process)."""
    ready = threading.Event()
    address: list[str] = []
    loop = asyncio.new_event_loop()
    done = asyncio.Event()

    async def main() -> None:
        async with serving(platform) as base_url:
            address.append(base_url)
            ready.set()
            await done.wait()

    thread = threading.Thread(target=loop.run_until_complete, args=(main(),), daemon=True)
    thread.start()
    if not ready.wait(20):
        raise RuntimeError("the stalling platform did not start")
    try:
        yield address[0]
    finally:
        loop.call_soon_threadsafe(done.set)
        thread.join(timeout=20)
        loop.close()
