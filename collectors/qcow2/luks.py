"""The LUKS1 header of an encrypted image, as `qemu-img info` shows it (crypto/block-luks.c):
read without any key."""

from __future__ import annotations

from ..common.errors import INVALID, UNSUPPORTED, Qcow2Error
from ..common.record import frozen_record
from . import layout as L
from .reader import ImageFile

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Optional


@frozen_record
class LuksInfo:
    """The LUKS1 header fields `qemu-img info` shows (qcrypto_block_luks_get_info)."""

    offset: int
    length: int
    header: L.LuksHeader
    cipher_alg: str
    cipher_mode: str
    ivgen_alg: str
    ivgen_hash_alg: Optional[str]
    hash_alg: str

    @property
    def payload_offset(self) -> int:
        return self.header.payload_offset_sector * L.LUKS_SECTOR_SIZE


def read_luks(file: ImageFile, extension_data: bytes) -> LuksInfo:
    """The LUKS header the crypto header extension points to; raises Qcow2Error."""
    pointer = L.CryptoHeaderExtension.from_bytes(extension_data)
    if pointer.length < L.LuksHeader.SIZE:
        raise Qcow2Error(f"LUKS header area of {pointer.length} bytes is smaller than the "
                         f"{L.LuksHeader.SIZE}-byte LUKS header", structure="LUKS header",
                         offset=pointer.offset, value=pointer.length, kind=INVALID)
    header = L.LuksHeader.from_bytes(file.read(pointer.offset, L.LuksHeader.SIZE,
                                               "LUKS header"))
    if header.magic != L.LUKS_MAGIC:
        raise Qcow2Error("bad LUKS magic", structure="LUKS header", offset=pointer.offset,
                         kind=INVALID)
    if header.version != 1:
        raise Qcow2Error(f"unsupported LUKS version {header.version}", structure="LUKS header",
                         offset=pointer.offset + 6, value=header.version, kind=UNSUPPORTED)
    mode, _, ivgen = header.cipher_mode.partition("-")
    ivgen_alg, _, ivgen_hash = ivgen.partition(":")
    return LuksInfo(pointer.offset, pointer.length, header, _luks_cipher_alg(header), mode,
                    ivgen_alg, ivgen_hash or None, header.hash_spec)


def _luks_cipher_alg(header: L.LuksHeader) -> str:
    """qcrypto_block_luks_cipher_name_lookup(): name + key size (aes, 64-byte xts: aes-256)."""
    key_bytes = header.master_key_len
    if header.cipher_mode.startswith("xts"):
        key_bytes //= 2
    name = header.cipher_name
    if name in ("aes", "twofish", "serpent"):
        return f"{name}-{key_bytes * 8}"
    if name == "cast5":
        return "cast5-128"
    return name
