"""`qcow2-analyze info` (what `qemu-img info` reports) and `qcow2-analyze header`."""

from __future__ import annotations

import argparse
import json
import time
from contextlib import closing
from functools import lru_cache
from typing import Any, Optional, TextIO

from qcow2_monitor.collectors.chain import walk
from qcow2_monitor.collectors.errors import EXIT_FAILED, EXIT_OK, UNSUPPORTED, Qcow2Error
from qcow2_monitor.collectors.image import Qcow2Image
from qcow2_monitor.collectors.info import image_info, raw_info
from qcow2_monitor.collectors.model import (
    LAYER_ERROR,
    LAYER_OTHER_FORMAT,
    LAYER_PROTOCOL,
    ChainLayer,
)
from qcow2_monitor.collectors.units import human_size

from .common import error_document, report_error


def render_info_human(info: dict[str, Any]) -> str:
    """bdrv_image_info_dump() of qemu 7.2 (block/qapi.c), line for line, from the JSON view."""
    lines = [
        f"image: {info['filename']}",
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
        line = f"backing file: {info['backing-filename']}"
        full = info.get("full-backing-filename")
        if full is None:
            line += " (cannot determine actual path)"
        elif full != info["backing-filename"]:
            line += f" (actual path: {full})"
        lines.append(line)
        if "backing-filename-format" in info:
            lines.append(f"backing file format: {info['backing-filename-format']}")
    snapshots = info.get("snapshots", [])
    if snapshots:
        lines.append("Snapshot list:")
        lines.append(snapshot_row("ID", "TAG", "VM SIZE", "DATE", "VM CLOCK", "ICOUNT",
                                  header=True))
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
            lines.append(f"{pad}{key}: {shown}")
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
        out.write(json.dumps(infos if args.backing_chain else infos[0], indent=4) + "\n")
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
    from qcow2_monitor.collectors.describe import describe, render_human

    with Qcow2Image.open(args.file) as image:
        data = describe(image)
    if args.output == "json":
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(render_human(data))
    return EXIT_OK
