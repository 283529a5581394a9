"""collectors/qcow2/prealloc.py: qemu-img measure's fully-allocated size, against qemu-img
measure itself and against the fixed point worked out by hand (docs/qcow2-format.md §9)."""

from __future__ import annotations

import json
from pathlib import Path

import pytest

from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.prealloc import (
    fully_allocated_size,
    prealloc_size,
    refcount_metadata_size,
)

from corpus import LUKS_ATTEMPTS, LUKS_SECRET_ID, QEMU_IMG, _create_luks, run
from daemons import make_image
from damage import header_extensions, read_u64

KiB = 1024
MiB = 1024 * KiB
GiB = 1024 * MiB
EXT_CRYPTO = 0x0537BE77  # full disk encryption header extension


def measured(*args: str) -> int:
    """qemu-img measure's fully-allocated figure."""
    proc = run([QEMU_IMG, "measure", "--output=json", *args])
    return int(json.loads(proc.stdout)["fully-allocated"])


@pytest.mark.parametrize(("clusters", "cluster_size", "refcount_order", "expected"), [
    # 64 KiB clusters, 16-bit refcounts: 32768 refcounts per block, 8192 blocks per table
    # cluster. 100 clusters need one block and one table cluster; 102 still fit in them.
    (100, 64 * KiB, 4, 2 * 64 * KiB),
    # 32767 clusters + 1 block + 1 table cluster = 32769 > 32768: a second block, and then
    # 32770 clusters fit in two blocks: 2 blocks + 1 table cluster.
    (32767, 64 * KiB, 4, 3 * 64 * KiB),
    # 32766 clusters + 1 + 1 = 32768 fit in one block exactly.
    (32766, 64 * KiB, 4, 2 * 64 * KiB),
    # 512-byte clusters, 64-bit refcounts: 64 refcounts per block, 64 blocks per table cluster.
    # 1000 clusters: 16 blocks, 1 table cluster -> 1017 -> 16 blocks (1017 / 64 = 15.9) -> 1017.
    (1000, 512, 6, 17 * 512),
    # Nothing to count: no block, no table (the first pass already gives 0 = 0).
    (0, 512, 0, 0),
])
def test_refcount_metadata_fixed_point(clusters: int, cluster_size: int, refcount_order: int,
                                       expected: int) -> None:
    assert refcount_metadata_size(clusters, cluster_size, refcount_order) == expected


@pytest.mark.parametrize(("size", "cluster_size", "refcount_bits", "extended_l2"), [
    (1 * GiB, 64 * KiB, 16, False),
    (10 * GiB + 12345, 64 * KiB, 16, False),  # not a whole number of clusters
    (100 * MiB, 512, 1, False),
    (3 * GiB, 4 * KiB, 64, False),
    (5 * GiB, 2 * MiB, 8, False),
    (1 * GiB, 64 * KiB, 16, True),
    (7 * GiB + 512, 16 * KiB, 2, True),
    (16 * 1024 * GiB, 64 * KiB, 16, False),  # 16 TiB: several refcount table clusters
])
def test_prealloc_size_equals_qemu_img_measure(size: int, cluster_size: int, refcount_bits: int,
                                               extended_l2: bool, qemu_tools: object) -> None:
    order = refcount_bits.bit_length() - 1
    options = (f"cluster_size={cluster_size},refcount_bits={refcount_bits},"
               f"extended_l2={'on' if extended_l2 else 'off'}")
    assert prealloc_size(size, cluster_size, order, extended_l2) == measured(
        "-O", "qcow2", "-o", options, "--size", str(size))


@pytest.mark.parametrize(("cluster_size", "refcount_bits", "extended_l2"), [
    (64 * KiB, 16, False), (4 * KiB, 4, False), (32 * KiB, 32, True)])
def test_image_uses_its_own_geometry(tmp_path: Path, cluster_size: int, refcount_bits: int,
                                     extended_l2: bool, qemu_tools: object) -> None:
    path = tmp_path / "a.qcow2"
    options = (f"cluster_size={cluster_size},refcount_bits={refcount_bits},"
               f"extended_l2={'on' if extended_l2 else 'off'}")
    make_image(path, "300M", options=[options])
    with Qcow2Image.open(str(path)) as image:
        got = fully_allocated_size(image)
    assert got == measured("-f", "qcow2", "-O", "qcow2", "-o", options, str(path))


def test_luks_header_area_is_added(tmp_path: Path, qemu_tools: object) -> None:
    """qcow2_measure() adds the LUKS header area, rounded up to whole clusters, to the plain
    figure: the area's length read from the crypto header extension (docs/qcow2-format.md
    §2) by the tests' own reader. (Measuring with encrypt.format=luks would make qemu
    benchmark PBKDF2 again: seconds, and it fails now and then under load.)"""
    path = tmp_path / "luks.qcow2"
    _create_luks(path, 200 * MiB, {"encrypt.format": "luks",
                                   "encrypt.key-secret": LUKS_SECRET_ID,
                                   "encrypt.iter-time": "10", "cluster_size": "4096"},
                 attempts=LUKS_ATTEMPTS)
    (crypto,) = [e for e in header_extensions(path) if e.type == EXT_CRYPTO]
    area = read_u64(path, crypto.offset + 8 + 8)  # offset u64, then length u64
    assert area > 4096  # the key material: hundreds of clusters of 4 KiB
    with Qcow2Image.open(str(path)) as image:
        got = fully_allocated_size(image)
    plain = measured("-O", "qcow2", "-o", "cluster_size=4096", "--size", str(200 * MiB))
    assert got == plain + -(-area // 4096) * 4096
