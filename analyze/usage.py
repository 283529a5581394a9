"""`qcow2-analyze usage`: the fast usage figures of images and their backing chains."""

from __future__ import annotations

import argparse
import json
from typing import Any, Optional, TextIO

from collectors.discovery import expand_targets
from collectors.errors import EXIT_FAILED, EXIT_OK, Qcow2Error
from collectors.model import ChainLayer, ImageUsage, UsageResult
from collectors.usage import analyze_usage

from .common import human_size, report_error


def usage_json(usage: ImageUsage) -> dict[str, Any]:
    c = usage.container
    data: dict[str, Any] = {
        "filename": usage.filename,
        "image_end_offset": usage.image_end_offset,
        "image_end_offset_source": usage.image_end_offset_source,
        "container_type": c.kind,
        "container_size": c.size,
        "container_length": c.length,
        "headroom": c.headroom,
        "usage_ratio": usage.usage_ratio,
        "fully_allocated_size": usage.fully_allocated_size,
        "virtual_size": usage.virtual_size,
        "cluster_size": usage.cluster_size,
        "qcow_version": usage.qcow_version,
        "in_use": usage.in_use,
        "dirty": usage.dirty,
        "corrupt": usage.corrupt,
        "lazy_refcounts": usage.lazy_refcounts,
        "refcounts_trusted": usage.refcounts_trusted,
        "encrypted": usage.encrypted,
        "backing_filename": usage.backing_filename,
        "backing_format": usage.backing_format,
        "external_data_file": usage.external_data_file,
        "snapshots": usage.snapshots,
        "bitmaps": usage.bitmaps,
        "notes": list(usage.notes),
    }
    if c.allocated_bytes is not None:
        data["allocated_bytes"] = c.allocated_bytes
    return data


def layer_json(layer: ChainLayer) -> dict[str, Any]:
    data: dict[str, Any] = {"depth": layer.depth, "name": layer.name, "path": layer.path,
                            "status": layer.status, "format": layer.format}
    if layer.usage is not None:
        data.update(usage_json(layer.usage))
    if layer.error is not None:
        data["error"] = layer.error.as_dict()
    return data


def result_json(result: UsageResult) -> dict[str, Any]:
    if result.usage is None:
        assert result.error is not None
        return {"filename": result.target, "error": result.error.as_dict()}
    data = usage_json(result.usage)
    data["backing_chain"] = [layer_json(layer) for layer in result.chain]
    return data


def render_usage_human(result: UsageResult) -> str:
    if result.usage is None:
        return f"{result.target}: ERROR {result.error}\n"
    lines = []
    rows: list[tuple[str, Optional[ImageUsage], str]] = [("", result.usage, "")]
    rows += [("  " * layer.depth + "└ ", layer.usage,
              "" if layer.usage else f"{layer.name}: {layer.status}"
              + (f" ({layer.error})" if layer.error else ""))
             for layer in result.chain]
    for prefix, usage, status in rows:
        if usage is None:
            lines.append(f"{prefix}{status}")
            continue
        c = usage.container
        flags = [name for name, on in (("dirty", usage.dirty), ("CORRUPT", usage.corrupt),
                                       ("in-use", usage.in_use)) if on]
        lines.append(
            f"{prefix}{usage.filename}: end {usage.image_end_offset} "
            f"({human_size(usage.image_end_offset)}) of {c.kind} {human_size(c.size)}, "
            f"{usage.usage_ratio * 100:.1f}% used, headroom {human_size(c.headroom)}, "
            f"fully allocated {human_size(usage.fully_allocated_size)}"
            + (f" [{', '.join(flags)}]" if flags else ""))
        lines.extend(f"{' ' * len(prefix)}  note: {note}" for note in usage.notes)
    return "\n".join(lines) + "\n"


def run_usage(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    status = EXIT_OK
    results: list[UsageResult] = []
    for target in expand_targets(args.targets):
        if target.error is not None or target.path is None:
            error = target.error or Qcow2Error("no such target", structure="target")
            results.append(UsageResult(target.spec, None, (), error.with_filename(target.spec)))
        else:
            results.append(analyze_usage(target.path, chain=not args.no_chain))
    for result in results:
        if result.error is not None:
            report_error(result.error, err)
            status = EXIT_FAILED
        for layer in result.chain:
            if layer.error is not None:
                report_error(layer.error, err)
    if args.output == "json":
        out.write(json.dumps([result_json(r) for r in results], indent=2) + "\n")
    else:
        out.write("".join(render_usage_human(r) for r in results))
    return status
