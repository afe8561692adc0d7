"""`ordersync agent push`: the ERP's own creates, updates and cancels, written to a platform.

A push file is JSON lines, one change each (README, "Pushing orders"):

    {"op": "create", "order": {...}}                        the platform's create body
    {"op": "update", "order": {...}}                        MasonHub: the full order
    {"op": "update", "private_ref": "erp-1", "order": {"status": "received"}}   HubRise PATCH
    {"op": "cancel", "customer_identifier": "SO-1"}         MasonHub
    {"op": "cancel", "private_ref": "erp-1"}                HubRise (or "order_id")
    {"op": "create"|"update", "order": {"order": {...}, "lines": [...]}}   Tradecloud message
    {"op": "cancel", "purchaseOrderNumber": "PO-1"}         Tradecloud

with an optional `"key"`: the line's idempotency key. Without one the key is derived from the
source, the line's content and its occurrence in the file (the n-th identical line), so the
same file pushed again, after a crash or not, names every line by the same key.

The push (`push_lines`): every line is first recorded `pending` in the replica's outbox
(`outbox.py`) and committed; then each line not answered yet is sent, in file order, with its
key as `Idempotency-Key`, and the answer is committed; then the asynchronous requests (MasonHub
update and cancel requests) are polled by id until resolved or `wait_s` has passed. Pushing the
same file again sends only what was never answered (a lost answer is replayed by the platform
for the same key, never written twice) and polls what is still open.

`hook(step)` is called at each step (`after_insert`, `after_send`, `after_answer`,
`during_poll`); the CLI's kill switch (`ORDERSYNC_PUSH_KILL_AT`) kills the process there.
"""

from __future__ import annotations

import asyncio
import hashlib
import json
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from decimal import Decimal
from typing import Any, Literal, Protocol
from urllib.parse import quote

import httpx
import orjson
import structlog

from ordersync.agent.client import ApiClient, auth_headers, exact_json
from ordersync.agent.config import SourceConfig
from ordersync.agent.errors import AgentError, AuthError, RequestRejected, SourceError
from ordersync.agent.metrics import AgentMetrics
from ordersync.agent.outbox import (
    ACCEPTED,
    FAILED,
    FINAL,
    PENDING,
    RESOLVED,
    NewRow,
    Outbox,
    OutboxRow,
)
from ordersync.agent.platforms import PLATFORMS
from ordersync.agent.records import decode_record
from ordersync.agent.retry import RetryPolicy
from ordersync.agent.sinks.sql import SqlSink
from ordersync.errors import ConfigurationError, OrdersyncError
from ordersync.wire import WireError

log = structlog.get_logger("ordersync.agent.push")

Op = Literal["create", "update", "cancel"]
OPS: tuple[Op, ...] = ("create", "update", "cancel")
PushHook = Callable[[str], None]
STEPS = ("after_insert", "after_send", "after_answer", "during_poll")
POLL_BATCH = 30  # ids per status request (MasonHub's limit)
MAX_REF = 200  # characters of an order's name (the outbox's ref column)


class PushFileError(OrdersyncError):
    """A line of the push file is not a change the agent can push (exit 2): nothing was
    recorded or sent."""

    exit_code = 2


@dataclass(frozen=True)
class PushLine:
    number: int  # 1-based line number in the file
    op: Op
    ref: str  # the order as the ERP names it (customer_identifier, private_ref, order id)
    document: dict[str, Any]  # the line as given
    key: str = ""

    def as_new_row(self) -> NewRow:
        return NewRow(self.key, self.op, self.ref, self.canonical)

    @property
    def canonical(self) -> str:
        """The line as the outbox keeps it (keys sorted: the same change, the same text)."""
        return orjson.dumps(self.document, default=exact_json, option=orjson.OPT_SORT_KEYS).decode()


@dataclass
class LineResult:
    """Where one line stands after the push: `state` is pending (not answered: run again),
    accepted (an asynchronous request not resolved yet), resolved or failed."""

    line: int
    op: str
    ref: str
    key: str
    state: str
    order_id: str | None = None
    request_id: str | None = None
    reason: str | None = None

    def as_json(self) -> dict[str, Any]:
        return {
            "line": self.line,
            "op": self.op,
            "ref": self.ref,
            "state": self.state,
            "order_id": self.order_id,
            "request_id": self.request_id,
            "reason": self.reason,
            "key": self.key,
        }


@dataclass
class PushReport:
    source: str
    results: list[LineResult] = field(default_factory=list)

    def count(self, state: str) -> int:
        return sum(1 for r in self.results if r.state == state)

    @property
    def complete(self) -> bool:
        """Every line answered and resolved (resolved or failed)."""
        return all(r.state in FINAL for r in self.results)

    @property
    def exit_code(self) -> int:
        """0 every line resolved; 1 some line failed; 8 some line still pending or accepted
        (run the same push again to go on). README.md, "Exit codes"."""
        if not self.complete:
            return 8
        return 1 if self.count(FAILED) else 0


# -- the push file -----------------------------------------------------------------------------


def parse_lines(dialect: str, source: str, text: Iterable[str]) -> list[PushLine]:
    """The push file's changes, each with its idempotency key. PushFileError names the first
    line that is not a change this dialect can push, and why."""
    lines: list[PushLine] = []
    seen: dict[bytes, int] = {}
    for number, raw in enumerate(text, start=1):
        if not raw.strip():
            continue
        try:
            document = load_exact(raw)
        except (ValueError, RecursionError) as exc:
            raise PushFileError(f"line {number}: not JSON ({exc})") from None
        if not isinstance(document, dict):
            raise PushFileError(f"line {number}: expected a JSON object with an op")
        op, ref = _check(dialect, document, number)
        key = document.get("key")
        if key is None:
            content = orjson.dumps(document, default=exact_json, option=orjson.OPT_SORT_KEYS)
            occurrence = seen.get(content, 0)
            seen[content] = occurrence + 1
            digest = hashlib.sha256(
                b"\0".join([source.encode(), content, str(occurrence).encode()])
            ).hexdigest()
            key = f"push-{digest[:40]}"
        elif not (isinstance(key, str) and 1 <= len(key) <= 255 and _printable(key)):
            raise PushFileError(f"line {number}: key must be 1 to 255 printable ASCII characters")
        lines.append(PushLine(number, op, ref, document, key))
    keys = [line.key for line in lines]
    if len(set(keys)) != len(keys):
        taken = next(k for k in keys if keys.count(k) > 1)
        raise PushFileError(f"key {taken!r} is given to two lines; each change needs its own")
    return lines


def load_exact(text: str) -> Any:
    """JSON with its fractional numbers as Decimal: a quantity or price goes out as written."""
    return json.loads(text, parse_float=Decimal, parse_constant=_not_a_number)


def _not_a_number(constant: str) -> Any:
    raise ValueError(f"{constant} is not a JSON number")


def _printable(text: str) -> bool:
    return text.isascii() and text.isprintable()


def _check(dialect: str, document: dict[str, Any], number: int) -> tuple[Op, str]:
    """The line's op and the order it names (its ref), as the dialect names orders."""
    op = document.get("op")
    if op not in OPS:
        raise PushFileError(f"line {number}: op must be one of {', '.join(OPS)}, not {op!r}")
    named = {"tradecloud": _tradecloud_ref, "hubrise": _hubrise_ref}.get(dialect, _masonhub_ref)
    ref = named(op, document, number)
    if len(ref) > MAX_REF:
        raise PushFileError(f"line {number}: {ref[:20]!r}... is longer than {MAX_REF} characters")
    return op, ref


def _text_of(value: Any, need: str, number: int) -> str:
    if not isinstance(value, str) or not value:
        raise PushFileError(f"line {number}: {need}")
    return value


def _order_of(op: Op, document: dict[str, Any], number: int, what: str) -> dict[str, Any]:
    order = document.get("order")
    if not isinstance(order, dict):
        raise PushFileError(f"line {number}: {op} needs an order object ({what})")
    return order


def _masonhub_ref(op: Op, document: dict[str, Any], number: int) -> str:
    """MasonHub: a create or update carries the order (the update: the full order), named by
    its customer_identifier; a cancel names the customer_identifier."""
    if op == "cancel":
        return _text_of(
            document.get("customer_identifier"), "cancel needs customer_identifier", number
        )
    order = _order_of(op, document, number, "the order as the platform takes it")
    return _text_of(
        order.get("customer_identifier"), "the order needs its customer_identifier", number
    )


def _hubrise_ref(op: Op, document: dict[str, Any], number: int) -> str:
    """HubRise: a create carries the order (named by its private_ref, else its ref); an update
    (the PATCH body) and a cancel name the order by order_id or private_ref."""
    if op == "create":
        order = _order_of(op, document, number, "the order as the platform takes it")
        ref = order.get("private_ref") or order.get("ref")
        return _text_of(ref, "the order needs its ref", number)
    if op == "update":
        _order_of(op, document, number, "the PATCH body")
    ref = document.get("order_id") or document.get("private_ref")
    return _text_of(ref, f"{op} needs order_id or private_ref", number)


def _tradecloud_ref(op: Op, document: dict[str, Any], number: int) -> str:
    """Tradecloud: a create or update is the buyer's order message `{"order": {...}, "lines":
    [...]}` under `order`; a cancel names the `purchaseOrderNumber`."""
    if op == "cancel":
        ref = document.get("purchaseOrderNumber")
        return _text_of(ref, "cancel needs purchaseOrderNumber", number)
    message = _order_of(op, document, number, "the buyer's order message")
    header = message.get("order")
    ref = header.get("purchaseOrderNumber") if isinstance(header, dict) else None
    need = 'the message needs {"order": {"purchaseOrderNumber": ...}, "lines": [...]}'
    return _text_of(ref, need, number)


# -- the dialects ------------------------------------------------------------------------------


@dataclass(frozen=True)
class Answer:
    state: str
    request_id: str | None = None
    order_id: str | None = None
    version: int | None = None
    reason: str | None = None


class Writer(Protocol):
    """How one dialect sends a pushed line and follows its request."""

    async def send(self, row: OutboxRow, line: dict[str, Any]) -> Answer: ...

    async def poll(self, rows: Sequence[OutboxRow]) -> dict[int, Answer]: ...


def _headers(row: OutboxRow) -> dict[str, str]:
    return {"Idempotency-Key": row.key}


def refusal(exc: RequestRejected) -> str:
    """The platform's reasons for refusing a request, in one line."""
    body = exc.body
    parts: list[str] = []
    if isinstance(body, dict):
        if isinstance(body.get("message"), str):
            parts.append(body["message"])
        for item in body.get("errors") or []:
            if isinstance(item, dict):
                parts.append(f"{item.get('field')}: {item.get('message')}")
    return f"{exc.status}: " + ("; ".join(parts) if parts else str(exc))


def _created(dialect: str, document: Any) -> Answer:
    try:
        record = decode_record("order", dialect, document, summary=True)
    except (WireError, LookupError, TypeError, ValueError) as exc:
        return Answer(RESOLVED, reason=f"answered without a readable order: {exc}")
    return Answer(RESOLVED, order_id=record.id, version=record.version)


class MasonHubWriter:
    """Create `POST /orders`; update and cancel by asynchronous requests, polled by id."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    async def send(self, row: OutboxRow, line: dict[str, Any]) -> Answer:
        if row.op == "create":
            return await self._create(row, line["order"])
        path = "/order_update_requests" if row.op == "update" else "/order_cancel_requests"
        body = [line["order"]] if row.op == "update" else [{"customer_identifier": row.ref}]
        try:
            answer = await self.client.request_json("POST", path, body=body, headers=_headers(row))
        except RequestRejected as exc:
            return Answer(FAILED, reason=refusal(exc))
        results = answer.body.get("results") if isinstance(answer.body, dict) else None
        if not isinstance(results, list) or len(results) != 1 or not isinstance(results[0], dict):
            return Answer(FAILED, reason=f"{path} answered without one result: {answer.body!r}")
        result = results[0]
        if result.get("status") == "success" and isinstance(result.get("id"), str):
            return Answer(ACCEPTED, request_id=result["id"])
        existing = result.get("existing_request_id")
        if result.get("error_code") == "DUPLICATE_CANCELLATION" and isinstance(existing, str):
            # The order's cancel was asked already (by us under another key, or by someone
            # else): follow that request to its resolution instead of failing.
            return Answer(ACCEPTED, request_id=existing)
        messages = [
            f"{m.get('field_name')}: {'; '.join(map(str, m.get('errors') or []))}"
            for m in result.get("messages") or []
            if isinstance(m, dict)
        ]
        return Answer(FAILED, reason="; ".join(messages) or f"refused: {result!r}")

    async def _create(self, row: OutboxRow, order: Any) -> Answer:
        try:
            answer = await self.client.request_json(
                "POST", "/orders", body=[order], headers=_headers(row)
            )
        except RequestRejected as exc:
            return Answer(FAILED, reason=_item_errors(exc) or refusal(exc))
        data = answer.body.get("data") if isinstance(answer.body, dict) else None
        item = data[0] if isinstance(data, list) and data else None
        if not isinstance(item, dict) or item.get("status") != "created":
            return Answer(FAILED, reason=f"/orders answered without the order: {answer.body!r}")
        return _created("masonhub", item.get("order"))

    async def poll(self, rows: Sequence[OutboxRow]) -> dict[int, Answer]:
        answers: dict[int, Answer] = {}
        for op, path in (
            ("update", "/order_update_requests"),
            ("cancel", "/order_cancel_requests"),
        ):
            open_rows = [r for r in rows if r.op == op and r.request_id]
            for start in range(0, len(open_rows), POLL_BATCH):
                chunk = open_rows[start : start + POLL_BATCH]
                by_id = {r.request_id: r for r in chunk}
                answer = await self.client.get_json(
                    path, [("id", str(i)) for i in by_id] + [("limit", POLL_BATCH)]
                )
                for record in answer.body if isinstance(answer.body, list) else []:
                    row = by_id.get(record.get("id")) if isinstance(record, dict) else None
                    if row is None:
                        continue
                    status = record.get("status")
                    if status == "success":
                        answers[row.seq] = Answer(RESOLVED, order_id=record.get("order_id"))
                    elif status == "failed":
                        reason = record.get("reason") or "failed without a reason"
                        answers[row.seq] = Answer(
                            FAILED, order_id=record.get("order_id"), reason=str(reason)
                        )
        return answers


def _item_errors(exc: RequestRejected) -> str | None:
    """A MasonHub create refused item by item: the item's errors."""
    data = exc.body.get("data") if isinstance(exc.body, dict) else None
    item = data[0] if isinstance(data, list) and data else None
    if not isinstance(item, dict) or not isinstance(item.get("errors"), list):
        return None
    return "; ".join(
        f"{e.get('field')}: {e.get('message')}" for e in item["errors"] if isinstance(e, dict)
    )


class HubRiseWriter:
    """Create `POST /location/orders`; update and cancel `PATCH /location/orders/{id}` (cancel:
    `{"status": "cancelled"}`). Every answer is final: nothing to poll."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    async def send(self, row: OutboxRow, line: dict[str, Any]) -> Answer:
        try:
            if row.op == "create":
                answer = await self.client.request_json(
                    "POST", "/location/orders", body=line["order"], headers=_headers(row)
                )
                return _created("hubrise", answer.body)
            order_id = line.get("order_id") or await self._by_private_ref(row.ref)
            if order_id is None:
                return Answer(FAILED, reason=f"no order has private_ref {row.ref!r}")
            patch = line["order"] if row.op == "update" else {"status": "cancelled"}
            answer = await self.client.request_json(
                "PATCH",
                f"/location/orders/{quote(str(order_id), safe='')}",
                body=patch,
                headers=_headers(row),
            )
        except RequestRejected as exc:
            return Answer(FAILED, reason=refusal(exc))
        return _created("hubrise", answer.body)

    async def _by_private_ref(self, private_ref: str) -> str | None:
        answer = await self.client.get_json("/location/orders", {"private_ref": private_ref})
        found = answer.body if isinstance(answer.body, list) else []
        first = found[0] if found and isinstance(found[0], dict) else None
        return None if first is None else str(first.get("id"))

    async def poll(self, rows: Sequence[OutboxRow]) -> dict[int, Answer]:
        return {}


class TradecloudWriter:
    """The buyer's order message, `POST /api-connector/order`, for all three: a create or an
    update is the message as given (keyed by its purchaseOrderNumber), a cancel the order's
    `indicators.cancelled` without lines. Every answer is final: nothing to poll."""

    def __init__(self, client: ApiClient) -> None:
        self.client = client

    async def send(self, row: OutboxRow, line: dict[str, Any]) -> Answer:
        message = (
            {"order": {"purchaseOrderNumber": row.ref, "indicators": {"cancelled": True}}}
            if row.op == "cancel"
            else line["order"]
        )
        try:
            answer = await self.client.request_json(
                "POST", "/api-connector/order", body=message, headers=_headers(row)
            )
        except RequestRejected as exc:
            return Answer(FAILED, reason=refusal(exc))
        order = answer.body.get("order") if isinstance(answer.body, dict) else None
        return _created("tradecloud", order)

    async def poll(self, rows: Sequence[OutboxRow]) -> dict[int, Answer]:
        return {}


WRITERS: dict[str, Callable[[ApiClient], Writer]] = {
    "masonhub": MasonHubWriter,
    "hubrise": HubRiseWriter,
    "tradecloud": TradecloudWriter,
}


# -- the push ----------------------------------------------------------------------------------


async def push_lines(
    source: str,
    lines: Sequence[PushLine],
    outbox: Outbox,
    writer: Writer,
    *,
    wait_s: float = 60.0,
    poll_interval_s: float = 1.0,
    hook: PushHook | None = None,
    monotonic: Callable[[], float] | None = None,
    sleep: Callable[[float], Any] = asyncio.sleep,
) -> PushReport:
    """Record, send and follow `lines` (see the module's docstring); the report per line."""
    fire = hook or (lambda step: None)
    rows = await outbox.record(source, [line.as_new_row() for line in lines])
    fire("after_insert")
    by_key = {line.key: line for line in lines}
    # A key the outbox holds for another change: that change is what the key stands for (it
    # may have been sent); this line is refused, not sent under it.
    reused = {row.key for row in rows if row.line != by_key[row.key].canonical}
    unanswered: str | None = None
    for row in rows:
        if row.state != PENDING or row.key in reused:
            continue
        if unanswered is not None:
            break  # in file order: a later change never overtakes an unanswered earlier one
        await outbox.sent(row)
        try:
            answer = await writer.send(row, load_exact(row.line))
        except AuthError:
            raise
        except SourceError as exc:  # no answer (retries spent, rate limited): stays pending
            unanswered = str(exc)
            log.warning(
                "push_unanswered", source=source, line=by_key[row.key].number, error=str(exc)
            )
            continue
        fire("after_send")
        if answer.state == FAILED and row.attempts > 0:
            # Sent before, its answer never recorded: were the platform's key gone (keys
            # expire), the refusal may be the first request's own effect (a duplicate).
            hint = "sent before under this key; the platform may already hold the change"
            answer = Answer(FAILED, reason=f"{answer.reason} ({hint})")
        await outbox.answered(
            row,
            answer.state,
            request_id=answer.request_id,
            order_id=answer.order_id,
            version=answer.version,
            reason=answer.reason,
        )
        fire("after_answer")
    await _follow(source, lines, outbox, writer, wait_s, poll_interval_s, fire, sleep, monotonic)
    final = await outbox.rows(source, [line.key for line in lines])
    report = PushReport(source)
    for row in final:
        line = by_key[row.key]
        if row.key in reused:
            earlier = f"key {row.key!r} was pushed before for another change"
            report.results.append(
                LineResult(
                    line.number,
                    line.op,
                    line.ref,
                    row.key,
                    FAILED,
                    reason=f"{earlier} ({row.op} {row.ref}, {row.state})",
                )
            )
            continue
        reason: str | None = row.reason
        if row.state == PENDING and unanswered is not None:
            reason = f"not answered yet: {unanswered}"
        report.results.append(
            LineResult(
                line.number,
                row.op,
                row.ref,
                row.key,
                row.state,
                row.order_id,
                row.request_id,
                reason,
            )
        )
    return report


async def _follow(
    source: str,
    lines: Sequence[PushLine],
    outbox: Outbox,
    writer: Writer,
    wait_s: float,
    poll_interval_s: float,
    fire: PushHook,
    sleep: Callable[[float], Any],
    monotonic: Callable[[], float] | None,
) -> None:
    """Poll the accepted requests until each is resolved or `wait_s` has passed."""
    clock = monotonic or asyncio.get_running_loop().time
    deadline = clock() + wait_s
    keys = [line.key for line in lines]
    while True:
        open_rows = [r for r in await outbox.rows(source, keys) if r.state == ACCEPTED]
        if not open_rows:
            return
        try:
            answers = await writer.poll(open_rows)
        except AuthError:
            raise
        except AgentError as exc:
            log.warning("push_poll_failed", source=source, error=str(exc))
            answers = {}
        fire("during_poll")
        for row in open_rows:
            answer = answers.get(row.seq)
            if answer is not None:
                await outbox.answered(
                    row, answer.state, order_id=answer.order_id, reason=answer.reason
                )
        if len(answers) == len(open_rows) or clock() >= deadline:
            if len(answers) == len(open_rows):
                continue  # one more read: nothing open is left
            return
        await sleep(poll_interval_s)


# -- the agent as a library --------------------------------------------------------------------


async def push(
    source: SourceConfig,
    token: str,
    replica_url: str,
    lines: Sequence[PushLine],
    *,
    wait_s: float = 60.0,
    poll_interval_s: float = 1.0,
    hook: PushHook | None = None,
    retry: RetryPolicy = RetryPolicy(),
    transport: httpx.AsyncBaseTransport | None = None,
    metrics: AgentMetrics | None = None,
) -> PushReport:
    """Push `lines` (from `parse_lines`) to `source`, the outbox in the SQL replica at
    `replica_url` (the agent's `[sink] url`):

        lines = parse_lines("masonhub", "masonhub", open("changes.jsonl"))
        report = await push(source, token, "sqlite:///erp-replica.db", lines)
    """
    if not replica_url.partition("://")[0].split("+")[0].lower().startswith(("sqlite", "postgres")):
        raise ConfigurationError(
            f"push keeps its outbox in the SQL replica; [sink] url {replica_url!r} is not "
            "sqlite:/// or postgresql://"
        )
    writer_of = WRITERS.get(source.dialect)
    if writer_of is None:
        raise ConfigurationError(
            f"source {source.name!r}: pushing to {source.dialect} is not supported; "
            f"push to a source of dialect {' or '.join(WRITERS)}"
        )
    sink = await SqlSink.open(replica_url, writer="inline")
    http = httpx.AsyncClient(timeout=30.0, transport=transport)
    try:
        client = ApiClient(
            http,
            source.base_url,
            token,
            source=source.name,
            retry=retry,
            metrics=metrics,
            auth=auth_headers(source.auth_scheme, token, source.connection_name),
            exact_numbers=PLATFORMS[source.dialect].exact_numbers,
        )
        outbox = await Outbox.open(sink.engine)
        return await push_lines(
            source.name,
            lines,
            outbox,
            writer_of(client),
            wait_s=wait_s,
            poll_interval_s=poll_interval_s,
            hook=hook,
        )
    finally:
        await http.aclose()
        await sink.close()
