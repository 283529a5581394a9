"""collectors/check/l1walk.py: the L1 half of qemu's check (check_refcounts_l1() and the L1 half
of check_oflag_copied()), run on its own over real images: the references it counts against
the refcounts qemu itself wrote, and each damaged L1 entry against qemu-img check's line."""

from __future__ import annotations

import json
import re
from pathlib import Path

import numpy as np
import pytest

from qcow2_monitor.collectors.check.findings import Tally
from qcow2_monitor.collectors.check.l1 import L1Spans
from qcow2_monitor.collectors.check.l1walk import L1Walk
from qcow2_monitor.collectors.check.refblocks import OnDiskRefcounts
from qcow2_monitor.collectors.check.references import ReferenceCounts
from qcow2_monitor.collectors.check.tablewalk import L1Table, TableWalk
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.report.model import TableName

from corpus import QEMU_IMG, qemu_io, run
from daemons import make_image
from damage import (
    L1E_OFFSET_MASK,
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
L2_SPAN = CLUSTER // 8 * CLUSTER  # guest bytes one L2 table maps: 512 MiB


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Two L2 tables; the data of the first written out of guest order (fragmented)."""
    path = tmp_path_factory.mktemp("l1walk") / "a.qcow2"
    make_image(path, "1G", write=["write -P 1 192k 64k", "write -P 2 0 64k",
                                  "write -P 3 128k 64k", "write -P 4 600M 64k"])
    return path


class Walked:
    """What one L1 walk counted and found."""

    def __init__(self, path: Path, snapshots: bool = False) -> None:
        self.tally = Tally(100)
        with Qcow2Image.open(str(path)) as image:
            h = image.header
            self.refs = ReferenceCounts(image.file.length, h.cluster_bits, self.tally)
            walk = L1Walk(TableWalk(image, self.refs, OnDiskRefcounts(image), self.tally))
            walk.check(L1Spans.of([h.l1_table_offset], [h.l1_size]),
                       lambda _k: L1Table(h.l1_table_offset, ""), active=True)
            if snapshots:
                tables = image.snapshots()
                walk.check(L1Spans.of([s.l1_table_offset for s in tables],
                                      [s.l1_size for s in tables]),
                           lambda k: L1Table(tables[k].l1_table_offset,
                                             f"{tables[k].label}: ", tables[k].id_str),
                           active=False)
            self.counts = self.refs.values(0, self.refs.size).tolist()

    def referenced(self) -> dict[int, int]:
        return {c: n for c, n in enumerate(self.counts) if n}


def qemu_check(path: Path) -> tuple[dict[str, int], str]:
    codes = (0, 1, 2, 3)
    figures = json.loads(run([QEMU_IMG, "check", "--output=json", str(path)],
                             allowed_returncodes=codes).stdout)
    text = run([QEMU_IMG, "check", str(path)], allowed_returncodes=codes)
    return figures, text.stdout + text.stderr


def test_references_and_figures_of_a_consistent_image(image: Path, qemu_tools: object) -> None:
    walked = Walked(image)
    h = read_header(image)
    l2_tables = [e & L1E_OFFSET_MASK for e in l1_entries(image)]
    data = [e.host_offset for e in active_l2_entries(image) if e.host_offset]
    expected = {h["l1_table_offset"] // CLUSTER: 1}
    expected.update({offset // CLUSTER: 1 for offset in l2_tables + data})
    assert walked.referenced() == expected
    figures, _ = qemu_check(image)
    assert walked.tally.allocated == figures["allocated-clusters"] == 4
    # Guest clusters 3, 0, 2 written in that order land in host clusters 5, 6, 7 (after the
    # L2 table at 4): in guest order 6, 7, 5, one jump back; the second table maps one.
    assert walked.tally.fragmented == figures.get("fragmented-clusters", 0) == 1
    assert (walked.tally.corruptions, walked.tally.ordered()) == (0, ([], 0))


def test_snapshot_tables_counted_as_qemu_counts_them(image: Path, tmp_path: Path) -> None:
    """After a snapshot and a write over part of it, every cluster the L1 tables reach has
    as many references as the refcount qemu keeps for it."""
    path = copy_image(image, tmp_path / "snap.qcow2")
    run([QEMU_IMG, "snapshot", "-c", "s1", str(path)])
    qemu_io(path, "write -P 9 0 64k")
    walked = Walked(path, snapshots=True)
    referenced = walked.referenced()
    assert {c: get_refcount(path, c) for c in referenced} == referenced
    assert 2 in referenced.values()  # data the snapshot shares with the active image
    # Only the active table counts the allocation figures.
    assert walked.tally.allocated == qemu_check(path)[0]["allocated-clusters"]
    assert walked.tally.corruptions == 0


def test_reserved_bits(image: Path, tmp_path: Path) -> None:
    path = copy_image(image, tmp_path / "reserved.qcow2")
    h = read_header(path)
    entry = l1_entries(path)[0] | 1 << 56
    patch_u64(path, h["l1_table_offset"], entry)
    walked = Walked(path)
    figures, text = qemu_check(path)
    assert f"ERROR found L1 entry with reserved bits set: {entry:x}" in text
    assert walked.tally.corruptions == figures["corruptions"] == 1
    (finding,) = walked.tally.ordered()[0]
    assert (finding.kind, finding.location, finding.found) == ("l1-reserved-bits", "L1[0]",
                                                               1 << 56)
    (place,) = finding.places
    assert (place.table, place.table_offset, place.entry, place.guest_offset) == (
        TableName.L1, h["l1_table_offset"], 0, 0)


def test_unaligned_l2_table(image: Path, tmp_path: Path) -> None:
    path = copy_image(image, tmp_path / "unaligned.qcow2")
    h = read_header(path)
    l2 = l1_entries(path)[1] & L1E_OFFSET_MASK
    patch_u64(path, h["l1_table_offset"] + 8, (l2 + 512) | OFLAG_COPIED)
    walked = Walked(path)
    _, text = qemu_check(path)
    assert f"ERROR l2_offset={l2 + 512:x}: Table is not cluster aligned" in text
    kinds = [(f.kind, f.location, f.host_offset) for f in walked.tally.ordered()[0]]
    assert ("unaligned-l2-offset", "L1[1]", l2 + 512) in kinds
    place = walked.tally.ordered()[0][0].places[0]
    assert (place.entry, place.guest_offset) == (1, L2_SPAN)


def test_l2_table_past_eof(image: Path, tmp_path: Path) -> None:
    """An L2 table past the end of the file: a reference past EOF (it reads as zeros, so
    nothing of it is walked)."""
    path = copy_image(image, tmp_path / "eof.qcow2")
    h = read_header(path)
    length = path.stat().st_size
    beyond = length + 8 * CLUSTER
    patch_u64(path, h["l1_table_offset"] + 8, beyond | OFLAG_COPIED)
    walked = Walked(path)
    _, text = qemu_check(path)
    assert re.search(rf"ERROR: counting reference for region exceeding the end of the file by "
                     rf"one cluster or more: offset 0x{beyond:x} size 0x{CLUSTER:x}", text)
    findings = walked.tally.ordered()[0]
    past = [f for f in findings if f.kind == "reference-past-eof"]
    assert [(f.location, f.host_offset, f.cluster_index) for f in past] == [
        ("L1[1]", beyond, beyond // CLUSTER)]
    # The data of the table that was there is no longer referenced.
    old_data = [e.host_offset for e in active_l2_entries(image) if e.l1_index == 1]
    assert all(walked.counts[offset // CLUSTER] == 0 for offset in old_data)


def test_copied_flag_cleared(image: Path, tmp_path: Path) -> None:
    """An L2 table with refcount 1 whose L1 entry lacks COPIED: qemu's one corruption."""
    path = copy_image(image, tmp_path / "copied.qcow2")
    h = read_header(path)
    l2 = l1_entries(path)[0] & L1E_OFFSET_MASK
    patch_u64(path, h["l1_table_offset"], l2)
    walked = Walked(path)
    figures, text = qemu_check(path)
    assert f"ERROR OFLAG_COPIED L2 cluster: l1_index=0 l1_entry={l2:x} refcount=1" in text
    assert walked.tally.corruptions == figures["corruptions"] == 1
    (finding,) = walked.tally.ordered()[0]
    assert (finding.kind, finding.host_offset, finding.cluster_index, finding.found) == (
        "copied-flag", l2, l2 // CLUSTER, 1)


def test_table_named_twice_is_counted_twice(image: Path, tmp_path: Path) -> None:
    """Both L1 entries name the first L2 table: it and its data are referenced twice,
    as qemu-img check's compare lines say ("reference=2")."""
    path = copy_image(image, tmp_path / "twice.qcow2")
    h = read_header(path)
    first = l1_entries(path)[0]
    patch_u64(path, h["l1_table_offset"] + 8, first)
    walked = Walked(path)
    _, text = qemu_check(path)
    twice = {int(c) for c in re.findall(r"^ERROR cluster (\d+) refcount=1 reference=2$", text,
                                        re.MULTILINE)}
    assert twice == {c for c, n in walked.referenced().items() if n == 2}
    assert (first & L1E_OFFSET_MASK) // CLUSTER in twice and len(twice) == 4
    assert np.count_nonzero(np.array(walked.counts) == 2) == 4


def test_table_named_by_every_entry_is_read_once(tmp_path: Path) -> None:
    """An L1 table of 200 entries all naming one L2 table (a hostile image can name one
    millions of times): the table is read once, and it and its data counted 200 times, as
    qemu-img check counts them ("reference=200")."""
    path = tmp_path / "hostile.qcow2"
    make_image(path, "100G", write=["write -P 1 0 64k"])
    h = read_header(path)
    assert h["l1_size"] == 200  # 100 GiB / 512 MiB per entry
    first = l1_entries(path)[0]
    for i in range(1, 200):
        patch_u64(path, h["l1_table_offset"] + 8 * i, first)
    with counting() as work:
        walked = Walked(path)
    # Exactly five reads: the header's first 4 KiB and the refcount table (one cluster) when
    # opened, the L1 table (200 entries), the L2 table once, and the refcount block once (for
    # the COPIED flags of the table and its data).
    assert (work.reads, work.bytes_read) == (5, 4096 + CLUSTER + 200 * 8 + CLUSTER + CLUSTER)
    _, text = qemu_check(path)
    hundreds = {int(c) for c in re.findall(r"^ERROR cluster (\d+) refcount=1 reference=200$",
                                           text, re.MULTILINE)}
    assert hundreds == {c for c, n in walked.referenced().items() if n == 200}
    assert len(hundreds) == 2  # the L2 table and its data cluster
