"""The agent's exceptions, one tree. Errors of the layers below (httpx, SQLAlchemy, the file
system) are translated at the boundary into these, with the original as `__cause__`.

    AgentError(OrdersyncError)
    ├── SourceError                 the platform could not be read
    │   ├── AuthError               401/403: the token is refused; fatal, never retried
    │   ├── RequestRejected         another 4xx: our request is wrong; retrying will not help
    │   ├── RetriesExhausted        5xx, timeouts or resets outlasted the retry policy
    │   ├── RateLimited             429 asked for a longer wait than the policy accepts
    │   └── ProtocolError           a response not in the shape the dialect promises
    └── SinkError                   the sink could not take a page (nothing of it was kept)
        └── SinkRejected            an HTTP sink answered 4xx: the page itself is refused
"""

from __future__ import annotations

from ordersync.errors import OrdersyncError


class AgentError(OrdersyncError):
    """Base of every error the agent raises on purpose."""


class SourceError(AgentError):
    pass


class AuthError(SourceError):
    """Fatal for the source: a refused token does not fix itself, so the source stops."""


class RequestRejected(SourceError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status


class RetriesExhausted(SourceError):
    pass


class RateLimited(SourceError):
    pass


class ProtocolError(SourceError):
    pass


class SinkError(AgentError):
    pass


class SinkRejected(SinkError):
    def __init__(self, message: str, status: int) -> None:
        super().__init__(message)
        self.status = status
