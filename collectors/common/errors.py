"""The project's one error type and its documented exit codes.

Every low-level parse failure becomes a :class:`Qcow2Error` carrying the file, the structure,
the offset and the bad value, so that every front end can print one clear line.
"""

from __future__ import annotations

from .text import printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional, Union

# Kinds of failure, stable strings that adapters may show or export.
NOT_QCOW2 = "not-qcow2"
TRUNCATED = "truncated"
OUT_OF_BOUNDS = "out-of-bounds"
UNSUPPORTED = "unsupported"
INVALID = "invalid"
IO_ERROR = "io-error"
INTERNAL = "internal-error"  # a bug of ours: reported as one line, never a traceback


class Qcow2Error(Exception):
    """A qcow2 image (or its container) could not be read as one."""

    def __init__(
        self,
        message: str,
        *,
        structure: str,
        offset: Optional[int] = None,
        value: Union[int, str, None] = None,
        kind: str = INVALID,
        filename: Optional[str] = None,
    ) -> None:
        super().__init__(message)
        self.message = message
        self.structure = structure
        self.offset = offset
        self.value = value
        self.kind = kind
        self.filename = filename

    def with_filename(self, filename: str) -> Qcow2Error:
        if self.filename is None:
            self.filename = filename
        return self

    def __str__(self) -> str:
        where = self.structure
        if self.offset is not None:
            where += f" at offset 0x{self.offset:x}"
        text = f"{where}: {self.message}"
        shown = self.shown_value()
        if shown is not None:
            text += f" (value {shown})"
        if self.filename is not None:
            text = f"{self.filename}: {text}"
        return text

    def shown_value(self) -> Optional[str]:
        """The value as the text adds it, or None when the message already states it (in
        decimal, in hex or as the string itself): a value is said once."""
        if self.value is None:
            return None
        if isinstance(self.value, int):
            forms = {str(self.value), f"0x{self.value:x}", f"{self.value:x}"}
            shown = f"0x{self.value:x}"
        else:
            # Quoted, by the one printable rule (a name read from an image can hold any byte).
            shown = f"'{printable(self.value)}'"
            forms = {self.value, printable(self.value), shown}
        if any(_states(self.message, form) for form in forms):
            return None
        return shown

    def as_dict(self) -> dict[str, object]:
        """The one JSON shape of an error in every command's output."""
        return {
            "kind": self.kind,
            "structure": self.structure,
            "offset": self.offset,
            "value": self.value,
            "message": self.message,
            "filename": self.filename,
        }


def _states(message: str, form: str) -> bool:
    """`form` appears in `message` as a whole word (7 is not stated by 0x70000)."""
    import re  # for error messages only

    word = rf"(?<![0-9A-Za-z_]){re.escape(form)}(?![0-9A-Za-z_])"
    return bool(form) and re.search(word, message) is not None


def internal_error(exc: BaseException, filename: str | None = None) -> Qcow2Error:
    """The one wrapping of an unexpected exception, so that one bad image never stops the
    others nor prints a traceback: an OSError that escaped the reader is an io-error; anything
    else is a bug of ours, named with its type so that it can be reported (the fuzzer asserts
    that it never happens on the damaged corpus)."""
    if isinstance(exc, OSError):
        return Qcow2Error(exc.strerror or str(exc), structure="file", kind=IO_ERROR,
                          filename=filename)
    return Qcow2Error(f"internal error: {type(exc).__name__}: {exc}", structure="analysis",
                      kind=INTERNAL, filename=filename)
