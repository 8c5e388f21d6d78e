"""The package's architecture, read from its source: no import cycles (function-level imports included) and each
role imports only the roles below it."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "yolo_plugins"

# role -> roles it may import; a module's role is its subpackage (or its own name at the top level)
LAYERS = {
    "errors": set(),
    "paths": set(),
    "_version": set(),
    "weights": {"errors", "paths"},
    "nn": {"errors", "weights"},
    "integration": {"errors", "paths", "_version", "_legacy", "nn", "weights"},
    "tools": {"errors", "paths", "_version", "nn", "weights", "integration", "__init__"},
    "_legacy": {"nn"},
    "__init__": {"errors", "_version", "_legacy", "nn", "integration"},
    "__main__": {"tools"},
}
ENTRY_POINTS = {"yolo_plugins.integration.autoload"}  # started outside the package (interpreter start): imports it


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def modules() -> dict[str, Path]:
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py"))}


def imports(name: str, path: Path, known: set[str]) -> set[str]:
    """Package modules that ``name`` imports anywhere in its source (module or function level)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    out = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            out.update(a.name for a in node.names if a.name.split(".")[0] == "yolo_plugins")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            if mod.split(".")[0] != "yolo_plugins":
                continue
            subs = [f"{mod}.{a.name}" for a in node.names if f"{mod}.{a.name}" in known]
            out.update(subs or [mod])  # `from pkg import submodule` imports the submodule
            if len(subs) < len(node.names):
                out.add(mod)
    return {m for m in out if m in known and m != name}


def graph() -> dict[str, set[str]]:
    mods = modules()
    return {n: imports(n, p, set(mods)) for n, p in mods.items()}


def role(name: str) -> str:
    parts = name.split(".")
    return "__init__" if len(parts) == 1 else parts[1]


def test_every_role_is_known():
    assert {role(m) for m in modules()} <= set(LAYERS), "a new top-level module or subpackage needs a row in LAYERS"


def test_no_import_cycles():
    g = graph()
    index, low, stack, on, cycles = {}, {}, [], set(), []

    def visit(v):  # Tarjan's strongly connected components
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in g[v]:
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            scc = set()
            while True:
                w = stack.pop()
                on.discard(w)
                scc.add(w)
                if w == v:
                    break
            if len(scc) > 1:
                cycles.append(sorted(scc))

    for v in g:
        if v not in index:
            visit(v)
    assert not cycles, f"import cycles: {cycles}"


@pytest.mark.parametrize("name", sorted(modules()))
def test_roles_import_only_lower_roles(name):
    mine = role(name)
    allowed = LAYERS[mine] | ({"__init__"} if name in ENTRY_POINTS else set())
    bad = sorted(m for m in graph()[name] if role(m) != mine and role(m) not in allowed)
    assert not bad, f"{name} ({mine}) imports {bad}; allowed roles: {sorted(LAYERS[mine])}"


def test_detects_a_cycle(tmp_path, monkeypatch):
    """The checker itself: a two-module cycle written with function-level imports is found."""
    pkg = tmp_path / "yolo_plugins"
    (pkg / "nn").mkdir(parents=True)
    (pkg / "__init__.py").write_text("")
    (pkg / "nn" / "__init__.py").write_text("")
    (pkg / "nn" / "a.py").write_text("def f():\n    from .b import g\n")
    (pkg / "nn" / "b.py").write_text("def g():\n    from . import a\n")
    monkeypatch.setattr(__import__(__name__), "PACKAGE", pkg)
    with pytest.raises(AssertionError, match="yolo_plugins.nn.a"):
        test_no_import_cycles()
