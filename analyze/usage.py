"""`qcow2-analyze usage`: the fast usage figures of images and their backing chains."""

from __future__ import annotations

import argparse
import time
from dataclasses import replace
from typing import Any, TextIO

from qcow2_monitor.cli.exits import EXIT_FAILED, EXIT_OK
from qcow2_monitor.cli.options import judging_from_args, live_uri
from qcow2_monitor.cli.text import json_text, render_table
from qcow2_monitor.collectors.common.errors import Qcow2Error
from qcow2_monitor.collectors.common.units import (
    human_duration,
    human_rate,
    human_size,
    ratio_percent,
)
from qcow2_monitor.collectors.host.discovery import expand_targets
from qcow2_monitor.collectors.host.identity import canonical_path
from qcow2_monitor.collectors.host.live import start_live
from qcow2_monitor.collectors.report.extend import extension_text
from qcow2_monitor.collectors.report.health import broken_layer
from qcow2_monitor.collectors.report.model import LAYER_OK, ChainLayer, ImageUsage, UsageResult
from qcow2_monitor.collectors.report.thin import Seen, decide_usages
from qcow2_monitor.collectors.report.usage import analyze_usage

from .common import PROG, error_document, report_error


def usage_json(usage: ImageUsage) -> dict[str, Any]:
    c = usage.container
    data: dict[str, Any] = {
        "filename": usage.filename,
        "image_end_offset": usage.image_end_offset,
        "image_end_offset_source": usage.image_end_offset_source,
        "live_end_offset": usage.live_end_offset,
        "end_offset": usage.end_offset,
        "end_offset_source": usage.end_offset_source,
        "domain": usage.domain,
        "disk": usage.disk,
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
        **thin_json(usage),
        "notes": list(usage.notes),
    }
    if c.allocated_bytes is not None:
        data["allocated_bytes"] = c.allocated_bytes
    return data


def thin_json(usage: ImageUsage) -> dict[str, Any]:
    """Thin provisioning: a paused VM, the space qemu reuses before growing, the extension
    advice and the growth (null where not known or not due)."""
    extension, growth = usage.extension, usage.growth
    return {
        "paused": usage.paused,
        "pause_reason": usage.pause_reason,
        "free_below_end_bytes": usage.free_below_end,
        "extend_by_bytes": extension.extend_by if extension is not None else None,
        "extend_to_bytes": extension.extend_to if extension is not None else None,
        "extend_command": extension.command if extension is not None else None,
        "growth_bytes_per_second": growth.bytes_per_second if growth is not None else None,
        "time_to_full_seconds": growth.time_to_full if growth is not None else None,
    }


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
        return error_document(result.error, result.target)
    data = usage_json(result.usage)
    data["status"] = LAYER_OK
    data["backing_chain"] = [layer_json(layer) for layer in result.reported_chain]
    return data


USAGE_COLUMNS = ("IMAGE", "END OFFSET", "FROM", "CONTAINER", "CONTAINER SIZE", "USED",
                 "HEADROOM", "FULLY ALLOCATED", "STATE")


def _usage_row(name: str, usage: ImageUsage) -> list[str]:
    c = usage.container
    flags = [flag for flag, on in (("dirty", usage.dirty), ("CORRUPT", usage.corrupt),
                                   ("in-use", usage.in_use),
                                   (f"PAUSED ({usage.pause_reason})", usage.paused),
                                   ("extend", usage.extension is not None)) if on]
    return [name, human_size(usage.end_offset), usage.end_offset_source, c.kind,
            human_size(c.size), ratio_percent(usage.usage_ratio), human_size(c.headroom),
            human_size(usage.fully_allocated_size), ", ".join(flags) or "ok"]


def thin_notes(usage: ImageUsage) -> list[str]:
    """The extension advice, a paused VM and the growth, in words, for the human table."""
    notes: list[str] = []
    if usage.pause is not None:
        notes.append(f"VM {usage.pause.domain} paused ({usage.pause.reason}); resume it with "
                      f"{usage.pause.resume} once the cause is gone")
    if usage.extension is not None:
        notes.append(f"headroom below the watermark {human_size(usage.extension.watermark)}: "
                     + extension_text(usage.extension))
    growth = usage.growth
    if growth is not None and growth.bytes_per_second is not None:
        full = f", full in {human_duration(growth.time_to_full)}" \
            if growth.time_to_full is not None else ""
        notes.append(f"growing {human_rate(growth.bytes_per_second)}{full}")
    if growth is not None and growth.note:
        notes.append(growth.note)
    return notes


def render_usage_human(results: list[UsageResult]) -> str:
    """One aligned table: a row per image, its backing layers indented below it; a target
    that failed is a row whose state says so (the error itself is on stderr, once)."""
    rows: list[list[str]] = []
    notes: list[str] = []
    empty = ["-"] * (len(USAGE_COLUMNS) - 2)
    for result in results:
        if result.usage is None:
            rows.append([result.target, *empty, "error"])
            continue
        rows.append(_usage_row(result.usage.filename, result.usage))
        notes += [f"{result.usage.filename}: {note}"
                  for note in (*result.usage.notes, *thin_notes(result.usage))]
        for layer in result.reported_chain:
            name = "  " * layer.depth + "└ " + layer.name
            if layer.usage is None:
                rows.append([name, *empty, layer.status])
            else:
                rows.append(_usage_row(name, layer.usage))
                notes += [f"{layer.usage.filename}: {note}" for note in layer.usage.notes]
    text = render_table(USAGE_COLUMNS, rows, right=(1, 4, 5, 6, 7))
    return text + "".join(f"note: {note}\n" for note in notes)


def _decided(results: list[UsageResult], args: argparse.Namespace
             ) -> tuple[list[UsageResult], list[str]]:
    """The top images with their extension advice and growth (collectors.report.thin)."""
    now = time.time()
    seen = [Seen(r.usage.filename, canonical_path(r.usage.filename), r.usage, now)
            for r in results if r.usage is not None]
    usages, notes = decide_usages(seen, judging_from_args(args), now)
    decided = iter(usages)
    return [replace(r, usage=next(decided)) if r.usage is not None else r
            for r in results], notes


def run_usage(args: argparse.Namespace, out: TextIO, err: TextIO) -> int:
    status = EXIT_OK
    pending = start_live(live_uri(args), args.qmp)
    targets = expand_targets(args.targets)
    live = pending.wait() if pending is not None else None
    if live is not None and live.libvirt_note and args.libvirt_uri is not None:
        print(f"{PROG}: note: {live.libvirt_note}", file=err)  # asked for by name: say why not
    results: list[UsageResult] = []
    for target in targets:
        if target.error is not None or target.path is None:
            error = target.error or Qcow2Error("no such target", structure="target")
            results.append(UsageResult(target.spec, None, (), error.with_filename(target.spec)))
        else:
            results.append(analyze_usage(target.path, chain=not args.no_chain, live=live))
    results, notes = _decided(results, args)
    for note in notes:
        print(f"{PROG}: note: {note}", file=err)
    if live is not None:
        results += [UsageResult(e.filename or "--qmp", None, (), e) for e in live.errors]
    for result in results:
        if result.error is not None:
            report_error(result.error, err)
            status = EXIT_FAILED
        for layer in result.reported_chain:
            if layer.error is not None:
                report_error(layer.error, err)
        if broken_layer(result.chain) is not None:
            status = EXIT_FAILED  # qemu cannot open the image: its backing chain is broken
    if args.output == "json":
        out.write(json_text([result_json(r) for r in results], indent=2))
    else:
        out.write(render_usage_human(results))
    return status
