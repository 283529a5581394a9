"""`qcow2-analyze info` (what `qemu-img info` reports) and `qcow2-analyze header`."""

from __future__ import annotations

import time
from functools import lru_cache

from qcow2_monitor.cli.exits import EXIT_FAILED, EXIT_OK
from qcow2_monitor.cli.outcome import Namespace
from qcow2_monitor.cli.text import indent_block, json_text, render_fields, render_table
from qcow2_monitor.collectors.common.jsonform import to_json, to_json_object
from qcow2_monitor.collectors.common.record import fields
from qcow2_monitor.collectors.common.text import printable
from qcow2_monitor.collectors.common.units import human_size
from qcow2_monitor.collectors.qcow2.chain import not_read_error, visit
from qcow2_monitor.collectors.qcow2.describe import (
    ExtensionView,
    FeatureTableDetail,
    HeaderView,
    LuksView,
    describe,
    extension_type_text,
    feature_type_name,
)
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.qcow2.info import ImageInfo, image_info, raw_info
from qcow2_monitor.collectors.report.model import LayerStatus

from .common import error_document, report_error

TYPE_CHECKING = False
if TYPE_CHECKING:
    from typing import Any, TextIO, Union


def render_info_human(info: ImageInfo) -> str:
    """bdrv_image_info_dump() of qemu 7.2 (block/qapi.c), line for line; names by the
    printable rule of every output (collectors/common/text.py)."""
    lines = [
        f"image: {printable(info.filename)}",
        f"file format: {info.format}",
        f"virtual size: {human_size(info.virtual_size)} ({info.virtual_size} bytes)",
        f"disk size: {human_size(info.actual_size)}",
    ]
    if info.encrypted:
        lines.append("encrypted: yes")
    if info.cluster_size is not None:
        lines.append(f"cluster_size: {info.cluster_size}")
    if info.dirty_flag:
        lines.append("cleanly shut down: no")
    if info.backing_filename is not None:
        line = f"backing file: {printable(info.backing_filename)}"
        full = info.full_backing_filename
        if full is None:
            line += " (cannot determine actual path)"
        elif full != info.backing_filename:
            line += f" (actual path: {printable(full)})"
        lines.append(line)
        if info.backing_filename_format is not None:
            lines.append(f"backing file format: {printable(info.backing_filename_format)}")
    if info.snapshots:
        lines.append("Snapshot list:")
        lines.append(snapshot_row("ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT",
                                  header=True))
        # Snapshot names are printable already (names.c_string_text).
        lines.extend(snapshot_row(sn.id, sn.name, human_size(sn.vm_state_size),
                                  snapshot_date(sn.date_sec),
                                  vm_clock(sn.vm_clock_sec, sn.vm_clock_nsec),
                                  "" if sn.icount is None else str(sn.icount))
                     for sn in info.snapshots)
    if info.format_specific is not None:
        # qemu prints the QDict of its JSON view: rendered from the same JSON here.
        lines.append("Format specific information:")
        lines.extend(_render_qobject(to_json(info.format_specific.data), 1))
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


def run_info(args: Namespace, out: TextIO, err: TextIO) -> int:
    """qemu-img info [--backing-chain]. Every layer qemu would print is printed (a raw base
    layer too); a layer that cannot be shown (missing, unreadable, a loop, a protocol we never
    open, a format we do not read) is said once on stderr, is an entry with its status and
    error in the JSON list, and makes the exit status 1 (qemu-img prints nothing then and
    exits 1 naming the file)."""
    shown: list[ImageInfo] = []
    documents: list[Union[ImageInfo, dict[str, Any]]] = []  # the layers, and errors
    status = EXIT_OK
    for visited in visit(args.file, lambda image, _: image_info(image),
                         read_raw=lambda layer: raw_info(layer.filename)):
        layer, info = visited.layer, visited.value
        if info is not None:
            shown.append(info)
            documents.append(info)
        else:
            error = layer.error or not_read_error(layer)
            if not args.backing_chain:
                raise error  # the one error document and line (analyze/main.py)
            report_error(error, err)
            status = EXIT_FAILED
            documents.append(error_document(
                error, layer.filename, layer.status if layer.error else LayerStatus.ERROR,
                depth=layer.depth))
            break
        if not args.backing_chain:
            break
    if args.output == "json":
        listed = to_json(documents)
        assert isinstance(listed, list)
        out.write(json_text(listed if args.backing_chain else listed[0], indent=4))
    else:
        out.write("\n".join(render_info_human(info) for info in shown))
    return status


def run_header(args: Namespace, out: TextIO, err: TextIO) -> int:
    with Qcow2Image.open(args.file) as image:
        view = describe(image)
    if args.output == "json":
        out.write(json_text(to_json(view), indent=2))
    else:
        out.write(render_header_human(view))
    return EXIT_OK


# --- header ---------------------------------------------------------------------------------

HEX_FIELDS = ("offset", "features")


def _header_value(name: str, value: object) -> str:
    if isinstance(value, bytes):  # the magic
        return f"0x{value.hex()}"
    if name.endswith(HEX_FIELDS) and isinstance(value, int):
        return f"0x{value:x}"
    return str(value)


def render_header_human(view: HeaderView) -> str:
    """The description as aligned text: one section per structure, figures in columns; names
    by the printable rule (those read from the image are printable already: names.py)."""
    header = [(f.name, _header_value(f.name, getattr(view.header, f.name)))
              for f in fields(view.header)]
    header += [("(cluster size)", str(view.cluster_size)),
               ("(refcount bits)", str(view.refcount_bits)),
               ("(encryption)", view.crypt_method_name),
               ("(compression)", view.compression_type_name)]
    out = [f"image: {printable(view.filename)}\n", "\nHeader\n", render_fields(header)]
    out += ["\nFeatures\n", indent_block(render_table(
        ("TYPE", "BIT", "NAME", "STATE"),
        [(feature_type_name(f.type), str(f.bit), f.name, "on" if f.enabled else "off")
         for f in view.features], right=(1,)))]
    out += ["\nHeader extensions\n", indent_block(render_table(
        ("TYPE", "NAME", "OFFSET", "LENGTH"),
        [(extension_type_text(e.type), e.name, f"0x{e.offset:x}", str(e.length))
         for e in view.extensions], right=(2, 3)))]
    for ext in view.extensions:
        out.append(_extension_detail(ext))
    if view.backing_file is not None:
        out.append(f"\nBacking file: {printable(view.backing_file)} "
                   f"(format {printable(view.backing_format or 'not recorded')})\n")
    if view.external_data_file is not None:
        out.append(f"\nExternal data file: {printable(view.external_data_file)}\n")
    if view.name_problems:
        out += ["\nName problems\n", "".join(f"    {printable(problem)}\n"
                                             for problem in view.name_problems)]
    if view.luks is not None:
        out.append(_luks_text(view.luks))
    if view.snapshots:
        shown = (f" (first {len(view.snapshots)} of {view.snapshots_total})"
                 if view.snapshots_total > len(view.snapshots) else "")
        out += [f"\nSnapshot table{shown}\n", indent_block(render_table(
            ("ID", "NAME", "ENTRY AT", "L1 TABLE", "L1 SIZE", "VM STATE", "DISK SIZE",
             "EXTRA"),
            [(sn.id, sn.name, f"0x{sn.table_entry_offset:x}", f"0x{sn.l1_table_offset:x}",
              str(sn.l1_size), str(sn.vm_state_size),
              "-" if sn.disk_size is None else str(sn.disk_size), str(sn.extra_data_size))
             for sn in view.snapshots],
            right=(2, 3, 4, 5, 6, 7)))]
    if view.bitmaps:
        out += ["\nBitmap directory\n", indent_block(render_table(
            ("NAME", "GRANULARITY", "FLAGS", "TABLE AT", "TABLE SIZE"),
            [(bm.name, str(bm.granularity),
              ",".join(n for n, on in (("in_use", bm.in_use), ("auto", bm.auto)) if on)
              or "-", f"0x{bm.bitmap_table_offset:x}", str(bm.bitmap_table_size))
             for bm in view.bitmaps], right=(1, 3, 4)))]
    return "".join(out)


def _extension_detail(ext: ExtensionView) -> str:
    """What an extension holds, below the extensions table (nothing for an empty one)."""
    title = f"\n{ext.name} ({extension_type_text(ext.type)})\n"
    if isinstance(ext.detail, FeatureTableDetail):
        return title + indent_block(render_table(
            ("TYPE", "BIT", "NAME"),
            [(feature_type_name(e.type), str(e.bit), e.name) for e in ext.detail.entries],
            right=(1,)))
    # The detail's own fields, as its JSON names them (data_hex: the bytes in hex).
    extra = [(key, f"0x{value:x}" if key.endswith("offset") and isinstance(value, int)
              else str(value))
             for key, value in to_json_object(ext.detail).items()]
    if not extra:
        return ""
    return title + render_fields(extra)


def _luks_text(luks: LuksView) -> str:
    fields_shown = [(f.name, f"0x{value:x}" if f.name in ("offset", "payload_offset")
                     else "-" if value is None else str(value))
                    for f in fields(luks) if f.name != "key_slots"
                    for value in (getattr(luks, f.name),)]
    slots = render_table(
        ("SLOT", "STATE", "ITERATIONS", "STRIPES", "KEY MATERIAL AT"),
        [(str(s.slot), "active" if s.active else "inactive",
          str(s.iterations) if s.active else "-",
          str(s.stripes) if s.active else "-", f"0x{s.key_offset:x}")
         for s in luks.key_slots], right=(0, 2, 3, 4))
    return "\nLUKS header\n" + render_fields(fields_shown) + "\n" + indent_block(slots)
