"""The one L2 entry classifier (vectorised): qemu's qcow2_get_cluster_type() over whole tables.

Used by the check, measure and dump, so that every reader of L2 tables agrees on what an entry
is. numpy is imported by the modules that use this one, never on the usage path.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import numpy.typing as npt

from . import layout as L

U64 = npt.NDArray[np.uint64]
Types = npt.NDArray[np.uint8]

UNALLOCATED = np.uint8(L.ClusterType.QCOW2_CLUSTER_UNALLOCATED)
ZERO_PLAIN = np.uint8(L.ClusterType.QCOW2_CLUSTER_ZERO_PLAIN)
ZERO_ALLOC = np.uint8(L.ClusterType.QCOW2_CLUSTER_ZERO_ALLOC)
NORMAL = np.uint8(L.ClusterType.QCOW2_CLUSTER_NORMAL)
COMPRESSED = np.uint8(L.ClusterType.QCOW2_CLUSTER_COMPRESSED)


def split_entries(words: U64, extended: bool) -> tuple[U64, Optional[U64]]:
    """(entries, subcluster bitmaps or None) of L2 tables read as big-endian 64-bit words."""
    if extended:
        return words[0::2], words[1::2]
    return words, None


def cluster_types(entries: U64, *, extended: bool, data_file: bool) -> Types:
    """qcow2_get_cluster_type() of every entry. With subclusters (extended L2) the zero flag
    is not used; with an external data file, offset 0 with COPIED set is a normal cluster."""
    types = np.full(len(entries), UNALLOCATED, dtype=np.uint8)
    has_offset = (entries & np.uint64(L.L2E_OFFSET_MASK)) != 0
    types[has_offset] = NORMAL
    if data_file:
        types[~has_offset & ((entries >> np.uint64(63)) != 0)] = NORMAL
    if not extended:
        zero = (entries & np.uint64(L.QCOW_OFLAG_ZERO)) != 0
        types[zero & has_offset] = ZERO_ALLOC
        types[zero & ~has_offset] = ZERO_PLAIN
    types[(entries & np.uint64(L.QCOW_OFLAG_COMPRESSED)) != 0] = COMPRESSED
    return types
