"""The L1 half of the check: check_refcounts_l1() and the L1 half of check_oflag_copied() in
qemu's block/qcow2-refcount.c, over every L1 table at once.

The entries of the L1 tables (the active one, or all the snapshots') are read a window of the
file at a time (collectors/l1.py), their own references counted, damaged entries reported, and
the L2 tables they name gathered so that :meth:`TableWalk.walk_tables` walks each distinct
table once, counted as often as it is named (docs/qcow2-format.md §7).
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial

import numpy as np

from ..qcow2 import layout as L
from ..report.model import Place
from .findings import finding
from .l1 import EntryChunk, L1Spans, TableGatherer, entry_chunks
from .references import U64, Bools, u64
from .tablewalk import L1Table, TableWalk

Where = Callable[[int], tuple[str, Place]]  # where entry i of a chunk is


class L1Walk:
    """Walks L1 tables through a :class:`TableWalk` (its counts, tally and geometry)."""

    def __init__(self, walk: TableWalk) -> None:
        self.walk = walk
        self.geo = walk.geo
        self.refs = walk.refs
        self.tally = walk.tally

    def check(self, spans: L1Spans, table: Callable[[int], L1Table], *, active: bool
              ) -> None:
        """L1 tables (span k is table(k); at most one active), then the L2 tables they name.
        The tables are described only where a finding needs it."""
        self.refs.inc_regions(spans.offset, spans.size * L.L1E_SIZE, spans.times,
                              lambda k: f"{table(k).label}L1 table")
        named = TableGatherer()
        what = f"{table(0).label}L1 table" if len(spans.offset) == 1 else "L1 table"
        for chunk in entry_chunks(self.walk.image.file, spans, what):
            entries = partial(self._chunk, table, chunk, active, named)
            if chunk.times == 1:
                entries()
            else:
                self.refs.repeated(chunk.times, entries)
        self.walk.walk_tables(named.tables(), active, table)

    def _chunk(self, table: Callable[[int], L1Table], chunk: EntryChunk, active: bool,
               named: TableGatherer) -> None:
        """Some nonzero entries, in qemu's order per entry: reserved bits, the L2 table's own
        reference, alignment (its entries are walked later, once per distinct table).
        Findings are built while there is room, the rest only counted."""
        entries = chunk.entries
        reserved = (entries & u64(L.L1E_RESERVED_MASK)) != 0
        l2_offsets = entries & u64(L.L1E_OFFSET_MASK)
        unaligned = (l2_offsets & u64(self.geo.cluster_size - 1)) != 0

        def where(i: int) -> tuple[str, Place]:
            return table(int(chunk.source[i])).entry(int(chunk.l1_index[i]), self.geo)

        copied_ok = self._copied(chunk, l2_offsets, where) if active else None
        self._entry_findings(entries, reserved, unaligned, where)
        past = self.refs.add_clusters(l2_offsets)
        structure = self.tally.structure
        for i in np.flatnonzero(past)[: structure.room].tolist():
            off = int(l2_offsets[i])
            structure.add(finding(
                "reference-past-eof", *where(i), what="L2 table", host_offset=off,
                cluster_index=off >> self.geo.cluster_bits, file_length=self.geo.file_length))
        structure.count(max(0, int(np.count_nonzero(past)) - structure.room))
        # A table at or past EOF reads as zeros: nothing in it to walk.
        inside = np.flatnonzero(l2_offsets < u64(self.geo.file_length))
        named.add(l2_offsets[inside], chunk.l1_index[inside],
                  None if copied_ok is None else copied_ok[inside],
                  source=chunk.source[inside], times=chunk.times)

    def _copied(self, chunk: EntryChunk, l2_offsets: U64, where: Where) -> Bools:
        """Active L1 COPIED flags (check_oflag_copied, first half): L2 offset 0 is skipped and
        an unreadable refcount skips the whole L2 table. Returns which tables were readable
        (a property of the table's offset)."""
        rc, readable = self.walk.ondisk.lookup(l2_offsets >> u64(self.geo.cluster_bits))
        copied_ok: Bools = (l2_offsets != 0) & readable
        flag = (chunk.entries >> u64(63)) != 0
        bad = np.flatnonzero(copied_ok & ((rc == 1) != flag))
        copied = self.tally.copied
        self.tally.corruptions += len(bad)
        copied.count(max(0, len(bad) - copied.room))
        for i in bad[: copied.room].tolist():
            copied.add(finding(
                "copied-flag", *where(i), what="L2 cluster", entry_name="l1_entry",
                entry=int(chunk.entries[i]), host_offset=int(l2_offsets[i]),
                cluster_index=int(l2_offsets[i]) >> self.geo.cluster_bits,
                expected=1 if flag[i] else None, found=int(rc[i])))
        return copied_ok

    def _entry_findings(self, entries: U64, reserved: Bools, unaligned: Bools,
                        where: Where) -> None:
        """Reserved bits and unaligned L2 offsets of L1 entries: findings built while there
        is room, the rest counted (a hostile L1 holds millions)."""
        tally = self.tally
        flagged = np.flatnonzero(reserved | unaligned)
        shown = flagged[: tally.structure.room]
        for i in shown.tolist():
            text, place = where(i)
            entry = int(entries[i])
            l2_offset = entry & L.L1E_OFFSET_MASK
            if reserved[i]:
                tally.corruption("l1-reserved-bits", text, place, entry=entry,
                                 host_offset=l2_offset, found=entry & L.L1E_RESERVED_MASK)
            if unaligned[i]:
                tally.corruption("unaligned-l2-offset", text, place, host_offset=l2_offset)
        rest = flagged[len(shown):]
        hidden = int(np.count_nonzero(reserved[rest])) + int(np.count_nonzero(unaligned[rest]))
        tally.corruptions += hidden
        tally.structure.count(hidden)
