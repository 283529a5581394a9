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

from ..common.errors import INVALID, Qcow2Error
from . import layout as L
from .image import Qcow2Image

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Iterator, Optional

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


def _blocks_top_down(image: Qcow2Image) -> Iterator[tuple[int, Optional[bytes], int]]:
    """(first cluster, block or None when the table has no block there, entries that count)
    of every refcount table entry covering clusters below nb_clusters, from the top down."""
    h = image.header
    cs = h.cluster_size
    clusters = nb_clusters(image)
    per_block = h.refcount_block_entries
    # Only table entries covering clusters below nb_clusters matter (refcounts past EOF are
    # ignored by qemu's compare_refcounts()), so only those are read.
    table = refcount_table(image, -(-clusters // per_block))
    for index in range(len(table) - 1, -1, -1):
        base = index * per_block
        limit = min(per_block, clusters - base)
        block_offset = table[index] & L.REFT_OFFSET_MASK
        if not block_offset:
            yield base, None, limit
            continue
        if block_offset % cs:
            raise Qcow2Error(
                f"refcount block offset 0x{block_offset:x} not cluster aligned "
                f"(refcount table index {index})",
                structure="refcount table", offset=h.refcount_table_offset + 8 * index,
                value=block_offset, kind=INVALID)
        yield base, image.file.read(block_offset, cs,
                                    f"refcount block (table index {index})"), limit


def image_end_offset_from_refcounts(image: Qcow2Image) -> int:
    """The highest cluster with a nonzero on-disk refcount below nb_clusters, plus one, in
    bytes (at least one cluster). Equals `qemu-img check`'s figure on a consistent image."""
    return end_and_free_below(image, free=False)[0]


def end_and_free_below(image: Qcow2Image, *, free: bool = True) -> tuple[int, Optional[int]]:
    """The image end offset (as image_end_offset_from_refcounts()) and, with `free`, the bytes
    of the clusters below it whose refcount is zero: freed by discards, deleted snapshots or
    rewritten compressed clusters. qemu's allocator fills them before the image grows (it
    takes the lowest free cluster first, alloc_clusters_noref() in block/qcow2-refcount.c),
    and offline compaction would give them back. Reads every refcount block below the end
    (never an L2 table); without `free` only the blocks from the top down to the end."""
    h = image.header
    cs = h.cluster_size
    end_cluster: Optional[int] = None
    zeros = 0
    for base, block, limit in _blocks_top_down(image):
        if end_cluster is None:
            top = highest_nonzero_entry(block, h.refcount_bits, limit) \
                if block is not None else None
            if top is None:
                continue
            end_cluster = base + top + 1
            if not free:
                break
            limit = top + 1
        zeros += limit if block is None else zero_entries(block, h.refcount_bits, limit)
    if end_cluster is None:
        return cs, 0 if free else None
    return end_cluster * cs, zeros * cs if free else None


_ZEROS_PER_BYTE: dict[int, bytes] = {}


def _zeros_per_byte(bits: int) -> bytes:
    """Zero refcounts per byte, for refcounts narrower than a byte (1, 2, 4 bits): made when
    an image with such refcounts is first met, not at every start."""
    table = _ZEROS_PER_BYTE.get(bits)
    if table is None:
        mask = (1 << bits) - 1
        table = _ZEROS_PER_BYTE[bits] = bytes(
            sum((byte >> (bits * j)) & mask == 0 for j in range(8 // bits))
            for byte in range(256))
    return table


def zero_entries(block: bytes, refcount_bits: int, limit: int) -> int:
    """How many of the first `limit` refcounts of `block` are zero, counted in C.

    Entries of w bytes: when every byte but the last of each entry is zero (refcounts below
    256, the common case), the zero entries are the zero last bytes; else the w byte lanes
    are OR-ed together as big integers. Narrower entries: bytes.translate()."""
    if refcount_bits >= 8:
        width = refcount_bits // 8
        data = block[: limit * width]
        if width == 1:
            return data.count(0)
        if all(data[lane::width].count(0) == limit for lane in range(width - 1)):
            return data[width - 1::width].count(0)
        lanes = 0
        for lane in range(width):
            lanes |= int.from_bytes(data[lane::width], "big")
        return lanes.to_bytes(limit, "big").count(0)
    per_byte = 8 // refcount_bits
    whole, rest = divmod(limit, per_byte)
    counted = block[:whole].translate(_zeros_per_byte(refcount_bits))
    zeros = sum(k * counted.count(k) for k in range(1, per_byte + 1))
    mask = (1 << refcount_bits) - 1
    if rest:
        last = block[whole]
        zeros += sum(((last >> (refcount_bits * j)) & mask) == 0 for j in range(rest))
    return zeros
