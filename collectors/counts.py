"""Compact per-cluster counters: the storage behind the check's computed refcounts.

Each cluster's count takes 2 bits (four to a byte, the first cluster in the low bits); the
field value 3 means "3 or more" and the exact count is kept in a dict beside the array. Nearly
every cluster is referenced at most twice, so this is a quarter of a byte per cluster of the
file (qemu's own table takes refcount_bits, 2 bytes by default). When many clusters are
shared three times or more (images with several internal snapshots) the dict would outgrow
the array: the fields are then widened to one byte each (255 meaning "255 or more"), which
keeps the dict to the clusters referenced 255 times or more.

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

# Exact counts kept in the dict of the 2-bit fields before they are widened to bytes.
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
        self.big: dict[int, int] = {}  # exact counts of the clusters at `saturated`

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
        if self.big:  # no count reached the saturated value otherwise
            for k in np.flatnonzero(fields == self.saturated).tolist():
                out[k] = self.big[lo + k]
        return out

    def at(self, clusters: Positions) -> npt.NDArray[np.int64]:
        """The exact counts of the listed clusters."""
        fields = self.fields_at(clusters)
        out = fields.astype(np.int64)
        if self.big:
            for k in np.flatnonzero(fields == self.saturated).tolist():
                out[k] = self.big[int(clusters[k])]
        return out

    def one(self, cluster: int) -> int:
        value = int(self.fields_at(np.array([cluster], dtype=np.intp))[0])
        return self.big[cluster] if value == self.saturated else value

    def saturated_clusters(self) -> Positions:
        """The clusters whose exact count is in the dict, in order."""
        return np.array(sorted(self.big), dtype=np.intp)

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
        for k in hits.tolist():
            base = self.big[lo + k] if old[k] == self.saturated else int(old[k])
            self.big[lo + k] = base + (1 if inc is None else int(inc[k]))
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
        for k in hits.tolist():
            c = int(clusters[k])
            self.big[c] = (self.big[c] if old[k] == self.saturated else int(old[k])) + int(inc[k])
        fields = np.minimum(new, self.saturated).astype(np.uint8)
        if self.bits == 8:
            self.data[clusters] = fields
        else:
            # Distinct clusters may share a byte: add each field's growth, which never carries.
            grown = (fields - old) << ((clusters & 3) << 1).astype(np.uint8)
            np.add.at(self.data, clusters >> 2, grown)

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
        self.big = {c: n for c, n in self.big.items() if n >= 255}
        return True
