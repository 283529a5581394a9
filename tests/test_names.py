"""collectors/qcow2/names.py: names read from an image, decoded by the one printable rule, and
whether each is usable as what it is meant to be."""

from __future__ import annotations

import os

from qcow2_monitor.collectors.qcow2.names import (
    c_string_text,
    decode_path_name,
    name_problem,
    path_problem,
    text_problem,
)


def test_a_path_name_keeps_every_byte() -> None:
    raw = b"/img/\xff\nb.qcow2"
    assert os.fsencode(decode_path_name(raw)) == raw


def test_c_strings_end_at_the_first_nul_and_are_printable() -> None:
    assert c_string_text(b"snap\0garbage") == "snap"
    assert c_string_text(b"bad\xff\tname") == "bad\\xff\\x09name"
    assert c_string_text("ü".encode()) == "ü"


def test_the_problems_of_a_name() -> None:
    assert path_problem("/img/a.qcow2") is None
    assert path_problem("/img/a\0\xffb") == (
        "contains a NUL byte at position 6: not a usable path (qemu would open '/img/a')")
    assert text_problem(b"lazy_refcounts\0\0\0") is None  # NUL padding is fine
    assert text_problem(b"a\0b") == "contains a NUL byte at position 1"
    assert text_problem(b"ab\xff") == "is not valid UTF-8 (byte 0xff at position 2)"
    # A path with an undecodable byte can be opened, but is not printable as written.
    assert name_problem(b"/img/\xff", is_path=True) == (
        "is not valid UTF-8 (byte 0xff at position 5)")
    assert name_problem(b"/img/\0x", is_path=True) is not None
    assert name_problem(b"qcow2", is_path=False) is None
