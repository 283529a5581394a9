"""measure_image() against `qemu-img measure --output=json -O qcow2` over the corpus, chains
(qcow2 and raw backing layers) included."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path
from typing import Any

import pytest

from qcow2_monitor.collectors.check.measure import measure_image, prealloc_size
from qcow2_monitor.collectors.common.errors import Qcow2Error
from qcow2_monitor.collectors.common.jsonform import to_json_object
from qcow2_monitor.collectors.qcow2.image import Qcow2Image

import damage
from corpus import QEMU_IMG, QEMU_IO, CorpusImage, run


def qemu_measure(args: list[str]) -> dict:
    proc = subprocess.run([QEMU_IMG, "measure", "--output=json", "-O", "qcow2", *args],
                          capture_output=True, text=True, check=False, timeout=300)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def ours(path: Path) -> dict:
    with Qcow2Image.open(str(path)) as image:
        return to_json_object(measure_image(image, path=str(path)))


def test_measure_corpus(corpus: list[CorpusImage]) -> None:
    checked = 0
    for img in corpus:
        if img.has("backing-missing"):
            continue  # qemu-img measure cannot open the chain
        if img.has("data-file"):
            continue  # qemu-img measure needs the external data file opened with the image
        assert ours(img.path) == qemu_measure(img.qemu_args), img.name
        checked += 1
    assert checked > 30


def test_measure_raw_backing_holes(tmp_path: Path) -> None:
    base = tmp_path / "base.raw"
    with open(base, "wb") as handle:
        handle.truncate(8 << 20)
        handle.seek(5 << 16)
        handle.write(b"\x01" * (2 << 16))
    top = tmp_path / "top.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "raw", str(top), "16M"])
    run([QEMU_IO, "-c", "write -P 3 12M 100k", str(top)])
    assert ours(top) == qemu_measure([str(top)])


def test_measure_zero_and_discard(tmp_path: Path) -> None:
    path = tmp_path / "z.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "cluster_size=4096", str(path), "32M"])
    run([QEMU_IO, "-c", "write -P 1 0 1M", "-c", "write -z 64k 128k", "-c", "discard 512k 4k",
         "-c", "write -P 2 30M 3k", str(path)])
    assert ours(path) == qemu_measure([str(path)])


def test_prealloc_size_formula() -> None:
    assert prealloc_size(16 << 20, 65536, 4, False) == 16 * 2**20 + 327680


# -- where qemu-img measure fails: qcow2_get_host_offset() refuses an entry as corrupt ---------

def _qemu_measure_run(path: Path) -> subprocess.CompletedProcess[str]:
    return subprocess.run([QEMU_IMG, "measure", "--output=json", "-O", "qcow2", str(path)],
                          capture_output=True, text=True, check=False, timeout=300)


def _image(path: Path, options: str, size: str, *writes: str) -> list[damage.L2Entry]:
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", options, str(path), size])
    for write in writes:
        run([QEMU_IO, "-f", "qcow2", "-c", write, str(path)])
    return [e for e in damage.active_l2_entries(path) if e.entry or e.bitmap]


def _zero_flag_v2(path: Path) -> None:
    first = _image(path, "compat=0.10", "16M", "write -P 1 0 128k")[0]
    damage.patch_u64(path, first.file_offset, first.entry | damage.OFLAG_ZERO)


def _unaligned_offset(path: Path) -> None:
    first = _image(path, "cluster_size=4096", "16M", "write -P 1 64k 8k")[0]
    damage.patch_u64(path, first.file_offset, first.entry + 512)


def _alloc_and_zero_subcluster(path: Path) -> None:
    first = _image(path, "extended_l2=on", "16M", "write -P 1 0 64k")[0]
    damage.patch_u64(path, first.file_offset + 8, (first.bitmap or 0) | (1 << 32))


def _unaligned_l2_table(path: Path) -> None:
    _image(path, "cluster_size=65536", "16M", "write -P 1 0 64k")
    l1_offset = damage.read_header(path)["l1_table_offset"]
    damage.patch_u64(path, l1_offset, damage.read_u64(path, l1_offset) + 512)


@pytest.mark.parametrize("make, structure", [
    (_zero_flag_v2, "L2 table at 0x"), (_unaligned_offset, "L2 table at 0x"),
    (_alloc_and_zero_subcluster, "L2 table at 0x"), (_unaligned_l2_table, "active L1 table"),
], ids=["zero-flag-v2", "unaligned-offset", "alloc-and-zero", "unaligned-l2-table"])
def test_measure_fails_where_qemu_block_status_refuses(tmp_path: Path, make: Any,
                                                       structure: str) -> None:
    path = tmp_path / "img.qcow2"
    make(path)
    qemu = _qemu_measure_run(path)
    assert qemu.returncode == 1 and "Unable to get block status" in qemu.stderr, qemu.stderr
    with pytest.raises(Qcow2Error) as caught:
        ours(path)
    assert caught.value.structure.startswith(structure), str(caught.value)
    assert "qemu-img measure fails" in str(caught.value)


def test_measure_skips_refused_entries_qemu_never_asks_about(tmp_path: Path) -> None:
    """After data qcow2_measure() jumps to the next 64 KiB target cluster: an entry it jumps
    over, or one under data of the layer above, is never asked about and measure succeeds."""
    single = tmp_path / "single.qcow2"
    second = _image(single, "cluster_size=4096", "16M", "write -P 1 0 8k")[1]
    damage.patch_u64(single, second.file_offset, second.entry + 512)
    base = tmp_path / "base.qcow2"
    first = _image(base, "cluster_size=65536", "16M", "write -P 1 0 128k")[0]
    damage.patch_u64(base, first.file_offset, first.entry + 512)
    for name, options, write in [("covered", "cluster_size=65536", "write -P 2 0 64k"),
                                 ("half", "cluster_size=4096", "write -P 2 0 60k")]:
        top = tmp_path / f"{name}.qcow2"
        run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", "-o",
             options, str(top)])
        run([QEMU_IO, "-f", "qcow2", "-c", write, str(top)])
        assert ours(top) == qemu_measure([str(top)]), name
    assert ours(single) == qemu_measure([str(single)])
    open_top = tmp_path / "open.qcow2"  # the refused base entry shows through: both fail
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(open_top)])
    assert _qemu_measure_run(open_top).returncode == 1
    with pytest.raises(Qcow2Error, match="qemu-img measure fails"):
        ours(open_top)


def test_measure_fails_on_a_snapshot_table_qemu_cannot_read(tmp_path: Path) -> None:
    """qemu-img measure opens every layer, reading its snapshot table (qcow2_read_snapshots())."""
    base = tmp_path / "base.qcow2"
    _image(base, "cluster_size=65536", "16M", "write -P 1 0 64k")
    run([QEMU_IMG, "snapshot", "-c", "s1", str(base)])
    top = tmp_path / "top.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", str(base), "-F", "qcow2", str(top)])
    assert ours(top) == qemu_measure([str(top)])
    entry = damage.snapshot_entry_offsets(base)[0]
    damage.patch_u32(base, entry + damage.SNAPSHOT_EXTRA_DATA_SIZE_AT, 1025)
    for path in (base, top):
        qemu = _qemu_measure_run(path)
        assert qemu.returncode == 1 and "Too much extra metadata" in qemu.stderr, qemu.stderr
        with pytest.raises(Qcow2Error, match="extra metadata"):
            ours(path)
