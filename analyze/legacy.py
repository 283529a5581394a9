"""`qcow2-analyze -f FILE`: the key set of the older Go tool, with correct values."""

from __future__ import annotations

from typing import Any, TextIO

from qcow2_monitor.cli.exits import EXIT_FAILED, EXIT_OK
from qcow2_monitor.cli.outcome import Namespace
from qcow2_monitor.cli.text import json_text, printable_document
from qcow2_monitor.collectors.common.errors import Qcow2Error
from qcow2_monitor.collectors.qcow2 import layout as L
from qcow2_monitor.collectors.qcow2.describe import MAX_LISTED
from qcow2_monitor.collectors.qcow2.image import Qcow2Image
from qcow2_monitor.collectors.report.usage import end_offset

from .common import report_error

HEX_KEYS = {"cluster_size", "virtual_size", "image_end_offset", "l1_table_offset",
            "refcount_table_offset", "header_length"}


def legacy_report(image: Qcow2Image, verbose: bool) -> dict[str, Any]:
    """The keys the Go qcow2-analyze printed, with correct values (its feature flags were
    always 0, v2 headers garbage, refcount_order < 3 a division by zero, and its end offset
    stopped at the first free cluster)."""
    h = image.header
    end, _source, _notes, _free = end_offset(image)
    report: dict[str, Any] = {
        "qcow_version": h.version,
        "backing_file": image.backing_filename or "",
        "cluster_size": h.cluster_size,
        "virtual_size": h.size,
        "crypt_method": h.crypt_method,
        "snapshots": [
            {"id": sn.id_str, "name": sn.name, "l1_table_offset": sn.l1_table_offset,
             "l1_size": sn.l1_size, "vm_state_size": sn.vm_state_size,
             "date_sec": sn.date_sec, "date_nsec": sn.date_nsec,
             "vm_clock_nsec": sn.vm_clock_nsec, "extra_data_size": sn.extra_data_size}
            for sn in image.snapshots()[:MAX_LISTED]
        ],
        "image_end_offset": end,
    }
    if verbose:
        report.update({
            "l1_size": h.l1_size,
            "l1_table_offset": h.l1_table_offset,
            "refcount_table_offset": h.refcount_table_offset,
            "refcount_table_clusters": h.refcount_table_clusters,
            "dirty_bit": int(h.dirty),
            "corrupt_bit": int(h.corrupt),
            "external_data_file": int(h.has_data_file),
            "compression_type": h.compression_type,
            "extended_l2": int(h.extended_l2),
            "lazy_refcount": int(h.lazy_refcounts),
            "bitmaps_extension": int(h.bitmaps_autoclear),
            "raw_external_data": int(h.data_file_raw),
            "refcount_order": h.refcount_order,
            "header_length": h.header_length,
            "compression_method": L.COMPRESSION_TYPE_NAMES[h.compression_type],
        })
    return report


def _hexify(report: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for key, value in report.items():
        if key in HEX_KEYS and isinstance(value, int):
            out[key] = f"0x{value:x}"
        elif key == "snapshots":
            out[key] = [{k: (f"0x{v:x}" if k in ("l1_table_offset", "vm_state_size")
                             and isinstance(v, int) else v) for k, v in sn.items()}
                        for sn in value]
        else:
            out[key] = value
    return out


def render_raw(report: dict[str, Any]) -> str:
    lines = []
    width = max(len(k) for k in report)
    for key, value in report.items():
        if key == "snapshots":
            lines.append(f"{key:<{width}}  {len(value)}")
            for sn in value:
                lines.append("  " + "  ".join(f"{k}={v}" for k, v in sn.items()))
        else:
            lines.append(f"{key:<{width}}  {value}")
    return "\n".join(lines) + "\n"


def run_legacy(args: Namespace, out: TextIO, err: TextIO) -> int:
    try:
        with Qcow2Image.open(args.file) as image:
            report = legacy_report(image, args.verbose)
    except Qcow2Error as exc:
        report_error(exc.with_filename(args.file), err)
        return EXIT_FAILED
    if args.hex:
        report = _hexify(report)
    if args.legacy_output == "raw":
        out.write(render_raw(printable_document(report)))
    else:
        out.write(json_text(report, indent=2))
    return EXIT_OK
