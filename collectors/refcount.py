"""Reading on-disk refcounts of every width: the fast image end offset (pure Python, on the
usage path) and :class:`OnDiskRefcounts`, the decoded blocks the full check, measure and dump
read (numpy, imported only when they run).

The fast path (docs/qcow2-format.md §7, "The fast way to the end offset"): scan refcount
blocks from the highest refcount table entry down and stop at the highest nonzero entry below
nb_clusters.
Freed clusters (discard, deleted snapshots) leave zero holes below the end, so scanning for the
first zero would be wrong.
"""

from __future__ import annotations

import struct
from collections import OrderedDict
from typing import TYPE_CHECKING, Optional

from . import layout as L
from .errors import INVALID, Qcow2Error
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


def decode_block(block: bytes, refcount_bits: int) -> U64:
    """Every entry of one refcount block (widths below 8 bits packed LSB first)."""
    import numpy as np

    if refcount_bits >= 8:
        return np.frombuffer(block, dtype=f">u{refcount_bits // 8}").astype(np.uint64)
    raw = np.frombuffer(block, dtype=np.uint8)
    shifts = np.arange(0, 8, refcount_bits, dtype=np.uint8)
    values = (raw[:, None] >> shifts) & np.uint8((1 << refcount_bits) - 1)
    return values.reshape(-1).astype(np.uint64)


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


# Decoded on-disk refcount blocks kept in memory at once.
REFBLOCK_CACHE_BYTES = 512 * 1024


# block/block_int.h: QEMU_ALIGN_DOWN(INT64_MAX, BDRV_MAX_ALIGNMENT); reads past it fail (EIO).
BDRV_MAX_LENGTH = (2**63 - 1) // (1 << 30) * (1 << 30)

class OnDiskRefcounts:
    """The refcount table and blocks as qcow2_get_refcount() reads them: entries past the
    table or without a block read 0; an unaligned block offset makes the refcount unreadable
    (-EIO in qemu); blocks past EOF read as zeros."""

    def __init__(self, image: Qcow2Image) -> None:
        import numpy as np

        h = image.header
        self.file = image.file
        self.cluster_size = h.cluster_size
        self.refcount_bits = h.refcount_bits
        self.block_bits = h.cluster_bits + 3 - h.refcount_order
        self.per_block = 1 << self.block_bits
        raw = image.file.read_zero_padded(h.refcount_table_offset,
                                          h.refcount_table_clusters * h.cluster_size,
                                          "refcount table")
        self.table: U64 = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        self.table_offset = h.refcount_table_offset
        self._cache: OrderedDict[int, U64] = OrderedDict()
        self._cache_bytes = 0
        self._zeros: Optional[U64] = None

    def block_offset(self, index: int) -> int:
        if index >= len(self.table):
            return 0
        return int(self.table[index]) & L.REFT_OFFSET_MASK

    def zeros(self) -> U64:
        import numpy as np

        if self._zeros is None:
            self._zeros = np.zeros(self.per_block, dtype=np.uint64)
        return self._zeros

    def readable(self, offset: int) -> bool:
        """Whether qemu can read a refcount block at `offset`: it must be cluster aligned, and
        the block layer refuses (EIO) requests ending past BDRV_MAX_LENGTH."""
        return not offset % self.cluster_size and offset + self.cluster_size <= BDRV_MAX_LENGTH

    def block(self, index: int) -> Optional[U64]:
        """Refcounts of refcount table entry `index`, or None when unreadable."""
        offset = self.block_offset(index)
        if not offset:
            return self.zeros()
        if not self.readable(offset):
            return None
        cached = self._cache.get(index)
        if cached is not None:
            self._cache.move_to_end(index)
            return cached
        values = decode_block(self.file.read_zero_padded(offset, self.cluster_size,
                                                        f"refcount block {index}"),
                              self.refcount_bits)
        self._cache[index] = values
        self._cache_bytes += values.nbytes
        while self._cache_bytes > REFBLOCK_CACHE_BYTES and len(self._cache) > 1:
            _, old = self._cache.popitem(last=False)
            self._cache_bytes -= old.nbytes
        return values

    def range_all_one(self, first: int, end: int) -> bool:
        """Whether every cluster in [first, end) has a readable on-disk refcount of 1."""
        import numpy as np

        cluster = first
        while cluster < end:
            index = cluster >> self.block_bits
            block = self.block(index)
            if block is None:
                return False
            lo = cluster - (index << self.block_bits)
            hi = min(self.per_block, lo + end - cluster)
            if not bool(np.all(block[lo:hi] == 1)):
                return False
            cluster += hi - lo
        return True

    def get(self, cluster: int) -> Optional[int]:
        block = self.block(cluster >> self.block_bits)
        return None if block is None else int(block[cluster & (self.per_block - 1)])

    def lookup(self, clusters: U64) -> tuple[U64, Bools]:
        """Refcounts of many clusters and which of them could be read. Clusters past the
        table, without a block, or whose block lies past EOF read 0 and unreadable blocks
        make them invalid, all without a Python loop; only the blocks inside the file are
        read, each once per call (a hostile table can name a million)."""
        import numpy as np

        values = np.zeros(len(clusters), dtype=np.uint64)
        valid = np.ones(len(clusters), dtype=bool)
        if not len(clusters):
            return values, valid
        index = clusters >> np.uint64(self.block_bits)
        offsets = np.zeros(len(clusters), dtype=np.uint64)
        listed = np.flatnonzero(index < np.uint64(len(self.table)))
        offsets[listed] = self.table[index[listed].astype(np.intp)] & np.uint64(
            L.REFT_OFFSET_MASK)
        unreadable = (offsets != 0) & (
            ((offsets & np.uint64(self.cluster_size - 1)) != 0)
            | (offsets > np.uint64(BDRV_MAX_LENGTH - self.cluster_size)))
        valid[unreadable] = False
        wanted = np.flatnonzero((offsets != 0) & ~unreadable
                                & (offsets < np.uint64(self.file.length)))
        if not len(wanted):
            return values, valid
        within = (clusters[wanted] & np.uint64(self.per_block - 1)).astype(np.intp)
        blocks = index[wanted]
        if len(blocks) > 1 and not bool(np.all(blocks[1:] >= blocks[:-1])):
            order = np.argsort(blocks, kind="stable")
            wanted, within, blocks = wanted[order], within[order], blocks[order]
        bounds = np.flatnonzero(blocks[1:] != blocks[:-1]) + 1
        starts = [0, *bounds.tolist()]
        ends = [*bounds.tolist(), len(blocks)]
        for lo, hi in zip(starts, ends):
            block = self.block(int(blocks[lo]))
            assert block is not None  # readable and inside the file
            values[wanted[lo:hi]] = block[within[lo:hi]]
        return values, valid
