"""measure on images whose clusters are larger than the 64 KiB of qemu-img measure's target.

qemu counts the target clusters that hold guest data (bdrv_block_status_above() in
qcow2_measure()). Once qcow2_detect_metadata_preallocation() has found more clusters in use than
the host file really holds, as with preallocation=metadata or with snapshots on large clusters,
qcow2 answers with BDRV_BLOCK_RECURSE and the block layer asks the host file too: the parts of
an allocated cluster that are holes in the file (SEEK_HOLE) read as zeros. With 1 and 2 MiB
source clusters that is a different figure from counting whole source clusters. Every case here
compares with `qemu-img measure --output=json -O qcow2` on the same file. With
preallocation=metadata the data clusters are plain holes until written, so there the data size
is also derived by hand; elsewhere which ranges of a cluster are holes depends on how the host
filesystem carried out qemu's zeroing (fallocate) and what its page cache holds, which both tools
see the same at the same moment, but a hand derivation cannot know.
"""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Optional

import pytest

from qcow2_monitor.collectors.check.measure import TARGET_CLUSTER_SIZE, measure_image
from qcow2_monitor.collectors.common.errors import Qcow2Error
from qcow2_monitor.collectors.common.jsonform import to_json
from qcow2_monitor.collectors.qcow2.image import Qcow2Image

from corpus import QEMU_IMG, QEMU_IO, run

KiB = 1024
MiB = 1024 * KiB
SIZE = 64 * MiB
TARGET = TARGET_CLUSTER_SIZE

LARGE = [1 * MiB, 2 * MiB]


def create(path: Path, options: str, size: int = SIZE, backing: Optional[Path] = None) -> Path:
    argv = [QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", options]
    if backing is not None:
        argv += ["-b", backing.name, "-F", "qcow2"]
    run([*argv, path.name, str(size)], cwd=path.parent)
    return path


def io(path: Path, *commands: str) -> None:
    argv = [QEMU_IO, "-f", "qcow2"]
    for command in commands:
        argv += ["-c", command]
    proc = run([*argv, path.name], cwd=path.parent)
    assert "failed" not in proc.stdout + proc.stderr, proc.stdout + proc.stderr


def snapshot(path: Path, name: str) -> None:
    run([QEMU_IMG, "snapshot", "-c", name, str(path)])


def qemu_measure(path: Path) -> dict[str, int]:
    # From the image's directory: qemu 7.2 resolves a relative data file name against its
    # working directory.
    proc = subprocess.run([QEMU_IMG, "measure", "--output=json", "-O", "qcow2", str(path)],
                          capture_output=True, text=True, check=False, timeout=300,
                          cwd=path.parent)
    assert proc.returncode == 0, proc.stderr
    result: dict[str, int] = json.loads(proc.stdout)
    return result


def assert_equal_to_qemu(path: Path) -> dict[str, int]:
    expected = qemu_measure(path)
    with Qcow2Image.open(str(path)) as image:
        assert to_json(measure_image(image, path=str(path))) == expected, path.name
    return expected


def data_bytes(measured: dict[str, int], size: int = SIZE) -> int:
    """The data part of `required`: required = (fully-allocated - virtual size) + data."""
    virtual = -(-size // TARGET) * TARGET
    return measured["required"] - (measured["fully-allocated"] - virtual)


@pytest.mark.parametrize("cluster_size", LARGE)
@pytest.mark.parametrize("compat", ["0.10", "1.1"])
def test_preallocation_metadata_counts_written_bytes_only(tmp_path: Path, cluster_size: int,
                                                          compat: str) -> None:
    path = create(tmp_path / "meta.qcow2",
                  f"compat={compat},cluster_size={cluster_size},preallocation=metadata")
    assert data_bytes(assert_equal_to_qemu(path)) == 0  # every data cluster is a hole
    io(path, "write -P 1 5M 64k",          # exactly target cluster 80
       f"write -P 2 {9 * MiB + 1000} 3000",  # one file block inside target cluster 144
       "discard 16M 2M")
    measured = assert_equal_to_qemu(path)
    # Counting whole source clusters would give two of them; the file holds two target
    # clusters' worth of data (on a filesystem whose blocks are at most 64 KiB, as ext4's).
    assert data_bytes(measured) == 2 * TARGET


@pytest.mark.parametrize("cluster_size", LARGE)
@pytest.mark.parametrize("compat", ["0.10", "1.1"])
def test_zero_written_range_inside_allocated_cluster(tmp_path: Path, cluster_size: int,
                                                     compat: str) -> None:
    path = create(tmp_path / "zero.qcow2",
                  f"compat={compat},cluster_size={cluster_size},preallocation=metadata")
    io(path, "write -P 1 4M 64k", "write -z 6M 1M", "write -z -u 12M 512k", "write -P 3 20M 100k")
    assert_equal_to_qemu(path)


@pytest.mark.parametrize("cluster_size", LARGE)
def test_snapshots_make_qemu_descend_into_the_file(tmp_path: Path, cluster_size: int) -> None:
    """No preallocation: two snapshots' mostly empty L1 clusters are usually enough for qemu
    to take the image as metadata-preallocated and look at the host file's holes."""
    path = create(tmp_path / "snap.qcow2", f"cluster_size={cluster_size}")
    io(path, "write -P 1 8M 100k", "write -P 2 12M 300k")
    snapshot(path, "one")
    snapshot(path, "two")
    io(path, "write -z 13M 256k", "discard 12M 2M")
    assert_equal_to_qemu(path)


@pytest.mark.parametrize("cluster_size", LARGE)
def test_v2_zero_write_after_snapshot(tmp_path: Path, cluster_size: int) -> None:
    path = create(tmp_path / "v2.qcow2", f"compat=0.10,cluster_size={cluster_size}")
    io(path, "write -P 1 0 4M")
    snapshot(path, "a")
    io(path, "write -z 1M 1M")
    snapshot(path, "b")
    io(path, "write -P 2 8M 100k")
    # A whole 1 MiB cluster zero-written is left unallocated by v2 (no zero flag, no backing
    # file); inside a 2 MiB cluster the zero write is a copy-on-write writing zeros as data.
    assert_equal_to_qemu(path)


@pytest.mark.parametrize("cluster_size", LARGE)
def test_discards(tmp_path: Path, cluster_size: int) -> None:
    path = create(tmp_path / "discard.qcow2", f"cluster_size={cluster_size}")
    io(path, "write -P 1 0 8M", "discard 2M 2M", "discard 5M 512k", "write -P 2 20M 100k",
       "write -P 3 30M 1M")
    assert_equal_to_qemu(path)


@pytest.mark.parametrize("cluster_size", LARGE)
@pytest.mark.parametrize("prealloc", ["falloc", "full"])
def test_preallocation_falloc_and_full(tmp_path: Path, cluster_size: int, prealloc: str) -> None:
    path = create(tmp_path / f"{prealloc}.qcow2",
                  f"cluster_size={cluster_size},preallocation={prealloc}", size=16 * MiB)
    io(path, "write -P 1 0 1M", "write -z 5M 1M", "discard 8M 2M")
    assert_equal_to_qemu(path)


def test_extended_l2_large_clusters(tmp_path: Path) -> None:
    path = create(tmp_path / "ext.qcow2",
                  "cluster_size=2M,extended_l2=on,preallocation=metadata")
    io(path, "write -P 1 8M 100k", "write -z 10M 64k", "discard 12M 2M")
    assert_equal_to_qemu(path)


@pytest.mark.parametrize("raw", ["off", "on"])
def test_external_data_file(tmp_path: Path, raw: str) -> None:
    """The descent goes into the external data file, where the data clusters are. Mostly empty
    bitmap clusters make qemu take the image as metadata-preallocated."""
    path = create(tmp_path / "df.qcow2",
                  f"cluster_size=2M,data_file=df.raw,data_file_raw={raw}")
    io(path, "write -P 1 8M 100k", "write -P 2 20M 1M")
    for name in ("b1", "b2", "b3", "b4"):
        run([QEMU_IMG, "bitmap", "--add", path.name, name], cwd=tmp_path)
    io(path, "write -P 3 30M 100k")
    measured = assert_equal_to_qemu(path)
    # 100 KiB, 1 MiB, 100 KiB: 2 + 16 + 2 target clusters. data_file_raw maps every cluster
    # (guest offset = data file offset), and creating the data file wrote its first 4 KiB
    # (file-posix allocate_first_block()): one more.
    first_block = 1 if raw == "on" else 0
    assert data_bytes(measured) == (2 + 16 + 2 + first_block) * TARGET
    (tmp_path / "df.raw").unlink()
    with Qcow2Image.open(str(path)) as image, pytest.raises(Qcow2Error) as failure:
        measure_image(image, path=str(path))
    assert str(tmp_path / "df.raw") in str(failure.value)


def test_chain_of_large_cluster_layers(tmp_path: Path) -> None:
    base = create(tmp_path / "base.qcow2", "cluster_size=2M,preallocation=metadata")
    io(base, "write -P 1 1M 64k", "write -P 2 40M 4k")
    mid = create(tmp_path / "mid.qcow2", "compat=0.10,cluster_size=1M", backing=base)
    io(mid, "write -P 3 6M 100k")
    snapshot(mid, "s1")
    snapshot(mid, "s2")
    io(mid, "write -P 4 6M 4k")
    top = create(tmp_path / "top.qcow2", "cluster_size=64k", backing=mid)
    io(top, "write -P 5 33M 64k", "write -z 40M 64k")
    assert data_bytes(assert_equal_to_qemu(base)) == 2 * TARGET
    assert_equal_to_qemu(mid)
    assert_equal_to_qemu(top)


def test_descend_into_file_splits_at_extent_boundaries() -> None:
    """Hand-made map: three 2 MiB data clusters at guest 0, 2M, 4M stored at host 10M, 20M,
    30M; the middle one is not a plain data cluster (compressed, say). The file has data at
    [10M + 64k, 10M + 128k) and [30M - 4k, 30M + 4k)."""
    import numpy as np

    from qcow2_monitor.collectors.check.measure import (
        STATUS_DATA,
        STATUS_ZERO,
        _descend_into_file,
        _extent_bounds,
    )

    starts = np.array([0, 2 * MiB, 4 * MiB], dtype=np.int64)
    codes = np.array([STATUS_DATA] * 3, dtype=np.int8)
    hosts = np.array([10 * MiB, 20 * MiB, 30 * MiB], dtype=np.int64)
    normal = np.array([True, False, True])
    bounds = _extent_bounds([(10 * MiB + 64 * KiB, 10 * MiB + 128 * KiB),
                             (30 * MiB - 4 * KiB, 30 * MiB + 4 * KiB)])
    got_starts, got_codes = _descend_into_file(starts, codes, hosts, normal, 2 * MiB, bounds)
    assert got_starts.tolist() == [0, 64 * KiB, 128 * KiB, 2 * MiB, 4 * MiB, 4 * MiB + 4 * KiB]
    assert got_codes.tolist() == [STATUS_ZERO, STATUS_DATA, STATUS_ZERO, STATUS_DATA,
                                  STATUS_DATA, STATUS_ZERO]
