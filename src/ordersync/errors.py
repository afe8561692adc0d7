"""ordersync's exceptions, one tree.

    OrdersyncError
    ├── DomainError                 the request makes no sense for the domain
    │   ├── InvalidTransition       a status move the lifecycle forbids
    │   └── ValidationFailed        field-level problems, as (field, message) pairs
    ├── NotFound                    no such entity in this account
    ├── Conflict                    a uniqueness rule would break (duplicate customer_identifier)
    ├── AuthenticationFailed        missing or unknown credentials
    ├── WriteTimedOut               a write outlived the commit-lag bound: rolled back, retry
    └── ConfigurationError          settings or command-line input that cannot work

The hub maps each to an HTTP status and `error_type`; the CLI prints their message without a
traceback.
"""

from __future__ import annotations


class OrdersyncError(Exception):
    """Base of every error ordersync raises on purpose."""


class DomainError(OrdersyncError):
    pass


class InvalidTransition(DomainError):
    pass


class ValidationFailed(DomainError):
    def __init__(self, message: str, errors: list[tuple[str, str]]) -> None:
        super().__init__(message)
        self.errors = errors


class NotFound(OrdersyncError):
    pass


class Conflict(OrdersyncError):
    pass


class AuthenticationFailed(OrdersyncError):
    pass


class WriteTimedOut(OrdersyncError):
    """A write transaction ran past the hub's write deadline (or a statement timeout) and
    was rolled back, so that no commit ever becomes visible later than the advertised bound.
    Nothing was changed; the request may be retried."""


class ConfigurationError(OrdersyncError):
    pass
