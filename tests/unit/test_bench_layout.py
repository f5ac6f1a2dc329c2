"""The bench's modules import one way: sections only from ``main``, and no module back from what it imports."""

from __future__ import annotations

import ast
from graphlib import CycleError, TopologicalSorter
from pathlib import Path

import runner.bench

PACKAGE = Path(runner.bench.__file__).parent
SECTIONS = {"opens", "calls", "throughput", "at_once", "guard", "sandbox", "audit", "door", "backends"}


def _bench_imports(path: Path) -> set[str]:
    """The ``runner.bench`` modules ``path`` imports, by module name."""
    found: set[str] = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.ImportFrom) and node.module == "runner.bench":
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and (node.module or "").startswith("runner.bench."):
            found.add((node.module or "").removeprefix("runner.bench."))
        elif isinstance(node, ast.Import):
            found |= {a.name.removeprefix("runner.bench.") for a in node.names if a.name.startswith("runner.bench.")}
    return found


def _graph() -> dict[str, set[str]]:
    return {path.stem: _bench_imports(path) for path in PACKAGE.glob("*.py")}


def test_there_is_no_import_circle() -> None:
    try:
        TopologicalSorter(_graph()).prepare()
    except CycleError as exc:
        raise AssertionError(f"import circle: {exc.args[1]}") from None


def test_only_main_imports_a_section_and_the_package_file_imports_nothing() -> None:
    graph = _graph()
    assert set(graph) >= SECTIONS
    for module, imports in graph.items():
        if module != "main":
            assert not imports & SECTIONS, f"{module} imports the section(s) {sorted(imports & SECTIONS)}"
    assert graph["__init__"] == set()
    assert graph["main"] >= SECTIONS


def test_the_old_modules_are_gone() -> None:
    assert not list(PACKAGE.parent.glob("bench*.py"))
