"""The SQLite replica's writer, in a process of its own, with pages pipelined to it.

In one process a backfill page's HTTP and parsing and its SQLite transaction take turns on one
core, and a writer thread only added GIL handoffs (figures in bench/README.md). Here
the agent sends each page down a pipe to this process, and the engine sends the next page before
it awaits the previous one's commit, so the writer always has a page ready while the agent
fetches and parses the one after: both cores work.

The guarantees do not move. Each page and its cursor are one transaction; pages apply in the
order sent; and each page names the cursor it continues from (`base`): if the stored cursor is
not that one (the page before failed), the page is refused, never applied past a gap. A crash
of either process at any line leaves every page committed whole or not at all. The writer dies
with the agent (on Linux by `PR_SET_PDEATHSIG`, elsewhere at the end of its pipe), so no orphan
commits a page after a restarted agent read the cursor. If the writer dies, the pages in flight
fail with `SinkError` and the sink starts a new writer for the next page.

Frames are a 4-byte big-endian length and a pickle (both ends are this module).
  agent -> writer: ("apply", source, stream, records as `rows.Prepared` tuples (the agent
                   builds and checks them), (cursor ms, last id), stamp ms, hooked, checked,
                   base, records held back as `quarantine.HeldBack`), ("go",) or ("abort",)
                   answering a ("step", name), ("close",)
  writer -> agent, one reply per page in order: ("done", applied, quarantined, quarantined in
                   all of the source), ("moved", message) (base is not the stored cursor),
                   ("fault", message) (the replica's file: deleted, read-only, disk full),
                   ("sqlite", message), ("aborted",), ("failed", message) (a bug: the
                   traceback is on stderr); also ("ready",) at start, ("step", name) before
                   each fault-hook step of a hooked page, ("closed",) at the end.
The module imports nothing heavy (no SQLAlchemy, no pydantic), so the writer starts in ~0.1 s.
"""

from __future__ import annotations

import asyncio
import contextlib
import os
import pickle
import signal
import sqlite3
import sys
import traceback
from collections import deque
from collections.abc import Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any, BinaryIO

from ordersync.agent.errors import SinkError
from ordersync.agent.records import ApplyResult, Cursor, Record
from ordersync.agent.sinks import replica_file
from ordersync.agent.sinks.base import FaultHook
from ordersync.agent.sinks.quarantine import screen_prepared
from ordersync.agent.sinks.replica_file import ReplicaFault
from ordersync.agent.sinks.sqlite_fast import UNCHECKED, CursorMoved, SqliteWriter, Unchecked

Message = tuple[Any, ...]
# The writer imports ordersync from where this agent did, installed or not.
PACKAGE_ROOT = str(Path(__file__).resolve().parents[3])
CLOSE_TIMEOUT_SECONDS = 60.0  # the final checkpoint of a large WAL takes a few seconds


def _frame(message: Message) -> bytes:
    body = pickle.dumps(message, protocol=pickle.HIGHEST_PROTOCOL)
    return len(body).to_bytes(4, "big") + body


class WriterGone(Exception):
    """The writer process ended, or its pipe broke."""


@dataclass
class _Page:
    outcome: asyncio.Future[ApplyResult]
    label: str  # "a page of SOURCE/STREAM"
    source: str
    records: int
    hook: FaultHook | None
    hook_error: BaseException | None = None


class WriterProcess:
    """The agent's end: start it with `await WriterProcess.start(path, busy_timeout_ms)`."""

    def __init__(
        self, process: asyncio.subprocess.Process, quarantine_counts: dict[str, int] | None = None
    ) -> None:
        self._process = process
        # source -> records in the quarantine, as of the last page answered
        self.quarantine_counts = {} if quarantine_counts is None else quarantine_counts
        self._pages: deque[_Page] = deque()  # sent, not yet answered, in order
        self._reader: asyncio.Task[None] | None = None
        self.failed: str | None = None  # set once this writer takes no more pages

    @property
    def pid(self) -> int:
        return self._process.pid

    @classmethod
    async def start(
        cls, path: str, busy_timeout_ms: int, quarantine_counts: dict[str, int] | None = None
    ) -> WriterProcess:
        """Start a writer on the replica file at `path`; SinkError if it cannot open it."""
        env = dict(os.environ)
        env["PYTHONPATH"] = os.pathsep.join(filter(None, (PACKAGE_ROOT, env.get("PYTHONPATH"))))
        process = await asyncio.create_subprocess_exec(
            sys.executable, "-m", __name__, path, str(busy_timeout_ms), str(os.getpid()),
            stdin=asyncio.subprocess.PIPE, stdout=asyncio.subprocess.PIPE, env=env,
        )  # fmt: skip
        writer = cls(process, quarantine_counts)
        try:
            reply = await writer._receive()
        except WriterGone:
            reply = ("gone", "the writer process exited at start")
        if reply[0] != "ready":
            writer.failed = str(reply[1])
            await writer.close()
            raise SinkError(f"cannot open the replica at {path}: {reply[1]}")
        writer._reader = asyncio.get_running_loop().create_task(writer._read_replies())
        return writer

    async def submit(
        self,
        source: str,
        stream: str,
        records: Sequence[Record],
        cursor: Cursor,
        stamp: int,
        *,
        base: Cursor | Unchecked | None = UNCHECKED,
        hook: FaultHook | None = None,
    ) -> asyncio.Future[ApplyResult]:
        """Send a page; the future gives its ApplyResult once the page and `cursor` committed
        (or SinkError). With a `base` other than UNCHECKED the page applies only if the stored
        cursor is `base` (None: none yet)."""
        label = f"a page of {source}/{stream}"
        # The latest version of each entity only (the writer relies on it); those the replica
        # cannot store travel apart, to the quarantine.
        rows, held = screen_prepared(source, records)
        if hook is not None:  # a hooked page answers step by step: alone in the pipe
            await self.idle()
        # No await between this check and the append: a writer that failed answers nothing more.
        if self.failed is not None:
            raise SinkError(f"{label} was not applied: {self.failed}")
        page = _Page(asyncio.get_running_loop().create_future(), label, source, len(records), hook)
        page.outcome.add_done_callback(_retrieve)
        checked = not isinstance(base, Unchecked)
        base_value = (base.updated_at_ms, base.last_id) if isinstance(base, Cursor) else None
        message = (
            "apply", source, stream, rows, (cursor.updated_at_ms, cursor.last_id), stamp,
            hook is not None, checked, base_value, held,
        )  # fmt: skip
        self._pages.append(page)
        try:
            await self._send(message)
        except WriterGone:
            self._fail_pages("the replica writer process stopped (its pipe broke)")
            raise SinkError(f"{label} was not applied: {self.failed}") from None
        return page.outcome

    async def idle(self) -> None:
        """Until every page sent is answered."""
        pending = [page.outcome for page in self._pages if not page.outcome.done()]
        if pending:
            await asyncio.wait(pending)

    async def close(self) -> None:
        """Let the writer finish its pages and its checkpoints, then end it."""
        await self.idle()
        process = self._process
        if self.failed is None and process.returncode is None:
            self.failed = "the replica writer was closed"
            with contextlib.suppress(WriterGone):
                await self._send(("close",))
                if self._reader is not None:
                    await self._reader  # ends at ("closed",)
        if self._reader is not None:
            self._reader.cancel()
        if process.stdin is not None:
            process.stdin.close()
        try:
            await asyncio.wait_for(process.wait(), CLOSE_TIMEOUT_SECONDS)
        except TimeoutError:
            self._kill()
            await process.wait()

    async def _read_replies(self) -> None:
        try:
            while True:
                reply = await self._receive()
                if reply[0] == "closed":
                    return
                page = self._pages[0]
                if reply[0] == "step":
                    await self._answer_step(page, reply[1])
                    continue
                self._pages.popleft()
                if reply[0] == "done":
                    self.quarantine_counts[page.source] = int(reply[3])
                if not page.outcome.done():  # done: its caller was cancelled
                    _settle(page, reply)
        except WriterGone as exc:
            self._fail_pages(f"the replica writer process stopped ({exc})")
        except Exception as exc:  # a reply out of protocol: trust nothing more from it
            self._fail_pages(f"the replica writer broke protocol ({exc!r})")
            self._kill()

    async def _answer_step(self, page: _Page, step: str) -> None:
        try:
            if page.hook is not None:
                page.hook(step)
        except Exception as exc:
            page.hook_error = exc
            await self._send(("abort",))
        else:
            await self._send(("go",))

    def _fail_pages(self, reason: str) -> None:
        self.failed = reason
        while self._pages:
            page = self._pages.popleft()
            if not page.outcome.done():
                page.outcome.set_exception(
                    SinkError(
                        f"{reason} during {page.label}; that page is committed whole or not at "
                        "all, and the next cycle resumes from the stored cursor"
                    )
                )

    def _kill(self) -> None:
        if self._process.returncode is None:
            with contextlib.suppress(ProcessLookupError):
                self._process.kill()

    async def _send(self, message: Message) -> None:
        stdin = self._process.stdin
        assert stdin is not None
        try:
            stdin.write(_frame(message))
            await stdin.drain()
        except (BrokenPipeError, ConnectionResetError) as exc:
            raise WriterGone(f"its pipe broke: {exc}") from None

    async def _receive(self) -> Message:
        stdout = self._process.stdout
        assert stdout is not None
        try:
            size = int.from_bytes(await stdout.readexactly(4), "big")
            return pickle.loads(await stdout.readexactly(size))  # type: ignore[no-any-return]
        except asyncio.IncompleteReadError:
            code = await self._process.wait()
            raise WriterGone(f"exit code {code}") from None


def _settle(page: _Page, reply: Message) -> None:
    outcome, future = reply[0], page.outcome
    if outcome == "done":
        applied, quarantined = int(reply[1]), int(reply[2])
        future.set_result(ApplyResult(applied, page.records - applied - quarantined, quarantined))
    elif outcome == "aborted" and page.hook_error is not None:
        future.set_exception(page.hook_error)
    elif outcome == "moved":
        future.set_exception(SinkError(f"{page.label} was not applied: {reply[1]}"))
    elif outcome == "fault":
        future.set_exception(ReplicaFault(f"{reply[1]}; {page.label} was not applied"))
    elif outcome == "sqlite":
        future.set_exception(SinkError(f"the replica refused {page.label}: {reply[1]}"))
    else:
        future.set_exception(SinkError(f"the replica writer failed on {page.label}: {reply}"))


def _retrieve(future: asyncio.Future[ApplyResult]) -> None:
    # A page whose caller gave up waiting (a crash test, a stop) still ends; nobody reads it.
    if not future.cancelled():
        future.exception()


# -- the writer's end ----------------------------------------------------------------------


class _Aborted(Exception):
    """The agent's fault hook fired at a step: roll the page back."""


class _Pipe:
    def __init__(self, incoming: BinaryIO, outgoing: BinaryIO) -> None:
        self._in, self._out = incoming, outgoing

    def send(self, message: Message) -> None:
        self._out.write(_frame(message))
        self._out.flush()

    def receive(self) -> Message | None:
        """The next message, or None once the agent is gone."""
        header = self._in.read(4)
        if len(header) < 4:
            return None
        body = self._in.read(int.from_bytes(header, "big"))
        return pickle.loads(body)  # type: ignore[no-any-return]


def _live_and_die_with_parent(parent_pid: int) -> None:
    # Ctrl-C in a terminal and a service manager's stop signal the whole process group: the
    # agent then finishes its pages and closes this writer, which must not die first.
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    signal.signal(signal.SIGTERM, signal.SIG_IGN)
    if sys.platform == "linux":
        import ctypes

        pr_set_pdeathsig = 1
        ctypes.CDLL(None, use_errno=True).prctl(pr_set_pdeathsig, signal.SIGKILL)
    if os.getppid() != parent_pid:  # the agent died before the line above took effect
        sys.exit(0)


def serve(path: str, busy_timeout_ms: int, parent_pid: int) -> int:
    _live_and_die_with_parent(parent_pid)
    # The protocol owns stdout; anything else printed goes to stderr.
    outgoing = os.fdopen(os.dup(1), "wb")
    os.dup2(2, 1)
    pipe = _Pipe(sys.stdin.buffer, outgoing)
    try:
        writer = SqliteWriter(path, busy_timeout_ms)
    except (sqlite3.Error, OSError) as exc:
        pipe.send(("sqlite", str(exc)))
        return 1
    pipe.send(("ready",))

    def ask(step: str) -> None:
        pipe.send(("step", step))
        answer = pipe.receive()
        if answer is None:
            raise SystemExit(0)  # the agent is gone: roll back and leave
        if answer[0] == "abort":
            raise _Aborted(step)

    try:
        while (message := pipe.receive()) is not None:
            if message[0] == "close":
                break
            _, source, stream, rows, (cursor_ms, last_id), stamp, hooked, checked, base, held = (
                message
            )
            try:
                applied = writer.apply(
                    source, stream, rows, Cursor(cursor_ms, last_id), stamp,
                    ask if hooked else None,
                    base=(None if base is None else Cursor(*base)) if checked else UNCHECKED,
                    held=held,
                )  # fmt: skip
            except _Aborted:
                pipe.send(("aborted",))
            except CursorMoved as exc:
                pipe.send(("moved", str(exc)))
            except ReplicaFault as exc:
                pipe.send(("fault", str(exc)))
            except sqlite3.Error as exc:
                fault = replica_file.named(path, exc)
                pipe.send(("sqlite", str(exc)) if fault is None else ("fault", str(fault)))
            except Exception as exc:
                traceback.print_exc()
                pipe.send(("failed", f"{type(exc).__name__}: {exc}"))
            else:
                pipe.send(("done", *applied))
    finally:
        writer.close()
    if message is not None:
        pipe.send(("closed",))
    return 0


if __name__ == "__main__":
    sys.exit(serve(sys.argv[1], int(sys.argv[2]), int(sys.argv[3])))
