"""The one way every tool writes a size or a percentage for people (JSON and perfdata keep
bytes and ratios): sizes as qemu-img prints them, percentages with the same rounding
everywhere, and counted nouns with the right plural."""

from __future__ import annotations

import math
from collections.abc import Iterable, Sequence
from decimal import Decimal
from functools import lru_cache
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from .model import Finding

_SIZE_PREFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")


# Sizes repeat (every disk-only snapshot's VM state is 0 B): a listing of 65536 snapshots
# formats each distinct one once.
@lru_cache(maxsize=1024)
def human_size(size: int) -> str:
    """qemu's size_to_str() (util/cutils.c), so that our sizes read like qemu-img's: three
    significant digits, and the next binary unit from 1000 of the current one on
    (1000 B -> "0.977 KiB", never "1e+03 KiB")."""
    if size < 0:
        return "-" + human_size(-size)
    _mantissa, exponent = math.frexp(size / (1000.0 / 1024.0))
    index = min(max(exponent - 1, 0) // 10, len(_SIZE_PREFIXES) - 1)
    value = size / float(1 << (index * 10))
    return f"{value:0.3g} {_SIZE_PREFIXES[index]}B"


def plain_number(value: float) -> str:
    """A plain decimal: no exponent, ``.`` as point, no trailing zeros (``80``, ``0.0012``)."""
    if math.isinf(value) or math.isnan(value):
        raise ValueError(f"not a finite number: {value!r}")
    if value == int(value):
        return str(int(value))
    text = format(Decimal(repr(float(value))), "f")
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def percent_number(percent: float) -> str:
    """A percentage (0..100, not a ratio) for people: two decimals, or two significant digits
    below 1 % so that a tiny usage does not read 0."""
    if percent == 0 or abs(percent) >= 1:
        return plain_number(round(percent, 2))
    return plain_number(float(f"{percent:.2g}"))


def ratio_percent(ratio: float) -> str:
    """A ratio 0..1 as a percentage with its sign: ``0.8012`` -> ``80.12%``."""
    return percent_number(ratio * 100.0) + "%"


def counted(count: int, singular: str, plural: str = "") -> str:
    """``1 corruption``, ``2 corruptions``, ``0 leaked clusters``."""
    return f"{count} {singular if count == 1 else (plural or singular + 's')}"


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
    is not repeated when it is the severity itself (a leak is a leak)."""
    kind = "" if finding.kind == finding.severity else f" ({finding.kind})"
    return f"{finding.severity}{kind} at {finding.location}: {finding.message}"
