"""collectors/check/heap.py: the malloc settings the check's array passes run under, asked of
the C library once per process, and nothing (no error) where there is no mallopt()."""

from __future__ import annotations

import ctypes
from types import SimpleNamespace
from typing import Any

import pytest

from qcow2_monitor.collectors.check import heap

# glibc's malloc.h: #define M_TOP_PAD -2, #define M_MMAP_THRESHOLD -3.
GLIBC_M_TOP_PAD = -2
GLIBC_M_MMAP_THRESHOLD = -3


class _RecordingLibc:
    """A C library whose mallopt() records its calls and passes them to the real one."""

    def __init__(self) -> None:
        self.calls: list[tuple[int, int, int]] = []  # (param, value, what glibc returned)
        real = ctypes.CDLL(None).mallopt
        real.argtypes = (ctypes.c_int, ctypes.c_int)
        real.restype = ctypes.c_int
        libc = self

        class _Mallopt:
            argtypes: Any = None
            restype: Any = None

            def __call__(self, param: int, value: int) -> int:
                result = int(real(param, value))
                libc.calls.append((param, value, result))
                return result

        self.mallopt = _Mallopt()


def test_settings_asked_once_and_accepted_by_glibc(monkeypatch: pytest.MonkeyPatch) -> None:
    libc = _RecordingLibc()
    monkeypatch.setattr(heap, "_done", False)
    monkeypatch.setattr(heap, "ctypes", SimpleNamespace(
        CDLL=lambda _name: libc, c_int=ctypes.c_int))
    heap.keep_heap_top()
    # 16 MiB of free heap top kept, arrays under 4 MiB on the heap; glibc's mallopt() returns
    # 1 for a parameter it knows and a value it takes, 0 otherwise.
    assert libc.calls == [(GLIBC_M_TOP_PAD, 16 * 1024 * 1024, 1),
                          (GLIBC_M_MMAP_THRESHOLD, 4 * 1024 * 1024, 1)]
    assert libc.mallopt.argtypes == (ctypes.c_int, ctypes.c_int)
    assert libc.mallopt.restype is ctypes.c_int
    heap.keep_heap_top()
    heap.keep_heap_top()
    assert len(libc.calls) == 2  # once per process


@pytest.mark.parametrize("missing", [AttributeError, OSError])
def test_no_mallopt_is_no_error(monkeypatch: pytest.MonkeyPatch,
                                missing: type[Exception]) -> None:
    """musl has no mallopt(); a C library that cannot be loaded changes nothing either."""
    asked: list[str] = []

    def cdll(_name: object) -> object:
        asked.append("CDLL")
        if missing is OSError:
            raise OSError("no C library")
        return SimpleNamespace()  # no mallopt attribute

    monkeypatch.setattr(heap, "_done", False)
    monkeypatch.setattr(heap, "ctypes", SimpleNamespace(CDLL=cdll, c_int=ctypes.c_int))
    heap.keep_heap_top()
    heap.keep_heap_top()
    assert asked == ["CDLL"]  # tried once, then never again
