"""Bounded dumps of the on-disk tables: L1, L2, refcounts, snapshots, bitmaps.

Each dump is a typed value whose JSON keys are declared with it; the front end renders it
(analyze/tables.py). Every list is bounded by `limit` entries, and says how many there were in
total, so a dump of a 64 TiB image stays small. Entry types follow qemu's
qcow2_get_cluster_type().
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Callable, ClassVar, Optional, Union

import numpy as np

from ..common.jsonform import JsonKey, hex_form, omit_none
from ..qcow2 import layout as L
from ..qcow2.image import Qcow2Image
from ..qcow2.refcount import nb_clusters
from .l2 import cluster_types, split_entries
from .refblocks import OnDiskRefcounts

WHAT = ("l1", "l2", "refcount", "snapshots", "bitmaps")
DEFAULT_LIMIT = 1000

Keys = tuple[JsonKey, ...]
RAW = JsonKey("raw", form=hex_form(16))  # a table entry as written, in hex
SUBCLUSTER_BITS = hex_form(8)


def _keys(*names: str, omit: tuple[str, ...] = ()) -> Keys:
    return tuple(RAW if name == "raw" else JsonKey(name, omit=omit_none if name in omit else None)
                 for name in names)


@dataclass(frozen=True)
class L1EntryView:
    index: int
    raw: int
    l2_offset: int
    copied: bool
    reserved_bits: int

    JSON: ClassVar[Keys] = _keys("index", "raw", "l2_offset", "copied", "reserved_bits")


@dataclass(frozen=True)
class L1Dump:
    l1_table_offset: int
    l1_size: int
    nonzero_entries: int
    entries: tuple[L1EntryView, ...]
    truncated: bool
    filename: str
    what: str = field(default="l1", init=False)

    JSON: ClassVar[Keys] = _keys("what", "l1_table_offset", "l1_size", "nonzero_entries",
                                 "entries", "truncated", "filename")


@dataclass(frozen=True)
class L2EntryView:
    index: int
    guest_offset: int
    raw: int
    type: L.ClusterType  # qemu's cluster type, written as its label
    copied: bool
    host_offset: int
    compressed_sectors: Optional[int] = None  # compressed clusters only
    reserved_bits: Optional[int] = None  # the others only
    subcluster_alloc: Optional[int] = None  # extended L2 only
    subcluster_zero: Optional[int] = None

    JSON: ClassVar[Keys] = (
        *_keys("index", "guest_offset", "raw"),
        JsonKey("type", form=lambda kind: kind.label),
        *_keys("copied", "host_offset", "compressed_sectors", "reserved_bits",
               omit=("compressed_sectors", "reserved_bits")),
        JsonKey("subcluster_alloc", omit=omit_none, form=SUBCLUSTER_BITS),
        JsonKey("subcluster_zero", omit=omit_none, form=SUBCLUSTER_BITS))


@dataclass(frozen=True)
class L2TableView:
    l1_index: int
    l2_offset: int
    nonempty_entries: int
    entries: tuple[L2EntryView, ...]


@dataclass(frozen=True)
class L2Dump:
    cluster_size: int
    extended_l2: bool
    nonempty_entries: int
    tables_named: int
    tables_past_end_of_file: int
    tables: tuple[L2TableView, ...]
    truncated: bool
    filename: str
    what: str = field(default="l2", init=False)

    JSON: ClassVar[Keys] = _keys("what", "cluster_size", "extended_l2", "nonempty_entries",
                                 "tables_named", "tables_past_end_of_file", "tables",
                                 "truncated", "filename")


@dataclass(frozen=True)
class RefcountTableEntryView:
    index: int
    raw: int
    block_offset: int
    covers_clusters: tuple[int, int]  # first and last cluster its block covers

    JSON: ClassVar[Keys] = _keys("index", "raw", "block_offset", "covers_clusters")


@dataclass(frozen=True)
class RefcountRange:
    first_cluster: int
    last_cluster: int
    refcount: int


@dataclass(frozen=True)
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

    JSON: ClassVar[Keys] = _keys(
        "what", "refcount_table_offset", "refcount_table_clusters", "refcount_bits",
        "cluster_size", "nonzero_table_entries", "table", "entries_past_end_of_file",
        "unreadable_blocks", "unreadable_count", "ranges", "range_count", "truncated",
        "filename")


@dataclass(frozen=True)
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

    JSON: ClassVar[Keys] = _keys(
        "index", "entry_offset", "id", "name", "l1_table_offset", "l1_size", "date_sec",
        "date_nsec", "vm_clock_nsec", "vm_state_size", "extra_data_size", "extra_data",
        "vm_state_size_large", "disk_size", "icount",
        omit=("vm_state_size_large", "disk_size", "icount"))


@dataclass(frozen=True)
class SnapshotsDump:
    snapshots_offset: int
    nb_snapshots: int
    table_size: int
    snapshots: tuple[SnapshotEntryView, ...]
    truncated: bool
    filename: str
    what: str = field(default="snapshots", init=False)

    JSON: ClassVar[Keys] = _keys("what", "snapshots_offset", "nb_snapshots", "table_size",
                                 "snapshots", "truncated", "filename")


@dataclass(frozen=True)
class BitmapTableEntryView:
    index: int
    raw: int
    data_offset: int
    all_ones: bool

    JSON: ClassVar[Keys] = _keys("index", "raw", "data_offset", "all_ones")


@dataclass(frozen=True)
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


@dataclass(frozen=True)
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

    JSON: ClassVar[Keys] = _keys(
        "what", "extension_present", "autoclear_valid", "bitmaps", "nb_bitmaps",
        "bitmap_directory_offset", "bitmap_directory_size", "truncated", "filename",
        omit=("nb_bitmaps", "bitmap_directory_offset", "bitmap_directory_size", "truncated"))


Dump = Union[L1Dump, L2Dump, RefcountDump, SnapshotsDump, BitmapsDump]


def _table(image: Qcow2Image, offset: int, entries: int, structure: str) -> np.ndarray:
    raw = image.file.read_zero_padded(offset, entries * 8, structure)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


def dump_l1(image: Qcow2Image, limit: int = DEFAULT_LIMIT) -> L1Dump:
    h = image.header
    l1 = _table(image, h.l1_table_offset, h.l1_size, "active L1 table")
    used = np.flatnonzero(l1)
    entries = tuple(
        L1EntryView(i, raw, raw & L.L1E_OFFSET_MASK, bool(raw & L.QCOW_OFLAG_COPIED),
                    raw & L.L1E_RESERVED_MASK)
        for i, raw in ((i, int(l1[i])) for i in used[:limit].tolist()))
    return L1Dump(h.l1_table_offset, h.l1_size, len(used), entries, len(used) > limit,
                  image.filename)


def dump_l2(image: Qcow2Image, limit: int = DEFAULT_LIMIT) -> L2Dump:
    """The non-empty entries of the active L2 tables (at most `limit` tables and `limit`
    entries listed), with complete counts. Each distinct table in the file is read once
    however many L1 entries name it, and tables at or past EOF (zeros, as qemu reads them)
    are only counted: the time follows the file, not the L1 size the header claims."""
    h = image.header
    l1 = _table(image, h.l1_table_offset, h.l1_size, "active L1 table")
    l1_indices = np.flatnonzero(l1)
    offsets = l1[l1_indices] & np.uint64(L.L1E_OFFSET_MASK)
    named = offsets != 0
    in_file = named & (offsets < np.uint64(image.file.length))
    unique, inverse = np.unique(offsets[in_file], return_inverse=True)
    nonempty_of = np.array([len(_l2_table(image, off)[2]) for off in unique.tolist()],
                           dtype=np.int64)
    total = int(nonempty_of[inverse].sum()) if len(unique) else 0
    tables = []
    shown = 0
    for i, l2_offset in zip(l1_indices[in_file][:limit].tolist(),
                            offsets[in_file][:limit].tolist()):
        e, bitmaps, nonempty, types = _l2_table(image, l2_offset)
        entries = tuple(_l2_item(h, i * h.l2_entries + j, j, int(e[j]), int(bitmaps[j]),
                                 L.ClusterType(int(types[j])))
                        for j in nonempty[: max(0, limit - shown)].tolist())
        shown += len(entries)
        tables.append(L2TableView(i, l2_offset, len(nonempty), entries))
    return L2Dump(h.cluster_size, h.extended_l2, total, int(np.count_nonzero(named)),
                  int(np.count_nonzero(named & ~in_file)), tuple(tables),
                  total > shown or int(np.count_nonzero(in_file)) > len(tables),
                  image.filename)


def _l2_table(image: Qcow2Image, l2_offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                          np.ndarray]:
    """(entries, subcluster bitmaps, indices of the non-empty entries, cluster types)."""
    h = image.header
    e, bitmap = split_entries(_table(image, l2_offset, h.cluster_size // 8, "L2 table"),
                              h.extended_l2)
    bitmaps = np.zeros(len(e), dtype=np.uint64) if bitmap is None else bitmap
    nonempty = np.flatnonzero((e != 0) | (bitmaps != 0))
    return e, bitmaps, nonempty, cluster_types(e, extended=h.extended_l2,
                                               data_file=h.has_data_file)


def _l2_item(h: L.Header, guest_cluster: int, j: int, raw: int, bm: int,
             kind: L.ClusterType) -> L2EntryView:
    cb = h.cluster_bits
    csize_shift = 62 - (cb - 8)
    copied = bool(raw & L.QCOW_OFLAG_COPIED)
    subclusters = (bm & 0xFFFFFFFF, bm >> 32) if h.extended_l2 else (None, None)
    if kind == L.ClusterType.QCOW2_CLUSTER_COMPRESSED:
        return L2EntryView(j, guest_cluster * h.cluster_size, raw, kind, copied,
                           raw & ((1 << csize_shift) - 1),
                           compressed_sectors=((raw >> csize_shift) & ((1 << (cb - 8)) - 1)) + 1,
                           subcluster_alloc=subclusters[0], subcluster_zero=subclusters[1])
    return L2EntryView(j, guest_cluster * h.cluster_size, raw, kind, copied,
                       raw & L.L2E_OFFSET_MASK, reserved_bits=raw & L.L2E_STD_RESERVED_MASK,
                       subcluster_alloc=subclusters[0], subcluster_zero=subclusters[1])


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
            icount=int.from_bytes(extra[16:24], "big", signed=True) if icount else None))
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


def dump(image: Qcow2Image, what: str, *, limit: int = DEFAULT_LIMIT) -> Dump:
    """One of WHAT, lists bounded by `limit`."""
    handlers: dict[str, Callable[[Qcow2Image, int], Dump]] = {
        "l1": dump_l1, "l2": dump_l2, "refcount": dump_refcount, "snapshots": dump_snapshots,
        "bitmaps": dump_bitmaps}
    if what not in handlers:
        raise ValueError(f"unknown dump {what!r} (one of {', '.join(WHAT)})")
    return handlers[what](image, limit)
