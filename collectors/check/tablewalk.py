"""The L2 walk of the full check: check_refcounts_l2() and the L2 half of
check_oflag_copied() in qemu's block/qcow2-refcount.c, vectorised over batches of L2 tables
(the L1 half is :mod:`collectors.l1walk`).

Every distinct L2 table the L1 tables name is read once (a batch of tables at a time), its
entries classified by :func:`collectors.l2.cluster_types`, the clusters they reference counted
in :class:`~collectors.references.ReferenceCounts`, and the damaged entries reported through
the findings catalogue.
"""

from __future__ import annotations

from collections.abc import Callable
from functools import partial
from typing import NamedTuple, Optional

import numpy as np
import numpy.typing as npt

from ..common.record import frozen_record
from ..qcow2 import layout as L
from ..qcow2.image import Qcow2Image
from ..report.model import Finding, Place, TableName
from .findings import Tally, finding
from .l1 import NamedTables, multiplicity_groups, source_batches
from .l2 import COMPRESSED, NORMAL, ZERO_ALLOC, cluster_types, split_entries
from .refblocks import OnDiskRefcounts
from .references import U64, Bools, ReferenceCounts, u64

Positions = npt.NDArray[np.intp]

# Entries of L2 tables classified per vectorised batch: bounds the temporaries (a few MiB).
L2_BATCH_ENTRIES = 1 << 15
# Beyond this many runs of adjacent clusters in one batch, count per entry instead.
MAX_RUNS = 4096
COMPRESSED_SECTOR_SIZE = 512


@frozen_record
class Geometry:
    """The header figures the walk needs, derived once."""

    cluster_bits: int
    l2_entries: int
    extended: bool
    data_file: bool
    file_length: int

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def csize_shift(self) -> int:
        return L.csize_shift(self.cluster_bits)

    @property
    def csize_mask(self) -> int:
        return L.csize_mask(self.cluster_bits)

    @property
    def compressed_offset_mask(self) -> int:
        return L.compressed_offset_mask(self.cluster_bits)

    @classmethod
    def of(cls, image: Qcow2Image) -> Geometry:
        h = image.header
        return cls(h.cluster_bits, h.l2_entries, h.extended_l2, h.has_data_file,
                   image.file.length)


class L1Table(NamedTuple):
    """The L1 table being walked: the active one or a snapshot's."""

    offset: int
    label: str  # "" or "snapshot N: "
    snapshot: Optional[str] = None  # the snapshot's id

    def entry(self, index: int, geo: Geometry) -> tuple[str, Place]:
        """Where L1 entry `index` is: `L1[i]` after the label, and structured."""
        return (f"{self.label}L1[{index}]",
                l1_entry_place(self.offset, index, geo.l2_entries, geo.cluster_bits,
                               self.snapshot))


class Batch(NamedTuple):
    """Some L2 tables of one L1 table, walked together."""

    table_offsets: U64
    l1_indices: Positions
    copied_ok: Bools  # per table: its own refcount was readable (check_oflag_copied)
    active: bool  # the active L1 table, not a snapshot's
    l1: L1Table

    def location(self, pos: int, geo: Geometry) -> tuple[str, Place]:
        """Where the entry at `pos` of the batch is, as text and structured."""
        row, j = divmod(pos, geo.l2_entries)
        table, l1_index = int(self.table_offsets[row]), int(self.l1_indices[row])
        return (l2_entry_location(self.l1.label, table, j, l1_index, geo.l2_entries,
                                  geo.cluster_bits),
                l2_entry_place(table, j, l1_index, geo.l2_entries, geo.cluster_bits,
                               self.l1.snapshot))


def l2_entry_location(label: str, table_offset: int, entry: int, l1_index: int,
                      l2_entries: int, cluster_bits: int) -> str:
    """`L2 table at 0x... entry j (L1[i], guest offset 0x...)`, after the snapshot's label:
    the table, the entry, and the guest data it maps."""
    guest = (l1_index * l2_entries + entry) << cluster_bits
    return (f"{label}L2 table at 0x{table_offset:x} entry {entry} "
            f"(L1[{l1_index}], guest offset 0x{guest:x})")


def l1_entry_place(l1_offset: int, index: int, l2_entries: int, cluster_bits: int,
                   snapshot: Optional[str]) -> Place:
    """L1 entry `index`: the guest range it maps starts at index * l2_entries clusters."""
    return Place(TableName.L1, l1_offset, index, l1_index=index,
                 guest_offset=(index * l2_entries) << cluster_bits, snapshot=snapshot)


def l2_entry_place(table_offset: int, entry: int, l1_index: int, l2_entries: int,
                   cluster_bits: int, snapshot: Optional[str]) -> Place:
    """Entry `entry` of the L2 table L1[l1_index] points to, and the guest cluster it maps."""
    return Place(TableName.L2, table_offset, entry, l1_index=l1_index,
                 guest_offset=(l1_index * l2_entries + entry) << cluster_bits,
                 snapshot=snapshot)


def read_tables(image: Qcow2Image, offsets: U64, size: int) -> U64:
    """Every L2 table of a batch, runs of adjacent tables read at once (zeros past EOF)."""
    chunks = []
    values = offsets.tolist()
    i = 0
    while i < len(values):
        j = i + 1
        while j < len(values) and values[j] == values[j - 1] + size:
            j += 1
        chunks.append(image.file.read_zero_padded(values[i], (j - i) * size, "L2 table"))
        i = j
    raw = b"".join(chunks) if len(chunks) > 1 else chunks[0]
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


class TableWalk:
    """Walks L1 tables and their L2 tables, counting references into `refs`."""

    def __init__(self, image: Qcow2Image, refs: ReferenceCounts, ondisk: OnDiskRefcounts,
                 tally: Tally) -> None:
        self.image = image
        self.geo = Geometry.of(image)
        self.refs = refs
        self.ondisk = ondisk
        self.tally = tally

    # -- check_refcounts_l2 over the tables the L1 tables name (collectors/l1walk.py) --------
    def walk_tables(self, tables: NamedTables, active: bool, source: Callable[[int], L1Table]
                    ) -> None:
        """check_refcounts_l2() for each distinct table, in batches (source(k): the L1 table
        number k in tables.source stands for).

        qemu walks a table again for every L1 entry that names it, with the same result each
        time. A hostile L1 can name one table millions of times, so a table named k times is
        walked once and all it adds (references, counters, findings) is counted k times."""
        per_batch = max(1, L2_BATCH_ENTRIES // self.geo.l2_entries)

        def walk(positions: Positions) -> None:
            for rows in source_batches(tables.source, positions, per_batch):
                named = tables.take(rows)
                self._check_l2_batch(Batch(named.offsets, named.first_index, named.marked,
                                           active, source(int(named.source[0]))))

        for times, positions in multiplicity_groups(tables.times):
            if times == 1:
                walk(positions)
            else:
                self.refs.repeated(times, partial(walk, positions))

    # -- check_refcounts_l2 (+ the L2 half of check_oflag_copied) ----------------------------
    def _check_l2_batch(self, batch: Batch) -> None:
        geo = self.geo
        words = read_tables(self.image, batch.table_offsets, geo.cluster_size)
        e, bitmap = split_entries(words, geo.extended)
        odd_bits = L.QCOW_OFLAG_COMPRESSED | L.L2E_STD_RESERVED_MASK
        if not geo.extended:
            odd_bits |= L.QCOW_OFLAG_ZERO
        if bitmap is None and not geo.data_file and not bool(
                np.any(e & u64(odd_bits | (geo.cluster_size - 1)))) and self._fast_l2_batch(
                    e, batch):
            return
        off = e & u64(L.L2E_OFFSET_MASK)
        types = cluster_types(e, extended=geo.extended, data_file=geo.data_file)
        alloc = (types == NORMAL) | (types == ZERO_ALLOC)
        comp: Optional[Bools] = None
        reserved: Optional[Bools] = None
        if bool(np.any(e & u64(odd_bits))):
            comp = types == COMPRESSED
            reserved = ~comp & ((e & u64(L.L2E_STD_RESERVED_MASK)) != 0)
        unalloc_bm = sub_bad = None
        if bitmap is not None:
            unalloc = ~alloc if comp is None else ~alloc & ~comp
            unalloc_bm = unalloc & ((bitmap & u64(0xFFFFFFFF)) != 0)
            sub_bad = alloc & (((bitmap >> u64(32)) & bitmap) != 0)
        comp_copied, comp_skip, comp_past_pos = self._count_compressed(e, comp, bitmap,
                                                                       batch.active)
        alloc_pos = np.flatnonzero(alloc)
        alloc_off = off[alloc_pos]
        unaligned_pos = alloc_pos[(alloc_off & u64(geo.cluster_size - 1)) != 0]
        data_past_pos = self._count_allocated(alloc_pos, alloc_off, batch.active)
        # In qemu's order within one entry.
        marks: list[tuple[str, Positions]] = [
            (kind, np.flatnonzero(mask)) for kind, mask in (
                ("l2-reserved-bits", reserved), ("compressed-copied", comp_copied),
                ("compressed-invalid", comp_skip)) if mask is not None]
        marks.append(("compressed-past-eof", comp_past_pos))
        if sub_bad is not None:
            marks.append(("subcluster-bitmap", np.flatnonzero(sub_bad)))
        marks += [("unaligned-data-offset", unaligned_pos), ("data-past-eof", data_past_pos)]
        if unalloc_bm is not None:
            marks.append(("unallocated-subcluster-bitmap", np.flatnonzero(unalloc_bm)))
        past_eof = len(comp_past_pos) + len(data_past_pos)  # counted by add_regions
        problems = sum(len(positions) for _, positions in marks)
        self.tally.corruptions += problems - past_eof
        if problems:
            self._l2_findings(batch, e, bitmap, marks, problems)
        # check_oflag_copied(): normal and zero-allocated entries of the active L1.
        if batch.active and len(alloc_pos):
            self._copied_entries(e, alloc_pos, off, batch)

    def _count_compressed(self, e: U64, comp: Optional[Bools], bitmap: Optional[U64],
                          active: bool) -> tuple[Optional[Bools], Optional[Bools], Positions]:
        """References of the compressed clusters: (entries with COPIED set, entries qemu
        skips as invalid, positions whose data lies past EOF)."""
        if comp is None or not bool(comp.any()):
            return None, None, np.empty(0, dtype=np.intp)
        geo = self.geo
        comp_copied = comp & ((e >> u64(63)) != 0)
        if geo.data_file:
            comp_skip = comp.copy()
        elif bitmap is not None:
            comp_skip = comp & (bitmap != 0)
        else:
            comp_skip = np.zeros(len(e), dtype=bool)
        counted_pos = np.flatnonzero(comp & ~comp_skip)
        ce = e[counted_pos]
        coffset = ce & u64(geo.compressed_offset_mask)
        nsec = ((ce >> u64(geo.csize_shift)) & u64(geo.csize_mask)) + u64(1)
        csize = nsec * u64(COMPRESSED_SECTOR_SIZE) - (coffset & u64(511))
        past = self.refs.add_regions(coffset, csize)
        if active:
            self.tally.allocated += len(counted_pos)
            self.tally.compressed += len(counted_pos)
            self.tally.fragmented += len(counted_pos)  # compressed clusters: fragmented
        return comp_copied, comp_skip, counted_pos[past]

    def _count_allocated(self, alloc_pos: Positions, alloc_off: U64, active: bool) -> Positions:
        """References and figures of the normal and zero-allocated clusters; returns the
        positions whose cluster lies past EOF."""
        geo = self.geo
        if active:
            self.tally.allocated += len(alloc_pos)
            if len(alloc_pos) > 1:
                rows = alloc_pos // geo.l2_entries
                same_table = rows[1:] == rows[:-1]
                jump = alloc_off[1:] != alloc_off[:-1] + u64(geo.cluster_size)
                self.tally.fragmented += int(np.count_nonzero(same_table & jump))
        if geo.data_file or not len(alloc_pos):
            return np.empty(0, dtype=np.intp)
        return alloc_pos[self.refs.add_clusters(alloc_off)]

    def _copied_entries(self, e: U64, alloc_pos: Positions, off: U64, batch: Batch) -> None:
        """The L2 half of check_oflag_copied(): entries of tables whose own refcount could be
        read; (on-disk refcount == 1) must equal the COPIED bit; an unreadable refcount skips
        the entry; the refcount is taken as 1 with an external data file."""
        n = self.geo.l2_entries
        check_pos = alloc_pos[batch.copied_ok[alloc_pos // n]]
        if not len(check_pos):
            return
        flag = (e[check_pos] >> u64(63)) != 0
        if self.geo.data_file:
            rc = np.ones(len(check_pos), dtype=np.uint64)
            readable = np.ones(len(check_pos), dtype=bool)
        else:
            rc, readable = self.ondisk.lookup(off[check_pos] >> u64(self.geo.cluster_bits))
        bad = readable & ((rc == 1) != flag)
        nbad = int(np.count_nonzero(bad))
        if not nbad:
            return
        self.tally.corruptions += nbad
        copied = self.tally.copied
        room = copied.room
        copied.count(max(0, nbad - room))
        for k in np.flatnonzero(bad)[:room].tolist():
            pos = int(check_pos[k])
            entry = int(e[pos])
            copied.add(finding(
                "copied-flag", *batch.location(pos, self.geo), what="data cluster",
                entry_name="l2_entry", entry=entry, host_offset=entry & L.L2E_OFFSET_MASK,
                cluster_index=(entry & L.L2E_OFFSET_MASK) >> self.geo.cluster_bits,
                found=int(rc[k])))

    def _fast_l2_batch(self, e: U64, batch: Batch) -> bool:
        """The common case, fewer passes: every entry is unallocated or a normal cluster at
        an aligned offset inside the file (no compressed, zero, reserved or unaligned entry,
        no data file, no extended L2). Same figures as the general path; False, having done
        nothing, when a cluster lies past EOF (the general path reports it)."""
        geo = self.geo
        n = geo.l2_entries
        off = e & u64(L.L2E_OFFSET_MASK)
        nalloc = int(np.count_nonzero(off))
        if not nalloc:
            return True
        alloc_pos = None if nalloc == len(off) else np.flatnonzero(off)
        alloc_off = off if alloc_pos is None else off[alloc_pos]
        if int(alloc_off.max()) >= geo.file_length:
            return False
        idx = alloc_off >> u64(geo.cluster_bits)
        jumps = (np.diff(idx) if len(idx) > 1 else np.empty(0, dtype=np.uint64)) != u64(1)
        if batch.active:
            self.tally.allocated += nalloc
            # `next` restarts with each L2 table: ignore steps across a table boundary.
            if alloc_pos is None:
                self.tally.fragmented += int(np.count_nonzero(jumps)) - int(
                    np.count_nonzero(jumps[n - 1::n]))
            else:
                rows = alloc_pos // n
                self.tally.fragmented += int(np.count_nonzero(jumps & (rows[1:] == rows[:-1])))
        runs = self._count_runs(idx, alloc_off, jumps)
        if not batch.active:
            return True
        # check_oflag_copied() for these entries: COPIED set everywhere and every on-disk
        # refcount of the runs equal to 1 means no mismatch.
        flags = e if alloc_pos is None else e[alloc_pos]
        if (runs is not None and bool(batch.copied_ok.all())
                and bool(np.all(flags >= u64(L.QCOW_OFLAG_COPIED)))
                and all(self.ondisk.range_all_one(first, end) for first, end in runs)):
            return True
        pos = np.arange(len(e), dtype=np.intp) if alloc_pos is None else alloc_pos
        self._copied_entries(e, pos, off, batch)
        return True

    def _count_runs(self, idx: U64, alloc_off: U64,
                    jumps: Bools) -> Optional[list[tuple[int, int]]]:
        """Count runs of adjacent clusters as slices, not per entry; returns the runs, or None
        when there were too many (counted per entry then)."""
        breaks = np.flatnonzero(jumps)
        if len(breaks) > MAX_RUNS:
            self.refs.add_clusters(alloc_off)
            return None
        run_starts = [0, *(breaks + 1).tolist()]
        run_ends = [*breaks.tolist(), len(idx) - 1]
        runs = [(int(idx[i]), int(idx[j]) + 1) for i, j in zip(run_starts, run_ends)]
        if max(end for _, end in runs) << self.geo.cluster_bits > self.geo.file_length:
            self.refs.add_clusters(alloc_off)
        else:
            self.refs.add_runs(runs)
        return runs

    def _l2_findings(self, batch: Batch, e: U64, bitmap: Optional[U64],
                     marks: list[tuple[str, Positions]], problems: int) -> None:
        """Located findings of one batch, in entry order and qemu's order within an entry."""
        structure = self.tally.structure
        room = structure.room
        if not room:
            structure.count(problems)
            return
        by_entry: dict[int, list[str]] = {}
        for kind, positions in marks:
            for p in positions[:room * 8].tolist():
                by_entry.setdefault(p, []).append(kind)
        built = 0
        for pos in sorted(by_entry):
            entry = int(e[pos])
            bm = int(bitmap[pos]) if bitmap is not None else 0
            where, place = batch.location(pos, self.geo)
            for kind in by_entry[pos]:
                structure.add(l2_finding(kind, entry, bm, where, place, self.geo))
                built += 1
        structure.count(problems - built)


def l2_finding(kind: str, entry: int, bm: int, where: str, place: Place, geo: Geometry
               ) -> Finding:
    """The finding of one damaged L2 entry (`bm`: its subcluster bitmap, or 0)."""
    off = entry & L.L2E_OFFSET_MASK
    coff = entry & geo.compressed_offset_mask
    if kind == "compressed-copied":
        return finding(kind, where, place, host_offset=coff)
    if kind == "compressed-invalid":
        reason = ("data file" if geo.data_file
                  else f"non-zero subcluster allocation bitmap 0x{bm:x}")
        return finding(kind, where, place, reason=reason, entry=entry, host_offset=coff,
                       found=bm or None)
    if kind in ("compressed-past-eof", "data-past-eof"):
        compressed = kind == "compressed-past-eof"
        host = coff if compressed else off
        return finding("reference-past-eof", where, place,
                       what="compressed data" if compressed else "data cluster",
                       host_offset=host, cluster_index=host >> geo.cluster_bits,
                       file_length=geo.file_length)
    if kind == "unaligned-data-offset":
        has_data = bool(bm & 0xFFFFFFFF) if geo.extended else not entry & L.QCOW_OFLAG_ZERO
        return finding(kind, where, place, host_offset=off,
                       what="Data cluster" if has_data else "Preallocated cluster")
    if kind == "l2-reserved-bits":
        return finding(kind, where, place, entry=entry, host_offset=off,
                       found=entry & L.L2E_STD_RESERVED_MASK)
    if kind == "subcluster-bitmap":
        return finding(kind, where, place, host_offset=off, found=bm)
    return finding(kind, where, place, found=bm)  # unallocated-subcluster-bitmap

