"""The package's layers import downward only, and no module imports itself back in a
cycle (docs/architecture.md). Lazy imports inside functions count: a lazy import hides a
dependency from Python's start-up, not from the reader.

An AST walk of our own rather than import-linter: the rule is eight lines here, and
import-linter would be one more dependency for the suite to install."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

PACKAGE = Path(__file__).resolve().parents[1] / "ckl"

# Lowest first. A module may import from its own layer and from the layers before it.
LAYERS = ("core", "data", "model", "train", "methods", "evaluate", "results", "run", "study", "report", "app")


def module_name(path: Path) -> str:
    parts = path.relative_to(PACKAGE.parent).with_suffix("").parts
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def imports_of(path: Path) -> set[str]:
    """Every ckl module `path` imports, anywhere in the file (`from ckl.x import y` gives
    ckl.x.y when that is a module, else ckl.x)."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(), str(path))):
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "ckl")
        elif isinstance(node, ast.ImportFrom) and node.module and node.module.split(".")[0] == "ckl" and not node.level:
            for alias in node.names:
                sub = f"{node.module}.{alias.name}"
                found.add(sub if sub in MODULES else node.module)
    return found


def layer_of(module: str) -> int | None:
    """The layer's index; None for the package root (`ckl`, `ckl.__main__`), which any
    layer may use (`ckl.__version__`) and which only starts the app."""
    parts = module.split(".")
    if len(parts) < 2 or parts[1] == "__main__":
        return None
    return LAYERS.index(parts[1])


MODULES = {module_name(p): p for p in PACKAGE.rglob("*.py")}
GRAPH = {m: imports_of(p) for m, p in MODULES.items()}


def test_every_module_lives_in_a_layer():
    loose = [m for m in MODULES if m.count(".") == 1 and m not in ("ckl.__main__",) and m.split(".")[1] not in LAYERS]
    assert loose == [], f"modules outside the layers {LAYERS}: {loose}"


def test_no_module_imports_from_a_layer_above_its_own():
    upward = []
    for module, deps in GRAPH.items():
        mine = layer_of(module)
        for dep in deps:
            theirs = layer_of(dep)
            if mine is not None and theirs is not None and theirs > mine:
                upward.append(f"{module} ({LAYERS[mine]}) imports {dep} ({LAYERS[theirs]})")
    assert upward == [], "\n".join(sorted(upward))


def test_there_is_no_import_cycle():
    # A package's __init__ may import its own modules (re-exports) and they it: that is one
    # unit, so edges into a package's own __init__ from inside it are left out.
    def inside(dep: str, module: str) -> bool:
        return module.startswith(dep + ".") and (MODULES[dep].name == "__init__.py")

    graph = {m: {d for d in deps if d in MODULES and d != m and not inside(d, m)} for m, deps in GRAPH.items()}
    state: dict[str, int] = {}
    stack: list[str] = []

    def visit(m: str) -> list[str] | None:
        state[m] = 1
        stack.append(m)
        for d in sorted(graph[m]):
            if state.get(d) == 1:
                return stack[stack.index(d):] + [d]
            if d not in state and (cycle := visit(d)):
                return cycle
        stack.pop()
        state[m] = 2
        return None

    for m in sorted(graph):
        if m not in state and (cycle := visit(m)):
            pytest.fail("import cycle: " + " -> ".join(cycle))


def test_the_walk_sees_lazy_imports():
    # The checker is only as good as its walk: a function-level import must be found.
    assert "ckl.model.scoring" in GRAPH["ckl.methods.data._policies"]
