"""The order lifecycle of seed 001, and which moves between statuses are allowed."""

from __future__ import annotations

from enum import StrEnum

from ordersync.errors import InvalidTransition


class OrderStatus(StrEnum):
    OPEN = "open"
    AT_WAREHOUSE = "atWarehouse"
    IN_PROCESS = "inProcess"
    PACKED = "packed"
    FULFILLED = "fulfilled"
    DELIVERED = "delivered"
    CANCELED = "canceled"


class ShipmentStatus(StrEnum):
    """`manifested` (MasonHub's word): packed, label printed, not yet handed to the carrier."""

    MANIFESTED = "manifested"
    SHIPPED = "shipped"
    IN_TRANSIT = "in_transit"
    DELIVERED = "delivered"


_FORWARD = {
    OrderStatus.OPEN: OrderStatus.AT_WAREHOUSE,
    OrderStatus.AT_WAREHOUSE: OrderStatus.IN_PROCESS,
    OrderStatus.IN_PROCESS: OrderStatus.PACKED,
    OrderStatus.PACKED: OrderStatus.FULFILLED,
    OrderStatus.FULFILLED: OrderStatus.DELIVERED,
}

CANCELABLE = frozenset({OrderStatus.OPEN, OrderStatus.AT_WAREHOUSE, OrderStatus.IN_PROCESS})


def next_status(current: OrderStatus) -> OrderStatus | None:
    """The status an order moves to next on the happy path; None once it is final."""
    return _FORWARD.get(current)


def check_transition(current: OrderStatus | str, target: OrderStatus | str) -> None:
    """Raise `InvalidTransition`, with the reason, unless `current -> target` is allowed."""
    current, target = OrderStatus(current), OrderStatus(target)
    if target is OrderStatus.CANCELED:
        if current in CANCELABLE:
            return
        raise InvalidTransition(
            f"an order in status {current} can no longer be canceled "
            f"(only {', '.join(sorted(CANCELABLE))} orders can)"
        )
    if _FORWARD.get(current) is target:
        return
    expected = _FORWARD.get(current)
    if expected is None:
        raise InvalidTransition(f"an order in status {current} is final and cannot change status")
    raise InvalidTransition(
        f"an order in status {current} can only move to {expected}, not {target}"
    )
