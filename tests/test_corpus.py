"""The corpus and the damage helpers are what every other test stands on: verify them against qemu.

Images are checked in one loop per property (the corpus is only known once built), and each loop
collects every mismatch so one run reports them all.
"""

from __future__ import annotations

import subprocess
from pathlib import Path
from typing import Any, Callable

import damage
from corpus import (
    LUKS_SECRET,
    QEMU_IMG,
    REQUIRED_TAGS,
    CorpusImage,
    build_corpus,
    qemu_img_json,
)
from damage import RECIPES, DamagedImage, damaged_variants

QCOW_MAGIC_BYTES = b"QFI\xfb"

# Tags that qemu-img info can confirm independently of how the image was made.
INFO_DERIVED_TAGS = (
    "v2",
    "v3",
    "zstd",
    "extended-l2",
    "snapshots",
    "bitmaps",
    "bitmaps-in-use",
    "luks",
    "data-file",
    "data-file-raw",
    "dirty",
    "lazy",
    "backing",
)


def _tags_from_info(info: dict[str, Any]) -> set[str]:
    data = info["format-specific"]["data"]
    tags = {
        "v2" if data["compat"] == "0.10" else "v3",
        f"cs-{info['cluster-size']}",
        f"refbits-{data['refcount-bits']}",
    }
    bitmaps = data.get("bitmaps", [])
    flags = {
        "zstd": data["compression-type"] == "zstd",
        "extended-l2": data.get("extended-l2", False),
        "snapshots": bool(info.get("snapshots")),
        "bitmaps": bool(bitmaps),
        "bitmaps-in-use": any("in-use" in b["flags"] for b in bitmaps),
        "luks": data.get("encrypt", {}).get("format") == "luks",
        "data-file": "data-file" in data,
        "data-file-raw": data.get("data-file-raw", False),
        "dirty": info.get("dirty-flag", False),
        "lazy": data.get("lazy-refcounts", False),
        "backing": "backing-filename" in info,
    }
    return tags | {tag for tag, present in flags.items() if present}


def _fail_all(problems: list[str]) -> None:
    assert not problems, "\n".join(problems)


def test_corpus_images_exist(corpus: list[CorpusImage]) -> None:
    problems = []
    for image in corpus:
        if not image.path.is_file():
            problems.append(f"{image.name}: {image.path} missing")
        elif image.path.read_bytes()[:4] != QCOW_MAGIC_BYTES:
            problems.append(f"{image.name}: no qcow2 magic")
        if image.backing is not None and image.backing.exists() == image.has("backing-missing"):
            problems.append(f"{image.name}: backing {image.backing} existence is wrong")
        if image.has("luks") != (image.secret == LUKS_SECRET):
            problems.append(f"{image.name}: secret does not match the luks tag")
    _fail_all(problems)


def test_names_unique(corpus: list[CorpusImage]) -> None:
    names = [image.name for image in corpus]
    assert len(names) == len(set(names))


def test_required_tags_covered(corpus: list[CorpusImage]) -> None:
    present = set().union(*(image.tags for image in corpus))
    missing = sorted(REQUIRED_TAGS - present)
    assert not missing, f"no corpus image carries the tags {missing}"


def test_qemu_check_agrees_with_consistent(corpus: list[CorpusImage]) -> None:
    problems = []
    for image in corpus:
        result, returncode = qemu_img_json("check", image)
        errors = {k: result.get(k, 0) for k in ("corruptions", "leaks", "check-errors")}
        if image.consistent:
            if returncode != 0 or any(errors.values()):
                problems.append(f"{image.name}: expected clean, exit {returncode}, {errors}")
        elif returncode not in (2, 3) or not (errors["corruptions"] or errors["leaks"]):
            problems.append(f"{image.name}: expected errors, exit {returncode}, {errors}")
    _fail_all(problems)


def test_lazy_dirty_image_is_what_qemu_left(corpus_by_name: dict[str, CorpusImage]) -> None:
    # The SIGKILLed lazy-refcounts session: dirty bit set, refcounts of its writes missing.
    image = corpus_by_name["lazy-dirty"]
    result, returncode = qemu_img_json("check", image)
    assert returncode == 2
    assert result["corruptions"] > 0 and "leaks" not in result
    assert damage.read_header(image.path)["incompatible_features"] & damage.INCOMPAT_DIRTY


def test_qemu_info_agrees_with_tags(corpus: list[CorpusImage]) -> None:
    problems = []
    for image in corpus:
        info, returncode = qemu_img_json("info", image)
        if returncode != 0:
            problems.append(f"{image.name}: qemu-img info exit {returncode}")
            continue
        derived = _tags_from_info(info)
        declared = {
            tag for tag in image.tags if tag in INFO_DERIVED_TAGS or tag[:3] in ("cs-", "ref")
        }
        checked = {tag for tag in derived if tag in INFO_DERIVED_TAGS or tag[:3] in ("cs-", "ref")}
        if declared != checked:
            problems.append(
                f"{image.name}: tags {sorted(declared)} but info says {sorted(checked)}"
            )
    _fail_all(problems)


def test_info_opens_luks_without_key_check_does_not(corpus_by_name: dict[str, CorpusImage]) -> None:
    image = corpus_by_name["luks"]
    info, returncode = qemu_img_json("info", image)
    assert returncode == 0 and info["encrypted"] is True
    assert info["format-specific"]["data"]["encrypt"]["format"] == "luks"
    proc = subprocess.run(
        [QEMU_IMG, "check", "--output=json", "-f", "qcow2", str(image.path)],
        capture_output=True,
        text=True,
        check=False,
    )
    assert proc.returncode == 1 and "key-secret" in proc.stderr


def test_backing_names_are_relative(corpus: list[CorpusImage]) -> None:
    problems = []
    for image in corpus:
        if image.backing is None:
            continue
        info, _ = qemu_img_json("info", image)
        if info.get("backing-filename") != image.backing.name:
            problems.append(f"{image.name}: backing-filename {info.get('backing-filename')!r}")
        if Path(info.get("full-backing-filename", "")) != image.backing:
            problems.append(
                f"{image.name}: full-backing-filename {info.get('full-backing-filename')!r}"
            )
    _fail_all(problems)


def test_huge_sparse_is_huge_and_sparse(corpus_by_name: dict[str, CorpusImage]) -> None:
    image = corpus_by_name["huge-sparse"]
    info, _ = qemu_img_json("info", image)
    assert info["virtual-size"] == 64 * 2**40
    assert image.path.stat().st_size < 16 * 2**20


def test_independent_header_reader_matches_qemu(corpus: list[CorpusImage]) -> None:
    problems = []
    for image in corpus:
        header = damage.read_header(image.path)
        info, _ = qemu_img_json("info", image)
        data = info["format-specific"]["data"]
        found = (damage.cluster_size(header), header["size"], damage.refcount_bits(header))
        expected = (info["cluster-size"], info["virtual-size"], data["refcount-bits"])
        if found != expected:
            problems.append(f"{image.name}: header reader {found}, qemu {expected}")
    _fail_all(problems)


def test_compressed_ranges_straddle_clusters(corpus: list[CorpusImage]) -> None:
    problems = []
    for image in corpus:
        if not image.has("compressed"):
            continue
        header = damage.read_header(image.path)
        cs, bits = damage.cluster_size(header), header["cluster_bits"]
        ranges = [
            damage.compressed_range(e.entry, bits)
            for e in damage.active_l2_entries(image.path)
            if e.compressed
        ]
        straddles = any(host // cs != (host + length - 1) // cs for host, length in ranges)
        if not ranges:
            problems.append(f"{image.name}: no compressed entry in the active L1")
        elif image.has("compressed-straddle") and not straddles:
            problems.append(f"{image.name}: no compressed range straddles a cluster")
    _fail_all(problems)


def test_holes_below_image_end(corpus: list[CorpusImage]) -> None:
    # Discard and snapshot deletion must leave refcount-0 clusters below the last used one:
    # the case where "stop at the first free cluster" gets the image end wrong.
    problems = []
    for image in corpus:
        if not image.has("holes"):
            continue
        header = damage.read_header(image.path)
        clusters = image.path.stat().st_size // damage.cluster_size(header)
        refcounts = [damage.get_refcount(image.path, index) for index in range(clusters)]
        last_used = max(i for i, r in enumerate(refcounts) if r)
        if 0 not in refcounts[:last_used]:
            problems.append(f"{image.name}: no free cluster below cluster {last_used}")
    _fail_all(problems)


def test_extended_l2_has_partial_and_zero_subclusters(corpus: list[CorpusImage]) -> None:
    problems = []
    for image in corpus:
        if not image.has("extended-l2"):
            continue
        bitmaps = [e.bitmap or 0 for e in damage.active_l2_entries(image.path)]
        partial = any(0 < (b & 0xFFFFFFFF) < 0xFFFFFFFF for b in bitmaps)
        zero = any(b >> 32 for b in bitmaps)
        if not (partial and zero):
            problems.append(f"{image.name}: partial allocation {partial}, zero bits {zero}")
    _fail_all(problems)


def test_refcount_accessors_round_trip(
    corpus_by_name: dict[str, CorpusImage], tmp_path: Path
) -> None:
    for bits in (1, 2, 4, 8, 16, 32, 64):
        copy = damage.copy_image(
            corpus_by_name[f"refbits-{bits}"].path, tmp_path / f"r{bits}.qcow2"
        )
        assert damage.get_refcount(copy, 0) == 1, "the header cluster has refcount 1"
        neighbours = [damage.get_refcount(copy, i) for i in (2, 4)]
        damage.set_refcount(copy, 3, 1 if bits == 1 else 3)
        assert damage.get_refcount(copy, 3) == (1 if bits == 1 else 3)
        assert [damage.get_refcount(copy, i) for i in (2, 4)] == neighbours


def test_copy_image_is_exact(corpus_by_name: dict[str, CorpusImage], tmp_path: Path) -> None:
    src = corpus_by_name["prealloc-full"].path
    copy = damage.copy_image(src, tmp_path / "copy.qcow2")
    assert copy.read_bytes() == src.read_bytes()


def test_damaged_variants_differ_from_source(damaged: list[DamagedImage]) -> None:
    assert damaged
    problems = []
    for variant in damaged:
        if variant.path.read_bytes() == variant.source.read_bytes():
            problems.append(f"{variant.name}: identical to {variant.source.name}")
    _fail_all(problems)
    assert len({v.name for v in damaged}) == len(damaged)


def test_damage_recipes_find_their_structures(damaged_by_name: dict[str, DamagedImage]) -> None:
    # The mixed image has everything but extended L2; the extended-L2 image has the rest.
    ext_only = {"ext-l2-alloc-and-zero", "ext-l2-unallocated-alloc-bits"}
    expected = {f"mixed--{name}" for name, _, _ in RECIPES if name not in ext_only}
    expected |= {f"extended-l2-65536--{name}" for name in ext_only}
    missing = sorted(expected - set(damaged_by_name))
    assert not missing, f"recipes that did not apply: {missing}"


def test_damaged_variants_are_deterministic(
    corpus_by_name: dict[str, CorpusImage], tmp_path: Path
) -> None:
    src = corpus_by_name["extended-l2-65536"].path
    first = damaged_variants(src, tmp_path / "a")
    second = damaged_variants(src, tmp_path / "b")
    assert [v.name for v in first] == [v.name for v in second]
    for a, b in zip(first, second):
        assert a.path.read_bytes() == b.path.read_bytes(), a.name


def test_loop_device_serves_the_image(
    loop_device: Callable[..., str], corpus_by_name: dict[str, CorpusImage]
) -> None:
    device = loop_device(corpus_by_name["cs-65536"], read_only=True)
    with open(device, "rb") as f:
        assert f.read(4) == QCOW_MAGIC_BYTES


# Images whose bytes legitimately differ between builds: LUKS salts/UUID, snapshot dates, and
# the absolute data file name stored in the header.
NONDETERMINISTIC_TAGS = frozenset({"luks", "snapshots", "data-file"})


def test_corpus_is_deterministic(corpus: list[CorpusImage], tmp_path: Path) -> None:
    # A second build in a fresh directory (also: the core runs without pytest) gives the same
    # images, byte for byte where qemu does not add randomness or timestamps.
    again = {image.name: image for image in build_corpus(tmp_path / "again")}
    assert sorted(again) == sorted(image.name for image in corpus)
    problems = []
    for image in corpus:
        if image.tags & NONDETERMINISTIC_TAGS:
            continue
        if image.path.read_bytes() != again[image.name].path.read_bytes():
            problems.append(f"{image.name}: differs between two builds")
    _fail_all(problems)
