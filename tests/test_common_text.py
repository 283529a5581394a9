"""collectors/common/text.py: the one printable rule of every output, on its own."""

from __future__ import annotations

import os

import pytest

from qcow2_monitor.collectors.common.text import printable


@pytest.mark.parametrize(
    ("raw", "shown"),
    [
        (b"plain.qcow2", "plain.qcow2"),
        (b"a b,c=d \"q\\ \xc3\xbc|x'.qcow2", "a b,c=d \"q\\ \u00fc|x'.qcow2"),  # kept as is
        (b"bad\xff.qcow2", "bad\\xff.qcow2"),  # an undecodable byte: its value
        (b"\xc3", "\\xc3"),  # the first byte of a UTF-8 sequence cut short
        (b"new\nline\ttab\rcr", "new\\x0aline\\x09tab\\x0dcr"),  # C0 control characters
        (b"nul\x00del\x7f", "nul\\x00del\\x7f"),
        (b"c1 \xc2\x85 \xc2\x9b", "c1 \\x85 \\x9b"),  # C1 controls (U+0085, U+009B CSI)
        (b"\xe2\x80\xa8 \xc2\xa0", "\u2028 \u00a0"),  # Unicode separators are not controls
    ],
)
def test_the_rule(raw: bytes, shown: str) -> None:
    text = os.fsdecode(raw)  # as Python holds a file name: undecodable bytes as surrogates
    assert printable(text) == shown
    assert printable(shown) == shown  # twice changes nothing more
    shown.encode("utf-8")  # valid Unicode: no surrogate left
    assert "\n" not in shown


def test_a_lone_surrogate_that_is_no_escaped_byte() -> None:
    assert printable("x\ud800y") == "x\\ud800y"
