"""The layers the tree shows: cxr_core imports neither Streamlit nor the pages, and its
modules import each other as a hierarchy (no cycle, imports inside functions included)."""

from __future__ import annotations

import ast
from pathlib import Path

import pytest

CORE = Path(__file__).resolve().parents[1] / "cxr_core"


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at the top or inside a function."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            found.add(node.module)
            found |= {f"{node.module}.{alias.name}" for alias in node.names}
    return found


def _graph(folder: Path) -> dict[str, set[str]]:
    modules = {f"cxr_core.{p.stem}": p for p in folder.glob("*.py") if p.stem != "__init__"}
    return {name: (_imports(path) & set(modules)) - {name} for name, path in modules.items()}


def _find_cycle(graph: dict[str, set[str]]) -> list[str] | None:
    """One import cycle of ``graph`` as a path of modules, or None for a hierarchy."""
    done: set[str] = set()
    stack: list[str] = []

    def visit(module: str) -> list[str] | None:
        if module in stack:
            return [*stack[stack.index(module) :], module]
        if module in done:
            return None
        stack.append(module)
        cycle = next((c for m in sorted(graph[module]) if (c := visit(m))), None)
        stack.pop()
        done.add(module)
        return cycle

    return next((c for m in sorted(graph) if (c := visit(m))), None)


@pytest.mark.parametrize("path", sorted(CORE.glob("*.py")), ids=lambda p: p.name)
def test_core_never_imports_streamlit_or_the_pages(path):
    outside = {m for m in _imports(path) if m.split(".")[0] in ("streamlit", "pages")}
    assert not outside, f"{path.name} imports {sorted(outside)}"


def test_core_imports_form_a_hierarchy():
    graph = _graph(CORE)
    assert len(graph) > 20
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_a_cycle_through_imports_inside_functions_is_found(tmp_path):
    (tmp_path / "a.py").write_text("def f():\n    from cxr_core import b\n")
    (tmp_path / "b.py").write_text("def g():\n    from cxr_core.a import f\n")
    (tmp_path / "c.py").write_text("import cxr_core.a\n")
    assert _find_cycle(_graph(tmp_path)) == ["cxr_core.a", "cxr_core.b", "cxr_core.a"]
