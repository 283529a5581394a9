"""The adapters' outputs read back by independent parsers: a line-protocol line (Telegraf) and
a textfile's samples (prometheus_client's parser): tests/test_health.py, tests/test_telegraf.py,
tests/test_fleet.py."""

from __future__ import annotations

import re
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

Sample = tuple[str, dict[str, str], float]


def parse_line(line: str) -> tuple[dict[str, str], dict[str, Any]]:
    """(tags, fields) of one line-protocol line; integers (``i``) as int, strings unquoted."""
    head_end = next(i for i, c in enumerate(line) if c == " " and line[i - 1] != "\\")
    parts = re.split(r"(?<!\\),", line[:head_end])
    tags = dict(part.replace("\\", "").split("=", 1) for part in parts[1:])
    fields: dict[str, Any] = {}
    rest = line[head_end + 1 :]
    while rest:
        key, rest = rest.split("=", 1)
        if rest.startswith('"'):
            end = next(i for i in range(1, len(rest)) if rest[i] == '"' and rest[i - 1] != "\\")
            fields[key], rest = rest[1:end], rest[end + 2 :]
        else:
            value, _, rest = rest.partition(",")
            fields[key] = int(value[:-1]) if value.endswith("i") else float(value)
    return tags, fields


def textfile_samples(text: str) -> list[Sample]:
    return [(s.name, dict(s.labels), s.value)
            for family in text_string_to_metric_families(text) for s in family.samples]
