"""Everything in an image's header area as data: every header field, every feature bit by
name (the image's own feature name table first), every extension (unknown ones by type and
length), the backing file, the LUKS header, the snapshot table and the bitmap directory."""

from __future__ import annotations

from dataclasses import fields
from typing import Any

from . import layout as L
from .image import Qcow2Image
from .units import indent_block, render_fields, render_table

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


HEX_FIELDS = ("offset", "features")


def render_human(data: dict[str, Any]) -> str:
    """The description as aligned text: one section per structure, figures in columns."""
    h = data["header"]
    header = [(key, f"0x{value:x}" if key.endswith(HEX_FIELDS) and isinstance(value, int)
               else f"0x{value}" if key == "magic" else str(value))
              for key, value in h.items()]
    header += [("(cluster size)", str(data["cluster_size"])),
               ("(refcount bits)", str(data["refcount_bits"])),
               ("(encryption)", data["crypt_method_name"]),
               ("(compression)", data["compression_type_name"])]
    out = [f"image: {data['filename']}\n", "\nHeader\n", render_fields(header)]
    out += ["\nFeatures\n", indent_block(render_table(
        ("TYPE", "BIT", "NAME", "STATE"),
        [(f["type"], str(f["bit"]), f["name"], "on" if f["enabled"] else "off")
         for f in data["features"]], right=(1,)))]
    out += ["\nHeader extensions\n", indent_block(render_table(
        ("TYPE", "NAME", "OFFSET", "LENGTH"),
        [(e["type"], e["name"], f"0x{e['offset']:x}", str(e["length"]))
         for e in data["extensions"]], right=(2, 3)))]
    for ext in data["extensions"]:
        out.append(_extension_detail(ext))
    if data["backing_file"] is not None:
        out.append(f"\nBacking file: {data['backing_file']} "
                   f"(format {data['backing_format'] or 'not recorded'})\n")
    if data["external_data_file"] is not None:
        out.append(f"\nExternal data file: {data['external_data_file']}\n")
    if data["name_problems"]:
        out += ["\nName problems\n", "".join(f"    {problem}\n"
                                             for problem in data["name_problems"])]
    if data["luks"]:
        out.append(_luks_text(data["luks"]))
    if data["snapshots"]:
        shown = (f" (first {len(data['snapshots'])} of {data['snapshots_total']})"
                 if data["snapshots_total"] > len(data["snapshots"]) else "")
        out += [f"\nSnapshot table{shown}\n", indent_block(render_table(
            ("ID", "NAME", "ENTRY AT", "L1 TABLE", "L1 SIZE", "VM STATE", "DISK SIZE",
             "EXTRA"),
            [(sn["id"], sn["name"], f"0x{sn['table_entry_offset']:x}",
              f"0x{sn['l1_table_offset']:x}", str(sn["l1_size"]), str(sn["vm_state_size"]),
              "-" if sn["disk_size"] is None else str(sn["disk_size"]),
              str(sn["extra_data_size"])) for sn in data["snapshots"]],
            right=(2, 3, 4, 5, 6, 7)))]
    if data["bitmaps"]:
        out += ["\nBitmap directory\n", indent_block(render_table(
            ("NAME", "GRANULARITY", "FLAGS", "TABLE AT", "TABLE SIZE"),
            [(bm["name"], str(bm["granularity"]),
              ",".join(n for n, on in (("in_use", bm["in_use"]), ("auto", bm["auto"])) if on)
              or "-", f"0x{bm['bitmap_table_offset']:x}", str(bm["bitmap_table_size"]))
             for bm in data["bitmaps"]], right=(1, 3, 4)))]
    return "".join(out)


def _extension_detail(ext: dict[str, Any]) -> str:
    """What an extension holds, below the extensions table (nothing for an empty one)."""
    if "entries" in ext:
        return f"\n{ext['name']} ({ext['type']})\n" + indent_block(render_table(
            ("TYPE", "BIT", "NAME"),
            [(e["type"], str(e["bit"]), e["name"]) for e in ext["entries"]], right=(1,)))
    extra = [(key, f"0x{value:x}" if key.endswith("offset") and isinstance(value, int)
              else str(value))
             for key, value in ext.items() if key not in ("type", "name", "offset", "length")]
    if not extra:
        return ""
    return f"\n{ext['name']} ({ext['type']})\n" + render_fields(extra)


def _luks_text(luks: dict[str, Any]) -> str:
    fields_shown = [(key, f"0x{luks[key]:x}" if key in ("offset", "payload_offset")
                     else "-" if luks[key] is None else str(luks[key]))
                    for key in ("offset", "length", "version", "cipher_name", "cipher_mode",
                                "cipher_alg", "ivgen_alg", "ivgen_hash_alg", "hash_spec",
                                "payload_offset", "master_key_bytes", "master_key_iterations",
                                "uuid")]
    slots = render_table(
        ("SLOT", "STATE", "ITERATIONS", "STRIPES", "KEY MATERIAL AT"),
        [(str(s["slot"]), "active" if s["active"] else "inactive",
          str(s["iterations"]) if s["active"] else "-",
          str(s["stripes"]) if s["active"] else "-", f"0x{s['key_offset']:x}")
         for s in luks["key_slots"]], right=(0, 2, 3, 4))
    return "\nLUKS header\n" + render_fields(fields_shown) + "\n" + indent_block(slots)
