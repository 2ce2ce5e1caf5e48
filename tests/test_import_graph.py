"""The package's internal import graph: every module imports, no cycle (module-level and
function-level imports both count, so a cycle hidden inside a function is found), and the core
modules stand below the sources, operations, server and jobs."""
from __future__ import annotations

import ast
import importlib
import pkgutil
from pathlib import Path

import networkx as nx
import pytest

import crantseg_dask

PKG = "crantseg_dask"
ROOT = Path(crantseg_dask.__file__).parent
CORE = ("errors", "_ids", "_validate", "_chunking", "config")
UPPER = ("sources", "ops", "server", "jobs")


def _modules() -> dict[str, Path]:
    """Every module of the package (by file), dotted name -> path."""
    out = {}
    for path in ROOT.rglob("*.py"):
        parts = path.relative_to(ROOT.parent).with_suffix("").parts
        if parts[-1] == "__init__":
            parts = parts[:-1]
        out[".".join(parts)] = path
    return out


def _imports(name: str, path: Path, modules) -> set[str]:
    """Package modules that ``name`` imports anywhere in its source (``from x import y`` counts
    as importing ``x.y`` when that is a module, else ``x``)."""
    is_pkg = path.name == "__init__.py"
    package = name if is_pkg else name.rpartition(".")[0]
    found = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            targets = [a.name for a in node.names]
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                mod = ".".join(base + ([node.module] if node.module else []))
            else:
                mod = node.module or ""
            targets = [f"{mod}.{a.name}" if f"{mod}.{a.name}" in modules else mod for a in node.names]
        else:
            continue
        for t in targets:
            while t and t not in modules:  # `import crantseg_dask.ops.x.y` style: nearest module
                t = t.rpartition(".")[0]
            if t.startswith(PKG) and t != name:
                found.add(t)
    return found


def _graph() -> nx.DiGraph:
    modules = _modules()
    g = nx.DiGraph()
    g.add_nodes_from(modules)
    for name, path in modules.items():
        for t in _imports(name, path, modules):
            # a module importing its own package's __init__ (or a parent) is not an edge of the
            # code: Python runs the parent first anyway; count only imports of non-ancestors
            if not name.startswith(t + "."):
                g.add_edge(name, t)
    return g


@pytest.mark.parametrize("name", sorted(_modules()))
def test_every_module_imports(name):
    importlib.import_module(name)


def test_the_walk_finds_every_module():
    walked = {m.name for m in pkgutil.walk_packages(crantseg_dask.__path__, PKG + ".")}
    assert walked <= set(_modules())


def test_no_import_cycle():
    g = _graph()
    assert g.number_of_edges() > 50  # the parser found the package's imports
    cycles = list(nx.simple_cycles(g))
    assert not cycles, "import cycles: " + "; ".join(" -> ".join(c + [c[0]]) for c in cycles[:10])


def test_a_hidden_cycle_is_seen(tmp_path):
    """The checker itself: a function-level import back counts as an edge."""
    mods = {"crantseg_dask.a": tmp_path / "a.py", "crantseg_dask.b": tmp_path / "b.py"}
    mods["crantseg_dask.a"].write_text("from . import b\n")
    mods["crantseg_dask.b"].write_text("def f():\n    from .a import x\n")
    assert _imports("crantseg_dask.b", mods["crantseg_dask.b"], mods) == {"crantseg_dask.a"}
    assert _imports("crantseg_dask.a", mods["crantseg_dask.a"], mods) == {"crantseg_dask.b"}


@pytest.mark.parametrize("core", CORE)
def test_core_modules_stand_below_the_wings(core):
    g = _graph()
    reach = nx.descendants(g, f"{PKG}.{core}")
    upper = sorted(m for m in reach if m.split(".")[1] in UPPER)
    assert not upper, f"{core} imports (directly or not) {upper}"
