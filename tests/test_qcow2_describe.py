"""collectors/qcow2/describe.py: everything in an image's header area as typed values, against
qemu-img info and the header area read by the tests' own reader (tests/damage.py)."""

from __future__ import annotations

import json
import struct
from pathlib import Path
from typing import Any

import pytest

from qcow2_monitor.collectors.common.errors import OUT_OF_BOUNDS, Qcow2Error
from qcow2_monitor.collectors.qcow2.describe import (
    SHOWN_DATA,
    BackingFormatDetail,
    BitmapsDetail,
    CryptoDetail,
    FeatureTableDetail,
    HeaderView,
    RawDetail,
    describe,
    describe_luks,
)
from qcow2_monitor.collectors.qcow2.image import Qcow2Image

from corpus import LUKS_ATTEMPTS, LUKS_SECRET_ID, QEMU_IMG, _create_luks, run
from daemons import make_image
from damage import (
    EXT_BITMAPS,
    copy_image,
    header_extensions,
    patch_bytes,
    patch_u32,
    read_header,
    read_u64,
)

EXT_BACKING_FORMAT = 0xE2792ACA
EXT_FEATURE_TABLE = 0x6803F857
EXT_CRYPTO = 0x0537BE77
# Incompatible bit 3: compression type field; compatible bit 0: lazy refcounts; autoclear
# bit 0: bitmaps (docs/qcow2-format.md §1).
INCOMPATIBLE, COMPATIBLE, AUTOCLEAR = 0, 1, 2


def qemu_info(path: Path) -> dict[str, Any]:
    return dict(json.loads(run([QEMU_IMG, "info", "--output=json", "-U", str(path)]).stdout))


def described(path: Path) -> HeaderView:
    with Qcow2Image.open(str(path)) as image:
        return describe(image)


def feature_table(path: Path) -> list[tuple[int, int, str]]:
    """The feature name table as qemu wrote it: 48-byte entries of type u8, bit u8, name[46]."""
    (ext,) = [e for e in header_extensions(path) if e.type == EXT_FEATURE_TABLE]
    with open(path, "rb") as f:
        f.seek(ext.offset + 8)
        raw = f.read(ext.length)
    return [(raw[i], raw[i + 1], raw[i + 2:i + 48].rstrip(b"\0").decode())
            for i in range(0, ext.length, 48)]


@pytest.fixture(scope="module")
def overlay(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A zstd overlay with lazy refcounts over a qcow2 backing file, with a snapshot and a
    bitmap."""
    root = tmp_path_factory.mktemp("describe")
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", str(root / "base.qcow2"), "1G"])
    path = root / "overlay.qcow2"
    run([QEMU_IMG, "create", "-q", "-f", "qcow2", "-b", "base.qcow2", "-F", "qcow2", "-o",
         "compression_type=zstd,lazy_refcounts=on", str(path)], cwd=root)
    run([QEMU_IMG, "snapshot", "-c", "before-upgrade", str(path)])
    run([QEMU_IMG, "bitmap", "--add", "-g", "131072", str(path), "backup-0"])
    return path


def test_header_fields_as_qemu_img_info(overlay: Path, qemu_tools: object) -> None:
    info = qemu_info(overlay)
    data = info["format-specific"]["data"]
    view = described(overlay)
    assert view.filename == str(overlay)
    assert view.cluster_size == info["cluster-size"]
    assert view.header.size == info["virtual-size"]
    assert view.refcount_bits == data["refcount-bits"]
    assert view.compression_type_name == data["compression-type"] == "zstd"
    assert view.crypt_method_name == "none"
    assert (view.backing_file, view.backing_format) == (info["backing-filename"],
                                                       info["backing-filename-format"])
    assert view.external_data_file is None and view.luks is None
    assert view.name_problems == ()
    enabled = {(f.type, f.bit) for f in view.features if f.enabled}
    assert ((COMPATIBLE, 0) in enabled) == data["lazy-refcounts"]
    assert ((INCOMPATIBLE, 1) in enabled) == data["corrupt"]
    assert enabled == {(INCOMPATIBLE, 3), (COMPATIBLE, 0), (AUTOCLEAR, 0)}


def test_features_named_by_the_images_own_table(overlay: Path) -> None:
    table = feature_table(overlay)
    view = described(overlay)
    (detail,) = [e.detail for e in view.extensions if e.type == EXT_FEATURE_TABLE]
    assert isinstance(detail, FeatureTableDetail)
    assert [(e.type, e.bit, e.name) for e in detail.entries] == table
    # Every entry of the table is a listed feature, under the table's name.
    assert {(f.type, f.bit, f.name) for f in view.features} >= set(table)
    assert (COMPATIBLE, 0, "lazy refcounts") in table  # qemu's name for it


def test_extensions_where_the_file_has_them(overlay: Path) -> None:
    view = described(overlay)
    on_disk = header_extensions(overlay)
    # Each extension at the offset of its data, after its type and length (u32 each).
    assert [(e.type, e.offset, e.length) for e in view.extensions] == [
        (e.type, e.offset + 8, e.length) for e in on_disk]
    details = {e.type: e.detail for e in view.extensions}
    assert details[EXT_BACKING_FORMAT] == BackingFormatDetail("qcow2")
    (bitmaps,) = [e for e in on_disk if e.type == EXT_BITMAPS]
    detail = details[EXT_BITMAPS]
    assert isinstance(detail, BitmapsDetail)
    assert (detail.nb_bitmaps, detail.bitmap_directory_size,
            detail.bitmap_directory_offset, detail.in_effect) == (
        1, 24 + 8, read_u64(overlay, bitmaps.offset + 8 + 16), True)  # "backup-0": 8 bytes


def test_snapshots_and_bitmaps_as_qemu_img_info(overlay: Path) -> None:
    info = qemu_info(overlay)
    view = described(overlay)
    assert view.snapshots_total == len(info["snapshots"]) == 1
    (shown,) = info["snapshots"]
    (sn,) = view.snapshots
    assert (sn.id, sn.name, sn.date_sec, sn.date_nsec, sn.vm_state_size, sn.icount) == (
        shown["id"], shown["name"], shown["date-sec"], shown["date-nsec"],
        shown["vm-state-size"], shown["icount"])
    assert sn.vm_clock_nsec == shown["vm-clock-sec"] * 10**9 + shown["vm-clock-nsec"]
    header = read_header(overlay)
    assert sn.table_entry_offset == header["snapshots_offset"]
    # qemu 5+ writes 24 bytes of extra data (large VM state size, disk size, icount); the
    # disk size is the virtual size when the snapshot was taken.
    assert (sn.extra_data_size, len(sn.extra_data), sn.disk_size) == (24, 24, 1 << 30)
    assert sn.l1_size == header["l1_size"]  # 1 GiB: both need 2 entries
    assert [(b.name, b.granularity, ["auto"] if b.auto else []) for b in view.bitmaps] == [
        (b["name"], b["granularity"], b["flags"])
        for b in info["format-specific"]["data"]["bitmaps"]]
    (bm,) = view.bitmaps
    assert (bm.granularity_bits, bm.in_use, bm.type, bm.bitmap_table_size) == (17, False, 1, 1)


def test_unknown_extension_shown_by_its_first_bytes(tmp_path: Path, qemu_tools: object) -> None:
    """An extension qemu does not know (it ignores it and still opens the image): type,
    length and the first 64 bytes."""
    path = tmp_path / "unknown.qcow2"
    make_image(path, "1G")
    end = max(e.offset + 8 + -(-e.length // 8) * 8 for e in header_extensions(path))
    payload = bytes(range(70))
    patch_bytes(path, end, struct.pack(">II", 0x12345678, len(payload)) + payload
                + bytes(2) + bytes(8))  # padded to 8, then the end marker
    assert qemu_info(path)["virtual-size"] == 1 << 30  # qemu opens it
    view = described(path)
    (unknown,) = [e for e in view.extensions if e.type == 0x12345678]
    assert (unknown.offset, unknown.length) == (end + 8, 70)
    assert unknown.detail == RawDetail(payload[:SHOWN_DATA])


def test_luks_header_as_qemu_img_info(tmp_path: Path, qemu_tools: object) -> None:
    path = tmp_path / "luks.qcow2"
    _create_luks(path, 32 << 20, {"encrypt.format": "luks",
                                  "encrypt.key-secret": LUKS_SECRET_ID,
                                  "encrypt.iter-time": "10"}, attempts=LUKS_ATTEMPTS)
    shown = qemu_info(path)["format-specific"]["data"]["encrypt"]
    view = described(path)
    luks = view.luks
    with Qcow2Image.open(str(path)) as image:
        assert describe_luks(image) == luks
    assert luks is not None and view.crypt_method_name == "luks"
    (crypto,) = [e for e in view.extensions if e.type == EXT_CRYPTO]
    assert crypto.detail == CryptoDetail(luks.offset, luks.length)
    # qemu's default: AES-256 in XTS mode, plain64 IVs, SHA-256.
    assert (luks.cipher_alg, luks.ivgen_alg, luks.ivgen_hash_alg, luks.hash_spec) == (
        shown["cipher-alg"], shown["ivgen-alg"], shown.get("ivgen-hash-alg"),
        shown["hash-alg"])
    # The header's own fields: the LUKS1 cipher mode names the mode and the IV generator.
    assert luks.cipher_mode == f"{shown['cipher-mode']}-{shown['ivgen-alg']}" == "xts-plain64"
    assert (luks.cipher_name, luks.master_key_bytes, luks.version) == ("aes", 64, 1)
    assert (luks.payload_offset, luks.uuid, luks.master_key_iterations) == (
        shown["payload-offset"], shown["uuid"], shown["master-key-iters"])
    assert [(s.active, s.key_offset) for s in luks.key_slots] == [
        (s["active"], s["key-offset"]) for s in shown["slots"]]
    assert [(s.iterations, s.stripes) for s in luks.key_slots if s.active] == [
        (s["iters"], s["stripes"]) for s in shown["slots"] if s["active"]]


def test_damaged_snapshot_table_names_file_entry_and_offset(overlay: Path,
                                                            tmp_path: Path) -> None:
    path = copy_image(overlay, tmp_path / "damaged.qcow2")
    entry = read_header(path)["snapshots_offset"]
    patch_u32(path, entry + 36, 1 << 20)  # extra_data_size: over qemu's 1 KiB limit
    with pytest.raises(Qcow2Error) as info:
        described(path)
    error = info.value
    assert (error.filename, error.structure, error.offset, error.kind, error.value) == (
        str(path), "snapshot table entry 0", entry + 36, OUT_OF_BOUNDS, 1 << 20)


def test_snapshot_list_is_bounded_and_the_total_complete(tmp_path: Path,
                                                         qemu_tools: object) -> None:
    """A header claiming 1500 snapshots where the file holds one, the rest past EOF (read as
    zeros, as qemu reads them: qemu-img info lists 1500): the first 1000 listed, 1500
    counted."""
    path = tmp_path / "many.qcow2"
    make_image(path, "1G")
    run([QEMU_IMG, "snapshot", "-c", "only-one", str(path)])
    table = read_header(path)["snapshots_offset"]
    # The one entry: 40 fixed bytes, 24 of extra data, id "1", name "only-one"; the file
    # ends there, so the other 1499 entries lie past EOF.
    first_end = table + 40 + 24 + len("1") + len("only-one")
    assert path.stat().st_size == first_end
    patch_u32(path, 60, 1500)  # nb_snapshots
    shown = qemu_info(path)["snapshots"]
    view = described(path)
    assert view.snapshots_total == len(shown) == 1500
    assert len(view.snapshots) == 1000
    assert [(sn.id, sn.name) for sn in view.snapshots] == [
        (s["id"], s["name"]) for s in shown[:1000]]
    # Entries start 8-aligned; an all-zero entry is its fixed 40 bytes.
    second = -(-first_end // 8) * 8
    assert view.snapshots[0].table_entry_offset == table
    assert [sn.table_entry_offset for sn in view.snapshots[1:4]] == [
        second, second + 40, second + 80]
