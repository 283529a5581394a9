"""Where an image's clusters lie in its file or device: for each host cluster, what it holds
(metadata, guest data, compressed data), or that nothing references it (free below the end
offset, leaked, or past the end). The picture `qcow2-analyze map` draws.

The references come from the full check's own walk (collectors.check.checker), run with
reference counts that also remember what referenced each cluster: the data clusters and
compressed data of the L2 tables, and everything else (header, L1 and L2 tables, refcount
table and blocks, snapshot table, bitmap directory, tables and data, LUKS header) as metadata.
The on-disk refcounts then tell a free cluster (refcount 0) from a leaked one (a refcount, and
no reference).
"""

from __future__ import annotations

import contextlib
from typing import Any, Iterator

import numpy as np
import numpy.typing as npt

from ..common.errors import Qcow2Error
from ..common.record import frozen_record
from ..qcow2.image import Qcow2Image
from .checker import _Check
from .compare import compare_refcounts
from .l1walk import L1Walk
from .references import U64, ReferenceCounts
from .tablewalk import TableWalk

# Kinds of host clusters, in the order a cluster referenced twice shows (the higher wins).
BEYOND, FREE, DATA, COMPRESSED, METADATA, LEAKED = range(6)
KIND_NAMES = ("beyond-end", "free", "data", "compressed", "metadata", "leaked")
Kinds = npt.NDArray[np.uint8]


class _KindCounts(ReferenceCounts):
    """Reference counts that also mark each referenced cluster with the current kind."""

    def __init__(self, file_length: int, cluster_bits: int, tally: Any) -> None:
        super().__init__(file_length, cluster_bits, tally)
        self.kinds: Kinds = np.zeros(-(-file_length // self.cluster_size) + 1, dtype=np.uint8)
        self.kind = METADATA

    @contextlib.contextmanager
    def marking(self, kind: int) -> Iterator[None]:
        outer, self.kind = self.kind, kind
        try:
            yield
        finally:
            self.kind = outer

    def _mark(self, clusters: npt.NDArray[np.intp]) -> None:
        clusters = clusters[clusters < len(self.kinds)]
        self.kinds[clusters] = np.maximum(self.kinds[clusters], self.kind)

    def add_indices(self, idx: U64) -> None:
        self._mark(idx.astype(np.intp))
        super().add_indices(idx)

    def _add_range(self, first: int, end: int) -> None:
        part = self.kinds[first:end]
        np.maximum(part, self.kind, out=part)
        super()._add_range(first, end)

    def _add_covered(self, first: npt.NDArray[np.int64], stop: npt.NDArray[np.int64],
                     weight: npt.NDArray[np.int64]) -> None:
        n = len(self.kinds)
        delta = np.zeros(n + 1, dtype=np.int64)
        np.add.at(delta, np.minimum(first, n), 1)
        np.add.at(delta, np.minimum(stop, n), -1)
        covered = np.flatnonzero(np.cumsum(delta[:-1]) > 0)
        self.kinds[covered] = np.maximum(self.kinds[covered], self.kind)
        super()._add_covered(first, stop, weight)


class _KindWalk(TableWalk):
    """The check's L2 walk, marking guest data and compressed data as such."""

    refs: _KindCounts

    def _count_compressed(self, *args: Any) -> Any:
        with self.refs.marking(COMPRESSED):
            return super()._count_compressed(*args)

    def _count_allocated(self, *args: Any) -> Any:
        with self.refs.marking(DATA):
            return super()._count_allocated(*args)

    def _count_runs(self, *args: Any) -> Any:
        with self.refs.marking(DATA):
            return super()._count_runs(*args)


class _MapWalk(_Check):
    def __init__(self, image: Qcow2Image) -> None:
        super().__init__(image, max_findings=0)
        self.kind_counts = _KindCounts(image.file.length, self.h.cluster_bits, self.tally)
        self.refs = self.kind_counts
        self.walk = _KindWalk(image, self.kind_counts, self.ondisk, self.tally)
        self.l1walk = L1Walk(self.walk)


@frozen_record
class ClusterMap:
    """What each host cluster of an image holds, up to `length` bytes."""

    cluster_size: int
    end_offset: int  # qemu-img check's image end offset
    length: int  # bytes mapped: the container (file or device), or the end offset if larger
    kinds: Kinds  # one KIND per cluster

    def runs(self) -> list[tuple[int, int, int]]:
        """(kind, offset, length) of each run of clusters of one kind."""
        kinds = self.kinds
        if not len(kinds):
            return []
        starts = np.concatenate(([0], np.flatnonzero(kinds[1:] != kinds[:-1]) + 1))
        ends = np.concatenate((starts[1:], [len(kinds)]))
        cs = self.cluster_size
        return [(int(kinds[a]), int(a) * cs, min(int(b) * cs, self.length) - int(a) * cs)
                for a, b in zip(starts.tolist(), ends.tolist())]

    def totals(self) -> dict[str, int]:
        counts = np.bincount(self.kinds, minlength=len(KIND_NAMES))
        totals = {name: int(count) * self.cluster_size for name, count in zip(KIND_NAMES, counts)}
        # The last cluster may be partial (a file whose length is no whole cluster).
        last = int(self.kinds[-1]) if len(self.kinds) else BEYOND
        totals[KIND_NAMES[last]] -= len(self.kinds) * self.cluster_size - self.length
        return totals

    def cells(self, count: int) -> list[int]:
        """The map drawn in `count` cells: each cell the kind most of its clusters hold (the
        higher kind on a tie, so that a leaked or metadata cluster is not lost in a tie)."""
        n = len(self.kinds)
        if not n or count <= 0:
            return []
        bounds = (np.arange(count + 1, dtype=np.int64) * n) // count
        best = np.zeros(count, dtype=np.int64)
        most = np.full(count, -1, dtype=np.int64)
        for kind in range(len(KIND_NAMES)):
            running = np.concatenate(([0], np.cumsum(self.kinds == kind, dtype=np.int64)))
            got = running[bounds[1:]] - running[bounds[:-1]]
            better = got >= most
            better &= got > 0
            best[better], most[better] = kind, got[better]
        # More cells than clusters: a cell inside one cluster holds none whole, and is drawn
        # as the cluster it lies in (not as past the end).
        inside = most < 0
        best[inside] = self.kinds[bounds[:-1][inside]]
        return [int(k) for k in best]


def cluster_map(image: Qcow2Image, container_length: int) -> ClusterMap:
    """The kinds of every host cluster of `image`, mapped up to its container's length (or its
    end offset, if larger). Raises Qcow2Error when qemu's check could not walk the image."""
    h = image.header
    cs = h.cluster_size
    try:
        walk = _MapWalk(image)
        snapshots = image.snapshots()
        walk.calculate(snapshots, image.snapshots_size)
        highest = compare_refcounts(walk.refs, walk.ondisk, (1 << h.refcount_bits) - 1,
                                    walk.tally)
    except Qcow2Error as exc:
        raise exc.with_filename(image.filename) from None
    end = (highest + 1) * cs
    length = max(container_length, end)
    n = -(-length // cs)
    kinds = np.full(n, BEYOND, dtype=np.uint8)
    known = walk.kind_counts.kinds[: min(n, len(walk.kind_counts.kinds))]
    kinds[: len(known)] = known
    below = min(end // cs, n)
    unreferenced = np.flatnonzero(kinds[:below] == BEYOND)
    if len(unreferenced):
        ondisk = _ondisk(walk, unreferenced)
        kinds[unreferenced] = np.where(ondisk > 0, LEAKED, FREE).astype(np.uint8)
    return ClusterMap(cs, end, length, kinds)


def _ondisk(walk: _MapWalk, clusters: npt.NDArray[np.intp]) -> U64:
    """The on-disk refcounts of `clusters` (an unreadable block counts as no refcount)."""
    values, readable = walk.ondisk.lookup(clusters.astype(np.uint64))
    return np.where(readable, values, 0).astype(np.uint64)
