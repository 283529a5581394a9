"""Lint and type check, run by the test suite (configured in pyproject.toml)."""

from __future__ import annotations

import re
import subprocess
from pathlib import Path

from tree import BIN, FOLDERS, NAMESPACE, REPO, link_tree


def test_ruff_clean() -> None:
    proc = subprocess.run([str(BIN / "ruff"), "check", *FOLDERS, NAMESPACE, "tests", "bench"],
                          cwd=REPO, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


def test_mypy_strict_clean(tmp_path: Path) -> None:
    """mypy does not follow the editable install's mapping of folders to subpackages: it checks
    the namespace as a tree of links (tests/tree.py), with the project's configuration."""
    link_tree(tmp_path)
    proc = subprocess.run([str(BIN / "mypy"), "--config-file", str(REPO / "pyproject.toml"),
                           "--cache-dir", str(REPO / ".mypy_cache"), NAMESPACE],
                          cwd=tmp_path, capture_output=True, text=True)
    assert proc.returncode == 0, proc.stdout + proc.stderr


# The reference notes outside the repository, spelled so that this file does not cite them:
# their folder, and their file names as a citation would give them.
OUTSIDE_NOTES = "/".join(("shared", "reference"))
NOTE_CITATION = re.compile(r"\b(?:" + "|".join(("style", "monitoring", "live", "thin", "qcow2"))
                           + r")\.md\b")


def test_the_repository_stands_alone() -> None:
    """Nothing cites material outside the repository, and every citation of the format notes
    names a section they have."""
    notes = (REPO / "docs" / "qcow2-format.md").read_text()
    sections = set(re.findall(r"^## (§\d+)", notes, re.MULTILINE))
    assert len(sections) >= 12
    sources = [p for folder in (*FOLDERS, "tests", "bench", "scripts", "docs")
               for p in (REPO / folder).rglob("*") if p.is_file() and p.suffix != ".pyc"]
    sources.append(REPO / "README.md")
    cited = 0
    for path in sources:
        text = path.read_text(errors="replace")
        assert OUTSIDE_NOTES not in text, path
        assert NOTE_CITATION.search(text) is None, (path, NOTE_CITATION.search(text))
        for section in re.findall(r"docs/qcow2-format\.md (§\d+)", text):
            assert section in sections, (path, section)
            cited += 1
    assert cited >= 7  # the core cites the notes where it mirrors them
