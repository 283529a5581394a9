"""cli/text.py: tables, fields, findings and JSON documents, every name in them by the one
printable rule (collectors/common/text.py)."""

from __future__ import annotations

import json
import os

import pytest

from qcow2_monitor.cli.text import (
    finding_text,
    json_text,
    printable_document,
    render_fields,
    render_table,
)
from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.report.model import Finding


@pytest.mark.parametrize("name", ["nul\0", "del\x7f", "c1\x85", "nl\n", "tab\t",
                                  os.fsdecode(b"bad\xff"), "x\ud800"])
def test_json_documents_spell_names_by_the_rule(name: str) -> None:
    document = {"filename": name, "chain": [{"name": name, "depth": 1}], "size": 3}
    text = json_text(document, indent=2)
    text.encode("utf-8")  # valid UTF-8, whatever the name held
    assert json.loads(text) == {"filename": printable(name),
                                "chain": [{"name": printable(name), "depth": 1}], "size": 3}
    assert text.endswith("}\n")


def test_json_documents_without_such_names_are_json_dumps_itself() -> None:
    document = {"filename": '/srv/a b "q" \\ ü.qcow2', "n": [1, 2.5, None, True]}
    assert json_text(document, indent=4) == json.dumps(document, indent=4) + "\n"
    assert printable_document(("a\n", {"k\n": 1})) == ["a\\x0a", {"k\\x0a": 1}]


def test_tables_and_fields_keep_one_line_per_row() -> None:
    table = render_table(("IMAGE", "SIZE"), [("a\nb", "1"), ("c", "22")], right=(1,))
    assert table == "IMAGE   SIZE\na\\x0ab     1\nc         22\n"
    assert render_fields([("image", "x\ty"), ("n", "1")]) == "  image  x\\x09y\n  n      1\n"


def test_a_finding_is_one_printable_line() -> None:
    finding = Finding("leak", "leak", "Leaked cluster 10", "bitmap 'b\nm' table")
    assert finding_text(finding) == "leak at bitmap 'b\\x0am' table: Leaked cluster 10"
