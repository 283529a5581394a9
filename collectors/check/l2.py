"""The one L2 entry classifier (vectorised): qemu's qcow2_get_cluster_type() over whole tables.

Used by the check, measure and dump, so that every reader of L2 tables agrees on what an entry
is. numpy is imported by the modules that use this one, never on the usage path.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import numpy.typing as npt

from ..qcow2 import layout as L

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


def _type_of(key: int, extended: bool, data_file: bool) -> int:
    """The type of an entry whose bits are summed up in `key`: bit 0 a nonzero host offset,
    bit 1 the zero flag, bit 2 the compressed flag, bit 3 the COPIED flag."""
    has_offset, zero, compressed, copied = (key >> bit & 1 for bit in range(4))
    if compressed:
        return int(COMPRESSED)
    if zero and not extended:
        return int(ZERO_ALLOC if has_offset else ZERO_PLAIN)
    if has_offset or (data_file and copied):
        return int(NORMAL)
    return int(UNALLOCATED)


# One 16-entry table per (extended, data_file): an entry's type is one lookup of its key.
_TYPES = {(extended, data_file): np.array([_type_of(key, extended, data_file)
                                           for key in range(16)], dtype=np.uint8)
          for extended in (False, True) for data_file in (False, True)}


def cluster_types(entries: U64, *, extended: bool, data_file: bool) -> Types:
    """qcow2_get_cluster_type() of every entry. With subclusters (extended L2) the zero flag
    is not used; with an external data file, offset 0 with COPIED set is a normal cluster."""
    key = ((entries >> np.uint64(62)).astype(np.uint8) << np.uint8(2)) | (
        (entries & np.uint64(L.QCOW_OFLAG_ZERO)).astype(np.uint8) << np.uint8(1))
    key |= ((entries & np.uint64(L.L2E_OFFSET_MASK)) != 0).view(np.uint8)
    types: Types = _TYPES[extended, data_file][key]
    return types
