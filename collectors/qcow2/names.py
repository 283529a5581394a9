"""Names read from an image, and the one rule for whether each is usable.

A backing file or external data file name is a path; a backing format, bitmap, snapshot or
feature name is text. The image's bytes can be anything: a path name is decoded with
``surrogateescape`` so that every byte survives the round trip to the file system, and this
module says when a name cannot be used as what it is meant to be, so that the callers report it
and carry on with the image's other figures instead of failing on it.
"""

from __future__ import annotations

from ..common.text import printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional


def decode_path_name(raw: bytes) -> str:
    """A path name as written: every byte kept (undecodable ones as surrogate escapes)."""
    return raw.decode("utf-8", "surrogateescape")


def c_string_text(raw: bytes) -> str:
    """A snapshot, bitmap or feature name as qemu holds it (a C string: up to the first NUL),
    as text by the one printable rule (common/text.py): undecodable bytes and control
    characters as \\x escapes."""
    if b"\0" in raw:
        raw = raw[:raw.index(b"\0")]
    return printable(decode_path_name(raw))


def path_problem(name: str) -> Optional[str]:
    """Why `name` cannot be opened as a path, or None. qemu keeps only the part before a NUL
    (it reads the name into a C string), so a NUL means the name on disk is not the one qemu
    opens; the OS refuses such a path outright."""
    if "\0" in name:
        return (f"contains a NUL byte at position {name.index(chr(0))}: not a usable path "
                f"(qemu would open '{printable(name.split(chr(0), 1)[0])}')")
    return None


def text_problem(raw: bytes) -> Optional[str]:
    """Why `raw` is not valid text (a NUL inside, or not UTF-8), or None. Trailing NUL padding
    (feature names are padded to 46 bytes) is fine."""
    stripped = raw.rstrip(b"\0")
    if b"\0" in stripped:
        return f"contains a NUL byte at position {stripped.index(0)}"
    try:
        stripped.decode("utf-8")
    except UnicodeDecodeError as exc:
        return f"is not valid UTF-8 (byte 0x{stripped[exc.start]:02x} at position {exc.start})"
    return None


def name_problem(raw: bytes, *, is_path: bool) -> Optional[str]:
    """The problem of a name read from the image: for a path only what stops it being opened
    plus undecodable bytes (still a valid POSIX path, but not printable as written)."""
    if is_path:
        problem = path_problem(decode_path_name(raw))
        if problem is not None:
            return problem
    return text_problem(raw)

