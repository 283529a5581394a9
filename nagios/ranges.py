"""Nagios threshold ranges: ``[@][start:][end]`` (monitoring-plugins development guidelines).

Grammar and meaning, exactly as the guidelines define them (endpoints inclusive):

========== ===========================================
``10``     alert if value < 0 or > 10
``10:``    alert if value < 10
``~:10``   alert if value > 10 (``~`` is -infinity)
``10:20``  alert if value < 10 or > 20
``@10:20`` alert if 10 <= value <= 20
========== ===========================================

Numbers are plain decimals with an optional exponent (``1e3``), which nagiosplugin's parser
rejects with a crash. ``inf``/``nan`` are refused: they are not numbers a user
means as a threshold.
"""

from __future__ import annotations

import math

from qcow2_monitor.collectors.common.record import frozen_record
from qcow2_monitor.collectors.common.units import plain_number


def is_number(text: str) -> bool:
    """A plain decimal with an optional exponent: ``[+-]`` digits, a point and digits (either
    side may be empty, not both), then ``e``/``E``, ``[+-]`` and digits. Deliberately narrower
    than float(), which also takes "inf", "nan", "1_000" and spaces."""
    mantissa, e, exponent = text.replace("E", "e").partition("e")
    whole, _, fraction = mantissa[mantissa[:1] in ("+", "-"):].partition(".")
    digits = (whole.isdecimal() or not whole) and (fraction.isdecimal() or not fraction) \
        and bool(whole or fraction)
    power = exponent[exponent[:1] in ("+", "-"):]
    return digits and (not e or power.isdecimal())


def _split(text: str) -> tuple[bool, str | None, str | None]:
    """``[@][start:][end]`` in its parts (a part not given is None); raises RangeError where
    `text` (surrounding blanks left out) does not follow it."""
    body = text.strip()
    inside = body.startswith("@")
    start_text, colon, end_text = body[inside:].partition(":")
    if not colon:
        start_text, end_text = "", start_text
    if not ((start_text in ("", "~") or is_number(start_text))
            and (not end_text or is_number(end_text)) and (start_text or end_text)):
        raise RangeError(f"invalid range {text!r} (expected [@][start:][end], e.g. 80 or 10:20)")
    return inside, start_text or None, end_text or None


class RangeError(ValueError):
    """A threshold range that does not follow the guidelines' grammar."""


@frozen_record
class Range:
    """A parsed threshold range; :meth:`alert` tells whether a value triggers it."""

    start: float = 0.0  # -inf for "~"
    end: float = math.inf  # +inf when omitted after ":"
    inside: bool = False  # "@": alert inside the range instead of outside

    @classmethod
    def parse(cls, text: str) -> Range:
        # At least one number: "", "@", ":" and "@:" are typos, not "never alert".
        inside, start_text, end_text = _split(text)
        if start_text == "~":
            start = -math.inf
        elif start_text is None:
            start = 0.0
        else:
            start = float(start_text)
        end = math.inf if end_text is None else float(end_text)
        # float() overflows huge literals to inf instead of raising: refuse those too.
        if (math.isinf(end) and end_text is not None) or start == math.inf:
            raise RangeError(f"invalid range {text!r}: number out of range")
        if start > end:
            # Without "start:" the start is 0 (Nagios' "10" is 0:10): say so, not "None".
            shown_start = start_text if start_text is not None else "0 (the default)"
            raise RangeError(
                f"invalid range {text!r}: start {shown_start} is greater than end {end_text}"
            )
        return cls(start=start, end=end, inside=inside)

    def alert(self, value: float) -> bool:
        """True when ``value`` is a problem under this range (endpoints are inclusive)."""
        within = self.start <= value <= self.end
        return within if self.inside else not within

    def alerts_beyond(self, other: Range, lowest: float = 0.0) -> bool:
        """Whether some value >= `lowest` alerts under this range but not under `other`.

        Both alert sets are unions of intervals whose ends are the ranges' endpoints, so the
        answer is the same for every value strictly between two neighbouring endpoints: one
        probe at each endpoint, one between each pair and one past the last decide exactly.
        """
        ends = {lowest} | {point for point in (self.start, self.end, other.start, other.end)
                           if math.isfinite(point) and point > lowest}
        points = sorted(ends)
        probes = [*points, *(low + (high - low) / 2 for low, high in zip(points, points[1:])),
                  points[-1] * 2 + 1]
        return any(self.alert(value) and not other.alert(value) for value in probes)

    def __str__(self) -> str:
        """The canonical text, usable as the warn/crit field of perfdata."""
        prefix = "@" if self.inside else ""
        start = "~" if math.isinf(self.start) else plain_number(self.start)
        if math.isinf(self.end):
            return f"{prefix}{start}:"
        if self.start == 0:
            return f"{prefix}{plain_number(self.end)}"
        return f"{prefix}{start}:{plain_number(self.end)}"

    def describe(self, unit: str = "") -> str:
        """Human wording for the status text, e.g. ``> 90%`` or ``outside 10%..20%``."""
        low = None if math.isinf(self.start) else plain_number(self.start) + unit
        high = None if math.isinf(self.end) else plain_number(self.end) + unit
        if self.inside:
            if low is None and high is None:
                return "(any value alerts)"
            if low is None:
                return f"<= {high}"
            if high is None:
                return f">= {low}"
            return f"in {low}..{high}"
        if low is None and high is None:
            return "(never alerts)"
        if low is None or (self.start == 0 and high is not None):
            # "-w 80" also alerts below 0, but a usage or a count is never negative: say "> 80".
            return f"> {high}"
        if high is None:
            return f"< {low}"
        return f"outside {low}..{high}"
