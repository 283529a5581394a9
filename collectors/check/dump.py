"""Bounded dumps of the on-disk tables: L1, L2 (collectors/check/tabledump.py, of the active
image or a snapshot selection), refcounts, snapshots, bitmaps.

Each dump is a typed value whose JSON keys are declared with it; the front end renders it
(analyze/tables.py). Every list is bounded by `limit` entries, and says how many there were in
total, so a dump of a 64 TiB image stays small. Entry types follow qemu's
qcow2_get_cluster_type().
"""

from __future__ import annotations

from typing import Callable, ClassVar, Optional, Union

import numpy as np

from ..common.record import field, frozen_record
from ..qcow2 import layout as L
from ..qcow2.image import Qcow2Image
from ..qcow2.refcount import nb_clusters
from ..qcow2.snapshots import ACTIVE, select_snapshots
from .refblocks import OnDiskRefcounts
from .tabledump import Keys, L1Dump, L2Dump, dump_l1, dump_l2, keys

WHAT = ("l1", "l2", "refcount", "snapshots", "bitmaps")
DEFAULT_LIMIT = 1000



@frozen_record
class RefcountTableEntryView:
    index: int
    raw: int
    block_offset: int
    covers_clusters: tuple[int, int]  # first and last cluster its block covers

    JSON: ClassVar[Keys] = keys("index", "raw", "block_offset", "covers_clusters")


@frozen_record
class RefcountRange:
    first_cluster: int
    last_cluster: int
    refcount: int


@frozen_record
class RefcountDump:
    refcount_table_offset: int
    refcount_table_clusters: int
    refcount_bits: int
    cluster_size: int
    nonzero_table_entries: int
    table: tuple[RefcountTableEntryView, ...]
    entries_past_end_of_file: int
    unreadable_blocks: tuple[int, ...]
    unreadable_count: int
    ranges: tuple[RefcountRange, ...]
    range_count: int
    truncated: bool
    filename: str
    what: str = field(default="refcount", init=False)

    JSON: ClassVar[Keys] = keys(
        "what", "refcount_table_offset", "refcount_table_clusters", "refcount_bits",
        "cluster_size", "nonzero_table_entries", "table", "entries_past_end_of_file",
        "unreadable_blocks", "unreadable_count", "ranges", "range_count", "truncated",
        "filename")


@frozen_record
class SnapshotEntryView:
    index: int
    entry_offset: int
    id: str
    name: str
    l1_table_offset: int
    l1_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int  # the 32-bit field as written
    extra_data_size: int
    extra_data: bytes
    vm_state_size_large: Optional[int] = None  # when the extra data holds it
    disk_size: Optional[int] = None
    icount: Optional[int] = None

    JSON: ClassVar[Keys] = keys(
        "index", "entry_offset", "id", "name", "l1_table_offset", "l1_size", "date_sec",
        "date_nsec", "vm_clock_nsec", "vm_state_size", "extra_data_size", "extra_data",
        "vm_state_size_large", "disk_size", "icount",
        omit=("vm_state_size_large", "disk_size", "icount"))


@frozen_record
class SnapshotsDump:
    snapshots_offset: int
    nb_snapshots: int
    table_size: int
    snapshots: tuple[SnapshotEntryView, ...]
    truncated: bool
    filename: str
    what: str = field(default="snapshots", init=False)

    JSON: ClassVar[Keys] = keys("what", "snapshots_offset", "nb_snapshots", "table_size",
                                 "snapshots", "truncated", "filename")


@frozen_record
class BitmapTableEntryView:
    index: int
    raw: int
    data_offset: int
    all_ones: bool

    JSON: ClassVar[Keys] = keys("index", "raw", "data_offset", "all_ones")


@frozen_record
class BitmapDumpView:
    name: str
    entry_offset: int
    bitmap_table_offset: int
    bitmap_table_size: int
    flags: tuple[str, ...]
    flags_raw: int
    type: int
    granularity_bits: int
    granularity: int
    extra_data_size: int
    nonzero_table_entries: int
    table: tuple[BitmapTableEntryView, ...]


@frozen_record
class BitmapsDump:
    extension_present: bool
    autoclear_valid: bool
    bitmaps: tuple[BitmapDumpView, ...]
    filename: str
    # From the bitmaps extension, when it is there (None otherwise).
    nb_bitmaps: Optional[int] = None
    bitmap_directory_offset: Optional[int] = None
    bitmap_directory_size: Optional[int] = None
    truncated: Optional[bool] = None
    what: str = field(default="bitmaps", init=False)

    JSON: ClassVar[Keys] = keys(
        "what", "extension_present", "autoclear_valid", "bitmaps", "nb_bitmaps",
        "bitmap_directory_offset", "bitmap_directory_size", "truncated", "filename",
        omit=("nb_bitmaps", "bitmap_directory_offset", "bitmap_directory_size", "truncated"))


Dump = Union[L1Dump, L2Dump, RefcountDump, SnapshotsDump, BitmapsDump]


def _table(image: Qcow2Image, offset: int, entries: int, structure: str) -> np.ndarray:
    raw = image.file.read_zero_padded(offset, entries * 8, structure)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


def dump_refcount(image: Qcow2Image, limit: int = DEFAULT_LIMIT) -> RefcountDump:
    """Refcount table entries and the nonzero refcounts as ranges of equal values."""
    h = image.header
    ondisk = OnDiskRefcounts(image)
    table = ondisk.table
    used = np.flatnonzero(table)
    entries = tuple(
        RefcountTableEntryView(i, int(table[i]), int(table[i]) & L.REFT_OFFSET_MASK,
                               (i * ondisk.per_block, (i + 1) * ondisk.per_block - 1))
        for i in used[:limit].tolist())
    ranges: list[list[int]] = []  # [first cluster, last cluster, refcount]
    nranges = 0
    unreadable: list[int] = []
    nunreadable = 0
    # Only entries that cover clusters of the file are decoded (qemu ignores refcounts past
    # EOF too): the work follows the file's length, not the table size the header claims.
    covering = -(-nb_clusters(image) // ondisk.per_block)
    in_file = used[used < covering]
    for t in in_file.tolist():
        block = ondisk.block(t)
        if block is None:
            nunreadable += 1
            if len(unreadable) < limit:
                unreadable.append(t)
            continue
        if not block.any():
            continue
        change = np.flatnonzero(np.diff(block)) + 1
        starts = np.concatenate(([0], change))
        ends = np.concatenate((change, [len(block)]))
        for a, b in zip(starts.tolist(), ends.tolist()):
            value = int(block[a])
            if not value:
                continue
            base = t * ondisk.per_block
            if (ranges and nranges <= limit and ranges[-1][2] == value
                    and ranges[-1][1] == base + a - 1):
                ranges[-1][1] = base + b - 1
                continue
            nranges += 1
            if len(ranges) < limit:
                ranges.append([base + a, base + b - 1, value])
    return RefcountDump(
        h.refcount_table_offset, h.refcount_table_clusters, h.refcount_bits, h.cluster_size,
        len(used), entries, len(used) - len(in_file), tuple(unreadable), nunreadable,
        tuple(RefcountRange(*item) for item in ranges), nranges,
        len(used) > limit or nranges > limit or nunreadable > limit, image.filename)


def dump_snapshots(image: Qcow2Image, limit: int = DEFAULT_LIMIT) -> SnapshotsDump:
    h = image.header
    entries = image.snapshots()
    items = []
    for sn in entries[:limit]:
        extra = sn.extra_data
        large = len(extra) >= L.SNAPSHOT_EXTRA_VM_STATE_SIZE_LARGE_END
        icount = len(extra) >= L.SNAPSHOT_EXTRA_ICOUNT_END
        items.append(SnapshotEntryView(
            sn.table_index, sn.offset, sn.id_str, sn.name, sn.l1_table_offset, sn.l1_size,
            sn.date_sec, sn.date_nsec, sn.vm_clock_nsec, sn.vm_state_size32,
            sn.extra_data_size, extra, vm_state_size_large=sn.vm_state_size if large else None,
            disk_size=sn.disk_size,
            # As written: -1 where qemu recorded none (which the model reads as None).
            icount=(-1 if sn.icount is None else sn.icount) if icount else None))
    return SnapshotsDump(h.snapshots_offset, h.nb_snapshots, image.snapshots_size,
                         tuple(items), len(entries) > limit, image.filename)


def dump_bitmaps(image: Qcow2Image, limit: int = DEFAULT_LIMIT) -> BitmapsDump:
    ext = image.bitmaps_extension
    present = image.bitmaps_extension_raw is not None
    autoclear = image.header.bitmaps_autoclear
    if ext is None:
        return BitmapsDump(present, autoclear, (), image.filename)
    shown = 0
    bitmaps = image.bitmaps()
    views = []
    for bm in bitmaps[:limit]:
        table = _table(image, bm.bitmap_table_offset, bm.bitmap_table_size,
                       f"bitmap '{bm.name}' table")
        entries = tuple(
            BitmapTableEntryView(i, raw, raw & L.BME_TABLE_ENTRY_OFFSET_MASK,
                                 bool(raw & L.BME_TABLE_ENTRY_FLAG_ALL_ONES))
            for i, raw in ((i, int(table[i]))
                           for i in np.flatnonzero(table)[: max(0, limit - shown)].tolist()))
        shown += len(entries)
        views.append(BitmapDumpView(
            bm.name, bm.offset, bm.bitmap_table_offset, bm.bitmap_table_size,
            tuple(bm.flag_names), bm.flags, bm.type, bm.granularity_bits, bm.granularity,
            bm.extra_data_size, int(np.count_nonzero(table)), entries))
    return BitmapsDump(present, autoclear, tuple(views), image.filename, ext.nb_bitmaps,
                       ext.bitmap_directory_offset, ext.bitmap_directory_size,
                       len(bitmaps) > limit)  # a directory can hold 65535


def dump(image: Qcow2Image, what: str, *, limit: int = DEFAULT_LIMIT,
         snapshot: str = ACTIVE) -> Dump:
    """One of WHAT, lists bounded by `limit`; the L1 and L2 tables of the snapshots
    `snapshot` selects (collectors/qcow2/snapshots.py: SnapshotSelectorError when it names
    none or several)."""
    handlers: dict[str, Callable[[Qcow2Image, int], Dump]] = {
        "refcount": dump_refcount, "snapshots": dump_snapshots, "bitmaps": dump_bitmaps}
    if what in ("l1", "l2"):
        selection = select_snapshots(image, snapshot)
        return (dump_l1 if what == "l1" else dump_l2)(image, selection, limit)
    if what not in handlers:
        raise ValueError(f"unknown dump {what!r} (one of {', '.join(WHAT)})")
    return handlers[what](image, limit)
