"""The import graph of src/pailfs follows the layers of docs/architecture.md:
no arrow runs up, and no module imports itself round a circle."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

pytestmark = pytest.mark.unit

ROOT = Path(__file__).resolve().parent.parent
SRC = ROOT / "src"


def allowed_imports() -> dict[str, set[str] | None]:
    """component -> the components it may import (None: everything), from the table
    under '<!-- layers' in docs/architecture.md."""
    text = (ROOT / "docs" / "architecture.md").read_text()
    table = text.split("<!-- layers", 1)[1].split("\n\n", 1)[0]
    rules: dict[str, set[str] | None] = {}
    for line in table.splitlines()[3:]:
        cells = [c.strip() for c in line.strip().strip("|").split("|")]
        component = re.findall(r"`([^`]+)`", cells[0])[0]
        may = re.findall(r"`([^`]+)`", cells[1])
        rules[component] = None if cells[1] == "everything" else set(may)
    return rules


def modules() -> dict[str, Path]:
    found = {}
    for path in SRC.rglob("*.py"):
        parts = list(path.relative_to(SRC).with_suffix("").parts)
        if parts[-1] == "__init__":
            parts.pop()
        found[".".join(parts)] = path
    return found


def component(module: str) -> str:
    parts = module.split(".")
    if len(parts) == 1:
        return "pailfs"
    return "cli" if parts[1] == "__main__" else parts[1]


def imports_of(name: str, path: Path, known: dict[str, Path]) -> set[str]:
    """pailfs modules imported anywhere in a module (functions included: a lazy import
    is still a dependency), except under `if TYPE_CHECKING:`."""
    tree = ast.parse(path.read_text())
    hints: set[int] = set()
    for node in ast.walk(tree):
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            hints.update(id(sub) for sub in ast.walk(node))
    package = name if path.name == "__init__.py" else name.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if id(node) in hints:
            continue
        if isinstance(node, ast.Import):
            found.update(a.name for a in node.names if a.name.split(".")[0] == "pailfs")
        elif isinstance(node, ast.ImportFrom):
            if node.level:
                base = package.split(".")[: len(package.split(".")) - node.level + 1]
                target = ".".join(base + ([node.module] if node.module else []))
            else:
                target = node.module or ""
            if target.split(".")[0] != "pailfs":
                continue
            for alias in node.names:
                sub = f"{target}.{alias.name}"
                found.add(sub if sub in known else target)
    found.discard(name)
    return found


def graph() -> dict[str, set[str]]:
    known = modules()
    return {name: imports_of(name, path, known) for name, path in known.items()}


def test_no_import_runs_up_the_layers():
    rules = allowed_imports()
    wrong = []
    for module, targets in sorted(graph().items()):
        mine = component(module)
        assert mine in rules, f"{module}: component {mine!r} is missing from docs/architecture.md"
        may = rules[mine]
        if may is None:
            continue
        for target in sorted(targets):
            theirs = component(target)
            if theirs != mine and theirs not in may:
                wrong.append(f"{module} -> {target}")
    assert not wrong, "imports that run up the layers of docs/architecture.md:\n" + "\n".join(wrong)


def test_no_import_circles():
    edges = graph()
    # Tarjan's strongly connected components: any component of two or more is a circle
    index: dict[str, int] = {}
    low: dict[str, int] = {}
    stack: list[str] = []
    on_stack: set[str] = set()
    circles: list[list[str]] = []

    def visit(v: str) -> None:
        index[v] = low[v] = len(index)
        stack.append(v)
        on_stack.add(v)
        for w in edges.get(v, ()):
            if w not in edges:
                continue
            if w not in index:
                visit(w)
                low[v] = min(low[v], low[w])
            elif w in on_stack:
                low[v] = min(low[v], index[w])
        if low[v] == index[v]:
            group = []
            while True:
                w = stack.pop()
                on_stack.discard(w)
                group.append(w)
                if w == v:
                    break
            if len(group) > 1:
                circles.append(sorted(group))

    for v in sorted(edges):
        if v not in index:
            visit(v)
    assert not circles, "modules that import each other: " + "; ".join(" <-> ".join(c) for c in circles)


def test_the_checker_sees_a_violation(tmp_path):
    """The parser really finds imports (a checker that sees none passes everything)."""
    fake = tmp_path / "x.py"
    fake.write_text("from pailfs.cli import app\n"
                    "def f():\n    from pailfs.fs.core import ObjectFileSystem\n"
                    "from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    from pailfs.fuse import FuseServer\n")
    known = modules()
    assert imports_of("pailfs.store.x", fake, known) == {"pailfs.cli.app", "pailfs.fs.core"}
    assert component("pailfs.fs.core") == "fs" and component("pailfs") == "pailfs"
    rules = allowed_imports()
    assert rules["errors"] == set() and rules["cli"] is None and "store" in rules["fs"]
