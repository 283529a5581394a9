"""`qcow2-analyze info` (what `qemu-img info` reports) and `qcow2-analyze header`."""

from __future__ import annotations

import argparse
import json
from contextlib import closing
from typing import Any, TextIO

from collectors.chain import walk
from collectors.errors import EXIT_FAILED, EXIT_OK, Qcow2Error
from collectors.image import Qcow2Image
from collectors.info import image_info
from collectors.model import LAYER_ERROR, LAYER_LOOP

from .common import human_size, report_error


def render_info_human(info: dict[str, Any]) -> str:
    lines = [
        f"image: {info['filename']}",
        f"file format: {info['format']}",
        f"virtual size: {human_size(info['virtual-size'])} ({info['virtual-size']} bytes)",
        f"disk size: {human_size(info['actual-size'])}",
        f"cluster_size: {info['cluster-size']}",
    ]
    if "backing-filename" in info:
        line = f"backing file: {info['backing-filename']}"
        if info.get("full-backing-filename") not in (None, info["backing-filename"]):
            line += f" (actual path: {info['full-backing-filename']})"
        lines.append(line)
        if "backing-filename-format" in info:
            lines.append(f"backing file format: {info['backing-filename-format']}")
    if info.get("encrypted"):
        lines.append("encrypted: yes")
    snapshots = info.get("snapshots", [])
    if snapshots:
        lines.append("Snapshot list:")
        lines.append(f"{'ID':<8}{'TAG':<24}{'VM SIZE':>10}  {'DATE':<20}{'VM CLOCK':>16}")
        for sn in snapshots:
            lines.append(f"{sn['id']:<8}{sn['name']:<24}{human_size(sn['vm-state-size']):>10}"
                         f"  {sn['date-sec']:<20}{sn['vm-clock-sec']:>16}")
    lines.append("Format specific information:")
    lines.extend(_render_nested(info["format-specific"]["data"], "    "))
    lines.append(f"dirty flag: {'yes' if info['dirty-flag'] else 'no'}")
    return "\n".join(lines) + "\n"


def _render_nested(data: Any, indent: str) -> list[str]:
    lines: list[str] = []
    if isinstance(data, dict):
        for key, value in data.items():
            if isinstance(value, (dict, list)):
                lines.append(f"{indent}{key}:")
                lines.extend(_render_nested(value, indent + "    "))
            else:
                shown = str(value).lower() if isinstance(value, bool) else value
                lines.append(f"{indent}{key}: {shown}")
    elif isinstance(data, list):
        for i, item in enumerate(data):
            lines.append(f"{indent}[{i}]:")
            lines.extend(_render_nested(item, indent + "    "))
    return lines


def run_info(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    """qemu-img info [--backing-chain]: the qcow2 layers; the walk stops quietly at a missing,
    protocol or not-qcow2 layer, and reports a loop or a layer that cannot be read."""
    infos: list[dict[str, Any]] = []
    status = EXIT_OK
    with closing(walk(args.file)) as steps:
        for layer, image in steps:
            error = layer.error if layer.status in (LAYER_ERROR, LAYER_LOOP) else None
            if image is not None:
                try:
                    infos.append(image_info(image))
                except Qcow2Error as exc:
                    error = exc.with_filename(image.filename)
            if error is not None:
                report_error(error, err)
                status = EXIT_FAILED
            if error is not None or not args.backing_chain:
                break
    if args.output == "json":
        if args.backing_chain:
            out.write(json.dumps(infos, indent=4) + "\n")
        elif infos:
            out.write(json.dumps(infos[0], indent=4) + "\n")
    else:
        out.write("\n".join(render_info_human(info) for info in infos))
    return status


def run_header(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    from collectors.describe import describe, render_human

    with Qcow2Image.open(args.file) as image:
        data = describe(image)
    if args.output == "json":
        out.write(json.dumps(data, indent=2) + "\n")
    else:
        out.write(render_human(data))
    return EXIT_OK
