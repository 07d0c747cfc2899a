"""The package's import graph has no cycle.

Read from the source (``ast``), not by importing, so every import counts, whichever runs first:

- nodes: the modules of ``snn_fast`` (``snn_fast/**.py``; a package is its ``__init__.py``);
- edges: every ``import`` / ``from … import`` statement that names a module of the package, split
  into *module-level* (executed when the module is imported: at top level, or inside a top-level
  ``if``/``try``/``with``/class body) and *function-level* (inside a ``def`` or ``lambda``: runs only
  when called — a lazy import). ``from pkg import name`` is an edge to the submodule ``pkg.name``
  when there is one, else to ``pkg`` (for a package: when its ``__init__.py`` binds ``name`` at top
  level; otherwise ``name`` is a compiled module such as ``_C`` and there is no edge). The implicit
  import of parent packages is not an edge (every submodule would otherwise form a circle with the
  ``__init__`` that imports it). ``importlib.import_module`` with a string (the backend tables' lazy
  loading) is not read;
- checked: the graph of module-level edges has no cycle, and neither has the graph of all edges: a
  lazy import may defer a dependency, but one pointing back up (say ``backends`` → ``ops.lif.triton``
  → ``ops.lif.function`` → ``backends``) is still a circle of dependencies between modules.

``test_finds_a_cycle`` builds a synthetic circle, so the check itself is known to be able to fail.
"""
from __future__ import annotations

import ast
import os
from typing import Dict, List, Set, Tuple

ROOT = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "snn_fast")


def _modules(root: str, pkg: str = "snn_fast") -> Dict[str, str]:
    """module name -> file path, for every .py file below ``root``."""
    out = {}
    for d, _, files in os.walk(root):
        for f in files:
            if not f.endswith(".py"):
                continue
            rel = os.path.relpath(os.path.join(d, f), root)[:-3].split(os.sep)
            if rel[-1] == "__init__":
                rel = rel[:-1]
            out[".".join([pkg] + rel)] = os.path.join(d, f)
    return out


def _top_level_names(path: str) -> Set[str]:
    """Names a module binds at top level (assignments, defs, classes, imports)."""
    names = set()
    for node in ast.parse(open(path, encoding="utf-8").read(), path).body:
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.ClassDef)):
            names.add(node.name)
        elif isinstance(node, (ast.Import, ast.ImportFrom)):
            names.update((a.asname or a.name).split(".")[0] for a in node.names)
        elif isinstance(node, (ast.Assign, ast.AnnAssign)):
            for t in (node.targets if isinstance(node, ast.Assign) else [node.target]):
                names.update(n.id for n in ast.walk(t) if isinstance(n, ast.Name))
    return names


def _imports(path: str, name: str, is_pkg: bool, known: Set[str], bound, is_package) -> List[Tuple[str, bool]]:
    """(imported module of the package, module_level) for each import statement of one file."""
    tree = ast.parse(open(path, encoding="utf-8").read(), path)
    base = name if is_pkg else name.rpartition(".")[0]  # what a relative import is relative to
    edges = []

    def target(mod: str) -> str:
        while mod and mod not in known:  # `import snn_fast.ops.lif.triton as lt` names a module
            mod = mod.rpartition(".")[0]
        return mod

    def visit(node, module_level: bool):
        if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef, ast.Lambda)):
            module_level = False
        if isinstance(node, ast.Import):
            for a in node.names:
                t = target(a.name)
                if t:
                    edges.append((t, module_level))
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                parts = base.split(".")
                parent = ".".join(parts[:len(parts) - (node.level - 1)])
                mod = parent + ("." + node.module if node.module else "")
            else:
                mod = node.module or ""
            for a in node.names:
                sub = f"{mod}.{a.name}"
                if sub in known:
                    t = sub  # a submodule
                elif mod in known and is_package(mod):
                    t = mod if a.name in bound(mod) else None  # a name its __init__ defines, or a compiled module
                else:
                    t = target(mod)  # a name defined in a module
                if t:
                    edges.append((t, module_level))
        for child in ast.iter_child_nodes(node):
            visit(child, module_level)

    visit(tree, True)
    return [(t, lvl) for t, lvl in edges if t != name]


def import_graph(root: str = ROOT, pkg: str = "snn_fast"):
    """{module: {imported module: module_level (True if any of its imports of it is module-level)}}."""
    mods = _modules(root, pkg)
    known = set(mods)
    cache: Dict[str, Set[str]] = {}

    def bound(mod):
        if mod not in cache:
            cache[mod] = _top_level_names(mods[mod])
        return cache[mod]

    graph: Dict[str, Dict[str, bool]] = {m: {} for m in mods}
    for m, path in mods.items():
        for t, lvl in _imports(path, m, path.endswith("__init__.py"), known, bound,
                               lambda mod: mods[mod].endswith("__init__.py")):
            graph[m][t] = graph[m].get(t, False) or lvl
    return graph


def cycles(graph: Dict[str, Dict[str, bool]], module_level_only: bool) -> List[List[str]]:
    """One cycle per strongly connected component with more than one module (Tarjan)."""
    adj = {m: [t for t, lvl in e.items() if lvl or not module_level_only] for m, e in graph.items()}
    index: Dict[str, int] = {}
    low: Dict[str, int] = {}
    stack: List[str] = []
    on: Set[str] = set()
    out = []

    def strong(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on.add(v)
        for w in adj[v]:
            if w not in index:
                strong(w)
                low[v] = min(low[v], low[w])
            elif w in on:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            comp = []
            while True:
                w = stack.pop()
                on.discard(w)
                comp.append(w)
                if w == v:
                    break
            if len(comp) > 1:
                out.append(sorted(comp))

    for v in adj:
        if v not in index:
            strong(v)
    return out


def _describe(graph, comps):
    lines = []
    for comp in comps:
        for m in comp:
            for t, lvl in graph[m].items():
                if t in comp:
                    lines.append(f"  {m} -> {t} ({'module-level' if lvl else 'in a function'})")
    return "\n".join(lines)


def test_module_level_imports_have_no_cycle():
    g = import_graph()
    assert "snn_fast.backends" in g and "snn_fast.ops.lif.triton" in g  # the graph was read
    comps = cycles(g, module_level_only=True)
    assert not comps, f"module-level import cycles {comps}:\n{_describe(g, comps)}"


def test_all_imports_have_no_cycle():
    g = import_graph()
    comps = cycles(g, module_level_only=False)
    assert not comps, f"import cycles (counting imports inside functions) {comps}:\n{_describe(g, comps)}"


def test_finds_a_cycle(tmp_path):
    """The check can fail: a kernel module that imports its op's function.py at module level to
    register itself, while function.py imports the kernel module lazily."""
    pkg = tmp_path / "p"
    (pkg / "op").mkdir(parents=True)
    (pkg / "__init__.py").write_text("from .op import function\n")
    (pkg / "op" / "__init__.py").write_text("")
    (pkg / "op" / "function.py").write_text("def load():\n    from . import triton\n")
    (pkg / "op" / "triton.py").write_text("from .function import load\n")
    g = import_graph(str(pkg), "p")
    assert g["p.op.triton"] == {"p.op.function": True}
    assert g["p.op.function"] == {"p.op.triton": False}
    assert cycles(g, module_level_only=True) == []
    assert cycles(g, module_level_only=False) == [["p.op.function", "p.op.triton"]]
