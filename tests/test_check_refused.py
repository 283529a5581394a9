"""The L2 entries qemu's block status refuses (collectors/check/refused.py), and which of them
qemu-img measure's walk asks about; expected values derived by hand from qcow2_get_host_offset()
and qcow2_measure() (docs/qcow2-format.md §9). The images themselves are compared with qemu-img
in tests/test_measure.py."""

from __future__ import annotations

from types import SimpleNamespace
from typing import Any

import numpy as np

from qcow2_monitor.collectors.check.l2 import cluster_types
from qcow2_monitor.collectors.check.refused import first_asked_refusal, refused_entries
from qcow2_monitor.collectors.check.status import (
    REFUSED_COMPRESSED_DATA_FILE,
    REFUSED_INVALID,
    REFUSED_UNALIGNED,
    REFUSED_ZERO_V2,
    STATUS_DATA,
    STATUS_UNALLOCATED,
    STATUS_ZERO,
)

COPIED = 1 << 63
COMPRESSED = 1 << 62


def header(*, version: int = 3, data_file: bool = False) -> Any:
    return SimpleNamespace(cluster_size=65536, version=version, has_data_file=data_file)


def refused(entries: list[int], bitmaps: Any = None, **kwargs: Any) -> list[int]:
    e = np.array(entries, dtype=np.uint64)
    h = header(**kwargs)
    types = cluster_types(e, extended=bitmaps is not None, data_file=h.has_data_file)
    b = None if bitmaps is None else np.array(bitmaps, dtype=np.uint64)
    return [int(x) for x in refused_entries(h, types, e, b)]


def test_offsets_must_be_cluster_aligned() -> None:
    assert refused([COPIED | 0x50000, COPIED | 0x50200, 0x60200 | 1, 0]) == [
        0, REFUSED_UNALIGNED, REFUSED_UNALIGNED, 0]


def test_zero_entries_of_version_2() -> None:
    assert refused([1, 0x50000 | 1, COPIED | 0x60000], version=2) == [
        REFUSED_ZERO_V2, REFUSED_ZERO_V2, 0]
    assert refused([1, 0x50000 | 1], version=3) == [0, 0]


def test_compressed_with_a_data_file() -> None:
    assert refused([COMPRESSED | 0x50000, COPIED], data_file=True) == [
        REFUSED_COMPRESSED_DATA_FILE, 0]


def test_extended_l2_invalid_bitmaps() -> None:
    # normal: subcluster 0 allocated and zero; unallocated with an allocation bit; valid ones
    entries = [COPIED | 0x50000, 0, COPIED | 0x60000, 0, COPIED | 0x70200]
    bitmaps = [(1 << 32) | 1, 1, 0xFFFF, 0xFFFF << 32, 1]
    assert refused(entries, bitmaps) == [REFUSED_INVALID, REFUSED_INVALID, 0, 0,
                                         REFUSED_UNALIGNED]


def test_measure_jumps_to_the_next_target_cluster_after_data() -> None:
    cs = 65536
    starts = np.array([0, 4096, 8192, cs, cs + 4096], dtype=np.int64)
    codes = np.array([STATUS_DATA, REFUSED_UNALIGNED, STATUS_UNALLOCATED, REFUSED_UNALIGNED,
                      STATUS_ZERO], dtype=np.int8)
    # [4096, 64 KiB) is jumped over after the data at 0; the refused run at 64 KiB is asked.
    assert first_asked_refusal(starts, codes, 2 * cs, cs) == (cs, REFUSED_UNALIGNED)
    # A refused run straddling the boundary is asked from the boundary on.
    starts = np.array([0, 4096, 2 * cs], dtype=np.int64)
    codes = np.array([STATUS_DATA, REFUSED_INVALID, STATUS_ZERO], dtype=np.int8)
    assert first_asked_refusal(starts, codes, 3 * cs, cs) == (cs, REFUSED_INVALID)
    # Past the end nothing is asked.
    assert first_asked_refusal(starts, codes, cs, cs) is None
