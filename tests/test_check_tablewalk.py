"""collectors/check/tablewalk.py: the L2 walk of qemu's check (check_refcounts_l2() and the L2
half of check_oflag_copied()), run on its own over the L2 tables of real images: normal,
compressed, zero and extended-L2 entries counted as qemu counts them, and each damaged entry
found where qemu-img check finds it."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest

from qcow2_monitor.collectors.check.findings import Tally
from qcow2_monitor.collectors.check.l1 import TableGatherer
from qcow2_monitor.collectors.check.refblocks import OnDiskRefcounts
from qcow2_monitor.collectors.check.references import ReferenceCounts
from qcow2_monitor.collectors.check.tablewalk import (
    Geometry,
    L1Table,
    TableWalk,
    l1_entry_place,
    l2_entry_location,
    l2_entry_place,
    read_tables,
)
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.report.model import Finding, TableName

from corpus import QEMU_IMG, run
from daemons import make_image
from damage import (
    L1E_OFFSET_MASK,
    OFLAG_COMPRESSED,
    OFLAG_COPIED,
    active_l2_entries,
    copy_image,
    get_refcount,
    l1_entries,
    patch_u64,
    read_header,
)
from work import counting

CLUSTER = 65536


@pytest.fixture(scope="module")
def plain(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Normal, compressed (two in one host cluster), zero-allocated and zero entries."""
    path = tmp_path_factory.mktemp("tablewalk") / "plain.qcow2"
    make_image(path, "1G", write=["write -P 1 0 128k", "write -c -P 2 1M 64k",
                                  "write -c -P 3 2M 64k", "write -P 4 3M 64k",
                                  "write -z 3M 64k", "write -z 5M 64k"])
    return path


@pytest.fixture(scope="module")
def extended(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Extended L2 entries: 4 KiB writes set two 2 KiB subclusters each."""
    path = tmp_path_factory.mktemp("tablewalk") / "extended.qcow2"
    make_image(path, "1G", options=["extended_l2=on"], write=[
        "write -P 1 0 4k", "write -P 1 8k 4k", "write -z 64k 4k", "write -P 2 1M 64k"])
    return path


class Walked:
    """What walking the tables the active L1 names found (counted as the active table, or
    as a snapshot's)."""

    def __init__(self, path: Path, active: bool = True, max_findings: int = 100) -> None:
        self.tally = Tally(max_findings)
        with Qcow2Image.open(str(path)) as image:
            self.geo = Geometry.of(image)
            refs = ReferenceCounts(image.file.length, image.header.cluster_bits, self.tally)
            walk = TableWalk(image, refs, OnDiskRefcounts(image), self.tally)
            named = [(i, e & L1E_OFFSET_MASK) for i, e in enumerate(l1_entries(path))
                     if e & L1E_OFFSET_MASK]
            gatherer = TableGatherer()
            gatherer.add(np.array([offset for _, offset in named], dtype=np.uint64),
                         np.array([i for i, _ in named], dtype=np.intp),
                         np.ones(len(named), dtype=bool))
            l1 = L1Table(image.header.l1_table_offset, "")
            walk.walk_tables(gatherer.tables(), active, lambda _k: l1)
            self.counts = refs.values(0, refs.size).tolist()
        self.findings: list[Finding] = self.tally.ordered()[0]

    def referenced(self) -> dict[int, int]:
        return {c: n for c, n in enumerate(self.counts) if n}


def qemu_check(path: Path) -> tuple[dict[str, int], str]:
    codes = (0, 1, 2, 3)
    figures = json.loads(run([QEMU_IMG, "check", "--output=json", str(path)],
                             allowed_returncodes=codes).stdout)
    text = run([QEMU_IMG, "check", str(path)], allowed_returncodes=codes)
    return figures, text.stdout + text.stderr


def test_location_text_and_places() -> None:
    # 64 KiB clusters: 8192 entries per table; L1[3] entry 12 maps guest cluster 3*8192 + 12.
    guest = (3 * 8192 + 12) << 16
    assert l2_entry_location("snapshot 1: ", 0x50000, 12, 3, 8192, 16) == (
        f"snapshot 1: L2 table at 0x50000 entry 12 (L1[3], guest offset 0x{guest:x})")
    place = l2_entry_place(0x50000, 12, 3, 8192, 16, "1")
    assert (place.table, place.table_offset, place.entry, place.l1_index, place.guest_offset,
            place.snapshot) == (TableName.L2, 0x50000, 12, 3, guest, "1")
    place = l1_entry_place(0x30000, 2, 8192, 16, None)
    assert (place.table, place.table_offset, place.entry, place.l1_index, place.guest_offset,
            place.snapshot) == (TableName.L1, 0x30000, 2, 2, 2 * 8192 << 16, None)


@pytest.mark.parametrize("fixture", ["plain", "extended"])
def test_geometry_from_the_header(fixture: str, request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    h = read_header(path)
    with Qcow2Image.open(str(path)) as image:
        geo = Geometry.of(image)
    bits = h["cluster_bits"]
    entry = 16 if fixture == "extended" else 8  # an extended entry adds a 64-bit bitmap
    assert (geo.cluster_bits, geo.l2_entries, geo.extended, geo.data_file,
            geo.file_length) == (bits, (1 << bits) // entry, fixture == "extended", False,
                                 path.stat().st_size)
    # Compressed entries (docs/qcow2-format.md §4): x = 62 - (cluster_bits - 8) offset bits,
    # then cluster_bits - 8 bits of additional sectors.
    assert (geo.cluster_size, geo.csize_shift, geo.csize_mask,
            geo.compressed_offset_mask) == (65536, 54, 0xFF, (1 << 54) - 1)


def test_adjacent_tables_read_at_once(plain: Path, tmp_path: Path) -> None:
    l2 = l1_entries(plain)[0] & L1E_OFFSET_MASK
    past = plain.stat().st_size + CLUSTER
    with Qcow2Image.open(str(plain)) as image, counting() as work:
        words = read_tables(image, np.array([l2, l2 + CLUSTER, past], dtype=np.uint64),
                            CLUSTER)
    # The table and the cluster after it in one read; past EOF nothing to read at all.
    assert (work.reads, work.bytes_read) == (1, 2 * CLUSTER)
    entries = [e.entry for e in active_l2_entries(plain) if e.l1_index == 0]
    assert words[:8192].tolist() == entries
    assert not words[2 * 8192:].any()  # past EOF reads as zeros


@pytest.mark.parametrize("fixture", ["plain", "extended"])
def test_figures_and_references_as_qemu_counts_them(fixture: str,
                                                    request: pytest.FixtureRequest) -> None:
    path: Path = request.getfixturevalue(fixture)
    walked = Walked(path)
    figures, _ = qemu_check(path)
    assert walked.tally.allocated == figures["allocated-clusters"]
    assert walked.tally.fragmented == figures.get("fragmented-clusters", 0)
    assert walked.tally.compressed == figures.get("compressed-clusters", 0)
    # Every cluster the L2 entries reference, as often as qemu counted (its refcounts; two
    # compressed clusters share one host cluster in `plain`).
    referenced = walked.referenced()
    assert referenced == {c: get_refcount(path, c) for c in referenced}
    data = {e.host_offset // CLUSTER for e in active_l2_entries(path)
            if e.host_offset and not e.compressed}
    assert data <= set(referenced)
    assert (walked.tally.corruptions, walked.findings) == (0, [])


def test_plain_figures_by_hand(plain: Path) -> None:
    walked = Walked(plain)
    # Two normal, two compressed, one zero-allocated cluster; the zero cluster without
    # data is not allocated.
    assert (walked.tally.allocated, walked.tally.compressed) == (5, 2)
    assert 2 in walked.referenced().values()  # the host cluster both compressed ones use


def test_snapshot_tables_count_no_figures(plain: Path) -> None:
    """A snapshot's tables add references only: the allocation figures are the active
    image's (CHECK_FRAG_INFO is passed for the active L1 table alone)."""
    walked = Walked(plain, active=False)
    assert (walked.tally.allocated, walked.tally.fragmented, walked.tally.compressed) == (
        0, 0, 0)
    assert walked.referenced() == Walked(plain).referenced()


def damaged(source: Path, tmp_path: Path, l2_index: int, value: int,
            bitmap: int | None = None) -> tuple[Path, int]:
    """A copy with the entry `l2_index` of the first L2 table replaced; (copy, its offset)."""
    path = copy_image(source, tmp_path / "damaged.qcow2")
    (entry,) = [e for e in active_l2_entries(path) if (e.l1_index, e.l2_index) == (0, l2_index)]
    patch_u64(path, entry.file_offset, value)
    if bitmap is not None:
        patch_u64(path, entry.file_offset + 8, bitmap)
    return path, entry.file_offset


def the_finding(walked: Walked, kind: str) -> Finding:
    (finding,) = [f for f in walked.findings if f.kind == kind]
    return finding


def test_unaligned_data_offset(plain: Path, tmp_path: Path) -> None:
    host = 5 * CLUSTER + 512
    path, _ = damaged(plain, tmp_path, 1, host | OFLAG_COPIED)
    walked = Walked(path)
    _, text = qemu_check(path)
    assert f"ERROR offset={host:x}: Data cluster is not properly aligned" in text
    finding = the_finding(walked, "unaligned-data-offset")
    l2 = l1_entries(path)[0] & L1E_OFFSET_MASK
    assert finding.host_offset == host
    assert finding.location == l2_entry_location("", l2, 1, 0, 8192, 16)
    (place,) = finding.places
    assert (place.table, place.table_offset, place.entry, place.guest_offset) == (
        TableName.L2, l2, 1, CLUSTER)


def test_reserved_bits(plain: Path, tmp_path: Path) -> None:
    value = 6 * CLUSTER | OFLAG_COPIED | 1 << 56
    path, _ = damaged(plain, tmp_path, 1, value)
    walked = Walked(path)
    _, text = qemu_check(path)
    assert f"ERROR found l2 entry with reserved bits set: {value:x}" in text
    finding = the_finding(walked, "l2-reserved-bits")
    assert finding.found == 1 << 56


def test_data_past_eof(plain: Path, tmp_path: Path) -> None:
    beyond = plain.stat().st_size + 4 * CLUSTER
    path, _ = damaged(plain, tmp_path, 1, beyond | OFLAG_COPIED)
    walked = Walked(path)
    _, text = qemu_check(path)
    assert (f"ERROR: counting reference for region exceeding the end of the file by one "
            f"cluster or more: offset 0x{beyond:x} size 0x{CLUSTER:x}") in text
    finding = the_finding(walked, "reference-past-eof")
    assert (finding.host_offset, finding.cluster_index) == (beyond, beyond // CLUSTER)


def test_compressed_entry_with_copied(plain: Path, tmp_path: Path) -> None:
    (entry,) = [e for e in active_l2_entries(plain) if e.compressed and e.l2_index == 16]
    path, _ = damaged(plain, tmp_path, 16, entry.entry | OFLAG_COPIED)
    walked = Walked(path)
    figures, text = qemu_check(path)
    coffset = entry.entry & ((1 << 54) - 1)
    assert (f"ERROR: coffset=0x{coffset:x}: copied flag must never be set for compressed "
            "clusters") in text
    assert the_finding(walked, "compressed-copied").host_offset == coffset
    assert walked.tally.corruptions == figures["corruptions"] == 1


def test_copied_flag_cleared_on_data(plain: Path, tmp_path: Path) -> None:
    (entry,) = [e for e in active_l2_entries(plain) if e.l2_index == 0]
    path, _ = damaged(plain, tmp_path, 0, entry.host_offset)
    walked = Walked(path)
    figures, text = qemu_check(path)
    assert (f"ERROR OFLAG_COPIED data cluster: l2_entry={entry.host_offset:x} refcount=1"
            in text)
    finding = the_finding(walked, "copied-flag")
    assert (finding.host_offset, finding.found) == (entry.host_offset, 1)
    assert walked.tally.corruptions == figures["corruptions"] == 1
    # A snapshot's tables are not held to the COPIED rule.
    assert Walked(path, active=False).findings == []


def test_subcluster_allocated_and_zero(extended: Path, tmp_path: Path) -> None:
    """Subcluster 0 both allocated and reading as zeros (docs/qcow2-format.md §4)."""
    (entry,) = [e for e in active_l2_entries(extended) if e.l2_index == 0]
    assert entry.bitmap is not None
    path, _ = damaged(extended, tmp_path, 0, entry.entry, entry.bitmap | 1 << 32)
    walked = Walked(path)
    figures, _ = qemu_check(path)
    assert walked.tally.corruptions == figures["corruptions"] == 1
    assert the_finding(walked, "subcluster-bitmap").found == entry.bitmap | 1 << 32


def test_unallocated_cluster_with_allocated_subclusters(extended: Path,
                                                        tmp_path: Path) -> None:
    (entry,) = [e for e in active_l2_entries(extended) if e.l2_index == 1]
    assert entry.entry == 0 and entry.bitmap is not None
    path, _ = damaged(extended, tmp_path, 1, 0, entry.bitmap | 1)
    walked = Walked(path)
    figures, _ = qemu_check(path)
    assert walked.tally.corruptions == figures["corruptions"] == 1
    assert the_finding(walked, "unallocated-subcluster-bitmap").found == entry.bitmap | 1


def test_compressed_with_subcluster_bitmap_is_not_counted(extended: Path,
                                                          tmp_path: Path) -> None:
    """A compressed entry of an extended L2 table must have a zero bitmap: qemu reports it
    and counts no reference for it."""
    (first,) = [e for e in active_l2_entries(extended) if e.l2_index == 0]
    # Entry 1 made compressed data inside the data cluster of entry 0.
    path, _ = damaged(extended, tmp_path, 1, OFLAG_COMPRESSED | first.host_offset, 1)
    walked = Walked(path)
    figures, _ = qemu_check(path)
    finding = the_finding(walked, "compressed-invalid")
    assert (finding.host_offset, finding.found) == (first.host_offset, 1)
    assert walked.counts[first.host_offset // CLUSTER] == 1  # entry 0's reference only
    assert walked.tally.compressed == 0
    assert walked.tally.corruptions == figures["corruptions"] == 1


def test_findings_past_the_limit_are_counted(plain: Path, tmp_path: Path) -> None:
    """Two damaged entries, room for one finding: the first built, both counted."""
    path, _ = damaged(plain, tmp_path, 0, 5 * CLUSTER + 512 | OFLAG_COPIED)
    (entry,) = [e for e in active_l2_entries(path) if e.l2_index == 1]
    patch_u64(path, entry.file_offset, 6 * CLUSTER + 1024 | OFLAG_COPIED)
    limited = Walked(path, max_findings=1)
    findings, total = limited.tally.ordered()
    assert [(f.kind, f.host_offset) for f in findings] == [
        ("unaligned-data-offset", 5 * CLUSTER + 512)]
    assert total == limited.tally.corruptions == Walked(path).tally.corruptions == 2
