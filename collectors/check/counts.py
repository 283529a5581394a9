"""Compact per-cluster counters: the storage behind the check's computed refcounts.

Each cluster's count takes 2 bits (four to a byte, the first cluster in the low bits); the
field value 3 means "3 or more" and the exact count is kept beside the array, in sorted arrays
updated a batch at a time (a hostile image can make every cluster's count large). Nearly
every cluster is referenced at most twice, so this is a quarter of a byte per cluster of the
file (qemu's own table takes refcount_bits, 2 bytes by default). When many clusters are
shared three times or more (images with several internal snapshots) the exact counts would
outgrow the array: the fields are then widened to one byte each (255 meaning "255 or more"),
which keeps the exact counts to the clusters referenced 255 times or more.

Counts stay far below 2**63: at most 65537 L1 tables of 4 Mi entries, each naming an L2 table
of at most 2**18 entries, reference any one cluster.

Fields only grow, and a field never exceeds its saturated value, so adding to fields packed in
one byte never carries into the next field.
"""

from __future__ import annotations

from typing import Optional

import numpy as np
import numpy.typing as npt

U64 = npt.NDArray[np.uint64]
Fields = npt.NDArray[np.uint8]
Positions = npt.NDArray[np.intp]

# Exact counts kept beside the 2-bit fields before they are widened to bytes.
WIDEN_AFTER = 1 << 14
_SHIFTS = np.array([0, 2, 4, 6], dtype=np.uint8)
# The four fields of every byte value, as the four bytes of one uint32 (unpacking a byte is
# then one lookup: several times faster than shifting and masking).
_UNPACKED = ((np.arange(256, dtype=np.uint8)[:, None] >> _SHIFTS) & np.uint8(3)).view(
    np.uint32).reshape(-1)
_ONE_EACH = np.uint8(0x55)  # 1 in each of a byte's four 2-bit fields
_HIGH_BITS = np.uint8(0xAA)  # set in a 2-bit field holding 2 or 3


class CompactCounts:
    """Counts of `length` clusters, all starting at zero."""

    def __init__(self, length: int) -> None:
        self.length = length
        self.bits = 2
        self.saturated = 3
        self.data: Fields = np.zeros(-(-length // 4), dtype=np.uint8)
        self.big = ExactCounts(length)  # exact counts of the clusters at `saturated`

    # -- fields ------------------------------------------------------------------------------
    def fields(self, lo: int, hi: int) -> Fields:
        """The stored fields of clusters lo..hi-1 (a new array)."""
        if self.bits == 8:
            return self.data[lo:hi].copy()
        first, end = lo >> 2, (hi + 3) >> 2
        unpacked = np.take(_UNPACKED, self.data[first:end]).view(np.uint8)
        out: Fields = unpacked[lo - 4 * first: hi - 4 * first]
        return out

    def fields_at(self, clusters: Positions) -> Fields:
        if self.bits == 8:
            return self.data[clusters]
        shifts = ((clusters & 3) << 1).astype(np.uint8)
        out: Fields = (self.data[clusters >> 2] >> shifts) & np.uint8(3)
        return out

    def _store(self, lo: int, hi: int, fields: Fields) -> None:
        """Replace the fields of clusters lo..hi-1."""
        if self.bits == 8:
            self.data[lo:hi] = fields
            return
        first, end = lo >> 2, (hi + 3) >> 2
        if lo & 3 or hi & 3:
            whole = self.fields(4 * first, 4 * end)
            whole[lo - 4 * first: hi - 4 * first] = fields
            fields = whole
        f = fields.reshape(-1, 4)
        self.data[first:end] = f[:, 0] | (f[:, 1] << 2) | (f[:, 2] << 4) | (f[:, 3] << 6)

    # -- exact counts ------------------------------------------------------------------------
    def values(self, lo: int, hi: int) -> U64:
        """The exact counts of clusters lo..hi-1."""
        fields = self.fields(lo, hi)
        out = fields.astype(np.uint64)
        if len(self.big):  # no count reached the saturated value otherwise
            at = np.flatnonzero(fields == self.saturated)
            out[at] = self.big.get(at + lo)
        return out

    def at(self, clusters: Positions) -> npt.NDArray[np.int64]:
        """The exact counts of the listed clusters."""
        fields = self.fields_at(clusters)
        out = fields.astype(np.int64)
        if len(self.big):
            at = np.flatnonzero(fields == self.saturated)
            out[at] = self.big.get(clusters[at])
        return out

    def one(self, cluster: int) -> int:
        return int(self.at(np.array([cluster], dtype=np.intp))[0])

    def saturated_clusters(self) -> Positions:
        """The clusters whose exact count is kept beside the fields, in order."""
        return self.big.clusters.copy()

    # -- adding ------------------------------------------------------------------------------
    def add_range(self, lo: int, hi: int, inc: Optional[U64] = None) -> None:
        """Add `inc` (or one to each) to the counts of clusters lo..hi-1."""
        if hi <= lo or (inc is None and self._add_one_fast(lo, hi)):
            return
        old = self.fields(lo, hi)
        new = old.astype(np.uint64) + (np.uint64(1) if inc is None else inc)
        hits = np.flatnonzero(new >= np.uint64(self.saturated))
        if self._widened_for(len(hits)):
            self.add_range(lo, hi, inc)
            return
        if len(hits):
            self._count_exactly(hits + lo, old[hits], 1 if inc is None else inc[hits])
        self._store(lo, hi, np.minimum(new, np.uint64(self.saturated)).astype(np.uint8))

    def _add_one_fast(self, lo: int, hi: int) -> bool:
        """One more for each of clusters lo..hi-1 when no field is close to saturation (the
        common case: whole bytes at once); False when the general path must run."""
        if self.bits == 8:
            seg = self.data[lo:hi]
            if bool(np.any(seg >= np.uint8(self.saturated - 1))):
                return False
            seg += np.uint8(1)
            return True
        # One in each field of the range: whole bytes take 0x55, the bytes at either end only
        # the fields inside the range.
        first, last = lo >> 2, (hi - 1) >> 2
        head = 0x55 & (0xFF << 2 * (lo & 3))
        tail = 0x55 & (0xFF >> 2 * (-hi & 3))
        seg = self.data[first:last + 1]
        if first == last:
            head &= tail
        low, high = int(seg[0]), int(seg[-1])
        if low & head << 1 or (first != last and high & tail << 1):
            return False
        if last - first > 1:
            mid = seg[1:-1]
            if bool(np.any(mid & _HIGH_BITS)):
                return False
            mid += _ONE_EACH
        seg[0] = low + head
        if first != last:
            seg[-1] = high + tail
        return True

    def add_at(self, clusters: Positions, inc: npt.NDArray[np.int64]) -> None:
        """Add `inc` to the counts of the listed distinct clusters (sorted)."""
        old = self.fields_at(clusters)
        new = old.astype(np.int64) + inc
        hits = np.flatnonzero(new >= self.saturated)
        if self._widened_for(len(hits)):
            self.add_at(clusters, inc)
            return
        if len(hits):
            self._count_exactly(clusters[hits], old[hits], inc[hits])
        fields = np.minimum(new, self.saturated).astype(np.uint8)
        if self.bits == 8:
            self.data[clusters] = fields
        else:
            # Distinct clusters may share a byte: add each field's growth, which never carries.
            grown = (fields - old) << ((clusters & 3) << 1).astype(np.uint8)
            np.add.at(self.data, clusters >> 2, grown)

    def _count_exactly(self, clusters: Positions, old: Fields,
                       inc: int | U64 | npt.NDArray[np.int64]) -> None:
        """Exact counts of the distinct, ascending `clusters` (their stored fields `old`)
        grown by `inc`: from the exact count where the field was saturated already."""
        base = old.astype(np.int64)
        was = np.flatnonzero(old == self.saturated)
        base[was] = self.big.get(clusters[was])
        self.big.put(clusters, base + np.asarray(inc, dtype=np.int64))

    def _widened_for(self, hits: int) -> bool:
        """Widen the 2-bit fields to bytes when `hits` more exact counts (at most) would
        make the dict large; whether it did (the caller then adds again)."""
        if self.bits == 8 or len(self.big) + hits <= WIDEN_AFTER:
            return False
        wide = np.empty(self.length, dtype=np.uint8)
        chunk = 1 << 20
        for lo in range(0, self.length, chunk):
            hi = min(self.length, lo + chunk)
            wide[lo:hi] = np.minimum(self.values(lo, hi), np.uint64(255))
        self.data, self.bits, self.saturated = wide, 8, 255
        self.big.keep_at_least(255)
        return True


class ExactCounts:
    """Exact counts of some of `length` clusters: sorted cluster numbers and their counts
    while they are few; one count per cluster (-1 where none is kept) once that takes less
    memory, i.e. when more than half of the clusters have one (only a hostile image gets
    there: every data cluster referenced hundreds of times)."""

    def __init__(self, length: int) -> None:
        self.length = length
        self._clusters: Positions = np.empty(0, dtype=np.intp)
        self._counts: npt.NDArray[np.int64] = np.empty(0, dtype=np.int64)
        self._dense: Optional[npt.NDArray[np.int64]] = None
        self._kept = 0

    def __len__(self) -> int:
        return self._kept

    @property
    def clusters(self) -> Positions:
        """The clusters whose count is kept, in order."""
        if self._dense is None:
            return self._clusters
        return np.flatnonzero(self._dense >= 0)

    def get(self, clusters: Positions) -> npt.NDArray[np.int64]:
        """The counts of `clusters`, all of them kept here."""
        if self._dense is not None:
            return self._dense[clusters]
        found: npt.NDArray[np.int64] = self._counts[np.searchsorted(self._clusters, clusters)]
        return found

    def put(self, clusters: Positions, counts: npt.NDArray[np.int64]) -> None:
        """Set the counts of the distinct, ascending `clusters`, adding the new ones."""
        if self._dense is not None:
            self._kept += int(np.count_nonzero(self._dense[clusters] < 0))
            self._dense[clusters] = counts
            return
        at = np.searchsorted(self._clusters, clusters)
        kept = at < len(self._clusters)
        kept[kept] = self._clusters[at[kept]] == clusters[kept]
        self._counts[at[kept]] = counts[kept]
        new = ~kept
        if not bool(new.any()):
            return
        self._kept += int(np.count_nonzero(new))
        if 2 * self._kept > self.length:
            self._dense = np.full(self.length, -1, dtype=np.int64)
            self._dense[self._clusters] = self._counts
            self._dense[clusters] = counts
            self._clusters, self._counts = self._clusters[:0], self._counts[:0]
            return
        self._clusters = np.insert(self._clusters, at[new], clusters[new])
        self._counts = np.insert(self._counts, at[new], counts[new])

    def keep_at_least(self, minimum: int) -> None:
        """Forget the counts below `minimum`."""
        if self._dense is not None:
            self._dense[self._dense < minimum] = -1
            self._kept = int(np.count_nonzero(self._dense >= 0))
        else:
            keep = self._counts >= minimum
            self._clusters, self._counts = self._clusters[keep], self._counts[keep]
            self._kept = len(self._clusters)
