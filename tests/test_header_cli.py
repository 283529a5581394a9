"""`qcow2-analyze header` and the Go-tool drop-in `-f FILE`, against qemu-img and hand-made
extensions."""

from __future__ import annotations

import contextlib
import io
import json
import re
import struct
import subprocess
import sys
from pathlib import Path
from typing import Any

from qcow2_monitor.analyze.main import main

from corpus import CorpusImage, qemu_img_json
from damage import header_extensions, patch_bytes, patch_u64, read_header
from tree import REPO

FEATURE_TABLE = 0x6803F857


def cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qcow2_monitor.analyze", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def cli_json(*args: str) -> Any:
    proc = cli(*args)
    assert proc.returncode == 0, proc.stderr
    return json.loads(proc.stdout)


def plain_image(tmp_path: Path, name: str = "plain.qcow2") -> Path:
    path = tmp_path / name
    subprocess.run(["qemu-img", "create", "-q", "-f", "qcow2", str(path), "64M"], check=True)
    return path


def test_unknown_extension_listed_by_type_and_length(tmp_path: Path) -> None:
    path = plain_image(tmp_path)
    # Append an extension of unknown type 0x12345678 after the feature table, then the end
    # marker: the cluster-0 area has room (qemu keeps unknown extensions it does not know).
    last = header_extensions(path)[-1]
    at = last.offset + 8 + (last.length + 7) // 8 * 8
    patch_bytes(path, at, struct.pack(">II", 0x12345678, 5) + b"hello\0\0\0" + bytes(8))
    data = cli_json("header", "--output", "json", str(path))
    unknown = [e for e in data["extensions"] if e["type"] == "0x12345678"]
    assert unknown == [{"type": "0x12345678", "name": "unknown", "offset": at + 8,
                        "length": 5, "data_hex": b"hello".hex()}]
    # qemu still opens it, and our info still equals qemu's.
    qemu = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2",
                                      str(path)], capture_output=True, text=True,
                                     check=True).stdout)
    assert cli_json("info", "--output", "json", str(path)) == qemu


def test_unknown_feature_named_by_the_images_own_table(tmp_path: Path) -> None:
    path = plain_image(tmp_path)
    table = next(e for e in header_extensions(path) if e.type == FEATURE_TABLE)
    # Rename entry 4 (incompatible bit 4) to bit 5 "teleportation" and set bit 5.
    entry = table.offset + 8 + 4 * 48
    patch_bytes(path, entry, struct.pack(">BB46s", 0, 5, b"teleportation"))
    patch_u64(path, 72, read_header(path)["incompatible_features"] | 1 << 5)
    qemu = subprocess.run(["qemu-img", "info", "-f", "qcow2", str(path)], capture_output=True,
                          text=True)
    assert qemu.returncode == 1 and "teleportation" in qemu.stderr
    proc = cli("usage", str(path))
    assert proc.returncode == 1
    assert "1 unsupported incompatible feature: teleportation" in proc.stderr
    assert str(path) in proc.stderr and "header.incompatible_features" in proc.stderr
    assert "Traceback" not in proc.stderr


def test_header_shows_features_luks_snapshots_bitmaps(corpus_by_name: dict[str, CorpusImage]
                                                      ) -> None:
    luks = corpus_by_name["luks"]
    data = cli_json("header", "--output", "json", str(luks.path))
    info, _ = qemu_img_json("info", luks)
    encrypt = info["format-specific"]["data"]["encrypt"]
    assert data["luks"]["cipher_alg"] == encrypt["cipher-alg"]
    assert data["luks"]["uuid"] == encrypt["uuid"]
    assert data["luks"]["payload_offset"] == encrypt["payload-offset"]
    assert [s["active"] for s in data["luks"]["key_slots"]] == [
        s["active"] for s in encrypt["slots"]]
    mixed = corpus_by_name["mixed"]
    data = cli_json("header", "--output", "json", str(mixed.path))
    info, _ = qemu_img_json("info", mixed)
    assert [s["name"] for s in data["snapshots"]] == [s["name"] for s in info["snapshots"]]
    assert all(len(s["extra_data_hex"]) == 2 * s["extra_data_size"] for s in data["snapshots"])
    assert [(b["name"], b["granularity"]) for b in data["bitmaps"]] == [
        (b["name"], b["granularity"]) for b in info["format-specific"]["data"]["bitmaps"]]
    names = {(f["type"], f["bit"]): f for f in data["features"]}
    assert names[("autoclear", 0)]["name"] == "bitmaps" and names[("autoclear", 0)]["enabled"]
    human = cli("header", str(luks.path)).stdout
    assert "\nLUKS header\n" in human and re.search(r"\n +0  active +\d+ +4000 ", human)
    # Aligned text, no Python reprs, no line longer than a wide terminal.
    assert "{'" not in human and max(len(line) for line in human.splitlines()) <= 120


def test_legacy_keys_values_and_fixes(corpus_by_name: dict[str, CorpusImage]) -> None:
    basic = {"qcow_version", "backing_file", "cluster_size", "virtual_size", "crypt_method",
             "snapshots", "image_end_offset"}
    verbose = basic | {"l1_size", "l1_table_offset", "refcount_table_offset",
                       "refcount_table_clusters", "dirty_bit", "corrupt_bit",
                       "external_data_file", "compression_type", "extended_l2",
                       "lazy_refcount", "bitmaps_extension", "raw_external_data",
                       "refcount_order", "header_length", "compression_method"}
    for name in ("v2-snapshot", "refbits-1", "extended-l2-65536", "lazy-dirty",
                 "discard-4096", "compressed-zstd-4096"):
        img = corpus_by_name[name]
        assert set(cli_json("-f", str(img.path))) == basic
        data = cli_json("-f", str(img.path), "-v")
        assert set(data) == verbose
        hdr = read_header(img.path)
        info, _ = qemu_img_json("info", img)
        check, _ = qemu_img_json("check", img)
        assert data["qcow_version"] == hdr["version"]
        assert data["cluster_size"] == info["cluster-size"]
        assert data["image_end_offset"] == check["image-end-offset"], name
        assert len(data["snapshots"]) == len(info.get("snapshots", []))
        assert data["dirty_bit"] == int(info["dirty-flag"])
        assert data["extended_l2"] == int(info["format-specific"]["data"].get("extended-l2",
                                                                                False))
        assert data["lazy_refcount"] == int(info["format-specific"]["data"].get(
            "lazy-refcounts", False))
        assert data["compression_method"] == info["format-specific"]["data"][
            "compression-type"]
        assert 1 << data["refcount_order"] == info["format-specific"]["data"]["refcount-bits"]
        assert data["header_length"] == (72 if hdr["version"] == 2 else hdr["header_length"])
    hexed = cli_json("-f", str(corpus_by_name["refbits-1"].path), "-v", "-H")
    assert hexed["cluster_size"] == "0x1000"
    assert hexed["image_end_offset"].startswith("0x")
    raw = cli("-f", str(corpus_by_name["v2-snapshot"].path), "-o", "raw", "-v")
    assert raw.returncode == 0
    assert any(line.split()[:2] == ["qcow_version", "2"] for line in raw.stdout.splitlines())


def test_bad_command_lines_exit_64(tmp_path: Path) -> None:
    assert cli().returncode == 64
    assert cli("usage").returncode == 64
    assert cli("-f", str(tmp_path / "missing.qcow2")).returncode == 1
    proc = cli("info", str(tmp_path / "missing.qcow2"))
    assert proc.returncode == 1 and "No such file" in proc.stderr


def test_damaged_images_give_one_clear_line(damaged: list[Any]) -> None:
    """Every damaged variant: info, usage, header and -f either work or print one line
    naming the file; never a traceback, never an internal error."""
    for variant in damaged:
        for args in (["info", "--output", "json"], ["usage", "--output", "json"], ["-f"],
                     ["header"]):
            out, err = io.StringIO(), io.StringIO()
            with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
                code = main([*args, str(variant.path)])
            message = err.getvalue()
            assert code in (0, 1), (variant.name, args, message)
            assert "Traceback" not in message, (variant.name, args, message)
            assert "internal error" not in message, (variant.name, args, message)
            if code == 1:
                lines = message.strip().splitlines()
                assert lines and str(variant.path) in lines[0], (variant.name, args)
