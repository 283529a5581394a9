"""CompactCounts (the check's computed refcounts, 2 bits per cluster) against plain int64
counters: every way of adding, at every alignment, before and after widening to bytes."""

from __future__ import annotations

import random

import numpy as np
import pytest

from qcow2_monitor.collectors.check import counts as counts_module
from qcow2_monitor.collectors.check.counts import CompactCounts


def random_ops(seed: int, n: int, steps: int, big_every: int) -> None:
    rng = random.Random(seed)
    stored = CompactCounts(n)
    expected = np.zeros(n, dtype=np.int64)
    for step in range(steps):
        choice = rng.random()
        lo = rng.randrange(n)
        hi = rng.randrange(lo, min(n, lo + rng.choice([1, 2, 3, 5, 9, 40, 700])) + 1)
        if choice < 0.7:
            stored.add_range(lo, hi)
            expected[lo:hi] += 1
        elif choice < 0.85:
            inc = np.array([rng.choice([0, 0, 0, 1, 2] + [300] * (step % big_every == 0))
                            for _ in range(hi - lo)], dtype=np.uint64)
            stored.add_range(lo, hi, inc)
            expected[lo:hi] += inc.astype(np.int64)
        else:
            clusters = np.unique(np.array([rng.randrange(n) for _ in range(rng.randrange(1, 30))],
                                          dtype=np.intp))
            inc = np.array([rng.choice([1, 1, 2, 3]) for _ in clusters], dtype=np.int64)
            stored.add_at(clusters, inc)
            expected[clusters] += inc
        if step % 25 == 0:
            a = rng.randrange(n)
            b = rng.randrange(a, n + 1)
            assert stored.values(a, b).tolist() == expected[a:b].tolist(), step
            assert stored.fields(a, b).tolist() == np.minimum(expected[a:b],
                                                             stored.saturated).tolist()
            picks = np.array([rng.randrange(n) for _ in range(10)], dtype=np.intp)
            assert stored.at(picks).tolist() == expected[picks].tolist()
            assert stored.one(int(picks[0])) == int(expected[picks[0]])
    assert stored.values(0, n).tolist() == expected.tolist()
    assert stored.saturated_clusters().tolist() == np.flatnonzero(
        expected >= stored.saturated).tolist()


@pytest.mark.parametrize("seed", range(4))
def test_two_bit_fields_match_plain_counters(seed: int) -> None:
    random_ops(seed, n=257 + seed, steps=600, big_every=97)


@pytest.mark.parametrize("seed", range(3))
def test_widened_fields_match_plain_counters(seed: int, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(counts_module, "WIDEN_AFTER", 20)
    random_ops(100 + seed, n=301, steps=900, big_every=53)


def test_widening_happens_and_keeps_only_large_counts(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(counts_module, "WIDEN_AFTER", 10)
    stored = CompactCounts(100)
    for _ in range(3):
        stored.add_range(0, 50)
    assert stored.bits == 8 and stored.saturated == 255
    stored.add_range(7, 8, np.array([1000], dtype=np.uint64))
    assert stored.big.clusters.tolist() == [7] and stored.big.get(np.array([7])).tolist() == [1003]
    assert stored.values(0, 100).tolist() == [3] * 7 + [1003] + [3] * 42 + [0] * 50


def test_storage_is_a_quarter_byte_per_cluster() -> None:
    nb = 16 * 1024 * 1024 + 1  # a 1 TiB file of 64 KiB clusters, plus qemu's extra one
    stored = CompactCounts(nb)
    assert stored.data.nbytes == -(-nb // 4)
    stored.add_range(0, nb)  # one reference each: no exact count kept aside
    stored.add_range(5, 1 << 20)
    assert not len(stored.big) and stored.values(0, 7).tolist() == [1] * 5 + [2] * 2
