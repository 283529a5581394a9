"""The persistent dirty bitmap directory (block/qcow2-bitmap.c), read and checked as qemu does
before it trusts an entry."""

from __future__ import annotations

from ..common.errors import INVALID, OUT_OF_BOUNDS, Qcow2Error
from ..common.record import NamedTuple
from . import layout as L
from .names import c_string_text
from .reader import ImageFile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional

    from .image import Qcow2Image


class Bitmap(NamedTuple):
    """One bitmap directory entry (a tuple: a directory can hold 65535)."""

    offset: int  # of the directory entry
    name: str
    bitmap_table_offset: int
    bitmap_table_size: int
    flags: int
    type: int
    granularity_bits: int
    extra_data_size: int

    @property
    def granularity(self) -> int:
        return 1 << self.granularity_bits

    @property
    def in_use(self) -> bool:
        return bool(self.flags & L.BME_FLAG_IN_USE)

    @property
    def auto(self) -> bool:
        return bool(self.flags & L.BME_FLAG_AUTO)

    @property
    def flag_names(self) -> list[str]:
        names = []
        if self.in_use:
            names.append("in-use")
        if self.auto:
            names.append("auto")
        return names


def _error(message: str, structure: str, offset: int, value: Optional[int] = None,
           kind: str = INVALID) -> Qcow2Error:
    return Qcow2Error(message, structure=structure, offset=offset, value=value, kind=kind)


def read_bitmap_directory(file: ImageFile, header: L.Header,
                          ext: L.BitmapsExtension) -> list[Bitmap]:
    """bitmap_list_load() + check_dir_entry() in block/qcow2-bitmap.c."""
    directory = file.read(ext.bitmap_directory_offset, ext.bitmap_directory_size,
                          "bitmap directory")
    bitmaps: list[Bitmap] = []
    pos = 0
    fixed_size = L.BITMAP_DIR_ENTRY_STRUCT.size
    # (Structure names are built only for an error: a directory can hold 65535 entries.)
    while pos < len(directory):
        where = ext.bitmap_directory_offset + pos
        if pos + fixed_size > len(directory):
            raise _error("entry runs past the end of the bitmap directory",
                         f"bitmap directory entry {len(bitmaps)}", where, kind=OUT_OF_BOUNDS)
        entry = L.BitmapDirectoryEntry.from_bytes(directory, pos)
        size = L.bitmap_dir_entry_size(entry.name_size, entry.extra_data_size)
        if pos + size > len(directory):
            raise _error("entry runs past the end of the bitmap directory",
                         f"bitmap directory entry {len(bitmaps)}", where, size, OUT_OF_BOUNDS)
        name_at = pos + fixed_size + entry.extra_data_size
        name = c_string_text(directory[name_at:name_at + entry.name_size])
        _check_entry(entry, header, len(bitmaps), where)
        bitmaps.append(Bitmap(where, name, entry.bitmap_table_offset,
                              entry.bitmap_table_size, entry.flags, entry.type,
                              entry.granularity_bits, entry.extra_data_size))
        pos += size
        if len(bitmaps) > ext.nb_bitmaps:
            break
    if len(bitmaps) != ext.nb_bitmaps:
        raise _error(f"bitmap directory holds {len(bitmaps)} entries, the extension says "
                     f"{ext.nb_bitmaps}", "bitmap directory", ext.bitmap_directory_offset,
                     len(bitmaps))
    return bitmaps


def _check_entry(entry: L.BitmapDirectoryEntry, header: L.Header, index: int,
                 where: int) -> None:
    """check_dir_entry(): every field within qemu's limits. A table too small for the virtual
    size (bdrv_getlength(): whole sectors) is refused only for a bitmap not in use: a running
    qemu resizes an image (block_resize) while its bitmaps are in use and stores the tables of
    the new size only when it closes the image."""
    cs = header.cluster_size
    phys = entry.bitmap_table_size * cs
    too_small = (not entry.flags & L.BME_FLAG_IN_USE
                 and header.size // 512 * 512 > (phys * 8) << entry.granularity_bits)
    if (entry.bitmap_table_size <= L.BME_MAX_TABLE_SIZE
            and L.BME_MIN_GRANULARITY_BITS <= entry.granularity_bits
            <= L.BME_MAX_GRANULARITY_BITS
            and not entry.flags & L.BME_RESERVED_FLAGS
            and entry.name_size <= L.BME_MAX_NAME_SIZE
            and entry.type == L.BT_DIRTY_TRACKING_BITMAP
            and phys <= L.BME_MAX_PHYS_SIZE
            and not too_small
            and not entry.bitmap_table_offset % cs and entry.bitmap_table_offset):
        return  # the usual case, checked in one pass
    problems = []
    if entry.bitmap_table_size > L.BME_MAX_TABLE_SIZE:
        problems.append(f"bitmap_table_size {entry.bitmap_table_size} too large")
    if not L.BME_MIN_GRANULARITY_BITS <= entry.granularity_bits <= L.BME_MAX_GRANULARITY_BITS:
        problems.append(f"granularity_bits {entry.granularity_bits} outside 9..31")
    if entry.flags & L.BME_RESERVED_FLAGS:
        problems.append(f"reserved flags set (0x{entry.flags:x})")
    if entry.name_size > L.BME_MAX_NAME_SIZE:
        problems.append(f"name_size {entry.name_size} too large")
    if entry.type != L.BT_DIRTY_TRACKING_BITMAP:
        problems.append(f"unknown bitmap type {entry.type}")
    if phys > L.BME_MAX_PHYS_SIZE:
        problems.append("bitmap table too large")
    elif too_small:
        problems.append("bitmap table too small for the virtual size")
    if entry.bitmap_table_offset % cs or entry.bitmap_table_offset == 0:
        problems.append(f"bitmap_table_offset 0x{entry.bitmap_table_offset:x} not a "
                        "cluster-aligned nonzero offset")
    raise _error("; ".join(problems), f"bitmap directory entry {index}", where)


def loaded_bitmaps(image: Qcow2Image) -> list[Bitmap]:
    """The image's bitmaps, refused as qemu refuses them when it opens the image (a table it
    cannot load: refuse_unloadable()); info, check and measure open it so."""
    bitmaps = image.bitmaps()
    try:
        refuse_unloadable(image.header, bitmaps)
    except Qcow2Error as exc:
        raise exc.with_filename(image.filename) from None
    return bitmaps


def refuse_unloadable(header: L.Header, bitmaps: list[Bitmap]) -> None:
    """qemu loads every bitmap not in use when it opens the image (qcow2_load_dirty_bitmaps()),
    and load_bitmap_data() fails the open (EINVAL: "Could not read bitmap '%s' from image")
    unless the table has exactly the clusters the virtual size needs at the bitmap's
    granularity, serialized in 64-bit words (hbitmap_serialization_size()). check_dir_entry()
    only refuses a table too small: one too large opens nowhere, so qemu-img info, check and
    measure exit 1 on it. The directory is read by then (read_bitmap_directory())."""
    size = header.size // 512 * 512  # bdrv_getlength(): whole sectors
    for bm in bitmaps:
        if bm.in_use:
            continue
        bits = -(-size // bm.granularity)
        words = -(-bits // 64)
        needed = -(-(words * 8) // header.cluster_size)
        if bm.bitmap_table_size != needed:
            raise _error(f"table of {bm.bitmap_table_size} clusters where the virtual size "
                         f"needs {needed} at its granularity: qemu cannot load the bitmap and "
                         "fails to open the image", f"bitmap '{bm.name}' directory entry",
                         bm.offset, bm.bitmap_table_size)
