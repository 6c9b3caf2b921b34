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


# -- no ambient state in the library --------------------------------------------------------------
#
# What a run shares is one MigrationRun handed to every step (projmig/run.py). The library keeps
# nothing of a run anywhere else: no context variables, thread-locals or `global` rebinding, no
# module-level container that code of the module changes, nothing keyed by event loop. Module-level
# constants (tables of rules, frozensets) are fine, and so is functools.cache on a function of its
# arguments (a process-wide cache of data no run changes: botocore's service loader, osparc's scripts).

MUTATING_METHODS = {"append", "add", "update", "setdefault", "pop", "popitem", "clear", "extend", "insert",
                    "remove", "discard", "__setitem__", "__delitem__", "appendleft", "extendleft"}


def ambient_state(path: Path) -> list[str]:
    """``file:line what`` for each construct of ambient state in a module (see above)."""
    tree = ast.parse(path.read_text(), str(path))
    where = path.relative_to(REPO) if path.is_relative_to(REPO) else path
    found: list[str] = []
    module_names = {t.id for node in tree.body if isinstance(node, (ast.Assign, ast.AnnAssign))
                    for t in (node.targets if isinstance(node, ast.Assign) else [node.target]) if isinstance(t, ast.Name)}
    for node in ast.walk(tree):
        if isinstance(node, (ast.Import, ast.ImportFrom)):
            names = [a.name for a in node.names] + ([node.module] if isinstance(node, ast.ImportFrom) and node.module else [])
            if "contextvars" in names or "ContextVar" in names:
                found.append(f"{where}:{node.lineno} imports contextvars")
        elif isinstance(node, ast.Attribute) and node.attr in ("local", "ContextVar") and \
                isinstance(node.value, ast.Name) and node.value.id in ("threading", "contextvars"):
            found.append(f"{where}:{node.lineno} uses {node.value.id}.{node.attr}")
        elif isinstance(node, ast.Global):
            found.append(f"{where}:{node.lineno} rebinds global {', '.join(node.names)}")
        elif isinstance(node, (ast.Assign, ast.AugAssign, ast.Delete)):
            targets = node.targets if isinstance(node, (ast.Assign, ast.Delete)) else [node.target]
            for target in targets:
                if isinstance(target, ast.Subscript) and isinstance(target.value, ast.Name) and target.value.id in module_names:
                    found.append(f"{where}:{node.lineno} changes module-level {target.value.id}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr in MUTATING_METHODS:
            owner = node.func.value
            if isinstance(owner, ast.Name) and owner.id in module_names:
                found.append(f"{where}:{node.lineno} changes module-level {owner.id}")
        elif isinstance(node, ast.Call) and isinstance(node.func, ast.Attribute) and node.func.attr == "get_running_loop":
            parent_keys = [n for n in ast.walk(tree) if isinstance(n, ast.Subscript) and node in ast.walk(n.slice)]
            if parent_keys:
                found.append(f"{where}:{node.lineno} keys something by event loop")
    return found


def test_no_ambient_run_state_in_the_library() -> None:
    modules = [path for name, path in our_modules().items() if name.split(".")[0] == "projmig"]
    assert REPO / "projmig" / "run.py" in modules
    assert [line for path in modules for line in ambient_state(path)] == []


def test_the_ambient_state_check_sees_each_kind(tmp_path: Path) -> None:
    """Shown to find what it looks for: each kind of ambient state in a module of its own."""
    kinds = {
        "from contextvars import ContextVar\nheld = ContextVar('held')\n": "imports contextvars",
        "import threading\n_local = threading.local()\n": "uses threading.local",
        "_loader = None\ndef load():\n    global _loader\n    _loader = 1\n": "rebinds global _loader",
        "_seen: set[int] = set()\ndef see(x):\n    _seen.add(x)\n": "changes module-level _seen",
        "_cache = {}\ndef put(k, v):\n    _cache[k] = v\n": "changes module-level _cache",
        "import asyncio\n_by_loop = {}\nasync def f():\n    return _by_loop[asyncio.get_running_loop()]\n":
            "keys something by event loop",
    }
    for i, (code, what) in enumerate(kinds.items()):
        module = tmp_path / f"m{i}.py"
        module.write_text(code)
        assert any(what in line for line in ambient_state(module)), (code, ambient_state(module))
    constant = tmp_path / "constant.py"
    constant.write_text("RULES = {'a': 1}\ndef rule(k):\n    return RULES[k]\n")
    assert ambient_state(constant) == []
