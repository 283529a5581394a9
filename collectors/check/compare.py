"""Refcount comparison of the full check: compare_refcounts() in qemu's block/qcow2-refcount.c.
Each cluster's on-disk refcount against the references counted by the walk: lower on disk is
a corruption, higher a leak, unreadable a check error."""

from __future__ import annotations

import numpy as np
import numpy.typing as npt

from ..report.model import Place, TableName
from .findings import ADVICE_DATA, Tally, finding
from .refblocks import OnDiskRefcounts
from .references import COUNT_MAX, U64, ReferenceCounts, u64


def compare_refcounts(refs: ReferenceCounts, ondisk: OnDiskRefcounts, refcount_max: int,
                      tally: Tally) -> int:
    """Compare every cluster; returns the highest cluster whose on-disk or computed refcount
    is nonzero."""
    per_block = ondisk.per_block
    highest = 0
    size = refs.size
    limit = min(refcount_max, int(COUNT_MAX))
    for t in range(-(-size // per_block)):
        lo = t * per_block
        hi = min(size, lo + per_block)
        block = ondisk.block(t)
        if block is None:
            tally.check_errors += hi - lo
            tally.compare.add(finding(
                "refcount-unreadable", f"refcount table entry {t}",
                Place(TableName.REFCOUNT_TABLE, ondisk.table_offset, t,
                      refcount_table_offset=ondisk.table_offset), first=lo, last=hi - 1,
                host_offset=ondisk.block_offset(t), cluster_index=lo, found=hi - lo), hi - lo)
            continue
        computed = refs.values(lo, hi)
        np.minimum(computed, u64(limit), out=computed)
        on_disk = block[: hi - lo]
        nonzero = np.flatnonzero((on_disk != 0) | (computed != 0))
        if len(nonzero):
            highest = lo + int(nonzero[-1])
        differ = np.flatnonzero(on_disk != computed)
        if len(differ):
            _differences(differ + lo, on_disk[differ], computed[differ], refs.cluster_bits,
                         tally)
    return highest


def _differences(clusters: npt.NDArray[np.intp], disk: U64, ref: U64, cluster_bits: int,
                 tally: Tally) -> None:
    """Count and report the clusters (of one refcount block) whose refcounts differ."""
    low = disk < ref
    nlow = int(np.count_nonzero(low))
    tally.corruptions += nlow
    tally.leaks += len(clusters) - nlow
    room = tally.compare.room
    for k in range(min(room, len(clusters))):
        cluster = int(clusters[k])
        on_disk, counted = int(disk[k]), int(ref[k])
        values = {"host_offset": cluster << cluster_bits, "cluster_index": cluster,
                  "expected": counted, "found": on_disk}
        if on_disk < counted:
            advice = ADVICE_DATA if counted > 1 else None
            tally.compare.add(finding("refcount-too-low", f"cluster {cluster}", advice=advice,
                                      **values))
        else:
            tally.compare.add(finding("leak", f"cluster {cluster}", **values))
    tally.compare.count(max(0, len(clusters) - room))
