"""The import graph: one-way between the packages, no cycle anywhere.

The direction is ``uws -> pbs_bridge -> qualityfits -> votable``: each
package imports only those to its right (the package docstrings say
so).  Every import counts, those under ``TYPE_CHECKING`` and inside
functions included.
"""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
#: Each package and the packages it may import.
ORDER = ("uws", "pbs_bridge", "qualityfits", "votable")
ALLOWED = {name: set(ORDER[i + 1:]) for i, name in enumerate(ORDER)}


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _imports(path: Path, module: str, modules: set[str]) -> set[str]:
    """Every project module ``path`` imports (resolved, any place).

    ``from pkg import name`` depends on the module ``pkg.name`` when
    there is one, else on ``pkg`` (a name its ``__init__`` defines).
    """
    package = module if path.name == "__init__.py" else \
        module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")
                anchor = anchor[:len(anchor) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            for alias in node.names:
                sub = f"{base}.{alias.name}"
                found.add(sub if sub in modules else base)
    return {name for name in found if name.split(".")[0] in ORDER}


def _graph() -> dict[str, set[str]]:
    modules = {}
    for package in ORDER:
        for path in sorted((ROOT / package).rglob("*.py")):
            modules[_module_name(path)] = path
    graph = {}
    for name, path in modules.items():
        graph[name] = {target for target in _imports(path, name,
                                                      set(modules))
                       if target in modules and target != name}
    return graph


GRAPH = _graph()


@pytest.mark.parametrize("package", ORDER)
def test_packages_import_only_to_their_right(package):
    wrong = sorted(
        f"{module} imports {target}"
        for module, targets in GRAPH.items()
        if module.split(".")[0] == package
        for target in targets
        if target.split(".")[0] not in ALLOWED[package] | {package})
    assert wrong == []


def test_no_module_cycle():
    """Depth-first search for a cycle among all the modules."""
    state: dict[str, int] = {}
    path: list[str] = []

    def visit(node: str) -> list[str] | None:
        state[node] = 1
        path.append(node)
        for target in sorted(GRAPH[node]):
            if state.get(target) == 1:
                return [*path[path.index(target):], target]
            if target not in state:
                found = visit(target)
                if found:
                    return found
        state[node] = 2
        path.pop()
        return None

    for node in sorted(GRAPH):
        if node not in state:
            cycle = visit(node)
            assert cycle is None, " -> ".join(cycle)


def test_the_graph_is_read():
    """The reader sees the imports it must see (it can fail)."""
    assert "pbs_bridge.runner" in GRAPH["uws.settings"]
    assert "qualityfits.manifest" in GRAPH["pbs_bridge.jobfolder"]
    assert "votable" in {t.split(".")[0] for t in GRAPH["qualityfits.tables"]}


def test_package_docstrings_state_the_direction():
    for package in ORDER:
        doc = ast.get_docstring(ast.parse(
            (ROOT / package / "__init__.py").read_text())) or ""
        assert "uws -> pbs_bridge -> qualityfits -> votable" in doc, package
