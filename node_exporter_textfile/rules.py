"""The parameters of the shipped alert rules (qcow2.rules.yml), and the rules rendered with
other values: `qcow2-analyze config qcow2.rules.yml --set NAME=VALUE`.

Prometheus has no variables in rule files: a window or a threshold is a literal inside a PromQL
expression, and ``for:`` a literal per alert. The literals an operator may want to change are
declared here, each with the exact places it occupies in the shipped file; rendering replaces
them there and nowhere else, and fails when the shipped file no longer has them where declared
(so this table and the rules cannot drift apart unnoticed). The same mechanism gives a test
Prometheus short delays without editing an expression by hand (tests/test_fleet.py).
"""

from __future__ import annotations

import re
from typing import Callable

from qcow2_monitor.collectors.common.record import frozen_record

# A Prometheus duration (model.ParseDuration): units from largest to smallest, e.g. 1h30m, 10s.
DURATION = re.compile(r"(?:(\d+)y)?(?:(\d+)w)?(?:(\d+)d)?(?:(\d+)h)?(?:(\d+)m)?(?:(\d+)s)?"
                      r"(?:(\d+)ms)?")
DURATION_SECONDS = (365 * 86400, 7 * 86400, 86400, 3600, 60, 1, 0.001)

ALERT_LINE = re.compile(r"^\s*- alert: (\S+)\s*$")
RULE_LINE = re.compile(r"^\s*- (alert|record): ")
FOR_LINE = re.compile(r"^(\s*for: )(\S+)(\s*)$")
FOR = "for"  # `for` alone: every alert's; `ALERT.for`: one alert's


class RuleParameterError(ValueError):
    """A --set that names no parameter, or a value that is not a duration."""


def duration_seconds(text: str) -> float:
    """Seconds of a Prometheus duration ("6h", "1m30s", "500ms"); RuleParameterError if it
    is none, or zero."""
    match = DURATION.fullmatch(text)
    if not text or match is None:
        raise RuleParameterError(f"{text!r} is not a Prometheus duration (e.g. 30s, 10m, 6h)")
    seconds = sum(int(part) * unit for part, unit in zip(match.groups(), DURATION_SECONDS)
                  if part)
    if seconds <= 0:
        raise RuleParameterError(f"{text!r}: a duration above zero is needed")
    return seconds


def _seconds_text(duration: str) -> str:
    seconds = duration_seconds(duration)
    return str(int(seconds)) if seconds == int(seconds) else repr(seconds)


@frozen_record
class Parameter:
    """A literal of the rules: its default, what it means, the patterns that each find it once
    (group 1 is the literal) and how a duration is written there."""

    default: str
    help: str
    places: tuple[str, ...]
    spelling: Callable[[str], str] = str


PARAMETERS: dict[str, Parameter] = {
    "trend_window": Parameter(
        "6h", "the range Qcow2ContainerFillsUpWithin24h fits the headroom's trend over",
        (r"predict_linear\(qcow2_headroom_bytes\[(\w+)\]", r"At the rate of the last (\w+) ")),
    "stale_after": Parameter(
        "10m", "how old qcow2_last_success_timestamp_seconds may get before "
        "Qcow2TextfileStale applies, written in seconds in the rule",
        (r"time\(\) - qcow2_last_success_timestamp_seconds > (\d+)",),
        spelling=_seconds_text),
}


def parse_setting(text: str) -> tuple[str, str]:
    """NAME=VALUE of one --set: NAME is a parameter, `for` or `ALERT.for`; VALUE a
    duration."""
    name, sep, value = text.partition("=")
    if not sep:
        raise RuleParameterError(f"{text!r}: write NAME=VALUE")
    if name not in PARAMETERS and name != FOR and not re.fullmatch(r"\w+\.for", name):
        raise RuleParameterError(f"no rule parameter {name!r} (one of: "
                                 f"{', '.join(PARAMETERS)}, for, ALERT.for)")
    duration_seconds(value)
    return name, value


def _set_for(text: str, settings: dict[str, str]) -> str:
    """Each alert's `for:` line set to ALERT.for, else to `for`, else kept."""
    lines = text.splitlines(keepends=True)
    alert, seen = "", set()
    for index, line in enumerate(lines):
        if RULE_LINE.match(line):
            match = ALERT_LINE.match(line)
            alert = match.group(1) if match else ""
            continue
        match = FOR_LINE.match(line.rstrip("\n"))
        if match and alert:
            seen.add(alert)
            value = settings.get(f"{alert}.{FOR}", settings.get(FOR))
            if value is not None:
                lines[index] = f"{match.group(1)}{value}{match.group(3)}\n"
    unknown = {name.rpartition(".")[0] for name in settings
               if name.endswith(f".{FOR}")} - seen
    if unknown:
        raise RuleParameterError(f"no alert with a `for:` named {', '.join(sorted(unknown))} "
                                 f"(alerts: {', '.join(sorted(seen))})")
    return "".join(lines)


def render_rules(text: str, settings: dict[str, str]) -> str:
    """The rules `text` with the given parameters set (each already through parse_setting)."""
    for name, parameter in PARAMETERS.items():
        value = parameter.spelling(settings.get(name, parameter.default))
        for place in parameter.places:
            matches = list(re.finditer(place, text))
            if len(matches) != 1:  # the file and this table drifted apart: a bug
                raise RuntimeError(f"the rules have {len(matches)} places matching "
                                         f"{place!r} for {name}, not one")
            match = matches[0]
            text = text[:match.start(1)] + value + text[match.end(1):]
    return _set_for(text, settings)


__all__ = ["FOR", "PARAMETERS", "Parameter", "RuleParameterError", "duration_seconds",
           "parse_setting", "render_rules"]
