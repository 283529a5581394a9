"""The plugin's runtime: states and exit codes, the write-once output and the timeout.

Exit codes follow the monitoring-plugins guidelines: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN.
The states are the core health policy's (collectors.health), numbered alike.
"""

from __future__ import annotations

import os
import sys
import threading
from typing import Optional, TextIO

from qcow2_monitor.nagios.ranges import format_number

PROG = "check_qcow2"
PREFIX = "QCOW2"
DEFAULT_TIMEOUT = 30.0  # well under Icinga's 60 s command timeout, after which it kills us
# Without importing the core (see check_qcow2.main): the same numbers as collectors.health.
UNKNOWN = 3


class Output:
    """Writes the plugin output exactly once, whether main() or the timeout gets there first."""

    def __init__(self, stream: Optional[TextIO]) -> None:
        self._stream = stream
        self._lock = threading.Lock()

    def claim(self) -> bool:
        return self._lock.acquire(blocking=False)

    def write(self, text: str) -> None:
        if self._stream is not None:
            self._stream.write(text)
            self._stream.flush()
            return
        # Bytes, not sys.stdout: monitoring daemons often run plugins with LANG=C, where
        # printing a non-ASCII path would raise.
        sys.stdout.flush()
        sys.stdout.buffer.write(text.encode("utf-8", "replace"))
        sys.stdout.buffer.flush()

    def write_last(self, text: str) -> None:
        """Write `text` unless the watchdog is already writing its line (then wait for its
        exit)."""
        if not self.claim():
            threading.Event().wait()
        self.write(text)


def start_watchdog(seconds: float, output: Output) -> threading.Timer:
    """Exit UNKNOWN after `seconds` even if the main thread is stuck in a blocking read.

    A thread rather than SIGALRM: a signal handler only runs between bytecodes of the main
    thread, so a read hanging on a dead NFS server would never be interrupted.
    """

    def expire() -> None:
        if output.claim():
            output.write(f"{PREFIX} UNKNOWN - timed out after {format_number(seconds)} s "
                         "(raise -t/--timeout)\n")
            os._exit(UNKNOWN)

    timer = threading.Timer(seconds, expire)
    timer.daemon = True
    timer.start()
    return timer
