"""Fuzz the hub over its own OpenAPI description, every dialect, with valid credentials.

    PYTHONPATH=src .venv/bin/python bench/fuzz_hub.py --examples 200 [--seed 7] [--db URL]

Starts a hub (SQLite in a temporary directory unless --db names a database), mints one token
per dialect, then for every operation of /openapi.json generates `--examples` requests per
generation mode (schemathesis: positive = what the description allows, negative = what it does
not) and checks each answer: no 5xx, and the answer (status, body, headers) is one the
description documents. Prints the cases run, the answers by status, and every failure with a
curl line to reproduce it; exits 1 if any failed.

`run_fuzz` is also the bounded run of the test suite (tests/integration/test_fuzz.py).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import re
import sys
import tempfile
import time
from collections import Counter
from collections.abc import Iterator, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import requests
import schemathesis
from hypothesis import HealthCheck, Phase, given, settings
from hypothesis import seed as hypothesis_seed
from schemathesis import GenerationMode
from schemathesis.checks import not_a_server_error
from schemathesis.core.failures import FailureGroup
from schemathesis.specs.openapi.checks import (
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
    status_code_conformance,
)

CHECKS = [
    not_a_server_error,
    status_code_conformance,
    content_type_conformance,
    response_headers_conformance,
    response_schema_conformance,
]
MODES = (GenerationMode.POSITIVE, GenerationMode.NEGATIVE)


@dataclass
class Failure:
    operation: str
    mode: str
    status: int
    checks: list[str]
    message: str
    curl: str


@dataclass
class Report:
    cases: int = 0
    statuses: Counter[int] = field(default_factory=Counter)
    per_operation: Counter[str] = field(default_factory=Counter)
    failures: list[Failure] = field(default_factory=list)
    seconds: float = 0.0

    def summary(self) -> str:
        codes = ", ".join(f"{code}: {n}" for code, n in sorted(self.statuses.items()))
        return (
            f"{self.cases} cases over {len(self.per_operation)} operations in "
            f"{self.seconds:.1f} s; answers by status: {codes}; failures: {len(self.failures)}"
        )


def run_fuzz(
    base_url: str,
    credentials: dict[str, dict[str, str]],
    *,
    examples: int,
    seed: int = 0,
    modes: Sequence[GenerationMode] = MODES,
    known: dict[str, str] | None = None,
) -> Report:
    """Fuzz every operation of the hub at `base_url`; `credentials` maps a path prefix to the
    headers that authenticate its dialect (the longest matching prefix wins).

    With `known` (path parameter name -> id of an entity the hub holds), operations on an id
    first get a positive pass on that entity, deleting ones last, so that their success
    answers are checked too (a generated id would almost always be a 404)."""
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    operations = [result.ok() for result in schema.get_all_operations()]
    report = Report()
    known = known or {}
    with requests.Session() as session:

        def fuzz(operation: Any, mode: GenerationMode, path: dict[str, str] | None) -> None:
            prefix = max((p for p in credentials if operation.path.startswith(p)), key=len)
            _fuzz_operation(
                operation,
                mode,
                base_url,
                credentials[prefix],
                session,
                examples,
                seed,
                report,
                path,
            )

        def examples_of(operation: Any) -> None:
            """The request examples of the description (valid bodies: creates that succeed)."""
            names = _path_names(operation)
            path = {n: known[n] for n in names} if names and names <= set(known) else None
            kwargs = {} if path is None else {"path_parameters": path}
            prefix = max((p for p in credentials if operation.path.startswith(p)), key=len)
            for strategy in schema.get_strategies_from_examples(operation, **kwargs):
                _fuzz_operation(
                    operation,
                    GenerationMode.POSITIVE,
                    base_url,
                    credentials[prefix],
                    session,
                    1,
                    seed,
                    report,
                    strategy=strategy,
                )

        for operation in operations:
            examples_of(operation)
        on_entity = [op for op in operations if _path_names(op) and _path_names(op) <= set(known)]
        on_entity.sort(key=lambda op: op.method.upper() == "DELETE")
        for operation in on_entity:
            fuzz(operation, GenerationMode.POSITIVE, {n: known[n] for n in _path_names(operation)})
        for operation in operations:
            for mode in modes:
                fuzz(operation, mode, None)
    report.seconds = time.monotonic() - started
    return report


def _fuzz_operation(
    operation: Any,
    mode: GenerationMode,
    base_url: str,
    headers: dict[str, str],
    session: requests.Session,
    examples: int,
    seed: int,
    report: Report,
    path_parameters: dict[str, str] | None = None,
    strategy: Any = None,
) -> None:
    label = f"{operation.method.upper()} {operation.path}"
    if strategy is None:
        strategy = operation.as_strategy(generation_mode=mode, path_parameters=path_parameters)

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: every case counts once
        suppress_health_check=list(HealthCheck),
        print_blob=False,
    )
    @given(case=strategy)
    def one(case: Any) -> None:
        response = case.call(base_url=base_url, headers=headers, session=session, timeout=30)
        report.cases += 1
        report.statuses[response.status_code] += 1
        report.per_operation[label] += 1
        try:
            case.validate_response(response, checks=CHECKS, headers=headers)
        except FailureGroup as group:
            report.failures.append(
                Failure(
                    operation=label,
                    mode=mode.value,
                    status=response.status_code,
                    checks=sorted({type(f).__name__ for f in group.exceptions}),
                    message=_shorten(
                        "; ".join(f"{f.title}: {f.message}" for f in group.exceptions)
                    ),
                    curl=_shorten(case.as_curl_command(headers=headers)),
                )
            )

    one()


def _shorten(text: str, limit: int = 600) -> str:
    return text if len(text) <= limit else f"{text[:limit]}... ({len(text)} characters)"


def _path_names(operation: Any) -> set[str]:
    return set(re.findall(r"{(\w+)}", operation.path))


# -- the command line ------------------------------------------------------------------------


@dataclass
class Seeded:
    """Tokens of one connection per dialect, and ids of entities the account holds."""

    tokens: dict[str, str]
    known: dict[str, str]


async def seed_hub(db_url: str) -> Seeded:
    """An account with one connection per dialect, an order, a shipment, and a HubRise
    callback with a pending event, so that operations on an id reach a real entity."""
    from ordersync.domain import NewOrder
    from ordersync.domain.shipments import NewShipment, ShipmentLine
    from ordersync.hub.openapi_shapes import NEW_ORDER_EXAMPLE
    from ordersync.store.hubrise import HubRiseStore
    from ordersync.store.store import Store

    store = await Store.open(db_url)
    try:
        account = await store.ensure_account("fuzz", timezone="Europe/Paris")
        tokens = {name: await store.create_token("fuzz", name) for name in ("mh", "tc", "hr")}
        writer = await store.authenticate(tokens["mh"])
        follower = await store.authenticate(tokens["hr"])
        hubrise = HubRiseStore(store)
        await hubrise.put_callback(follower, {"order": ["create", "update"]})
        draft = NewOrder.model_validate({**NEW_ORDER_EXAMPLE, "customer_identifier": "SEED-1"})
        (created,) = await store.create_orders(writer, [draft])
        assert created.order is not None
        order = created.order
        line = order.line_items[0]
        shipment = await store.create_shipment(
            writer,
            account,
            NewShipment(
                order_id=order.id,
                carrier="UPS",
                service_level="ground",
                tracking_number="1ZSEED",
                lines=[
                    ShipmentLine(
                        line_number=line.line_number or 1,
                        sku_customer_identifier=line.sku_customer_identifier,
                        quantity=line.quantity,
                    )
                ],
            ),
        )
        (event, *_) = await hubrise.pending_events(follower)
    finally:
        await store.close()
    known = {"order_id": order.id, "shipment_id": shipment.id, "event_id": str(event.seq)}
    return Seeded(tokens, known)


def credentials_for(tokens: dict[str, str]) -> dict[str, dict[str, str]]:
    return {
        "/api/v1/": {"Authorization": f"Bearer {tokens['mh']}"},
        "/v2/": {"Authorization": f"Bearer {tokens['tc']}"},
        "/v1/": {"X-Access-Token": tokens["hr"]},
        "/": {},
    }


@contextlib.contextmanager
def serve_hub(db_url: str) -> Iterator[str]:
    """A hub with quotas off on `db_url`, on real uvicorn; yields its base URL."""
    from tests.support import serve_in_thread

    from ordersync.hub.app import create_app
    from ordersync.hub.settings import HubSettings
    from ordersync.quotas import QuotaPolicy

    with serve_in_thread(create_app(HubSettings(db_url=db_url, quotas=QuotaPolicy()))) as base:
        yield base


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--examples", type=int, default=100, help="per operation and mode")
    parser.add_argument("--seed", type=int, default=0)
    parser.add_argument("--db", help="hub database URL (default: SQLite in a temporary dir)")
    parser.add_argument("--mode", choices=["positive", "negative", "both"], default="both")
    args = parser.parse_args(argv)
    modes = MODES if args.mode == "both" else (GenerationMode(args.mode),)
    with tempfile.TemporaryDirectory() as tmp:
        db_url = args.db or f"sqlite:///{Path(tmp)}/hub.db"
        seeded = asyncio.run(seed_hub(db_url))
        with serve_hub(db_url) as base:
            report = run_fuzz(
                base,
                credentials_for(seeded.tokens),
                examples=args.examples,
                seed=args.seed,
                modes=modes,
                known=seeded.known,
            )
    for failure in report.failures:
        print(f"FAIL {failure.operation} [{failure.mode}] {failure.status} {failure.checks}")
        print(f"     {failure.message}")
        print(f"     {failure.curl}")
    print(report.summary())
    return 1 if report.failures else 0


if __name__ == "__main__":
    sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
    sys.exit(main())
