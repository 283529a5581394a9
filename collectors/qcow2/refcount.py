"""On-disk refcounts on the fast path: the image end offset from the refcount table and blocks,
in pure Python (the decoded blocks the full check, measure and dump read are
:mod:`..check.refblocks`).

The fast path (docs/qcow2-format.md §7, "The fast way to the end offset"): scan refcount
blocks from the highest refcount table entry down and stop at the highest nonzero entry below
nb_clusters.
Freed clusters (discard, deleted snapshots) leave zero holes below the end, so scanning for the
first zero would be wrong.
"""

from __future__ import annotations

import struct
from typing import TYPE_CHECKING, Optional

from ..common.errors import INVALID, Qcow2Error
from . import layout as L
from .image import Qcow2Image

if TYPE_CHECKING:
    import numpy as np
    import numpy.typing as npt

    U64 = npt.NDArray[np.uint64]
    Bools = npt.NDArray[np.bool_]

def refcount_table(image: Qcow2Image, entries: Optional[int] = None) -> tuple[int, ...]:
    """The first `entries` refcount table entries (all by default; bounded by qemu's 8 MiB
    limit at open time). Past EOF they read as zero, as in qemu."""
    h = image.header
    count = h.refcount_table_entries if entries is None else min(entries,
                                                                 h.refcount_table_entries)
    raw = image.file.read_zero_padded(h.refcount_table_offset, count * 8, "refcount table")
    return struct.unpack(f">{count}Q", raw)


def highest_nonzero_entry(block: bytes, refcount_bits: int, limit: int) -> Optional[int]:
    """Index of the highest nonzero refcount among the first `limit` entries, or None."""
    nbits = limit * refcount_bits
    data = block[: (nbits + 7) // 8]
    if nbits % 8:
        # The last byte holds entries at and past `limit` (sub-byte widths): mask them off.
        keep = (1 << (nbits % 8)) - 1
        data = data[:-1] + bytes([data[-1] & keep])
    stripped = data.rstrip(b"\0")
    if not stripped:
        return None
    last = len(stripped) - 1
    if refcount_bits >= 8:
        return last // (refcount_bits // 8)
    per_byte = 8 // refcount_bits
    byte = stripped[-1]
    mask = (1 << refcount_bits) - 1
    for j in reversed(range(per_byte)):
        if (byte >> (refcount_bits * j)) & mask:
            return last * per_byte + j
    raise AssertionError("unreachable: nonzero byte without a nonzero entry")


def nb_clusters(image: Qcow2Image) -> int:
    """size_to_clusters(file length), as qcow2_check_refcounts() computes it."""
    cs = image.header.cluster_size
    return -(-image.file.length // cs)


def image_end_offset_from_refcounts(image: Qcow2Image) -> int:
    """The highest cluster with a nonzero on-disk refcount below nb_clusters, plus one, in
    bytes (at least one cluster). Equals `qemu-img check`'s figure on a consistent image."""
    h = image.header
    cs = h.cluster_size
    clusters = nb_clusters(image)
    per_block = h.refcount_block_entries
    # Only table entries covering clusters below nb_clusters matter (refcounts past EOF are
    # ignored by qemu's compare_refcounts()), so only those are read.
    table = refcount_table(image, -(-clusters // per_block))
    last_index = len(table) - 1
    for index in range(last_index, -1, -1):
        block_offset = table[index] & L.REFT_OFFSET_MASK
        if not block_offset:
            continue
        if block_offset % cs:
            raise Qcow2Error(
                f"refcount block offset 0x{block_offset:x} not cluster aligned "
                f"(refcount table index {index})",
                structure="refcount table", offset=h.refcount_table_offset + 8 * index,
                value=block_offset, kind=INVALID)
        block = image.file.read(block_offset, cs, f"refcount block (table index {index})")
        base = index * per_block
        top = highest_nonzero_entry(block, h.refcount_bits, min(per_block, clusters - base))
        if top is not None:
            return (base + top + 1) * cs
    return cs
