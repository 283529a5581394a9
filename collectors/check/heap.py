"""How the process's heap is kept during the array passes of the check and measure.

glibc returns the top of the heap to the kernel as soon as 128 KiB of it is free, and hands
arrays over its (adaptive) threshold to mmap. The check allocates and frees arrays of a few
hundred KiB per chunk of a table, so the heap shrank and grew again thousands of times, each
growth paid again in page faults: 2586 brk calls and 0.4 s of system time for the full check
of an image with a 32 MiB L1 table, 0.25 s for a 4 TiB image (measured with strace -c and
bench/bench_check.py). Keeping 16 MiB of free heap top, and arrays under 4 MiB on the heap,
makes that a few calls; the peak RSS is unchanged (pages are only resident once used).
"""

from __future__ import annotations

import ctypes

# mallopt() parameter numbers in glibc's malloc.h. Setting one turns glibc's adaptive mmap
# threshold off, so both are set.
M_TOP_PAD = -2
M_MMAP_THRESHOLD = -3
TOP_PAD_BYTES = 16 * 1024 * 1024
MMAP_THRESHOLD_BYTES = 4 * 1024 * 1024

_done = False


def keep_heap_top() -> None:
    """Ask the C library's malloc (once per process) to keep 16 MiB of free heap top and
    arrays under 4 MiB on the heap; nothing where it has no mallopt() (musl)."""
    global _done
    if _done:
        return
    _done = True
    try:
        mallopt = ctypes.CDLL(None).mallopt  # the C library the interpreter runs on
    except (OSError, AttributeError):
        return
    mallopt.argtypes = (ctypes.c_int, ctypes.c_int)
    mallopt.restype = ctypes.c_int
    mallopt(M_TOP_PAD, TOP_PAD_BYTES)
    mallopt(M_MMAP_THRESHOLD, MMAP_THRESHOLD_BYTES)
