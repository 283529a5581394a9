"""L1 tables read a window of the file at a time, and the distinct L2 tables they name.

A header may claim the largest L1 table qemu accepts (4 Mi entries, 32 MiB), every entry
naming the same L2 table; an image may hold 65536 snapshot L1 tables, overlapping each other.
qemu walks an L2 table again for every entry that names it, with the same result each time.
The check and the locator read all the L1 tables of one kind (the active one, or every
snapshot's) 512 KiB of the file at a time, each byte once however many tables cover it (the
arrays of one window are small, so memory stays flat), and walk each distinct L2 table once,
counted as often as it is named (docs/qcow2-format.md §7). Bitmap tables are read the same way.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Optional

import numpy as np
import numpy.typing as npt

from ..qcow2 import layout as L
from ..qcow2.image import Snapshot
from ..qcow2.reader import ImageFile
from .references import ranges

U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]
Positions = npt.NDArray[np.intp]

# L1 entries read and classified per pass: 512 KiB of entries.
L1_CHUNK_ENTRIES = 1 << 16
# Beyond this many distinct multiplicities, tables are grouped by the bits of theirs.
MAX_MULTIPLICITY_GROUPS = 24


class L1Spans(NamedTuple):
    """L1 tables to read: where each starts (cluster aligned; an offset from the image can
    be anything below 2**64), how many entries it claims, and how many times it counts
    (snapshots sharing it). Arrays: an image can have 65536 snapshot tables."""

    offset: U64
    size: npt.NDArray[np.int64]
    times: npt.NDArray[np.int64]

    @classmethod
    def of(cls, offsets: list[int], sizes: list[int], times: Optional[list[int]] = None
           ) -> L1Spans:
        return cls(np.array(offsets, dtype=np.uint64), np.array(sizes, dtype=np.int64),
                   np.array([1] * len(offsets) if times is None else times, dtype=np.int64))


def snapshot_spans(groups: list[list[Snapshot]]) -> L1Spans:
    """The L1 tables of groups of snapshots sharing one, each counted once per snapshot."""
    return L1Spans(np.array([g[0].l1_table_offset for g in groups], dtype=np.uint64),
                   np.array([g[0].l1_size for g in groups], dtype=np.int64),
                   np.array([len(g) for g in groups], dtype=np.int64))


class EntryChunk(NamedTuple):
    """Nonzero L1 entries read together, each counting `times` times."""

    entries: U64
    source: Positions  # the L1 table (a position in the spans) each is attributed to
    l1_index: Positions  # its index in that table
    times: int


class _Segments(NamedTuple):
    """Disjoint byte ranges of the file holding L1 entries, in file order."""

    start: npt.NDArray[np.int64]
    end: npt.NDArray[np.int64]
    weight: npt.NDArray[np.int64]  # summed times of the tables covering the range
    source: Positions  # the first of them (in the spans' order)
    base: npt.NDArray[np.int64]  # where that table starts


def _segments(file_length: int, spans: L1Spans) -> _Segments:
    """Entries past EOF read as zeros (bdrv_pread on a file; a last entry cut by EOF keeps
    its bytes inside the file), so each table ends at EOF for reading; only tables starting
    inside the file have anything to read."""
    inside = np.flatnonzero((spans.offset < np.uint64(file_length)) & (spans.size > 0))
    ids = inside
    offset = spans.offset[inside].astype(np.int64)
    size, times = spans.size[inside], spans.times[inside]
    in_file = np.minimum(size * L.L1E_SIZE, file_length - offset)
    end = offset + (in_file + L.L1E_SIZE - 1) // L.L1E_SIZE * L.L1E_SIZE
    order = np.argsort(offset, kind="stable")
    ids, start, end, times = ids[order], offset[order], end[order], times[order]
    if not len(ids) or bool(np.all(start[1:] >= end[:-1])):
        return _Segments(start, end, times, ids, start)
    # Overlapping tables (only a hostile image has them): cut at every table boundary; each
    # piece counts the times of every table covering it and is read once.
    bounds = np.unique(np.concatenate((start, end)))
    delta = np.zeros(len(bounds), dtype=np.int64)
    np.add.at(delta, np.searchsorted(bounds, start), times)
    np.add.at(delta, np.searchsorted(bounds, end), -times)
    weight = np.cumsum(delta)[:-1]
    owner = np.full(len(weight), -1, dtype=np.intp)
    for k in np.argsort(ids)[::-1].tolist():  # the first table in the spans' order wins
        owner[np.searchsorted(bounds, start[k]):np.searchsorted(bounds, end[k])] = k
    keep = np.flatnonzero(weight > 0)
    return _Segments(bounds[keep], bounds[keep + 1], weight[keep], ids[owner[keep]],
                     start[owner[keep]])


def entry_chunks(file: ImageFile, spans: L1Spans, what: str) -> Iterator[EntryChunk]:
    """The nonzero entries of the L1 tables `spans`, a window of the file at a time: every
    byte of the file is read once however many tables cover it, and thousands of small
    tables cost a few reads, not one each. Within one table the entries come in order."""
    seg = _segments(file.length, spans)
    if not len(seg.start):
        return
    window = L1_CHUNK_ENTRIES * L.L1E_SIZE
    first, last = seg.start // window, (seg.end - 1) // window
    counts = last - first + 1
    touched = np.unique(ranges(first, counts))
    for w in touched.tolist():
        lo, hi = w * window, (w + 1) * window
        i, j = int(np.searchsorted(seg.end, lo, "right")), int(np.searchsorted(seg.start, hi))
        starts = np.maximum(seg.start[i:j], lo)
        lengths = (np.minimum(seg.end[i:j], hi) - starts) // L.L1E_SIZE
        origin = int(starts[0])
        raw = file.read_zero_padded(origin, int(starts[-1] - origin) + int(lengths[-1]) * 8,
                                    what)
        words = np.frombuffer(raw, dtype=">u8")
        if j - i == 1:  # one table (or piece) in the window: the common case
            values = words.astype(np.uint64)
            nonzero = np.flatnonzero(values)
            pos, segment = nonzero, np.full(len(nonzero), i)
        else:
            rel = (starts - origin) // L.L1E_SIZE
            at = ranges(rel, lengths)
            values = words[at].astype(np.uint64)
            nonzero = np.flatnonzero(values)
            pos, segment = at[nonzero], np.repeat(np.arange(i, j), lengths)[nonzero]
        entries = values[nonzero]
        index = (origin + pos * L.L1E_SIZE - seg.base[segment]) // L.L1E_SIZE
        source, weight = seg.source[segment], seg.weight[segment]
        if not len(weight) or bool(np.all(weight == weight[0])):
            if len(weight):
                yield EntryChunk(entries, source, index.astype(np.intp), int(weight[0]))
            continue
        for k, at in multiplicity_groups(weight.astype(np.intp)):
            yield EntryChunk(entries[at], source[at], index[at].astype(np.intp), k)


class NamedTables(NamedTuple):
    """Distinct L2 tables, in the order they are first named (by source, then L1 index)."""

    offsets: U64
    source: Positions  # the L1 table (a number given by the caller) first naming each
    first_index: Positions  # the entry of that L1 table
    times: Positions  # how many L1 entries name each (all sources, times their repeats)
    marked: Bools  # a property of each table's offset, given with the entries (or False)

    @classmethod
    def concatenate(cls, parts: list[NamedTables]) -> NamedTables:
        return cls(np.concatenate([p.offsets for p in parts]),
                   np.concatenate([p.source for p in parts]),
                   np.concatenate([p.first_index for p in parts]),
                   np.concatenate([p.times for p in parts]),
                   np.concatenate([p.marked for p in parts]))

    def take(self, rows: Positions) -> NamedTables:
        return NamedTables(self.offsets[rows], self.source[rows], self.first_index[rows],
                           self.times[rows], self.marked[rows])


class TableGatherer:
    """Gathers, chunk by chunk, the distinct L2 tables that one or more L1 tables name. What
    it keeps is compacted as it grows, so it stays about the size of the distinct tables."""

    def __init__(self) -> None:
        self._parts: list[NamedTables] = []
        self._rows = 0
        self._merged_rows = 0

    def add(self, offsets: U64, l1_indices: Positions, marked: Optional[Bools] = None, *,
            source: int | Positions = 0, times: int = 1) -> None:
        """The L2 tables named by the entries `l1_indices` of L1 table `source` (or of the
        tables source[i]), each entry counted `times` times; `marked`: per entry, a property
        that depends on the table's offset only. The first entry naming a table is the one
        added first (entries of one table come in order)."""
        if not len(offsets):
            return
        tables, first, counts = np.unique(offsets, return_index=True, return_counts=True)
        self._parts.append(NamedTables(
            tables, np.full(len(tables), source, dtype=np.intp) if isinstance(source, int)
            else source[first], l1_indices[first],
            counts.astype(np.intp) * times,
            np.zeros(len(tables), dtype=bool) if marked is None else marked[first]))
        self._rows += len(tables)
        if self._rows > 2 * self._merged_rows + L1_CHUNK_ENTRIES:
            self._compact()

    def _compact(self) -> None:
        """One part per distinct table: its first naming entry is in the earliest part naming
        it (parts are added in naming order, and a stable sort keeps it), its count the sum."""
        merged = NamedTables.concatenate(self._parts)
        if len(self._parts) > 1:
            merged = merged.take(np.argsort(merged.offsets, kind="stable"))
            offsets = merged.offsets
            starts = np.flatnonzero(np.concatenate(([True], offsets[1:] != offsets[:-1])))
            times = np.add.reduceat(merged.times, starts)
            merged = merged.take(starts)._replace(times=times)
        self._parts = [merged]
        self._rows = self._merged_rows = len(merged.offsets)

    def tables(self) -> NamedTables:
        if not self._parts:
            empty = np.empty(0, dtype=np.intp)
            return NamedTables(np.empty(0, dtype=np.uint64), empty, empty, empty,
                               np.empty(0, dtype=bool))
        self._compact()
        merged = self._parts[0]
        return merged.take(np.lexsort((merged.first_index, merged.source)))


def multiplicity_groups(times: Positions) -> list[tuple[int, Positions]]:
    """Groups of tables walked together, each (k, positions of its tables) counted k times,
    so that every table is counted exactly as often as it is named. One group per distinct
    multiplicity while they are few (each table walked once); past that, one group per bit
    of the multiplicities (a table named k times is walked once per bit set in k), so the
    number of groups stays small whatever a hostile L1 holds."""
    # (Asking for the counts keeps numpy 2 from importing numpy.ma here: half a MiB.)
    distinct, _ = np.unique(times, return_counts=True)
    if len(distinct) <= MAX_MULTIPLICITY_GROUPS:
        return [(int(k), np.flatnonzero(times == k)) for k in distinct.tolist()]
    return [(1 << bit, np.flatnonzero((times >> bit) & 1))
            for bit in range(int(times.max()).bit_length())
            if bool(np.any((times >> bit) & 1))]


def source_batches(sources: Positions, positions: Positions, per_batch: int
                   ) -> Iterator[Positions]:
    """`positions` (ascending) in batches of at most `per_batch`, each from one source."""
    if not len(positions):
        return
    of = sources[positions]
    cuts = [0, *(np.flatnonzero(of[1:] != of[:-1]) + 1).tolist(), len(positions)]
    for lo, hi in zip(cuts, cuts[1:]):
        for b in range(lo, hi, per_batch):
            yield positions[b:min(hi, b + per_batch)]
