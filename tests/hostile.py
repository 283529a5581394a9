"""Hostile images the fuzzer found, rebuilt by byte patches on images qemu-img and qemu-io
make: tests/test_fuzz.py checks each against qemu and bounds its work; bench/bench_hostile.py
times every command on them."""

from __future__ import annotations

import struct
from pathlib import Path

import numpy as np

from qcow2_monitor.collectors.qcow2 import layout as L
from qcow2_monitor.collectors.qcow2.image import Qcow2Image

from corpus import QEMU_IMG, QEMU_IO, run
from damage import patch_u32, patch_u64, read_header


def repoint_l1(path: Path, entries: int, snapshot_too: bool = False) -> None:
    """Append a new L1 table of `entries` copies of L1[0] and point the header (and the first
    snapshot) at it: one L2 table named `entries` times."""
    repeat_l1(path, [entries], snapshot_too)


def repeat_l1(path: Path, times: list[int], snapshot_too: bool = False) -> None:
    """Append a new L1 table holding times[i] copies of L1[i], in order, and point the header
    (and the first snapshot) at it: L2 table i named times[i] times."""
    header = read_header(path)
    data = bytearray(path.read_bytes())
    old = header["l1_table_offset"]
    cs = 1 << header["cluster_bits"]
    table = -(-len(data) // cs) * cs
    body = b"".join(bytes(data[old + 8 * i:old + 8 * i + 8]) * k for i, k in enumerate(times))
    entries = sum(times)
    data += bytes(table - len(data)) + body + bytes(-len(body) % cs)
    struct.pack_into(">IQ", data, 36, entries, table)
    if snapshot_too:
        struct.pack_into(">QI", data, header["snapshots_offset"], table, entries)
    path.write_bytes(data)


def snapshotted(path: Path) -> None:
    """A 1 MiB image with 4 KiB clusters, data, one snapshot, then data written after it."""
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(path), "1M"])
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 5 0 300k", str(path)])
    run([QEMU_IMG, "snapshot", "-c", "s1", str(path)])
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 6 0 8k", str(path)])


def many_snapshots_image(path: Path, copies: int, l1_entries: int = 8) -> Path:
    """A 1 MiB image of 4 KiB clusters with 64 KiB written and `copies` snapshots, each with an
    L1 table of its own (snapshots_with_own_l1_tables)."""
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(path), "1M"])
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 5 0 64k", str(path)])
    run([QEMU_IMG, "snapshot", "-c", "s", str(path)])
    snapshots_with_own_l1_tables(path, copies, l1_entries)
    return path


def snapshots_with_own_l1_tables(path: Path, copies: int, l1_entries: int) -> None:
    """`copies` snapshots, each with an L1 table of its own (all alike: the active L1's
    entries repeated to `l1_entries`), so every snapshot names the same L2 tables."""
    header = read_header(path)
    data = bytearray(path.read_bytes())
    cs = 1 << header["cluster_bits"]
    active = header["l1_table_offset"]
    used = [bytes(data[active + 8 * i:active + 8 * i + 8]) for i in range(header["l1_size"])]
    used = [e for e in used if any(e)]
    l1 = b"".join(used[i % len(used)] for i in range(l1_entries))
    at = header["snapshots_offset"]
    extra, id_size, name_size = (struct.unpack_from(">I", data, at + 36)[0],
                                 *struct.unpack_from(">HH", data, at + 12))
    size = -(-(40 + extra + id_size + name_size) // 8) * 8
    entry = bytearray(data[at:at + size])
    entry += bytes(size - len(entry))  # the last entry of a table at EOF may be unpadded
    entries = b""
    for _ in range(copies):
        table = -(-len(data) // cs) * cs
        data += bytes(table - len(data)) + l1
        struct.pack_into(">QI", entry, 0, table, l1_entries)
        entries += entry
    table = -(-len(data) // cs) * cs
    data += bytes(table - len(data)) + entries + bytes(-len(entries) % cs)
    struct.pack_into(">IQ", data, 60, copies, table)
    path.write_bytes(data)


def bitmaps_sharing_one_table(path: Path, count: int) -> None:
    """An image whose one persistent bitmap's directory entry is repeated `count` times
    (names 00000, 00001, ...): every bitmap names the same bitmap table."""
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(path), "1M"])
    run([QEMU_IMG, "bitmap", "--add", str(path), "b0"])
    with Qcow2Image.open(str(path)) as image:
        ext = next(e for e in image.extensions if e.type == L.QCOW2_EXT_MAGIC_BITMAPS)
    data = bytearray(path.read_bytes())
    directory = struct.unpack_from(">Q", data, ext.offset + 16)[0]
    fixed = bytes(data[directory:directory + 24])
    entries = b""
    for i in range(count):
        name = f"{i:05d}".encode()
        entry = fixed[:18] + struct.pack(">H", len(name)) + fixed[20:] + name
        entries += entry + bytes(-len(entry) % 8)
    at = -(-len(data) // 4096) * 4096
    data += bytes(at - len(data)) + entries + bytes(-len(entries) % 4096)
    struct.pack_into(">IIQQ", data, ext.offset, count, 0, len(entries), at)
    path.write_bytes(data)


def one_table_named(path: Path, entries: int, size: str) -> None:
    """An image of virtual `size` (4 KiB clusters, a little data) whose L1 names its first L2
    table `entries` times."""
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(path), size])
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 5 0 300k", "-c", "write -P 6 1M 8k",
         str(path)])
    repoint_l1(path, entries)


def l2_tables_image(path: Path, kind: str) -> None:
    """An image under 100 MB that is nearly all L2 tables (23,296 of 4 KiB): "random" entries,
    or ("allocated") every entry a normal cluster at a random offset inside the file."""
    cs, size, start = 4096, 92 << 20, 1 << 20
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", f"cluster_size={cs}", str(path), "64G"])
    header = read_header(path)
    tables = (size - start) // cs
    rng = np.random.default_rng(4)
    if kind == "random":
        body = rng.integers(0, 2**64, size=(size - start) // 8, dtype=np.uint64)
    else:
        body = rng.integers(0, size // cs, size=(size - start) // 8, dtype=np.uint64) * \
            np.uint64(cs) | np.uint64(1 << 63)
    l1 = (np.arange(tables, dtype=np.uint64) * np.uint64(cs) + np.uint64(start)) | \
        np.uint64(1 << 63)
    with open(path, "r+b") as f:
        f.seek(header["l1_table_offset"])
        f.write(l1.astype(">u8").tobytes())
        f.seek(start)
        f.write(body.astype(">u8").tobytes())


def refcount_table_over_data(path: Path) -> None:
    """refcount_table_offset and refcount_table_clusters pointing the largest table qemu
    accepts at 8 MiB of guest data: a million nonzero "entries"."""
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(path), "64M"])
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0x71 0 8M", "-c", "write -P 0x72 32M 2M",
         str(path)])
    # The largest table qemu accepts (8 MiB = 2048 clusters of 4 KiB) over the data: offset
    # one cluster past the L1 table, so it covers the L2 tables and the data after them.
    header = read_header(path)
    table_offset = header["l1_table_offset"] + 4096
    patch_u64(path, 48, table_offset)
    patch_u32(path, 56, 2048)
