"""The full read-only consistency check, equal to `qemu-img check` (qemu 7.2).

Mirrors block/qcow2-refcount.c: qcow2_check_refcounts() -> calculate_refcounts()
(check_refcounts_l1/l2, qcow2_check_bitmaps_refcounts, check_refblocks) -> compare_refcounts()
-> check_oflag_copied(), preceded by qcow2_check_read_snapshot_table() (qcow2-snapshot.c).
See ../shared/reference/qcow2.md §7.

Every figure is qemu's; only the way it is computed differs: the per-entry C loops become
vectorised numpy passes over batches of L2 tables, which is valid because every rule of
qcow2_inc_refcounts_imrt() is order independent (a region is counted or not on its own; an
increment at the maximum is one corruption, so the final count is min(total, max) and the
overflows are total - max). The one order-dependent rule, check_refblocks()'s "refcount must be
exactly 1", runs last in qemu too and is mirrored sequentially.

Memory: the computed refcounts are one uint32 array of nb_clusters + 1 entries (sized by the
file length, never by the virtual size); on-disk refcount blocks are decoded one block at a time
into a small bounded cache. numpy is imported by this module only (usage imports it lazily).
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import dataclass, replace
from functools import partial
from typing import Callable, Optional

import numpy as np
import numpy.typing as npt

from . import layout as L
from .container import held_for_writing
from .errors import OUT_OF_BOUNDS, Qcow2Error
from .image import Qcow2Image
from .model import (
    SEVERITY_CHECK_ERROR,
    SEVERITY_CORRUPTION,
    SEVERITY_LEAK,
    CheckResult,
    Finding,
)
from .names import c_string_text

U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]

ADVICE_LEAK = (
    "Leaked clusters are harmless wasted space, no harm to data; `qemu-img check -r leaks` "
    "reclaims them offline (stop the VM first)."
)
ADVICE_REFCOUNT = (
    "Refcount error: take a backup, then run `qemu-img check -r all` on the stopped VM."
)
ADVICE_DATA = (
    "Cluster referenced twice or metadata overlap: guest data may be damaged; restore from "
    "backup (`qemu-img check -r all` only makes the refcounts consistent)."
)
ADVICE_METADATA = (
    "Damaged metadata entry: take a backup, then run `qemu-img check -r all` on the stopped VM; "
    "guest data behind this entry may be lost."
)
ADVICE_OVERFLOW = (
    "Refcount overflow: use `qemu-img amend -o refcount_bits=...` to widen refcounts, or "
    "`qemu-img convert` to a clean copy."
)
ADVICE_UNREADABLE = (
    "The refcount block cannot be used: take a backup, then run `qemu-img check -r all` on the "
    "stopped VM (it rebuilds the refcount structures)."
)

# Entries of L2 tables classified per vectorised batch: bounds the temporaries (a few MiB).
L2_BATCH_ENTRIES = 1 << 18
# Decoded on-disk refcount blocks kept in memory at once.
REFBLOCK_CACHE_BYTES = 32 * 1024 * 1024
# qcow2_do_read_snapshots(): sizes checked while reading the table in check mode.
INT_MAX = 2**31 - 1
REFT_RESERVED_MASK = 0x1FF
BME_TABLE_ENTRY_RESERVED_MASK = 0xFF000000000001FE
BME_TABLE_ENTRY_SIZE = 8
COMPRESSED_SECTOR_SIZE = 512
COUNT_MAX = np.iinfo(np.uint32).max
# block/block_int.h: QEMU_ALIGN_DOWN(INT64_MAX, BDRV_MAX_ALIGNMENT); reads past it fail (EIO).
BDRV_MAX_LENGTH = (2**63 - 1) // (1 << 30) * (1 << 30)
# L1 entries accounted per vectorised pass (bounds the temporaries of a 32 MiB L1 table).
L1_CHUNK_ENTRIES = 1 << 20
# Beyond this many runs of adjacent clusters in one batch, count per entry instead.
MAX_RUNS = 4096


def _u64(value: int) -> np.uint64:
    return np.uint64(value)


class _Findings:
    """A bounded list of findings with a complete total."""

    def __init__(self, limit: int) -> None:
        self.limit = limit
        self.items: list[Finding] = []
        self.total = 0

    @property
    def room(self) -> int:
        return max(0, self.limit - len(self.items))

    def add(self, finding: Finding) -> None:
        self.total += 1
        if len(self.items) < self.limit:
            self.items.append(finding)

    def count(self, n: int) -> None:
        """Findings counted but not built (the list is already full)."""
        self.total += n


@dataclass(frozen=True)
class _SnapshotEntry:
    index: int
    offset: int
    l1_table_offset: int
    l1_size: int
    extra_data_size: int
    id_str: str
    name: str

    @property
    def label(self) -> str:
        return f"snapshot {self.id_str}"


def read_snapshot_table(image: Qcow2Image) -> tuple[list[_SnapshotEntry], int]:
    """qcow2_do_read_snapshots(repair=false) as qcow2_check_read_snapshot_table() calls it:
    reads past EOF give zeros (bdrv_pread on the file), and the conditions that make qemu's
    check fail (too much extra data, table too big) raise Qcow2Error. Returns the entries and
    s->snapshots_size (end of the last name minus the table offset, not rounded)."""
    h = image.header
    start = offset = h.snapshots_offset
    table_length = 0
    entries = []
    fixed_size = L.SnapshotHeader.STRUCT.size
    unpack = L.SnapshotHeader.STRUCT.unpack_from
    window = _Window(image)
    for i in range(h.nb_snapshots):
        table_length = L.align_up(table_length, 8)
        offset = L.align_up(offset, 8)
        entry_offset = offset
        (l1_table_offset, l1_size, id_str_size, name_size, _date_sec, _date_nsec, _vm_clock,
         _vm_state, extra_data_size) = unpack(window.read(offset, fixed_size))
        offset += fixed_size
        if extra_data_size > L.QCOW_MAX_SNAPSHOT_EXTRA_DATA:
            raise Qcow2Error(
                f"too much extra metadata in snapshot table entry {i} "
                f"({extra_data_size} > {L.QCOW_MAX_SNAPSHOT_EXTRA_DATA} bytes): "
                "qemu-img check fails on this image",
                structure=f"snapshot table entry {i}", offset=entry_offset + 36,
                value=extra_data_size, kind=OUT_OF_BOUNDS, filename=image.filename)
        offset += extra_data_size
        id_raw = window.read(offset, id_str_size)
        offset += id_str_size
        name_raw = window.read(offset, name_size)
        offset += name_size
        table_length += fixed_size + extra_data_size + id_str_size + name_size
        if table_length > L.QCOW_MAX_SNAPSHOTS_SIZE or offset - start > INT_MAX:
            raise Qcow2Error(
                "snapshot table is too big (over 64 MiB): qemu-img check fails on this image",
                structure="snapshot table", offset=start, value=table_length,
                kind=OUT_OF_BOUNDS, filename=image.filename)
        entries.append(_SnapshotEntry(
            i, entry_offset, l1_table_offset, l1_size, extra_data_size,
            c_string_text(id_raw), c_string_text(name_raw)))
    return entries, (offset - start if entries else 0)


class _Window:
    """Sequential reads of a table through one buffer (zeros past EOF, as bdrv_pread): the
    65536 entries a header may claim cost a few reads, not three each."""

    CHUNK = 256 * 1024

    def __init__(self, image: Qcow2Image) -> None:
        self.file = image.file
        self.start = 0
        self.data = b""

    def read(self, offset: int, length: int) -> bytes:
        at = offset - self.start
        if at < 0 or at + length > len(self.data):
            self.start = offset
            self.data = self.file.read_zero_padded(offset, max(length, self.CHUNK),
                                                   "snapshot table")
            at = 0
        return self.data[at:at + length]


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

    def decode(self, data: bytes) -> U64:
        """Every refcount of one block (widths below 8 bits packed LSB first)."""
        bits = self.refcount_bits
        if bits >= 8:
            return np.frombuffer(data, dtype=f">u{bits // 8}").astype(np.uint64)
        raw = np.frombuffer(data, dtype=np.uint8)
        shifts = np.arange(0, 8, bits, dtype=np.uint8)
        values = (raw[:, None] >> shifts) & np.uint8((1 << bits) - 1)
        return values.reshape(-1).astype(np.uint64)

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
        values = self.decode(self.file.read_zero_padded(offset, self.cluster_size,
                                                        f"refcount block {index}"))
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
        """Refcounts of many clusters and which of them could be read."""
        values = np.zeros(len(clusters), dtype=np.uint64)
        valid = np.ones(len(clusters), dtype=bool)
        if not len(clusters):
            return values, valid
        tables = clusters >> _u64(self.block_bits)
        within = clusters & _u64(self.per_block - 1)
        if len(tables) > 1 and not bool(np.all(tables[1:] >= tables[:-1])):
            order = np.argsort(tables, kind="stable")
        else:
            order = None
        sorted_tables = tables if order is None else tables[order]
        bounds = np.flatnonzero(sorted_tables[1:] != sorted_tables[:-1]) + 1
        starts = np.concatenate(([0], bounds))
        ends = np.concatenate((bounds, [len(sorted_tables)]))
        for lo, hi in zip(starts.tolist(), ends.tolist()):
            index = int(sorted_tables[lo])
            where = slice(lo, hi) if order is None else order[lo:hi]
            block = self.block(index)
            if block is None:
                valid[where] = False
            else:
                values[where] = block[within[where]]
        return values, valid


class _Checker:
    """State of one check: qemu's BdrvCheckResult plus the in-memory refcount table."""

    def __init__(self, image: Qcow2Image, max_findings: int) -> None:
        self.image = image
        h = image.header
        self.h = h
        self.cs = h.cluster_size
        self.cb = h.cluster_bits
        self.file_len = image.file.length
        self.nb_clusters = -(-self.file_len // self.cs)
        # qcow2_inc_refcounts_imrt() may grow the array by one cluster (a region ending less
        # than a cluster past EOF); nothing can reach further (see _add_regions).
        self.counts = np.zeros(self.nb_clusters + 1, dtype=np.uint32)
        self.imrt_size = self.nb_clusters
        self.refcount_max = (1 << h.refcount_bits) - 1
        self.data_file = h.has_data_file
        self.extended = h.extended_l2
        self.l2_entries = h.l2_entries
        self.words_per_entry = 2 if self.extended else 1
        self.csize_shift = 62 - (self.cb - 8)
        self.csize_mask = (1 << (self.cb - 8)) - 1
        self.cluster_offset_mask = (1 << self.csize_shift) - 1
        self.ondisk = OnDiskRefcounts(image)
        self.corruptions = 0
        self.leaks = 0
        self.check_errors = 0
        self.allocated = 0
        self.fragmented = 0
        self.compressed = 0
        self.max_findings = max_findings
        self.structure = _Findings(max_findings)  # calculate_refcounts() order
        self.compare = _Findings(max_findings)  # compare_refcounts()
        self.copied = _Findings(max_findings)  # check_oflag_copied()

    # -- qcow2_inc_refcounts_imrt -----------------------------------------------------------
    def _add_indices(self, idx: U64) -> None:
        if not len(idx):
            return
        lo = int(idx.min())
        hi = int(idx.max())
        self.imrt_size = max(self.imrt_size, hi + 1)
        if hi - lo < 4 * len(idx) + 65536:
            self.counts[lo:hi + 1] += np.bincount(
                (idx - _u64(lo)).astype(np.intp), minlength=hi - lo + 1).astype(np.uint32)
        else:
            np.add.at(self.counts, idx.astype(np.intp), np.uint32(1))

    def _add_regions(self, starts: U64, sizes: U64) -> Bools:
        """Count every cluster each region [start, start+size) overlaps; returns the mask of
        regions refused because they end a whole cluster or more past EOF (one corruption
        each, not counted). Sizes must be > 0 and at most 3 clusters."""
        ends = starts + sizes
        past = ends >= _u64(self.file_len + self.cs)
        npast = int(np.count_nonzero(past))
        if npast:
            self.corruptions += npast
            keep = ~past
            starts, ends = starts[keep], ends[keep]
        first = starts >> _u64(self.cb)
        last = (ends - _u64(1)) >> _u64(self.cb)
        span = last - first
        parts = [first]
        max_span = int(span.max()) if len(span) else 0
        for k in range(1, max_span + 1):
            parts.append(first[span >= _u64(k)] + _u64(k))
        self._add_indices(np.concatenate(parts) if len(parts) > 1 else first)
        return past

    def inc_region(self, offset: int, size: int, what: str) -> None:
        """qcow2_inc_refcounts_imrt() for one region of any length."""
        if size <= 0:
            return
        if offset + size - self.file_len >= self.cs:
            self.corruptions += 1
            self.structure.add(self._past_eof(offset, size, what))
            return
        first = offset >> self.cb
        last = (offset + size - 1) >> self.cb
        self.imrt_size = max(self.imrt_size, last + 1)
        self.counts[first:last + 1] += np.uint32(1)

    def _past_eof(self, offset: int, size: int, what: str) -> Finding:
        return Finding(
            "reference-past-eof", SEVERITY_CORRUPTION,
            f"{what} at 0x{offset:x} ({size} bytes) ends a cluster or more past the end of "
            f"the file (length 0x{self.file_len:x})", what, host_offset=offset,
            cluster_index=offset >> self.cb, found=size, advice=ADVICE_METADATA)

    # -- check_refcounts_l1 -----------------------------------------------------------------
    def check_l1(self, l1_offset: int, l1_size: int, *, active: bool, label: str) -> None:
        if not l1_size:
            return
        self.inc_region(l1_offset, l1_size * L.L1E_SIZE, f"{label}L1 table")
        # Entries past EOF read as zeros (bdrv_pread on a file): only the part in the file is
        # read, so a claimed 32 MiB table past the end costs nothing.
        in_file = max(0, min(l1_size * L.L1E_SIZE, self.file_len - l1_offset)) // L.L1E_SIZE
        raw = (self.image.file.read(l1_offset, in_file * L.L1E_SIZE, f"{label}L1 table")
               if in_file else b"")
        l1 = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
        used = np.flatnonzero(l1)
        if not len(used):
            return
        entries = l1[used]
        reserved = (entries & _u64(L.L1E_RESERVED_MASK)) != 0
        l2_offsets = entries & _u64(L.L1E_OFFSET_MASK)
        unaligned = (l2_offsets & _u64(self.cs - 1)) != 0
        # Active L1 COPIED flags (check_oflag_copied, first half): L2 offset 0 is skipped and
        # an unreadable refcount skips the whole L2 table.
        copied_ok = np.zeros(len(used), dtype=bool)
        if active:
            has_offset = l2_offsets != 0
            rc, readable = self.ondisk.lookup(l2_offsets >> _u64(self.cb))
            copied_ok = has_offset & readable
            flag = (entries >> _u64(63)) != 0
            bad = copied_ok & ((rc == 1) != flag)
            for i in np.flatnonzero(bad).tolist():
                self.corruptions += 1
                self.copied.add(Finding(
                    "copied-flag", SEVERITY_CORRUPTION,
                    f"OFLAG_COPIED L2 cluster: l1_index={int(used[i])} "
                    f"l1_entry={int(entries[i]):x} refcount={int(rc[i])}",
                    f"{label}L1[{int(used[i])}]", host_offset=int(l2_offsets[i]),
                    cluster_index=int(l2_offsets[i]) >> self.cb, expected=1 if flag[i] else None,
                    found=int(rc[i]), advice=ADVICE_REFCOUNT))
        for lo in range(0, len(used), L1_CHUNK_ENTRIES):
            hi = min(len(used), lo + L1_CHUNK_ENTRIES)
            # Per L1 entry in qemu's order: reserved bits, the L2 table's own reference,
            # alignment, then its entries. Findings are built only while there is room; the
            # rest are counted, so the time follows the tables, not the L1 size.
            flagged = np.flatnonzero(reserved[lo:hi] | unaligned[lo:hi]) + lo
            shown = flagged[: self.structure.room]
            for i in shown.tolist():
                self._l1_entry_findings(label, int(used[i]), int(entries[i]),
                                        bool(reserved[i]), bool(unaligned[i]))
            rest = flagged[len(shown):]
            hidden = int(np.count_nonzero(reserved[rest])) + int(np.count_nonzero(unaligned[rest]))
            self.corruptions += hidden
            self.structure.count(hidden)
            table_offsets = l2_offsets[lo:hi]
            past = self._add_regions(table_offsets, np.full(hi - lo, self.cs, dtype=np.uint64))
            past_at = np.flatnonzero(past)
            for i in past_at[: self.structure.room].tolist():
                off = int(table_offsets[i])
                self.structure.add(Finding(
                    "reference-past-eof", SEVERITY_CORRUPTION,
                    f"L2 table at 0x{off:x} lies a cluster or more past the end of the file "
                    f"(length 0x{self.file_len:x})", f"{label}L1[{int(used[lo + i])}]",
                    host_offset=off, cluster_index=off >> self.cb, advice=ADVICE_METADATA))
            self.structure.count(max(0, len(past_at) - self.structure.room))
            # An L2 table at or past EOF reads as zeros (as qemu's bdrv_pread on a file):
            # no entries to check, so it is not read at all.
            inside = np.flatnonzero(table_offsets < _u64(self.file_len)) + lo
            self._walk_l2_tables(l2_offsets, used, inside, copied_ok, active, label)

    def _walk_l2_tables(self, l2_offsets: U64, used: npt.NDArray[np.intp],
                        inside: npt.NDArray[np.intp], copied_ok: Bools, active: bool,
                        label: str) -> None:
        """check_refcounts_l2() for the L1 entries at positions `inside`, in batches.

        qemu walks a table again for every L1 entry that names it, with the same result each
        time. A hostile L1 can name one table millions of times, so a table named k times is
        walked once and everything it added (references, counters, findings) is counted k
        times: the time follows the tables that exist, not the L1 size."""
        per_batch = max(1, L2_BATCH_ENTRIES // self.l2_entries)

        def walk(positions: npt.NDArray[np.intp]) -> None:
            for b in range(0, len(positions), per_batch):
                sel = positions[b:b + per_batch]
                self._check_l2_batch(l2_offsets[sel], used[sel], copied_ok[sel], active, label)

        _, first, times = np.unique(l2_offsets[inside], return_index=True, return_counts=True)
        if len(first) == len(inside):  # every table named once: the normal case
            walk(inside)
            return
        walk(inside[np.sort(first[times == 1])])
        for k in np.unique(times[times > 1]).tolist():
            self._repeated(int(k), partial(walk, inside[np.sort(first[times == k])]))

    def _repeated(self, times: int, walk: Callable[[], None]) -> None:
        """Run `walk` once, counting all it adds `times` times (findings beyond the first
        walk's are counted, not listed)."""
        scalars = ("corruptions", "allocated", "fragmented", "compressed", "check_errors")
        before = [getattr(self, name) for name in scalars]
        listed = [self.structure.total, self.copied.total]
        saved = self.counts
        self.counts = np.zeros_like(saved)
        try:
            walk()
            added = self.counts
        finally:
            self.counts = saved
        total = saved.astype(np.uint64) + added.astype(np.uint64) * _u64(times)
        self.counts = np.minimum(total, _u64(COUNT_MAX)).astype(np.uint32)
        for name, old in zip(scalars, before):
            setattr(self, name, old + (getattr(self, name) - old) * times)
        self.structure.count((self.structure.total - listed[0]) * (times - 1))
        self.copied.count((self.copied.total - listed[1]) * (times - 1))

    def _l1_entry_findings(self, label: str, index: int, entry: int, reserved: bool,
                           unaligned: bool) -> None:
        l2_offset = entry & L.L1E_OFFSET_MASK
        if reserved:
            self.corruptions += 1
            self.structure.add(Finding(
                "l1-reserved-bits", SEVERITY_CORRUPTION,
                f"L1 entry with reserved bits set: {entry:x}", f"{label}L1[{index}]",
                host_offset=l2_offset, found=entry & L.L1E_RESERVED_MASK,
                advice=ADVICE_METADATA))
        if unaligned:
            self.corruptions += 1
            self.structure.add(Finding(
                "unaligned-l2-offset", SEVERITY_CORRUPTION,
                f"l2_offset={l2_offset:x}: table is not cluster aligned; L1 entry corrupted",
                f"{label}L1[{index}]", host_offset=l2_offset, advice=ADVICE_METADATA))

    def _read_tables(self, offsets: U64) -> U64:
        """Every L2 table of a batch, runs of adjacent tables read at once (zeros past EOF)."""
        size = self.cs
        chunks = []
        values = offsets.tolist()
        i = 0
        while i < len(values):
            j = i + 1
            while j < len(values) and values[j] == values[j - 1] + size:
                j += 1
            chunks.append(self.image.file.read_zero_padded(values[i], (j - i) * size,
                                                           "L2 table"))
            i = j
        raw = b"".join(chunks) if len(chunks) > 1 else chunks[0]
        return np.frombuffer(raw, dtype=">u8").astype(np.uint64)

    # -- check_refcounts_l2 (+ the L2 half of check_oflag_copied) ----------------------------
    def _check_l2_batch(self, table_offsets: U64, l1_indices: npt.NDArray[np.intp],
                        copied_ok: Bools, active: bool, label: str) -> None:
        cs = self.cs
        n = self.l2_entries
        words = self._read_tables(table_offsets)
        if self.extended:
            e = words[0::2]
            bitmap: Optional[U64] = words[1::2]
        else:
            e = words
            bitmap = None
        odd_bits = L.QCOW_OFLAG_COMPRESSED | L.L2E_STD_RESERVED_MASK
        if not self.extended:
            odd_bits |= L.QCOW_OFLAG_ZERO
        if bitmap is None and not self.data_file and not bool(
                np.any(e & _u64(odd_bits | (cs - 1)))):
            self._fast_l2_batch(e, copied_ok, active, table_offsets, l1_indices, label)
            return
        off = e & _u64(L.L2E_OFFSET_MASK)
        simple = not bool(np.any(e & _u64(odd_bits)))
        if simple:
            comp = reserved = zero_alloc = None
            plain = None
        else:
            comp = (e & _u64(L.QCOW_OFLAG_COMPRESSED)) != 0
            noncomp = ~comp
            reserved = noncomp & ((e & _u64(L.L2E_STD_RESERVED_MASK)) != 0)
            if self.extended:
                zero = np.zeros(len(e), dtype=bool)
            else:
                zero = noncomp & ((e & _u64(L.QCOW_OFLAG_ZERO)) != 0)
            zero_alloc = zero & (off != 0)
            plain = noncomp & ~zero
        # qcow2_get_cluster_type(): offset 0 is unallocated, except COPIED with a data file.
        if plain is None:
            alloc = off != 0
        else:
            alloc = plain & (off != 0)
        if self.data_file:
            offset0_normal = (off == 0) & ((e >> _u64(63)) != 0)
            if plain is not None:
                offset0_normal &= plain
            alloc = alloc | offset0_normal
        if zero_alloc is not None:
            alloc = alloc | zero_alloc
        unalloc_bm = sub_bad = None
        if bitmap is not None:
            if comp is None:
                unalloc = ~alloc
            else:
                unalloc = ~alloc & ~comp
            unalloc_bm = unalloc & ((bitmap & _u64(0xFFFFFFFF)) != 0)
            sub_bad = alloc & (((bitmap >> _u64(32)) & bitmap) != 0)

        # Compressed clusters.
        comp_copied = comp_skip = None
        comp_counted_pos = np.empty(0, dtype=np.intp)
        comp_past = np.empty(0, dtype=bool)
        if comp is not None and bool(comp.any()):
            comp_copied = comp & ((e >> _u64(63)) != 0)
            if self.data_file:
                comp_skip = comp.copy()
            elif bitmap is not None:
                comp_skip = comp & (bitmap != 0)
            else:
                comp_skip = np.zeros(len(e), dtype=bool)
            comp_counted_pos = np.flatnonzero(comp & ~comp_skip)
            ce = e[comp_counted_pos]
            coffset = ce & _u64(self.cluster_offset_mask)
            nsec = ((ce >> _u64(self.csize_shift)) & _u64(self.csize_mask)) + _u64(1)
            csize = nsec * _u64(COMPRESSED_SECTOR_SIZE) - (coffset & _u64(511))
            comp_past = self._add_regions(coffset, csize)
            if active:
                ncomp = len(comp_counted_pos)
                self.allocated += ncomp
                self.compressed += ncomp
                self.fragmented += ncomp  # compressed clusters are fragmented by nature

        # Normal and zero-allocated clusters.
        alloc_pos = np.flatnonzero(alloc)
        alloc_off = off[alloc_pos]
        unaligned_pos = alloc_pos[(alloc_off & _u64(cs - 1)) != 0]
        data_past = np.empty(0, dtype=bool)
        if active:
            self.allocated += len(alloc_pos)
            if len(alloc_pos) > 1:
                rows = alloc_pos // n
                same_table = rows[1:] == rows[:-1]
                jump = alloc_off[1:] != alloc_off[:-1] + _u64(cs)
                self.fragmented += int(np.count_nonzero(same_table & jump))
        if not self.data_file and len(alloc_pos):
            data_past = self._add_regions(alloc_off, np.full(len(alloc_pos), cs,
                                                             dtype=np.uint64))

        counted = [
            (reserved, "reserved"), (comp_copied, "comp_copied"), (comp_skip, "comp_skip"),
            (sub_bad, "sub_bad"), (unalloc_bm, "unalloc_bm"),
        ]
        extra_corruptions = len(unaligned_pos)
        for mask, _ in counted:
            if mask is not None:
                extra_corruptions += int(np.count_nonzero(mask))
        self.corruptions += extra_corruptions
        problems = extra_corruptions + int(np.count_nonzero(comp_past)) + int(
            np.count_nonzero(data_past))
        if problems:
            self._l2_findings(e, bitmap, table_offsets, l1_indices, label, reserved,
                              comp_copied, comp_skip, sub_bad, unalloc_bm, unaligned_pos,
                              comp_counted_pos[comp_past], alloc_pos[data_past], problems)

        # check_oflag_copied(): normal and zero-allocated entries of the active L1.
        if active and len(alloc_pos):
            self._copied_entries(e, alloc_pos, off, copied_ok, table_offsets, l1_indices,
                                 label)

    def _copied_entries(self, e: U64, alloc_pos: npt.NDArray[np.intp], off: U64,
                        copied_ok: Bools, table_offsets: U64,
                        l1_indices: npt.NDArray[np.intp], label: str) -> None:
        """The L2 half of check_oflag_copied(): entries of tables whose own refcount could be
        read; (on-disk refcount == 1) must equal the COPIED bit; an unreadable refcount skips
        the entry; the refcount is taken as 1 with an external data file."""
        n = self.l2_entries
        check_pos = alloc_pos[copied_ok[alloc_pos // n]]
        if not len(check_pos):
            return
        flag = (e[check_pos] >> _u64(63)) != 0
        if self.data_file:
            rc = np.ones(len(check_pos), dtype=np.uint64)
            readable = np.ones(len(check_pos), dtype=bool)
        else:
            rc, readable = self.ondisk.lookup(off[check_pos] >> _u64(self.cb))
        bad = readable & ((rc == 1) != flag)
        nbad = int(np.count_nonzero(bad))
        if not nbad:
            return
        self.corruptions += nbad
        bad_idx = np.flatnonzero(bad)
        room = self.copied.room
        self.copied.count(max(0, nbad - room))
        for k in bad_idx[:room].tolist():
            pos = int(check_pos[k])
            row, j = divmod(pos, n)
            entry = int(e[pos])
            self.copied.add(Finding(
                "copied-flag", SEVERITY_CORRUPTION,
                f"OFLAG_COPIED data cluster: l2_entry={entry:x} refcount={int(rc[k])}",
                self._l2_location(label, table_offsets, l1_indices, row, j),
                host_offset=entry & L.L2E_OFFSET_MASK,
                cluster_index=(entry & L.L2E_OFFSET_MASK) >> self.cb,
                found=int(rc[k]), advice=ADVICE_REFCOUNT))

    def _fast_l2_batch(self, e: U64, copied_ok: Bools, active: bool, table_offsets: U64,
                       l1_indices: npt.NDArray[np.intp], label: str) -> None:
        """The common case, fewer passes: every entry is unallocated or a normal cluster at
        an aligned offset (no compressed, zero, reserved or unaligned entry, no data file, no
        extended L2). Same figures as the general path."""
        n = self.l2_entries
        cs = self.cs
        off = e & _u64(L.L2E_OFFSET_MASK)
        nalloc = int(np.count_nonzero(off))
        if not nalloc:
            return
        whole = nalloc == len(off)
        alloc_pos = None if whole else np.flatnonzero(off)
        alloc_off = off if alloc_pos is None else off[alloc_pos]
        idx = alloc_off >> _u64(self.cb)
        steps = np.diff(idx) if len(idx) > 1 else np.empty(0, dtype=np.uint64)
        jumps = steps != _u64(1)
        if active:
            self.allocated += nalloc
            # `next` restarts with each L2 table: ignore steps across a table boundary.
            if alloc_pos is None:
                self.fragmented += int(np.count_nonzero(jumps)) - int(
                    np.count_nonzero(jumps[n - 1::n]))
            else:
                rows = alloc_pos // n
                self.fragmented += int(np.count_nonzero(jumps & (rows[1:] == rows[:-1])))
        # Runs of adjacent clusters: counted (and COPIED-checked) as slices, not per entry.
        breaks = np.flatnonzero(jumps)
        if len(breaks) > MAX_RUNS:
            self._add_regions(alloc_off, np.full(len(alloc_off), cs, dtype=np.uint64))
            runs: Optional[list[tuple[int, int]]] = None
        else:
            run_starts = [0, *(breaks + 1).tolist()]
            run_ends = [*breaks.tolist(), len(idx) - 1]
            runs = [(int(idx[i]), int(idx[j]) + 1) for i, j in zip(run_starts, run_ends)]
            if max(end for _, end in runs) << self.cb > self.file_len:
                self._add_regions(alloc_off, np.full(len(alloc_off), cs, dtype=np.uint64))
            else:
                for first, end in runs:
                    self.counts[first:end] += np.uint32(1)
                self.imrt_size = max(self.imrt_size, max(end for _, end in runs))
        if not active:
            return
        # check_oflag_copied() for these entries: COPIED set everywhere and every on-disk
        # refcount of the runs equal to 1 means no mismatch.
        flags = e if alloc_pos is None else e[alloc_pos]
        if (runs is not None and bool(copied_ok.all())
                and bool(np.all(flags >= _u64(L.QCOW_OFLAG_COPIED)))
                and all(self.ondisk.range_all_one(first, end) for first, end in runs)):
            return
        pos = np.arange(len(e), dtype=np.intp) if alloc_pos is None else alloc_pos
        self._copied_entries(e, pos, off, copied_ok, table_offsets, l1_indices, label)

    def _l2_location(self, label: str, table_offsets: U64, l1_indices: npt.NDArray[np.intp],
                     row: int, j: int) -> str:
        return (f"{label}L2 table at 0x{int(table_offsets[row]):x} entry {j} "
                f"(L1[{int(l1_indices[row])}])")

    def _l2_findings(self, e: U64, bitmap: Optional[U64], table_offsets: U64,
                     l1_indices: npt.NDArray[np.intp], label: str, reserved: Optional[Bools],
                     comp_copied: Optional[Bools], comp_skip: Optional[Bools],
                     sub_bad: Optional[Bools], unalloc_bm: Optional[Bools],
                     unaligned_pos: npt.NDArray[np.intp],
                     comp_past_pos: npt.NDArray[np.intp], data_past_pos: npt.NDArray[np.intp],
                     problems: int) -> None:
        """Located findings of one batch, in entry order and qemu's order within an entry."""
        room = self.structure.room
        if not room:
            self.structure.count(problems)
            return
        marks: dict[int, list[str]] = {}

        def mark(positions: npt.NDArray[np.intp], kind: str) -> None:
            for p in positions[:room * 8].tolist():
                marks.setdefault(p, []).append(kind)

        if reserved is not None:
            mark(np.flatnonzero(reserved), "reserved")
        if comp_copied is not None:
            mark(np.flatnonzero(comp_copied), "comp_copied")
        if comp_skip is not None:
            mark(np.flatnonzero(comp_skip), "comp_skip")
        mark(comp_past_pos, "comp_past")
        if sub_bad is not None:
            mark(np.flatnonzero(sub_bad), "sub_bad")
        mark(unaligned_pos, "unaligned")
        mark(data_past_pos, "data_past")
        if unalloc_bm is not None:
            mark(np.flatnonzero(unalloc_bm), "unalloc_bm")
        n = self.l2_entries
        built = 0
        for pos in sorted(marks):
            row, j = divmod(pos, n)
            entry = int(e[pos])
            where = self._l2_location(label, table_offsets, l1_indices, row, j)
            for kind in marks[pos]:
                self.structure.add(self._l2_finding(kind, entry, bitmap, pos, where))
                built += 1
        self.structure.count(problems - built)

    def _l2_finding(self, kind: str, entry: int, bitmap: Optional[U64], pos: int,
                    where: str) -> Finding:
        off = entry & L.L2E_OFFSET_MASK
        bm = int(bitmap[pos]) if bitmap is not None else 0
        c = SEVERITY_CORRUPTION
        if kind == "reserved":
            return Finding("l2-reserved-bits", c, f"L2 entry with reserved bits set: {entry:x}",
                           where, host_offset=off, found=entry & L.L2E_STD_RESERVED_MASK,
                           advice=ADVICE_METADATA)
        if kind == "comp_copied":
            coff = entry & self.cluster_offset_mask
            return Finding("compressed-copied", c,
                           f"coffset=0x{coff:x}: copied flag must never be set for compressed "
                           "clusters", where, host_offset=coff, advice=ADVICE_METADATA)
        if kind == "comp_skip":
            if self.data_file:
                text = f"compressed cluster with data file, entry=0x{entry:x}"
            else:
                text = (f"compressed cluster with non-zero subcluster allocation bitmap, "
                        f"entry=0x{entry:x} bitmap=0x{bm:x}")
            return Finding("compressed-invalid", c, text, where,
                           host_offset=entry & self.cluster_offset_mask, found=bm or None,
                           advice=ADVICE_METADATA)
        if kind == "comp_past":
            coff = entry & self.cluster_offset_mask
            return Finding("reference-past-eof", c,
                           f"compressed data at 0x{coff:x} lies a cluster or more past the end "
                           f"of the file (length 0x{self.file_len:x})", where,
                           host_offset=coff, cluster_index=coff >> self.cb,
                           advice=ADVICE_METADATA)
        if kind == "sub_bad":
            return Finding("subcluster-bitmap", c,
                           f"offset={off:x}: allocated cluster has corrupted subcluster "
                           f"allocation bitmap 0x{bm:016x} (subclusters both allocated and "
                           "zero)", where, host_offset=off, found=bm, advice=ADVICE_METADATA)
        if kind == "unaligned":
            if self.extended:
                has_data = bool(bm & 0xFFFFFFFF)
            else:
                has_data = not entry & L.QCOW_OFLAG_ZERO
            what = "Data cluster" if has_data else "Preallocated cluster"
            return Finding("unaligned-data-offset", c,
                           f"offset={off:x}: {what} is not properly aligned; L2 entry "
                           "corrupted", where, host_offset=off, advice=ADVICE_METADATA)
        if kind == "data_past":
            return Finding("reference-past-eof", c,
                           f"data cluster at 0x{off:x} lies a cluster or more past the end of "
                           f"the file (length 0x{self.file_len:x})", where, host_offset=off,
                           cluster_index=off >> self.cb, advice=ADVICE_METADATA)
        return Finding("unallocated-subcluster-bitmap", c,
                       f"unallocated cluster has non-zero subcluster allocation map 0x{bm:016x}",
                       where, found=bm, advice=ADVICE_METADATA)

    # -- calculate_refcounts ----------------------------------------------------------------
    def calculate(self, snapshots: list[_SnapshotEntry], snapshots_size: int) -> None:
        h = self.h
        self.inc_region(0, self.cs, "header")
        self.check_l1(h.l1_table_offset, h.l1_size, active=True, label="")
        if self.data_file and snapshots:
            self.corruptions += 1
            self.structure.add(Finding(
                "snapshots-with-data-file", SEVERITY_CORRUPTION,
                f"{len(snapshots)} snapshots in image with data file", "snapshot table",
                host_offset=h.snapshots_offset, found=len(snapshots), advice=ADVICE_METADATA))
        # Snapshots sharing one L1 table (same offset and size) add the same each time:
        # walked once, counted for each (a header may claim 65536 of them).
        tables: dict[tuple[int, int], list[_SnapshotEntry]] = {}
        for sn in snapshots:
            where = f"{sn.label} ({sn.name})"
            bad = (sn.l1_table_offset % self.cs != 0
                   or sn.l1_size > L.QCOW_MAX_L1_SIZE // L.L1E_SIZE)
            if bad and not self.structure.room:
                self.corruptions += 1
                self.structure.count(1)
                continue
            if sn.l1_table_offset % self.cs:
                self.corruptions += 1
                self.structure.add(Finding(
                    "snapshot-l1-unaligned", SEVERITY_CORRUPTION,
                    f"snapshot {sn.id_str} ({sn.name}) l1_offset=0x{sn.l1_table_offset:x}: L1 "
                    "table is not cluster aligned; snapshot table entry corrupted", where,
                    host_offset=sn.l1_table_offset, advice=ADVICE_METADATA))
                continue
            if sn.l1_size > L.QCOW_MAX_L1_SIZE // L.L1E_SIZE:
                self.corruptions += 1
                self.structure.add(Finding(
                    "snapshot-l1-too-large", SEVERITY_CORRUPTION,
                    f"snapshot {sn.id_str} ({sn.name}) l1_size=0x{sn.l1_size:x}: L1 table is "
                    "too large; snapshot table entry corrupted", where,
                    host_offset=sn.offset, found=sn.l1_size, advice=ADVICE_METADATA))
                continue
            tables.setdefault((sn.l1_table_offset, sn.l1_size), []).append(sn)
        for (l1_offset, l1_size), sharing in tables.items():
            walk = partial(self.check_l1, l1_offset, l1_size, active=False,
                           label=f"{sharing[0].label}: ")
            if len(sharing) == 1:
                walk()
            else:
                self._repeated(len(sharing), walk)
        self.inc_region(h.snapshots_offset, snapshots_size, "snapshot table")
        self.inc_region(h.refcount_table_offset, h.refcount_table_clusters * self.cs,
                        "refcount table")
        crypto = self.image.extension(L.QCOW2_EXT_MAGIC_CRYPTO_HEADER)
        if crypto is not None:
            pointer = L.CryptoHeaderExtension.from_bytes(crypto.data)
            self.inc_region(pointer.offset, pointer.length, "LUKS header")
        self.check_bitmaps()
        self.check_refblocks()

    def check_bitmaps(self) -> None:
        """qcow2_check_bitmaps_refcounts(): only when the autoclear bit makes them valid. A
        directory or table qemu cannot load makes its check fail: raised as Qcow2Error."""
        ext = self.image.bitmaps_extension
        if ext is None or ext.nb_bitmaps == 0:
            return
        self.inc_region(ext.bitmap_directory_offset, ext.bitmap_directory_size,
                        "bitmap directory")
        for bm in self.image.bitmaps():
            if bm.extra_data_size or bm.bitmap_table_size == 0:
                raise Qcow2Error(
                    "bitmap extra data is not supported / empty bitmap table: qemu-img check "
                    "fails on this image", structure=f"bitmap '{bm.name}'", offset=bm.offset,
                    filename=self.image.filename)
            where = f"bitmap '{bm.name}'"
            size = bm.bitmap_table_size * BME_TABLE_ENTRY_SIZE
            self.inc_region(bm.bitmap_table_offset, size, f"{where} bitmap table")
            raw = self.image.file.read_zero_padded(bm.bitmap_table_offset, size,
                                                   f"{where} bitmap table")
            table = np.frombuffer(raw, dtype=">u8").astype(np.uint64)
            offsets = table & _u64(L.BME_TABLE_ENTRY_OFFSET_MASK)
            bad = ((table & _u64(BME_TABLE_ENTRY_RESERVED_MASK)) != 0) | (
                (offsets != 0) & (((table & _u64(1)) != 0) | ((offsets % _u64(self.cs)) != 0)))
            if bool(bad.any()):
                i = int(np.flatnonzero(bad)[0])
                raise Qcow2Error(
                    f"bitmap table entry {i} is invalid (0x{int(table[i]):x}): qemu-img check "
                    "fails on this image", structure=f"{where} bitmap table",
                    offset=bm.bitmap_table_offset + 8 * i, filename=self.image.filename)
            data = offsets[offsets != 0]
            if len(data):
                past = self._add_regions(data, np.full(len(data), self.cs, dtype=np.uint64))
                for off in data[past][: self.structure.room].tolist():
                    self.structure.add(Finding(
                        "reference-past-eof", SEVERITY_CORRUPTION,
                        f"bitmap data cluster at 0x{off:x} lies a cluster or more past the end "
                        "of the file", where, host_offset=off, advice=ADVICE_METADATA))
                self.structure.count(max(0, int(np.count_nonzero(past)) - self.structure.room))

    def check_refblocks(self) -> None:
        """check_refblocks(): each refcount block must end up with a refcount of exactly 1.

        qemu walks the table entry by entry; a table can hold a million entries that all name
        the same few clusters, so the walk is vectorised: the value an entry sees is the count
        before the walk plus one per earlier entry naming the same cluster (its rank), plus its
        own reference. Findings are then built in entry order for the first `room` problems."""
        table = self.ondisk.table
        index = np.flatnonzero(table)
        if not len(index):
            return
        raw = table[index]
        offset = raw & _u64(L.REFT_OFFSET_MASK)
        reserved = (raw & _u64(REFT_RESERVED_MASK)) != 0
        unaligned = ~reserved & ((offset & _u64(self.cs - 1)) != 0)
        cluster = offset >> _u64(self.cb)
        outside = ~reserved & ~unaligned & (cluster >= _u64(self.imrt_size))
        usable = ~(reserved | unaligned | outside)
        # inc_region() refuses a block that starts at or past EOF (it can only be the one
        # cluster the in-memory table grew by): a corruption, and no reference counted.
        past = usable & (offset >= _u64(self.file_len))
        counted = usable & ~past
        value = np.zeros(len(index), dtype=np.int64)
        pos = np.flatnonzero(counted)
        if len(pos):
            clusters = cluster[pos].astype(np.intp)
            order = np.argsort(clusters, kind="stable")
            ordered = clusters[order]
            first = np.concatenate(([True], ordered[1:] != ordered[:-1]))
            group_start = np.maximum.accumulate(np.where(first, np.arange(len(order)), 0))
            rank = np.empty(len(order), dtype=np.int64)
            rank[order] = np.arange(len(order)) - group_start
            value[pos] = self.counts[clusters].astype(np.int64) + rank + 1
            self._add_indices(cluster[pos])
        past_pos = np.flatnonzero(past)
        if len(past_pos):
            value[past_pos] = self.counts[cluster[past_pos].astype(np.intp)].astype(np.int64)
        np.minimum(value, min(self.refcount_max, 2**62), out=value)
        wrong = usable & (value != 1)
        problems = np.flatnonzero(reserved | unaligned | outside | past | wrong)
        # A block past EOF is two corruptions: the refused reference, then its refcount.
        total = len(problems) + int(np.count_nonzero(past & wrong))
        self.corruptions += total
        built = 0
        for k in problems[: self.structure.room].tolist():
            i = int(index[k])
            raw_k = int(raw[k])
            off = raw_k & L.REFT_OFFSET_MASK
            where = f"refcount table entry {i}"
            if reserved[k]:
                finding = Finding(
                    "refcount-table-reserved-bits", SEVERITY_CORRUPTION,
                    f"refcount table entry {i} has reserved bits set (0x{raw_k:x})", where,
                    host_offset=off, found=raw_k & REFT_RESERVED_MASK, advice=ADVICE_UNREADABLE)
            elif unaligned[k]:
                finding = Finding(
                    "unaligned-refcount-block", SEVERITY_CORRUPTION,
                    f"refcount block {i} at 0x{off:x} is not cluster aligned; refcount "
                    "table entry corrupted", where, host_offset=off, advice=ADVICE_UNREADABLE)
            elif outside[k]:
                finding = Finding(
                    "refcount-block-outside-image", SEVERITY_CORRUPTION,
                    f"refcount block {i} at 0x{off:x} is outside the image (length "
                    f"0x{self.file_len:x})", where, host_offset=off,
                    cluster_index=off >> self.cb, advice=ADVICE_UNREADABLE)
            else:
                if past[k]:
                    self.structure.add(self._past_eof(off, self.cs, f"refcount block {i}"))
                    built += 1
                    if not wrong[k]:
                        continue
                v = int(value[k])
                finding = Finding(
                    "refcount-block-refcount", SEVERITY_CORRUPTION,
                    f"refcount block {i} at 0x{off:x} refcount={v} (it must be referenced "
                    "exactly once; it overlaps other metadata or data)", where,
                    host_offset=off, cluster_index=off >> self.cb, expected=1, found=v,
                    advice=ADVICE_DATA)
            self.structure.add(finding)
            built += 1
        self.structure.count(max(0, total - built))

    def overflows(self) -> None:
        """Increments qemu refused at the maximum refcount: one corruption each."""
        if self.refcount_max >= COUNT_MAX:
            return
        limit = np.uint32(self.refcount_max)
        over = np.flatnonzero(self.counts > limit)
        if not len(over):
            return
        excess = self.counts[over].astype(np.int64) - int(limit)
        total = int(excess.sum())
        self.corruptions += total
        built = 0
        for k in over[: self.structure.room].tolist():
            n = int(self.counts[k]) - int(limit)
            self.structure.add(Finding(
                "refcount-overflow", SEVERITY_CORRUPTION,
                f"overflow cluster offset=0x{k << self.cb:x}: {n} reference(s) beyond the "
                f"maximum refcount {int(limit)} of {self.h.refcount_bits}-bit refcounts",
                f"cluster {k}", host_offset=k << self.cb, cluster_index=k,
                expected=int(self.counts[k]), found=int(limit), advice=ADVICE_OVERFLOW))
            built += 1
        self.structure.count(total - built)

    # -- compare_refcounts ------------------------------------------------------------------
    def compare_refcounts(self) -> int:
        """Returns the highest cluster whose on-disk or computed refcount is nonzero."""
        per_block = self.ondisk.per_block
        highest = 0
        size = self.imrt_size
        limit = min(self.refcount_max, int(COUNT_MAX))
        for t in range(-(-size // per_block)):
            lo = t * per_block
            hi = min(size, lo + per_block)
            block = self.ondisk.block(t)
            if block is None:
                self.check_errors += hi - lo
                self.compare.add(Finding(
                    "refcount-unreadable", SEVERITY_CHECK_ERROR,
                    f"can't get refcounts of clusters {lo}..{hi - 1}: refcount block offset "
                    f"0x{self.ondisk.block_offset(t):x} is not cluster aligned or beyond what "
                    "qemu can read",
                    f"refcount table entry {t}", host_offset=self.ondisk.block_offset(t),
                    cluster_index=lo, found=hi - lo, advice=ADVICE_UNREADABLE))
                continue
            computed = self.counts[lo:hi].astype(np.uint64)
            if limit < COUNT_MAX:
                np.minimum(computed, _u64(limit), out=computed)
            ondisk = block[: hi - lo]
            nonzero = np.flatnonzero((ondisk != 0) | (computed != 0))
            if len(nonzero):
                highest = lo + int(nonzero[-1])
            differ = np.flatnonzero(ondisk != computed)
            if not len(differ):
                continue
            od = ondisk[differ]
            cp = computed[differ]
            low = od < cp
            nlow = int(np.count_nonzero(low))
            self.corruptions += nlow
            self.leaks += len(differ) - nlow
            room = self.compare.room
            for k in range(min(room, len(differ))):
                cluster = lo + int(differ[k])
                disk, ref = int(od[k]), int(cp[k])
                if disk < ref:
                    finding = Finding(
                        "refcount-too-low", SEVERITY_CORRUPTION,
                        f"ERROR cluster {cluster} refcount={disk} reference={ref}",
                        f"cluster {cluster}", host_offset=cluster << self.cb,
                        cluster_index=cluster, expected=ref, found=disk,
                        advice=ADVICE_DATA if ref > 1 else ADVICE_REFCOUNT)
                else:
                    finding = Finding(
                        "leak", SEVERITY_LEAK,
                        f"Leaked cluster {cluster} refcount={disk} reference={ref}",
                        f"cluster {cluster}", host_offset=cluster << self.cb,
                        cluster_index=cluster, expected=ref, found=disk, advice=ADVICE_LEAK)
                self.compare.add(finding)
            self.compare.count(max(0, len(differ) - room))
        return highest


def check(image: Qcow2Image, *, max_findings: int = 100) -> CheckResult:
    """`qemu-img check` without -r on an open image (qcow2_co_check_locked()). Raises
    Qcow2Error when qemu's check itself would fail (exit 1 with no figures)."""
    h = image.header
    try:
        checker = _Checker(image, max_findings)
        # qcow2_check_read_snapshot_table(): v3 entries need 16 bytes of extra data.
        snapshots, snapshots_size = read_snapshot_table(image)
        snapshot_findings = _Findings(max_findings)
        snapshot_corruptions = 0
        if h.version >= 3:
            for sn in snapshots:
                if sn.extra_data_size < L.SNAPSHOT_EXTRA_DISK_SIZE_END:
                    snapshot_corruptions += 1
                    if not snapshot_findings.room:
                        snapshot_findings.count(1)
                        continue
                    snapshot_findings.add(Finding(
                        "snapshot-incomplete", SEVERITY_CORRUPTION,
                        f"snapshot table entry {sn.index} is incomplete: "
                        f"{sn.extra_data_size} bytes of extra data, version 3 needs 16",
                        f"{sn.label} ({sn.name})", host_offset=sn.offset,
                        expected=L.SNAPSHOT_EXTRA_DISK_SIZE_END, found=sn.extra_data_size,
                        advice=ADVICE_REFCOUNT))
        checker.calculate(snapshots, snapshots_size)
        checker.overflows()
        highest = checker.compare_refcounts()
    except Qcow2Error as exc:
        raise exc.with_filename(image.filename) from None
    ordered = (snapshot_findings.items + checker.structure.items + checker.compare.items
               + checker.copied.items)
    total = (snapshot_findings.total + checker.structure.total + checker.compare.total
             + checker.copied.total)
    notes: list[str] = []
    if h.dirty:
        notes.append("dirty bit set: on-disk refcounts are not up to date (lazy refcounts); "
                     "qemu repairs them when it next opens the image read-write")
    if h.corrupt:
        notes.append("corrupt bit set: qemu refuses to open this image read-write")
    return CheckResult(
        filename=image.filename,
        check_errors=checker.check_errors,
        corruptions=checker.corruptions + snapshot_corruptions,
        leaks=checker.leaks,
        image_end_offset=(highest + 1) * checker.cs,
        total_clusters=-(-(h.size // 512 * 512) // checker.cs),
        allocated_clusters=checker.allocated,
        fragmented_clusters=checker.fragmented,
        compressed_clusters=checker.compressed,
        findings=tuple(ordered[:max_findings]),
        findings_total=total,
        corrupt_bit=h.corrupt,
        dirty_bit=h.dirty,
        notes=tuple(notes),
    )


IN_USE_NOTE = ("held for writing by a running qemu: its cached metadata may not be on disk "
               "yet, so leaks or corruptions found now can be transient; check again after "
               "the VM stops")


def check_image(path: str, *, max_findings: int = 100) -> CheckResult:
    """Open `path` read-only and check it; raises Qcow2Error when it cannot be checked."""
    with Qcow2Image.open(path) as image:
        result = check(image, max_findings=max_findings)
        if held_for_writing(image.file):
            # qemu caches L2 and refcount blocks: what is on disk may lag behind the guest.
            result = replace(result, notes=(*result.notes, IN_USE_NOTE))
        return result


def image_end_offset_by_walk(image: Qcow2Image) -> int:
    """The image end offset `qemu-img check` reports, from the full metadata walk (used when
    on-disk refcounts cannot be trusted, e.g. a dirty lazy-refcounts image)."""
    return check(image, max_findings=0).image_end_offset


__all__ = [
    "OnDiskRefcounts",
    "check",
    "check_image",
    "image_end_offset_by_walk",
    "read_snapshot_table",
]

