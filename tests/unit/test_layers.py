"""Dependencies point inward: the domain imports no web, database or HTTP library (STYLE.md)."""

from __future__ import annotations

import ast
from pathlib import Path

import ordersync.domain

DOMAIN = Path(ordersync.domain.__file__).parent

# Top-level packages that do I/O or belong to an outer layer. pydantic (validation) is allowed.
FORBIDDEN = {
    "fastapi",
    "starlette",
    "uvicorn",
    "httptools",
    "uvloop",
    "httpx",
    "requests",
    "aiohttp",
    "urllib",
    "urllib3",
    "http",
    "socket",
    "ssl",
    "asyncio",
    "sqlalchemy",
    "alembic",
    "psycopg",
    "psycopg2",
    "asyncpg",
    "aiosqlite",
    "sqlite3",
    "structlog",
    "logging",
    "prometheus_client",
    "typer",
    "rich",
    "stamina",
}
# ordersync modules outside the domain that the domain may import: only the error tree.
ALLOWED_ORDERSYNC = {"ordersync.domain", "ordersync.errors"}


def imported_modules(path: Path, package: str = "ordersync.domain") -> set[str]:
    """Every module a file imports, at any depth (imports inside functions count too);
    relative imports are resolved against `package`, so `from ..store import x` is caught."""
    names: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), filename=str(path))):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(absolute(node, package))
    return names


def absolute(node: ast.ImportFrom, package: str) -> str:
    if node.level == 0:
        return node.module or ""
    parts = package.split(".")[: len(package.split(".")) - node.level + 1]
    return ".".join([*parts, node.module] if node.module else parts)


def outward(module: str) -> bool:
    if module.split(".")[0] in FORBIDDEN:
        return True
    if module == "ordersync" or module.startswith("ordersync."):
        return not any(module == a or module.startswith(f"{a}.") for a in ALLOWED_ORDERSYNC)
    return False


def test_the_domain_imports_no_io_library_and_no_outer_layer() -> None:
    """No file under ordersync/domain imports a web, database or HTTP module, or hub/store/agent."""
    files = sorted(DOMAIN.rglob("*.py"))
    assert files, f"no domain sources under {DOMAIN}"
    offenders = {
        f"{path.relative_to(DOMAIN)}: {module}"
        for path in files
        for module in imported_modules(path)
        if outward(module)
    }
    assert not offenders, sorted(offenders)


def test_the_layer_check_catches_an_outward_import(tmp_path: Path) -> None:
    """The checker flags `from sqlalchemy import ...`, `import ordersync.store`, `from ..hub`."""
    sample = tmp_path / "sample.py"
    sample.write_text(
        "def f():\n    from sqlalchemy import select\n    import ordersync.store.tables\n"
        "from ordersync.errors import NotFound\nimport decimal\nfrom ..hub import app\n"
        "from . import orders\n"
    )
    flagged = {m for m in imported_modules(sample) if outward(m)}
    assert flagged == {"sqlalchemy", "ordersync.store.tables", "ordersync.hub"}
