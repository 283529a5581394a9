"""collectors/common/units.py: plain decimals and sizes without the decimal module, checked
against decimal itself and against figures worked out by hand."""

from __future__ import annotations

import random
from decimal import Decimal

import pytest

from qcow2_monitor.collectors.common.units import parse_size, percent_number, plain_number


@pytest.mark.parametrize(("value", "text"), [
    (80.0, "80"), (0.0012, "0.0012"), (1.5e-05, "0.000015"), (-2.5e-10, "-0.00000000025"),
    (41.17212192, "41.17212192"), (1.25e+16 + 0.5, "12500000000000000"), (0.1, "0.1"),
])
def test_plain_number_by_hand(value: float, text: str) -> None:
    assert plain_number(value) == text


def test_plain_number_as_decimal_writes_it() -> None:
    """Digit for digit what format(Decimal(repr(x)), "f") writes, over every magnitude."""
    rng = random.Random(16)
    for _ in range(20000):
        value = rng.uniform(-1, 1) * 10.0 ** rng.randint(-40, 40)
        expected = format(Decimal(repr(value)), "f")
        if "." in expected:
            expected = expected.rstrip("0").rstrip(".")
        assert plain_number(value) == (str(int(value)) if value == int(value) else expected)


def test_percent_number_keeps_two_significant_digits_below_one() -> None:
    assert percent_number(0.000123) == "0.00012" and percent_number(41.176) == "41.18"


@pytest.mark.parametrize(("text", "size"), [
    ("4096", 4096), ("512M", 512 << 20), ("10GiB", 10 << 30), ("1.5T", 3 << 39),
    (".5K", 512), ("1.K", 1024), ("0.0001k", 0), ("3.999999m", 4194302), ("00.5G", 1 << 29),
    ("1e", 1 << 60), ("7 kb", 7168),
])
def test_parse_size_exactly(text: str, size: int) -> None:
    # 3.999999 MiB = 3999999 * 1048576 / 10**6 = 4194302.951424 bytes, rounded down.
    assert parse_size(text) == size


@pytest.mark.parametrize("text", ["", "M", "1.2.3G", "-1G", "1Q", "1i", "1 GiBs"])
def test_parse_size_refuses(text: str) -> None:
    with pytest.raises(ValueError, match="invalid size"):
        parse_size(text)
