"""Everything in an image's header area as data: every header field, every feature bit by
name (the image's own feature name table first), every extension (unknown ones by type and
length), the backing file, the LUKS header, the snapshot table and the bitmap directory."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from . import layout as L
from .image import Qcow2Image

# Snapshots listed (a header may claim 65536, read as zeros past EOF); the total is complete.
MAX_LISTED = 1000


def describe_extensions(image: Qcow2Image) -> list[dict[str, Any]]:
    described = []
    for ext in image.extensions:
        item: dict[str, Any] = {"type": f"0x{ext.type:08x}", "name": ext.name,
                                "offset": ext.offset, "length": ext.length}
        if ext.type == L.QCOW2_EXT_MAGIC_BACKING_FORMAT:
            item["backing_format"] = image.backing_format
        elif ext.type == L.QCOW2_EXT_MAGIC_DATA_FILE:
            item["data_file"] = image.data_file_name
        elif ext.type == L.QCOW2_EXT_MAGIC_FEATURE_TABLE:
            size = L.FeatureNameEntry.STRUCT.size
            item["entries"] = [
                {"type": L.FEATURE_TYPE_NAMES.get(e.type, str(e.type)), "bit": e.bit,
                 "name": e.name}
                for e in (L.FeatureNameEntry.from_bytes(ext.data, i * size)
                          for i in range(ext.length // size))
            ]
        elif ext.type == L.QCOW2_EXT_MAGIC_BITMAPS and ext.length == 24:
            bm = L.BitmapsExtension.from_bytes(ext.data)
            item.update(nb_bitmaps=bm.nb_bitmaps, bitmap_directory_size=bm.bitmap_directory_size,
                         bitmap_directory_offset=bm.bitmap_directory_offset,
                         in_effect=image.header.bitmaps_autoclear)
        elif ext.type == L.QCOW2_EXT_MAGIC_CRYPTO_HEADER and ext.length == 16:
            ptr = L.CryptoHeaderExtension.from_bytes(ext.data)
            item.update(luks_offset=ptr.offset, luks_length=ptr.length)
        else:
            item["data_hex"] = ext.data[:64].hex()
        described.append(item)
    return described


def describe_luks(image: Qcow2Image) -> dict[str, Any] | None:
    luks = image.luks()
    if luks is None:
        return None
    h = luks.header
    return {
        "offset": luks.offset,
        "length": luks.length,
        "version": h.version,
        "cipher_name": h.cipher_name,
        "cipher_mode": h.cipher_mode,
        "cipher_alg": luks.cipher_alg,
        "ivgen_alg": luks.ivgen_alg,
        "ivgen_hash_alg": luks.ivgen_hash_alg,
        "hash_spec": h.hash_spec,
        "payload_offset": luks.payload_offset,
        "master_key_bytes": h.master_key_len,
        "master_key_iterations": h.master_key_iterations,
        "uuid": h.uuid,
        "key_slots": [
            {"slot": i, "active": s.enabled, "iterations": s.iterations,
             "key_offset": s.key_offset_sector * L.LUKS_SECTOR_SIZE, "stripes": s.stripes}
            for i, s in enumerate(h.key_slots)
        ],
    }


def describe(image: Qcow2Image) -> dict[str, Any]:
    h = image.header
    header_fields = {f.name: getattr(h, f.name) for f in fields(h)}
    header_fields["magic"] = h.magic.hex()
    return {
        "filename": image.filename,
        "header": header_fields,
        "cluster_size": h.cluster_size,
        "refcount_bits": h.refcount_bits,
        "crypt_method_name": L.CRYPT_METHOD_NAMES.get(h.crypt_method, "unknown"),
        "compression_type_name": L.COMPRESSION_TYPE_NAMES[h.compression_type],
        "features": [
            {"type": L.FEATURE_TYPE_NAMES[f.type], "bit": f.bit, "name": f.name,
             "enabled": f.enabled}
            for f in image.features()
        ],
        "extensions": describe_extensions(image),
        "backing_file": image.backing_filename,
        "backing_format": image.backing_format,
        "external_data_file": image.data_file_name,
        "name_problems": image.name_problems(),
        "luks": describe_luks(image),
        "snapshots": [
            {"id": sn.id_str, "name": sn.name, "table_entry_offset": sn.offset,
             "l1_table_offset": sn.l1_table_offset, "l1_size": sn.l1_size,
             "date_sec": sn.date_sec, "date_nsec": sn.date_nsec,
             "vm_clock_nsec": sn.vm_clock_nsec, "vm_state_size": sn.vm_state_size,
             "extra_data_size": sn.extra_data_size, "disk_size": sn.disk_size,
             "icount": sn.icount, "extra_data_hex": sn.extra_data.hex()}
            for sn in image.snapshots()[:MAX_LISTED]
        ],
        "snapshots_total": len(image.snapshots()),
        "bitmaps": [
            {"name": bm.name, "directory_entry_offset": bm.offset,
             "granularity": bm.granularity, "granularity_bits": bm.granularity_bits,
             "flags": bm.flags, "in_use": bm.in_use, "auto": bm.auto, "type": bm.type,
             "bitmap_table_offset": bm.bitmap_table_offset,
             "bitmap_table_size": bm.bitmap_table_size, "extra_data_size": bm.extra_data_size}
            for bm in image.bitmaps()
        ],
    }
