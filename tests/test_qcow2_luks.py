"""collectors/qcow2/luks.py: the LUKS1 header of an encrypted image read without its key, as
qemu-img info shows it, and a damaged header refused with the structure and offset named."""

from __future__ import annotations

import json
import struct
from pathlib import Path

import pytest

from qcow2_monitor.collectors.common.errors import (
    INVALID,
    TRUNCATED,
    UNSUPPORTED,
    Qcow2Error,
)
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.luks import LuksInfo, read_luks
from qcow2_monitor.collectors.qcow2.reader import ImageFile

from corpus import LUKS_ATTEMPTS, LUKS_SECRET_ID, QEMU_IMG, _create_luks, run
from damage import copy_image, header_extensions, patch_bytes, patch_u16, patch_u32, read_u64

EXT_CRYPTO = 0x0537BE77
# LUKS1 header fields (the LUKS1 on-disk format): magic[6], version u16, cipher_name[32],
# cipher_mode[32], hash_spec[32], payload_offset u32 (sectors), key_bytes u32, ...
AT_VERSION, AT_CIPHER_NAME, AT_CIPHER_MODE, AT_KEY_BYTES = 6, 8, 40, 108
LUKS_HEADER_SIZE = 592  # 208 bytes + 8 key slots of 48


@pytest.fixture(scope="module")
def luks_image(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """Not qemu's default cipher: AES-128 in CBC mode, ESSIV over SHA-256, SHA-1 for PBKDF2."""
    path = tmp_path_factory.mktemp("luks") / "luks.qcow2"
    _create_luks(path, 64 << 20, {
        "encrypt.format": "luks", "encrypt.key-secret": LUKS_SECRET_ID,
        "encrypt.iter-time": "10", "encrypt.cipher-alg": "aes-128",
        "encrypt.cipher-mode": "cbc", "encrypt.ivgen-alg": "essiv",
        "encrypt.ivgen-hash-alg": "sha256", "encrypt.hash-alg": "sha1"}, attempts=LUKS_ATTEMPTS)
    return path


def pointer(path: Path) -> tuple[int, int]:
    """(offset, length) of the LUKS header area, by the tests' own reader."""
    (ext,) = [e for e in header_extensions(path) if e.type == EXT_CRYPTO]
    return read_u64(path, ext.offset + 8), read_u64(path, ext.offset + 16)


def read(path: Path, offset: int, length: int) -> LuksInfo:
    with ImageFile(str(path)) as file:
        return read_luks(file, struct.pack(">QQ", offset, length))


def test_header_as_qemu_img_info_shows_it(luks_image: Path, qemu_tools: object) -> None:
    info = json.loads(run([QEMU_IMG, "info", "--output=json", str(luks_image)]).stdout)
    shown = info["format-specific"]["data"]["encrypt"]
    offset, length = pointer(luks_image)
    luks = read(luks_image, offset, length)
    assert (luks.offset, luks.length) == (offset, length)
    assert luks.cipher_alg == shown["cipher-alg"] == "aes-128"
    assert luks.cipher_mode == shown["cipher-mode"] == "cbc"
    assert (luks.ivgen_alg, luks.ivgen_hash_alg) == (shown["ivgen-alg"],
                                                    shown["ivgen-hash-alg"])
    assert luks.hash_alg == shown["hash-alg"] == "sha1"
    assert luks.payload_offset == shown["payload-offset"]
    assert luks.header.uuid == shown["uuid"]
    assert luks.header.master_key_iterations == shown["master-key-iters"]
    assert luks.header.version == 1
    slots = [{"active": s.enabled, "key-offset": s.key_offset_sector * 512,
              **({"iters": s.iterations, "stripes": s.stripes} if s.enabled else {})}
             for s in luks.header.key_slots]
    assert slots == shown["slots"]
    # The header area holds the header and every slot's key material, payload excluded.
    assert LUKS_HEADER_SIZE < luks.payload_offset <= length


@pytest.mark.parametrize(("name", "mode", "key_bytes", "alg", "ivgen"), [
    # qcrypto_block_luks_cipher_name_lookup(): the name and the key size in bits; XTS uses
    # two keys of half the key bytes each.
    ("aes", "xts-plain64", 64, "aes-256", ("plain64", None)),
    ("aes", "cbc-plain", 24, "aes-192", ("plain", None)),
    ("twofish", "xts-plain64", 32, "twofish-128", ("plain64", None)),
    ("serpent", "cbc-essiv:sha512", 32, "serpent-256", ("essiv", "sha512")),
    ("cast5", "cbc-plain64", 16, "cast5-128", ("plain64", None)),
    ("des3_ede", "cbc-plain", 24, "des3_ede", ("plain", None)),  # named as it is
])
def test_cipher_names(luks_image: Path, tmp_path: Path, name: str, mode: str, key_bytes: int,
                      alg: str, ivgen: tuple[str, str | None]) -> None:
    path = copy_image(luks_image, tmp_path / "cipher.qcow2")
    offset, length = pointer(path)
    patch_bytes(path, offset + AT_CIPHER_NAME, name.encode().ljust(32, b"\0"))
    patch_bytes(path, offset + AT_CIPHER_MODE, mode.encode().ljust(32, b"\0"))
    patch_u32(path, offset + AT_KEY_BYTES, key_bytes)
    luks = read(path, offset, length)
    assert (luks.cipher_alg, luks.cipher_mode, (luks.ivgen_alg, luks.ivgen_hash_alg)) == (
        alg, mode.partition("-")[0], ivgen)
    assert (luks.header.cipher_name, luks.header.cipher_mode) == (name, mode)


def test_bad_magic(luks_image: Path, tmp_path: Path) -> None:
    path = copy_image(luks_image, tmp_path / "magic.qcow2")
    offset, length = pointer(path)
    patch_bytes(path, offset, b"LUKX")
    with pytest.raises(Qcow2Error) as info:
        read(path, offset, length)
    assert (info.value.structure, info.value.offset, info.value.kind) == (
        "LUKS header", offset, INVALID)
    assert "magic" in info.value.message
    # Opened as an image, the error names the file.
    with Qcow2Image.open(str(path)) as image, pytest.raises(Qcow2Error) as info:
        image.luks()
    assert str(info.value).startswith(f"{path}: LUKS header at offset 0x{offset:x}: ")


def test_luks2_is_unsupported(luks_image: Path, tmp_path: Path) -> None:
    path = copy_image(luks_image, tmp_path / "v2.qcow2")
    offset, length = pointer(path)
    patch_u16(path, offset + AT_VERSION, 2)
    with pytest.raises(Qcow2Error) as info:
        read(path, offset, length)
    assert (info.value.structure, info.value.offset, info.value.kind, info.value.value) == (
        "LUKS header", offset + AT_VERSION, UNSUPPORTED, 2)


def test_area_smaller_than_the_header(luks_image: Path) -> None:
    offset, _ = pointer(luks_image)
    with pytest.raises(Qcow2Error) as info:
        read(luks_image, offset, LUKS_HEADER_SIZE - 1)
    assert (info.value.structure, info.value.offset, info.value.kind, info.value.value) == (
        "LUKS header", offset, INVALID, LUKS_HEADER_SIZE - 1)
    assert read(luks_image, offset, LUKS_HEADER_SIZE).length == LUKS_HEADER_SIZE


def test_header_past_eof(luks_image: Path, tmp_path: Path) -> None:
    """A file cut inside the LUKS header is refused (qemu reads zeros there: no LUKS magic)."""
    path = copy_image(luks_image, tmp_path / "cut.qcow2")
    offset, length = pointer(path)
    with open(path, "r+b") as f:
        f.truncate(offset + 100)
    with pytest.raises(Qcow2Error) as info:
        read(path, offset, length)
    assert (info.value.structure, info.value.offset, info.value.kind, info.value.filename) == (
        "LUKS header", offset, TRUNCATED, str(path))
