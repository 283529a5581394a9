"""What every entry point shares: its streams, the last-resort catch around its body, and how
text reaches an agent.

Every entry point is ``main(argv=None, stdout=None, stderr=None) -> int`` (argv None: the
process's arguments; a stream None: the process's, looked up when main() runs) and wraps its body
in :func:`last_resort`, the one place where an exception nobody expected becomes one line and
the command's documented exit code, never a traceback.
"""

from __future__ import annotations

import sys

from qcow2_monitor.collectors.common.text import printable

TYPE_CHECKING = False
if TYPE_CHECKING:
    from collections.abc import Callable
    from typing import Optional, TextIO

EXIT_INTERRUPTED = 130  # 128 + SIGINT, what a shell reports for a command stopped by Ctrl-C


def output_streams(stdout: Optional[TextIO], stderr: Optional[TextIO]) -> tuple[TextIO, TextIO]:
    """The streams an entry point writes to: those given, else the process's."""
    return stdout or sys.stdout, stderr or sys.stderr


def exception_text(exc: BaseException) -> str:
    """An unexpected exception on one printable line: its type and its message's first line."""
    lines = str(exc).splitlines()
    return printable(f"{type(exc).__name__}: {lines[0] if lines else ''}")


def last_resort(body: Callable[[], int], failure: Callable[[BaseException], int]) -> int:
    """body()'s exit code; an exception escaping it goes to `failure`, which says it in one line
    its own way and returns the command's code for it. Ctrl-C ends the command silently with
    130."""
    try:
        return body()
    except KeyboardInterrupt:
        return EXIT_INTERRUPTED
    except Exception as exc:  # the entry point's last resort: one line, never a traceback
        return failure(exc)


def write_utf8(stream: TextIO, text: str) -> None:
    """Write `text` as UTF-8 whatever the locale the agent started us with (monitoring daemons
    often run plugins with LANG=C), and flush: into the stream's bytes buffer when it has one."""
    buffer = getattr(stream, "buffer", None)
    if buffer is None:
        stream.write(text)
    else:
        stream.flush()  # what was written as text goes first
        buffer.write(text.encode("utf-8"))
    stream.flush()
