"""measure_image() against `qemu-img measure --output=json -O qcow2` over the corpus, chains
(qcow2 and raw backing layers) included."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

from qcow2_monitor.collectors.check.measure import measure_image, prealloc_size
from qcow2_monitor.collectors.common.jsonform import to_json_object
from qcow2_monitor.collectors.qcow2.image import Qcow2Image

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
