"""Everything in an image's header area as typed values (`qcow2-analyze header`): every header
field, every feature bit by name (the image's own feature name table first), every extension
(unknown ones by type and length), the backing file, the LUKS header, the snapshot table and
the bitmap directory. The front end renders them (analyze/info.py); their JSON keys are
declared here."""

from __future__ import annotations

from ..common.jsonform import JsonKey
from ..common.record import NamedTuple, frozen_record
from . import layout as L
from .image import Extension, Feature, Qcow2Image

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import ClassVar, Optional, TypeAlias, Union

# Snapshots listed (a header may claim 65536, read as zeros past EOF); the total is complete.
MAX_LISTED = 1000
# Bytes of an extension of unknown type shown.
SHOWN_DATA = 64


def feature_type_name(code: int) -> str:
    return L.FEATURE_TYPE_NAMES.get(code, str(code))


def extension_type_text(code: int) -> str:
    return f"0x{code:08x}"


_FEATURE_TYPE = JsonKey("type", form=feature_type_name)


@frozen_record
class FeatureView(Feature):
    """A feature bit with its JSON keys (the type by name)."""

    JSON: ClassVar[tuple[JsonKey, ...]] = (_FEATURE_TYPE, JsonKey("bit"), JsonKey("name"),
                                           JsonKey("enabled"))


@frozen_record
class FeatureNameView:
    """One entry of the feature name table extension."""

    type: int
    bit: int
    name: str

    JSON: ClassVar[tuple[JsonKey, ...]] = (_FEATURE_TYPE, JsonKey("bit"), JsonKey("name"))


@frozen_record
class BackingFormatDetail:
    backing_format: Optional[str]


@frozen_record
class DataFileDetail:
    data_file: Optional[str]


@frozen_record
class FeatureTableDetail:
    entries: tuple[FeatureNameView, ...]


@frozen_record
class BitmapsDetail:
    nb_bitmaps: int
    bitmap_directory_size: int
    bitmap_directory_offset: int
    in_effect: bool  # the autoclear bit that makes the bitmaps valid


@frozen_record
class CryptoDetail:
    luks_offset: int
    luks_length: int


@frozen_record
class RawDetail:
    """An extension of unknown type (or an unexpected length): its first bytes."""

    data: bytes

    JSON: ClassVar[tuple[JsonKey, ...]] = (JsonKey("data_hex", "data"),)


ExtensionDetail: TypeAlias = ("Union[BackingFormatDetail, DataFileDetail, FeatureTableDetail, "
                              "BitmapsDetail, CryptoDetail, RawDetail]")


@frozen_record
class ExtensionView:
    type: int
    name: str
    offset: int
    length: int
    detail: ExtensionDetail  # what it holds, its keys beside these

    JSON: ClassVar[tuple[JsonKey, ...]] = (
        JsonKey("type", form=extension_type_text), JsonKey("name"), JsonKey("offset"),
        JsonKey("length"), JsonKey("detail", flatten=True))


@frozen_record
class LuksSlotView:
    slot: int
    active: bool
    iterations: int
    key_offset: int
    stripes: int


@frozen_record
class LuksView:
    offset: int
    length: int
    version: int
    cipher_name: str
    cipher_mode: str
    cipher_alg: str
    ivgen_alg: str
    ivgen_hash_alg: Optional[str]
    hash_spec: str
    payload_offset: int
    master_key_bytes: int
    master_key_iterations: int
    uuid: str
    key_slots: tuple[LuksSlotView, ...]


class _SnapshotFields(NamedTuple):
    id: str
    name: str
    table_entry_offset: int
    l1_table_offset: int
    l1_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int
    extra_data_size: int
    disk_size: Optional[int]
    icount: Optional[int]
    extra_data: bytes


class SnapshotView(_SnapshotFields):
    """One snapshot table entry (a named tuple, as the Snapshot it shows)."""

    __slots__ = ()
    JSON: ClassVar[tuple[JsonKey, ...]] = (
        *(JsonKey(name) for name in (
            "id", "name", "table_entry_offset", "l1_table_offset", "l1_size", "date_sec",
            "date_nsec", "vm_clock_nsec", "vm_state_size", "extra_data_size", "disk_size",
            "icount")),
        JsonKey("extra_data_hex", "extra_data"))


class BitmapView(NamedTuple):
    """One bitmap directory entry (a directory can hold 65535)."""

    name: str
    directory_entry_offset: int
    granularity: int
    granularity_bits: int
    flags: int
    in_use: bool
    auto: bool
    type: int
    bitmap_table_offset: int
    bitmap_table_size: int
    extra_data_size: int


@frozen_record
class HeaderView:
    """The whole header area of one image."""

    filename: str
    header: L.Header  # every field (magic as hex in JSON)
    cluster_size: int
    refcount_bits: int
    crypt_method_name: str
    compression_type_name: str
    features: tuple[FeatureView, ...]
    extensions: tuple[ExtensionView, ...]
    backing_file: Optional[str]
    backing_format: Optional[str]
    external_data_file: Optional[str]
    name_problems: tuple[str, ...]
    luks: Optional[LuksView]
    snapshots: tuple[SnapshotView, ...]  # the first MAX_LISTED
    snapshots_total: int
    bitmaps: tuple[BitmapView, ...]


def _detail(image: Qcow2Image, ext: Extension) -> ExtensionDetail:
    if ext.type == L.QCOW2_EXT_MAGIC_BACKING_FORMAT:
        return BackingFormatDetail(image.backing_format)
    if ext.type == L.QCOW2_EXT_MAGIC_DATA_FILE:
        return DataFileDetail(image.data_file_name)
    if ext.type == L.QCOW2_EXT_MAGIC_FEATURE_TABLE:
        size = L.FeatureNameEntry.STRUCT.size
        return FeatureTableDetail(tuple(
            FeatureNameView(e.type, e.bit, e.name)
            for e in (L.FeatureNameEntry.from_bytes(ext.data, i * size)
                      for i in range(ext.length // size))))
    if ext.type == L.QCOW2_EXT_MAGIC_BITMAPS and ext.length == 24:
        bm = L.BitmapsExtension.from_bytes(ext.data)
        return BitmapsDetail(bm.nb_bitmaps, bm.bitmap_directory_size,
                             bm.bitmap_directory_offset, image.header.bitmaps_autoclear)
    if ext.type == L.QCOW2_EXT_MAGIC_CRYPTO_HEADER and ext.length == 16:
        ptr = L.CryptoHeaderExtension.from_bytes(ext.data)
        return CryptoDetail(ptr.offset, ptr.length)
    return RawDetail(ext.data[:SHOWN_DATA])


def describe_luks(image: Qcow2Image) -> Optional[LuksView]:
    luks = image.luks()
    if luks is None:
        return None
    h = luks.header
    return LuksView(
        luks.offset, luks.length, h.version, h.cipher_name, h.cipher_mode, luks.cipher_alg,
        luks.ivgen_alg, luks.ivgen_hash_alg, h.hash_spec, luks.payload_offset,
        h.master_key_len, h.master_key_iterations, h.uuid,
        tuple(LuksSlotView(i, s.enabled, s.iterations, s.key_offset_sector * L.LUKS_SECTOR_SIZE,
                           s.stripes) for i, s in enumerate(h.key_slots)))


def describe(image: Qcow2Image) -> HeaderView:
    h = image.header
    snapshots = image.snapshots()
    return HeaderView(
        filename=image.filename,
        header=h,
        cluster_size=h.cluster_size,
        refcount_bits=h.refcount_bits,
        crypt_method_name=L.CRYPT_METHOD_NAMES.get(h.crypt_method, "unknown"),
        compression_type_name=L.COMPRESSION_TYPE_NAMES[h.compression_type],
        features=tuple(FeatureView(f.type, f.bit, f.name, f.enabled) for f in image.features()),
        extensions=tuple(ExtensionView(ext.type, ext.name, ext.offset, ext.length,
                                       _detail(image, ext)) for ext in image.extensions),
        backing_file=image.backing_filename,
        backing_format=image.backing_format,
        external_data_file=image.data_file_name,
        name_problems=tuple(image.name_problems()),
        luks=describe_luks(image),
        snapshots=tuple(
            SnapshotView(sn.id_str, sn.name, sn.offset, sn.l1_table_offset, sn.l1_size,
                         sn.date_sec, sn.date_nsec, sn.vm_clock_nsec, sn.vm_state_size,
                         sn.extra_data_size, sn.disk_size, sn.icount, sn.extra_data)
            for sn in snapshots[:MAX_LISTED]),
        snapshots_total=len(snapshots),
        bitmaps=tuple(
            BitmapView(bm.name, bm.offset, bm.granularity, bm.granularity_bits, bm.flags,
                       bm.in_use, bm.auto, bm.type, bm.bitmap_table_offset,
                       bm.bitmap_table_size, bm.extra_data_size)
            for bm in image.bitmaps()),
    )
