"""Parsing and validating a qcow2 image's extensions, snapshots, bitmaps and LUKS header (the
header itself: collectors.header).

Mirrors qcow2_do_open() / qcow2_read_extensions() / qcow2_read_snapshots() /
bitmap_list_load() in qemu: the same bounds are enforced, in the same spirit, before anything
is allocated from a header value. Only metadata is read: no key, no data file, no lock.
"""

from __future__ import annotations

import struct

from ..common.errors import INVALID, OUT_OF_BOUNDS, UNSUPPORTED, Qcow2Error
from ..common.record import NamedTuple, frozen_record
from ..common.text import printable
from ..common.units import counted
from . import layout as L
from .header import parse_header, shorter_than_header
from .names import c_string_text, decode_path_name, name_problem
from .reader import ImageFile, Window

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

    from .bitmaps import Bitmap
    from .luks import LuksInfo

# qcow2_do_read_snapshots(): the table may span at most INT_MAX bytes.
INT_MAX = 2**31 - 1
# First read: enough for the header and, for nearly every image, all its extensions.
HEAD_READ = 4096



@frozen_record
class Extension:
    type: int
    offset: int  # of the extension's data, in the image
    length: int
    data: bytes

    @property
    def name(self) -> str:
        return L.EXTENSION_NAMES.get(self.type, "unknown")


@frozen_record
class Feature:
    type: int  # L.FEATURE_TYPE_*
    bit: int
    name: str
    enabled: bool


class Snapshot(NamedTuple):
    """One snapshot table entry (a tuple: a table can hold 65536 of them)."""

    offset: int  # of the table entry
    id_str: str
    name: str
    l1_table_offset: int
    l1_size: int
    date_sec: int
    date_nsec: int
    vm_clock_nsec: int
    vm_state_size: int  # the large one when present (extra data), else the 32-bit field
    extra_data_size: int
    extra_data: bytes
    disk_size: Optional[int]
    icount: Optional[int]  # None when absent or -1 (qemu: no icount recorded)
    table_index: int  # position in the table
    vm_state_size32: int  # the 32-bit field of the fixed part, as written

    @property
    def label(self) -> str:
        return f"snapshot {self.id_str}"


def _err(message: str, structure: str, offset: Optional[int] = None,
         value: Optional[int] = None, kind: str = INVALID) -> Qcow2Error:
    return Qcow2Error(message, structure=structure, offset=offset, value=value, kind=kind)


class Qcow2Image:
    """A validated qcow2 image: header, extensions and backing name parsed at open time;
    snapshots, bitmaps and the LUKS header parsed (and validated) on first use."""

    def __init__(self, file: ImageFile) -> None:
        self.file = file
        self.filename = file.path
        try:
            # qemu's file driver reads past EOF as zeros: so does the header's first read
            # (a file shorter than its header is then judged on zeros, as qemu judges it).
            head = file.read_zero_padded(0, HEAD_READ, "header")
            self._head = head
            self.header = parse_header(head, file.length)
            self.extensions = self._read_extensions()
            self._validate_extensions()
            self.backing_filename = self._read_backing_filename()
        except Qcow2Error as exc:
            raise shorter_than_header(exc, file.length).with_filename(file.path) from None
        self._snapshots: Optional[tuple[list[Snapshot], int]] = None
        self._l1_groups: Optional[dict[tuple[int, int], list[Snapshot]]] = None
        self._bitmaps: Optional[list[Bitmap]] = None

    @classmethod
    def open(cls, path: str) -> Qcow2Image:
        return cls._parsed(ImageFile(path))

    def reopened(self) -> Qcow2Image:
        """The image parsed afresh from the same open file: its header, extensions and length
        as they are now (a qemu writing it may have moved tables since). The caller closes
        it."""
        return Qcow2Image._parsed(self.file.duplicate())

    @classmethod
    def _parsed(cls, file: ImageFile) -> Qcow2Image:
        """The image in `file`, which is closed when it cannot be parsed (it is the caller's
        otherwise)."""
        try:
            return cls(file)
        except BaseException:
            file.close()
            raise

    def header_moved(self) -> bool:
        """Whether cluster 0 (header and extensions) reads differently now than when it was
        parsed. qemu rewrites it when it moves a grown L1 or refcount table, and frees the old
        table (docs/qcow2-format.md §11): tables read after the parse may then be stale."""
        size = min(len(self._head), self.header.cluster_size)
        return self.file.read_zero_padded(0, size, "header") != self._head[:size]

    def close(self) -> None:
        self.file.close()

    def __enter__(self) -> Qcow2Image:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    # -- cluster 0 --------------------------------------------------------------------------
    def _area(self, offset: int, length: int, structure: str) -> bytes:
        """Bytes from cluster 0, served from the first read when it covers them; zeros past
        EOF, as qemu reads them."""
        if offset + length <= len(self._head):
            return self._head[offset:offset + length]
        return self.file.read_zero_padded(offset, length, structure)

    def _read_extensions(self) -> list[Extension]:
        """qcow2_read_extensions(): from header_length to the backing name or cluster end."""
        h = self.header
        end = h.backing_file_offset if h.backing_file_offset else h.cluster_size
        offset = h.header_length
        extensions: list[Extension] = []
        while offset < end:
            if offset + 8 > end:
                raise _err("header extension header runs past the extension area",
                           "header extension", offset, kind=OUT_OF_BOUNDS)
            ext = L.ExtensionHeader.from_bytes(self._area(offset, 8, "header extension"))
            data_offset = offset + 8
            if ext.length > end - data_offset:
                raise _err(f"header extension 0x{ext.type:08x} too large: length "
                           f"{ext.length} runs past 0x{end:x}", "header extension",
                           offset, ext.length, OUT_OF_BOUNDS)
            if ext.type == L.QCOW2_EXT_MAGIC_END:
                break
            data = self._area(data_offset, ext.length, "header extension")
            extensions.append(Extension(ext.type, data_offset, ext.length, data))
            offset = data_offset + L.align_up(ext.length, 8)
        return extensions

    def extension(self, ext_type: int) -> Optional[Extension]:
        for ext in self.extensions:
            if ext.type == ext_type:
                return ext
        return None

    def _validate_extensions(self) -> None:
        h = self.header
        fmt = self.extension(L.QCOW2_EXT_MAGIC_BACKING_FORMAT)
        if fmt is not None and fmt.length >= 16:
            raise _err(f"backing format name of {fmt.length} bytes is too long (max 15)",
                       "backing format extension", fmt.offset, fmt.length)
        unknown = h.incompatible_features & ~L.QCOW2_INCOMPAT_MASK
        if unknown:
            names = [self.feature_name(L.FEATURE_TYPE_INCOMPATIBLE, bit)
                     for bit in range(64) if unknown >> bit & 1]
            raise _err(f"{counted(len(names), 'unsupported incompatible feature')}: "
                       f"{', '.join(names)}",
                       "header.incompatible_features", 72, h.incompatible_features,
                       UNSUPPORTED)
        crypto = self.extension(L.QCOW2_EXT_MAGIC_CRYPTO_HEADER)
        if crypto is not None:
            if h.crypt_method != L.CRYPT_LUKS:
                raise _err("encryption header extension without LUKS encryption",
                           "crypto header extension", crypto.offset, h.crypt_method)
            if crypto.length != L.CryptoHeaderExtension.STRUCT.size:
                raise _err(f"encryption header extension of {crypto.length} bytes, "
                           "expected 16", "crypto header extension", crypto.offset,
                           crypto.length)
            pointer = L.CryptoHeaderExtension.from_bytes(crypto.data)
            if pointer.offset % h.cluster_size:
                raise _err(f"LUKS header offset 0x{pointer.offset:x} not cluster aligned",
                           "crypto header extension", crypto.offset, pointer.offset)
        elif h.crypt_method == L.CRYPT_LUKS:
            raise _err("LUKS encryption without the encryption header extension",
                       "header.crypt_method", 32, h.crypt_method)
        if self.bitmaps_extension_raw is not None:
            self._validate_bitmaps_extension()

    @property
    def bitmaps_extension_raw(self) -> Optional[Extension]:
        return self.extension(L.QCOW2_EXT_MAGIC_BITMAPS)

    @property
    def bitmaps_extension(self) -> Optional[L.BitmapsExtension]:
        """The bitmaps extension when qemu would use it (autoclear bit 0 set), else None."""
        ext = self.bitmaps_extension_raw
        if ext is None or not self.header.bitmaps_autoclear:
            return None
        return L.BitmapsExtension.from_bytes(ext.data)

    def _validate_bitmaps_extension(self) -> None:
        ext = self.bitmaps_extension_raw
        assert ext is not None
        if ext.length != L.BitmapsExtension.STRUCT.size:
            raise _err(f"bitmaps extension of {ext.length} bytes, expected 24",
                       "bitmaps extension", ext.offset, ext.length)
        if not self.header.bitmaps_autoclear:
            return  # qemu ignores it: bitmaps were invalidated by a non-bitmap-aware writer
        bm = L.BitmapsExtension.from_bytes(ext.data)
        if bm.reserved32:
            raise _err("reserved field is not zero", "bitmaps extension", ext.offset + 4,
                       bm.reserved32)
        if bm.nb_bitmaps == 0 or bm.nb_bitmaps > L.QCOW2_MAX_BITMAPS:
            raise _err(f"nb_bitmaps {bm.nb_bitmaps} outside 1..{L.QCOW2_MAX_BITMAPS}",
                       "bitmaps extension", ext.offset, bm.nb_bitmaps, OUT_OF_BOUNDS)
        if bm.bitmap_directory_size > L.QCOW2_MAX_BITMAP_DIRECTORY_SIZE:
            raise _err(f"bitmap directory size {bm.bitmap_directory_size} exceeds "
                       f"{L.QCOW2_MAX_BITMAP_DIRECTORY_SIZE}", "bitmaps extension",
                       ext.offset + 8, bm.bitmap_directory_size, OUT_OF_BOUNDS)
        if bm.bitmap_directory_offset % self.header.cluster_size:
            raise _err(f"bitmap directory offset 0x{bm.bitmap_directory_offset:x} not "
                       "cluster aligned", "bitmaps extension", ext.offset + 16,
                       bm.bitmap_directory_offset)

    def _read_backing_filename(self) -> Optional[str]:
        h = self.header
        if not h.backing_file_offset:
            return None
        limit = min(L.MAX_BACKING_FILE_NAME, h.cluster_size - h.backing_file_offset)
        if h.backing_file_size > limit:
            raise _err(f"backing file name of {h.backing_file_size} bytes is too long "
                       f"(max {limit})", "header.backing_file_size", 16, h.backing_file_size)
        return decode_path_name(self.backing_name_raw())

    def backing_name_raw(self) -> bytes:
        h = self.header
        return self._area(h.backing_file_offset, h.backing_file_size, "backing file name")

    # -- names --------------------------------------------------------------------------------
    @property
    def backing_format(self) -> Optional[str]:
        ext = self.extension(L.QCOW2_EXT_MAGIC_BACKING_FORMAT)
        return ext.data.decode("utf-8", "backslashreplace") if ext is not None else None

    @property
    def data_file_name(self) -> Optional[str]:
        ext = self.extension(L.QCOW2_EXT_MAGIC_DATA_FILE)
        return decode_path_name(ext.data) if ext is not None else None

    def name_problems(self) -> list[str]:
        """Every name in the image's header area that cannot be used as what it names (a path, or
        text), each as a sentence naming the structure and its offset."""
        h = self.header
        named: list[tuple[str, int, bytes, bool]] = []
        if h.backing_file_offset:
            named.append(("backing file name", h.backing_file_offset, self.backing_name_raw(),
                          True))
        for ext in self.extensions:
            if ext.type in (L.QCOW2_EXT_MAGIC_DATA_FILE, L.QCOW2_EXT_MAGIC_BACKING_FORMAT):
                named.append((ext.name, ext.offset, ext.data,
                              ext.type == L.QCOW2_EXT_MAGIC_DATA_FILE))
            elif ext.type == L.QCOW2_EXT_MAGIC_FEATURE_TABLE:
                size = L.FeatureNameEntry.STRUCT.size
                for i in range(ext.length // size):
                    at = i * size + 2
                    named.append((f"feature name table entry {i}", ext.offset + at,
                                  ext.data[at:at + size - 2], False))
        problems = []
        for what, offset, raw, is_path in named:
            problem = name_problem(raw, is_path=is_path)
            if problem is not None:
                text = printable(decode_path_name(raw if is_path else raw.rstrip(b"\0")))
                problems.append(f"{what} '{text}' at offset 0x{offset:x} {problem}")
        return problems

    def feature_table(self) -> dict[tuple[int, int], str]:
        names = dict(L.DEFAULT_FEATURE_NAMES)
        ext = self.extension(L.QCOW2_EXT_MAGIC_FEATURE_TABLE)
        if ext is not None:
            size = L.FeatureNameEntry.STRUCT.size
            for i in range(ext.length // size):
                entry = L.FeatureNameEntry.from_bytes(ext.data, i * size)
                names[(entry.type, entry.bit)] = entry.name
        return names

    def feature_name(self, ftype: int, bit: int) -> str:
        kind = L.FEATURE_TYPE_NAMES.get(ftype, str(ftype))
        return self.feature_table().get((ftype, bit), f"unknown {kind} bit {bit}")

    def features(self) -> list[Feature]:
        """Every feature bit that is set or known, named by the image's own table first."""
        h = self.header
        table = self.feature_table()
        values = {
            L.FEATURE_TYPE_INCOMPATIBLE: h.incompatible_features,
            L.FEATURE_TYPE_COMPATIBLE: h.compatible_features,
            L.FEATURE_TYPE_AUTOCLEAR: h.autoclear_features,
        }
        result = []
        for ftype, value in values.items():
            bits = {bit for (t, bit) in table if t == ftype}
            bits |= {bit for bit in range(64) if value >> bit & 1}
            for bit in sorted(bits):
                name = table.get((ftype, bit), f"unknown bit {bit}")
                result.append(Feature(ftype, bit, name, bool(value >> bit & 1)))
        return result

    # -- snapshots ----------------------------------------------------------------------------
    def snapshots(self) -> list[Snapshot]:
        return self._snapshot_table()[0]

    def snapshot_l1_tables(self) -> dict[tuple[int, int], list[Snapshot]]:
        """The snapshots grouped by their L1 table (offset, size), in table order: snapshots
        sharing one table add the same references each time (a table can hold 65536)."""
        if self._l1_groups is None:
            groups: dict[tuple[int, int], list[Snapshot]] = {}
            for sn in self.snapshots():
                groups.setdefault((sn.l1_table_offset, sn.l1_size), []).append(sn)
            self._l1_groups = groups
        return self._l1_groups

    @property
    def snapshots_size(self) -> int:
        """qemu's s->snapshots_size: end of the last entry minus the table offset (0 without
        snapshots), not rounded up."""
        return self._snapshot_table()[1]

    def _snapshot_table(self) -> tuple[list[Snapshot], int]:
        if self._snapshots is None:
            try:
                self._snapshots = _read_snapshots(self.file, self.header)
            except Qcow2Error as exc:
                raise exc.with_filename(self.filename) from None
        return self._snapshots


    # -- bitmaps and LUKS -----------------------------------------------------------------------
    def bitmaps(self) -> list[Bitmap]:
        if self._bitmaps is None:
            from .bitmaps import read_bitmap_directory  # images with bitmaps only
            ext = self.bitmaps_extension
            try:
                self._bitmaps = ([] if ext is None
                                 else read_bitmap_directory(self.file, self.header, ext))
            except Qcow2Error as exc:
                raise exc.with_filename(self.filename) from None
        return self._bitmaps


    def luks(self) -> Optional[LuksInfo]:
        ext = self.extension(L.QCOW2_EXT_MAGIC_CRYPTO_HEADER)
        if ext is None:
            return None
        from .luks import read_luks  # encrypted images only

        try:
            return read_luks(self.file, ext.data)
        except Qcow2Error as exc:
            raise exc.with_filename(self.filename) from None


def _read_snapshots(file: ImageFile, h: L.Header) -> tuple[list[Snapshot], int]:
    """qcow2_do_read_snapshots(): entries are read one by one, every size bounded; reads
    past EOF give zeros (bdrv_pread on the file)."""
    start = offset = h.snapshots_offset
    table_length = 0
    snapshots = []
    fixed = L.SNAPSHOT_HEADER_STRUCT
    window = Window(file, "snapshot table")
    for i in range(h.nb_snapshots):
        table_length = (table_length + 7) & ~7
        offset = entry_offset = (offset + 7) & ~7
        data, at = window.view(offset, fixed.size)
        header = L.SnapshotHeader._make(fixed.unpack_from(data, at))
        if header.extra_data_size > L.QCOW_MAX_SNAPSHOT_EXTRA_DATA:
            raise _err(f"too much extra metadata: {header.extra_data_size} bytes exceed "
                       f"the {L.QCOW_MAX_SNAPSHOT_EXTRA_DATA} byte limit",
                       f"snapshot table entry {i}", offset + 36, header.extra_data_size,
                       OUT_OF_BOUNDS)
        var_len = header.extra_data_size + header.id_str_size + header.name_size
        offset += fixed.size + var_len
        table_length += fixed.size + var_len
        if table_length > L.QCOW_MAX_SNAPSHOTS_SIZE or offset - start > INT_MAX:
            raise _err("snapshot table exceeds the 64 MiB maximum", "snapshot table",
                       start, table_length, OUT_OF_BOUNDS)
        snapshots.append(_snapshot(i, entry_offset, header,
                                   window.read(entry_offset + fixed.size, var_len)))
    return snapshots, (offset - start if snapshots else 0)


def _snapshot(index: int, offset: int, fixed: L.SnapshotHeader, var: bytes) -> Snapshot:
    """One snapshot table entry from its fixed part and its variable part (extra data, id,
    name)."""
    extra_size = fixed.extra_data_size
    extra = var[:extra_size]
    names = var[extra_size:]
    vm_state_size = fixed.vm_state_size
    disk_size = icount = None
    if extra_size >= L.SNAPSHOT_EXTRA_ICOUNT_END:  # the usual qemu 5+ entry: all three
        vm_state_size, disk_size, raw_icount = SNAPSHOT_EXTRA.unpack_from(extra)
        icount = None if raw_icount == -1 else raw_icount
    else:
        if extra_size >= L.SNAPSHOT_EXTRA_VM_STATE_SIZE_LARGE_END:
            vm_state_size = int.from_bytes(extra[0:8], "big")
        if extra_size >= L.SNAPSHOT_EXTRA_DISK_SIZE_END:
            disk_size = int.from_bytes(extra[8:16], "big")
    return Snapshot(
        offset, c_string_text(names[:fixed.id_str_size]),
        c_string_text(names[fixed.id_str_size:]), fixed.l1_table_offset, fixed.l1_size,
        fixed.date_sec, fixed.date_nsec, fixed.vm_clock_nsec, vm_state_size, extra_size,
        extra, disk_size, icount, index, fixed.vm_state_size,
    )


# The three fields of QCowSnapshotExtraData: vm_state_size_large, disk_size, icount.
SNAPSHOT_EXTRA = struct.Struct(">QQq")
