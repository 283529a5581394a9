"""The tables of a snapshot selection (collectors/qcow2/snapshots.py): its L1 tables, their
entries and the distinct L2 tables they name, with every L1 table (the active one, snapshots)
that names each; the dumps show them (collectors/check/tabledump.py) and `check --snapshot`
keeps the findings located in them (SelectedTables, FindingsView).

Bounded as the check is (docs/qcow2-format.md §7): the L1 tables are read a window of the file
at a time, each byte once however many tables cover it (collectors/check/l1.py), so 65536
snapshots with tables of their own cost a few reads; snapshots sharing one L1 table (offset and
size) are one table with several owners; what is kept grows with the distinct tables and the
`limit` entries shown, not with what the header or the snapshot table claims.
"""

from __future__ import annotations

from typing import ClassVar, NamedTuple, Optional

import numpy as np
import numpy.typing as npt

from ..common.jsonform import JsonKey
from ..common.record import frozen_record, mutable_record, replace
from ..qcow2 import layout as L
from ..qcow2.image import Qcow2Image, Snapshot
from ..qcow2.snapshots import SnapshotSelection
from ..report.model import CheckResult, Finding, Place, TableName
from .findings import RELOCATED_KINDS
from .l1 import L1_CHUNK_ENTRIES, L1Spans, entry_chunks

U64 = npt.NDArray[np.uint64]
Positions = npt.NDArray[np.intp]


class L1Owner(NamedTuple):
    """One distinct L1 table of a selection and who uses it: the active image and/or the
    snapshots whose table entry names it (offset and size)."""

    offset: int
    size: int
    active: bool
    snapshots: tuple[Snapshot, ...]
    skipped: Optional[str] = None  # why it is not read (qemu's check refuses it too)


def l1_owners(image: Qcow2Image, selection: SnapshotSelection) -> list[L1Owner]:
    """The distinct L1 tables of `selection`: the active one first, then the snapshots' in
    table order. A table qemu's check would not walk (not cluster aligned, over
    QCOW_MAX_L1_SIZE) is listed with the reason and not read."""
    h = image.header
    groups: dict[tuple[int, int], list[Snapshot]] = {}
    if selection.active:
        groups[(h.l1_table_offset, h.l1_size)] = []
    for sn in selection.snapshots:
        groups.setdefault((sn.l1_table_offset, sn.l1_size), []).append(sn)
    owners = []
    for index, ((offset, size), group) in enumerate(groups.items()):
        skipped = None
        if offset % h.cluster_size:
            skipped = "not cluster aligned"
        elif size > L.QCOW_MAX_L1_SIZE // L.L1E_SIZE:
            skipped = f"larger than qemu's limit of {L.QCOW_MAX_L1_SIZE // L.L1E_SIZE} entries"
        owners.append(L1Owner(offset, size, selection.active and index == 0, tuple(group),
                              skipped))
    return owners


@mutable_record
class SelectionTables:
    """What the L1 tables of a selection hold (owners[k] is L1 table k)."""

    owners: list[L1Owner]
    nonzero: npt.NDArray[np.int64]  # per L1 table: nonzero entries
    shown: tuple[Positions, Positions, U64]  # (table, index, raw) of the first `limit` entries
    namings: int  # L1 entries naming an L2 table (offset != 0)
    namings_past_eof: int  # of those, naming one at or past the end of the file
    l2_offsets: U64  # the distinct L2 tables inside the file, in order of first naming
    l2_first: tuple[Positions, Positions]  # (table, L1 index) of the entry first naming each
    l2_named_by: tuple[Positions, Positions]  # distinct (L2 row, L1 table) pairs, sorted

    def named_by(self, row: int) -> Positions:
        """The L1 tables (positions in owners) naming L2 table `row`, in order."""
        rows, tables = self.l2_named_by
        lo, hi = np.searchsorted(rows, [row, row + 1])
        return tables[int(lo):int(hi)]


class _Namings:
    """Distinct (L2 offset, L1 table) namings with the lowest L1 index of each, gathered chunk
    by chunk and compacted as they grow (they stay about the size of the distinct pairs)."""

    def __init__(self) -> None:
        self.parts: list[tuple[npt.NDArray[np.int64], ...]] = []
        self.rows = self.merged = 0

    def add(self, offsets: npt.NDArray[np.int64], tables: npt.NDArray[np.int64],
            index: npt.NDArray[np.int64]) -> None:
        self.parts.append((offsets, tables, index))
        self.rows += len(offsets)
        if self.rows > 2 * self.merged + L1_CHUNK_ENTRIES:
            self.compact()

    def compact(self) -> tuple[npt.NDArray[np.int64], ...]:
        """(offsets, tables, index), one row per distinct (offset, table), sorted by them."""
        offsets, tables, index = (np.concatenate([p[i] for p in self.parts]) if self.parts
                                  else np.empty(0, dtype=np.int64) for i in range(3))
        if len(offsets):
            order = np.lexsort((index, tables, offsets))
            offsets, tables, index = offsets[order], tables[order], index[order]
            keep = np.concatenate(([True], (offsets[1:] != offsets[:-1])
                                   | (tables[1:] != tables[:-1])))
            offsets, tables, index = offsets[keep], tables[keep], index[keep]
        self.parts = [(offsets, tables, index)]
        self.rows = self.merged = len(offsets)
        return offsets, tables, index


def read_selection(image: Qcow2Image, owners: list[L1Owner], limit: int) -> SelectionTables:
    """Every readable L1 table of `owners`, a window of the file at a time: nonzero entries
    counted per table, the first `limit` kept (in table order), and the L2 tables named.
    Overlapping L1 tables (only a hostile image has them) are read once: the entries they
    share are counted for the first of them."""
    readable = [k for k, owner in enumerate(owners) if owner.skipped is None and owner.size]
    spans = L1Spans.of([owners[k].offset for k in readable], [owners[k].size for k in readable])
    ids = np.array(readable, dtype=np.intp)
    nonzero = np.zeros(len(owners), dtype=np.int64)
    kept = (np.empty(0, dtype=np.intp), np.empty(0, dtype=np.intp), np.empty(0, np.uint64))
    namings = past_eof = 0
    gathered = _Namings()
    length = image.file.length
    for chunk in entry_chunks(image.file, spans, "L1 table"):
        source = ids[chunk.source]
        nonzero += np.bincount(source, minlength=len(owners)) * chunk.times
        kept = _first_entries(kept, source, chunk.l1_index, chunk.entries, limit)
        l2 = chunk.entries & np.uint64(L.L1E_OFFSET_MASK)
        used = np.flatnonzero(l2)
        inside = used[l2[used] < np.uint64(length)]
        namings += len(used) * chunk.times
        past_eof += (len(used) - len(inside)) * chunk.times
        gathered.add(l2[inside].astype(np.int64), source[inside].astype(np.int64),
                     chunk.l1_index[inside].astype(np.int64))
    return _tables(owners, nonzero, kept, namings, past_eof, gathered.compact())


def _first_entries(kept: tuple[Positions, Positions, U64], table: Positions, index: Positions,
                   raw: U64, limit: int) -> tuple[Positions, Positions, U64]:
    """The first `limit` entries, by (table, index), of those kept and a chunk's."""
    if len(kept[0]) >= limit:  # only the chunk's entries before the last kept can enter
        last_table, last_index = (int(kept[0][-1]), int(kept[1][-1])) if limit else (-1, -1)
        earlier = np.flatnonzero((table < last_table)
                                 | ((table == last_table) & (index < last_index)))
        table, index, raw = table[earlier], index[earlier], raw[earlier]
    if not len(table):
        return kept
    tables = np.concatenate((kept[0], table))
    indices = np.concatenate((kept[1], index))
    order = np.lexsort((indices, tables))[:limit]
    return tables[order], indices[order], np.concatenate((kept[2], raw))[order]


def _tables(owners: list[L1Owner], nonzero: npt.NDArray[np.int64],
            kept: tuple[Positions, Positions, U64], namings: int, past_eof: int,
            rows: tuple[npt.NDArray[np.int64], ...]) -> SelectionTables:
    """The distinct L2 tables in order of first naming (by L1 table, then L1 index)."""
    offsets, tables, index = rows
    # Rows are sorted by (offset, table, index): each offset's first row is its first naming.
    starts = np.flatnonzero(np.concatenate(([True], offsets[1:] != offsets[:-1]))) \
        if len(offsets) else np.empty(0, dtype=np.intp)
    order = np.lexsort((index[starts], tables[starts]))
    rank = np.empty(len(order), dtype=np.int64)
    rank[order] = np.arange(len(order))
    row_of = np.cumsum(np.concatenate(([False], offsets[1:] != offsets[:-1]))) \
        if len(offsets) else np.empty(0, dtype=np.intp)
    pair_rows = rank[row_of]
    pair_order = np.lexsort((tables, pair_rows))
    first = starts[order]
    return SelectionTables(
        owners, nonzero, kept, namings, past_eof, offsets[first].astype(np.uint64),
        (tables[first].astype(np.intp), index[first].astype(np.intp)),
        (pair_rows[pair_order].astype(np.intp), tables[pair_order].astype(np.intp)))


class SelectedTables(NamedTuple):
    """The tables of a selection, for check --snapshot: a finding belongs to the view when one
    of the entries it names is in them. L2 tables go by offset, so a table a snapshot shares
    with the active image (located by the check at the first L1 naming it) is the snapshot's
    too."""

    l1_offsets: frozenset[int]
    l2_offsets: frozenset[int]
    snapshot_ids: frozenset[str]  # their entries in the snapshot table

    def holds(self, place: Place) -> bool:
        if place.table == TableName.L1:
            return place.table_offset in self.l1_offsets
        if place.table == TableName.L2:
            return place.table_offset in self.l2_offsets
        if place.table == TableName.SNAPSHOTS:
            return place.snapshot is not None and place.snapshot in self.snapshot_ids
        return False

    def keep(self, finding: Finding) -> Optional[bool]:
        """findings.Keep: None for a refcount finding not located yet."""
        if not finding.places:
            return None if finding.kind in RELOCATED_KINDS \
                and finding.cluster_index is not None else False
        return any(self.holds(place) for place in finding.places)


def selected_tables(image: Qcow2Image, selection: SnapshotSelection) -> SelectedTables:
    owners = l1_owners(image, selection)
    read = read_selection(image, owners, 0)
    return SelectedTables(frozenset(owner.offset for owner in owners),
                          frozenset(read.l2_offsets.tolist()),
                          frozenset(sn.id_str for sn in selection.snapshots))


@frozen_record
class FindingsView:
    """What `check --snapshot SEL` adds to the check's result, whose `findings` and
    `findings_total` are then those located in the selected tables: the selector, the findings
    located outside them, and those never located (past the list's limit)."""

    snapshot: str
    findings_elsewhere: int
    findings_unexamined: int

    JSON: ClassVar[tuple[JsonKey, ...]] = (
        JsonKey("snapshot"), JsonKey("findings-elsewhere"), JsonKey("findings-unexamined"))


def limited(result: CheckResult, tables: SelectedTables, snapshot: str
            ) -> tuple[CheckResult, FindingsView]:
    """A whole check's listed findings limited to `tables`; those past its list unexamined."""
    kept = tuple(f for f in result.findings if tables.keep(f))
    return (replace(result, findings=kept, findings_total=len(kept)),
            FindingsView(snapshot, len(result.findings) - len(kept),
                         result.findings_total - len(result.findings)))
