"""ordersync's exceptions, one tree.

    OrdersyncError
    ├── DomainError                 the request makes no sense for the domain
    │   ├── InvalidTransition       a status move the lifecycle forbids
    │   └── ValidationFailed        field-level problems, as (field, message) pairs
    ├── NotFound                    no such entity in this account
    ├── Conflict                    a uniqueness rule would break (duplicate customer_identifier)
    ├── AuthenticationFailed        missing or unknown credentials
    ├── WriteTimedOut               a write outlived the commit-lag bound: rolled back, retry
    └── ConfigurationError          settings or command-line input that cannot work (exit 2)
        ├── PortInUse               a port to listen on is taken (exit 5)
        ├── ReplicaUnavailable      the replica or its directory cannot be opened (exit 6)
        └── WouldOverwrite          a command would delete data it did not make (exit 7)

The hub maps each to an HTTP status and `error_type`; the CLI prints their message without a
traceback, and exits with the error's `exit_code` (README.md, "Exit codes").
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
    exit_code = 2


class PortInUse(ConfigurationError):
    exit_code = 5


class ReplicaUnavailable(ConfigurationError):
    exit_code = 6


class WouldOverwrite(ConfigurationError):
    exit_code = 7


def exit_code(exc: BaseException, default: int = 2) -> int:
    """The process exit code a command ends with for `exc` (README.md, "Exit codes")."""
    code = getattr(exc, "exit_code", default)
    return code if isinstance(code, int) else default
