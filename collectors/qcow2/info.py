"""The `qemu-img info --output=json` view of a qcow2 image (qemu 7.2: bdrv_query_image_info()
and qcow2_get_specific_info(); docs/qcow2-format.md §8), computed from metadata alone: no key,
no data file."""

from __future__ import annotations

from ..common.jsonform import JsonKey, omit_falsy, omit_none
from ..common.record import NamedTuple, frozen_record
from . import layout as L
from .chain import backing_path, has_protocol
from .image import Qcow2Image, Snapshot
from .reader import ImageFile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar, Optional

Keys = tuple[JsonKey, ...]


def _keys(*names: str, omit: tuple[str, ...] = (), omit_empty: tuple[str, ...] = ()) -> Keys:
    """qemu's keys in its order; those in `omit` only when set, in `omit_empty` when not
    empty (qemu's has_* flags)."""
    return tuple(JsonKey(name, omit=omit_falsy if name in omit_empty else
                         omit_none if name in omit else None) for name in names)


class _SnapshotFields(NamedTuple):
    id: str
    name: str
    vm_state_size: int
    date_sec: int
    date_nsec: int
    vm_clock_sec: int
    vm_clock_nsec: int
    icount: Optional[int] = None


class SnapshotInfo(_SnapshotFields):
    """One snapshot as qemu-img info lists it (SnapshotInfo in qapi/block-core.json); a named
    tuple, as the Snapshot it shows: a table can hold 65536."""

    __slots__ = ()
    JSON: ClassVar[Keys] = _keys("id", "name", "vm-state-size", "date-sec", "date-nsec",
                                 "vm-clock-sec", "vm-clock-nsec", "icount", omit=("icount",))


@frozen_record
class LuksSlotInfo:
    active: bool
    key_offset: int
    iters: Optional[int] = None  # active slots only
    stripes: Optional[int] = None

    JSON: ClassVar[Keys] = _keys("active", "key-offset", "iters", "stripes",
                                 omit=("iters", "stripes"))


@frozen_record
class EncryptInfo:
    """The `encrypt` block: the format, and for LUKS its header (no key needed)."""

    format: str  # "aes" or "luks"
    cipher_alg: Optional[str] = None
    cipher_mode: Optional[str] = None
    ivgen_alg: Optional[str] = None
    hash_alg: Optional[str] = None
    payload_offset: Optional[int] = None
    master_key_iters: Optional[int] = None
    uuid: Optional[str] = None
    slots: Optional[tuple[LuksSlotInfo, ...]] = None
    ivgen_hash_alg: Optional[str] = None

    JSON: ClassVar[Keys] = _keys(
        "format", "cipher-alg", "cipher-mode", "ivgen-alg", "hash-alg", "payload-offset",
        "master-key-iters", "uuid", "slots", "ivgen-hash-alg",
        omit=("cipher-alg", "cipher-mode", "ivgen-alg", "hash-alg", "payload-offset",
              "master-key-iters", "uuid", "slots", "ivgen-hash-alg"))


class BitmapInfo(NamedTuple):
    """One bitmap (a directory can hold 65535)."""

    flags: tuple[str, ...]
    name: str
    granularity: int


@frozen_record
class Qcow2SpecificInfo:
    """ImageInfoSpecificQCow2: version 3 images add the feature flags and the bitmaps."""

    compat: str
    compression_type: str
    refcount_bits: int
    lazy_refcounts: Optional[bool] = None
    corrupt: Optional[bool] = None
    extended_l2: Optional[bool] = None
    bitmaps: tuple[BitmapInfo, ...] = ()
    data_file: Optional[str] = None
    data_file_raw: Optional[bool] = None
    encrypt: Optional[EncryptInfo] = None

    JSON: ClassVar[Keys] = _keys(
        "compat", "compression-type", "refcount-bits", "lazy-refcounts", "corrupt",
        "extended-l2", "bitmaps", "data-file", "data-file-raw", "encrypt",
        omit=("lazy-refcounts", "corrupt", "extended-l2", "data-file", "data-file-raw",
              "encrypt"), omit_empty=("bitmaps",))


@frozen_record
class FormatSpecific:
    type: str
    data: Qcow2SpecificInfo


@frozen_record
class ImageInfo:
    """What `qemu-img info --output=json` reports about one layer (ImageInfo)."""

    virtual_size: int
    filename: str
    format: str
    actual_size: int
    dirty_flag: bool
    cluster_size: Optional[int] = None  # qcow2 only
    format_specific: Optional[FormatSpecific] = None  # qcow2 only
    encrypted: Optional[bool] = None  # true, or absent
    backing_filename: Optional[str] = None
    full_backing_filename: Optional[str] = None
    backing_filename_format: Optional[str] = None
    snapshots: tuple[SnapshotInfo, ...] = ()

    JSON: ClassVar[Keys] = _keys(
        "virtual-size", "filename", "cluster-size", "format", "actual-size",
        "format-specific", "dirty-flag", "encrypted", "backing-filename",
        "full-backing-filename", "backing-filename-format", "snapshots",
        omit=("cluster-size", "format-specific", "encrypted", "backing-filename",
              "full-backing-filename", "backing-filename-format"), omit_empty=("snapshots",))


def snapshot_info(sn: Snapshot) -> SnapshotInfo:
    return SnapshotInfo(sn.id_str, sn.name, sn.vm_state_size, sn.date_sec, sn.date_nsec,
                        sn.vm_clock_nsec // 1_000_000_000, sn.vm_clock_nsec % 1_000_000_000,
                        sn.icount)


def encrypt_info(image: Qcow2Image) -> Optional[EncryptInfo]:
    method = image.header.crypt_method
    if method == L.CRYPT_AES:
        return EncryptInfo("aes")
    if method != L.CRYPT_LUKS:
        return None
    luks = image.luks()
    assert luks is not None  # LUKS without its extension is refused at open time
    slots = tuple(
        LuksSlotInfo(slot.enabled, slot.key_offset_sector * L.LUKS_SECTOR_SIZE,
                     slot.iterations if slot.enabled else None,
                     slot.stripes if slot.enabled else None)
        for slot in luks.header.key_slots)
    return EncryptInfo("luks", luks.cipher_alg, luks.cipher_mode, luks.ivgen_alg,
                       luks.hash_alg, luks.payload_offset, luks.header.master_key_iterations,
                       luks.header.uuid, slots, luks.ivgen_hash_alg or None)


def format_specific(image: Qcow2Image) -> FormatSpecific:
    from .bitmaps import loaded_bitmaps  # qemu loads them as it opens the image

    h = image.header
    v3 = h.version >= 3
    return FormatSpecific("qcow2", Qcow2SpecificInfo(
        compat="0.10" if h.version == 2 else "1.1",
        compression_type=L.COMPRESSION_TYPE_NAMES[h.compression_type],
        refcount_bits=h.refcount_bits,
        lazy_refcounts=h.lazy_refcounts if v3 else None,
        corrupt=h.corrupt if v3 else None,
        extended_l2=h.extended_l2 if v3 else None,
        bitmaps=tuple(BitmapInfo(tuple(bm.flag_names), bm.name, bm.granularity)
                      for bm in loaded_bitmaps(image)) if v3 else (),
        data_file=image.data_file_name if v3 else None,
        data_file_raw=h.data_file_raw if v3 and h.has_data_file else None,
        encrypt=encrypt_info(image)))


def actual_size(image: Qcow2Image) -> int:
    """st_blocks * 512 for a file; qemu reports 0 for a block device ("disk size: 0 B")."""
    if image.file.is_block_device:
        return 0
    return image.file.stat.st_blocks * 512


def image_info(image: Qcow2Image) -> ImageInfo:
    h = image.header
    # qemu reads the name into a C string: what follows a NUL byte is not part of it.
    backing = (image.backing_filename or "").split("\0", 1)[0] or None
    full = None
    if backing is not None:
        full = backing if has_protocol(backing) else backing_path(image.filename, backing)
    return ImageInfo(
        virtual_size=h.size // 512 * 512, filename=image.filename, format="qcow2",
        actual_size=actual_size(image), dirty_flag=h.dirty, cluster_size=h.cluster_size,
        format_specific=format_specific(image),
        encrypted=True if h.crypt_method != L.CRYPT_NONE else None,
        backing_filename=backing, full_backing_filename=full,
        backing_filename_format=(image.backing_format or None) if backing else None,
        snapshots=tuple(snapshot_info(sn) for sn in image.snapshots()))


def raw_info(path: str) -> ImageInfo:
    """`qemu-img info --output=json` of a raw layer (a raw base image below a qcow2 one): the
    raw driver's virtual size is the length of the file or device."""
    with ImageFile(path) as file:
        return ImageInfo(virtual_size=file.length, filename=path, format="raw",
                         actual_size=0 if file.is_block_device else file.stat.st_blocks * 512,
                         dirty_flag=False)
