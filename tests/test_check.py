"""The full check against `qemu-img check`: the whole corpus and damaged copies modelled on qemu
iotests 060, 080, 108, 112, 138, 214, 220, 261, 271, 287. Exact figures, exit codes, and our
located findings."""

from __future__ import annotations

import io
import json
import os
import subprocess
from pathlib import Path

import pytest

from qcow2_monitor.analyze.check import check_json, exit_code
from qcow2_monitor.analyze.main import main
from qcow2_monitor.collectors.check.checker import check, check_image, image_end_offset_by_walk
from qcow2_monitor.collectors.common.errors import Qcow2Error
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.report.usage import analyze_image

from corpus import CHECK_FIGURES, QEMU_IMG, QEMU_IO, CorpusImage, qemu_img_json, run
from damage import DamagedImage, patch_u64, read_header

# Images qemu checks but our (shared) header parser refuses: a header shorter than 72 bytes
# reads as zero-padded in qemu (bdrv_pread). We must still fail cleanly, with exit 1.
KNOWN_REFUSED = {"v2-snapshot--truncated-header"}


def qemu_check(args: list[str]) -> tuple[dict, int]:
    proc = subprocess.run([QEMU_IMG, "check", "--output=json", *args], capture_output=True,
                          text=True, check=False, timeout=300)
    return (json.loads(proc.stdout) if proc.stdout.strip() else {}), proc.returncode


def ours_json(path: Path) -> tuple[dict, int]:
    result = check_image(str(path))
    return check_json(result, str(path)), exit_code(result)


def assert_same(ours: dict, qemu: dict) -> None:
    for key in CHECK_FIGURES:
        assert (key in ours) == (key in qemu), (key, ours, qemu)
        assert ours.get(key) == qemu.get(key), (key, ours, qemu)


def test_corpus_matches_qemu(corpus: list[CorpusImage]) -> None:
    for img in corpus:
        qemu, code = qemu_img_json("check", img)
        assert qemu, f"qemu-img could not check corpus image {img.name}"
        ours, our_code = ours_json(img.path)
        assert_same(ours, qemu)
        assert our_code == code, img.name
        assert ours["filename"] == str(img.path) and ours["format"] == "qcow2"


def test_damaged_match_qemu(damaged: list[DamagedImage]) -> None:
    assert len(damaged) > 30
    for variant in damaged:
        qemu, code = qemu_check(["-f", "qcow2", str(variant.path)])
        try:
            ours, our_code = ours_json(variant.path)
        except Qcow2Error as exc:
            # qemu could not check either (open failure or a failing check): exit 1, no JSON.
            assert str(exc).startswith(str(variant.path)), exc
            if variant.name in KNOWN_REFUSED:
                continue
            assert code == 1 and not qemu, (variant.name, code, qemu, str(exc))
            continue
        assert qemu, (variant.name, "qemu refused what we checked", ours)
        assert_same(ours, qemu)
        assert our_code == code, variant.name
        # Every counted problem is located (or counted beyond max_findings).
        problems = ours.get("corruptions", 0) + ours.get("leaks", 0) + ours["check-errors"]
        if problems:
            assert ours["findings-total"] >= 1


def _findings(path: Path) -> list:
    return list(check_image(str(path), max_findings=1000).findings)


def test_located_l2_unaligned(damaged_by_name: dict[str, DamagedImage]) -> None:
    found = _findings(damaged_by_name["mixed--l2-entry-unaligned"].path)
    kinds = [f.kind for f in found]
    assert kinds[0] == "unaligned-data-offset"
    assert found[0].location.startswith("L2 table at 0x")
    assert found[0].location.endswith("entry 0 (L1[0], guest offset 0x0)")
    assert found[0].host_offset % 512 == 0 and found[0].host_offset % 65536
    assert "refcount-too-low" in kinds  # the straddled next cluster is now referenced twice


def test_located_l1_reserved_bits(damaged_by_name: dict[str, DamagedImage]) -> None:
    found = _findings(damaged_by_name["mixed--l1-entry-reserved-bits"].path)
    assert [(f.kind, f.location) for f in found] == [("l1-reserved-bits", "L1[0]")]


def test_unaligned_refblock_is_check_error(damaged_by_name: dict[str, DamagedImage]) -> None:
    result = check_image(str(damaged_by_name["mixed--refcount-block-unaligned"].path))
    assert exit_code(result) == 1 and result.check_errors > 0
    kinds = {f.kind: f for f in result.findings}
    assert kinds["unaligned-refcount-block"].location == "refcount table entry 0"
    assert kinds["refcount-unreadable"].found == result.check_errors


def test_one_bit_refcount_overflow(damaged_by_name: dict[str, DamagedImage]) -> None:
    result = check_image(str(damaged_by_name["refbits-1--l2-duplicate-reference"].path))
    overflow = [f for f in result.findings if f.kind == "refcount-overflow"]
    assert len(overflow) == 1 and overflow[0].found == 1 and overflow[0].expected == 2


def test_extended_l2_bitmap_damage(damaged_by_name: dict[str, DamagedImage]) -> None:
    found = _findings(damaged_by_name["extended-l2-65536--ext-l2-alloc-and-zero"].path)
    assert [f.kind for f in found] == ["subcluster-bitmap"]
    found = _findings(damaged_by_name["extended-l2-65536--ext-l2-unallocated-alloc-bits"].path)
    assert "unallocated-subcluster-bitmap" in [f.kind for f in found]


def test_leak_advice(damaged_by_name: dict[str, DamagedImage]) -> None:
    result = check_image(str(damaged_by_name["mixed--leaked-cluster-appended"].path))
    assert exit_code(result) == 3
    (leak,) = result.findings
    assert leak.kind == "leak" and "qemu-img check -r leaks" in leak.advice


def test_snapshot_abort_is_could_not_check(damaged_by_name: dict[str, DamagedImage]) -> None:
    with pytest.raises(Qcow2Error, match="extra metadata"):
        check_image(str(damaged_by_name["mixed--snapshot-extra-data-too-big"].path))


def test_max_findings_keeps_totals(damaged_by_name: dict[str, DamagedImage]) -> None:
    path = str(damaged_by_name["mixed--refcount-table-zeroed"].path)
    full = check_image(path, max_findings=10_000)
    small = check_image(path, max_findings=2)
    assert full.findings_total > 5 and len(full.findings) == full.findings_total
    assert len(small.findings) == 2 and small.findings_total == full.findings_total
    assert small.findings == full.findings[:2]
    assert (small.corruptions, small.leaks) == (full.corruptions, full.leaks)


def test_snapshot_incomplete_extra_data(tmp_path: Path) -> None:
    """iotest 261: a v3 snapshot entry with less than 16 bytes of extra data."""
    path = tmp_path / "sn.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(path), "1M"])
    run([QEMU_IMG, "snapshot", "-c", "s0", str(path)])
    snapshots_offset = read_header(path)["snapshots_offset"]
    with open(path, "r+b") as handle:  # extra_data_size 24 -> 8
        handle.seek(snapshots_offset + 36)
        handle.write((8).to_bytes(4, "big"))
    qemu, code = qemu_check(["-f", "qcow2", str(path)])
    ours, our_code = ours_json(path)
    assert_same(ours, qemu)
    assert our_code == code == 2
    assert ours["findings"][0]["kind"] == "snapshot-incomplete"


def test_l2_table_past_eof(tmp_path: Path) -> None:
    """iotest 060-style: an L1 entry pointing far past EOF (one corruption, not counted)."""
    path = tmp_path / "past.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(path), "1M"])
    run([QEMU_IO, "-c", "write -P 1 0 64k", str(path)])
    l1 = read_header(path)["l1_table_offset"]
    patch_u64(path, l1, (1 << 63) | (1 << 40))
    qemu, code = qemu_check(["-f", "qcow2", str(path)])
    ours, our_code = ours_json(path)
    assert_same(ours, qemu)
    assert our_code == code
    assert ours["findings"][0]["kind"] == "reference-past-eof"
    assert ours["findings"][0]["location"] == "L1[0]"


def test_dirty_lazy_image_end_offset(tmp_path: Path) -> None:
    """A crashed lazy-refcounts writer: usage's end offset comes from the walk and equals
    qemu's (whose check sees the stale refcounts too)."""
    path = tmp_path / "lazy.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", str(path), "64M"])
    subprocess.run([QEMU_IO, "-c", "write -P 7 0 4M", "-c", "write -P 8 32M 1M",
                    "-c", "sigraise 9", str(path)], capture_output=True, check=False)
    assert read_header(path)["incompatible_features"] & 1
    qemu, _ = qemu_check(["-f", "qcow2", str(path)])
    with Qcow2Image.open(str(path)) as image:
        assert image_end_offset_by_walk(image) == qemu["image-end-offset"]
    usage = analyze_image(str(path))
    assert usage.image_end_offset == qemu["image-end-offset"]
    assert usage.image_end_offset_source == "check"


def test_idle_dirty_lazy_image_advice_follows_the_health_policy(tmp_path: Path) -> None:
    """qcow2-analyze check on a dirty lazy-refcounts image no qemu holds: qemu-img's figures and
    exit code (2), but the advice names the expected lazy-refcount debt, not damage."""
    path = tmp_path / "lazy-idle.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-o", "lazy_refcounts=on", str(path), "16M"])
    subprocess.run([QEMU_IO, "-c", "write -P 5 0 1M", "-c", "sigraise 9", str(path)],
                   capture_output=True, check=False)
    assert read_header(path)["incompatible_features"] & 1
    qemu, qemu_code = qemu_check(["-f", "qcow2", str(path)])
    ours, our_code = ours_json(path)
    assert_same(ours, qemu)
    assert our_code == qemu_code == 2 and qemu["corruptions"] > 0
    code, out, _ = _cli(["check", str(path)])
    assert code == 2 and f"{qemu['corruptions']} errors were found on the image." in out
    advice = out.split("\nAdvice:\n", 1)[1]
    assert "expected lazy-refcount debt" in advice and "qemu repairs them when it next opens" \
        in advice and "qemu-img check -r all" in advice
    assert "take a backup" not in out and "Refcount error" not in out
    code, out, _ = _cli(["check", "--output", "json", str(path)])
    findings = json.loads(out)["findings"]
    assert findings and all("lazy-refcount debt" in f["advice"] for f in findings)
    # The same kinds of finding on an image that is not dirty keep the catalogue's advice.
    clean = tmp_path / "refcount.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(clean), "16M"])
    run([QEMU_IO, "-c", "write 0 64k", str(clean)])
    table = read_header(clean)["refcount_table_offset"]
    block = int.from_bytes(clean.read_bytes()[table:table + 8], "big")
    patch_u64(clean, block, 0)  # refcount of cluster 0 (the header) and 1..3 -> 0
    code, out, _ = _cli(["check", str(clean)])
    assert code == 2 and "Refcount error: take a backup" in out, out


def test_luks_without_key_equals_qemu_with_key(corpus: list[CorpusImage]) -> None:
    luks = [img for img in corpus if img.has("luks")]
    assert luks
    for img in luks:
        assert "--image-opts" in img.qemu_args  # qemu needs the key, we do not
        qemu, code = qemu_img_json("check", img)
        ours, our_code = ours_json(img.path)
        assert_same(ours, qemu)
        assert our_code == code


def test_huge_sparse_work_follows_the_file(corpus: list[CorpusImage]) -> None:
    """64 TiB virtual with four writes: the check's work follows the 1.8 MB file (each byte
    read at most once, a few reads, a few thousand calls: 1,823 here), not the 2**30
    clusters of the virtual size. Counted exactly (tests/work.py), not timed."""
    from work import work_of

    img = next(i for i in corpus if i.has("huge-sparse"))
    results = []

    def run() -> None:
        with Qcow2Image.open(str(img.path)) as image:
            results.append(check(image))

    run()  # imports and caches, so that only the check itself is counted below
    work = work_of(run, call_limit=20_000)
    assert work.bytes_read <= img.path.stat().st_size, work
    assert work.reads <= 64 and work.calls <= 20_000, work
    assert exit_code(results[-1]) == 0


def _cli(argv: list[str]) -> tuple[int, str, str]:
    out, err = io.StringIO(), io.StringIO()
    code = main(argv, out, err)
    return code, out.getvalue(), err.getvalue()


def test_cli_check_json_and_exit_codes(damaged_by_name: dict[str, DamagedImage],
                                       corpus_by_name: dict) -> None:
    clean = str(corpus_by_name["mixed"].path)
    code, out, _ = _cli(["check", "--output", "json", clean])
    data = json.loads(out)
    assert code == 0 and data["filename"] == clean and "corruptions" not in data
    assert data["findings"] == [] and data["findings-total"] == 0
    leaky = str(damaged_by_name["mixed--leaked-cluster-appended"].path)
    code, out, _ = _cli(["check", leaky])
    assert code == 3
    assert "1 leaked clusters were found on the image.\nThis means waste of disk space, " \
        "but no harm to data." in out
    assert "% allocated, " in out and "Image end offset: " in out
    bad = str(damaged_by_name["mixed--snapshot-extra-data-too-big"].path)
    code, out, err = _cli(["check", "--output", "json", bad])
    assert code == 1 and err.count("\n") == 1 and "Traceback" not in err
    # stdout: the one error document, never empty.
    document = json.loads(out)
    assert document["filename"] == bad and document["status"] == "error"
    assert document["error"]["filename"] == bad and document["error"]["message"] in err


def test_cli_check_chain(corpus: list[CorpusImage]) -> None:
    top = next(img for img in corpus if img.has("chain") and img.backing is not None
               and not img.has("backing-missing") and not img.has("backing-raw"))
    code, out, _ = _cli(["check", "--chain", "--output", "json", str(top.path)])
    layers = json.loads(out)
    assert isinstance(layers, list) and len(layers) >= 2
    assert [layer["depth"] for layer in layers] == list(range(len(layers)))
    assert os.path.realpath(layers[1]["filename"]) == os.path.realpath(top.backing)
    # The exit code is the worst layer's, as qemu-img check would give for each: an error
    # before corruptions before leaks.
    codes = {1 if "error" in layer else 2 if layer.get("corruptions") else
             3 if layer.get("leaks") else 0 for layer in layers}
    assert code == next((c for c in (1, 2, 3) if c in codes), 0)


def test_cli_no_traceback_on_garbage(tmp_path: Path) -> None:
    junk = tmp_path / "junk.qcow2"
    junk.write_bytes(b"not an image at all" * 10)
    for argv in (["check"], ["measure"], ["dump", "--what", "l1"]):
        code, _out, err = _cli([*argv, str(junk)])
        assert code == 1 and str(junk) in err and "Traceback" not in err
