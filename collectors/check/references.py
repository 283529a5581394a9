"""Reference counting of the full check: qemu's in-memory refcount table (the "imrt" of
calculate_refcounts()) and qcow2_inc_refcounts_imrt(), vectorised.

Every rule of qcow2_inc_refcounts_imrt() is order independent (a region is counted or not on
its own; an increment at the maximum is one corruption, so the final count is min(total, max)
and the overflows are total - max), which is what makes counting whole batches at once valid.
The counts are kept for each cluster of the file (nb_clusters + 1, sized by the file length,
never by the virtual size) in :class:`~collectors.counts.CompactCounts`: 2 bits per cluster
while few clusters are shared three times or more, exact larger counts beside them; qemu's own
in-memory table takes refcount_bits per cluster (2 bytes by default).
"""

from __future__ import annotations

from functools import partial
from typing import Callable

import numpy as np
import numpy.typing as npt

from .counts import CompactCounts
from .findings import Tally, finding

U64 = npt.NDArray[np.uint64]
Bools = npt.NDArray[np.bool_]

COUNT_MAX = np.iinfo(np.uint32).max
# Clusters compared per pass when scanning the whole array.
SCAN_CHUNK = 1 << 20
# Up to this many regions, inc_regions() adds them one at a time.
SMALL_REGION_COUNT = 16


def u64(value: int) -> np.uint64:
    return np.uint64(value)


def ranges(starts: npt.NDArray[np.int64], lengths: npt.NDArray[np.int64]
           ) -> npt.NDArray[np.int64]:
    """starts[k], starts[k] + 1, ..., starts[k] + lengths[k] - 1 for every k, in order, as one
    array (no Python loop over the ranges)."""
    out: npt.NDArray[np.int64] = np.repeat(starts - np.cumsum(lengths) + lengths, lengths) \
        + np.arange(int(lengths.sum()))
    return out


class ReferenceCounts:
    """How often each host cluster is referenced by the metadata walked so far."""

    def __init__(self, file_length: int, cluster_bits: int, tally: Tally) -> None:
        self.file_length = file_length
        self.cluster_bits = cluster_bits
        self.cluster_size = 1 << cluster_bits
        self.tally = tally
        nb_clusters = -(-file_length // self.cluster_size)
        # qcow2_inc_refcounts_imrt() may grow the array by one cluster (a region ending less
        # than a cluster past EOF); nothing can reach further (see add_regions).
        self.counts = CompactCounts(nb_clusters + 1)
        self.size = nb_clusters  # qemu's nb_clusters after the imrt grew
        self.times = 1  # every reference counts this many times (see repeated)

    # -- reading ---------------------------------------------------------------------------
    def values(self, lo: int, hi: int) -> U64:
        """The exact counts of clusters lo..hi-1."""
        return self.counts.values(lo, hi)

    def at(self, clusters: npt.NDArray[np.intp]) -> npt.NDArray[np.int64]:
        """The exact counts of the listed clusters."""
        return self.counts.at(clusters)

    def count(self, cluster: int, refcount_max: int) -> int:
        """The computed refcount of one cluster, as qemu stores it (at most the maximum)."""
        return min(self.counts.one(cluster), refcount_max)

    def add_indices(self, idx: U64) -> None:
        """One reference to each listed cluster (repeats counted)."""
        if not len(idx):
            return
        lo = int(idx.min())
        hi = int(idx.max())
        self.size = max(self.size, hi + 1)
        if hi - lo < 4 * len(idx) + 65536:
            self.counts.add_range(lo, hi + 1, np.bincount(
                (idx - u64(lo)).astype(np.intp), minlength=hi - lo + 1).astype(np.uint64)
                * u64(self.times))
        else:
            clusters, times = np.unique(idx.astype(np.intp), return_counts=True)
            self.counts.add_at(clusters, times.astype(np.int64) * self.times)

    def add_each(self, clusters: U64) -> npt.NDArray[np.int64]:
        """One reference to each listed cluster, one after the other as qemu adds them:
        returns each cluster's count right after its own reference (earlier repeats of the
        same cluster included)."""
        idx = clusters.astype(np.intp)
        order = np.argsort(idx, kind="stable")
        ordered = idx[order]
        first = np.concatenate(([True], ordered[1:] != ordered[:-1]))
        group_start = np.maximum.accumulate(np.where(first, np.arange(len(idx)), 0))
        rank = np.empty(len(idx), dtype=np.int64)
        rank[order] = np.arange(len(idx)) - group_start
        after = self.at(idx) + rank + 1
        self.add_indices(clusters)
        return after

    def add_runs(self, runs: list[tuple[int, int]]) -> None:
        """One reference to each cluster of the runs [first, end), all inside the file."""
        for first, end in runs:
            self._add_range(first, end)
        self.size = max(self.size, max(end for _, end in runs))

    def add_regions(self, starts: U64, sizes: U64) -> Bools:
        """Count every cluster each region [start, start+size) overlaps; returns the mask of
        regions refused because they end a whole cluster or more past EOF (one corruption
        each, counted here). Sizes must be > 0 and at most 3 clusters."""
        ends = starts + sizes
        past = ends >= u64(self.file_length + self.cluster_size)
        npast = int(np.count_nonzero(past))
        if npast:
            self.tally.corruptions += npast
            keep = ~past
            starts, ends = starts[keep], ends[keep]
        first = starts >> u64(self.cluster_bits)
        last = (ends - u64(1)) >> u64(self.cluster_bits)
        span = last - first
        parts = [first]
        max_span = int(span.max()) if len(span) else 0
        for k in range(1, max_span + 1):
            parts.append(first[span >= u64(k)] + u64(k))
        self.add_indices(np.concatenate(parts) if len(parts) > 1 else first)
        return past

    def add_clusters(self, offsets: U64) -> Bools:
        """add_regions() of whole clusters at `offsets`."""
        return self.add_regions(offsets, np.full(len(offsets), self.cluster_size,
                                                 dtype=np.uint64))

    def inc_region(self, offset: int, size: int, what: str) -> None:
        """qcow2_inc_refcounts_imrt() for one region of any length."""
        if size <= 0:
            return
        if offset + size - self.file_length >= self.cluster_size:
            self.tally.corruption(
                "reference-past-eof", what, what=f"{what} ({size} bytes)", host_offset=offset,
                cluster_index=offset >> self.cluster_bits, found=size,
                file_length=self.file_length)
            return
        first = offset >> self.cluster_bits
        last = (offset + size - 1) >> self.cluster_bits
        self.size = max(self.size, last + 1)
        self._add_range(first, last + 1)

    def inc_regions(self, starts: U64, sizes: npt.NDArray[np.int64],
                    times: npt.NDArray[np.int64], what: Callable[[int], str]) -> None:
        """inc_region() of many regions of any length (starts anything below 2**64), region
        k counted times[k] times (`what(k)` names it): thousands of snapshot L1 tables,
        possibly overlapping, cost a few passes, not one each."""
        if len(starts) <= SMALL_REGION_COUNT:
            for k, (offset, length, n) in enumerate(zip(starts.tolist(), sizes.tolist(),
                                                        times.tolist())):
                self.repeated(n, partial(self.inc_region, offset, length, what(k)))
            return
        # Computed without overflow: a region ends past the limit when it starts there or
        # is longer than what is left before it.
        limit = np.uint64(self.file_length + self.cluster_size)
        room = limit - np.minimum(starts, limit)
        used = sizes > 0
        past = np.flatnonzero(used & ((starts >= limit) | (sizes.astype(np.uint64) >= room)))
        for k in past[: self.tally.structure.room].tolist():
            self.repeated(int(times[k]), partial(self.inc_region, int(starts[k]),
                                                 int(sizes[k]), what(k)))
        rest = int(times[past[self.tally.structure.room:]].sum())
        self.tally.corruptions += rest
        self.tally.structure.count(rest)
        keep = np.flatnonzero(used & (starts < limit) & (sizes.astype(np.uint64) < room))
        if len(keep):
            start = starts[keep].astype(np.int64)
            self._add_covered(start >> self.cluster_bits,
                              ((start + sizes[keep] - 1) >> self.cluster_bits) + 1,
                              times[keep])

    def _add_covered(self, first: npt.NDArray[np.int64], stop: npt.NDArray[np.int64],
                     weight: npt.NDArray[np.int64]) -> None:
        """Clusters first[k]..stop[k]-1 referenced weight[k] times each: cut into disjoint
        pieces between all the boundaries, each with the summed weight covering it, added
        SCAN_CHUNK clusters at a time."""
        self.size = max(self.size, int(stop.max()))
        bounds = np.unique(np.concatenate((first, stop)))
        delta = np.zeros(len(bounds), dtype=np.int64)
        np.add.at(delta, np.searchsorted(bounds, first), weight)
        np.add.at(delta, np.searchsorted(bounds, stop), -weight)
        covered = np.cumsum(delta)[:-1]
        pieces = np.flatnonzero(covered)
        lows, lengths = bounds[pieces], bounds[pieces + 1] - bounds[pieces]
        group = np.cumsum(lengths) // SCAN_CHUNK
        cuts = [0, *(np.flatnonzero(group[1:] != group[:-1]) + 1).tolist(), len(pieces)]
        for a, b in zip(cuts, cuts[1:]):
            part = lengths[a:b]
            self.counts.add_at(ranges(lows[a:b], part).astype(np.intp),
                               np.repeat(covered[pieces[a:b]] * self.times, part))

    def _add_range(self, first: int, end: int) -> None:
        self.counts.add_range(first, end, None if self.times == 1 else np.full(
            end - first, self.times, dtype=np.uint64))

    def repeated(self, times: int, walk: Callable[[], None]) -> None:
        """Run `walk` once, counting all it adds `times` times: every reference it makes is
        multiplied as it is added (the rules are order independent), and the tally's figures
        grow by `times` times what the walk added (findings beyond the first walk's are
        counted, not listed). Nests: a snapshot table shared by k snapshots naming an L2
        table n times counts it k * n times."""
        tally = self.tally
        scalars = ("corruptions", "allocated", "fragmented", "compressed", "check_errors")
        before = [getattr(tally, name) for name in scalars]
        marks = [tally.structure.mark(), tally.copied.mark()]
        kept = [len(tally.structure.items), len(tally.copied.items)]
        outer = self.times
        self.times = outer * times
        try:
            walk()
        finally:
            self.times = outer
        for name, old in zip(scalars, before):
            setattr(tally, name, old + (getattr(tally, name) - old) * times)
        tally.structure.repeat(marks[0], times)
        tally.copied.repeat(marks[1], times)
        tally.structure.multiply_since(kept[0], times)
        tally.copied.multiply_since(kept[1], times)

    def overflows(self, refcount_bits: int) -> None:
        """Increments qemu refused at the maximum refcount: one corruption each."""
        refcount_max = (1 << refcount_bits) - 1
        if refcount_max >= COUNT_MAX:
            return
        stored = self.counts
        if refcount_max >= stored.saturated:
            # Only counts kept exactly beside the fields can exceed the maximum.
            candidates = stored.saturated_clusters()
        else:  # 1-bit refcounts: scanned a chunk at a time
            candidates = np.concatenate([
                np.flatnonzero(stored.fields(lo, min(stored.length, lo + SCAN_CHUNK))
                               > refcount_max) + lo
                for lo in range(0, stored.length, SCAN_CHUNK)])
        counts = self.at(candidates)
        over = candidates[counts > refcount_max]
        counts = counts[counts > refcount_max]
        if not len(over):
            return
        total = int((counts - refcount_max).sum())
        self.tally.corruptions += total
        structure = self.tally.structure
        built = 0
        for k, count in zip(over[: structure.room].tolist(), counts.tolist()):
            structure.add(finding(
                "refcount-overflow", f"cluster {k}", host_offset=k << self.cluster_bits,
                cluster_index=k, expected=count, found=refcount_max,
                excess=count - refcount_max, refcount_bits=refcount_bits), count - refcount_max)
            built += 1
        structure.count(total - built)

