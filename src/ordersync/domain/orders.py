"""Orders as seed 001 describes them. Money and quantities are `Decimal`, never float."""

from __future__ import annotations

from decimal import Decimal
from enum import StrEnum
from typing import Annotated, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    StringConstraints,
    field_validator,
)

from ordersync.domain.lifecycle import OrderStatus
from ordersync.domain.weekdays import normalize_weekdays

Text = Annotated[str, StringConstraints(strip_whitespace=True, min_length=1, max_length=200)]
CountryCode = Annotated[str, StringConstraints(pattern=r"^[A-Z]{2}$")]


class _Model(BaseModel):
    model_config = ConfigDict(extra="forbid", frozen=True)


class Address(_Model):
    """A complete postal address: every line the carrier and the tax engine need."""

    name: Text
    address1: Text
    address2: Annotated[str, StringConstraints(max_length=200)] | None = None
    city: Text
    state: Annotated[str, StringConstraints(strip_whitespace=True, max_length=50)]
    postal_code: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=20)
    ]
    country: CountryCode = Field(description="ISO 3166-1 alpha-2 country code, e.g. US")


class LineItem(_Model):
    line_number: int | None = Field(default=None, ge=1)
    sku_customer_identifier: Text
    quantity: Decimal = Field(gt=0, max_digits=30, decimal_places=12)
    unit_price: Decimal = Field(ge=0, max_digits=30, decimal_places=12)

    @field_validator("quantity", "unit_price")
    @classmethod
    def _positional(cls, value: Decimal) -> Decimal:
        # 1E+2 is exact but unreadable on the wire; keep the value, drop the exponent form.
        return Decimal(format(value, "f")) if value.as_tuple().exponent > 0 else value  # type: ignore[operator]


class OrderLine(LineItem):
    """A line as the hub keeps it: with the time it last changed (Tradecloud's line-level
    `lastUpdatedAt`), so a poller can tell which lines of a changed order actually moved."""

    updated_at: str | None = None


class PickFrom(_Model):
    """An inventory constraint: a hard match must hold, a soft match is a preference."""

    attribute: Text = Field(
        description="lot_number, expiration_date, purchase_order or location (MasonHub's "
        "match_type)"
    )
    value: Text = Field(
        description="the value to match; expiration_date takes YYYY-MM-DD, or >=YYYY-MM-DD "
        "(an extension: that day or later)"
    )
    match: Literal["hard", "soft"] = "hard"


class OrderPolicy(StrEnum):
    SINGLE_SHIPMENT = "single_shipment"
    ALLOW_SPLITS = "allow_splits"
    MINIMIZE_SPLITS = "minimize_splits"


class ValueAddedService(_Model):
    service: Text = Field(description="e.g. gift_wrap, gift_message, insert")
    details: dict[str, str] = Field(default_factory=dict)


class NewOrder(_Model):
    """What a client sends to create an order; the hub adds identity, status and timestamps."""

    customer_identifier: Annotated[
        str, StringConstraints(strip_whitespace=True, min_length=1, max_length=100)
    ]
    order_type: Text
    priority: int = Field(default=0, ge=0, le=1000, description="higher = more urgent")
    shipping_provider: Text
    shipper_service_level: Text
    shipping_address: Address
    billing_address: Address
    submitted_at: str = Field(description="RFC 3339 date-time with offset")
    line_items: list[LineItem] = Field(min_length=1, max_length=500)
    pick_from: list[PickFrom] = Field(default_factory=list, max_length=20)
    order_policy: OrderPolicy = OrderPolicy.ALLOW_SPLITS
    value_added_services: list[ValueAddedService] = Field(default_factory=list, max_length=20)
    delivery_days: tuple[int, ...] | None = Field(
        default=None,
        description="ISO weekdays (1 = Monday .. 7 = Sunday) the customer accepts delivery on; "
        "absent = any day",
    )

    @field_validator("pick_from")
    @classmethod
    def _parsable_pick_from(cls, rules: list[PickFrom]) -> list[PickFrom]:
        # Refused when a client creates the order, naming the rule, rather than failing the
        # order at the warehouse; the allocation's own parser decides (imported here because
        # allocation imports this module). Not on `Order`: a stored order is read as stored.
        if cls is not NewOrder:
            return rules
        from ordersync.domain.allocation import rule_from_pick_from

        for index, rule in enumerate(rules):
            try:
                rule_from_pick_from(rule)
            except ValueError as exc:
                raise ValueError(f"pick_from[{index}]: {exc}") from None
        return rules

    @field_validator("delivery_days")
    @classmethod
    def _weekdays(cls, value: tuple[int, ...] | None) -> tuple[int, ...] | None:
        if value is None:
            return None
        days = normalize_weekdays(value)
        if not days:
            raise ValueError("must name at least one day; leave it out to accept any day")
        return days

    @field_validator("submitted_at")
    @classmethod
    def _rfc3339(cls, value: str) -> str:
        from ordersync.domain.timestamps import check_renderable, format_rfc3339, parse_rfc3339_ms

        return format_rfc3339(check_renderable(parse_rfc3339_ms(value), value))

    @field_validator("line_items")
    @classmethod
    def _number_lines(cls, items: list[LineItem]) -> list[LineItem]:
        numbers = [item.line_number for item in items if item.line_number is not None]
        if len(numbers) != len(set(numbers)):
            raise ValueError("line_number values must be unique within an order")
        taken = set(numbers)
        free = (n for n in range(1, len(items) + len(taken) + 1) if n not in taken)
        return [
            item
            if item.line_number is not None
            else item.model_copy(update={"line_number": next(free)})
            for item in items
        ]


class OrderShort(_Model):
    """Units of a line the warehouse could not ship (MasonHub's `shorts[]` on the order)."""

    line_number: int = Field(ge=1)
    sku_customer_id: str
    quantity: Decimal = Field(gt=0)
    reason: str = Field(description="insufficient_stock or hard_pick_from")


class AllocatedLine(_Model):
    line_number: int = Field(ge=1)
    sku_customer_identifier: str
    lot_number: str | None = None
    quantity: Decimal = Field(gt=0)


class LocationAllocation(_Model):
    """The units of one warehouse location reserved for the order: one shipment when it ships."""

    location: str
    lines: list[AllocatedLine]


class OrderFailure(_Model):
    """Why the warehouse gave the order up (the order is then `canceled`)."""

    reason: str = Field(
        description="pick_from_unmatched, invalid_pick_from, fractional_quantity or "
        "single_shipment_timeout"
    )
    detail: str


class Order(NewOrder):
    """An order as the hub stores and serves it. `shorts`, `allocations` and `failure` are the
    warehouse's: never sent by a client, kept by updates."""

    id: str
    status: OrderStatus = OrderStatus.OPEN
    version: int = 1
    created_at: str
    updated_at: str
    updated_by: str | None = Field(
        default=None, description="the connection that made the last change (echo detection)"
    )
    line_items: list[OrderLine] = Field(min_length=1, max_length=500)  # type: ignore[assignment]
    shorts: list[OrderShort] = Field(default_factory=list)
    allocations: list[LocationAllocation] = Field(default_factory=list)
    failure: OrderFailure | None = None


def stamp_change(before: Order | None, after: Order, stamp: str, by: str | None) -> Order:
    """The bookkeeping of one write: `version` + 1, `updated_at`, `updated_by`, and a new
    `updated_at` on each line that changed. Line statuses derive from the order's status, so a
    status change touches every line."""
    old_lines = {} if before is None else {line.line_number: line for line in before.line_items}
    status_moved = before is None or before.status != after.status

    def touched(line: OrderLine) -> bool:
        old = old_lines.get(line.line_number)
        return (
            status_moved
            or old is None
            or old.model_copy(update={"updated_at": None})
            != (line.model_copy(update={"updated_at": None}))
        )

    lines = [
        line.model_copy(update={"updated_at": stamp}) if touched(line) else line
        for line in after.line_items
    ]
    return after.model_copy(
        update={
            "version": 1 if before is None else before.version + 1,
            "updated_at": stamp,
            "updated_by": by,
            "line_items": lines,
        }
    )
