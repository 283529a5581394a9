"""`qcow2-analyze map`: the picture of where the clusters lie, and its runs in JSON, on images
made by qemu-img/qemu-io (discards, a compressed cluster, a deleted snapshot, a leaked cluster
patched in), compared with qemu-img check's figures and the test's own refcount reading."""

from __future__ import annotations

import io
import json
import os
import struct
import subprocess
from pathlib import Path
from typing import Any

from test_free_below_end import zero_refcounts_below_end

from qcow2_monitor.analyze.main import main as analyze_main

from daemons import make_image, run

MiB = 1024 * 1024
CLUSTER = 64 * 1024


def analyze(*args: str) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = analyze_main(list(args), out, err)
    return code, out.getvalue(), err.getvalue()


def qemu_check(path: Path) -> dict[str, Any]:
    proc = subprocess.run(["qemu-img", "check", "--output=json", str(path)],
                          capture_output=True, text=True, timeout=120, check=False)
    assert proc.returncode in (0, 3), proc.stderr  # 3: leaks only
    return dict(json.loads(proc.stdout))


def mapped(path: Path) -> dict[str, Any]:
    code, out, err = analyze("map", "--output", "json", str(path))
    assert code == 0, err
    return dict(json.loads(out))


def test_runs_and_totals_agree_with_qemu(tmp_path: Path) -> None:
    image = make_image(tmp_path / "m.qcow2", "256M", write=[
        "write 0 32M", "write -c 40M 64k", "write 64M 16M", "discard 4M 12M"])
    document = mapped(image)
    qemu = qemu_check(image)
    totals = document["totals"]
    assert document["end_offset"] == qemu["image-end-offset"] == document["container_end"]
    assert document["container_end"] == image.stat().st_size
    # The runs tile the file, in order, each of one kind.
    offset = 0
    for item in document["runs"]:
        assert item["offset"] == offset and item["length"] > 0
        offset += item["length"]
    assert offset == document["container_end"] == sum(totals.values())
    # Guest data: qemu's allocated clusters less the compressed one; compressed data fills
    # part of one host cluster; what is free equals the zero refcounts below the end.
    assert totals["data"] == (qemu["allocated-clusters"] - qemu["compressed-clusters"]) * CLUSTER
    assert qemu["compressed-clusters"] == 1 and totals["compressed"] == CLUSTER
    assert totals["free"] == zero_refcounts_below_end(image)[1] == 12 * MiB
    assert totals["leaked"] == 0 == totals["beyond-end"]


def test_leaked_cluster_and_past_the_end(tmp_path: Path, loop_device: Any) -> None:
    image = make_image(tmp_path / "l.qcow2", "64M", write=["write 0 1M"])
    # One more cluster at the end with refcount 1 and no reference: a leak.
    data = bytearray(image.read_bytes())
    leaked = len(data) // CLUSTER
    data += bytes(CLUSTER)
    table = struct.unpack_from(">Q", data, 48)[0]
    block = struct.unpack_from(">Q", data, table)[0]
    struct.pack_into(">H", data, block + 2 * leaked, 1)
    image.write_bytes(bytes(data))
    assert qemu_check(image)["leaks"] == 1
    document = mapped(image)
    assert document["runs"][-1] == {"kind": "leaked", "offset": leaked * CLUSTER,
                                    "length": CLUSTER}
    # On a block device the map runs to the device's end: past the end offset.
    volume = make_image(tmp_path / "b.qcow2", "64M", write=["write 0 1M"])
    os.truncate(volume, 8 * MiB)  # the device: larger than what the image uses
    device = loop_device(volume)
    size = int(run(["blockdev", "--getsize64", device]).stdout)
    on_device = mapped(Path(device))
    assert on_device["container_end"] == size
    assert on_device["runs"][-1]["kind"] == "beyond-end"
    assert on_device["totals"]["beyond-end"] == size - on_device["end_offset"]


def test_the_picture(tmp_path: Path) -> None:
    image = make_image(tmp_path / "p.qcow2", "64M", write=["write 0 8M", "discard 0 4M"])
    code, out, _ = analyze("map", "--width", "32", "--rows", "2", str(image))
    assert code == 0
    lines = out.splitlines()
    rows = [line for line in lines if line.startswith("0x")]
    assert len(rows) == 2 and all(len(row.split(" ", 1)[1]) == 32 for row in rows)
    # The first half of the data was discarded: free cells come before the data cells.
    picture = "".join(row.split(" ", 1)[1] for row in rows)
    assert picture.startswith("M") and "." in picture and picture.rstrip("#").endswith(".")
    assert any(line.strip().startswith("^ end offset") for line in lines)
    assert any("free below the end offset" in line for line in lines)
    code, _, err = analyze("map", str(tmp_path / "missing.qcow2"))
    assert code == 1 and "missing.qcow2" in err


def test_a_picture_larger_than_a_screen_is_a_bad_command_line(tmp_path: Path) -> None:
    """--width 100000000 allocated arrays of that many cells (the host's memory, then SIGKILL),
    --rows 100000000 an internal MemoryError: a picture is bounded, the rest is exit 64."""
    image = make_image(tmp_path / "m.qcow2", "16M", write=["write 0 1M"])
    for argv in (["--width", "100000000"], ["--rows", "100000000"],
                 ["--width", "1025", "--rows", "1024"]):
        code, out, err = analyze("map", *argv, str(image))
        assert (code, out) == (64, ""), argv
        assert err.startswith("qcow2-analyze map: argument --width/--rows: ") and \
            "characters is more than the 1048576 a picture may have" in err, err
    code, out, _ = analyze("map", "--width", "1024", "--rows", "1024", str(image))
    assert code == 0 and len(out.splitlines()) >= 1024
