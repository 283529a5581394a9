"""Byte-patched damaged copies of corpus images, modelled on qemu's iotests.

The readers here are deliberately minimal and independent of the product's parser (collectors/),
so a bug there cannot hide in a test that uses the same code to build its input. They read only
what is needed to find a structure to patch, and trust the (undamaged) source image.

Each recipe of :func:`damaged_variants` copies the source and patches a few bytes; which recipes
apply depends on what the source contains (a snapshot, bitmaps, compressed or extended-L2
entries). Whether qemu still opens a variant, and what its check says, is for the tests to find
out with qemu-img; this module only produces the files, deterministically.

iotests the recipes follow: 060 (overlaps, unaligned offsets, corrupt bit), 080 (header and table
limits), 108 (refcount structure damage), 112 (refcount widths), 138 (compressed ranges),
214/287 (compression type), 220/261 (snapshot table), 271 (extended L2), 036 (feature bits),
169/255-style bitmap damage.
"""

from __future__ import annotations

import os
import struct
from dataclasses import dataclass
from pathlib import Path
from typing import Callable, Iterator, Optional, Union

PathLike = Union[str, "os.PathLike[str]"]

QCOW_MAGIC = 0x514649FB

# Header layout (docs/interop/qcow2.txt). The v2 header is exactly 72 bytes; v3 adds 32.
HEADER_V2 = struct.Struct(">IIQIIQIIQQIIQ")
HEADER_V2_FIELDS = (
    "magic",
    "version",
    "backing_file_offset",
    "backing_file_size",
    "cluster_bits",
    "size",
    "crypt_method",
    "l1_size",
    "l1_table_offset",
    "refcount_table_offset",
    "refcount_table_clusters",
    "nb_snapshots",
    "snapshots_offset",
)
HEADER_V3 = struct.Struct(">QQQII")
HEADER_V3_FIELDS = (
    "incompatible_features",
    "compatible_features",
    "autoclear_features",
    "refcount_order",
    "header_length",
)
assert HEADER_V2.size == 72 and HEADER_V2.size + HEADER_V3.size == 104

# Byte offsets of the header fields patched below.
OFF_MAGIC = 0
OFF_VERSION = 4
OFF_CLUSTER_BITS = 20
OFF_L1_SIZE = 36
OFF_L1_TABLE_OFFSET = 40
OFF_REFCOUNT_TABLE_OFFSET = 48
OFF_REFCOUNT_TABLE_CLUSTERS = 56
OFF_NB_SNAPSHOTS = 60
OFF_SNAPSHOTS_OFFSET = 64
OFF_INCOMPATIBLE = 72
OFF_AUTOCLEAR = 88
OFF_COMPRESSION_TYPE = 104

INCOMPAT_DIRTY = 1 << 0
INCOMPAT_CORRUPT = 1 << 1
INCOMPAT_DATA_FILE = 1 << 2
INCOMPAT_COMPRESSION = 1 << 3
INCOMPAT_EXTL2 = 1 << 4
INCOMPAT_FIRST_UNKNOWN = 1 << 5
AUTOCLEAR_BITMAPS = 1 << 0

EXT_END = 0
EXT_BITMAPS = 0x23852875

OFLAG_COPIED = 1 << 63
OFLAG_COMPRESSED = 1 << 62
OFLAG_ZERO = 1 << 0
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00

# Snapshot table entry: offset of extra_data_size inside an entry.
SNAPSHOT_EXTRA_DATA_SIZE_AT = 36
# Bitmap directory entry: offsets of bitmap_table_offset and granularity_bits.
BITMAP_TABLE_OFFSET_AT = 0
BITMAP_GRANULARITY_BITS_AT = 17


# --------------------------------------------------------------------------------------------
# Copying and patching


def copy_image(src: PathLike, dst: PathLike) -> Path:
    """Copy ``src`` to ``dst`` byte for byte, leaving all-zero blocks as holes.

    The damaged variants are many copies of a few-MiB image; sparse copies keep the disk use
    low. Contents (and file length) are identical to the source.
    """
    block = 64 * 1024
    zero = bytes(block)
    dst_path = Path(dst)
    with open(src, "rb") as fin, open(dst_path, "wb") as fout:
        while True:
            data = fin.read(block)
            if not data:
                break
            if data == zero[: len(data)]:
                fout.seek(len(data), os.SEEK_CUR)
            else:
                fout.write(data)
        fout.truncate(fout.tell())
    return dst_path


def patch_bytes(path: PathLike, offset: int, data: bytes) -> None:
    with open(path, "r+b") as f:
        f.seek(offset)
        f.write(data)


def patch_u64(path: PathLike, offset: int, value: int) -> None:
    patch_bytes(path, offset, struct.pack(">Q", value & 0xFFFFFFFFFFFFFFFF))


def patch_u32(path: PathLike, offset: int, value: int) -> None:
    patch_bytes(path, offset, struct.pack(">I", value & 0xFFFFFFFF))


def patch_u16(path: PathLike, offset: int, value: int) -> None:
    patch_bytes(path, offset, struct.pack(">H", value & 0xFFFF))


def patch_u8(path: PathLike, offset: int, value: int) -> None:
    patch_bytes(path, offset, bytes([value & 0xFF]))


def truncate(path: PathLike, length: int) -> None:
    os.truncate(path, length)


# --------------------------------------------------------------------------------------------
# Minimal readers


def _read(path: PathLike, offset: int, length: int) -> bytes:
    with open(path, "rb") as f:
        f.seek(offset)
        data = f.read(length)
    if len(data) != length:
        raise ValueError(f"{path}: short read of {length} bytes at {offset:#x}")
    return data


def read_u64(path: PathLike, offset: int) -> int:
    return int(struct.unpack(">Q", _read(path, offset, 8))[0])


def read_u32(path: PathLike, offset: int) -> int:
    return int(struct.unpack(">I", _read(path, offset, 4))[0])


def read_header(path: PathLike) -> dict[str, int]:
    """The raw header fields; a v2 header gets the v3 fields' defined v2 values.

    Bytes 72.. of a v2 image belong to the extension area, so they are never read as v3 fields.
    """
    raw = _read(path, 0, HEADER_V2.size)
    header = dict(zip(HEADER_V2_FIELDS, HEADER_V2.unpack(raw)))
    if header["version"] >= 3:
        v3 = _read(path, HEADER_V2.size, HEADER_V3.size)
        header.update(zip(HEADER_V3_FIELDS, HEADER_V3.unpack(v3)))
        header["compression_type"] = (
            _read(path, OFF_COMPRESSION_TYPE, 1)[0] if header["header_length"] > 104 else 0
        )
    else:
        header.update(
            incompatible_features=0,
            compatible_features=0,
            autoclear_features=0,
            refcount_order=4,
            header_length=72,
            compression_type=0,
        )
    return header


def cluster_size(header: dict[str, int]) -> int:
    return 1 << header["cluster_bits"]


def refcount_bits(header: dict[str, int]) -> int:
    return 1 << header["refcount_order"]


def has_extended_l2(header: dict[str, int]) -> bool:
    return bool(header["incompatible_features"] & INCOMPAT_EXTL2)


@dataclass(frozen=True)
class HeaderExtension:
    offset: int  # file offset of the extension's type field
    type: int
    length: int


def header_extensions(path: PathLike) -> list[HeaderExtension]:
    header = read_header(path)
    cs = cluster_size(header)
    end = header["backing_file_offset"] or cs
    offset = header["header_length"]
    found = []
    while offset + 8 <= end:
        ext_type, length = struct.unpack(">II", _read(path, offset, 8))
        if ext_type == EXT_END:
            break
        found.append(HeaderExtension(offset, ext_type, length))
        offset += 8 + (length + 7) // 8 * 8
    return found


def l1_entries(path: PathLike) -> list[int]:
    header = read_header(path)
    raw = _read(path, header["l1_table_offset"], 8 * header["l1_size"])
    return list(struct.unpack(f">{header['l1_size']}Q", raw))


def snapshot_table(path: PathLike) -> list[tuple[str, str, int, int]]:
    """(id, name, l1_table_offset, l1_size) of every snapshot table entry, read as qcow2.txt
    lays it out (40 fixed bytes, extra data, id, name; entries 8-byte aligned)."""
    data = Path(path).read_bytes()
    found = []
    for at in snapshot_entry_offsets(path):
        l1_offset, l1_size, id_size, name_size = struct.unpack_from(">QIHH", data, at)
        names = at + 40 + struct.unpack_from(">I", data, at + 36)[0]
        found.append((data[names:names + id_size].decode(),
                      data[names + id_size:names + id_size + name_size].decode(),
                      l1_offset, l1_size))
    return found


def snapshot_entry_offsets(path: PathLike) -> list[int]:
    """File offset of every snapshot table entry (its l1_table_offset u64, then l1_size u32)."""
    header = read_header(path)
    data = Path(path).read_bytes()
    at = header["snapshots_offset"]
    found = []
    for _ in range(header["nb_snapshots"]):
        found.append(at)
        id_size, name_size = struct.unpack_from(">HH", data, at + 12)
        extra = struct.unpack_from(">I", data, at + 36)[0]
        at = (at + 40 + extra + id_size + name_size + 7) // 8 * 8
    return found


def refcount_table_entries(path: PathLike) -> list[int]:
    header = read_header(path)
    count = header["refcount_table_clusters"] * cluster_size(header) // 8
    raw = _read(path, header["refcount_table_offset"], 8 * count)
    return list(struct.unpack(f">{count}Q", raw))


@dataclass(frozen=True)
class L2Entry:
    file_offset: int  # where the entry's first u64 lives in the image file
    l1_index: int
    l2_index: int
    entry: int
    bitmap: Optional[int]  # extended L2 only: bits 0-31 allocated, 32-63 reads as zero

    @property
    def compressed(self) -> bool:
        return bool(self.entry & OFLAG_COMPRESSED)

    @property
    def host_offset(self) -> int:
        """Host cluster offset of a non-compressed entry (0 when unallocated)."""
        return 0 if self.compressed else self.entry & L2E_OFFSET_MASK

    @property
    def copied(self) -> bool:
        return bool(self.entry & OFLAG_COPIED)


def active_l2_entries(path: PathLike) -> Iterator[L2Entry]:
    """Every L2 entry reachable from the active L1 table, in guest order."""
    header = read_header(path)
    cs = cluster_size(header)
    entry_size = 16 if has_extended_l2(header) else 8
    per_table = cs // entry_size
    for l1_index, l1_entry in enumerate(l1_entries(path)):
        l2_offset = l1_entry & L1E_OFFSET_MASK
        if not l2_offset:
            continue
        raw = _read(path, l2_offset, cs)
        for l2_index in range(per_table):
            at = l2_index * entry_size
            entry = int.from_bytes(raw[at : at + 8], "big")
            bitmap = int.from_bytes(raw[at + 8 : at + 16], "big") if entry_size == 16 else None
            yield L2Entry(l2_offset + at, l1_index, l2_index, entry, bitmap)


def compressed_range(entry: int, cluster_bits: int) -> tuple[int, int]:
    """(host byte offset, byte length) of a compressed L2 entry (qcow2.txt, compressed)."""
    x = 62 - (cluster_bits - 8)
    host = entry & ((1 << x) - 1)
    sectors = ((entry >> x) & ((1 << (62 - x)) - 1)) + 1
    # The length counts from the start of the host offset's sector.
    return host, sectors * 512 - (host & 511)


def _refcount_location(path: PathLike, cluster_index: int) -> tuple[int, int, int]:
    """(refcount block file offset, entry index in it, refcount bits) of a host cluster."""
    header = read_header(path)
    cs = cluster_size(header)
    bits = refcount_bits(header)
    per_block = cs * 8 // bits
    table_index = cluster_index // per_block
    if table_index >= header["refcount_table_clusters"] * cs // 8:
        raise LookupError(f"cluster {cluster_index} is beyond the refcount table")
    block = read_u64(path, header["refcount_table_offset"] + 8 * table_index) & REFT_OFFSET_MASK
    if not block:
        raise LookupError(f"cluster {cluster_index} has no refcount block")
    return block, cluster_index % per_block, bits


def get_refcount(path: PathLike, cluster_index: int) -> int:
    block, index, bits = _refcount_location(path, cluster_index)
    if bits >= 8:
        width = bits // 8
        return int.from_bytes(_read(path, block + index * width, width), "big")
    # Narrow refcounts are packed from the least significant bit of each byte.
    byte = _read(path, block + index * bits // 8, 1)[0]
    return (byte >> (index * bits % 8)) & ((1 << bits) - 1)


def set_refcount(path: PathLike, cluster_index: int, value: int) -> None:
    block, index, bits = _refcount_location(path, cluster_index)
    if bits >= 8:
        width = bits // 8
        patch_bytes(path, block + index * width, value.to_bytes(width, "big"))
        return
    at = block + index * bits // 8
    shift = index * bits % 8
    mask = ((1 << bits) - 1) << shift
    byte = _read(path, at, 1)[0]
    patch_u8(path, at, (byte & ~mask) | ((value << shift) & mask))


@dataclass(frozen=True)
class BitmapsExtension:
    nb_bitmaps: int
    directory_size: int
    directory_offset: int


def bitmaps_extension(path: PathLike) -> Optional[BitmapsExtension]:
    for ext in header_extensions(path):
        if ext.type == EXT_BITMAPS:
            nb, _reserved, size, offset = struct.unpack(">IIQQ", _read(path, ext.offset + 8, 24))
            return BitmapsExtension(nb, size, offset)
    return None


# --------------------------------------------------------------------------------------------
# Damaged variants


@dataclass(frozen=True)
class DamagedImage:
    """A damaged copy. Whether qemu opens it, and what check says, is for the tests to find."""

    name: str
    path: Path
    description: str
    source: Path


@dataclass(frozen=True)
class _Source:
    """What the recipes need to know about the source image, read once."""

    path: Path
    header: dict[str, int]
    file_size: int
    l2: list[L2Entry]

    @property
    def cs(self) -> int:
        return cluster_size(self.header)

    @property
    def v3(self) -> bool:
        return self.header["version"] >= 3

    def normal_entries(self) -> list[L2Entry]:
        """Allocated, non-compressed entries with refcount 1 (COPIED) in a normal L2 table."""
        return [e for e in self.l2 if not e.compressed and e.host_offset and e.copied]

    def compressed_entries(self) -> list[L2Entry]:
        return [e for e in self.l2 if e.compressed]

    def l2_table_offsets(self) -> list[int]:
        return sorted({e.file_offset - e.file_offset % self.cs for e in self.l2})


# A recipe patches the copy at `path`; it returns False if it does not apply to the source.
Recipe = Callable[[_Source, Path], bool]


def _align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def _bad_magic(src: _Source, path: Path) -> bool:
    patch_u32(path, OFF_MAGIC, QCOW_MAGIC ^ 0xFF)
    return True


def _version_4(src: _Source, path: Path) -> bool:
    patch_u32(path, OFF_VERSION, 4)
    return True


def _truncated_header(src: _Source, path: Path) -> bool:
    truncate(path, 48)
    return True


def _cluster_bits_30(src: _Source, path: Path) -> bool:
    patch_u32(path, OFF_CLUSTER_BITS, 30)
    return True


def _l1_size_huge(src: _Source, path: Path) -> bool:
    # 0x10000000 entries = 2 GiB of L1, far over qemu's 32 MiB limit (iotest 080).
    patch_u32(path, OFF_L1_SIZE, 0x10000000)
    return True


def _l1_size_too_small(src: _Source, path: Path) -> bool:
    patch_u32(path, OFF_L1_SIZE, 0)
    return True


def _l1_offset_unaligned(src: _Source, path: Path) -> bool:
    patch_u64(path, OFF_L1_TABLE_OFFSET, src.header["l1_table_offset"] + 512)
    return True


def _refcount_table_past_eof(src: _Source, path: Path) -> bool:
    patch_u64(path, OFF_REFCOUNT_TABLE_OFFSET, _align_up(src.file_size, src.cs) + 64 * src.cs)
    return True


def _refcount_table_clusters_huge(src: _Source, path: Path) -> bool:
    # Over qemu's 8 MiB refcount table limit whatever the cluster size.
    patch_u32(path, OFF_REFCOUNT_TABLE_CLUSTERS, (8 * 1024 * 1024) // src.cs * 16 + 1)
    return True


def _refcount_table_zeroed(src: _Source, path: Path) -> bool:
    size = src.header["refcount_table_clusters"] * src.cs
    patch_bytes(path, src.header["refcount_table_offset"], bytes(size))
    return True


def _refcount_block_unaligned(src: _Source, path: Path) -> bool:
    entry = read_u64(path, src.header["refcount_table_offset"])
    patch_u64(path, src.header["refcount_table_offset"], entry + 512)
    return True


def _patch_first_l1_entry(src: _Source, path: Path, value: Callable[[int], int]) -> bool:
    """Replace the first nonzero active L1 entry by value(entry); False without one."""
    for index, entry in enumerate(l1_entries(path)):
        if entry:
            patch_u64(path, src.header["l1_table_offset"] + 8 * index, value(entry))
            return True
    return False


def _l1_entry_reserved_bits(src: _Source, path: Path) -> bool:
    return _patch_first_l1_entry(src, path, lambda entry: entry | 1)


def _l1_entry_past_eof(src: _Source, path: Path) -> bool:
    beyond = _align_up(src.file_size, src.cs) + 64 * src.cs
    return _patch_first_l1_entry(src, path, lambda _entry: OFLAG_COPIED | beyond)


def _l1_points_at_refcount_table(src: _Source, path: Path) -> bool:
    # An L2 table overlapping the refcount table (iotest 060 "overlap").
    target = OFLAG_COPIED | src.header["refcount_table_offset"]
    return _patch_first_l1_entry(src, path, lambda _entry: target)


def _first_normal(src: _Source) -> Optional[L2Entry]:
    entries = src.normal_entries()
    return entries[0] if entries else None


def _patch_first_normal(src: _Source, path: Path, value: Callable[[L2Entry], int]) -> bool:
    """Replace the first normal (COPIED data) L2 entry by value(entry); False without one."""
    entry = _first_normal(src)
    if entry is None:
        return False
    patch_u64(path, entry.file_offset, value(entry))
    return True


def _l2_entry_unaligned(src: _Source, path: Path) -> bool:
    return _patch_first_normal(src, path, lambda entry: entry.entry + 512)


def _l2_entry_reserved_bits(src: _Source, path: Path) -> bool:
    return _patch_first_normal(src, path, lambda entry: entry.entry | 0x2)


def _l2_points_at_l1(src: _Source, path: Path) -> bool:
    target = OFLAG_COPIED | src.header["l1_table_offset"]
    return _patch_first_normal(src, path, lambda _entry: target)


def _l2_points_at_refcount_block(src: _Source, path: Path) -> bool:
    block = refcount_table_entries(path)[0] & REFT_OFFSET_MASK
    return _patch_first_normal(src, path, lambda _entry: OFLAG_COPIED | block)


def _l2_duplicate_reference(src: _Source, path: Path) -> bool:
    # Two guest clusters mapped to one host cluster that has refcount 1.
    entries = src.normal_entries()
    if len(entries) < 2:
        return False
    first, second = entries[0], entries[1]
    patch_u64(path, second.file_offset, (second.entry & ~L2E_OFFSET_MASK) | first.host_offset)
    return True


def _refcount_zero_data(src: _Source, path: Path) -> bool:
    entry = _first_normal(src)
    if entry is None:
        return False
    set_refcount(path, entry.host_offset // src.cs, 0)
    return True


def _refcount_two_data(src: _Source, path: Path) -> bool:
    # Refcount 2 on a COPIED cluster: a leak, and also an OFLAG_COPIED mismatch for qemu.
    # With 1-bit refcounts 2 cannot be stored, so the recipe does not apply.
    entry = _first_normal(src)
    if entry is None or refcount_bits(src.header) < 2:
        return False
    set_refcount(path, entry.host_offset // src.cs, 2)
    return True


def _leaked_cluster_appended(src: _Source, path: Path) -> bool:
    """One more cluster at the end, referenced by nothing, with refcount 1: a pure leak."""
    index = _align_up(src.file_size, src.cs) // src.cs
    try:
        _refcount_location(path, index)
    except LookupError:
        return False
    with open(path, "r+b") as f:
        f.truncate(index * src.cs)
        f.seek(index * src.cs)
        f.write(b"\xa5" * src.cs)
    set_refcount(path, index, 1)
    return True


def _incompatible_bit(bit: int) -> Recipe:
    """A recipe setting one incompatible feature bit of a v3 header (a v2 header has none)."""
    def recipe(src: _Source, path: Path) -> bool:
        if not src.v3:
            return False
        patch_u64(path, OFF_INCOMPATIBLE, src.header["incompatible_features"] | bit)
        return True
    return recipe


def _compression_type_bad(src: _Source, path: Path) -> bool:
    if src.header["header_length"] <= 104:
        return False
    patch_u8(path, OFF_COMPRESSION_TYPE, 7)
    patch_u64(path, OFF_INCOMPATIBLE, src.header["incompatible_features"] | INCOMPAT_COMPRESSION)
    return True


def _header_extension_too_long(src: _Source, path: Path) -> bool:
    extensions = header_extensions(path)
    if not extensions:
        return False
    patch_u32(path, extensions[0].offset + 4, src.cs)
    return True


def _snapshot_count_huge(src: _Source, path: Path) -> bool:
    patch_u32(path, OFF_NB_SNAPSHOTS, 65537)
    return True


def _snapshot_offset_unaligned(src: _Source, path: Path) -> bool:
    if not src.header["nb_snapshots"]:
        return False
    patch_u64(path, OFF_SNAPSHOTS_OFFSET, src.header["snapshots_offset"] + 512)
    return True


def _snapshot_extra_data_too_big(src: _Source, path: Path) -> bool:
    if not src.header["nb_snapshots"]:
        return False
    patch_u32(path, src.header["snapshots_offset"] + SNAPSHOT_EXTRA_DATA_SIZE_AT, 1025)
    return True


def _bitmap_entry_offset(path: Path) -> Optional[int]:
    ext = bitmaps_extension(path)
    if ext is None or not ext.nb_bitmaps:
        return None
    return ext.directory_offset


def _bitmap_granularity_bad(src: _Source, path: Path) -> bool:
    entry = _bitmap_entry_offset(path)
    if entry is None:
        return False
    patch_u8(path, entry + BITMAP_GRANULARITY_BITS_AT, 63)
    return True


def _bitmap_table_unaligned(src: _Source, path: Path) -> bool:
    entry = _bitmap_entry_offset(path)
    if entry is None:
        return False
    table = read_u64(path, entry + BITMAP_TABLE_OFFSET_AT)
    patch_u64(path, entry + BITMAP_TABLE_OFFSET_AT, table + 512)
    return True


def _bitmap_directory_past_eof(src: _Source, path: Path) -> bool:
    for ext in header_extensions(path):
        if ext.type == EXT_BITMAPS:
            # Directory offset is the last u64 of the 24-byte extension data.
            beyond = _align_up(src.file_size, src.cs) + 64 * src.cs
            patch_u64(path, ext.offset + 8 + 16, beyond)
            return True
    return False


def _bitmaps_autoclear_cleared(src: _Source, path: Path) -> bool:
    # What an old qemu does on write: the bitmaps extension becomes invalid, so its clusters
    # are referenced by nothing qemu believes (leaks).
    if bitmaps_extension(path) is None:
        return False
    patch_u64(path, OFF_AUTOCLEAR, src.header["autoclear_features"] & ~AUTOCLEAR_BITMAPS)
    return True


def _compressed_bad_sectors(src: _Source, path: Path) -> bool:
    entries = src.compressed_entries()
    if not entries:
        return False
    x = 62 - (src.header["cluster_bits"] - 8)
    all_sectors = ((1 << (62 - x)) - 1) << x
    patch_u64(path, entries[0].file_offset, entries[0].entry | all_sectors)
    return True


def _compressed_copied(src: _Source, path: Path) -> bool:
    entries = src.compressed_entries()
    if not entries:
        return False
    patch_u64(path, entries[0].file_offset, entries[0].entry | OFLAG_COPIED)
    return True


def _ext_l2_alloc_and_zero(src: _Source, path: Path) -> bool:
    for entry in src.l2:
        if entry.bitmap is not None and entry.host_offset and entry.bitmap & 0xFFFFFFFF:
            alloc = entry.bitmap & 0xFFFFFFFF
            patch_u64(path, entry.file_offset + 8, entry.bitmap | (alloc << 32))
            return True
    return False


def _ext_l2_unallocated_alloc_bits(src: _Source, path: Path) -> bool:
    for entry in src.l2:
        if entry.bitmap is not None and not entry.entry and not entry.bitmap:
            patch_u64(path, entry.file_offset + 8, 1)
            return True
    return False


def _truncated_in_l2(src: _Source, path: Path) -> bool:
    tables = src.l2_table_offsets()
    if not tables:
        return False
    truncate(path, tables[-1] + src.cs // 2)
    return True


def _truncated_in_data(src: _Source, path: Path) -> bool:
    offsets = [e.host_offset for e in src.l2 if e.host_offset]
    if not offsets:
        return False
    truncate(path, max(offsets) + src.cs // 2)
    return True


def _truncated_half(src: _Source, path: Path) -> bool:
    # Not cluster aligned, so the new last cluster is partial as well as everything after it
    # being gone.
    truncate(path, src.file_size // 2 // 512 * 512 + 512)
    return True


RECIPES: tuple[tuple[str, str, Recipe], ...] = (
    ("bad-magic", "magic is not QFI\\xfb", _bad_magic),
    ("version-4", "header version 4", _version_4),
    ("truncated-header", "file cut to 48 bytes, inside the header", _truncated_header),
    ("cluster-bits-30", "cluster_bits 30 (qemu allows 9..21)", _cluster_bits_30),
    ("l1-size-huge", "l1_size 0x10000000 (2 GiB of L1, limit 32 MiB)", _l1_size_huge),
    ("l1-size-too-small", "l1_size 0 for a nonzero virtual size", _l1_size_too_small),
    ("l1-offset-unaligned", "l1_table_offset + 512", _l1_offset_unaligned),
    (
        "refcount-table-past-eof",
        "refcount_table_offset 64 clusters past EOF",
        _refcount_table_past_eof,
    ),
    ("refcount-table-clusters-huge", "refcount table over 8 MiB", _refcount_table_clusters_huge),
    ("refcount-table-zeroed", "every refcount table entry zero", _refcount_table_zeroed),
    ("refcount-block-unaligned", "refcount table entry 0 + 512", _refcount_block_unaligned),
    (
        "l1-entry-reserved-bits",
        "first nonzero L1 entry with reserved bit 0 set",
        _l1_entry_reserved_bits,
    ),
    ("l1-entry-past-eof", "first nonzero L1 entry points 64 clusters past EOF", _l1_entry_past_eof),
    (
        "l1-points-at-refcount-table",
        "an L2 table overlapping the refcount table",
        _l1_points_at_refcount_table,
    ),
    ("l2-entry-unaligned", "first COPIED data entry offset + 512", _l2_entry_unaligned),
    (
        "l2-entry-reserved-bits",
        "first COPIED data entry with reserved bit 1 set",
        _l2_entry_reserved_bits,
    ),
    ("l2-points-at-l1", "a data cluster overlapping the active L1 table", _l2_points_at_l1),
    (
        "l2-points-at-refcount-block",
        "a data cluster overlapping refcount block 0",
        _l2_points_at_refcount_block,
    ),
    (
        "l2-duplicate-reference",
        "two guest clusters mapped to one refcount-1 host cluster",
        _l2_duplicate_reference,
    ),
    ("refcount-zero-data", "refcount of a referenced data cluster set to 0", _refcount_zero_data),
    (
        "refcount-two-data",
        "refcount of a COPIED data cluster set to 2 (leak + COPIED)",
        _refcount_two_data,
    ),
    (
        "leaked-cluster-appended",
        "an unreferenced cluster with refcount 1 appended",
        _leaked_cluster_appended,
    ),
    ("unknown-incompat-bit", "incompatible feature bit 5 set",
     _incompatible_bit(INCOMPAT_FIRST_UNKNOWN)),
    ("corrupt-bit", "incompatible bit 1 (corrupt) set", _incompatible_bit(INCOMPAT_CORRUPT)),
    # The dirty bit without lazy refcounts: metadata is in fact consistent.
    ("dirty-bit", "incompatible bit 0 (dirty) set without lazy refcounts",
     _incompatible_bit(INCOMPAT_DIRTY)),
    (
        "compression-type-bad",
        "compression_type 7 (and its incompatible bit)",
        _compression_type_bad,
    ),
    (
        "header-extension-too-long",
        "first header extension length = cluster size",
        _header_extension_too_long,
    ),
    ("snapshot-count-huge", "nb_snapshots 65537 (limit 65536)", _snapshot_count_huge),
    ("snapshot-offset-unaligned", "snapshots_offset + 512", _snapshot_offset_unaligned),
    (
        "snapshot-extra-data-too-big",
        "first snapshot extra_data_size 1025",
        _snapshot_extra_data_too_big,
    ),
    ("bitmap-granularity-bad", "first bitmap granularity_bits 63", _bitmap_granularity_bad),
    ("bitmap-table-unaligned", "first bitmap table offset + 512", _bitmap_table_unaligned),
    (
        "bitmap-directory-past-eof",
        "bitmap directory 64 clusters past EOF",
        _bitmap_directory_past_eof,
    ),
    (
        "bitmaps-autoclear-cleared",
        "autoclear bit 0 cleared: bitmaps extension invalid",
        _bitmaps_autoclear_cleared,
    ),
    (
        "compressed-bad-sectors",
        "first compressed entry with every sector-count bit set",
        _compressed_bad_sectors,
    ),
    ("compressed-copied", "first compressed entry with COPIED set", _compressed_copied),
    (
        "ext-l2-alloc-and-zero",
        "extended L2: subclusters both allocated and zero",
        _ext_l2_alloc_and_zero,
    ),
    (
        "ext-l2-unallocated-alloc-bits",
        "extended L2: unallocated entry with an allocation bit",
        _ext_l2_unallocated_alloc_bits,
    ),
    # qemu tolerates a partial last cluster: a reference ending less than one cluster past EOF
    # is not an error, and cut-off L2 entries read as zero (unallocated).
    ("truncated-in-l2", "file cut in the middle of the last L2 table", _truncated_in_l2),
    ("truncated-in-data", "file cut in the middle of the highest data cluster", _truncated_in_data),
    ("truncated-half", "file cut to half its length (512-aligned)", _truncated_half),
)


def _read_source(src: Path) -> _Source:
    header = read_header(src)
    assert header["magic"] == QCOW_MAGIC, f"{src} is not a qcow2 image"
    assert not header["incompatible_features"] & INCOMPAT_DATA_FILE, (
        f"{src}: damaged copies of an image with an external data file would need the data file"
    )
    return _Source(src, header, src.stat().st_size, list(active_l2_entries(src)))


def damaged_variants(src_image: PathLike, workdir: PathLike) -> list[DamagedImage]:
    """Make every applicable damaged copy of ``src_image`` in ``workdir``.

    Names are ``<source stem>--<recipe>``; a recipe that needs a structure the source lacks
    (snapshots, bitmaps, compressed or extended-L2 entries) is skipped, so the list differs by
    source. Files are byte-identical between runs for the same source.
    """
    src_path = Path(getattr(src_image, "path", src_image))
    out = Path(workdir)
    out.mkdir(parents=True, exist_ok=True)
    source = _read_source(src_path)
    made = []
    for recipe_name, description, recipe in RECIPES:
        name = f"{src_path.stem}--{recipe_name}"
        path = out / f"{name}.qcow2"
        copy_image(src_path, path)
        if recipe(source, path):
            made.append(DamagedImage(name, path, description, src_path))
        else:
            path.unlink()
    return made
