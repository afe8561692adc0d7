"""No module of ordersync imports, at its top level, a module that imports it back (STYLE.md:
dependencies point inward). Imports under `if TYPE_CHECKING:` count (a cycle of types is a cycle
of design); imports inside functions are left out (they defer heavy imports at startup)."""

from __future__ import annotations

import ast
from pathlib import Path

import ordersync

ROOT = Path(ordersync.__file__).parent


def module_name(path: Path) -> str:
    parts = ["ordersync", *path.relative_to(ROOT).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def top_level_imports(path: Path, known: set[str]) -> set[str]:
    """The ordersync modules `path` imports when it loads."""
    names: set[str] = set()
    for node in ast.parse(path.read_text()).body:
        for sub in (
            ast.walk(node)
            if not isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef | ast.ClassDef)
            else ()
        ):
            if isinstance(sub, ast.Import):
                names.update(a.name for a in sub.names)
            elif isinstance(sub, ast.ImportFrom) and sub.level == 0 and sub.module:
                names.add(sub.module)
                names.update(f"{sub.module}.{a.name}" for a in sub.names)
    return {n for n in names if n in known}


def import_graph() -> dict[str, set[str]]:
    files = {module_name(p): p for p in ROOT.rglob("*.py") if "migrations" not in p.parts}
    known = set(files)
    return {name: top_level_imports(path, known) - {name} for name, path in files.items()}


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt) :], nxt]
            if nxt not in state and (cycle := visit(nxt)) is not None:
                return cycle
        stack.pop()
        state[node] = 2
        return None

    for node in sorted(graph):
        if node not in state and (cycle := visit(node)) is not None:
            return cycle
    return None


def test_no_module_imports_in_a_circle() -> None:
    """The package's top-level import graph has no cycle."""
    cycle = find_cycle(import_graph())
    assert cycle is None, " -> ".join(cycle or [])


def test_the_cycle_check_finds_a_cycle() -> None:
    """The checker reports a -> b -> a."""
    assert find_cycle({"a": {"b"}, "b": {"a"}, "c": set()}) == ["a", "b", "a"]
