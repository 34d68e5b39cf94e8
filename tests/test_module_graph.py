"""The project's module graph, read from the source (``ast``, nothing imported): no import circle, and no
file reaches for another module's private names. Both fail with the offending files named."""
from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PACKAGES = ("orchestrator", "trainables", "dashboards", "benchmarks", "tests")


def module_name(path: Path) -> str:
    parts = path.relative_to(ROOT).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def project_modules() -> dict[str, Path]:
    return {module_name(p): p for pkg in PACKAGES for p in sorted((ROOT / pkg).rglob("*.py"))}


def _private(name: str) -> bool:
    return name.startswith("_") and not name.startswith("__")


def _resolve(node: ast.ImportFrom, importer: str, is_package: bool) -> str:
    if not node.level:
        return node.module or ""
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    base = base[:len(base) - (node.level - 1)]
    return ".".join(base + ([node.module] if node.module else []))


def imports(name: str, path: Path, modules: dict[str, Path], top_level_only: bool):
    """(imported project module, names taken from it, line) for each import in the file. ``from pkg import
    mod`` counts as importing ``pkg.mod`` when that is a module. Imports inside functions run later, when
    every module is loaded, so they cannot close a circle at import time: ``top_level_only`` skips them."""
    tree = ast.parse(path.read_text())
    nodes = tree.body if top_level_only else list(ast.walk(tree))
    if top_level_only:  # also the bodies of module-level if/try (e.g. TYPE_CHECKING guards count too)
        nodes = [n for top in tree.body for n in ([top] if isinstance(top, (ast.Import, ast.ImportFrom))
                                                  else [] if isinstance(top, (ast.FunctionDef, ast.ClassDef,
                                                                              ast.AsyncFunctionDef))
                                                  else ast.walk(top))]
    for node in nodes:
        if isinstance(node, ast.Import):
            for alias in node.names:
                if alias.name in modules:
                    yield alias.name, [], node.lineno
        elif isinstance(node, ast.ImportFrom):
            source = _resolve(node, name, path.name == "__init__.py")
            if source not in modules:
                continue
            plain = []
            for alias in node.names:
                sub = f"{source}.{alias.name}"
                if sub in modules:
                    yield sub, [], node.lineno
                else:
                    plain.append(alias.name)
            if plain:
                yield source, plain, node.lineno


def find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import circle as [a, b, ..., a], or None (depth-first search, colouring nodes)."""
    state: dict[str, int] = {}  # 1: on the current path, 2: done
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return path[path.index(nxt):] + [nxt]
            if nxt not in state and (found := visit(nxt)):
                return found
        path.pop()
        state[node] = 2
        return None

    for start in sorted(graph):
        if start not in state and (found := visit(start)):
            return found
    return None


def import_graph(top_level_only: bool) -> dict[str, set[str]]:
    modules = project_modules()
    return {name: {target for target, _, _ in imports(name, path, modules, top_level_only) if target != name}
            for name, path in modules.items()}


def test_the_cycle_finder_finds_a_circle():
    """The check below can fail: the circle issue 12 removed (config <-> methods.base) is found."""
    graph = {"trainables.config": {"trainables.methods.base"}, "trainables.methods.base": {"trainables.masking"},
             "trainables.masking": {"trainables.config"}, "orchestrator.spec": {"trainables.config"}}
    cycle = find_cycle(graph)
    assert cycle is not None and cycle[0] == cycle[-1]
    assert set(cycle) == {"trainables.config", "trainables.methods.base", "trainables.masking"}
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) is None


def test_the_graph_sees_relative_and_package_imports():
    graph = import_graph(top_level_only=True)
    assert "orchestrator.records" in graph["orchestrator.tune_runner"]  # from .records import ...
    assert "orchestrator.tracking" in graph["orchestrator.breaker"]
    assert "trainables" in graph["orchestrator.tune_runner"]  # from trainables import TrialConfig
    assert "benchmarks.mlflow_server" in graph["benchmarks.tracking_scale"]


@pytest.mark.parametrize("top_level_only", [True, False], ids=["at-import", "any-import"])
def test_no_import_circle(top_level_only):
    """At import time (module level) and counting the imports inside functions too."""
    cycle = find_cycle(import_graph(top_level_only))
    assert cycle is None, "import circle: " + " -> ".join(cycle)


def test_no_file_imports_a_private_name_of_another_module():
    """``from x import _name`` or ``x._name`` on an imported project module; and ``obj._name`` where
    ``_name`` is defined only in other project files (a reach into another module's class)."""
    modules = project_modules()
    trees = {name: ast.parse(path.read_text()) for name, path in modules.items()}
    defined: dict[str, set[str]] = {}  # private name -> modules that define it
    for name, tree in trees.items():
        for node in ast.walk(tree):
            if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)) and _private(node.name):
                defined.setdefault(node.name, set()).add(name)
            elif isinstance(node, ast.Name) and isinstance(node.ctx, ast.Store) and _private(node.id):
                defined.setdefault(node.id, set()).add(name)
            elif isinstance(node, ast.Attribute) and isinstance(node.ctx, ast.Store) and _private(node.attr):
                defined.setdefault(node.attr, set()).add(name)
    found = []
    for name, path in modules.items():
        bound = {}  # local name -> project module it is bound to
        for target, names, line in imports(name, path, modules, top_level_only=False):
            found += [f"{path.relative_to(ROOT)}:{line}: from {target} import {n}" for n in names if _private(n)]
        for node in ast.walk(trees[name]):
            if isinstance(node, ast.Import):
                bound.update({(a.asname or a.name): a.name for a in node.names if a.name in modules})
            elif isinstance(node, ast.ImportFrom):
                source = _resolve(node, name, path.name == "__init__.py")
                bound.update({(a.asname or a.name): f"{source}.{a.name}" for a in node.names
                              if f"{source}.{a.name}" in modules})
        for node in ast.walk(trees[name]):
            if not (isinstance(node, ast.Attribute) and _private(node.attr)):
                continue
            if isinstance(node.value, ast.Name) and node.value.id in bound:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: {node.value.id}.{node.attr}")
            elif node.attr in defined and name not in defined[node.attr]:
                found.append(f"{path.relative_to(ROOT)}:{node.lineno}: .{node.attr} (defined in "
                             f"{', '.join(sorted(defined[node.attr]))})")
    assert not found, "private names used across modules:\n" + "\n".join(found)


def _external_roots(path: Path) -> set[str]:
    roots = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            roots |= {a.name.split(".")[0] for a in node.names}
        elif isinstance(node, ast.ImportFrom) and not node.level and node.module:
            roots.add(node.module.split(".")[0])
    return roots


def test_arrows_point_one_way_and_ray_and_mlflow_have_one_home():
    """README's Layout: trainables never imports orchestrator; dashboards imports neither; Ray only in
    orchestrator/tune_runner.py, MLflow only in orchestrator/tracking.py (inside the three packages)."""
    graph = import_graph(top_level_only=False)
    upward = [f"{a} -> {b}" for a, targets in graph.items() for b in targets
              if a.split(".")[0] == "trainables" and b.split(".")[0] == "orchestrator"
              or a.split(".")[0] == "dashboards" and b.split(".")[0] in ("orchestrator", "trainables")]
    assert not upward, upward
    homes = {"ray": "orchestrator.tune_runner", "mlflow": "orchestrator.tracking"}
    stray = [f"{name} imports {lib}" for name, path in project_modules().items()
             if name.split(".")[0] in ("orchestrator", "trainables", "dashboards")
             for lib, home in homes.items() if lib in _external_roots(path) and name != home]
    assert not stray, stray
