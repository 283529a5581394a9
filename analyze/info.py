"""`qcow2-analyze info` (what `qemu-img info` reports) and `qcow2-analyze header`."""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional, TextIO

from collectors.errors import EXIT_FAILED, EXIT_OK, Qcow2Error
from collectors.image import Qcow2Image
from collectors.info import chain_paths, image_info
from collectors.model import DEFAULT_MAX_DEPTH

from .common import PROG, human_size, report_error


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
    infos: list[dict[str, Any]] = []
    path: Optional[str] = args.file
    seen: set[str] = set()
    status = EXIT_OK
    while path is not None and len(infos) <= DEFAULT_MAX_DEPTH:
        try:
            with Qcow2Image.open(path) as image:
                infos.append(image_info(image))
                nxt = chain_paths(path, image) if args.backing_chain else None
        except Qcow2Error as exc:
            report_error(exc.with_filename(path), err)
            status = EXIT_FAILED
            break
        seen.add(path)
        if nxt is not None and nxt in seen:
            print(f"{PROG}: {nxt}: backing chain loops", file=err)
            status = EXIT_FAILED
            break
        path = nxt
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
