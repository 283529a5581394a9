"""Text for people, the same in every front end: aligned tables and fields, and one finding on
one line."""

from __future__ import annotations

from collections.abc import Iterable, Sequence

from qcow2_monitor.collectors.report.model import Finding


def render_table(columns: Sequence[str], rows: Sequence[Sequence[str]],
                 right: Iterable[int] = ()) -> str:
    """An aligned text table with a header row; columns in `right` are right-aligned (figures),
    the others left-aligned; two spaces between columns, no trailing blanks."""
    widths = [max([len(col)] + [len(row[i]) for row in rows]) for i, col in enumerate(columns)]
    right_set = set(right)

    def line(cells: Sequence[str]) -> str:
        return "  ".join(cell.rjust(widths[i]) if i in right_set else cell.ljust(widths[i])
                         for i, cell in enumerate(cells)).rstrip()

    return "".join(line(row) + "\n" for row in [list(columns), *rows])


def render_fields(pairs: Sequence[tuple[str, str]], indent: str = "  ") -> str:
    """`name  value` lines with the values aligned in one column."""
    if not pairs:
        return ""
    width = max(len(name) for name, _ in pairs)
    return "".join(f"{indent}{name:<{width}}  {value}".rstrip() + "\n" for name, value in pairs)


def indent_block(text: str, indent: str = "  ") -> str:
    """Every line of `text` indented."""
    return "".join(f"{indent}{line}\n" if line else "\n" for line in text.splitlines())


def finding_text(finding: Finding) -> str:
    """One finding on one line: `corruption (refcount-too-low) at WHERE: MESSAGE`; the kind
    is not repeated when it is the severity itself (a leak is a leak). One a running qemu
    left unsettled starts with `unconfirmed`."""
    kind = "" if finding.kind == finding.severity else f" ({finding.kind})"
    doubt = "unconfirmed " if finding.unconfirmed else ""
    return f"{doubt}{finding.severity}{kind} at {finding.location}: {finding.message}"
