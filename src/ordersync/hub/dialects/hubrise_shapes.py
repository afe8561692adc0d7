"""HubRise request bodies mapped to a domain `NewOrder`, and the hub's rows rendered through
the HubRise codec (`ordersync.wire.hubrise`, which renders orders, shipments and events)."""

from __future__ import annotations

from decimal import Decimal, InvalidOperation
from typing import Any

import orjson
from pydantic import BaseModel, ConfigDict, StrictInt, StrictStr, ValidationError

from ordersync.domain import NewOrder, OrderStatus, format_rfc3339
from ordersync.domain.weekdays import parse_dow
from ordersync.hub.errors import ApiError
from ordersync.store.hubrise import Location, OrderRow
from ordersync.wire.hubrise import STATUS_OUT, render_event, render_order
from ordersync.wire.hubrise_values import (
    EXACT,
    format_money,
    parse_decimal,
    parse_money,
    parse_time,
    subtotal,
    zone,
)

__all__ = ["STATUS_OUT", "render_event", "render_order"]

STATUS_IN = {wire: OrderStatus(ours) for ours, wire in STATUS_OUT.items()}
# HubRise statuses our lifecycle has no equivalent for: a valid filter that matches nothing.
UNMAPPED_STATUSES = frozenset({"accepted", "awaiting_collection", "rejected", "delivery_failed"})

FieldErrors = list[tuple[str, str]]


def clean_message(message: str) -> str:
    """A pydantic message without its "Value error, " prefix."""
    return message.removeprefix("Value error, ")


def render_row(row: OrderRow, location: Location) -> dict[str, Any]:
    """The order with its event id as an ordersync extension field (`event_id`, a string like
    HubRise's ids: the `id` of the callback event of the change that made this version)."""
    rendered = render_order(orjson.loads(row.doc), location, row.private_ref)
    rendered["event_id"] = None if row.event_id is None else str(row.event_id)
    return rendered


# -- request bodies ----------------------------------------------------------------------------


class _Wire(BaseModel):
    model_config = ConfigDict(extra="forbid")


class CustomerIn(_Wire):
    first_name: str | None = None
    last_name: str | None = None
    address_1: str
    address_2: str | None = None
    city: str
    state: str | None = None
    postal_code: str
    country: str


class ItemIn(_Wire):
    line_number: int | None = None
    product_name: str | None = None  # not kept: the hub knows products by sku_ref
    sku_ref: str
    price: str
    # Strict: lax validation would take `true` as the quantity 1, which the agent refuses.
    quantity: StrictStr | StrictInt | Decimal
    subtotal: str | None = None  # derived; accepted so that a rendered order can be sent back


class OrderIn(_Wire):
    status: str = "new"
    private_ref: str | None = None
    ref: str
    service_type: str | None = None
    service_type_ref: str
    customer_notes: None = None
    customer: CustomerIn
    items: list[ItemIn]
    total: str | None = None
    billing_address: CustomerIn | None = None
    delivery_days: str | None = None
    shipping_provider: str
    order_type: str = "customer"
    priority: int = 0
    order_policy: str | None = None
    pick_from: list[Any] | None = None
    value_added_services: list[Any] | None = None
    submitted_at: str | None = None


class OrderPatch(_Wire):
    status: str | None = None
    private_ref: str | None = None


class CallbackIn(_Wire):
    url: str | None = None
    events: dict[str, list[str]]


_DOMAIN_FIELDS = {
    "customer_identifier": "ref",
    "shipper_service_level": "service_type_ref",
    "shipping_address": "customer",
    "line_items": "items",
    "sku_customer_identifier": "sku_ref",
    "unit_price": "price",
    "name": "first_name",
    "address1": "address_1",
    "address2": "address_2",
}


def wire_field(loc: tuple[Any, ...]) -> str:
    return ".".join(_DOMAIN_FIELDS.get(str(part), str(part)) for part in loc) or "base"


def errors_of(exc: ValidationError, wire: bool = True) -> FieldErrors:
    """(field, message) pairs; `wire=False` renames domain fields to their HubRise names."""
    name = (lambda loc: ".".join(str(p) for p in loc)) if wire else wire_field
    return [(name(e["loc"]), clean_message(e["msg"])) for e in exc.errors()]


def new_order(body: OrderIn, location: Location, now_ms: int) -> NewOrder:
    """The domain order a HubRise-shaped body describes; 422 with every field at fault."""
    tz, errors = zone(location.timezone), []

    def money(value: str, field: str) -> Decimal:
        try:
            amount, currency = parse_money(value)
        except ValueError as exc:
            errors.append((field, str(exc)))
            return Decimal(0)
        if currency != location.currency:
            errors.append((field, f"must be in {location.currency}, the location's currency"))
        return amount

    if body.status != "new":
        errors.append(("status", "an order is created in status new"))
    if body.service_type not in (None, "delivery"):
        errors.append(("service_type", "this hub fulfils delivery orders only"))
    lines: list[dict[str, Any]] = []
    for i, item in enumerate(body.items):
        try:
            quantity: Decimal | str = parse_decimal(item.quantity)
        except ValueError as exc:
            errors.append((f"items.{i}.quantity", str(exc)))
            quantity = "1"
        price = money(item.price, f"items.{i}.price")
        lines.append(
            {
                "line_number": item.line_number,
                "sku_customer_identifier": item.sku_ref,
                "quantity": quantity,
                "unit_price": price,
            }
        )
    if body.total is not None:
        stated = money(body.total, "total")
        computed: Decimal | None = None
        try:
            running = Decimal(0)
            for line in lines:
                amount = subtotal(
                    Decimal(line["unit_price"]), Decimal(line["quantity"]), location.currency
                )
                running = EXACT.add(running, Decimal(amount.partition(" ")[0]))
            computed = running
        except InvalidOperation:
            pass  # an amount beyond what the hub keeps: the domain check below names the item
        if not errors and computed is not None and stated != computed:
            errors.append(
                (
                    "total",
                    f"must be the sum of the items, {format_money(computed, location.currency)}",
                )
            )
    days = None
    if body.delivery_days is not None:
        try:
            days = parse_dow(body.delivery_days)
        except ValueError as exc:
            errors.append(("delivery_days", str(exc)))
    submitted = now_ms
    if body.submitted_at is not None:
        try:
            submitted = parse_time(body.submitted_at, tz)
        except ValueError as exc:
            errors.append(("submitted_at", str(exc)))
    fields: dict[str, Any] = {
        "customer_identifier": body.ref,
        "order_type": body.order_type,
        "priority": body.priority,
        "shipping_provider": body.shipping_provider,
        "shipper_service_level": body.service_type_ref,
        "shipping_address": _address(body.customer),
        "billing_address": _address(body.billing_address or body.customer),
        "submitted_at": format_rfc3339(submitted),
        "line_items": lines,
        "delivery_days": days,
    }
    for optional in ("order_policy", "pick_from", "value_added_services"):
        if getattr(body, optional) is not None:
            fields[optional] = getattr(body, optional)
    try:
        order = NewOrder.model_validate(fields)
    except ValidationError as exc:
        errors += [e for e in errors_of(exc, wire=False) if e[0] not in {f for f, _ in errors}]
        order = None
    if errors or order is None:
        raise ApiError(422, "Validation failed", errors)
    return order


def _address(customer: CustomerIn) -> dict[str, Any]:
    name = " ".join(p for p in (customer.first_name, customer.last_name) if p and p.strip())
    return {
        "name": name,
        "address1": customer.address_1,
        "address2": customer.address_2,
        "city": customer.city,
        "state": customer.state or "",
        "postal_code": customer.postal_code,
        "country": customer.country,
    }
