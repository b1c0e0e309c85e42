"""The package's module dependency graph: no import cycles, and layers below methods.

The graph is read from the source with `ast` (nothing is imported): every ``import`` and
``from ... import`` in a module, at top level or inside a function, class or ``try``, is an
edge, but those under ``if TYPE_CHECKING:`` (annotations only, never run). ``import tfcompress.a.b`` and ``from tfcompress.a import b`` (``b`` a submodule) depend
on the module ``tfcompress.a.b``; ``from tfcompress.a import name`` (``name`` not a submodule)
depends on the package ``tfcompress.a``, i.e. its ``__init__``. Importing a submodule is not
counted as depending on its parent packages' ``__init__``. Relative imports are resolved.
Dynamic imports (``importlib.import_module``) are not seen.

Deprecated aliases (a module whose docstring starts with "Deprecated alias") re-export their
targets; no other module may import one.
"""

from __future__ import annotations

import ast
from pathlib import Path

PACKAGE = "tfcompress"
ROOT = Path(__file__).resolve().parent.parent / PACKAGE

# packages the layers sit below: a layer module imports none of them
METHOD_PACKAGES = (
    "tfcompress.pruning", "tfcompress.quantization", "tfcompress.bayesian", "tfcompress.export",
    "tfcompress.callbacks", "tfcompress.cli", "tfcompress.distillation", "tfcompress.demo",
    "tfcompress.uncertainty",
)
# what tfcompress.export sits below
ABOVE_EXPORT = ("tfcompress.callbacks", "tfcompress.cli", "tfcompress.uncertainty")
# tfcompress.uncertainty reads the layers, methods, export and callbacks; only these sit above it
ABOVE_UNCERTAINTY = ("tfcompress.cli",)


def _module_name(path: Path) -> str:
    parts = list(path.relative_to(ROOT.parent).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _sources() -> dict[str, Path]:
    return {_module_name(p): p for p in sorted(ROOT.rglob("*.py")) if "__pycache__" not in p.parts}


def _within(name: str, prefix: str) -> bool:
    return name == prefix or name.startswith(prefix + ".")


def _is_type_checking(test: ast.expr) -> bool:
    return (isinstance(test, ast.Name) and test.id == "TYPE_CHECKING") or (
        isinstance(test, ast.Attribute) and test.attr == "TYPE_CHECKING")


def _runtime_nodes(tree: ast.AST):
    """Every node of ``tree`` but those under ``if TYPE_CHECKING:`` (never run)."""
    stack = [tree]
    while stack:
        node = stack.pop()
        yield node
        if isinstance(node, ast.If) and _is_type_checking(node.test):
            stack.extend(node.orelse)
            continue
        stack.extend(ast.iter_child_nodes(node))


def _imports(module: str, path: Path, known: set[str]) -> set[str]:
    """The tfcompress modules ``module`` imports (anywhere in its body)."""
    tree = ast.parse(path.read_text(encoding="utf-8"), filename=str(path))
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    deps: set[str] = set()

    def add(name: str) -> None:
        # the longest known module the name starts with (``import tfcompress.a.b`` of a missing
        # ``b`` still needs ``tfcompress.a``)
        while name and name not in known:
            name = name.rpartition(".")[0]
        if name:
            deps.add(name)

    for node in _runtime_nodes(tree):
        if isinstance(node, ast.Import):
            for alias in node.names:
                if _within(alias.name, PACKAGE):
                    add(alias.name)
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")
                base = base[: len(base) - (node.level - 1)]
                source = ".".join(base + ([node.module] if node.module else []))
            else:
                source = node.module or ""
            if not _within(source, PACKAGE):
                continue
            for alias in node.names:
                submodule = f"{source}.{alias.name}"
                add(submodule if submodule in known else source)
    deps.discard(module)
    return deps


def _is_alias(path: Path) -> bool:
    doc = ast.get_docstring(ast.parse(path.read_text(encoding="utf-8"))) or ""
    return doc.startswith("Deprecated alias")


def _graph() -> dict[str, set[str]]:
    sources = _sources()
    known = set(sources)
    return {name: _imports(name, path, known) for name, path in sources.items()}


def _cycles(graph: dict[str, set[str]]) -> list[list[str]]:
    """Strongly connected components with more than one module (Tarjan), each as one cycle."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    components: list[list[str]] = []

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
                components.append(sorted(component))

    for v in sorted(graph):
        if v not in index:
            visit(v)
    return [_one_cycle(graph, set(c)) for c in components]


def _one_cycle(graph: dict[str, set[str]], component: set[str]) -> list[str]:
    """A shortest cycle through the component's first module (breadth-first search)."""
    start = min(component)
    parents: dict[str, str] = {}
    frontier = [start]
    while frontier:
        following = []
        for v in frontier:
            for w in sorted(graph[v] & component):
                if w == start:
                    path = [v]
                    while path[-1] != start:
                        path.append(parents[path[-1]])
                    return [*reversed(path), start]
                if w not in parents:
                    parents[w] = v
                    following.append(w)
        frontier = following
    return sorted(component)  # pragma: no cover - a component always has a cycle


def test_graph_is_read_precisely(tmp_path):
    known = {"tfcompress", "tfcompress.a", "tfcompress.a.b", "tfcompress.a.c", "tfcompress.a.e", "tfcompress.d"}
    source = tmp_path / "e.py"

    def deps(text: str, module: str = "tfcompress.a.e", path: Path = source) -> set[str]:
        path.write_text(text)
        return _imports(module, path, known)

    # a submodule, by import or from-import: the submodule only, not its package
    assert deps("import tfcompress.a.b\nfrom tfcompress.a import c\n") == {"tfcompress.a.b", "tfcompress.a.c"}
    # a name that is not a submodule: the package's __init__; an unknown submodule: its package
    assert deps("from tfcompress.a import name\n") == {"tfcompress.a"}
    assert deps("import tfcompress.a.missing\n") == {"tfcompress.a"}
    # relative imports, and imports inside functions
    assert deps("from . import b as _b\ndef f():\n    from .. import d\n") == {"tfcompress.a.b", "tfcompress.d"}
    assert deps("from .b import x\nfrom . import c\n", "tfcompress.a", tmp_path / "__init__.py") == {
        "tfcompress.a.b", "tfcompress.a.c"}
    # annotations only (never run): not an edge; the else branch is
    assert deps("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import tfcompress.d\n"
                "else:\n    import tfcompress.a.b\n") == {"tfcompress.a.b"}
    assert _cycles({"a": {"b"}, "b": {"c"}, "c": {"a"}, "d": {"a"}}) == [["a", "b", "c", "a"]]
    assert _cycles({"a": {"b"}, "b": set()}) == []
    # and on the package itself: lazy imports count, parents are not implied
    graph = _graph()
    assert "tfcompress.export.tflite_file" in graph["tfcompress.metrics"]
    assert "tfcompress.export" not in graph["tfcompress.export.convert"]


def test_no_import_cycles():
    cycles = _cycles(_graph())
    assert not cycles, "import cycles:\n" + "\n".join(" -> ".join(c) for c in cycles)


def test_deprecated_aliases_are_imported_by_nobody():
    sources = _sources()
    aliases = {name for name, path in sources.items() if _is_alias(path)}
    assert "tfcompress.surgery" in aliases
    graph = _graph()
    users = sorted(f"{module} imports {dep}" for module, deps in graph.items()
                   if module not in aliases for dep in deps & aliases)
    assert not users, "use the new module paths:\n" + "\n".join(users)


def _violations(graph: dict[str, set[str]], lower: str, upper: tuple[str, ...]) -> list[str]:
    return sorted(f"{module} imports {dep}" for module, deps in graph.items() if _within(module, lower)
                  for dep in deps if any(_within(dep, u) for u in upper))


def test_layers_import_no_method():
    violations = _violations(_graph(), "tfcompress.layers", METHOD_PACKAGES)
    assert not violations, "tfcompress.layers sits below the methods:\n" + "\n".join(violations)


def test_core_imports_no_layer_or_method():
    violations = _violations(_graph(), "tfcompress.core", ("tfcompress.layers", *METHOD_PACKAGES))
    assert not violations, "tfcompress.core sits below the layers:\n" + "\n".join(violations)


def test_export_imports_no_callback_or_cli():
    violations = _violations(_graph(), "tfcompress.export", ABOVE_EXPORT)
    assert not violations, "tfcompress.export sits below callbacks, uncertainty and the CLI:\n" + "\n".join(violations)


def test_uncertainty_sits_above_methods_export_and_callbacks_and_below_the_cli():
    graph = _graph()
    violations = _violations(graph, "tfcompress.uncertainty", ABOVE_UNCERTAINTY)
    for lower in ("tfcompress.pruning", "tfcompress.quantization", "tfcompress.bayesian", "tfcompress.callbacks"):
        violations += _violations(graph, lower, ("tfcompress.uncertainty",))
    assert not violations, "tfcompress.uncertainty sits above the methods, export and callbacks, below the CLI:\n" + \
        "\n".join(violations)
