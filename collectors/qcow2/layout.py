"""Every qcow2 on-disk structure, declared once with the specification's names.

Source: qemu docs/interop/qcow2.txt and block/qcow2.h; the project's own format notes are
docs/qcow2-format.md (§1-§6 for these layouts).
Each structure is a ``struct.Struct`` beside a frozen record (common/record.py) with a
``from_bytes`` (a named tuple for the entries a table holds by the ten thousand: snapshots,
bitmaps); the callers bound every count before reading (see :mod:`collectors.qcow2.image`).
All integers big-endian.
"""

from __future__ import annotations

import struct

from ..common.enums import IntEnum
from ..common.record import NamedTuple, frozen_record
from .names import c_string_text

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar

QCOW_MAGIC = b"QFI\xfb"

# qemu limits (block/qcow2.h), used before anything is allocated from a header value.
MIN_CLUSTER_BITS = 9
MAX_CLUSTER_BITS = 21
QCOW_MAX_REFTABLE_SIZE = 8 * 1024 * 1024
QCOW_MAX_L1_SIZE = 32 * 1024 * 1024
QCOW_MAX_SNAPSHOTS = 65536
QCOW_MAX_SNAPSHOT_EXTRA_DATA = 1024
QCOW_MAX_SNAPSHOTS_SIZE = 64 * 1024 * 1024
QCOW2_MAX_BITMAPS = 65535
QCOW2_MAX_BITMAP_DIRECTORY_SIZE = 1024 * QCOW2_MAX_BITMAPS
BME_MAX_TABLE_SIZE = 0x8000000
BME_MAX_PHYS_SIZE = 0x20000000
BME_MIN_GRANULARITY_BITS = 9
BME_MAX_GRANULARITY_BITS = 31
BME_MAX_NAME_SIZE = 1023
BT_DIRTY_TRACKING_BITMAP = 1
MAX_BACKING_FILE_NAME = 1023

# Incompatible feature bits (qcow2.txt "incompatible_features").
QCOW2_INCOMPAT_DIRTY = 1 << 0
QCOW2_INCOMPAT_CORRUPT = 1 << 1
QCOW2_INCOMPAT_DATA_FILE = 1 << 2
QCOW2_INCOMPAT_COMPRESSION = 1 << 3
QCOW2_INCOMPAT_EXTL2 = 1 << 4
QCOW2_INCOMPAT_MASK = 0x1F
# Compatible and autoclear bits.
QCOW2_COMPAT_LAZY_REFCOUNTS = 1 << 0
QCOW2_AUTOCLEAR_BITMAPS = 1 << 0
QCOW2_AUTOCLEAR_DATA_FILE_RAW = 1 << 1

# Names qemu gives the feature bits (its own feature name table), by (type, bit).
FEATURE_TYPE_INCOMPATIBLE = 0
FEATURE_TYPE_COMPATIBLE = 1
FEATURE_TYPE_AUTOCLEAR = 2
FEATURE_TYPE_NAMES = {0: "incompatible", 1: "compatible", 2: "autoclear"}
DEFAULT_FEATURE_NAMES: dict[tuple[int, int], str] = {
    (FEATURE_TYPE_INCOMPATIBLE, 0): "dirty bit",
    (FEATURE_TYPE_INCOMPATIBLE, 1): "corrupt bit",
    (FEATURE_TYPE_INCOMPATIBLE, 2): "external data file",
    (FEATURE_TYPE_INCOMPATIBLE, 3): "compression type",
    (FEATURE_TYPE_INCOMPATIBLE, 4): "extended L2 entries",
    (FEATURE_TYPE_COMPATIBLE, 0): "lazy refcounts",
    (FEATURE_TYPE_AUTOCLEAR, 0): "bitmaps",
    (FEATURE_TYPE_AUTOCLEAR, 1): "raw external data",
}

CRYPT_NONE = 0
CRYPT_AES = 1
CRYPT_LUKS = 2
CRYPT_METHOD_NAMES = {CRYPT_NONE: "none", CRYPT_AES: "aes", CRYPT_LUKS: "luks"}

COMPRESSION_ZLIB = 0
COMPRESSION_ZSTD = 1
COMPRESSION_TYPE_NAMES = {COMPRESSION_ZLIB: "zlib", COMPRESSION_ZSTD: "zstd"}

# Header extension types (qcow2.txt "Header extensions").
QCOW2_EXT_MAGIC_END = 0
QCOW2_EXT_MAGIC_BACKING_FORMAT = 0xE2792ACA
QCOW2_EXT_MAGIC_FEATURE_TABLE = 0x6803F857
QCOW2_EXT_MAGIC_BITMAPS = 0x23852875
QCOW2_EXT_MAGIC_CRYPTO_HEADER = 0x0537BE77
QCOW2_EXT_MAGIC_DATA_FILE = 0x44415441
EXTENSION_NAMES = {
    QCOW2_EXT_MAGIC_BACKING_FORMAT: "backing format",
    QCOW2_EXT_MAGIC_FEATURE_TABLE: "feature name table",
    QCOW2_EXT_MAGIC_BITMAPS: "bitmaps",
    QCOW2_EXT_MAGIC_CRYPTO_HEADER: "full disk encryption header pointer",
    QCOW2_EXT_MAGIC_DATA_FILE: "external data file name",
}

# Table entry masks (block/qcow2.h).
L1E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
L2E_OFFSET_MASK = 0x00FFFFFFFFFFFE00
REFT_OFFSET_MASK = 0xFFFFFFFFFFFFFE00
L1E_RESERVED_MASK = 0x7F000000000001FF
L2E_STD_RESERVED_MASK = 0x3F000000000001FE
QCOW_OFLAG_COPIED = 1 << 63
QCOW_OFLAG_COMPRESSED = 1 << 62
QCOW_OFLAG_ZERO = 1 << 0
L1E_SIZE = 8
L2E_SIZE_NORMAL = 8
L2E_SIZE_EXTENDED = 16


# A compressed L2 entry (docs/qcow2-format.md §3), as qcow2_do_open() derives s->csize_shift,
# s->csize_mask and s->cluster_offset_mask: bits 0..shift-1 the host byte offset, then the
# additional 512-byte sectors.
def csize_shift(cluster_bits: int) -> int:
    return 62 - (cluster_bits - 8)


def csize_mask(cluster_bits: int) -> int:
    return (1 << (cluster_bits - 8)) - 1


def compressed_offset_mask(cluster_bits: int) -> int:
    return (1 << csize_shift(cluster_bits)) - 1


class ClusterType(IntEnum):
    """What an L2 entry describes: qemu's QCow2ClusterType (qcow2_get_cluster_type())."""

    QCOW2_CLUSTER_UNALLOCATED = 0
    QCOW2_CLUSTER_ZERO_PLAIN = 1
    QCOW2_CLUSTER_ZERO_ALLOC = 2
    QCOW2_CLUSTER_NORMAL = 3
    QCOW2_CLUSTER_COMPRESSED = 4

    @property
    def label(self) -> str:
        """Short name for output: "unallocated", "zero-plain", "zero-alloc", "normal",
        "compressed"."""
        return self.name[len("QCOW2_CLUSTER_"):].lower().replace("_", "-")
REFTABLE_ENTRY_SIZE = 8
BME_TABLE_ENTRY_OFFSET_MASK = 0x00FFFFFFFFFFFE00
BME_TABLE_ENTRY_FLAG_ALL_ONES = 1
BME_FLAG_IN_USE = 1 << 0
BME_FLAG_AUTO = 1 << 1
BME_FLAG_EXTRA_DATA_COMPATIBLE = 1 << 2
BME_RESERVED_FLAGS = ~0x7 & 0xFFFFFFFF


# A NUL-padded on-disk string as text (undecodable bytes kept visible, never fatal).
_text = c_string_text


@frozen_record
class HeaderV2:
    """The 72-byte version 2 header, which is also the start of every version 3 header."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct(">4sIQIIQIIQQIIQ")

    magic: bytes
    version: int
    backing_file_offset: int
    backing_file_size: int
    cluster_bits: int
    size: int
    crypt_method: int
    l1_size: int
    l1_table_offset: int
    refcount_table_offset: int
    refcount_table_clusters: int
    nb_snapshots: int
    snapshots_offset: int

    @classmethod
    def from_bytes(cls, data: bytes) -> HeaderV2:
        return cls(*cls.STRUCT.unpack_from(data))


# Bytes 72..103 of a version 3 header, in on-disk order: incompatible_features,
# compatible_features, autoclear_features, refcount_order, header_length (the fields of
# Header below). Never read from a version 2 header.
HEADER_V3_STRUCT = struct.Struct(">QQQII")
HEADER_V3_OFFSET = 72


@frozen_record
class Header(HeaderV2):
    """The header as qemu sees it: the version 2 fields plus the version 3 ones, which a
    version 2 image gets as defaults (qemu's qcow2_do_open: refcount_order 4, header_length
    72, no feature bits) instead of reading them from bytes that belong to its extensions."""

    incompatible_features: int = 0
    compatible_features: int = 0
    autoclear_features: int = 0
    refcount_order: int = 4
    header_length: int = 72
    compression_type: int = 0  # byte 104, only when header_length > 104

    @property
    def cluster_size(self) -> int:
        return 1 << self.cluster_bits

    @property
    def refcount_bits(self) -> int:
        return 1 << self.refcount_order

    @property
    def dirty(self) -> bool:
        return bool(self.incompatible_features & QCOW2_INCOMPAT_DIRTY)

    @property
    def corrupt(self) -> bool:
        return bool(self.incompatible_features & QCOW2_INCOMPAT_CORRUPT)

    @property
    def has_data_file(self) -> bool:
        return bool(self.incompatible_features & QCOW2_INCOMPAT_DATA_FILE)

    @property
    def extended_l2(self) -> bool:
        return bool(self.incompatible_features & QCOW2_INCOMPAT_EXTL2)

    @property
    def lazy_refcounts(self) -> bool:
        return bool(self.compatible_features & QCOW2_COMPAT_LAZY_REFCOUNTS)

    @property
    def bitmaps_autoclear(self) -> bool:
        return bool(self.autoclear_features & QCOW2_AUTOCLEAR_BITMAPS)

    @property
    def data_file_raw(self) -> bool:
        return bool(self.autoclear_features & QCOW2_AUTOCLEAR_DATA_FILE_RAW)

    @property
    def l2_entry_size(self) -> int:
        return L2E_SIZE_EXTENDED if self.extended_l2 else L2E_SIZE_NORMAL

    @property
    def l2_entries(self) -> int:
        return self.cluster_size // self.l2_entry_size

    @property
    def refcount_table_entries(self) -> int:
        return self.refcount_table_clusters * self.cluster_size // REFTABLE_ENTRY_SIZE

    @property
    def refcount_block_entries(self) -> int:
        return self.cluster_size * 8 // self.refcount_bits


# Byte 104 of a version 3 header whose header_length > 104.
COMPRESSION_TYPE_OFFSET = 104
V2_HEADER_LENGTH = HeaderV2.STRUCT.size  # 72
V3_HEADER_LENGTH = V2_HEADER_LENGTH + HEADER_V3_STRUCT.size  # 104
V2_REFCOUNT_ORDER = 4


@frozen_record
class ExtensionHeader:
    STRUCT: ClassVar[struct.Struct] = struct.Struct(">II")

    type: int
    length: int

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = 0) -> ExtensionHeader:
        return cls(*cls.STRUCT.unpack_from(data, offset))


@frozen_record
class FeatureNameEntry:
    STRUCT: ClassVar[struct.Struct] = struct.Struct(">BB46s")

    type: int
    bit: int
    name: str

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = 0) -> FeatureNameEntry:
        ftype, bit, name = cls.STRUCT.unpack_from(data, offset)
        return cls(ftype, bit, _text(name))


@frozen_record
class BitmapsExtension:
    STRUCT: ClassVar[struct.Struct] = struct.Struct(">IIQQ")

    nb_bitmaps: int
    reserved32: int
    bitmap_directory_size: int
    bitmap_directory_offset: int

    @classmethod
    def from_bytes(cls, data: bytes) -> BitmapsExtension:
        return cls(*cls.STRUCT.unpack_from(data))


@frozen_record
class CryptoHeaderExtension:
    STRUCT: ClassVar[struct.Struct] = struct.Struct(">QQ")

    offset: int
    length: int

    @classmethod
    def from_bytes(cls, data: bytes) -> CryptoHeaderExtension:
        return cls(*cls.STRUCT.unpack_from(data))


class SnapshotHeader(NamedTuple):
    """QCowSnapshotHeader: the fixed 40 bytes of a snapshot table entry (a tuple: a table
    can hold 65536 of them)."""

    l1_table_offset: int
    l1_size: int
    id_str_size: int
    name_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    extra_data_size: int

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = 0) -> SnapshotHeader:
        header: SnapshotHeader = cls._make(SNAPSHOT_HEADER_STRUCT.unpack_from(data, offset))
        return header


# The byte layout of SnapshotHeader.
SNAPSHOT_HEADER_STRUCT = struct.Struct(">QIHHIIQII")


# QCowSnapshotExtraData: u64 vm_state_size_large, u64 disk_size, u64 icount (each optional).
SNAPSHOT_EXTRA_VM_STATE_SIZE_LARGE_END = 8
SNAPSHOT_EXTRA_DISK_SIZE_END = 16
SNAPSHOT_EXTRA_ICOUNT_END = 24


class BitmapDirectoryEntry(NamedTuple):
    """Qcow2BitmapDirEntry: the fixed 24 bytes of a bitmap directory entry (a tuple: a
    directory can hold 65535 of them)."""

    bitmap_table_offset: int
    bitmap_table_size: int
    flags: int
    type: int
    granularity_bits: int
    name_size: int
    extra_data_size: int

    @classmethod
    def from_bytes(cls, data: bytes, offset: int = 0) -> BitmapDirectoryEntry:
        entry: BitmapDirectoryEntry = cls._make(BITMAP_DIR_ENTRY_STRUCT.unpack_from(data, offset))
        return entry


# The byte layout of BitmapDirectoryEntry.
BITMAP_DIR_ENTRY_STRUCT = struct.Struct(">QIIBBHI")


def align_up(value: int, alignment: int) -> int:
    return (value + alignment - 1) // alignment * alignment


def bitmap_dir_entry_size(name_size: int, extra_data_size: int) -> int:
    """calc_dir_entry_size() in block/qcow2-bitmap.c."""
    return align_up(BITMAP_DIR_ENTRY_STRUCT.size + extra_data_size + name_size, 8)


LUKS_MAGIC = b"LUKS\xba\xbe"
LUKS_KEY_SLOT_ENABLED = 0x00AC71F3
LUKS_SECTOR_SIZE = 512
LUKS_NUM_KEY_SLOTS = 8


@frozen_record
class LuksKeySlot:
    STRUCT: ClassVar[struct.Struct] = struct.Struct(">II32sII")

    active: int
    iterations: int
    salt: bytes
    key_offset_sector: int
    stripes: int

    @property
    def enabled(self) -> bool:
        return self.active == LUKS_KEY_SLOT_ENABLED


@frozen_record
class LuksHeader:
    """The LUKS1 partition header (592 bytes), as stored unencrypted inside a qcow2 image."""

    STRUCT: ClassVar[struct.Struct] = struct.Struct(">6sH32s32s32sII20s32sI40s")

    magic: bytes
    version: int
    cipher_name: str
    cipher_mode: str
    hash_spec: str
    payload_offset_sector: int
    master_key_len: int
    master_key_digest: bytes
    master_key_salt: bytes
    master_key_iterations: int
    uuid: str
    key_slots: tuple[LuksKeySlot, ...]

    SIZE: ClassVar[int] = 208 + LUKS_NUM_KEY_SLOTS * 48

    @classmethod
    def from_bytes(cls, data: bytes) -> LuksHeader:
        (magic, version, cipher, mode, hash_spec, payload, key_len, digest, salt, iters,
         uuid) = cls.STRUCT.unpack_from(data)
        slots = tuple(
            LuksKeySlot(*LuksKeySlot.STRUCT.unpack_from(data, cls.STRUCT.size + 48 * i))
            for i in range(LUKS_NUM_KEY_SLOTS)
        )
        return cls(magic, version, _text(cipher), _text(mode), _text(hash_spec), payload,
                   key_len, digest, salt, iters, _text(uuid), slots)
