"""The full read-only consistency check, equal to `qemu-img check` (qemu 7.2; the rules are
written down in docs/qcow2-format.md §7).

Mirrors block/qcow2-refcount.c: qcow2_check_refcounts() -> calculate_refcounts()
(check_refcounts_l1/l2, qcow2_check_bitmaps_refcounts, check_refblocks) -> compare_refcounts()
-> check_oflag_copied(), preceded by qcow2_check_read_snapshot_table() (qcow2-snapshot.c).

The parts live apart: reference counting in :mod:`collectors.references`, the L1 walk in
:mod:`collectors.l1walk` and the L2 walk in :mod:`collectors.tablewalk`, the comparison in
:mod:`collectors.compare`, the findings catalogue in :mod:`collectors.findings`; this module
runs them in qemu's order over the header, snapshots, refcount structures, LUKS header and
bitmaps.

Every figure is qemu's; only the way it is computed differs: the per-entry C loops become
vectorised numpy passes. The one order-dependent rule, check_refblocks()'s "refcount must be
exactly 1", runs last in qemu too and is mirrored sequentially. On-disk refcount blocks are
decoded one block at a time into a small bounded cache. numpy is imported by the check's
modules only (usage imports them lazily).
"""

from __future__ import annotations

from functools import partial
from typing import Optional

import numpy as np
import numpy.typing as npt

from ..common.errors import IO_ERROR, Qcow2Error
from ..common.record import replace
from ..qcow2 import layout as L
from ..qcow2.bitmaps import Bitmap, loaded_bitmaps
from ..qcow2.image import Qcow2Image, Snapshot
from ..qcow2.reader import held_for_writing
from ..qcow2.snapshots import select_snapshots
from ..report.model import CheckResult, Finding, Place, TableName
from .compare import compare_refcounts
from .findings import LAZY_DEBT_KINDS, Keep, Tally, finding
from .heap import keep_heap_top
from .l1 import EntryChunk, L1Spans, entry_chunks, snapshot_spans
from .l1walk import L1Walk
from .refblocks import BDRV_MAX_LENGTH, OnDiskRefcounts
from .references import U64, ReferenceCounts, u64
from .settle import Pass, settled_check, stable_pass
from .snapview import FindingsView, limited, selected_tables
from .tablewalk import L1Table, TableWalk

REFT_RESERVED_MASK = 0x1FF
BME_TABLE_ENTRY_RESERVED_MASK = 0xFF000000000001FE
BME_TABLE_ENTRY_SIZE = 8


class _Check:
    """One run of the check over an open image."""

    def __init__(self, image: Qcow2Image, max_findings: int, keep: Optional[Keep] = None
                 ) -> None:
        self.image = image
        self.h = image.header
        self.tally = Tally(max_findings, keep)
        self.refs = ReferenceCounts(image.file.length, self.h.cluster_bits, self.tally)
        self.ondisk = OnDiskRefcounts(image)
        self.walk = TableWalk(image, self.refs, self.ondisk, self.tally)
        self.l1walk = L1Walk(self.walk)

    def snapshot_table(self, snapshots: list[Snapshot]) -> None:
        """qcow2_check_read_snapshot_table(): v3 entries need 16 bytes of extra data."""
        if self.h.version < 3:
            return
        for sn in snapshots:
            if sn.extra_data_size < L.SNAPSHOT_EXTRA_DISK_SIZE_END:
                self.tally.corruptions += 1
                if not self.tally.snapshots.room:
                    self.tally.snapshots.count(1)
                    continue
                self.tally.snapshots.add(finding(
                    "snapshot-incomplete", f"{sn.label} ({sn.name})", self.snapshot_place(sn),
                    index=sn.table_index,
                    host_offset=sn.offset, expected=L.SNAPSHOT_EXTRA_DISK_SIZE_END,
                    found=sn.extra_data_size))

    def _snapshot_l1_problem(self, kind: str, sn: Snapshot, **values: int) -> None:
        if not self.tally.structure.room:  # nothing built: a table may hold 65536
            self.tally.corruption(kind, "")
            return
        self.tally.corruption(kind, f"{sn.label} ({sn.name})", self.snapshot_place(sn),
                              snapshot=f"snapshot {sn.id_str} ({sn.name})", **values)

    def snapshot_place(self, sn: Snapshot) -> Place:
        """The snapshot table entry of `sn`."""
        return Place(TableName.SNAPSHOTS, self.h.snapshots_offset, sn.table_index,
                     snapshot=sn.id_str)

    def calculate(self, snapshots: list[Snapshot], snapshots_size: int) -> None:
        """calculate_refcounts()."""
        h = self.h
        cs = h.cluster_size
        self.refs.inc_region(0, cs, "header")
        self.l1walk.check(L1Spans.of([h.l1_table_offset], [h.l1_size]),
                          lambda _k: L1Table(h.l1_table_offset, ""), active=True)
        if h.has_data_file and snapshots:
            self.tally.corruption("snapshots-with-data-file", "snapshot table",
                                  Place(TableName.SNAPSHOTS, h.snapshots_offset),
                                  host_offset=h.snapshots_offset, found=len(snapshots))
        # Snapshots sharing one L1 table (offset and size) add the same each time: walked
        # once and counted for each (a header may claim 65536 of them).
        groups = []
        for (offset, size), group in self.image.snapshot_l1_tables().items():
            if offset % cs:
                for sn in group:
                    self._snapshot_l1_problem("snapshot-l1-unaligned", sn,
                                              host_offset=sn.l1_table_offset)
            elif size > L.QCOW_MAX_L1_SIZE // L.L1E_SIZE:
                for sn in group:
                    self._snapshot_l1_problem("snapshot-l1-too-large", sn,
                                              host_offset=sn.offset, found=sn.l1_size)
            elif size and offset + size * L.L1E_SIZE > BDRV_MAX_LENGTH:
                # The block layer refuses the read (EIO): qemu's check stops there.
                sn = group[0]
                raise Qcow2Error(
                    f"L1 table at 0x{offset:x} lies beyond the largest offset qemu can read: "
                    "qemu-img check fails on this image (I/O error)",
                    structure=f"{sn.label} ({sn.name})", offset=sn.offset, value=offset,
                    kind=IO_ERROR, filename=self.image.filename)
            else:
                groups.append(group)
        # Every snapshot's L1 table at once, each distinct L2 table walked once: a hostile
        # image can give thousands of snapshots L1 tables of their own (even overlapping)
        # that all name the same tables.
        self.l1walk.check(snapshot_spans(groups),
                          lambda k: L1Table(groups[k][0].l1_table_offset,
                                            f"{groups[k][0].label}: ", groups[k][0].id_str),
                          active=False)
        self.refs.inc_region(h.snapshots_offset, snapshots_size, "snapshot table")
        self.refs.inc_region(h.refcount_table_offset, h.refcount_table_clusters * cs,
                             "refcount table")
        crypto = self.image.extension(L.QCOW2_EXT_MAGIC_CRYPTO_HEADER)
        if crypto is not None:
            pointer = L.CryptoHeaderExtension.from_bytes(crypto.data)
            self.refs.inc_region(pointer.offset, pointer.length, "LUKS header")
        self.bitmaps()
        self.refblocks()

    def bitmaps(self) -> None:
        """qcow2_check_bitmaps_refcounts(): only when the autoclear bit makes them valid. A
        directory or table qemu cannot load makes its check fail: raised as Qcow2Error. The
        tables are read a window of the file at a time (a directory can hold 65535)."""
        ext = self.image.bitmaps_extension
        if ext is None or ext.nb_bitmaps == 0:
            return
        self.refs.inc_region(ext.bitmap_directory_offset, ext.bitmap_directory_size,
                             "bitmap directory")
        bitmaps = loaded_bitmaps(self.image)
        for bm in bitmaps:
            if bm.extra_data_size or bm.bitmap_table_size == 0:
                raise Qcow2Error(
                    "bitmap extra data is not supported / empty bitmap table: qemu-img check "
                    "fails on this image", structure=f"bitmap '{bm.name}'", offset=bm.offset,
                    filename=self.image.filename)
        spans = L1Spans.of([bm.bitmap_table_offset for bm in bitmaps],
                           [bm.bitmap_table_size for bm in bitmaps])
        self.refs.inc_regions(spans.offset, spans.size * BME_TABLE_ENTRY_SIZE, spans.times,
                              lambda k: f"bitmap '{bitmaps[k].name}' bitmap table")
        for chunk in entry_chunks(self.image.file, spans, "bitmap table"):
            data = self._bitmap_data_clusters(chunk, bitmaps)
            if chunk.times == 1:
                self._bitmap_references(data, chunk.source[data[1]], bitmaps)
            else:
                self.refs.repeated(chunk.times, partial(
                    self._bitmap_references, data, chunk.source[data[1]], bitmaps))

    def _bitmap_data_clusters(self, chunk: EntryChunk, bitmaps: list[Bitmap]
                              ) -> tuple[U64, npt.NDArray[np.intp]]:
        """The data cluster offsets of some bitmap table entries (with their positions in the
        chunk); an invalid entry fails the check."""
        table = chunk.entries
        offsets = table & u64(L.BME_TABLE_ENTRY_OFFSET_MASK)
        bad = ((table & u64(BME_TABLE_ENTRY_RESERVED_MASK)) != 0) | (
            (offsets != 0) & (((table & u64(1)) != 0)
                              | ((offsets % u64(self.h.cluster_size)) != 0)))
        if bool(bad.any()):
            at = np.flatnonzero(bad)
            i = int(at[np.lexsort((chunk.l1_index[at], chunk.source[at]))[0]])
            bm = bitmaps[int(chunk.source[i])]
            index = int(chunk.l1_index[i])
            raise Qcow2Error(
                f"bitmap table entry {index} is invalid (0x{int(table[i]):x}): qemu-img check "
                "fails on this image", structure=f"bitmap '{bm.name}' bitmap table",
                offset=bm.bitmap_table_offset + 8 * index, filename=self.image.filename)
        used = np.flatnonzero(offsets)
        return offsets[used], used

    def _bitmap_references(self, data: tuple[U64, npt.NDArray[np.intp]],
                           sources: npt.NDArray[np.intp], bitmaps: list[Bitmap]) -> None:
        structure = self.tally.structure
        past = np.flatnonzero(self.refs.add_clusters(data[0]))
        for k in past[: structure.room].tolist():
            bm = bitmaps[int(sources[k])]
            structure.add(finding(
                "reference-past-eof", f"bitmap '{bm.name}'",
                Place(TableName.BITMAP, bm.bitmap_table_offset), what="bitmap data cluster",
                host_offset=int(data[0][k]), file_length=self.refs.file_length))
        structure.count(max(0, len(past) - structure.room))

    def refblocks(self) -> None:
        """check_refblocks(): each refcount block must end up with a refcount of exactly 1.

        qemu walks the table entry by entry; a table can hold a million entries naming the
        same few clusters, so this is vectorised: the value an entry sees is its cluster's
        count after its own reference (ReferenceCounts.add_each keeps qemu's order), and
        findings are built in entry order while there is room."""
        cs = self.h.cluster_size
        table = self.ondisk.table
        index = np.flatnonzero(table)
        raw = table[index]
        offset = raw & u64(L.REFT_OFFSET_MASK)
        cluster = offset >> u64(self.h.cluster_bits)
        reserved = (raw & u64(REFT_RESERVED_MASK)) != 0
        unaligned = ~reserved & ((offset & u64(cs - 1)) != 0)
        outside = ~reserved & ~unaligned & (cluster >= u64(self.refs.size))
        usable = ~(reserved | unaligned | outside)
        # inc_region() refuses a block at or past EOF (only the cluster the in-memory table
        # grew by can be one): a corruption, and no reference counted.
        past = usable & (offset >= u64(self.refs.file_length))
        value = np.zeros(len(index), dtype=np.int64)
        counted = np.flatnonzero(usable & ~past)
        value[counted] = self.refs.add_each(cluster[counted])
        at_end = np.flatnonzero(past)
        value[at_end] = self.refs.at(cluster[at_end].astype(np.intp))
        np.minimum(value, min((1 << self.h.refcount_bits) - 1, 2**62), out=value)
        wrong = usable & (value != 1)
        problems = np.flatnonzero(reserved | unaligned | outside | past | wrong)
        shown = problems[: self.tally.structure.room]
        for k in shown.tolist():
            self._refblock(int(index[k]), int(raw[k]), int(value[k]), bool(past[k]),
                           bool(wrong[k]))
        rest = problems[len(shown):]
        hidden = len(rest) + int(np.count_nonzero(past[rest] & wrong[rest]))
        self.tally.corruptions += hidden
        self.tally.structure.count(hidden)

    def _refblock(self, i: int, raw: int, value: int, past: bool, wrong: bool) -> None:
        where = f"refcount table entry {i}"
        table = self.h.refcount_table_offset
        place = Place(TableName.REFCOUNT_TABLE, table, i, refcount_table_offset=table)
        offset = raw & L.REFT_OFFSET_MASK
        cluster = offset >> self.h.cluster_bits
        values = {"index": i, "host_offset": offset}
        if raw & REFT_RESERVED_MASK:
            self.tally.corruption("refcount-table-reserved-bits", where, place, entry=raw,
                                  found=raw & REFT_RESERVED_MASK, **values)
        elif offset % self.h.cluster_size:
            self.tally.corruption("unaligned-refcount-block", where, place, **values)
        elif cluster >= self.refs.size:
            self.tally.corruption("refcount-block-outside-image", where, place,
                                  cluster_index=cluster,
                                  file_length=self.refs.file_length, **values)
        else:
            if past:  # the refused reference (no count change)
                self.refs.inc_region(offset, self.h.cluster_size, f"refcount block {i}")
            if wrong:
                self.tally.corruption("refcount-block-refcount", where, place,
                                      cluster_index=cluster,
                                      expected=1, found=value, **values)

    def locate(self, wanted: Optional[frozenset[int]] = None) -> None:
        """Refcount findings (known by cluster number only) located at the entries that
        reference the cluster (with `wanted`: of these clusters only): one more pass over the
        tables, only when there are some."""
        from .locate import locate_findings

        # One pass for both lists: the walk is the cost, whatever the number of findings.
        parts = (self.tally.structure, self.tally.compare)
        located = locate_findings(self.image, self.ondisk,
                                  [f for part in parts for f in part.items], wanted)
        for part in parts:
            part.items, located = located[:len(part.items)], located[len(part.items):]
            part.settle()  # with a view, those now placed outside it leave

    def result(self, highest: int) -> CheckResult:
        h = self.h
        tally = self.tally
        findings, total = tally.ordered()
        if h.dirty and h.lazy_refcounts:
            findings = _as_lazy_debt(findings)
        notes: list[str] = []
        if h.dirty:
            notes.append("dirty bit set: on-disk refcounts are not up to date (lazy "
                         "refcounts); qemu repairs them when it next opens the image "
                         "read-write")
        if h.corrupt:
            notes.append("corrupt bit set: qemu refuses to open this image read-write")
        return CheckResult(
            filename=self.image.filename,
            check_errors=tally.check_errors,
            corruptions=tally.corruptions,
            leaks=tally.leaks,
            image_end_offset=(highest + 1) * h.cluster_size,
            total_clusters=-(-(h.size // 512 * 512) // h.cluster_size),
            allocated_clusters=tally.allocated,
            fragmented_clusters=tally.fragmented,
            compressed_clusters=tally.compressed,
            findings=tuple(findings[:tally.structure.limit]),
            findings_total=total,
            corrupt_bit=h.corrupt,
            dirty_bit=h.dirty,
            notes=tuple(notes),
        )


# A dirty lazy-refcounts image: the refcounts qemu had not written yet show up as refcount
# errors, leaks and OFLAG_COPIED mismatches (LAZY_DEBT_KINDS). They are the expected debt, not
# corruption (the health policy's `dirty` rule): the catalogue's advice for real refcount
# damage would contradict it. qemu-img check's figures and exit code stay as qemu's.
ADVICE_LAZY_DEBT = (
    "Dirty lazy-refcounts image: these refcount differences are the expected lazy-refcount "
    "debt, not corruption; qemu repairs them when it next opens the image read-write (or run "
    "`qemu-img check -r all` on the stopped VM)."
)


def _as_lazy_debt(findings: list[Finding]) -> list[Finding]:
    return [replace(f, advice=ADVICE_LAZY_DEBT) if f.kind in LAZY_DEBT_KINDS else f
            for f in findings]


def check(image: Qcow2Image, *, max_findings: int = 100) -> CheckResult:
    """`qemu-img check` without -r on an open image (qcow2_co_check_locked()). Raises
    Qcow2Error when qemu's check itself would fail (exit 1 with no figures)."""
    return check_pass(image, max_findings).result


def check_pass(image: Qcow2Image, max_findings: int,
               wanted: Optional[frozenset[int]] = None) -> Pass:
    """One pass of the check over the image as it is on disk now, with what each finding
    counts in the figures; refcount findings located only for the `wanted` clusters when
    given."""
    return _checked(image, max_findings, wanted)[0]


def _checked(image: Qcow2Image, max_findings: int, wanted: Optional[frozenset[int]] = None,
             keep: Optional[Keep] = None) -> tuple[Pass, Tally]:
    """check_pass(), its findings limited to those `keep` keeps (a snapshot view), with the
    tally that counted the others."""
    keep_heap_top()
    try:
        run = _Check(image, max_findings, keep)
        snapshots = image.snapshots()
        run.snapshot_table(snapshots)
        run.calculate(snapshots, image.snapshots_size)
        run.refs.overflows(image.header.refcount_bits)
        highest = compare_refcounts(run.refs, run.ondisk, (1 << image.header.refcount_bits) - 1,
                                    run.tally)
        run.locate(wanted)
    except Qcow2Error as exc:
        raise exc.with_filename(image.filename) from None
    result = run.result(highest)
    h = image.header
    return Pass(result, tuple(run.tally.ordered_weights()[:len(result.findings)]),
                h.dirty and h.lazy_refcounts), run.tally


def check_view(image: Qcow2Image, *, snapshot: str, max_findings: int = 100
               ) -> tuple[CheckResult, FindingsView]:
    """check_opened() with its findings limited to the tables `snapshot` selects
    (collectors/qcow2/snapshots.py; SnapshotSelectorError when it names no snapshot or
    several): the figures stay the whole image's, the findings are those located in the
    selected L1 and L2 tables and the selected snapshots' table entries, the others counted.
    An image held for writing is settled over the whole image first, then limited."""
    tables = selected_tables(image, select_snapshots(image, snapshot))
    if held_for_writing(image.file):
        return limited(settled_check(image, max_findings, check_pass), tables, snapshot)
    found, tally = _checked(image, max_findings, keep=tables.keep)
    elsewhere, unexamined = tally.outside()
    return found.result, FindingsView(snapshot, elsewhere, unexamined)


def check_image(path: str, *, max_findings: int = 100) -> CheckResult:
    """Open `path` read-only and check it; raises Qcow2Error when it cannot be checked."""
    with Qcow2Image.open(path) as image:
        return check_opened(image, max_findings=max_findings)


def check_opened(image: Qcow2Image, *, max_findings: int = 100) -> CheckResult:
    """Check an open image. One that a running qemu holds for writing is read again until what
    the check finds holds still (collectors/check/settle.py); any other is read once."""
    if held_for_writing(image.file):
        return settled_check(image, max_findings, check_pass)
    return check(image, max_findings=max_findings)


def image_end_offset_by_walk(image: Qcow2Image) -> int:
    """The image end offset `qemu-img check` reports, from the full metadata walk (used when
    on-disk refcounts cannot be trusted, e.g. a dirty lazy-refcounts image). On an image held
    for writing, from a walk during which qemu moved no table."""
    if held_for_writing(image.file):
        return stable_pass(image, 0, check_pass).result.image_end_offset
    return check(image, max_findings=0).image_end_offset
