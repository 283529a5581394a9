"""Helpers to read the adapters' outputs back and to run the shipped alert rules on them with
`promtool test rules` (tests/test_health.py, tests/test_filesystem.py)."""

from __future__ import annotations

import json
import re
import subprocess
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from daemons import require_binary

RULES = Path(__file__).resolve().parent.parent / "node_exporter_textfile" / "qcow2.rules.yml"
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


def _annotations() -> dict[str, dict[str, str]]:
    """summary/description of every alert of the shipped rules (one-line strings)."""
    found: dict[str, dict[str, str]] = {}
    alert = ""
    for line in RULES.read_text().splitlines():
        match = re.match(r"\s*- alert: (\S+)", line)
        if match:
            alert = match.group(1)
        match = re.match(r"\s*(summary|description): (\".*\")$", line)
        if match:
            found.setdefault(alert, {})[match.group(1)] = json.loads(match.group(2))
    return found


def render(template: str, labels: dict[str, str], value: float) -> str:
    """The two template forms the shipped rules use."""
    text = re.sub(r"\{\{ \$labels\.(\w+) \}\}", lambda m: labels[m.group(1)], template)
    text = text.replace("{{ $value | humanizePercentage }}", f"{value * 100:.4g}%")
    assert "{{" not in text, text
    return text


def _series(name: str, labels: dict[str, str]) -> str:
    inner = ",".join(f'{k}="{v}"' for k, v in sorted(labels.items()))
    return f"{name}{{{inner}}}"


def promtool_test(tmp: Path, samples: list[Sample],
                  expected: dict[str, list[tuple[dict[str, str], float]]]) -> None:
    """`promtool test rules` of the shipped rules on `samples` (constant for 40 minutes),
    expecting exactly `expected` (alert -> [(labels, value)]) at 30 minutes."""
    scrape = {"instance": "h", "job": "node"}
    notes = _annotations()
    alerts = [{
        "eval_time": "30m", "alertname": alert,
        "exp_alerts": [{
            "exp_labels": {**labels, **scrape, "severity": severity},
            "exp_annotations": {key: render(text, {**labels, **scrape}, value)
                                for key, text in notes[alert].items()},
        } for labels, value in expected.get(alert, [])],
    } for alert, severity in (("Qcow2ImageCritical", "critical"),
                              ("Qcow2ImageWarning", "warning"),
                              ("Qcow2ImageUnknown", "warning"),
                              ("Qcow2ContainerNearlyFull", "critical"))]
    test = {
        "rule_files": [str(RULES)],
        "evaluation_interval": "1m",
        "tests": [{
            "interval": "1m",
            "input_series": [{"series": _series(name, {**labels, **scrape}),
                              "values": f"{value!r}x40"}
                             for name, labels, value in samples],
            "alert_rule_test": alerts,
        }],
    }
    path = tmp / "health.test.yml"
    path.write_text(json.dumps(test, indent=1))  # JSON is YAML
    proc = subprocess.run([require_binary("promtool"), "test", "rules", str(path)],
                          capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stdout + proc.stderr
