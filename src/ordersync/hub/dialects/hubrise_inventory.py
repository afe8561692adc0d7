"""HubRise catalog inventory under /v1: `GET`, `PUT` and `PATCH`
`/v1/catalogs/{catalog_id}/locations/{location_id}/inventory`, and the ordersync extension
`GET /v1/location/inventory` (the catalogue's changes, for polling).

The account has one catalog, whose id is the account's name (the HubRise location of the
connection's token, `GET /v1/location/...`, is the whole account); `location_id` is a warehouse
location of the stock. An entry is `{sku_ref, stock, expires_at}`, `stock` the available units
at that location (summed over lots) as a decimal string; rendered by `ordersync.wire.inventory`.

Writes set the available units of the location's stock that is not lot-tracked, so that the
location's total is `stock` (the lots' own counts are left alone: lots are MasonHub's business;
a `stock` below what the lots hold is refused, naming the entry). `PUT` overwrites the location's
inventory: SKUs it does not list drop to 0 available there. `PATCH` changes the SKUs it lists.
A SKU not in the catalogue is registered. `expires_at` must be null: ordersync stock does not
lapse. All in one transaction, the SKUs locked in order (`ordersync.store.inventory`).

`GET /v1/location/inventory?updated_since=&after_id=&offset=&count=` lists one entry per SKU
(every location's `stock` summed, `locations[]` each, `sku_id`, `version`, `updated_at`)
ascending by (updated_at, sku_id): HubRise has no "changed since" inventory listing, and the
agent's inventory stream walks this one (`X-Ordersync-Keyset: after_id`, as MasonHub's).
"""

from __future__ import annotations

from collections.abc import Callable
from dataclasses import replace
from typing import Annotated, Any, TypeVar
from uuid import UUID

import orjson
from fastapi import APIRouter, Depends, Path, Query, Request
from pydantic import TypeAdapter, ValidationError
from starlette.responses import Response

from ordersync.domain.inventory import StockKey, StockUnit, whole_units
from ordersync.domain.inventory_item import InventoryItem
from ordersync.domain.timestamps import parse_rfc3339_ms
from ordersync.hub.auth import hubrise_principal
from ordersync.hub.dialects.hubrise import PREFIX, HubRiseRoute, _body
from ordersync.hub.dialects.hubrise_shapes import clean_message
from ordersync.hub.errors import ApiError
from ordersync.hub.idempotency import idempotent
from ordersync.hub.inventory_shapes import (
    HUBRISE_INVENTORY_EXAMPLE,
    HubRiseCatalogEntry,
    HubRiseInventoryEntry,
    HubRiseInventoryIn,
)
from ordersync.hub.offsets import MAX_OFFSET, check_offset
from ordersync.hub.openapi import answer, errors, model_ref, request_body
from ordersync.store.hubrise import HubRiseStore
from ordersync.store.idempotency import settle
from ordersync.store.inventory import InventoryStore
from ordersync.store.store import Principal, Store
from ordersync.wire.inventory import render_hubrise_catalog_entry, render_hubrise_inventory

MAX_ENTRIES = 1000
F = TypeVar("F", bound=Callable[..., Any])

router = APIRouter(prefix=PREFIX, tags=["hubrise"], route_class=HubRiseRoute)
Caller = Annotated[Principal, Depends(hubrise_principal)]
CatalogId = Annotated[str, Path(max_length=100, description="the account's name")]
LocationId = Annotated[str, Path(min_length=1, max_length=100, description="a warehouse location")]
_ENTRIES = TypeAdapter(list[HubRiseInventoryIn])
_ANSWER = {"type": "array", "items": model_ref(HubRiseInventoryEntry, "HubRiseInventoryEntry")}
PATH = "/catalogs/{catalog_id}/locations/{location_id}/inventory"


def _inventory(request: Request) -> InventoryStore:
    found: InventoryStore = request.app.state.inventory
    return found


async def _check_catalog(request: Request, caller: Principal, catalog_id: str) -> None:
    queries: HubRiseStore = request.app.state.hubrise_store
    if (await queries.location(caller.account_id)).name != catalog_id:
        raise ApiError(404, f"no catalog {catalog_id!r}: this account's catalog id is its name")


def _check_location(location_id: str) -> None:
    if "\x00" in location_id or not location_id.strip():
        raise ApiError(422, "Validation failed", [("location_id", "must be a location code")])


def _rendered(items: list[InventoryItem], location: str) -> Response:
    entries = [
        render_hubrise_inventory(item, location)
        for item in sorted(items, key=lambda i: i.sku)
        if location in item.locations()
    ]
    return Response(orjson.dumps(entries), 200, media_type="application/json")


@router.get(
    PATH,
    summary="A location's inventory in the catalog",
    responses={200: answer("One entry per SKU stocked at the location", _ANSWER)},
)
async def get_inventory(
    request: Request, caller: Caller, catalog_id: CatalogId, location_id: LocationId
) -> Response:
    await _check_catalog(request, caller, catalog_id)
    _check_location(location_id)
    inventory = _inventory(request)
    async with request.app.state.store.reader.connect() as conn:
        stock = await inventory.read_stock(conn, caller.account_id)
        codes = {u.sku for u in stock if u.location == location_id}
        items = await inventory.items(conn, caller.account_id, codes)
    return _rendered(items, location_id)


def _write_route(method: str) -> Callable[[F], F]:
    verb = "Overwrite" if method == "put" else "Change some entries of"
    decorator: Callable[[F], F] = getattr(router, method)(
        PATH,
        summary=f"{verb} a location's inventory",
        responses=errors(415, 422)
        | {200: answer("The location's inventory after the write", _ANSWER)},
        openapi_extra=request_body(
            list[HubRiseInventoryIn],
            "HubRiseInventoryWrite",
            example=HUBRISE_INVENTORY_EXAMPLE,
        ),
    )
    return decorator


@_write_route("put")
@idempotent
async def put_inventory(
    request: Request, caller: Caller, catalog_id: CatalogId, location_id: LocationId
) -> Response:
    return await _write(request, caller, catalog_id, location_id, overwrite=True)


@_write_route("patch")
@idempotent
async def patch_inventory(
    request: Request, caller: Caller, catalog_id: CatalogId, location_id: LocationId
) -> Response:
    return await _write(request, caller, catalog_id, location_id, overwrite=False)


async def _write(
    request: Request, caller: Principal, catalog_id: str, location_id: str, *, overwrite: bool
) -> Response:
    await _check_catalog(request, caller, catalog_id)
    _check_location(location_id)
    entries = _entries(await _body(request))
    listed = {e.sku_ref: (i, whole_units(e.stock)) for i, e in enumerate(entries)}
    inventory = _inventory(request)
    store: Store = request.app.state.store
    account = caller.account_id
    async with store.writing(None) as conn:
        # New SKUs first, then the locks: every writer inserts before it locks (the protocol
        # of `ordersync.store.inventory`), or two could wait for each other.
        await inventory.ensure_skus(conn, account, listed)
        held = await inventory.read_stock(
            conn, account, None if overwrite else set(listed), for_update=True
        )
        here = [u for u in held if u.location == location_id]
        units, problems = [], []
        for sku, (index, total) in listed.items():
            in_lots = sum(u.available for u in here if u.sku == sku and u.lot_number is not None)
            if total < in_lots:
                problems.append(
                    (
                        f"[{index}].stock",
                        f"{sku} has {in_lots} units available in lots at {location_id}; lots "
                        "change through MasonHub stock receipts",
                    )
                )
                continue
            current = held.get(StockKey(sku, location_id)) or StockUnit(sku, location_id)
            units.append(replace(current, available=total - in_lots))
        if problems:
            raise ApiError(422, "Validation failed", problems)
        if overwrite:
            units += [
                replace(u, available=0)
                for u in here
                if u.sku not in listed and u.lot_number is None and u.available
            ]
        await inventory.set_stock(caller, account, units, conn=conn)
        stock = await inventory.read_stock(conn, account)
        codes = {u.sku for u in stock if u.location == location_id}
        answer = _rendered(await inventory.items(conn, account, codes), location_id)
        return await settle(conn, answer)


def _entries(payload: Any) -> list[HubRiseInventoryIn]:
    if not isinstance(payload, list):
        raise ApiError(422, "Validation failed", [("base", "expected an array of entries")])
    if len(payload) > MAX_ENTRIES:
        raise ApiError(422, "Validation failed", [("base", f"at most {MAX_ENTRIES} entries")])
    try:
        entries = _ENTRIES.validate_python(payload)
    except ValidationError as exc:
        raise ApiError(
            422,
            "Validation failed",
            [(_field(e["loc"]), clean_message(e["msg"])) for e in exc.errors()],
        ) from None
    seen: dict[str, int] = {}
    for index, entry in enumerate(entries):
        if entry.sku_ref in seen:
            raise ApiError(
                422,
                "Validation failed",
                [(f"[{index}].sku_ref", f"repeats entry [{seen[entry.sku_ref]}]")],
            )
        seen[entry.sku_ref] = index
    return entries


def _field(loc: tuple[Any, ...]) -> str:
    index, *rest = loc
    return f"[{index}]" + "".join(f".{p}" for p in rest)


@router.get(
    "/location/inventory",
    summary="ordersync extension: the catalogue's SKUs by last change, for polling",
    responses={
        200: answer(
            "One entry per SKU, ascending by (updated_at, sku_id)",
            {"type": "array", "items": model_ref(HubRiseCatalogEntry, "HubRiseCatalogEntry")},
            ("X-Ordersync-Keyset",),
        )
    },
)
async def list_catalogue(
    request: Request,
    caller: Caller,
    updated_since: Annotated[
        str | None, Query(description="changed at or after (ISO 8601 with offset)")
    ] = None,
    after_id: Annotated[
        UUID | None,
        Query(description="with updated_since: only entries after (updated_since, after_id)"),
    ] = None,
    offset: Annotated[int, Query(ge=0, description=f"at most {MAX_OFFSET} (hub setting)")] = 0,
    count: Annotated[int, Query(ge=1, le=100, description="1..100")] = 100,
) -> Response:
    check_offset(offset, request.app.state.max_offset, re_anchor="updated_since")
    since = None
    if updated_since is not None:
        try:
            since = parse_rfc3339_ms(updated_since)
        except (ValueError, OverflowError) as exc:
            raise ApiError(
                400, "request parameters are invalid", [("updated_since", str(exc))]
            ) from None
    if after_id is not None and since is None:
        raise ApiError(
            400,
            "request parameters are invalid",
            [("after_id", "after_id continues an updated_since listing; send both")],
        )
    page = await _inventory(request).list_items(
        caller.account_id,
        updated_since_ms=since,
        after_id=None if after_id is None else str(after_id),
        offset=offset,
        limit=count,
    )
    entries = [
        render_hubrise_catalog_entry(InventoryItem.model_validate_json(doc)) for doc in page.items
    ]
    return Response(
        orjson.dumps(entries),
        200,
        {"X-Ordersync-Keyset": "after_id"},
        media_type="application/json",
    )
