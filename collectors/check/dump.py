"""Bounded dumps of the on-disk tables: L1, L2, refcounts, snapshots, bitmaps.

Each dump is JSON-able data (dicts, lists, ints, strings); the front end renders it.
Every list is bounded by `limit` entries, and says how many there were in total, so a dump of
a 64 TiB image stays small. Entry types follow qemu's qcow2_get_cluster_type().
"""

from __future__ import annotations

from typing import Any

import numpy as np

from ..qcow2 import layout as L
from ..qcow2.image import Qcow2Image
from ..qcow2.refcount import nb_clusters
from .l2 import cluster_types, split_entries
from .refblocks import OnDiskRefcounts

WHAT = ("l1", "l2", "refcount", "snapshots", "bitmaps")
DEFAULT_LIMIT = 1000

Data = dict[str, Any]


def _table(image: Qcow2Image, offset: int, entries: int, structure: str) -> np.ndarray:
    raw = image.file.read_zero_padded(offset, entries * 8, structure)
    return np.frombuffer(raw, dtype=">u8").astype(np.uint64)


def dump_l1(image: Qcow2Image, limit: int = DEFAULT_LIMIT) -> Data:
    h = image.header
    l1 = _table(image, h.l1_table_offset, h.l1_size, "active L1 table")
    used = np.flatnonzero(l1)
    entries = []
    for i in used[:limit].tolist():
        raw = int(l1[i])
        entries.append({
            "index": i,
            "raw": f"0x{raw:016x}",
            "l2_offset": raw & L.L1E_OFFSET_MASK,
            "copied": bool(raw & L.QCOW_OFLAG_COPIED),
            "reserved_bits": raw & L.L1E_RESERVED_MASK,
        })
    return {"what": "l1", "l1_table_offset": h.l1_table_offset, "l1_size": h.l1_size,
            "nonzero_entries": len(used), "entries": entries, "truncated": len(used) > limit}


def dump_l2(image: Qcow2Image, limit: int = DEFAULT_LIMIT) -> Data:
    """The non-empty entries of the active L2 tables (at most `limit` tables and `limit`
    entries listed), with complete counts. Each distinct table in the file is read once
    however many L1 entries name it, and tables at or past EOF (zeros, as qemu reads them)
    are only counted: the time follows the file, not the L1 size the header claims."""
    h = image.header
    l1 = _table(image, h.l1_table_offset, h.l1_size, "active L1 table")
    l1_indices = np.flatnonzero(l1)
    offsets = l1[l1_indices] & np.uint64(L.L1E_OFFSET_MASK)
    named = offsets != 0
    in_file = named & (offsets < np.uint64(image.file.length))
    unique, inverse = np.unique(offsets[in_file], return_inverse=True)
    nonempty_of = np.array([len(_l2_table(image, off)[2]) for off in unique.tolist()],
                           dtype=np.int64)
    total = int(nonempty_of[inverse].sum()) if len(unique) else 0
    tables = []
    shown = 0
    for i, l2_offset in zip(l1_indices[in_file][:limit].tolist(),
                            offsets[in_file][:limit].tolist()):
        e, bitmaps, nonempty, types = _l2_table(image, l2_offset)
        entries = [_l2_item(h, i * h.l2_entries + j, j, int(e[j]), int(bitmaps[j]),
                            L.ClusterType(int(types[j])))
                   for j in nonempty[: max(0, limit - shown)].tolist()]
        shown += len(entries)
        tables.append({"l1_index": i, "l2_offset": l2_offset, "nonempty_entries": len(nonempty),
                       "entries": entries})
    return {"what": "l2", "cluster_size": h.cluster_size, "extended_l2": h.extended_l2,
            "nonempty_entries": total, "tables_named": int(np.count_nonzero(named)),
            "tables_past_end_of_file": int(np.count_nonzero(named & ~in_file)),
            "tables": tables,
            "truncated": total > shown or int(np.count_nonzero(in_file)) > len(tables)}


def _l2_table(image: Qcow2Image, l2_offset: int) -> tuple[np.ndarray, np.ndarray, np.ndarray,
                                                          np.ndarray]:
    """(entries, subcluster bitmaps, indices of the non-empty entries, cluster types)."""
    h = image.header
    e, bitmap = split_entries(_table(image, l2_offset, h.cluster_size // 8, "L2 table"),
                              h.extended_l2)
    bitmaps = np.zeros(len(e), dtype=np.uint64) if bitmap is None else bitmap
    nonempty = np.flatnonzero((e != 0) | (bitmaps != 0))
    return e, bitmaps, nonempty, cluster_types(e, extended=h.extended_l2,
                                               data_file=h.has_data_file)


def _l2_item(h: L.Header, guest_cluster: int, j: int, raw: int, bm: int,
             kind: L.ClusterType) -> Data:
    cb = h.cluster_bits
    csize_shift = 62 - (cb - 8)
    item: dict[str, Any] = {
        "index": j,
        "guest_offset": guest_cluster * h.cluster_size,
        "raw": f"0x{raw:016x}",
        "type": kind.label,
        "copied": bool(raw & L.QCOW_OFLAG_COPIED),
    }
    if kind == L.ClusterType.QCOW2_CLUSTER_COMPRESSED:
        item["host_offset"] = raw & ((1 << csize_shift) - 1)
        item["compressed_sectors"] = ((raw >> csize_shift) & ((1 << (cb - 8)) - 1)) + 1
    else:
        item["host_offset"] = raw & L.L2E_OFFSET_MASK
        item["reserved_bits"] = raw & L.L2E_STD_RESERVED_MASK
    if h.extended_l2:
        item["subcluster_alloc"] = f"0x{bm & 0xFFFFFFFF:08x}"
        item["subcluster_zero"] = f"0x{bm >> 32:08x}"
    return item


def dump_refcount(image: Qcow2Image, limit: int = DEFAULT_LIMIT) -> Data:
    """Refcount table entries and the nonzero refcounts as ranges of equal values."""
    h = image.header
    ondisk = OnDiskRefcounts(image)
    table = ondisk.table
    used = np.flatnonzero(table)
    entries = [{"index": i, "raw": f"0x{int(table[i]):016x}",
                "block_offset": int(table[i]) & L.REFT_OFFSET_MASK,
                "covers_clusters": [i * ondisk.per_block, (i + 1) * ondisk.per_block - 1]}
               for i in used[:limit].tolist()]
    ranges: list[dict[str, Any]] = []
    nranges = 0
    unreadable: list[int] = []
    nunreadable = 0
    # Only entries that cover clusters of the file are decoded (qemu ignores refcounts past
    # EOF too): the work follows the file's length, not the table size the header claims.
    covering = -(-nb_clusters(image) // ondisk.per_block)
    in_file = used[used < covering]
    for t in in_file.tolist():
        block = ondisk.block(t)
        if block is None:
            nunreadable += 1
            if len(unreadable) < limit:
                unreadable.append(t)
            continue
        if not block.any():
            continue
        change = np.flatnonzero(np.diff(block)) + 1
        starts = np.concatenate(([0], change))
        ends = np.concatenate((change, [len(block)]))
        for a, b in zip(starts.tolist(), ends.tolist()):
            value = int(block[a])
            if not value:
                continue
            base = t * ondisk.per_block
            if (ranges and nranges <= limit and ranges[-1]["refcount"] == value
                    and ranges[-1]["last_cluster"] == base + a - 1):
                ranges[-1]["last_cluster"] = base + b - 1
                continue
            nranges += 1
            if len(ranges) < limit:
                ranges.append({"first_cluster": base + a, "last_cluster": base + b - 1,
                               "refcount": value})
    return {"what": "refcount", "refcount_table_offset": h.refcount_table_offset,
            "refcount_table_clusters": h.refcount_table_clusters,
            "refcount_bits": h.refcount_bits, "cluster_size": h.cluster_size,
            "nonzero_table_entries": len(used), "table": entries,
            "entries_past_end_of_file": len(used) - len(in_file),
            "unreadable_blocks": unreadable, "unreadable_count": nunreadable,
            "ranges": ranges, "range_count": nranges,
            "truncated": len(used) > limit or nranges > limit or nunreadable > limit}


def dump_snapshots(image: Qcow2Image, limit: int = DEFAULT_LIMIT) -> Data:
    h = image.header
    entries = image.snapshots()
    items = []
    for sn in entries[:limit]:
        extra = sn.extra_data
        item: dict[str, Any] = {
            "index": sn.table_index, "entry_offset": sn.offset, "id": sn.id_str, "name": sn.name,
            "l1_table_offset": sn.l1_table_offset, "l1_size": sn.l1_size,
            "date_sec": sn.date_sec, "date_nsec": sn.date_nsec,
            "vm_clock_nsec": sn.vm_clock_nsec, "vm_state_size": sn.vm_state_size32,
            "extra_data_size": sn.extra_data_size, "extra_data": extra.hex(),
        }
        if len(extra) >= L.SNAPSHOT_EXTRA_VM_STATE_SIZE_LARGE_END:
            item["vm_state_size_large"] = sn.vm_state_size
        if sn.disk_size is not None:
            item["disk_size"] = sn.disk_size
        if len(extra) >= L.SNAPSHOT_EXTRA_ICOUNT_END:
            item["icount"] = int.from_bytes(extra[16:24], "big", signed=True)
        items.append(item)
    return {"what": "snapshots", "snapshots_offset": h.snapshots_offset,
            "nb_snapshots": h.nb_snapshots, "table_size": image.snapshots_size,
            "snapshots": items, "truncated": len(entries) > limit}


def dump_bitmaps(image: Qcow2Image, limit: int = DEFAULT_LIMIT) -> Data:
    ext = image.bitmaps_extension
    raw_ext = image.bitmaps_extension_raw
    result: Data = {"what": "bitmaps", "extension_present": raw_ext is not None,
                    "autoclear_valid": image.header.bitmaps_autoclear, "bitmaps": []}
    if ext is None:
        return result
    result.update({"nb_bitmaps": ext.nb_bitmaps,
                   "bitmap_directory_offset": ext.bitmap_directory_offset,
                   "bitmap_directory_size": ext.bitmap_directory_size})
    shown = 0
    bitmaps = image.bitmaps()
    result["truncated"] = len(bitmaps) > limit  # a directory can hold 65535
    for bm in bitmaps[:limit]:
        table = _table(image, bm.bitmap_table_offset, bm.bitmap_table_size,
                       f"bitmap '{bm.name}' table")
        entries = []
        for i in np.flatnonzero(table)[: max(0, limit - shown)].tolist():
            raw = int(table[i])
            entries.append({"index": i, "raw": f"0x{raw:016x}",
                            "data_offset": raw & L.BME_TABLE_ENTRY_OFFSET_MASK,
                            "all_ones": bool(raw & L.BME_TABLE_ENTRY_FLAG_ALL_ONES)})
        shown += len(entries)
        result["bitmaps"].append({
            "name": bm.name, "entry_offset": bm.offset,
            "bitmap_table_offset": bm.bitmap_table_offset,
            "bitmap_table_size": bm.bitmap_table_size, "flags": bm.flag_names,
            "flags_raw": bm.flags, "type": bm.type, "granularity_bits": bm.granularity_bits,
            "granularity": bm.granularity, "extra_data_size": bm.extra_data_size,
            "nonzero_table_entries": int(np.count_nonzero(table)), "table": entries,
        })
    return result


def dump(image: Qcow2Image, what: str, *, limit: int = DEFAULT_LIMIT) -> Data:
    """One of WHAT as JSON-able data, lists bounded by `limit`."""
    handlers = {"l1": dump_l1, "l2": dump_l2, "refcount": dump_refcount,
                "snapshots": dump_snapshots, "bitmaps": dump_bitmaps}
    if what not in handlers:
        raise ValueError(f"unknown dump {what!r} (one of {', '.join(WHAT)})")
    data = handlers[what](image, limit)
    data["filename"] = image.filename
    return data
