"""The L1 table read a chunk at a time (collectors/check/l1.py) and the multiplied references of a
table walked once for all the entries naming it (ReferenceCounts.repeated), against plain
per-entry computations."""

from __future__ import annotations

from collections import Counter
from pathlib import Path

import numpy as np
import pytest

from qcow2_monitor.collectors.check.findings import Tally
from qcow2_monitor.collectors.check.l1 import (
    L1_CHUNK_ENTRIES,
    MAX_MULTIPLICITY_GROUPS,
    L1Spans,
    TableGatherer,
    entry_chunks,
    multiplicity_groups,
)
from qcow2_monitor.collectors.check.references import ReferenceCounts
from qcow2_monitor.collectors.qcow2.reader import ImageFile


@pytest.mark.parametrize("distinct", [1, 5, MAX_MULTIPLICITY_GROUPS, 200])
def test_every_table_counted_as_often_as_named(distinct: int) -> None:
    rng = np.random.default_rng(distinct)
    choices = rng.choice(np.arange(1, 5000), size=distinct, replace=False)
    times = rng.choice(choices, size=3000).astype(np.intp)
    times[:distinct] = choices  # every chosen multiplicity present
    groups = multiplicity_groups(times)
    counted = np.zeros(len(times), dtype=np.int64)
    walks = np.zeros(len(times), dtype=np.int64)
    for k, positions in groups:
        counted[positions] += k
        walks[positions] += 1
    assert counted.tolist() == times.tolist()
    if distinct <= MAX_MULTIPLICITY_GROUPS:
        assert len(groups) == distinct and walks.max() == 1
    else:  # one group per bit: at most 13 bits below 5000
        assert len(groups) <= 13


def test_gathered_tables_equal_a_per_entry_count() -> None:
    """Tables named across several chunks: first naming entry, count and mark as a plain walk
    over the entries finds them."""
    rng = np.random.default_rng(3)
    entries = 5 * L1_CHUNK_ENTRIES // 2
    offsets = (rng.integers(1, 300, size=entries) * 4096).astype(np.uint64)
    marked = (offsets // 4096) % 3 == 0  # depends on the offset only
    gatherer = TableGatherer()
    for lo in range(0, entries, L1_CHUNK_ENTRIES):
        part = slice(lo, lo + L1_CHUNK_ENTRIES)
        gatherer.add(offsets[part], np.arange(lo, min(entries, lo + L1_CHUNK_ENTRIES)),
                     marked[part])
    tables = gatherer.tables()
    first: dict[int, int] = {}
    for i, off in enumerate(offsets.tolist()):
        first.setdefault(off, i)
    counts = Counter(offsets.tolist())
    assert tables.offsets.tolist() == list(first)  # in the order first named
    assert tables.first_index.tolist() == list(first.values())
    assert tables.times.tolist() == [counts[off] for off in first]
    assert tables.marked.tolist() == [off // 4096 % 3 == 0 for off in first]


def test_chunks_end_at_eof_and_keep_a_cut_entry(tmp_path: Path) -> None:
    """Entries past EOF read as zeros, so the chunks stop there; an entry cut by EOF keeps
    the bytes inside the file (qemu's zero-filled read)."""
    table = (np.arange(1, 3 * L1_CHUNK_ENTRIES, dtype=np.uint64) | np.uint64(1 << 40)).astype(
        ">u8")
    raw = b"\x07" * 4096 + table.tobytes()
    path = tmp_path / "t"
    path.write_bytes(raw[:-3])  # the last entry cut after 5 of its 8 bytes
    with ImageFile(str(path)) as file:
        chunks = list(entry_chunks(file, L1Spans.of([4096], [4 * L1_CHUNK_ENTRIES]),
                                   "L1 table"))
    read = np.concatenate([chunk.entries for chunk in chunks])
    assert np.concatenate([chunk.l1_index for chunk in chunks]).tolist() == list(
        range(len(table)))
    assert {chunk.times for chunk in chunks} == {1}
    assert read[:-1].tolist() == table[:-1].tolist()
    last = int(table[-1])
    assert int(read[-1]) == last & ~0xFFFFFF  # its low three bytes were past EOF


def _plain_entries(data: bytes, spans: list[tuple[int, int, int]]
                   ) -> Counter[tuple[int, int]]:
    """(file position, entry) -> summed times, one table and one entry at a time."""
    counted: Counter[tuple[int, int]] = Counter()
    for offset, size, times in spans:
        for i in range(size):
            at = offset + 8 * i
            if at >= len(data):
                break
            value = int.from_bytes(data[at:at + 8].ljust(8, b"\0"), "big")
            if value:
                counted[at, value] += times
    return counted


def test_many_overlapping_tables_read_once_each_position_weighted(tmp_path: Path) -> None:
    """Tables that overlap (a hostile image), small tables side by side, shared tables
    counted several times, a table far past EOF: each file position is read once, counted
    for every table that covers it, and attributed to the first of them with its index
    there."""
    rng = np.random.default_rng(8)
    data = rng.integers(0, 4, size=300_000, dtype=np.uint64).astype(">u8").tobytes()
    path = tmp_path / "t"
    path.write_bytes(data[:-5])
    spans = [(int(rng.integers(0, 2300)) * 1024, int(rng.integers(1, 200_000)),
              int(rng.integers(1, 40))) for _ in range(60)]
    spans += [(1024 * k, 3, 1) for k in range(100, 140)]  # small ones side by side
    spans += [(1 << 63, 5, 1)]
    with ImageFile(str(path)) as file:
        chunks = list(entry_chunks(file, L1Spans.of(*map(list, zip(*spans))), "L1 table"))
    seen: Counter[tuple[int, int]] = Counter()
    for chunk in chunks:
        for value, source, index in zip(chunk.entries.tolist(), chunk.source.tolist(),
                                        chunk.l1_index.tolist()):
            offset, size, _ = spans[source]
            at = offset + 8 * index
            assert index < size
            covering = [k for k, (o, n, _) in enumerate(spans) if o <= at < o + 8 * n]
            assert source == covering[0]
            seen[at, value] += chunk.times
    assert seen == _plain_entries(data[:-5], spans)


def test_repeated_references_nest_and_equal_plain_repeats() -> None:
    """Every kind of reference made inside repeated() counts `times` times, nested repeats
    multiply, and the tally's figures scale the same way."""
    rng = np.random.default_rng(5)
    clusters = 50_000
    scattered = rng.integers(0, clusters, size=300).astype(np.uint64)
    packed = rng.integers(100, 160, size=500).astype(np.uint64)

    def walk(refs: ReferenceCounts) -> None:
        refs.add_indices(scattered)
        refs.add_indices(packed)
        refs.add_runs([(1000, 1500), (7, 9)])
        refs.inc_region(3 * 512 + 100, 4000, "region")
        refs.add_clusters(np.array([clusters * 512 + 4096], dtype=np.uint64))  # past EOF
        refs.tally.allocated += 2

    once = ReferenceCounts(clusters * 512, 9, Tally(10))
    for _ in range(15):
        walk(once)
    nested = ReferenceCounts(clusters * 512, 9, Tally(10))
    nested.repeated(3, lambda: nested.repeated(5, lambda: walk(nested)))
    assert nested.values(0, clusters + 1).tolist() == once.values(0, clusters + 1).tolist()
    assert (nested.tally.allocated, nested.tally.corruptions) == (30, 15)
    assert (once.tally.allocated, once.tally.corruptions) == (30, 15)
    assert nested.times == 1
