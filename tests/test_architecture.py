"""The shape of the tree, measured: rooms by concern whose imports point one way (down), one
name per module, no import cycle (lazy imports included), the core free of command-line code
and of the adapters, the light paths light, and no file, function or class over the limits."""

from __future__ import annotations

import ast
import os
import re
import subprocess
import sys
from pathlib import Path

import pytest
import tomllib

from tree import BIN, FOLDERS, NAMESPACE, REPO, installed_name, source_site, sources

FRONT_ENDS = ("cli", "analyze", "nagios", "telegraf", "node_exporter_textfile")

# Which rooms of the core each room may import (run-time imports, lazy ones included). The
# result model is pure value types that every room fills in: every room may import it, and it
# imports nothing but common/ (the error type, the JSON keys).
CORE = "collectors"
MODEL = "collectors.report.model"
ROOM_IMPORTS: dict[str, set[str]] = {
    "collectors.common": set(),
    "collectors.qcow2": {"collectors.common"},
    "collectors.check": {"collectors.common", "collectors.qcow2"},
    "collectors.host": {"collectors.common", "collectors.qcow2"},
    "collectors.report": {"collectors.common", "collectors.qcow2", "collectors.check",
                          "collectors.host"},
}
# Third-party modules only some places may import.
NUMPY_ROOM = "collectors.check"

MAX_FILE_LINES = 500
MAX_FUNCTION_LINES = 80
MAX_CLASS_LINES = 300
# Files still over a limit, each with the change that brings it under; an entry must go as soon
# as its file fits (the test fails on a stale entry).
PENDING: dict[str, str] = {}


def tree_name(path: Path, root: Path = REPO) -> str:
    """A source file's module name inside the tree (collectors.qcow2.image)."""
    parts = list(path.relative_to(root).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join(parts)


def room_of(module: str) -> str:
    """collectors.qcow2.image -> collectors.qcow2; analyze.main -> analyze."""
    parts = module.split(".")
    return ".".join(parts[:2]) if parts[0] == CORE and len(parts) > 1 else parts[0]


def _type_checking_only(node: ast.AST, parents: dict[ast.AST, ast.AST]) -> bool:
    while node in parents:
        node = parents[node]
        if isinstance(node, ast.If) and "TYPE_CHECKING" in ast.unparse(node.test):
            return True
    return False


def imported_names(path: Path, root: Path = REPO) -> set[str]:
    """Every module name `path` imports at run time anywhere (top level, or lazily inside a
    function), relative imports resolved, the namespace prefix removed; imports made for type
    checkers only are left out."""
    tree = ast.parse(path.read_text())
    parents = {child: node for node in ast.walk(tree) for child in ast.iter_child_nodes(node)}
    module = tree_name(path, root)
    package = module if path.name == "__init__.py" else module.rpartition(".")[0]
    found: set[str] = set()
    for node in ast.walk(tree):
        if _type_checking_only(node, parents):
            continue
        if isinstance(node, ast.Import):
            found.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            base = node.module or ""
            if node.level:
                anchor = package.split(".")[: len(package.split(".")) - node.level + 1]
                base = ".".join([*anchor, base] if base else anchor)
            found.add(base)
            found.update(f"{base}.{alias.name}" for alias in node.names)
    return {name.removeprefix(f"{NAMESPACE}.") for name in found}


def imports_of(path: Path, modules: set[str], root: Path = REPO) -> set[str]:
    """The project modules among `path`'s run-time imports."""
    return (imported_names(path, root) & modules) - {tree_name(path, root)}


def import_graph() -> dict[str, set[str]]:
    paths = sources()
    modules = {tree_name(p) for p in paths}
    return {tree_name(p): imports_of(p, modules) for p in paths}


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
    assert "collectors.qcow2.chain" in graph["collectors.report.usage"]  # really built
    assert "collectors.check.checker" in graph["analyze.check"]  # lazy imports included
    assert find_cycle(graph) == []


def test_rooms_import_one_way() -> None:
    """Each room of the core imports only the rooms below it (and the result model); the core
    imports no front end or adapter."""
    assert set(ROOM_IMPORTS) == {room_of(tree_name(p)) for p in sources(CORE)} - {CORE}
    wrong = []
    for module, imported in import_graph().items():
        if not module.startswith(CORE + "."):
            continue
        room = room_of(module)
        allowed = {"collectors.common"} if module == MODEL else {room, *ROOM_IMPORTS[room]}
        for name in imported:
            if name not in (CORE, MODEL) and room_of(name) not in allowed:
                wrong.append(f"{module} imports {name}")
    assert wrong == []


def test_the_rule_finds_a_wrong_import(tmp_path: Path) -> None:
    """The room test reads relative imports across rooms as they resolve."""
    room = tmp_path / "collectors" / "qcow2"
    room.mkdir(parents=True)
    module = room / "m.py"
    module.write_text("from ..report.usage import x\nfrom . import layout\n")
    names = imported_names(module, tmp_path)
    assert {"collectors.report.usage", "collectors.qcow2.layout"} <= names
    assert room_of("collectors.report.usage") not in ROOM_IMPORTS["collectors.qcow2"]


def test_numpy_only_in_the_check_room() -> None:
    importers = {tree_name(p) for p in sources()
                 if any(name.split(".")[0] == "numpy" for name in imported_names(p))}
    assert importers  # the scan is real
    assert {room_of(name) for name in importers} == {NUMPY_ROOM}, sorted(importers)


def _writes_output(tree: ast.AST) -> list[str]:
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Call) and isinstance(node.func, ast.Name) \
                and node.func.id in ("print", "input", "exit", "quit"):
            found.append(node.func.id)
        if isinstance(node, ast.Attribute) and isinstance(node.value, ast.Name) \
                and node.value.id == "sys" and node.attr in ("stdout", "stderr", "exit", "argv"):
            found.append(f"sys.{node.attr}")
    return found


def test_the_core_parses_no_command_line_and_prints_nothing() -> None:
    for path in sources(CORE):
        names = imported_names(path)
        assert "argparse" not in names, path
        assert not {name.split(".")[0] for name in names} & set(FRONT_ENDS), path
        assert _writes_output(ast.parse(path.read_text())) == [], path
    assert _writes_output(ast.parse("import sys\nprint(1)\nsys.stderr.write('x')")) == [
        "print", "sys.stderr"]


def _argparse_private_names() -> set[str]:
    """Every private name argparse's parsers, groups and actions have (methods, attributes)."""
    import argparse

    parser = argparse.ArgumentParser()
    group = parser.add_argument_group("g")
    objects = [parser, group, parser.add_subparsers(), parser.add_argument("--x")]
    names = {name for obj in objects for name in [*dir(obj), *vars(obj)]}
    names |= set(dir(argparse))
    return {name for name in names if name.startswith("_") and not name.startswith("__")}


def _argparse_internals(tree: ast.AST, private: set[str]) -> list[str]:
    """The private argparse names a module uses: as attributes (`parser._subparsers`,
    `argparse._SubParsersAction`) or in a string annotation (`"argparse._ArgumentGroup"`)."""
    found = []
    for node in ast.walk(tree):
        if isinstance(node, ast.Attribute) and node.attr in private:
            found.append(ast.unparse(node))
        if isinstance(node, ast.Constant) and isinstance(node.value, str) \
                and node.value.startswith("argparse._"):
            found.append(node.value)
    return found


def test_command_lines_use_no_argparse_internals() -> None:
    """One parser (cli/parser.py) for every front end, through argparse's public interface:
    no private attribute, no private type, and (by the same token) no parsing of its text."""
    private = _argparse_private_names()
    assert {"_subparsers", "_group_actions", "_print_message", "_SubParsersAction"} <= private
    used = {str(p.relative_to(REPO)): _argparse_internals(ast.parse(p.read_text()), private)
            for folder in FRONT_ENDS for p in sources(folder)}
    assert {path: names for path, names in used.items() if names} == {}
    assert sorted(_argparse_internals(ast.parse(
        "x = p._subparsers._group_actions\ny: 'argparse._ArgumentGroup'"), private)) == [
        "argparse._ArgumentGroup", "p._subparsers", "p._subparsers._group_actions"]


# --- one name per module ---------------------------------------------------------------------

BARE_IMPORT = re.compile(rf"^\s*(?:from|import)\s+({'|'.join(FOLDERS)})\b", re.MULTILINE)


def test_every_import_names_the_namespace() -> None:
    """A module has one name, qcow2_monitor.*: no bare `collectors`/`nagios`/... import
    anywhere (code, tests, benchmarks), so an error raised under one name is always the one
    caught."""
    files = [*sources(), *(REPO / "tests").glob("*.py"), *(REPO / "bench").glob("*.py")]
    bare = [f"{p.relative_to(REPO)}: {m.group(0).strip()}" for p in files
            for m in BARE_IMPORT.finditer(p.read_text())]
    assert bare == []
    assert BARE_IMPORT.search("    from nagios.check_qcow2 import main\n")


def test_every_core_module_has_tests_of_its_own() -> None:
    """Besides the end-to-end tests, each module of the core is imported by name by a test
    file (tests/test_*.py) that exercises it directly."""
    tested = set().union(*(imported_names(p) for p in (REPO / "tests").glob("test_*.py")))
    modules = {tree_name(p) for p in sources(CORE) if p.name != "__init__.py"}
    assert len(modules) > 50
    assert modules - tested == set()


def test_no_symlink_in_the_repository() -> None:
    listed = subprocess.run(["git", "ls-files", "-s"], cwd=REPO, capture_output=True,
                            text=True, check=True).stdout.splitlines()
    assert len(listed) > 50
    assert [line for line in listed if line.startswith("120000")] == []


def test_the_build_maps_every_package() -> None:
    """pyproject.toml lists every folder with an __init__.py as a package of the namespace,
    mapped to its folder, so that wheels and editable installs hold the same modules."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())["tool"]["setuptools"]
    packages = {installed_name(p)
                for p in sources() if p.name == "__init__.py"} | {NAMESPACE}
    assert set(config["packages"]) == packages
    assert config["package-dir"] == {f"{NAMESPACE}.{folder}": folder for folder in FOLDERS}


# What each command imports, as a user runs it (its launcher, bin/<command>), over one
# run on one image: Nagios and Icinga start a process per check, so an import is paid every
# time. numpy only for --check and the look-alikes that walk tables; importlib.metadata (25 ms)
# never (the version is the package's own constant); jinja2 only where a template is rendered.
HEAVY = {"numpy", "importlib.metadata", "jinja2", "prometheus_client"}
# What a run at rest does without (bench/bench_start.py measures what it costs): typing and
# dataclasses (inspect, ast, dis), hashlib (OpenSSL), decimal, shutil (bz2, lzma), traceback,
# threading and contextlib; re, json, argparse (with gettext and locale) where the command line
# is plain (cli/parser.py); enum, functools and collections (common/enums.py, common/record.py);
# the live clients' subprocess and socket (and the thread that asks them) only when a live
# source is asked.
START_COSTS = {"typing", "dataclasses", "inspect", "ast", "_hashlib", "decimal", "shutil",
               "traceback", "subprocess", "socket", "glob", "threading", "contextlib", "re",
               "json", "argparse", "gettext", "locale", "enum", "functools", "collections"}
# qcow2-analyze has subcommands, which argparse reads (and its output may be JSON); the
# textfile's template engine imports some of these itself: it is held to HEAVY only.
ARGPARSE = {"argparse", "re", "gettext", "locale", "json", "enum", "functools", "collections"}
LIGHT_RUNS = {
    "check_qcow2": (["-f", "{image}", "--no-live"], set(), set()),
    "qcow2-telegraf": (["--no-live", "{image}"], set(), set()),
    "qcow2-textfile": (["--no-live", "--output", "-", "{image}"], {"jinja2"}, START_COSTS),
    "qcow2-analyze": (["usage", "--no-live", "{image}"], set(), ARGPARSE),
}


def imported_by(argv: list[str], cwd: Path) -> set[str]:
    """Every module one run imports (python -X importtime lists each on stderr), the namespace
    from the tree and third-party modules from the venv on PYTHONPATH, without site (whose .pth
    files an editable install uses to import a path finder of its own before any command)."""
    site_packages = next(p for p in sys.path if p.endswith("site-packages"))
    env = {**os.environ, "PYTHONPATH": f"{source_site()}:{site_packages}"}
    proc = subprocess.run([sys.executable, "-S", "-X", "importtime", *argv], cwd=cwd, env=env,
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr[-2000:]
    return {line.rsplit("|", 1)[1].strip() for line in proc.stderr.splitlines()
            if line.startswith("import time:") and "|" in line}


def heavy_of(modules: set[str]) -> set[str]:
    return {h for h in HEAVY if any(m == h or m.startswith(h + ".") for m in modules)}


def launcher(command: str) -> Path:
    return REPO / "bin" / command


@pytest.mark.parametrize("command", sorted(LIGHT_RUNS))
def test_light_paths_import_nothing_heavy(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                         command: str) -> None:
    image = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    args, allowed, costs_allowed = LIGHT_RUNS[command]
    # The run keeps its samples, as the adapters do; the first in a new directory also prunes
    # it (hourly: re for the file names), the one measured is a later one.
    monkeypatch.setenv("MP_STATE_PATH", str(tmp_path / "state"))
    argv = [str(launcher(command)), *(a.format(image=image) for a in args)]
    imported_by(argv, tmp_path)
    modules = imported_by(argv, tmp_path)
    assert "qcow2_monitor.collectors.report.usage" in modules  # the run did its work
    assert heavy_of(modules) <= allowed
    assert (modules - imported_by(["-c", "pass"], tmp_path)) & START_COSTS <= costs_allowed


def test_commands_are_installed_as_their_launchers() -> None:
    """What the tests run (the venv's commands) is what an installation has: the launchers
    (pyproject.toml script-files), not console-script wrappers, which import re."""
    config = tomllib.loads((REPO / "pyproject.toml").read_text())
    assert "scripts" not in config["project"]
    assert sorted(config["tool"]["setuptools"]["script-files"]) == sorted(
        str(launcher(command).relative_to(REPO)) for command in LIGHT_RUNS)
    for command in LIGHT_RUNS:
        installed = (BIN / command).read_text().splitlines()
        assert installed[1:] == launcher(command).read_text().splitlines()[1:], command
        assert "import re" not in installed


def test_the_import_budget_sees_a_heavy_import(tmp_path: Path,
                                               monkeypatch: pytest.MonkeyPatch) -> None:
    """The budget can fail: --check is allowed numpy, and the listing shows it; argparse and re
    come with a line the plain reading leaves to argparse."""
    image = tmp_path / "img.qcow2"
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(image), "16M"], check=True)
    monkeypatch.setenv("MP_STATE_PATH", str(tmp_path / "state"))
    script = str(launcher("check_qcow2"))
    assert heavy_of(imported_by([script, "-f", str(image), "--no-live", "--check"],
                                tmp_path)) == {"numpy"}
    assert {"argparse", "re"} <= imported_by([script, f"--fi={image}", "--no-live"], tmp_path)


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
    files = [*sources(), *(REPO / "bench").rglob("*.py")]
    assert len(files) > 20
    over = {str(p.relative_to(REPO)): oversized(p) for p in files}
    over = {name: problems for name, problems in over.items() if problems}
    assert set(over) == set(PENDING), over
