r"""The one rule for writing a name (or any text read from the host or an image) in an output.

A file name on Linux is any bytes but ``/`` and NUL: Python keeps the bytes that are not UTF-8
as lone surrogates (``surrogateescape``), which no output can encode, and a newline or another
control character in a name would split a line of text, a log record or a perfdata block. So
every output -- JSON, human text, the Nagios plugin output, line protocol, the Prometheus text
format -- writes a name the same way, by :func:`printable`:

* a byte that is not UTF-8 becomes ``\xNN`` (its value, two lowercase hex digits);
* a control character (C0, DEL, C1: U+0000..U+001F, U+007F..U+009F) becomes ``\xNN`` too, so a
  name always stays on one line;
* everything else is kept as it is: spaces, quotes, backslashes, ``|``, non-ASCII letters.

The result is valid Unicode on one line, and applying the rule twice changes nothing more. It
is for reading, not for opening the file again: a backslash is kept, so the name ``a\x0ab``
written literally and ``a``, newline, ``b`` are spelled alike. What a format's syntax needs on
top (a quote in a Prometheus label value, a ``,`` in a line-protocol tag, a ``|`` in the Nagios
output) is escaped by that adapter after this rule.
"""

from __future__ import annotations

# What is written escaped: control characters, and the lone surrogates Python decodes
# undecodable bytes to (surrogateescape: byte 0xNN -> U+DCNN) or that any other source could
# carry.
_CONTROLS = (range(0x00, 0x20), range(0x7F, 0xA0))
_SURROGATES = range(0xD800, 0xE000)
_ESCAPED_BYTES = range(0xDC80, 0xDD00)  # surrogateescape's range: bytes 0x80..0xff


def _escape(char: str) -> str:
    code = ord(char)
    if code in _ESCAPED_BYTES:
        return f"\\x{code - 0xDC00:02x}"
    if any(code in controls for controls in _CONTROLS):
        return f"\\x{code:02x}"
    if code in _SURROGATES:
        return f"\\u{code:04x}"  # a lone surrogate that is no escaped byte
    return char


def printable(text: str) -> str:
    """`text` by the one rule of every output: undecodable bytes and control characters as
    ``\\xNN``, everything else as it is (see the module's docstring)."""
    if text.isprintable():  # no control character, no surrogate: nothing to do (most names)
        return text
    return "".join(map(_escape, text))
