"""collectors/check/compare.py: each cluster's on-disk refcount against the references counted,
as compare_refcounts() in qemu's block/qcow2-refcount.c reports them. The references are
counted here by the tests' own reader (tests/damage.py) from the format's rules, the verdicts
checked against qemu-img check's own lines."""

from __future__ import annotations

import json
import re
from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from qcow2_monitor.collectors.check.compare import compare_refcounts
from qcow2_monitor.collectors.check.findings import Tally
from qcow2_monitor.collectors.check.refblocks import OnDiskRefcounts
from qcow2_monitor.collectors.check.references import ReferenceCounts
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.report.model import Finding, TableName

from corpus import QEMU_IMG, run
from daemons import make_image
from damage import (
    L1E_OFFSET_MASK,
    REFT_OFFSET_MASK,
    active_l2_entries,
    copy_image,
    l1_entries,
    patch_u64,
    read_header,
    refcount_table_entries,
    set_refcount,
)

CLUSTER = 65536


@pytest.fixture(scope="module")
def image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Three data clusters under two L2 tables (guest offsets 0 and 600 MiB)."""
    path = tmp_path_factory.mktemp("compare") / "c.qcow2"
    make_image(path, "1G", write=["write -P 1 0 128k", "write -P 2 600M 64k"])
    return path


def references(path: Path) -> Counter[int]:
    """Every cluster the metadata references (docs/qcow2-format.md §7): header, refcount
    table and blocks, L1 table, L2 tables, data clusters."""
    h = read_header(path)
    refs: Counter[int] = Counter([0])
    table = h["refcount_table_offset"] // CLUSTER
    refs.update(range(table, table + h["refcount_table_clusters"]))
    refs.update((e & REFT_OFFSET_MASK) // CLUSTER for e in refcount_table_entries(path) if e)
    l1 = h["l1_table_offset"] // CLUSTER
    refs.update(range(l1, l1 + -(-h["l1_size"] * 8 // CLUSTER)))
    refs.update((e & L1E_OFFSET_MASK) // CLUSTER for e in l1_entries(path) if e)
    refs.update(e.host_offset // CLUSTER for e in active_l2_entries(path) if e.host_offset)
    return refs


def compared(path: Path, counted: Counter[int], refcount_max: int = 0xFFFF,
             max_findings: int = 100) -> tuple[int, Tally]:
    tally = Tally(max_findings)
    with Qcow2Image.open(str(path)) as image:
        refs = ReferenceCounts(image.file.length, image.header.cluster_bits, tally)
        for cluster, times in counted.items():
            for _ in range(times):
                refs.add_clusters(np.array([cluster * CLUSTER], dtype=np.uint64))
        highest = compare_refcounts(refs, OnDiskRefcounts(image), refcount_max, tally)
    return highest, tally


def qemu_check(path: Path) -> tuple[dict[str, int], set[tuple[str, int, int, int]]]:
    """qemu-img check's figures, and its per-cluster lines of compare_refcounts():
    ("ERROR" or "Leaked", cluster, refcount, reference), ("Unreadable", cluster, 0, 0)."""
    # Exit 1: the check could not be completed (check errors); 2 corruptions; 3 leaks.
    as_json = run([QEMU_IMG, "check", "--output=json", str(path)],
                  allowed_returncodes=(0, 1, 2, 3))
    text = run([QEMU_IMG, "check", str(path)], allowed_returncodes=(0, 1, 2, 3))
    lines = {("Unreadable", int(cluster), 0, 0) for cluster in re.findall(
        r"^Can't get refcount for cluster (\d+): ", text.stdout + text.stderr, re.MULTILINE)}
    for kind, cluster, refcount, reference in re.findall(
            r"^(ERROR|Leaked) cluster (\d+) refcount=(\d+) reference=(\d+)$",
            text.stdout + text.stderr, re.MULTILINE):
        lines.add((kind, int(cluster), int(refcount), int(reference)))
    return json.loads(as_json.stdout), lines


def lines_of(findings: list[Finding]) -> set[tuple[str, int, int, int]]:
    kinds = {"refcount-too-low": "ERROR", "leak": "Leaked"}
    return {(kinds[f.kind], f.cluster_index or 0, f.found or 0, f.expected or 0)
            for f in findings}


def test_consistent_image(image: Path, qemu_tools: object) -> None:
    counted = references(image)
    # Header, refcount table, refcount block, L1, L2, 2 data, L2, data: clusters 0..8.
    assert sorted(counted) == list(range(9))
    highest, tally = compared(image, counted)
    figures, lines = qemu_check(image)
    assert (highest + 1) * CLUSTER == figures["image-end-offset"]
    assert (tally.corruptions, tally.leaks, tally.check_errors) == (0, 0, 0)
    assert tally.ordered() == ([], 0) and lines == set()


@pytest.mark.parametrize("refcount", [0, 2, 3])
def test_data_cluster_refcount_wrong(image: Path, tmp_path: Path, refcount: int) -> None:
    """Lower than the references is a corruption, higher a leak."""
    path = copy_image(image, tmp_path / "d.qcow2")
    data = max(e.host_offset for e in active_l2_entries(path)) // CLUSTER
    set_refcount(path, data, refcount)
    highest, tally = compared(path, references(path))
    figures, lines = qemu_check(path)
    findings, total = tally.ordered()
    assert lines_of(findings) == lines == {("ERROR" if refcount == 0 else "Leaked", data,
                                            refcount, 1)}
    assert (tally.corruptions, tally.leaks, total) == (
        (1, 0, 1) if refcount == 0 else (0, 1, 1))
    (finding,) = findings
    assert (finding.host_offset, finding.cluster_index, finding.expected, finding.found) == (
        data * CLUSTER, data, 1, refcount)
    assert finding.location == f"cluster {data}"
    assert figures.get("leaks", 0) == tally.leaks
    # The last data cluster is still the highest referenced one.
    assert (highest + 1) * CLUSTER == figures["image-end-offset"]


def test_leaked_cluster_past_the_data(image: Path, tmp_path: Path) -> None:
    """A refcount without a reference, beyond every referenced cluster: a leak, and the
    highest cluster (the image end offset qemu reports)."""
    path = copy_image(image, tmp_path / "leak.qcow2")
    size = path.stat().st_size
    with open(path, "ab") as f:
        f.write(bytes(2 * CLUSTER))
    leaked = size // CLUSTER + 1
    set_refcount(path, leaked, 1)
    highest, tally = compared(path, references(path))
    figures, lines = qemu_check(path)
    assert highest == leaked and figures["image-end-offset"] == (leaked + 1) * CLUSTER
    assert lines_of(tally.ordered()[0]) == lines == {("Leaked", leaked, 1, 0)}
    assert figures["leaks"] == tally.leaks == 1


def test_computed_counts_clamped_to_the_refcount_width(image: Path) -> None:
    """A cluster referenced twice where the width holds at most 1: compared as 1 (the
    overflow is reported by the walk, not here); with room for 2 it is a corruption."""
    counted = references(image)
    counted[5] += 1
    _, clamped = compared(image, counted, refcount_max=1)
    assert (clamped.corruptions, clamped.leaks) == (0, 0)
    _, wide = compared(image, counted)
    (finding,) = wide.ordered()[0]
    assert (finding.kind, finding.cluster_index, finding.expected, finding.found) == (
        "refcount-too-low", 5, 2, 1)


def test_findings_beyond_the_limit_are_counted(image: Path, tmp_path: Path) -> None:
    path = copy_image(image, tmp_path / "many.qcow2")
    data = sorted(e.host_offset // CLUSTER for e in active_l2_entries(path) if e.host_offset)
    for cluster in data:
        set_refcount(path, cluster, 2)
    _, tally = compared(path, references(path), max_findings=1)
    findings, total = tally.ordered()
    assert [f.cluster_index for f in findings] == data[:1]
    assert (total, tally.leaks) == (3, 3)


def test_unreadable_refcount_block(image: Path, tmp_path: Path) -> None:
    """A refcount block at an offset that is no cluster boundary: qemu cannot read a refcount
    of the clusters it covers (-EIO), and counts a check error for each."""
    path = copy_image(image, tmp_path / "unaligned.qcow2")
    h = read_header(path)
    block = refcount_table_entries(path)[0] & REFT_OFFSET_MASK
    patch_u64(path, h["refcount_table_offset"], block + 512)
    _, tally = compared(path, references(path))
    figures, lines = qemu_check(path)
    clusters = path.stat().st_size // CLUSTER
    assert tally.check_errors == clusters == figures["check-errors"]
    assert lines == {("Unreadable", cluster, 0, 0) for cluster in range(clusters)}
    (finding,) = tally.ordered()[0]
    assert finding.kind == "refcount-unreadable"
    assert (finding.host_offset, finding.cluster_index, finding.found) == (
        block + 512, 0, clusters)
    (place,) = finding.places
    assert (place.table, place.table_offset, place.entry) == (
        TableName.REFCOUNT_TABLE, h["refcount_table_offset"], 0)
