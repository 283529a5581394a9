"""The vectorised L2 entry classifier against a plain scalar transcription of qemu's
qcow2_get_cluster_type(), on every combination of flags and on random entries."""

from __future__ import annotations

import itertools
import random

import numpy as np
import pytest

from qcow2_monitor.collectors.check.l2 import cluster_types, split_entries
from qcow2_monitor.collectors.qcow2 import layout as L

CT = L.ClusterType


def scalar_cluster_type(entry: int, *, extended: bool, data_file: bool) -> CT:
    """qcow2_get_cluster_type() in block/qcow2.h, line by line."""
    if entry & L.QCOW_OFLAG_COMPRESSED:
        return CT.QCOW2_CLUSTER_COMPRESSED
    if entry & L.QCOW_OFLAG_ZERO and not extended:
        if entry & L.L2E_OFFSET_MASK:
            return CT.QCOW2_CLUSTER_ZERO_ALLOC
        return CT.QCOW2_CLUSTER_ZERO_PLAIN
    if not entry & L.L2E_OFFSET_MASK:
        if data_file and entry & L.QCOW_OFLAG_COPIED:
            return CT.QCOW2_CLUSTER_NORMAL
        return CT.QCOW2_CLUSTER_UNALLOCATED
    return CT.QCOW2_CLUSTER_NORMAL


def sample_entries() -> list[int]:
    """Every combination of the bits that decide the type, plus random 64-bit words."""
    parts = [(0, L.QCOW_OFLAG_COPIED), (0, L.QCOW_OFLAG_COMPRESSED), (0, L.QCOW_OFLAG_ZERO),
             (0, 0x50000, 0x10200), (0, 0x3F00000000000000)]
    entries = [sum(combo) for combo in itertools.product(*parts)]
    rng = random.Random(8)
    entries += [rng.getrandbits(64) for _ in range(4096)]
    return entries


@pytest.mark.parametrize(("extended", "data_file"),
                         list(itertools.product((False, True), repeat=2)))
def test_vectorised_equals_scalar(extended: bool, data_file: bool) -> None:
    entries = sample_entries()
    got = cluster_types(np.array(entries, dtype=np.uint64), extended=extended,
                        data_file=data_file)
    expected = [scalar_cluster_type(e, extended=extended, data_file=data_file)
                for e in entries]
    assert [CT(int(t)) for t in got] == expected
    # Every type occurs, so no branch of either version went untested.
    assert {CT(int(t)) for t in got} >= {CT.QCOW2_CLUSTER_UNALLOCATED,
                                          CT.QCOW2_CLUSTER_NORMAL,
                                          CT.QCOW2_CLUSTER_COMPRESSED}
    if not extended:
        assert {CT(int(t)) for t in got} >= {CT.QCOW2_CLUSTER_ZERO_PLAIN,
                                              CT.QCOW2_CLUSTER_ZERO_ALLOC}


def test_extended_entries_are_split_from_their_bitmaps() -> None:
    words = np.array([1, 2, 3, 4], dtype=np.uint64)
    entries, bitmaps = split_entries(words, True)
    assert entries.tolist() == [1, 3] and bitmaps is not None and bitmaps.tolist() == [2, 4]
    entries, bitmaps = split_entries(words, False)
    assert entries.tolist() == [1, 2, 3, 4] and bitmaps is None
