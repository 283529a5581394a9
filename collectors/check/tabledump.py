"""The L1 and L2 dumps, of the active image or of a snapshot selection (`--snapshot`).

Every table says which L1 tables name it: the active one (`active`) and the snapshots
(`snapshots`, their ID and name). An L2 table shared by several of them (the normal case after
`qemu-img snapshot -c`: a snapshot's L1 is a copy of the active one) is shown once, at the
first L1 entry that names it (the active L1 before the snapshots', in table order), with every
owner. The tables are read as the check reads them (collectors/check/snapview.py); lists are
bounded by `limit` (tables, entries, owners of one table) and say how many there were.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple, Optional

import numpy as np

from ..common.jsonform import JsonKey, hex_form, omit_none
from ..common.record import field, frozen_record
from ..qcow2 import layout as L
from ..qcow2.image import Qcow2Image
from ..qcow2.snapshots import SnapshotSelection
from .l2 import cluster_types, split_entries
from .snapview import L1Owner, Positions, SelectionTables, l1_owners, read_selection
from .tablewalk import L2_BATCH_ENTRIES, read_tables

Keys = tuple[JsonKey, ...]
RAW = JsonKey("raw", form=hex_form(16))  # a table entry as written, in hex
SUBCLUSTER_BITS = hex_form(8)


def keys(*names: str, omit: tuple[str, ...] = ()) -> Keys:
    """JSON keys of fields named as they are written (`raw` in hex; `omit`: left out when
    None)."""
    return tuple(RAW if name == "raw" else JsonKey(name, omit=omit_none if name in omit else None)
                 for name in names)


class SnapshotRef(NamedTuple):
    """A snapshot a table belongs to."""

    id: str
    name: str


@frozen_record
class L1EntryView:
    index: int
    raw: int
    l2_offset: int
    copied: bool
    reserved_bits: int

    JSON: ClassVar[Keys] = keys("index", "raw", "l2_offset", "copied", "reserved_bits")


@frozen_record
class L1TableView:
    l1_table_offset: int
    l1_size: int
    active: bool  # the active L1 table
    snapshots: tuple[SnapshotRef, ...]  # the snapshots whose entry names it (at most limit)
    snapshot_count: int
    nonzero_entries: int
    entries: tuple[L1EntryView, ...]
    skipped: Optional[str] = None  # why it was not read

    JSON: ClassVar[Keys] = keys("l1_table_offset", "l1_size", "active", "snapshots",
                                "snapshot_count", "nonzero_entries", "skipped", "entries",
                                omit=("skipped",))


@frozen_record
class L1Dump:
    snapshot: str  # the selector
    l1_tables: int
    nonzero_entries: int
    tables: tuple[L1TableView, ...]
    truncated: bool
    filename: str
    what: str = field(default="l1", init=False)

    JSON: ClassVar[Keys] = keys("what", "snapshot", "l1_tables", "nonzero_entries", "tables",
                                "truncated", "filename")


@frozen_record
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
        *keys("index", "guest_offset", "raw"),
        JsonKey("type", form=lambda kind: kind.label),
        *keys("copied", "host_offset", "compressed_sectors", "reserved_bits",
              omit=("compressed_sectors", "reserved_bits")),
        JsonKey("subcluster_alloc", omit=omit_none, form=SUBCLUSTER_BITS),
        JsonKey("subcluster_zero", omit=omit_none, form=SUBCLUSTER_BITS))


@frozen_record
class L2TableView:
    l1_index: int  # of the first L1 entry naming it (guest offsets are counted from it)
    l2_offset: int
    active: bool  # named by the active L1 table
    snapshots: tuple[SnapshotRef, ...]  # named by their L1 tables (at most limit)
    snapshot_count: int
    nonempty_entries: int
    entries: tuple[L2EntryView, ...]


@frozen_record
class L2Dump:
    snapshot: str  # the selector
    cluster_size: int
    extended_l2: bool
    nonempty_entries: int  # of the distinct tables, each counted once
    tables_named: int  # L1 entries naming an L2 table
    tables_past_end_of_file: int  # of those, naming one at or past EOF (zeros: not listed)
    distinct_tables: int
    tables: tuple[L2TableView, ...]
    truncated: bool
    filename: str
    what: str = field(default="l2", init=False)

    JSON: ClassVar[Keys] = keys("what", "snapshot", "cluster_size", "extended_l2",
                                "nonempty_entries", "tables_named", "tables_past_end_of_file",
                                "distinct_tables", "tables", "truncated", "filename")


class _Owners:
    """Who names a table, given the L1 tables naming it: the active image, the first `limit`
    snapshots, and how many (counted by array: one L2 table can be named by 65536 L1 tables)."""

    def __init__(self, owners: list[L1Owner], limit: int) -> None:
        self.owners = owners
        self.limit = limit
        self.active = np.array([owner.active for owner in owners], dtype=bool)
        self.sizes = np.array([len(owner.snapshots) for owner in owners], dtype=np.int64)

    def of(self, tables: Positions) -> tuple[bool, tuple[SnapshotRef, ...], int]:
        refs: list[SnapshotRef] = []
        for k in tables[np.flatnonzero(self.sizes[tables])].tolist():
            if len(refs) >= self.limit:
                break
            refs += [SnapshotRef(sn.id_str, sn.name)
                     for sn in self.owners[k].snapshots[:self.limit - len(refs)]]
        return (bool(self.active[tables].any()), tuple(refs),
                int(self.sizes[tables].sum()))


def _read(image: Qcow2Image, selection: SnapshotSelection, limit: int) -> SelectionTables:
    return read_selection(image, l1_owners(image, selection), limit)


def dump_l1(image: Qcow2Image, selection: SnapshotSelection, limit: int) -> L1Dump:
    """The selected L1 tables (at most `limit` listed) and their nonzero entries (at most
    `limit` in all), with complete counts."""
    read = _read(image, selection, limit)
    table, index, raw = read.shown
    views = []
    owners = _Owners(read.owners, limit)
    for k, owner in enumerate(read.owners[:limit]):
        mine = np.flatnonzero(table == k)
        entries = tuple(L1EntryView(i, r, r & L.L1E_OFFSET_MASK, bool(r & L.QCOW_OFLAG_COPIED),
                                    r & L.L1E_RESERVED_MASK)
                        for i, r in zip(index[mine].tolist(), raw[mine].tolist()))
        active, refs, count = owners.of(np.array([k], dtype=np.intp))
        views.append(L1TableView(owner.offset, owner.size, active, refs, count,
                                 int(read.nonzero[k]), entries, owner.skipped))
    total = int(read.nonzero.sum())
    return L1Dump(selection.selector, len(read.owners), total, tuple(views),
                  total > len(table) or len(read.owners) > limit
                  or any(len(v.snapshots) < v.snapshot_count for v in views), image.filename)


def dump_l2(image: Qcow2Image, selection: SnapshotSelection, limit: int) -> L2Dump:
    """The non-empty entries of the distinct L2 tables the selected L1 tables name (at most
    `limit` tables and `limit` entries listed), with complete counts. Each table in the file
    is read once however many L1 entries name it; tables at or past EOF (zeros, as qemu
    reads them) are only counted: the time follows the file, not the sizes claimed."""
    h = image.header
    read = _read(image, selection, limit)
    offsets = read.l2_offsets
    n = h.l2_entries
    per_batch = max(1, L2_BATCH_ENTRIES // n)
    nonempty_total = 0
    views: list[L2TableView] = []
    shown = 0
    owners = _Owners(read.owners, limit)
    for start in range(0, len(offsets), per_batch):
        words = read_tables(image, offsets[start:start + per_batch], h.cluster_size)
        e, bitmap = split_entries(words, h.extended_l2)
        bitmaps = np.zeros(len(e), dtype=np.uint64) if bitmap is None else bitmap
        nonempty = ((e != 0) | (bitmaps != 0)).reshape(-1, n)
        nonempty_total += int(np.count_nonzero(nonempty))
        if start >= limit:
            continue
        types = cluster_types(e, extended=h.extended_l2, data_file=h.has_data_file)
        for row in range(min(len(nonempty), limit - start)):
            k = start + row
            l1_index = int(read.l2_first[1][k])
            used = np.flatnonzero(nonempty[row])
            entries = tuple(_l2_item(h, l1_index * n + j, j, int(e[row * n + j]),
                                     int(bitmaps[row * n + j]),
                                     L.ClusterType(int(types[row * n + j])))
                            for j in used[:max(0, limit - shown)].tolist())
            shown += len(entries)
            active, refs, count = owners.of(read.named_by(k))
            views.append(L2TableView(l1_index, int(offsets[k]), active, refs, count,
                                     len(used), entries))
    return L2Dump(selection.selector, h.cluster_size, h.extended_l2, nonempty_total,
                  read.namings, read.namings_past_eof, len(offsets), tuple(views),
                  nonempty_total > shown or len(offsets) > len(views)
                  or any(len(v.snapshots) < v.snapshot_count for v in views), image.filename)


def _l2_item(h: L.Header, guest_cluster: int, j: int, raw: int, bm: int,
             kind: L.ClusterType) -> L2EntryView:
    cb = h.cluster_bits
    copied = bool(raw & L.QCOW_OFLAG_COPIED)
    subclusters = (bm & 0xFFFFFFFF, bm >> 32) if h.extended_l2 else (None, None)
    if kind == L.ClusterType.QCOW2_CLUSTER_COMPRESSED:
        return L2EntryView(j, guest_cluster * h.cluster_size, raw, kind, copied,
                           raw & L.compressed_offset_mask(cb),
                           compressed_sectors=((raw >> L.csize_shift(cb)) & L.csize_mask(cb)) + 1,
                           subcluster_alloc=subclusters[0], subcluster_zero=subclusters[1])
    return L2EntryView(j, guest_cluster * h.cluster_size, raw, kind, copied,
                       raw & L.L2E_OFFSET_MASK, reserved_bits=raw & L.L2E_STD_RESERVED_MASK,
                       subcluster_alloc=subclusters[0], subcluster_zero=subclusters[1])

