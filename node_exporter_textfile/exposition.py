"""The Prometheus text format (0.0.4) as node_exporter's textfile collector reads it.

Two halves, each the only one of its kind in the package:

* the writing rules -- label and HELP escaping, number text -- given to every template as its
  filters (``labels``, ``value``, ``help_text``), so that the shipped template and a user's
  ``--template`` write the format alike;
* :func:`validate`, the one check of a rendered text before it replaces the previous file. It
  reads the text line by line as node_exporter does (its parser is Prometheus' expfmt
  ``TextParser``; the textfile collector then refuses client-side timestamps and drops
  repeated series), so that a text it passes is served whole. tests/test_textfile.py holds
  each refusal against a real node_exporter.
"""

from __future__ import annotations

import math
import re

from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.report.metrics import Labels, MetricValue

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable


class InvalidOutput(Exception):
    """The rendered text is not something node_exporter would accept completely."""


# --- writing ----------------------------------------------------------------------------------


def escape_label_value(value: str) -> str:
    """Label values escape backslash, double quote and newline; the text is first written by
    the one printable rule of every output (collectors/common/text.py), which leaves no newline
    (it is ``\\x0a`` there, as in every other output)."""
    return printable(value).replace("\\", "\\\\").replace('"', '\\"')


def escape_help(text: str) -> str:
    """HELP text escapes backslash and newline only (none is left by the printable rule)."""
    return printable(text).replace("\\", "\\\\")


def format_labels(labels: Labels) -> str:
    if not labels:
        return ""
    inner = ",".join(f'{key}="{escape_label_value(value)}"' for key, value in sorted(labels))
    return "{" + inner + "}"


def format_value(value: MetricValue) -> str:
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "1" if value else "0"
    if isinstance(value, int):
        return str(value)  # exact, however large (a float would round past 2**53)
    if math.isnan(value):
        return "NaN"
    if math.isinf(value):
        return "+Inf" if value > 0 else "-Inf"
    return repr(value)  # shortest text that reads back as the same double


FILTERS = {"labels": format_labels, "value": format_value, "help_text": escape_help}


# --- reading, as node_exporter does -------------------------------------------------------------

_BLANK = r"[ \t]*"
_METRIC_NAME = r"[a-zA-Z_:][a-zA-Z0-9_:]*"
# HELP/TYPE lines; any other line starting with '#' is a comment.
_META = re.compile(rf"#{_BLANK}(HELP|TYPE)[ \t]+(\S+)(?:[ \t](.*))?$")
_SAMPLE = re.compile(rf"{_BLANK}({_METRIC_NAME}){_BLANK}(?:\{{(.*)\}})?{_BLANK}(.*)$")
_LABEL = re.compile(
    rf'{_BLANK}([a-zA-Z_][a-zA-Z0-9_]*){_BLANK}={_BLANK}"((?:[^"\\\n]|\\.)*)"{_BLANK}(,|$)')
# Go's strconv.ParseFloat as expfmt calls it (which refuses 'p' and '_' beforehand).
_FLOAT = re.compile(r"[+-]?(?:(?:\d+\.?\d*|\.\d+)(?:[eE][+-]?\d+)?|(?i:inf|infinity|nan))$")
_TYPES = ("counter", "gauge", "untyped")  # what a family of this package can be
_ESCAPES = {"\\\\": "\\", "\\n": "\n", '\\"': '"'}


class _Family:
    def __init__(self) -> None:
        self.help = False
        self.type = False
        self.samples = False


def _unescape(text: str, allowed: Iterable[str], what: str) -> str:
    def replace(match: re.Match[str]) -> str:
        if match.group(0) not in allowed:
            raise InvalidOutput(f"invalid escape sequence {match.group(0)!r} in {what}")
        return _ESCAPES[match.group(0)]

    return re.sub(r"\\.?", replace, text, flags=re.DOTALL)


def _meta_line(kind: str, name: str, rest: str, family: _Family) -> None:
    if not re.fullmatch(_METRIC_NAME, name):
        raise InvalidOutput(f"{kind} line names no valid metric: {name!r}")
    if kind == "HELP":
        if family.help:
            raise InvalidOutput(f"second HELP line for {name}")
        _unescape(rest, ("\\\\", "\\n"), f"the HELP of {name}")
        family.help = True
        return
    if family.type or family.samples:
        raise InvalidOutput(f"second TYPE line for {name}, or TYPE after its samples")
    if rest.strip() not in _TYPES:
        raise InvalidOutput(f"TYPE of {name} is {rest.strip()!r}, not one of "
                            f"{', '.join(_TYPES)}")
    family.type = True


def _labels(name: str, text: str) -> frozenset[tuple[str, str]]:
    """The label set of one sample; an empty value is an absent label, as node_exporter
    fills labels missing from some samples of a family with ''."""
    labels: dict[str, str] = {}
    position = 0
    while position < len(text) and text[position:].strip():
        match = _LABEL.match(text, position)
        if match is None:
            raise InvalidOutput(f"labels of {name} do not parse: {{{text}}}")
        label = match.group(1)
        if label in labels or label.startswith("__"):
            raise InvalidOutput(f"label {label} of {name} is repeated or reserved")
        labels[label] = _unescape(match.group(2), _ESCAPES, f"a label value of {name}")
        position = match.end()
    return frozenset((key, value) for key, value in labels.items() if value)


def validate(text: str) -> int:
    """Raise InvalidOutput for anything node_exporter would not serve whole; else return the
    number of series."""
    if text and not text.endswith("\n"):
        raise InvalidOutput("output does not end with a newline")
    try:
        text.encode("utf-8")
    except UnicodeEncodeError as exc:
        raise InvalidOutput(f"not valid UTF-8 at character {exc.start}") from None
    families: dict[str, _Family] = {}
    series: set[tuple[str, frozenset[tuple[str, str]]]] = set()
    # Lines end at "\n" only, as node_exporter's parser (expfmt) ends them: str.splitlines()
    # would also end one at U+2028, U+2029 or U+0085, which a label value may hold (a file
    # name), and refuse the whole output for a line node_exporter serves.
    for number, line in enumerate(text.split("\n"), 1):
        try:
            stripped = line.lstrip(" \t")
            if not stripped:
                continue
            if stripped.startswith("#"):
                meta = _META.match(stripped)
                if meta is not None:
                    name = meta.group(2) or ""
                    _meta_line(meta.group(1), name, meta.group(3) or "",
                               families.setdefault(name, _Family()))
                continue
            _sample_line(line, families, series)
        except InvalidOutput as exc:
            raise InvalidOutput(f"line {number}: {exc}") from None
    return len(series)


def _sample_line(line: str, families: dict[str, _Family],
                 series: set[tuple[str, frozenset[tuple[str, str]]]]) -> None:
    match = _SAMPLE.match(line)
    if match is None:
        raise InvalidOutput(f"not a sample: {line[:80]!r}")
    name, label_text, rest = match.groups()
    value = rest.split(None, 1)[0] if rest.strip() else ""
    after = rest[len(value):]
    if not _FLOAT.match(value):
        raise InvalidOutput(f"value of {name} is not a number: {rest[:40]!r}")
    if not math.isfinite(float(value)) and not re.search("(?i)inf|nan", value):
        raise InvalidOutput(f"value of {name} is out of range: {value}")
    if after.strip():
        raise InvalidOutput(f"sample of {name} has a timestamp (node_exporter skips the file)")
    if after:  # blanks after the value: the parser then expects a timestamp
        raise InvalidOutput(f"blank after the value of {name}")
    key = (name, _labels(name, label_text or ""))
    if key in series:
        raise InvalidOutput(f"duplicate series {name}{dict(key[1])}")
    series.add(key)
    families.setdefault(name, _Family()).samples = True
