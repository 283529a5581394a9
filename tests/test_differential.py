"""Differential tests: `info` and the fast image end offset against qemu-img on every corpus
image (tests/corpus.py), on loop devices, and through the command line."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path
from typing import Any

import pytest

from qcow2_monitor.collectors.common.jsonform import to_json
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.info import image_info
from qcow2_monitor.collectors.report.usage import analyze_usage

from corpus import CorpusImage, qemu_img_json
from tree import REPO


def run_cli(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run([sys.executable, "-m", "qcow2_monitor.analyze", *args], cwd=REPO,
                          capture_output=True, text=True, timeout=120)


def test_info_equals_qemu_on_every_image(corpus: list[CorpusImage]) -> None:
    mismatches = []
    for img in corpus:
        expected, code = qemu_img_json("info", img)
        assert code == 0, f"qemu-img info failed on {img.name}"
        with Qcow2Image.open(str(img.path)) as image:
            ours = to_json(image_info(image))
        if ours != expected:
            mismatches.append(f"{img.name}:\n  qemu: {json.dumps(expected, sort_keys=True)}"
                              f"\n  ours: {json.dumps(ours, sort_keys=True)}")
    assert not mismatches, "\n".join(mismatches)


def test_image_end_offset_equals_qemu_check(corpus: list[CorpusImage]) -> None:
    compared = 0
    mismatches = []
    for img in corpus:
        expected, _code = qemu_img_json("check", img)
        if "image-end-offset" not in expected:
            continue  # qemu could not check it (the check tests cover those images)
        result = analyze_usage(str(img.path), chain=False)
        assert result.usage is not None, f"{img.name}: {result.error}"
        compared += 1
        if result.usage.image_end_offset != expected["image-end-offset"]:
            mismatches.append(f"{img.name}: qemu {expected['image-end-offset']}, ours "
                              f"{result.usage.image_end_offset} "
                              f"({result.usage.image_end_offset_source})")
    assert not mismatches, "\n".join(mismatches)
    # Every image of the corpus but the ones qemu cannot open at all must have been compared.
    assert compared >= len(corpus) - 2


def test_luks_needs_no_key_and_matches(corpus: list[CorpusImage]) -> None:
    luks = [img for img in corpus if img.has("luks")]
    assert luks
    for img in luks:
        expected, code = qemu_img_json("check", img)  # qemu needs the key (img.qemu_args)
        assert code == 0
        usage = analyze_usage(str(img.path), chain=False).usage
        assert usage is not None and usage.encrypted
        assert usage.image_end_offset == expected["image-end-offset"]


def test_dirty_image_reports_untrusted_refcounts(corpus: list[CorpusImage]) -> None:
    dirty = [img for img in corpus if img.has("dirty")]
    assert dirty
    for img in dirty:
        usage = analyze_usage(str(img.path), chain=False).usage
        assert usage is not None
        assert usage.dirty and not usage.refcounts_trusted
        assert usage.image_end_offset_source == "check"
        assert any("dirty" in note for note in usage.notes)


def test_backing_chain_resolved_relative_to_image(corpus: list[CorpusImage],
                                                  tmp_path: Path) -> None:
    chained = [img for img in corpus if img.has("chain") and img.backing is not None]
    assert chained
    for img in chained:
        # Run from an unrelated directory: names must resolve against the image's directory.
        result = subprocess.run(
            [sys.executable, "-m", "qcow2_monitor.analyze", "usage", "--output", "json",
             str(img.path)], cwd=tmp_path, capture_output=True, text=True, timeout=120)
        data = json.loads(result.stdout)[0]
        first = data["backing_chain"][0]
        assert os.path.realpath(first["path"]) == os.path.realpath(img.backing), img.name
        if os.path.exists(img.backing):
            assert first["status"] in ("ok", "other-format"), (img.name, first)
        else:
            assert first["status"] == "missing", (img.name, first)


def test_info_backing_chain_equals_qemu(corpus: list[CorpusImage]) -> None:
    tops = [img for img in corpus if img.has("chain") and img.backing is not None
            and os.path.exists(img.backing)]
    assert tops
    for img in tops:
        qemu = subprocess.run(["qemu-img", "info", "--output=json", "--backing-chain",
                               "-f", "qcow2", str(img.path)], capture_output=True, text=True,
                              check=True).stdout
        ours = run_cli("info", "--output", "json", "--backing-chain", str(img.path))
        assert ours.returncode == 0, ours.stderr
        expected: list[dict[str, Any]] = json.loads(qemu)
        got = json.loads(ours.stdout)
        # A raw base layer included, as qemu describes it.
        assert got == expected, img.name


def test_usage_json_keys_and_failures(corpus: list[CorpusImage], tmp_path: Path) -> None:
    good = next(img for img in corpus if img.has("v3") and img.consistent)
    bad = tmp_path / "not-an-image.qcow2"
    bad.write_bytes(b"hello world, definitely not qcow2" * 10)
    proc = run_cli("usage", "--output", "json", str(good.path), str(bad))
    assert proc.returncode == 1  # one target failed
    data = json.loads(proc.stdout)
    assert len(data) == 2
    required = {"filename", "image_end_offset", "container_type", "container_size",
                "headroom", "usage_ratio", "fully_allocated_size", "allocated_bytes",
                "in_use", "dirty", "corrupt", "refcounts_trusted", "backing_chain"}
    assert required <= set(data[0])
    assert data[0]["container_type"] == "file"
    assert data[1]["error"]["kind"] == "not-qcow2"
    # One line on stderr naming the file and the structure; never a traceback.
    assert "Traceback" not in proc.stderr
    assert str(bad) in proc.stderr and "header" in proc.stderr


def test_fully_allocated_size_equals_qemu_measure(corpus: list[CorpusImage]) -> None:
    """With the image's own options as target, qemu-img measure's fully-allocated figure is
    exactly our fully_allocated_size (plain v3 images: no LUKS header area)."""
    plain = [img for img in corpus if img.has("v3") and not img.has("luks")][:12]
    assert plain
    for img in plain:
        with Qcow2Image.open(str(img.path)) as image:
            h = image.header
        opts = f"cluster_size={h.cluster_size},refcount_bits={h.refcount_bits}"
        if h.extended_l2:
            opts += ",extended_l2=on"
        measured = json.loads(subprocess.run(
            ["qemu-img", "measure", "--output=json", "-O", "qcow2", "-o", opts,
             "--size", str(h.size)], capture_output=True, text=True, check=True).stdout)
        usage = analyze_usage(str(img.path), chain=False).usage
        assert usage is not None
        assert usage.fully_allocated_size == measured["fully-allocated"], img.name


@pytest.mark.parametrize("tag", ["v3", "v2", "luks", "extended-l2", "refbits-1"])
def test_block_device_container(corpus: list[CorpusImage], loop_device: Any,
                                tag: str) -> None:
    img = next(i for i in corpus if i.has(tag) and i.consistent and i.backing is None)
    device = loop_device(img.path)
    info = json.loads(subprocess.run(["qemu-img", "info", "--output=json", "-f", "qcow2",
                                      device], capture_output=True, text=True,
                                     check=True).stdout)
    assert info["actual-size"] == 0  # qemu's "disk size: 0 B" on a block device
    with Qcow2Image.open(device) as image:
        assert to_json(image_info(image)) == info
    usage = analyze_usage(device, chain=False).usage
    assert usage is not None
    size = int(subprocess.run(["blockdev", "--getsize64", device], capture_output=True,
                              text=True, check=True).stdout)
    assert usage.container.kind == "block"
    assert usage.container.size == size
    assert usage.container.headroom == size - usage.image_end_offset
    assert usage.container.allocated_bytes is None
    check_args = ["-f", "qcow2", device]
    if img.secret:
        check_args = [a if a != str(img.path) else device for a in img.qemu_args]
        check_args = [a.replace(f"file.filename={img.path}", f"file.filename={device}")
                      for a in check_args]
    expected = json.loads(subprocess.run(["qemu-img", "check", "--output=json", *check_args],
                                         capture_output=True, text=True).stdout)
    assert usage.image_end_offset == expected["image-end-offset"]
