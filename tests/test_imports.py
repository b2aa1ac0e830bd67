"""The house rules: a lower layer never imports a higher one, and no module imports itself back through another.

Reads every `import` in fewshot_da/ (module level and inside functions) from the source, so the rules hold for
imports that run late too. `python tests/test_imports.py` prints the graph's edges that cross packages.
"""
import ast
import sys
from pathlib import Path

PACKAGE = Path(__file__).resolve().parents[1] / "fewshot_da"

# (importer prefix, forbidden imported prefix): the layering of DESIGN.md
RULES = [
    ("fewshot_da.training", "fewshot_da.experiments"),
    ("fewshot_da.models", "fewshot_da.experiments"),
    ("fewshot_da.data", "fewshot_da.experiments"),
    ("fewshot_da.experiments", "fewshot_da.reports"),
    ("fewshot_da.experiments", "fewshot_da.recommend"),
    ("fewshot_da.models", "fewshot_da.training"),
]
# study drivers and readers of results: nothing below them imports them
TOP = ("fewshot_da.reports", "fewshot_da.recommend", "fewshot_da.diagnostics", "fewshot_da.demo")


def module_name(path: Path) -> str:
    parts = list(path.relative_to(PACKAGE.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts = parts[:-1]
    return ".".join(parts)


def modules() -> dict:
    """{dotted module name: source path} for every .py file of the package."""
    return {module_name(p): p for p in sorted(PACKAGE.rglob("*.py")) if "__pycache__" not in p.parts}


def _resolve(importer: str, is_package: bool, node, mods) -> list:
    """The package modules an import node names (relative imports resolved against `importer`).

    `from pkg import name` imports the submodule pkg.name when there is one, else pkg itself (for the attribute)."""
    if isinstance(node, ast.Import):
        return [alias.name for alias in node.names]
    base = importer.split(".") if is_package else importer.split(".")[:-1]
    if node.level:
        base = base[:len(base) - (node.level - 1)]
        prefix = ".".join(base + ([node.module] if node.module else []))
    else:
        prefix = node.module or ""
    return [f"{prefix}.{a.name}" if f"{prefix}.{a.name}" in mods else prefix for a in node.names]


def import_graph() -> dict:
    """{module: set of package modules it imports}, counting only names that are modules of the package."""
    mods = modules()
    graph = {}
    for name, path in mods.items():
        tree = ast.parse(path.read_text(), filename=str(path))
        targets = set()
        for node in ast.walk(tree):
            if isinstance(node, (ast.Import, ast.ImportFrom)):
                for target in _resolve(name, path.name == "__init__.py", node, mods):
                    if target in mods and target != name:
                        targets.add(target)
        graph[name] = targets
    return graph


def _layer(module: str, prefix: str) -> bool:
    return module == prefix or module.startswith(prefix + ".")


def violations(graph: dict) -> list:
    found = []
    for importer, targets in graph.items():
        for target in sorted(targets):
            for low, high in RULES:
                if _layer(importer, low) and _layer(target, high):
                    found.append(f"{importer} imports {target} ({low} never imports {high})")
            if any(_layer(target, top) for top in TOP) and not any(_layer(importer, top) for top in TOP):
                found.append(f"{importer} imports the study driver {target}")
    return found


def cycles(graph: dict) -> list:
    """Every strongly connected component of more than one module (Tarjan), as sorted lists."""
    index, low, stack, on_stack, out = {}, {}, [], set(), []

    def visit(v):
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in graph.get(v, ()):
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
                out.append(sorted(component))

    sys.setrecursionlimit(max(10000, sys.getrecursionlimit()))
    for v in sorted(graph):
        if v not in index:
            visit(v)
    return out


def test_graph_reads_the_package():
    graph = import_graph()
    assert "fewshot_da.training.fit" in graph and "fewshot_da.errors" in graph["fewshot_da.training.fit"]


def test_no_import_runs_back_up():
    assert violations(import_graph()) == []


def test_no_import_circle():
    assert cycles(import_graph()) == []


def test_rules_catch_a_violation():
    graph = {"fewshot_da.models.x": {"fewshot_da.training.fit"}, "fewshot_da.training.fit": {"fewshot_da.models.x"}}
    assert violations(graph) == ["fewshot_da.models.x imports fewshot_da.training.fit "
                                 "(fewshot_da.models never imports fewshot_da.training)"]
    assert cycles(graph) == [["fewshot_da.models.x", "fewshot_da.training.fit"]]


if __name__ == "__main__":
    g = import_graph()
    for importer in sorted(g):
        for target in sorted(g[importer]):
            if importer.split(".")[:2] != target.split(".")[:2]:
                print(f"{importer} -> {target}")
    print("violations:", *violations(g) or ["none"], sep="\n  ")
    print("cycles:", *[" <-> ".join(c) for c in cycles(g)] or ["none"], sep="\n  ")
