"""Unit tests of the core's pure parts, with expectations derived by hand in each test."""

from __future__ import annotations

import struct
from pathlib import Path

import pytest

from qcow2_monitor.collectors.check.refblocks import decode_block
from qcow2_monitor.collectors.common.errors import (
    NOT_QCOW2,
    OUT_OF_BOUNDS,
    TRUNCATED,
    UNSUPPORTED,
    Qcow2Error,
)
from qcow2_monitor.collectors.qcow2 import layout as L
from qcow2_monitor.collectors.qcow2.chain import backing_path, has_protocol
from qcow2_monitor.collectors.qcow2.header import parse_header
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.refcount import highest_nonzero_entry


def test_structure_sizes() -> None:
    assert L.HeaderV2.STRUCT.size == 72
    assert L.V3_HEADER_LENGTH == 104
    assert L.ExtensionHeader.STRUCT.size == 8
    assert L.FeatureNameEntry.STRUCT.size == 48
    assert L.BitmapsExtension.STRUCT.size == 24
    assert L.CryptoHeaderExtension.STRUCT.size == 16
    assert L.SNAPSHOT_HEADER_STRUCT.size == 40
    assert L.BITMAP_DIR_ENTRY_STRUCT.size == 24
    assert L.LuksKeySlot.STRUCT.size == 48
    assert L.LuksHeader.SIZE == 592


def v2_header(**fields: int) -> bytearray:
    values = dict(magic=L.QCOW_MAGIC, version=2, backing_file_offset=0, backing_file_size=0,
                  cluster_bits=16, size=1 << 20, crypt_method=0, l1_size=1,
                  l1_table_offset=0x30000, refcount_table_offset=0x10000,
                  refcount_table_clusters=1, nb_snapshots=0, snapshots_offset=0)
    values.update(fields)
    return bytearray(L.HeaderV2.STRUCT.pack(*values.values()))


def test_v2_header_never_reads_v3_fields() -> None:
    # Bytes 72..103 of a v2 image belong to the extension area: fill them with garbage that
    # would be a dirty bit, refcount_order 7 and header_length 5 if read as v3 fields.
    head = v2_header() + struct.pack(">QQQII", 0xFF, 0xFF, 0xFF, 7, 5)
    h = parse_header(bytes(head), 1 << 20)
    assert h.version == 2
    assert h.refcount_order == 4 and h.refcount_bits == 16
    assert h.header_length == 72
    assert h.incompatible_features == 0 and not h.dirty


@pytest.mark.parametrize(
    ("patch", "kind", "structure"),
    [
        ({"magic": b"QFI\xfa"}, NOT_QCOW2, "header"),
        ({"version": 4}, UNSUPPORTED, "header.version"),
        ({"cluster_bits": 30}, UNSUPPORTED, "header.cluster_bits"),
        ({"l1_size": 0xFFFFFFFF}, OUT_OF_BOUNDS, "active L1 table"),
        ({"l1_size": 0}, "invalid", "header.l1_size"),
        ({"nb_snapshots": 65537}, OUT_OF_BOUNDS, "header.nb_snapshots"),
        ({"refcount_table_clusters": 0}, "invalid", "header.refcount_table_clusters"),
        ({"refcount_table_offset": 0x10001}, "invalid", "refcount table"),
    ],
)
def test_header_errors_name_structure(patch: dict[str, object], kind: str,
                                      structure: str) -> None:
    head = v2_header(**patch)  # type: ignore[arg-type]
    with pytest.raises(Qcow2Error) as info:
        parse_header(bytes(head), 1 << 20)
    assert info.value.kind == kind
    assert info.value.structure == structure


def test_truncated_file_is_reported(tmp_path: Path) -> None:
    path = tmp_path / "short.qcow2"
    path.write_bytes(bytes(v2_header())[:40])
    with pytest.raises(Qcow2Error) as info:
        Qcow2Image.open(str(path))
    assert info.value.kind == TRUNCATED
    assert str(path) in str(info.value)


def test_refcount_decoding_every_width() -> None:
    # One byte 0b1110_0100 read as packed LSB-first entries.
    block = bytes([0b11100100])
    assert decode_block(block, 1).tolist() == [0, 0, 1, 0, 0, 1, 1, 1]
    assert decode_block(block, 2).tolist() == [0, 1, 2, 3]
    assert decode_block(block, 4).tolist() == [4, 14]
    assert decode_block(bytes([0, 7]), 8).tolist() == [0, 7]
    assert decode_block(bytes([1, 2]), 16).tolist() == [0x0102]
    assert decode_block(bytes([0, 0, 1, 0]), 32).tolist() == [256]
    assert decode_block(bytes(7) + b"\x05", 64).tolist() == [5]


def test_highest_nonzero_entry_respects_limit() -> None:
    # 1-bit refcounts: entries 0..7 of byte 0 = bits; byte 0b1000_0001 sets entries 0 and 7.
    block = bytes([0b10000001, 0, 0, 0])
    assert highest_nonzero_entry(block, 1, 32) == 7
    # With only 7 entries below nb_clusters, entry 7 (past EOF) must be ignored.
    assert highest_nonzero_entry(block, 1, 7) == 0
    assert highest_nonzero_entry(bytes(4), 1, 32) is None
    # 16-bit: entries 0 and 2 nonzero, entry 1 zero (a hole below the end is not the end).
    block16 = struct.pack(">4H", 1, 0, 3, 0)
    assert highest_nonzero_entry(block16, 16, 4) == 2
    assert highest_nonzero_entry(block16, 16, 2) == 0
    # 4-bit: second nibble of byte 1 is entry 3.
    assert highest_nonzero_entry(bytes([0x01, 0x20]), 4, 4) == 3
    assert highest_nonzero_entry(bytes([0x01, 0x20]), 4, 3) == 0


def test_protocols_are_detected_like_qemu() -> None:
    assert has_protocol("json:{\"file\": {}}")
    assert has_protocol("nbd:localhost:10809")
    assert not has_protocol("/var/lib/a:b.qcow2")
    assert not has_protocol("dir/a:b.qcow2")
    assert backing_path("/images/sub/top.qcow2", "base.qcow2") == "/images/sub/base.qcow2"
    assert backing_path("sub/top.qcow2", "../base.qcow2") == "sub/../base.qcow2"
    assert backing_path("/images/top.qcow2", "/abs/base.qcow2") == "/abs/base.qcow2"
