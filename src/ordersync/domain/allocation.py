"""Allocation: which stock units fill which order lines, in which shipments, and what is short.

`allocate(orders, stock)` is pure: it returns an outcome per order and the stock afterwards.

Order of decisions, for each order:

1. **Priority.** Orders take stock one after the other, highest `priority` first (our field is
   seed 001's "higher = more urgent", 0..1000; MasonHub's OpenAPI `priority` is 1..10000 with
   1 = top, so its codec must invert it), then earliest `submitted_at`, then `id`. An order
   that waits or fails reserves nothing: lower-priority orders may take the stock it wanted.
2. **Hard `pick_from`** rules are never broken. When no stock unit of the line's SKU matches
   them at all (any location, any status, e.g. a lot that does not exist), the order fails
   (`pick_from_unmatched`); matching units that are merely not available are a shortage.
3. **Split policy** (MasonHub's `split_policy`: `manual` -> `single_shipment`, `auto` ->
   `minimize_splits`):
   - `single_shipment`: one location fills every line in full, or the order *waits*
     (`no_single_location`); it never ships part and never has shorts. The caller fails it
     after its configured time; the timer is not modelled here.
   - `allow_splits`: as many units as the stock allows, from any locations (locations that can
     fill more of the order are drawn from first); the rest is short.
   - `minimize_splits`: the same quantity as `allow_splits`, from the fewest locations. Exact
     (every subset of locations, smallest first) up to `max_exact_locations` candidate
     locations; beyond that, greedy set cover.
   Splitting orders ship what they can and record `shorts` (`insufficient_stock`, or
   `hard_pick_from` when available units exist that the hard rules exclude). When nothing at
   all can be allocated, the order waits (`no_stock`) instead of shipping nothing.
4. **Soft `pick_from`** rules are honoured, in the order given, whenever an allocation that
   honours them exists with the same shipped quantity and the same number of shipments;
   otherwise units that match them are still preferred. Quantity and shipment count come
   first because they are what the customer receives; a soft rule is a preference about units.
5. **FEFO** within that: earliest expiry first, then earliest receipt, then lot number.
   Units past their expiry (`today` given) are never picked.

Each shipment carries the order's value-added services. Shorts leave the `backordered` counts
alone: stock counts only move from `available` to `allocated`.

Rules on the whole order (`line_number` None) apply to every line. `expiration_date` values
are ISO dates: `2025-06-30` matches units expiring that day; `>=2025-06-30` (an extension)
matches units expiring on or after it, and units without expiry. A rule matches a unit when
any of its `match_value`s does.
"""

from __future__ import annotations

import itertools
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass, field
from datetime import date
from enum import StrEnum

from ordersync.domain.inventory import Stock, StockUnit, whole_units
from ordersync.domain.orders import Order, OrderPolicy, PickFrom, ValueAddedService
from ordersync.domain.timestamps import parse_rfc3339_ms

MAX_EXACT_LOCATIONS = 12


class MatchType(StrEnum):
    LOT_NUMBER = "lot_number"
    EXPIRATION_DATE = "expiration_date"
    PURCHASE_ORDER = "purchase_order"
    LOCATION = "location"


class MatchStyle(StrEnum):
    HARD = "hard"
    SOFT = "soft"


class FailureReason(StrEnum):
    PICK_FROM_UNMATCHED = "pick_from_unmatched"
    INVALID_PICK_FROM = "invalid_pick_from"
    FRACTIONAL_QUANTITY = "fractional_quantity"


class WaitReason(StrEnum):
    NO_SINGLE_LOCATION = "no_single_location"
    NO_STOCK = "no_stock"


class ShortReason(StrEnum):
    INSUFFICIENT_STOCK = "insufficient_stock"
    HARD_PICK_FROM = "hard_pick_from"


@dataclass(frozen=True, slots=True)
class PickRule:
    """A `pick_from` constraint as MasonHub spells it, on one line or (None) the whole order."""

    match_type: MatchType
    match_value: tuple[str, ...]
    match_style: MatchStyle = MatchStyle.HARD
    line_number: int | None = None
    _dates: frozenset[date] = field(init=False, repr=False, compare=False)
    _not_before: date | None = field(init=False, repr=False, compare=False)

    def __post_init__(self) -> None:
        object.__setattr__(self, "match_type", MatchType(self.match_type))
        object.__setattr__(self, "match_style", MatchStyle(self.match_style))
        object.__setattr__(self, "match_value", tuple(self.match_value))
        if not self.match_value or any(not value.strip() for value in self.match_value):
            raise ValueError("pick_from match_value must list at least one non-empty value")
        dates: set[date] = set()
        floors: list[date] = []
        if self.match_type is MatchType.EXPIRATION_DATE:
            for value in self.match_value:
                text = value.strip()
                floor = text.startswith(">=")
                try:
                    day = date.fromisoformat(text[2:].strip() if floor else text)
                except ValueError:
                    raise ValueError(
                        f"pick_from expiration_date value {value!r} is not a date "
                        "(YYYY-MM-DD, or >=YYYY-MM-DD for 'not before')"
                    ) from None
                if floor:
                    floors.append(day)
                else:
                    dates.add(day)
        object.__setattr__(self, "_dates", frozenset(dates))
        object.__setattr__(self, "_not_before", min(floors) if floors else None)

    @property
    def hard(self) -> bool:
        return self.match_style is MatchStyle.HARD

    def applies_to(self, line_number: int) -> bool:
        return self.line_number is None or self.line_number == line_number

    def matches(self, unit: StockUnit) -> bool:
        if self.match_type is MatchType.LOT_NUMBER:
            return unit.lot_number in self.match_value
        if self.match_type is MatchType.LOCATION:
            return unit.location in self.match_value
        if self.match_type is MatchType.PURCHASE_ORDER:
            return unit.purchase_order in self.match_value
        if unit.expires_on is None:
            return self._not_before is not None
        return unit.expires_on in self._dates or (
            self._not_before is not None and unit.expires_on >= self._not_before
        )

    def describe(self) -> str:
        return f"{self.match_style} pick_from {self.match_type} in {list(self.match_value)}"


def rule_from_pick_from(pick: PickFrom) -> PickRule:
    """The order model's `PickFrom(attribute, value, match)` as a rule on the whole order:
    attribute -> match_type, value -> the one match_value, match -> match_style."""
    try:
        match_type = MatchType(pick.attribute)
    except ValueError:
        known = ", ".join(m.value for m in MatchType)
        raise ValueError(f"pick_from attribute {pick.attribute!r} is not one of {known}") from None
    return PickRule(match_type, (pick.value,), MatchStyle(pick.match))


def order_policy_from_split_policy(split_policy: str) -> OrderPolicy:
    """MasonHub's OpenAPI `split_policy`: `manual` (the warehouse never splits on its own) is
    `single_shipment`; `auto` (it splits when it must) is `minimize_splits`."""
    policies = {"manual": OrderPolicy.SINGLE_SHIPMENT, "auto": OrderPolicy.MINIMIZE_SPLITS}
    if split_policy not in policies:
        raise ValueError(f"split_policy {split_policy!r} is not one of manual, auto")
    return policies[split_policy]


def split_policy_from_order_policy(policy: OrderPolicy) -> str:
    return "manual" if policy is OrderPolicy.SINGLE_SHIPMENT else "auto"


@dataclass(frozen=True, slots=True)
class DemandLine:
    line_number: int
    sku: str
    quantity: int

    def __post_init__(self) -> None:
        if self.quantity <= 0:
            raise ValueError(f"line {self.line_number}: quantity must be at least 1 unit")


@dataclass(frozen=True)
class OrderDemand:
    """What allocation needs of an order: whole-unit lines, rules, policy and rank."""

    id: str
    lines: tuple[DemandLine, ...]
    policy: OrderPolicy = OrderPolicy.ALLOW_SPLITS
    pick_from: tuple[PickRule, ...] = ()
    priority: int = 0
    submitted_at_ms: int = 0
    value_added_services: tuple[ValueAddedService, ...] = ()

    def __post_init__(self) -> None:
        numbers = [line.line_number for line in self.lines]
        if not numbers or len(numbers) != len(set(numbers)):
            raise ValueError(f"order {self.id}: lines must be non-empty with unique numbers")
        unknown = {r.line_number for r in self.pick_from if r.line_number is not None} - set(
            numbers
        )
        if unknown:
            raise ValueError(f"order {self.id}: pick_from names unknown lines {sorted(unknown)}")

    def rank(self) -> tuple[int, int, str]:
        return (-self.priority, self.submitted_at_ms, self.id)


class Unallocatable(ValueError):
    """An order that cannot be turned into a demand: the reason and the line at fault."""

    def __init__(self, reason: FailureReason, message: str, line_number: int | None) -> None:
        super().__init__(message)
        self.reason = reason
        self.line_number = line_number


def demand_from_order(order: Order) -> OrderDemand:
    """The allocation view of a stored order. Fractional quantities and hard rules that cannot be
    parsed raise `Unallocatable`; a soft rule that cannot be parsed is dropped (it is only a
    preference, and creation already refuses it)."""
    lines = []
    for item in order.line_items:
        number = item.line_number or 0
        try:
            quantity = whole_units(item.quantity)
        except ValueError as exc:
            raise Unallocatable(
                FailureReason.FRACTIONAL_QUANTITY, f"line {number}: {exc}", number
            ) from None
        lines.append(DemandLine(number, item.sku_customer_identifier, quantity))
    rules = []
    for pick in order.pick_from:
        try:
            rules.append(rule_from_pick_from(pick))
        except ValueError as exc:
            if pick.match == "hard":
                raise Unallocatable(FailureReason.INVALID_PICK_FROM, str(exc), None) from None
    return OrderDemand(
        id=order.id,
        lines=tuple(lines),
        policy=order.order_policy,
        pick_from=tuple(rules),
        priority=order.priority,
        submitted_at_ms=parse_rfc3339_ms(order.submitted_at),
        value_added_services=tuple(order.value_added_services),
    )


@dataclass(frozen=True, slots=True)
class Pick:
    line_number: int
    sku: str
    location: str
    lot_number: str | None
    quantity: int


@dataclass(frozen=True, slots=True)
class PlannedShipment:
    """One shipment per location, carrying the order's value-added services."""

    location: str
    picks: tuple[Pick, ...]
    value_added_services: tuple[ValueAddedService, ...] = ()


@dataclass(frozen=True, slots=True)
class Short:
    line_number: int
    sku: str
    quantity: int
    reason: ShortReason


@dataclass(frozen=True, slots=True)
class Allocated:
    order_id: str
    shipments: tuple[PlannedShipment, ...]
    shorts: tuple[Short, ...] = ()
    relaxed: tuple[PickRule, ...] = ()  # soft rules that could not be honoured


@dataclass(frozen=True, slots=True)
class Waiting:
    """Not allocated now; stock receipts may change that (single_shipment: until the caller's
    deadline)."""

    order_id: str
    reason: WaitReason
    detail: str


@dataclass(frozen=True, slots=True)
class Failed:
    order_id: str
    reason: FailureReason
    detail: str
    line_number: int | None = None


Outcome = Allocated | Waiting | Failed


@dataclass(frozen=True)
class AllocationRun:
    outcomes: tuple[Outcome, ...]  # in the order the orders took stock
    stock: Stock

    def outcome(self, order_id: str) -> Outcome:
        return next(o for o in self.outcomes if o.order_id == order_id)


def allocate(
    orders: Iterable[OrderDemand | Order],
    stock: Stock,
    *,
    today: date | None = None,
    max_exact_locations: int = MAX_EXACT_LOCATIONS,
) -> AllocationRun:
    """Allocate `orders` against `stock`, highest priority first (module docstring)."""
    demands: list[OrderDemand] = []
    outcomes: list[Outcome] = []
    for order in orders:
        if isinstance(order, OrderDemand):
            demands.append(order)
            continue
        try:
            demands.append(demand_from_order(order))
        except Unallocatable as exc:
            outcomes.append(Failed(order.id, exc.reason, str(exc), exc.line_number))
    ids = [o.order_id for o in outcomes] + [d.id for d in demands]
    if len(ids) != len(set(ids)):
        raise ValueError("each order may appear once in an allocation")
    pool = _Pool(stock, today)
    for demand in sorted(demands, key=OrderDemand.rank):
        outcomes.append(_Planner(demand, pool, max_exact_locations).run())
    return AllocationRun(tuple(outcomes), pool.stock_after())


class _Pool:
    """The units of a run with the available count each has left."""

    def __init__(self, stock: Stock, today: date | None) -> None:
        self.stock = stock
        self.units = stock.units
        self.left = [u.available if u.usable_on(today) else 0 for u in self.units]
        self.taken = [0] * len(self.units)
        position = {unit.key: i for i, unit in enumerate(self.units)}
        self.by_sku = {sku: [position[u.key] for u in stock.for_sku(sku)] for sku in stock.skus()}

    def take(self, index: int, quantity: int) -> None:
        self.left[index] -= quantity
        self.taken[index] += quantity

    def stock_after(self) -> Stock:
        changed = [self.units[i].allocate(n) for i, n in enumerate(self.taken) if n]
        return self.stock.replacing(changed) if changed else self.stock


Locations = frozenset[str]


class _Planner:
    """The decisions of the module docstring for one order against the pool."""

    def __init__(self, demand: OrderDemand, pool: _Pool, max_exact: int) -> None:
        self.demand = demand
        self.pool = pool
        self.max_exact = max_exact
        self.lines = demand.lines
        self.hard = [
            tuple(r for r in demand.pick_from if r.hard and r.applies_to(line.line_number))
            for line in self.lines
        ]
        self.soft = tuple(r for r in demand.pick_from if not r.hard)
        self.candidates = [
            [
                i
                for i in pool.by_sku.get(line.sku, ())
                if pool.left[i] > 0 and all(r.matches(pool.units[i]) for r in rules)
            ]
            for line, rules in zip(self.lines, self.hard, strict=True)
        ]
        self.locations = sorted({pool.units[i].location for c in self.candidates for i in c})
        self._fills: dict[tuple[Locations, tuple[PickRule, ...]], int] = {}

    def run(self) -> Outcome:
        unmatched = self._unmatched_line()
        if unmatched is not None:
            return unmatched
        if not self.locations:
            return Waiting(self.demand.id, WaitReason.NO_STOCK, "no available stock for any line")
        planned = self._policy_options()
        if isinstance(planned, Waiting):
            return planned
        target, options = planned
        chosen, honoured = max(
            ((s, self._honoured(s, target)) for s in options), key=lambda pair: pair[1]
        )
        accepted = tuple(r for r, ok in zip(self.soft, honoured, strict=True) if ok)
        relaxed = tuple(r for r, ok in zip(self.soft, honoured, strict=True) if not ok)
        return self._commit(chosen, accepted, relaxed)

    def _policy_options(self) -> tuple[int, list[Locations]] | Waiting:
        """The quantity the policy ships and the location sets that ship it (any one will do
        as far as the policy is concerned; soft rules choose among them)."""
        if self.demand.policy is OrderPolicy.SINGLE_SHIPMENT:
            total = sum(line.quantity for line in self.lines)
            singles = [frozenset({loc}) for loc in self.locations]
            options = [s for s in singles if self._fill(s) == total]
            if options:
                return total, options
            best = max(singles, key=self._fill)
            return Waiting(
                self.demand.id,
                WaitReason.NO_SINGLE_LOCATION,
                f"no location can fill all {total} units; {min(best)} can fill {self._fill(best)}",
            )
        # Some candidate unit has room (self.locations is not empty), so the target is >= 1.
        everywhere = frozenset(self.locations)
        target = self._fill(everywhere)
        if self.demand.policy is OrderPolicy.ALLOW_SPLITS:
            return target, [everywhere]
        return target, self._fewest_locations(target)

    def _unmatched_line(self) -> Failed | None:
        for line, rules in zip(self.lines, self.hard, strict=True):
            units = self.pool.stock.for_sku(line.sku)
            if rules and not any(all(r.matches(u) for r in rules) for u in units):
                wanted = " and ".join(r.describe() for r in rules)
                return Failed(
                    self.demand.id,
                    FailureReason.PICK_FROM_UNMATCHED,
                    f"line {line.line_number} ({line.sku}): no stock matches {wanted}",
                    line.line_number,
                )
        return None

    def _fewest_locations(self, target: int) -> list[Locations]:
        if len(self.locations) > self.max_exact:
            chosen: set[str] = set()
            while self._fill(frozenset(chosen)) < target:
                rest = [loc for loc in self.locations if loc not in chosen]
                chosen.add(max(rest, key=lambda loc: self._fill(frozenset(chosen | {loc}))))
            return [frozenset(chosen)]
        for size in range(1, len(self.locations) + 1):
            sets = [frozenset(c) for c in itertools.combinations(self.locations, size)]
            reaching = [s for s in sets if self._fill(s) == target]
            if reaching:
                return reaching
        raise AssertionError("every candidate location together reaches the target")

    def _honoured(self, locations: Locations, target: int) -> tuple[bool, ...]:
        """Soft rules in order, each kept when the quantity still reaches `target` with it."""
        kept: tuple[PickRule, ...] = ()
        verdicts = []
        for rule in self.soft:
            ok = self._fill(locations, (*kept, rule)) == target
            verdicts.append(ok)
            kept = (*kept, rule) if ok else kept
        return tuple(verdicts)

    def _eligible(self, index: int, locations: Locations, extra: Sequence[PickRule]) -> list[int]:
        number = self.lines[index].line_number
        rules = [r for r in extra if r.applies_to(number)]
        units = self.pool.units
        return [
            i
            for i in self.candidates[index]
            if units[i].location in locations and all(r.matches(units[i]) for r in rules)
        ]

    def _fill(self, locations: Locations, extra: tuple[PickRule, ...] = ()) -> int:
        """The most units the order can get from `locations` under its hard rules and `extra`."""
        key = (locations, extra)
        if key not in self._fills:
            eligible = [self._eligible(i, locations, extra) for i in range(len(self.lines))]
            _, missing = _max_fill([line.quantity for line in self.lines], eligible, self.pool.left)
            self._fills[key] = sum(line.quantity for line in self.lines) - sum(missing)
        return self._fills[key]

    def _commit(
        self, locations: Locations, accepted: tuple[PickRule, ...], relaxed: tuple[PickRule, ...]
    ) -> Allocated:
        units = self.pool.units
        rank = {loc: -self._fill(frozenset({loc}), accepted) for loc in locations}

        def preference(line: DemandLine) -> Callable[[int], tuple[object, ...]]:
            soft = [r for r in relaxed if r.applies_to(line.line_number)]
            return lambda i: (
                sum(not r.matches(units[i]) for r in soft),
                rank[units[i].location],
                units[i].location,
                *_fefo(units[i]),
            )

        eligible = [
            sorted(self._eligible(i, locations, accepted), key=preference(line))
            for i, line in enumerate(self.lines)
        ]
        flows, missing = _max_fill([line.quantity for line in self.lines], eligible, self.pool.left)
        picks: dict[str, list[Pick]] = {}
        for line, flow, order in zip(self.lines, flows, eligible, strict=True):
            for i in sorted(flow, key=order.index):
                self.pool.take(i, flow[i])
                unit = units[i]
                pick = Pick(line.line_number, line.sku, unit.location, unit.lot_number, flow[i])
                picks.setdefault(unit.location, []).append(pick)
        shipments = tuple(
            PlannedShipment(loc, tuple(picks[loc]), self.demand.value_added_services)
            for loc in sorted(picks)
        )
        shorts = tuple(
            Short(line.line_number, line.sku, short, self._short_reason(index))
            for index, (line, short) in enumerate(zip(self.lines, missing, strict=True))
            if short
        )
        return Allocated(self.demand.id, shipments, shorts, relaxed)

    def _short_reason(self, index: int) -> ShortReason:
        line, rules = self.lines[index], self.hard[index]
        excluded = any(
            self.pool.left[i] > 0 and not all(r.matches(self.pool.units[i]) for r in rules)
            for i in self.pool.by_sku.get(line.sku, ())
        )
        return ShortReason.HARD_PICK_FROM if excluded else ShortReason.INSUFFICIENT_STOCK


def _fefo(unit: StockUnit) -> tuple[object, ...]:
    """Earliest expiry first (units that never expire last), then earliest receipt, then lot."""
    return (
        unit.expires_on is None,
        unit.expires_on or date.max,
        unit.received_on is None,
        unit.received_on or date.max,
        unit.lot_number or "",
    )


def _max_fill(
    needs: Sequence[int], eligible: Sequence[Sequence[int]], left: Sequence[int]
) -> tuple[list[dict[int, int]], list[int]]:
    """Units per line (a flow from lines to the units each may use), as many as possible.

    Greedy first, each line taking its eligible units in the order given (the preference), the
    most constrained lines first; then augmenting paths (Edmonds-Karp over the bipartite
    residual graph) move units between lines of the same SKU until no line can gain: the
    greedy alone can leave a line short because another line took a unit it could have done
    without. Returns the flows and what each line still misses."""
    capacity = {i: left[i] for units in eligible for i in units}
    flows: list[dict[int, int]] = [{} for _ in needs]
    missing = list(needs)
    for line in sorted(range(len(needs)), key=lambda n: len(eligible[n])):
        for i in eligible[line]:
            take = min(missing[line], capacity[i])
            if take:
                flows[line][i] = flows[line].get(i, 0) + take
                capacity[i] -= take
                missing[line] -= take
            if not missing[line]:
                break
    if len(needs) > 1:
        while any(
            missing[n] and _augment(n, eligible, flows, capacity, missing)
            for n in range(len(needs))
        ):
            pass
    return flows, missing


def _augment(
    start: int,
    eligible: Sequence[Sequence[int]],
    flows: list[dict[int, int]],
    capacity: dict[int, int],
    missing: list[int],
) -> bool:
    """One shortest path start -> unit -> line holding it -> ... -> unit with room; True if
    units moved."""
    parent: dict[int, tuple[int, int]] = {start: (start, -1)}
    queue = [start]
    for line in queue:
        for unit in eligible[line]:
            if capacity[unit] > 0:
                return _shift(start, line, unit, parent, flows, capacity, missing)
            for holder, flow in enumerate(flows):
                if holder not in parent and flow.get(unit):
                    parent[holder] = (line, unit)
                    queue.append(holder)
    return False


def _shift(
    start: int,
    end: int,
    free_unit: int,
    parent: dict[int, tuple[int, int]],
    flows: list[dict[int, int]],
    capacity: dict[int, int],
    missing: list[int],
) -> bool:
    amount = min(missing[start], capacity[free_unit])
    line = end
    while line != start:
        previous, unit = parent[line]
        amount = min(amount, flows[line][unit])
        line = previous
    flows[end][free_unit] = flows[end].get(free_unit, 0) + amount
    capacity[free_unit] -= amount
    line = end
    while line != start:
        previous, unit = parent[line]
        flows[line][unit] -= amount
        if not flows[line][unit]:
            del flows[line][unit]
        flows[previous][unit] = flows[previous].get(unit, 0) + amount
        line = previous
    missing[start] -= amount
    return True
