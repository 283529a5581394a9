"""The refcount table and blocks decoded for the full check, measure and dump: every entry of
every width, as qcow2_get_refcount() reads them (docs/qcow2-format.md §3)."""

from __future__ import annotations

from collections import OrderedDict
from typing import Optional

import numpy as np
import numpy.typing as npt

from ..qcow2 import layout as L
from ..qcow2.image import Qcow2Image

U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]


def decode_block(block: bytes, refcount_bits: int) -> U64:
    """Every entry of one refcount block (widths below 8 bits packed LSB first)."""
    if refcount_bits >= 8:
        return np.frombuffer(block, dtype=f">u{refcount_bits // 8}").astype(np.uint64)
    raw = np.frombuffer(block, dtype=np.uint8)
    shifts = np.arange(0, 8, refcount_bits, dtype=np.uint8)
    values = (raw[:, None] >> shifts) & np.uint8((1 << refcount_bits) - 1)
    return values.reshape(-1).astype(np.uint64)



# Decoded on-disk refcount blocks kept in memory at once.
REFBLOCK_CACHE_BYTES = 512 * 1024


# block/block_int.h: QEMU_ALIGN_DOWN(INT64_MAX, BDRV_MAX_ALIGNMENT); reads past it fail (EIO).
BDRV_MAX_LENGTH = (2**63 - 1) // (1 << 30) * (1 << 30)

class OnDiskRefcounts:
    """The refcount table and blocks as qcow2_get_refcount() reads them: entries past the
    table or without a block read 0; an unaligned block offset makes the refcount unreadable
    (-EIO in qemu); blocks past EOF read as zeros."""

    def __init__(self, image: Qcow2Image) -> None:
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


def metadata_preallocated(image: Qcow2Image) -> bool:
    """qcow2_detect_metadata_preallocation(): more clusters with a nonzero refcount than the
    file really has allocated (by 10 %) means preallocation=metadata; qemu then asks the file
    (BDRV_BLOCK_RECURSE) whether a data cluster is a hole."""
    cs = image.header.cluster_size
    real = image.file.stat.st_blocks * 512 // cs if not image.file.is_block_device else (
        image.file.length // cs)
    threshold = max(real * 10 // 9, real + 2)
    ondisk = OnDiskRefcounts(image)
    end = -(-image.file.length // cs)
    count = 0
    for t in range(-(-end // ondisk.per_block)):
        block = ondisk.block(t)
        if block is None:
            return False
        count += int(np.count_nonzero(block[: end - t * ondisk.per_block]))
        if count >= threshold:
            return True
    return False
