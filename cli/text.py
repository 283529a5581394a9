"""Text the same in every front end: aligned tables and fields, one finding on one line, and
JSON documents -- every name in them written by the one printable rule of every output
(collectors/common/text.py)."""

from __future__ import annotations

import json
from collections.abc import Iterable, Sequence

from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.report.model import Finding

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any


def printable_document(value: Any) -> Any:
    """A JSON-like document (dicts, lists, strings, numbers) with every string in it, keys
    included, written by the printable rule: a file name with an undecodable byte or a newline
    reads the same in the JSON as in the text output, and the JSON is valid UTF-8."""
    if isinstance(value, str):
        return printable(value)
    if isinstance(value, dict):
        return {printable(key) if isinstance(key, str) else key: printable_document(item)
                for key, item in value.items()}
    if isinstance(value, (list, tuple)):
        return [printable_document(item) for item in value]
    return value


def json_text(document: Any, indent: int) -> str:
    """The one way every command prints a JSON document: printable, indented, one final
    newline. JSON (ASCII-only, as json.dumps writes it) escapes every character the printable
    rule changes -- control characters, DEL, C1, surrogates -- with a backslash: a document
    whose text has none needs nothing more (most do; walking a listing of 65536 snapshots
    would cost more than writing it)."""
    text = json.dumps(document, indent=indent)
    if "\\" in text:
        text = json.dumps(printable_document(document), indent=indent)
    return text + "\n"


def render_table(columns: Sequence[str], rows: Sequence[Sequence[str]],
                 right: Iterable[int] = ()) -> str:
    """An aligned text table with a header row; columns in `right` are right-aligned (figures),
    the others left-aligned; two spaces between columns, no trailing blanks. Cells are written
    by the printable rule (a name with a newline keeps its row on one line)."""
    cells = [row if "".join(row).isprintable() else [printable(cell) for cell in row]
             for row in rows]
    widths = [max([len(col)] + [len(row[i]) for row in cells]) for i, col in enumerate(columns)]
    right_set = set(right)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in right_set else cell.ljust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()

    return "".join(line(row) + "\n" for row in [list(columns), *cells])


def render_fields(pairs: Sequence[tuple[str, str]], indent: str = "  ") -> str:
    """`name  value` lines with the values aligned in one column, written by the printable
    rule."""
    if not pairs:
        return ""
    width = max(len(name) for name, _ in pairs)
    return "".join(f"{indent}{name:<{width}}  {printable(value)}".rstrip() + "\n"
                   for name, value in pairs)


def indent_block(text: str, indent: str = "  ") -> str:
    """Every line of `text` indented."""
    return "".join(f"{indent}{line}\n" if line else "\n" for line in text.splitlines())


def finding_text(finding: Finding) -> str:
    """One finding on one printable line: `corruption (refcount-too-low) at WHERE: MESSAGE`;
    the kind is not repeated when it is the severity itself (a leak is a leak). One a running
    qemu left unsettled starts with `unconfirmed`."""
    kind = "" if finding.kind == finding.severity else f" ({finding.kind})"
    doubt = "unconfirmed " if finding.unconfirmed else ""
    return printable(f"{doubt}{finding.severity}{kind} at {finding.location}: {finding.message}")
