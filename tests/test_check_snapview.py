"""collectors/check/snapview.py: the L1 tables of a snapshot selection and who owns each, their
entries and the distinct L2 tables they name, read on images qemu-img snapshot made and on
byte-patched copies (a shared L1 table, tables qemu's check would not walk, an entry past EOF,
an offset near 2**64, 2000 snapshots), and the findings a `check --snapshot` view keeps.
Expected values are read here with tests/damage.py's minimal readers, independent of
collectors/."""

from __future__ import annotations

from pathlib import Path

import pytest

from qcow2_monitor.collectors.check.checker import check_image
from qcow2_monitor.collectors.check.snapview import (
    SelectedTables,
    l1_owners,
    limited,
    read_selection,
    selected_tables,
)
from qcow2_monitor.collectors.common.record import replace
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.snapshots import select_snapshots
from qcow2_monitor.collectors.report.model import Finding, Place, Severity, TableName

from corpus import QEMU_IMG, QEMU_IO, run
from daemons import make_image
from damage import (
    L1E_OFFSET_MASK,
    copy_image,
    patch_u32,
    patch_u64,
    read_header,
    read_u64,
    snapshot_entry_offsets,
    snapshot_table,
)
from hostile import many_snapshots_image
from work import counting

CLUSTER = 65536
# A snapshot table entry starts with u64 l1_table_offset, u32 l1_size (docs/qcow2-format.md).
AT_L1_OFFSET, AT_L1_SIZE = 0, 8


@pytest.fixture(scope="module")
def history(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 GiB, 64 KiB clusters: data in L1[0] and L1[1]; snapshot s1; L1[0]'s data rewritten
    (its L2 table copied); snapshot s2 (sharing the active L2 tables)."""
    path = tmp_path_factory.mktemp("snapview") / "h.qcow2"
    make_image(path, "1G", write=["write -P 1 0 128k", "write -P 2 600M 64k"])
    run([QEMU_IMG, "snapshot", "-c", "s1", str(path)])
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 3 0 64k", str(path)])
    run([QEMU_IMG, "snapshot", "-c", "s2", str(path)])
    return path


def l1(path: Path, offset: int, size: int) -> list[int]:
    return [read_u64(path, offset + 8 * i) for i in range(size)]


def tables_of(path: Path) -> list[tuple[int, int]]:
    """(offset, size) of the active L1 table, then of each snapshot's."""
    h = read_header(path)
    return [(h["l1_table_offset"], h["l1_size"]),
            *((offset, size) for _, _, offset, size in snapshot_table(path))]


def entry_at(path: Path, k: int) -> int:
    return snapshot_entry_offsets(path)[k]


def owners_of(path: Path, selector: str) -> list[tuple[int, int, bool, list[str], str | None]]:
    with Qcow2Image.open(str(path)) as image:
        return [(o.offset, o.size, o.active, [sn.id_str for sn in o.snapshots], o.skipped)
                for o in l1_owners(image, select_snapshots(image, selector))]


def test_owners_of_each_selection(history: Path) -> None:
    (active, size), s1, s2 = tables_of(history)
    assert [(i, n) for i, n, _, _ in snapshot_table(history)] == [("1", "s1"), ("2", "s2")]
    assert owners_of(history, "all") == [(active, size, True, [], None),
                                         (*s1, False, ["1"], None), (*s2, False, ["2"], None)]
    assert owners_of(history, "inactive") == [(*s1, False, ["1"], None),
                                              (*s2, False, ["2"], None)]
    assert owners_of(history, "active") == [(active, size, True, [], None)]
    assert owners_of(history, "s2") == [(*s2, False, ["2"], None)]


def test_snapshots_sharing_a_table_are_one_owner(history: Path, tmp_path: Path) -> None:
    """Snapshot 1 pointed at the active L1 table, snapshot 2 at snapshot 1's old one."""
    path = copy_image(history, tmp_path / "shared.qcow2")
    (active, size), s1, _ = tables_of(path)
    patch_u64(path, entry_at(path, 0) + AT_L1_OFFSET, active)
    patch_u32(path, entry_at(path, 0) + AT_L1_SIZE, size)
    patch_u64(path, entry_at(path, 1) + AT_L1_OFFSET, s1[0])
    patch_u32(path, entry_at(path, 1) + AT_L1_SIZE, s1[1])
    assert owners_of(path, "all") == [(active, size, True, ["1"], None),
                                      (*s1, False, ["2"], None)]
    # Selected alone, snapshot 1's table is not the active image's.
    assert owners_of(path, "1") == [(active, size, False, ["1"], None)]


@pytest.mark.parametrize(("field", "value", "reason"), [
    (AT_L1_OFFSET, 512, "not cluster aligned"),
    (AT_L1_SIZE, (32 << 20) // 8 + 1, "larger than qemu's limit of 4194304 entries"),
], ids=["unaligned", "over-limit"])
def test_tables_qemu_would_not_walk_are_skipped(history: Path, tmp_path: Path, field: int,
                                                value: int, reason: str) -> None:
    """qemu's check refuses a snapshot L1 table not cluster aligned or over QCOW_MAX_L1_SIZE
    (32 MiB of entries): listed with the reason, never read."""
    path = copy_image(history, tmp_path / "skipped.qcow2")
    at = entry_at(path, 0) + field
    if field == AT_L1_OFFSET:
        patch_u64(path, at, read_u64(path, at) + value)
    else:
        patch_u32(path, at, value)
    ((offset, size),) = [(o, s) for o, s in tables_of(path)[1:2]]
    assert owners_of(path, "1") == [(offset, size, False, ["1"], reason)]
    with Qcow2Image.open(str(path)) as image:
        owners = l1_owners(image, select_snapshots(image, "1"))
        with counting() as work:
            read = read_selection(image, owners, 10)
    assert (work.reads, read.nonzero.tolist(), read.namings, len(read.l2_offsets)) == (
        0, [0], 0, 0)


def test_entries_and_l2_tables_of_all(history: Path) -> None:
    tables = tables_of(history)
    entries = [l1(history, offset, size) for offset, size in tables]
    nonzero = [[(k, i, e) for i, e in enumerate(table) if e] for k, table in
               enumerate(entries)]
    flat = [x for table in nonzero for x in table]
    # The distinct L2 tables in order of first naming, and which tables name each.
    order: list[int] = []
    for _, _, e in flat:
        if e & L1E_OFFSET_MASK not in order:
            order.append(e & L1E_OFFSET_MASK)
    named_by = [sorted({k for k, _, e in flat if e & L1E_OFFSET_MASK == l2}) for l2 in order]
    # qemu-img snapshot -c copies the L1: s2 names the active tables, s1 the old L1[0].
    assert len(order) == 3 and named_by == [[0, 2], [0, 1, 2], [1]]
    with Qcow2Image.open(str(history)) as image:
        owners = l1_owners(image, select_snapshots(image, "all"))
        read = read_selection(image, owners, 3)
    assert read.nonzero.tolist() == [len(t) for t in nonzero]
    table, index, raw = read.shown
    assert list(zip(table.tolist(), index.tolist(), raw.tolist())) == flat[:3]
    assert (read.namings, read.namings_past_eof) == (len(flat), 0)
    assert read.l2_offsets.tolist() == order
    firsts = [next((k, i) for k, i, e in flat if e & L1E_OFFSET_MASK == l2) for l2 in order]
    assert list(zip(*(part.tolist() for part in read.l2_first))) == firsts
    assert [read.named_by(row).tolist() for row in range(len(order))] == named_by


def test_entry_past_eof_counted_not_kept(history: Path, tmp_path: Path) -> None:
    """An L2 offset at or past EOF reads as zeros (qemu's bdrv_pread): it is a naming, past
    the end, and no table."""
    path = copy_image(history, tmp_path / "eof.qcow2")
    _, (s1, s1_size), _ = tables_of(path)
    beyond = (path.stat().st_size // CLUSTER + 10) * CLUSTER
    patch_u64(path, s1 + 8, beyond)  # snapshot 1's L1[1]
    with Qcow2Image.open(str(path)) as image:
        read = read_selection(image, l1_owners(image, select_snapshots(image, "1")), 0)
    named = [e & L1E_OFFSET_MASK for e in l1(path, s1, s1_size) if e]
    assert (read.namings, read.namings_past_eof) == (len(named), 1)
    assert read.l2_offsets.tolist() == [o for o in named if o != beyond]
    assert read.shown[0].size == 0  # limit 0: no entry kept


def test_table_near_the_end_of_the_offset_space(history: Path, tmp_path: Path) -> None:
    """A snapshot L1 table at 2**64 - 64 KiB (aligned, small): past EOF, nothing read."""
    path = copy_image(history, tmp_path / "far.qcow2")
    patch_u64(path, entry_at(path, 0) + AT_L1_OFFSET, 2**64 - CLUSTER)
    with Qcow2Image.open(str(path)) as image:
        owners = l1_owners(image, select_snapshots(image, "1"))
        with counting() as work:
            read = read_selection(image, owners, 10)
    assert owners[0].offset == 2**64 - CLUSTER and owners[0].skipped is None
    assert (work.reads, read.nonzero.tolist(), read.namings) == (0, [0], 0)


def test_many_snapshot_tables_read_by_windows(tmp_path: Path) -> None:
    """2000 snapshots with L1 tables of their own (8 entries naming one L2 table each, one
    4 KiB cluster apart): a window of 512 KiB covers 128 of them; each byte is read once."""
    path = tmp_path / "many.qcow2"
    copies = 2000
    many_snapshots_image(path, copies)
    tables = tables_of(path)
    (l2,) = {e & L1E_OFFSET_MASK for offset, size in tables for e in l1(path, offset, size)
             if e}
    with Qcow2Image.open(str(path)) as image:
        owners = l1_owners(image, select_snapshots(image, "all"))
        with counting() as work:
            read = read_selection(image, owners, 5)
    # From the active L1 table (before the snapshots') to the end of the last one.
    span = tables[-1][0] + 8 * 8 - tables[0][0]
    assert work.reads <= -(-span // (512 * 1024)) + 1, work
    assert work.bytes_read <= span, work
    assert len(owners) == copies + 1
    assert read.nonzero.tolist() == [1] + [8] * copies
    assert read.namings == 1 + 8 * copies
    assert read.l2_offsets.tolist() == [l2]
    assert read.named_by(0).tolist() == list(range(copies + 1))
    assert read.shown[0].tolist() == [0, 1, 1, 1, 1] and read.shown[1].tolist() == [
        0, 0, 1, 2, 3]


def place(table: TableName, offset: int, snapshot: str | None = None) -> Place:
    return Place(table, offset, 0, snapshot=snapshot)


def test_selected_tables_keep_their_findings(history: Path) -> None:
    (active, size), (s1, s1_size), _ = tables_of(history)
    s1_l2 = {e & L1E_OFFSET_MASK for e in l1(history, s1, s1_size) if e}
    rewritten = l1(history, active, size)[0] & L1E_OFFSET_MASK
    assert rewritten not in s1_l2
    with Qcow2Image.open(str(history)) as image:
        tables = selected_tables(image, select_snapshots(image, "s1"))
    assert tables == SelectedTables(frozenset({s1}), frozenset(s1_l2), frozenset({"1"}))
    assert [tables.holds(p) for p in (
        place(TableName.L1, s1), place(TableName.L1, active), place(TableName.L2, min(s1_l2)),
        place(TableName.L2, rewritten), place(TableName.SNAPSHOTS, 0, "1"),
        place(TableName.SNAPSHOTS, 0, "2"), place(TableName.HEADER, 0))] == [
        True, False, True, False, True, False, False]

    def finding(kind: str, *places: Place) -> Finding:
        return Finding(kind, Severity.CORRUPTION, "", "", cluster_index=5, places=places)

    # A refcount finding not located yet is undecided; another without a place is not kept.
    assert [tables.keep(f) for f in (
        finding("leak"), finding("refcount-too-low"), finding("copied-flag"),
        finding("copied-flag", place(TableName.L2, rewritten), place(TableName.L1, s1)),
        finding("copied-flag", place(TableName.L2, rewritten)))] == [
        None, None, False, True, False]

    clean = check_image(str(history))
    assert (clean.corruptions, clean.leaks, clean.findings) == (0, 0, ())
    inside = finding("l2-reserved-bits", place(TableName.L2, min(s1_l2)))
    outside = finding("l2-reserved-bits", place(TableName.L2, rewritten))
    whole = replace(clean, findings=(inside, outside), findings_total=5)
    result, view = limited(whole, tables, "s1")
    assert (result.findings, result.findings_total) == ((inside,), 1)
    assert (view.snapshot, view.findings_elsewhere, view.findings_unexamined) == ("s1", 1, 3)
    assert replace(result, findings=(), findings_total=0) == clean  # the figures stay
