"""How values read in the plugin's text: safe paths and labels, sizes, percentages."""

from __future__ import annotations

from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.common.units import percent_number, plain_number
from qcow2_monitor.nagios.ranges import Range

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional


def usage_percent(ratio: float) -> float:
    """The one rescaling this adapter does: Nagios users think in percent."""
    return ratio * 100.0


def clean_text(text: str) -> str:
    """A path (or a line naming one) safe for the text part of the output: the one printable
    rule of every output (collectors/common/text.py: undecodable bytes and control characters,
    a newline that would start a new long-output line included, as ``\\xNN``), then the
    plugin output's own syntax: a ``|`` would start the perfdata (Icinga splits at the first
    ``|`` followed by ``=``), so it is written ``_``."""
    return printable(text).replace("|", "_")


def clean_label(text: str) -> str:
    """A perfdata label: anything but ``=`` and ``'`` (guidelines), and no ``|`` either."""
    return clean_text(text).replace("=", "_").replace("'", "_")


def percent_text(percent: float, limit: Optional[Range] = None) -> str:
    """Two decimals, or two significant digits below 1 so that tiny values do not read 0.

    Next to a threshold, as many decimals as it takes not to print the endpoint itself:
    "usage 80% > 80%" for 80.0001 % would read as a false alarm.
    """
    text = percent_number(percent)
    if limit is not None and percent not in (limit.start, limit.end):
        digits = 2
        while float(text) in (limit.start, limit.end) and digits < 12:
            digits += 1
            text = plain_number(round(percent, digits))
    return text
