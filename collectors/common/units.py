"""The one way every tool writes a size or a percentage for people (JSON and perfdata keep
bytes and ratios): sizes as qemu-img prints them, percentages with the same rounding
everywhere, and counted nouns with the right plural."""

from __future__ import annotations

import math

_SIZE_PREFIXES = ("", "Ki", "Mi", "Gi", "Ti", "Pi", "Ei")


# Sizes repeat (every disk-only snapshot's VM state is 0 B): a listing of 65536 snapshots
# formats each distinct one once (at most SIZES_KEPT kept; then they are made anew).
SIZES_KEPT = 1024
_SIZES: dict[int, str] = {}


def human_size(size: int) -> str:
    """qemu's size_to_str() (util/cutils.c), so that our sizes read like qemu-img's: three
    significant digits, and the next binary unit from 1000 of the current one on
    (1000 B -> "0.977 KiB", never "1e+03 KiB")."""
    text = _SIZES.get(size)
    if text is None:
        if len(_SIZES) >= SIZES_KEPT:
            _SIZES.clear()
        text = _SIZES[size] = _size_text(size)
    return text


def _size_text(size: int) -> str:
    if size < 0:
        return "-" + _size_text(-size)
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
    text = _fixed_point(repr(float(value)))
    if "." in text:
        text = text.rstrip("0").rstrip(".")
    return text


def _fixed_point(text: str) -> str:
    """A float's repr without its exponent, digit for digit (``1.5e-05`` -> ``0.000015``), as
    format(Decimal(text), "f") writes it."""
    mantissa, _, exponent = text.partition("e")
    if not exponent:
        return mantissa
    sign = "-" if mantissa.startswith("-") else ""
    whole, _, fraction = mantissa.lstrip("-").partition(".")
    digits = whole + fraction
    point = len(whole) + int(exponent)  # where the point goes in `digits`
    if point <= 0:
        return f"{sign}0.{'0' * -point}{digits}"
    if point >= len(digits):
        return sign + digits + "0" * (point - len(digits))
    return f"{sign}{digits[:point]}.{digits[point:]}"


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


# Patterns compiled on first use (re, imported then, caches them): a run given no size or
# duration has none.
_SIZE_PATTERN = r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([kmgtpe]?)(i?b?)\s*$"
_SIZE_POWERS = {"": 0, "k": 1, "m": 2, "g": 3, "t": 4, "p": 5, "e": 6}


def parse_size(text: str) -> int:
    """Parse "10GiB", "512M", "1.5T", "4096" into bytes.

    As qemu-img does, every suffix is a power of 1024 whether written K, KB or KiB: one
    convention for a tool whose users type qemu-img sizes. Fractions round down to a byte.
    Raises ValueError with the offending text.
    """
    import re

    match = re.match(_SIZE_PATTERN, text, re.IGNORECASE)
    if not match:
        raise ValueError(f"invalid size {text!r} (expected e.g. 512M, 10GiB, 1.5T)")
    number, prefix, suffix = match.groups()
    if suffix.lower() in ("i", "ib") and not prefix:
        raise ValueError(f"invalid size {text!r}: 'i' needs a prefix such as Ki or Mi")
    whole, _, fraction = number.partition(".")
    # Exactly, in integers: digits x 1024^power / 10^(digits after the point), rounded down.
    places: int = 10 ** len(fraction)
    return (int(whole + fraction or "0") << 10 * _SIZE_POWERS[prefix.lower()]) // places



_DURATION_PATTERN = r"^\s*(\d+(?:\.\d*)?|\.\d+)\s*([smhdw]?)\s*$"
_DURATION_UNITS = {"": 1, "s": 1, "m": 60, "h": 3600, "d": 86400, "w": 7 * 86400}


def parse_duration(text: str) -> float:
    """Parse "90", "90s", "30m", "4h", "2d", "1w" into seconds; raises ValueError."""
    import re

    match = re.match(_DURATION_PATTERN, text, re.IGNORECASE)
    if not match:
        raise ValueError(f"invalid duration {text!r} (expected e.g. 90s, 30m, 4h, 2d)")
    return float(match.group(1)) * _DURATION_UNITS[match.group(2).lower()]


def human_duration(seconds: float) -> str:
    """``45s``, ``12m``, ``3h 20m``, ``2d 4h``: two units at most, rounded down."""
    whole = int(max(seconds, 0))
    for unit, size, small, small_size in (("d", 86400, "h", 3600), ("h", 3600, "m", 60)):
        if whole >= size:
            rest = (whole % size) // small_size
            return f"{whole // size}{unit}" + (f" {rest}{small}" if rest else "")
    return f"{whole // 60}m" if whole >= 60 else f"{whole}s"


def human_rate(bytes_per_second: float) -> str:
    """A growth rate the way sizes are written: ``1.5 MiB/s``, ``-12 KiB/s``, per hour when slow."""
    sign = "-" if bytes_per_second < 0 else ""
    rate = abs(bytes_per_second)
    if rate and rate < 1024:
        return f"{sign}{human_size(int(rate * 3600))}/h"
    return f"{sign}{human_size(int(rate))}/s"
