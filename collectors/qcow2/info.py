"""The `qemu-img info --output=json` view of a qcow2 image (qemu 7.2: bdrv_query_image_info()
and qcow2_get_specific_info(); docs/qcow2-format.md §8), computed from metadata alone: no key,
no data file."""

from __future__ import annotations

from typing import Any, Optional

from . import layout as L
from .chain import backing_path, has_protocol
from .image import Qcow2Image, Snapshot
from .reader import ImageFile

JsonDict = dict[str, Any]


def snapshot_info(sn: Snapshot) -> JsonDict:
    info: JsonDict = {
        "id": sn.id_str,
        "name": sn.name,
        "vm-state-size": sn.vm_state_size,
        "date-sec": sn.date_sec,
        "date-nsec": sn.date_nsec,
        "vm-clock-sec": sn.vm_clock_nsec // 1_000_000_000,
        "vm-clock-nsec": sn.vm_clock_nsec % 1_000_000_000,
    }
    if sn.icount is not None:
        info["icount"] = sn.icount
    return info


def encrypt_info(image: Qcow2Image) -> Optional[JsonDict]:
    method = image.header.crypt_method
    if method == L.CRYPT_AES:
        return {"format": "aes"}
    if method != L.CRYPT_LUKS:
        return None
    luks = image.luks()
    assert luks is not None  # LUKS without its extension is refused at open time
    slots = []
    for slot in luks.header.key_slots:
        entry: JsonDict = {"active": slot.enabled,
                           "key-offset": slot.key_offset_sector * L.LUKS_SECTOR_SIZE}
        if slot.enabled:
            entry["iters"] = slot.iterations
            entry["stripes"] = slot.stripes
        slots.append(entry)
    info: JsonDict = {
        "format": "luks",
        "cipher-alg": luks.cipher_alg,
        "cipher-mode": luks.cipher_mode,
        "ivgen-alg": luks.ivgen_alg,
        "hash-alg": luks.hash_alg,
        "payload-offset": luks.payload_offset,
        "master-key-iters": luks.header.master_key_iterations,
        "uuid": luks.header.uuid,
        "slots": slots,
    }
    if luks.ivgen_hash_alg:
        info["ivgen-hash-alg"] = luks.ivgen_hash_alg
    return info


def format_specific(image: Qcow2Image) -> JsonDict:
    h = image.header
    data: JsonDict = {
        "compat": "0.10" if h.version == 2 else "1.1",
        "compression-type": L.COMPRESSION_TYPE_NAMES[h.compression_type],
        "refcount-bits": h.refcount_bits,
    }
    if h.version >= 3:
        data["lazy-refcounts"] = h.lazy_refcounts
        data["corrupt"] = h.corrupt
        data["extended-l2"] = h.extended_l2
        bitmaps = image.bitmaps()
        if bitmaps:
            data["bitmaps"] = [{"flags": bm.flag_names, "name": bm.name,
                                "granularity": bm.granularity} for bm in bitmaps]
        if image.data_file_name is not None:
            data["data-file"] = image.data_file_name
        if h.has_data_file:
            data["data-file-raw"] = h.data_file_raw
    encrypt = encrypt_info(image)
    if encrypt is not None:
        data["encrypt"] = encrypt
    return {"type": "qcow2", "data": data}


def actual_size(image: Qcow2Image) -> int:
    """st_blocks * 512 for a file; qemu reports 0 for a block device ("disk size: 0 B")."""
    if image.file.is_block_device:
        return 0
    return image.file.stat.st_blocks * 512


def image_info(image: Qcow2Image) -> JsonDict:
    h = image.header
    info: JsonDict = {
        "virtual-size": h.size // 512 * 512,
        "filename": image.filename,
        "cluster-size": h.cluster_size,
        "format": "qcow2",
        "actual-size": actual_size(image),
        "format-specific": format_specific(image),
        "dirty-flag": h.dirty,
    }
    if h.crypt_method != L.CRYPT_NONE:
        info["encrypted"] = True
    # qemu reads the name into a C string: what follows a NUL byte is not part of it.
    backing = (image.backing_filename or "").split("\0", 1)[0]
    if backing:
        info["backing-filename"] = backing
        if has_protocol(backing):
            info["full-backing-filename"] = backing
        else:
            info["full-backing-filename"] = backing_path(image.filename, backing)
        if image.backing_format:
            info["backing-filename-format"] = image.backing_format
    snapshots = image.snapshots()
    if snapshots:
        info["snapshots"] = [snapshot_info(sn) for sn in snapshots]
    return info


def raw_info(path: str) -> JsonDict:
    """`qemu-img info --output=json` of a raw layer (a raw base image below a qcow2 one): the
    raw driver's virtual size is the length of the file or device."""
    with ImageFile(path) as file:
        return {
            "virtual-size": file.length,
            "filename": path,
            "format": "raw",
            "actual-size": 0 if file.is_block_device else file.stat.st_blocks * 512,
            "dirty-flag": False,
        }
