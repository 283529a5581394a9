"""collectors/check/locate.py: the metadata entries that reference a cluster, found on real
images as qemu counts them (on a clean image every reference qemu's refcount counts is found,
no more), refcount findings of qemu-img check located at those entries or at the cluster's
refcount entry, a table named many times named up to MAX_NAMED times and counted beyond, with
bounded work, and a damaged snapshot table refused with file, entry and offset."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from qcow2_monitor.collectors.check.locate import (
    MAX_NAMED,
    locate_findings,
    refcount_entry_location,
    referrers,
)
from qcow2_monitor.collectors.check.refblocks import OnDiskRefcounts
from qcow2_monitor.collectors.common.errors import OUT_OF_BOUNDS, Qcow2Error
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.report.model import Finding, Place, Severity, TableName

from corpus import QEMU_IMG, QEMU_IO, run
from daemons import make_image
from damage import (
    L1E_OFFSET_MASK,
    L2E_OFFSET_MASK,
    REFT_OFFSET_MASK,
    SNAPSHOT_EXTRA_DATA_SIZE_AT,
    active_l2_entries,
    copy_image,
    get_refcount,
    l1_entries,
    patch_u32,
    read_header,
    read_u64,
    refcount_table_entries,
    set_refcount,
)
from hostile import one_table_named
from work import counting

CLUSTER = 65536
Referenced = tuple[dict[int, list[tuple[str, Place]]], dict[int, int]]


@pytest.fixture(scope="module")
def snapshotted(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 GiB, 64 KiB clusters: normal data in L1[0] and L1[1], two compressed clusters
    sharing one host cluster, snapshot s1, then L1[0]'s first cluster rewritten (its L2 table
    copied; L1[1]'s still shared with the snapshot)."""
    path = tmp_path_factory.mktemp("locate") / "s.qcow2"
    make_image(path, "1G", write=["write -P 1 0 128k", "write -c -P 2 1M 64k",
                                  "write -c -P 3 2M 64k", "write -P 4 600M 64k"])
    run([QEMU_IMG, "snapshot", "-c", "s1", str(path)])
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 5 0 64k", str(path)])
    return path


def clusters_of(path: Path) -> range:
    return range(-(-path.stat().st_size // CLUSTER))


def find(path: Path, clusters: list[int] | range) -> Referenced:
    with Qcow2Image.open(str(path)) as image:
        return referrers(image, OnDiskRefcounts(image), clusters)


def qemu_refcount_errors(path: Path) -> tuple[dict[int, tuple[int, int]], list[int]]:
    """qemu-img check's refcount errors ({cluster: (refcount, references)}) and leaks."""
    proc = run([QEMU_IMG, "check", str(path)], allowed_returncodes=(0, 2, 3))
    text = proc.stdout + proc.stderr
    errors = {int(c): (int(r), int(n)) for c, r, n in
              re.findall(r"ERROR cluster (\d+) refcount=(\d+) reference=(\d+)", text)}
    leaks = [int(c) for c in re.findall(r"Leaked cluster (\d+) refcount", text)]
    return errors, leaks


def test_every_reference_qemu_counts_is_found(snapshotted: Path) -> None:
    """On an image qemu-img check finds clean, each cluster's refcount is the number of
    references to it: as many are found (named or counted beyond MAX_NAMED)."""
    assert qemu_refcount_errors(snapshotted) == ({}, [])
    found, more = find(snapshotted, clusters_of(snapshotted))
    for cluster in clusters_of(snapshotted):
        located = len(found.get(cluster, ())) + more.get(cluster, 0)
        assert located == get_refcount(snapshotted, cluster), (cluster, found.get(cluster))


def test_references_named_as_the_tables_say(snapshotted: Path) -> None:
    header = read_header(snapshotted)
    active_l2 = l1_entries(snapshotted)[0] & L1E_OFFSET_MASK
    (shared,) = {e & L1E_OFFSET_MASK for e in l1_entries(snapshotted)[1:] if e}
    entries = [e for e in active_l2_entries(snapshotted) if e.entry]
    rewritten = next(e for e in entries if (e.l1_index, e.l2_index) == (0, 0))
    in_shared = next(e for e in entries if e.l1_index == 1)
    compressed = [e for e in entries if e.compressed]
    host = (compressed[0].entry & ((1 << 54) - 1)) // CLUSTER
    wanted = [0, header["l1_table_offset"] // CLUSTER, rewritten.host_offset // CLUSTER,
              in_shared.host_offset // CLUSTER, host, shared // CLUSTER]
    found, more = find(snapshotted, wanted)
    text = {c: [t for t, _ in found[c]] for c in wanted}
    assert text[0] == ["header"]
    assert text[header["l1_table_offset"] // CLUSTER] == ["L1 table"]
    assert text[rewritten.host_offset // CLUSTER] == [
        f"L2 table at 0x{active_l2:x} entry 0 (L1[0], guest offset 0x0)"]
    guest = (8192 + in_shared.l2_index) * CLUSTER  # 8192 entries per 64 KiB table
    assert text[in_shared.host_offset // CLUSTER] == [
        f"L2 table at 0x{shared:x} entry {in_shared.l2_index} (L1[1], guest offset "
        f"0x{guest:x})",
        f"snapshot 1: L2 table at 0x{shared:x} entry {in_shared.l2_index} (L1[1], guest "
        f"offset 0x{guest:x})"]
    assert text[shared // CLUSTER] == ["L1[1] (L2 table)", "snapshot 1: L1[1] (L2 table)"]
    # Two compressed clusters in one host cluster, each named by the active and the
    # snapshot's table: four references.
    assert [t for t in text[host] if not t.startswith("snapshot")] == [
        f"L2 table at 0x{active_l2:x} entry {e.l2_index} (L1[0], guest offset "
        f"0x{e.l2_index * CLUSTER:x})" for e in compressed]
    assert len(text[host]) == 4
    place = found[in_shared.host_offset // CLUSTER][1][1]
    assert place == Place(TableName.L2, shared, in_shared.l2_index, 1, guest, "1")
    assert not any(more.values())


def test_refcount_entry_location(snapshotted: Path) -> None:
    """16-bit refcounts in 64 KiB blocks: 32768 per block (docs/qcow2-format.md §3)."""
    table = read_header(snapshotted)["refcount_table_offset"]
    block = refcount_table_entries(snapshotted)[0] & REFT_OFFSET_MASK
    with Qcow2Image.open(str(snapshotted)) as image:
        ondisk = OnDiskRefcounts(image)
        assert refcount_entry_location(ondisk, 5, 16) == (
            f"refcount block at 0x{block:x} entry 5 (cluster 5 at 0x50000)",
            Place(TableName.REFCOUNT_BLOCK, block, 5, refcount_table_offset=table))
        assert refcount_entry_location(ondisk, 32768 + 3, 16) == (
            f"refcount table entry 1 (no block) (cluster 32771 at 0x{32771 * CLUSTER:x})",
            Place(TableName.REFCOUNT_TABLE, table, 1, refcount_table_offset=table))


def finding(kind: str, cluster: int) -> Finding:
    severity = Severity.LEAK if kind == "leak" else Severity.CORRUPTION
    return Finding(kind, severity, "", f"cluster {cluster}", cluster_index=cluster)


def test_qemu_findings_located(snapshotted: Path, tmp_path: Path) -> None:
    """A data cluster's refcount zeroed and a free cluster given one: qemu-img check's
    refcount error is located at the L2 entry, its leak at the refcount entry."""
    path = copy_image(snapshotted, tmp_path / "refcounts.qcow2")
    (data,) = [e for e in active_l2_entries(path) if (e.l1_index, e.l2_index) == (0, 0)]
    low = data.host_offset // CLUSTER
    free = len(clusters_of(path))
    with open(path, "ab") as f:  # a free cluster inside the file: qemu checks up to EOF
        f.truncate((free + 1) * CLUSTER)
    set_refcount(path, low, 0)
    set_refcount(path, free, 1)
    errors, leaks = qemu_refcount_errors(path)
    assert (errors, leaks) == ({low: (0, 1)}, [free])
    findings = [finding("refcount-too-low", low), finding("leak", free),
                finding("copied-flag", low)]
    block = refcount_table_entries(path)[0] & REFT_OFFSET_MASK
    l2 = l1_entries(path)[0] & L1E_OFFSET_MASK
    with Qcow2Image.open(str(path)) as image:
        ondisk = OnDiskRefcounts(image)
        located = locate_findings(image, ondisk, findings)
        only_leak = locate_findings(image, ondisk, findings, frozenset({free}))
        # Nothing to locate: no table is read.
        with counting() as work:
            untouched = locate_findings(image, ondisk, findings[2:])
        assert (untouched, work.reads) == (findings[2:], 0)
    assert [f.location for f in located] == [
        f"L2 table at 0x{l2:x} entry 0 (L1[0], guest offset 0x0)",
        f"refcount block at 0x{block:x} entry {free} (cluster {free} at 0x{free * CLUSTER:x})",
        f"cluster {low}"]  # not a refcount finding: left as it was
    assert [f.places for f in located] == [
        (Place(TableName.L2, l2, 0, 0, 0, None),),
        (Place(TableName.REFCOUNT_BLOCK, block, free,
               refcount_table_offset=read_header(path)["refcount_table_offset"]),), ()]
    assert [f.location for f in only_leak] == [
        f"cluster {low}", located[1].location, f"cluster {low}"]


def test_a_table_named_many_times(tmp_path: Path) -> None:
    """An L1 naming its first L2 table 100 times: qemu counts 100 references to the table
    and to each cluster it maps; MAX_NAMED are named, the rest counted."""
    path = tmp_path / "named.qcow2"
    one_table_named(path, 100, "2M")
    l2 = l1_entries(path)[0] & L1E_OFFSET_MASK
    (data, *_) = [e.host_offset for e in active_l2_entries(path) if e.host_offset]
    errors, _ = qemu_refcount_errors(path)
    assert errors[l2 // 4096] == (1, 100) and errors[data // 4096] == (1, 100)
    found, more = find(path, [l2 // 4096, data // 4096])
    assert [t for t, _ in found[l2 // 4096]] == [f"L1[{i}] (L2 table)" for i in range(MAX_NAMED)]
    assert more[l2 // 4096] == 100 - MAX_NAMED
    # One L2 entry maps the data cluster: named once, its table's 100 namings counted.
    assert [t for t, _ in found[data // 4096]] == [
        f"L2 table at 0x{l2:x} entry 0 (L1[0], guest offset 0x0)"]
    assert more[data // 4096] == 100 - 1


def test_work_bounded_by_the_tables_not_the_namings(tmp_path: Path) -> None:
    """2**19 L1 entries (a 4 MiB L1) naming one L2 table: the table is read once and no
    Python work is done per naming (half a million would be over a million calls)."""
    path = tmp_path / "huge.qcow2"
    namings = 1 << 19
    one_table_named(path, namings, "4G")
    l2 = l1_entries(path)[0] & L1E_OFFSET_MASK
    data = read_u64(path, l2) & L2E_OFFSET_MASK  # guest cluster 0, written by qemu-io
    with Qcow2Image.open(str(path)) as image:
        ondisk = OnDiskRefcounts(image)
        with counting(call_limit=200_000) as work:
            found, more = referrers(image, ondisk, [l2 // 4096, data // 4096])
    assert not work.stopped, work
    # The L1 table once (8 windows of 512 KiB) and the L2 table once.
    assert work.bytes_read <= namings * 8 + 4096, work
    assert len(found[l2 // 4096]) + more[l2 // 4096] == namings
    assert len(found[data // 4096]) + more[data // 4096] == namings


def test_damaged_snapshot_table_refused(snapshotted: Path, tmp_path: Path) -> None:
    path = copy_image(snapshotted, tmp_path / "extra.qcow2")
    entry = read_header(path)["snapshots_offset"]
    patch_u32(path, entry + SNAPSHOT_EXTRA_DATA_SIZE_AT, 4096)
    with Qcow2Image.open(str(path)) as image, pytest.raises(Qcow2Error) as info:
        referrers(image, OnDiskRefcounts(image), [0])
    error = info.value
    assert (error.filename, error.structure, error.offset, error.kind) == (
        str(path), "snapshot table entry 0", entry + SNAPSHOT_EXTRA_DATA_SIZE_AT, OUT_OF_BOUNDS)
    assert str(error).startswith(
        f"{path}: snapshot table entry 0 at offset 0x{entry + SNAPSHOT_EXTRA_DATA_SIZE_AT:x}")
