"""dump(): smoke over the corpus and content checks against what qemu-io wrote."""

from __future__ import annotations

import argparse
import io
import json
from pathlib import Path

from qcow2_monitor.analyze.tables import register, render_dump_human
from qcow2_monitor.collectors.check.dump import WHAT
from qcow2_monitor.collectors.check.dump import dump as dump_view
from qcow2_monitor.collectors.common.jsonform import JsonObject, to_json_object
from qcow2_monitor.collectors.qcow2.image import Qcow2Image

from corpus import QEMU_IMG, QEMU_IO, CorpusImage, run


def dump(image: Qcow2Image, what: str, limit: int = 1000) -> JsonObject:
    """A dump in its JSON form (what `dump --output json` prints)."""
    return to_json_object(dump_view(image, what, limit=limit))


def test_dump_smoke(corpus: list[CorpusImage]) -> None:
    for img in corpus:
        with Qcow2Image.open(str(img.path)) as image:
            for what in WHAT:
                data = dump(image, what, limit=50)
                json.dumps(data)
                text = render_dump_human(data)
                assert text.startswith(f"image: {img.path}\n")
                # Readable text: no Python reprs of dicts or lists.
                assert "{'" not in text and "[{" not in text, (img.name, what)


def test_dump_content(tmp_path: Path) -> None:
    path = tmp_path / "d.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "extended_l2=on", str(path), "8M"])
    run([QEMU_IO, "-c", "write -P 1 0 4k", "-c", "write -c -P 2 2M 64k", "-c", "write -z 4M 64k",
         str(path)])
    run([QEMU_IMG, "snapshot", "-c", "snap", str(path)])
    run([QEMU_IMG, "bitmap", "--add", str(path), "bm0"])
    with Qcow2Image.open(str(path)) as image:
        l1 = dump(image, "l1")
        assert l1["nonzero_entries"] == 1 and l1["tables"][0]["entries"][0]["index"] == 0
        l2 = dump(image, "l2")
        entries = {e["guest_offset"]: e for e in l2["tables"][0]["entries"]}
        assert entries[0]["type"] == "normal"
        assert entries[0]["subcluster_alloc"] == "0x00000003"  # 2 KiB subclusters
        assert entries[2 << 20]["type"] == "compressed"
        assert entries[4 << 20]["subcluster_zero"] == "0xffffffff"
        assert dump(image, "l2", limit=1)["truncated"]
        refs = dump(image, "refcount")
        assert refs["ranges"][0]["first_cluster"] == 0
        assert any(r["refcount"] == 2 for r in refs["ranges"])  # shared with the snapshot
        snaps = dump(image, "snapshots")["snapshots"]
        assert snaps[0]["name"] == "snap" and snaps[0]["disk_size"] == 8 << 20
        bms = dump(image, "bitmaps")["bitmaps"]
        assert bms[0]["name"] == "bm0" and bms[0]["granularity"] == 65536


def test_cli_dump(tmp_path: Path) -> None:
    path = tmp_path / "c.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(path), "1M"])
    parser = argparse.ArgumentParser()
    register(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["dump", "--what", "refcount", "--output", "json", str(path)])
    out = io.StringIO()
    assert args.handler(args, out, io.StringIO()) == 0
    assert json.loads(out.getvalue())["what"] == "refcount"
