"""The shape of the tree, measured: imports flow one way (no cycle, lazy imports included; the
core imports no front end or adapter), the light paths stay light, and no file, function or
class outgrows the limits."""

from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
NAMESPACE = "qcow2_monitor"
PACKAGES = ("collectors", "analyze", "nagios", "telegraf", "node_exporter_textfile")
FRONT_ENDS = {"analyze", "nagios", "telegraf", "node_exporter_textfile"}

MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 300
# Files still over a limit, each with the change that brings it under; an entry must go as soon
# as its file fits (the test fails on a stale entry).
PENDING: dict[str, str] = {}


def module_name(path: Path, root: Path = REPO) -> str:
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imports_of(path: Path, modules: set[str], root: Path = REPO) -> set[str]:
    """Project modules `path` imports at run time anywhere (top level, or lazily inside a
    function); imports made for type checkers only are left out."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    package = (module_name(path, root) if path.name == "__init__.py"
               else module_name(path.parent, root) if path.parent != root else "")
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        names: list[str] = []
        if isinstance(node, ast.Import):
            names = [alias.name for alias in node.names]
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            names = [base] + [f"{base}.{alias.name}" for alias in node.names]
        # Absolute imports name the installed namespace (qcow2_monitor.collectors.x); the
        # graph is keyed by the folders of the tree (collectors.x).
        found.update(name for name in (n.removeprefix(f"{NAMESPACE}.") for n in names)
                     if name in modules)
    found.discard(module_name(path, root))
    return found


def import_graph() -> dict[str, set[str]]:
    paths = [p for package in PACKAGES for p in (REPO / package).glob("*.py")]
    modules = {module_name(p) for p in paths}
    return {module_name(p): imports_of(p, modules) for p in paths}


def find_cycle(graph: dict[str, set[str]]) -> list[str]:
    """One import cycle as a path of modules, or [] when the graph is acyclic."""
    state: dict[str, int] = {}  # 1 on the current path, 2 done
    stack: list[str] = []

    def visit(node: str) -> list[str]:
        state[node] = 1
        stack.append(node)
        for nxt in sorted(graph.get(node, ())):
            if state.get(nxt) == 1:
                return [*stack[stack.index(nxt):], nxt]
            if nxt not in state:
                cycle = visit(nxt)
                if cycle:
                    return cycle
        stack.pop()
        state[node] = 2
        return []

    for node in sorted(graph):
        if node not in state:
            cycle = visit(node)
            if cycle:
                return cycle
    return []


def test_cycle_finder_finds_a_lazy_cycle(tmp_path: Path) -> None:
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": set()}) == []
    assert find_cycle({"a": {"b"}, "b": {"c"}, "c": {"a"}}) == ["a", "b", "c", "a"]
    # A lazy import inside a function counts; a TYPE_CHECKING one does not.
    module = tmp_path / "m.py"
    module.write_text("from typing import TYPE_CHECKING\nif TYPE_CHECKING:\n    import x\n"
                      "def f():\n    import y\n")
    assert imports_of(module, {"x", "y"}, tmp_path) == {"y"}


def test_no_import_cycle_lazy_imports_included() -> None:
    graph = import_graph()
    assert "collectors.chain" in graph["collectors.usage"]  # the graph is really built
    assert "collectors.check" in graph["analyze.check"]  # lazy imports included
    assert find_cycle(graph) == []


def test_core_imports_no_front_end_or_adapter() -> None:
    for module, imported in import_graph().items():
        if module.startswith("collectors"):
            assert not {name.split(".")[0] for name in imported} & FRONT_ENDS, module


def test_light_paths_import_nothing_heavy(tmp_path: Path) -> None:
    image = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    code = ("import io, sys; from analyze.main import main; import nagios.check_qcow2; "
            f"code = main(['usage', {str(image)!r}], io.StringIO(), io.StringIO()); "
            "heavy = {'numpy', 'jinja2', 'prometheus_client'} & set(sys.modules); "
            "print(code, sorted(heavy))")
    out = subprocess.run([sys.executable, "-c", code], cwd=REPO, capture_output=True,
                         text=True, check=True).stdout
    assert out.strip() == "0 []"


def oversized(path: Path) -> list[str]:
    """What in one file is over a limit."""
    text = path.read_text()
    problems = []
    if len(text.splitlines()) > MAX_FILE_LINES:
        problems.append(f"{len(text.splitlines())} lines")
    for node in ast.walk(ast.parse(text)):
        limit = (MAX_FUNCTION_LINES if isinstance(node, (ast.FunctionDef, ast.AsyncFunctionDef))
                 else MAX_CLASS_LINES if isinstance(node, ast.ClassDef) else None)
        if limit is not None:
            assert node.end_lineno is not None
            length = node.end_lineno - node.lineno + 1
            if length > limit:
                problems.append(f"{node.name}: {length} lines")
    return problems


def test_no_file_function_or_class_over_the_limits() -> None:
    sources = [p for top in (*PACKAGES, "bench") for p in (REPO / top).rglob("*.py")]
    assert len(sources) > 20
    over = {str(p.relative_to(REPO)): oversized(p) for p in sources}
    over = {name: problems for name, problems in over.items() if problems}
    assert set(over) == set(PENDING), over
