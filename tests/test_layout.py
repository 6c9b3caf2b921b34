"""The code's layout holds: the library imports no Prefect, no modules import each other in a
circle, and none imports another module's private (``_underscore``) names."""

from __future__ import annotations

import ast
import pkgutil
import subprocess
import sys
from pathlib import Path

import projmig

REPO = Path(__file__).resolve().parents[1]
PACKAGES = ("projmig", "flows", "deployments", "bench")


def test_library_does_not_import_prefect() -> None:
    modules = [m.name for m in pkgutil.walk_packages(projmig.__path__, "projmig.")]
    assert "projmig.objects" in modules and "projmig.sandbox.sample" in modules
    code = "import importlib, sys\n" + "".join(f"importlib.import_module({m!r})\n" for m in modules) + (
        "bad = sorted(m for m in sys.modules if m == 'prefect' or m.startswith('prefect.'))\n"
        "print(bad[:5]); sys.exit(1 if bad else 0)\n"
    )
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True)
    assert result.returncode == 0, result.stdout + result.stderr


def our_modules(root: Path = REPO) -> dict[str, Path]:
    """Every module of the project's packages, by dotted name (a package by its ``__init__``)."""
    found: dict[str, Path] = {}
    for package in PACKAGES:
        for path in sorted((root / package).rglob("*.py")):
            parts = list(path.relative_to(root).with_suffix("").parts)
            if parts[-1] == "__init__":
                parts.pop()
            found[".".join(parts)] = path
    return found


def imports_of(name: str, path: Path, modules: dict[str, Path]) -> list[tuple[str, str, int]]:
    """(module imported, name taken from it or "", line) for every import statement of the module,
    at module level or inside functions, that names one of ``modules``."""
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: list[tuple[str, str, int]] = []
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found += [(alias.name, "", node.lineno) for alias in node.names if alias.name in modules]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join(anchor + ([base] if base else []))
            for alias in node.names:
                if f"{base}.{alias.name}" in modules:  # `from package import module`
                    found.append((f"{base}.{alias.name}", "", node.lineno))
                elif base in modules:
                    found.append((base, alias.name, node.lineno))
    return found


def import_graph(modules: dict[str, Path]) -> dict[str, set[str]]:
    return {name: {imported for imported, _, _ in imports_of(name, path, modules) if imported != name}
            for name, path in modules.items()}


def circles(graph: dict[str, set[str]]) -> list[list[str]]:
    """The import circles of ``graph``: each strongly connected group of two or more modules
    (Tarjan's algorithm), sorted."""
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    found: list[list[str]] = []

    def visit(node: str) -> None:
        index[node] = low[node] = len(index)
        stack.append(node)
        for other in sorted(graph.get(node, ())):
            if other not in index:
                visit(other)
                low[node] = min(low[node], low[other])
            elif other in stack:
                low[node] = min(low[node], index[other])
        if low[node] == index[node]:
            group = []
            while True:
                member = stack.pop()
                group.append(member)
                if member == node:
                    break
            if len(group) > 1:
                found.append(sorted(group))

    for node in sorted(graph):
        if node not in index:
            visit(node)
    return sorted(found)


def private_imports(modules: dict[str, Path]) -> list[str]:
    """``module:line imports other._name`` for every private name a module takes from another."""
    found = []
    for name, path in modules.items():
        for imported, taken, line in imports_of(name, path, modules):
            if taken.startswith("_") and not taken.startswith("__") and imported != name:
                found.append(f"{path.relative_to(REPO)}:{line} imports {imported}.{taken}")
            elif not taken and imported.rpartition(".")[2].startswith("_") and not imported.endswith("__main__"):
                found.append(f"{path.relative_to(REPO)}:{line} imports the private module {imported}")
    return found


def test_no_import_circles() -> None:
    modules = our_modules()
    assert {"projmig.steps", "flows.migrate", "flows.cli", "deployments.serve", "bench.env"} <= set(modules)
    graph = import_graph(modules)
    assert "projmig.plan" in graph["projmig.steps"] and "flows.steps" in graph["flows.migrate"]
    assert circles(graph) == [], "modules that import each other (directly or around a circle)"


def test_no_module_imports_another_modules_private_names() -> None:
    assert private_imports(our_modules()) == []


def test_the_checks_see_function_level_imports_and_relative_circles(tmp_path: Path) -> None:
    """The two checks above find what they look for: a circle closed by an import inside a function,
    a longer circle through relative imports, and a private name imported either way."""
    for package in PACKAGES:
        (tmp_path / package).mkdir()
        (tmp_path / package / "__init__.py").write_text("")
    (tmp_path / "projmig" / "a.py").write_text("from .b import thing\n")
    (tmp_path / "projmig" / "b.py").write_text("def thing():\n    from projmig.a import _helper\n")
    (tmp_path / "flows" / "x.py").write_text("from . import y\n")
    (tmp_path / "flows" / "y.py").write_text("import flows.z\n")
    (tmp_path / "flows" / "z.py").write_text("from .x import run\nfrom projmig.b import thing\n")
    modules = our_modules(tmp_path)
    assert circles(import_graph(modules)) == [["flows.x", "flows.y", "flows.z"], ["projmig.a", "projmig.b"]]
    taken = {(name, imported, taken) for name, path in modules.items() for imported, taken, _ in imports_of(name, path, modules)}
    assert ("projmig.b", "projmig.a", "_helper") in taken
