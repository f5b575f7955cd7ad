"""The shape of the library (docs/architecture.md): no import circles, and a
core that never imports a plugin.

Every import counts: module level, inside functions and under
``TYPE_CHECKING``, since a circle hidden in a function is still a circle
between the two modules' jobs.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = {
    "bipeft_core": ROOT / "bipeft_core",
    "bipeft_plugins": ROOT / "plugins" / "bipeft_plugins",
    "bipeft_spaces": ROOT / "spaces" / "bipeft_spaces",
}


def library_modules(packages: dict[str, Path] = PACKAGES) -> dict[str, Path]:
    """Dotted module name -> file, for every module of the library."""
    out = {}
    for name, folder in packages.items():
        for path in sorted(folder.rglob("*.py")):
            parts = [name, *path.relative_to(folder).with_suffix("").parts]
            if parts[-1] == "__init__":
                parts.pop()
            out[".".join(parts)] = path
    return out


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    """Module -> the library modules it imports (anywhere in the file).

    ``from a.b import c`` is an edge to ``a.b.c`` when that is a module,
    else to ``a.b``; ``import a.b`` to ``a.b``. A package's own
    ``__init__`` counts as the module of the package's name."""

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph: dict[str, set[str]] = {m: set() for m in modules}
    for mod, path in modules.items():
        package = mod if path.name == "__init__.py" else mod.rpartition(".")[0]
        for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"), filename=str(path))):
            targets: list[str] = []
            if isinstance(node, ast.Import):
                targets = [alias.name for alias in node.names]
            elif isinstance(node, ast.ImportFrom):
                base = node.module or ""
                if node.level:
                    parts = package.split(".")
                    parts = parts[: len(parts) - node.level + 1]
                    base = ".".join(parts + ([base] if base else []))
                for alias in node.names:
                    full = f"{base}.{alias.name}"
                    targets.append(full if full in modules else base)
            for target in targets:
                hit = resolve(target)
                if hit is not None and hit != mod:
                    graph[mod].add(hit)
    return graph


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The strongly connected components with more than one module (Tarjan)."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    found: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in sorted(graph[v]):
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            component = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                component.append(w)
                if w == v:
                    break
            if len(component) > 1:
                found.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return found


def test_no_import_circle_anywhere_in_the_library():
    found = circles(import_graph(library_modules()))
    assert not found, "import circles (break each by moving what both need one layer down): " + "; ".join(
        " <-> ".join(c) for c in found)


def test_the_core_imports_no_plugin():
    graph = import_graph(library_modules())
    bad = sorted((m, t) for m, targets in graph.items() if m.startswith("bipeft_core")
                 for t in targets if not t.startswith("bipeft_core"))
    assert not bad, f"bipeft_core imports plugin modules: {bad}"


def test_the_spec_is_plain_data():
    """spec.py knows neither the registries nor running: it imports only
    data-level modules."""
    graph = import_graph(library_modules())
    allowed = {"bipeft_core.budget", "bipeft_core.errors", "bipeft_core.tomlio", "bipeft_core.types"}
    assert graph["bipeft_core.spec"] <= allowed, graph["bipeft_core.spec"] - allowed


@pytest.mark.parametrize("source, expected", [
    ({"a": "from p import b\n", "b": "def f():\n    from p import a\n"}, [["p.a", "p.b"]]),
    ({"a": "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from p.b import X\n",
      "b": "import p.a\n"}, [["p.a", "p.b"]]),
    ({"a": "from . import b\n", "b": "x = 1\n"}, []),
    ({"a": "from .b import x\n", "b": "from .c import y\n", "c": "from .a import z\n"}, [["p.a", "p.b", "p.c"]]),
])
def test_the_circle_finder_sees_function_level_and_type_checking_imports(tmp_path, source, expected):
    pkg = tmp_path / "p"
    pkg.mkdir()
    (pkg / "__init__.py").write_text("")
    for name, text in source.items():
        (pkg / f"{name}.py").write_text(text)
    assert circles(import_graph(library_modules({"p": pkg}))) == expected


def test_a_core_import_of_a_plugin_is_seen(tmp_path):
    core, plug = tmp_path / "bipeft_core", tmp_path / "bipeft_plugins"
    for folder in (core, plug):
        folder.mkdir()
        (folder / "__init__.py").write_text("")
    (plug / "x.py").write_text("y = 1\n")
    (core / "engine.py").write_text("def run():\n    from bipeft_plugins.x import y\n    return y\n")
    graph = import_graph(library_modules({"bipeft_core": core, "bipeft_plugins": plug}))
    assert graph["bipeft_core.engine"] == {"bipeft_plugins.x"}
