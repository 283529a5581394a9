"""The work one call does, counted exactly, so that tests bound work and never time.

A hostile image must not make an entry point do more than the file it reads warrants. CPU time
shows that only on an idle machine (a 1 s bound failed at 1.01-1.37 s on 2 busy cores); the
counts here are the same on any machine, under any load, and so is a failure's replay:

* ``reads`` and ``bytes_read``: every read of image bytes, all of which go through the one
  reader (``ImageFile._pread``). Counting them costs nothing worth mentioning.
* ``calls`` (when asked, with ``call_limit``): Python and C function calls
  (``sys.setprofile``'s "call" and "c_call" events). Per-entry Python work (a loop over every
  L2 entry, every snapshot, every bitmap) shows as millions of calls; numpy's vectorised work
  is a few calls per array, its arrays bounded by memory. Counting doubles the time of
  Python-heavy code, so the fuzzer's thousands of runs count reads only. Passing the limit
  stops the work at once (WorkLimitExceeded is raised inside the counted code), so that a
  regression to minutes fails in seconds.
* ``peak_bytes`` (when asked: tracemalloc slows allocation-heavy code): the most memory
  allocated at once, numpy's arrays included.

The speed goals themselves are measured in bench/bench_hostile.py, with figures in the README.
"""

from __future__ import annotations

import contextlib
import sys
import time
import tracemalloc
from dataclasses import dataclass
from types import FrameType
from typing import Any, Callable, Iterator, Optional

from qcow2_monitor.collectors.qcow2.reader import ImageFile

MiB = 1024 * 1024


class WorkLimitExceeded(BaseException):
    """Raised inside the counted code when it passes the call limit (a BaseException, so
    that the code's own `except Exception` does not carry on regardless)."""


@dataclass
class Work:
    reads: int = 0
    bytes_read: int = 0
    calls: Optional[int] = None  # None: not counted
    call_limit: Optional[int] = None
    peak_bytes: Optional[int] = None
    cpu_seconds: float = 0.0  # counting included

    @property
    def stopped(self) -> bool:
        """The call limit was passed, and the work stopped there."""
        return self.calls is not None and self.call_limit is not None \
            and self.calls > self.call_limit

    def __str__(self) -> str:
        calls = "" if self.calls is None else f"{self.calls:,} calls, "
        peak = "" if self.peak_bytes is None else f", peak {self.peak_bytes / MiB:.1f} MiB"
        return (f"{calls}{self.reads:,} reads of {self.bytes_read / MiB:.1f} MiB{peak}, "
                f"{self.cpu_seconds:.2f} s CPU")


@contextlib.contextmanager
def counting(call_limit: Optional[int] = None, memory: bool = False) -> Iterator[Work]:
    """Count the work done in the block, in this thread: the calls too with a `call_limit`."""
    work = Work(call_limit=call_limit)
    real_pread = ImageFile._pread

    def pread(self: ImageFile, offset: int, length: int, structure: str) -> bytes:
        data = real_pread(self, offset, length, structure)
        work.reads += 1
        work.bytes_read += len(data)
        return data

    calls = 0
    limit = call_limit or 0

    def profile(_frame: FrameType, event: str, _arg: Any) -> None:
        nonlocal calls
        if event == "call" or event == "c_call":
            calls += 1
            if calls > limit:
                raise WorkLimitExceeded(f"more than {limit:,} calls")

    previous = sys.getprofile()
    ImageFile._pread = pread  # type: ignore[method-assign]
    if memory:
        tracemalloc.start()
    started = time.process_time()
    if call_limit is not None:
        sys.setprofile(profile)
    try:
        yield work
    finally:
        sys.setprofile(previous)
        work.cpu_seconds = time.process_time() - started
        if call_limit is not None:
            work.calls = calls
        if memory:
            work.peak_bytes = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        ImageFile._pread = real_pread  # type: ignore[method-assign]


def work_of(fn: Callable[..., object], *args: object, call_limit: Optional[int] = None,
            memory: bool = False) -> Work:
    """The work of fn(*args); stopped (and so over the limit) past `call_limit`."""
    with counting(call_limit, memory) as work, contextlib.suppress(WorkLimitExceeded):
        fn(*args)
    return work
