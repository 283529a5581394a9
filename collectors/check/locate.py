"""Who references a cluster: the metadata entries behind a refcount finding.

compare_refcounts() knows only that cluster N is referenced more (or less) often than its
refcount says; an operator needs the entry that points there -- which L2 table, its offset,
the entry index, and the guest offset (or snapshot) whose data it maps. Run only when the
comparison found something, over the few clusters it reported: one more read of the L1/L2
tables, in bounded batches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Iterable
from functools import partial
from typing import Optional

import numpy as np
import numpy.typing as npt

from ..common.record import replace
from ..common.units import counted
from ..qcow2 import layout as L
from ..qcow2.image import Qcow2Image
from ..report.model import Finding, Place, TableName
from .findings import RELOCATED_KINDS
from .l1 import L1Spans, TableGatherer, entry_chunks, snapshot_spans, source_batches
from .l2 import COMPRESSED, NORMAL, ZERO_ALLOC, cluster_types, split_entries
from .refblocks import OnDiskRefcounts
from .references import U64, ranges
from .tablewalk import (
    COMPRESSED_SECTOR_SIZE,
    L2_BATCH_ENTRIES,
    Geometry,
    L1Table,
    l2_entry_location,
    l2_entry_place,
    read_tables,
)

Referrers = dict[int, list[tuple[str, Place]]]
# Referencing entries named per cluster; more are counted (an L1 may name one table 4 Mi times).
MAX_NAMED = 8


def refcount_entry_location(ondisk: OnDiskRefcounts, cluster: int, cluster_bits: int
                            ) -> tuple[str, Place]:
    """Where the refcount of `cluster` is stored on disk."""
    index, entry = divmod(cluster, ondisk.per_block)
    block = ondisk.block_offset(index)
    table = ondisk.table_offset
    if block:
        where = f"refcount block at 0x{block:x} entry {entry}"
        place = Place(TableName.REFCOUNT_BLOCK, block, entry, refcount_table_offset=table)
    else:
        where = f"refcount table entry {index} (no block)"
        place = Place(TableName.REFCOUNT_TABLE, table, index, refcount_table_offset=table)
    return f"{where} (cluster {cluster} at 0x{cluster << cluster_bits:x})", place


def referrers(image: Qcow2Image, ondisk: OnDiskRefcounts, clusters: Iterable[int]
              ) -> tuple[Referrers, dict[int, int]]:
    """The metadata entries that reference one of `clusters` (up to MAX_NAMED per cluster),
    and per cluster how many more do."""
    locator = _Locator(image, clusters)
    if locator.wanted:
        locator.walk(ondisk)
    return locator.found, locator.more


class _Locator:
    def __init__(self, image: Qcow2Image, clusters: Iterable[int]) -> None:
        self.image = image
        self.geo = Geometry.of(image)
        self.wanted = set(clusters)
        self.targets = np.array(sorted(self.wanted), dtype=np.uint64)
        self.found: Referrers = defaultdict(list)
        self.more: dict[int, int] = defaultdict(int)  # referrers beyond MAX_NAMED

    def walk(self, ondisk: OnDiskRefcounts) -> None:
        """The references calculate_refcounts() counts, in its order (bitmaps aside)."""
        h = self.image.header
        table = h.refcount_table_offset
        self.region(0, h.cluster_size, "header", Place(TableName.HEADER, 0))
        self.l1_tables(L1Spans.of([h.l1_table_offset], [h.l1_size]),
                       lambda _k: L1Table(h.l1_table_offset, ""))
        # Snapshots sharing one L1 table are walked once, at the first of them, and what it
        # references counts once per snapshot (as the check counts it).
        groups = [group for (offset, _), group in self.image.snapshot_l1_tables().items()
                  if offset % h.cluster_size == 0]
        self.l1_tables(snapshot_spans(groups),
                       lambda k: L1Table(groups[k][0].l1_table_offset,
                                         f"{groups[k][0].label}: ", groups[k][0].id_str))
        self.region(h.snapshots_offset, self.image.snapshots_size, "snapshot table",
                    Place(TableName.SNAPSHOTS, h.snapshots_offset))
        self.region(table, h.refcount_table_clusters * h.cluster_size, "refcount table",
                    Place(TableName.REFCOUNT_TABLE, table, refcount_table_offset=table))
        # The refcount blocks: a table over guest data can name a million of them.
        offsets = np.asarray(ondisk.table, dtype=np.uint64) & np.uint64(L.REFT_OFFSET_MASK)
        indices = np.flatnonzero(offsets)
        blocks = offsets[indices]
        bits = np.uint64(self.geo.cluster_bits)

        def refblock(k: int) -> tuple[str, Place]:
            index = int(indices[k])
            return (f"refcount table entry {index} (refcount block)",
                    Place(TableName.REFCOUNT_TABLE, table, index, refcount_table_offset=table))

        self.name_each(blocks >> bits, (blocks + np.uint64(h.cluster_size - 1)) >> bits,
                       refblock)

    def region(self, offset: int, size: int, what: str, place: Place) -> None:
        if size > 0:
            bits = self.geo.cluster_bits
            self.name_regions(np.array([offset >> bits], dtype=np.uint64),
                              np.array([(offset + size - 1) >> bits], dtype=np.uint64),
                              lambda _k: (what, place))

    def name_each(self, first: U64, last: U64, describe: Callable[[int], tuple[str, Place]],
                  weights: Optional[npt.NDArray[np.intp]] = None) -> None:
        """References k (a region from cluster first[k] to last[k], at most two clusters,
        made weights[k] times), described by describe(k)."""
        in_first = np.isin(first, self.targets)
        in_last = (last != first) & np.isin(last, self.targets)
        self._name(np.concatenate((first[in_first], last[in_last])),
                   np.concatenate((np.flatnonzero(in_first), np.flatnonzero(in_last))),
                   describe, weights)

    def name_regions(self, first: U64, last: U64,
                     describe: Callable[[int], tuple[str, Place]],
                     weights: Optional[npt.NDArray[np.intp]] = None) -> None:
        """Like name_each(), for regions of any length (every wanted cluster inside)."""
        lo = np.searchsorted(self.targets, first)
        hits = np.maximum(np.searchsorted(self.targets, last, side="right") - lo, 0)
        positions = np.repeat(np.arange(len(first)), hits)
        inside = ranges(lo, hits)
        self._name(self.targets[inside], positions, describe, weights)

    def _name(self, keys: U64, positions: npt.NDArray[np.intp],
              describe: Callable[[int], tuple[str, Place]],
              weights: Optional[npt.NDArray[np.intp]]) -> None:
        """Reference positions[i] touches wanted cluster keys[i]: per cluster the first
        MAX_NAMED are named and the rest counted, without a Python loop over them."""
        order = np.argsort(keys, kind="stable")
        keys, positions = keys[order], positions[order]
        starts = np.flatnonzero(np.concatenate(([True], keys[1:] != keys[:-1]))) \
            if len(keys) else positions
        ends = np.concatenate((starts[1:], [len(keys)])).astype(np.intp)
        for begin, end in zip(starts.tolist(), ends.tolist()):
            cluster = int(keys[begin])
            # Only the references still to be named are described (the tables are read a
            # batch at a time, and a cluster can be referenced from every batch).
            named = begin + max(0, MAX_NAMED - len(self.found.get(cluster, ())))
            for k in positions[begin:min(end, named)].tolist():
                self.note(cluster, describe(k), 1 if weights is None else int(weights[k]))
            rest = positions[named:end]
            self.more[cluster] += len(rest) if weights is None else int(weights[rest].sum())

    def spans(self, first: U64, last: U64) -> npt.NDArray[np.bool_]:
        """Which references (a cluster-sized or shorter region each, from cluster `first` to
        `last`) touch a wanted cluster."""
        return np.isin(first, self.targets) | np.isin(last, self.targets)

    def note(self, cluster: int, where: tuple[str, Place], times: int = 1) -> None:
        """`where` references `cluster` `times` times (a table named k times by its L1)."""
        if len(self.found[cluster]) < MAX_NAMED:
            self.found[cluster].append(where)
            self.more[cluster] += times - 1
        else:
            self.more[cluster] += times

    def l1_tables(self, spans: L1Spans, table: Callable[[int], L1Table]) -> None:
        """L1 tables (span k is table(k)), their entries (an unaligned L2 offset counts the
        two clusters its cluster-sized region touches, as qemu counts it) and the distinct L2
        tables they name: each read once, located at the first entry naming it, what it
        references counted as often as it is named (as the check counts it)."""
        geo = self.geo
        bits = np.uint64(geo.cluster_bits)
        kept = np.flatnonzero((spans.size > 0)
                              & (spans.size <= L.QCOW_MAX_L1_SIZE // L.L1E_SIZE))
        if not len(kept):
            return
        spans = L1Spans(spans.offset[kept], spans.size[kept], spans.times[kept])

        def source(k: int) -> L1Table:
            return table(int(kept[k]))

        # (An offset from the image can be anything below 2**64: the end is kept below it.)
        size = spans.size.astype(np.uint64) * np.uint64(L.L1E_SIZE)
        ends = spans.offset + np.minimum(size, ~spans.offset)
        self.name_regions(spans.offset >> bits, (ends - np.uint64(1)) >> bits,
                          lambda k: (f"{source(k).label}L1 table",
                                     Place(TableName.L1, int(spans.offset[k]),
                                           snapshot=source(k).snapshot)),
                          spans.times.astype(np.intp))
        named = TableGatherer()
        for chunk in entry_chunks(self.image.file, spans, "L1 table"):
            offsets = chunk.entries & np.uint64(L.L1E_OFFSET_MASK)
            used = np.flatnonzero(offsets)
            offsets, of, index = offsets[used], chunk.source[used], chunk.l1_index[used]
            # A hostile L1 can name one table millions of times.
            self.name_each(offsets >> bits, (offsets + np.uint64(geo.cluster_size - 1)) >> bits,
                           partial(_l2_table, source, geo, of, index),
                           np.full(len(offsets), chunk.times, dtype=np.intp))
            keep = (offsets & np.uint64(geo.cluster_size - 1)) == 0
            named.add(offsets[keep], index[keep], source=of[keep], times=chunk.times)
        gathered = named.tables()
        per_batch = max(1, L2_BATCH_ENTRIES // geo.l2_entries)
        everything = np.arange(len(gathered.offsets), dtype=np.intp)
        for rows in source_batches(gathered.source, everything, per_batch):
            part = gathered.take(rows)
            self.l2_batch(part.offsets, part.first_index, part.times,
                          source(int(part.source[0])))

    def l2_batch(self, tables: U64, rows: npt.NDArray[np.intp], times: npt.NDArray[np.intp],
                 l1: L1Table) -> None:
        """The entries of some L2 tables that reference a wanted cluster: the region qemu
        counts for each (a cluster from its offset, aligned or not; the compressed data's
        sectors) may touch two clusters."""
        geo = self.geo
        entries, _bitmap = split_entries(read_tables(self.image, tables, geo.cluster_size),
                                         geo.extended)
        types = cluster_types(entries, extended=geo.extended, data_file=geo.data_file)
        compressed = types == COMPRESSED
        sector = np.uint64(COMPRESSED_SECTOR_SIZE)
        start = np.where(compressed, entries & np.uint64(geo.compressed_offset_mask),
                         entries & np.uint64(L.L2E_OFFSET_MASK))
        sectors = ((entries >> np.uint64(geo.csize_shift)) & np.uint64(geo.csize_mask)) \
            + np.uint64(1)
        end = np.where(compressed, start - start % sector + sectors * sector,
                       start + np.uint64(geo.cluster_size))
        first = start >> np.uint64(geo.cluster_bits)
        last = (end - np.uint64(1)) >> np.uint64(geo.cluster_bits)
        # With an external data file only compressed data (never allowed) would be here.
        mapped = compressed if geo.data_file else (
            compressed | (types == NORMAL) | (types == ZERO_ALLOC))
        sel = np.flatnonzero(mapped & self.spans(first, last))

        def entry(k: int) -> tuple[str, Place]:
            row, j = divmod(int(sel[k]), geo.l2_entries)
            table, l1_index = int(tables[row]), int(rows[row])
            return (l2_entry_location(l1.label, table, j, l1_index, geo.l2_entries,
                                      geo.cluster_bits),
                    l2_entry_place(table, j, l1_index, geo.l2_entries, geo.cluster_bits,
                                   l1.snapshot))

        self.name_each(first[sel], last[sel], entry, times[sel // geo.l2_entries])


def locate_findings(image: Qcow2Image, ondisk: OnDiskRefcounts, findings: list[Finding],
                    wanted: Optional[frozenset[int]] = None) -> list[Finding]:
    """The refcount findings (known only by cluster number) located at the entries that
    reference the cluster, or, with none, at the cluster's refcount entry; with `wanted`, only
    those of these clusters (the others keep their `cluster N` location)."""

    def relocated(f: Finding) -> bool:
        return f.kind in RELOCATED_KINDS and f.cluster_index is not None and (
            wanted is None or f.cluster_index in wanted)

    clusters = [f.cluster_index for f in findings if relocated(f)]
    if not clusters:
        return findings
    found, more = referrers(image, ondisk, [c for c in clusters if c is not None])
    bits = image.header.cluster_bits
    located = []
    for f in findings:
        if relocated(f) and f.cluster_index is not None:
            where = found.get(f.cluster_index) or [
                refcount_entry_location(ondisk, f.cluster_index, bits)]
            text = "; ".join(text for text, _ in where)
            if more.get(f.cluster_index):
                text += f"; and {counted(more[f.cluster_index], 'more entry', 'more entries')}"
            f = replace(f, location=text, places=tuple(place for _, place in where))
        located.append(f)
    return located


def _l2_table(table: Callable[[int], L1Table], geo: Geometry, source: npt.NDArray[np.intp],
              index: npt.NDArray[np.intp], k: int) -> tuple[str, Place]:
    """L1 entry index[k] of table source[k], naming an L2 table."""
    text, place = table(int(source[k])).entry(int(index[k]), geo)
    return f"{text} (L2 table)", place
