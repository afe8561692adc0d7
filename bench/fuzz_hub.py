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
from schemathesis.openapi.checks import (
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
) -> Report:
    """Fuzz every operation of the hub at `base_url`; `credentials` maps a path prefix to the
    headers that authenticate its dialect (the longest matching prefix wins)."""
    started = time.monotonic()
    schema = schemathesis.openapi.from_url(f"{base_url}/openapi.json")
    report = Report()
    with requests.Session() as session:
        for result in schema.get_all_operations():
            operation = result.ok()
            prefix = max((p for p in credentials if operation.path.startswith(p)), key=len)
            headers = credentials[prefix]
            for mode in modes:
                _fuzz_operation(operation, mode, base_url, headers, session, examples, seed, report)
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
) -> None:
    label = f"{operation.method.upper()} {operation.path}"

    @hypothesis_seed(seed)
    @settings(
        max_examples=examples,
        database=None,
        deadline=None,
        phases=[Phase.explicit, Phase.generate],  # no shrinking: every case counts once
        suppress_health_check=list(HealthCheck),
        # The generated data need not be "interesting": each case is one request.
        print_blob=False,
    )
    @given(case=operation.as_strategy(generation_mode=mode))
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
                    message="; ".join(f.title + ": " + f.message for f in group.exceptions)[:2000],
                    curl=case.as_curl_command(headers=headers),
                )
            )

    one()


# -- the command line ------------------------------------------------------------------------


async def _tokens(db_url: str) -> dict[str, str]:
    from ordersync.store.store import Store

    store = await Store.open(db_url)
    await store.ensure_account("fuzz", timezone="Europe/Paris")
    tokens = {name: await store.create_token("fuzz", name) for name in ("mh", "tc", "hr")}
    await store.close()
    return tokens


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
    from ordersync.hub.app import create_app
    from ordersync.hub.settings import HubSettings
    from ordersync.quotas import QuotaPolicy
    from tests.support import serve_in_thread

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
        tokens = asyncio.run(_tokens(db_url))
        with serve_hub(db_url) as base:
            report = run_fuzz(
                base, credentials_for(tokens), examples=args.examples, seed=args.seed, modes=modes
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
