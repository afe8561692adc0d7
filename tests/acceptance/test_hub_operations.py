"""Operating a hub from the command line: tokens listed and rotated, accounts set, the server's
start line, access log and faults, and one clear line with its own exit code per mistake."""

from __future__ import annotations

import json
import os
import queue
import socket
import subprocess
import threading
from collections.abc import Iterator
from pathlib import Path

import httpx
import pytest

from tests.support import ORDERSYNC_CLI, free_port

EXIT_NOT_FOUND, EXIT_INVALID, EXIT_DATABASE, EXIT_BIND = 1, 2, 3, 4


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [*ORDERSYNC_CLI, *args],
        capture_output=True,
        text=True,
        timeout=120,
        check=False,
        env=os.environ | {"COLUMNS": "80"},  # narrow: a message must still be one line
    )


def one_line_error(result: subprocess.CompletedProcess[str], code: int) -> str:
    """The mistake's single stderr line, after checking the exit code and that nothing else
    (no traceback) was printed."""
    lines = [line for line in result.stderr.splitlines() if line.strip()]
    assert result.returncode == code, result.stderr
    assert "Traceback" not in result.stderr
    assert len(lines) == 1, result.stderr
    assert lines[0].startswith("error: ")
    return lines[0]


@pytest.fixture
def db(tmp_path: Path) -> str:
    return f"sqlite:///{tmp_path}/hub.db"


def token(db: str, account: str, name: str) -> str:
    result = cli("hub", "token", "create", "--db", db, "--account", account, "--name", name)
    assert result.returncode == 0, result.stderr
    return result.stdout.strip().splitlines()[-1]


def test_version_prints_the_package_version() -> None:
    from ordersync import __version__

    result = cli("--version")
    assert result.returncode == 0
    assert result.stdout.strip() == f"ordersync {__version__}"


def test_token_list_shows_connections_and_revocations_but_never_a_token(db: str) -> None:
    """Each issued token is a row (account, connection, created, revoked); tokens stay secret."""
    erp = token(db, "acme", "erp")
    wms = token(db, "acme", "wms")
    assert (
        cli("hub", "token", "revoke", "--db", db, "--account", "acme", "--name", "wms").returncode
        == 0
    )
    result = cli("hub", "token", "list", "--db", db)
    assert result.returncode == 0, result.stderr
    rows = [line.split() for line in result.stdout.splitlines()[1:]]
    assert [(r[0], r[1], r[-1] == "-") for r in rows] == [
        ("acme", "erp", True),
        ("acme", "wms", False),
    ]
    assert erp not in result.stdout and wms not in result.stdout
    assert "osk_" not in result.stdout


def test_token_rotate_replaces_the_token_in_one_step(db: str, tmp_path: Path) -> None:
    """After rotate the old token is refused and the new one accepted, by the same connection."""
    from ordersync.hub.app import create_app
    from ordersync.hub.settings import HubSettings

    old = token(db, "acme", "erp")
    result = cli("hub", "token", "rotate", "--db", db, "--account", "acme", "--name", "erp")
    assert result.returncode == 0, result.stderr
    new = result.stdout.strip().splitlines()[-1]
    assert new.startswith("osk_") and new != old

    async def status(credential: str) -> int:
        app = create_app(HubSettings(db_url=db))
        async with app.router.lifespan_context(app):
            transport = httpx.ASGITransport(app=app)
            async with httpx.AsyncClient(transport=transport, base_url="http://hub") as client:
                answer = await client.get(
                    "/api/v1/orders", headers={"Authorization": f"Bearer {credential}"}
                )
                return answer.status_code

    import asyncio

    assert asyncio.run(status(old)) == 401
    assert asyncio.run(status(new)) == 200
    listed = cli("hub", "token", "list", "--db", db).stdout.splitlines()[1:]
    assert len(listed) == 1 and listed[0].split()[-1] == "-"  # same connection, still live


def test_rotating_a_connection_without_a_live_token_is_exit_1(db: str) -> None:
    token(db, "acme", "erp")
    result = cli("hub", "token", "rotate", "--db", db, "--account", "acme", "--name", "wms")
    assert "no live token for connection 'wms'" in one_line_error(result, EXIT_NOT_FOUND)


def test_account_set_changes_zone_and_currency(db: str) -> None:
    token(db, "acme", "erp")
    result = cli(
        "hub",
        "account",
        "set",
        "acme",
        "--timezone",
        "Europe/Paris",
        "--currency",
        "chf",
        "--db",
        db,
    )
    assert result.returncode == 0, result.stderr
    listed = cli("hub", "account", "list", "--db", db).stdout.splitlines()[1:]
    assert listed[0].split() == ["acme", "Europe/Paris", "CHF"]


@pytest.mark.parametrize(
    ("args", "code", "says"),
    [
        (["--timezone", "Europe/Pari"], EXIT_INVALID, "did you mean Europe/Paris"),
        (["--timezone", "CEST"], EXIT_INVALID, "not an IANA time zone"),
        (["--currency", "EURO"], EXIT_INVALID, "not an ISO 4217 code"),
        (["--currency", "E1R"], EXIT_INVALID, "not an ISO 4217 code"),
        ([], EXIT_INVALID, "give --timezone and/or --currency"),
    ],
)
def test_account_set_refuses_what_hubrise_could_not_render(
    db: str, args: list[str], code: int, says: str
) -> None:
    token(db, "acme", "erp")
    result = cli("hub", "account", "set", "acme", *args, "--db", db)
    assert says in one_line_error(result, code)
    assert cli("hub", "account", "list", "--db", db).stdout.splitlines()[1].split()[1:] == [
        "UTC",
        "EUR",
    ]


def test_account_set_on_an_unknown_account_names_the_known_ones(db: str) -> None:
    token(db, "acme", "erp")
    result = cli("hub", "account", "set", "acm", "--currency", "USD", "--db", db)
    assert "no account 'acm' (accounts: acme)" in one_line_error(result, EXIT_NOT_FOUND)


def test_token_create_in_a_missing_directory_is_one_line_exit_3(tmp_path: Path) -> None:
    db = f"sqlite:///{tmp_path}/missing/hub.db"
    result = cli("hub", "token", "create", "--db", db, "--account", "a", "--name", "b")
    line = one_line_error(result, EXIT_DATABASE)
    assert f"the directory {tmp_path}/missing does not exist" in line


def test_token_create_against_a_down_postgresql_is_one_line_exit_3() -> None:
    db = f"postgresql://postgres@127.0.0.1:{free_port()}/hub"
    result = cli("hub", "token", "create", "--db", db, "--account", "a", "--name", "b")
    assert "cannot open the hub database" in one_line_error(result, EXIT_DATABASE)


def test_a_password_in_the_database_url_is_never_printed() -> None:
    db = f"postgresql://postgres:s3cret@127.0.0.1:{free_port()}/hub"
    result = cli("hub", "token", "list", "--db", db)
    line = one_line_error(result, EXIT_DATABASE)
    assert "s3cret" not in line and "***" in line


@pytest.mark.parametrize(
    ("args", "says"),
    [
        (["--db", "mysql://x"], "unsupported database 'mysql'"),
        (["--faults", "chaos"], "unknown profile 'chaos'"),
        (["--faults", "error=150%"], "'error=150%' needs a rate"),
        (["--log-level", "loud"], "--log-level 'loud'"),
        (["--quota", "/v1/=5/fortnight"], "fortnight"),
    ],
)
def test_serve_mistakes_are_one_line_exit_2(db: str, args: list[str], says: str) -> None:
    result = cli("hub", "serve", "--db", db, "--port", str(free_port()), *args)
    assert says in one_line_error(result, EXIT_INVALID)


def test_serve_on_a_taken_port_is_one_line_exit_4_and_never_says_serving(db: str) -> None:
    with socket.socket() as taken:
        taken.bind(("127.0.0.1", 0))
        taken.listen()
        port = taken.getsockname()[1]
        result = cli("hub", "serve", "--db", db, "--port", str(port))
    line = one_line_error(result, EXIT_BIND)
    assert f"cannot listen on 127.0.0.1:{port}" in line
    assert "serving" not in result.stderr


def test_serve_against_a_down_postgresql_is_one_line_exit_3() -> None:
    db = f"postgresql://postgres@127.0.0.1:{free_port()}/hub"
    result = cli("hub", "serve", "--db", db, "--port", str(free_port()))
    assert "cannot open the hub database" in one_line_error(result, EXIT_DATABASE)


@pytest.mark.postgres
def test_token_commands_work_on_postgresql(pg_url: str) -> None:
    first = token(pg_url, "acme", "erp")
    rotated = cli("hub", "token", "rotate", "--db", pg_url, "--account", "acme", "--name", "erp")
    assert rotated.returncode == 0, rotated.stderr
    assert rotated.stdout.strip() != first
    assert "acme" in cli("hub", "token", "list", "--db", pg_url).stdout


class ServedHub:
    """`hub serve` in a process of its own, its stderr read line by line as it comes."""

    def __init__(self, db: str, *args: str) -> None:
        self.port = free_port()
        self.base = f"http://127.0.0.1:{self.port}"
        self.process = subprocess.Popen(
            [*ORDERSYNC_CLI, "hub", "serve", "--db", db, "--port", str(self.port), *args],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        self.lines: queue.Queue[str] = queue.Queue()
        threading.Thread(target=self._read, daemon=True).start()

    def _read(self) -> None:
        assert self.process.stderr is not None
        for line in self.process.stderr:
            self.lines.put(line.rstrip("\n"))

    def next_line(self, timeout: float = 120) -> str:
        return self.lines.get(timeout=timeout)

    def log_records(self) -> list[dict[str, object]]:
        records = []
        while not self.lines.empty():
            line = self.lines.get()
            if line.startswith("{"):
                records.append(json.loads(line))
        return records

    def stop(self) -> None:
        self.process.terminate()
        self.process.wait(timeout=30)


@pytest.fixture
def served(db: str) -> Iterator[tuple[ServedHub, str]]:
    secret = token(db, "acme", "erp")
    hub = ServedHub(db, "--faults", "throttle=100%,retry-after=7", "--log-format", "json")
    try:
        yield hub, secret
    finally:
        hub.stop()


def test_serve_announces_itself_once_it_answers_and_logs_each_request(
    served: tuple[ServedHub, str],
) -> None:
    """The "serving" line comes after the bind and startup: a request sent the moment it is
    printed is answered. Each request is then one JSON access line with the connection id,
    and never the token, even when a client puts one in the query string."""
    hub, secret = served
    first = hub.next_line()
    assert first.startswith("hub serving ") and "with injected faults" in first
    assert httpx.get(f"{hub.base}/healthz", timeout=5).status_code == 200
    answer = httpx.get(
        f"{hub.base}/api/v1/orders",
        params={"limit": "5", "access_token": secret},
        headers={"Authorization": f"Bearer {secret}"},
        timeout=10,
    )
    assert answer.status_code == 429 and answer.headers["Retry-After"] == "7"  # --faults
    httpx.get(f"{hub.base}/healthz", timeout=5)  # its line is written after the one above
    records: list[dict[str, object]] = []
    for _ in range(200):
        if any(r.get("path") == "/api/v1/orders" for r in records) and len(records) >= 3:
            break
        line = hub.next_line(timeout=30)
        if line.startswith("{"):
            records.append(json.loads(line))
    listing = next(r for r in records if r["path"] == "/api/v1/orders")
    assert listing["event"] == "request" and listing["method"] == "GET"
    assert listing["status"] == 429 and listing["route"] == "/api/v1/orders"
    assert listing["query"] == "limit=5&access_token=***"
    assert isinstance(listing["duration_ms"], float)
    assert all(secret not in json.dumps(r) for r in records)
