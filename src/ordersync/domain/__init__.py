"""The pure domain: orders, shipments, their lifecycle and validation. No I/O imports here."""

from ordersync.domain.lifecycle import (
    CANCELABLE,
    OrderStatus,
    ShipmentStatus,
    check_transition,
)
from ordersync.domain.orders import (
    Address,
    LineItem,
    NewOrder,
    Order,
    OrderLine,
    OrderPolicy,
    PickFrom,
    ValueAddedService,
    stamp_change,
)
from ordersync.domain.shipments import NewShipment, Shipment, ShipmentLine
from ordersync.domain.timestamps import format_rfc3339, now_ms, parse_rfc3339_ms
from ordersync.domain.weekdays import format_dow, normalize_weekdays, parse_dow

__all__ = [
    "CANCELABLE",
    "Address",
    "LineItem",
    "NewOrder",
    "NewShipment",
    "Order",
    "OrderLine",
    "OrderPolicy",
    "OrderStatus",
    "PickFrom",
    "Shipment",
    "ShipmentLine",
    "ShipmentStatus",
    "ValueAddedService",
    "check_transition",
    "format_dow",
    "format_rfc3339",
    "normalize_weekdays",
    "now_ms",
    "parse_dow",
    "parse_rfc3339_ms",
    "stamp_change",
]
