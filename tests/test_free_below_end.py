"""free_below_end_bytes: the clusters below the image end offset whose refcount is zero, which
qemu fills before the image grows. Images are made by qemu-img and qemu-io (discards, deleted
snapshots); the expected figure comes from what was written and discarded, and from the test's
own reading of the refcount structures (struct, independent of collectors/)."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from qcow2_monitor.collectors.report.collect import collect
from qcow2_monitor.collectors.report.metrics import image_metrics

from daemons import make_image, run

MiB = 1024 * 1024
CLUSTER = 64 * 1024


def zero_refcounts_below_end(path: Path) -> tuple[int, int]:
    """(image end offset by qemu-img check, bytes of zero-refcount clusters below it), the
    refcounts read here with struct from the header's refcount table."""
    end = int(json.loads(run(["qemu-img", "check", "--output=json", str(path)]).stdout)
              ["image-end-offset"])
    data = path.read_bytes()
    cluster_bits = struct.unpack_from(">I", data, 20)[0]
    table_offset, table_clusters = struct.unpack_from(">QI", data, 48)
    refcount_order = struct.unpack_from(">I", data, 96)[0]
    cs, bits = 1 << cluster_bits, 1 << refcount_order
    per_block = cs * 8 // bits
    table = struct.unpack_from(f">{table_clusters * cs // 8}Q", data, table_offset)
    zeros = 0
    for cluster in range(end // cs):
        block = table[cluster // per_block] & ~0x1FF & ((1 << 56) - 1)
        if not block:
            zeros += 1
            continue
        bit = (cluster % per_block) * bits
        if bits >= 8:
            raw = data[block + bit // 8: block + bit // 8 + bits // 8]
            value = int.from_bytes(raw, "big")
        else:
            value = (data[block + bit // 8] >> (bit % 8)) & ((1 << bits) - 1)
        zeros += value == 0
    return end, zeros * cs


def figures(path: Path) -> tuple[int, int]:
    (record,) = collect([str(path)]).records
    assert record.usage is not None and record.error is None
    metrics = {m.name: m.value for m in image_metrics(record)}
    assert metrics["free_below_end_bytes"] == record.usage.free_below_end
    return record.usage.image_end_offset, int(metrics["free_below_end_bytes"])


def test_discarded_clusters_below_the_end(tmp_path: Path) -> None:
    image = make_image(tmp_path / "d.qcow2", "64M",
                       write=["write -P 1 0 8M", "write -P 2 16M 2M", "discard 0 4M"])
    end, free = figures(image)
    assert (end, free) == zero_refcounts_below_end(image)
    assert free == 4 * MiB  # what was discarded: the first 4 MiB of data, 64 clusters
    # qemu fills them first: 3 MiB more written, the end offset stays, 1 MiB is left.
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 3 32M 3M", str(image)])
    assert figures(image) == (end, 1 * MiB) == zero_refcounts_below_end(image)


def test_deleted_snapshot_frees_its_clusters(tmp_path: Path) -> None:
    image = make_image(tmp_path / "s.qcow2", "64M", write=["write -P 1 0 4M"])
    run(["qemu-img", "snapshot", "-c", "s1", str(image)])
    # Overwriting after the snapshot copies the 4 MiB to new clusters (copy on write).
    run(["qemu-io", "-f", "qcow2", "-c", "write -P 2 0 4M", str(image)])
    _, before = figures(image)
    run(["qemu-img", "snapshot", "-d", "s1", str(image)])
    end, free = figures(image)
    assert (end, free) == zero_refcounts_below_end(image)
    # The snapshot's 4 MiB of old data are free now (its L1 table and the snapshot table's
    # cluster too, hence at least).
    assert free >= before + 4 * MiB


@pytest.mark.parametrize("refcount_bits", [1, 4, 16, 64])
def test_every_refcount_width(tmp_path: Path, refcount_bits: int) -> None:
    image = make_image(tmp_path / "w.qcow2", "64M", options=[f"refcount_bits={refcount_bits}"],
                       write=["write 0 3M", "write 8M 1M", "discard 1M 1M", "discard 8M 64k"])
    end, free = figures(image)
    assert (end, free) == zero_refcounts_below_end(image)
    assert free == 1 * MiB + 64 * 1024


def test_no_free_figure_when_refcounts_are_untrusted(tmp_path: Path) -> None:
    image = make_image(tmp_path / "dirty.qcow2", "16M", options=["lazy_refcounts=on"],
                       write=["write 0 1M"])
    data = bytearray(image.read_bytes())
    data[72 + 7] |= 1  # incompatible feature bit 0: dirty
    image.write_bytes(bytes(data))
    (record,) = collect([str(image)]).records
    assert record.usage is not None and record.usage.free_below_end is None
    assert "free_below_end_bytes" not in {m.name for m in image_metrics(record)}
