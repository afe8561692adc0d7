"""The agent's exceptions, one tree. Errors of the layers below (httpx, SQLAlchemy, the file
system) are translated at the boundary into these, with the original as `__cause__`.

    AgentError(OrdersyncError)
    ├── SourceError                 the platform could not be read
    │   ├── AuthError               401/403: the token is refused; fatal, never retried
    │   ├── RequestRejected         another 4xx: our request is wrong; retrying will not help
    │   ├── RetriesExhausted        5xx, timeouts, resets or deadline hits outlasted the policy
    │   ├── RateLimited             429 asked for a longer wait than the policy accepts
    │   ├── Unreachable             no answer at all to a one-off probe (preflight)
    │   ├── RequestAborted          the agent is stopping: the request in flight was dropped
    │   └── ProtocolError           a response not in the shape the dialect promises
    └── SinkError                   the sink could not take a page (nothing of it was kept)
        └── SinkRejected            an HTTP sink answered 4xx: the page itself is refused
"""

from __future__ import annotations

from collections.abc import Iterator
from contextlib import contextmanager
from typing import Any

from sqlalchemy.exc import SQLAlchemyError

from ordersync.errors import OrdersyncError


class AgentError(OrdersyncError):
    """Base of every error the agent raises on purpose."""


class SourceError(AgentError):
    pass


class AuthError(SourceError):
    """Fatal for the source: a refused token does not fix itself, so the source stops."""


class RequestRejected(SourceError):
    """`body`: the platform's JSON answer (its field errors), None when it sent none."""

    def __init__(self, message: str, status: int, body: Any = None) -> None:
        super().__init__(message)
        self.status = status
        self.body = body


class RetriesExhausted(SourceError):
    pass


class RateLimited(SourceError):
    pass


class Unreachable(SourceError):
    pass


class RequestAborted(SourceError):
    """A clean stop, not a failure: the page that request belonged to is simply not applied,
    and the stored cursor has not moved past it."""


class ProtocolError(SourceError):
    """Fails the cycle; the next cycle asks again from the stored cursor."""


# What reading a document of the wrong shape raises: a list where a dict was promised (Type,
# Attribute), a missing key (Lookup), text that is no number or date (Value), an absurd number
# (Arithmetic: overflow, decimal.InvalidOperation), nesting deeper than the stack (Recursion).
_MALFORMED = (LookupError, TypeError, ValueError, AttributeError, ArithmeticError, RecursionError)


@contextmanager
def malformed_answer(where: str) -> Iterator[None]:
    """Reading a platform's answer inside this block: any error of a misshapen document becomes
    one `ProtocolError` naming `where`, never a traceback that ends the agent."""
    try:
        yield
    except ProtocolError:
        raise
    except _MALFORMED as exc:
        raise ProtocolError(
            f"{where} answered a document not in the dialect's shape: {_short(exc)}"
        ) from exc


def _short(exc: BaseException) -> str:
    text = f"{type(exc).__name__}: {exc}"
    return text if len(text) <= 300 else text[:300] + "..."


class SinkError(AgentError):
    pass


@contextmanager
def replica_errors(what: str) -> Iterator[None]:
    """A database or file error inside as a `SinkError` saying `what` failed, with the
    error's first line: it fails one cycle (or one push), never the process."""
    try:
        yield
    except (SQLAlchemyError, OSError) as exc:
        raise SinkError(f"{what}: {str(exc).splitlines()[0]}") from exc


class SinkRejected(SinkError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
