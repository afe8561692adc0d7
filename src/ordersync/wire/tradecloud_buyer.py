"""Tradecloud's buyer order message (`POST /v2/api-connector/order`), both directions, pure.

The message is Tradecloud's own (`{"order": {...}, "lines": [...], "erpIssueDateTime", ...}`):
`order.purchaseOrderNumber` names the order, `lines[].position` its lines, each line's quantity
is the sum of its `deliverySchedule` quantities and its price `prices.netPrice.
priceInTransactionCurrency.value` per `prices.priceUnitQuantity` items. What the hub keeps and
Tradecloud's message has no field for rides in ordersync extension fields of `order`
(`orderType`, `priority`, `shippingProvider`, `shippingServiceLevel`, `orderPolicy`,
`invoiceAddress`, `destination.state`); they default when left out. Fields Tradecloud documents
that the hub does not keep (`description`, `terms`, `notes`, `itemDetails`, ...) are accepted
and ignored; unknown fields are refused (a typo is not silently dropped).

Update and cancel follow Tradecloud's rules (README, "Tradecloud dialect"):

- a known `purchaseOrderNumber` updates the order: each line sent replaces the line of its
  position or is added; lines not sent are kept, unless `order.indicators.
  cancelLineWhenMissing` is true (then the message is the full set of lines);
- `indicators.cancelled` on a line cancels that line; on the order it cancels the lines sent,
  or the whole order when no line is sent. The hub keeps no status per line: a cancelled line
  leaves the order, and when no line would be left the order is canceled (its lines kept).

`plan(before, message, now)` turns a message into what to write; `render_message(doc)` is the
reverse (the message that recreates an order), so a pusher can send what the hub holds.
"""

from __future__ import annotations

from dataclasses import dataclass
from decimal import Decimal, InvalidOperation
from typing import Any, Literal

from pydantic import BaseModel, ConfigDict, Field, ValidationError

from ordersync.domain import format_rfc3339, parse_rfc3339_ms
from ordersync.domain.lifecycle import OrderStatus
from ordersync.domain.orders import NewOrder, Order, OrderPolicy
from ordersync.errors import InvalidTransition, ValidationFailed

DEFAULT_ORDER_TYPE = "purchase"
DEFAULT_PROVIDER = "unassigned"
DEFAULT_SERVICE_LEVEL = "standard"
MAX_LINES = 500
# An order takes the buyer's updates until the warehouse has packed it.
UPDATABLE = frozenset({OrderStatus.OPEN, OrderStatus.AT_WAREHOUSE, OrderStatus.IN_PROCESS})

Short = Field(default=None, max_length=200)


class _Strict(BaseModel):
    model_config = ConfigDict(extra="forbid")


class Destination(_Strict):
    code: str | None = Field(default=None, max_length=100)
    names: list[str] = Field(default_factory=list, max_length=5)
    addressLines: list[str] = Field(default_factory=list, max_length=5)
    postalCode: str | None = Field(default=None, max_length=20)
    city: str | None = Short
    state: str | None = Field(default=None, max_length=50)  # ordersync extension
    countryCodeIso2: str | None = Field(default=None, max_length=2)
    countryName: Any = None
    locationType: Any = None


class OrderIndicators(_Strict):
    cancelled: bool = False
    cancelLineWhenMissing: bool = False
    noDeliveryExpected: bool = False
    shipped: bool = False
    delivered: bool = False
    completed: bool = False


class LineIndicators(_Strict):
    cancelled: bool = False
    noDeliveryExpected: bool = False
    shipped: bool = False
    delivered: bool = False
    completed: bool = False


class OrderHeader(_Strict):
    purchaseOrderNumber: str = Field(min_length=1, max_length=100)
    destination: Destination | None = None
    indicators: OrderIndicators = Field(default_factory=OrderIndicators)
    # ordersync extensions: what the hub keeps that Tradecloud's message has no field for.
    invoiceAddress: Destination | None = None
    orderType: str | None = Short
    priority: int | None = Field(default=None, ge=0, le=1000)
    shippingProvider: str | None = Short
    shippingServiceLevel: str | None = Short
    orderPolicy: OrderPolicy | None = None
    # Documented by Tradecloud, not kept by the hub.
    companyId: Any = None
    supplierAccountNumber: Any = None
    description: Any = None
    terms: Any = None
    properties: Any = None
    documents: Any = None
    notes: Any = None
    labels: Any = None
    contact: Any = None


class Item(_Strict):
    number: str = Field(min_length=1, max_length=200)
    revision: Any = None
    name: Any = None
    description: Any = None
    purchaseUnitOfMeasureIso: Any = None
    supplierItemNumber: Any = None


class ScheduleLine(_Strict):
    position: str | None = Field(default=None, max_length=20)
    date: str | None = Field(default=None, max_length=10)
    quantity: Decimal = Field(gt=0, max_digits=30, decimal_places=12)
    status: Any = None


class Money(_Strict):
    value: Decimal = Field(ge=0, max_digits=30, decimal_places=12)
    currencyIso: str | None = Field(default=None, max_length=3)


class Price(_Strict):
    priceInTransactionCurrency: Money | None = None
    priceInBaseCurrency: Money | None = None


class Prices(_Strict):
    netPrice: Price | None = None
    grossPrice: Any = None
    discountPercentage: Any = None
    priceUnitOfMeasureIso: Any = None
    priceUnitQuantity: Decimal | None = Field(default=None, gt=0, max_digits=30, decimal_places=12)


class Line(_Strict):
    position: str = Field(min_length=1, max_length=10, pattern=r"^[0-9]+$")
    item: Item | None = None
    deliverySchedule: list[ScheduleLine] | None = Field(default=None, max_length=100)
    prices: Prices | None = None
    indicators: LineIndicators = Field(default_factory=LineIndicators)
    # Documented by Tradecloud, not kept by the hub.
    row: Any = None
    description: Any = None
    itemDetails: Any = None
    chargeLines: Any = None
    deliveryHistory: Any = None
    terms: Any = None
    projectNumber: Any = None
    productionNumber: Any = None
    salesOrderNumber: Any = None
    properties: Any = None
    documents: Any = None
    notes: Any = None
    labels: Any = None
    reason: Any = None


class OrderMessage(_Strict):
    """The body of `POST /v2/api-connector/order`."""

    order: OrderHeader
    lines: list[Line] = Field(default_factory=list, max_length=MAX_LINES)
    erpIssueDateTime: str | None = Field(default=None, max_length=40)
    erpIssuedBy: Any = None
    erpLastChangeDateTime: Any = None
    erpLastChangedBy: Any = None


EXAMPLE: dict[str, Any] = {
    "order": {
        "purchaseOrderNumber": "PO-1001",
        "destination": {
            "code": "001",
            "names": ["Main warehouse"],
            "addressLines": ["Street 123"],
            "postalCode": "1234 AB",
            "city": "Rotterdam",
            "countryCodeIso2": "NL",
        },
    },
    "lines": [
        {
            "position": "0001",
            "item": {"number": "SKU-1"},
            "deliverySchedule": [{"position": "0001", "date": "2026-12-24", "quantity": "2"}],
            "prices": {"netPrice": {"priceInTransactionCurrency": {"value": "9.99"}}},
        }
    ],
    "erpIssueDateTime": "2026-12-01T10:11:12",
}


def parse_message(payload: Any) -> OrderMessage:
    """The message, or `ValidationFailed` naming each field (dotted, Tradecloud's names)."""
    try:
        message = OrderMessage.model_validate(payload)
    except ValidationError as exc:
        errors = [
            (".".join(str(p) for p in e.get("loc", ())) or "body", str(e.get("msg", "invalid")))
            for e in exc.errors()
        ]
        raise ValidationFailed("request body is invalid", errors) from None
    problems: list[tuple[str, str]] = []
    for name in ("noDeliveryExpected", "shipped", "delivered", "completed"):
        if getattr(message.order.indicators, name):
            problems.append((f"order.indicators.{name}", _WAREHOUSE_SETS))
        for i, line in enumerate(message.lines):
            if getattr(line.indicators, name):
                problems.append((f"lines.{i}.indicators.{name}", _WAREHOUSE_SETS))
    positions = [int(line.position) for line in message.lines]
    if len(set(positions)) != len(positions):
        problems.append(("lines", "each position at most once per message"))
    if any(p < 1 for p in positions):
        problems.append(("lines", "positions start at 1"))
    if problems:
        raise ValidationFailed("request body is invalid", problems)
    return message


_WAREHOUSE_SETS = "not taken by this hub: its warehouse ships, delivers and completes orders"


@dataclass(frozen=True)
class Plan:
    """What a message comes to for the order it names."""

    action: Literal["create", "update", "cancel", "unchanged"]
    order: NewOrder | None = None  # create: the new order; update: the replacement


def plan(before: Order | None, message: OrderMessage, now_ms: int) -> Plan:
    """The write a message asks for: `before` is the order of its purchaseOrderNumber, if any.
    `ValidationFailed` (naming the fields) when the message cannot make a whole order."""
    cancelled = _cancelled_positions(message)
    if before is None:
        if message.order.indicators.cancelled or cancelled:
            raise ValidationFailed(
                "nothing to cancel",
                [("order.purchaseOrderNumber", "no order with this purchaseOrderNumber")],
            )
        return Plan("create", _new_order(message, now_ms))
    existing: dict[int, Any] = {int(line.line_number or 0): line for line in before.line_items}
    cancels_all = message.order.indicators.cancelled and not message.lines
    lines: dict[int, Any] = {} if message.order.indicators.cancelLineWhenMissing else dict(existing)
    errors: list[tuple[str, str]] = []
    for i, line in enumerate(message.lines):
        number = int(line.position)
        if number in cancelled:
            lines.pop(number, None)
            continue
        item = _line_item(line, f"lines.{i}", errors)
        if item is not None:
            lines[number] = item
    if errors:
        raise ValidationFailed("request body is invalid", errors)
    if cancels_all or not lines:
        if before.status == "canceled":
            return Plan("unchanged")
        return Plan("cancel")
    replacement = _header(message, before) | {
        "line_items": [_plain(lines[n]) for n in sorted(lines)]
    }
    new = _validated(replacement, message.order.invoiceAddress is not None)
    if _comparable(before) == _comparable_new(new):
        return Plan("unchanged")
    if before.status not in UPDATABLE:
        raise InvalidTransition(
            f"the order is {before.status} and can no longer be updated (only "
            f"{', '.join(sorted(UPDATABLE))} orders can: packed, shipped or canceled orders "
            "are final for the buyer)"
        )
    return Plan("update", new)


def _cancelled_positions(message: OrderMessage) -> set[int]:
    by_order = message.order.indicators.cancelled
    return {int(line.position) for line in message.lines if line.indicators.cancelled or by_order}


def _new_order(message: OrderMessage, now_ms: int) -> NewOrder:
    errors: list[tuple[str, str]] = []
    if message.order.destination is None:
        errors.append(("order.destination", "required for a new order"))
    if not message.lines:
        errors.append(("lines", "a new order needs at least one line"))
    items = []
    for i, line in enumerate(message.lines):
        item = _line_item(line, f"lines.{i}", errors)
        if item is not None:
            items.append(item)
    if errors:
        raise ValidationFailed("request body is invalid", errors)
    issued = _issued_at(message, format_rfc3339(now_ms))
    return _validated(
        invoice=message.order.invoiceAddress is not None,
        data=_header(message, None)
        | {"customer_identifier": message.order.purchaseOrderNumber, "submitted_at": issued}
        | {"line_items": [_plain(item) for item in items]},
    )


def _header(message: OrderMessage, before: Order | None) -> dict[str, Any]:
    """The order-level fields: the message's where it has them, else `before`'s (an update)
    or the defaults (a create)."""
    head = message.order
    kept: dict[str, Any] = (
        before.model_dump(
            mode="json",
            include={
                "customer_identifier",
                "order_type",
                "priority",
                "shipping_provider",
                "shipper_service_level",
                "shipping_address",
                "billing_address",
                "submitted_at",
                "order_policy",
                "pick_from",
                "value_added_services",
                "delivery_days",
            },
        )
        if before is not None
        else {
            "order_type": DEFAULT_ORDER_TYPE,
            "shipping_provider": DEFAULT_PROVIDER,
            "shipper_service_level": DEFAULT_SERVICE_LEVEL,
        }
    )
    given = {
        "order_type": head.orderType,
        "priority": head.priority,
        "shipping_provider": head.shippingProvider,
        "shipper_service_level": head.shippingServiceLevel,
        "order_policy": None if head.orderPolicy is None else head.orderPolicy.value,
    }
    kept |= {k: v for k, v in given.items() if v is not None}
    if head.destination is not None:
        kept["shipping_address"] = _address(head.destination)
        if before is None and head.invoiceAddress is None:
            kept["billing_address"] = kept["shipping_address"]
    if head.invoiceAddress is not None:
        kept["billing_address"] = _address(head.invoiceAddress)
    if before is not None and message.erpIssueDateTime is not None:
        kept["submitted_at"] = _issued_at(message, kept["submitted_at"])
    return kept


def _address(place: Destination) -> dict[str, Any]:
    lines = place.addressLines
    return {
        "name": place.names[0] if place.names else place.code,
        "address1": lines[0] if lines else None,
        "address2": ", ".join(lines[1:]) or None,
        "city": place.city,
        "state": place.state or "",
        "postal_code": place.postalCode,
        "country": place.countryCodeIso2,
    }


def _issued_at(message: OrderMessage, default: str) -> str:
    """`erpIssueDateTime` (Tradecloud: local `yyyy-MM-ddThh:mm:ss`, read as UTC; an offset
    is honoured) as RFC 3339."""
    value = message.erpIssueDateTime
    if value is None:
        return default
    text = value if _has_offset(value) else value + "Z"
    try:
        return format_rfc3339(parse_rfc3339_ms(text))
    except ValueError:
        raise ValidationFailed(
            "request body is invalid",
            [("erpIssueDateTime", "a date-time yyyy-MM-ddThh:mm:ss")],
        ) from None


def _has_offset(value: str) -> bool:
    tail = value[19:]
    return tail.endswith("Z") or "+" in tail or "-" in tail


def _line_item(line: Line, path: str, errors: list[tuple[str, str]]) -> dict[str, Any] | None:
    """A whole line (its number, item, quantity and unit price), or None with `errors`."""
    before = len(errors)
    if line.item is None:
        errors.append((f"{path}.item", "required (item.number)"))
    if not line.deliverySchedule:
        errors.append((f"{path}.deliverySchedule", "at least one entry with a quantity"))
    net = line.prices.netPrice if line.prices else None
    money = net.priceInTransactionCurrency if net else None
    if money is None:
        errors.append(
            (f"{path}.prices.netPrice.priceInTransactionCurrency.value", "required by this hub")
        )
    if len(errors) > before or line.item is None or money is None or not line.deliverySchedule:
        return None
    per = line.prices.priceUnitQuantity if line.prices else None
    unit_price = money.value
    if per is not None and per != 1:
        try:
            unit_price = (money.value / per).quantize(Decimal(1).scaleb(-12))
        except InvalidOperation:
            unit_price = Decimal(-1)
        if unit_price * per != money.value or unit_price < 0:
            errors.append(
                (f"{path}.prices.priceUnitQuantity", "the unit price must come out exact")
            )
            return None
    return {
        "line_number": int(line.position),
        "sku_customer_identifier": line.item.number,
        "quantity": sum((s.quantity for s in line.deliverySchedule), Decimal(0)),
        "unit_price": unit_price,
    }


def _plain(item: Any) -> dict[str, Any]:
    if isinstance(item, dict):
        return item
    line: dict[str, Any] = item.model_dump(exclude={"updated_at"})
    return line


def _validated(data: dict[str, Any], invoice: bool) -> NewOrder:
    try:
        return NewOrder.model_validate(data)
    except ValidationError as exc:
        errors: list[tuple[str, str]] = []
        for e in exc.errors():
            pair = (_field(e.get("loc", ()), invoice), str(e["msg"]))
            if pair not in errors:
                errors.append(pair)
        raise ValidationFailed("request body is invalid", errors) from None


# The domain's field, named as the message names it (for the 422's field breakdown).
_FIELD_NAMES = {
    "shipping_address": "order.destination",
    "order_type": "order.orderType",
    "shipping_provider": "order.shippingProvider",
    "shipper_service_level": "order.shippingServiceLevel",
    "customer_identifier": "order.purchaseOrderNumber",
    "submitted_at": "erpIssueDateTime",
    "line_items": "lines",
}
_ADDRESS_NAMES = {
    "name": "names",
    "address1": "addressLines",
    "address2": "addressLines",
    "city": "city",
    "state": "state",
    "postal_code": "postalCode",
    "country": "countryCodeIso2",
}
_LINE_NAMES = {
    "sku_customer_identifier": "item.number",
    "quantity": "deliverySchedule",
    "unit_price": "prices.netPrice",
}


def message_field(stored: str) -> str:
    """The message's name of a stored order's field (`line_items.0.sku_customer_identifier`
    -> `lines.0.item.number`), for refusals the store words in its own names."""
    return _field(tuple(stored.split(".")), invoice=False)


def _field(loc: tuple[Any, ...], invoice: bool) -> str:
    parts = [str(p) for p in loc]
    if not parts:
        return "order"
    head = _FIELD_NAMES.get(parts[0], f"order.{parts[0]}")
    rest = parts[1:]
    if parts[0] == "billing_address":
        # Without an invoiceAddress the destination is copied there: name the field sent.
        head = "order.invoiceAddress" if invoice else "order.destination"
    if parts[0] in ("shipping_address", "billing_address") and rest:
        return f"{head}.{_ADDRESS_NAMES.get(rest[0], rest[0])}"
    if parts[0] == "line_items" and len(rest) >= 2:
        return f"lines.{rest[0]}.{_LINE_NAMES.get(rest[1], rest[1])}"
    return ".".join([head, *rest])


# What a stored order has that a client's order does not (identity, stamps, the warehouse's
# shorts and allocations): left out when comparing a message with the stored order.
_STORED_ONLY = set(Order.model_fields) - set(NewOrder.model_fields)


def _comparable(order: Order) -> dict[str, Any]:
    data = NewOrder.model_validate(
        order.model_dump(exclude=_STORED_ONLY | {"line_items"})
        | {"line_items": [_plain(line) for line in order.line_items]}
    )
    return _comparable_new(data)


def _comparable_new(order: NewOrder) -> dict[str, Any]:
    dumped: dict[str, Any] = order.model_dump(mode="json")
    return dumped


def render_message(doc: dict[str, Any]) -> dict[str, Any]:
    """The message that creates (or fully restates) the order `doc` (the hub's stored,
    MasonHub-shaped document): every line, `cancelLineWhenMissing` so that it is the whole
    set, `cancelled` when the order is canceled."""
    issued = doc["submitted_at"]
    return {
        "order": {
            "purchaseOrderNumber": doc["customer_identifier"],
            "destination": _destination(doc["shipping_address"]),
            "invoiceAddress": _destination(doc["billing_address"]),
            "orderType": doc["order_type"],
            "priority": doc["priority"],
            "shippingProvider": doc["shipping_provider"],
            "shippingServiceLevel": doc["shipper_service_level"],
            "orderPolicy": doc["order_policy"],
            "indicators": {
                "cancelLineWhenMissing": True,
                "cancelled": doc.get("status") == "canceled",
            },
        },
        "lines": [
            {
                "position": f"{line['line_number']:04d}",
                "item": {"number": line["sku_customer_identifier"]},
                "deliverySchedule": [
                    {"position": "0001", "date": issued[:10], "quantity": str(line["quantity"])}
                ],
                "prices": {
                    "netPrice": {"priceInTransactionCurrency": {"value": str(line["unit_price"])}}
                },
            }
            for line in doc["line_items"]
        ],
        "erpIssueDateTime": issued,
    }


def _destination(address: dict[str, Any]) -> dict[str, Any]:
    lines = [address["address1"]] + ([address["address2"]] if address.get("address2") else [])
    return {
        "names": [address["name"]],
        "addressLines": lines,
        "postalCode": address["postal_code"],
        "city": address["city"],
        "state": address["state"],
        "countryCodeIso2": address["country"],
    }
