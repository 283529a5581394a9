"""Hostile images: a fuzzing budget on every run, and every case the fuzzer ever found as a
regular test on a byte-patched image built here.

The long run is ``scripts/fuzz.sh`` (see tests/fuzzing.py).
"""

from __future__ import annotations

import io
import json
import os
import random
import struct
import subprocess
import sys
import tracemalloc
from pathlib import Path
from typing import Optional

import numpy as np
import pytest

from qcow2_monitor.collectors.check.checker import check_image
from qcow2_monitor.collectors.check.dump import dump
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.report.model import LayerStatus
from qcow2_monitor.collectors.report.usage import analyze_usage
from qcow2_monitor.nagios.check_qcow2 import main as nagios_main

from corpus import QEMU_IMG, QEMU_IO, run
from damage import patch_bytes, patch_u64, read_header
from fuzzing import Call, budget_problems, build_seeds, fuzz, run_call
from fuzzing import calls as calls_of
from hostile import (
    bitmaps_sharing_one_table,
    l2_tables_image,
    one_table_named,
    refcount_table_over_data,
    repeat_l1,
    repoint_l1,
    snapshots_with_own_l1_tables,
    snapshotted,
)
from work import work_of

# Cases of the budget run; QCOW2_FUZZ_CASES / QCOW2_FUZZ_SEED override (scripts/fuzz.sh runs
# long). Every case is deterministic from the seed, so a failure names a case to replay.
FUZZ_CASES = int(os.environ.get("QCOW2_FUZZ_CASES", "2000"))
FUZZ_SEED = int(os.environ.get("QCOW2_FUZZ_SEED", "20261130"))


def test_fuzz_budget(tmp_path: Path) -> None:
    seeds = build_seeds(tmp_path / "seeds")
    report = fuzz(seeds, seed=FUZZ_SEED, cases=FUZZ_CASES, workers=2,
                  workdir=tmp_path / "work")
    assert not report.failures, "\n".join(str(f) for f in report.failures[:20])
    assert report.cases == FUZZ_CASES


def test_fuzzer_catches_an_internal_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch
                                          ) -> None:
    """The fuzzer's oracle must be able to fail: a bug planted in the core is reported."""
    from qcow2_monitor.collectors.report import usage as usage_module

    def broken(_image: Qcow2Image, **_options: bool) -> tuple[int, int]:
        raise ValueError("planted")

    monkeypatch.setattr(usage_module, "end_and_free_below", broken)
    path = tmp_path / "i.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(path), "1M"])
    usage = next(c for c in calls_of(random.Random(0)) if c.name == "usage")
    problems, output, _ = run_call(usage, str(path))
    assert any("internal error" in p for p in problems), (problems, output)


@pytest.mark.parametrize("regression", ["per-entry Python work", "a read per entry"])
def test_work_bounds_catch_a_planted_regression(tmp_path: Path, monkeypatch: pytest.MonkeyPatch,
                                                regression: str) -> None:
    """The bounds can fail, deterministically and at once: per-entry Python work is stopped
    at the call limit, a read per entry passes the fuzzer's read budget."""
    from qcow2_monitor.collectors.report import usage as usage_module

    real = usage_module.end_and_free_below

    def slow(image: Qcow2Image, **options: bool) -> tuple[int, int]:
        if regression == "a read per entry":
            for _ in range(100_000):  # as if each L1 entry of a 100,000 entry table
                image.file.read(0, 8, "L1 entry")
        else:
            for entry in range(4 * 1024 * 1024):  # as if every entry of a 4 Mi entry L1
                abs(entry)
        return real(image, **options)

    monkeypatch.setattr(usage_module, "end_and_free_below", slow)
    path = tmp_path / "i.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(path), "1M"])
    usage = next(c for c in calls_of(random.Random(0)) if c.name == "usage")
    if regression == "a read per entry":  # as the fuzzer runs it: reads counted, not calls
        problems, _, work = run_call(usage, str(path))
        assert any(p.startswith("made 100,00") and "reads of a" in p for p in problems), problems
    else:
        problems, _, work = run_call(usage, str(path), call_limit=CALLS)
        assert problems == [f"made more than {CALLS:,} calls"] and work.stopped, problems


# ---------------------------------------------------------------------------------------------
# Cases the fuzzer found


def _tail(output: str, lines: int = 12) -> str:
    """The end of an entry point's output: enough to see why, never all of it."""
    kept = output.splitlines()[-lines:]
    return "\n".join(line[:200] for line in kept)


# Calls one entry point may make on the cases below (counted by tests/work.py; the fuzzer's
# own budget bounds reads and bytes read). The most measured: 454,000 (dump --what l2 of a
# 32 MiB L1 claimed over guest data); per-entry Python work on any of the tables these cases
# claim or name millions of times is far above.
CALLS = 1_000_000
# Where the file really holds 65535 bitmaps or 65536 snapshots, each is parsed and printed:
# the most measured is 263 calls per entry (header --output json on 65535 bitmaps: 17.2 M).
CALLS_PER_ENTRY = 400


def _all_entry_points_clean(path: Path, calls: int = CALLS, reads: Optional[int] = None
                            ) -> None:
    """Every subcommand and adapter, in both output formats, within the fuzzer's budget, at
    most `calls` calls and (when given) `reads` reads each."""
    for fmt_seed in range(2):
        for call in calls_of(random.Random(fmt_seed)):
            problems, output, work = run_call(call, str(path), call_limit=calls)
            if reads is not None and work.reads > reads:
                problems.append(f"made {work.reads:,} reads (limit {reads:,} here)")
            assert not problems, f"{call.name}: {'; '.join(problems)} ({work}); output " \
                f"ends:\n{_tail(output)}"


def _within_budget(path: Path, fn: object, *args: object, calls: int = CALLS,
                   reads: Optional[int] = None) -> None:
    """fn(*args) works on `path` within the fuzzer's budget and at most `calls` calls (and
    `reads` reads, when given)."""
    work = work_of(fn, *args, call_limit=calls)  # type: ignore[arg-type]
    problems = budget_problems(work, path.stat().st_size)
    if reads is not None and work.reads > reads:
        problems.append(f"made {work.reads:,} reads (limit {reads:,} here)")
    assert not problems, f"{getattr(fn, '__name__', fn)}: {'; '.join(problems)} ({work})"


def _qemu_json(*argv: str) -> dict[str, object]:
    proc = run([QEMU_IMG, *argv, "--output=json"], allowed_returncodes=(0, 1, 2, 3))
    return json.loads(proc.stdout) if proc.stdout.strip() else {}


def _figures_equal_qemu(path: Path) -> dict[str, object]:
    """qemu-img check's figures and ours on `path` (both given as JSON) are the same."""
    qemu = _qemu_json("check", str(path))
    ours = json.loads(_stdout(["check", "--output", "json", str(path)]))
    for key in ("image-end-offset", "corruptions", "leaks", "check-errors",
                "allocated-clusters", "fragmented-clusters", "compressed-clusters"):
        assert ours.get(key) == qemu.get(key), key
    return ours


def _no_backing(path: Path) -> str:
    spec = {"driver": "qcow2", "backing": None, "file": {"driver": "file", "filename": str(path)}}
    return "json:" + json.dumps(spec)


@pytest.fixture
def overlay(tmp_path: Path) -> Path:
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(tmp_path / "base.qcow2"), "4M"])
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2",
         "top.qcow2", "4M"], cwd=tmp_path)
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0x5a 0 192k", str(tmp_path / "top.qcow2")])
    return tmp_path / "top.qcow2"


@pytest.mark.parametrize("position,value", [(2, 0), (9, 0), (2, 0xFF)])
def test_backing_name_nul_or_not_utf8(overlay: Path, position: int, value: int) -> None:
    """Found as `ValueError: embedded null byte` failing usage and every adapter: a backing name
    with a NUL byte (fuzz cases 1:1264, 2:1177) is reported as an invalid name, and the image's
    own figures are still those qemu-img check reports."""
    header = read_header(overlay)
    patch_bytes(overlay, header["backing_file_offset"] + position, bytes([value]))
    qemu = _qemu_json("check", _no_backing(overlay))
    result = analyze_usage(str(overlay))
    assert result.error is None and result.usage is not None
    assert result.usage.image_end_offset == qemu["image-end-offset"]
    note = " ".join(result.usage.notes)
    if value == 0:
        assert f"NUL byte at position {position}" in note
        assert [layer.status for layer in result.chain] == [LayerStatus.INVALID_NAME]
        assert result.chain[0].error is not None
        # info stays equal to qemu-img info, which keeps the part before the NUL.
        info = _qemu_json("info", str(overlay))
        ours = json.loads(_stdout(["info", "--output", "json", str(overlay)]))
        assert ours["backing-filename"] == info["backing-filename"]
    else:
        assert "not valid UTF-8 (byte 0xff at position 2)" in note
    _all_entry_points_clean(overlay)
    # Every adapter still reports the image itself.
    stream = io.StringIO()
    nagios_main(["-f", str(overlay), "-w", "80", "-c", "90"], stdout=stream)
    assert f"'{overlay} image_end_offset_bytes'={qemu['image-end-offset']}B" in stream.getvalue()


def _stdout(argv: list[str]) -> str:
    from contextlib import redirect_stdout

    from qcow2_monitor.analyze.main import main

    buffer = io.StringIO()
    with redirect_stdout(buffer):
        main(argv)
    return buffer.getvalue()


def test_invalid_names_in_extensions(tmp_path: Path) -> None:
    """A data file name with a NUL and a backing format that is not UTF-8: notes, not
    failures."""
    path = tmp_path / "d.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", f"data_file={tmp_path / 'd.raw'}",
         str(path), "1M"])
    with Qcow2Image.open(str(path)) as image:
        ext = next(e for e in image.extensions if e.name == "external data file name")
    patch_bytes(path, ext.offset + 1, b"\0")
    notes = " ".join(analyze_usage(str(path)).usage.notes)  # type: ignore[union-attr]
    assert f"external data file name '{str(tmp_path / 'd.raw')[:1]}\\x00" in notes
    assert "NUL byte at position 1" in notes
    _all_entry_points_clean(path)


def test_refcount_table_claims_do_not_set_the_work(tmp_path: Path) -> None:
    """Found as `dump --what refcount` taking 8-14 s (fuzz case 2:675): refcount_table_offset
    and refcount_table_clusters pointing the table at 8 MiB of guest data, so a million nonzero
    entries. The work follows the file; the check's figures stay qemu's."""
    path = tmp_path / "r.qcow2"
    refcount_table_over_data(path)
    qemu = _qemu_json("check", str(path))
    _within_budget(path, check_image, str(path))
    ours = check_image(str(path))
    assert (ours.corruptions, ours.leaks, ours.check_errors, ours.image_end_offset) == (
        qemu.get("corruptions", 0), qemu.get("leaks", 0), qemu["check-errors"],
        qemu["image-end-offset"])
    with Qcow2Image.open(str(path)) as image:
        _within_budget(path, dump, image, "refcount")
        data = dump(image, "refcount")
    assert data.nonzero_table_entries > 500_000
    assert len(data.unreadable_blocks) <= 1000
    _all_entry_points_clean(path)


def test_one_l2_table_named_many_times_equals_qemu(tmp_path: Path) -> None:
    """An L1 table (active and snapshot) naming the same L2 table 64 times: walked once and
    counted 64 times, with qemu-img check's figures."""
    path = tmp_path / "d.qcow2"
    snapshotted(path)
    repoint_l1(path, 64, snapshot_too=True)
    ours = _figures_equal_qemu(path)
    assert ours["findings-total"] >= ours["corruptions"] + ours["leaks"]


def test_l1_naming_one_table_millions_of_times(tmp_path: Path) -> None:
    """The largest L1 qemu accepts (4 Mi entries, 32 MiB) all naming one L2 table: qemu-img
    check walks that table 4 Mi times (minutes); the work here follows the one table."""
    path = tmp_path / "m.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(path), "1M"])
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 5 0 300k", str(path)])
    allocated_once = _qemu_json("check", str(path))["allocated-clusters"]
    entries = 4 * 1024 * 1024
    repoint_l1(path, entries)
    _within_budget(path, check_image, str(path))
    # The 32 MiB table is read a chunk at a time: the arrays of the check (numpy's included)
    # stay well below its size (reading it whole takes twice its size: bytes and numbers).
    tracemalloc.start()
    try:
        result = check_image(str(path))
        peak = tracemalloc.get_traced_memory()[1]
    finally:
        tracemalloc.stop()
    assert peak < 16 * 1024 * 1024, peak
    # Each L1 entry adds the table's allocated clusters (qemu's count, from the unpatched image).
    assert result.allocated_clusters == allocated_once * entries
    # The findings are located across every chunk: the first entries named, the rest counted.
    first = result.findings[0]
    assert first.location.startswith("L1[0] (L2 table); L1[1] (L2 table);")
    assert first.location.endswith(f"and {entries - 8} more entries")
    with Qcow2Image.open(str(path)) as image:
        _within_budget(path, dump, image, "l2")
    _all_entry_points_clean(path)


@pytest.mark.parametrize("tables", [6, 40])
def test_tables_named_different_numbers_of_times_equal_qemu(tmp_path: Path, tables: int
                                                             ) -> None:
    """L2 table i named i+1 times by the active L1 and by a snapshot's: few multiplicities are
    walked once each, many (more than MAX_MULTIPLICITY_GROUPS) once per bit; both give
    qemu-img check's figures."""
    path = tmp_path / "n.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(path),
         f"{2 * tables}M"])
    # One write of 4 to 12 KiB per 2 MiB: one L2 table each.
    writes = [f"write -P {i + 1} {2 * i}M {4 * (i % 3 + 1)}k" for i in range(tables)]
    run([QEMU_IO, "-f", "qcow2", *[a for w in writes for a in ("-c", w)], str(path)])
    run([QEMU_IMG, "snapshot", "-c", "s1", str(path)])
    repeat_l1(path, [i + 1 for i in range(tables)], snapshot_too=True)
    ours = _figures_equal_qemu(path)
    assert ours["corruptions"]


@pytest.fixture(scope="module")
def data_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """8 MiB of nonzero guest data in 4 KiB clusters: enough bytes for a header pointed at
    them to claim the largest tables qemu accepts."""
    path = tmp_path_factory.mktemp("claims") / "data.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(path), "64M"])
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0x71 0 4M", "-c", "write -P 0x72 32M 2M",
         "-c", "write -P 0x73 60M 2M", str(path)])
    return path


def _past_eof(path: Path) -> int:
    return -(-path.stat().st_size // 4096) * 4096


# (header field offset, struct format, value) patches; "past" is the first cluster past EOF.
CLAIMS = {
    "65536 snapshots past EOF": [(60, ">I", 65536), (64, ">Q", "past")],
    "32 MiB L1 over guest data": [(36, ">I", 4 * 1024 * 1024), (40, ">Q", 0x100000)],
    "32 MiB L1 past EOF": [(36, ">I", 4 * 1024 * 1024), (40, ">Q", "past")],
    "8 MiB refcount table past EOF": [(56, ">I", 2048), (48, ">Q", "past")],
    "8 MiB refcount table over guest data": [(56, ">I", 2048), (48, ">Q", 0x100000)],
}


@pytest.mark.parametrize("claim", sorted(CLAIMS))
def test_header_claims_do_not_set_the_work(data_image: Path, tmp_path: Path, claim: str
                                           ) -> None:
    """Header counts the fuzzer raised to qemu's limits (cases 3:68, 3:566 took 4-5 s and hung
    the check): every entry point stays within its work bounds, and the check's figures are
    qemu-img check's. 65536 snapshot entries past EOF read as zeros, as in qemu: they are
    there, each parsed and printed once."""
    path = tmp_path / "claim.qcow2"
    data = bytearray(data_image.read_bytes())
    for offset, fmt, value in CLAIMS[claim]:
        struct.pack_into(fmt, data, offset, _past_eof(data_image) if value == "past" else value)
    path.write_bytes(data)
    _figures_equal_qemu(path)
    _all_entry_points_clean(path, calls=65536 * CALLS_PER_ENTRY if "snapshots" in claim
                            else CALLS)


def test_compact_counts_stay_exact_past_one_byte() -> None:
    """The computed refcounts take one byte per cluster; counts of 255 and more live in a
    side table. Random references (ranges, single clusters, repeats) give exactly the counts
    of a plain per-cluster tally."""
    from qcow2_monitor.collectors.check.findings import Tally
    from qcow2_monitor.collectors.check.references import ReferenceCounts

    rng = np.random.default_rng(11)
    clusters = 200_000  # wide enough that scattered references take the sparse path
    refs = ReferenceCounts(clusters * 512, 9, Tally(10))
    expected = np.zeros(clusters + 1, dtype=np.int64)
    for _ in range(300):
        lo = int(rng.integers(0, clusters - 64))
        hi = lo + int(rng.integers(1, 64))
        refs.inc_region(lo * 512, (hi - lo) * 512, "region")
        expected[lo:hi] += 1
        idx = rng.integers(0, 16, size=int(rng.integers(1, 400))).astype(np.uint64)
        refs.add_indices(idx)
        np.add.at(expected, idx.astype(np.intp), 1)
        spread = rng.integers(0, clusters, size=8).astype(np.uint64)
        refs.add_indices(spread)
        np.add.at(expected, spread.astype(np.intp), 1)
    assert int(expected.max()) > 1000  # well past one byte
    assert refs.values(0, clusters + 1).tolist() == expected.tolist()
    assert refs.at(np.arange(clusters + 1)).tolist() == expected.tolist()
    assert refs.count(3, 2**16 - 1) == min(int(expected[3]), 2**16 - 1)


def test_snapshots_sharing_one_l1_table_equal_qemu(tmp_path: Path) -> None:
    """3000 copies of one snapshot table entry (all naming the same L1 table): walked once,
    counted 3000 times, with qemu-img check's figures."""
    path = tmp_path / "s.qcow2"
    snapshotted(path)
    header = read_header(path)
    data = bytearray(path.read_bytes())
    at = header["snapshots_offset"]
    extra, id_size, name_size = (struct.unpack_from(">I", data, at + 36)[0],
                                 *struct.unpack_from(">HH", data, at + 12))
    entry = bytes(data[at:at + -(-(40 + extra + id_size + name_size) // 8) * 8])
    copies = 3000
    table = -(-len(data) // 4096) * 4096
    data += bytes(table - len(data)) + entry * copies + bytes(-len(entry * copies) % 4096)
    struct.pack_into(">IQ", data, 60, copies, table)
    path.write_bytes(data)
    _figures_equal_qemu(path)
    _within_budget(path, check_image, str(path))


@pytest.mark.parametrize("kept", [5, 6, 7])
def test_l1_entry_cut_by_eof_equals_qemu(tmp_path: Path, kept: int) -> None:
    """An L1 table at the end of the file, its entry cut after `kept` bytes: qemu reads the
    missing bytes as zeros, so the entry keeps its high bytes (its COPIED flag, part of the
    offset) and names another table; the check reads it as qemu does."""
    path = tmp_path / "c.qcow2"
    snapshotted(path)
    repoint_l1(path, 1)
    header = read_header(path)
    with open(path, "r+b") as f:
        f.truncate(header["l1_table_offset"] + kept)
    _figures_equal_qemu(path)
    _all_entry_points_clean(path)


def test_snapshots_with_l1_tables_of_their_own_equal_qemu(tmp_path: Path) -> None:
    """300 snapshots whose L1 tables (each its own, all alike) name the same L2 tables 40
    times each: every distinct table walked once, with qemu-img check's figures."""
    path = tmp_path / "o.qcow2"
    snapshotted(path)
    snapshots_with_own_l1_tables(path, 300, 40)
    ours = _figures_equal_qemu(path)
    assert ours["corruptions"]
    _within_budget(path, check_image, str(path))
    _all_entry_points_clean(path)


@pytest.mark.parametrize("kind", ["random", "allocated"])
def test_92_mib_of_l2_tables_within_work_bounds(tmp_path: Path, kind: str) -> None:
    """An image under 100 MB that is nearly all L2 tables (23,296 of them): random entries,
    or every entry a normal cluster at a random offset inside the file (each cluster
    referenced hundreds of times). Found taking 11.7 s and 2.9 s for the check and 6.4 s for
    measure (per-cluster Python work on refcount lookups, exact counts and runs): 12 M entries,
    so millions of calls. Now at most 1.24 M calls (dump-l2, which reads each table: 23,296
    reads) for every entry point."""
    path = tmp_path / "t.qcow2"
    l2_tables_image(path, kind)
    assert path.stat().st_size < 100_000_000
    _all_entry_points_clean(path, calls=3 * CALLS)


def test_65536_snapshots_with_l1_tables_of_their_own_within_work_bounds(tmp_path: Path) -> None:
    """The most snapshots qemu accepts, each with an L1 table of its own (512-byte clusters,
    a 38 MB file): the check took 12 s walking them one by one; the tables are now read a
    window of the file at a time and every distinct L2 table walked once: at most 161 reads
    (one by one: 65536 and more), and the entries are parsed once each."""
    path = tmp_path / "s.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=512", str(path), "1M"])
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 5 0 30k", str(path)])
    run([QEMU_IMG, "snapshot", "-c", "s1", str(path)])
    snapshots_with_own_l1_tables(path, 65536, 1)
    bounds = {"calls": 65536 * CALLS_PER_ENTRY, "reads": 1000}
    _within_budget(path, check_image, str(path), **bounds)
    _all_entry_points_clean(path, **bounds)
    _snapshot_views_clean(path, **bounds)


def _snapshot_views_clean(path: Path, calls: int, reads: int) -> None:
    """Every selector of the snapshot views (the copies of one entry all have ID 1: an
    ambiguous ID, exit 64), in one output or the other, within the fuzzer's budget and at most
    `calls` calls and `reads` reads each."""
    for number, selector in enumerate(("active", "inactive", "all", "1", "s1")):
        output = ("json", "human")[number % 2]
        for name, argv in (("dump-l1", ("dump", "--what", "l1")),
                           ("dump-l2", ("dump", "--what", "l2")),
                           ("check-snapshot", ("check",))):
            call = Call(name, (*argv, "--output", output, "--snapshot", selector, "{path}"),
                        frozenset({0, 1, 2, 3, 64}))
            problems, text, work = run_call(call, str(path), call_limit=calls)
            if work.reads > reads:
                problems.append(f"made {work.reads:,} reads (limit {reads:,} here)")
            assert not problems, f"{call.argv}: {'; '.join(problems)} ({work}); output " \
                f"ends:\n{_tail(text)}"


def test_overlapping_snapshot_l1_tables_equal_qemu(tmp_path: Path) -> None:
    """60 snapshot L1 tables starting one cluster apart (40 places, so some are shared),
    each claiming 3000 entries, so they overlap: every file position is read once and
    counted for each table covering it, with qemu-img check's figures (qemu reads each table
    whole: 46 s at 300 tables of 20,000 entries, 0.2 s here)."""
    path = tmp_path / "o.qcow2"
    snapshotted(path)
    snapshots_with_own_l1_tables(path, 60, 40)
    header = read_header(path)
    data = bytearray(path.read_bytes())
    at = header["snapshots_offset"]
    first = struct.unpack_from(">Q", data, at)[0]
    for k in range(60):  # entry sizes are all alike: 72 bytes
        struct.pack_into(">QI", data, at + 72 * k, first + 4096 * (k % 40), 3000)
    path.write_bytes(data)
    _figures_equal_qemu(path)
    _within_budget(path, check_image, str(path))


def test_snapshot_l1_table_offset_past_two_to_the_63(tmp_path: Path) -> None:
    """Found by the fuzzer (case 20261130:1294): a snapshot's L1 table offset of 2**63
    (cluster aligned, far past EOF) failed the check with an OverflowError. qemu's block
    layer refuses that read (EIO) and qemu-img check fails (exit 1, no figures): so does the
    check, with a clear message; an offset just inside the limit reads as zeros, as in qemu."""
    path = tmp_path / "p.qcow2"
    snapshotted(path)
    header = read_header(path)
    patch_u64(path, header["snapshots_offset"], 1 << 63)
    qemu = run([QEMU_IMG, "check", str(path)], allowed_returncodes=(1,))
    assert "Input/output error" in qemu.stderr
    ours = subprocess.run([sys.executable, "-m", "qcow2_monitor.analyze", "check", str(path)],
                          capture_output=True, text=True)
    assert ours.returncode == 1
    assert "beyond the largest offset qemu can read" in ours.stderr, ours.stderr
    _all_entry_points_clean(path)
    patch_u64(path, header["snapshots_offset"], 1 << 62)
    _figures_equal_qemu(path)
    _all_entry_points_clean(path)


def test_bitmaps_sharing_one_table_equal_qemu(tmp_path: Path) -> None:
    """300 bitmaps naming one bitmap table: its clusters counted for each, as qemu does."""
    path = tmp_path / "b.qcow2"
    bitmaps_sharing_one_table(path, 300)
    ours = _figures_equal_qemu(path)
    assert ours["corruptions"]


def test_65535_bitmaps_within_work_bounds(tmp_path: Path) -> None:
    """The most bitmaps qemu accepts: the check took 3 s walking their tables one by one
    (qemu-img check 2.5 minutes); the tables are read a window of the file at a time: a few
    reads (`dump --what bitmaps --limit 1000` reads the 1000 it shows), not 65535."""
    path = tmp_path / "b.qcow2"
    bitmaps_sharing_one_table(path, 65535)
    bounds = {"calls": 65535 * CALLS_PER_ENTRY, "reads": 2000}
    _within_budget(path, check_image, str(path), **bounds)
    _all_entry_points_clean(path, **bounds)


@pytest.mark.parametrize("size", ["2000M", "1999M"])
def test_measure_of_one_table_named_many_times_equals_qemu(tmp_path: Path, size: str) -> None:
    """Every L1 entry naming the same L2 table (the last one cut by the virtual size, or
    not): measure classifies the table once and counts it per entry, with qemu's figures."""
    path = tmp_path / "m.qcow2"
    one_table_named(path, 1000, size)
    qemu = _qemu_json("measure", "-O", "qcow2", str(path))
    ours = json.loads(_stdout(["measure", "--output", "json", str(path)]))
    assert ours == qemu


def test_measure_of_an_8_tib_l1_naming_one_table_within_work_bounds(tmp_path: Path) -> None:
    """The largest L1 (4 Mi entries) of an 8 TiB image, all naming one L2 table: measure
    walked 2 Gi entries (minutes, as qemu-img measure does); now one table, every command
    within the limit."""
    path = tmp_path / "m.qcow2"
    one_table_named(path, 4 * 1024 * 1024, "8T")
    _all_entry_points_clean(path)


def test_measure_of_an_overlay_naming_one_table_millions_of_times_is_refused(
        tmp_path: Path) -> None:
    """The same hostile L1 in an overlay (a backing file under it): the chain's data runs
    would be walked entry by entry (2 Gi of them). A valid image names each table once, so
    this corrupt one is refused as unsupported, naming the structure, within the limit."""
    base = tmp_path / "base.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(base), "1M"])
    path = tmp_path / "o.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", "-b", str(base),
         "-F", "qcow2", str(path), "8T"])
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 5 0 300k", str(path)])
    repoint_l1(path, 4 * 1024 * 1024)
    proc = subprocess.run([sys.executable, "-m", "qcow2_monitor.analyze", "measure", str(path)],
                          capture_output=True, text=True)
    assert proc.returncode != 0
    assert "active L1 table" in proc.stderr and "not supported" in proc.stderr, proc.stderr
    _all_entry_points_clean(path)
