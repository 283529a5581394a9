"""collectors/qcow2/steady.py: a read is kept only when cluster 0 held still while it was made
(docs/qcow2-format.md §11); otherwise it is made again, a bounded number of times."""

from __future__ import annotations

from pathlib import Path
from typing import Callable

import pytest

from qcow2_monitor.collectors.common.errors import IO_ERROR, Qcow2Error
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.steady import (
    STEADY_READS,
    moving_header,
    read_held_still,
    read_steadily,
)

from corpus import QEMU_IMG, run
from daemons import make_image
from damage import OFF_MAGIC, patch_bytes, patch_u8, read_header

CLUSTER = 65536
# A byte of cluster 0 past the header and its extensions (they end a few hundred bytes in),
# read by nobody, inside the first 4 KiB the image compares: a change there is a change of
# the header area, as when qemu rewrites it to move a table.
UNUSED_BYTE = 4095


@pytest.fixture
def image_path(tmp_path: Path, qemu_tools: object) -> Path:
    path = tmp_path / "a.qcow2"
    make_image(path, "1G", options=[f"cluster_size={CLUSTER}"])
    return path


def rewriting(path: Path, times: int, result: Callable[[Qcow2Image], int]
              ) -> tuple[Callable[[Qcow2Image], int], list[Qcow2Image]]:
    """A read that changes cluster 0 during its first `times` calls, as a qemu moving a table
    would; it records the images it was given."""
    given: list[Qcow2Image] = []

    def read(image: Qcow2Image) -> int:
        given.append(image)
        if len(given) <= times:
            patch_u8(path, UNUSED_BYTE, len(given))
        return result(image)

    return read, given


def test_still_header_is_read_once_on_a_fresh_parse(image_path: Path) -> None:
    read, given = rewriting(image_path, 0, lambda image: image.header.size)
    with Qcow2Image.open(str(image_path)) as image:
        assert read_held_still(image, read, 3) == (1 << 30, 1)
        assert given[0] is not image  # parsed afresh from the open file
        assert given[0].file.fd == -1  # and closed after the read
        assert read_steadily(image, read) == 1 << 30


@pytest.mark.parametrize("moves", [1, 2, STEADY_READS - 1])
def test_read_made_again_while_the_header_moves(image_path: Path, moves: int) -> None:
    read, given = rewriting(image_path, moves, lambda image: image.header.size)
    with Qcow2Image.open(str(image_path)) as image:
        assert read_held_still(image, read, STEADY_READS) == (1 << 30, moves + 1)
    assert len(given) == moves + 1


def test_header_never_still_gives_up(image_path: Path) -> None:
    read, given = rewriting(image_path, 100, lambda image: image.header.size)
    with Qcow2Image.open(str(image_path)) as image:
        assert read_held_still(image, read, 4) == (None, 4)
        assert len(given) == 4
        with pytest.raises(Qcow2Error) as info:
            read_steadily(image, read)
    assert len(given) == 4 + STEADY_READS
    error = info.value
    assert (error.kind, error.structure, error.offset) == (IO_ERROR, "header", 0)
    assert error.filename == str(image_path)
    assert f"during each of {STEADY_READS} reads" in str(error)
    assert str(error).startswith(f"{image_path}: header at offset 0x0: ")


def test_moving_header_error_names_the_image(image_path: Path) -> None:
    with Qcow2Image.open(str(image_path)) as image:
        error = moving_header(image, 7)
    assert isinstance(error, Qcow2Error)
    assert (error.filename, error.structure, error.offset, error.kind) == (
        str(image_path), "header", 0, IO_ERROR)
    assert "7 reads" in error.message


def test_error_from_a_stale_table_is_read_again(image_path: Path) -> None:
    """An error raised while the header moved came from a table qemu had moved: made again."""
    calls: list[int] = []

    def read(image: Qcow2Image) -> int:
        calls.append(1)
        if len(calls) == 1:
            patch_u8(image_path, UNUSED_BYTE, 0x55)
            raise Qcow2Error("garbage in a freed table", structure="L2 table", offset=0x50000)
        return image.header.l1_size

    with Qcow2Image.open(str(image_path)) as image:
        # 1 GiB of 64 KiB clusters: 8192 entries of an L2 table map 512 MiB, so 2 L1 entries.
        assert read_held_still(image, read, 3) == (2, 2)


def test_error_with_a_still_header_is_raised(image_path: Path) -> None:
    damage = Qcow2Error("bad entry", structure="L2 table", offset=0x50000)

    def read(_image: Qcow2Image) -> int:
        raise damage

    with Qcow2Image.open(str(image_path)) as image, pytest.raises(Qcow2Error) as info:
        read_held_still(image, read, 3)
    assert info.value is damage


def test_header_unreadable_on_every_reparse(image_path: Path) -> None:
    """The image was opened, then cluster 0 stopped parsing (qemu in the middle of writing
    it): each attempt is counted and the read itself never made."""
    calls: list[int] = []
    with Qcow2Image.open(str(image_path)) as image:
        patch_bytes(image_path, OFF_MAGIC, b"XXXX")
        assert read_held_still(image, lambda _i: calls.append(1), 3) == (None, 3)
        with pytest.raises(Qcow2Error) as info:
            read_steadily(image, lambda _i: calls.append(1))
    assert calls == []
    assert (info.value.structure, info.value.offset) == ("header", 0)


def test_l1_table_moved_by_qemu(image_path: Path) -> None:
    """qemu-img resize grows the L1 table: it writes a larger one elsewhere and then the
    header. A read made across the move is made again and gives the new table's size."""
    grown: list[bool] = []

    def read(image: Qcow2Image) -> tuple[int, int]:
        if not grown:
            grown.append(True)
            run([QEMU_IMG, "resize", "-q", "-f", "qcow2", str(image_path), "100G"])
        return image.header.l1_size, image.header.l1_table_offset

    with Qcow2Image.open(str(image_path)) as image:
        before = image.header.l1_table_offset
        found, made = read_held_still(image, read, 3)
    after = read_header(image_path)
    assert made == 2
    # 100 GiB / 512 MiB per L1 entry = 200 entries, in the table the header names now.
    assert found == (200, after["l1_table_offset"]) and after["l1_size"] == 200
    assert after["l1_table_offset"] != before
