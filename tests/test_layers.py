"""The layers the tree shows: cxr_core imports neither Streamlit nor the pages, its modules
import each other as a hierarchy (no cycle, imports inside functions included), and its
subpackages keep the order the README states (each imports only from those below it)."""

from __future__ import annotations

import ast
import re
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
CORE = ROOT / "cxr_core"
MAX_MODULE_LINES = 450
MAX_FUNCTION_LINES = 80


def _module_name(path: Path, core: Path) -> str:
    parts = [core.name, *path.relative_to(core).with_suffix("").parts]
    return ".".join(parts[:-1] if parts[-1] == "__init__" else parts)


def _modules(core: Path) -> dict[str, Path]:
    return {_module_name(p, core): p for p in sorted(core.rglob("*.py"))}


def _imports(path: Path, package: str) -> set[str]:
    """Every module a file imports, at the top or inside a function (relative imports
    resolved against ``package``)."""
    found = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            found |= {alias.name for alias in node.names}
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                up = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*up, base] if base else up)
            found.add(base)
            found |= {f"{base}.{alias.name}" for alias in node.names}
    return found


def _graph(core: Path) -> dict[str, set[str]]:
    """Module -> the cxr_core modules it imports (a name resolves to its longest module)."""
    modules = _modules(core)

    def resolve(name: str) -> str | None:
        while name and name not in modules:
            name = name.rpartition(".")[0]
        return name or None

    graph = {}
    for name, path in modules.items():
        package = name if path.name == "__init__.py" else name.rpartition(".")[0]
        targets = {resolve(n) for n in _imports(path, package)} - {None, name, core.name}
        graph[name] = targets
    return graph


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


def readme_layers() -> list[list[str]]:
    """The layer order the README's Development section states, bottom first: the line
    ``Layers, from the bottom: a, b → c → ...`` (names of cxr_core's modules or packages)."""
    text = (ROOT / "README.md").read_text()
    match = re.search(r"Layers, from the bottom: (.+?)\.\n", text, re.S)
    assert match, "README: no 'Layers, from the bottom: ...' line"
    floors = match.group(1).replace("\n", " ").split("→")
    return [re.findall(r"`(\w+)/?`", floor) for floor in floors]


def _top(module: str) -> str:
    """The first name below cxr_core: the package (or top-level module) a module is in."""
    return module.split(".")[1]


@pytest.mark.parametrize("path", sorted(CORE.rglob("*.py")), ids=lambda p: str(p.relative_to(CORE)))
def test_core_never_imports_streamlit_or_the_pages(path):
    outside = {m for m in _imports(path, "cxr_core") if m.split(".")[0] in ("streamlit", "pages")}
    assert not outside, f"{path.name} imports {sorted(outside)}"


def test_core_imports_form_a_hierarchy():
    graph = _graph(CORE)
    assert len(graph) > 40
    cycle = _find_cycle(graph)
    assert cycle is None, "import cycle: " + " -> ".join(cycle or [])


def test_packages_keep_the_readme_layer_order():
    """Every import between two of cxr_core's packages goes down the README's order;
    packages on one floor do not import each other."""
    floors = readme_layers()
    floor_of = {name: i for i, names in enumerate(floors) for name in names}
    graph = _graph(CORE)
    tops = {_top(m) for m in graph if m != "cxr_core"} - {"__main__"}
    assert tops <= set(floor_of), f"README's layers miss {sorted(tops - set(floor_of))}"
    upward = [
        f"{m} -> {t}"
        for m, targets in graph.items()
        for t in targets
        if m != "cxr_core"
        and _top(m) in floor_of
        and _top(t) != _top(m)
        and floor_of[_top(t)] >= floor_of[_top(m)]
    ]
    assert not upward, "imports against the README's layer order: " + ", ".join(sorted(upward))


def test_no_module_or_function_is_too_long():
    """A module a newcomer can read in one sitting, functions that fit on a screen."""
    long = []
    for path in sorted(CORE.rglob("*.py")):
        text = path.read_text()
        if len(text.splitlines()) > MAX_MODULE_LINES:
            long.append(f"{path.relative_to(ROOT)}: {len(text.splitlines())} lines")
        for node in ast.walk(ast.parse(text)):
            if isinstance(node, ast.FunctionDef | ast.AsyncFunctionDef):
                lines = node.end_lineno - node.lineno + 1
                if lines > MAX_FUNCTION_LINES:
                    long.append(f"{path.relative_to(ROOT)}:{node.lineno} {node.name}: {lines}")
    assert not long, "; ".join(long)


def test_every_subpackage_says_what_it_holds():
    for init in sorted(CORE.glob("*/__init__.py")):
        doc = ast.get_docstring(ast.parse(init.read_text()))
        assert doc and len(doc.split()) >= 12, f"{init.relative_to(ROOT)} needs a docstring"


def test_a_cycle_through_imports_inside_functions_is_found(tmp_path):
    core = tmp_path / "cxr_core"
    (core / "pkg").mkdir(parents=True)
    (core / "a.py").write_text("def f():\n    from cxr_core.pkg import b\n")
    (core / "pkg" / "b.py").write_text("def g():\n    from ..a import f\n")
    (core / "c.py").write_text("import cxr_core.a\n")
    assert _find_cycle(_graph(core)) == ["cxr_core.a", "cxr_core.pkg.b", "cxr_core.a"]
