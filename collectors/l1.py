"""An L1 table read a chunk at a time, and the distinct L2 tables it names.

A header may claim the largest L1 table qemu accepts (4 Mi entries, 32 MiB), every entry
naming the same L2 table. qemu walks that table again for every entry that names it, with the
same result each time; the check and the locator read the L1 a bounded chunk at a time (the
arrays of one chunk are small and reused, so memory stays flat whatever the size) and walk
each distinct L2 table once, counted as often as it is named (docs/qcow2-format.md §7).
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import NamedTuple, Optional

import numpy as np
import numpy.typing as npt

from . import layout as L
from .reader import ImageFile

U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]
Positions = npt.NDArray[np.intp]

# L1 entries read and classified per pass: 512 KiB of entries.
L1_CHUNK_ENTRIES = 1 << 16
# Beyond this many distinct multiplicities, tables are grouped by the bits of theirs.
MAX_MULTIPLICITY_GROUPS = 24


def l1_chunks(file: ImageFile, offset: int, l1_size: int, what: str
              ) -> Iterator[tuple[int, U64]]:
    """(index of the first entry, the entries) of the L1 table at `offset`, a chunk at a
    time. Entries past EOF read as zeros (bdrv_pread on a file; a last entry cut by EOF keeps
    its bytes inside the file), so the chunks end at EOF: a table claimed past the end costs
    nothing."""
    in_file = max(0, min(l1_size * L.L1E_SIZE, file.length - offset))
    entries = -(-in_file // L.L1E_SIZE)
    for lo in range(0, entries, L1_CHUNK_ENTRIES):
        count = min(L1_CHUNK_ENTRIES, entries - lo)
        raw = file.read_zero_padded(offset + lo * L.L1E_SIZE, count * L.L1E_SIZE, what)
        yield lo, np.frombuffer(raw, dtype=">u8").astype(np.uint64)


class NamedTables(NamedTuple):
    """The distinct L2 tables of one L1 table, in the order the L1 first names them."""

    offsets: U64
    first_index: Positions  # the first L1 entry naming each
    times: Positions  # how many L1 entries name each
    marked: Bools  # a property of each table's offset, given with the entries (or False)


class TableGatherer:
    """Gathers, chunk by chunk, the distinct L2 tables an L1 table names."""

    def __init__(self) -> None:
        self._parts: list[NamedTables] = []

    def add(self, offsets: U64, l1_indices: Positions, marked: Optional[Bools] = None
            ) -> None:
        """The L2 tables named by the L1 entries `l1_indices` (in increasing order);
        `marked`: per entry, a property that depends on the table's offset only."""
        if len(offsets):
            tables, first, times = np.unique(offsets, return_index=True, return_counts=True)
            self._parts.append(NamedTables(
                tables, l1_indices[first], times.astype(np.intp),
                np.zeros(len(tables), dtype=bool) if marked is None else marked[first]))

    def tables(self) -> NamedTables:
        if not self._parts:
            return NamedTables(np.empty(0, dtype=np.uint64), np.empty(0, dtype=np.intp),
                               np.empty(0, dtype=np.intp), np.empty(0, dtype=bool))
        offsets, first, times, marked = (np.concatenate(column) for column in zip(*self._parts))
        if len(self._parts) > 1:
            # A table named in several chunks: its first entry is in the earliest of them
            # (a stable sort keeps the chunks' order), its count is the sum.
            order = np.argsort(offsets, kind="stable")
            offsets, first, times, marked = (offsets[order], first[order], times[order],
                                             marked[order])
            starts = np.flatnonzero(np.concatenate(([True], offsets[1:] != offsets[:-1])))
            offsets, first, times, marked = (offsets[starts], first[starts],
                                             np.add.reduceat(times, starts), marked[starts])
        order = np.argsort(first, kind="stable")
        return NamedTables(offsets[order], first[order], times[order], marked[order])


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
