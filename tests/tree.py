"""The source tree as the tests see it: its folders, and the installed namespace built from them.

Each top-level folder is one subpackage of ``qcow2_monitor`` (pyproject.toml maps them with
setuptools' package-dir); the tests import ``qcow2_monitor.*`` only. Tools that do not follow
an editable install (mypy, a Python run as another user) get the same namespace as a tree of
links in a temporary directory, never in the repository.
"""

from __future__ import annotations

import atexit
import os
import shutil
import sys
import tempfile
from functools import cache
from pathlib import Path

REPO = Path(__file__).resolve().parent.parent
# The commands the package installs, beside the interpreter running the tests (the venv's).
BIN = Path(sys.executable).parent
NAMESPACE = "qcow2_monitor"
# Debian's python3, for runs as an unprivileged user (who cannot reach the venv under /root),
# with the namespace from source_site() on PYTHONPATH.
SYSTEM_PYTHON = "/usr/bin/python3"
# The folders that are subpackages of the namespace, as pyproject.toml maps them.
FOLDERS = ("collectors", "cli", "analyze", "nagios", "telegraf", "node_exporter_textfile")
# What a copy of the tree leaves out to be the tree as a clone has it: earlier builds, the
# venv, caches.
NOT_IN_A_CLEAN_TREE = (".git", ".venv", "build", "dist", "*.egg-info", "__pycache__", ".*_cache",
                       "bench-work")


def sources(*folders: str) -> list[Path]:
    """Every Python file of the given folders (all subpackages by default), sorted."""
    return sorted(p for folder in (folders or FOLDERS) for p in (REPO / folder).rglob("*.py"))


def installed_name(path: Path) -> str:
    """The module name a source file has once installed: qcow2_monitor.collectors.qcow2.image."""
    parts = list(path.relative_to(REPO).with_suffix("").parts)
    if parts[-1] == "__init__":
        parts.pop()
    return ".".join([NAMESPACE, *parts])


def link_tree(dest: Path) -> Path:
    """`dest`/qcow2_monitor: the namespace's __init__.py and a link to each folder."""
    package = dest / NAMESPACE
    package.mkdir(parents=True)
    shutil.copy(REPO / NAMESPACE / "__init__.py", package / "__init__.py")
    for folder in FOLDERS:
        (package / folder).symlink_to(REPO / folder, target_is_directory=True)
    return dest


@cache
def source_site() -> Path:
    """A directory to put on PYTHONPATH so that any interpreter (Debian's python3, run as an
    unprivileged user) imports qcow2_monitor from this tree; removed when the tests end."""
    site = Path(tempfile.mkdtemp(prefix="qcow2-site-"))
    atexit.register(shutil.rmtree, site, True)
    os.chmod(site, 0o755)
    link_tree(site)
    return site
