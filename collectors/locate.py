"""Who references a cluster: the metadata entries behind a refcount finding.

compare_refcounts() knows only that cluster N is referenced more (or less) often than its
refcount says; an operator needs the entry that points there -- which L2 table, its offset,
the entry index, and the guest offset (or snapshot) whose data it maps. Run only when the
comparison found something, over the few clusters it reported: one more read of the L1/L2
tables, in bounded batches.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable
from dataclasses import replace

import numpy as np
import numpy.typing as npt

from . import layout as L
from .image import Qcow2Image
from .l2 import COMPRESSED, NORMAL, ZERO_ALLOC, cluster_types, split_entries
from .model import Finding
from .refcount import OnDiskRefcounts
from .references import U64
from .tablewalk import L2_BATCH_ENTRIES, Geometry, l2_entry_location, read_tables

Referrers = dict[int, list[str]]
RELOCATED_KINDS = ("refcount-too-low", "leak", "refcount-overflow")
# Referrers named per cluster; the rest are counted. A hostile L1 can name one L2 table
# millions of times: the locations must stay as small as the finding list.
MAX_REFERRERS = 8


def refcount_entry_location(ondisk: OnDiskRefcounts, cluster: int, cluster_bits: int) -> str:
    """Where the refcount of `cluster` is stored on disk."""
    index, entry = divmod(cluster, ondisk.per_block)
    block = ondisk.block_offset(index)
    where = (f"refcount block at 0x{block:x} entry {entry}" if block
             else f"refcount table entry {index} (no block)")
    return f"{where} (cluster {cluster} at 0x{cluster << cluster_bits:x})"


class _Locator:
    def __init__(self, image: Qcow2Image, clusters: Iterable[int]) -> None:
        self.image = image
        self.geo = Geometry.of(image)
        self.wanted = set(clusters)
        self.targets = np.array(sorted(self.wanted), dtype=np.uint64)
        self.found: Referrers = defaultdict(list)
        self.total: dict[int, int] = defaultdict(int)

    def add(self, cluster: int, where: str, times: int = 1) -> None:
        self.total[cluster] += times
        if len(self.found[cluster]) < MAX_REFERRERS:
            self.found[cluster].append(where)

    def walk(self, ondisk: OnDiskRefcounts) -> None:
        """The references calculate_refcounts() counts, in its order (bitmaps aside)."""
        h = self.image.header
        self.region(0, h.cluster_size, "header")
        self.l1(h.l1_table_offset, h.l1_size, "")
        for sn in self.image.snapshots():
            if sn.l1_table_offset % h.cluster_size == 0:
                self.l1(sn.l1_table_offset, sn.l1_size, f"{sn.label}: ")
        self.region(h.snapshots_offset, self.image.snapshots_size, "snapshot table")
        self.region(h.refcount_table_offset, h.refcount_table_clusters * h.cluster_size,
                    "refcount table")
        for index, raw in enumerate(ondisk.table.tolist()):
            offset = int(raw) & L.REFT_OFFSET_MASK
            if offset:
                self.region(offset, h.cluster_size, f"refcount table entry {index} "
                            "(refcount block)")

    def region(self, offset: int, size: int, what: str) -> None:
        bits = self.geo.cluster_bits
        if size <= 0:
            return
        for cluster in range(offset >> bits, ((offset + size - 1) >> bits) + 1):
            if cluster in self.wanted:
                self.add(cluster, what)

    def l1(self, l1_offset: int, l1_size: int, label: str) -> None:
        geo = self.geo
        bits = geo.cluster_bits
        if not l1_size or l1_size > L.QCOW_MAX_L1_SIZE // L.L1E_SIZE:
            return
        self.region(l1_offset, l1_size * L.L1E_SIZE, f"{label}L1 table")
        raw = self.image.file.read_zero_padded(l1_offset, l1_size * L.L1E_SIZE,
                                               f"{label}L1 table")
        l2_offsets = np.frombuffer(raw, dtype=">u8").astype(np.uint64) \
            & np.uint64(L.L1E_OFFSET_MASK)
        used = np.flatnonzero((l2_offsets != 0)
                              & ((l2_offsets & np.uint64(geo.cluster_size - 1)) == 0))
        named = used[np.isin(l2_offsets[used] >> np.uint64(bits), self.targets)]
        named_clusters = l2_offsets[named] >> np.uint64(bits)
        for cluster in np.unique(named_clusters).tolist():
            rows = named[named_clusters == cluster]
            for index in rows[:MAX_REFERRERS].tolist():
                self.add(int(cluster), f"{label}L1[{index}] (L2 table)")
            self.total[int(cluster)] += len(rows) - min(len(rows), MAX_REFERRERS)
        # Each distinct L2 table is read once, located at the first L1 entry naming it; its
        # references count as often as it is named (as the check counts them).
        _tables, first, times = np.unique(l2_offsets[used], return_index=True,
                                          return_counts=True)
        rows = used[first]
        per_batch = max(1, L2_BATCH_ENTRIES // geo.l2_entries)
        for lo in range(0, len(rows), per_batch):
            self.l2_batch(rows[lo:lo + per_batch], times[lo:lo + per_batch], l2_offsets, label)

    def l2_batch(self, rows: npt.NDArray[np.intp], times: npt.NDArray[np.intp],
                 l2_offsets: U64, label: str) -> None:
        geo = self.geo
        tables = l2_offsets[rows]
        entries, _bitmap = split_entries(read_tables(self.image, tables, geo.cluster_size),
                                         geo.extended)
        types = cluster_types(entries, extended=geo.extended, data_file=geo.data_file)
        compressed = types == COMPRESSED
        hosts = np.where(compressed, entries & np.uint64(geo.compressed_offset_mask),
                         entries & np.uint64(L.L2E_OFFSET_MASK)) >> np.uint64(geo.cluster_bits)
        # With an external data file only compressed data (never allowed) would be here.
        mapped = compressed if geo.data_file else (
            compressed | (types == NORMAL) | (types == ZERO_ALLOC))
        for pos in np.flatnonzero(mapped & np.isin(hosts, self.targets)).tolist():
            row, j = divmod(pos, geo.l2_entries)
            self.add(int(hosts[pos]), l2_entry_location(
                label, int(tables[row]), j, int(rows[row]), geo.l2_entries, geo.cluster_bits),
                int(times[row]))


def locate_findings(image: Qcow2Image, ondisk: OnDiskRefcounts, findings: list[Finding]
                    ) -> list[Finding]:
    """The refcount findings (known only by cluster number) located at the entries that
    reference the cluster, or, with none, at the cluster's refcount entry."""
    clusters = [f.cluster_index for f in findings
                if f.kind in RELOCATED_KINDS and f.cluster_index is not None]
    if not clusters:
        return findings
    locator = _Locator(image, clusters)
    locator.walk(ondisk)
    bits = image.header.cluster_bits
    located = []
    for f in findings:
        if f.kind in RELOCATED_KINDS and f.cluster_index is not None:
            where = locator.found.get(f.cluster_index) or [
                refcount_entry_location(ondisk, f.cluster_index, bits)]
            more = locator.total.get(f.cluster_index, 0) - len(where)
            f = replace(f, location="; ".join(where) + (f"; {more} more" if more > 0 else ""))
        located.append(f)
    return located
