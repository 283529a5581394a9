"""The plugin's runtime: states and exit codes, the write-once output and the timeout.

Exit codes follow the monitoring-plugins guidelines: 0 OK, 1 WARNING, 2 CRITICAL, 3 UNKNOWN:
the states of the core's health policy (collectors/report/health.py), numbered alike.
"""

from __future__ import annotations

import _thread
import os

from qcow2_monitor.cli.entry import write_utf8
from qcow2_monitor.collectors.common.units import plain_number
from qcow2_monitor.collectors.report.health import UNKNOWN

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import TextIO

PROG = "check_qcow2"
PREFIX = "QCOW2"
DEFAULT_TIMEOUT = 30.0  # well under Icinga's 60 s command timeout, after which it kills us


class Output:
    """Writes the plugin output exactly once, whether main() or the timeout gets there first."""

    def __init__(self, stream: TextIO) -> None:
        self._stream = stream
        self._lock = _thread.allocate_lock()
        self._claimed_by_main = False

    def claim(self) -> bool:
        return self._lock.acquire(blocking=False)

    def write(self, text: str) -> None:
        write_utf8(self._stream, text)

    def write_last(self, text: str) -> None:
        """Write `text` unless the watchdog is already writing its line (then wait for its
        exit)."""
        if not self.claim():
            self._lock.acquire()  # the watchdog holds it until it ends the process
        self._claimed_by_main = True
        self.write(text)

    def write_failure(self, text: str) -> None:
        """write_last(), unless main() has claimed the output already: then writing it failed
        (stdout closed), and nothing is left to write to."""
        if not self._claimed_by_main:
            self.write_last(text)


class Watchdog:
    """Exits UNKNOWN after `seconds` unless cancelled first, even if the main thread is stuck
    in a blocking read.

    A thread rather than SIGALRM: a signal handler only runs between bytecodes of the main
    thread, so a read hanging on a dead NFS server would never be interrupted. The thread is
    _thread's (what threading.Timer runs on): importing threading is a start-up cost
    (bench/bench_start.py), and this needs one wait with a timeout. Such a thread does not
    hold up the interpreter's exit.
    """

    def __init__(self, seconds: float, output: Output) -> None:
        self._cancelled = _thread.allocate_lock()
        self._cancelled.acquire()
        _thread.start_new_thread(self._wait, (seconds, output))

    def _wait(self, seconds: float, output: Output) -> None:
        if not self._cancelled.acquire(timeout=seconds) and output.claim():
            output.write(f"{PREFIX} UNKNOWN - timed out after {plain_number(seconds)} s "
                         "(raise -t/--timeout)\n")
            os._exit(UNKNOWN)

    def cancel(self) -> None:
        self._cancelled.release()
