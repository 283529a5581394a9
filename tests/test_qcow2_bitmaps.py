"""collectors/qcow2/bitmaps.py: the persistent bitmap directory read as qemu-img info shows it,
and every entry qemu would refuse (check_dir_entry() in block/qcow2-bitmap.c) refused with the
entry and its offset named."""

from __future__ import annotations

import json
from pathlib import Path
from typing import Callable

import pytest

from qcow2_monitor.collectors.common.errors import (
    INVALID,
    OUT_OF_BOUNDS,
    TRUNCATED,
    Qcow2Error,
)
from qcow2_monitor.collectors.qcow2.bitmaps import Bitmap, loaded_bitmaps, read_bitmap_directory
from qcow2_monitor.collectors.qcow2.image import Qcow2Image

from corpus import QEMU_IMG, QEMU_IO, run
from daemons import make_image
from damage import (
    EXT_BITMAPS,
    bitmaps_extension,
    copy_image,
    header_extensions,
    patch_u8,
    patch_u16,
    patch_u32,
    patch_u64,
    read_u64,
)

CLUSTER = 65536
GiB = 1 << 30
# A bitmap directory entry (docs/qcow2-format.md §5): u64 table offset, u32 table size,
# u32 flags, u8 type, u8 granularity bits, u16 name size, u32 extra data size, then the
# extra data and the name, padded to 8 bytes.
AT_TABLE_OFFSET, AT_TABLE_SIZE, AT_FLAGS, AT_TYPE, AT_GRANULARITY, AT_NAME_SIZE = (
    0, 8, 12, 16, 17, 18)
FIXED = 24


def entry_size(name: str) -> int:
    return -(-(FIXED + len(name)) // 8) * 8


@pytest.fixture(scope="module")
def with_bitmaps(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """1 GiB, two bitmaps: b0 (64 KiB granularity, enabled: the auto flag), b1 (512 bytes,
    disabled)."""
    path = tmp_path_factory.mktemp("bitmaps") / "b.qcow2"
    make_image(path, "1G", options=[f"cluster_size={CLUSTER}"])
    run([QEMU_IMG, "bitmap", "--add", "-g", "65536", str(path), "b0"])
    run([QEMU_IMG, "bitmap", "--add", "-g", "512", "--disable", str(path), "b1"])
    return path


def read_directory(path: Path) -> list[Bitmap]:
    with Qcow2Image.open(str(path)) as image:
        ext = image.bitmaps_extension
        assert ext is not None
        return read_bitmap_directory(image.file, image.header, ext)


def qemu_bitmaps(path: Path) -> list[dict[str, object]]:
    info = json.loads(run([QEMU_IMG, "info", "--output=json", "-U", str(path)]).stdout)
    return list(info["format-specific"]["data"]["bitmaps"])


def test_directory_as_qemu_img_info_shows_it(with_bitmaps: Path, qemu_tools: object) -> None:
    bitmaps = read_directory(with_bitmaps)
    shown = [{"name": b.name, "granularity": b.granularity, "flags": b.flag_names}
             for b in bitmaps]
    assert shown == qemu_bitmaps(with_bitmaps)
    ext = bitmaps_extension(with_bitmaps)
    assert ext is not None and ext.nb_bitmaps == 2
    assert ext.directory_size == entry_size("b0") + entry_size("b1")
    assert [b.offset for b in bitmaps] == [ext.directory_offset,
                                           ext.directory_offset + entry_size("b0")]
    # A 1 GiB image: 2**14 bits of 64 KiB (2 KiB: one cluster of table), 2**21 bits of 512
    # bytes (256 KiB: four 64 KiB clusters, one table entry each).
    assert [b.bitmap_table_size for b in bitmaps] == [1, 4]
    assert [b.granularity_bits for b in bitmaps] == [16, 9]
    assert [b.bitmap_table_offset for b in bitmaps] == [
        read_u64(with_bitmaps, b.offset + AT_TABLE_OFFSET) for b in bitmaps]
    assert all(b.bitmap_table_offset % CLUSTER == 0 for b in bitmaps)
    assert [(b.type, b.extra_data_size, b.auto, b.in_use) for b in bitmaps] == [
        (1, 0, True, False), (1, 0, False, False)]


def test_in_use_flag_of_a_killed_writer(with_bitmaps: Path, tmp_path: Path,
                                        qemu_tools: object) -> None:
    """qemu marks its bitmaps in use (the disabled one too) while it holds the image for
    writing; killed, it leaves the flags set."""
    path = copy_image(with_bitmaps, tmp_path / "killed.qcow2")
    run([QEMU_IO, "-f", "qcow2", "-c", "write -P 0x22 0 64k", "-c", "sigraise 9", str(path)],
        allowed_returncodes=(-9,))
    bitmaps = read_directory(path)
    assert [b["flags"] for b in qemu_bitmaps(path)] == [["in-use", "auto"], ["in-use"]]
    assert [b.flag_names for b in bitmaps] == [["in-use", "auto"], ["in-use"]]
    assert [(b.in_use, b.auto) for b in bitmaps] == [(True, True), (True, False)]


Patch = Callable[[Path, int], None]  # (image, offset of the first entry)


@pytest.mark.parametrize(("patch", "problem"), [
    (lambda p, at: patch_u8(p, at + AT_GRANULARITY, 40), "granularity_bits 40 outside 9..31"),
    (lambda p, at: patch_u8(p, at + AT_GRANULARITY, 8), "granularity_bits 8 outside 9..31"),
    (lambda p, at: patch_u32(p, at + AT_FLAGS, 2 | 1 << 3), "reserved flags set (0xa)"),
    (lambda p, at: patch_u8(p, at + AT_TYPE, 2), "unknown bitmap type 2"),
    (lambda p, at: patch_u32(p, at + AT_TABLE_SIZE, 0x8000001),
     "bitmap_table_size 134217729 too large"),
    # 0 table clusters hold no bit of the 1 GiB.
    (lambda p, at: patch_u32(p, at + AT_TABLE_SIZE, 0), "too small for the virtual size"),
    (lambda p, at: patch_u64(p, at + AT_TABLE_OFFSET, read_u64(p, at) + 512),
     "not a cluster-aligned nonzero offset"),
    (lambda p, at: patch_u64(p, at + AT_TABLE_OFFSET, 0),
     "bitmap_table_offset 0x0 not a cluster-aligned nonzero offset"),
], ids=["granularity-40", "granularity-8", "reserved-flag", "type", "table-size-huge",
        "table-size-0", "table-unaligned", "table-0"])
def test_entry_qemu_refuses(with_bitmaps: Path, tmp_path: Path, patch: Patch,
                            problem: str) -> None:
    path = copy_image(with_bitmaps, tmp_path / "bad.qcow2")
    ext = bitmaps_extension(path)
    assert ext is not None
    patch(path, ext.directory_offset)
    with pytest.raises(Qcow2Error) as info:
        read_directory(path)
    error = info.value
    assert (error.structure, error.offset, error.kind) == (
        "bitmap directory entry 0", ext.directory_offset, INVALID)
    assert problem in error.message
    # Through the image, the error names the file too.
    with Qcow2Image.open(str(path)) as image, pytest.raises(Qcow2Error) as info:
        image.bitmaps()
    assert str(info.value).startswith(
        f"{path}: bitmap directory entry 0 at offset 0x{ext.directory_offset:x}: ")


def _extension_field(path: Path, at: int) -> int:
    """File offset of a field of the bitmaps extension's data (count u32, reserved u32,
    directory size u64, directory offset u64)."""
    (ext,) = [e for e in header_extensions(path) if e.type == EXT_BITMAPS]
    return ext.offset + 8 + at


@pytest.mark.parametrize("claimed", [1, 3])
def test_count_differs_from_the_extension(with_bitmaps: Path, tmp_path: Path,
                                          claimed: int) -> None:
    path = copy_image(with_bitmaps, tmp_path / "count.qcow2")
    patch_u32(path, _extension_field(path, 0), claimed)
    ext = bitmaps_extension(path)
    assert ext is not None
    with pytest.raises(Qcow2Error) as info:
        read_directory(path)
    assert (info.value.structure, info.value.offset) == ("bitmap directory",
                                                        ext.directory_offset)
    assert f"holds 2 entries, the extension says {claimed}" in info.value.message


def test_entry_past_the_directory_end(with_bitmaps: Path, tmp_path: Path) -> None:
    """A directory 8 bytes into its second entry: that entry's fixed part does not fit."""
    path = copy_image(with_bitmaps, tmp_path / "short.qcow2")
    patch_u64(path, _extension_field(path, 8), entry_size("b0") + 8)
    ext = bitmaps_extension(path)
    assert ext is not None
    with pytest.raises(Qcow2Error) as info:
        read_directory(path)
    assert (info.value.structure, info.value.offset, info.value.kind) == (
        "bitmap directory entry 1", ext.directory_offset + entry_size("b0"), OUT_OF_BOUNDS)


def test_name_past_the_directory_end(with_bitmaps: Path, tmp_path: Path) -> None:
    """A name size reaching past the directory: the entry's whole size is the value."""
    path = copy_image(with_bitmaps, tmp_path / "name.qcow2")
    ext = bitmaps_extension(path)
    assert ext is not None
    patch_u16(path, ext.directory_offset + AT_NAME_SIZE, 100)
    with pytest.raises(Qcow2Error) as info:
        read_directory(path)
    assert (info.value.structure, info.value.offset, info.value.kind, info.value.value) == (
        "bitmap directory entry 0", ext.directory_offset, OUT_OF_BOUNDS, 24 + 104)


def test_directory_past_eof(with_bitmaps: Path, tmp_path: Path) -> None:
    path = copy_image(with_bitmaps, tmp_path / "eof.qcow2")
    beyond = -(-path.stat().st_size // CLUSTER) * CLUSTER + 4 * CLUSTER
    patch_u64(path, _extension_field(path, 16), beyond)
    with pytest.raises(Qcow2Error) as info:
        read_directory(path)
    assert (info.value.structure, info.value.offset, info.value.kind, info.value.filename) == (
        "bitmap directory", beyond, TRUNCATED, str(path))


def test_table_too_small_only_refused_when_not_in_use(with_bitmaps: Path,
                                                       tmp_path: Path) -> None:
    """check_dir_entry() refuses a table too small for the virtual size only for a bitmap not
    in use: a running qemu resized by block_resize keeps its in-use bitmaps' old tables on
    disk until it closes the image, and qemu-img info -U and check read such an image."""
    path = copy_image(with_bitmaps, tmp_path / "resized.qcow2")
    ext = bitmaps_extension(path)
    assert ext is not None
    b1 = ext.directory_offset + entry_size("b0")
    patch_u32(path, b1 + AT_TABLE_SIZE, 1)  # b1 needs 4 clusters of table for the 1 GiB
    refused = run([QEMU_IMG, "info", "--output=json", "-U", str(path)], allowed_returncodes=(1,))
    assert "doesn't satisfy the constraints" in refused.stderr
    with pytest.raises(Qcow2Error, match="too small for the virtual size"):
        read_directory(path)
    patch_u32(path, b1 + AT_FLAGS, 1)  # in use (and disabled: no auto flag)
    assert [b["flags"] for b in qemu_bitmaps(path)] == [["auto"], ["in-use"]]
    assert run([QEMU_IMG, "check", "-U", str(path)]).returncode == 0
    assert [(b.name, b.bitmap_table_size, b.in_use) for b in read_directory(path)] == [
        ("b0", 1, False), ("b1", 1, True)]


def test_table_qemu_cannot_load_fails_info_check_and_measure(with_bitmaps: Path,
                                                            tmp_path: Path) -> None:
    """A table larger than the virtual size needs passes check_dir_entry(), but qemu loads
    each bitmap not in use when it opens the image and load_bitmap_data() fails the open."""
    from qcow2_monitor.collectors.check.checker import check_image
    from qcow2_monitor.collectors.check.measure import measure_image
    from qcow2_monitor.collectors.qcow2.info import image_info

    path = copy_image(with_bitmaps, tmp_path / "large.qcow2")
    ext = bitmaps_extension(path)
    assert ext is not None
    patch_u32(path, ext.directory_offset + AT_TABLE_SIZE, 2)  # b0 needs 1 cluster
    for command in (["info", "-U"], ["check"], ["measure", "-O", "qcow2"]):
        qemu = run([QEMU_IMG, *command, str(path)], allowed_returncodes=(1,))
        assert "Could not read bitmap 'b0' from image: Invalid argument" in qemu.stderr
    with Qcow2Image.open(str(path)) as image:
        assert [b.bitmap_table_size for b in image.bitmaps()] == [2, 4]  # the directory is valid
        for view in (image_info, measure_image):
            with pytest.raises(Qcow2Error, match="qemu cannot load the bitmap") as info:
                view(image)
            assert (info.value.structure, info.value.offset) == (
                "bitmap 'b0' directory entry", ext.directory_offset)
    with pytest.raises(Qcow2Error, match="qemu cannot load the bitmap"):
        check_image(str(path))
    # In use, qemu does not load it: the same table opens.
    patch_u32(path, ext.directory_offset + AT_FLAGS, 1 | 2)
    run([QEMU_IMG, "info", "-U", str(path)])
    with Qcow2Image.open(str(path)) as image:
        assert [b.name for b in loaded_bitmaps(image)] == ["b0", "b1"]
