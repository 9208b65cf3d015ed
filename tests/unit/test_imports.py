"""The project's import rules, read from the source: no module imports itself back through
others (imports for type checking only aside), and the engine reaches ``handlers`` only
through :mod:`handlers.functions`."""

from __future__ import annotations

import ast
from collections.abc import Iterator
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
PACKAGES = ("proxy", "handlers", "dashboard")


def _modules() -> dict[str, Path]:
    found = {}
    for package in PACKAGES:
        for path in (ROOT / package).rglob("*.py"):
            parts = path.relative_to(ROOT).with_suffix("").parts
            name = ".".join(parts[:-1] if parts[-1] == "__init__" else parts)
            found[name] = path
    return found


def _imported(path: Path) -> Iterator[tuple[str, bool]]:
    """Each module name an import statement names, and whether it runs (not only under
    ``if TYPE_CHECKING:``)."""
    tree = ast.parse(path.read_text())
    checking_only: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            for inner in node.body:
                checking_only.update(id(n) for n in ast.walk(inner))
    for node in ast.walk(tree):
        runs = id(node) not in checking_only
        if isinstance(node, ast.ImportFrom) and node.module and node.level == 0:
            yield node.module, runs
            for alias in node.names:
                yield f"{node.module}.{alias.name}", runs
        elif isinstance(node, ast.Import):
            for alias in node.names:
                yield alias.name, runs


def _graph() -> dict[str, set[str]]:
    modules = _modules()
    return {
        name: {t for t, runs in _imported(path) if runs and t in modules and t != name}
        for name, path in modules.items()
    }


def _circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components of more than one module (Tarjan's algorithm,
    without recursion)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []
    for start in graph:
        if start in index:
            continue
        work = [(start, iter(sorted(graph[start])))]
        index[start] = low[start] = len(index)
        stack.append(start)
        on_stack.add(start)
        while work:
            node, children = work[-1]
            child = next(children, None)
            if child is not None:
                if child not in index:
                    index[child] = low[child] = len(index)
                    stack.append(child)
                    on_stack.add(child)
                    work.append((child, iter(sorted(graph[child]))))
                elif child in on_stack:
                    low[node] = min(low[node], index[child])
                continue
            work.pop()
            if work:
                low[work[-1][0]] = min(low[work[-1][0]], low[node])
            if low[node] == index[node]:
                component = []
                while True:
                    member = stack.pop()
                    on_stack.discard(member)
                    component.append(member)
                    if member == node:
                        break
                if len(component) > 1:
                    found.append(sorted(component))
    return found


def test_no_module_imports_itself_back() -> None:
    assert _circles(_graph()) == []


def test_the_finder_finds_a_circle() -> None:
    assert _circles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c"]]


def test_the_engine_reaches_handlers_only_through_their_functions() -> None:
    modules = _modules()
    strays = {
        (name, target)
        for name, path in modules.items()
        if name.startswith("proxy.engine")
        for target, _ in _imported(path)
        if target.startswith("handlers") and target.split(".")[:2] != ["handlers", "functions"]
    }
    assert strays == set()
