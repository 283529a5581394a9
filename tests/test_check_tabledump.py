"""collectors/check/tabledump.py: the L1 and L2 dumps of the active image and of snapshot
selections, on images qemu-io and qemu-img snapshot made: every L2 entry's guest offset, type and
host offset as `qemu-img map` maps it, L1 entries and subcluster bitmaps as the spec lays them
out (read here with tests/damage.py), shared tables shown once with every owner, damaged entries
shown as they are, limits that cut the lists but never the counts, and work bounded by the
distinct tables however often they are named."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qcow2_monitor.collectors.check.tabledump import (
    L1Dump,
    L2Dump,
    SnapshotRef,
    dump_l1,
    dump_l2,
)
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.snapshots import select_snapshots

from corpus import QEMU_IMG, qemu_io, run
from daemons import make_image
from damage import (
    L1E_OFFSET_MASK,
    OFLAG_COPIED,
    active_l2_entries,
    copy_image,
    l1_entries,
    patch_u32,
    patch_u64,
    read_header,
    read_u64,
    snapshot_entry_offsets,
    snapshot_table,
)
from hostile import many_snapshots_image, one_table_named
from work import counting

CLUSTER = 65536
Mapped = list[tuple[int, str, int | None]]  # (guest offset, type, host offset)




@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 GiB, 64 KiB clusters: normal, compressed, zero-allocated and zero clusters in L1[0],
    data in L1[1]; snapshot s1; guest cluster 0 rewritten (L1[0]'s table copied)."""
    path = tmp_path_factory.mktemp("tabledump") / "h.qcow2"
    make_image(path, "1G", write=["write -P 1 0 128k", "write -c -P 2 1M 64k",
                                  "write -P 4 3M 64k", "write -z 3M 64k", "write -z 5M 64k",
                                  "write -P 6 600M 64k"])
    run([QEMU_IMG, "snapshot", "-c", "s1", str(path)])
    qemu_io(path, "write -P 3 0 64k")
    return path


def qemu_map(path: Path) -> Mapped:
    """Per allocated guest cluster, its type and host offset as qemu-img map shows them:
    data with an offset is normal, data without one compressed; zeros with an offset
    zero-alloc, without one zero-plain."""
    ranges = json.loads(run([QEMU_IMG, "map", "--output=json", str(path)]).stdout)
    mapped: Mapped = []
    for r in ranges:
        if not r["present"]:
            continue
        kind = ("normal" if "offset" in r else "compressed") if r["data"] else (
            "zero-alloc" if "offset" in r else "zero-plain")
        for k in range(r["length"] // CLUSTER):
            host = r["offset"] + k * CLUSTER if "offset" in r else None
            mapped.append((r["start"] + k * CLUSTER, kind, host))
    return mapped


def dumped(path: Path, selector: str, limit: int = 1000) -> tuple[L1Dump, L2Dump]:
    with Qcow2Image.open(str(path)) as image:
        selection = select_snapshots(image, selector)
        return dump_l1(image, selection, limit), dump_l2(image, selection, limit)


def l2_mapped(path: Path, selector: str) -> Mapped:
    _, l2 = dumped(path, selector)
    return sorted((e.guest_offset, e.type.label,
                   None if e.type.label in ("compressed", "zero-plain") else e.host_offset)
                  for t in l2.tables for e in t.entries)


def test_active_l2_entries_as_qemu_img_map_maps_them(history: Path) -> None:
    mapped = qemu_map(history)
    assert {kind for _, kind, _ in mapped} == {"normal", "compressed", "zero-alloc",
                                               "zero-plain"}
    assert l2_mapped(history, "active") == mapped
    _, l2 = dumped(history, "active")
    named = [e & L1E_OFFSET_MASK for e in l1_entries(history) if e]
    assert (l2.snapshot, l2.cluster_size, l2.extended_l2, l2.filename) == (
        "active", CLUSTER, False, str(history))
    assert (l2.nonempty_entries, l2.tables_named, l2.tables_past_end_of_file,
            l2.distinct_tables, l2.truncated) == (len(mapped), 2, 0, 2, False)
    assert [(t.l1_index, t.l2_offset, t.active, t.snapshots, t.snapshot_count)
            for t in l2.tables] == [(0, named[0], True, (), 0),
                                    (1, named[1], True, (), 0)]  # s1 not selected
    # A compressed entry (docs/qcow2-format.md §4, 64 KiB clusters): offset in bits 0-53,
    # additional 512-byte sectors in bits 54-61.
    raw = {e.l2_index: e.entry for e in active_l2_entries(history) if e.compressed}
    (entry,) = [e for t in l2.tables for e in t.entries
                if e.type.label == "compressed"]
    assert (entry.raw, entry.host_offset, entry.compressed_sectors, entry.reserved_bits) == (
        raw[entry.index], raw[entry.index] & ((1 << 54) - 1),
        (raw[entry.index] >> 54 & 0xFF) + 1, None)


def test_a_snapshots_tables_as_qemu_maps_it_applied(history: Path, tmp_path: Path) -> None:
    """A snapshot applied to a copy (qemu-img snapshot -a) makes the active L1 a copy of the
    snapshot's: qemu-img map of the copy maps what the snapshot's tables hold."""
    applied = copy_image(history, tmp_path / "applied.qcow2")
    run([QEMU_IMG, "snapshot", "-a", "s1", str(applied)])
    assert l2_mapped(history, "s1") == qemu_map(applied)
    assert l2_mapped(history, "s1") != l2_mapped(history, "active")


def test_l1_entries_as_the_spec_lays_them_out(history: Path) -> None:
    h = read_header(history)
    ((_, _, s1, s1_size),) = snapshot_table(history)
    l1, _ = dumped(history, "all")
    assert (l1.snapshot, l1.l1_tables, l1.truncated) == ("all", 2, False)
    (active, snap) = l1.tables
    assert (active.l1_table_offset, active.l1_size, active.active, active.snapshots) == (
        h["l1_table_offset"], h["l1_size"], True, ())
    assert (snap.l1_table_offset, snap.l1_size, snap.active, snap.snapshots,
            snap.snapshot_count) == (s1, s1_size, False, (SnapshotRef("1", "s1"),), 1)
    for view, raw in ((active, l1_entries(history)),
                      (snap, [read_u64(history, s1 + 8 * i) for i in range(s1_size)])):
        expected = [(i, e, e & L1E_OFFSET_MASK, bool(e & OFLAG_COPIED), 0)
                    for i, e in enumerate(raw) if e]
        assert [(e.index, e.raw, e.l2_offset, e.copied, e.reserved_bits)
                for e in view.entries] == expected
        assert view.nonzero_entries == len(expected)
    assert l1.nonzero_entries == 4
    # After the snapshot only the copied table of L1[0] is the active image's alone.
    assert [e.copied for e in active.entries] == [True, False]


def test_shared_tables_shown_once_with_every_owner(history: Path) -> None:
    _, l2 = dumped(history, "all")
    ((_, _, s1, _),) = snapshot_table(history)
    old = read_u64(history, s1) & L1E_OFFSET_MASK
    active = [e & L1E_OFFSET_MASK for e in l1_entries(history) if e]
    one = (SnapshotRef("1", "s1"),)
    assert [(t.l1_index, t.l2_offset, t.active, t.snapshots) for t in l2.tables] == [
        (0, active[0], True, ()), (1, active[1], True, one),
        (0, old, False, one)]
    assert (l2.tables_named, l2.distinct_tables) == (4, 3)


def test_limits_cut_lists_not_counts(history: Path) -> None:
    l1, l2 = dumped(history, "all", limit=1)
    assert (len(l1.tables), sum(len(t.entries) for t in l1.tables),
            l1.l1_tables, l1.nonzero_entries, l1.truncated) == (1, 1, 2, 4, True)
    full = dumped(history, "all")[1]
    assert (len(l2.tables), sum(len(t.entries) for t in l2.tables),
            l2.nonempty_entries, l2.distinct_tables, l2.truncated) == (
        1, 1, full.nonempty_entries, 3, True)
    assert l2.tables[0].nonempty_entries == full.tables[0].nonempty_entries


def test_extended_l2_subclusters(tmp_path: Path) -> None:
    """64 KiB clusters of 32 subclusters of 2 KiB (docs/qcow2-format.md §4): 4 KiB written
    at 0 and at 8 KiB allocate subclusters 0-1 and 4-5; 4 KiB of zeros at 64 KiB mark
    subclusters 0-1 of cluster 1 as reading zeros (bits 32-63)."""
    path = tmp_path / "extended.qcow2"
    make_image(path, "1G", options=["extended_l2=on"],
               write=["write -P 1 0 4k", "write -P 1 8k 4k", "write -z 64k 4k"])
    _, l2 = dumped(path, "active")
    entries = {e.index: e for t in l2.tables for e in t.entries}
    assert l2.extended_l2 and sorted(entries) == [0, 1]
    assert (entries[0].type.label, entries[0].subcluster_alloc,
            entries[0].subcluster_zero) == ("normal", 0b110011, 0)
    assert (entries[1].type.label, entries[1].subcluster_alloc,
            entries[1].subcluster_zero, entries[1].raw) == ("unallocated", 0, 0b11, 0)
    on_disk = {e.l2_index: e.bitmap for e in active_l2_entries(path) if e.entry or e.bitmap}
    assert on_disk == {0: 0b110011, 1: 0b11 << 32}


def test_damaged_entries_shown_as_they_are(history: Path, tmp_path: Path) -> None:
    """An L1 entry with a reserved bit (bit 1) and one naming a table past EOF; a snapshot
    L1 table moved off its cluster boundary: shown, counted, skipped with the reason."""
    path = copy_image(history, tmp_path / "damaged.qcow2")
    h = read_header(path)
    first, second = l1_entries(path)[:2]
    beyond = (path.stat().st_size // CLUSTER + 4) * CLUSTER
    patch_u64(path, h["l1_table_offset"], first | 2)
    patch_u64(path, h["l1_table_offset"] + 8, beyond | OFLAG_COPIED)
    patch_u64(path, h["snapshots_offset"], snapshot_table(path)[0][2] + 512)
    l1, l2 = dumped(path, "all")
    active, snap = l1.tables
    assert [(e.raw, e.l2_offset, e.reserved_bits) for e in active.entries] == [
        (first | 2, first & L1E_OFFSET_MASK, 2), (beyond | OFLAG_COPIED, beyond, 0)]
    assert (snap.skipped, snap.entries, snap.nonzero_entries) == ("not cluster aligned", (), 0)
    assert second != beyond | OFLAG_COPIED
    assert (l2.tables_named, l2.tables_past_end_of_file, l2.distinct_tables) == (
        2, 1, 1)
    assert [t.l2_offset for t in l2.tables] == [first & L1E_OFFSET_MASK]


def test_owners_of_one_table_limited(history: Path, tmp_path: Path) -> None:
    """Snapshots s2 and s3 (made by qemu-img) pointed at s1's L1 table: one table with three
    owners; a limit of 2 lists two and counts three, for the L1 table and its L2 tables."""
    path = copy_image(history, tmp_path / "owners.qcow2")
    for name in ("s2", "s3"):
        run([QEMU_IMG, "snapshot", "-c", name, str(path)])
    ((_, _, s1, s1_size), *_) = snapshot_table(path)
    for at in snapshot_entry_offsets(path)[1:]:
        patch_u64(path, at, s1)
        patch_u32(path, at + 8, s1_size)
    refs = (SnapshotRef("1", "s1"), SnapshotRef("2", "s2"))
    l1, l2 = dumped(path, "inactive", limit=2)
    assert [(t.l1_table_offset, t.snapshots, t.snapshot_count) for t in l1.tables] == [
        (s1, refs, 3)]
    assert l1.truncated
    assert [(t.snapshots, t.snapshot_count) for t in l2.tables] == [(refs, 3), (refs, 3)]
    assert l2.truncated


def test_many_snapshots_naming_one_table(tmp_path: Path) -> None:
    """2000 snapshots with L1 tables of their own, all naming the one L2 table: it is read
    once, shown once, with `limit` of its owners and the count of all."""
    path = tmp_path / "many.qcow2"
    many_snapshots_image(path, 2000)
    with Qcow2Image.open(str(path)) as image:
        selection = select_snapshots(image, "inactive")
        with counting() as work:
            l2 = dump_l2(image, selection, 5)
    l1_span = snapshot_table(path)[-1][2] + 64 - snapshot_table(path)[0][2]
    assert work.bytes_read <= l1_span + 4096, work
    (table,) = l2.tables
    assert (table.active, table.snapshots, table.snapshot_count) == (
        False, (SnapshotRef("1", "s"),) * 5, 2000)
    assert (l2.tables_named, l2.distinct_tables, l2.truncated) == (8 * 2000, 1, True)
    assert table.nonempty_entries == l2.nonempty_entries == 16  # 64 KiB of 4 KiB clusters


def test_one_table_named_half_a_million_times(tmp_path: Path) -> None:
    path = tmp_path / "named.qcow2"
    namings = 1 << 19
    one_table_named(path, namings, "4G")
    with Qcow2Image.open(str(path)) as image:
        selection = select_snapshots(image, "active")
        with counting(call_limit=200_000) as work:
            l2 = dump_l2(image, selection, 10)
    assert not work.stopped, work
    assert work.bytes_read <= namings * 8 + 4096, work
    assert (l2.tables_named, l2.distinct_tables) == (namings, 1)
    # 300 KiB at guest 0 and 8 KiB at 1 MiB (tests/hostile.py), in 4 KiB clusters: 75 + 2
    # entries of the table (which maps 2 MiB).
    assert l2.nonempty_entries == 75 + 2 and len(l2.tables[0].entries) == 10
