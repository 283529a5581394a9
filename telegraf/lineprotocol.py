r"""InfluxDB line protocol: every escaping and number-formatting rule, in this one place.

    measurement[,tag_key=tag_value...] field_key=field_value[,...] [timestamp]

Rules (InfluxDB 1.x line protocol reference; the parsers of influxd 1.6 and of Telegraf's
``influx`` data format, whose serializer we mirror for control characters):

* measurement: escape ``,`` and space;
* tag keys, tag values, field keys: escape ``,``, ``=`` and space;
* string field values: double-quoted, escape ``"`` and ``\``;
* elsewhere a backslash is written as is: both parsers decide "escaped" by looking only at the
  byte before a separator, so the value ``a\,b`` is written ``a\\,b`` (its backslash, then the
  escaped comma) and reads back unchanged (verified against influxd 1.6);
* tab, newline, CR and form feed cannot appear in names or tags at all, and CR / form feed are
  refused in string fields by Telegraf's parser: every text is first written by the one
  printable rule of every output (collectors/common/text.py), which spells them, every other
  control character and every undecodable byte of a file name ``\xNN`` (valid UTF-8, which
  line protocol requires, on one line);
* a name or tag value cannot *end* in a backslash (it would escape the following separator):
  such a final backslash is written as ``%5C``;
* no empty tag values (the tag is omitted), tags sorted by key (InfluxDB's canonical order);
* integers take ``i`` and must fit int64 (influxd 1.6 rejects the ``u`` suffix); booleans
  ``true``/``false``; floats are finite; NaN and infinities have no representation.
"""

from __future__ import annotations

import math

from qcow2_monitor.collectors.common.text import printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterable, Optional, TypeAlias, Union

FieldValue: TypeAlias = "Union[bool, int, float, str]"

INT64_MIN = -(2**63)
INT64_MAX = 2**63 - 1

_NAME = str.maketrans({",": "\\,", " ": "\\ "})
_KEY = str.maketrans({",": "\\,", " ": "\\ ", "=": "\\="})
_STRING = str.maketrans({'"': '\\"', "\\": "\\\\"})


def _final_backslash(escaped: str) -> str:
    # Both parsers treat a separator as escaped when the byte before it is a backslash, however
    # many backslashes precede: no doubling helps, so the last one is spelled differently.
    if escaped.endswith("\\"):
        return escaped[:-1] + "%5C"
    return escaped


def escape_measurement(name: str) -> str:
    return _final_backslash(printable(name).translate(_NAME))


def escape_key(key: str) -> str:
    """Escape a tag key, tag value or field key."""
    return _final_backslash(printable(key).translate(_KEY))


def escape_tag_value(value: str) -> str:
    return escape_key(value)


def format_string(value: str) -> str:
    # Control characters first, then backslashes: Telegraf's parser accepts a backslash in a
    # string only before another backslash or a quote, so "\\x0a" is written as an escaped
    # backslash followed by "x0a" and reads back as the same four characters a tag would.
    return '"' + printable(value).translate(_STRING) + '"'


def representable(value: FieldValue) -> bool:
    """Whether a field value has a line-protocol form (int64 range, finite float)."""
    if isinstance(value, (bool, str)):
        return True
    if isinstance(value, int):
        return INT64_MIN <= value <= INT64_MAX
    return math.isfinite(value)


def format_field_value(value: FieldValue) -> str:
    """The literal of one field value. Raises ValueError for values line protocol cannot carry."""
    if isinstance(value, bool):  # before int: bool is an int subclass
        return "true" if value else "false"
    if isinstance(value, str):
        return format_string(value)
    if not representable(value):
        raise ValueError(f"field value {value!r} has no line-protocol representation")
    if isinstance(value, int):
        return f"{value}i"
    # repr() is the shortest text that reads back as the same double; both parsers accept
    # its exponent form (1e-05). It always has a '.' or 'e', so it can never read as an int.
    return repr(float(value))


def format_line(
    measurement: str,
    tags: Iterable[tuple[str, str]],
    fields: Iterable[tuple[str, FieldValue]],
    timestamp_ns: Optional[int] = None,
) -> str:
    """One line (without newline). Empty tag values are dropped; a line needs >= 1 field."""
    tag_text = "".join(
        f",{escape_key(key)}={escape_tag_value(value)}"
        for key, value in sorted(tags)
        if value != ""
    )
    field_text = ",".join(f"{escape_key(key)}={format_field_value(value)}" for key, value in fields)
    if not field_text:
        raise ValueError("a line-protocol point needs at least one field")
    line = f"{escape_measurement(measurement)}{tag_text} {field_text}"
    if timestamp_ns is not None:
        line += f" {timestamp_ns}"
    return line
