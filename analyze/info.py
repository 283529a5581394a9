"""`qcow2-analyze info` (what `qemu-img info` reports) and `qcow2-analyze header`."""

from __future__ import annotations

import argparse
import time
from contextlib import closing
from functools import lru_cache
from typing import Any, Optional, TextIO

from qcow2_monitor.cli.exits import EXIT_FAILED, EXIT_OK
from qcow2_monitor.cli.text import (
    indent_block,
    json_text,
    render_fields,
    render_table,
)
from qcow2_monitor.collectors.common.errors import UNSUPPORTED, Qcow2Error
from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.common.units import human_size
from qcow2_monitor.collectors.qcow2.chain import walk
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.info import image_info, raw_info
from qcow2_monitor.collectors.report.model import (
    LAYER_ERROR,
    LAYER_OTHER_FORMAT,
    LAYER_PROTOCOL,
    ChainLayer,
)

from .common import error_document, report_error


def render_info_human(info: dict[str, Any]) -> str:
    """bdrv_image_info_dump() of qemu 7.2 (block/qapi.c), line for line, from the JSON view;
    names by the printable rule of every output (collectors/common/text.py)."""
    lines = [
        f"image: {printable(info['filename'])}",
        f"file format: {info['format']}",
        f"virtual size: {human_size(info['virtual-size'])} ({info['virtual-size']} bytes)",
        f"disk size: {human_size(info['actual-size'])}",
    ]
    if info.get("encrypted"):
        lines.append("encrypted: yes")
    if "cluster-size" in info:
        lines.append(f"cluster_size: {info['cluster-size']}")
    if info.get("dirty-flag"):
        lines.append("cleanly shut down: no")
    if "backing-filename" in info:
        line = f"backing file: {printable(info['backing-filename'])}"
        full = info.get("full-backing-filename")
        if full is None:
            line += " (cannot determine actual path)"
        elif full != info["backing-filename"]:
            line += f" (actual path: {printable(full)})"
        lines.append(line)
        if "backing-filename-format" in info:
            lines.append(f"backing file format: {printable(info['backing-filename-format'])}")
    snapshots = info.get("snapshots", [])
    if snapshots:
        lines.append("Snapshot list:")
        lines.append(snapshot_row("ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT",
                                  header=True))
        # Snapshot names are printable already (names.c_string_text).
        lines.extend(snapshot_row(sn["id"], sn["name"], human_size(sn["vm-state-size"]),
                                  snapshot_date(sn["date-sec"]),
                                  vm_clock(sn["vm-clock-sec"], sn["vm-clock-nsec"]),
                                  str(sn["icount"]) if "icount" in sn else "")
                     for sn in snapshots)
    if "format-specific" in info:
        lines.append("Format specific information:")
        lines.extend(_render_qobject(info["format-specific"]["data"], 1))
    return "\n".join(lines) + "\n"


def snapshot_row(sn_id: str, name: str, size: str, date: str, clock: str, icount: str,
                 header: bool = False) -> str:
    """One line of bdrv_snapshot_dump(): its header and its rows are padded differently."""
    if header:
        return f"{sn_id:<10}{name:<17}{size:>8}{date:>20}{clock:>13}{icount:>11}"
    return f"{_ljust_bytes(sn_id, 9)} {_ljust_bytes(name, 16)} {size:>8}{date:>20}{clock:>13}" \
        f"{icount:>11}"


def _ljust_bytes(text: str, width: int) -> str:
    """printf's %-Ns: padded to N bytes of UTF-8, not N characters (names may be non-ASCII)."""
    if text.isascii():
        return text.ljust(width)
    return text + " " * max(0, width - len(text.encode("utf-8", "surrogateescape")))


def snapshot_date(date_sec: int) -> str:
    """Local time as qemu-img prints it (strftime "%Y-%m-%d %H:%M:%S" of localtime_r)."""
    try:
        return time.strftime("%Y-%m-%d %H:%M:%S", time.localtime(date_sec))
    except (OverflowError, OSError, ValueError):  # beyond the platform's time_t
        return str(date_sec)


def vm_clock(seconds: int, nanoseconds: int) -> str:
    """The guest clock at the snapshot as HH:MM:SS.mmm (hours not wrapped), as qemu-img."""
    return (f"{seconds // 3600:02d}:{seconds // 60 % 60:02d}:{seconds % 60:02d}."
            f"{nanoseconds // 1_000_000 % 1000:03d}")


def _qdict_bucket(key: str) -> int:
    """The bucket of `key` in a qemu QDict (tdb_hash() % QDICT_BUCKET_MAX, qobject/qdict.c):
    qemu-img prints format-specific information in the order of the dict's buckets."""
    raw = key.encode()
    value = (0x238F13AF * len(raw)) & 0xFFFFFFFF
    for i, byte in enumerate(raw):
        value = (value + ((byte << (i * 5 % 24)) & 0xFFFFFFFF)) & 0xFFFFFFFF
    return ((1103515243 * value + 12345) & 0xFFFFFFFF) % 512


@lru_cache(maxsize=64)  # every bitmap's dict has the same keys (a directory holds 65535)
def _qdict_order(keys: tuple[str, ...]) -> tuple[tuple[str, str], ...]:
    """The keys of a QDict in the order qemu prints them, each with its shown name."""
    order = sorted(range(len(keys)), key=lambda i: (_qdict_bucket(keys[i]), -i))
    return tuple((keys[i], keys[i].replace("-", " ")) for i in order)


def _render_qobject(data: Any, indent: int) -> list[str]:
    """dump_qdict()/dump_qlist() of block/qapi.c: keys with '-' shown as ' ', dicts in bucket
    order (a later key of the same bucket first, as QLIST_INSERT_HEAD puts it)."""
    pad = " " * (4 * indent)
    lines: list[str] = []
    if isinstance(data, dict):
        items = [(shown, data[key]) for key, shown in _qdict_order(tuple(data))]
    else:
        items = [(f"[{i}]", value) for i, value in enumerate(data)]
    for key, value in items:
        if isinstance(value, (dict, list)):
            lines.append(f"{pad}{key}:")
            lines.extend(_render_qobject(value, indent + 1))
        else:
            shown = ("true" if value else "false") if isinstance(value, bool) else value
            lines.append(f"{pad}{key}: {printable(str(shown))}")
    return lines


def run_info(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """qemu-img info [--backing-chain]. Every layer qemu would print is printed (a raw base
    layer too); a layer that cannot be shown (missing, unreadable, a loop, a protocol we never
    open, a format we do not read) is said once on stderr, is an entry with its status and
    error in the JSON list, and makes the exit status 1 (qemu-img prints nothing then and
    exits 1 naming the file)."""
    infos: list[dict[str, Any]] = []
    status = EXIT_OK
    with closing(walk(args.file)) as steps:
        for layer, image in steps:
            info, error = _layer_info(layer, image)
            if error is not None and not args.backing_chain:
                raise error  # the one error document and line (analyze/main.py)
            if error is not None:
                report_error(error, err)
                status = EXIT_FAILED
                infos.append(error_document(
                    error, layer.path or layer.name,
                    layer.status if layer.error else LAYER_ERROR, depth=layer.depth))
            elif info is not None:
                infos.append(info)
            if error is not None or not args.backing_chain:
                break
    shown = [info for info in infos if "error" not in info]
    if args.output == "json":
        out.write(json_text(infos if args.backing_chain else infos[0], indent=4))
    else:
        out.write("\n".join(render_info_human(info) for info in shown))
    return status


def _layer_info(layer: ChainLayer, image: Optional[Qcow2Image]
                ) -> tuple[Optional[dict[str, Any]], Optional[Qcow2Error]]:
    """(qemu-img info's JSON of the layer, or the error that keeps it from being shown)."""
    try:
        if image is not None:
            return image_info(image), None
        if layer.status == LAYER_OTHER_FORMAT and layer.format == "raw" and layer.path:
            return raw_info(layer.path), None
    except Qcow2Error as exc:
        return None, exc.with_filename(layer.path or layer.name)
    return None, layer.error or _unshown_layer_error(layer)


def _unshown_layer_error(layer: ChainLayer) -> Qcow2Error:
    if layer.status == LAYER_PROTOCOL:
        message = "backing file name uses a protocol; not opened (read-only policy)"
    else:
        message = f"backing format {layer.format} is not analysed"
    return Qcow2Error(message, structure="backing file", value=layer.name,
                      kind=UNSUPPORTED, filename=layer.path or layer.name)


def run_header(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from qcow2_monitor.collectors.qcow2.describe import describe

    with Qcow2Image.open(args.file) as image:
        data = describe(image)
    if args.output == "json":
        out.write(json_text(data, indent=2))
    else:
        out.write(render_header_human(data))
    return EXIT_OK


# --- header ---------------------------------------------------------------------------------

HEX_FIELDS = ("offset", "features")


def render_header_human(data: dict[str, Any]) -> str:
    """The description as aligned text: one section per structure, figures in columns; names
    by the printable rule (those read from the image are printable already: names.py)."""
    h = data["header"]
    header = [(key, f"0x{value:x}" if key.endswith(HEX_FIELDS) and isinstance(value, int)
               else f"0x{value}" if key == "magic" else str(value))
              for key, value in h.items()]
    header += [("(cluster size)", str(data["cluster_size"])),
               ("(refcount bits)", str(data["refcount_bits"])),
               ("(encryption)", data["crypt_method_name"]),
               ("(compression)", data["compression_type_name"])]
    out = [f"image: {printable(data['filename'])}\n", "\nHeader\n", render_fields(header)]
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
        out.append(f"\nBacking file: {printable(data['backing_file'])} "
                   f"(format {printable(data['backing_format'] or 'not recorded')})\n")
    if data["external_data_file"] is not None:
        out.append(f"\nExternal data file: {printable(data['external_data_file'])}\n")
    if data["name_problems"]:
        out += ["\nName problems\n", "".join(f"    {printable(problem)}\n"
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
