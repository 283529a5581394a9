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
from dataclasses import replace
from functools import partial
from typing import Optional

import numpy as np
import numpy.typing as npt

from . import layout as L
from .image import Qcow2Image, Snapshot
from .l1 import TableGatherer, l1_chunks
from .l2 import COMPRESSED, NORMAL, ZERO_ALLOC, cluster_types, split_entries
from .model import (
    TABLE_HEADER,
    TABLE_L1,
    TABLE_REFCOUNT_BLOCK,
    TABLE_REFCOUNT_TABLE,
    TABLE_SNAPSHOTS,
    Finding,
    Place,
)
from .refcount import OnDiskRefcounts
from .references import U64
from .tablewalk import (
    COMPRESSED_SECTOR_SIZE,
    L2_BATCH_ENTRIES,
    Geometry,
    L1Table,
    l2_entry_location,
    l2_entry_place,
    read_tables,
)
from .units import counted

Referrers = dict[int, list[tuple[str, Place]]]
# Referencing entries named per cluster; more are counted (an L1 may name one table 4 Mi times).
MAX_NAMED = 8
RELOCATED_KINDS = ("refcount-too-low", "leak", "refcount-overflow")


def refcount_entry_location(ondisk: OnDiskRefcounts, cluster: int, cluster_bits: int
                            ) -> tuple[str, Place]:
    """Where the refcount of `cluster` is stored on disk."""
    index, entry = divmod(cluster, ondisk.per_block)
    block = ondisk.block_offset(index)
    table = ondisk.table_offset
    if block:
        where = f"refcount block at 0x{block:x} entry {entry}"
        place = Place(TABLE_REFCOUNT_BLOCK, block, entry, refcount_table_offset=table)
    else:
        where = f"refcount table entry {index} (no block)"
        place = Place(TABLE_REFCOUNT_TABLE, table, index, refcount_table_offset=table)
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
        self.region(0, h.cluster_size, "header", Place(TABLE_HEADER, 0))
        self.l1(L1Table(h.l1_table_offset, ""), h.l1_size)
        # Snapshots sharing one L1 table are walked once, at the first of them, and what it
        # references counts once per snapshot (as the check counts it).
        shared: dict[tuple[int, int], list[Snapshot]] = {}
        for sn in self.image.snapshots():
            if sn.l1_table_offset % h.cluster_size == 0:
                shared.setdefault((sn.l1_table_offset, sn.l1_size), []).append(sn)
        for (offset, size), group in shared.items():
            sn = group[0]
            self.l1(L1Table(offset, f"{sn.label}: ", sn.id_str), size, len(group))
        self.region(h.snapshots_offset, self.image.snapshots_size, "snapshot table",
                    Place(TABLE_SNAPSHOTS, h.snapshots_offset))
        self.region(table, h.refcount_table_clusters * h.cluster_size, "refcount table",
                    Place(TABLE_REFCOUNT_TABLE, table, refcount_table_offset=table))
        # The refcount blocks: a table over guest data can name a million of them.
        offsets = np.asarray(ondisk.table, dtype=np.uint64) & np.uint64(L.REFT_OFFSET_MASK)
        indices = np.flatnonzero(offsets)
        blocks = offsets[indices]
        bits = np.uint64(self.geo.cluster_bits)

        def refblock(k: int) -> tuple[str, Place]:
            index = int(indices[k])
            return (f"refcount table entry {index} (refcount block)",
                    Place(TABLE_REFCOUNT_TABLE, table, index, refcount_table_offset=table))

        self.name_each(blocks >> bits, (blocks + np.uint64(h.cluster_size - 1)) >> bits,
                       refblock)

    def region(self, offset: int, size: int, what: str, place: Place) -> None:
        bits = self.geo.cluster_bits
        if size <= 0:
            return
        for cluster in range(offset >> bits, ((offset + size - 1) >> bits) + 1):
            if cluster in self.wanted:
                self.note(cluster, (what, place))

    def name_each(self, first: U64, last: U64, describe: Callable[[int], tuple[str, Place]],
                  weights: Optional[npt.NDArray[np.intp]] = None) -> None:
        """References k (a region from cluster first[k] to last[k], made weights[k] times),
        described by describe(k): per wanted cluster the first MAX_NAMED are named and the
        rest counted, without a Python loop over them."""
        if weights is None:
            weights = np.ones(len(first), dtype=np.intp)
        in_first = np.isin(first, self.targets)
        in_last = (last != first) & np.isin(last, self.targets)
        keys = np.concatenate((first[in_first], last[in_last]))
        positions = np.concatenate((np.flatnonzero(in_first), np.flatnonzero(in_last)))
        order = np.argsort(keys, kind="stable")
        keys, positions = keys[order], positions[order]
        starts = np.flatnonzero(np.r_[True, keys[1:] != keys[:-1]]) if len(keys) else keys
        ends = np.r_[starts[1:], len(keys)].astype(np.intp)
        for begin, end in zip(starts.tolist(), ends.tolist()):
            cluster = int(keys[begin])
            for k in positions[begin:min(end, begin + MAX_NAMED)].tolist():
                self.note(cluster, describe(k), int(weights[k]))
            self.more[cluster] += int(weights[positions[begin + MAX_NAMED:end]].sum())

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

    def l1(self, table: L1Table, l1_size: int, times: int = 1) -> None:
        """The L1 table, its entries (an unaligned L2 offset counts the two clusters its
        cluster-sized region touches, as qemu counts it) and the L2 tables they name."""
        geo = self.geo
        bits = np.uint64(geo.cluster_bits)
        if not l1_size or l1_size > L.QCOW_MAX_L1_SIZE // L.L1E_SIZE:
            return
        what = f"{table.label}L1 table"
        self.region(table.offset, l1_size * L.L1E_SIZE, what,
                    Place(TABLE_L1, table.offset, snapshot=table.snapshot))
        # Each distinct L2 table is read once, located at the first L1 entry naming it; what
        # it references counts as often as it is named (as the check counts it).
        aligned = TableGatherer()
        for lo, entries in l1_chunks(self.image.file, table.offset, l1_size, what):
            offsets = entries & np.uint64(L.L1E_OFFSET_MASK)
            named = np.flatnonzero(offsets)
            offsets = offsets[named]
            named += lo
            first = offsets >> bits
            last = (offsets + np.uint64(geo.cluster_size - 1)) >> bits
            # A hostile L1 can name one table millions of times.
            self.name_each(first, last, partial(_l2_table, table, geo, named),
                           np.full(len(first), times, dtype=np.intp))
            keep = (offsets & np.uint64(geo.cluster_size - 1)) == 0
            aligned.add(offsets[keep], named[keep])
        tables = aligned.tables()
        per_batch = max(1, L2_BATCH_ENTRIES // geo.l2_entries)
        for lo in range(0, len(tables.offsets), per_batch):
            batch = slice(lo, lo + per_batch)
            self.l2_batch(tables.offsets[batch], tables.first_index[batch],
                          tables.times[batch] * times, table)

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


def locate_findings(image: Qcow2Image, ondisk: OnDiskRefcounts, findings: list[Finding]
                    ) -> list[Finding]:
    """The refcount findings (known only by cluster number) located at the entries that
    reference the cluster, or, with none, at the cluster's refcount entry."""
    clusters = [f.cluster_index for f in findings
                if f.kind in RELOCATED_KINDS and f.cluster_index is not None]
    if not clusters:
        return findings
    found, more = referrers(image, ondisk, clusters)
    bits = image.header.cluster_bits
    located = []
    for f in findings:
        if f.kind in RELOCATED_KINDS and f.cluster_index is not None:
            where = found.get(f.cluster_index) or [
                refcount_entry_location(ondisk, f.cluster_index, bits)]
            text = "; ".join(text for text, _ in where)
            if more.get(f.cluster_index):
                text += f"; and {counted(more[f.cluster_index], 'more entry', 'more entries')}"
            f = replace(f, location=text, places=tuple(place for _, place in where))
        located.append(f)
    return located


def _l2_table(table: L1Table, geo: Geometry, indices: npt.NDArray[np.intp], k: int
              ) -> tuple[str, Place]:
    """L1 entry indices[k], naming an L2 table."""
    text, place = table.entry(int(indices[k]), geo)
    return f"{text} (L2 table)", place
